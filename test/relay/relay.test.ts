// The relay over real sockets: dcmjs-dimse peers and raw DICOM UL clients on 127.0.0.1, mutual TLS to an
// in-process archive, certificates generated per run. Every refusal sits next to the acceptance it mirrors.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import tls from 'node:tls';
import { echo, store, type ArchiveHandle } from '../../src/dicom/dcmjs.js';
import { decodeCommand } from '../../src/dimse/command.js';
import { aeTitleText, presentationContextsAc, maxLengthOf } from '../../src/pdu/codec.js';
import type { AssociatePdu, Pdu } from '../../src/pdu/types.js';
import {
  RawScu,
  associateRq,
  commandPdu,
  pdata,
  CT_IMAGE,
  STUDY_ROOT_MOVE,
  VERIFICATION,
} from '../helpers/raw.js';
import { startTestArchive, testInstance, type TestArchive } from '../helpers/instances.js';
import { encode, IMPLICIT_LE_SYNTAX } from '../helpers/dataset.js';
import { removePki, standardPki, startProxy, type ProxyUnderTest } from '../helpers/proxy.js';

type Pki = Awaited<ReturnType<typeof standardPki>>;

/** A study-level C-MOVE identifier, Implicit VR Little Endian: (0008,0052) STUDY, (0020,000D) UID. */
function moveIdentifier(): Buffer {
  const el = (group: number, element: number, value: string): Buffer => {
    const v = Buffer.from(value.length % 2 ? value + (group === 0x0020 ? '\0' : ' ') : value, 'latin1');
    const h = Buffer.alloc(8);
    h.writeUInt16LE(group, 0);
    h.writeUInt16LE(element, 2);
    h.writeUInt32LE(v.length, 4);
    return Buffer.concat([h, v]);
  };
  return Buffer.concat([el(0x0008, 0x0052, 'STUDY'), el(0x0020, 0x000d, '1.2.3.4.5')]);
}

async function associate(
  port: number,
  calling: string,
  contexts: Parameters<typeof associateRq>[2],
  called = 'DICOM_PROXY',
) {
  const scu = await RawScu.connect(port);
  scu.send(associateRq(calling, called, contexts));
  const answer = await scu.next();
  return { scu, answer };
}

function assertRejected(pdu: Pdu | null, result: number, source: number, reason: number): void {
  assert.ok(pdu, 'expected an A-ASSOCIATE-RJ, the connection closed instead');
  assert.equal(pdu.type, 0x03, `expected A-ASSOCIATE-RJ, got PDU type ${pdu.type}`);
  if (pdu.type === 0x03) assert.deepEqual([pdu.result, pdu.source, pdu.reason], [result, source, reason]);
}

function assertAccepted(pdu: Pdu | null): AssociatePdu {
  assert.ok(pdu, 'expected an A-ASSOCIATE-AC, the connection closed instead');
  assert.equal(pdu.type, 0x02, `expected A-ASSOCIATE-AC, got PDU type ${pdu.type} ${JSON.stringify(pdu)}`);
  return pdu as AssociatePdu;
}

async function release(scu: RawScu): Promise<void> {
  scu.send(Buffer.from([0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0]));
  const rp = await scu.next();
  assert.equal(rp?.type, 0x06);
  scu.destroy();
}

