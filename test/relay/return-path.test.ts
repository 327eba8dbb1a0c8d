// The return listener: the archive opens associations back (C-MOVE sub-operations, storage commitment
// reports) over mutual TLS; the proxy binds the calling AE title to the caller's certificate identity
// and relays to the destination's receiver in plaintext, streaming and hashing like the forward path.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, X509Certificate } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tls from 'node:tls';
import { echo, startArchive, store, type ArchiveHandle } from '../../src/dicom/dcmjs.js';
import { datasetOffset } from '../../src/dicom/part10.js';
import { InlineHasher } from '../../src/integrity/hasher.js';
import { MemorySink } from '../helpers/memory-sink.js';
import { createCa, issueCertificate, type PemPair } from '../../src/tls/pki.js';
import { testInstance } from '../helpers/instances.js';
import {
  removePki,
  standardPki,
  startProxy,
  type ProxyUnderTest,
  writeProxyServerCert,
} from '../helpers/proxy.js';

type Pki = Awaited<ReturnType<typeof standardPki>>;

describe('return listener (archive → proxy → receiver)', { timeout: 60_000 }, () => {
  const hasher = new InlineHasher();
  const sink = new MemorySink();
  let pki: Pki;
  let pacsUri: PemPair;
  let foreign: PemPair;
  let foreignCa: PemPair;
  let receiver: ArchiveHandle;
  let receiverDir: string;
  let proxy: ProxyUnderTest;
  let deadPort: number;

  before(async () => {
    pki = await standardPki();
    await writeProxyServerCert(pki);
    // A second archive identified by a URI SAN, allowed only to echo.
    pacsUri = await issueCertificate(pki.ca, {
      commonName: 'pacs-two',
      uris: ['urn:example:dicom:PACS2'],
      usage: 'client',
    });
    // A certificate with the right name from another CA.
    foreignCa = await createCa('Other CA');
    foreign = await issueCertificate(foreignCa, {
      commonName: 'archive.local',
      dnsNames: ['archive.local'],
      usage: 'client',
    });
    receiverDir = await mkdtemp(join(tmpdir(), 'dimse-receiver-'));
    receiver = await startArchive({ port: 0, aeTitle: 'WS_OK', storageDir: receiverDir });
    // A port with nothing listening: the receiver that is down.
    const probe = net.createServer();
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
    deadPort = (probe.address() as net.AddressInfo).port;
    await new Promise<void>((r) => probe.close(() => r()));

    proxy = await startProxy({
      archivePort: 9, // the forward path is not used here
      pki,
      ledger: { sink, onFailure: 'abort', hasher },
      peers: [
        `  WS_OK: { addresses: [127.0.0.1], services: [echo, find, move], receiver: { host: 127.0.0.1, port: ${receiver.port} } }`,
        `  WS_ALIAS: { addresses: [127.0.0.1], services: [echo], receiver: { host: 127.0.0.1, port: ${receiver.port}, aeTitle: WS_OK, callingAeTitle: PACS_KNOWN } }`,
        `  WS_DOWN: { addresses: [127.0.0.1], services: [echo], receiver: { host: 127.0.0.1, port: ${deadPort}, connectTimeout: 2s } }`,
        '  SCU: { addresses: [127.0.0.1], services: [echo, store] }',
      ].join('\n'),
      extra: [
        'returnListener:',
        '  host: 127.0.0.1',
        '  port: 0',
        `  tls: { ca: ${pki.files.ca}, cert: ${pki.files['proxy-server']}, key: ${pki.files['proxy-server.key']}, handshakeTimeout: 3s }`,
        '  callers:',
        '    - { aeTitles: [ARCHIVE, ARCHIVE_B], identity: { dns: archive.local } }',
        '    - { aeTitles: [PACS2], identity: { uri: "urn:example:dicom:PACS2" }, services: [echo] }',
      ].join('\n'),
    });
    assert.ok(proxy.returnPort > 0);
  });

  after(async () => {
    await proxy?.close();
    receiver?.close();
    await hasher.close();
    await rm(receiverDir, { recursive: true, force: true });
    await removePki(pki);
  });

  const asArchive = (pair: { cert: string; key: string } = pki.archive) => ({
    ca: pki.ca.cert,
    cert: pair.cert,
    key: pair.key,
  });

  test('C-STOREs from the archive reach the receiver byte for byte, recorded as archive-to-destination', async () => {
    const before = receiver.received.length;
    const records = sink.records.length;
    const r = await store({
      host: '127.0.0.1',
      port: proxy.returnPort,
      callingAeTitle: 'ARCHIVE',
      calledAeTitle: 'WS_OK',
      tls: asArchive(),
      instances: [testInstance(41), testInstance(42, 700_000)],
    });
    assert.equal(r.error, null);
    assert.deepEqual(r.statuses, [0, 0]);
    const got = receiver.received.slice(before);
    assert.equal(got.length, 2);
    assert.ok(got.every((g) => g.callingAeTitle === 'ARCHIVE'));
    await proxy.server.recordsSettled();
    const evidence = sink.records.slice(records);
    assert.equal(evidence.length, 2);
    const fingerprint = new X509Certificate(pki.archive.cert).fingerprint256.replace(/:/g, '').toLowerCase();
    for (const g of got) {
      const e = evidence.find((x) => x.sopInstanceUid === g.sopInstanceUid);
      assert.ok(e, `no ledger evidence for ${g.sopInstanceUid}`);
      const file = await readFile(g.file);
      const dataset = file.subarray(datasetOffset(file));
      assert.equal(e.sha256, createHash('sha256').update(dataset).digest('hex'));
      assert.equal(e.bytes, dataset.length);
      assert.equal(e.direction, 'archive-to-destination');
      assert.equal(e.callingAeTitle, 'ARCHIVE');
      assert.equal(e.calledAeTitle, 'WS_OK');
      assert.equal(e.peerAddress, `127.0.0.1:${receiver.port}`);
      assert.match(e.archiveAddress, /127\.0\.0\.1/);
      assert.equal(e.archiveCertSha256, fingerprint);
      assert.equal(e.outcome, 'success');
    }
    const summary = (proxy.events['association-closed'] ?? []).at(-1);
    assert.equal(summary?.listener, 'return');
    assert.equal(summary?.outcome, 'released');
    assert.equal(summary?.upstream, 'WS_OK');
  });

  test('a second AE title bound to the same identity is accepted too', async () => {
    const r = await echo({
      host: '127.0.0.1',
      port: proxy.returnPort,
      callingAeTitle: 'ARCHIVE_B',
      calledAeTitle: 'WS_OK',
      tls: asArchive(),
    });
    assert.equal(r.ok, true, r.error ?? '');
  });

  test('the receiver entry can rewrite the called and calling AE titles toward the destination', async () => {
    const before = receiver.received.length;
    const r = await store({
      host: '127.0.0.1',
      port: proxy.returnPort,
      callingAeTitle: 'ARCHIVE',
      calledAeTitle: 'WS_ALIAS',
      tls: asArchive(),
      instances: [testInstance(43)],
    });
    assert.equal(r.error, null);
    assert.deepEqual(r.statuses, [0]);
    assert.equal(receiver.received.slice(before)[0]?.callingAeTitle, 'PACS_KNOWN');
  });

  test('a URI identity is accepted for the echo it may do', async () => {
    const r = await echo({
      host: '127.0.0.1',
      port: proxy.returnPort,
      callingAeTitle: 'PACS2',
      calledAeTitle: 'WS_OK',
      tls: asArchive(pacsUri),
    });
    assert.equal(r.ok, true, r.error ?? '');
  });

  test('refused: the URI identity may not store (services), nothing reaches the receiver', async () => {
    const before = receiver.received.length;
    const r = await store({
      host: '127.0.0.1',
      port: proxy.returnPort,
      callingAeTitle: 'PACS2',
      calledAeTitle: 'WS_OK',
      tls: asArchive(pacsUri),
      instances: [testInstance(44)],
    });
    assert.match(r.error ?? '', /association rejected 1\/1\/1/);
    assert.equal(receiver.received.length, before);
  });

  test('refused 1/1/3: a valid certificate whose identity is not the one bound to the calling AE', async () => {
    const before = receiver.received.length;
    // The proxy's own client certificate (same CA, CN dimse-tls-proxy, no archive.local) claiming ARCHIVE.
    const r = await store({
      host: '127.0.0.1',
      port: proxy.returnPort,
      callingAeTitle: 'ARCHIVE',
      calledAeTitle: 'WS_OK',
      tls: asArchive(pki.client),
      instances: [testInstance(45)],
    });
    assert.match(r.error ?? '', /association rejected 1\/1\/3/);
    assert.equal(receiver.received.length, before);
    const refused = (proxy.events['association-refused'] ?? []).at(-1);
    assert.equal(refused?.refusal, 'certificate-identity-mismatch');
    assert.equal(refused?.listener, 'return');
    assert.match(refused?.certificateSubject ?? '', /CN=dimse-tls-proxy/);
  });

  test('refused 1/1/3: the right certificate with a calling AE title bound to another identity', async () => {
    const r = await echo({
      host: '127.0.0.1',
      port: proxy.returnPort,
      callingAeTitle: 'PACS2',
      calledAeTitle: 'WS_OK',
      tls: asArchive(),
    });
    assert.match(r.error ?? '', /association rejected 1\/1\/3/);
    assert.equal(
      (proxy.events['association-refused'] ?? []).at(-1)?.refusal,
      'certificate-identity-mismatch',
    );
  });

  test('refused 1/1/3: a calling AE title that is not a caller', async () => {
    const r = await echo({
      host: '127.0.0.1',
      port: proxy.returnPort,
      callingAeTitle: 'STRANGER',
      calledAeTitle: 'WS_OK',
      tls: asArchive(),
    });
    assert.match(r.error ?? '', /association rejected 1\/1\/3/);
    assert.equal((proxy.events['association-refused'] ?? []).at(-1)?.refusal, 'unknown-calling-ae');
  });

  test('refused 1/1/7: a destination that is not a peer with a receiver', async () => {
    for (const called of ['NOBODY', 'SCU']) {
      const r = await echo({
        host: '127.0.0.1',
        port: proxy.returnPort,
        callingAeTitle: 'ARCHIVE',
        calledAeTitle: called,
        tls: asArchive(),
      });
      assert.match(r.error ?? '', /association rejected 1\/1\/7/, called);
      assert.equal((proxy.events['association-refused'] ?? []).at(-1)?.refusal, 'unknown-destination');
    }
  });

  test('a receiver that is down: 2/3/1 toward the archive (it will retry)', async () => {
    const r = await echo({
      host: '127.0.0.1',
      port: proxy.returnPort,
      callingAeTitle: 'ARCHIVE',
      calledAeTitle: 'WS_DOWN',
      tls: asArchive(),
    });
    assert.match(r.error ?? '', /association rejected 2\/3\/1/);
    const failed = (proxy.events['upstream-failed'] ?? []).at(-1);
    assert.equal(failed?.upstream, 'WS_DOWN');
    assert.equal(failed?.reason, 'refused');
  });

  /** Open a TLS connection to the return listener and report how it ended. */
  const handshake = (options: tls.ConnectionOptions): Promise<string> =>
    new Promise((resolve) => {
      const socket = tls.connect({
        host: '127.0.0.1',
        port: proxy.returnPort,
        ca: pki.ca.cert,
        servername: 'proxy.local',
        ...options,
      });
      const timer = setTimeout(() => {
        socket.destroy();
        resolve('timeout');
      }, 5000);
      socket.on('secureConnect', () => socket.write(Buffer.alloc(1)));
      socket.on('data', () => undefined);
      socket.on('error', (err) => {
        clearTimeout(timer);
        resolve(`error: ${err.message}`);
      });
      socket.on('close', () => {
        clearTimeout(timer);
        resolve('closed');
      });
    });

  const lastTlsRejection = async (count: number) => {
    const deadline = Date.now() + 3000;
    while ((proxy.events['tls-client-rejected'] ?? []).length <= count && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
    }
    return (proxy.events['tls-client-rejected'] ?? [])[count];
  };

  test('refused at the TLS handshake: no client certificate', async () => {
    const count = (proxy.events['tls-client-rejected'] ?? []).length;
    const outcome = await handshake({});
    assert.notEqual(outcome, 'timeout');
    const rejection = await lastTlsRejection(count);
    assert.equal(rejection?.reason, 'no-client-certificate', JSON.stringify(rejection));
    assert.equal(rejection?.listener, 'return');
  });

  test('refused at the TLS handshake: a client certificate from another CA (even with the right name)', async () => {
    const count = (proxy.events['tls-client-rejected'] ?? []).length;
    const outcome = await handshake({ cert: foreign.cert, key: foreign.key });
    assert.notEqual(outcome, 'timeout');
    const rejection = await lastTlsRejection(count);
    assert.equal(rejection?.reason, 'client-certificate-untrusted', JSON.stringify(rejection));
  });

  test('refused at the TLS handshake: an expired certificate with the right identity', async () => {
    const expired = await issueCertificate(pki.ca, {
      commonName: 'archive.local',
      dnsNames: ['archive.local'],
      usage: 'client',
      notBefore: new Date(Date.now() - 3 * 86_400_000),
      notAfter: new Date(Date.now() - 86_400_000),
    });
    const count = (proxy.events['tls-client-rejected'] ?? []).length;
    const outcome = await handshake({ cert: expired.cert, key: expired.key });
    assert.notEqual(outcome, 'timeout');
    const rejection = await lastTlsRejection(count);
    assert.equal(rejection?.reason, 'client-certificate-expired', JSON.stringify(rejection));
  });

  test('refused at the TLS handshake: a not-yet-valid certificate with the right identity', async () => {
    const future = await issueCertificate(pki.ca, {
      commonName: 'archive.local',
      dnsNames: ['archive.local'],
      usage: 'client',
      notBefore: new Date(Date.now() + 86_400_000),
      notAfter: new Date(Date.now() + 3 * 86_400_000),
    });
    const count = (proxy.events['tls-client-rejected'] ?? []).length;
    assert.notEqual(await handshake({ cert: future.cert, key: future.key }), 'timeout');
    const rejection = await lastTlsRejection(count);
    assert.equal(rejection?.reason, 'client-certificate-not-yet-valid', JSON.stringify(rejection));
  });

  test('refused at the TLS handshake: a serverAuth-only certificate with the right identity', async () => {
    const serverOnly = await issueCertificate(pki.ca, {
      commonName: 'archive.local',
      dnsNames: ['archive.local'],
      usage: 'server',
    });
    const count = (proxy.events['tls-client-rejected'] ?? []).length;
    assert.notEqual(await handshake({ cert: serverOnly.cert, key: serverOnly.key }), 'timeout');
    const rejection = await lastTlsRejection(count);
    assert.equal(rejection?.reason, 'client-certificate-wrong-key-usage', JSON.stringify(rejection));
  });

  test('refused after the TLS handshake: an RSA-1024 certificate with the right identity; RSA-2048 accepted', async () => {
    const weak = await issueCertificate(pki.ca, {
      commonName: 'archive.local',
      dnsNames: ['archive.local'],
      usage: 'client',
      keyType: 'rsa-1024',
    });
    const count = (proxy.events['tls-client-rejected'] ?? []).length;
    // The client can only present a 1024-bit key below OpenSSL's default security level.
    const outcome = await handshake({ cert: weak.cert, key: weak.key, ciphers: 'DEFAULT:@SECLEVEL=0' });
    assert.notEqual(outcome, 'timeout');
    const rejection = await lastTlsRejection(count);
    assert.equal(rejection?.reason, 'client-certificate-weak-key', JSON.stringify(rejection));
    assert.match(rejection?.message ?? '', /RSA 1024-bit/);

    const strong = await issueCertificate(pki.ca, {
      commonName: 'archive.local',
      dnsNames: ['archive.local'],
      usage: 'client',
      keyType: 'rsa-2048',
    });
    const r = await echo({
      host: '127.0.0.1',
      port: proxy.returnPort,
      callingAeTitle: 'ARCHIVE',
      calledAeTitle: 'WS_OK',
      tls: asArchive(strong),
    });
    assert.equal(r.error, null, 'the same identity with a 2048-bit RSA key is accepted');
  });

  test('a refused certificate is reported with the source address and port, subject, issuer and fingerprint', async () => {
    const count = (proxy.events['tls-client-rejected'] ?? []).length;
    await handshake({ cert: foreign.cert, key: foreign.key });
    const rejection = await lastTlsRejection(count);
    assert.equal(rejection?.remoteAddress, '127.0.0.1');
    assert.ok((rejection?.remotePort ?? 0) > 0, JSON.stringify(rejection));
    const x509 = new X509Certificate(foreign.cert);
    assert.deepEqual(rejection?.certificate, {
      subject: 'CN=archive.local',
      issuer: 'CN=Other CA',
      fingerprint256: x509.fingerprint256,
    });
  });

  test('the forward listener is unaffected: plaintext modalities still use it', async () => {
    const r = await echo({
      host: '127.0.0.1',
      port: proxy.port,
      callingAeTitle: 'STRANGER',
      calledAeTitle: 'DICOM_PROXY',
    });
    assert.match(r.error ?? '', /association rejected 1\/1\/3/);
    assert.equal((proxy.events['association-refused'] ?? []).at(-1)?.listener, 'forward');
  });
});
