// Mutation fuzzer against a live proxy (in-process ProxyServer, a real mutual-TLS archive behind it).
//
// Each iteration takes a valid session transcript (A-ASSOCIATE-RQ, C-ECHO-RQ, C-STORE-RQ and its data set,
// A-RELEASE-RQ), mutates it (bit flips, boundary bytes, length fields set to boundary values, truncation,
// PDU duplication and reordering, garbage), sends it over a fresh connection in randomly split writes and
// reads until the proxy closes or a bound. Invariants:
//   - every byte the proxy sends is a whole, valid PDU (decodePdu), of a type an acceptor may send, with
//     A-ASSOCIATE-RJ and A-ABORT fields within PS3.8's values, and nothing but A-ABORT (Sta13's AA-7)
//     after an RJ or an A-ABORT;
//   - no uncaught exception or unhandled rejection, no INTERNAL protocol error (a defect of the relay);
//   - no association left live once the modality has gone (server.liveAssociations back to 0);
//   - after the run, a valid association still gets a C-ECHO success.
// An input that breaks one is written to test/fixtures/fuzz/<sha256>.bin and the test fails naming it and
// the seed; every fixture there is replayed first, on every run.
//
// FUZZ_SECONDS: duration of the mutation run (default 3; .ci/run sets 60). FUZZ_SEED: the seed (a 32-bit
// unsigned integer, printed at the start) to reproduce a run; FUZZ_ITERATIONS caps the iterations.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PduFramer } from '../../src/pdu/framer.js';
import { decodePdu } from '../../src/pdu/codec.js';
import type { Pdu } from '../../src/pdu/types.js';
import { decodeCommand } from '../../src/dimse/command.js';
import { RawScu, associateRq, commandPdu, pdata, CT_IMAGE, VERIFICATION } from '../helpers/raw.js';
import { startAcceptingArchive, type AcceptingArchive } from '../helpers/accepting-archive.js';
import { removePki, standardPki, startProxy, type ProxyUnderTest } from '../helpers/proxy.js';

type Pki = Awaited<ReturnType<typeof standardPki>>;

const FIXTURES = join(dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'fuzz');
const SECONDS = Number(process.env.FUZZ_SECONDS ?? 3);
const SEED = process.env.FUZZ_SEED !== undefined ? Number(process.env.FUZZ_SEED) >>> 0 : randomSeed();
const MAX_ITERATIONS = Number(process.env.FUZZ_ITERATIONS ?? Number.MAX_SAFE_INTEGER);
/** Quiet time after the last write (and the last byte read) before the modality gives up and closes. */
const QUIET_MS = 100;
/** Hard bound on one connection. */
const CONNECTION_MS = 3000;
/** Bound on the association ending once the modality has closed. */
const SETTLE_MS = 5000;
const ARTIM_MS = 400;

function randomSeed(): number {
  return (Date.now() ^ (process.pid << 16)) >>> 0;
}

/** mulberry32: small, fast, reproducible. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

class Rng {
  constructor(readonly next: () => number) {}
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)] as T;
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
}

// ------------------------------------------------------------------------------------------- transcript

const STORE_UID = '1.2.826.0.1.3680043.10.1461.77.1';

/**
 * A small implicit-LE data set: SOP Class/Instance UID, an undefined-length sequence, Patient's Name and
 * ID, Study Instance UID, a few pixel bytes — what the data set prefix reader (dicom/prefix.ts) walks, so
 * the mutations reach it too.
 */
