// The relay's state machine off the happy path, one test per finding of issue 11: each sends the exact
// PDUs a broken or hostile peer would and checks the answer PS3.8 defines, the log line and the ledger.
// Timers run on a manual clock: nothing here waits on the wall clock for a timeout to pass.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import * as net from 'node:net';
import { decodePdu, encodePdu, encodeReleaseRp, withMaxLength } from '../../src/pdu/codec.js';
import type { AssociatePdu, PDataPdu } from '../../src/pdu/types.js';
import { decodeCommand, encodeCommand } from '../../src/dimse/command.js';
import { InlineHasher } from '../../src/integrity/hasher.js';
import {
  RawScu,
  associateRq,
  commandPdu,
  pdata,
  startRawServer,
  CT_IMAGE,
  VERIFICATION,
  type RawServer,
} from '../helpers/raw.js';
import { acceptAll } from '../helpers/scripted-archive.js';
import { ManualClock } from '../helpers/clock.js';
import { MemorySink } from '../helpers/memory-sink.js';
import { removePki, standardPki, startProxy, type ProxyUnderTest } from '../helpers/proxy.js';

type Pki = Awaited<ReturnType<typeof standardPki>>;

const STORE_RQ = (messageId: number, sop = '1.2.3.4.5') =>
  commandPdu(1, {
    commandField: 0x0001,
    messageId,
    affectedSopClassUid: CT_IMAGE,
    affectedSopInstanceUid: sop,
    priority: 0,
    commandDataSetType: 0x0000,
  });

const STORE_RSP = (answers: number, status: number, sop = '1.2.3.4.5') =>
  commandPdu(1, {
    commandField: 0x8001,
    messageIdBeingRespondedTo: answers,
    affectedSopClassUid: CT_IMAGE,
    affectedSopInstanceUid: sop,
    commandDataSetType: 0x0101,
    status,
  });

