// The archive leg: every way mutual TLS can fail becomes A-ASSOCIATE-RJ 2/3/1 toward the modality (it
// will retry) plus a reason an admin can act on. Each refusal has the twin that proves what refuses.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import * as net from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startArchive, type ArchiveHandle } from '../../src/dicom/dcmjs.js';
import { createCa, issueCertificate, type PemPair } from '../../src/tls/pki.js';
import { RawScu, associateRq, VERIFICATION } from '../helpers/raw.js';
import { removePki, standardPki, startProxy, type ProxyTestOptions } from '../helpers/proxy.js';
import type { Pdu } from '../../src/pdu/types.js';

type Pki = Awaited<ReturnType<typeof standardPki>>;

async function tryAssociate(port: number): Promise<Pdu | null> {
  const scu = await RawScu.connect(port);
  scu.send(associateRq('SCU', 'DICOM_PROXY', [{ id: 1, abstractSyntax: VERIFICATION }]));
  const answer = await scu.next(8000);
  scu.destroy();
  return answer;
}

describe('upstream mutual TLS', () => {
  let pki: Pki;
  let storage: string;
  const archives: ArchiveHandle[] = [];

  before(async () => {
    pki = await standardPki();
    storage = await mkdtemp(join(tmpdir(), 'dimse-archive-'));
  });
  after(async () => {
    for (const a of archives) a.close();
    await rm(storage, { recursive: true, force: true });
    await removePki(pki);
  });

  async function archiveWith(
    cert: PemPair,
    opts: { ca?: string; requireClientCert?: boolean; ciphers?: string } = {},
  ) {
    const a = await startArchive({
      port: 0,
      aeTitle: 'ARCHIVE',
      storageDir: storage,
      tls: {
        ca: opts.ca ?? pki.ca.cert,
        cert: cert.cert,
        key: cert.key,
        requireClientCert: opts.requireClientCert ?? true,
        ...(opts.ciphers ? { ciphers: opts.ciphers } : {}),
      },
    });
    archives.push(a);
    return a;
  }

  /** Associate through a fresh proxy; returns the answer and the recorded upstream failure reason. */
  async function through(archivePort: number, extra: Partial<ProxyTestOptions> = {}) {
    const proxy = await startProxy({ archivePort, pki, ...extra });
    try {
      const answer = await tryAssociate(proxy.port);
      await proxy.closed();
      return { answer, failure: proxy.events['upstream-failed']?.[0] };
    } finally {
      await proxy.close();
    }
  }

  function assertCongestion(answer: Pdu | null): void {
    assert.ok(answer && answer.type === 0x03, `expected A-ASSOCIATE-RJ, got ${JSON.stringify(answer)}`);
    if (answer.type === 0x03) assert.deepEqual([answer.result, answer.source, answer.reason], [2, 3, 1]);
  }

  test('accepts: an archive certificate from the configured CA with the configured name', async () => {
    const a = await archiveWith(pki.archive);
    const { answer, failure } = await through(a.port);
    assert.equal(answer?.type, 0x02);
    assert.equal(failure, undefined);
  });

  test('refuses: archive certificate from another CA (unknown-ca)', async () => {
    const otherCa = await createCa('Rogue CA');
    const rogue = await issueCertificate(otherCa, {
      commonName: 'archive.local',
      dnsNames: ['archive.local'],
      usage: 'both',
    });
    const a = await archiveWith(rogue);
    const { answer, failure } = await through(a.port);
    assertCongestion(answer);
    assert.equal(failure?.reason, 'unknown-ca');
  });

  test('refuses: archive certificate for another name (hostname-mismatch); accepted with verifyHostname false', async () => {
    const a = await archiveWith(pki.archive);
    const refused = await through(a.port, { serverName: 'pacs.other.example' });
    assertCongestion(refused.answer);
    assert.equal(refused.failure?.reason, 'hostname-mismatch');
    const twin = await through(a.port, {
      serverName: 'pacs.other.example',
      tlsExtra: '      verifyHostname: false',
    });
    assert.equal(twin.answer?.type, 0x02, 'with the host-name check off the same certificate is accepted');
  });

  test('refuses: expired archive certificate (certificate-expired)', async () => {
    const day = 86400000;
    const expired = await issueCertificate(pki.ca, {
      commonName: 'archive.local',
      dnsNames: ['archive.local'],
      usage: 'both',
      notBefore: new Date(Date.now() - 30 * day),
      notAfter: new Date(Date.now() - day),
    });
    const a = await archiveWith(expired);
    const { answer, failure } = await through(a.port);
    assertCongestion(answer);
    assert.equal(failure?.reason, 'certificate-expired');
    assert.equal(failure?.certificate?.fingerprint256, new X509Certificate(expired.cert).fingerprint256);
  });

  test('refuses: the archive rejects the proxy client certificate (from another CA), logged before the summary', async () => {
    const otherCa = await createCa('Other client CA');
    const a = await archiveWith(pki.archive, { ca: otherCa.cert });
    const proxy = await startProxy({ archivePort: a.port, pki });
    const order: string[] = [];
    proxy.server.events.on('upstream-failed', (e) => order.push(`upstream-failed: ${e.reason}`));
    proxy.server.events.on('association-closed', () => order.push('association-closed'));
    try {
      const answer = await tryAssociate(proxy.port);
      await proxy.closed();
      assertCongestion(answer);
      // TLS 1.3: the archive's refusal arrives after the proxy's handshake has completed.
      assert.deepEqual(order, ['upstream-failed: client-certificate-rejected', 'association-closed']);
    } finally {
      await proxy.close();
    }
  });

  test('refuses: an archive certificate with an RSA-1024 key (weak-key); accepts RSA-2048', async () => {
    const weak = await issueCertificate(pki.ca, {
      commonName: 'archive.local',
      dnsNames: ['archive.local'],
      usage: 'both',
      keyType: 'rsa-1024',
    });
    // The archive can only serve a 1024-bit key below OpenSSL's default security level.
    const refused = await through((await archiveWith(weak, { ciphers: 'DEFAULT:@SECLEVEL=0' })).port);
    assertCongestion(refused.answer);
    assert.equal(refused.failure?.reason, 'weak-key');
    // OpenSSL's security level may refuse it first ("EE certificate key too weak"), else the proxy's check.
    assert.match(refused.failure?.message ?? '', /RSA 1024-bit|key too weak/);
    // The certificate it presented goes with the refusal (log line, Security Alert).
    const presented = new X509Certificate(weak.cert);
    assert.equal(refused.failure?.certificate?.fingerprint256, presented.fingerprint256);
    assert.match(refused.failure?.certificate?.subject ?? '', /CN=archive\.local/);

    const strong = await issueCertificate(pki.ca, {
      commonName: 'archive.local',
      dnsNames: ['archive.local'],
      usage: 'both',
      keyType: 'rsa-2048',
    });
    const twin = await through((await archiveWith(strong)).port);
    assert.equal(twin.answer?.type, 0x02, 'a 2048-bit RSA archive certificate is accepted');
    assert.equal(twin.failure, undefined);
  });

  test('refuses: an archive certificate for clientAuth only (certificate-wrong-key-usage)', async () => {
    const clientOnly = await issueCertificate(pki.ca, {
      commonName: 'archive.local',
      dnsNames: ['archive.local'],
      usage: 'client',
    });
    const { answer, failure } = await through((await archiveWith(clientOnly)).port);
    assertCongestion(answer);
    assert.equal(failure?.reason, 'certificate-wrong-key-usage');
  });

  test('refuses: nothing listens on the archive port (refused)', async () => {
    const probe = net.createServer();
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
    const port = (probe.address() as net.AddressInfo).port;
    await new Promise<void>((r) => probe.close(() => r()));
    const { answer, failure } = await through(port);
    assertCongestion(answer);
    assert.equal(failure?.reason, 'refused');
  });

  test('refuses: a plaintext DICOM port where TLS is expected (no TLS downgrade)', async () => {
    const plain = await startArchive({ port: 0, aeTitle: 'ARCHIVE', storageDir: storage });
    archives.push(plain);
    const { answer, failure } = await through(plain.port);
    assertCongestion(answer);
    assert.ok(failure);
  });

  test('refuses: TLS handshake never completes (timeout after connectTimeout)', async () => {
    const silent = net.createServer(() => undefined);
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    const port = (silent.address() as net.AddressInfo).port;
    try {
      const { answer, failure } = await through(port, { connectTimeout: '500ms' });
      assertCongestion(answer);
      assert.equal(failure?.reason, 'timeout');
    } finally {
      silent.close();
    }
  });
});