function smallDataSet(): Buffer {
  const el = (group: number, element: number, value: Buffer): Buffer => {
    const padded = value.length % 2 === 1 ? Buffer.concat([value, Buffer.from([0])]) : value;
    const h = Buffer.alloc(8);
    h.writeUInt16LE(group, 0);
    h.writeUInt16LE(element, 2);
    h.writeUInt32LE(padded.length, 4);
    return Buffer.concat([h, padded]);
  };
  return Buffer.concat([
    el(0x0008, 0x0016, Buffer.from(CT_IMAGE, 'latin1')),
    el(0x0008, 0x0018, Buffer.from(STORE_UID, 'latin1')),
    // (0008,1140) Referenced Image Sequence, undefined length: one undefined-length item.
    Buffer.from([
      0x08, 0x00, 0x40, 0x11, 0xff, 0xff, 0xff, 0xff, 0xfe, 0xff, 0x00, 0xe0, 0xff, 0xff, 0xff, 0xff,
    ]),
    el(0x0008, 0x1155, Buffer.from(STORE_UID, 'latin1')),
    Buffer.from([0xfe, 0xff, 0x0d, 0xe0, 0, 0, 0, 0, 0xfe, 0xff, 0xdd, 0xe0, 0, 0, 0, 0]),
    el(0x0010, 0x0010, Buffer.from('FUZZ^PATIENT', 'latin1')),
    el(0x0010, 0x0020, Buffer.from('FUZZ', 'latin1')),
    el(0x0020, 0x000d, Buffer.from(`${STORE_UID}.9`, 'latin1')),
    el(0x7fe0, 0x0010, Buffer.alloc(64, 0x5a)),
  ]);
}

function transcript(): Buffer[] {
  return [
    associateRq('SCU', 'DICOM_PROXY', [
      { id: 1, abstractSyntax: VERIFICATION },
      { id: 3, abstractSyntax: CT_IMAGE },
    ]),
    commandPdu(1, {
      commandField: 0x0030,
      messageId: 1,
      affectedSopClassUid: VERIFICATION,
      commandDataSetType: 0x0101,
    }),
    commandPdu(3, {
      commandField: 0x0001,
      messageId: 2,
      affectedSopClassUid: CT_IMAGE,
      affectedSopInstanceUid: STORE_UID,
      priority: 0,
      commandDataSetType: 0x0000,
    }),
    pdata(3, false, true, smallDataSet()),
    Buffer.from([0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0]),
  ];
}

// -------------------------------------------------------------------------------------------- mutations

interface LengthField {
  off: number;
  size: 2 | 4;
}

/** Offsets of the length fields in one PDU (as built by transcript(); walks stop at anything odd). */
function lengthFields(pdu: Buffer): LengthField[] {
  const out: LengthField[] = [{ off: 2, size: 4 }];
  const type = pdu[0];
  if (type === 0x04) {
    let pos = 6;
    while (pos + 6 <= pdu.length) {
      out.push({ off: pos, size: 4 });
      pos += 4 + pdu.readUInt32BE(pos);
    }
  } else if (type === 0x01 || type === 0x02) {
    const walk = (start: number, end: number, nested: (t: number) => number | null): void => {
      let pos = start;
      while (pos + 4 <= end) {
        out.push({ off: pos + 2, size: 2 });
        const t = pdu[pos] as number;
        const len = pdu.readUInt16BE(pos + 2);
        const inner = nested(t);
        if (inner !== null) walk(pos + 4 + inner, Math.min(end, pos + 4 + len), () => null);
        pos += 4 + len;
      }
    };
    // Presentation contexts have 4 fixed bytes before their sub-items; user information has none.
    walk(74, pdu.length, (t) => (t === 0x20 || t === 0x21 ? 4 : t === 0x50 ? 0 : null));
    // The max-length sub-item's value is a 4-byte maximum, also worth pushing to its bounds.
    for (let i = 74; i + 8 <= pdu.length; i++) {
      if (pdu[i] === 0x51 && pdu.readUInt16BE(i + 2) === 4) out.push({ off: i + 4, size: 4 });
    }
  }
  return out;
}

const BOUNDARY_BYTES = [0x00, 0x7f, 0x80, 0xff];

function boundaryValues(size: 2 | 4, actual: number): number[] {
  const max = size === 2 ? 0xffff : 0xffffffff;
  const vals = [0, 1, max - 1, max, actual + 1, Math.max(0, actual - 1), actual * 2];
  if (size === 4) vals.push(0x80000000, 0x7fffffff, 0xfffffffe);
  else vals.push(0x8000, 0x7fff);
  return vals.map((v) => Math.min(v, max));
}

type Mutation = (pdus: Buffer[], rng: Rng) => Buffer[];

