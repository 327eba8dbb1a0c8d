// LedgerWriter's SOP Instance UID index: lookupInstance() and the `confirms` of committed records filled
// from it at seal time (same batch, later batches, across rotation), which outcomes it keeps, its bound
// and eviction order, its refill from the last file on open, and records that never made it to the chain.
import assert from 'node:assert/strict';
import { mkdir, rmdir } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { type CommittedRecord, type LedgerRecord, parseLine } from '../../src/integrity/format.js';
import { verifyLedger } from '../../src/integrity/verify.js';
import { DEFAULT_INDEX_SIZE, LedgerError, LedgerWriter } from '../../src/integrity/writer.js';
import { KEYS, evidence, ledgerFiles, options, readLinesOf, removeDir, tempDir } from './helpers.js';

async function records(dir: string): Promise<Array<{ file: string; record: LedgerRecord }>> {
  const out: Array<{ file: string; record: LedgerRecord }> = [];
  for (const file of await ledgerFiles(dir)) {
    for (const text of await readLinesOf(join(dir, file))) {
      const parsed = parseLine(Buffer.from(text, 'utf8'));
      assert.equal(parsed.kind, 'record', `${file}: ${JSON.stringify(parsed)}`);
      if (parsed.kind === 'record') out.push({ file, record: parsed.record });
    }
  }
  return out;
}

/** seq of every instance record of a UID, in chain order. */
async function instanceSeqs(dir: string, uid: string): Promise<number[]> {
  return (await records(dir))
    .map((r) => r.record)
    .filter((r) => r.type === 'instance' && r.sopInstanceUid === uid)
    .map((r) => r.seq);
}

async function committedRecords(dir: string): Promise<CommittedRecord[]> {
  return (await records(dir))
    .map((r) => r.record)
    .filter((r): r is CommittedRecord => r.type === 'committed');
}

async function verifies(dir: string): Promise<void> {
  const report = await verifyLedger(dir, { publicKeyPem: KEYS.publicKeyPem });
  assert.equal(report.ok, true, JSON.stringify(report.errors));
}

const uid = (i: number): string => evidence(i).sopInstanceUid;
const commit = (i: number, confirms?: number | null) => ({
  sopClassUid: evidence(i).sopClassUid,
  sopInstanceUid: uid(i),
  transactionUid: '2.25.99',
  ...(confirms === undefined ? {} : { confirms }),
});

