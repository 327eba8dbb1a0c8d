import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { readFile, rm, stat } from 'node:fs/promises';
import { type AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import {
  type ConnectionOptions,
  type TLSSocket,
  type TlsOptions,
  checkServerIdentity,
  connect,
  createServer,
} from 'node:tls';
import { type PemPair, createCa, issueCertificate, writeDemoPki } from '../../src/tls/pki.js';
import { makeTempDir, removeTempDir } from '../helpers/peers.js';

interface HandshakeResult {
  /** The server completed the handshake and saw an authorized client. */
  accepted: boolean;
  serverError?: string;
  clientError?: string;
  /** With `inspect`, why the server would refuse the client (e.g. CERT_HAS_EXPIRED). */
  authorizationError?: string;
}

/**
 * Why the server refuses this client: the same handshake with rejectUnauthorized off, reading the
 * server socket's authorizationError (a refusing Node server only reports "socket hang up").
 */
async function refusalReason(server: TlsOptions, client: ConnectionOptions): Promise<string | undefined> {
  return (await handshake(server, client, { inspect: true })).authorizationError;
}

/**
 * One mTLS attempt against a fresh server on 127.0.0.1:0. The verdict comes from the server side (with
 * TLS 1.3 the client can finish its half of the handshake before the server rejects its certificate),
 * confirmed on the client by an application byte.
 */
async function handshake(
  server: TlsOptions,
  client: ConnectionOptions,
  opts: { inspect?: boolean; timeoutMs?: number } = {},
): Promise<HandshakeResult> {
  const timeoutMs = opts.timeoutMs ?? 5000;
  const srv = createServer({
    requestCert: true,
    rejectUnauthorized: opts.inspect !== true,
    minVersion: 'TLSv1.2',
    ...server,
  });
  const sockets = new Set<TLSSocket>();
  try {
    return await new Promise<HandshakeResult>((resolve, reject) => {
      const result: HandshakeResult = { accepted: false };
      const timer = setTimeout(() => reject(new Error('handshake test timed out')), timeoutMs);
      const finish = () => {
        clearTimeout(timer);
        resolve(result);
      };
      srv.on('secureConnection', (s) => {
        sockets.add(s);
        result.accepted = s.authorized;
        const why = s.authorizationError;
        if (why !== undefined && why !== null) result.authorizationError = String(why);
        s.end('ok');
      });
      srv.on('tlsClientError', (err) => {
        result.serverError ??= err.message;
      });
      srv.listen(0, '127.0.0.1', () => {
        const { port } = srv.address() as AddressInfo;
        const c = connect({ host: '127.0.0.1', port, ...client });
        sockets.add(c);
        let data = '';
        c.setEncoding('utf8');
        c.on('data', (d: string) => (data += d));
        c.on('error', (err) => {
          result.clientError = err.message;
        });
        c.on('close', () => {
          if (data !== 'ok') result.accepted = false;
          // Let the server's tlsClientError land before resolving.
          setTimeout(finish, 20);
        });
      });
    });
  } finally {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => srv.close(() => resolve()));
  }
}

