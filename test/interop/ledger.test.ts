// The integrity ledger end to end, with the real proxy process and DCMTK: storescu -> proxy -> storescp
// (+tls, bit-preserving). Every received file is found in the ledger; edits are detected; a kill -9 in
// the middle of a transfer leaves a ledger that verifies and a chain the next start continues.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { writeDemoPki, type DemoPkiPaths } from '../../src/tls/pki.js';
import { writeSigningKey } from '../../src/integrity/keys.js';
import { writeInstances } from '../helpers/dicom.js';
import { runCli as cli } from '../helpers/daemon.js';
import {
  Procs,
  freePort,
  listFiles,
  makeTempDir,
  removeTempDir,
  runStorescu,
  skipUnlessPeer,
  startStorescp,
  waitForListen,
} from '../helpers/peers.js';

const ROOT = resolve(import.meta.dirname, '..', '..');
const CLI = join(ROOT, 'dist', 'cli.js');

describe('integrity ledger with real peers', () => {
  let work: string;
  let pki: DemoPkiPaths;
  let publicKey: string;
  let signingKey: string;
  const procs = new Procs();

  before(() => {
    // The CLI under test is the built one.
    if (!existsSync(CLI) || statSync(CLI).mtimeMs < statSync(join(ROOT, 'src', 'cli.ts')).mtimeMs) {
      const b = spawnSync('npx', ['tsc', '-p', 'tsconfig.build.json'], { cwd: ROOT, encoding: 'utf8' });
      assert.equal(b.status, 0, b.stdout + b.stderr);
    }
  });
  after(async () => {
    await procs.stopAll();
    await removeTempDir(work);
  });

  async function setup(): Promise<void> {
    work = await makeTempDir('dimse-ledger-e2e');
    pki = await writeDemoPki(join(work, 'certs'));
    const keys = await writeSigningKey(join(work, 'certs'), { overwrite: true });
    publicKey = keys.publicKey;
    signingKey = keys.privateKey;
  }

  function config(
    name: string,
    listenPort: number,
    archivePort: number,
    ledgerDir: string,
    fsync = 'batch',
  ): string {
    const file = join(work, `${name}.yaml`);
    writeFileSync(
      file,
      [
        `listen: { host: 127.0.0.1, port: ${listenPort} }`,
        'upstreams:',
        '  archive:',
        '    host: 127.0.0.1',
        `    port: ${archivePort}`,
        '    aeTitle: ARCHIVE',
        `    tls: { ca: ${pki.caCert}, cert: ${pki.proxyClientCert}, key: ${pki.proxyClientKey}, serverName: archive.local }`,
        'routes:',
        '  - { calledAeTitle: DICOM_PROXY, upstream: archive }',
        'peers:',
        '  STORESCU: { addresses: [127.0.0.1], services: [echo, store] }',
        `ledger: { path: ${ledgerDir}, fsync: ${fsync}, signingKey: ${signingKey} }`,
        'logging: { level: info }',
        '',
      ].join('\n'),
    );
    return file;
  }

  async function startProxyProcess(cfg: string, port: number): Promise<ChildProcess> {
    const child = procs.spawn(process.execPath, [CLI, 'start', '-c', cfg], { name: 'proxy' });
    await waitForListen(port, { procs, child, timeoutMs: 15_000 });
    return child;
  }

  async function stop(child: ChildProcess, signal: NodeJS.Signals): Promise<void> {
    const exited = new Promise((r) => child.once('exit', r));
    child.kill(signal);
    await exited;
  }

  test('every file storescp received is in the ledger once, with success; verify passes; edits are found', async (t) => {
    if (!skipUnlessPeer(t, 'dcmtk')) return;
    await setup();
    const scp = await startStorescp(procs, {
      outDir: join(work, 'received'),
      aeTitle: 'ARCHIVE',
      tls: { key: pki.archiveKey, cert: pki.archiveCert, ca: pki.caCert },
    });
    const port = await freePort();
    const ledgerDir = join(work, 'ledger');
    const proxy = await startProxyProcess(config('proxy', port, scp.port, ledgerDir), port);
    const files = [
      ...(await writeInstances(join(work, 'send', 'a'), 4, { pixelBytes: 300_000, withPrivateTags: true })),
      ...(await writeInstances(join(work, 'send', 'b'), 2, {
        pixelBytes: 100_000,
        transferSyntaxUid: '1.2.840.10008.1.2.4.50',
      })),
    ];
    const r = await runStorescu({
      host: '127.0.0.1',
      port,
      callingAe: 'STORESCU',
      calledAe: 'DICOM_PROXY',
      files,
      proposeFileTransferSyntax: true,
      timeoutMs: 60_000,
    });
    assert.equal(r.code, 0, r.stderr);
    await stop(proxy, 'SIGTERM'); // clean shutdown: records synced, final checkpoint written

    const received = await listFiles(join(work, 'received'));
    assert.equal(received.length, files.length);
    for (const f of received) {
      const found = cli(['ledger', 'find', '--ledger', ledgerDir, '--file', f]);
      assert.equal(found.code, 0, `${f}: ${found.stdout}${found.stderr}`);
      const lines = found.stdout.split('\n').filter((l) => l.includes('"type":"instance"'));
      assert.equal(lines.length, 1, `exactly one record for ${f}:\n${found.stdout}`);
      assert.match(lines[0] as string, /"status":0,"outcome":"success"/);
    }
    const ok = cli(['ledger', 'verify', '--ledger', ledgerDir, '--public-key', publicKey]);
    assert.equal(ok.code, 0, ok.stdout + ok.stderr);
    assert.match(ok.stdout, /INTACT/);

    // A file that was never sent is not found.
    const stranger = (await writeInstances(join(work, 'stranger'), 1, { pixelBytes: 1000 }))[0] as string;
    assert.equal(cli(['ledger', 'find', '--ledger', ledgerDir, '--file', stranger]).code, 1);

    // Tampering: one byte edited, a line deleted, two lines swapped — each fails and names the place.
    const ledgerFile = join(
      ledgerDir,
      readdirSync(ledgerDir).filter((n) => n.endsWith('.jsonl'))[0] as string,
    );
    const pristine = readFileSync(ledgerFile, 'utf8');
    const lines = pristine.split('\n');
    const tamper = (name: string, text: string, expectLine: number): void => {
      writeFileSync(ledgerFile, text);
      const v = cli(['ledger', 'verify', '--ledger', ledgerDir, '--public-key', publicKey]);
      assert.notEqual(v.code, 0, `${name} must be detected`);
      assert.match(
        v.stdout + v.stderr,
        new RegExp(`ledger-\\d+\\.jsonl:${expectLine}\\b`),
        `${name}: names line ${expectLine}`,
      );
      writeFileSync(ledgerFile, pristine);
    };
    const edited = [...lines];
    edited[2] = (edited[2] as string).replace('"bytes":', '"bytes":1');
    tamper('an edited byte', edited.join('\n'), 3);
    tamper('a deleted line', [...lines.slice(0, 2), ...lines.slice(3)].join('\n'), 3);
    const swapped = [...lines];
    [swapped[2], swapped[3]] = [swapped[3] as string, swapped[2] as string];
    tamper('two swapped lines', swapped.join('\n'), 3);
    assert.equal(cli(['ledger', 'verify', '--ledger', ledgerDir, '--public-key', publicKey]).code, 0);
  });

  test('kill -9 during a transfer: verify accepts the ledger, the next start continues the chain', async (t) => {
    if (!skipUnlessPeer(t, 'dcmtk')) return;
    await setup();
    const scp = await startStorescp(procs, {
      outDir: join(work, 'received'),
      aeTitle: 'ARCHIVE',
      tls: { key: pki.archiveKey, cert: pki.archiveCert, ca: pki.caCert },
      extraArgs: ['--ignore'],
    });
    const port = await freePort();
    const ledgerDir = join(work, 'ledger');
    const cfg = config('proxy', port, scp.port, ledgerDir, 'always');
    const files = await writeInstances(join(work, 'send'), 150, { pixelBytes: 400_000 });
    const proxy = await startProxyProcess(cfg, port);
    const transfer = runStorescu({
      host: '127.0.0.1',
      port,
      callingAe: 'STORESCU',
      calledAe: 'DICOM_PROXY',
      files,
      timeoutMs: 60_000,
    });
    // Kill once some instances have been recorded, while the transfer is still running.
    const deadline = Date.now() + 20_000;
    const recordsNow = (): number =>
      readdirSync(ledgerDir)
        .filter((n) => n.endsWith('.jsonl'))
        .reduce(
          (n, f) => n + readFileSync(join(ledgerDir, f), 'utf8').split('"type":"instance"').length - 1,
          0,
        );
    while (recordsNow() < 10 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.ok(recordsNow() >= 10, 'instances were being recorded');
    await stop(proxy, 'SIGKILL');
    const partial = await transfer;
    assert.notEqual(partial.code, null);

    const v1 = cli(['ledger', 'verify', '--ledger', ledgerDir, '--public-key', publicKey]);
    assert.equal(
      v1.code,
      0,
      `after kill -9 the ledger verifies (torn tail reported, not fatal):\n${v1.stdout}${v1.stderr}`,
    );
    const before = recordsNow();

    // Restart on the same ledger: the chain continues from the last whole record.
    const again = await startProxyProcess(cfg, port);
    const r2 = await runStorescu({
      host: '127.0.0.1',
      port,
      callingAe: 'STORESCU',
      calledAe: 'DICOM_PROXY',
      files: files.slice(0, 5),
      timeoutMs: 60_000,
    });
    assert.equal(r2.code, 0, r2.stderr);
    await stop(again, 'SIGTERM');
    assert.equal(recordsNow(), before + 5);
    const v2 = cli(['ledger', 'verify', '--ledger', ledgerDir, '--public-key', publicKey]);
    assert.equal(v2.code, 0, v2.stdout + v2.stderr);
    assert.match(v2.stdout, /INTACT/);
  });
});
