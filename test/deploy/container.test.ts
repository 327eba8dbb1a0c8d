// The container image for real, where a container engine can run: no registry is reachable from these
// machines, so the Dockerfile's base (node:<NODE_VERSION>-bookworm-slim) is assembled here from Debian
// packages (debootstrap minbase + libatomic1 + ca-certificates, this test's Node binary and npm, a `node`
// user with uid 1000, as the official image has) and imported under that name; then `podman build`
// builds the Dockerfile unchanged (npm ci from the registry inside it) and the image is run as shipped:
// read-only root filesystem, non-root, the policy and certificates mounted read-only, the state volume.
// Through it: a C-ECHO and three C-STOREs to storescp +tls on the host (DCMTK), `status --live` inside the
// container (the HEALTHCHECK's command), SIGTERM as PID 1 → exit 0, and the ledger in the volume
// verifies. Needs root, podman, runc and debootstrap (.ci/run installs them); skipped with a notice when
// the engine cannot start a container on the machine at all (an environment limit, not the image's).
import { after, describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  copyFileSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  realpathSync,
  writeFileSync,
} from 'node:fs';
import { dirname, join } from 'node:path';
import { writeDemoPki } from '../../src/tls/pki.js';
import { writeInstances } from '../helpers/dicom.js';
import { CLI, assertBuilt } from '../helpers/daemon.js';
import {
  Procs,
  REQUIRE_PEERS,
  freePort,
  makeTempDir,
  removeTempDir,
  runEchoscu,
  runStorescu,
  skipUnlessPeer,
  startStorescp,
  which,
} from '../helpers/peers.js';

const ROOT = join(import.meta.dirname, '..', '..');
const NODE_VERSION = /^ARG NODE_VERSION=(\S+)$/m.exec(readFileSync(join(ROOT, 'Dockerfile'), 'utf8'))?.[1];
const BASE = `docker.io/library/node:${NODE_VERSION}-bookworm-slim`;
const IMAGE = 'localhost/dimse-tls-proxy:citest';
const NAME = 'dimse-tls-proxy-citest';
const MIRROR = process.env.DEBIAN_MIRROR ?? 'http://deb.debian.org/debian';

function run(cmd: string, args: string[], timeoutMs = 600_000, input?: Buffer): SpawnSyncReturns<string> {
  return spawnSync(cmd, args, { encoding: 'utf8', timeout: timeoutMs, input, maxBuffer: 64 * 1024 * 1024 });
}

function ok(r: SpawnSyncReturns<string>, what: string): string {
  assert.equal(
    r.status,
    0,
    `${what}: exit ${r.status}\n${(r.stdout ?? '').slice(-3000)}\n${(r.stderr ?? '').slice(-3000)}`,
  );
  return r.stdout;
}

/** podman with the settings this kind of machine needs (runc and cgroupfs: crun refuses hybrid cgroups). */
function podman(args: string[], timeoutMs?: number): SpawnSyncReturns<string> {
  return run('podman', ['--runtime', 'runc', '--cgroup-manager', 'cgroupfs', ...args], timeoutMs);
}

/**
 * Limits a container may have: podman's defaults can exceed the machine's hard limits, and the engine's
 * init may not raise one past what its parent holds. The hard open-files limit (/proc/self/limits) is
 * used for both files and processes; it is what a container could be given here.
 */
function ulimits(): string[] {
  const limits = readFileSync('/proc/self/limits', 'utf8');
  const n = /^Max open files\s+\S+\s+(\S+)/m.exec(limits)?.[1];
  if (!n || n === 'unlimited') return [];
  return ['--ulimit', `nofile=${n}:${n}`, '--ulimit', `nproc=${n}:${n}`];
}

function needTools(t: TestContext): boolean {
  const missing = ['podman', 'runc', 'debootstrap', 'chroot'].filter((c) => which(c) === undefined);
  if (process.getuid?.() !== 0) missing.push('(root)');
  if (missing.length === 0) return true;
  const message = `container test needs ${missing.join(', ')}: apt-get install -y podman runc debootstrap`;
  if (REQUIRE_PEERS && missing[0] !== '(root)') throw new Error(`DIMSE_PROXY_REQUIRE_PEERS=1 but ${message}`);
  t.skip(message);
  return false;
}

