// The admin tools against the daemon as admins run it (`node dist/cli.js start`): the live associations
// (GET /associations, `status --associations`) while a C-STORE is held mid-way by the archive; `explain`
// against the running policy (GET /explain, `explain --admin`), its refusals next to its accepts; the log
// level changed at runtime (`log-level`, POST /-/log-level), refused for a bad level or a GET, and reset by
// the next reload. Waits are on log lines and HTTP answers, never on the wall clock.
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { store } from '../../src/dicom/dcmjs.js';
import {
  assertBuilt,
  daemonYaml,
  deferAfterEach,
  echoAs,
  httpRequest,
  runCli as cli,
  startDaemon,
  startGatedArchive,
} from '../helpers/daemon.js';
import { testInstance } from '../helpers/instances.js';
import { Procs } from '../helpers/peers.js';
import { removePki, standardPki } from '../helpers/proxy.js';

const procs = new Procs();
const defer = deferAfterEach();
before(() => assertBuilt());
after(() => procs.stopAll());

describe('admin tools on a running daemon', { timeout: 300_000 }, () => {
  it('lists live associations, explains the running policy, changes the log level until the next reload', async () => {
    const pki = await standardPki();
    defer(() => removePki(pki));
    const archive = await startGatedArchive(pki, { holdAfter: 4 * 1024 * 1024 });
    defer(() => archive.close());
    const policy = join(pki.dir, 'policy.yaml');
    await writeFile(
      policy,
      daemonYaml({
        archivePort: archive.archive.port,
        pki,
        admin: true,
        peerLines: ['  CT1: { addresses: [127.0.0.1], services: [echo, store] }'],
      }),
    );
    const daemon = await startDaemon(procs, policy, { admin: true });
    defer(() => procs.stop(daemon.child));
    const admin = `127.0.0.1:${daemon.adminPort}`;

    // --- live associations: none, then the held C-STORE
    const empty = await httpRequest(daemon.adminPort, 'GET', '/associations');
    assert.equal(empty.status, 200);
    assert.deepEqual(JSON.parse(empty.text), { count: 0, associations: [] });
    const transfer = store({
      host: '127.0.0.1',
      port: daemon.port,
      callingAeTitle: 'CT1',
      calledAeTitle: 'DICOM_PROXY',
      instances: [testInstance(1, 24 * 1024 * 1024)],
      timeoutMs: 120_000,
    });
    await archive.held;
    const live = JSON.parse((await httpRequest(daemon.adminPort, 'GET', '/associations')).text) as {
      count: number;
      associations: Array<Record<string, unknown> & { state: { caller: string; far: string } }>;
    };
    assert.equal(live.count, 1, JSON.stringify(live));
    const a = live.associations[0]!;
    assert.equal(a.peer, 'CT1');
    assert.equal(a.calledAeTitle, 'DICOM_PROXY');
    assert.equal(a.upstream, 'archive');
    assert.equal(a.remoteAddress, '127.0.0.1');
    assert.deepEqual(a.state, { caller: 'Sta6', far: 'Sta6' });
    assert.deepEqual(a.operations, { 'C-STORE-RQ': 1 });
    assert.ok(
      (a.bytesFromModality as number) > 4 * 1024 * 1024,
      `bytes relayed so far: ${String(a.bytesFromModality)}`,
    );
    const status = cli(['status', '--admin', admin, '--associations']);
    assert.match(status.stdout, /1 live association\(s\)\n.*ID +PEER +FROM/);
    assert.match(status.stdout, /CT1 +127\.0\.0\.1:\d+ +DICOM_PROXY -> archive +Sta6\/Sta6 +\S+ +C-STORE 1/);
    archive.release();
    assert.deepEqual(await transfer, { statuses: [0], error: null });
    await daemon.waitForEvent('association');
    const after = JSON.parse((await httpRequest(daemon.adminPort, 'GET', '/associations')).text) as {
      count: number;
    };
    assert.equal(after.count, 0, 'gone once it ended');

    // --- explain against the running policy: an accept next to each refusal
    const explained = async (
      qs: string,
    ): Promise<Record<string, unknown> & { association: { answer: string } }> => {
      const r = await httpRequest(daemon.adminPort, 'GET', `/explain?${qs}`);
      assert.equal(r.status, 200, r.text);
      return JSON.parse(r.text) as Record<string, unknown> & { association: { answer: string } };
    };
    assert.match(
      (await explained('calling=CT1&from=127.0.0.1&called=DICOM_PROXY&service=store')).association.answer,
      /^A-ASSOCIATE-AC/,
    );
    assert.equal(
      (await explained('calling=CT9&from=127.0.0.1&called=DICOM_PROXY')).association.answer,
      'A-ASSOCIATE-RJ 1/1/3',
    );
    assert.equal((await httpRequest(daemon.adminPort, 'GET', '/explain?calling=CT1')).status, 400);
    const ok = cli([
      'explain',
      '--admin',
      admin,
      '--calling',
      'CT1',
      '--from',
      '127.0.0.1',
      '--called',
      'DICOM_PROXY',
      '--service',
      'echo',
    ]);
    assert.equal(ok.code, 0, ok.stdout + ok.stderr);
    assert.match(ok.stdout, /ACCEPT[\s\S]*C-ECHO-RQ 1\.2\.840\.10008\.1\.1: ALLOW/);
    const refused = cli([
      'explain',
      '--admin',
      admin,
      '--calling',
      'CT1',
      '--from',
      '127.0.0.2',
      '--called',
      'DICOM_PROXY',
    ]);
    assert.equal(refused.code, 1);
    assert.match(
      refused.stdout,
      /REJECT\n {2}answer: A-ASSOCIATE-RJ 1\/1\/3\n {2}refusal: address-not-allowed/,
    );
    const fromFile = cli([
      'explain',
      '-c',
      policy,
      '--calling',
      'CT1',
      '--from',
      '127.0.0.1',
      '--service',
      'find',
    ]);
    assert.equal(fromFile.code, 1, 'the file policy: find is not a service of CT1');
    assert.match(fromFile.stdout, /C-FIND-RQ .*: REFUSE/);

    // --- log level: info; debug until the next reload; a bad level and a GET with a level are refused
    assert.match(
      cli(['log-level', '--admin', admin]).stdout,
      /^log level info \(logging\.level in the configuration: info\)/,
    );
    assert.equal((await httpRequest(daemon.adminPort, 'GET', '/-/log-level?level=debug')).status, 405);
    const bad = cli(['log-level', 'verbose', '--admin', admin]);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /level must be one of error, warn, info, debug, not "verbose"/);
    let mark = daemon.mark();
    assert.equal(cli(['log-level', 'debug', '--admin', admin]).code, 0);
    await daemon.waitForEvent('log-level', { from: mark });
    mark = daemon.mark();
    assert.ok((await echoAs(daemon, 'CT1')).ok);
    await daemon.waitForEvent('association-accepted', { from: mark }); // a debug line: only logged at debug
    mark = daemon.mark();
    daemon.signal('SIGHUP');
    await daemon.waitForEvent('config-reloaded', { from: mark });
    assert.match(
      cli(['log-level', '--admin', admin]).stdout,
      /^log level info /,
      'the reload restored logging.level',
    );
    mark = daemon.mark();
    assert.ok((await echoAs(daemon, 'CT1')).ok);
    await daemon.waitForEvent('association', { from: mark });
    assert.deepEqual(daemon.events('association-accepted', mark), [], 'no debug lines at info');
  });
});
