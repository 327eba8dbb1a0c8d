// The daemon (`node dist/cli.js start`) under the operations an administrator performs on a running
// proxy: a policy reload while a large C-STORE is in flight (and a broken file, and a dry run), client
// certificates replaced on disk (SIGHUP and the file watcher), and SIGTERM during a transfer (drained, or
// aborted at limits.drainTimeout). Every wait is on a log line, a socket event or a result, never a sleep.
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import dimse from 'dcmjs-dimse';
import { store, type StoreResult } from '../../src/dicom/dcmjs.js';
import { issueCertificate } from '../../src/tls/pki.js';
import {
  assertBuilt,
  assertStoredPixels,
  daemonYaml,
  deferAfterEach,
  echoAs,
  httpRequest,
  metricSample,
  startDaemon,
  startGatedArchive,
  type Daemon,
  type GatedArchive,
  type LogLine,
} from '../helpers/daemon.js';
import { testInstance } from '../helpers/instances.js';
import { Procs } from '../helpers/peers.js';
import { removePki, standardPki } from '../helpers/proxy.js';

/** Pixel data of the large instance: big enough to be in flight for a while, whatever the machine. */
const LARGE = 160 * 1024 * 1024;
/** The archive holds the connection that has delivered this much (the transfer is then mid-way). */
const HOLD_AFTER = 16 * 1024 * 1024;
const LIMITS = '{ associationRequestTimeout: 10s, idleTimeout: 5m, drainTimeout: 2m }';
const T = { timeout: 240_000 };

const procs = new Procs();
/** Cleanups of the running test, run in reverse order after it (daemon first, then archive, then files). */
const defer = deferAfterEach();

before(() => assertBuilt());
after(() => procs.stopAll());

async function assertEchoAccepted(daemon: Daemon, callingAeTitle: string): Promise<void> {
  const r = await echoAs(daemon, callingAeTitle);
  assert.ok(r.ok, `C-ECHO from ${callingAeTitle}: ${JSON.stringify(r)}\n${daemon.describe()}`);
}

async function assertEchoRejected(daemon: Daemon, callingAeTitle: string): Promise<void> {
  const r = await echoAs(daemon, callingAeTitle);
  assert.equal(r.error, 'association rejected 1/1/3', `C-ECHO from ${callingAeTitle}: ${JSON.stringify(r)}`);
}

/** A large C-STORE through the daemon, and a way to ask whether (and when) it has finished. */
function startLargeStore(
  daemon: Daemon,
  callingAeTitle: string,
  index: number,
): { result: Promise<StoreResult>; done(): boolean; endedAt(): number } {
  let finished = 0;
  const result = store({
    host: '127.0.0.1',
    port: daemon.port,
    callingAeTitle,
    calledAeTitle: 'DICOM_PROXY',
    instances: [testInstance(index, LARGE)],
    timeoutMs: 180_000, // also dcmjs-dimse's PDU timeout: no PDU comes back until the C-STORE-RSP
  }).finally(() => {
    finished = Date.now();
  });
  return { result, done: () => finished !== 0, endedAt: () => finished };
}

/** Resolves when the archive holds the transfer; fails if the C-STORE ends first or nothing arrives. */
async function transferInFlight(
  archive: GatedArchive,
  transfer: { result: Promise<StoreResult> },
  daemon: Daemon,
): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      archive.held,
      transfer.result.then((r) => {
        throw new Error(`the C-STORE ended before it reached the archive: ${JSON.stringify(r)}`);
      }),
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`no ${HOLD_AFTER} bytes at the archive within 90 s\n${daemon.describe()}`)),
          90_000,
        );
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
  assert.equal(archive.archive.received.length, 0, 'the archive has not received the instance yet');
}

/** The transfer finished with status success and the archive stored every byte of it. */
async function assertStored(
  archive: GatedArchive,
  transfer: { result: Promise<StoreResult> },
  callingAeTitle: string,
  index: number,
): Promise<void> {
  const r = await transfer.result;
  assert.deepEqual(r, { statuses: [0], error: null }, 'the in-flight C-STORE completes with success');
  assert.equal(archive.archive.received.length, 1, 'the archive stored one instance');
  const got = archive.archive.received[0];
  assert.ok(got);
  assert.equal(got.callingAeTitle, callingAeTitle);
  await assertStoredPixels(got.file, index, LARGE);
}

