// MPPS (N-CREATE / N-SET, PS3.4 F) and Storage Commitment Push (N-ACTION, and the archive's
// N-EVENT-REPORT on the same association, PS3.4 J) relayed through the proxy, with their policy twins.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { presentationContextsAc } from '../../src/pdu/codec.js';
import type { AssociatePdu, PDataPdu } from '../../src/pdu/types.js';
import { decodeCommand, encodeCommand } from '../../src/dimse/command.js';
import { RawScu, associateRq, commandPdu, pdata } from '../helpers/raw.js';
import { removePki, standardPki, startProxy, type ProxyUnderTest } from '../helpers/proxy.js';
import { startScriptedArchive, type ScriptedArchive } from '../helpers/scripted-archive.js';

const MPPS = '1.2.840.10008.3.1.2.3.3';
const COMMITMENT = '1.2.840.10008.1.20.1';
const COMMITMENT_INSTANCE = '1.2.840.10008.1.20.1.1';

type Pki = Awaited<ReturnType<typeof standardPki>>;

function rsp(
  cmd: { commandField: number; messageId?: number; affectedSopClassUid?: string },
  extra = {},
): Buffer {
  return encodeCommand({
    commandField: cmd.commandField | 0x8000,
    messageIdBeingRespondedTo: cmd.messageId ?? 0,
    affectedSopClassUid: cmd.affectedSopClassUid ?? '',
    commandDataSetType: 0x0101,
    status: 0x0000,
    ...extra,
  });
}

