// LedgerWriter batching: appends pending together are sealed in call order and written with one write()
// (and with fsync 'always' one sync); each append resolves only once its record is written and synced
// per the policy; a failing batch rejects all its appends and leaves no partial line; a crash tearing a
// batch write is recovered to the lines written whole.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { type FileHandle, open, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, afterEach, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { type LedgerRecord, parseLine } from '../../src/integrity/format.js';
import { verifyLedger } from '../../src/integrity/verify.js';
import { LedgerError, LedgerWriter } from '../../src/integrity/writer.js';
import { KEYS, evidence, ledgerFiles, options, readLinesOf, removeDir, tempDir } from './helpers.js';
import { ManualClock } from '../helpers/clock.js';

const SRC = fileURLToPath(new URL('../../src/integrity/', import.meta.url));

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

const uidOf = (r: LedgerRecord): string => (r.type === 'instance' ? r.sopInstanceUid : r.type);

/** FileHandle.write as the writer calls it. */
type WriteBuffer = (
  this: FileHandle,
  buffer: Buffer,
  offset: number,
  length: number,
  position: number | null,
) => Promise<{ bytesWritten: number; buffer: Buffer }>;
type Datasync = (this: FileHandle) => Promise<void>;

/**
 * Spies on every FileHandle's write() and datasync() (the writer's file I/O): the calls in order as
 * events, and hooks to change what a call does. Restored after each test.
 */
class FsSpy {
  readonly events: string[] = [];
  /** Lines carried by each write() call, in order. */
  readonly writes: number[] = [];
  onWrite:
    | ((
        original: WriteBuffer,
        fh: FileHandle,
        buf: Buffer,
      ) => Promise<{ bytesWritten: number; buffer: Buffer }>)
    | null = null;
  onDatasync: ((original: Datasync, fh: FileHandle) => Promise<void>) | null = null;
  private proto: { write: WriteBuffer; datasync: Datasync } | null = null;
  private original: { write: WriteBuffer; datasync: Datasync } | null = null;

  async install(scratch: string): Promise<void> {
    this.reset();
    const probe = await open(scratch, 'w');
    const proto = Object.getPrototypeOf(probe) as { write: WriteBuffer; datasync: Datasync };
    await probe.close();
    const original = { write: proto.write, datasync: proto.datasync };
    this.proto = proto;
    this.original = original;
    const events = this.events;
    const writes = this.writes;
    const hooks = (): Pick<FsSpy, 'onWrite' | 'onDatasync'> => this;
    proto.write = function (buffer, offset, length, position) {
      const lines = buffer.toString('latin1').split('\n').length - 1;
      writes.push(lines);
      events.push(`write ${lines}`);
      const hook = hooks().onWrite;
      if (hook) return hook(original.write, this, buffer);
      return original.write.call(this, buffer, offset, length, position);
    };
    proto.datasync = async function () {
      events.push('sync');
      const hook = hooks().onDatasync;
      if (hook) await hook(original.datasync, this);
      else await original.datasync.call(this);
      events.push('synced');
    };
  }

  reset(): void {
    this.events.length = 0;
    this.writes.length = 0;
  }

  restore(): void {
    if (this.proto && this.original) Object.assign(this.proto, this.original);
    this.proto = null;
    this.original = null;
  }
}

function isWriteFailed(pattern?: RegExp): (err: unknown) => boolean {
  return (err: unknown) => {
    assert.ok(err instanceof LedgerError, `expected a LedgerError, got ${String(err)}`);
    assert.equal(err.code, 'LEDGER_WRITE_FAILED');
    if (pattern) assert.match(err.message, pattern);
    return true;
  };
}

/** How many of the promises have settled, checked without waiting. */
function track(promises: Array<Promise<void>>): { settled: () => number } {
  let settled = 0;
  for (const p of promises) {
    p.then(
      () => {
        settled += 1;
      },
      () => {
        settled += 1;
      },
    );
  }
  return { settled: () => settled };
}

/** Lets pending I/O callbacks and promise jobs run (one turn of the event loop). */
const settle = (): Promise<void> => new Promise((r) => setImmediate(r));

