// LedgerWriter on real files: chain round trip, rotation, ordering, fsync policy, periodic checkpoints,
// torn-tail recovery, refusal to write on a broken chain, and write failures.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { appendFile, chmod, mkdir, readFile, readdir, rmdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { GENESIS_PREV, KEY_ORDER, type LedgerRecord, parseLine } from '../../src/integrity/format.js';
import { verifyLedger } from '../../src/integrity/verify.js';
import { LedgerError, LedgerWriter } from '../../src/integrity/writer.js';
import {
  Clock,
  KEYS,
  buildLedger,
  evidence,
  ledgerFiles,
  options,
  readLinesOf,
  removeDir,
  tempDir,
  writeLines,
} from './helpers.js';
import { ManualClock } from '../helpers/clock.js';

const SRC = fileURLToPath(new URL('../../src/integrity/', import.meta.url));

async function records(dir: string): Promise<Array<{ file: string; line: number; record: LedgerRecord }>> {
  const out: Array<{ file: string; line: number; record: LedgerRecord }> = [];
  for (const file of await ledgerFiles(dir)) {
    const lines = await readLinesOf(join(dir, file));
    lines.forEach((text, i) => {
      const parsed = parseLine(Buffer.from(text, 'utf8'));
      assert.equal(parsed.kind, 'record', `${file}:${i + 1} ${JSON.stringify(parsed)}`);
      if (parsed.kind === 'record') out.push({ file, line: i + 1, record: parsed.record });
    });
  }
  return out;
}

/** Lets pending I/O callbacks and promise jobs run (one turn of the event loop). */
const settle = (): Promise<void> => new Promise((r) => setImmediate(r));

/** Resolves once the writer's head reaches `seq` (a record written by a timer of its own). */
async function untilHead(w: LedgerWriter, seq: number, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (w.head.seq < seq) {
    if (Date.now() > deadline)
      assert.fail(`head at seq ${w.head.seq}, waited for ${seq} for ${timeoutMs} ms`);
    await settle();
  }
}

function isLedgerError(code: string, pattern?: RegExp): (err: unknown) => boolean {
  return (err: unknown) => {
    assert.ok(err instanceof LedgerError, `expected a LedgerError, got ${String(err)}`);
    assert.equal(err.code, code);
    if (pattern) assert.match(err.message, pattern);
    return true;
  };
}