const MUTATIONS: Record<string, Mutation> = {
  bitflip(pdus, rng) {
    const i = rng.int(pdus.length);
    const b = Buffer.from(pdus[i] as Buffer);
    const off = rng.int(b.length);
    b[off] = (b[off] as number) ^ (1 << rng.int(8));
    return replace(pdus, i, b);
  },
  boundaryByte(pdus, rng) {
    const i = rng.int(pdus.length);
    const b = Buffer.from(pdus[i] as Buffer);
    b[rng.int(b.length)] = rng.pick(BOUNDARY_BYTES);
    return replace(pdus, i, b);
  },
  lengthField(pdus, rng) {
    const i = rng.int(pdus.length);
    const b = Buffer.from(pdus[i] as Buffer);
    const fields = lengthFields(b);
    const f = rng.pick(fields);
    if (f.off + f.size > b.length) return pdus;
    const actual = f.size === 2 ? b.readUInt16BE(f.off) : b.readUInt32BE(f.off);
    const v = rng.pick(boundaryValues(f.size, actual));
    if (f.size === 2) b.writeUInt16BE(v, f.off);
    else b.writeUInt32BE(v, f.off);
    return replace(pdus, i, b);
  },
  truncatePdu(pdus, rng) {
    const i = rng.int(pdus.length);
    const b = pdus[i] as Buffer;
    return replace(pdus, i, b.subarray(0, rng.int(b.length)));
  },
  dropPdu(pdus, rng) {
    const i = rng.int(pdus.length);
    return pdus.filter((_, j) => j !== i);
  },
  duplicatePdu(pdus, rng) {
    const i = rng.int(pdus.length);
    const out = [...pdus];
    out.splice(rng.int(pdus.length + 1), 0, pdus[i] as Buffer);
    return out;
  },
  swapPdus(pdus, rng) {
    const out = [...pdus];
    const i = rng.int(out.length);
    const j = rng.int(out.length);
    [out[i], out[j]] = [out[j] as Buffer, out[i] as Buffer];
    return out;
  },
  garbage(pdus, rng) {
    const junk = Buffer.alloc(1 + rng.int(rng.chance(0.2) ? 2048 : 24));
    for (let k = 0; k < junk.length; k++) junk[k] = rng.chance(0.3) ? rng.pick(BOUNDARY_BYTES) : rng.int(256);
    // A plausible PDU header in front (a known type) makes the junk reach the decoders.
    if (rng.chance(0.5) && junk.length >= 6) {
      junk[0] = 1 + rng.int(7);
      junk.writeUInt32BE(rng.chance(0.5) ? junk.length - 6 : rng.int(0x10000), 2);
    }
    const out = [...pdus];
    out.splice(rng.int(out.length + 1), 0, junk);
    return out;
  },
  garbageInside(pdus, rng) {
    const i = rng.int(pdus.length);
    const b = pdus[i] as Buffer;
    const junk = Buffer.alloc(1 + rng.int(8));
    for (let k = 0; k < junk.length; k++) junk[k] = rng.int(256);
    const at = rng.int(b.length + 1);
    return replace(pdus, i, Buffer.concat([b.subarray(0, at), junk, b.subarray(at)]));
  },
};
const MUTATION_NAMES = Object.keys(MUTATIONS);

function replace(pdus: Buffer[], i: number, b: Buffer): Buffer[] {
  const out = [...pdus];
  out[i] = b;
  return out;
}

interface Case {
  bytes: Buffer;
  /** Write boundaries (offsets into bytes). */
  cuts: number[];
  applied: string[];
}

function mutate(rng: Rng): Case {
  let pdus = transcript();
  const applied: string[] = [];
  const n = 1 + rng.int(rng.chance(0.2) ? 6 : 3);
  for (let k = 0; k < n && pdus.length > 0; k++) {
    const name = rng.pick(MUTATION_NAMES);
    pdus = (MUTATIONS[name] as Mutation)(pdus, rng);
    applied.push(name);
  }
  let bytes = Buffer.concat(pdus);
  if (rng.chance(0.1)) {
    bytes = bytes.subarray(0, rng.int(bytes.length + 1)); // the stream cut anywhere
    applied.push('truncateStream');
  }
  const cuts: number[] = [];
  if (rng.chance(0.6) && bytes.length > 1) {
    const k = 1 + rng.int(6);
    for (let c = 0; c < k; c++) cuts.push(1 + rng.int(bytes.length - 1));
    cuts.sort((a, b) => a - b);
  }
  return { bytes, cuts, applied };
}

