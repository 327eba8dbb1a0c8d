// Hostile-input corpus: the bug classes DICOM network CVEs and fuzzing campaigns came from, each with the
// answer PS3.8 defines (and the relay gives: README "What it does"). After every case the proxy must
// have no association left live and must still serve a valid association (C-ECHO success); a storm of
// rejected associations must leave the process's file descriptors back at their baseline.
import { after, afterEach, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodePdu, encodePdu } from '../../src/pdu/codec.js';
import type { AssociatePdu, Pdu } from '../../src/pdu/types.js';
import { decodeCommand, encodeCommand } from '../../src/dimse/command.js';
import { InlineHasher } from '../../src/integrity/hasher.js';
import { LedgerWriter } from '../../src/integrity/writer.js';
import { RawScu, associateRq, commandPdu, pdata, CT_IMAGE, VERIFICATION } from '../helpers/raw.js';
import { startAcceptingArchive, type AcceptingArchive } from '../helpers/accepting-archive.js';
import {
  removePki,
  standardPki,
  startProxy,
  type ProxyUnderTest,
  writeProxyServerCert,
} from '../helpers/proxy.js';

type Pki = Awaited<ReturnType<typeof standardPki>>;

const CEILING = 65536; // limits.maxPduLength
const ECHO_RQ = {
  commandField: 0x0030,
  messageId: 1,
  affectedSopClassUid: VERIFICATION,
  commandDataSetType: 0x0101,
};
const RELEASE_RQ = Buffer.from([0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0]);
const ABORT = (source: number, reason: number): Pdu => ({ type: 0x07, source, reason });

/** A PDU of `type` with an exact body (its length field says body.length unless `declared` is given). */
function rawPdu(type: number, body: Buffer, declared = body.length): Buffer {
  const h = Buffer.alloc(6);
  h[0] = type;
  h.writeUInt32BE(declared >>> 0, 2);
  return Buffer.concat([h, body]);
}

/** One PDV item: item length (4), context ID, message control header, value. */
function pdv(contextId: number, control: number, value: Buffer, declared = value.length + 2): Buffer {
  const h = Buffer.alloc(6);
  h.writeUInt32BE(declared >>> 0, 0);
  h[4] = contextId;
  h[5] = control;
  return Buffer.concat([h, value]);
}

/** The listener under test: who calls it, which AE title it serves, how a caller connects. */
interface Side {
  calling: string;
  called: string;
  connect(): Promise<RawScu>;
}
let side: Side;

function rq(calling = side.calling, called = side.called, maxLength = 16384): Buffer {
  return associateRq(
    calling,
    called,
    [
      { id: 1, abstractSyntax: VERIFICATION },
      { id: 3, abstractSyntax: CT_IMAGE },
    ],
    maxLength,
  );
}

/** An A-ASSOCIATE-RQ with its AE title fields written as raw bytes (no aeTitleField checks). */
function rqWithRawTitles(calling: string, called: string): Buffer {
  const b = Buffer.from(rq());
  b.fill(0x20, 10, 42);
  b.write(called, 10, 16, 'latin1');
  b.write(calling, 26, 16, 'latin1');
  return b;
}

/** Byte offset of the first item of `type` in an A-ASSOCIATE-RQ (or of a user-information sub-item). */
function offsetOf(b: Buffer, type: number, within?: number): number {
  let pos = within === undefined ? 74 : offsetOf(b, within) + 4;
  const end = within === undefined ? b.length : pos + b.readUInt16BE(pos - 2);
  while (pos + 4 <= end) {
    if (b[pos] === type) return pos;
    pos += 4 + b.readUInt16BE(pos + 2);
  }
  throw new Error(`no item 0x${type.toString(16)}`);
}

function fdCount(): number {
  return readdirSync('/proc/self/fd').length;
}

