// `certs inspect` and `certs csr`: the fields an admin checks before a certificate goes into the policy,
// the problems the proxy would refuse it for (expired, not yet valid, weak key, no TLS key usage) next to
// a certificate it takes, chains and CSRs, and a CSR for each of the proxy's roles.
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { inspectCertificates } from '../../src/tls/inspect.js';
import { createCa, createCsr, issueCertificate, type PemPair } from '../../src/tls/pki.js';
import { assertBuilt, runCli as cli } from '../helpers/daemon.js';

describe('certs inspect and certs csr', () => {
  let dir: string;
  let ca: PemPair;
  let good: PemPair;
  before(async () => {
    assertBuilt();
    dir = await mkdtemp(join(tmpdir(), 'inspect-test-'));
    ca = await createCa('Test CA');
    good = await issueCertificate(ca, {
      commonName: 'pacs.example.org',
      dnsNames: ['pacs.example.org'],
      ipAddresses: ['10.0.0.9'],
      usage: 'server',
    });
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('a certificate the proxy takes: every field, no problem, exit 0', async () => {
    const [c] = await inspectCertificates(Buffer.from(good.cert));
    assert.ok(c);
    assert.equal(c.kind, 'certificate');
    assert.equal(c.subject, 'CN=pacs.example.org');
    assert.equal(c.issuer, 'CN=Test CA');
    assert.equal(c.subjectAltName, 'DNS:pacs.example.org, IP Address:10.0.0.9');
    assert.equal(c.key, 'EC prime256v1 (256-bit)');
    assert.deepEqual(c.extendedKeyUsage, ['serverAuth']);
    assert.match(c.fingerprint256, /^([0-9A-F]{2}:){31}[0-9A-F]{2}$/);
    assert.deepEqual(c.problems, []);
    const file = join(dir, 'good.pem');
    await writeFile(file, good.cert);
    const r = cli(['certs', 'inspect', file]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^certificate\n {2}subject: {6}CN=pacs\.example\.org\n/);
    assert.match(r.stdout, /\n {2}key usage: {4}serverAuth\n/);
    assert.match(r.stdout, /\n {2}valid: {8}\d{4}-.* to \d{4}-/);
  });

  it('expired, not yet valid and weak certificates are named as problems, exit 1', async () => {
    const day = 86_400_000;
    const expired = await issueCertificate(ca, {
      commonName: 'old',
      usage: 'client',
      notBefore: new Date(Date.now() - 30 * day),
      notAfter: new Date(Date.now() - day),
    });
    const future = await issueCertificate(ca, {
      commonName: 'future',
      usage: 'client',
      notBefore: new Date(Date.now() + day),
      notAfter: new Date(Date.now() + 30 * day),
    });
    const weak = await issueCertificate(ca, { commonName: 'weak', usage: 'client', keyType: 'rsa-1024' });
    const problems = async (pem: string) => (await inspectCertificates(Buffer.from(pem)))[0]?.problems ?? [];
    assert.match((await problems(expired.cert)).join(), /^expired on /);
    assert.match((await problems(future.cert)).join(), /^not valid before /);
    assert.match((await problems(weak.cert)).join(), /RSA 1024-bit key is too weak/);
    const file = join(dir, 'expired.pem');
    await writeFile(file, expired.cert);
    const r = cli(['certs', 'inspect', file]);
    assert.equal(r.code, 1);
    assert.match(r.stdout, /\n {2}PROBLEM: {6}expired on /);
  });

  it('a chain lists each certificate; a private key or garbage is refused with a reason, exit 2', async () => {
    const chain = join(dir, 'chain.pem');
    await writeFile(chain, good.cert + ca.cert);
    const r = cli(['certs', 'inspect', chain, '--json']);
    assert.equal(r.code, 0, r.stderr);
    const list = JSON.parse(r.stdout) as Array<{ subject: string; ca: boolean }>;
    assert.deepEqual(
      list.map((c) => [c.subject, c.ca]),
      [
        ['CN=pacs.example.org', false],
        ['CN=Test CA', true],
      ],
    );
    const key = join(dir, 'key.pem');
    await writeFile(key, good.key);
    const k = cli(['certs', 'inspect', key]);
    assert.equal(k.code, 2);
    assert.match(k.stderr, /holds a private key/);
    const junk = join(dir, 'junk.bin');
    await writeFile(junk, Buffer.from('not a certificate'));
    const j = cli(['certs', 'inspect', junk]);
    assert.equal(j.code, 2);
    assert.match(j.stderr, /neither PEM nor a DER certificate/);
  });

  it('certs csr: a key (0600) and a CSR with the subject, names and key usage asked for; no silent overwrite', async () => {
    const out = join(dir, 'csr');
    const args = [
      'certs',
      'csr',
      '--cn',
      'gw1.example.org',
      '--usage',
      'server',
      '--dns',
      'gw1.example.org,gw1',
      '--ip',
      '10.0.0.5',
      '-d',
      out,
    ];
    const r = cli(args);
    assert.equal(r.code, 0, r.stderr);
    assert.match(
      r.stdout,
      /certificate request\n {2}subject: {6}CN=gw1\.example\.org\n {2}names: {8}DNS:gw1\.example\.org, DNS:gw1, IP Address:10\.0\.0\.5\n/,
    );
    assert.match(r.stdout, /key usage: {4}serverAuth\n/);
    assert.equal((await stat(join(out, 'proxy-server.key'))).mode & 0o777, 0o600);
    const [csr] = await inspectCertificates(await readFile(join(out, 'proxy-server.csr')));
    assert.deepEqual(csr?.problems, [], 'the request signature verifies');
    const again = cli(args);
    assert.equal(again.code, 2);
    assert.match(again.stderr, /exists: keep it, or pass --force/);
    assert.equal(cli([...args, '--force']).code, 0);
    const client = await createCsr({ commonName: 'proxy', usage: 'both', keyType: 'rsa-2048' });
    const [c] = await inspectCertificates(Buffer.from(client.csr));
    assert.deepEqual([c?.key, c?.extendedKeyUsage], ['RSA 2048-bit', ['serverAuth', 'clientAuth']]);
    await assert.rejects(createCsr({ commonName: 'x', usage: 'client', keyType: 'rsa-1024' }), /too weak/);
  });
});
