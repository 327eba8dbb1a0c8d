import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { type DemoPkiPaths, createCa, issueCertificate, writeDemoPki } from '../../src/tls/pki.js';
import { TS, buildPart10, datasetOf, metaString, newUid, writeInstances } from '../helpers/dicom.js';
import {
  Procs,
  describeRun,
  listFiles,
  makeTempDir,
  peerAvailability,
  removeTempDir,
  runEchoscu,
  runStorescu,
  skipUnlessPeer,
  startStorescp,
} from '../helpers/peers.js';

/** Map SOP instance UID → file bytes for the files in `dir`. */
async function bySopInstance(paths: string[]): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  for (const p of paths) {
    const bytes = await readFile(p);
    const uid = metaString(bytes, 0x0003);
    assert.ok(uid, `no SOP instance UID in ${p}`);
    out.set(uid, bytes);
  }
  return out;
}

describe('DCMTK storescp/storescu over mutual TLS', { timeout: 120_000 }, () => {
  const procs = new Procs();
  let dir: string | undefined;
  let pki: DemoPkiPaths;
  let foreign: { key: string; cert: string };
  let sent: string[] = [];

  before(async () => {
    if (!peerAvailability('dcmtk').ok) return;
    dir = await makeTempDir('dcmtk');
    pki = await writeDemoPki(join(dir, 'pki'));
    const otherCa = await createCa('other CA');
    const other = await issueCertificate(otherCa, { commonName: 'dimse-tls-proxy', usage: 'client' });
    foreign = { key: join(dir, 'foreign.key'), cert: join(dir, 'foreign.pem') };
    await writeFile(foreign.key, other.key, { mode: 0o600 });
    await writeFile(foreign.cert, other.cert);
    const files = join(dir, 'send');
    const study = newUid();
    sent = [
      ...(await writeInstances(join(files, 'ex'), 1, {
        pixelBytes: 64 * 1024,
        studyInstanceUid: study,
        withPrivateTags: true,
        withGroupLengths: true,
        seed: 1,
      })),
      ...(await writeInstances(join(files, 'im'), 1, {
        pixelBytes: 32 * 1024 + 6,
        transferSyntaxUid: TS.implicitLE,
        studyInstanceUid: study,
        withPrivateTags: true,
        withGroupLengths: true,
        seed: 2,
      })),
      ...(await writeInstances(join(files, 'jpeg'), 1, {
        pixelBytes: 50_000,
        transferSyntaxUid: TS.jpegBaseline,
        studyInstanceUid: study,
        fragments: 3,
        seed: 3,
      })),
    ];
  });

  after(async () => {
    await procs.stopAll();
    await removeTempDir(dir);
  });

  it('delivers explicit LE, implicit LE and JPEG baseline files byte for byte', async (t) => {
    if (!skipUnlessPeer(t, 'dcmtk')) return;
    assert.ok(dir);
    const outDir = join(dir, 'received');
    const scp = await startStorescp(procs, {
      outDir,
      tls: { key: pki.archiveKey, cert: pki.archiveCert, ca: pki.caCert },
    });
    const r = await runStorescu({
      host: '127.0.0.1',
      port: scp.port,
      files: sent,
      proposeFileTransferSyntax: true,
      tls: { key: pki.proxyClientKey, cert: pki.proxyClientCert, ca: pki.caCert },
      timeoutMs: 30_000,
    });
    assert.equal(r.code, 0, describeRun(r));
    const received = await bySopInstance(await listFiles(outDir));
    const expected = await bySopInstance(sent);
    assert.equal(received.size, 3, `received ${[...received.keys()].join(', ')}`);
    for (const [uid, bytes] of expected) {
      const got = received.get(uid);
      assert.ok(got, `instance ${uid} not received`);
      assert.equal(metaString(got, 0x0010), metaString(bytes, 0x0010), 'transfer syntax kept');
      assert.ok(datasetOf(got).equals(datasetOf(bytes)), `data set of ${uid} differs`);
    }
    // The storescp named files after the SOP instance UID.
    assert.ok((await listFiles(outDir)).every((f) => [...expected.keys()].some((uid) => f.endsWith(uid))));
  });

  it('without a file transfer syntax config storescu cannot send a JPEG file unchanged', async (t) => {
    if (!skipUnlessPeer(t, 'dcmtk')) return;
    assert.ok(dir);
    const scp = await startStorescp(procs, { outDir: join(dir, 'received-noxf') });
    const jpeg = join(dir, 'lone.dcm');
    await writeFile(jpeg, buildPart10({ pixelBytes: 4096, transferSyntaxUid: TS.jpegBaseline }));
    const r = await runStorescu({ host: '127.0.0.1', port: scp.port, files: [jpeg], timeoutMs: 30_000 });
    assert.notEqual(r.code, 0, describeRun(r));
    assert.match(r.stderr + r.stdout, /unable to convert|Failed/i);
  });

  it('refuses storescu with a client certificate from another CA, and without one', async (t) => {
    if (!skipUnlessPeer(t, 'dcmtk')) return;
    assert.ok(dir);
    const outDir = join(dir, 'received-refused');
    const scp = await startStorescp(procs, {
      outDir,
      tls: { key: pki.archiveKey, cert: pki.archiveCert, ca: pki.caCert },
    });
    const foreignRun = await runStorescu({
      host: '127.0.0.1',
      port: scp.port,
      files: sent.slice(0, 1),
      proposeFileTransferSyntax: true,
      tls: { key: foreign.key, cert: foreign.cert, ca: pki.caCert },
      timeoutMs: 30_000,
    });
    assert.notEqual(foreignRun.code, 0, describeRun(foreignRun));
    const anonymous = await runEchoscu({
      host: '127.0.0.1',
      port: scp.port,
      tls: { ca: pki.caCert },
      timeoutMs: 30_000,
    });
    assert.notEqual(anonymous.code, 0, describeRun(anonymous));
    assert.deepEqual(await listFiles(outDir), []);
    // storescp survived the failed handshakes and still serves a good client.
    const ok = await runEchoscu({
      host: '127.0.0.1',
      port: scp.port,
      tls: { key: pki.proxyClientKey, cert: pki.proxyClientCert, ca: pki.caCert },
      timeoutMs: 30_000,
    });
    assert.equal(ok.code, 0, describeRun(ok));
  });

  it('storescu refuses a storescp whose certificate is from another CA', async (t) => {
    if (!skipUnlessPeer(t, 'dcmtk')) return;
    assert.ok(dir);
    const otherCa = await createCa('rogue CA');
    const rogue = await issueCertificate(otherCa, { commonName: 'archive.local', usage: 'both' });
    const key = join(dir, 'rogue.key');
    const cert = join(dir, 'rogue.pem');
    await writeFile(key, rogue.key, { mode: 0o600 });
    await writeFile(cert, rogue.cert);
    const scp = await startStorescp(procs, {
      outDir: join(dir, 'received-rogue'),
      tls: { key, cert, ca: pki.caCert },
    });
    const r = await runEchoscu({
      host: '127.0.0.1',
      port: scp.port,
      tls: { key: pki.proxyClientKey, cert: pki.proxyClientCert, ca: pki.caCert },
      timeoutMs: 30_000,
    });
    assert.notEqual(r.code, 0, describeRun(r));
  });
});