describe('LedgerWriter instance index', () => {
  let root: string;
  let n = 0;
  const fresh = (): string => join(root, `x${++n}`);
  before(async () => {
    root = await tempDir();
  });
  after(async () => {
    await removeDir(root);
  });

  it('confirms the instance appended just before, in the same batch and in a later one', async () => {
    for (const fsync of ['always', 'batch'] as const) {
      const dir = fresh();
      const w = await LedgerWriter.open(options(dir, { fsync }));
      // Same batch: nothing awaited in between, both sealed in one run.
      await Promise.all([w.append(evidence(1)), w.appendCommitted(commit(1))]);
      const [seq1] = await instanceSeqs(dir, uid(1));
      assert.equal(seq1, 2); // after the file-start
      assert.equal(w.lookupInstance(uid(1)), seq1);
      // Later batch.
      await w.append(evidence(2));
      await w.append(evidence(3));
      await w.appendCommitted(commit(2));
      await w.close();
      const committed = await committedRecords(dir);
      assert.deepEqual(
        committed.map((c) => [c.sopInstanceUid, c.confirms]),
        [
          [uid(1), seq1],
          [uid(2), (await instanceSeqs(dir, uid(2)))[0]],
        ],
      );
      await verifies(dir);
    }
  });

  it('looks up at seal time: a commitment appended before its instance confirms nothing', async () => {
    const dir = fresh();
    const w = await LedgerWriter.open(options(dir));
    await Promise.all([w.appendCommitted(commit(1)), w.append(evidence(1)), w.appendCommitted(commit(1))]);
    await w.close();
    const [instance] = await instanceSeqs(dir, uid(1));
    assert.deepEqual(
      (await committedRecords(dir)).map((c) => c.confirms),
      [null, instance],
    );
  });

  it('keeps the latest success or warning record; failures and missing responses are not indexed', async () => {
    const dir = fresh();
    const w = await LedgerWriter.open(options(dir));
    await w.append(evidence(1));
    const [first] = await instanceSeqs(dir, uid(1));
    assert.equal(w.lookupInstance(uid(1)), first);
    await w.append(evidence(1, { status: 0xb000, outcome: 'warning' }));
    const warning = (await instanceSeqs(dir, uid(1)))[1]!;
    assert.equal(w.lookupInstance(uid(1)), warning);
    // A later failed store of the same instance does not take the place of the stored one.
    await w.append(evidence(1, { status: 0xa700, outcome: 'failure' }));
    assert.equal(w.lookupInstance(uid(1)), warning);
    await w.append(evidence(2, { status: 0xa700, outcome: 'failure' }));
    await w.append(evidence(3, { status: null, outcome: 'no response: aborted' }));
    assert.equal(w.lookupInstance(uid(2)), null);
    assert.equal(w.lookupInstance(uid(3)), null);
    assert.equal(w.lookupInstance('1.2.3.unknown'), null);
    await w.appendCommitted(commit(1));
    await w.appendCommitted(commit(2));
    await w.appendCommitted(commit(3));
    await w.close();
    assert.deepEqual(
      (await committedRecords(dir)).map((c) => c.confirms),
      [warning, null, null],
    );
  });

  it('keeps an explicit confirms (a seq or null) as given', async () => {
    const dir = fresh();
    const w = await LedgerWriter.open(options(dir));
    await w.append(evidence(1));
    await w.appendCommitted(commit(1, null));
    await w.appendCommitted(commit(1, 1));
    await w.appendCommitted({ ...commit(1), confirms: undefined });
    await w.close();
    const [seq] = await instanceSeqs(dir, uid(1));
    assert.deepEqual(
      (await committedRecords(dir)).map((c) => c.confirms),
      [null, 1, seq],
    );
  });

  it('is bounded by indexSize, evicting the UID written longest ago', async () => {
    const dir = fresh();
    const w = await LedgerWriter.open(options(dir, { indexSize: 3 }));
    for (let i = 1; i <= 5; i++) await w.append(evidence(i));
    assert.deepEqual(
      [1, 2, 3, 4, 5].map((i) => w.lookupInstance(uid(i)) !== null),
      [false, false, true, true, true],
    );
    // Writing 3 again makes it the newest: 4 goes next, not 3.
    await w.append(evidence(3));
    await w.append(evidence(6));
    assert.deepEqual(
      [3, 4, 5, 6].map((i) => w.lookupInstance(uid(i)) !== null),
      [true, false, true, true],
    );
    assert.equal(w.lookupInstance(uid(3)), (await instanceSeqs(dir, uid(3)))[1]);
    // Looking up does not change the order: 5 is evicted next although just looked up.
    assert.notEqual(w.lookupInstance(uid(5)), null);
    await w.append(evidence(7));
    assert.equal(w.lookupInstance(uid(5)), null);
    await w.appendCommitted(commit(1));
    await w.close();
    assert.deepEqual(
      (await committedRecords(dir)).map((c) => c.confirms),
      [null],
    );
  });

  it('indexSize 0 keeps no index; invalid sizes are refused', async () => {
    const dir = fresh();
    const w = await LedgerWriter.open(options(dir, { indexSize: 0 }));
    await Promise.all([w.append(evidence(1)), w.appendCommitted(commit(1))]);
    assert.equal(w.lookupInstance(uid(1)), null);
    await w.close();
    assert.deepEqual(
      (await committedRecords(dir)).map((c) => c.confirms),
      [null],
    );
    for (const indexSize of [-1, 1.5, Number.NaN, Number.POSITIVE_INFINITY]) {
      await assert.rejects(LedgerWriter.open(options(fresh(), { indexSize })), RangeError);
    }
    assert.equal(DEFAULT_INDEX_SIZE, 100_000);
  });

  it('refills from the last ledger file on open, within the bound', async () => {
    const dir = fresh();
    const w = await LedgerWriter.open(options(dir));
    for (let i = 1; i <= 5; i++) await w.append(evidence(i));
    await w.append(evidence(6, { status: 0xc000, outcome: 'failure' }));
    await w.close();
    const seqs = await Promise.all([1, 2, 3, 4, 5].map(async (i) => (await instanceSeqs(dir, uid(i)))[0]));

    const again = await LedgerWriter.open(options(dir));
    assert.deepEqual(
      [1, 2, 3, 4, 5].map((i) => again.lookupInstance(uid(i))),
      seqs,
    );
    assert.equal(again.lookupInstance(uid(6)), null);
    await again.appendCommitted(commit(4));
    await again.close();
    assert.deepEqual(
      (await committedRecords(dir)).map((c) => c.confirms),
      [seqs[3]],
    );

    const bounded = await LedgerWriter.open(options(dir, { indexSize: 2 }));
    assert.deepEqual(
      [1, 2, 3, 4, 5].map((i) => bounded.lookupInstance(uid(i)) !== null),
      [false, false, false, true, true],
    );
    await bounded.close();
    await verifies(dir);
  });

  it('on open, reads only the last file: instances of earlier files are not found', async () => {
    const dir = fresh();
    const w = await LedgerWriter.open(options(dir, { rotateMaxBytes: 4000 }));
    for (let i = 1; i <= 12; i++) await w.append(evidence(i));
    await w.close();
    const all = await records(dir);
    const files = await ledgerFiles(dir);
    assert.ok(files.length >= 3, files.join());
    const last = files.at(-1)!;
    const again = await LedgerWriter.open(options(dir, { rotateMaxBytes: 4000 }));
    for (const { file, record } of all) {
      if (record.type !== 'instance') continue;
      assert.equal(
        again.lookupInstance(record.sopInstanceUid),
        file === last ? record.seq : null,
        `${record.sopInstanceUid} in ${file}`,
      );
    }
    await again.close();
  });

  it('confirms across rotation within one batch', async () => {
    const dir = fresh();
    const w = await LedgerWriter.open(options(dir, { rotateMaxBytes: 3000 }));
    const appends: Array<Promise<void>> = [];
    for (let i = 1; i <= 10; i++) appends.push(w.append(evidence(i)));
    for (let i = 1; i <= 10; i++) appends.push(w.appendCommitted(commit(i)));
    await Promise.all(appends);
    await w.close();
    const all = await records(dir);
    assert.ok(new Set(all.map((r) => r.file)).size >= 3);
    const bySeq = new Map(all.map((r) => [r.record.seq, r]));
    const committed = all.filter((r) => r.record.type === 'committed');
    assert.equal(committed.length, 10);
    let crossFile = 0;
    for (const { file, record } of committed) {
      const c = record as CommittedRecord;
      const target = bySeq.get(c.confirms!);
      assert.ok(target && target.record.type === 'instance', `${c.sopInstanceUid} confirms ${c.confirms}`);
      assert.equal(target.record.sopInstanceUid, c.sopInstanceUid);
      if (target.file !== file) crossFile += 1;
    }
    assert.ok(crossFile > 0);
    await verifies(dir);
  });

  it('does not index a record that failed to seal or to be written', async () => {
    const dir = fresh();
    const w = await LedgerWriter.open(options(dir, { rotateMaxBytes: 3000 }));
    // Too long for a line: rejected alone, its neighbours in the batch are written.
    const huge = evidence(1, { association: 'a'.repeat(1024 * 1024) });
    const results = await Promise.allSettled([
      w.append(huge),
      w.appendCommitted(commit(1)),
      w.append(evidence(2)),
    ]);
    assert.deepEqual(
      results.map((r) => r.status),
      ['rejected', 'fulfilled', 'fulfilled'],
    );
    assert.equal(w.lookupInstance(uid(1)), null);
    assert.notEqual(w.lookupInstance(uid(2)), null);

    // The next file's name is taken by a directory: the write at rotation fails.
    await mkdir(join(dir, 'ledger-000002.jsonl'));
    let failedAt = 0;
    for (let i = 3; i < 20 && failedAt === 0; i++) {
      await w.append(evidence(i)).catch((err: unknown) => {
        assert.ok(err instanceof LedgerError);
        failedAt = i;
      });
    }
    assert.ok(failedAt > 0);
    assert.equal(w.lookupInstance(uid(failedAt)), null);
    await rmdir(join(dir, 'ledger-000002.jsonl'));
    await w.appendCommitted(commit(failedAt));
    await w.appendCommitted(commit(failedAt - 1));
    await w.close();
    const confirms = (await committedRecords(dir)).map((c) => c.confirms);
    assert.deepEqual(confirms, [null, null, (await instanceSeqs(dir, uid(failedAt - 1)))[0]]);
    assert.deepEqual(await instanceSeqs(dir, uid(failedAt)), []);
    await verifies(dir);
  });
});
