// The command line as an administrator uses it: `node dist/cli.js …` in child processes, exit codes and
// output checked. dist/ is rebuilt first when any source file is newer than dist/cli.js.
import assert from 'node:assert/strict';
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { cp, mkdir, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { type DemoPkiPaths, issueCertificate, writeDemoPki } from '../../src/tls/pki.js';
import { eventually, portIsFree } from '../helpers/interop.js';
import {
  Procs,
  describeRun,
  freePort,
  makeTempDir,
  peerAvailability,
  removeTempDir,
  runTool,
  skipUnlessPeer,
  startStorescp,
  waitForListen,
  type RunResult,
} from '../helpers/peers.js';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const CLI = join(REPO, 'dist', 'cli.js');

/** Newest modification time (ms) of the .ts files under `dir`. */
async function newestSource(dir: string): Promise<number> {
  let newest = 0;
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) newest = Math.max(newest, await newestSource(path));
    else if (entry.name.endsWith('.ts')) newest = Math.max(newest, (await stat(path)).mtimeMs);
  }
  return newest;
}

async function buildIfStale(): Promise<void> {
  const built = await stat(CLI).then(
    (s) => s.mtimeMs,
    () => 0,
  );
  if (built > (await newestSource(join(REPO, 'src')))) return;
  const tsc = join(REPO, 'node_modules', 'typescript', 'bin', 'tsc');
  const r = await runTool(process.execPath, [tsc, '-p', join(REPO, 'tsconfig.build.json')], {
    cwd: REPO,
    timeoutMs: 120_000,
  });
  assert.equal(r.code, 0, `build failed:\n${describeRun(r)}`);
}

function cli(args: string[], opts: { cwd?: string; timeoutMs?: number } = {}): Promise<RunResult> {
  return runTool(process.execPath, [CLI, ...args], {
    cwd: opts.cwd ?? REPO,
    timeoutMs: opts.timeoutMs ?? 30_000,
  });
}

/** A complete, valid policy file with cert paths relative to its own directory. */
function configYaml(o: {
  listenPort: number;
  archivePort: number;
  certDir: string;
  peers?: string[];
}): string {
  return [
    `listen: { host: 127.0.0.1, port: ${o.listenPort} }`,
    'upstreams:',
    '  archive:',
    '    host: 127.0.0.1',
    `    port: ${o.archivePort}`,
    '    aeTitle: ARCHIVE',
    '    connectTimeout: 3s',
    '    tls:',
    `      ca: ${o.certDir}/ca.pem`,
    `      cert: ${o.certDir}/proxy-client.pem`,
    `      key: ${o.certDir}/proxy-client.key`,
    '      serverName: archive.local',
    'routes:',
    '  - { calledAeTitle: DICOM_PROXY, upstream: archive }',
    'peers:',
    ...(o.peers ?? ['  SCU:', '    addresses: [127.0.0.1]', '    services: [echo, store]']),
    'limits: { associationRequestTimeout: 2s, idleTimeout: 30s }',
    'logging: { level: info }',
    '',
  ].join('\n');
}

interface LogLine {
  event?: string;
  outcome?: string;
  [key: string]: unknown;
}

function jsonLines(text: string): LogLine[] {
  const out: LogLine[] = [];
  for (const line of text.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      out.push(JSON.parse(line) as LogLine);
    } catch {
      // a partial line still being written
    }
  }
  return out;
}