describe('container image, built and run for real', { timeout: 1_500_000 }, () => {
  const procs = new Procs();
  let dir: string | undefined;
  after(async () => {
    podman(['rm', '-f', NAME], 60_000);
    podman(['rmi', '-f', IMAGE, BASE], 60_000);
    await procs.stopAll();
    if (dir) run('rm', ['-rf', join(dir, 'rootfs')]);
    await removeTempDir(dir);
  });

  test('build from a Debian-assembled base, run read-only as non-root, relay, health check, SIGTERM drain, ledger', async (t) => {
    if (!needTools(t) || !skipUnlessPeer(t, 'dcmtk')) return;
    assertBuilt();
    assert.ok(NODE_VERSION, 'ARG NODE_VERSION in the Dockerfile');
    dir = await makeTempDir('container');
    const rootfs = join(dir, 'rootfs');

    // The base image, from Debian packages.
    ok(
      run(
        'debootstrap',
        ['--variant=minbase', '--include=libatomic1,ca-certificates', 'bookworm', rootfs, MIRROR],
        900_000,
      ),
      'debootstrap',
    );
    copyFileSync(process.execPath, join(rootfs, 'usr/local/bin/node'));
    chmodSync(join(rootfs, 'usr/local/bin/node'), 0o755);
    const npmCli = realpathSync(which('npm') ?? '');
    const npmDir = dirname(dirname(npmCli));
    mkdirSync(join(rootfs, 'usr/local/lib/node_modules'), { recursive: true });
    ok(run('cp', ['-a', npmDir, join(rootfs, 'usr/local/lib/node_modules/npm')]), 'copy npm');
    ok(
      run('ln', ['-sf', '../lib/node_modules/npm/bin/npm-cli.js', join(rootfs, 'usr/local/bin/npm')]),
      'npm link',
    );
    ok(run('chroot', [rootfs, 'groupadd', '--gid', '1000', 'node']), 'groupadd');
    ok(
      run('chroot', [rootfs, 'useradd', '--uid', '1000', '--gid', 'node', '--create-home', 'node']),
      'useradd',
    );
    const changes = ['ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'CMD ["node"]'];
    // The machine's own trust (a TLS-inspecting proxy in front of the registry) goes into this base only.
    const extraCa = process.env.NODE_EXTRA_CA_CERTS;
    if (extraCa) {
      copyFileSync(extraCa, join(rootfs, 'etc/ssl/certs/build-extra-ca.pem'));
      changes.push('ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/build-extra-ca.pem');
    }
    const tar = spawnSync('tar', ['-C', rootfs, '-c', '.'], { maxBuffer: 2 * 1024 * 1024 * 1024 });
    assert.equal(tar.status, 0, 'tar of the base');
    ok(
      spawnSync('podman', ['import', ...changes.flatMap((c) => ['--change', c]), '-', BASE], {
        input: tar.stdout,
        encoding: 'utf8',
        timeout: 300_000,
        maxBuffer: 64 * 1024 * 1024,
      }),
      'podman import',
    );

    // Can the engine start a container here at all?
    const probe = podman(['run', '--rm', ...ulimits(), '--network=host', BASE, 'node', '--version'], 120_000);
    if (probe.status !== 0) {
      const message = `the container engine cannot start a container on this machine: ${probe.stderr.trim().slice(-400)}`;
      process.stderr.write(`\n!!! SKIPPING "${t.name}": ${message} !!!\n\n`);
      t.skip(message);
      return;
    }

    // The Dockerfile, unchanged.
    ok(podman(['build', '--pull=never', '--network=host', '-t', IMAGE, ROOT], 900_000), 'podman build');

    // An archive on the host, the policy and certificates for the container.
    const pki = await writeDemoPki(join(dir, 'certs'));
    ok(run(process.execPath, [CLI, 'ledger', 'keygen', '--dir', pki.dir]), 'ledger keygen');
    for (const f of readdirSync(pki.dir)) chmodSync(join(pki.dir, f), 0o644); // read by uid 1000 in the container
    // The state volume: a host folder owned by the image's node user (uid 1000), so the test reads it.
    const state = join(dir, 'state');
    mkdirSync(state, { mode: 0o700 });
    chownSync(state, 1000, 1000);
    const scp = await startStorescp(procs, {
      outDir: join(dir, 'out'),
      aeTitle: 'ARCHIVE',
      tls: { key: pki.archiveKey, cert: pki.archiveCert, ca: pki.caCert },
    });
    const port = await freePort();
    const adminPort = await freePort();
    const c = '/etc/dimse-tls-proxy/certs';
    writeFileSync(
      join(dir, 'proxy.yaml'),
      [
        `listen: { host: 127.0.0.1, port: ${port} }`,
        'upstreams:',
        '  archive:',
        `    host: 127.0.0.1`,
        `    port: ${scp.port}`,
        '    aeTitle: ARCHIVE',
        `    tls: { ca: ${c}/ca.pem, cert: ${c}/proxy-client.pem, key: ${c}/proxy-client.key, serverName: archive.local }`,
        'routes:',
        '  - { calledAeTitle: DICOM_PROXY, upstream: archive }',
        'peers:',
        '  STORESCU: { addresses: [127.0.0.1], services: [echo, store] }',
        `ledger: { path: /var/lib/dimse-tls-proxy/ledger, signingKey: ${c}/ledger-signing.key }`,
        `admin: { host: 127.0.0.1, port: ${adminPort} }`,
        'reload: { watch: false }',
        '',
      ].join('\n'),
    );
    chmodSync(join(dir, 'proxy.yaml'), 0o644);
    ok(
      podman(
        [
          'run',
          '-d',
          '--name',
          NAME,
          '--read-only',
          '--network=host',
          ...ulimits(),
          '-v',
          `${join(dir, 'proxy.yaml')}:/etc/dimse-tls-proxy/proxy.yaml:ro`,
          '-v',
          `${pki.dir}:${c}:ro`,
          '-v',
          `${state}:/var/lib/dimse-tls-proxy`,
          IMAGE,
        ],
        120_000,
      ),
      'podman run',
    );
    const live = async (): Promise<SpawnSyncReturns<string>> => {
      const deadline = Date.now() + 60_000;
      for (;;) {
        const r = podman(
          [
            'exec',
            NAME,
            'node',
            '/app/dist/cli.js',
            'status',
            '--live',
            '-c',
            '/etc/dimse-tls-proxy/proxy.yaml',
          ],
          60_000,
        );
        if (r.status === 0 || Date.now() > deadline) return r;
        await new Promise((res) => setTimeout(res, 500));
      }
    };
    ok(await live(), 'status --live inside the container (the HEALTHCHECK)');
    assert.equal(podman(['exec', NAME, 'id', '-u']).stdout.trim(), '1000', 'runs as the node user');
    assert.notEqual(podman(['exec', NAME, 'touch', '/app/x']).status, 0, 'the root filesystem is read-only');

    // Through the containerised proxy.
    const echo = await runEchoscu({
      host: '127.0.0.1',
      port,
      callingAe: 'STORESCU',
      calledAe: 'DICOM_PROXY',
    });
    assert.equal(echo.code, 0, echo.stderr);
    const files = await writeInstances(join(dir, 'in'), 3, { pixelBytes: 64 * 1024 });
    const store = await runStorescu({
      host: '127.0.0.1',
      port,
      callingAe: 'STORESCU',
      calledAe: 'DICOM_PROXY',
      files,
    });
    assert.equal(store.code, 0, store.stderr);

    // SIGTERM to PID 1: the daemon drains and exits 0.
    ok(podman(['stop', '-t', '45', NAME], 120_000), 'podman stop');
    assert.equal(podman(['inspect', NAME, '--format', '{{.State.ExitCode}}']).stdout.trim(), '0');

    // The ledger written in the volume verifies, and holds the three instances.
    const ledgerDir = join(state, 'ledger');
    const verify = run(process.execPath, [
      CLI,
      'ledger',
      'verify',
      '--ledger',
      ledgerDir,
      '--public-key',
      join(pki.dir, 'ledger-signing.pub.pem'),
    ]);
    assert.equal(verify.status, 0, verify.stdout + verify.stderr);
    assert.match(verify.stdout, /INTACT/);
    const records = readdirSync(ledgerDir)
      .filter((f) => f.endsWith('.jsonl'))
      .flatMap((f) => readFileSync(join(ledgerDir, f), 'utf8').split('\n'))
      .filter((l) => l.includes('"type":"instance"'));
    assert.equal(records.length, 3);
  });
});