describe('LedgerWriter batching', () => {
  let root: string;
  let n = 0;
  const fresh = (): string => join(root, `b${++n}`);
  const spy = new FsSpy();
  before(async () => {
    root = await tempDir();
  });
  afterEach(() => {
    spy.restore();
    spy.onWrite = null;
    spy.onDatasync = null;
  });
  after(async () => {
    await removeDir(root);
  });

  it('fsync always: a burst is one write and one sync, in call order, each append resolved only after the sync', async () => {
    const dir = fresh();
    const w = await LedgerWriter.open(options(dir, { fsync: 'always' }));
    await w.append(evidence(0));
    await spy.install(join(root, `probe-${n}`));
    const burst = [
      w.append(evidence(1)),
      w.append(evidence(2)),
      w.appendCommitted({
        sopClassUid: '1.2.840.10008.5.1.4.1.1.2',
        sopInstanceUid: '1.2.3.4.1',
        transactionUid: '1.2.3.99',
        confirms: 3,
      }),
      w.checkpoint(),
      w.append(evidence(3)),
      w.append(evidence(4)),
    ];
    burst.forEach((p, i) => void p.then(() => spy.events.push(`resolved ${i}`)));
    await Promise.all(burst);
    assert.deepEqual(spy.events, ['write 6', 'sync', 'synced', ...burst.map((_, i) => `resolved ${i}`)]);
    spy.restore();
    await w.close();
    const all = (await records(dir)).map((r) => r.record);
    assert.deepEqual(all.map(uidOf), [
      'file-start',
      '1.2.3.4.0',
      '1.2.3.4.1',
      '1.2.3.4.2',
      'committed',
      'checkpoint',
      '1.2.3.4.3',
      '1.2.3.4.4',
      'checkpoint',
    ]);
    const cp = all[5]!;
    assert.ok(cp.type === 'checkpoint');
    assert.equal(cp.head, all[4]!.hash);
    assert.equal(cp.count, 5);
    const report = await verifyLedger(dir, { publicKeyPem: KEYS.publicKeyPem });
    assert.equal(report.ok, true, JSON.stringify(report.errors));
    assert.equal(report.signaturesVerified, 2);
  });

  it('fsync always: appends stay pending while their sync is, although their lines are written', async () => {
    const dir = fresh();
    const w = await LedgerWriter.open(options(dir, { fsync: 'always' }));
    await spy.install(join(root, `probe-${n}`));
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let syncing!: () => void;
    const syncStarted = new Promise<void>((r) => (syncing = r));
    spy.onDatasync = async (original, fh) => {
      syncing();
      await gate;
      await original.call(fh);
    };
    const burst = [0, 1, 2, 3].map((i) => w.append(evidence(i)));
    const state = track(burst);
    await syncStarted; // written; the sync is held
    assert.equal((await records(dir)).length, 5, 'file-start and the 4 lines are written');
    assert.deepEqual(spy.writes, [4]);
    assert.equal(state.settled(), 0, 'resolved before the sync completed');
    release();
    await Promise.all(burst);
    spy.restore();
    await w.close();
    assert.equal((await verifyLedger(dir)).ok, true);
  });

  it('fsync always: a failing sync rejects every append of the batch', async () => {
    const dir = fresh();
    const w = await LedgerWriter.open(options(dir, { fsync: 'always' }));
    await spy.install(join(root, `probe-${n}`));
    spy.onDatasync = () => Promise.reject(Object.assign(new Error('EIO: i/o error'), { code: 'EIO' }));
    const results = await Promise.allSettled([0, 1, 2].map((i) => w.append(evidence(i))));
    for (const r of results) {
      assert.equal(r.status, 'rejected');
      if (r.status === 'rejected') isWriteFailed(/cannot sync .*EIO/)(r.reason);
    }
    assert.equal(w.healthy, false);
    spy.onDatasync = null;
    await w.append(evidence(3));
    assert.equal(w.healthy, true);
    spy.restore();
    await w.close();
    assert.equal((await verifyLedger(dir)).ok, true);
  });

  it('fsync batch: a burst is one write; every append resolves after a sync that follows it, fsyncIntervalMs after the write', async () => {
    const dir = fresh();
    const interval = 120;
    const clock = new ManualClock();
    const w = await LedgerWriter.open(options(dir, { fsync: 'batch', fsyncIntervalMs: interval, clock }));
    await spy.install(join(root, `probe-${n}`));
    const t0 = clock.now();
    let armed = clock.armed;
    const burst = [0, 1, 2, 3].map((i) => w.append(evidence(i)));
    const resolvedAt: number[] = [];
    burst.forEach((p, i) =>
      p.then(() => {
        resolvedAt[i] = clock.now() - t0;
        spy.events.push(`resolved ${i}`);
      }),
    );
    await clock.untilArmed(armed + 1); // written; the sync is scheduled
    assert.ok(clock.dueIn().includes(interval), `timers due in ${clock.dueIn().join()} ms`);
    clock.advance(interval - 1);
    await settle();
    assert.deepEqual(spy.events, ['write 4'], 'written at once, not synced yet');
    clock.advance(1);
    await Promise.all(burst);
    assert.deepEqual(spy.events, ['write 4', 'sync', 'synced', ...burst.map((_, i) => `resolved ${i}`)]);
    assert.deepEqual(resolvedAt, [interval, interval, interval, interval]);

    // Bursts while the first waits for its sync share that sync.
    spy.reset();
    armed = clock.armed;
    const first = [10, 11].map((i) => w.append(evidence(i)));
    await clock.untilArmed(armed + 1);
    clock.advance(30);
    let written!: () => void;
    const secondWritten = new Promise<void>((r) => (written = r));
    spy.onWrite = async (original, fh, buf) => {
      const done = await original.call(fh, buf, 0, buf.length, null);
      written();
      return done;
    };
    const second = [12, 13].map((i) => w.append(evidence(i)));
    await secondWritten;
    await settle();
    assert.equal(clock.armed, armed + 1, 'no second sync timer');
    assert.ok(clock.dueIn().includes(interval - 30), `timers due in ${clock.dueIn().join()} ms`);
    assert.deepEqual(spy.events, ['write 2', 'write 2']);
    clock.advance(interval - 30);
    await Promise.all([...first, ...second]);
    assert.deepEqual(spy.events.slice(0, 4), ['write 2', 'write 2', 'sync', 'synced']);
    spy.restore();
    await w.close();
    const uids = (await records(dir)).map((r) => uidOf(r.record));
    assert.deepEqual(
      uids.filter((u) => u.startsWith('1.')),
      [0, 1, 2, 3, 10, 11, 12, 13].map((i) => `1.2.3.4.${i}`),
    );
  });

  it('fsync batch: a failing sync rejects the appends waiting for it', async () => {
    const dir = fresh();
    const w = await LedgerWriter.open(options(dir, { fsync: 'batch', fsyncIntervalMs: 20 }));
    await spy.install(join(root, `probe-${n}`));
    spy.onDatasync = () => Promise.reject(Object.assign(new Error('EIO: i/o error'), { code: 'EIO' }));
    const results = await Promise.allSettled([0, 1, 2].map((i) => w.append(evidence(i))));
    assert.deepEqual(
      results.map((r) => r.status),
      ['rejected', 'rejected', 'rejected'],
    );
    for (const r of results) if (r.status === 'rejected') isWriteFailed(/cannot sync .*EIO/)(r.reason);
    assert.equal(w.healthy, false);
    spy.restore();
    await w.close();
  });

  it('a failing batch write rejects all its appends and leaves no partial line; later appends go on', async () => {
    for (const failure of ['short', 'error'] as const) {
      const dir = fresh();
      const w = await LedgerWriter.open(options(dir, { fsync: 'batch', fsyncIntervalMs: 10 }));
      // Multi-byte UTF-8 before the failure: the cut back goes by bytes, not characters.
      await w.append(evidence(0, { callingAeTitle: 'MODALITÄT-Ω-😀' }));
      const file = join(dir, 'ledger-000001.jsonl');
      const before = await readFile(file);
      await spy.install(join(root, `probe-${n}`));
      spy.onWrite = async (original, fh, buf) => {
        // One whole line and half of the next land, then the write stops (disk full) or fails.
        const cut = buf.indexOf(0x0a) + 1 + 100;
        const done = await original.call(fh, buf, 0, cut, null);
        if (failure === 'short') return done;
        throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
      };
      const results = await Promise.allSettled([1, 2, 3, 4].map((i) => w.append(evidence(i))));
      assert.deepEqual(spy.writes, [4]);
      for (const r of results) {
        assert.equal(r.status, 'rejected');
        if (r.status === 'rejected') {
          isWriteFailed(failure === 'short' ? /short write/ : /ENOSPC/)(r.reason);
        }
      }
      assert.equal(w.healthy, false);
      assert.deepEqual(await readFile(file), before, 'the partial batch was cut back');
      spy.restore();
      await Promise.all([5, 6].map((i) => w.append(evidence(i))));
      assert.equal(w.healthy, true);
      await w.close();
      const uids = (await records(dir)).map((r) => uidOf(r.record));
      assert.deepEqual(uids, ['file-start', '1.2.3.4.0', '1.2.3.4.5', '1.2.3.4.6', 'checkpoint']);
      const report = await verifyLedger(dir, { publicKeyPem: KEYS.publicKeyPem });
      assert.equal(report.ok, true, JSON.stringify(report.errors));
      assert.equal(report.tornTail, null);
    }
  });

  it('a record that cannot be sealed rejects only its own append; the rest of the batch is written', async () => {
    const dir = fresh();
    const w = await LedgerWriter.open(options(dir, { fsync: 'always' }));
    await spy.install(join(root, `probe-${n}`));
    const results = await Promise.allSettled([
      w.append(evidence(1)),
      w.append(evidence(2, { bytes: -1 })),
      w.append(evidence(3, { sha256: undefined as unknown as string })),
      w.append(evidence(4, { upstreamAeTitle: undefined as unknown as null })), // a missing optional field: null
    ]);
    assert.deepEqual(
      results.map((r) => r.status),
      ['fulfilled', 'rejected', 'rejected', 'fulfilled'],
    );
    isWriteFailed(/invalid instance record: bytes must be a non-negative integer/)(
      (results[1] as PromiseRejectedResult).reason,
    );
    isWriteFailed(/invalid instance record: sha256 must be a string/)(
      (results[2] as PromiseRejectedResult).reason,
    );
    assert.deepEqual(spy.writes, [2]);
    assert.equal(w.healthy, true);
    spy.restore();
    await w.close();
    const all = (await records(dir)).map((r) => r.record);
    assert.deepEqual(all.map(uidOf), ['file-start', '1.2.3.4.1', '1.2.3.4.4', 'checkpoint']);
    const last = all[2]!;
    assert.ok(last.type === 'instance');
    assert.equal(last.upstreamAeTitle, null);
    assert.equal((await verifyLedger(dir)).ok, true);
  });

  it('a batch that crosses the size limit rotates within it, in order, files under the limit', async () => {
    const dir = fresh();
    const w = await LedgerWriter.open(options(dir, { fsync: 'always', rotateMaxBytes: 5000 }));
    await spy.install(join(root, `probe-${n}`));
    await Promise.all(Array.from({ length: 40 }, (_, i) => w.append(evidence(i))));
    spy.restore();
    await w.close();
    assert.ok(
      spy.writes.some((lines) => lines > 2),
      `batched writes: ${spy.writes.join()}`,
    );
    const files = await ledgerFiles(dir);
    assert.ok(files.length >= 6, files.join());
    for (const file of files) {
      assert.ok((await readFile(join(dir, file))).length <= 5000, `${file} is too big`);
    }
    const all = await records(dir);
    assert.deepEqual(
      all
        .map((r) => r.record)
        .filter((r) => r.type === 'instance')
        .map(uidOf),
      Array.from({ length: 40 }, (_, i) => `1.2.3.4.${i}`),
    );
    for (const file of files) {
      const mine = all.filter((r) => r.file === file).map((r) => r.record.type);
      assert.equal(mine[0], 'file-start');
      assert.equal(mine.at(-1), 'checkpoint');
    }
    const report = await verifyLedger(dir, { publicKeyPem: KEYS.publicKeyPem });
    assert.equal(report.ok, true, JSON.stringify(report.errors));
    assert.equal(report.instances, 40);
  });

  it('a batch of more than 1 MiB is split into several writes, in order', async () => {
    const dir = fresh();
    const w = await LedgerWriter.open(options(dir, { fsync: 'batch', fsyncIntervalMs: 5 }));
    await spy.install(join(root, `probe-${n}`));
    const count = 2000;
    await Promise.all(Array.from({ length: count }, (_, i) => w.append(evidence(i))));
    spy.restore();
    await w.close();
    assert.ok(spy.writes.length >= 2, `writes: ${spy.writes.join()}`);
    assert.equal(
      spy.writes.reduce((a, b) => a + b, 0),
      count,
    );
    const uids = (await records(dir)).map((r) => r.record).filter((r) => r.type === 'instance');
    assert.deepEqual(
      uids.map(uidOf),
      Array.from({ length: count }, (_, i) => `1.2.3.4.${i}`),
    );
    const report = await verifyLedger(dir, { publicKeyPem: KEYS.publicKeyPem });
    assert.equal(report.ok, true, JSON.stringify(report.errors));
  });

  it('a crash tearing a batch write after one whole line is recovered to that line', async () => {
    const dir = fresh();
    const script = join(root, `crash-${n}.mts`);
    // The child writes 3 records one by one, then a burst of 3 whose single write() the "crash" cuts
    // after its first line and 40 bytes of the second: the process dies in the middle of the write.
    await writeFile(
      script,
      `import { open } from 'node:fs/promises';
import { LedgerWriter } from ${JSON.stringify(join(SRC, 'writer.ts'))};
const w = await LedgerWriter.open({ dir: ${JSON.stringify(dir)}, fsync: 'always', fsyncIntervalMs: 10,
  rotateMaxBytes: 1e9, rotateDaily: false, checkpointIntervalMs: 60000, signingKeyPem: null });
const ev = (i) => ({ time: new Date().toISOString(), association: 'a', direction: 'modality-to-archive',
  callingAeTitle: 'A', calledAeTitle: 'B', upstreamAeTitle: null, peerAddress: 'p', archiveAddress: 'q',
  archiveCertSha256: null, clientCertSha256: null, sopClassUid: '1.2', sopInstanceUid: '1.2.' + i,
  transferSyntaxUid: '1.2.840.10008.1.2.1', bytes: i, sha256: 'x'.repeat(64), status: 0, outcome: 'success',
  moveOriginatorAeTitle: null, moveOriginatorMessageId: null });
for (let i = 0; i < 3; i++) await w.append(ev(i));
const probe = await open(${JSON.stringify(join(root, `probe-${n}`))}, 'w');
const proto = Object.getPrototypeOf(probe);
await probe.close();
const write = proto.write;
proto.write = async function (buf, offset, length, position) {
  const lines = buf.toString('latin1').split('\\n');
  const cut = lines[0].length + 1 + 40;
  await write.call(this, buf, 0, cut, null);
  process.stdout.write(JSON.stringify({ lines: lines.length - 1, first: lines[0], torn: 40 }));
  process.exit(0);
};
await Promise.all([3, 4, 5].map((i) => w.append(ev(i))));
`,
    );
    const child = spawn(process.execPath, ['--import', 'tsx', script], {
      cwd: fileURLToPath(new URL('../..', import.meta.url)),
      env: { ...process.env, TSX_DISABLE_CACHE: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    assert.equal(code, 0, stderr);
    const crash = JSON.parse(stdout) as { lines: number; first: string; torn: number };
    assert.equal(crash.lines, 3, 'the burst was one write');

    const file = join(dir, 'ledger-000001.jsonl');
    const lines = (await readFile(file, 'utf8')).split('\n');
    assert.equal(lines.length, 6, 'file-start, 3 records, the whole line of the batch, the torn one');
    assert.equal(lines[4], crash.first);
    assert.equal(lines[5]!.length, crash.torn);
    const before = await verifyLedger(dir);
    assert.equal(before.ok, true, JSON.stringify(before.errors));
    assert.deepEqual(before.tornTail, { file: 'ledger-000001.jsonl', line: 6, bytes: crash.torn });
    assert.equal(before.head?.seq, 5);

    const w = await LedgerWriter.open(options(dir, { signingKeyPem: null }));
    assert.equal(w.recovery?.tornBytes, crash.torn);
    assert.equal(w.head.seq, 6);
    await w.append(evidence(9));
    await w.close();
    const all = (await records(dir)).map((r) => r.record);
    assert.deepEqual(all.map(uidOf), [
      'file-start',
      '1.2.0',
      '1.2.1',
      '1.2.2',
      '1.2.3',
      'recovered',
      '1.2.3.4.9',
      'checkpoint',
    ]);
    assert.equal(all[5]!.prev, all[4]!.hash, 'the recovered record chains to the whole line of the batch');
    const report = await verifyLedger(dir);
    assert.equal(report.ok, true, JSON.stringify(report.errors));
    assert.equal(report.tornTail, null);
  });
});