describe('PKI (src/tls/pki.ts) with Node tls', () => {
  let ca: PemPair;
  let otherCa: PemPair;
  let server: PemPair;
  let client: PemPair;
  let foreignClient: PemPair;
  let expiredClient: PemPair;
  let serverOnly: PemPair;
  let dir: string | undefined;

  before(async () => {
    ca = await createCa('test CA');
    otherCa = await createCa('other CA');
    server = await issueCertificate(ca, {
      commonName: 'archive.local',
      dnsNames: ['archive.local', 'localhost'],
      ipAddresses: ['127.0.0.1', '::1'],
      usage: 'both',
    });
    client = await issueCertificate(ca, { commonName: 'dimse-tls-proxy', usage: 'client' });
    foreignClient = await issueCertificate(otherCa, { commonName: 'dimse-tls-proxy', usage: 'client' });
    const day = 24 * 3600 * 1000;
    expiredClient = await issueCertificate(ca, {
      commonName: 'dimse-tls-proxy',
      usage: 'client',
      notBefore: new Date(Date.now() - 30 * day),
      notAfter: new Date(Date.now() - day),
    });
    serverOnly = await issueCertificate(ca, { commonName: 'server-only', usage: 'server' });
  });

  after(async () => {
    await removeTempDir(dir);
  });

  const serverOpts = (): TlsOptions => ({ key: server.key, cert: server.cert, ca: [ca.cert] });

  it('issues certificates with the requested subject, SANs, EKUs and validity', () => {
    const caX = new X509Certificate(ca.cert);
    assert.equal(caX.ca, true);
    const s = new X509Certificate(server.cert);
    assert.equal(s.ca, false);
    assert.equal(s.subject, 'CN=archive.local');
    assert.ok(s.checkIssued(caX));
    assert.ok(s.verify(caX.publicKey));
    assert.equal(s.publicKey.asymmetricKeyType, 'ec');
    assert.equal(
      s.subjectAltName,
      'DNS:archive.local, DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1',
    );
    assert.deepEqual(s.keyUsage?.sort(), ['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2']);
    assert.deepEqual(new X509Certificate(client.cert).keyUsage, ['1.3.6.1.5.5.7.3.2']);
    assert.deepEqual(new X509Certificate(serverOnly.cert).keyUsage, ['1.3.6.1.5.5.7.3.1']);
    assert.ok(new Date(new X509Certificate(expiredClient.cert).validTo).getTime() < Date.now());
    assert.notEqual(new X509Certificate(client.cert).serialNumber, s.serialNumber);
  });

  it('issues URI SANs and rejects malformed names', async () => {
    const c = await issueCertificate(ca, {
      commonName: 'modality',
      uris: ['urn:dicom:ae:CT01'],
      usage: 'client',
    });
    assert.equal(new X509Certificate(c.cert).subjectAltName, 'URI:urn:dicom:ae:CT01');
    await assert.rejects(
      issueCertificate(ca, { commonName: 'x', ipAddresses: ['not-an-ip'], usage: 'server' }),
    );
    await assert.rejects(issueCertificate(ca, { commonName: 'x', dnsNames: ['bad name'], usage: 'server' }));
    await assert.rejects(
      issueCertificate(ca, {
        commonName: 'x',
        usage: 'server',
        notBefore: new Date(),
        notAfter: new Date(0),
      }),
    );
  });

  it('accepts a client certificate issued by the trusted CA', async () => {
    const opts = { key: client.key, cert: client.cert, ca: [ca.cert], servername: 'localhost' };
    const r = await handshake(serverOpts(), opts);
    assert.equal(r.accepted, true, JSON.stringify(r));
    assert.equal(await refusalReason(serverOpts(), opts), undefined);
  });

  it('refuses a client without a certificate', async () => {
    const r = await handshake(serverOpts(), { ca: [ca.cert], servername: 'localhost' });
    assert.equal(r.accepted, false, JSON.stringify(r));
    assert.equal(
      await refusalReason(serverOpts(), { ca: [ca.cert], servername: 'localhost' }),
      'UNABLE_TO_GET_ISSUER_CERT',
    ); // Node's code for "no certificate"
  });

  it('refuses a client certificate from another CA', async () => {
    const opts = { key: foreignClient.key, cert: foreignClient.cert, ca: [ca.cert], servername: 'localhost' };
    const r = await handshake(serverOpts(), opts);
    assert.equal(r.accepted, false, JSON.stringify(r));
    assert.equal(await refusalReason(serverOpts(), opts), 'UNABLE_TO_VERIFY_LEAF_SIGNATURE');
  });

  it('refuses an expired client certificate', async () => {
    const opts = { key: expiredClient.key, cert: expiredClient.cert, ca: [ca.cert], servername: 'localhost' };
    const r = await handshake(serverOpts(), opts);
    assert.equal(r.accepted, false, JSON.stringify(r));
    assert.equal(await refusalReason(serverOpts(), opts), 'CERT_HAS_EXPIRED');
  });

  it('refuses a server-only certificate used as a client certificate (EKU)', async () => {
    const opts = { key: serverOnly.key, cert: serverOnly.cert, ca: [ca.cert], servername: 'localhost' };
    const r = await handshake(serverOpts(), opts);
    assert.equal(r.accepted, false, JSON.stringify(r));
    assert.equal(await refusalReason(serverOpts(), opts), 'INVALID_PURPOSE');
  });

  it('passes the hostname check for localhost and 127.0.0.1, fails it for a wrong name', async () => {
    const peer = new X509Certificate(server.cert).toLegacyObject();
    assert.equal(checkServerIdentity('localhost', peer), undefined);
    assert.equal(checkServerIdentity('archive.local', peer), undefined);
    assert.ok(checkServerIdentity('wrong.example', peer) instanceof Error);

    const byName = await handshake(serverOpts(), {
      key: client.key,
      cert: client.cert,
      ca: [ca.cert],
      servername: 'localhost',
      checkServerIdentity,
    });
    assert.equal(byName.accepted, true, JSON.stringify(byName));
    const byIp = await handshake(serverOpts(), { key: client.key, cert: client.cert, ca: [ca.cert] });
    assert.equal(byIp.accepted, true, JSON.stringify(byIp));
    const wrong = await handshake(serverOpts(), {
      key: client.key,
      cert: client.cert,
      ca: [ca.cert],
      servername: 'wrong.example',
      checkServerIdentity,
    });
    assert.equal(wrong.accepted, false, JSON.stringify(wrong));
    assert.match(wrong.clientError ?? '', /does not match|altname/i);
  });

  it('the client refuses a server certificate from another CA', async () => {
    const foreignServer = await issueCertificate(otherCa, {
      commonName: 'archive.local',
      dnsNames: ['localhost'],
      usage: 'both',
    });
    const r = await handshake(
      { key: foreignServer.key, cert: foreignServer.cert, ca: [ca.cert] },
      { key: client.key, cert: client.cert, ca: [ca.cert], servername: 'localhost' },
    );
    assert.equal(r.accepted, false, JSON.stringify(r));
    assert.match(r.clientError ?? '', /unable to (get|verify)|self.signed|certificate/i);
  });

  it('writeDemoPki writes the set with private keys 0600, keeps files unless overwrite', async () => {
    dir = await makeTempDir('pki');
    const paths = await writeDemoPki(dir);
    const files = [
      paths.caCert,
      paths.caKey,
      paths.proxyClientCert,
      paths.proxyClientKey,
      paths.proxyServerCert,
      paths.proxyServerKey,
      paths.archiveCert,
      paths.archiveKey,
    ];
    assert.deepEqual(
      files.map((f) => f.slice(dir?.length ?? 0)),
      [
        '/ca.pem',
        '/ca.key',
        '/proxy-client.pem',
        '/proxy-client.key',
        '/proxy-server.pem',
        '/proxy-server.key',
        '/archive.pem',
        '/archive.key',
      ],
    );
    for (const key of [paths.caKey, paths.proxyClientKey, paths.proxyServerKey, paths.archiveKey]) {
      assert.equal((await stat(key)).mode & 0o777, 0o600, key);
    }
    const caX = new X509Certificate(await readFile(paths.caCert));
    const archive = new X509Certificate(await readFile(paths.archiveCert));
    assert.ok(archive.checkIssued(caX));
    assert.equal(archive.subject, 'CN=archive.local');
    assert.equal(
      archive.subjectAltName,
      'DNS:archive.local, DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1',
    );
    assert.deepEqual(archive.keyUsage?.sort(), ['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2']);
    const proxyClient = new X509Certificate(await readFile(paths.proxyClientCert));
    assert.equal(proxyClient.subject, 'CN=dimse-tls-proxy');
    assert.deepEqual(proxyClient.keyUsage, ['1.3.6.1.5.5.7.3.2']);
    const proxyServer = new X509Certificate(await readFile(paths.proxyServerCert));
    assert.equal(proxyServer.subjectAltName, 'DNS:localhost, IP Address:127.0.0.1');
    assert.deepEqual(proxyServer.keyUsage?.sort(), ['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2']);

    const before = await Promise.all(files.map((f) => readFile(f, 'utf8')));
    await writeDemoPki(dir);
    assert.deepEqual(
      await Promise.all(files.map((f) => readFile(f, 'utf8'))),
      before,
      'kept without overwrite',
    );

    // A missing leaf is re-issued by the existing CA; everything else stays.
    await rm(paths.archiveCert);
    await writeDemoPki(dir);
    const reissued = new X509Certificate(await readFile(paths.archiveCert));
    assert.ok(reissued.checkIssued(caX));
    assert.equal(await readFile(paths.caCert, 'utf8'), before[0]);

    await writeDemoPki(dir, { overwrite: true });
    assert.notEqual(await readFile(paths.caCert, 'utf8'), before[0], 'overwrite regenerates');
    assert.equal((await stat(paths.caKey)).mode & 0o777, 0o600);

    // The written set works for mTLS.
    const r = await handshake(
      {
        key: await readFile(paths.archiveKey),
        cert: await readFile(paths.archiveCert),
        ca: [await readFile(paths.caCert)],
      },
      {
        key: await readFile(paths.proxyClientKey),
        cert: await readFile(paths.proxyClientCert),
        ca: [await readFile(paths.caCert)],
        servername: 'archive.local',
      },
    );
    assert.equal(r.accepted, true, JSON.stringify(r));
  });
});
