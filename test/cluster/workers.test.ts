// The daemon with relay workers (`workers: 2`), as an administrator runs it: both workers carry
// associations and write one ledger chain through the daemon's process; the association limits hold over
// both (a peer at its limit on one worker is refused on the other, and let in again once it is below);
// a reload reaches every worker; a worker killed mid-transfer takes only its own associations with it, is
// logged, counted and restarted, while the other worker's associations carry on; SIGTERM drains all.
// Waits are on log lines, metrics and socket events, never on the wall clock.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { store } from '../../src/dicom/dcmjs.js';
import {
  CLI,
  assertBuilt,
  daemonYaml,
  deferAfterEach,
  echoAs,
  httpRequest,
  metricSample,
  startDaemon,
  startGatedArchive,
  type Daemon,
} from '../helpers/daemon.js';
import { testInstance, startTestArchive, type TestArchive } from '../helpers/instances.js';
import { Procs } from '../helpers/peers.js';
import { removePki, standardPki } from '../helpers/proxy.js';
import { RawScu, VERIFICATION, associateRq } from '../helpers/raw.js';

const T = { timeout: 180_000 };
const LIMITS = '{ associationRequestTimeout: 10s, idleTimeout: 5m, drainTimeout: 30s }';
const procs = new Procs();
const defer = deferAfterEach();
before(() => assertBuilt());
after(() => procs.stopAll());

/** Polls `check` (every 50 ms) until it holds; fails naming `what` after `ms`. */
async function until(check: () => Promise<boolean> | boolean, what: string, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function metrics(daemon: Daemon): Promise<string> {
  const r = await httpRequest(daemon.adminPort, 'GET', '/metrics');
  assert.equal(r.status, 200);
  return r.text;
}

/** Waits for both workers' 'worker-started' lines (from `from`); returns their pids by index. */
async function workersUp(daemon: Daemon, from = 0): Promise<Map<number, number>> {
  const pids = new Map<number, number>();
  for (const w of [1, 2]) {
    const l = await daemon.waitForEvent('worker-started', { from, where: (x) => Number(x.worker) === w });
    pids.set(w, Number(l.pid));
  }
  return pids;
}

/** True while `pid` runs (a zombie awaiting its reaper has exited). */
function running(pid: number): boolean {
  const stat = orElse(() => readFileSync(`/proc/${pid}/stat`, 'utf8'), '');
  return stat !== '' && stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
}

/** `read()`, or `fallback` when it throws (a /proc entry of a process or socket that has just gone). */
function orElse<T>(read: () => T, fallback: T): T {
  try {
    return read();
  } catch {
    return fallback;
  }
}

/**
 * Inodes of the TCP sockets (from /proc/net/tcp and tcp6) in `state` ('01' ESTABLISHED, '0A' LISTEN) whose
 * `end` address (local or remote) has port `port`.
 */
function tcpInodes(state: '01' | '0A', end: 'local' | 'remote', port: number): Set<string> {
  const inodes = new Set<string>();
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    for (const line of orElse(() => readFileSync(file, 'utf8'), '')
      .split('\n')
      .slice(1)) {
      const f = line.trim().split(/\s+/);
      const address = f[end === 'local' ? 1 : 2];
      if (!address || f[3] !== state || !f[9]) continue;
      if (parseInt(address.split(':')[1] ?? '', 16) === port) inodes.add(f[9]);
    }
  }
  return inodes;
}

/** True when process `pid` holds one of the sockets `inodes`. */
function holdsSocket(pid: number, inodes: Set<string>): boolean {
  return orElse(() => readdirSync(`/proc/${pid}/fd`), []).some((fd) => {
    const m = /^socket:\[(\d+)\]$/.exec(orElse(() => readlinkSync(`/proc/${pid}/fd/${fd}`), ''));
    return m?.[1] !== undefined && inodes.has(m[1]);
  });
}

