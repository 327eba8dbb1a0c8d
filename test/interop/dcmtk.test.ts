// DCMTK end to end: plaintext DCMTK SCUs → in-process proxy → storescp +tls (client certificate required,
// bit-preserving) as the archive. Every refusal sits next to the acceptance it mirrors.
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createCa, issueCertificate } from '../../src/tls/pki.js';
import { TS, buildPart10, newUid, writeInstances } from '../helpers/dicom.js';
import { assertDelivered, eventually, pkiFile, receivedUids, writePemPair } from '../helpers/interop.js';
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
  type RunResult,
} from '../helpers/peers.js';
import { removePki, standardPki, startProxy, type ProxyUnderTest } from '../helpers/proxy.js';

type Pki = Awaited<ReturnType<typeof standardPki>>;

const PEERS = [
  '  ECHOSCU: { addresses: [127.0.0.1], services: [echo] }',
  '  STORESCU: { addresses: [127.0.0.1], services: [echo, store] }',
  '  ECHOONLY: { addresses: [127.0.0.1], services: [echo] }',
].join('\n');

/** DCMTK's report of an A-ASSOCIATE-RJ, with result/source/reason spelled out. */
const REJECTED = /Association Rejected/i;

function output(r: RunResult): string {
  return `${r.stdout}\n${r.stderr}`;
}

