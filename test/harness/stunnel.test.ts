import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { type DemoPkiPaths, writeDemoPki } from '../../src/tls/pki.js';
import { TS, datasetOf, writeInstances } from '../helpers/dicom.js';
import {
  Procs,
  describeRun,
  listFiles,
  makeTempDir,
  peerAvailability,
  removeTempDir,
  runStorescu,
  skipUnlessPeer,
  startStorescp,
  startStunnelClient,
  startStunnelServer,
} from '../helpers/peers.js';

describe('stunnel between plaintext storescu and a TLS storescp', { timeout: 120_000 }, () => {
  const procs = new Procs();
  let dir: string | undefined;
  let pki: DemoPkiPaths;

  before(async () => {
    if (!peerAvailability('dcmtk').ok || !peerAvailability('stunnel').ok) return;
    dir = await makeTempDir('stunnel');
    pki = await writeDemoPki(join(dir, 'pki'));
  });

  after(async () => {
    await procs.stopAll();
    await removeTempDir(dir);
  });

  it('storescu (plain) -> stunnel client -> storescp +tls delivers the file unchanged', async (t) => {
    if (!skipUnlessPeer(t, 'dcmtk') || !skipUnlessPeer(t, 'stunnel')) return;
    assert.ok(dir);
    const outDir = join(dir, 'received');
    const scp = await startStorescp(procs, {
      outDir,
      tls: { key: pki.archiveKey, cert: pki.archiveCert, ca: pki.caCert },
    });
    const tunnel = await startStunnelClient(procs, {
      connectHost: '127.0.0.1',
      connectPort: scp.port,
      ca: pki.caCert,
      cert: pki.proxyClientCert,
      key: pki.proxyClientKey,
      checkHost: 'archive.local',
      dir,
    });
    const files = await writeInstances(join(dir, 'send'), 2, {
      pixelBytes: 256 * 1024,
      transferSyntaxUid: TS.jpegBaseline,
      withPrivateTags: true,
    });
    const r = await runStorescu({
      host: '127.0.0.1',
      port: tunnel.port,
      files,
      proposeFileTransferSyntax: true,
      timeoutMs: 30_000,
    });
    assert.equal(r.code, 0, `${describeRun(r)}\n${procs.describe(tunnel.child)}`);
    const received = await listFiles(outDir);
    assert.equal(received.length, 2);
    const sentSets = await Promise.all(files.map(async (f) => datasetOf(await readFile(f))));
    for (const f of received) {
      const got = datasetOf(await readFile(f));
      assert.ok(
        sentSets.some((s) => s.equals(got)),
        `${f} does not match any sent data set`,
      );
    }
  });

  it('the stunnel client refuses an archive whose certificate does not carry the checked host name', async (t) => {
    if (!skipUnlessPeer(t, 'dcmtk') || !skipUnlessPeer(t, 'stunnel')) return;
    assert.ok(dir);
    const outDir = join(dir, 'received-wronghost');
    const scp = await startStorescp(procs, {
      outDir,
      tls: { key: pki.archiveKey, cert: pki.archiveCert, ca: pki.caCert },
    });
    const tunnel = await startStunnelClient(procs, {
      connectHost: '127.0.0.1',
      connectPort: scp.port,
      ca: pki.caCert,
      cert: pki.proxyClientCert,
      key: pki.proxyClientKey,
      checkHost: 'wrong.example',
      dir,
    });
    const files = await writeInstances(join(dir, 'send-wronghost'), 1, { pixelBytes: 1024 });
    const r = await runStorescu({ host: '127.0.0.1', port: tunnel.port, files, timeoutMs: 30_000 });
    assert.notEqual(r.code, 0, describeRun(r));
    assert.deepEqual(await listFiles(outDir), []);
  });

  it('stunnel in server mode terminates mTLS in front of a plaintext storescp', async (t) => {
    if (!skipUnlessPeer(t, 'dcmtk') || !skipUnlessPeer(t, 'stunnel')) return;
    assert.ok(dir);
    const outDir = join(dir, 'received-server');
    const scp = await startStorescp(procs, { outDir });
    const front = await startStunnelServer(procs, {
      connectHost: '127.0.0.1',
      connectPort: scp.port,
      ca: pki.caCert,
      cert: pki.archiveCert,
      key: pki.archiveKey,
      dir,
    });
    const files = await writeInstances(join(dir, 'send-server'), 1, { pixelBytes: 1024 });
    const ok = await runStorescu({
      host: '127.0.0.1',
      port: front.port,
      files,
      tls: { key: pki.proxyClientKey, cert: pki.proxyClientCert, ca: pki.caCert },
      timeoutMs: 30_000,
    });
    assert.equal(ok.code, 0, describeRun(ok));
    assert.equal((await listFiles(outDir)).length, 1);
    const anonymous = await runStorescu({
      host: '127.0.0.1',
      port: front.port,
      files,
      tls: { ca: pki.caCert },
      timeoutMs: 30_000,
    });
    assert.notEqual(anonymous.code, 0, describeRun(anonymous));
  });
});