/** The pid (among `pids`) holding an established TCP connection to 127.0.0.1:`port`. */
function pidConnectedTo(pids: Iterable<number>, port: number): number | null {
  const inodes = tcpInodes('01', 'remote', port);
  return [...pids].find((pid) => holdsSocket(pid, inodes)) ?? null;
}

/** An association held open from a raw SCU (A-ASSOCIATE-AC received), to release or lose later. */
async function openAssociation(port: number, calling: string): Promise<RawScu> {
  const scu = await RawScu.connect(port);
  scu.send(associateRq(calling, 'DICOM_PROXY', [{ id: 1, abstractSyntax: VERIFICATION }]));
  const ac = await scu.next(20_000);
  assert.equal(ac?.type, 0x02, `A-ASSOCIATE-AC for ${calling}`);
  return scu;
}

/** A-RELEASE-RQ; true when the A-RELEASE-RP came back (the association was alive end to end). */
async function release(scu: RawScu): Promise<boolean> {
  if (scu.closed) return false;
  scu.send(Buffer.from([0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0]));
  const rp = await scu.next(20_000).catch(() => null);
  scu.destroy();
  return rp?.type === 0x06;
}

/**
 * A fresh PKI, a mutual-TLS test archive, and the daemon started on a policy with `extra` (the workers
 * setting) and `peerLines`; waits for both workers. Everything is stopped after the test.
 */
async function startWithWorkers(o: {
  extra: string;
  admin?: boolean;
  peerLines?: readonly string[];
  ledger?: boolean;
}): Promise<{ daemon: Daemon; pids: Map<number, number>; archive: TestArchive; ledgerPath: string }> {
  const pki = await standardPki();
  defer(() => removePki(pki));
  const archive = await startTestArchive(pki);
  defer(() => archive.close());
  const ledgerPath = join(pki.dir, 'ledger');
  const policy = join(pki.dir, 'policy.yaml');
  const admin = o.admin ?? true;
  await writeFile(
    policy,
    daemonYaml({
      archivePort: archive.archive.port,
      pki,
      admin,
      limits: LIMITS,
      ...(o.peerLines ? { peerLines: o.peerLines } : {}),
      extra: [o.extra, ...(o.ledger ? [`ledger: { path: ${ledgerPath} }`] : [])].join('\n'),
    }),
  );
  const daemon = await startDaemon(procs, policy, { admin });
  defer(() => procs.stop(daemon.child));
  const pids = await workersUp(daemon);
  return { daemon, pids, archive, ledgerPath };
}