describe('LedgerWriter', () => {
  let root: string;
  let n = 0;
  const fresh = (): string => join(root, `l${++n}`);
  before(async () => {
    root = await tempDir();
  });
  after(async () => {
    await removeDir(root);
  });

  it('writes a chain that verifies, with signed checkpoints and the fixed key orders', async () => {
    const dir = fresh();
    const clock = new Clock();
    const w = await LedgerWriter.open(options(dir, { now: clock.now }));
    assert.equal(w.recovery, null);
    assert.equal(w.healthy, true);
    for (let i = 0; i < 5; i++) await w.append(evidence(i));
    await w.appendCommitted({
      sopClassUid: '1.2.840.10008.5.1.4.1.1.2',
      sopInstanceUid: '1.2.3.4.0',
      transactionUid: '1.2.3.99',
      confirms: 2,
    });
    await w.checkpoint();
    await w.append(
      evidence(5, { status: null, outcome: 'no response: aborted', clientCertSha256: 'ef'.repeat(32) }),
    );
    assert.deepEqual(w.head.seq, 9);
    await w.close();
    await w.close(); // idempotent

    const all = await records(dir);
    assert.deepEqual(
      all.map((r) => r.record.type),
      ['file-start', ...Array(5).fill('instance'), 'committed', 'checkpoint', 'instance', 'checkpoint'],
    );
    let prev = GENESIS_PREV;
    all.forEach(({ record }, i) => {
      assert.deepEqual(Object.keys(record), [...KEY_ORDER[record.type]]);
      assert.equal(record.seq, i + 1);
      assert.equal(record.prev, prev);
      prev = record.hash;
    });
    const first = all[0]!.record;
    assert.ok(first.type === 'file-start');
    assert.equal(first.file, 'ledger-000001.jsonl');
    assert.equal(first.previousFile, null);
    assert.equal(first.time, clock.t.toISOString());
    const inst = all[1]!.record;
    assert.ok(inst.type === 'instance');
    assert.equal(inst.time, evidence(0).time);
    assert.equal(inst.sha256, evidence(0).sha256);
    const cp = all[7]!.record;
    assert.ok(cp.type === 'checkpoint');
    assert.equal(cp.count, 7);
    assert.equal(cp.head, all[6]!.record.hash);
    assert.match(cp.signature ?? '', /^[A-Za-z0-9+/]{86}==$/);

    const report = await verifyLedger(dir, { publicKeyPem: KEYS.publicKeyPem });
    assert.equal(report.ok, true, JSON.stringify(report.errors));
    assert.equal(report.records, 10);
    assert.equal(report.instances, 6);
    assert.equal(report.checkpoints, 2);
    assert.equal(report.signaturesVerified, 2);
    assert.equal(report.recordsAfterLastCheckpoint, 0);
    assert.deepEqual(report.head, { seq: 10, hash: prev, file: 'ledger-000001.jsonl' });

    const mode = (await stat(dir)).mode & 0o777;
    assert.equal(mode, 0o700);
    await assert.rejects(w.append(evidence(9)), isLedgerError('LEDGER_WRITE_FAILED', /closed/));
  });

  it('unsigned checkpoints when there is no key', async () => {
    const dir = fresh();
    const w = await LedgerWriter.open(options(dir, { signingKeyPem: null }));
    await w.append(evidence(1));
    await w.close();
    const cp = (await records(dir)).at(-1)!.record;
    assert.ok(cp.type === 'checkpoint');
    assert.equal(cp.keyId, null);
    assert.equal(cp.signature, null);
    const report = await verifyLedger(dir);
    assert.equal(report.ok, true);
    assert.equal(report.unsignedCheckpoints, 1);
  });

  it('refuses a signing key that is not Ed25519', async () => {
    const { privateKey } = generateKeyPairSync('ec', {
      namedCurve: 'P-256',
      privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
      publicKeyEncoding: { type: 'spki', format: 'pem' },
    });
    await assert.rejects(
      LedgerWriter.open(options(fresh(), { signingKeyPem: privateKey })),
      isLedgerError('LEDGER_KEY_INVALID', /not Ed25519/),
    );
    await assert.rejects(
      LedgerWriter.open(options(fresh(), { signingKeyPem: 'garbage' })),
      isLedgerError('LEDGER_KEY_INVALID'),
    );
  });

  it('rotates by size: files stay under the limit, end with a checkpoint, and chain through file-starts', async () => {
    const dir = fresh();
    await buildLedger(dir, { records: 30, rotateMaxBytes: 5000 });
    const files = await ledgerFiles(dir);
    assert.ok(files.length >= 5, files.join());
    const all = await records(dir);
    for (const [i, file] of files.entries()) {
      assert.equal(file, `ledger-${String(i + 1).padStart(6, '0')}.jsonl`);
      assert.ok((await stat(join(dir, file))).size <= 5000, `${file} is too big`);
      const mine = all.filter((r) => r.file === file);
      const start = mine[0]!.record;
      assert.ok(start.type === 'file-start');
      assert.equal(start.file, file);
      assert.equal(start.previousFile, i === 0 ? null : files[i - 1]);
      const before = all[all.indexOf(mine[0]!) - 1];
      assert.equal(start.prev, before ? before.record.hash : GENESIS_PREV);
      assert.equal(mine.at(-1)!.record.type, 'checkpoint', `${file} ends with a checkpoint`);
    }
    const report = await verifyLedger(dir, { publicKeyPem: KEYS.publicKeyPem });
    assert.equal(report.ok, true, JSON.stringify(report.errors));
    assert.equal(report.files, files.length);
    assert.equal(report.instances, 30);
  });

  it('rotates when the UTC day changes', async () => {
    const dir = fresh();
    const clock = new Clock(new Date('2025-03-01T23:59:58.000Z'));
    const w = await LedgerWriter.open(options(dir, { rotateDaily: true, now: clock.now }));
    await w.append(evidence(1));
    await w.append(evidence(2));
    clock.advance(5000); // 2025-03-02
    await w.append(evidence(3));
    await w.append(evidence(4));
    await w.close();
    const files = await ledgerFiles(dir);
    assert.deepEqual(files, ['ledger-000001.jsonl', 'ledger-000002.jsonl']);
    const all = await records(dir);
    const second = all.filter((r) => r.file === files[1]).map((r) => r.record);
    assert.ok(second[0]!.type === 'file-start');
    assert.equal(second[0]!.time.slice(0, 10), '2025-03-02');
    assert.deepEqual(
      second.map((r) => r.type),
      ['file-start', 'instance', 'instance', 'checkpoint'],
    );
    const report = await verifyLedger(dir, { publicKeyPem: KEYS.publicKeyPem });
    assert.equal(report.ok, true, JSON.stringify(report.errors));
  });

  it('reopens and continues the chain in the last file', async () => {
    const dir = fresh();
    await buildLedger(dir, { records: 3 });
    const w = await LedgerWriter.open(options(dir));
    assert.equal(w.head.seq, 5);
    assert.equal(w.head.file, 'ledger-000001.jsonl');
    await w.append(evidence(10));
    await w.close();
    assert.deepEqual(await ledgerFiles(dir), ['ledger-000001.jsonl']);
    const report = await verifyLedger(dir, { publicKeyPem: KEYS.publicKeyPem });
    assert.equal(report.ok, true, JSON.stringify(report.errors));
    assert.equal(report.records, 7);
  });

  it('keeps call order for concurrent appends', async () => {
    const dir = fresh();
    const w = await LedgerWriter.open(
      options(dir, { fsync: 'batch', fsyncIntervalMs: 5, rotateMaxBytes: 20_000 }),
    );
    await Promise.all(Array.from({ length: 60 }, (_, i) => w.append(evidence(i))));
    await w.close();
    const uids = (await records(dir))
      .map((r) => r.record)
      .filter((r) => r.type === 'instance')
      .map((r) => (r.type === 'instance' ? r.sopInstanceUid : ''));
    assert.deepEqual(
      uids,
      Array.from({ length: 60 }, (_, i) => `1.2.3.4.${i}`),
    );
    assert.equal((await verifyLedger(dir)).ok, true);
  });

  it('batch fsync: append resolves at the next sync, fsyncIntervalMs after the write', async () => {
    const dir = fresh();
    const clock = new ManualClock();
    const w = await LedgerWriter.open(options(dir, { fsync: 'batch', fsyncIntervalMs: 150, clock }));
    let resolved = false;
    const armed = clock.armed;
    const p = w.append(evidence(1)).then(() => {
      resolved = true;
    });
    await clock.untilArmed(armed + 1); // written; the sync is scheduled
    assert.ok(clock.dueIn().includes(150), `timers due in ${clock.dueIn().join()} ms`);
    // The record is written (one write) before it is synced.
    assert.equal((await records(dir)).length, 2);
    clock.advance(149);
    await settle();
    assert.equal(resolved, false, 'resolved before the batch sync');
    clock.advance(1);
    await p;
    // A burst shares one sync: one timer, and every append resolves when it fires.
    const burstArmed = clock.armed;
    const burst = Promise.all(Array.from({ length: 20 }, (_, i) => w.append(evidence(i + 2))));
    await clock.untilArmed(burstArmed + 1);
    clock.advance(150);
    await burst;
    assert.equal(clock.armed, burstArmed + 1, 'one sync timer for the burst');
    await w.close();
    assert.equal(clock.pending, 0, 'close clears the timers');
  });

  it('writes a checkpoint at most every checkpointIntervalMs while records come, none when idle', async () => {
    const dir = fresh();
    const clock = new ManualClock();
    const start = clock.now();
    const w = await LedgerWriter.open(
      options(dir, { checkpointIntervalMs: 80, clock, now: () => new Date(clock.now()) }),
    );
    await w.append(evidence(1));
    clock.advance(79);
    assert.deepEqual(clock.dueIn(), [1], 'the checkpoint waits for the interval');
    assert.equal(w.head.seq, 2);
    clock.advance(1);
    await untilHead(w, 3);
    const types = (await records(dir)).map((r) => r.record.type);
    assert.deepEqual(types, ['file-start', 'instance', 'checkpoint']);
    assert.equal(clock.pending, 0, 'nothing scheduled while idle');
    clock.advance(1000);
    assert.equal((await records(dir)).length, 3, 'no checkpoint while idle');
    for (let i = 0; i < 8; i++) {
      await w.append(evidence(i + 2));
      clock.advance(10);
    }
    // Due 80 ms after the checkpoint that came with the first append of the burst.
    assert.deepEqual(clock.dueIn(), [10]);
    clock.advance(10); // not past it: the checkpoint's time is read when it is written
    await untilHead(w, 13);
    const all = (await records(dir)).map((r) => r.record);
    assert.equal(all.at(-1)!.type, 'checkpoint', 'the burst is sealed by a checkpoint');
    // The first append after the idle time gets a checkpoint at once (the interval has long passed);
    // the rest wait for the next interval.
    const times = all.filter((r) => r.type === 'checkpoint').map((r) => Date.parse(r.time) - start);
    assert.deepEqual(times, [80, 1090, 1170]);
    assert.equal(clock.pending, 0);
    const count = all.length;
    await w.close();
    assert.equal((await records(dir)).length, count, 'close adds no checkpoint after a checkpoint');
  });

  describe('torn tail recovery', () => {
    it('saves the torn bytes, cuts them, writes `recovered`, and the chain verifies', async () => {
      const dir = fresh();
      await buildLedger(dir, { records: 4 });
      const file = join(dir, 'ledger-000001.jsonl');
      const whole = await readFile(file);
      const torn = '{"v":1,"type":"instance","seq":7,"time":"2025-01-0';
      await appendFile(file, torn);

      const before = await verifyLedger(dir, { publicKeyPem: KEYS.publicKeyPem });
      assert.equal(before.ok, true, JSON.stringify(before.errors));
      assert.deepEqual(before.tornTail, { file: 'ledger-000001.jsonl', line: 7, bytes: torn.length });

      const clock = new Clock(new Date('2025-05-06T07:08:09.010Z'));
      const w = await LedgerWriter.open(options(dir, { now: clock.now }));
      assert.deepEqual(w.recovery, {
        file: 'ledger-000001.jsonl',
        tornBytes: torn.length,
        savedAs: 'ledger-000001.jsonl.torn-20250506T070809010Z',
      });
      assert.equal(await readFile(join(dir, w.recovery!.savedAs), 'utf8'), torn);
      assert.deepEqual((await readFile(file)).subarray(0, whole.length), whole);
      await w.append(evidence(20));
      await w.close();

      const all = (await records(dir)).map((r) => r.record);
      const rec = all[6]!;
      assert.ok(rec.type === 'recovered');
      assert.equal(rec.seq, 7);
      assert.equal(rec.file, 'ledger-000001.jsonl');
      assert.equal(rec.tornBytes, torn.length);
      assert.equal(rec.savedAs, w.recovery!.savedAs);
      const after = await verifyLedger(dir, { publicKeyPem: KEYS.publicKeyPem });
      assert.equal(after.ok, true, JSON.stringify(after.errors));
      assert.equal(after.tornTail, null);
    });

    it('treats a newline-terminated non-JSON last line as torn', async () => {
      const dir = fresh();
      await buildLedger(dir, { records: 2 });
      const file = join(dir, 'ledger-000001.jsonl');
      await appendFile(file, '\0\0\0{"v":1\n');
      const w = await LedgerWriter.open(options(dir));
      assert.equal(w.recovery?.tornBytes, 10);
      await w.close();
      assert.equal((await verifyLedger(dir)).ok, true);
    });

    it('recovers a file whose file-start was torn, and an empty last file', async () => {
      const dir = fresh();
      await buildLedger(dir, { records: 2 });
      await writeFile(join(dir, 'ledger-000002.jsonl'), '{"v":1,"type":"file-st');
      const w = await LedgerWriter.open(options(dir));
      assert.equal(w.recovery?.file, 'ledger-000002.jsonl');
      await w.append(evidence(3));
      await w.close();
      const types = (await records(dir))
        .filter((r) => r.file === 'ledger-000002.jsonl')
        .map((r) => r.record.type);
      assert.deepEqual(types, ['file-start', 'recovered', 'instance', 'checkpoint']);
      assert.equal((await verifyLedger(dir, { publicKeyPem: KEYS.publicKeyPem })).ok, true);

      await writeFile(join(dir, 'ledger-000003.jsonl'), '');
      assert.equal((await verifyLedger(dir)).ok, true, 'an empty last file is a torn tail');
      const w2 = await LedgerWriter.open(options(dir));
      assert.equal(w2.recovery, null);
      await w2.close();
      const report = await verifyLedger(dir, { publicKeyPem: KEYS.publicKeyPem });
      assert.equal(report.ok, true, JSON.stringify(report.errors));
      assert.equal(report.tornTail, null);
    });

    it('refuses (LEDGER_CORRUPT) when a line before the last is invalid, and writes nothing', async () => {
      const dir = fresh();
      await buildLedger(dir, { records: 4 });
      const file = join(dir, 'ledger-000001.jsonl');
      const lines = await readLinesOf(file);
      lines[2] = lines[2]!.replace('"bytes":1001', '"bytes":1002');
      await writeLines(file, lines);
      const before = await readFile(file);
      await assert.rejects(
        LedgerWriter.open(options(dir)),
        isLedgerError('LEDGER_CORRUPT', /ledger-000001\.jsonl:3: hash mismatch/),
      );
      assert.deepEqual(await readFile(file), before);
      assert.deepEqual(await readdir(dir), ['ledger-000001.jsonl']);
    });

    it('refuses when the last file does not continue the previous one', async () => {
      const dir = fresh();
      await buildLedger(dir, { records: 12, rotateMaxBytes: 4000 });
      const files = await ledgerFiles(dir);
      const prevFile = join(dir, files.at(-2)!);
      const lines = await readLinesOf(prevFile);
      await writeLines(prevFile, lines.slice(0, -1)); // cut its closing checkpoint
      await assert.rejects(
        LedgerWriter.open(options(dir)),
        isLedgerError('LEDGER_CORRUPT', /:1: prev does not match/),
      );
    });
  });

  describe('write failures', () => {
    it('rejects with LEDGER_WRITE_FAILED naming the errno, turns unhealthy, then recovers', async () => {
      const dir = fresh();
      const w = await LedgerWriter.open(options(dir, { rotateMaxBytes: 3000 }));
      await w.append(evidence(1));
      await w.append(evidence(2));
      // The next file's name is taken by a directory: not writable, even by root.
      await mkdir(join(dir, 'ledger-000002.jsonl'));
      let failure: unknown;
      for (let i = 3; i < 10 && failure === undefined; i++)
        await w.append(evidence(i)).catch((e) => (failure = e));
      assert.ok(failure instanceof LedgerError, String(failure));
      assert.equal(failure.code, 'LEDGER_WRITE_FAILED');
      assert.match(failure.message, /EEXIST/);
      assert.equal(w.healthy, false);
      await assert.rejects(w.append(evidence(50)), isLedgerError('LEDGER_WRITE_FAILED'));
      await rmdir(join(dir, 'ledger-000002.jsonl'));
      await w.append(evidence(51));
      assert.equal(w.healthy, true);
      await w.close();
      const report = await verifyLedger(dir, { publicKeyPem: KEYS.publicKeyPem });
      assert.equal(report.ok, true, JSON.stringify(report.errors));
    });

    it('read-only directory (skipped as root, where chmod does not stop writes)', async (t) => {
      if (process.getuid?.() === 0) {
        t.skip('running as root');
        return;
      }
      const dir = fresh();
      const w = await LedgerWriter.open(options(dir, { rotateMaxBytes: 3000 }));
      await w.append(evidence(1));
      await w.append(evidence(2));
      await chmod(dir, 0o500);
      try {
        await assert.rejects(
          (async () => {
            for (let i = 3; i < 10; i++) await w.append(evidence(i));
          })(),
          isLedgerError('LEDGER_WRITE_FAILED', /EACCES/),
        );
        assert.equal(w.healthy, false);
      } finally {
        await chmod(dir, 0o700);
      }
      await w.close();
    });

    it('a write cut short (file size limit) leaves no partial line behind', async () => {
      const dir = fresh();
      const script = join(root, `efbig-${n}.mts`);
      await writeFile(
        script,
        `import { LedgerWriter } from ${JSON.stringify(join(SRC, 'writer.ts'))};
const w = await LedgerWriter.open({ dir: ${JSON.stringify(dir)}, fsync: 'always', fsyncIntervalMs: 10,
  rotateMaxBytes: 1e9, rotateDaily: false, checkpointIntervalMs: 60000, signingKeyPem: null });
const ev = (i) => ({ time: new Date().toISOString(), association: 'a', direction: 'modality-to-archive',
  callingAeTitle: 'A', calledAeTitle: 'B', upstreamAeTitle: null, peerAddress: 'p', archiveAddress: 'q',
  archiveCertSha256: null, clientCertSha256: null, sopClassUid: '1.2', sopInstanceUid: '1.2.' + i,
  transferSyntaxUid: '1.2.840.10008.1.2.1', bytes: i, sha256: 'x'.repeat(64), status: 0, outcome: 'success',
  moveOriginatorAeTitle: null, moveOriginatorMessageId: null });
const errors = [];
for (let i = 0; i < 200; i++) await w.append(ev(i)).catch((e) => errors.push(e.code + ' ' + e.message));
console.log(JSON.stringify({ healthy: w.healthy, errors: errors.length, first: errors[0] }));
`,
      );
      // ulimit -f counts 512-byte blocks in sh: the file may not grow beyond 64 KiB.
      const child = spawn(
        'sh',
        ['-c', `ulimit -f 128 && exec "${process.execPath}" --import tsx "${script}"`],
        {
          cwd: fileURLToPath(new URL('../..', import.meta.url)),
          env: { ...process.env, TSX_DISABLE_CACHE: '1' },
          stdio: ['ignore', 'pipe', 'pipe'],
        },
      );
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
      assert.equal(code, 0, stderr);
      const result = JSON.parse(stdout) as { healthy: boolean; errors: number; first: string };
      assert.equal(result.healthy, false);
      assert.ok(result.errors > 0);
      assert.match(result.first, /^LEDGER_WRITE_FAILED .*(short write|EFBIG)/);
      const size = (await stat(join(dir, 'ledger-000001.jsonl'))).size;
      assert.ok(size <= 64 * 1024);
      const report = await verifyLedger(dir);
      assert.equal(report.ok, true, JSON.stringify(report.errors));
      assert.equal(report.tornTail, null, 'the partial line was cut before the next write');
      // The writer can go on once space is back.
      const w = await LedgerWriter.open(options(dir, { signingKeyPem: null }));
      await w.append(evidence(1));
      await w.close();
      assert.equal((await verifyLedger(dir)).ok, true);
    });
  });
});
