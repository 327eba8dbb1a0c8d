// Orthanc end to end: plaintext DCMTK query/retrieve SCUs → in-process proxy → Orthanc with DICOM TLS
// (client certificate required, trusting the test CA). The proxy passes the modality's calling AE through
// unchanged, so Orthanc knows the modalities by their own AE titles. C-MOVE sub-associations come back
// the way they must on a segmented network: Orthanc opens them over mutual TLS to the proxy's return
// listener (its certificate bound to its AE title), which relays them to the plaintext storescp
// destination behind it, hashing every instance into the ledger.
import assert from 'node:assert/strict';
import { createHash, X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { TS, newUid, writeInstances } from '../helpers/dicom.js';
import { assertDelivered, bySopInstance, eventually, pkiFile } from '../helpers/interop.js';
import {
  type OrthancHandle,
  Procs,
  describeRun,
  freePort,
  listFiles,
  makeTempDir,
  peerAvailability,
  removeTempDir,
  runFindscu,
  runGetscu,
  runMovescu,
  skipUnlessPeer,
  startOrthanc,
  startStorescp,
} from '../helpers/peers.js';
import {
  removePki,
  standardPki,
  startProxy,
  type ProxyUnderTest,
  writeProxyServerCert,
} from '../helpers/proxy.js';
import { datasetOffset } from '../../src/dicom/part10.js';
import { InlineHasher } from '../../src/integrity/hasher.js';
import { MemorySink } from '../helpers/memory-sink.js';

type Pki = Awaited<ReturnType<typeof standardPki>>;

describe('DCMTK query/retrieve → proxy → Orthanc over mutual TLS', { timeout: 90_000 }, () => {
  const procs = new Procs();
  let dir: string | undefined;
  let pki: Pki | undefined;
  let orthanc: OrthancHandle | undefined;
  let proxy: ProxyUnderTest | undefined;
  let destDir = '';
  let otherDir = '';
  const studyA = newUid();
  const studyB = newUid();
  let filesA: string[] = [];
  let filesB: string[] = [];
  const sink = new MemorySink();
  const hasher = new InlineHasher();

  before(async () => {
    if (!peerAvailability('orthanc').ok || !peerAvailability('dcmtk').ok) return;
    dir = await makeTempDir('interop-orthanc');
    pki = await standardPki();
    destDir = join(dir, 'dest');
    otherDir = join(dir, 'other');
    const dest = await startStorescp(procs, { outDir: destDir, aeTitle: 'DEST' });
    const other = await startStorescp(procs, { outDir: otherDir, aeTitle: 'OTHER_DEST' });
    // The proxy's return listener: Orthanc must know its port before the proxy knows Orthanc's.
    const returnPort = await freePort();
    await writeProxyServerCert(pki);
    // Every SCU AE is a known modality to Orthanc (it would serve all of them): only the proxy refuses.
    const scu = (aeTitle: string) => ({ aeTitle, host: '127.0.0.1', port: 104 });
    orthanc = await startOrthanc(procs, {
      dir: join(dir, 'orthanc'),
      aeTitle: 'ARCHIVE',
      tls: {
        cert: pkiFile(pki, 'archive'),
        key: pkiFile(pki, 'archive.key'),
        ca: pkiFile(pki, 'ca'),
        requireClientCert: true,
      },
      modalities: {
        findscu: scu('FINDSCU'),
        movescu: scu('MOVESCU'),
        getscu: scu('GETSCU'),
        nofind: scu('NOFIND'),
        // DEST lives behind the proxy: Orthanc reaches it only through the return listener, over TLS.
        dest: { aeTitle: 'DEST', host: '127.0.0.1', port: returnPort, useTls: true },
        other: { aeTitle: 'OTHER_DEST', host: '127.0.0.1', port: other.port, useTls: false },
      },
    });
    proxy = await startProxy({
      archivePort: orthanc.dicomPort,
      pki,
      ledger: { sink, onFailure: 'abort', hasher },
      peers: [
        '  FINDSCU: { addresses: [127.0.0.1], services: [echo, find] }',
        '  MOVESCU: { addresses: [127.0.0.1], services: [echo, find, move], moveDestinations: [DEST] }',
        '  NOFIND: { addresses: [127.0.0.1], services: [echo, move], moveDestinations: [DEST] }',
        '  GETSCU: { addresses: [127.0.0.1], services: [echo, get] }',
        `  DEST: { addresses: [127.0.0.1], services: [echo], receiver: { host: 127.0.0.1, port: ${dest.port} } }`,
      ].join('\n'),
      extra: [
        'returnListener:',
        '  host: 127.0.0.1',
        `  port: ${returnPort}`,
        `  tls: { ca: ${pki.files.ca}, cert: ${pki.files['proxy-server']}, key: ${pki.files['proxy-server.key']} }`,
        '  callers:',
        '    - { aeTitles: [ARCHIVE], identity: { dns: archive.local } }',
      ].join('\n'),
    });
    assert.equal(proxy.returnPort, returnPort);
    // Verbose logging: Orthanc then names the calling AE of every association it serves.
    const level = await orthanc.rest('PUT', '/tools/log-level', 'verbose');
    assert.equal(level.status, 200, level.text());

    filesA = await writeInstances(join(dir, 'study-a'), 3, {
      pixelBytes: 16 * 1024,
      studyInstanceUid: studyA,
      patientId: 'ORTHANC-A',
      patientName: 'INTEROP^ALPHA',
      withPrivateTags: true,
      withGroupLengths: true,
      seed: 100,
    });
    filesB = await writeInstances(join(dir, 'study-b'), 2, {
      pixelBytes: 8 * 1024,
      transferSyntaxUid: TS.implicitLE,
      studyInstanceUid: studyB,
      patientId: 'ORTHANC-B',
      patientName: 'INTEROP^BRAVO',
      seed: 200,
    });
  });

  after(async () => {
    await proxy?.close();
    await hasher.close();
    await procs.stopAll();
    await removePki(pki);
    await removeTempDir(dir);
  });

  /** Orthanc's log so far (verbose: one line per association and per request, naming the calling AE). */
  const orthancLog = (): string => {
    if (orthanc === undefined) return '';
    const { stdout, stderr } = procs.output(orthanc.child);
    return stdout + stderr;
  };
  const count = (re: RegExp): number => orthancLog().match(re)?.length ?? 0;
  /** Give Orthanc's log lines time to reach us before asserting that something is absent. */
  const settle = (): Promise<void> => new Promise((resolve) => setTimeout(resolve, 300));

  const viaProxy = () => ({
    host: '127.0.0.1',
    port: proxy?.port ?? 0,
    calledAe: 'DICOM_PROXY',
    timeoutMs: 30_000,
  });

  it('uploads two studies through the Orthanc REST API', async (t) => {
    if (!skipUnlessPeer(t, 'orthanc') || !skipUnlessPeer(t, 'dcmtk')) return;
    assert.ok(orthanc);
    for (const f of [...filesA, ...filesB]) await orthanc.upload(await readFile(f));
    const studies = await orthanc.rest('GET', '/studies');
    assert.equal(studies.status, 200);
    assert.equal(studies.json<string[]>().length, 2);
    const instances = await orthanc.rest('GET', '/instances');
    assert.equal(instances.json<string[]>().length, filesA.length + filesB.length);
  });

  it('findscu (study root) → proxy → Orthanc returns both studies', async (t) => {
    if (!skipUnlessPeer(t, 'orthanc') || !skipUnlessPeer(t, 'dcmtk')) return;
    assert.ok(orthanc && proxy && dir);
    const outDir = join(dir, 'find');
    const r = await runFindscu({
      ...viaProxy(),
      callingAe: 'FINDSCU',
      model: 'study',
      keys: ['QueryRetrieveLevel=STUDY', 'StudyInstanceUID', 'PatientID', 'PatientName'],
      outDir,
    });
    assert.equal(r.code, 0, `${describeRun(r)}\n${procs.describe(orthanc.child)}`);
    const responses = await Promise.all((await listFiles(outDir)).map((f) => readFile(f)));
    assert.equal(responses.length, 2, describeRun(r));
    for (const [uid, patient] of [
      [studyA, 'ORTHANC-A'],
      [studyB, 'ORTHANC-B'],
    ] as const) {
      const match = responses.find((b) => b.includes(Buffer.from(uid, 'latin1')));
      assert.ok(match, `no C-FIND response carries StudyInstanceUID ${uid}`);
      assert.ok(match.includes(Buffer.from(patient, 'latin1')), `the response for ${uid} names ${patient}`);
    }
    const summary = await proxy.closed();
    assert.equal(summary.outcome, 'released');
    assert.equal(summary.operations['C-FIND-RQ'], 1);
    // The identifier findscu sent, as relayed, is kept for the Query audit message (PS3.15 A.5.3.10).
    const find = (proxy.events['dimse-completed'] ?? []).find((e) => e.id === summary.id);
    assert.ok(find?.query, 'the C-FIND completion carries its identifier');
    const identifier = Buffer.from(find.query.identifier, 'base64');
    assert.ok(identifier.includes(Buffer.from('STUDY', 'latin1')), 'QueryRetrieveLevel=STUDY is in it');
    assert.equal(find.query.truncated, false);
    // Orthanc served the query under the modality's own calling AE (the proxy passes it through).
    assert.ok(
      await eventually(() => /Incoming Find request from AET FINDSCU\b/.test(orthancLog())),
      `Orthanc's log does not show the query from FINDSCU:\n${procs.describe(orthanc.child)}`,
    );
  });

  it('movescu (study root, -aem DEST) → proxy → Orthanc ⇒ return listener → storescp DEST: every instance, byte for byte, in the ledger', async (t) => {
    if (!skipUnlessPeer(t, 'orthanc') || !skipUnlessPeer(t, 'dcmtk')) return;
    assert.ok(orthanc && proxy && pki);
    const recordsBefore = sink.records.length;
    const r = await runMovescu({
      ...viaProxy(),
      callingAe: 'MOVESCU',
      model: 'study',
      moveDestination: 'DEST',
      keys: ['QueryRetrieveLevel=STUDY', `StudyInstanceUID=${studyA}`],
    });
    assert.equal(r.code, 0, describeRun(r));
    assert.doesNotMatch(r.stderr, /Failed|Refused/i, describeRun(r));
    await assertDelivered(filesA, destDir);
    const received = await bySopInstance(await listFiles(destDir));
    assert.equal(received.size, filesA.length, 'only the instances of the moved study arrive');
    assert.deepEqual(await listFiles(otherDir), []);
    const summary = await proxy.closed();
    assert.equal(summary.outcome, 'released');
    assert.equal(summary.operations['C-MOVE-RQ'], 1);
    const completed = (proxy.events['dimse-completed'] ?? []).filter((e) => e.id === summary.id);
    assert.deepEqual(
      completed.map((e) => [e.command, e.status]),
      [['C-MOVE-RQ', 0]],
    );
    // Begin Transferring (PS3.15 A.5.3.3) names the study the identifier asked for.
    const started = (proxy.events['retrieve-started'] ?? []).filter((e) => e.id === summary.id);
    assert.deepEqual(
      started.map((e) => [e.command, e.moveDestination, e.dataset.studyInstanceUid]),
      [['C-MOVE', 'DEST', studyA]],
    );
    assert.ok(
      await eventually(() => /Incoming Move request from AET MOVESCU\b/.test(orthancLog())),
      procs.describe(orthanc.child),
    );
    // The sub-association came in through the return listener, from Orthanc's certificate.
    const back = (proxy.events['association-closed'] ?? []).filter((e) => e.listener === 'return');
    assert.equal(back.length, 1, JSON.stringify(proxy.events['association-refused']));
    assert.equal(back[0]?.callingAeTitle, 'ARCHIVE');
    assert.equal(back[0]?.calledAeTitle, 'DEST');
    assert.equal(back[0]?.outcome, 'released');
    assert.equal(back[0]?.instances, filesA.length);
    // Every delivered instance is in the ledger once, archive → destination, with the hash of what DEST stored.
    await proxy.server.recordsSettled();
    const evidence = sink.records.slice(recordsBefore);
    assert.equal(evidence.length, filesA.length);
    const fingerprint = new X509Certificate(pki.archive.cert).fingerprint256.replace(/:/g, '').toLowerCase();
    for (const [uid, file] of received) {
      const e = evidence.filter((x) => x.sopInstanceUid === uid);
      assert.equal(e.length, 1, uid);
      const dataset = file.subarray(datasetOffset(file));
      assert.equal(e[0]?.sha256, createHash('sha256').update(dataset).digest('hex'));
      assert.equal(e[0]?.direction, 'archive-to-destination');
      assert.equal(e[0]?.outcome, 'success');
      assert.equal(e[0]?.archiveCertSha256, fingerprint);
      assert.equal(e[0]?.moveOriginatorAeTitle, 'MOVESCU');
      assert.equal(typeof e[0]?.moveOriginatorMessageId, 'number');
    }
  });

  it('getscu (study root) → proxy → Orthanc: the C-GET sub-operations come back on the same association, every instance byte for byte, in the ledger', async (t) => {
    if (!skipUnlessPeer(t, 'orthanc') || !skipUnlessPeer(t, 'dcmtk')) return;
    assert.ok(orthanc && proxy && dir);
    const recordsBefore = sink.records.length;
    const outDir = join(dir, 'get');
    const r = await runGetscu({
      ...viaProxy(),
      callingAe: 'GETSCU',
      model: 'study',
      // Study A (explicit VR LE, as stored): Orthanc sends it unchanged, so it can be compared byte for byte.
      keys: ['QueryRetrieveLevel=STUDY', `StudyInstanceUID=${studyA}`],
      outDir,
    });
    assert.equal(r.code, 0, describeRun(r));
    const received = await assertDelivered(filesA, outDir);
    assert.equal(received.size, filesA.length);
    const summary = await proxy.closed();
    assert.equal(summary.outcome, 'released');
    assert.equal(summary.operations['C-GET-RQ'], 1);
    assert.equal(summary.instances, filesA.length);
    await proxy.server.recordsSettled();
    const evidence = sink.records.slice(recordsBefore);
    assert.equal(evidence.length, filesA.length);
    for (const e of evidence) {
      assert.equal(e.direction, 'archive-to-modality');
      assert.equal(e.outcome, 'success');
      const file = received.get(e.sopInstanceUid);
      assert.ok(file, e.sopInstanceUid);
      assert.equal(
        e.sha256,
        createHash('sha256')
          .update(file.subarray(datasetOffset(file)))
          .digest('hex'),
      );
    }
  });

  it('movescu to a destination the peer may not use: refused by the proxy (A801), nothing arrives anywhere', async (t) => {
    if (!skipUnlessPeer(t, 'orthanc') || !skipUnlessPeer(t, 'dcmtk')) return;
    assert.ok(orthanc && proxy);
    const destBefore = await listFiles(destDir);
    const r = await runMovescu({
      ...viaProxy(),
      callingAe: 'MOVESCU',
      model: 'study',
      moveDestination: 'OTHER_DEST',
      keys: ['QueryRetrieveLevel=STUDY', `StudyInstanceUID=${studyB}`],
    });
    // movescu exits 0 even when the C-MOVE failed: the files and the proxy's record tell.
    assert.equal(r.timedOut, false, describeRun(r));
    const summary = await proxy.closed();
    const refused = (proxy.events['dimse-refused'] ?? []).filter((e) => e.id === summary.id);
    assert.equal(refused.length, 1, JSON.stringify(proxy.events['dimse-refused']));
    assert.equal(refused[0]?.moveDestination, 'OTHER_DEST');
    assert.equal(refused[0]?.status, 0xa801);
    assert.equal(refused[0]?.callingAeTitle, 'MOVESCU');
    assert.match(r.stderr + r.stdout, /Move ?Destination ?Unknown|a801/i, describeRun(r));
    assert.deepEqual(await listFiles(otherDir), [], 'nothing may arrive at the refused destination');
    assert.deepEqual(await listFiles(destDir), destBefore, 'nor anywhere else');
    await settle();
    assert.equal(count(/Incoming Move request/g), 1, 'the refused C-MOVE never reached Orthanc');
    assert.doesNotMatch(orthancLog(), /OTHER_DEST"/, 'Orthanc never opened an association to OTHER_DEST');
  });

  it('a peer without the find service: findscu fails (no presentation context), Orthanc never sees a query', async (t) => {
    if (!skipUnlessPeer(t, 'orthanc') || !skipUnlessPeer(t, 'dcmtk')) return;
    assert.ok(orthanc && proxy && dir);
    const accepted = proxy.events['association-accepted']?.length ?? 0;
    const outDir = join(dir, 'find-refused');
    const r = await runFindscu({
      ...viaProxy(),
      callingAe: 'NOFIND',
      model: 'study',
      keys: ['QueryRetrieveLevel=STUDY', `StudyInstanceUID=${studyA}`],
      outDir,
    });
    assert.notEqual(r.code, 0, describeRun(r));
    assert.match(r.stderr + r.stdout, /Association Rejected/i, describeRun(r));
    const summary = await proxy.closed();
    assert.equal(summary.outcome, 'rejected');
    assert.deepEqual(summary.reject, { result: 1, source: 1, reason: 1 });
    assert.equal(proxy.events['association-refused']?.at(-1)?.refusal, 'no-permitted-presentation-context');
    assert.equal(proxy.events['association-accepted']?.length ?? 0, accepted, 'no association to Orthanc');
    assert.deepEqual(await listFiles(outDir), []);
    await settle();
    assert.doesNotMatch(orthancLog(), /NOFIND/, 'Orthanc must not have heard from NOFIND');
    assert.equal(count(/Incoming Find request/g), 1, 'only the allowed findscu reached Orthanc');
  });
});