// ------------------------------------------------------------------------------------------- invariants

const FROM_ACCEPTOR = new Set([0x02, 0x03, 0x04, 0x06, 0x07]);
const RJ_REASONS: Record<number, number[]> = { 1: [1, 2, 3, 7], 2: [1, 2], 3: [1, 2] };
const ABORT_REASONS = [0, 1, 2, 4, 5, 6];

/** Why what the proxy sent breaks the invariants, or null. */
function checkAnswer(received: Buffer): string | null {
  const framer = new PduFramer({ maxPDataLength: 0xffffffff, maxOtherLength: 0xffffffff });
  let raws: Buffer[];
  try {
    raws = framer.push(received);
  } catch (err) {
    return `unframeable bytes from the proxy: ${(err as Error).message}`;
  }
  if (framer.pendingBytes > 0) return `the proxy sent ${framer.pendingBytes} bytes of an incomplete PDU`;
  let final: number | null = null;
  const types = raws.map((r) => r[0]).join(',');
  for (const [i, raw] of raws.entries()) {
    // After an A-ASSOCIATE-RJ or A-ABORT the proxy is in Sta13: only AA-7's A-ABORT may follow (an
    // A-ASSOCIATE-RQ or an unrecognized PDU there, PS3.8 Table 9-10).
    if (final !== null && raw[0] !== 0x07) {
      return `PDU #${i} (type ${raw[0]}) after the proxy's final PDU type ${final} (sent: ${types})`;
    }
    let pdu: Pdu;
    try {
      pdu = decodePdu(raw);
    } catch (err) {
      return `PDU #${i} from the proxy does not decode: ${(err as Error).message}`;
    }
    if (!FROM_ACCEPTOR.has(pdu.type)) return `PDU #${i}: type ${pdu.type} is not one an acceptor sends here`;
    if (pdu.type === 0x03) {
      if (!(RJ_REASONS[pdu.source] ?? []).includes(pdu.reason)) {
        return `A-ASSOCIATE-RJ ${pdu.result}/${pdu.source}/${pdu.reason} outside PS3.8 Table 9-21`;
      }
      final = 3;
    } else if (pdu.type === 0x07) {
      if (pdu.source === 1 || (pdu.source === 2 && !ABORT_REASONS.includes(pdu.reason))) {
        return `A-ABORT ${pdu.source}/${pdu.reason} outside PS3.8 Table 9-26`;
      }
      final = 7;
    } else if (pdu.type === 0x04) {
      for (const pdv of pdu.pdvs) {
        if (!pdv.command || !pdv.last) continue;
        try {
          decodeCommand(pdv.value);
        } catch (err) {
          return `a command set relayed to the modality does not decode: ${(err as Error).message}`;
        }
      }
    }
  }
  return null;
}

/** End of the first PDU as its header frames it (the whole stream when that is shorter). */
function firstPduEnd(bytes: Buffer): number {
  if (bytes.length < 6) return bytes.length;
  return Math.min(bytes.length, 6 + bytes.readUInt32BE(2));
}

// ------------------------------------------------------------------------------------------------ test

