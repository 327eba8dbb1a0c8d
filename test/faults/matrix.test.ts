// The fault matrix: an archive and a modality that fail in every way the field has shown, one case at a
// time, against one proxy with a real integrity ledger. After each case the same promises are checked:
// - the modality saw no success (or any status) the archive did not send for that instance;
// - every success the modality saw has its ledger record, with the archive's status and the SHA-256 of
//   the data set the modality sent; no record claims a status the archive did not give;
// - the proxy serves the next association (a clean C-STORE, recorded) and holds nothing afterwards
//   (no live association, no pending connection, no held response);
// and at the end: `ledger verify` passes, file descriptors are back to the baseline.
// Timers (ARTIM, connect timeout, idle timeout) run on a manual clock: a case advances it, no test sleeps.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { encodePdu } from '../../src/pdu/codec.js';
import type { AssociatePdu, Pdu } from '../../src/pdu/types.js';
import { decodeCommand, statusClass, type CommandSet } from '../../src/dimse/command.js';
import { InlineHasher } from '../../src/integrity/hasher.js';
import { LedgerWriter } from '../../src/integrity/writer.js';
import { readRecords } from '../../src/integrity/find.js';
import { verifyLedger } from '../../src/integrity/verify.js';
import type { InstanceRecord } from '../../src/integrity/format.js';
import { RawScu, associateRq, commandPdu, pdata, CT_IMAGE } from '../helpers/raw.js';
import { acceptAll } from '../helpers/scripted-archive.js';
import { startFaultArchive, type FaultArchive } from '../helpers/fault-archive.js';
import { removePki, standardPki, startProxy, type ProxyUnderTest } from '../helpers/proxy.js';
import { ManualClock } from '../helpers/clock.js';
import { options, removeDir, tempDir } from '../integrity/helpers.js';
import { until, within } from '../helpers/within.js';

type Pki = Awaited<ReturnType<typeof standardPki>>;
type Write = FileHandle['write'];

const CONNECT_TIMEOUT_MS = 3000;
const IDLE_TIMEOUT_MS = 10_000;
const FRAGMENT = 8 * 1024;
const DATA_BYTES = 5 * FRAGMENT;

/** What one case's peers did and saw, per SOP instance UID. */
class Tally {
  /** Statuses the archive sent. */
  readonly acks = new Map<string, number>();
  /** Statuses the modality received. */
  readonly seen = new Map<string, number>();
  /** The data set the modality sent, when it sent all of it. */
  readonly complete = new Map<string, Buffer>();
  readonly uids: string[] = [];
  private n = 0;
  constructor(readonly prefix: string) {}
  uid(): string {
    const uid = `${this.prefix}.${++this.n}`;
    this.uids.push(uid);
    return uid;
  }
}

let caseNo = 0;

function dataSet(uid: string): Buffer {
  const b = Buffer.alloc(DATA_BYTES);
  createHash('sha256').update(uid).digest().copy(b);
  for (let i = 32; i < b.length; i++) b[i] = (i * 31 + uid.length) & 0xff;
  return b;
}

function storeRq(messageId: number, uid: string): Buffer {
  return commandPdu(1, {
    commandField: 0x0001,
    messageId,
    affectedSopClassUid: CT_IMAGE,
    affectedSopInstanceUid: uid,
    priority: 0,
    commandDataSetType: 0x0000,
  });
}

function storeRsp(messageId: number, uid: string, status: number): Buffer {
  return commandPdu(1, {
    commandField: 0x8001,
    messageIdBeingRespondedTo: messageId,
    affectedSopClassUid: CT_IMAGE,
    affectedSopInstanceUid: uid,
    commandDataSetType: 0x0101,
    status,
  });
}

function commandOf(pdu: Pdu | null): CommandSet | null {
  if (!pdu || pdu.type !== 0x04) return null;
  const pdv = pdu.pdvs.find((p) => p.command);
  return pdv ? decodeCommand(pdv.value) : null;
}

