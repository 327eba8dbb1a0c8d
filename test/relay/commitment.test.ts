// Storage Commitment Push Model (PS3.4 J) through the proxy, with the integrity ledger: every
// N-EVENT-REPORT that passes (on the return listener, or on the modality's own association) makes one
// `committed` ledger record per instance of its Referenced SOP Sequence, confirming that instance's
// `instance` record; a caller whose certificate is not bound to the calling AE title gets nothing through.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { InlineHasher } from '../../src/integrity/hasher.js';
import { generateSigningKey } from '../../src/integrity/keys.js';
import { listLedgerFiles } from '../../src/integrity/chain.js';
import type { CommittedRecord, InstanceRecord, LedgerRecord } from '../../src/integrity/format.js';
import type { CommitmentEvidence, InstanceEvidence, LedgerSink } from '../../src/integrity/types.js';
import { verifyLedger } from '../../src/integrity/verify.js';
import { LedgerWriter } from '../../src/integrity/writer.js';
import type { ProxyEventMap } from '../../src/observe/events.js';
import { decodeCommand, encodeCommand, type CommandSet } from '../../src/dimse/command.js';
import type { PDataPdu } from '../../src/pdu/types.js';
import { issueCertificate } from '../../src/tls/pki.js';
import {
  COMMITMENT,
  COMMITMENT_INSTANCE,
  PROCESSING_FAILURE,
  sendEventReport,
  startCommitmentArchive,
  startModalityScp,
  storeAndRequestCommitment,
  type CommitmentArchive,
  type ModalityScp,
  type SopItem,
} from '../helpers/commitment-peers.js';
import { testInstance } from '../helpers/instances.js';
import { RawScu, associateRq, commandPdu, EXPLICIT_LE, pdata } from '../helpers/raw.js';
import { removePki, standardPki, startProxy, type ProxyUnderTest } from '../helpers/proxy.js';
import { startScriptedArchive, type ScriptedArchive } from '../helpers/scripted-archive.js';

type Pki = Awaited<ReturnType<typeof standardPki>>;
type CommitmentEvent = ProxyEventMap['commitment'][0];

const SECONDARY_CAPTURE = '1.2.840.10008.5.1.4.1.1.7';

const newUid = (): string => `2.25.${BigInt(`0x${randomBytes(16).toString('hex')}`).toString()}`;