describe('DCMTK SCUs → proxy → storescp over mutual TLS', { timeout: 60_000 }, () => {
  const procs = new Procs();
  let dir: string | undefined;
  let pki: Pki | undefined;
  let proxy: ProxyUnderTest | undefined;
  let outDir = '';
  let files: {
    explicit: string[];
    implicit: string[];
    jpeg: string[];
    rle: string[];
    j2k: string[];
    large: string[];
  };

  before(async () => {
    if (!peerAvailability('dcmtk').ok) return;
    dir = await makeTempDir('interop-dcmtk');
    pki = await standardPki();
    outDir = join(dir, 'archive');
    const scp = await startStorescp(procs, {
      outDir,
      aeTitle: 'ARCHIVE',
      bitPreserving: true,
      tls: { key: pkiFile(pki, 'archive.key'), cert: pkiFile(pki, 'archive'), ca: pkiFile(pki, 'ca') },
    });
    proxy = await startProxy({ archivePort: scp.port, pki, peers: PEERS });

    const send = join(dir, 'send');
    const study = newUid();
    files = {
      explicit: await writeInstances(join(send, 'explicit'), 2, {
        pixelBytes: 64 * 1024,
        studyInstanceUid: study,
        withPrivateTags: true,
        withGroupLengths: true,
        seed: 10,
      }),
      implicit: await writeInstances(join(send, 'implicit'), 2, {
        pixelBytes: 32 * 1024 + 6,
        transferSyntaxUid: TS.implicitLE,
        sopClassUid: '1.2.840.10008.5.1.4.1.1.2',
        studyInstanceUid: study,
        withPrivateTags: true,
        withGroupLengths: true,
        seed: 20,
      }),
      jpeg: await writeInstances(join(send, 'jpeg'), 1, {
        pixelBytes: 50_000,
        transferSyntaxUid: TS.jpegBaseline,
        studyInstanceUid: study,
        fragments: 3,
        seed: 30,
      }),
      rle: await writeInstances(join(send, 'rle'), 1, {
        pixelBytes: 40_000,
        transferSyntaxUid: TS.rle,
        studyInstanceUid: study,
        fragments: 2,
        withPrivateTags: true,
        seed: 40,
      }),
      j2k: await writeInstances(join(send, 'j2k'), 1, {
        pixelBytes: 70_001,
        transferSyntaxUid: TS.jpeg2000,
        studyInstanceUid: study,
        fragments: 4,
        seed: 50,
      }),
      large: await writeInstances(join(send, 'large'), 1, {
        pixelBytes: 20 * 1024 * 1024,
        studyInstanceUid: study,
        withPrivateTags: true,
        seed: 60,
      }),
    };
  });

  after(async () => {
    await proxy?.close();
    await procs.stopAll();
    await removePki(pki);
    await removeTempDir(dir);
  });

  const scu = () => ({
    host: '127.0.0.1',
    port: proxy?.port ?? 0,
    calledAe: 'DICOM_PROXY',
    timeoutMs: 30_000,
  });

  it('echoscu → proxy → storescp: C-ECHO succeeds over mutual TLS', async (t) => {
    if (!skipUnlessPeer(t, 'dcmtk')) return;
    assert.ok(proxy);
    const r = await runEchoscu({ ...scu(), callingAe: 'ECHOSCU' });
    assert.equal(r.code, 0, describeRun(r));
    const summary = await proxy.closed();
    assert.equal(summary.outcome, 'released');
    assert.equal(summary.callingAeTitle, 'ECHOSCU');
    assert.equal(summary.upstreamAeTitle, 'ARCHIVE');
    assert.equal(summary.operations['C-ECHO-RQ'], 1);
    assert.equal(summary.tls?.peerSubject, 'archive.local');
  });

  it('echoscu with an unknown calling AE: association rejected (1/1/3), storescp never contacted', async (t) => {
    if (!skipUnlessPeer(t, 'dcmtk')) return;
    assert.ok(proxy);
    const accepted = proxy.events['association-accepted']?.length ?? 0;
    const r = await runEchoscu({ ...scu(), callingAe: 'INTRUDER' });
    assert.notEqual(r.code, 0, describeRun(r));
    assert.match(output(r), REJECTED, describeRun(r));
    assert.match(output(r), /Rejected Permanent/i, describeRun(r));
    const summary = await proxy.closed();
    assert.equal(summary.outcome, 'rejected');
    assert.deepEqual(summary.reject, { result: 1, source: 1, reason: 3 });
    assert.equal(proxy.events['association-refused']?.at(-1)?.refusal, 'unknown-calling-ae');
    assert.equal(proxy.events['association-accepted']?.length ?? 0, accepted);
  });

  it('echoscu with a wrong called AE: association rejected (1/1/7)', async (t) => {
    if (!skipUnlessPeer(t, 'dcmtk')) return;
    assert.ok(proxy);
    const r = await runEchoscu({ ...scu(), callingAe: 'ECHOSCU', calledAe: 'NOT_A_ROUTE' });
    assert.notEqual(r.code, 0, describeRun(r));
    assert.match(output(r), REJECTED, describeRun(r));
    const summary = await proxy.closed();
    assert.equal(summary.outcome, 'rejected');
    assert.deepEqual(summary.reject, { result: 1, source: 1, reason: 7 });
  });

  it('storescu → proxy → storescp: explicit/implicit LE, JPEG baseline, RLE, JPEG 2000 arrive byte for byte', async (t) => {
    if (!skipUnlessPeer(t, 'dcmtk')) return;
    assert.ok(proxy);
    const sent = [...files.explicit, ...files.implicit, ...files.jpeg, ...files.rle, ...files.j2k];
    const r = await runStorescu({
      ...scu(),
      callingAe: 'STORESCU',
      files: sent,
      proposeFileTransferSyntax: true,
    });
    assert.equal(r.code, 0, describeRun(r));
    await assertDelivered(sent, outDir);
    const summary = await proxy.closed();
    assert.equal(summary.outcome, 'released');
    assert.equal(summary.instances, sent.length);
    assert.equal(summary.operations['C-STORE-RQ'], sent.length);
    // The proxy saw each instance in its own transfer syntax, and every archive status was success.
    const instances = (proxy.events.instance ?? []).filter((e) => e.id === summary.id);
    assert.equal(instances.length, sent.length);
    assert.ok(instances.every((e) => e.status === 0));
    assert.deepEqual(
      new Set(instances.map((e) => e.transferSyntaxUid)),
      new Set([TS.explicitLE, TS.implicitLE, TS.jpegBaseline, TS.rle, TS.jpeg2000]),
    );
  });

  it('storescu → proxy → storescp: a ~20 MB instance arrives byte for byte', async (t) => {
    if (!skipUnlessPeer(t, 'dcmtk')) return;
    assert.ok(proxy);
    const r = await runStorescu({
      ...scu(),
      callingAe: 'STORESCU',
      files: files.large,
      proposeFileTransferSyntax: true,
    });
    assert.equal(r.code, 0, describeRun(r));
    const received = await assertDelivered(files.large, outDir);
    const summary = await proxy.closed();
    assert.equal(summary.outcome, 'released');
    assert.ok(summary.bytesFromModality > 20 * 1024 * 1024, `${summary.bytesFromModality} bytes relayed`);
    assert.ok([...received.values()].some((b) => b.length > 20 * 1024 * 1024));
  });

  it('a peer allowed only echo: storescu stores nothing (no context accepted), echoscu from it succeeds', async (t) => {
    if (!skipUnlessPeer(t, 'dcmtk')) return;
    assert.ok(proxy && dir);
    const before = await receivedUids(outDir);
    const file = join(dir, 'echo-only.dcm');
    await writeFile(file, buildPart10({ pixelBytes: 4096, withPrivateTags: true }));
    const store = await runStorescu({
      ...scu(),
      callingAe: 'ECHOONLY',
      files: [file],
      proposeFileTransferSyntax: true,
    });
    assert.notEqual(store.code, 0, describeRun(store));
    assert.match(output(store), REJECTED, describeRun(store));
    const refused = await proxy.closed();
    assert.equal(refused.outcome, 'rejected');
    assert.equal(proxy.events['association-refused']?.at(-1)?.refusal, 'no-permitted-presentation-context');
    assert.deepEqual(await receivedUids(outDir), before, 'nothing may be stored for an echo-only peer');

    const echo = await runEchoscu({ ...scu(), callingAe: 'ECHOONLY' });
    assert.equal(echo.code, 0, describeRun(echo));
    assert.equal((await proxy.closed()).outcome, 'released');
  });
});

