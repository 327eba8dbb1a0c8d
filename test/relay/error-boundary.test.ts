// A PDU the proxy cannot relay, read together with good ones: what preceded it still goes out whole, and
// the A-ABORT that follows lands on a PDU boundary (PS3.8 9.3.8), as over a direct connection. Each case
// sits next to the clean exchange it mirrors.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { encodePdu } from '../../src/pdu/codec.js';
import type { AssociatePdu, PDataPdu, Pdu } from '../../src/pdu/types.js';
import { decodeCommand, encodeCommand } from '../../src/dimse/command.js';
import { RawScu, associateRq, commandPdu, pdata, CT_IMAGE, VERIFICATION } from '../helpers/raw.js';
import { acceptAll } from '../helpers/scripted-archive.js';
import { startFaultArchive, type FaultArchive } from '../helpers/fault-archive.js';
import { removePki, standardPki, startProxy, type ProxyUnderTest } from '../helpers/proxy.js';
import { until } from '../helpers/within.js';

type Pki = Awaited<ReturnType<typeof standardPki>>;

/** Not a PDU type (PS3.8 9.3.1): the proxy answers it with A-ABORT, reason 1 (unrecognized PDU). */
const BAD_PDU = Buffer.from([0x09, 0, 0, 0, 0, 4, 0, 0, 0, 0]);

function echoRsp(messageId: number): Buffer {
  return pdata(
    1,
    true,
    true,
    encodeCommand({
      commandField: 0x8030,
      messageIdBeingRespondedTo: messageId,
      affectedSopClassUid: VERIFICATION,
      commandDataSetType: 0x0101,
      status: 0x0000,
    }),
  );
}

function commandOf(pdu: Pdu | null): ReturnType<typeof decodeCommand> {
  assert.equal(pdu?.type, 0x04, `expected a P-DATA-TF, got ${JSON.stringify(pdu)}`);
  const pdv = (pdu as PDataPdu).pdvs[0];
  assert.ok(pdv?.command);
  return decodeCommand(pdv.value);
}

describe('an unrelayable PDU after good ones in the same read', () => {
  let pki: Pki;
  let archive: FaultArchive;
  let proxy: ProxyUnderTest;

  before(async () => {
    pki = await standardPki();
    archive = await startFaultArchive({ ca: pki.ca.cert, cert: pki.archive.cert, key: pki.archive.key });
    proxy = await startProxy({
      archivePort: archive.port,
      pki,
      peers: '  SCU: { addresses: [127.0.0.1], services: [echo, store] }',
    });
  });
  after(async () => {
    await proxy?.close();
    await archive?.close();
    await removePki(pki);
  });

  async function associated(abstractSyntax: string): Promise<{ m: RawScu; up: RawScu }> {
    const m = await RawScu.connect(proxy.port);
    m.send(associateRq('SCU', 'DICOM_PROXY', [{ id: 1, abstractSyntax }]));
    const up = await archive.accept();
    const rq = await up.next();
    assert.equal(rq?.type, 0x01);
    up.send(encodePdu(acceptAll(rq as AssociatePdu)));
    assert.equal((await m.next())?.type, 0x02);
    return { m, up };
  }

  function echoRq(messageId: number): Buffer {
    return commandPdu(1, {
      commandField: 0x0030,
      messageId,
      affectedSopClassUid: VERIFICATION,
      commandDataSetType: 0x0101,
    });
  }

  test('from the archive: a C-ECHO-RSP then a bad PDU in one write: the modality gets the response, then A-ABORT', async () => {
    const { m, up } = await associated(VERIFICATION);
    // The clean exchange first: the response alone.
    m.send(echoRq(1));
    assert.equal(commandOf(await up.next()).messageId, 1);
    up.send(echoRsp(1));
    assert.equal(commandOf(await m.next()).status, 0x0000);
    // Then the response and a PDU that is not one, read by the proxy together.
    m.send(echoRq(2));
    assert.equal(commandOf(await up.next()).messageId, 2);
    up.send(Buffer.concat([echoRsp(2), BAD_PDU]));
    const rsp = commandOf(await m.next());
    assert.deepEqual([rsp.messageIdBeingRespondedTo, rsp.status], [2, 0x0000]);
    assert.deepEqual(await m.next(), { type: 0x07, source: 2, reason: 0 });
    assert.deepEqual(await up.next(), { type: 0x07, source: 2, reason: 1 });
    m.destroy();
    up.destroy();
    const summary = await proxy.closed();
    assert.equal(summary.outcome, 'aborted-by-proxy');
  });

  test('from the modality: the end of a streamed data PDU then a bad PDU: the archive gets the PDU whole, then A-ABORT', async () => {
    const { m, up } = await associated(CT_IMAGE);
    const uid = '1.2.826.0.1.3680043.10.1461.97.1';
    m.send(
      commandPdu(1, {
        commandField: 0x0001,
        messageId: 1,
        affectedSopClassUid: CT_IMAGE,
        affectedSopInstanceUid: uid,
        priority: 0,
        commandDataSetType: 0x0000,
      }),
    );
    assert.equal(commandOf(await up.next()).affectedSopInstanceUid, uid);
    const value = Buffer.alloc(6000, 0x5a);
    const data = pdata(1, false, false, value);
    // The first half of the data PDU in a read of its own (relayed as it arrives), then the rest with the
    // bad PDU behind it.
    const association = proxy.server.associations().at(-1);
    assert.ok(association);
    const sent = association.stats().bytesFromModality;
    m.send(data.subarray(0, 3000));
    await until(
      () => association.stats().bytesFromModality === sent + 3000,
      'the proxy read the first half on its own',
    );
    m.send(Buffer.concat([data.subarray(3000), BAD_PDU]));
    const relayed = await up.next();
    assert.equal(relayed?.type, 0x04, `the archive gets the data PDU whole, got ${JSON.stringify(relayed)}`);
    assert.ok((relayed as PDataPdu).pdvs[0]?.value.equals(value));
    assert.deepEqual(await up.next(), { type: 0x07, source: 2, reason: 0 });
    assert.deepEqual(await m.next(), { type: 0x07, source: 2, reason: 1 });
    m.destroy();
    up.destroy();
    await proxy.closed();
  });
});
