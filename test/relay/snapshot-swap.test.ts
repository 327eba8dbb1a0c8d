// A new snapshot (reload) while associations are live: they keep theirs; a moved listener is bound at its
// new address before the old one stops accepting; a return listener can appear; a bind failure changes
// nothing.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as net from 'node:net';
import { parseConfig } from '../../src/config/load.js';
import { buildRuntimeSnapshot } from '../../src/runtime/snapshot.js';
import { encodeCommand, decodeCommand } from '../../src/dimse/command.js';
import type { PDataPdu } from '../../src/pdu/types.js';
import { echo } from '../../src/dicom/dcmjs.js';
import { issueCertificate } from '../../src/tls/pki.js';
import { RawScu, associateRq, pdata } from '../helpers/raw.js';
import { startTestArchive, type TestArchive } from '../helpers/instances.js';
import { proxyYaml, removePki, standardPki, startProxy, type ProxyUnderTest } from '../helpers/proxy.js';

type Pki = Awaited<ReturnType<typeof standardPki>>;
const VERIFICATION = '1.2.840.10008.1.1';

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/** C-ECHO on an open association (PS3.7 9.1.5); resolves with the status. */
async function echoOn(scu: RawScu, messageId: number): Promise<number | undefined> {
  scu.send(
    pdata(
      1,
      true,
      true,
      encodeCommand({
        commandField: 0x0030,
        messageId,
        affectedSopClassUid: VERIFICATION,
        commandDataSetType: 0x0101,
      }),
    ),
  );
  const rsp = (await scu.next()) as PDataPdu | null;
  assert.equal(rsp?.type, 0x04);
  return decodeCommand(rsp.pdvs[0]?.value as Buffer).status;
}

function connectRefused(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ port, host: '127.0.0.1' });
    s.once('connect', () => {
      s.destroy();
      resolve(false);
    });
    s.once('error', () => resolve(true));
  });
}

describe('snapshot swap with live associations', { timeout: 60_000 }, () => {
  let pki: Pki;
  let archive: TestArchive;
  let proxy: ProxyUnderTest;

  before(async () => {
    pki = await standardPki();
    await pki.write(
      'proxy-server',
      await issueCertificate(pki.ca, {
        commonName: 'proxy.local',
        ipAddresses: ['127.0.0.1'],
        usage: 'server',
      }),
    );
    archive = await startTestArchive(pki);
    proxy = await startProxy({ archivePort: archive.archive.port, pki });
  });
  after(async () => {
    await proxy?.close();
    await archive?.close();
    await removePki(pki);
  });

  test('the listener moves to a new port; the live association on the old one goes on', async () => {
    const oldPort = proxy.port;
    const scu = await RawScu.connect(oldPort);
    scu.send(associateRq('SCU', 'DICOM_PROXY', [{ id: 1, abstractSyntax: VERIFICATION }]));
    assert.equal((await scu.next())?.type, 0x02);
    assert.equal(await echoOn(scu, 1), 0);

    const newPort = await freePort();
    const yaml = proxyYaml({ archivePort: archive.archive.port, pki }).replace(
      'listen: { host: 127.0.0.1, port: 0 }',
      `listen: { host: 127.0.0.1, port: ${newPort} }`,
    );
    const { rebound } = await proxy.server.setSnapshot(buildRuntimeSnapshot(parseConfig(yaml, null)));
    assert.deepEqual(rebound, [`listen 127.0.0.1:${newPort}`]);
    assert.equal(proxy.server.address()?.port, newPort);

    // New associations on the new port; the old port no longer accepts.
    const r = await echo({
      host: '127.0.0.1',
      port: newPort,
      callingAeTitle: 'SCU',
      calledAeTitle: 'DICOM_PROXY',
    });
    assert.equal(r.ok, true, r.error ?? '');
    assert.equal(await connectRefused(oldPort), true, 'the old port still accepts');
    // The association opened before the swap still relays and releases normally.
    assert.equal(await echoOn(scu, 2), 0);
    scu.send(Buffer.from([0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0]));
    assert.equal((await scu.next())?.type, 0x06);
    scu.destroy();
    proxy.port = newPort;
  });

  test('a return listener added by a reload starts accepting; a port already in use changes nothing', async () => {
    const returnPort = await freePort();
    const withReturn = (port: number) =>
      proxyYaml({
        archivePort: archive.archive.port,
        pki,
        extra: [
          'returnListener:',
          '  host: 127.0.0.1',
          `  port: ${port}`,
          `  tls: { ca: ${pki.files.ca}, cert: ${pki.files['proxy-server']}, key: ${pki.files['proxy-server.key']} }`,
          '  callers: [{ aeTitles: [ARCHIVE], identity: { dns: archive.local } }]',
        ].join('\n'),
      }).replace('listen: { host: 127.0.0.1, port: 0 }', `listen: { host: 127.0.0.1, port: ${proxy.port} }`);

    // A port that is taken: the reload fails and the running snapshot and listeners stay as they were.
    const blocker = net.createServer();
    await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r));
    const taken = (blocker.address() as net.AddressInfo).port;
    const before = proxy.server.current;
    await assert.rejects(
      proxy.server.setSnapshot(buildRuntimeSnapshot(parseConfig(withReturn(taken), null))),
      /EADDRINUSE/,
    );
    assert.equal(proxy.server.current, before);
    assert.equal(proxy.server.returnAddress(), null);
    await new Promise<void>((r) => blocker.close(() => r()));

    const { rebound } = await proxy.server.setSnapshot(
      buildRuntimeSnapshot(parseConfig(withReturn(returnPort), null)),
    );
    assert.deepEqual(rebound, [`returnListener 127.0.0.1:${returnPort}`]);
    assert.equal(proxy.server.returnAddress()?.port, returnPort);
    assert.equal(proxy.server.listenersBound(), true);
    const r = await echo({
      host: '127.0.0.1',
      port: proxy.port,
      callingAeTitle: 'SCU',
      calledAeTitle: 'DICOM_PROXY',
    });
    assert.equal(r.ok, true, r.error ?? '');
  });
});
