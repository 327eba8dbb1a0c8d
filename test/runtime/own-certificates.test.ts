// The proxy's own certificates and keys, checked whenever a snapshot is built (check-config, start, reload):
// expired, not yet valid, key not matching, wrong extended key usage, weak key are errors naming the file
// and the config key; a certificate expiring within tls.expiryWarning is a warning. Each refusal has the
// twin that proves what refuses.
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ConfigError } from '../../src/config/errors.js';
import { loadConfig, parseConfig } from '../../src/config/load.js';
import { Reloader } from '../../src/runtime/reload.js';
import { buildRuntimeSnapshot } from '../../src/runtime/snapshot.js';
import { issueCertificate, type LeafOptions } from '../../src/tls/pki.js';
import { certificateKeyProblem, keyStrengthProblem } from '../../src/tls/keys.js';
import { generateKeyPairSync, X509Certificate } from 'node:crypto';
import { proxyYaml, removePki, standardPki, type ProxyTestOptions } from '../helpers/proxy.js';

type Pki = Awaited<ReturnType<typeof standardPki>>;
const DAY = 86_400_000;

describe("the proxy's own certificates", { timeout: 30_000 }, () => {
  let pki: Pki;
  before(async () => {
    pki = await standardPki();
  });
  after(() => removePki(pki));

  /** Issue a leaf from the test CA and write it as <name>.pem / <name>.key. */
  async function leaf(name: string, opts: Partial<LeafOptions> = {}) {
    return pki.write(name, await issueCertificate(pki.ca, { commonName: name, usage: 'client', ...opts }));
  }

  function build(o: Partial<ProxyTestOptions> = {}) {
    return buildRuntimeSnapshot(parseConfig(proxyYaml({ archivePort: 2762, pki, ...o }), null));
  }

  /** The one issue of the ConfigError `fn` throws. */
  function issueOf(fn: () => unknown): { path: string; message: string } {
    try {
      fn();
    } catch (err) {
      assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${String(err)}`);
      assert.equal(err.issues.length, 1, err.message);
      return err.issues[0] as { path: string; message: string };
    }
    assert.fail('expected the snapshot to be refused');
  }

  test('accepts: a valid client certificate (clientAuth, P-256) and its key; no warning', () => {
    const snapshot = build();
    assert.deepEqual(snapshot.certificateWarnings, []);
  });

  test('refuses: an expired client certificate, naming upstreams.<name>.tls.cert and the file', async () => {
    const f = await leaf('expired', {
      notBefore: new Date(Date.now() - 30 * DAY),
      notAfter: new Date(Date.now() - DAY),
    });
    const issue = issueOf(() => build({ clientCert: f.cert, clientKey: f.key }));
    assert.equal(issue.path, 'upstreams.archive.tls.cert');
    assert.ok(issue.message.includes(f.cert), issue.message);
    assert.match(issue.message, /expired on \d{4}-/);
  });

  test('refuses: a client certificate not yet valid', async () => {
    const f = await leaf('future', {
      notBefore: new Date(Date.now() + DAY),
      notAfter: new Date(Date.now() + 30 * DAY),
    });
    const issue = issueOf(() => build({ clientCert: f.cert, clientKey: f.key }));
    assert.equal(issue.path, 'upstreams.archive.tls.cert');
    assert.match(issue.message, /not valid before \d{4}-/);
  });

  test('refuses: a key that does not belong to the certificate, naming upstreams.<name>.tls.key', async () => {
    const other = await leaf('other');
    const issue = issueOf(() => build({ clientKey: other.key }));
    assert.equal(issue.path, 'upstreams.archive.tls.key');
    assert.ok(issue.message.includes(other.key), issue.message);
    assert.match(issue.message, /does not match the certificate/);
  });

  test('refuses: a client certificate for serverAuth only (wrong extended key usage)', async () => {
    const f = await leaf('server-only', { usage: 'server' });
    const issue = issueOf(() => build({ clientCert: f.cert, clientKey: f.key }));
    assert.equal(issue.path, 'upstreams.archive.tls.cert');
    assert.match(issue.message, /extended key usage .*clientAuth/);
  });

  test('refuses: an RSA-1024 client certificate (weak key); accepts RSA-2048', async () => {
    const weak = await leaf('rsa1024', { keyType: 'rsa-1024' });
    const issue = issueOf(() => build({ clientCert: weak.cert, clientKey: weak.key }));
    assert.equal(issue.path, 'upstreams.archive.tls.cert');
    assert.match(issue.message, /RSA 1024-bit key.*2048/);
    const strong = await leaf('rsa2048', { keyType: 'rsa-2048' });
    assert.deepEqual(build({ clientCert: strong.cert, clientKey: strong.key }).certificateWarnings, []);
  });

  function returnListener(cert: string, key: string): string {
    return [
      'returnListener:',
      '  host: 127.0.0.1',
      '  port: 0',
      `  tls: { ca: ${pki.files.ca}, cert: ${cert}, key: ${key} }`,
      '  callers:',
      '    - { aeTitles: [ARCHIVE], identity: { dns: archive.local } }',
    ].join('\n');
  }

  test('return listener: refuses a clientAuth-only server certificate; accepts serverAuth', async () => {
    const clientOnly = await leaf('rl-client-only', { usage: 'client' });
    const issue = issueOf(() => build({ extra: returnListener(clientOnly.cert, clientOnly.key) }));
    assert.equal(issue.path, 'returnListener.tls.cert');
    assert.match(issue.message, /extended key usage .*serverAuth/);
    const server = await leaf('rl-server', { usage: 'server' });
    assert.ok(build({ extra: returnListener(server.cert, server.key) }).returnTls);
  });

  function auditSyslog(cert: string, key: string): string {
    return [
      'audit:',
      '  syslog:',
      '    host: 127.0.0.1',
      '    port: 6514',
      `    tls: { ca: ${pki.files.ca}, cert: ${cert}, key: ${key} }`,
      `    spoolDir: ${join(pki.dir, 'spool')}`,
    ].join('\n');
  }

  test('audit repository: refuses an expired client certificate; accepts a valid one', async () => {
    const expired = await leaf('audit-expired', {
      notBefore: new Date(Date.now() - 30 * DAY),
      notAfter: new Date(Date.now() - DAY),
    });
    const issue = issueOf(() => build({ extra: auditSyslog(expired.cert, expired.key) }));
    assert.equal(issue.path, 'audit.syslog.tls.cert');
    const valid = await leaf('audit-valid');
    assert.deepEqual(build({ extra: auditSyslog(valid.cert, valid.key) }).certificateWarnings, []);
  });

  test('warns: a certificate expiring within tls.expiryWarning (default 30 days); not with a shorter window', async () => {
    const soon = await leaf('soon', {
      notBefore: new Date(Date.now() - DAY),
      notAfter: new Date(Date.now() + 10 * DAY),
    });
    const warned = build({ clientCert: soon.cert, clientKey: soon.key }).certificateWarnings;
    assert.equal(warned.length, 1);
    assert.equal(warned[0]?.path, 'upstreams.archive.tls.cert');
    assert.equal(warned[0]?.file, soon.cert);
    assert.match(warned[0]?.message ?? '', /expires on .* \(in \d+ days; tls\.expiryWarning is 30d\)/);
    const quiet = build({ clientCert: soon.cert, clientKey: soon.key, extra: 'tls: { expiryWarning: 5d }' });
    assert.deepEqual(quiet.certificateWarnings, []);
  });

  test('tls.expiryWarning: a duration; anything else is a config error', () => {
    assert.throws(
      () => parseConfig(proxyYaml({ archivePort: 2762, pki, extra: 'tls: { expiryWarning: soon }' }), null),
      (err: unknown) => err instanceof ConfigError && /tls\.expiryWarning/.test(err.message),
    );
    const c = parseConfig(proxyYaml({ archivePort: 2762, pki, extra: 'tls: { expiryWarning: 14d }' }), null);
    assert.equal(c.tls.expiryWarningMs, 14 * DAY);
    assert.equal(parseConfig(proxyYaml({ archivePort: 2762, pki }), null).tls.expiryWarningMs, 30 * DAY);
  });

  test('reload: an expired certificate fails the reload and the running snapshot stays', async () => {
    const path = join(pki.dir, 'reload.yaml');
    await writeFile(path, proxyYaml({ archivePort: 2762, pki }));
    const initial = buildRuntimeSnapshot(await loadConfig(path));
    const reloader = new Reloader({ configPath: path, initial, apply: () => undefined });
    const expired = await leaf('reload-expired', {
      notBefore: new Date(Date.now() - 30 * DAY),
      notAfter: new Date(Date.now() - DAY),
    });
    await writeFile(
      path,
      proxyYaml({ archivePort: 2762, pki, clientCert: expired.cert, clientKey: expired.key }),
    );
    const failed = await reloader.reload();
    assert.equal(failed.ok, false);
    if (!failed.ok) {
      assert.equal(failed.stage, 'build');
      assert.match(failed.message, /upstreams\.archive\.tls\.cert/);
    }
    assert.equal(reloader.current, initial);
    await writeFile(path, proxyYaml({ archivePort: 2762, pki }));
    assert.equal((await reloader.reload()).ok, true, 'the valid file reloads');
  });

  test('key strength: RSA below 2048 bits and EC curves below 256 bits are weak; P-256, RSA-2048, Ed25519 are not', async () => {
    const key = (type: string, o: object) =>
      generateKeyPairSync(type as 'ec', o as { namedCurve: string }).publicKey;
    assert.match(
      keyStrengthProblem(key('ec', { namedCurve: 'secp224r1' })) ?? '',
      /EC secp224r1 \(224-bit\)/,
    );
    assert.match(keyStrengthProblem(key('ec', { namedCurve: 'prime192v1' })) ?? '', /192-bit/);
    assert.match(keyStrengthProblem(key('rsa', { modulusLength: 1024 })) ?? '', /RSA 1024-bit/);
    assert.equal(keyStrengthProblem(key('ec', { namedCurve: 'prime256v1' })), null);
    assert.equal(keyStrengthProblem(key('ec', { namedCurve: 'secp384r1' })), null);
    assert.equal(keyStrengthProblem(key('rsa', { modulusLength: 2048 })), null);
    assert.equal(keyStrengthProblem(key('ed25519', {})), null);
    const weak = await issueCertificate(pki.ca, { commonName: 'w', usage: 'client', keyType: 'rsa-1024' });
    assert.match(certificateKeyProblem(new X509Certificate(weak.cert)) ?? '', /RSA 1024-bit/);
  });
});