async function until(what: string, ok: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Every file under dir (relative paths), sorted. */
async function listing(dir: string): Promise<string[]> {
  return (await readdir(dir, { recursive: true })).map(String).sort();
}

/**
 * Implicit-LE data set whose (0008,1115)-like sequence nests `depth` levels deep, undefined lengths
 * throughout (items and sequences closed by delimiters), with the SOP class and instance first.
 */
function nestedDataSet(sopInstanceUid: string, depth: number): Buffer {
  const el = (g: number, e: number, value: Buffer): Buffer => {
    const v = value.length % 2 ? Buffer.concat([value, Buffer.from([0])]) : value;
    const h = Buffer.alloc(8);
    h.writeUInt16LE(g, 0);
    h.writeUInt16LE(e, 2);
    h.writeUInt32LE(v.length, 4);
    return Buffer.concat([h, v]);
  };
  const tag = (g: number, e: number, len: number): Buffer => {
    const h = Buffer.alloc(8);
    h.writeUInt16LE(g, 0);
    h.writeUInt16LE(e, 2);
    h.writeUInt32LE(len >>> 0, 4);
    return h;
  };
  const open = Buffer.concat([tag(0x0008, 0x1115, 0xffffffff), tag(0xfffe, 0xe000, 0xffffffff)]);
  const close = Buffer.concat([tag(0xfffe, 0xe00d, 0), tag(0xfffe, 0xe0dd, 0)]);
  return Buffer.concat([
    el(0x0008, 0x0016, Buffer.from(CT_IMAGE, 'latin1')),
    el(0x0008, 0x0018, Buffer.from(sopInstanceUid, 'latin1')),
    Buffer.concat(Array.from({ length: depth }, () => open)),
    el(0x0010, 0x0020, Buffer.from('DEEP', 'latin1')),
    Buffer.concat(Array.from({ length: depth }, () => close)),
  ]);
}

// Both listeners answer as PS3.8's acceptor: the forward one (a plaintext modality calling, the archive
// behind over mutual TLS) and the return one (the archive calling over mutual TLS, a plaintext receiver
// behind). `archive` is the far end in both: the peer the proxy relays to.
for (const listener of ['forward', 'return'] as const)
  describe(`hostile-input corpus at the ${listener} listener`, { timeout: 180_000 }, () => {
    const hasher = new InlineHasher();
    let pki: Pki;
    let archive: AcceptingArchive;
    let ledgerDir: string;
    let writer: LedgerWriter;
    let proxy: ProxyUnderTest;

    before(async () => {
      pki = await standardPki();
      archive = await startAcceptingArchive(
        listener === 'forward' ? { ca: pki.ca.cert, cert: pki.archive.cert, key: pki.archive.key } : null,
      );
      ledgerDir = await mkdtemp(join(tmpdir(), 'dimse-hostile-ledger-'));
      writer = await LedgerWriter.open({
        dir: ledgerDir,
        fsync: 'batch',
        fsyncIntervalMs: 20,
        rotateMaxBytes: 64 * 1024 * 1024,
        rotateDaily: false,
        checkpointIntervalMs: 60_000,
        signingKeyPem: null,
      });
      const limits = `{ associationRequestTimeout: 500ms, idleTimeout: 10s, maxPduLength: ${CEILING} }`;
      if (listener === 'forward') {
        proxy = await startProxy({
          archivePort: archive.port,
          pki,
          ledger: { sink: writer, onFailure: 'abort', hasher },
          peers: '  SCU: { addresses: [127.0.0.1], services: [echo, store] }',
          limits,
        });
        side = { calling: 'SCU', called: 'DICOM_PROXY', connect: () => RawScu.connect(proxy.port) };
      } else {
        await writeProxyServerCert(pki);
        proxy = await startProxy({
          archivePort: 9, // the forward path is not used here
          pki,
          ledger: { sink: writer, onFailure: 'abort', hasher },
          peers: `  WS: { addresses: [127.0.0.1], services: [echo, store], receiver: { host: 127.0.0.1, port: ${archive.port} } }`,
          limits,
          extra: [
            'returnListener:',
            '  host: 127.0.0.1',
            '  port: 0',
            `  tls: { ca: ${pki.files.ca}, cert: ${pki.files['proxy-server']}, key: ${pki.files['proxy-server.key']}, handshakeTimeout: 3s }`,
            '  callers:',
            '    - { aeTitles: [ARCHIVE], identity: { dns: archive.local } }',
          ].join('\n'),
        });
        side = {
          calling: 'ARCHIVE',
          called: 'WS',
          connect: () =>
            RawScu.connectTls(proxy.returnPort, {
              ca: pki.ca.cert,
              cert: pki.archive.cert,
              key: pki.archive.key,
              servername: 'proxy.local',
            }),
        };
      }
    });
    after(async () => {
      await proxy?.close();
      archive?.close();
      await writer?.close();
      await hasher.close();
      if (ledgerDir) await rm(ledgerDir, { recursive: true, force: true });
      await removePki(pki);
    });

    // After every case: nothing left live, and the daemon serves a valid association.
    afterEach(async () => {
      await until('no association live', () => proxy.server.liveAssociations === 0);
      const scu = await side.connect();
      try {
        scu.send(rq());
        assert.equal((await scu.next())?.type, 0x02, 'a valid association is accepted');
        scu.send(commandPdu(1, { ...ECHO_RQ, messageId: 77 }));
        const rsp = (await scu.next()) as Extract<Pdu, { type: 0x04 }>;
        const cmd = decodeCommand(rsp.pdvs[0]?.value as Buffer);
        assert.deepEqual([cmd.commandField, cmd.messageIdBeingRespondedTo, cmd.status], [0x8030, 77, 0]);
        scu.send(RELEASE_RQ);
        assert.equal((await scu.next())?.type, 0x06);
      } finally {
        scu.destroy();
      }
      await until('no association live after the check', () => proxy.server.liveAssociations === 0);
    });

    /** Send `bytes` on a new connection; every PDU the proxy sends until it closes the connection. */
    async function answers(bytes: Buffer | Buffer[], timeoutMs = 5000): Promise<Pdu[]> {
      const scu = await side.connect();
      try {
        for (const b of Array.isArray(bytes) ? bytes : [bytes]) scu.send(b);
        return await drain(scu, timeoutMs);
      } finally {
        scu.destroy();
      }
    }

    async function drain(scu: RawScu, timeoutMs = 5000): Promise<Pdu[]> {
      const out: Pdu[] = [];
      for (;;) {
        const pdu = await scu.next(timeoutMs);
        if (pdu === null) return out;
        out.push(pdu);
      }
    }

    /** A new association, established (the AC read). */
    async function established(): Promise<RawScu> {
      const scu = await side.connect();
      scu.send(rq());
      const ac = await scu.next();
      assert.equal(ac?.type, 0x02);
      return scu;
    }

    /** Send `bytes` on an established association; what the proxy sends until it closes. */
    async function afterAc(bytes: Buffer | Buffer[]): Promise<{ answers: Pdu[]; archiveAborts: number[][] }> {
      const aborts = archive.aborts.length;
      const scu = await established();
      try {
        for (const b of Array.isArray(bytes) ? bytes : [bytes]) scu.send(b);
        const out = await drain(scu);
        await until('association ended', () => proxy.server.liveAssociations === 0);
        return { answers: out, archiveAborts: archive.aborts.slice(aborts) };
      } finally {
        scu.destroy();
      }
    }

    // ------------------------------------------------------------------------- huge declared lengths

    describe('huge declared PDU lengths', () => {
      test('P-DATA-TF of length 0xFFFFFFFF on a new connection: A-ABORT 2/2 (unexpected in Sta2), nothing buffered', async () => {
        assert.deepEqual(await answers(rawPdu(0x04, Buffer.alloc(0), 0xffffffff)), [ABORT(2, 2)]);
      });

      test('P-DATA-TF of length 0xFFFFFFFF on an established association: A-ABORT 2/6, the archive aborted', async () => {
        const r = await afterAc(rawPdu(0x04, pdv(1, 0x03, Buffer.alloc(16)), 0xffffffff));
        assert.deepEqual(r.answers, [ABORT(2, 6)]);
        await until('archive aborted', () => archive.aborts.length > 0);
      });

      test('A-ASSOCIATE-RQ of declared length 2^31: A-ABORT 2/6 at once, before any body byte', async () => {
        const bytes = rq();
        bytes.writeUInt32BE(0x80000000, 2);
        assert.deepEqual(await answers(bytes.subarray(0, 6)), [ABORT(2, 6)]);
      });

      test('A-ASSOCIATE-RQ of declared length 0xFFFFFFFF with its body: A-ABORT 2/6', async () => {
        const bytes = rq();
        bytes.writeUInt32BE(0xffffffff, 2);
        assert.deepEqual(await answers(bytes), [ABORT(2, 6)]);
      });
    });

    // ------------------------------------------------------------------------- PDV lengths

    describe('PDV length under- and overflow (established association)', () => {
      const cmd = encodeCommand(ECHO_RQ);

      test('PDV item length 0: A-ABORT 2/6', async () => {
        const r = await afterAc(rawPdu(0x04, pdv(1, 0x03, Buffer.alloc(2), 0)));
        assert.deepEqual(r.answers, [ABORT(2, 6)]);
      });

      test('PDV item length 1: A-ABORT 2/6', async () => {
        const r = await afterAc(rawPdu(0x04, pdv(1, 0x03, Buffer.alloc(2), 1)));
        assert.deepEqual(r.answers, [ABORT(2, 6)]);
      });

      test('PDV item length larger than the PDU (command PDV): A-ABORT 2/6, nothing reaches the archive', async () => {
        const before = archive.commands.length;
        const r = await afterAc(rawPdu(0x04, pdv(1, 0x03, cmd, cmd.length + 100)));
        assert.deepEqual(r.answers, [ABORT(2, 6)]);
        assert.equal(archive.commands.length, before);
      });

      test('PDV item length larger than the PDU (data PDV): A-ABORT 2/6', async () => {
        const r = await afterAc(rawPdu(0x04, pdv(3, 0x02, Buffer.alloc(40), 0x7fffffff)));
        assert.deepEqual(r.answers, [ABORT(2, 6)]);
      });

      test('PDVs summing to less than the PDU length (4 stray bytes after the last PDV): A-ABORT 2/6', async () => {
        const body = Buffer.concat([pdv(1, 0x03, cmd), Buffer.from([0, 0, 0, 9])]);
        const r = await afterAc(rawPdu(0x04, body));
        assert.deepEqual(r.answers, [ABORT(2, 6)]);
      });

      test('PDVs summing to more than the PDU length (second PDV overruns it): A-ABORT 2/6', async () => {
        const body = Buffer.concat([pdv(1, 0x01, cmd.subarray(0, 10)), pdv(1, 0x03, cmd.subarray(10), 500)]);
        const r = await afterAc(rawPdu(0x04, body));
        assert.deepEqual(r.answers, [ABORT(2, 6)]);
      });
    });

    // ------------------------------------------------------------------------- max PDU near 2^32

    describe('maximum-length sub-item near 2^32', () => {
      for (const value of [0xffffffff, 0xfffffffe, 0x80000000, 0]) {
        test(`max length ${value}: accepted; the archive is offered the proxy's ceiling ${CEILING}`, async () => {
          const before = archive.requests.length;
          const scu = await side.connect();
          try {
            scu.send(rq(side.calling, side.called, value));
            const ac = (await scu.next()) as AssociatePdu;
            assert.equal(ac.type, 0x02);
            const forwarded = archive.requests[before] as AssociatePdu;
            const maxOf = (p: AssociatePdu): number | undefined => {
              for (const i of p.items) {
                if (i.kind !== 'user-information') continue;
                for (const s of i.subItems) if (s.kind === 'max-length') return s.maxLength;
              }
              return undefined;
            };
            assert.equal(maxOf(forwarded), CEILING, 'what the archive receives');
            assert.equal(maxOf(ac), CEILING, 'what the modality is told it may send');
            // The proxy holds the modality to it: one byte over is A-ABORT 2/6.
            scu.send(rawPdu(0x04, pdv(3, 0x00, Buffer.alloc(CEILING + 1 - 6))));
            assert.deepEqual(await drain(scu), [ABORT(2, 6)]);
          } finally {
            scu.destroy();
          }
        });
      }
    });

    // ------------------------------------------------------------------------- truncated / inconsistent items

    describe('truncated and inconsistent items in the A-ASSOCIATE-RQ', () => {
      test('presentation context item length beyond the PDU: A-ABORT 2/6', async () => {
        const b = rq();
        const at = offsetOf(b, 0x20);
        b.writeUInt16BE(0xfff0, at + 2);
        assert.deepEqual(await answers(b), [ABORT(2, 6)]);
      });

      test('user-information item length beyond the PDU: A-ABORT 2/6', async () => {
        const b = rq();
        b.writeUInt16BE(b.readUInt16BE(offsetOf(b, 0x50) + 2) + 1, offsetOf(b, 0x50) + 2);
        assert.deepEqual(await answers(b), [ABORT(2, 6)]);
      });

      test('max-length sub-item of length 3: A-ABORT 2/6', async () => {
        const b = rq();
        b.writeUInt16BE(3, offsetOf(b, 0x51, 0x50) + 2);
        assert.deepEqual(await answers(b), [ABORT(2, 6)]);
      });

      test('implementation class UID sub-item length beyond the user-information item: A-ABORT 2/6', async () => {
        const b = rq();
        b.writeUInt16BE(200, offsetOf(b, 0x52, 0x50) + 2);
        assert.deepEqual(await answers(b), [ABORT(2, 6)]);
      });

      test('an A-ASSOCIATE-RQ cut short and the connection left open: closed at ARTIM, no answer', async () => {
        const started = Date.now();
        assert.deepEqual(await answers(rq().subarray(0, 40)), []);
        assert.ok(Date.now() - started >= 450, 'closed by ARTIM (500 ms), not before');
      });
    });

    // ------------------------------------------------------------------------- zero PDVs

    describe('P-DATA-TF with zero PDVs (PDU length 0)', () => {
      test('on a new connection: A-ABORT 2/2', async () => {
        assert.deepEqual(await answers(rawPdu(0x04, Buffer.alloc(0))), [ABORT(2, 2)]);
      });

      test('on an established association: A-ABORT 2/6, the archive aborted', async () => {
        const r = await afterAc(rawPdu(0x04, Buffer.alloc(0)));
        assert.deepEqual(r.answers, [ABORT(2, 6)]);
      });
    });

    // ------------------------------------------------------------------------- out of sequence

    describe('out-of-sequence PDUs', () => {
      test('a second A-ASSOCIATE-RQ after the AC: A-ABORT 2/2 to the modality, A-ABORT 2/0 to the archive', async () => {
        const r = await afterAc(rq());
        assert.deepEqual(r.answers, [ABORT(2, 2)]);
        await until('archive aborted', () => archive.aborts.length > 0);
        assert.deepEqual(archive.aborts.at(-1), [2, 0]);
      });

      test('an A-ASSOCIATE-AC from the modality on a new connection: A-ABORT 2/2', async () => {
        const ac = decodePdu(rq()) as AssociatePdu;
        assert.deepEqual(await answers(encodePdu({ ...ac, type: 0x02 })), [ABORT(2, 2)]);
      });

      test('an A-ASSOCIATE-AC from the modality once established: A-ABORT 2/2, A-ABORT 2/0 to the archive', async () => {
        const ac = decodePdu(rq()) as AssociatePdu;
        const aborts = archive.aborts.length;
        const r = await afterAc(encodePdu({ ...ac, type: 0x02 }));
        assert.deepEqual(r.answers, [ABORT(2, 2)]);
        await until('archive aborted', () => archive.aborts.length > aborts);
        assert.deepEqual(archive.aborts.at(-1), [2, 0]);
      });

      test('an A-RELEASE-RP nobody asked for, once established: A-ABORT 2/2', async () => {
        const r = await afterAc(Buffer.from([0x06, 0, 0, 0, 0, 4, 0, 0, 0, 0]));
        assert.deepEqual(r.answers, [ABORT(2, 2)]);
      });

      test('P-DATA-TF after the modality asked for release (Sta8 on its leg): A-ABORT 2/2 or the release completes first', async () => {
        const r = await afterAc([RELEASE_RQ, commandPdu(1, ECHO_RQ)]);
        // The archive answers the release at once; whichever the proxy sees first decides: either the
        // A-RELEASE-RP (the association is over, the late P-DATA is Sta13's to ignore) or AA-8's A-ABORT.
        const types = r.answers.map((p) => p.type);
        assert.ok(
          JSON.stringify(r.answers) === JSON.stringify([ABORT(2, 2)]) || JSON.stringify(types) === '[6]',
          JSON.stringify(r.answers),
        );
      });
    });

    // ------------------------------------------------------------------------- paths and shell metacharacters

    describe('AE titles and UIDs that are paths or carry shell metacharacters', () => {
      let before: string[];
      let cwdBefore: string[];
      test.beforeEach(async () => {
        before = await listing(ledgerDir);
        cwdBefore = (await readdir('.')).sort();
      });
      test.afterEach(async () => {
        assert.deepEqual(await listing(ledgerDir), before, 'nothing created in the ledger directory');
        assert.deepEqual((await readdir('.')).sort(), cwdBefore, 'nothing created in the working directory');
      });

      for (const calling of ['../../etc/passwd', ';rm -rf /', '$(id)', '`id`', '|cat /etc/shad']) {
        test(`calling AE ${JSON.stringify(calling)}: A-ASSOCIATE-RJ 1/1/3 (not a configured peer)`, async () => {
          assert.deepEqual(await answers(rqWithRawTitles(calling, side.called)), [
            { type: 0x03, result: 1, source: 1, reason: 3 },
          ]);
        });
      }

      for (const called of ['../../etc/passwd', ';rm -rf /', '$(id)', '`id`']) {
        test(`called AE ${JSON.stringify(called)}: A-ASSOCIATE-RJ 1/1/7 (no route)`, async () => {
          assert.deepEqual(await answers(rqWithRawTitles(side.calling, called)), [
            { type: 0x03, result: 1, source: 1, reason: 7 },
          ]);
        });
      }

      test('an AE title with a backslash (not an AE character, PS3.5 6.2): A-ABORT 2/6', async () => {
        assert.deepEqual(await answers(rqWithRawTitles('..\\..\\win', side.called)), [ABORT(2, 6)]);
      });

      test('an abstract syntax UID that is a path: A-ABORT 2/6 (a UID is digits and dots)', async () => {
        const b = associateRq(side.calling, side.called, [{ id: 1, abstractSyntax: VERIFICATION }]);
        const at = b.indexOf(Buffer.from(VERIFICATION, 'latin1'), 74);
        const bad = Buffer.from('../../etc/passw/', 'latin1'); // as long as the Verification UID
        bad.copy(b, at);
        assert.deepEqual(await answers(b), [ABORT(2, 6)]);
      });

      for (const uid of ['../../etc/passwd', '$(touch pwned)', ';rm -rf /;']) {
        test(`a C-STORE whose SOP Instance UID is ${JSON.stringify(uid)}: relayed as bytes, recorded, never a path`, async () => {
          const stores = archive.stores.length;
          const scu = await established();
          try {
            const data = nestedDataSet(uid, 1);
            scu.send(
              commandPdu(3, {
                commandField: 0x0001,
                messageId: 5,
                affectedSopClassUid: CT_IMAGE,
                affectedSopInstanceUid: uid,
                priority: 0,
                commandDataSetType: 0x0000,
              }),
            );
            scu.send(pdata(3, false, true, data));
            const rsp = (await scu.next()) as Extract<Pdu, { type: 0x04 }>;
            const cmd = decodeCommand(rsp.pdvs[0]?.value as Buffer);
            assert.deepEqual([cmd.commandField, cmd.status, cmd.affectedSopInstanceUid], [0x8001, 0, uid]);
            assert.equal(archive.stores[stores]?.sopInstanceUid, uid);
            assert.equal(archive.stores[stores]?.sha256, createHash('sha256').update(data).digest('hex'));
            scu.send(RELEASE_RQ);
            assert.equal((await scu.next())?.type, 0x06);
          } finally {
            scu.destroy();
          }
          await until('association ended', () => proxy.server.liveAssociations === 0);
        });
      }
    });

    // ------------------------------------------------------------------------- deep nesting

    test('a C-STORE data set nested 20000 sequences deep: relayed and hashed unparsed, success relayed, ledger record matches', async () => {
      const uid = '1.2.826.0.1.3680043.10.1461.88.1';
      const data = nestedDataSet(uid, 20000);
      const sha = createHash('sha256').update(data).digest('hex');
      const stores = archive.stores.length;
      const scu = await established();
      try {
        scu.send(
          commandPdu(3, {
            commandField: 0x0001,
            messageId: 6,
            affectedSopClassUid: CT_IMAGE,
            affectedSopInstanceUid: uid,
            priority: 0,
            commandDataSetType: 0x0000,
          }),
        );
        // Fragments within the 16384 the archive (as the proxy told it) accepts.
        const step = 16000;
        for (let off = 0; off < data.length; off += step) {
          const end = Math.min(data.length, off + step);
          scu.send(pdata(3, false, end === data.length, data.subarray(off, end)));
        }
        const rsp = (await scu.next(15000)) as Extract<Pdu, { type: 0x04 }>;
        const cmd = decodeCommand(rsp.pdvs[0]?.value as Buffer);
        assert.deepEqual([cmd.commandField, cmd.status], [0x8001, 0]);
        assert.deepEqual(archive.stores[stores], { sopInstanceUid: uid, sha256: sha, bytes: data.length });
        scu.send(RELEASE_RQ);
        assert.equal((await scu.next())?.type, 0x06);
      } finally {
        scu.destroy();
      }
      // The ledger's record for it carries the same SHA-256 (written within the batch interval).
      await until('ledger record', () => proxy.server.liveAssociations === 0);
      const deadline = Date.now() + 5000;
      let found = false;
      while (!found && Date.now() < deadline) {
        for (const f of await readdir(ledgerDir)) {
          if (!f.endsWith('.jsonl') && !f.includes('ledger-')) continue;
          const text = await readFile(join(ledgerDir, f), 'utf8').catch(() => '');
          if (text.includes(sha) && text.includes(uid)) found = true;
        }
        if (!found) await new Promise((r) => setTimeout(r, 20));
      }
      assert.ok(found, `a ledger record with sha256 ${sha}`);
    });

    // ------------------------------------------------------------------------- storms

    test('500 rejected associations in a row: each A-ASSOCIATE-RJ 1/1/3, file descriptors back to baseline', async () => {
      // Warm up (lazy handles of the first connection), then the baseline.
      assert.deepEqual(await answers(rq('NOBODY')), [{ type: 0x03, result: 1, source: 1, reason: 3 }]);
      await until('no association live', () => proxy.server.liveAssociations === 0);
      const baseline = fdCount();
      const refusedBefore = (proxy.events['association-refused'] ?? []).length;
      const bad = rq('NOBODY');
      for (let i = 0; i < 500; i++) {
        const scu = await side.connect();
        try {
          scu.send(bad);
          assert.deepEqual(await scu.next(), { type: 0x03, result: 1, source: 1, reason: 3 }, `#${i}`);
        } finally {
          scu.destroy();
        }
      }
      assert.equal((proxy.events['association-refused'] ?? []).length - refusedBefore, 500);
      await until(`file descriptors back to ${baseline}`, () => fdCount() <= baseline, 10000);
      assert.equal(proxy.server.liveAssociations, 0);
    });

    test('500 associations aborted by a bad PDU in a row: file descriptors back to baseline', async () => {
      const baseline = fdCount();
      const bad = rawPdu(0x04, Buffer.alloc(0), 0xffffffff);
      for (let i = 0; i < 500; i++) {
        const scu = await side.connect();
        try {
          scu.send(bad);
          assert.deepEqual(await scu.next(), ABORT(2, 2), `#${i}`);
        } finally {
          scu.destroy();
        }
      }
      await until(`file descriptors back to ${baseline}`, () => fdCount() <= baseline, 10000);
    });
  });
