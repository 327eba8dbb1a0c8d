// C-GET (PS3.4 C.4.3): the archive sends its C-STOREs back on the same association (SCP/SCU role
// selection, PS3.7 D.3.3.4). The proxy relays them unchanged, follows them, and still refuses a C-STORE
// the get-only peer tries to send itself.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { presentationContextsAc } from '../../src/pdu/codec.js';
import type { AssociatePdu, PDataPdu } from '../../src/pdu/types.js';
import { decodeCommand, encodeCommand } from '../../src/dimse/command.js';
import { RawScu, associateRq, commandPdu, pdata, CT_IMAGE } from '../helpers/raw.js';
import { removePki, standardPki, startProxy } from '../helpers/proxy.js';
import { startScriptedArchive } from '../helpers/scripted-archive.js';

const STUDY_ROOT_GET = '1.2.840.10008.5.1.4.1.2.2.3';

test('C-GET: the archive C-STOREs on the same association reach the modality byte for byte and are followed', async () => {
  const pki = await standardPki();
  const dataset = Buffer.alloc(300_000);
  for (let i = 0; i < dataset.length; i++) dataset[i] = (i * 31) & 0xff;
  const archive = await startScriptedArchive(
    { ca: pki.ca.cert, cert: pki.archive.cert, key: pki.archive.key },
    (cmd, _contextId, reply) => {
      if (cmd.commandField === 0x0010) {
        // C-GET-RQ: one sub-operation, a C-STORE-RQ on context 3, then its data set in fragments within the
        // 16 KB the proxy advertised on the modality's behalf (PS3.8 D.1).
        reply(
          commandPdu(3, {
            commandField: 0x0001,
            messageId: 100,
            affectedSopClassUid: CT_IMAGE,
            affectedSopInstanceUid: '1.2.3.4.100',
            priority: 0,
            commandDataSetType: 0x0000,
          }),
        );
        for (let at = 0; at < dataset.length; at += 16000) {
          const end = Math.min(at + 16000, dataset.length);
          reply(pdata(3, false, end === dataset.length, dataset.subarray(at, end)));
        }
      } else if (cmd.commandField === 0x8001) {
        reply(
          pdata(
            1,
            true,
            true,
            encodeCommand({
              commandField: 0x8010,
              messageIdBeingRespondedTo: 1,
              affectedSopClassUid: STUDY_ROOT_GET,
              commandDataSetType: 0x0101,
              status: 0x0000,
              completed: 1,
              remaining: 0,
              failed: 0,
              warning: 0,
            }),
          ),
        );
      }
    },
  );
  const proxy = await startProxy({
    archivePort: archive.port,
    pki,
    peers: '  GETTER: { addresses: [127.0.0.1], services: [get] }',
    limits: '{ maxPduLength: 65536 }',
  });
  const scu = await RawScu.connect(proxy.port);
  try {
    scu.send(
      associateRq(
        'GETTER',
        'DICOM_PROXY',
        [
          { id: 1, abstractSyntax: STUDY_ROOT_GET },
          { id: 3, abstractSyntax: CT_IMAGE },
        ],
        16384,
        [{ kind: 'role-selection', sopClassUid: CT_IMAGE, scuRole: 0, scpRole: 1 }],
      ),
    );
    const ac = (await scu.next()) as AssociatePdu;
    assert.equal(ac.type, 0x02);
    assert.deepEqual(
      presentationContextsAc(ac).map((c) => [c.id, c.result]),
      [
        [1, 0],
        [3, 0],
      ],
      'a get-only peer keeps its storage context when it takes the SCP role',
    );

    // Its twin: the same get-only peer may not send a C-STORE-RQ itself on that storage context.
    scu.send(
      commandPdu(3, {
        commandField: 0x0001,
        messageId: 9,
        affectedSopClassUid: CT_IMAGE,
        affectedSopInstanceUid: '1.2.3.4.9',
        priority: 0,
        commandDataSetType: 0x0000,
      }),
    );
    scu.send(pdata(3, false, true, Buffer.alloc(1000)));
    const refused = (await scu.next()) as PDataPdu;
    assert.equal(decodeCommand(refused.pdvs[0]?.value as Buffer).status, 0x0124);

    scu.send(
      commandPdu(1, {
        commandField: 0x0010,
        messageId: 1,
        affectedSopClassUid: STUDY_ROOT_GET,
        priority: 0,
        commandDataSetType: 0x0000,
      }),
    );
    scu.send(pdata(1, false, true, Buffer.from('identifier-bytes')));

    // The C-STORE-RQ and its data set arrive unchanged.
    const storeRq = (await scu.next()) as PDataPdu;
    const cmd = decodeCommand(storeRq.pdvs[0]?.value as Buffer);
    assert.equal(cmd.commandField, 0x0001);
    const parts: Buffer[] = [];
    while (parts.reduce((n, b) => n + b.length, 0) < dataset.length) {
      const p = (await scu.next()) as PDataPdu;
      for (const pdv of p.pdvs) parts.push(pdv.value);
    }
    assert.ok(Buffer.concat(parts).equals(dataset), 'the data set reached the modality byte for byte');
    scu.send(
      commandPdu(3, {
        commandField: 0x8001,
        messageIdBeingRespondedTo: 100,
        affectedSopClassUid: CT_IMAGE,
        affectedSopInstanceUid: '1.2.3.4.100',
        commandDataSetType: 0x0101,
        status: 0x0000,
      }),
    );
    const getRsp = (await scu.next()) as PDataPdu;
    const final = decodeCommand(getRsp.pdvs[0]?.value as Buffer);
    assert.equal(final.commandField, 0x8010);
    assert.equal(final.status, 0x0000);
    assert.equal(final.completed, 1);

    scu.send(Buffer.from([0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0]));
    assert.equal((await scu.next())?.type, 0x06);
    const summary = await proxy.closed();
    assert.equal(summary.outcome, 'released');
    const inst = proxy.events.instance ?? [];
    assert.equal(inst.length, 1);
    assert.equal(inst[0]?.direction, 'archive-to-modality');
    assert.equal(inst[0]?.sopInstanceUid, '1.2.3.4.100');
    assert.equal(inst[0]?.bytes, dataset.length);
    assert.equal(inst[0]?.status, 0);
    assert.deepEqual(
      archive.commands.map((c) => c.command.commandField),
      [0x0010, 0x8001],
      'the refused C-STORE-RQ never reached the archive',
    );
  } finally {
    scu.destroy();
    await proxy.close();
    archive.close();
    await removePki(pki);
  }
});
