// The relay workers seen from the daemon's side (cluster/pool.ts), run in this test's process as the
// primary: a reload that one worker cannot apply leaves every worker on the running policy (the ones that
// took it go back), a worker that dies makes the daemon not ready until its replacement listens, and
// once the daemon is stopping no new connection gets in, even before a worker has heard of the drain.
// The second worker process runs test/cluster/fixtures/refusing-worker.ts: the real worker, refusing any
// configuration that names the peer REFUSED_BY_W2.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parseConfig } from '../../src/config/index.js';
import { echo } from '../../src/dicom/dcmjs.js';
import { WorkerPool } from '../../src/cluster/pool.js';
import { buildRuntimeSnapshot } from '../../src/runtime/snapshot.js';
import { startTestArchive, type TestArchive } from '../helpers/instances.js';
import { proxyYaml, removePki, standardPki } from '../helpers/proxy.js';

const T = { timeout: 120_000 };
const FIXTURE = join(import.meta.dirname, 'fixtures', 'refusing-worker.ts');
/** How long each worker takes to hear the drain (the fixture): the window the last test connects in. */
const DRAIN_DELAY_MS = 3000;
type Pki = Awaited<ReturnType<typeof standardPki>>;

describe('relay workers: reload and restart, as the daemon sees them', () => {
  let pki: Pki;
  let archive: TestArchive;
  let pool: WorkerPool;
  let port = 0;
  const accepted: Array<{ peer: string; worker: number }> = [];
  const refused: Array<{ reason: string; message: string }> = [];
  let closed: Promise<void> | null = null;
  /** Each worker's process id, from its 'worker-started' event. */
  const pids = new Map<number, number>();

  const snapshotWith = (peers: string) =>
    buildRuntimeSnapshot(
      parseConfig(
        proxyYaml({
          archivePort: archive.archive.port,
          pki,
          peers,
          limits: '{ associationRequestTimeout: 10s, idleTimeout: 30s }',
          extra: 'admin: null\nreload: { watch: false }',
        }),
        null,
      ),
    );
  const SCU = '  SCU: { addresses: [127.0.0.1], services: [echo] }';
  const OTHER = '  OTHER: { addresses: [127.0.0.1], services: [echo] }';
  const MARKER = '  REFUSED_BY_W2: { addresses: [127.0.0.1], services: [echo] }';

  /** `n` C-ECHOs as SCU, one after the other (round-robin: they alternate between the workers). */
  async function echoes(n: number): Promise<boolean[]> {
    const results: boolean[] = [];
    for (let i = 0; i < n; i++) {
      const r = await echo({
        host: '127.0.0.1',
        port,
        callingAeTitle: 'SCU',
        calledAeTitle: 'DICOM_PROXY',
        timeoutMs: 20_000,
      });
      results.push(r.ok);
    }
    return results;
  }

  before(async () => {
    process.env.DIMSE_TEST_DRAIN_DELAY_MS = String(DRAIN_DELAY_MS); // inherited by the forked workers
    pki = await standardPki();
    archive = await startTestArchive(pki);
    pool = new WorkerPool(snapshotWith(SCU), {
      count: 2,
      balance: 'round-robin',
      ledger: null,
      onLedgerFailure: 'abort',
      entry: FIXTURE,
    });
    pool.events.on('worker-started', (s) => pids.set(s.worker, s.pid));
    pool.events.on('connection-refused', (r) => refused.push({ reason: r.reason, message: r.message }));
    pool.events.on('association-accepted', (a) =>
      accepted.push({ peer: a.callingAeTitle, worker: Number(a.worker) }),
    );
    port = (await pool.listen()).port;
  });
  after(async () => {
    delete process.env.DIMSE_TEST_DRAIN_DELAY_MS;
    await (closed ?? pool?.close(0));
    await archive?.close();
    await removePki(pki);
  });

  it(
    'a reload one worker refuses: the error names it, and every worker keeps the running policy',
    T,
    async () => {
      assert.deepEqual(await echoes(4), [true, true, true, true]);
      assert.deepEqual(
        [...new Set(accepted.map((a) => a.worker))].sort(),
        [1, 2],
        'both workers serve associations',
      );

      // The control: a reload both take — SCU is no longer a configured peer, on either worker.
      await pool.setSnapshot(snapshotWith(OTHER));
      assert.deepEqual(await echoes(4), [false, false, false, false], 'the new policy on both workers');
      await pool.setSnapshot(snapshotWith(SCU));
      assert.deepEqual(await echoes(2), [true, true]);

      // Worker 2 refuses this one; worker 1 took it (SCU refused there) and must go back.
      accepted.length = 0;
      await assert.rejects(pool.setSnapshot(snapshotWith(`${OTHER}\n${MARKER}`)), (err: Error) => {
        assert.match(err.message, /^relay worker 2: certificate file unreadable/);
        return true;
      });
      assert.deepEqual(await echoes(4), [true, true, true, true], 'SCU still accepted: the running policy');
      assert.deepEqual(
        [...new Set(accepted.map((a) => a.worker))].sort(),
        [1, 2],
        'on both workers, so the one that had applied the refused configuration went back',
      );
    },
  );

  it('a worker that dies: not ready from its exit until its replacement listens', T, async () => {
    assert.equal(pool.listenersBound(), true);
    const readyAtExit: boolean[] = [];
    const exited = new Promise<void>((resolve) =>
      pool.events.once('worker-exited', () => {
        readyAtExit.push(pool.listenersBound()); // what /readyz answers in the gap (observe/admin.ts)
        resolve();
      }),
    );
    const restarted = new Promise<{ worker: number; restarts: number }>((resolve) =>
      pool.events.once('worker-started', (s) => resolve(s)),
    );
    const victim = pids.get(1);
    assert.ok(victim !== undefined && victim > 0, 'worker 1 runs');
    process.kill(victim, 'SIGKILL');
    await exited;
    assert.deepEqual(readyAtExit, [false], 'not ready while a worker is missing');
    const s = await restarted;
    assert.deepEqual({ worker: s.worker, restarts: s.restarts }, { worker: 1, restarts: 1 });
    assert.equal(pool.listenersBound(), true, 'ready again once the replacement listens');
    assert.deepEqual(await echoes(2), [true, true], 'and it serves, on the running policy');
  });

  it(
    'stopping: a connection made before the workers hear the drain is refused (shutting-down)',
    T,
    async () => {
      assert.deepEqual(await echoes(1), [true], 'serving before the drain');
      accepted.length = 0;
      const started = Date.now();
      closed = pool.close(30_000); // the workers get the drain DRAIN_DELAY_MS from now
      // A worker's events reach the primary over IPC, maybe after the SCU saw its connection closed.
      const twoRefused = new Promise<void>((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`refusals seen: ${JSON.stringify(refused)}`)),
          10_000,
        );
        const check = (): void => {
          if (refused.length < 2) return;
          clearTimeout(timer);
          pool.events.off('connection-refused', check);
          resolve();
        };
        pool.events.on('connection-refused', check);
      });
      const late = await echoes(2);
      assert.ok(
        Date.now() - started < DRAIN_DELAY_MS,
        'the echoes ran inside the window (else: inconclusive)',
      );
      assert.deepEqual(late, [false, false], 'no new association once stopping');
      assert.deepEqual(accepted, [], 'none admitted');
      await twoRefused;
      assert.deepEqual(
        refused.map((r) => `${r.reason}: ${r.message}`),
        [
          'shutting-down: the proxy is shutting down; connection closed',
          'shutting-down: the proxy is shutting down; connection closed',
        ],
      );
      await closed;
    },
  );
});