/** Poll until `ready()` or fail after `timeoutMs`. */
async function waitFor(ready: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!ready()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A sink that keeps what the relay hands it, both kinds of record. */
class RecordingSink implements LedgerSink {
  records: InstanceEvidence[] = [];
  committed: CommitmentEvidence[] = [];
  healthy = true;
  async append(e: InstanceEvidence): Promise<void> {
    this.records.push(e);
  }
  async appendCommitted(e: CommitmentEvidence): Promise<void> {
    this.committed.push({ ...e });
  }
}

/** Collect the proxy's 'commitment' events (the test helper does not record them). */
function commitmentEvents(proxy: ProxyUnderTest): CommitmentEvent[] {
  const events: CommitmentEvent[] = [];
  proxy.server.events.on('commitment', (e) => events.push(e));
  return events;
}

/** The items of a naturalized Referenced / Failed SOP Sequence, without dcmjs bookkeeping (_vrMap). */
function sopItems(value: unknown): SopItem[] {
  assert.ok(Array.isArray(value), `a sequence, got ${JSON.stringify(value)}`);
  return (value as SopItem[]).map((i) => ({
    ReferencedSOPClassUID: i.ReferencedSOPClassUID,
    ReferencedSOPInstanceUID: i.ReferencedSOPInstanceUID,
    ...(i.FailureReason !== undefined ? { FailureReason: i.FailureReason } : {}),
  }));
}

async function readLedger(dir: string): Promise<LedgerRecord[]> {
  const records: LedgerRecord[] = [];
  for (const name of await listLedgerFiles(dir)) {
    const text = await readFile(join(dir, name), 'utf8');
    for (const line of text.split('\n')) if (line !== '') records.push(JSON.parse(line) as LedgerRecord);
  }
  return records;
}

// ---- a tiny Explicit VR Little Endian encoder (PS3.5 7.1.2, 7.5): defined-length sequences and items ----

const LONG_VRS = new Set(['OB', 'OW', 'SQ', 'UN', 'UT', 'UC', 'UR']);

function element(tag: number, vr: string, value: Buffer): Buffer {
  const long = LONG_VRS.has(vr);
  const head = Buffer.alloc(long ? 12 : 8);
  head.writeUInt16LE(tag >>> 16, 0);
  head.writeUInt16LE(tag & 0xffff, 2);
  head.write(vr, 4, 'latin1');
  if (long) head.writeUInt32LE(value.length, 8);
  else head.writeUInt16LE(value.length, 6);
  return Buffer.concat([head, value]);
}

/** UI, padded to even length with a NUL (PS3.5 6.2). */
const ui = (tag: number, uid: string): Buffer =>
  element(tag, 'UI', Buffer.from(uid.length % 2 === 1 ? `${uid}\0` : uid, 'latin1'));

function us(tag: number, n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(n);
  return element(tag, 'US', b);
}

function item(...elements: Buffer[]): Buffer {
  const body = Buffer.concat(elements);
  const head = Buffer.alloc(8);
  head.writeUInt16LE(0xfffe, 0);
  head.writeUInt16LE(0xe000, 2);
  head.writeUInt32LE(body.length, 4);
  return Buffer.concat([head, body]);
}

const sequence = (tag: number, items: Buffer[]): Buffer => element(tag, 'SQ', Buffer.concat(items));

interface Ref {
  sopClassUid: string;
  sopInstanceUid: string;
}

/** Transaction UID (0008,1195), Failed SOP Sequence (0008,1198), Referenced SOP Sequence (0008,1199). */
function commitmentDataSet(transactionUid: string, referenced: Ref[], failed: Ref[] = []): Buffer {
  const refItem = (r: Ref, ...more: Buffer[]): Buffer =>
    item(ui(0x00081150, r.sopClassUid), ui(0x00081155, r.sopInstanceUid), ...more);
  return Buffer.concat([
    ui(0x00081195, transactionUid),
    ...(failed.length > 0
      ? [
          sequence(
            0x00081198,
            failed.map((r) => refItem(r, us(0x00081197, PROCESSING_FAILURE))),
          ),
        ]
      : []),
    sequence(
      0x00081199,
      referenced.map((r) => refItem(r)),
    ),
  ]);
}

function rsp(cmd: CommandSet, extra: Partial<CommandSet> = {}): Buffer {
  return encodeCommand({
    commandField: cmd.commandField | 0x8000,
    messageIdBeingRespondedTo: cmd.messageId ?? 0,
    affectedSopClassUid: cmd.affectedSopClassUid ?? cmd.requestedSopClassUid ?? '',
    commandDataSetType: 0x0101,
    status: 0x0000,
    ...extra,
  });
}

const returnListenerYaml = (pki: Pki): string =>
  [
    'returnListener:',
    '  host: 127.0.0.1',
    '  port: 0',
    `  tls: { ca: ${pki.files.ca}, cert: ${pki.files['proxy-server']}, key: ${pki.files['proxy-server.key']}, handshakeTimeout: 3s }`,
    '  callers:',
    '    - { aeTitles: [ARCHIVE], identity: { dns: archive.local } }',
  ].join('\n');

async function issueProxyServerCert(pki: Pki): Promise<void> {
  const proxyServer = await issueCertificate(pki.ca, {
    commonName: 'proxy.local',
    dnsNames: ['proxy.local'],
    ipAddresses: ['127.0.0.1'],
    usage: 'server',
  });
  await pki.write('proxy-server', proxyServer);
}

// ---------------------------------------------------------------------------------------------------

describe('storage commitment on the return path, into a real ledger', { timeout: 60_000 }, () => {
  const hasher = new InlineHasher();
  const keys = generateSigningKey();
  let pki: Pki;
  let ledgerDir: string;
  let writer: LedgerWriter;
  let modality: ModalityScp;
  let archive: CommitmentArchive;
  let proxy: ProxyUnderTest;
  let events: CommitmentEvent[];

  before(async () => {
    pki = await standardPki();
    await issueProxyServerCert(pki);
    ledgerDir = await mkdtemp(join(tmpdir(), 'dimse-commit-ledger-'));
    writer = await LedgerWriter.open({
      dir: ledgerDir,
      fsync: 'batch',
      fsyncIntervalMs: 20,
      rotateMaxBytes: 64 * 1024 * 1024,
      rotateDaily: false,
      checkpointIntervalMs: 60_000,
      signingKeyPem: keys.privateKeyPem,
    });
    modality = await startModalityScp();
    archive = await startCommitmentArchive(
      { ca: pki.ca.cert, cert: pki.archive.cert, key: pki.archive.key },
      () => ({
        host: '127.0.0.1',
        port: proxy.returnPort,
        callingAeTitle: 'ARCHIVE',
        calledAeTitle: 'CT1',
        tls: { ca: pki.ca.cert, cert: pki.archive.cert, key: pki.archive.key },
        failIndex: 1,
      }),
    );
    proxy = await startProxy({
      archivePort: archive.port,
      pki,
      ledger: { sink: writer, onFailure: 'abort', hasher },
      peers: `  CT1: { addresses: [127.0.0.1], services: [echo, store, commitment], receiver: { host: 127.0.0.1, port: ${modality.port} } }`,
      extra: returnListenerYaml(pki),
    });
    assert.ok(proxy.returnPort > 0);
    events = commitmentEvents(proxy);
  });

  after(async () => {
    await proxy?.close();
    await writer?.close();
    await archive?.close();
    await modality?.close();
    await hasher.close();
    if (ledgerDir) await rm(ledgerDir, { recursive: true, force: true });
    await removePki(pki);
  });

  test('the archive reports on a new association: the modality gets it unchanged, the ledger confirms the 2 committed instances', async () => {
    const instances = [testInstance(1), testInstance(2), testInstance(3)];
    const uids = instances.map((d) => String(d.getElement('SOPInstanceUID')));
    const transactionUid = newUid();
    const run = await storeAndRequestCommitment({
      host: '127.0.0.1',
      port: proxy.port,
      callingAeTitle: 'CT1',
      calledAeTitle: 'DICOM_PROXY',
      instances,
      transactionUid,
    });
    assert.equal(run.error, null);
    assert.deepEqual(run.storeStatuses, [0, 0, 0]);
    assert.equal(run.actionStatus, 0);
    assert.deepEqual(
      archive.stored.map((s) => s.sopInstanceUid),
      uids,
    );
    assert.equal(archive.actions[0]?.TransactionUID, transactionUid);

    await waitFor(() => archive.reportResults.length > 0, 'the archive to finish its N-EVENT-REPORT');
    assert.deepEqual(
      archive.reportResults[0],
      { error: null, status: 0 },
      `the report was answered success; proxy refusals: ${JSON.stringify(proxy.events['dimse-refused'] ?? [])}`,
    );
    await waitFor(() => modality.reports.length > 0, 'the N-EVENT-REPORT at the modality');
    assert.equal(modality.reports.length, 1);
    const report = modality.reports[0]!;
    assert.equal(report.callingAeTitle, 'ARCHIVE');
    assert.equal(report.calledAeTitle, 'CT1');
    assert.equal(report.affectedSopClassUid, COMMITMENT);
    assert.equal(report.affectedSopInstanceUid, COMMITMENT_INSTANCE);
    assert.equal(report.eventTypeId, 2);
    const committedRefs: SopItem[] = [uids[0]!, uids[2]!].map((u) => ({
      ReferencedSOPClassUID: SECONDARY_CAPTURE,
      ReferencedSOPInstanceUID: u,
    }));
    const failedRefs: SopItem[] = [
      {
        ReferencedSOPClassUID: SECONDARY_CAPTURE,
        ReferencedSOPInstanceUID: uids[1]!,
        FailureReason: PROCESSING_FAILURE,
      },
    ];
    assert.equal(report.elements.TransactionUID, transactionUid);
    assert.deepEqual(sopItems(report.elements.ReferencedSOPSequence), committedRefs);
    assert.deepEqual(sopItems(report.elements.FailedSOPSequence), failedRefs);

    await proxy.server.recordsSettled();
    await writer.close();
    const records = await readLedger(ledgerDir);
    const instanceRecords = records.filter((r): r is InstanceRecord => r.type === 'instance');
    const committedRecords = records.filter((r): r is CommittedRecord => r.type === 'committed');
    assert.equal(instanceRecords.length, 3);
    assert.deepEqual(instanceRecords.map((r) => r.sopInstanceUid).sort(), [...uids].sort());
    for (const r of instanceRecords) {
      assert.equal(r.direction, 'modality-to-archive');
      assert.equal(r.outcome, 'success');
      assert.equal(r.callingAeTitle, 'CT1');
      assert.equal(r.sopClassUid, SECONDARY_CAPTURE);
      const got = archive.stored.find((s) => s.sopInstanceUid === r.sopInstanceUid);
      assert.ok(got && got.dataSet.length > 0, `the archive has the data set of ${r.sopInstanceUid}`);
      assert.equal(r.sha256, createHash('sha256').update(got.dataSet).digest('hex'));
      assert.equal(r.bytes, got.dataSet.length);
    }
    assert.equal(committedRecords.length, 2, JSON.stringify(committedRecords));
    for (const uid of [uids[0]!, uids[2]!]) {
      const c = committedRecords.find((r) => r.sopInstanceUid === uid);
      assert.ok(c, `a committed record for ${uid}`);
      const confirmed = instanceRecords.find((r) => r.sopInstanceUid === uid);
      assert.equal(c.transactionUid, transactionUid);
      assert.equal(c.sopClassUid, SECONDARY_CAPTURE);
      assert.equal(c.confirms, confirmed?.seq, `confirms the instance record of ${uid}`);
      assert.ok(c.seq > (confirmed?.seq ?? Infinity));
    }
    assert.equal(
      committedRecords.some((r) => r.sopInstanceUid === uids[1]),
      false,
      'no committed record for the failed instance',
    );
    const verified = await verifyLedger(ledgerDir, { publicKeyPem: keys.publicKeyPem });
    assert.equal(verified.ok, true, JSON.stringify(verified.errors));
    assert.deepEqual(verified.errors, []);
    assert.equal(verified.records, records.length);

    assert.equal(events.length, 1, JSON.stringify(events));
    assert.deepEqual(
      { ...events[0], id: undefined },
      { id: undefined, transactionUid, committed: 2, failed: 1, error: null },
    );
    const summary = (proxy.events['association-closed'] ?? []).find((s) => s.id === events[0]?.id);
    if (summary) assert.equal(summary.listener, 'return');
  });
});

// ---------------------------------------------------------------------------------------------------

describe('storage commitment on the same association (raw scripted archive)', { timeout: 60_000 }, () => {
  const hasher = new InlineHasher();
  const sink = new RecordingSink();
  const transactionUid = newUid();
  const refs: Ref[] = [1, 2, 3].map((i) => ({
    sopClassUid: SECONDARY_CAPTURE,
    sopInstanceUid: `1.2.826.0.1.3680043.10.1461.98.${process.pid}.${i}`,
  }));
  const reportData = commitmentDataSet(transactionUid, [refs[0]!, refs[2]!], [refs[1]!]);
  let pki: Pki;
  let archive: ScriptedArchive;
  let proxy: ProxyUnderTest;
  let events: CommitmentEvent[];

  before(async () => {
    pki = await standardPki();
    archive = await startScriptedArchive(
      { ca: pki.ca.cert, cert: pki.archive.cert, key: pki.archive.key },
      (cmd, contextId, reply) => {
        if (cmd.commandField === 0x0001) {
          reply(
            pdata(contextId, true, true, rsp(cmd, { affectedSopInstanceUid: cmd.affectedSopInstanceUid })),
          );
        } else if (cmd.commandField === 0x0130) {
          reply(pdata(contextId, true, true, rsp(cmd, { affectedSopInstanceUid: COMMITMENT_INSTANCE })));
          reply(
            pdata(
              contextId,
              true,
              true,
              encodeCommand({
                commandField: 0x0100,
                messageId: 700,
                affectedSopClassUid: COMMITMENT,
                affectedSopInstanceUid: COMMITMENT_INSTANCE,
                eventTypeId: 2,
                commandDataSetType: 0x0000,
              }),
            ),
          );
          // The data set in two P-DATA-TF PDUs: the proxy must put the fragments back together.
          const cut = 37;
          reply(pdata(contextId, false, false, reportData.subarray(0, cut)));
          reply(pdata(contextId, false, true, reportData.subarray(cut)));
        }
      },
    );
    proxy = await startProxy({
      archivePort: archive.port,
      pki,
      ledger: { sink, onFailure: 'abort', hasher },
      peers: '  CT1: { addresses: [127.0.0.1], services: [echo, store, commitment] }',
    });
    events = commitmentEvents(proxy);
  });

  after(async () => {
    await proxy?.close();
    archive?.close();
    await hasher.close();
    await removePki(pki);
  });

  test('the N-EVENT-REPORT on the modality association makes one committed record per referenced instance', async () => {
    const scu = await RawScu.connect(proxy.port);
    try {
      scu.send(
        associateRq('CT1', 'DICOM_PROXY', [
          { id: 1, abstractSyntax: SECONDARY_CAPTURE, transferSyntaxes: [EXPLICIT_LE] },
          { id: 3, abstractSyntax: COMMITMENT, transferSyntaxes: [EXPLICIT_LE] },
        ]),
      );
      assert.equal((await scu.next())?.type, 0x02);
      for (const [i, r] of refs.entries()) {
        // Command and data set in one write: the proxy has the whole data set before the archive answers.
        scu.send(
          Buffer.concat([
            commandPdu(1, {
              commandField: 0x0001,
              messageId: i + 1,
              affectedSopClassUid: r.sopClassUid,
              affectedSopInstanceUid: r.sopInstanceUid,
              priority: 0,
              commandDataSetType: 0x0000,
            }),
            pdata(1, false, true, Buffer.from(`not-really-a-data-set-${i}`, 'latin1')),
          ]),
        );
        const stored = decodeCommand(((await scu.next()) as PDataPdu).pdvs[0]?.value as Buffer);
        assert.deepEqual([stored.commandField, stored.status], [0x8001, 0]);
      }
      scu.send(
        Buffer.concat([
          commandPdu(3, {
            commandField: 0x0130,
            messageId: 9,
            requestedSopClassUid: COMMITMENT,
            requestedSopInstanceUid: COMMITMENT_INSTANCE,
            actionTypeId: 1,
            commandDataSetType: 0x0000,
          }),
          pdata(3, false, true, commitmentDataSet(transactionUid, refs)),
        ]),
      );
      const action = decodeCommand(((await scu.next()) as PDataPdu).pdvs[0]?.value as Buffer);
      assert.deepEqual([action.commandField, action.status], [0x8130, 0]);
      const report = decodeCommand(((await scu.next()) as PDataPdu).pdvs[0]?.value as Buffer);
      assert.deepEqual([report.commandField, report.eventTypeId, report.messageId], [0x0100, 2, 700]);
      const fragments: Buffer[] = [];
      for (;;) {
        const pdv = ((await scu.next()) as PDataPdu).pdvs[0]!;
        assert.equal(pdv.command, false);
        fragments.push(pdv.value);
        if (pdv.last) break;
      }
      assert.deepEqual(Buffer.concat(fragments), reportData, 'the report data set arrives unchanged');
      scu.send(
        commandPdu(3, {
          commandField: 0x8100,
          messageIdBeingRespondedTo: 700,
          affectedSopClassUid: COMMITMENT,
          affectedSopInstanceUid: COMMITMENT_INSTANCE,
          eventTypeId: 2,
          commandDataSetType: 0x0101,
          status: 0,
        }),
      );
      await waitFor(
        () => archive.commands.some((c) => c.command.commandField === 0x8100),
        'the N-EVENT-REPORT-RSP at the archive',
      );
      scu.send(Buffer.from([0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0])); // A-RELEASE-RQ
      assert.equal((await scu.next())?.type, 0x06);
    } finally {
      scu.destroy();
    }
    const summary = await proxy.closed();
    assert.equal(summary.outcome, 'released');
    await proxy.server.recordsSettled();

    assert.equal(sink.records.length, 3);
    assert.ok(sink.records.every((r) => r.outcome === 'success' && r.direction === 'modality-to-archive'));
    assert.deepEqual(
      [...sink.committed].sort((a, b) => a.sopInstanceUid.localeCompare(b.sopInstanceUid)),
      [refs[0]!, refs[2]!].map((r) => ({ ...r, transactionUid })),
    );
    assert.equal(events.length, 1, JSON.stringify(events));
    assert.deepEqual(
      { ...events[0], id: undefined },
      { id: undefined, transactionUid, committed: 2, failed: 1, error: null },
    );
  });
});

// ---------------------------------------------------------------------------------------------------

describe('refusing twin: an unbound certificate cannot report commitment', { timeout: 60_000 }, () => {
  const hasher = new InlineHasher();
  const sink = new RecordingSink();
  let pki: Pki;
  let modality: ModalityScp;
  let proxy: ProxyUnderTest;
  let events: CommitmentEvent[];

  before(async () => {
    pki = await standardPki();
    await issueProxyServerCert(pki);
    modality = await startModalityScp();
    proxy = await startProxy({
      archivePort: 9, // the forward path is not used here
      pki,
      ledger: { sink, onFailure: 'abort', hasher },
      peers: `  CT1: { addresses: [127.0.0.1], services: [echo, store, commitment], receiver: { host: 127.0.0.1, port: ${modality.port} } }`,
      extra: returnListenerYaml(pki),
    });
    events = commitmentEvents(proxy);
  });

  after(async () => {
    await proxy?.close();
    await modality?.close();
    await hasher.close();
    await removePki(pki);
  });

  const report = (pair: { cert: string; key: string }) => {
    const transactionUid = newUid();
    return sendEventReport({
      host: '127.0.0.1',
      port: proxy.returnPort,
      callingAeTitle: 'ARCHIVE',
      calledAeTitle: 'CT1',
      tls: { ca: pki.ca.cert, cert: pair.cert, key: pair.key },
      eventTypeId: 2,
      elements: {
        TransactionUID: transactionUid,
        ReferencedSOPSequence: [
          { ReferencedSOPClassUID: SECONDARY_CAPTURE, ReferencedSOPInstanceUID: '1.2.3.4.5.1' },
          { ReferencedSOPClassUID: SECONDARY_CAPTURE, ReferencedSOPInstanceUID: '1.2.3.4.5.2' },
        ],
        FailedSOPSequence: [
          {
            ReferencedSOPClassUID: SECONDARY_CAPTURE,
            ReferencedSOPInstanceUID: '1.2.3.4.5.3',
            FailureReason: PROCESSING_FAILURE,
          },
        ],
      },
    });
  };

  test('the proxy client certificate (CN dimse-tls-proxy) claiming ARCHIVE: rejected 1/1/3, nothing relayed or recorded', async () => {
    const r = await report(pki.client);
    assert.match(r.error ?? '', /association rejected 1\/1\/3/);
    assert.equal(r.status, null);
    const refused = (proxy.events['association-refused'] ?? []).at(-1);
    assert.equal(refused?.refusal, 'certificate-identity-mismatch');
    assert.equal(refused?.listener, 'return');
    assert.match(refused?.certificateSubject ?? '', /CN=dimse-tls-proxy/);
    await proxy.server.recordsSettled();
    assert.deepEqual(modality.requests, [], 'the modality received nothing');
    assert.deepEqual(sink.committed, []);
    assert.deepEqual(events, []);
  });

  test('control: the same report with the archive certificate gets through and is recorded', async () => {
    const r = await report(pki.archive);
    assert.deepEqual(
      r,
      { error: null, status: 0 },
      `proxy refusals: ${JSON.stringify(proxy.events['dimse-refused'] ?? [])}`,
    );
    await waitFor(() => modality.reports.length > 0, 'the N-EVENT-REPORT at the modality');
    await proxy.server.recordsSettled();
    assert.deepEqual(modality.requests, ['N-EVENT-REPORT']);
    assert.deepEqual(
      sink.committed.map((c) => c.sopInstanceUid),
      ['1.2.3.4.5.1', '1.2.3.4.5.2'],
    );
    assert.equal(events.length, 1);
  });
});