describe('the relay state machine against broken and hostile peers', { timeout: 120_000 }, () => {
  let pki: Pki;
  let archive: RawServer;
  let proxy: ProxyUnderTest;
  const clock = new ManualClock();
  const sink = new MemorySink();
  const hasher = new InlineHasher();

  before(async () => {
    pki = await standardPki();
    archive = await startRawServer({
      ca: pki.ca.cert,
      cert: pki.archive.cert,
      key: pki.archive.key,
      requestCert: true,
      rejectUnauthorized: true,
    });
    proxy = await startProxy({
      archivePort: archive.port,
      pki,
      clock,
      ledger: { sink, onFailure: 'continue', hasher },
      connectTimeout: '10s',
      peers: '  SCU: { addresses: [127.0.0.1], services: [echo, store] }',
      // The defaults the findings were made with: both timers at 10 s, idle 8 s.
      limits: '{ associationRequestTimeout: 10s, idleTimeout: 8s, maxPduLength: 65536 }',
    });
  });

  after(async () => {
    await proxy?.close();
    archive?.close();
    await hasher.close();
    await removePki(pki);
  });

  /** Modality and archive with an established association (the AC may be changed on its way). */
  async function establish(
    contexts = [{ id: 1, abstractSyntax: CT_IMAGE }],
    maxLength = 16384,
    changeAc: (ac: AssociatePdu) => AssociatePdu = (ac) => ac,
  ): Promise<{ modality: RawScu; up: RawScu; ac: AssociatePdu }> {
    const modality = await RawScu.connect(proxy.port);
    modality.send(associateRq('SCU', 'DICOM_PROXY', contexts, maxLength));
    const up = await archive.accept();
    const rq = (await up.next()) as AssociatePdu;
    up.send(encodePdu(changeAc(acceptAll(rq))));
    const ac = (await modality.next()) as AssociatePdu;
    assert.equal(ac.type, 0x02);
    return { modality, up, ac };
  }

  const live = () => {
    const a = proxy.server.associations().at(-1); // the newest: the one under test
    assert.ok(a, 'a live association');
    return a;
  };

  test('an unsolicited A-RELEASE-RP on an established association: A-ABORT 2/2 to the archive, A-ABORT to the modality (not "released")', async () => {
    const { modality, up } = await establish();
    up.send(encodeReleaseRp());
    assert.deepEqual(await up.next(), { type: 0x07, source: 2, reason: 2 });
    assert.deepEqual(await modality.next(), { type: 0x07, source: 2, reason: 0 });
    modality.destroy();
    up.destroy();
    const summary = await proxy.closed();
    assert.equal(summary.outcome, 'aborted-by-proxy');
    assert.match(summary.reason ?? '', /archive protocol error/);
  });

  test('an archive that accepts TCP and never answers: A-ASSOCIATE-RJ 2/3/1 when connectTimeout runs out, not a bare close at the request timer', async () => {
    const armedBefore = clock.armed;
    const modality = await RawScu.connect(proxy.port);
    await clock.untilArmed(armedBefore + 1); // ARTIM for the A-ASSOCIATE-RQ
    modality.send(associateRq('SCU', 'DICOM_PROXY', [{ id: 1, abstractSyntax: VERIFICATION }]));
    const up = await archive.accept();
    assert.equal((await up.next())?.type, 0x01); // the request was sent; the archive stays silent
    assert.deepEqual(live().states, { modality: 'Sta3', archive: 'Sta5' });
    clock.advance(9_999); // both timers' settings; the request timer stopped at the A-ASSOCIATE-RQ
    assert.deepEqual(live().states, { modality: 'Sta3', archive: 'Sta5' });
    clock.advance(1);
    assert.deepEqual(await modality.next(), { type: 0x03, result: 2, source: 3, reason: 1 });
    assert.deepEqual(await up.next(), { type: 0x07, source: 0, reason: 0 });
    modality.destroy();
    up.destroy();
    const summary = await proxy.closed();
    assert.equal(summary.outcome, 'upstream-failed');
    assert.match(summary.reason ?? '', /^timeout: archive did not answer the A-ASSOCIATE-RQ within 10000 ms/);
    const failed = (proxy.events['upstream-failed'] ?? []).at(-1);
    assert.equal(failed?.reason, 'timeout');
  });

  test('an archive that accepts TCP and never completes the TLS handshake: 2/3/1 at connectTimeout, not a bare close', async () => {
    const silent = net.createServer(() => undefined);
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    const silentProxy = await startProxy({
      archivePort: (silent.address() as net.AddressInfo).port,
      pki,
      clock,
      connectTimeout: '10s',
      limits: '{ associationRequestTimeout: 10s }',
    });
    try {
      const armed = clock.armed;
      const modality = await RawScu.connect(silentProxy.port);
      modality.send(associateRq('SCU', 'DICOM_PROXY', [{ id: 1, abstractSyntax: VERIFICATION }]));
      await clock.untilArmed(armed + 2); // ARTIM at accept, then the connect timer at the A-ASSOCIATE-RQ
      clock.advance(10_000);
      assert.deepEqual(await modality.next(), { type: 0x03, result: 2, source: 3, reason: 1 });
      modality.destroy();
      const summary = await silentProxy.closed();
      assert.equal(summary.outcome, 'upstream-failed');
      assert.match(
        summary.reason ?? '',
        /did not complete the TCP connect and TLS handshake within 10000 ms/,
      );
    } finally {
      await silentProxy.close();
      silent.close();
    }
  });

  test('the idle timeout fires at its setting (8 s, within 1 s), and activity postpones it', async () => {
    const { modality, up } = await establish([{ id: 1, abstractSyntax: VERIFICATION }]);
    const start = clock.now();
    clock.advance(6_000);
    // Activity at 6 s: the timeout now runs from here.
    modality.send(
      pdata(
        1,
        true,
        true,
        encodeCommand({
          commandField: 0x0030,
          messageId: 3,
          affectedSopClassUid: VERIFICATION,
          commandDataSetType: 0x0101,
        }),
      ),
    );
    assert.equal((await up.next())?.type, 0x04);
    const activeAt = clock.now();
    let firedAt = -1;
    for (let t = 0; t < 12_000 && firedAt < 0; t += 100) {
      clock.advance(100);
      if (live().states.modality === 'Sta13') firedAt = clock.now() - activeAt;
    }
    assert.ok(
      firedAt >= 8_000 && firedAt <= 9_000,
      `idle abort ${firedAt} ms after the last activity (setting 8000)`,
    );
    assert.ok(clock.now() - start > 8_000, 'the activity at 6 s postponed it');
    assert.deepEqual(await modality.next(), { type: 0x07, source: 2, reason: 0 });
    assert.deepEqual(await up.next(), { type: 0x07, source: 2, reason: 0 });
    modality.destroy();
    up.destroy();
    const summary = await proxy.closed();
    assert.equal(summary.outcome, 'timeout');
    assert.equal(summary.reason, 'idle for 8000 ms');
  });

  test('a P-DATA-TF longer than the archive advertised: A-ABORT 2/6 to the modality, A-ABORT to the archive, nothing of it relayed', async () => {
    // The archive advertises 8192; the proxy's ceiling is 65536.
    const { modality, up, ac } = await establish([{ id: 1, abstractSyntax: CT_IMAGE }], 16384, (a) =>
      withMaxLength(a, 8192),
    );
    const told = ac.items.find((i) => i.kind === 'user-information');
    assert.ok(told && told.kind === 'user-information');
    assert.deepEqual(
      told.subItems.find((s) => s.kind === 'max-length'),
      { kind: 'max-length', maxLength: 8192 },
    );
    modality.send(STORE_RQ(1));
    assert.equal((await up.next())?.type, 0x04);
    modality.send(pdata(1, false, false, Buffer.alloc(8192 - 6 + 1, 1))); // PDU length 8193
    assert.deepEqual(await modality.next(), { type: 0x07, source: 2, reason: 6 });
    assert.deepEqual(await up.next(), { type: 0x07, source: 2, reason: 0 });
    modality.destroy();
    up.destroy();
    await proxy.closed();
    const e = (proxy.events['protocol-error'] ?? []).at(-1);
    assert.equal(e?.side, 'modality');
    assert.match(e?.message ?? '', /P-DATA-TF length 8193 exceeds the maximum PDU length 8192/);
  });

  test('…and the other way: a P-DATA-TF longer than the modality advertised gets A-ABORT 2/6 to the archive', async () => {
    const { modality, up } = await establish([{ id: 1, abstractSyntax: CT_IMAGE }], 4096);
    modality.send(STORE_RQ(1));
    assert.equal((await up.next())?.type, 0x04);
    up.send(pdata(1, true, true, Buffer.alloc(4096 - 6 + 1, 0))); // PDU length 4097 toward a 4096 modality
    assert.deepEqual(await up.next(), { type: 0x07, source: 2, reason: 6 });
    assert.deepEqual(await modality.next(), { type: 0x07, source: 2, reason: 0 });
    modality.destroy();
    up.destroy();
    await proxy.closed();
  });

  test('duplicate presentation context IDs are dropped before forwarding; the modality gets one answer per ID', async () => {
    const modality = await RawScu.connect(proxy.port);
    modality.send(
      associateRq('SCU', 'DICOM_PROXY', [
        { id: 1, abstractSyntax: VERIFICATION },
        { id: 1, abstractSyntax: CT_IMAGE },
        { id: 3, abstractSyntax: CT_IMAGE },
      ]),
    );
    const up = await archive.accept();
    const rq = (await up.next()) as AssociatePdu;
    const ids = rq.items.filter((i) => i.kind === 'presentation-context-rq').map((i) => i.context.id);
    assert.deepEqual(ids, [1, 3]);
    up.send(encodePdu(acceptAll(rq)));
    const ac = (await modality.next()) as AssociatePdu;
    const answered = ac.items.filter((i) => i.kind === 'presentation-context-ac').map((i) => i.context.id);
    assert.deepEqual(answered, [1, 3]);
    const dropped = (proxy.events['protocol-error'] ?? []).at(-1);
    assert.equal(dropped?.code, 'INVALID_PRESENTATION_CONTEXT');
    assert.match(dropped?.message ?? '', /1: duplicate-id/);
    modality.destroy();
    up.destroy();
    await proxy.closed();
  });

  test('more than 128 contexts: the IDs that wrap are dropped, 128 are forwarded', async () => {
    const contexts = Array.from({ length: 130 }, (_, n) => ({
      id: ((2 * n) % 256) + 1,
      abstractSyntax: VERIFICATION,
    }));
    const modality = await RawScu.connect(proxy.port);
    modality.send(associateRq('SCU', 'DICOM_PROXY', contexts));
    const up = await archive.accept();
    const rq = (await up.next()) as AssociatePdu;
    const ids = rq.items.filter((i) => i.kind === 'presentation-context-rq').map((i) => i.context.id);
    assert.equal(ids.length, 128);
    assert.equal(new Set(ids).size, 128);
    modality.destroy();
    up.destroy();
    await proxy.closed();
  });

  test('a request whose only valid contexts are refused by policy: A-ASSOCIATE-RJ 1/1/1, never forwarded', async () => {
    const before = proxy.events['association-accepted']?.length ?? 0;
    const modality = await RawScu.connect(proxy.port);
    // ID 1 twice: the first (a SOP class the peer may not use) is kept, the duplicate dropped.
    modality.send(
      associateRq('SCU', 'DICOM_PROXY', [
        { id: 1, abstractSyntax: '1.2.840.10008.5.1.4.1.2.2.1' }, // Study Root FIND: not granted
        { id: 1, abstractSyntax: VERIFICATION },
      ]),
    );
    assert.deepEqual(await modality.next(), { type: 0x03, result: 1, source: 1, reason: 1 });
    modality.destroy();
    const summary = await proxy.closed();
    assert.equal(summary.outcome, 'rejected');
    assert.match(summary.reason ?? '', /^no-permitted-presentation-context/);
    assert.equal(proxy.events['association-accepted']?.length ?? 0, before);
    await assert.rejects(archive.accept(300), /no connection/); // nothing reached the archive
  });

  test('a response answering no outstanding request: A-ABORT both sides, the log names the IDs, the instance is recorded as not acknowledged', async () => {
    const records = sink.records.length;
    const { modality, up } = await establish();
    modality.send(STORE_RQ(1, '1.2.3.77'));
    modality.send(pdata(1, false, true, Buffer.alloc(1000, 7)));
    assert.equal((await up.next())?.type, 0x04);
    assert.equal((await up.next())?.type, 0x04);
    up.send(STORE_RSP(99, 0x0000, '1.2.3.77')); // Message ID 99 was never sent
    assert.deepEqual(await up.next(), { type: 0x07, source: 2, reason: 6 });
    assert.deepEqual(await modality.next(), { type: 0x07, source: 2, reason: 0 }); // never a success
    modality.destroy();
    up.destroy();
    await proxy.closed();
    const e = (proxy.events['protocol-error'] ?? []).at(-1);
    assert.equal(e?.code, 'UNMATCHED_RESPONSE');
    assert.match(
      e?.message ?? '',
      /answers Message ID 99, which no outstanding request on this association has \(outstanding: 1\)/,
    );
    await proxy.server.recordsSettled();
    const rec = sink.records.slice(records);
    assert.equal(rec.length, 1);
    assert.equal(rec[0]?.sopInstanceUid, '1.2.3.77');
    assert.equal(rec[0]?.status, null);
    assert.equal(rec[0]?.outcome, 'no response: aborted');
  });

  test('a C-STORE-RSP naming another SOP instance than its request: aborted, not relayed', async () => {
    const { modality, up } = await establish();
    modality.send(STORE_RQ(2, '1.2.3.88'));
    modality.send(pdata(1, false, true, Buffer.alloc(100, 7)));
    await up.next();
    await up.next();
    up.send(STORE_RSP(2, 0x0000, '1.2.3.99'));
    assert.deepEqual(await up.next(), { type: 0x07, source: 2, reason: 6 });
    assert.deepEqual(await modality.next(), { type: 0x07, source: 2, reason: 0 });
    modality.destroy();
    up.destroy();
    await proxy.closed();
    assert.match(
      (proxy.events['protocol-error'] ?? []).at(-1)?.message ?? '',
      /names SOP instance 1\.2\.3\.99, the request 1\.2\.3\.88/,
    );
  });

  test('a success sent before the last data fragment was relayed is held until it is; the ledger covers the whole data set', async () => {
    const records = sink.records.length;
    const { modality, up } = await establish([{ id: 1, abstractSyntax: CT_IMAGE }], 65536);
    const fragments = Array.from({ length: 32 }, (_, n) => Buffer.alloc(16 * 1024, n));
    const whole = Buffer.concat(fragments);
    modality.send(STORE_RQ(5, '1.2.3.55'));
    modality.send(pdata(1, false, false, fragments[0] as Buffer));
    assert.equal((await up.next())?.type, 0x04); // the command
    assert.equal((await up.next())?.type, 0x04); // the first 16 KB
    const errorsBefore = (proxy.events['protocol-error'] ?? []).length;
    up.send(STORE_RSP(5, 0x0000, '1.2.3.55')); // success after 16 KB of 512 KB
    for (let i = 0; i < 200 && (proxy.events['protocol-error'] ?? []).length === errorsBefore; i++)
      await new Promise((r) => setTimeout(r, 10));
    const early = (proxy.events['protocol-error'] ?? [])[errorsBefore];
    assert.equal(early?.code, 'EARLY_RESPONSE');
    assert.match(early?.message ?? '', /Message ID 5 arrived before the last fragment/);
    assert.equal(live().stats().heldResponses, 1, 'the success is held, not relayed');
    for (let n = 1; n < 32; n++) modality.send(pdata(1, false, n === 31, fragments[n] as Buffer));
    const rsp = (await modality.next()) as PDataPdu;
    assert.equal(rsp.type, 0x04);
    const cmd = decodeCommand((rsp.pdvs[0] as { value: Buffer }).value);
    assert.equal(cmd.status, 0x0000);
    let got = 0;
    for (let n = 1; n < 32; n++) got += ((await up.next()) as PDataPdu).pdvs[0]?.value.length ?? 0;
    assert.equal(got, 31 * 16 * 1024, 'every fragment reached the archive');
    modality.destroy();
    up.destroy();
    await proxy.closed();
    await proxy.server.recordsSettled();
    const rec = sink.records.slice(records);
    assert.equal(rec.length, 1);
    assert.equal(rec[0]?.bytes, whole.length);
    assert.equal(rec[0]?.sha256, createHash('sha256').update(whole).digest('hex'));
    assert.equal(rec[0]?.status, 0);
  });

  test('a failure may come early: relayed at once, the record still covers the whole data set', async () => {
    const records = sink.records.length;
    const { modality, up } = await establish([{ id: 1, abstractSyntax: CT_IMAGE }], 65536);
    modality.send(STORE_RQ(6, '1.2.3.66'));
    modality.send(pdata(1, false, false, Buffer.alloc(1000, 1)));
    await up.next();
    await up.next();
    up.send(STORE_RSP(6, 0xa700, '1.2.3.66')); // out of resources, before the data set is complete
    const rsp = (await modality.next()) as PDataPdu;
    assert.equal(decodeCommand((rsp.pdvs[0] as { value: Buffer }).value).status, 0xa700);
    modality.send(pdata(1, false, true, Buffer.alloc(500, 2)));
    assert.equal((await up.next())?.type, 0x04);
    modality.destroy();
    up.destroy();
    await proxy.closed();
    await proxy.server.recordsSettled();
    const rec = sink.records.slice(records);
    assert.equal(rec[0]?.bytes, 1500);
    assert.equal(rec[0]?.status, 0xa700);
  });

  // Keep the decoder import meaningful for readers: the AC above is decoded by RawScu.
  void decodePdu;
});