describe('MPPS and storage commitment through the proxy', () => {
  let pki: Pki;
  let archive: ScriptedArchive;
  let proxy: ProxyUnderTest;

  before(async () => {
    pki = await standardPki();
    archive = await startScriptedArchive(
      { ca: pki.ca.cert, cert: pki.archive.cert, key: pki.archive.key },
      (cmd, contextId, reply) => {
        if (cmd.commandField === 0x0140 || cmd.commandField === 0x0120) {
          reply(pdata(contextId, true, true, rsp(cmd, { affectedSopInstanceUid: '1.2.3.4.77' })));
        } else if (cmd.commandField === 0x0130) {
          reply(pdata(contextId, true, true, rsp(cmd, { affectedSopInstanceUid: COMMITMENT_INSTANCE })));
          // The commitment result comes back as an N-EVENT-REPORT on the same association (PS3.4 J.3.3).
          reply(
            pdata(
              contextId,
              true,
              true,
              encodeCommand({
                commandField: 0x0100,
                messageId: 500,
                affectedSopClassUid: COMMITMENT,
                affectedSopInstanceUid: COMMITMENT_INSTANCE,
                eventTypeId: 1,
                commandDataSetType: 0x0000,
              }),
            ),
          );
          reply(pdata(contextId, false, true, Buffer.from('event-report-data-set', 'latin1')));
        }
      },
    );
    proxy = await startProxy({
      archivePort: archive.port,
      pki,
      peers: [
        '  MODALITY: { addresses: [127.0.0.1], services: [echo, mpps, commitment] }',
        '  NOMPPS: { addresses: [127.0.0.1], services: [echo, commitment] }',
      ].join('\n'),
    });
  });
  after(async () => {
    await proxy?.close();
    archive?.close();
    await removePki(pki);
  });

  test('N-CREATE and N-SET (MPPS) reach the archive and its responses come back', async () => {
    const scu = await RawScu.connect(proxy.port);
    try {
      scu.send(associateRq('MODALITY', 'DICOM_PROXY', [{ id: 1, abstractSyntax: MPPS }]));
      assert.equal((await scu.next())?.type, 0x02);
      scu.send(
        commandPdu(1, {
          commandField: 0x0140,
          messageId: 1,
          affectedSopClassUid: MPPS,
          commandDataSetType: 0x0000,
        }),
      );
      scu.send(pdata(1, false, true, Buffer.from('mpps-in-progress', 'latin1')));
      const created = decodeCommand(((await scu.next()) as PDataPdu).pdvs[0]?.value as Buffer);
      assert.deepEqual([created.commandField, created.status], [0x8140, 0]);
      scu.send(
        commandPdu(1, {
          commandField: 0x0120,
          messageId: 2,
          requestedSopClassUid: MPPS,
          requestedSopInstanceUid: '1.2.3.4.77',
          commandDataSetType: 0x0000,
        }),
      );
      scu.send(pdata(1, false, true, Buffer.from('mpps-completed', 'latin1')));
      const set = decodeCommand(((await scu.next()) as PDataPdu).pdvs[0]?.value as Buffer);
      assert.deepEqual([set.commandField, set.messageIdBeingRespondedTo, set.status], [0x8120, 2, 0]);
      assert.deepEqual(
        archive.commands.slice(-2).map((c) => c.command.commandField),
        [0x0140, 0x0120],
      );
    } finally {
      scu.destroy();
      await proxy.closed();
    }
  });

  test('N-ACTION (commitment) is relayed, and the archive N-EVENT-REPORT reaches the modality and is answered', async () => {
    const scu = await RawScu.connect(proxy.port);
    try {
      scu.send(associateRq('MODALITY', 'DICOM_PROXY', [{ id: 3, abstractSyntax: COMMITMENT }]));
      assert.equal((await scu.next())?.type, 0x02);
      scu.send(
        commandPdu(3, {
          commandField: 0x0130,
          messageId: 9,
          requestedSopClassUid: COMMITMENT,
          requestedSopInstanceUid: COMMITMENT_INSTANCE,
          actionTypeId: 1,
          commandDataSetType: 0x0000,
        }),
      );
      scu.send(pdata(3, false, true, Buffer.from('transaction-and-references', 'latin1')));
      const action = decodeCommand(((await scu.next()) as PDataPdu).pdvs[0]?.value as Buffer);
      assert.deepEqual([action.commandField, action.status], [0x8130, 0]);
      const report = decodeCommand(((await scu.next()) as PDataPdu).pdvs[0]?.value as Buffer);
      assert.deepEqual([report.commandField, report.eventTypeId, report.messageId], [0x0100, 1, 500]);
      const reportData = (await scu.next()) as PDataPdu;
      assert.equal(reportData.pdvs[0]?.value.toString('latin1'), 'event-report-data-set');
      scu.send(
        commandPdu(3, {
          commandField: 0x8100,
          messageIdBeingRespondedTo: 500,
          affectedSopClassUid: COMMITMENT,
          affectedSopInstanceUid: COMMITMENT_INSTANCE,
          commandDataSetType: 0x0101,
          status: 0,
        }),
      );
      const deadline = Date.now() + 5000;
      while (!archive.commands.some((c) => c.command.commandField === 0x8100) && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.ok(
        archive.commands.some((c) => c.command.commandField === 0x8100),
        'the N-EVENT-REPORT-RSP reached the archive',
      );
    } finally {
      scu.destroy();
      await proxy.closed();
    }
  });

  test('refusing twins: MPPS context refused for a peer without mpps; N-ACTION on the MPPS context answered 0124', async () => {
    const a = await RawScu.connect(proxy.port);
    try {
      a.send(
        associateRq('NOMPPS', 'DICOM_PROXY', [
          { id: 1, abstractSyntax: MPPS },
          { id: 3, abstractSyntax: COMMITMENT },
        ]),
      );
      const ac = (await a.next()) as AssociatePdu;
      assert.deepEqual(
        presentationContextsAc(ac).map((c) => [c.id, c.result]),
        [
          [1, 3],
          [3, 0],
        ],
      );
    } finally {
      a.destroy();
      await proxy.closed();
    }
    const b = await RawScu.connect(proxy.port);
    try {
      b.send(associateRq('MODALITY', 'DICOM_PROXY', [{ id: 1, abstractSyntax: MPPS }]));
      assert.equal((await b.next())?.type, 0x02);
      const before = archive.commands.length;
      b.send(
        commandPdu(1, {
          commandField: 0x0130,
          messageId: 4,
          requestedSopClassUid: MPPS,
          requestedSopInstanceUid: '1.2.3.4.77',
          actionTypeId: 1,
          commandDataSetType: 0x0101,
        }),
      );
      const refused = decodeCommand(((await b.next()) as PDataPdu).pdvs[0]?.value as Buffer);
      assert.deepEqual([refused.commandField, refused.status], [0x8130, 0x0124]);
      assert.equal(archive.commands.length, before, 'the refused N-ACTION never reached the archive');
    } finally {
      b.destroy();
      await proxy.closed();
    }
  });
});