describe('mutation fuzzing against a live proxy', { timeout: 60_000 + SECONDS * 2000 }, () => {
  let pki: Pki;
  let archive: AcceptingArchive;
  let proxy: ProxyUnderTest;
  const crashes: string[] = [];
  const onCrash = (err: unknown): void => {
    crashes.push(err instanceof Error ? (err.stack ?? err.message) : String(err));
  };

  before(async () => {
    process.on('uncaughtException', onCrash);
    process.on('unhandledRejection', onCrash);
    pki = await standardPki();
    archive = await startAcceptingArchive({ ca: pki.ca.cert, cert: pki.archive.cert, key: pki.archive.key });
    proxy = await startProxy({
      archivePort: archive.port,
      pki,
      peers: '  SCU: { addresses: [127.0.0.1], services: [echo, store] }',
      limits: `{ associationRequestTimeout: ${ARTIM_MS}ms, idleTimeout: 2s, maxPduLength: 65536 }`,
    });
  });
  after(async () => {
    await proxy?.close();
    archive?.close();
    await removePki(pki);
    process.off('uncaughtException', onCrash);
    process.off('unhandledRejection', onCrash);
  });

  /**
   * Send one case over a fresh connection; the invariant it broke, or null. Like a real requestor, the
   * first PDU (as its header frames it) goes first and the rest only once the proxy answered it (or a
   * bound passed): sent at once, everything would just meet PS3.8's Sta3 abort.
   */
  async function run(c: Case): Promise<string | null> {
    const internalBefore = internalErrors().length;
    const scu = await RawScu.connect(proxy.port);
    const received: Buffer[] = [];
    const framer = new PduFramer({ maxPDataLength: 0xffffffff, maxOtherLength: 0xffffffff });
    let answered = 0;
    let final = 0;
    let lastActivity = Date.now();
    scu.socket.on('data', (chunk: Buffer) => {
      received.push(chunk);
      lastActivity = Date.now();
      try {
        for (const raw of framer.push(chunk)) {
          answered++;
          if (raw[0] === 0x03 || raw[0] === 0x06 || raw[0] === 0x07) final = Date.now();
        }
      } catch {
        // checkAnswer reports it
      }
    });
    const started = Date.now();
    const first = firstPduEnd(c.bytes);
    const until = async (done: () => boolean): Promise<void> => {
      while (!scu.closed && !done() && Date.now() - started < CONNECTION_MS) {
        await new Promise((r) => setTimeout(r, 2));
      }
    };
    let prev = 0;
    for (const cut of [
      ...new Set([...c.cuts.filter((x) => x < first), first, ...c.cuts, c.bytes.length]),
    ].sort((a, b) => a - b)) {
      if (scu.closed) break;
      if (cut > prev) scu.socket.write(c.bytes.subarray(prev, cut));
      prev = cut;
      lastActivity = Date.now();
      if (cut === first && first < c.bytes.length) {
        await until(() => answered > 0 || Date.now() - lastActivity > ARTIM_MS + 200);
      } else await new Promise((r) => setImmediate(r));
    }
    await until(() => (final > 0 && Date.now() - final > 20) || Date.now() - lastActivity > QUIET_MS);
    const closedByProxy = scu.closed;
    scu.destroy();
    // The modality has gone: the association must end within a bound.
    const settled = Date.now();
    while (proxy.server.liveAssociations > 0 && Date.now() - settled < SETTLE_MS) {
      await new Promise((r) => setTimeout(r, 2));
    }
    if (crashes.length > 0) return `uncaught: ${crashes.join('\n')}`;
    const internal = internalErrors().slice(internalBefore);
    if (internal.length > 0) return `INTERNAL protocol error: ${internal.join('; ')}`;
    if (proxy.server.liveAssociations > 0) {
      return `${proxy.server.liveAssociations} association(s) still live ${SETTLE_MS} ms after the modality closed (closed by proxy: ${closedByProxy})`;
    }
    return checkAnswer(Buffer.concat(received));
  }

  function internalErrors(): string[] {
    return (proxy.events['protocol-error'] ?? []).filter((e) => e.code === 'INTERNAL').map((e) => e.message);
  }

  async function keep(bytes: Buffer): Promise<string> {
    await mkdir(FIXTURES, { recursive: true });
    const file = join(FIXTURES, `${createHash('sha256').update(bytes).digest('hex')}.bin`);
    await writeFile(file, bytes);
    return file;
  }

  async function echoWorks(): Promise<void> {
    const scu = await RawScu.connect(proxy.port);
    try {
      scu.send(associateRq('SCU', 'DICOM_PROXY', [{ id: 1, abstractSyntax: VERIFICATION }]));
      assert.equal((await scu.next())?.type, 0x02, 'a valid association is accepted');
      scu.send(
        commandPdu(1, {
          commandField: 0x0030,
          messageId: 9,
          affectedSopClassUid: VERIFICATION,
          commandDataSetType: 0x0101,
        }),
      );
      const rsp = (await scu.next()) as Extract<Pdu, { type: 0x04 }>;
      const cmd = decodeCommand(rsp.pdvs[0]?.value as Buffer);
      assert.deepEqual([cmd.commandField, cmd.messageIdBeingRespondedTo, cmd.status], [0x8030, 9, 0]);
      scu.send(Buffer.from([0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0]));
      assert.equal((await scu.next())?.type, 0x06);
    } finally {
      scu.destroy();
    }
  }

  test('the unmutated transcript: C-ECHO and C-STORE succeed, the release is answered', async () => {
    const scu = await RawScu.connect(proxy.port);
    try {
      const [rq, ...rest] = transcript();
      scu.send(rq as Buffer);
      assert.equal((await scu.next())?.type, 0x02);
      for (const pdu of rest) scu.send(pdu);
      const types: number[] = [0x02];
      const statuses: number[] = [];
      for (;;) {
        const pdu = await scu.next();
        if (pdu === null) break;
        types.push(pdu.type);
        if (pdu.type === 0x04) statuses.push(decodeCommand(pdu.pdvs[0]?.value as Buffer).status ?? -1);
      }
      assert.deepEqual(types, [0x02, 0x04, 0x04, 0x06]);
      assert.deepEqual(statuses, [0, 0]);
    } finally {
      scu.destroy();
    }
    assert.equal(await run({ bytes: Buffer.concat(transcript()), cuts: [], applied: [] }), null);
  });

  test('every kept fixture (test/fixtures/fuzz/*.bin) replays without breaking an invariant', async (t) => {
    const files = (await readdir(FIXTURES).catch(() => [] as string[]))
      .filter((f) => f.endsWith('.bin'))
      .sort();
    t.diagnostic(`${files.length} fixture(s)`);
    for (const f of files) {
      const bytes = await readFile(join(FIXTURES, f));
      // Once in one write, once in 7-byte writes (the framers' split paths).
      const small: number[] = [];
      for (let k = 7; k < bytes.length; k += 7) small.push(k);
      for (const cuts of [[], small]) {
        const broken = await run({ bytes, cuts, applied: [] });
        assert.equal(broken, null, `fixture ${f} (${cuts.length ? '7-byte writes' : 'one write'})`);
      }
    }
    await echoWorks();
  });

  test(`mutated transcripts for ${SECONDS} s (seed ${SEED})`, async (t) => {
    const rng = new Rng(prng(SEED));
    // Printed before the run so a hang or a crash of the runner still leaves the seed in the log.
    console.log(`# fuzz: FUZZ_SEED=${SEED} FUZZ_SECONDS=${SECONDS}`);
    const deadline = Date.now() + SECONDS * 1000;
    const counts = new Map<string, number>();
    let iterations = 0;
    while (Date.now() < deadline && iterations < MAX_ITERATIONS) {
      const c = mutate(rng);
      iterations++;
      for (const m of c.applied) counts.set(m, (counts.get(m) ?? 0) + 1);
      const broken = await run(c);
      if (broken !== null) {
        const file = await keep(c.bytes);
        assert.fail(
          `iteration ${iterations} (FUZZ_SEED=${SEED}; mutations ${c.applied.join(', ')}; writes cut at ${c.cuts.join(',') || 'none'}) broke an invariant: ${broken}\ninput kept as ${file}`,
        );
      }
    }
    const summary = `fuzz: seed ${SEED}, ${iterations} iterations in ${SECONDS} s; archive saw ${archive.requests.length} associations, ${archive.commands.length} commands, ${archive.stores.length} stores; mutations ${[...counts].map(([k, v]) => `${k}=${v}`).join(' ')}`;
    t.diagnostic(summary);
    console.log(`# ${summary}`);
    assert.ok(iterations > 0);
    assert.equal(proxy.server.liveAssociations, 0);
    await echoWorks();
  });
});