describe('dimse-tls-proxy command line', { timeout: 80_000 }, () => {
  const procs = new Procs();
  let dir = '';
  let pki: DemoPkiPaths;

  before(async () => {
    await buildIfStale();
    dir = await makeTempDir('cli');
    pki = await writeDemoPki(join(dir, 'pki'));
  });

  after(async () => {
    await procs.stopAll();
    if (dir !== '') await removeTempDir(dir);
  });

  describe('check-config', () => {
    it('--against lists what changes compared with another policy (peers added / removed, services)', async () => {
      const before = join(dir, 'against-before.yaml');
      const after = join(dir, 'against-after.yaml');
      await writeFile(before, configYaml({ listenPort: 11112, archivePort: 2762, certDir: 'pki' }));
      await writeFile(
        after,
        configYaml({
          listenPort: 11112,
          archivePort: 2762,
          certDir: 'pki',
          peers: [
            '  SCU: { addresses: [127.0.0.1], services: [echo] }',
            '  CT_NEW: { addresses: [127.0.0.1], services: [echo, store] }',
          ],
        }),
      );
      const r = await cli(['check-config', '-c', after, '--against', before]);
      assert.equal(r.code, 0, describeRun(r));
      assert.match(r.stdout, /2 changes/, describeRun(r));
      assert.match(r.stdout, /\+ peer CT_NEW added/, describeRun(r));
      assert.match(r.stdout, /peer SCU: services -store/, describeRun(r));
      assert.match(r.stdout, /^OK /m);
    });

    it('a valid policy whose certificate files exist: exit 0, prints OK', async () => {
      const file = join(dir, 'valid.yaml');
      await writeFile(file, configYaml({ listenPort: 11112, archivePort: 2762, certDir: 'pki' }));
      const r = await cli(['check-config', '-c', file]);
      assert.equal(r.code, 0, describeRun(r));
      assert.match(r.stdout, /^OK /, describeRun(r));
      assert.match(r.stdout, /1 upstream\(s\), 1 route\(s\), 1 peer\(s\)/);
      assert.equal(r.stderr, '');
    });

    it('the annotated config/example.yaml is valid once `certs init` has made its certificates', async () => {
      const root = join(dir, 'example');
      await mkdir(join(root, 'config'), { recursive: true });
      await cp(join(REPO, 'config', 'example.yaml'), join(root, 'config', 'example.yaml'));
      const init = await cli(['certs', 'init', '--dir', 'certs'], { cwd: root });
      assert.equal(init.code, 0, describeRun(init));
      const r = await cli(['check-config', '-c', join('config', 'example.yaml')], { cwd: root });
      assert.equal(r.code, 0, describeRun(r));
      assert.match(
        r.stdout,
        /^OK config\/example\.yaml: listen 0\.0\.0\.0:11112, 1 upstream\(s\), 1 route\(s\), 2 peer\(s\)/,
      );
      assert.match(r.stdout, /upstream archive: client certificate CN=dimse-tls-proxy valid until \d{4}-/);
      // 500 instance UIDs in one message are more than rsyslog takes by default: a warning, with what fits.
      assert.match(
        r.stdout,
        /warning: audit\.maxInstancesPerMessage 500 lets a DICOM Instances Transferred message reach ~\d+ KiB; rsyslog accepts 8 KiB by default .* set audit\.maxInstancesPerMessage to (\d+) or less/,
      );
      const fits = Number(/to (\d+) or less/.exec(r.stdout)?.[1]);
      const small = join(root, 'config', 'small.yaml');
      const example = await readFile(join(root, 'config', 'example.yaml'), 'utf8');
      await writeFile(
        small,
        example.replace('maxInstancesPerMessage: 500', `maxInstancesPerMessage: ${fits}`),
      );
      const ok = await cli(['check-config', '-c', join('config', 'small.yaml')], { cwd: root });
      assert.equal(ok.code, 0, describeRun(ok));
      assert.doesNotMatch(ok.stdout, /maxInstancesPerMessage/, 'the value it suggests is quiet');
    });

    it('an unknown key: exit 1, stderr names the file, the line and the key path', async () => {
      const file = join(dir, 'unknown-key.yaml');
      const text = configYaml({
        listenPort: 11112,
        archivePort: 2762,
        certDir: 'pki',
        peers: ['  SCU:', '    addresses: [127.0.0.1]', '    services: [echo]', '    colour: blue'],
      });
      await writeFile(file, text);
      const line = text.split('\n').indexOf('    colour: blue') + 1;
      const r = await cli(['check-config', '-c', file]);
      assert.equal(r.code, 1, describeRun(r));
      assert.equal(r.stdout, '');
      assert.ok(r.stderr.includes(`${file}:${line}:`), `expected ${file}:${line}: in\n${r.stderr}`);
      assert.match(r.stderr, /peers\.SCU\.colour\b/);
    });

    it('a bad CIDR: exit 1, stderr names the file, the line and the key path', async () => {
      const file = join(dir, 'bad-cidr.yaml');
      const text = configYaml({
        listenPort: 11112,
        archivePort: 2762,
        certDir: 'pki',
        peers: ['  SCU:', '    addresses: [127.0.0.1, 10.0.0.0/33]', '    services: [echo]'],
      });
      await writeFile(file, text);
      const line = text.split('\n').indexOf('    addresses: [127.0.0.1, 10.0.0.0/33]') + 1;
      const r = await cli(['check-config', '-c', file]);
      assert.equal(r.code, 1, describeRun(r));
      assert.ok(r.stderr.includes(`${file}:${line}:`), `expected ${file}:${line}: in\n${r.stderr}`);
      assert.match(r.stderr, /peers\.SCU\.addresses\[1\]/);
      assert.match(r.stderr, /10\.0\.0\.0\/33/);
    });

    it('a missing certificate file: exit 1, stderr names the file', async () => {
      const file = join(dir, 'missing-cert.yaml');
      await writeFile(
        file,
        configYaml({ listenPort: 11112, archivePort: 2762, certDir: 'pki' }).replace(
          'pki/proxy-client.pem',
          'pki/no-such-cert.pem',
        ),
      );
      const r = await cli(['check-config', '-c', file]);
      assert.equal(r.code, 1, describeRun(r));
      assert.ok(r.stderr.includes(join(dir, 'pki', 'no-such-cert.pem')), describeRun(r));
    });
  });

  describe("check-config and start: the proxy's own certificates", () => {
    const DAY = 86_400_000;
    /** A client certificate from the demo CA with the given validity, written under pki/ as <name>.pem/.key. */
    async function clientCert(name: string, notBefore: Date, notAfter: Date): Promise<void> {
      const ca = { cert: await readFile(pki.caCert, 'utf8'), key: await readFile(pki.caKey, 'utf8') };
      const pair = await issueCertificate(ca, {
        commonName: 'dimse-tls-proxy',
        usage: 'client',
        notBefore,
        notAfter,
      });
      await writeFile(join(dir, 'pki', `${name}.pem`), pair.cert);
      await writeFile(join(dir, 'pki', `${name}.key`), pair.key, { mode: 0o600 });
    }
    const withClient = (name: string, extra = ''): string =>
      configYaml({ listenPort: 11112, archivePort: 2762, certDir: 'pki' })
        .replace('pki/proxy-client.pem', `pki/${name}.pem`)
        .replace('pki/proxy-client.key', `pki/${name}.key`) + extra;

    it('an expired client certificate: check-config exits 1 naming the file and upstreams.archive.tls.cert', async () => {
      await clientCert('expired-client', new Date(Date.now() - 60 * DAY), new Date(Date.now() - DAY));
      const file = join(dir, 'expired-client.yaml');
      const text = withClient('expired-client');
      await writeFile(file, text);
      const r = await cli(['check-config', '-c', file]);
      assert.equal(r.code, 1, describeRun(r));
      assert.equal(r.stdout, '');
      const line = text.split('\n').indexOf('      cert: pki/expired-client.pem') + 1;
      assert.ok(r.stderr.includes(`${file}:${line}:`), describeRun(r));
      assert.match(r.stderr, /upstreams\.archive\.tls\.cert/);
      assert.ok(r.stderr.includes(join(dir, 'pki', 'expired-client.pem')), describeRun(r));
      assert.match(r.stderr, /expired/);
    });

    it('an expired client certificate: start exits 1 before listening', async () => {
      const listenPort = await freePort();
      const file = join(dir, 'expired-client-start.yaml');
      await writeFile(file, withClient('expired-client').replace('port: 11112', `port: ${listenPort}`));
      const r = await cli(['start', '-c', file], { timeoutMs: 15_000 });
      assert.equal(r.code, 1, describeRun(r));
      assert.match(r.stderr, /cannot start.*upstreams\.archive\.tls\.cert/s);
      assert.ok(await portIsFree(listenPort), 'nothing may be left listening');
    });

    it('a client certificate expiring within tls.expiryWarning: exit 0 with a warning; none with a shorter window', async () => {
      await clientCert('expiring-client', new Date(Date.now() - DAY), new Date(Date.now() + 10 * DAY));
      const file = join(dir, 'expiring-client.yaml');
      await writeFile(file, withClient('expiring-client'));
      const r = await cli(['check-config', '-c', file]);
      assert.equal(r.code, 0, describeRun(r));
      assert.match(
        r.stdout,
        /warning: upstreams\.archive\.tls\.cert .*expiring-client\.pem: certificate expires on \d{4}-.* \(in \d+ days; tls\.expiryWarning is 30d\)/,
      );
      const short = join(dir, 'expiring-client-5d.yaml');
      await writeFile(short, withClient('expiring-client', 'tls: { expiryWarning: 5d }\n'));
      const quiet = await cli(['check-config', '-c', short]);
      assert.equal(quiet.code, 0, describeRun(quiet));
      assert.doesNotMatch(quiet.stdout, /warning/);
    });
  });

  describe('certs init', () => {
    const names = [
      'ca.pem',
      'ca.key',
      'proxy-client.pem',
      'proxy-client.key',
      'proxy-server.pem',
      'proxy-server.key',
      'archive.pem',
      'archive.key',
    ];

    async function snapshot(certDir: string): Promise<Map<string, Buffer>> {
      return new Map(
        await Promise.all(names.map(async (n) => [n, await readFile(join(certDir, n))] as const)),
      );
    }

    it('creates the CA, proxy client/server and archive pairs; keys are 0600; a second run keeps them', async () => {
      const certDir = join(dir, 'certs-init');
      const r = await cli(['certs', 'init', '--dir', certDir]);
      assert.equal(r.code, 0, describeRun(r));
      for (const n of names) {
        const s = await stat(join(certDir, n));
        assert.ok(s.isFile() && s.size > 0, `${n} missing or empty`);
        if (n.endsWith('.key'))
          assert.equal(s.mode & 0o777, 0o600, `${n} has mode ${(s.mode & 0o777).toString(8)}`);
      }
      for (const n of names.filter((x) => x.endsWith('.pem'))) {
        assert.match(await readFile(join(certDir, n), 'utf8'), /^-----BEGIN CERTIFICATE-----/);
      }
      const first = await snapshot(certDir);

      const again = await cli(['certs', 'init', '--dir', certDir]);
      assert.equal(again.code, 0, describeRun(again));
      const second = await snapshot(certDir);
      for (const n of names)
        assert.ok(second.get(n)?.equals(first.get(n) as Buffer), `${n} changed without --force`);

      // The twin: --force does replace them.
      const forced = await cli(['certs', 'init', '--dir', certDir, '--force']);
      assert.equal(forced.code, 0, describeRun(forced));
      const third = await snapshot(certDir);
      for (const n of names)
        assert.ok(!third.get(n)?.equals(first.get(n) as Buffer), `${n} not replaced by --force`);
      for (const n of names.filter((x) => x.endsWith('.key'))) {
        assert.equal((await stat(join(certDir, n))).mode & 0o777, 0o600, `${n} after --force`);
      }
    });
  });

  describe('certs init after a partial loss', () => {
    it('re-issues only the missing pair, from the existing CA', async () => {
      const certDir = join(dir, 'certs-partial');
      const first = await cli(['certs', 'init', '--dir', certDir]);
      assert.equal(first.code, 0, describeRun(first));
      const kept = ['ca.pem', 'ca.key', 'proxy-client.pem', 'proxy-client.key'];
      const before = await Promise.all(kept.map((n) => readFile(join(certDir, n))));
      const oldArchive = await readFile(join(certDir, 'archive.pem'));
      await rm(join(certDir, 'archive.pem'));
      const again = await cli(['certs', 'init', '--dir', certDir]);
      assert.equal(again.code, 0, describeRun(again));
      const after = await Promise.all(kept.map((n) => readFile(join(certDir, n))));
      kept.forEach((n, i) => assert.ok(after[i]?.equals(before[i] as Buffer), `${n} changed`));
      const archive = new X509Certificate(await readFile(join(certDir, 'archive.pem')));
      assert.ok(!archive.raw.equals(new X509Certificate(oldArchive).raw), 'archive.pem re-issued');
      const ca = new X509Certificate(await readFile(join(certDir, 'ca.pem')));
      assert.ok(archive.checkIssued(ca) && archive.verify(ca.publicKey), 'issued by the existing CA');
      assert.ok(archive.checkPrivateKey(createPrivateKey(await readFile(join(certDir, 'archive.key')))));
      assert.equal((await stat(join(certDir, 'archive.key'))).mode & 0o777, 0o600);
    });
  });

  describe('start with an invalid policy', () => {
    it('start with an invalid policy: exit 1 before listening, stderr names the file, line and key', async () => {
      const listenPort = await freePort();
      const file = join(dir, 'start-invalid.yaml');
      const text = configYaml({ listenPort, archivePort: 2762, certDir: 'pki' }).replace(
        'logging: { level: info }',
        'logging: { level: chatty }',
      );
      await writeFile(file, text);
      const line = text.split('\n').indexOf('logging: { level: chatty }') + 1;
      const r = await cli(['start', '-c', file], { timeoutMs: 15_000 });
      assert.equal(r.code, 1, describeRun(r));
      assert.match(r.stderr, /cannot start/);
      assert.ok(r.stderr.includes(`${file}:${line}:`) && r.stderr.includes('logging.level'), describeRun(r));
      assert.ok(await portIsFree(listenPort), 'nothing may be left listening');
    });
  });

  describe('against storescp +tls as the archive', () => {
    let scpPort = 0;

    before(async () => {
      if (!peerAvailability('dcmtk').ok) return;
      const scp = await startStorescp(procs, {
        outDir: join(dir, 'archive'),
        aeTitle: 'ARCHIVE',
        tls: { key: pki.archiveKey, cert: pki.archiveCert, ca: pki.caCert },
      });
      scpPort = scp.port;
    });

    it('start: echo through the spawned proxy succeeds, an unknown AE fails, a JSON log line, SIGTERM exits 0', async (t) => {
      if (!skipUnlessPeer(t, 'dcmtk')) return;
      const listenPort = await freePort();
      const file = join(dir, 'start.yaml');
      await writeFile(file, configYaml({ listenPort, archivePort: scpPort, certDir: 'pki' }));
      const proxy = procs.spawn(process.execPath, [CLI, 'start', '-c', file], {
        name: 'dimse-tls-proxy start',
      });
      await waitForListen(listenPort, { procs, child: proxy, timeoutMs: 15_000 });
      const logs = (): LogLine[] => jsonLines(procs.output(proxy).stdout);
      assert.ok(
        await eventually(() => logs().some((l) => l.event === 'listening' && l.port === listenPort)),
        procs.describe(proxy),
      );

      const ok = await cli(['echo', '127.0.0.1', String(listenPort), '--aet', 'SCU', '--aec', 'DICOM_PROXY']);
      assert.equal(ok.code, 0, `${describeRun(ok)}\n${procs.describe(proxy)}`);
      assert.match(ok.stdout, /C-ECHO SCU -> DICOM_PROXY@127\.0\.0\.1:\d+: success/);

      const refused = await cli([
        'echo',
        '127.0.0.1',
        String(listenPort),
        '--aet',
        'INTRUDER',
        '--aec',
        'DICOM_PROXY',
        '--timeout',
        '5000',
      ]);
      assert.equal(refused.code, 1, describeRun(refused));
      assert.match(
        refused.stdout,
        /: REJECTED A-ASSOCIATE-RJ 1\/1\/3: rejected-permanent, DICOM UL service-user: calling-AE-title-not-recognized; at a dimse-tls-proxy: calling AE title INTRUDER is not configured there, or not from this address \(`dimse-tls-proxy explain --calling INTRUDER/,
        describeRun(refused),
      );
      assert.equal(
        (refused.stdout + refused.stderr).split('1/1/3').length - 1,
        1,
        `the error is printed once:\n${describeRun(refused)}`,
      );

      assert.ok(
        await eventually(() =>
          logs().some(
            (l) => l.event === 'association' && l.outcome === 'released' && l.callingAeTitle === 'SCU',
          ),
        ),
        `no "association" log line with outcome "released":\n${procs.describe(proxy)}`,
      );
      assert.ok(
        await eventually(() =>
          logs().some((l) => l.event === 'association-rejected' && l.callingAeTitle === 'INTRUDER'),
        ),
        procs.describe(proxy),
      );

      const started = Date.now();
      proxy.kill('SIGTERM');
      const exit = await Promise.race([
        procs.exited(proxy),
        new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), 5000).unref()),
      ]);
      assert.notEqual(exit, 'timeout', `still running 5 s after SIGTERM:\n${procs.describe(proxy)}`);
      assert.deepEqual(exit, { code: 0, signal: null }, procs.describe(proxy));
      assert.ok(Date.now() - started < 5000);
      assert.ok(
        logs().some((l) => l.event === 'stopped'),
        procs.describe(proxy),
      );
    });

    it('echo --tls with the client certificate straight to storescp +tls exits 0; without --tls exits 1', async (t) => {
      if (!skipUnlessPeer(t, 'dcmtk')) return;
      const base = [
        'echo',
        '127.0.0.1',
        String(scpPort),
        '--aet',
        'SCU',
        '--aec',
        'ARCHIVE',
        '--timeout',
        '5000',
      ];
      const tlsArgs = [
        '--tls',
        '--ca',
        pki.caCert,
        '--cert',
        pki.proxyClientCert,
        '--key',
        pki.proxyClientKey,
      ];
      const tls = await cli([...base, ...tlsArgs]);
      assert.equal(tls.code, 0, describeRun(tls));
      assert.match(tls.stdout, /^TLS: TLSv1\.[23] \S+\n/);
      assert.match(
        tls.stdout,
        /\nnode certificate: .*CN=archive\.local[\s\S]*\n {2}names: {4}DNS:archive\.local, DNS:localhost, IP Address:127\.0\.0\.1/,
      );
      assert.match(tls.stdout, /\n {2}SHA-256: {2}([0-9A-F]{2}:){31}[0-9A-F]{2}\n/);
      assert.match(tls.stdout, /C-ECHO SCU -> ARCHIVE@127\.0\.0\.1:\d+ \(TLS\): success/);
      // The expected server name is checked: the name the certificate carries passes, another one fails.
      const named = await cli([...base, ...tlsArgs, '--server-name', 'archive.local']);
      assert.equal(named.code, 0, describeRun(named));
      const wrong = await cli([...base, ...tlsArgs, '--server-name', 'pacs.example.org']);
      assert.equal(wrong.code, 1, describeRun(wrong));
      assert.match(wrong.stdout, /FAILED: hostname-mismatch: /, describeRun(wrong));
      const unchecked = await cli([
        ...base,
        ...tlsArgs,
        '--server-name',
        'pacs.example.org',
        '--no-verify-hostname',
      ]);
      assert.equal(unchecked.code, 0, describeRun(unchecked));
      const plain = await cli(base);
      assert.equal(plain.code, 1, describeRun(plain));
      assert.match(plain.stdout, /FAILED/);
    });
  });

  describe('demo', () => {
    /** A copy of the repo layout with the demo policy; null (the test skipped) when its ports are busy. */
    async function demoCopy(t: { skip(message: string): void }, name: string): Promise<string | null> {
      const busy = [];
      for (const port of [11112, 11113, 9464]) if (!(await portIsFree(port))) busy.push(port);
      if (busy.length > 0) {
        t.skip(`port(s) ${busy.join(', ')} on 127.0.0.1 are busy`);
        return null;
      }
      const root = join(dir, name);
      await mkdir(join(root, 'config'), { recursive: true });
      await cp(join(REPO, 'config', 'demo.yaml'), join(root, 'config', 'demo.yaml'));
      return root;
    }

    it('demo --once in a copy of the repo layout: exit 0, "Demo transfer OK", certs/ and var/ in the copy', async (t) => {
      const root = await demoCopy(t, 'demo');
      if (root === null) return;
      const r = await cli(['demo', '--once', '-c', join('config', 'demo.yaml')], {
        cwd: root,
        timeoutMs: 60_000,
      });
      assert.equal(r.code, 0, describeRun(r));
      assert.match(r.stdout, /Demo transfer OK/, describeRun(r));
      assert.match(
        r.stdout,
        /\n {2}admin {9}http:\/\/127\.0\.0\.1:9464\/metrics .*\/associations\n/,
        describeRun(r),
      );
      assert.match(r.stdout, /dimse-tls-proxy explain --admin 127\.0\.0\.1:9464 --calling DEMO_MODALITY/);
      // The ledger commands the demo prints work as printed (path and key from the policy).
      const verify = await cli(['ledger', 'verify', '-c', join('config', 'demo.yaml')], {
        cwd: root,
        timeoutMs: 60_000,
      });
      assert.equal(verify.code, 0, describeRun(verify));
      assert.match(verify.stdout, /signatures: \d+ verified with key [0-9a-f]{64}\n[\s\S]*INTACT/);
      assert.ok((await stat(join(root, 'certs', 'ca.pem'))).isFile());
      assert.ok(
        (await readdir(join(root, 'var', 'demo-archive'))).length > 0,
        'the demo archive stored nothing',
      );
    });

    it('demo (running): its admin endpoint answers /readyz and /associations until Ctrl-C', async (t) => {
      const root = await demoCopy(t, 'demo-running');
      if (root === null) return;
      const demo = procs.spawn(process.execPath, [CLI, 'demo', '-c', join('config', 'demo.yaml')], {
        name: 'dimse-tls-proxy demo',
        cwd: root,
      });
      assert.ok(
        await eventually(() => procs.output(demo).stdout.includes('Running until Ctrl-C.'), 60_000),
        procs.describe(demo),
      );
      const ready = await fetch('http://127.0.0.1:9464/readyz');
      assert.equal(ready.status, 200, await ready.text());
      const live = (await (await fetch('http://127.0.0.1:9464/associations')).json()) as { count: number };
      assert.equal(live.count, 0);
      demo.kill('SIGINT');
      assert.deepEqual(await procs.exited(demo), { code: 0, signal: null }, procs.describe(demo));
    });
  });
});
