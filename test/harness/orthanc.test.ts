import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { type DemoPkiPaths, writeDemoPki } from '../../src/tls/pki.js';
import { buildPart10, datasetOf, newUid } from '../helpers/dicom.js';
import {
  type OrthancHandle,
  Procs,
  describeRun,
  listFiles,
  makeTempDir,
  peerAvailability,
  removeTempDir,
  runEchoscu,
  runFindscu,
  skipUnlessPeer,
  startOrthanc,
  startStorescp,
} from '../helpers/peers.js';

describe('Orthanc with DICOM TLS and required client certificates', { timeout: 120_000 }, () => {
  const procs = new Procs();
  let dir: string | undefined;
  let pki: DemoPkiPaths;
  let orthanc: OrthancHandle | undefined;

  before(async () => {
    if (!peerAvailability('orthanc').ok || !peerAvailability('dcmtk').ok) return;
    dir = await makeTempDir('orthanc');
    pki = await writeDemoPki(join(dir, 'pki'));
    orthanc = await startOrthanc(procs, {
      dir: join(dir, 'orthanc'),
      aeTitle: 'ARCHIVE',
      tls: { cert: pki.archiveCert, key: pki.archiveKey, ca: pki.caCert, requireClientCert: true },
      modalities: { proxy: { aeTitle: 'DIMSEPROXY', host: '127.0.0.1', port: 11112, useTls: true } },
    });
  });

  after(async () => {
    await procs.stopAll();
    await removeTempDir(dir);
  });

  const clientTls = () => ({ key: pki.proxyClientKey, cert: pki.proxyClientCert, ca: pki.caCert });

  it('answers echoscu +tls with the right client certificate', async (t) => {
    if (!skipUnlessPeer(t, 'orthanc') || !skipUnlessPeer(t, 'dcmtk')) return;
    assert.ok(orthanc);
    const r = await runEchoscu({
      host: '127.0.0.1',
      port: orthanc.dicomPort,
      callingAe: 'DIMSEPROXY',
      calledAe: 'ARCHIVE',
      tls: clientTls(),
      timeoutMs: 30_000,
    });
    assert.equal(r.code, 0, `${describeRun(r)}\n${procs.describe(orthanc.child)}`);
  });

  it('refuses echoscu without a client certificate, and in plaintext', async (t) => {
    if (!skipUnlessPeer(t, 'orthanc') || !skipUnlessPeer(t, 'dcmtk')) return;
    assert.ok(orthanc);
    const anonymous = await runEchoscu({
      host: '127.0.0.1',
      port: orthanc.dicomPort,
      callingAe: 'DIMSEPROXY',
      calledAe: 'ARCHIVE',
      tls: { ca: pki.caCert },
      timeoutMs: 30_000,
    });
    assert.notEqual(anonymous.code, 0, describeRun(anonymous));
    const plain = await runEchoscu({
      host: '127.0.0.1',
      port: orthanc.dicomPort,
      callingAe: 'DIMSEPROXY',
      calledAe: 'ARCHIVE',
      timeoutMs: 30_000,
    });
    assert.notEqual(plain.code, 0, describeRun(plain));
  });

  it('finds an uploaded instance with findscu +tls (study root)', async (t) => {
    if (!skipUnlessPeer(t, 'orthanc') || !skipUnlessPeer(t, 'dcmtk')) return;
    assert.ok(orthanc && dir);
    const study = newUid();
    const id = await orthanc.upload(
      buildPart10({
        pixelBytes: 4096,
        studyInstanceUid: study,
        patientId: 'HARNESS-1',
        withPrivateTags: true,
      }),
    );
    assert.match(id, /^[0-9a-f-]+$/);
    const outDir = join(dir, 'find');
    const r = await runFindscu({
      host: '127.0.0.1',
      port: orthanc.dicomPort,
      callingAe: 'DIMSEPROXY',
      calledAe: 'ARCHIVE',
      tls: clientTls(),
      model: 'study',
      keys: ['QueryRetrieveLevel=STUDY', `StudyInstanceUID=${study}`, 'PatientID'],
      outDir,
      timeoutMs: 30_000,
    });
    assert.equal(r.code, 0, `${describeRun(r)}\n${procs.describe(orthanc.child)}`);
    const responses = await listFiles(outDir);
    assert.equal(responses.length, 1, describeRun(r));
    const first = responses[0];
    assert.ok(first);
    const response = await readFile(first);
    assert.ok(response.includes(Buffer.from(study)), 'response carries the StudyInstanceUID');
    assert.ok(response.includes(Buffer.from('HARNESS-1')), 'response carries the PatientID');

    // An unknown study finds nothing.
    const none = await runFindscu({
      host: '127.0.0.1',
      port: orthanc.dicomPort,
      callingAe: 'DIMSEPROXY',
      calledAe: 'ARCHIVE',
      tls: clientTls(),
      keys: ['QueryRetrieveLevel=STUDY', `StudyInstanceUID=${newUid()}`],
      outDir: join(dir, 'find-none'),
      timeoutMs: 30_000,
    });
    assert.equal(none.code, 0, describeRun(none));
    assert.deepEqual(await listFiles(join(dir, 'find-none')), []);
  });

  it('opens outgoing TLS associations with its certificate as client certificate (UseDicomTls)', async (t) => {
    if (!skipUnlessPeer(t, 'orthanc') || !skipUnlessPeer(t, 'dcmtk')) return;
    assert.ok(dir);
    // A second Orthanc whose "dest" modality is a TLS storescp: the same path C-MOVE sub-associations take.
    const outDir = join(dir, 'dest');
    const scp = await startStorescp(procs, {
      outDir,
      aeTitle: 'DEST',
      tls: { key: pki.proxyServerKey, cert: pki.proxyServerCert, ca: pki.caCert },
    });
    const sender = await startOrthanc(procs, {
      dir: join(dir, 'orthanc-sender'),
      aeTitle: 'ARCHIVE2',
      tls: { cert: pki.archiveCert, key: pki.archiveKey, ca: pki.caCert, requireClientCert: true },
      modalities: { dest: { aeTitle: 'DEST', host: '127.0.0.1', port: scp.port, useTls: true } },
    });
    const part10 = buildPart10({ pixelBytes: 8192, withPrivateTags: true, withGroupLengths: true });
    const id = await sender.upload(part10);
    const r = await sender.rest('POST', '/modalities/dest/store', { Resources: [id], Synchronous: true });
    assert.equal(r.status, 200, `${r.text()}\n${procs.describe(sender.child)}\n${procs.describe(scp.child)}`);
    const received = await listFiles(outDir);
    assert.equal(received.length, 1);
    const first = received[0];
    assert.ok(first);
    assert.ok(
      datasetOf(await readFile(first)).equals(datasetOf(part10)),
      'Orthanc forwards the stored bytes',
    );
  });

  it('serves its REST API on 127.0.0.1 only to the harness (no authentication, no remote access)', async (t) => {
    if (!skipUnlessPeer(t, 'orthanc') || !skipUnlessPeer(t, 'dcmtk')) return;
    assert.ok(orthanc);
    const system = await orthanc.rest('GET', '/system');
    assert.equal(system.status, 200);
    const info = system.json<{ DicomAet: string; DicomPort: number }>();
    assert.equal(info.DicomAet, 'ARCHIVE');
    assert.equal(info.DicomPort, orthanc.dicomPort);
  });
});