describe('workers: 2 (relay worker processes behind one daemon)', { timeout: 600_000 }, () => {
  it(
    'both workers relay; one ledger chain verifies; metrics count per worker; SIGTERM drains them',
    T,
    async () => {
      const { daemon, pids, archive, ledgerPath } = await startWithWorkers({
        extra: 'workers: 2',
        ledger: true,
      });
      assert.equal(pids.size, 2);
      assert.ok(![...pids.values()].includes(daemon.pid), 'the workers are processes of their own');
      const [listening] = daemon.events('listening');
      assert.equal(listening?.workers, 2, JSON.stringify(daemon.lines.slice(0, 8)));

      const N = 8;
      const results = await Promise.all(
        Array.from({ length: N }, (_, i) =>
          store({
            host: '127.0.0.1',
            port: daemon.port,
            callingAeTitle: 'SCU',
            calledAeTitle: 'DICOM_PROXY',
            instances: [testInstance(i, 64 * 1024)],
            timeoutMs: 30_000,
          }),
        ),
      );
      for (const r of results) assert.deepEqual(r, { statuses: [0], error: null }, daemon.describe());
      assert.equal(archive.archive.received.length, N);

      const text = await metrics(daemon);
      assert.equal(
        metricSample(text, 'dimse_proxy_workers', ''),
        2,
        text
          .split('\n')
          .filter((l) => l.includes('worker'))
          .join('\n'),
      );
      const w1 = metricSample(text, 'dimse_proxy_worker_associations_total', 'worker="1"') ?? 0;
      const w2 = metricSample(text, 'dimse_proxy_worker_associations_total', 'worker="2"') ?? 0;
      assert.equal(
        w1 + w2,
        N,
        text
          .split('\n')
          .filter((l) => l.includes('worker'))
          .join('\n'),
      );
      assert.ok(w1 > 0 && w2 > 0, `both workers carried associations: ${w1} and ${w2}`);
      // Counted once synced (ledger.fsyncInterval after the write).
      await until(
        async () => metricSample(await metrics(daemon), 'dimse_proxy_ledger_records_total', '') === N,
        `dimse_proxy_ledger_records_total ${N}`,
      );
      // The association lines come from the daemon's process, one per association, whichever worker.
      await daemon.waitFor(() => daemon.events('association').length >= N, {
        what: `${N} association lines`,
      });

      daemon.signal('SIGTERM');
      const status = await daemon.exit(60_000);
      assert.deepEqual(status, { code: 0, signal: null }, daemon.describe());
      for (const pid of pids.values()) {
        assert.throws(() => process.kill(pid, 0), `worker ${pid} has exited with the daemon`);
      }
      const verify = spawnSync(process.execPath, [CLI, 'ledger', 'verify', '--ledger', ledgerPath], {
        encoding: 'utf8',
      });
      assert.equal(verify.status, 0, verify.stdout + verify.stderr);
      assert.match(verify.stdout, /INTACT/);
      // One chain: every worker's records are in the daemon's one ledger, each instance once.
      const records = readdirSync(ledgerPath)
        .flatMap((f) => readFileSync(join(ledgerPath, f), 'utf8').split('\n'))
        .filter((l) => l.includes('"type":"instance"'));
      assert.equal(records.length, N, records.join('\n'));
      assert.equal(
        new Set(records.map((l) => (JSON.parse(l) as { sopInstanceUid: string }).sopInstanceUid)).size,
        N,
      );
    },
  );

  it(
    'a peer at its association limit on one worker is refused on the other (2/3/2), and let in once below it',
    T,
    async () => {
      const { daemon } = await startWithWorkers({
        extra: 'workers: 2',
        peerLines: ['  SCU: { addresses: [127.0.0.1], services: [echo], maxAssociations: 1 }'],
      });
      const held = await openAssociation(daemon.port, 'SCU');
      defer(() => held.destroy());
      // GET /associations asks every worker: the held association, with the worker that carries it.
      const listed = JSON.parse((await httpRequest(daemon.adminPort, 'GET', '/associations')).text) as {
        count: number;
        associations: Array<{ peer: string; worker?: number; state: { caller: string } }>;
      };
      assert.equal(listed.count, 1, JSON.stringify(listed));
      assert.equal(listed.associations[0]?.peer, 'SCU');
      assert.equal(listed.associations[0]?.state.caller, 'Sta6');
      assert.ok([1, 2].includes(listed.associations[0]?.worker ?? 0), JSON.stringify(listed));
      // Each new connection goes to a worker in turn: among three, at least one lands on the worker that
      // does not carry the open association and so counts none of its own; the daemon's count refuses it.
      const from = daemon.mark();
      for (let i = 0; i < 3; i++) {
        const r = await echoAs(daemon, 'SCU');
        assert.equal(r.error, 'association rejected 2/3/2', `echo ${i}: ${JSON.stringify(r)}`);
      }
      await daemon.waitFor(() => daemon.events('association-rejected', from).length >= 3, {
        what: 'three association-rejected lines',
      });
      const rejected = daemon.events('association-rejected', from);
      assert.equal(rejected.length, 3, daemon.describe());
      for (const l of rejected) assert.equal(l.refusal, 'too-many-peer-associations');
      assert.ok(
        rejected.some((l) => String(l.detail).includes('counted over all workers')),
        `one refusal came from the count over both workers: ${JSON.stringify(rejected)}`,
      );
      // Below the limit again: accepted, on whichever worker.
      assert.equal(await release(held), true, 'the held association releases');
      await daemon.waitForEvent('association', { from, where: (l) => l.outcome === 'released' });
      // An association counts until its end is recorded: the next one starts after its log line.
      for (let i = 0; i < 2; i++) {
        const mark = daemon.mark();
        const r = await echoAs(daemon, 'SCU');
        assert.ok(r.ok, `echo after the release ${i}: ${JSON.stringify(r)}`);
        await daemon.waitForEvent('association', { from: mark, where: (l) => l.outcome === 'released' });
      }
    },
  );

  it(
    'a reload reaches every worker; a worker killed mid-transfer takes only its own associations, is logged and restarted',
    T,
    async () => {
      const pki = await standardPki();
      defer(() => removePki(pki));
      const archive = await startGatedArchive(pki, { holdAfter: 4 * 1024 * 1024 });
      defer(() => archive.close());
      const policy = join(pki.dir, 'policy.yaml');
      const write = (peerLines: string[]): Promise<void> =>
        writeFile(
          policy,
          daemonYaml({
            archivePort: archive.archive.port,
            pki,
            admin: true,
            limits: LIMITS,
            peerLines,
            extra: 'workers: 2',
          }),
        );
      await write([
        '  SCU: { addresses: [127.0.0.1], services: [echo, store] }',
        '  OLD_WS: { addresses: [127.0.0.1], services: [echo] }',
      ]);
      const daemon = await startDaemon(procs, policy, { admin: true });
      defer(() => procs.stop(daemon.child));
      const pids = await workersUp(daemon);

      // Reload: OLD_WS leaves the policy. Every worker refuses it afterwards (four tries: both workers).
      for (let i = 0; i < 4; i++)
        assert.ok((await echoAs(daemon, 'OLD_WS')).ok, `OLD_WS before the reload (${i})`);
      await write(['  SCU: { addresses: [127.0.0.1], services: [echo, store] }']);
      const beforeReload = daemon.mark();
      daemon.signal('SIGHUP');
      await daemon.waitForEvent('config-reloaded', { from: beforeReload });
      for (let i = 0; i < 4; i++) {
        const r = await echoAs(daemon, 'OLD_WS');
        assert.equal(
          r.error,
          'association rejected 1/1/3',
          `OLD_WS after the reload (${i}): ${JSON.stringify(r)}`,
        );
      }

      // A large C-STORE held mid-transfer by the archive, and four more associations held open.
      const transfer = store({
        host: '127.0.0.1',
        port: daemon.port,
        callingAeTitle: 'SCU',
        calledAeTitle: 'DICOM_PROXY',
        instances: [testInstance(1, 32 * 1024 * 1024)],
        timeoutMs: 60_000,
      });
      await archive.held;
      const open = await Promise.all(Array.from({ length: 4 }, () => openAssociation(daemon.port, 'SCU')));
      defer(() => open.forEach((s) => s.destroy()));
      const carrier = pidConnectedTo(pids.values(), archive.archive.port);
      assert.ok(
        carrier !== null,
        `a worker holds the connection to the archive (${[...pids.values()].join(', ')})`,
      );
      const survivor = [...pids.values()].find((p) => p !== carrier);
      assert.ok(survivor !== undefined);

      const beforeKill = daemon.mark();
      process.kill(carrier, 'SIGKILL');
      const exited = await daemon.waitForEvent('worker-exited', { from: beforeKill });
      assert.equal(exited.pid, carrier);
      assert.equal(exited.signal, 'SIGKILL');
      const carried = Number(exited.associations);
      assert.ok(carried >= 1, `the dead worker carried the transfer: ${JSON.stringify(exited)}`);
      // Its associations end in the log (and so in metrics and audit) as worker-exited.
      await daemon.waitFor(
        () =>
          daemon.events('association', beforeKill).filter((l) => l.outcome === 'worker-exited').length ===
          carried,
        {
          what: `${carried} association lines with outcome worker-exited`,
        },
      );
      const r = await transfer;
      assert.notDeepEqual(r.statuses, [0], 'no success is reported for the instance the dead worker carried');
      assert.equal(archive.archive.received.length, 0, 'and the archive did not store it');

      // The other worker's associations are untouched: each releases end to end.
      const released = await Promise.all(open.map((s) => release(s)));
      const alive = released.filter(Boolean).length;
      assert.equal(
        alive,
        open.length - (carried - 1),
        `released ${alive} of ${open.length}; the dead worker carried ${carried}`,
      );
      assert.ok(alive > 0, 'the surviving worker carried some of them');
      assert.doesNotThrow(() => process.kill(survivor, 0), 'the other worker still runs');

      // Restarted with the same index, and serving (with the reloaded policy).
      const restarted = await daemon.waitForEvent('worker-started', {
        from: beforeKill,
        where: (l) => l.worker === exited.worker,
      });
      assert.equal(restarted.restarts, 1);
      assert.notEqual(restarted.pid, carrier);
      const text = await metrics(daemon);
      assert.equal(metricSample(text, 'dimse_proxy_worker_exits_total', ''), 1);
      assert.equal(metricSample(text, 'dimse_proxy_workers', ''), 2);
      for (let i = 0; i < 4; i++) {
        assert.ok((await echoAs(daemon, 'SCU')).ok, `SCU after the restart (${i})`);
        assert.equal((await echoAs(daemon, 'OLD_WS')).error, 'association rejected 1/1/3');
      }
      daemon.signal('SIGTERM');
      assert.deepEqual(await daemon.exit(60_000), { code: 0, signal: null });
    },
  );

  it('workers whose daemon process is killed exit, closing their associations (no orphans)', T, async () => {
    const { daemon, pids } = await startWithWorkers({ extra: 'workers: 2', admin: false });
    const open = await openAssociation(daemon.port, 'SCU');
    defer(() => open.destroy());
    daemon.signal('SIGKILL');
    await daemon.exit(30_000);
    // The worker exits with its daemon (node:cluster, on the IPC channel's close): the modality sees the
    // connection close (no success can be given for anything any more).
    const next = await open.next(20_000).catch(() => null);
    assert.ok(next === null || next.type === 0x07, `A-ABORT or close, got ${JSON.stringify(next)}`);
    await open.waitClosed(20_000);
    const deadline = Date.now() + 20_000;
    for (const pid of pids.values()) {
      while (running(pid)) {
        assert.ok(Date.now() < deadline, `worker ${pid} still runs 20 s after its daemon was killed`);
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  });

  it('balance: reuseport: each worker binds the listener itself; both relay', T, async () => {
    const { daemon, pids } = await startWithWorkers({ extra: 'workers: { count: 2, balance: reuseport }' });
    // Both workers hold a listening socket of their own on the one port (SO_REUSEPORT); the daemon none.
    for (const pid of pids.values())
      assert.ok(listensOn(pid, daemon.port), `worker ${pid} listens on ${daemon.port}`);
    assert.equal(listensOn(daemon.pid, daemon.port), false, 'the daemon process does not accept');
    // Two rounds of eight at once (limits.pendingPerAddress is 8 over both workers).
    for (let round = 0; round < 2; round++) {
      const results = await Promise.all(Array.from({ length: 8 }, () => echoAs(daemon, 'SCU')));
      for (const r of results) assert.ok(r.ok, `${JSON.stringify(r)}\n${daemon.describe()}`);
    }
    const text = await metrics(daemon);
    const w1 = metricSample(text, 'dimse_proxy_worker_associations_total', 'worker="1"') ?? 0;
    const w2 = metricSample(text, 'dimse_proxy_worker_associations_total', 'worker="2"') ?? 0;
    assert.equal(w1 + w2, 16);
    daemon.signal('SIGTERM');
    assert.deepEqual(await daemon.exit(60_000), { code: 0, signal: null });
  });
});

/** True when process `pid` holds a listening TCP socket on `port` (from /proc). */
function listensOn(pid: number, port: number): boolean {
  return holdsSocket(pid, tcpInodes('0A', 'local', port));
}