describe('DCMTK: an archive whose certificate comes from another CA', { timeout: 60_000 }, () => {
  const procs = new Procs();
  let dir: string | undefined;
  let pki: Pki | undefined;

  before(async () => {
    if (!peerAvailability('dcmtk').ok) return;
    dir = await makeTempDir('interop-dcmtk-rogue');
    pki = await standardPki();
  });

  after(async () => {
    await procs.stopAll();
    await removePki(pki);
    await removeTempDir(dir);
  });

  async function archiveAndProxy(
    kind: 'trusted' | 'rogue',
  ): Promise<{ proxy: ProxyUnderTest; outDir: string }> {
    assert.ok(dir && pki);
    let material = { key: pkiFile(pki, 'archive.key'), cert: pkiFile(pki, 'archive') };
    if (kind === 'rogue') {
      // Same names and usage as the real archive certificate, only the issuer differs.
      const rogueCa = await createCa('Rogue CA');
      const rogue = await issueCertificate(rogueCa, {
        commonName: 'archive.local',
        dnsNames: ['archive.local', 'localhost'],
        ipAddresses: ['127.0.0.1'],
        usage: 'both',
      });
      material = await writePemPair(dir, 'rogue-archive', rogue);
    }
    const outDir = join(dir, `archive-${kind}`);
    const scp = await startStorescp(procs, {
      outDir,
      aeTitle: 'ARCHIVE',
      tls: { ...material, ca: pkiFile(pki, 'ca') },
    });
    const proxy = await startProxy({ archivePort: scp.port, pki, peers: PEERS });
    return { proxy, outDir };
  }

  async function sendOne(proxy: ProxyUnderTest): Promise<{ r: RunResult; file: string }> {
    assert.ok(dir);
    const file = join(dir, `one-${newUid()}.dcm`);
    await writeFile(file, buildPart10({ pixelBytes: 8192, withPrivateTags: true, withGroupLengths: true }));
    const r = await runStorescu({
      host: '127.0.0.1',
      port: proxy.port,
      callingAe: 'STORESCU',
      calledAe: 'DICOM_PROXY',
      files: [file],
      proposeFileTransferSyntax: true,
      timeoutMs: 30_000,
    });
    return { r, file };
  }

  it('twin: the same configuration in front of an archive from the trusted CA stores the file', async (t) => {
    if (!skipUnlessPeer(t, 'dcmtk')) return;
    const { proxy, outDir } = await archiveAndProxy('trusted');
    try {
      const { r, file } = await sendOne(proxy);
      assert.equal(r.code, 0, describeRun(r));
      await assertDelivered([file], outDir);
      assert.equal((await proxy.closed()).outcome, 'released');
      assert.equal(proxy.events['upstream-failed'], undefined);
    } finally {
      await proxy.close();
    }
  });

  it('storescu through the proxy: association rejected 2/3/1, upstream-failed unknown-ca, nothing written', async (t) => {
    if (!skipUnlessPeer(t, 'dcmtk')) return;
    const { proxy, outDir } = await archiveAndProxy('rogue');
    try {
      const { r } = await sendOne(proxy);
      assert.notEqual(r.code, 0, describeRun(r));
      const out = output(r);
      t.diagnostic(
        out
          .split('\n')
          .filter((l) => /Reject|Result|Source|Reason/i.test(l))
          .join(' | '),
      );
      assert.match(out, REJECTED, describeRun(r));
      assert.match(out, /Rejected Transient/i, describeRun(r));
      assert.match(out, /Service Provider \(Presentation/i, describeRun(r));
      assert.match(out, /Temporary congestion/i, describeRun(r));
      const summary = await proxy.closed();
      assert.equal(summary.outcome, 'upstream-failed');
      assert.deepEqual(summary.reject, { result: 2, source: 3, reason: 1 });
      assert.ok(await eventually(() => (proxy.events['upstream-failed']?.length ?? 0) > 0));
      const failure = proxy.events['upstream-failed']?.[0];
      assert.equal(failure?.reason, 'unknown-ca', JSON.stringify(failure));
      assert.equal(failure?.upstream, 'archive');
      assert.deepEqual(await listFiles(outDir), [], 'storescp must not write anything');
    } finally {
      await proxy.close();
    }
  });
});