describe(
  'fault matrix: every failure of the archive and the modality keeps the promises',
  { timeout: 240_000 },
  () => {
    let pki: Pki;
    let archive: FaultArchive;
    let proxy: ProxyUnderTest;
    let writer: LedgerWriter;
    let ledgerDir: string;
    let fdBaseline = 0;
    const clock = new ManualClock();
    const hasher = new InlineHasher();
    let diskFull = false;
    let restoreWrite: (() => void) | null = null;
    const health: boolean[] = [];
    let healthWaiter: ((h: boolean) => void) | null = null;

    const fds = (): number => readdirSync('/proc/self/fd').length;

    before(async () => {
      pki = await standardPki();
      archive = await startFaultArchive({ ca: pki.ca.cert, cert: pki.archive.cert, key: pki.archive.key });
      ledgerDir = await tempDir('fault-matrix-');
      // Disk full, as the OS reports it: every FileHandle write fails with ENOSPC while `diskFull`.
      const probe = await open(join(ledgerDir, '.proto'), 'w');
      const proto = Object.getPrototypeOf(probe) as { write: Write };
      await probe.close();
      const original = proto.write;
      proto.write = function (this: FileHandle, ...args: Parameters<Write>) {
        if (diskFull)
          return Promise.reject(
            Object.assign(new Error('ENOSPC: no space left on device'), { code: 'ENOSPC' }),
          );
        return (original as (...a: unknown[]) => ReturnType<Write>).apply(this, args);
      } as Write;
      restoreWrite = () => (proto.write = original);
      writer = await LedgerWriter.open(
        options(ledgerDir, {
          fsync: 'batch',
          fsyncIntervalMs: 20,
          recoveryIntervalMs: 50,
          onHealth: (h) => {
            health.push(h);
            healthWaiter?.(h);
            healthWaiter = null;
          },
        }),
      );
      proxy = await startProxy({
        archivePort: archive.port,
        pki,
        clock,
        connectTimeout: `${CONNECT_TIMEOUT_MS}ms`,
        limits: `{ associationRequestTimeout: 2s, idleTimeout: ${IDLE_TIMEOUT_MS}ms }`,
        peers: '  SCU: { addresses: [127.0.0.1], services: [echo, store] }',
        ledger: { sink: writer, onFailure: 'abort', hasher },
      });
      await serveNext('baseline');
      fdBaseline = fds();
    });

    after(async () => {
      restoreWrite?.();
      await proxy?.close();
      await archive?.close();
      await hasher.close();
      await writer?.close();
      if (ledgerDir) await removeDir(ledgerDir);
      await removePki(pki);
    });

    /** A modality that has sent its A-ASSOCIATE-RQ (before the proxy answers). */
    async function modality(called = 'DICOM_PROXY'): Promise<RawScu> {
      const m = await RawScu.connect(proxy.port);
      m.send(associateRq('SCU', called, [{ id: 1, abstractSyntax: CT_IMAGE }]));
      return m;
    }

    /** The archive's side of a connection that has answered the proxy's A-ASSOCIATE-RQ with an AC. */
    async function archiveAccepts(): Promise<RawScu> {
      const up = await archive.accept();
      const rq = await up.next();
      assert.equal(rq?.type, 0x01);
      up.send(encodePdu(acceptAll(rq as AssociatePdu)));
      return up;
    }

    /** An associated modality and archive (the modality has its AC). */
    async function associated(): Promise<{ m: RawScu; up: RawScu }> {
      const m = await modality();
      const up = await archiveAccepts();
      const ac = await m.next();
      assert.equal(ac?.type, 0x02, `the modality gets the AC, got ${JSON.stringify(ac)}`);
      return { m, up };
    }

    /** The modality sends a C-STORE-RQ and `fragments` of its data set's five (all: the last flagged). */
    function sendStore(t: Tally, m: RawScu, messageId: number, uid: string, fragments = 5): void {
      const data = dataSet(uid);
      m.send(storeRq(messageId, uid));
      for (let i = 0; i < fragments; i++) {
        m.send(pdata(1, false, i === 4, data.subarray(i * FRAGMENT, (i + 1) * FRAGMENT)));
      }
      if (fragments === 5) t.complete.set(uid, data);
    }

    /**
     * The archive reads PDUs until it has the C-STORE-RQ (unless `command` is false: it has it already) and
     * `fragments` data PDVs of it.
     */
    async function archiveReceives(up: RawScu, fragments = 5, command = true): Promise<CommandSet | null> {
      let cmd: CommandSet | null = null;
      let got = 0;
      while ((command && cmd === null) || got < fragments) {
        const pdu = await up.next();
        assert.ok(pdu, 'the archive connection closed before the data arrived');
        if (pdu.type !== 0x04) assert.fail(`the archive got PDU type ${pdu.type} while receiving`);
        for (const pdv of pdu.pdvs) {
          if (pdv.command) cmd = decodeCommand(pdv.value);
          else got++;
        }
      }
      return cmd;
    }

    function ack(t: Tally, up: RawScu, messageId: number, uid: string, status: number): void {
      t.acks.set(uid, status);
      up.send(storeRsp(messageId, uid, status));
    }

    /**
     * Reads what the modality gets until the association ends for it; the C-STORE-RSPs go into the tally.
     * Returns the last PDU (A-ABORT, A-RELEASE-RP, A-ASSOCIATE-RJ) or null when the connection closed.
     */
    async function drain(t: Tally, m: RawScu, untilStatuses = Infinity): Promise<Pdu | null> {
      let answers = 0;
      for (;;) {
        const pdu = await m.next(10_000);
        const cmd = commandOf(pdu);
        if (cmd && cmd.commandField === 0x8001) {
          t.seen.set(cmd.affectedSopInstanceUid ?? '', cmd.status ?? -1);
          if (++answers >= untilStatuses) return pdu;
          continue;
        }
        return pdu;
      }
    }

    /** The modality releases; the archive answers the release. */
    async function release(m: RawScu, up: RawScu): Promise<void> {
      m.send(Buffer.from([0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0]));
      const rq = await up.next();
      assert.equal(rq?.type, 0x05, 'the archive gets the A-RELEASE-RQ');
      up.send(Buffer.from([0x06, 0, 0, 0, 0, 4, 0, 0, 0, 0]));
      assert.equal((await m.next())?.type, 0x06, 'the modality gets the A-RELEASE-RP');
      m.destroy();
      up.destroy();
    }

    /** A clean C-STORE through the proxy: success relayed, recorded. */
    async function serveNext(label: string): Promise<void> {
      const t = new Tally(`1.2.826.0.1.3680043.10.543.9.${++caseNo}`);
      const { m, up } = await associated();
      const uid = t.uid();
      sendStore(t, m, 1, uid);
      await archiveReceives(up);
      ack(t, up, 1, uid, 0x0000);
      const rsp = commandOf(await m.next());
      assert.equal(rsp?.status, 0x0000, `${label}: the next association is served`);
      t.seen.set(uid, 0);
      await release(m, up);
      await settled();
      await checkPromises(t, `${label} (next association)`);
    }

    /** Every association of the case has ended and its records are written. */
    async function settled(): Promise<void> {
      const deadline = Date.now() + 20_000;
      while (proxy.server.liveAssociations > 0 || proxy.server.pendingConnections('forward') > 0) {
        if (Date.now() > deadline) assert.fail('an association is still live 20 s after its case ended');
        // An association waiting on a timer (ARTIM in Sta13, idle) is moved on by the clock.
        clock.advance(IDLE_TIMEOUT_MS + 1000);
        await new Promise((r) => setTimeout(r, 10));
      }
      await proxy.server.recordsSettled();
    }

    async function recordsOf(t: Tally): Promise<InstanceRecord[]> {
      const out: InstanceRecord[] = [];
      for await (const { record } of readRecords(ledgerDir)) {
        if (record.type === 'instance' && record.sopInstanceUid.startsWith(`${t.prefix}.`)) out.push(record);
      }
      return out;
    }

    async function checkPromises(t: Tally, label: string): Promise<void> {
      for (const [uid, status] of t.seen) {
        assert.equal(
          t.acks.get(uid),
          status,
          `${label}: the modality saw status 0x${status.toString(16)} for ${uid}, the archive sent ${t.acks.get(uid)}`,
        );
      }
      const records = await recordsOf(t);
      for (const [uid, status] of t.seen) {
        const cls = statusClass(status);
        if (cls !== 'success' && cls !== 'warning') continue;
        const rec = records.find((r) => r.sopInstanceUid === uid);
        assert.ok(rec, `${label}: a success reached the modality for ${uid} without its ledger record`);
        assert.equal(rec.status, status, `${label}: the record holds the archive's status`);
        const data = t.complete.get(uid);
        assert.ok(data, `${label}: a success for a data set the modality did not finish`);
        assert.equal(
          rec.sha256,
          createHash('sha256').update(data).digest('hex'),
          `${label}: the record's hash`,
        );
        assert.equal(rec.bytes, data.length);
      }
      for (const rec of records) {
        if (rec.status === null) {
          assert.equal(rec.outcome, 'no response: aborted', `${label}: ${rec.sopInstanceUid}`);
          continue;
        }
        assert.equal(
          rec.status,
          t.acks.get(rec.sopInstanceUid),
          `${label}: a record with a status the archive gave`,
        );
      }
      assert.equal(proxy.server.liveAssociations, 0, `${label}: no association left`);
      for (const a of proxy.server.associations()) assert.equal(a.stats().heldResponses, 0);
    }

    /** Runs a case, then the common checks and a clean association after it. */
    function fault(name: string, body: (t: Tally) => Promise<void>): void {
      test(name, async () => {
        const t = new Tally(`1.2.826.0.1.3680043.10.543.${++caseNo}`);
        await body(t);
        await settled();
        await checkPromises(t, name);
        await serveNext(name);
      });
    }

    // --- the archive ---------------------------------------------------------------------------------

    fault(
      'archive killed mid-instance (connection reset): the modality gets A-ABORT, no success',
      async (t) => {
        const { m, up } = await associated();
        const uid = t.uid();
        sendStore(t, m, 1, uid, 2);
        await archiveReceives(up, 2);
        archive.kill(up);
        const end = await drain(t, m);
        assert.equal(end?.type, 0x07, 'A-ABORT');
        m.destroy();
      },
    );

    fault(
      'archive frozen after the data set (no response): the idle timeout aborts both sides',
      async (t) => {
        const { m, up } = await associated();
        const uid = t.uid();
        sendStore(t, m, 1, uid);
        await archiveReceives(up);
        clock.advance(IDLE_TIMEOUT_MS + 1500);
        const end = await drain(t, m);
        assert.equal(end?.type, 0x07, 'A-ABORT');
        assert.equal((await up.next())?.type, 0x07, 'the archive gets an A-ABORT too');
        m.destroy();
        up.destroy();
      },
    );

    fault(
      'archive closing without release after its success: the success is relayed, then A-ABORT',
      async (t) => {
        const { m, up } = await associated();
        const uid = t.uid();
        sendStore(t, m, 1, uid);
        await archiveReceives(up);
        ack(t, up, 1, uid, 0x0000);
        up.socket.end();
        const end = await drain(t, m);
        assert.equal(t.seen.get(uid), 0x0000);
        assert.equal(end?.type, 0x07);
        m.destroy();
      },
    );

    // A success waits for its ledger record (onLedgerFailure: abort); what the archive sends right behind
    // it, in the same write, must not make the proxy drop that success.
    for (const behind of [
      {
        what: 'a bad PDU',
        pdu: [0x09, 0, 0, 0, 0, 4, 0, 0, 0, 0], // not a PDU type: A-ABORT 2/1 to the archive
        toModality: { type: 0x07, source: 2, reason: 0 },
        toArchive: { type: 0x07, source: 2, reason: 1 },
      },
      {
        what: 'an A-ABORT',
        pdu: [0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0],
        toModality: { type: 0x07, source: 0, reason: 0 }, // the archive's own, relayed
        toArchive: null,
      },
    ]) {
      fault(
        `archive sending ${behind.what} right behind its success: the success is relayed once recorded, then A-ABORT`,
        async (t) => {
          const { m, up } = await associated();
          const uid = t.uid();
          sendStore(t, m, 1, uid);
          await archiveReceives(up);
          t.acks.set(uid, 0x0000);
          up.send(Buffer.concat([storeRsp(1, uid, 0x0000), Buffer.from(behind.pdu)]));
          const end = await drain(t, m);
          assert.equal(t.seen.get(uid), 0x0000, 'the archive gave a success: the modality gets it');
          assert.deepEqual(end, behind.toModality);
          if (behind.toArchive) assert.deepEqual(await up.next(), behind.toArchive);
          m.destroy();
          up.destroy();
        },
      );
    }

    fault('archive aborting mid-instance: its A-ABORT is relayed, no success', async (t) => {
      const { m, up } = await associated();
      const uid = t.uid();
      sendStore(t, m, 1, uid, 3);
      await archiveReceives(up, 3);
      up.send(Buffer.from([0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0]));
      const end = await drain(t, m);
      assert.deepEqual(end, { type: 0x07, source: 0, reason: 0 });
      m.destroy();
      up.destroy();
    });

    // Every status class a C-STORE-RSP can carry (PS3.4 Table B.2-1, PS3.7 Annex C): relayed as given.
    for (const status of [
      0xb000, 0xb007, 0xb006, 0x0107, 0xa700, 0xa900, 0xc000, 0x0122, 0x0124, 0x0110, 0x0211,
    ]) {
      fault(
        `archive status 0x${status.toString(16).padStart(4, '0')}: relayed unchanged, recorded as given`,
        async (t) => {
          const { m, up } = await associated();
          const uid = t.uid();
          sendStore(t, m, 1, uid);
          await archiveReceives(up);
          ack(t, up, 1, uid, status);
          await drain(t, m, 1);
          assert.equal(t.seen.get(uid), status);
          await release(m, up);
        },
      );
    }

    fault('archive answers an unknown Message ID: A-ABORT both ways, nothing relayed', async (t) => {
      const { m, up } = await associated();
      const uid = t.uid();
      sendStore(t, m, 1, uid);
      await archiveReceives(up);
      t.acks.set(`${uid}.wrong`, 0);
      up.send(storeRsp(99, uid, 0x0000));
      const end = await drain(t, m);
      assert.equal(end?.type, 0x07);
      assert.equal(t.seen.size, 0, 'the stray success is not relayed');
      assert.equal((await up.next())?.type, 0x07);
      m.destroy();
      up.destroy();
    });

    fault(
      'archive answers early (before the data set is complete): the success waits for the last fragment',
      async (t) => {
        const { m, up } = await associated();
        const uid = t.uid();
        const data = dataSet(uid);
        m.send(storeRq(1, uid));
        m.send(pdata(1, false, false, data.subarray(0, FRAGMENT)));
        await archiveReceives(up, 1);
        ack(t, up, 1, uid, 0x0000);
        // The proxy holds the success: the modality has none while the data set is unfinished.
        await until(
          () => proxy.server.associations().at(-1)?.stats().heldResponses === 1,
          'the success is held',
        );
        for (let i = 1; i < 5; i++)
          m.send(pdata(1, false, i === 4, data.subarray(i * FRAGMENT, (i + 1) * FRAGMENT)));
        t.complete.set(uid, data);
        await archiveReceives(up, 4, false);
        await drain(t, m, 1);
        assert.equal(t.seen.get(uid), 0x0000);
        await release(m, up);
      },
    );

    fault(
      'archive answers early, then the modality aborts: no success for the unfinished instance',
      async (t) => {
        const { m, up } = await associated();
        const uid = t.uid();
        sendStore(t, m, 1, uid, 2);
        await archiveReceives(up, 2);
        ack(t, up, 1, uid, 0x0000);
        m.send(Buffer.from([0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0]));
        const seenBefore = t.seen.size;
        assert.equal((await up.next())?.type, 0x07, 'the archive gets the A-ABORT');
        assert.equal(t.seen.size, seenBefore);
        m.destroy();
        up.destroy();
      },
    );

    fault(
      'archive answers two requests in reverse order after a delay: each success goes to its request',
      async (t) => {
        const { m, up } = await associated();
        const a = t.uid();
        const b = t.uid();
        sendStore(t, m, 1, a);
        await archiveReceives(up);
        sendStore(t, m, 2, b);
        await archiveReceives(up);
        clock.advance(IDLE_TIMEOUT_MS / 2); // delayed, within the idle timeout
        ack(t, up, 2, b, 0x0000);
        ack(t, up, 1, a, 0xb000);
        await drain(t, m, 2);
        assert.equal(t.seen.get(a), 0xb000);
        assert.equal(t.seen.get(b), 0x0000);
        await release(m, up);
      },
    );

    fault(
      'garbage after the A-ASSOCIATE-AC: A-ABORT to both, the modality never sees the garbage',
      async (t) => {
        const { m, up } = await associated();
        up.send(Buffer.from([0x55, 0, 0, 0, 0, 2, 0xde, 0xad]));
        const end = await drain(t, m);
        assert.equal(end?.type, 0x07);
        m.destroy();
        up.destroy();
      },
    );

    // --- the way to the archive ------------------------------------------------------------------------

    async function expectRejected(m: RawScu, label: string): Promise<void> {
      const answer = await m.next(10_000);
      assert.deepEqual(answer, { type: 0x03, result: 2, source: 3, reason: 1 }, label);
      m.destroy();
    }

    fault('archive refusing connections: A-ASSOCIATE-RJ transient (2/3/1)', async () => {
      await archive.refuse();
      try {
        const m = await modality();
        await expectRejected(m, 'refused');
      } finally {
        await archive.listenAgain();
      }
    });

    fault('archive resetting the connection: A-ASSOCIATE-RJ transient', async () => {
      archive.next('reset');
      await expectRejected(await modality(), 'reset');
    });

    fault('archive silent (TCP open, no TLS): the connect timeout rejects the association', async () => {
      archive.next('silent');
      const before = archive.connections;
      const m = await modality();
      await archive.untilConnections(before + 1);
      clock.advance(CONNECT_TIMEOUT_MS + 1);
      await expectRejected(m, 'silent');
    });

    fault('archive without TLS (plaintext DICOM): A-ASSOCIATE-RJ transient', async () => {
      archive.next('plain');
      await expectRejected(await modality(), 'plaintext');
    });

    fault('archive never answering the A-ASSOCIATE-RQ: the connect timeout rejects it', async () => {
      const m = await modality();
      const up = await archive.accept();
      assert.equal((await up.next())?.type, 0x01);
      clock.advance(CONNECT_TIMEOUT_MS + 1);
      await expectRejected(m, 'no AC');
      assert.equal((await up.next())?.type, 0x07, 'the archive gets an A-ABORT');
      up.destroy();
    });

    fault('archive rejecting the association: its A-ASSOCIATE-RJ is relayed as given', async () => {
      const m = await modality();
      const up = await archive.accept();
      assert.equal((await up.next())?.type, 0x01);
      up.send(Buffer.from([0x03, 0, 0, 0, 0, 4, 0, 1, 1, 3])); // permanent, service-user, called AE not recognized
      assert.deepEqual(await m.next(), { type: 0x03, result: 1, source: 1, reason: 3 });
      m.destroy();
      up.destroy();
    });

    // --- the modality ----------------------------------------------------------------------------------

    fault('modality aborting mid-instance: the archive gets A-ABORT, no record claims success', async (t) => {
      const { m, up } = await associated();
      const uid = t.uid();
      sendStore(t, m, 1, uid, 2);
      await archiveReceives(up, 2);
      m.send(Buffer.from([0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0]));
      assert.deepEqual(await up.next(), { type: 0x07, source: 0, reason: 0 });
      m.destroy();
      up.destroy();
    });

    fault('modality closing the connection mid-instance: the archive gets A-ABORT', async (t) => {
      const { m, up } = await associated();
      const uid = t.uid();
      sendStore(t, m, 1, uid, 3);
      await archiveReceives(up, 3);
      m.socket.end();
      assert.equal((await up.next())?.type, 0x07);
      up.destroy();
    });

    fault(
      'modality vanishing mid-instance (no FIN, no data): the idle timeout aborts the archive side',
      async (t) => {
        const { m, up } = await associated();
        const uid = t.uid();
        sendStore(t, m, 1, uid, 1);
        await archiveReceives(up, 1);
        clock.advance(IDLE_TIMEOUT_MS + 1500);
        assert.equal((await up.next())?.type, 0x07);
        m.destroy();
        up.destroy();
      },
    );

    // --- the ledger --------------------------------------------------------------------------------------

    fault(
      'disk full under the ledger: no success for the unrecorded instance, recovery when space returns',
      async (t) => {
        const { m, up } = await associated();
        const uid = t.uid();
        diskFull = true;
        const unhealthy = new Promise<boolean>((r) => (healthWaiter = r));
        sendStore(t, m, 1, uid);
        await archiveReceives(up);
        ack(t, up, 1, uid, 0x0000);
        const end = await drain(t, m);
        assert.equal(end?.type, 0x07, 'A-ABORT, not the success');
        assert.equal(t.seen.size, 0);
        assert.equal(await within(unhealthy, 'the writer reports the outage'), false);
        m.destroy();
        up.destroy();
        await settled();
        // While the disk is still full a new C-STORE is not relayed.
        const second = await associated();
        const uid2 = t.uid();
        sendStore(t, second.m, 1, uid2);
        assert.equal((await drain(t, second.m))?.type, 0x07);
        second.m.destroy();
        second.up.destroy();
        await settled();
        // Space returns: the writer's probe succeeds, and the next association (run by fault()) is served.
        const healthy = new Promise<boolean>((r) => (healthWaiter = r));
        diskFull = false;
        assert.equal(await within(healthy, 'the writer recovers'), true);
        assert.equal(writer.healthy, true);
      },
    );

    test('the ledger verifies, and file descriptors are back to the baseline', async () => {
      await settled();
      const v = await verifyLedger(ledgerDir);
      assert.equal(v.ok, true, JSON.stringify(v.errors));
      assert.equal(v.tornTail, null);
      let left = fds();
      for (let i = 0; i < 50 && left > fdBaseline + 2; i++) {
        await new Promise((r) => setTimeout(r, 20));
        left = fds();
      }
      assert.ok(left <= fdBaseline + 2, `${left} file descriptors open, baseline ${fdBaseline}`);
      assert.deepEqual(health, [false, true], 'one outage, one recovery');
    });
  },
);