function peerLine(ae: string, services = '[echo, store]'): string {
  return `  ${ae}: { addresses: [127.0.0.1], services: ${services} }`;
}

function associationOf(daemon: Daemon, callingAeTitle: string, from = 0): LogLine[] {
  return daemon.events('association', from).filter((l) => l.callingAeTitle === callingAeTitle);
}

describe('dimse-tls-proxy start: the daemon under live operations', { timeout: 900_000 }, () => {
  it(
    'reloads the policy on SIGHUP while a large C-STORE is in flight; a broken file keeps the old policy; a dry run applies nothing',
    T,
    async () => {
      const pki = await standardPki();
      defer(() => removePki(pki));
      const archive = await startGatedArchive(pki, { holdAfter: HOLD_AFTER });
      defer(() => archive.close());
      const policy = join(pki.dir, 'policy.yaml');
      const writePolicy = (peerLines: string[]): Promise<void> =>
        writeFile(
          policy,
          daemonYaml({ archivePort: archive.archive.port, pki, admin: true, limits: LIMITS, peerLines }),
        );
      await writePolicy([peerLine('CT_OLD'), peerLine('WS_KEEP', '[echo]')]);
      const daemon = await startDaemon(procs, policy, { admin: true });
      defer(() => procs.stop(daemon.child));
      // Started with no node flags: the daemon applies its GC settings itself (util/gc.ts).
      const [runtime] = daemon.events('runtime');
      assert.ok(runtime, daemon.describe());
      assert.equal(runtime.node, process.version);
      assert.deepEqual(runtime.gcFlags, [
        '--incremental-marking-soft-trigger=50',
        '--incremental-marking-hard-trigger=80',
      ]);
      // ... and its heap size by re-executing itself, in the process that was started (same PID).
      assert.deepEqual(runtime.heapFlags, ['--max-semi-space-size=8']);
      const cmdline = (await readFile(`/proc/${daemon.pid}/cmdline`, 'utf8')).split('\0');
      assert.equal(cmdline[1], '--max-semi-space-size=8', JSON.stringify(cmdline));
      const metrics = async (): Promise<string> => {
        const r = await httpRequest(daemon.adminPort, 'GET', '/metrics');
        assert.equal(r.status, 200);
        return r.text;
      };
      const reloads = async (result: 'success' | 'failure'): Promise<number | undefined> =>
        metricSample(await metrics(), 'dimse_proxy_config_reloads_total', `result="${result}"`);

      // A large C-STORE from CT_OLD, held in the middle by the archive.
      const transfer = startLargeStore(daemon, 'CT_OLD', 1);
      await transferInFlight(archive, transfer, daemon);

      // The policy changes under it: CT_OLD out, CT_NEW in.
      let mark = daemon.mark();
      await writePolicy([peerLine('CT_NEW'), peerLine('WS_KEEP', '[echo]')]);
      daemon.signal('SIGHUP');
      const reloaded = await daemon.waitForEvent('config-reloaded', { from: mark });
      const changes = reloaded.changes as string[];
      assert.ok(Array.isArray(changes), JSON.stringify(reloaded));
      assert.ok(changes.includes('peer CT_OLD removed'), `changes: ${JSON.stringify(changes)}`);
      assert.ok(
        changes.some((c) => c.startsWith('peer CT_NEW added')),
        `changes: ${JSON.stringify(changes)}`,
      );
      assert.equal(changes.length, 2, `only the two peers changed: ${JSON.stringify(changes)}`);
      assert.equal(
        daemon.events('config-reload', mark).at(-1)?.trigger,
        'SIGHUP',
        'the reload was triggered by SIGHUP',
      );

      // New associations follow the new policy while CT_OLD's transfer is still held mid-way.
      await assertEchoRejected(daemon, 'CT_OLD');
      await assertEchoAccepted(daemon, 'CT_NEW');
      await assertEchoAccepted(daemon, 'WS_KEEP');
      assert.ok(archive.isHeld() && !transfer.done(), 'the C-STORE was still in flight during the checks');
      assert.equal(archive.archive.received.length, 0);

      // The in-flight association keeps the policy it started with: it completes.
      archive.release();
      await assertStored(archive, transfer, 'CT_OLD', 1);
      const finished = await daemon.waitForEvent('association', {
        where: (l) => l.callingAeTitle === 'CT_OLD' && l.outcome === 'released',
      });
      assert.ok(Number(finished.bytesFromModality) > LARGE, JSON.stringify(finished));
      const beforeNext = daemon.mark();
      await assertEchoRejected(daemon, 'CT_OLD'); // and the next one is refused again
      const refusal = await daemon.waitForEvent('association', {
        from: beforeNext,
        where: (l) => l.callingAeTitle === 'CT_OLD',
      });
      assert.equal(refusal.outcome, 'rejected', JSON.stringify(refusal));
      assert.deepEqual(refusal.reject, { result: 1, source: 1, reason: 3 });
      assert.equal(await reloads('success'), 1);

      // A broken file: the reload fails, names the file and the line, and the running policy stays.
      mark = daemon.mark();
      const broken = [peerLine('CT_NEW'), ` ${peerLine('CT_OLD')}`]; // 3 spaces: a YAML syntax error
      await writePolicy(broken);
      const text = daemonYaml({
        archivePort: archive.archive.port,
        pki,
        admin: true,
        limits: LIMITS,
        peerLines: broken,
      });
      const badLine = text.split('\n').indexOf(` ${peerLine('CT_OLD')}`) + 1;
      assert.ok(badLine > 0);
      daemon.signal('SIGHUP');
      const failed = await daemon.waitForEvent('config-reload-failed', { from: mark });
      assert.equal(failed.stage, 'load', JSON.stringify(failed));
      assert.ok(
        String(failed.error).includes(`${policy}:${badLine}:`),
        `expected ${policy}:${badLine}: in ${JSON.stringify(failed)}`,
      );
      assert.match(String(failed.error), /YAML syntax error/);
      assert.equal(await reloads('failure'), 1, 'the failure counter');
      assert.equal(await reloads('success'), 1, 'no success counted');
      await assertEchoAccepted(daemon, 'CT_NEW');
      await assertEchoRejected(daemon, 'CT_OLD');

      // The dry run: a valid edit is validated and reported (200, the changes), nothing is applied.
      mark = daemon.mark();
      await writePolicy([peerLine('CT_NEW'), peerLine('WS_KEEP', '[echo]'), peerLine('CT_DRY')]);
      const dry = await httpRequest(daemon.adminPort, 'POST', '/-/reload?dryRun=1');
      assert.equal(dry.status, 200, dry.text);
      const body = JSON.parse(dry.text) as { ok: boolean; dryRun: boolean; changes: string[] };
      assert.equal(body.ok, true, dry.text);
      assert.equal(body.dryRun, true, dry.text);
      assert.ok(
        body.changes.length === 1 && body.changes[0]?.startsWith('peer CT_DRY added'),
        `dry-run changes: ${dry.text}`,
      );
      await assertEchoRejected(daemon, 'CT_DRY');
      assert.equal(daemon.events('config-reloaded', mark).length, 0, 'a dry run logs no reload');
      assert.equal(await reloads('success'), 1, 'a dry run counts no reload');

      // The twin: the same file applied by SIGHUP does admit CT_DRY.
      mark = daemon.mark();
      daemon.signal('SIGHUP');
      const applied = await daemon.waitForEvent('config-reloaded', { from: mark });
      assert.deepEqual(applied.changes, body.changes, 'the dry run reported what the reload applied');
      await assertEchoAccepted(daemon, 'CT_DRY');
      assert.equal(await reloads('success'), 2);

      // All of it in one process.
      assert.ok(daemon.isRunning());
      assert.equal(daemon.events('listening').length, 1, 'never restarted');
      daemon.signal('SIGTERM');
      assert.equal((await daemon.exit()).code, 0, daemon.describe());
    },
  );

  for (const trigger of ['SIGHUP', 'the file watcher'] as const) {
    it(
      `presents the client certificate replaced on disk to the archive after a reload by ${trigger}, without a restart`,
      T,
      async () => {
        const pki = await standardPki();
        defer(() => removePki(pki));
        const archive = await startGatedArchive(pki);
        defer(() => archive.close());
        const policy = join(pki.dir, 'policy.yaml');
        await writeFile(
          policy,
          daemonYaml({
            archivePort: archive.archive.port,
            pki,
            // No admin endpoint: its readiness probes would be archive connections too.
            admin: false,
            limits: LIMITS,
            reload: trigger === 'SIGHUP' ? '{ watch: false }' : '{ watch: true, pollInterval: 500ms }',
          }),
        );
        const daemon = await startDaemon(procs, policy, { admin: false });
        defer(() => procs.stop(daemon.child));
        const pid = daemon.pid;
        const certA = new X509Certificate(pki.client.cert).fingerprint256;

        await assertEchoAccepted(daemon, 'SCU');
        assert.deepEqual(archive.fingerprints, [certA], 'the archive saw certificate A');

        // Pair B from the same CA, written over A's files.
        const pairB = await issueCertificate(pki.ca, { commonName: 'dimse-tls-proxy-b', usage: 'client' });
        const certB = new X509Certificate(pairB.cert).fingerprint256;
        assert.notEqual(certA, certB);
        const certFile = pki.files.client as string;
        const keyFile = pki.files['client.key'] as string;
        const mark = daemon.mark();
        await pki.write('client', pairB);
        assert.equal(pki.files.client, certFile, 'the same file names');
        if (trigger === 'SIGHUP') daemon.signal('SIGHUP');
        const reloaded = await daemon.waitForEvent('config-reloaded', { from: mark, timeoutMs: 30_000 });
        assert.deepEqual(reloaded.changes, [], 'the policy text did not change');
        const changedFiles = reloaded.changedFiles as string[];
        assert.ok(
          changedFiles.includes(certFile) && changedFiles.includes(keyFile),
          `changedFiles: ${JSON.stringify(changedFiles)}`,
        );
        const triggers = daemon.events('config-reload', mark).map((l) => String(l.trigger));
        if (trigger === 'SIGHUP') assert.deepEqual(triggers, ['SIGHUP']);
        else
          assert.ok(
            triggers.every((t) => t.startsWith('file change: ')),
            JSON.stringify(triggers),
          );

        await assertEchoAccepted(daemon, 'SCU');
        assert.deepEqual(
          archive.fingerprints,
          [certA, certB],
          'the next association presented certificate B',
        );
        assert.equal(daemon.pid, pid);
        assert.ok(daemon.isRunning(), 'same process');
        assert.equal(daemon.events('listening').length, 1, 'never restarted');
        daemon.signal('SIGTERM');
        assert.equal((await daemon.exit()).code, 0, daemon.describe());
      },
    );
  }

  it('SIGTERM during a large C-STORE: no new connections, the transfer completes, exit 0', T, async () => {
    const pki = await standardPki();
    defer(() => removePki(pki));
    const archive = await startGatedArchive(pki, { holdAfter: HOLD_AFTER });
    defer(() => archive.close());
    const policy = join(pki.dir, 'policy.yaml');
    await writeFile(
      policy,
      daemonYaml({ archivePort: archive.archive.port, pki, admin: true, limits: LIMITS }),
    );
    const daemon = await startDaemon(procs, policy, { admin: true });
    defer(() => procs.stop(daemon.child));

    const transfer = startLargeStore(daemon, 'SCU', 2);
    await transferInFlight(archive, transfer, daemon);
    const mark = daemon.mark();
    daemon.signal('SIGTERM');
    const stopping = await daemon.waitForEvent('stopping', { from: mark });
    assert.equal(stopping.signal, 'SIGTERM');
    assert.ok(Number(stopping.liveAssociations) >= 1, JSON.stringify(stopping));
    assert.equal(stopping.drainTimeoutMs, 120_000);

    // Draining: no new association gets in (dcmjs-dimse would log the refused connect: quiet it).
    dimse.log.setLevel('silent');
    const late = await echoAs(daemon, 'SCU').finally(() => dimse.log.setLevel('error'));
    assert.equal(late.ok, false, JSON.stringify(late));
    assert.match(String(late.error), /ECONNREFUSED|rejected|closed|aborted/, JSON.stringify(late));
    assert.ok(daemon.isRunning() && !transfer.done(), 'still draining the held transfer');

    archive.release();
    await assertStored(archive, transfer, 'SCU', 2);
    const { code } = await daemon.exit(60_000);
    assert.equal(code, 0, daemon.describe());
    const released = associationOf(daemon, 'SCU', mark).filter((l) => l.outcome === 'released');
    assert.equal(released.length, 1, JSON.stringify(daemon.events('association', mark)));
    const stopped = daemon.lines.findIndex((l) => l.event === 'stopped');
    assert.ok(stopped > daemon.lines.indexOf(released[0] as LogLine), "'stopped' is the last word");
  });

  it(
    'SIGTERM with limits.drainTimeout 1s and a stalled archive: the association is aborted after ~1 s, exit 0',
    T,
    async () => {
      const pki = await standardPki();
      defer(() => removePki(pki));
      // The archive stops reading mid-transfer and is never released: a stalled PACS.
      const archive = await startGatedArchive(pki, { holdAfter: HOLD_AFTER });
      defer(() => archive.close());
      const policy = join(pki.dir, 'policy.yaml');
      await writeFile(
        policy,
        daemonYaml({
          archivePort: archive.archive.port,
          pki,
          admin: true,
          limits: '{ associationRequestTimeout: 10s, idleTimeout: 5m, drainTimeout: 1s }',
        }),
      );
      const daemon = await startDaemon(procs, policy, { admin: true });
      defer(() => procs.stop(daemon.child));

      const transfer = startLargeStore(daemon, 'SCU', 3);
      await transferInFlight(archive, transfer, daemon);
      const mark = daemon.mark();
      const signalledAt = Date.now();
      daemon.signal('SIGTERM');
      const stopping = await daemon.waitForEvent('stopping', { from: mark });
      assert.equal(stopping.drainTimeoutMs, 1000);

      const aborted = await daemon.waitForEvent('association', {
        from: mark,
        where: (l) => l.callingAeTitle === 'SCU',
      });
      assert.equal(aborted.outcome, 'aborted-by-proxy', JSON.stringify(aborted));
      assert.equal(aborted.reason, 'proxy shutting down', JSON.stringify(aborted));
      const r = await transfer.result;
      assert.notEqual(r.statuses[0], 0, `the held C-STORE cannot succeed: ${JSON.stringify(r)}`);
      // The modality learns of it at the drain timeout (the signal was sent before the drain began).
      const scuWaited = transfer.endedAt() - signalledAt;
      assert.ok(scuWaited >= 990, `the SCU's association ended ${scuWaited} ms after SIGTERM`);
      assert.ok(scuWaited < 10_000, `the SCU's association ended ${scuWaited} ms after SIGTERM`);
      const { code } = await daemon.exit(30_000);
      const elapsed = Date.now() - signalledAt;
      assert.equal(code, 0, daemon.describe());
      assert.equal(daemon.events('stopped', mark).length, 1, daemon.describe());

      // Aborted at the drain timeout: not before it, and not long after (the abort gives the sockets 2 s).
      const ms = (l: LogLine): number => Date.parse(String(l.timestamp));
      const waited = ms(aborted) - ms(stopping);
      assert.ok(waited >= 990, `aborted ${waited} ms after 'stopping', before the 1 s drain timeout`);
      assert.ok(waited < 10_000, `aborted ${waited} ms after 'stopping'`);
      assert.ok(elapsed < 20_000, `exited ${elapsed} ms after SIGTERM`);
      assert.equal(archive.archive.received.length, 0, 'nothing stored');
    },
  );
});
