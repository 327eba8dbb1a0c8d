// Refusals the main relay tests do not reach: protocol version, application context, a PDV on a refused
// context, a C-MOVE whose command is split across PDVs, and the cap on connections that never associate
// (per address here; test/relay/connection-limits.test.ts has the rest).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { decodePdu, encodePdu } from '../../src/pdu/codec.js';
import type { AssociatePdu, Pdu } from '../../src/pdu/types.js';
import { decodeCommand, encodeCommand } from '../../src/dimse/command.js';
import { RawScu, associateRq, pdata, CT_IMAGE, STUDY_ROOT_MOVE, VERIFICATION } from '../helpers/raw.js';
import { startTestArchive, type TestArchive } from '../helpers/instances.js';
import { removePki, standardPki, startProxy, type ProxyUnderTest } from '../helpers/proxy.js';

type Pki = Awaited<ReturnType<typeof standardPki>>;

function rqWith(change: (rq: AssociatePdu) => AssociatePdu): Buffer {
  const rq = decodePdu(
    associateRq('SCU', 'DICOM_PROXY', [{ id: 1, abstractSyntax: VERIFICATION }]),
  ) as AssociatePdu;
  return encodePdu(change(rq));
}

describe('hostile or malformed input at the relay', () => {
  let pki: Pki;
  let archive: TestArchive;
  let proxy: ProxyUnderTest;

  before(async () => {
    pki = await standardPki();
    archive = await startTestArchive(pki);
    proxy = await startProxy({
      archivePort: archive.archive.port,
      pki,
      peers: '  SCU: { addresses: [127.0.0.1], services: [echo, move], moveDestinations: [SCU] }',
      limits: '{ maxAssociations: 2, associationRequestTimeout: 3s, pendingPerAddress: 4 }',
    });
  });
  after(async () => {
    await proxy?.close();
    await archive?.close();
    await removePki(pki);
  });

  async function answer(bytes: Buffer): Promise<{ scu: RawScu; pdu: Pdu | null }> {
    const scu = await RawScu.connect(proxy.port);
    scu.send(bytes);
    return { scu, pdu: await scu.next() };
  }

  test('protocol version without bit 0: A-ASSOCIATE-RJ 1/2/2; version 1: accepted', async () => {
    const bad = await answer(rqWith((rq) => ({ ...rq, protocolVersion: 2 })));
    assert.deepEqual(bad.pdu, { type: 0x03, result: 1, source: 2, reason: 2 });
    bad.scu.destroy();
    await proxy.closed();
    const good = await answer(rqWith((rq) => rq));
    assert.equal(good.pdu?.type, 0x02);
    good.scu.destroy();
    await proxy.closed();
  });

  test('an application context other than DICOM: A-ASSOCIATE-RJ 1/1/2', async () => {
    const bad = await answer(
      rqWith((rq) => ({
        ...rq,
        items: rq.items.map((i) => (i.kind === 'application-context' ? { ...i, name: '1.2.3.4.5' } : i)),
      })),
    );
    assert.deepEqual(bad.pdu, { type: 0x03, result: 1, source: 1, reason: 2 });
    bad.scu.destroy();
    await proxy.closed();
  });

  test('a PDV on a presentation context that was refused: A-ABORT 2/6, nothing reaches the archive', async () => {
    const scu = await RawScu.connect(proxy.port);
    scu.send(
      associateRq('SCU', 'DICOM_PROXY', [
        { id: 1, abstractSyntax: VERIFICATION },
        { id: 3, abstractSyntax: CT_IMAGE }, // refused: SCU may not store
      ]),
    );
    assert.equal((await scu.next())?.type, 0x02);
    const before = archive.archive.requests.length;
    scu.send(
      pdata(
        3,
        true,
        true,
        encodeCommand({
          commandField: 0x0001,
          messageId: 1,
          affectedSopClassUid: CT_IMAGE,
          affectedSopInstanceUid: '1.2.3',
          priority: 0,
          commandDataSetType: 0x0000,
        }),
      ),
    );
    assert.deepEqual(await scu.next(), { type: 0x07, source: 2, reason: 6 });
    await scu.waitClosed();
    await proxy.closed();
    assert.equal(archive.archive.requests.length, before);
  });

  test('a C-MOVE command split across two PDVs is judged whole: a forbidden destination never reaches the archive', async () => {
    const scu = await RawScu.connect(proxy.port);
    try {
      scu.send(associateRq('SCU', 'DICOM_PROXY', [{ id: 1, abstractSyntax: STUDY_ROOT_MOVE }]));
      assert.equal((await scu.next())?.type, 0x02);
      const before = archive.archive.requests.length;
      const command = encodeCommand({
        commandField: 0x0021,
        messageId: 5,
        affectedSopClassUid: STUDY_ROOT_MOVE,
        moveDestination: 'ELSEWHERE',
        priority: 0,
        commandDataSetType: 0x0000,
      });
      // Two command fragments in two P-DATA-TF PDUs (PS3.8 E.2), then the identifier.
      scu.send(pdata(1, true, false, command.subarray(0, 20)));
      scu.send(pdata(1, true, true, command.subarray(20)));
      scu.send(pdata(1, false, true, Buffer.from('identifier', 'latin1')));
      const rsp = decodeCommand(
        ((await scu.next()) as Extract<Pdu, { type: 0x04 }>).pdvs[0]?.value as Buffer,
      );
      assert.deepEqual([rsp.commandField, rsp.messageIdBeingRespondedTo, rsp.status], [0x8021, 5, 0xa801]);
      // The twin: the same split command to the allowed destination is relayed (the demo archive answers C000).
      const allowed = encodeCommand({
        commandField: 0x0021,
        messageId: 6,
        affectedSopClassUid: STUDY_ROOT_MOVE,
        moveDestination: 'SCU',
        priority: 0,
        commandDataSetType: 0x0000,
      });
      scu.send(pdata(1, true, false, allowed.subarray(0, 20)));
      scu.send(pdata(1, true, true, allowed.subarray(20)));
      const identifier = Buffer.from(
        '08005200060000005354554459200d0020000a000000312e322e332e342e3500',
        'hex',
      );
      scu.send(pdata(1, false, true, identifier));
      const relayed = decodeCommand(
        ((await scu.next()) as Extract<Pdu, { type: 0x04 }>).pdvs[0]?.value as Buffer,
      );
      assert.deepEqual([relayed.messageIdBeingRespondedTo, relayed.status], [6, 0xc000]);
      assert.deepEqual(archive.archive.requests.slice(before), ['C-MOVE'], 'only the allowed C-MOVE arrived');
    } finally {
      scu.destroy();
      await proxy.closed();
    }
  });

  test('connections that never associate are capped per address (limits.pendingPerAddress); the excess is closed at once and counted', async () => {
    const refused = (proxy.events['connection-refused'] ?? []).length;
    const idle = [
      await RawScu.connect(proxy.port),
      await RawScu.connect(proxy.port),
      await RawScu.connect(proxy.port),
      await RawScu.connect(proxy.port),
    ];
    try {
      const excess = await RawScu.connect(proxy.port);
      await excess.waitClosed(1000);
      for (const s of idle) assert.equal(s.closed, false, 'connections within the cap stay open until ARTIM');
      const counted = (proxy.events['connection-refused'] ?? []).slice(refused);
      assert.deepEqual(
        counted.map((e) => [e.listener, e.remoteAddress, e.reason]),
        [['forward', '127.0.0.1', 'per-address-limit']],
      );
    } finally {
      for (const s of idle) s.destroy();
      for (let i = 0; i < 4; i++) await proxy.closed();
    }
  });
});