describe('relay to a mutual-TLS archive', () => {
  let pki: Pki;
  let archive: ArchiveHandle;
  let proxy: ProxyUnderTest;
  let testArchive: TestArchive;

  before(async () => {
    pki = await standardPki();
    testArchive = await startTestArchive(pki);
    archive = testArchive.archive;
    proxy = await startProxy({
      archivePort: archive.port,
      pki,
      peers: [
        '  SCU: { addresses: [127.0.0.1], services: [echo, store, find, move], moveDestinations: [SCU, WS_OK] }',
        '  ECHOONLY: { addresses: [127.0.0.1], services: [echo] }',
        '  FARAWAY: { addresses: [10.9.9.9, "2001:db8::/32"], services: [echo, store] }',
        '  LIMITED: { addresses: [127.0.0.1], services: [echo], maxAssociations: 1 }',
      ].join('\n'),
    });
  });

  after(async () => {
    await proxy?.close();
    await testArchive?.close();
    await removePki(pki);
  });

  test('C-ECHO reaches the archive over mutual TLS and the association is released', async () => {
    const before = archive.requests.length;
    const r = await echo({
      host: '127.0.0.1',
      port: proxy.port,
      callingAeTitle: 'SCU',
      calledAeTitle: 'DICOM_PROXY',
    });
    assert.equal(r.ok, true, r.error ?? '');
    assert.deepEqual(archive.requests.slice(before), ['C-ECHO']);
    const summary = await proxy.closed();
    assert.equal(summary.outcome, 'released');
    assert.equal(summary.callingAeTitle, 'SCU');
    assert.equal(summary.upstream, 'archive');
    assert.match(summary.tls?.protocol ?? '', /^TLSv1\.[23]$/);
    assert.equal(summary.tls?.peerSubject, 'archive.local');
  });

  test('C-STORE: every instance arrives and the archive statuses come back', async () => {
    const before = archive.received.length;
    const r = await store({
      host: '127.0.0.1',
      port: proxy.port,
      callingAeTitle: 'SCU',
      calledAeTitle: 'DICOM_PROXY',
      instances: [testInstance(1), testInstance(2), testInstance(3)],
    });
    assert.equal(r.error, null);
    assert.deepEqual(r.statuses, [0, 0, 0]);
    assert.equal(archive.received.length - before, 3);
    const summary = await proxy.closed();
    assert.equal(summary.instances, 3);
    assert.equal(summary.operations['C-STORE-RQ'], 3);
  });

  test('the called AE is rewritten toward the archive and restored in the A-ASSOCIATE-AC', async () => {
    const { scu, answer } = await associate(proxy.port, 'SCU', [{ id: 1, abstractSyntax: VERIFICATION }]);
    const ac = assertAccepted(answer);
    assert.equal(aeTitleText(ac.calledAeTitle), 'DICOM_PROXY');
    assert.equal(aeTitleText(ac.callingAeTitle), 'SCU');
    const max = maxLengthOf(ac);
    assert.ok(
      max !== undefined && max > 0 && max <= 1048576,
      `max PDU ${max} must be within the proxy ceiling`,
    );
    await release(scu);
    await proxy.closed();
  });

  test('unknown calling AE: A-ASSOCIATE-RJ 1/1/3, nothing reaches the archive', async () => {
    const before = archive.requests.length;
    const { scu, answer } = await associate(proxy.port, 'INTRUDER', [
      { id: 1, abstractSyntax: VERIFICATION },
    ]);
    assertRejected(answer, 1, 1, 3);
    scu.destroy();
    const summary = await proxy.closed();
    assert.equal(summary.outcome, 'rejected');
    assert.equal(archive.requests.length, before);
    assert.equal(proxy.events['association-refused']?.at(-1)?.refusal, 'unknown-calling-ae');
  });

  test('known AE from an address not in its list: A-ASSOCIATE-RJ 1/1/3', async () => {
    const { scu, answer } = await associate(proxy.port, 'FARAWAY', [{ id: 1, abstractSyntax: VERIFICATION }]);
    assertRejected(answer, 1, 1, 3);
    scu.destroy();
    await proxy.closed();
    assert.equal(proxy.events['association-refused']?.at(-1)?.refusal, 'address-not-allowed');
  });

  test('unknown called AE: A-ASSOCIATE-RJ 1/1/7', async () => {
    const { scu, answer } = await associate(
      proxy.port,
      'SCU',
      [{ id: 1, abstractSyntax: VERIFICATION }],
      'NOT_A_ROUTE',
    );
    assertRejected(answer, 1, 1, 7);
    scu.destroy();
    await proxy.closed();
  });

  test('a service the peer may not use: its context is refused (3) with its own id, the others accepted', async () => {
    const { scu, answer } = await associate(proxy.port, 'ECHOONLY', [
      { id: 1, abstractSyntax: VERIFICATION },
      { id: 3, abstractSyntax: CT_IMAGE },
      { id: 5, abstractSyntax: STUDY_ROOT_MOVE },
    ]);
    const ac = assertAccepted(answer);
    const results = presentationContextsAc(ac).map((c) => [c.id, c.result]);
    assert.deepEqual(results, [
      [1, 0],
      [3, 3],
      [5, 3],
    ]);
    await release(scu);
    await proxy.closed();
  });

  test('only disallowed services proposed: A-ASSOCIATE-RJ 1/1/1', async () => {
    const { scu, answer } = await associate(proxy.port, 'ECHOONLY', [{ id: 1, abstractSyntax: CT_IMAGE }]);
    assertRejected(answer, 1, 1, 1);
    scu.destroy();
    await proxy.closed();
  });

  test('per-peer association limit: the second concurrent association gets 2/3/2, the next one after release is accepted', async () => {
    const first = await associate(proxy.port, 'LIMITED', [{ id: 1, abstractSyntax: VERIFICATION }]);
    assertAccepted(first.answer);
    const second = await associate(proxy.port, 'LIMITED', [{ id: 1, abstractSyntax: VERIFICATION }]);
    assertRejected(second.answer, 2, 3, 2);
    second.scu.destroy();
    await proxy.closed();
    await release(first.scu);
    await proxy.closed();
    const third = await associate(proxy.port, 'LIMITED', [{ id: 1, abstractSyntax: VERIFICATION }]);
    assertAccepted(third.answer);
    await release(third.scu);
    await proxy.closed();
  });

  test('C-MOVE to a destination the peer may not use: A801 from the proxy, never sent to the archive', async () => {
    const { scu, answer } = await associate(proxy.port, 'SCU', [{ id: 1, abstractSyntax: STUDY_ROOT_MOVE }]);
    assertAccepted(answer);
    const before = archive.requests.length;
    const move = (messageId: number, dest: string): void => {
      scu.send(
        commandPdu(1, {
          commandField: 0x0021,
          messageId,
          affectedSopClassUid: STUDY_ROOT_MOVE,
          moveDestination: dest,
          priority: 0,
          commandDataSetType: 0x0000,
        }),
      );
      scu.send(pdata(1, false, true, moveIdentifier()));
    };
    move(7, 'EVIL_AE');
    const refused = await scu.next();
    assert.equal(refused?.type, 0x04);
    const rsp = decodeCommand((refused as Extract<Pdu, { type: 0x04 }>).pdvs[0]?.value as Buffer);
    assert.equal(rsp.commandField, 0x8021);
    assert.equal(rsp.messageIdBeingRespondedTo, 7);
    assert.equal(rsp.status, 0xa801);
    assert.deepEqual(archive.requests.slice(before), [], 'the refused C-MOVE must not reach the archive');
    assert.equal(proxy.events['dimse-refused']?.at(-1)?.moveDestination, 'EVIL_AE');

    // Its twin: a listed destination is relayed and the archive's own status comes back.
    move(8, 'WS_OK');
    const relayed = await scu.next();
    const rsp2 = decodeCommand((relayed as Extract<Pdu, { type: 0x04 }>).pdvs[0]?.value as Buffer);
    assert.equal(rsp2.messageIdBeingRespondedTo, 8);
    assert.equal(rsp2.status, 0xc000, 'the demo archive answers "unable to process"');
    assert.deepEqual(archive.requests.slice(before), ['C-MOVE']);
    await release(scu);
    await proxy.closed();
  });

  test('a C-STORE command and the data read with it reach the archive in one write, whole', async () => {
    const { scu, answer } = await associate(proxy.port, 'SCU', [{ id: 1, abstractSyntax: CT_IMAGE }]);
    assertAccepted(answer);
    const uid = `1.2.826.0.1.3680043.10.1461.98.${process.pid}.${Date.now()}`;
    const dataset = encode(
      [
        { tag: 0x00080016, vr: 'UI', value: CT_IMAGE },
        { tag: 0x00080018, vr: 'UI', value: uid },
        { tag: 0x00080060, vr: 'CS', value: 'CT' },
        { tag: 0x00100020, vr: 'LO', value: 'ONEWRITE' },
      ],
      IMPLICIT_LE_SYNTAX,
    );
    // What a modality sends for one instance, in one TCP write (so the proxy reads it in one chunk).
    const bytes = Buffer.concat([
      commandPdu(1, {
        commandField: 0x0001,
        messageId: 7,
        affectedSopClassUid: CT_IMAGE,
        affectedSopInstanceUid: uid,
        priority: 0,
        commandDataSetType: 0x0000,
      }),
      pdata(1, false, true, dataset),
    ]);
    // Every write the proxy makes toward the archive (its TLS socket whose peer is the archive's port).
    const toArchive: Buffer[] = [];
    const proto = tls.TLSSocket.prototype;
    const own = Object.getOwnPropertyDescriptor(proto, 'write'); // none: inherited from stream.Writable
    const original = proto.write;
    proto.write = function (this: tls.TLSSocket, ...args: unknown[]) {
      // A copy: the relay returns a read buffer's memory (detaches it) once the write has completed.
      if (this.remotePort === archive.port && Buffer.isBuffer(args[0])) toArchive.push(Buffer.from(args[0]));
      return (original as (...a: unknown[]) => boolean).apply(this, args);
    } as typeof original;
    let rsp;
    try {
      scu.send(bytes);
      rsp = await scu.next();
    } finally {
      if (own) Object.defineProperty(proto, 'write', own);
      else delete (proto as { write?: unknown }).write;
    }
    const status = decodeCommand((rsp as Extract<Pdu, { type: 0x04 }>).pdvs[0]?.value as Buffer);
    assert.equal(status.status, 0x0000);
    assert.equal(toArchive.length, 1, 'the command PDU and its data set left in a single write');
    assert.ok(Buffer.concat(toArchive).equals(bytes), 'exactly the bytes the modality sent');
    await release(scu);
    const summary = await proxy.closed();
    assert.equal(summary.instances, 1);
  });

  test('a C-STORE on a context the peer may not store on is answered 0124 and its data set swallowed', async () => {
    // ECHOONLY cannot negotiate storage at all; SCU can store, so use a find-only peer via policy twin:
    // send C-STORE-RQ on the verification context (abstract syntax mismatch is the policy's call).
    const { scu, answer } = await associate(proxy.port, 'ECHOONLY', [
      { id: 1, abstractSyntax: VERIFICATION },
    ]);
    assertAccepted(answer);
    const before = archive.requests.length;
    scu.send(
      commandPdu(1, {
        commandField: 0x0001,
        messageId: 3,
        affectedSopClassUid: CT_IMAGE,
        affectedSopInstanceUid: '1.2.3.4.5.6',
        priority: 0,
        commandDataSetType: 0x0000,
      }),
    );
    scu.send(pdata(1, false, false, Buffer.alloc(4000, 1)));
    scu.send(pdata(1, false, true, Buffer.alloc(4000, 2)));
    const refused = await scu.next();
    const rsp = decodeCommand((refused as Extract<Pdu, { type: 0x04 }>).pdvs[0]?.value as Buffer);
    assert.equal(rsp.commandField, 0x8001);
    assert.equal(rsp.status, 0x0124);
    assert.equal(rsp.messageIdBeingRespondedTo, 3);
    // The association is still usable: a C-ECHO afterwards is relayed.
    scu.send(
      commandPdu(1, {
        commandField: 0x0030,
        messageId: 4,
        affectedSopClassUid: VERIFICATION,
        commandDataSetType: 0x0101,
      }),
    );
    const echoRsp = await scu.next();
    const e = decodeCommand((echoRsp as Extract<Pdu, { type: 0x04 }>).pdvs[0]?.value as Buffer);
    assert.equal(e.status, 0x0000);
    assert.deepEqual(archive.requests.slice(before), ['C-ECHO']);
    await release(scu);
    await proxy.closed();
  });

  test('P-DATA longer than the advertised maximum: A-ABORT 2/6 to the modality; the proxy goes on serving', async () => {
    const { scu, answer } = await associate(proxy.port, 'SCU', [{ id: 1, abstractSyntax: VERIFICATION }]);
    assertAccepted(answer);
    const header = Buffer.from([0x04, 0, 0, 0, 0, 0]);
    header.writeUInt32BE(1048576 + 1, 2);
    scu.send(header);
    const abort = await scu.next();
    assert.deepEqual(abort, { type: 0x07, source: 2, reason: 6 });
    await scu.waitClosed();
    const summary = await proxy.closed();
    assert.equal(summary.outcome, 'aborted-by-proxy');
    assert.equal(proxy.events['protocol-error']?.at(-1)?.code, 'PDU_TOO_LARGE');
    const r = await echo({
      host: '127.0.0.1',
      port: proxy.port,
      callingAeTitle: 'SCU',
      calledAeTitle: 'DICOM_PROXY',
    });
    assert.equal(r.ok, true, 'the daemon must carry on after a bad association');
    await proxy.closed();
  });

  test('bytes that are not DICOM: A-ABORT 2/1 (unrecognized PDU) and close', async () => {
    const scu = await RawScu.connect(proxy.port);
    scu.send(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
    const abort = await scu.next();
    assert.deepEqual(abort, { type: 0x07, source: 2, reason: 1 });
    await scu.waitClosed();
    await proxy.closed();
  });

  test('a PDU other than A-ASSOCIATE-RQ first: A-ABORT 2/2 (unexpected PDU)', async () => {
    const scu = await RawScu.connect(proxy.port);
    scu.send(Buffer.from([0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0]));
    const abort = await scu.next();
    assert.deepEqual(abort, { type: 0x07, source: 2, reason: 2 });
    await scu.waitClosed();
    await proxy.closed();
  });

  test('ARTIM: a connection that never sends an A-ASSOCIATE-RQ is closed after the request timeout', async () => {
    const scu = await RawScu.connect(proxy.port);
    const started = Date.now();
    await scu.waitClosed(6000);
    const waited = Date.now() - started;
    assert.ok(waited >= 1500, `closed after ${waited} ms, the timeout is 2 s`);
    const summary = await proxy.closed();
    assert.equal(summary.outcome, 'timeout');
  });

  test('A-ABORT from the modality propagates and is recorded', async () => {
    const { scu, answer } = await associate(proxy.port, 'SCU', [{ id: 1, abstractSyntax: VERIFICATION }]);
    assertAccepted(answer);
    scu.send(Buffer.from([0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0]));
    await scu.waitClosed();
    const summary = await proxy.closed();
    assert.equal(summary.outcome, 'aborted-by-modality');
  });
});

describe('an archive answering a C-STORE with a failure', () => {
  test('the failure status reaches the modality unchanged: the proxy never reports a success the archive did not give', async () => {
    const pki = await standardPki();
    const { archive, close } = await startTestArchive(pki, { storeStatus: () => 0xa700 });
    const proxy = await startProxy({ archivePort: archive.port, pki });
    try {
      const r = await store({
        host: '127.0.0.1',
        port: proxy.port,
        callingAeTitle: 'SCU',
        calledAeTitle: 'DICOM_PROXY',
        instances: [testInstance(9)],
      });
      assert.deepEqual(r.statuses, [0xa700]);
      await proxy.closed();
      const inst = proxy.events.instance?.at(-1);
      assert.equal(inst?.status, 0xa700);
    } finally {
      await proxy.close();
      await close();
      await removePki(pki);
    }
  });
});
