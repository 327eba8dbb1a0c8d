import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';

import {
  PduError,
  PduType,
  encodeAbort,
  encodePdu,
  encodeReleaseRp,
  encodeReleaseRq,
  type Pdv,
} from '../../src/pdu/index.js';
import { PDataScanner, UnexpectedPduError, type ScannerSink } from '../../src/relay/scanner.js';

const MAX = 16384;
const RUN = { numRuns: 300, interruptAfterTimeLimit: 3000 } as const;

// ------------------------------------------------------------------------------------------------
// Fixtures: each PDU comes with what the sink must observe for it.
// ------------------------------------------------------------------------------------------------

type Observed =
  | { kind: 'stream'; contextId: number; valueLength: number; last: boolean; value: Buffer; dropped: boolean }
  | { kind: 'held'; type: number; pdu: Buffer };

interface Fixture {
  bytes: Buffer;
  expect: Observed;
}

function pdata(pdvs: Pdv[]): Buffer {
  return encodePdu({ type: PduType.PDataTf, pdvs });
}

/** A streamed PDU: exactly one data PDV. */
function dataPdu(contextId: number, value: Buffer, last = false): Fixture {
  return {
    bytes: pdata([{ contextId, command: false, last, value }]),
    expect: { kind: 'stream', contextId, valueLength: value.length, last, value, dropped: false },
  };
}

function heldFixture(bytes: Buffer): Fixture {
  return { bytes, expect: { kind: 'held', type: bytes[0] as number, pdu: bytes } };
}

function commandPdu(contextId: number, value: Buffer, last = true): Fixture {
  return heldFixture(pdata([{ contextId, command: true, last, value }]));
}

function multiPdu(pdvs: Pdv[]): Fixture {
  return heldFixture(pdata(pdvs));
}

const releaseRq = (): Fixture => heldFixture(encodeReleaseRq());
const releaseRp = (): Fixture => heldFixture(encodeReleaseRp());
const abort = (source = 0, reason = 0): Fixture => heldFixture(encodeAbort(source, reason));

function bytesOf(n: number, seed = 0): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed * 7 + 5) & 0xff;
  return b;
}

/** A representative mix: streamed, held P-DATA, release and abort. */
function mixedFixtures(): Fixture[] {
  return [
    commandPdu(1, bytesOf(40, 1)),
    dataPdu(1, bytesOf(30, 2)),
    dataPdu(1, bytesOf(0, 3)),
    dataPdu(3, bytesOf(17, 4), true),
    multiPdu([
      { contextId: 5, command: true, last: true, value: bytesOf(9, 5) },
      { contextId: 5, command: false, last: false, value: bytesOf(7, 6) },
    ]),
    dataPdu(5, bytesOf(1, 7), true),
    releaseRq(),
    releaseRp(),
    abort(2, 6),
  ];
}

function concatFixtures(fixtures: Fixture[]): Buffer {
  return Buffer.concat(fixtures.map((f) => f.bytes));
}

/** Offsets in the concatenation where a PDU starts or the stream ends. */
function boundaries(fixtures: Fixture[]): number[] {
  const out = [0];
  let pos = 0;
  for (const f of fixtures) {
    pos += f.bytes.length;
    out.push(pos);
  }
  return out;
}

function splitAt(buf: Buffer, offsets: readonly number[]): Buffer[] {
  const cuts = [...offsets].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let prev = 0;
  for (const c of cuts) {
    out.push(buf.subarray(prev, c));
    prev = c;
  }
  out.push(buf.subarray(prev));
  return out;
}

function bytewise(buf: Buffer): Buffer[] {
  return [...buf].map((b) => Buffer.from([b]));
}

// ------------------------------------------------------------------------------------------------
// A recording sink: held() lets every PDU pass, either by forwarding it itself (the relay sink when the
// PDU is rewritten or queued) or, with `pass`, by returning true so the scanner forwards it in place.
// ------------------------------------------------------------------------------------------------

type DropRule = (contextId: number, valueLength: number, last: boolean) => boolean;

class Recorder implements ScannerSink {
  /** Every forward() argument, by reference (a socket write keeps the Buffer, never a copy). */
  readonly pieces: Buffer[] = [];
  readonly observed: Observed[] = [];
  onHeld: ((pdu: Buffer, type: number) => void) | null = null;
  onDataStart: ((contextId: number) => void) | null = null;
  onDataEnd: (() => void) | null = null;
  private current: {
    contextId: number;
    valueLength: number;
    last: boolean;
    dropped: boolean;
    parts: Buffer[];
  } | null = null;

  constructor(
    private readonly drop: DropRule = () => false,
    private readonly pass = false,
  ) {}

  forward(bytes: Buffer): void {
    assert.ok(Buffer.isBuffer(bytes));
    this.pieces.push(bytes);
  }

  held(pdu: Buffer, type: number): boolean {
    assert.equal(this.current, null, 'held() inside a streamed PDV');
    assert.equal(pdu[0], type, 'held() type is the PDU type byte');
    this.observed.push({ kind: 'held', type, pdu: Buffer.from(pdu) });
    if (!this.pass) this.forward(pdu);
    this.onHeld?.(pdu, type);
    return this.pass;
  }

  dataStart(contextId: number, valueLength: number, last: boolean): boolean {
    assert.equal(this.current, null, 'dataStart() twice without dataEnd()');
    const dropped = this.drop(contextId, valueLength, last);
    this.current = { contextId, valueLength, last, dropped, parts: [] };
    this.onDataStart?.(contextId);
    return dropped;
  }

  dataBytes(buf: Buffer, start: number, end: number): void {
    const cur = this.current;
    assert.ok(cur !== null, 'dataBytes() outside dataStart()/dataEnd()');
    assert.equal(cur.dropped, false, 'dataBytes() reported for a dropped PDV');
    assert.ok(Number.isInteger(start) && Number.isInteger(end), 'integer range');
    assert.ok(0 <= start && start <= end && end <= buf.length, `range [${start}, ${end}) of ${buf.length}`);
    cur.parts.push(Buffer.from(buf.subarray(start, end)));
  }

  dataEnd(): void {
    const cur = this.current;
    assert.ok(cur !== null, 'dataEnd() without dataStart()');
    const value = Buffer.concat(cur.parts);
    if (!cur.dropped) assert.equal(value.length, cur.valueLength, 'dataBytes() total equals valueLength');
    this.observed.push({
      kind: 'stream',
      contextId: cur.contextId,
      valueLength: cur.valueLength,
      last: cur.last,
      value,
      dropped: cur.dropped,
    });
    this.current = null;
    this.onDataEnd?.();
  }

  get output(): Buffer {
    return Buffer.concat(this.pieces);
  }

  get midStream(): boolean {
    return this.current !== null;
  }
}

function expected(
  fixtures: Fixture[],
  drop: DropRule = () => false,
): { observed: Observed[]; output: Buffer } {
  const observed: Observed[] = [];
  const out: Buffer[] = [];
  for (const f of fixtures) {
    const e = f.expect;
    if (e.kind === 'stream' && drop(e.contextId, e.valueLength, e.last)) {
      observed.push({ ...e, value: Buffer.alloc(0), dropped: true });
    } else {
      observed.push(e);
      out.push(f.bytes);
    }
  }
  return { observed, output: Buffer.concat(out) };
}

function run(chunks: Buffer[], drop?: DropRule, pass = false): Recorder {
  const rec = new Recorder(drop, pass);
  const scanner = new PDataScanner(rec, MAX);
  for (const c of chunks) scanner.feed(c);
  assert.ok(scanner.atBoundary, 'at a boundary after whole PDUs');
  assert.equal(rec.midStream, false);
  return rec;
}

function check(fixtures: Fixture[], chunks: Buffer[], drop?: DropRule, pass = false): Recorder {
  const rec = run(chunks, drop, pass);
  const want = expected(fixtures, drop);
  assert.deepEqual(rec.observed, want.observed);
  assert.ok(rec.output.equals(want.output), 'forwarded bytes equal the input, in order');
  return rec;
}

// ------------------------------------------------------------------------------------------------
// Arbitraries
// ------------------------------------------------------------------------------------------------

const oddId = fc.integer({ min: 0, max: 127 }).map((n) => 2 * n + 1);
const value = fc
  .oneof(
    { weight: 5, arbitrary: fc.uint8Array({ maxLength: 40 }) },
    { weight: 1, arbitrary: fc.uint8Array({ minLength: 200, maxLength: 3000 }) },
  )
  .map((u) => Buffer.from(u));
const pdv: fc.Arbitrary<Pdv> = fc.record(
  { contextId: oddId, command: fc.boolean(), last: fc.boolean(), value },
  { noNullPrototype: true },
);

const fixtureArb: fc.Arbitrary<Fixture> = fc.oneof(
  { weight: 6, arbitrary: fc.tuple(oddId, value, fc.boolean()).map(([c, v, l]) => dataPdu(c, v, l)) },
  { weight: 2, arbitrary: fc.tuple(oddId, value, fc.boolean()).map(([c, v, l]) => commandPdu(c, v, l)) },
  { weight: 2, arbitrary: fc.array(pdv, { minLength: 2, maxLength: 4 }).map(multiPdu) },
  { weight: 1, arbitrary: fc.constantFrom(releaseRq(), releaseRp()) },
  {
    weight: 1,
    arbitrary: fc.tuple(fc.constantFrom(0, 2), fc.integer({ min: 0, max: 6 })).map(([s, r]) => abort(s, r)),
  },
);

/** PDUs plus cut offsets into their concatenation (duplicates give empty chunks). */
const chunked = fc.array(fixtureArb, { minLength: 1, maxLength: 8 }).chain((fixtures) => {
  const total = concatFixtures(fixtures).length;
  return fc.tuple(
    fc.constant(fixtures),
    fc.oneof(
      fc.array(fc.integer({ min: 0, max: total }), { maxLength: 12 }),
      // small chunks, like a slow socket
      fc
        .integer({ min: 1, max: 13 })
        .map((step) => Array.from({ length: Math.ceil(total / step) }, (_, i) => i * step)),
    ),
  );
});

// ------------------------------------------------------------------------------------------------
// Tests
// ------------------------------------------------------------------------------------------------

describe('PDataScanner: streamed and held PDUs', () => {
  test('a single data PDV PDU is streamed: dataStart, value bytes, dataEnd; bytes forwarded unchanged', () => {
    const f = dataPdu(3, bytesOf(100), true);
    const rec = check([f], [Buffer.from(f.bytes)]);
    assert.deepEqual(rec.observed, [
      { kind: 'stream', contextId: 3, valueLength: 100, last: true, value: bytesOf(100), dropped: false },
    ]);
  });

  test('a P-DATA with a command PDV is held whole and not forwarded by the scanner', () => {
    const f = commandPdu(1, bytesOf(20));
    const rec = new Recorder();
    rec.held = (pdu, type): boolean => {
      rec.observed.push({ kind: 'held', type, pdu: Buffer.from(pdu) }); // record only, do not forward
      return false;
    };
    const scanner = new PDataScanner(rec, MAX);
    scanner.feed(Buffer.from(f.bytes));
    assert.deepEqual(rec.observed, [f.expect]);
    assert.equal(rec.pieces.length, 0, 'the scanner forwards nothing of a held PDU');
  });

  test('held PDUs that are not forwarded by the sink leave no trace in the output (split input)', () => {
    const fixtures = mixedFixtures();
    const input = concatFixtures(fixtures);
    for (let i = 0; i <= input.length; i++) {
      const rec = new Recorder();
      let heldCount = 0;
      rec.held = (): boolean => {
        heldCount++;
        return false;
      };
      const scanner = new PDataScanner(rec, MAX);
      for (const c of splitAt(input, [i])) scanner.feed(c);
      const streamed = fixtures.filter((f) => f.expect.kind === 'stream').map((f) => f.bytes);
      assert.ok(rec.output.equals(Buffer.concat(streamed)), `split at ${i}`);
      assert.equal(heldCount, fixtures.length - streamed.length);
    }
  });

  test('several PDVs, A-RELEASE-RQ/RP and A-ABORT are held, each exactly once, with their type', () => {
    const fixtures = [
      multiPdu([
        { contextId: 1, command: false, last: false, value: bytesOf(4) },
        { contextId: 1, command: false, last: true, value: bytesOf(4) },
      ]),
      releaseRq(),
      releaseRp(),
      abort(0, 0),
    ];
    const rec = check(fixtures, [concatFixtures(fixtures)]);
    assert.deepEqual(
      rec.observed.map((o) => (o.kind === 'held' ? o.type : -1)),
      [PduType.PDataTf, PduType.ReleaseRq, PduType.ReleaseRp, PduType.Abort],
    );
  });

  test('a single data PDV that does not fill its PDU is held (PDV length + 4 != PDU length)', () => {
    // P-DATA length 12 with one PDV of length 2 followed by 6 stray bytes: not the streamable shape.
    const bytes = Buffer.from([4, 0, 0, 0, 0, 12, 0, 0, 0, 2, 1, 0, 1, 2, 3, 4, 5, 6]);
    const rec = check([heldFixture(bytes)], [bytes]);
    assert.equal(rec.observed[0]?.kind, 'held');
  });

  test('a zero-length data PDV (PDV length 2) is streamed, whole and split at every offset', () => {
    const fixtures = [dataPdu(7, Buffer.alloc(0), true), dataPdu(7, Buffer.alloc(0), false)];
    const input = concatFixtures(fixtures);
    for (let i = 0; i <= input.length; i++) {
      const rec = check(fixtures, splitAt(input, [i]));
      assert.deepEqual(
        rec.observed.map((o) => (o.kind === 'stream' ? o.valueLength : -1)),
        [0, 0],
      );
    }
    check(fixtures, bytewise(input));
  });

  test('dataStart comes before any of its value bytes and dataEnd after, even byte by byte', () => {
    const f = dataPdu(9, bytesOf(25), false);
    const events: string[] = [];
    const rec = new Recorder();
    const sink: ScannerSink = {
      forward: (b) => rec.forward(b),
      held: () => assert.fail('nothing is held'),
      dataStart: (c, l, last) => {
        events.push(`start ${c} ${l} ${String(last)}`);
        return false;
      },
      dataBytes: (_b, s, e) => {
        if (e > s) events.push('bytes');
      },
      dataEnd: () => events.push('end'),
    };
    const scanner = new PDataScanner(sink, MAX);
    for (const c of bytewise(f.bytes)) scanner.feed(c);
    assert.equal(events[0], 'start 9 25 false');
    assert.equal(events.at(-1), 'end');
    assert.equal(events.filter((e) => e.startsWith('start')).length, 1);
    assert.equal(events.filter((e) => e === 'end').length, 1);
    assert.equal(events.filter((e) => e === 'bytes').length, 25);
    assert.ok(rec.output.equals(f.bytes));
  });
});

describe('PDataScanner: chunking law', () => {
  test('mixed PDUs: whole, split at every offset, split at every pair of offsets, byte by byte', () => {
    const fixtures = mixedFixtures();
    const input = concatFixtures(fixtures);
    check(fixtures, [input]);
    check(fixtures, bytewise(input));
    for (let i = 0; i <= input.length; i++) check(fixtures, splitAt(input, [i]));
    for (let i = 0; i <= input.length; i += 3) {
      for (let j = i; j <= input.length; j++) check(fixtures, splitAt(input, [i, j]));
    }
  });

  test('headers split across chunks: the first 1..11 bytes of a P-DATA in one chunk', () => {
    const streamed = dataPdu(1, bytesOf(50), true);
    const held = commandPdu(1, bytesOf(50));
    const small = dataPdu(3, bytesOf(0));
    for (const lead of [[], [dataPdu(5, bytesOf(8))], [releaseRq()]]) {
      for (const f of [streamed, held, small]) {
        const fixtures = [...lead, f, dataPdu(1, bytesOf(3))];
        const input = concatFixtures(fixtures);
        const start = lead.length === 0 ? 0 : (lead[0] as Fixture).bytes.length;
        for (let k = 1; k <= 11; k++) {
          check(fixtures, splitAt(input, [start + k]));
          check(fixtures, splitAt(input, [start, start + k]));
          check(fixtures, splitAt(input, [start + 1, start + k])); // header in three pieces
        }
      }
    }
  });

  test('property: any valid PDU sequence, any chunking, forwards exactly the input in order (held PDUs forwarded by the sink, or passed back with held() true)', () => {
    fc.assert(
      fc.property(chunked, fc.boolean(), ([fixtures, cuts], pass) => {
        const input = concatFixtures(fixtures);
        check(
          fixtures,
          splitAt(
            input,
            cuts.filter((c) => c <= input.length),
          ),
          undefined,
          pass,
        );
      }),
      RUN,
    );
  });

  test('property: the input chunks are not modified', () => {
    fc.assert(
      fc.property(chunked, ([fixtures, cuts]) => {
        const input = concatFixtures(fixtures);
        const copy = Buffer.from(input);
        run(splitAt(input, cuts));
        assert.ok(input.equals(copy));
      }),
      { numRuns: 100, interruptAfterTimeLimit: 1500 },
    );
  });
});

describe('PDataScanner: zero copy', () => {
  test('one chunk made only of streamed PDUs is forwarded once, as the very same Buffer', () => {
    const chunk = concatFixtures([
      dataPdu(1, bytesOf(100)),
      dataPdu(1, bytesOf(0)),
      dataPdu(3, bytesOf(7), true),
    ]);
    const rec = new Recorder();
    new PDataScanner(rec, MAX).feed(chunk);
    assert.equal(rec.pieces.length, 1);
    assert.equal(rec.pieces[0], chunk);
  });

  test('chunks inside a long streamed value are forwarded as the same Buffers', () => {
    const f = dataPdu(1, bytesOf(10000), true);
    const chunks = splitAt(f.bytes, [100, 4000, 8000]).map((c) => Buffer.from(c));
    const rec = new Recorder();
    const scanner = new PDataScanner(rec, MAX);
    for (const c of chunks) scanner.feed(c);
    assert.equal(rec.pieces.length, 4);
    chunks.forEach((c, i) => assert.equal(rec.pieces[i], c, `chunk ${i}`));
  });

  test('property: one chunk of only streamed PDUs -> exactly one forward() of that chunk', () => {
    const streamedOnly = fc.array(
      fc.tuple(oddId, value, fc.boolean()).map(([c, v, l]) => dataPdu(c, v, l)),
      { minLength: 1, maxLength: 6 },
    );
    fc.assert(
      fc.property(streamedOnly, (fixtures) => {
        const chunk = concatFixtures(fixtures);
        const rec = new Recorder();
        new PDataScanner(rec, MAX).feed(chunk);
        assert.equal(rec.pieces.length, 1);
        assert.equal(rec.pieces[0], chunk);
        assert.deepEqual(rec.observed, expected(fixtures).observed);
      }),
      RUN,
    );
  });
});

describe('PDataScanner: a held PDU passed back in place', () => {
  test('a command and the data after it in one read leave as one forward() of that read', () => {
    // A C-STORE as a modality sends it: command PDU, then the data set's PDUs, read together.
    const chunk = concatFixtures([
      commandPdu(1, bytesOf(180)),
      dataPdu(1, bytesOf(1000)),
      dataPdu(1, bytesOf(500), true),
    ]);
    const passed = new Recorder(undefined, true);
    new PDataScanner(passed, MAX).feed(chunk);
    assert.equal(passed.pieces.length, 1);
    assert.equal(passed.pieces[0], chunk, 'the read buffer itself: no copy, one write');
    // Forwarded by the sink instead, the command is a write of its own.
    const forwarded = new Recorder();
    new PDataScanner(forwarded, MAX).feed(chunk);
    assert.equal(forwarded.pieces.length, 2);
    assert.deepEqual(passed.observed, forwarded.observed);
  });

  test('a held PDU completed across reads is forwarded whole, after what preceded it', () => {
    const fixtures = [dataPdu(1, bytesOf(30)), commandPdu(1, bytesOf(40)), dataPdu(1, bytesOf(9))];
    const input = concatFixtures(fixtures);
    for (let i = 0; i <= input.length; i++) {
      for (let j = i; j <= input.length; j++) {
        const rec = check(fixtures, splitAt(input, [i, j]), undefined, true);
        assert.ok(rec.output.equals(input), `split ${i}, ${j}`);
      }
    }
  });
});

describe('PDataScanner: dropping a streamed PDU (dataStart returns true)', () => {
  const dropCtx3: DropRule = (contextId) => contextId === 3;

  test('none of its bytes (header included) are forwarded, no dataBytes, dataEnd still called', () => {
    const dropped = dataPdu(3, bytesOf(40), true);
    const fixtures = [dataPdu(1, bytesOf(10)), dropped, dataPdu(1, bytesOf(10), true)];
    const input = concatFixtures(fixtures);
    const rec = check(fixtures, [input], dropCtx3);
    assert.equal(rec.observed[1]?.kind, 'stream');
    assert.equal(rec.observed[1]?.kind === 'stream' && rec.observed[1].dropped, true);
    for (let i = 0; i <= input.length; i++) check(fixtures, splitAt(input, [i]), dropCtx3);
    check(fixtures, bytewise(input), dropCtx3);
  });

  test('a dropped zero-length PDV and a dropped PDV split in its header', () => {
    const fixtures = [
      dataPdu(3, Buffer.alloc(0)),
      releaseRq(),
      dataPdu(3, bytesOf(9)),
      dataPdu(1, bytesOf(2)),
    ];
    const input = concatFixtures(fixtures);
    for (let i = 0; i <= input.length; i++) check(fixtures, splitAt(input, [i]), dropCtx3);
  });

  test('property: any chunking, dropped PDUs vanish and everything else is forwarded in order', () => {
    fc.assert(
      fc.property(chunked, fc.integer({ min: 0, max: 3 }), ([fixtures, cuts], seed) => {
        const drop: DropRule = (c, len) => (c + len + seed) % 3 === 0;
        check(fixtures, splitAt(concatFixtures(fixtures), cuts), drop);
      }),
      RUN,
    );
  });
});

describe('PDataScanner: inject', () => {
  const marker = (n: number): Buffer => encodeAbort(2, n % 7);

  test('between feeds at a PDU boundary: forwarded immediately', () => {
    const rec = new Recorder();
    const scanner = new PDataScanner(rec, MAX);
    const a = marker(0);
    scanner.inject(a);
    assert.deepEqual(rec.pieces, [a]);
    assert.equal(rec.pieces[0], a);
    const f = dataPdu(1, bytesOf(10));
    scanner.feed(Buffer.from(f.bytes));
    const b = marker(1);
    scanner.inject(b);
    assert.equal(rec.pieces.at(-1), b);
    assert.ok(rec.output.equals(Buffer.concat([a, f.bytes, b])));
  });

  test('mid streamed PDU: written only after that PDU completes', () => {
    const f = dataPdu(1, bytesOf(50), true);
    const g = dataPdu(1, bytesOf(5));
    const input = concatFixtures([f, g]);
    for (let i = 1; i < f.bytes.length; i++) {
      const rec = new Recorder();
      const scanner = new PDataScanner(rec, MAX);
      const m = marker(i);
      scanner.feed(input.subarray(0, i));
      scanner.inject(m);
      assert.ok(!rec.pieces.includes(m), `not written mid-PDU (split ${i})`);
      scanner.feed(input.subarray(i));
      assert.ok(rec.output.equals(Buffer.concat([f.bytes, m, g.bytes])), `split ${i}`);
      assert.ok(rec.pieces.includes(m));
    }
  });

  test('mid streamed PDU when the next chunk ends exactly at the PDU end', () => {
    const f = dataPdu(1, bytesOf(50), true);
    const rec = new Recorder();
    const scanner = new PDataScanner(rec, MAX);
    const m = marker(3);
    scanner.feed(f.bytes.subarray(0, 20));
    scanner.inject(m);
    scanner.feed(f.bytes.subarray(20));
    assert.ok(rec.output.equals(Buffer.concat([f.bytes, m])));
    assert.equal(rec.pieces.at(-1), m);
  });

  test('mid held PDU: written after the held PDU', () => {
    const f = commandPdu(1, bytesOf(30));
    const rec = new Recorder();
    const scanner = new PDataScanner(rec, MAX);
    const m = marker(4);
    scanner.feed(f.bytes.subarray(0, 15));
    scanner.inject(m);
    assert.equal(rec.pieces.length, 0);
    scanner.feed(f.bytes.subarray(15));
    assert.ok(rec.output.equals(Buffer.concat([f.bytes, m])));
  });

  test('from inside held(): written right after the held PDU, before the next one (forwarded by the sink or passed in place)', () => {
    const fixtures = [commandPdu(1, bytesOf(12)), dataPdu(1, bytesOf(12)), releaseRq()];
    const input = concatFixtures(fixtures);
    for (const pass of [false, true]) {
      for (let i = 0; i <= input.length; i++) {
        const rec = new Recorder(undefined, pass);
        const scanner = new PDataScanner(rec, MAX);
        const injected: Buffer[] = [];
        rec.onHeld = (_pdu, type): void => {
          const m = marker(type);
          injected.push(m);
          scanner.inject(m);
        };
        for (const c of splitAt(input, [i])) scanner.feed(c);
        const [f0, f1, f2] = fixtures as [Fixture, Fixture, Fixture];
        const [m0, m1] = injected as [Buffer, Buffer];
        assert.ok(
          rec.output.equals(Buffer.concat([f0.bytes, m0, f1.bytes, f2.bytes, m1])),
          `pass ${pass}, split ${i}`,
        );
      }
    }
  });

  test('from inside dataStart() (a refusal for a dropped message): written after the dropped PDU', () => {
    const fixtures = [dataPdu(3, bytesOf(20), true), dataPdu(1, bytesOf(4))];
    const input = concatFixtures(fixtures);
    for (let i = 0; i <= input.length; i++) {
      const rec = new Recorder((c) => c === 3);
      const scanner = new PDataScanner(rec, MAX);
      const m = marker(5);
      rec.onDataStart = (c): void => {
        if (c === 3) scanner.inject(m);
      };
      for (const c of splitAt(input, [i])) scanner.feed(c);
      assert.ok(rec.output.equals(Buffer.concat([m, (fixtures[1] as Fixture).bytes])), `split ${i}`);
    }
  });

  test('from inside dataStart() and dataEnd() of a forwarded PDU: never inside that PDU', () => {
    const fixtures = [dataPdu(1, bytesOf(20), true), dataPdu(3, bytesOf(0)), releaseRq()];
    const input = concatFixtures(fixtures);
    const [f0, f1, f2] = fixtures as [Fixture, Fixture, Fixture];
    for (const hook of ['start', 'end'] as const) {
      for (let i = 0; i <= input.length; i++) {
        const rec = new Recorder();
        const scanner = new PDataScanner(rec, MAX);
        const injected: Buffer[] = [];
        const inject = (): void => {
          const m = marker(injected.length);
          injected.push(m);
          scanner.inject(m);
        };
        if (hook === 'start') rec.onDataStart = inject;
        else rec.onDataEnd = inject;
        for (const c of splitAt(input, [i])) scanner.feed(c);
        const [m0, m1] = injected as [Buffer, Buffer];
        assert.ok(
          rec.output.equals(Buffer.concat([f0.bytes, m0, f1.bytes, m1, f2.bytes])),
          `inject from data${hook}, split ${i}`,
        );
      }
    }
  });

  test('property: injections land at the first PDU boundary at or after the point they were made', () => {
    const arb = chunked.chain(([fixtures, cuts]) =>
      fc.tuple(
        fc.constant(fixtures),
        fc.constant(cuts),
        fc.array(fc.boolean(), { minLength: cuts.length + 2, maxLength: cuts.length + 2 }),
      ),
    );
    fc.assert(
      fc.property(arb, ([fixtures, cuts, injectAfter]) => {
        const input = concatFixtures(fixtures);
        const bounds = boundaries(fixtures);
        const chunks = splitAt(input, cuts);
        const rec = new Recorder();
        const scanner = new PDataScanner(rec, MAX);
        const injections: { buf: Buffer; at: number }[] = [];
        let fed = 0;
        const maybeInject = (i: number): void => {
          if (injectAfter[i] !== true) return;
          const buf = marker(injections.length);
          injections.push({ buf, at: fed });
          scanner.inject(buf);
        };
        maybeInject(0);
        chunks.forEach((c, i) => {
          scanner.feed(c);
          fed += c.length;
          maybeInject(i + 1);
        });
        // Walk the pieces: injected Buffers are forwarded as themselves; the rest must be the input.
        const injectedSet = new Set(injections.map((j) => j.buf));
        const rest: Buffer[] = [];
        let inputOffset = 0;
        const landed: { buf: Buffer; offset: number }[] = [];
        for (const p of rec.pieces) {
          if (injectedSet.has(p)) {
            landed.push({ buf: p, offset: inputOffset });
          } else {
            rest.push(p);
            inputOffset += p.length;
          }
        }
        assert.ok(Buffer.concat(rest).equals(input), 'non-injected bytes are exactly the input');
        assert.deepEqual(
          landed.map((l) => l.buf),
          injections.map((j) => j.buf),
          'every injection written once, in order',
        );
        landed.forEach((l, k) => {
          const at = (injections[k] as { at: number }).at;
          const firstBoundary = bounds.find((b) => b >= at);
          assert.equal(l.offset, firstBoundary, `injection ${k} made at ${at}`);
        });
      }),
      RUN,
    );
  });
});

describe('PDataScanner: framing errors', () => {
  function header(type: number, length: number): Buffer {
    const b = Buffer.alloc(6);
    b[0] = type;
    b.writeUInt32BE(length, 2);
    return b;
  }

  function feedError(chunks: Buffer[], max = MAX): unknown {
    const scanner = new PDataScanner(new Recorder(), max);
    try {
      for (const c of chunks) scanner.feed(c);
    } catch (err) {
      return err;
    }
    return undefined;
  }

  function assertPduError(err: unknown, code: string, abortReason: number): void {
    assert.ok(err instanceof PduError, `expected a PduError, got ${String(err)}`);
    assert.equal(err.code, code);
    assert.equal(err.abortReason, abortReason);
  }

  test('P-DATA length > maxPDataLength: PDU_TOO_LARGE from the 6 header bytes alone', () => {
    const h = header(PduType.PDataTf, MAX + 1);
    assertPduError(feedError([h]), 'PDU_TOO_LARGE', 6);
    for (let k = 1; k < 6; k++) assertPduError(feedError(splitAt(h, [k])), 'PDU_TOO_LARGE', 6);
    assertPduError(feedError([header(PduType.PDataTf, 0xffffffff)]), 'PDU_TOO_LARGE', 6);
    // after a streamed PDU in the same chunk
    const f = dataPdu(1, bytesOf(3));
    assertPduError(feedError([Buffer.concat([f.bytes, h])]), 'PDU_TOO_LARGE', 6);
  });

  test('a framing error: the whole PDUs before it in the same read are forwarded first, ending on a boundary', () => {
    const before = [dataPdu(1, bytesOf(50)), commandPdu(1, bytesOf(30)), dataPdu(1, bytesOf(20), true)];
    const input = concatFixtures(before);
    const bad = header(0x09, 4); // not a PDU type (PS3.8 9.3.1): UNRECOGNIZED_PDU
    for (const pass of [false, true]) {
      // Split anywhere inside the good PDUs: the tail of a streamed one, a held one passed in place and
      // whole PDUs all reach the output before the error is thrown.
      for (let i = 0; i <= input.length; i++) {
        const rec = new Recorder(undefined, pass);
        const scanner = new PDataScanner(rec, MAX);
        let err: unknown;
        try {
          for (const c of splitAt(Buffer.concat([input, bad]), [i])) scanner.feed(c);
        } catch (e) {
          err = e;
        }
        assertPduError(err, 'UNRECOGNIZED_PDU', 1);
        assert.ok(
          rec.output.equals(input),
          `pass ${pass}, split ${i}: ${rec.output.length} of ${input.length}`,
        );
      }
    }
  });

  test('an error thrown by the sink at a PDU start: the PDUs before it are forwarded, nothing of it', () => {
    const fixtures = [commandPdu(1, bytesOf(30)), dataPdu(1, bytesOf(20)), dataPdu(3, bytesOf(8))];
    const input = concatFixtures(fixtures);
    const rec = new Recorder(undefined, true);
    rec.onDataStart = (contextId): void => {
      if (contextId === 3) throw new Error('context 3 was not accepted'); // as checkContext does
    };
    const scanner = new PDataScanner(rec, MAX);
    assert.throws(() => scanner.feed(input), /context 3/);
    const [f0, f1] = fixtures as [Fixture, Fixture];
    assert.ok(rec.output.equals(Buffer.concat([f0.bytes, f1.bytes])));
  });

  test('P-DATA length == maxPDataLength is accepted', () => {
    const f = dataPdu(1, bytesOf(MAX - 6));
    assert.equal(f.bytes.readUInt32BE(2), MAX);
    check([f], [f.bytes]);
    const g = commandPdu(1, bytesOf(MAX - 6));
    check([g], splitAt(g.bytes, [3, 9, 1000]));
  });

  test('P-DATA length < 6: INVALID_LENGTH', () => {
    for (let len = 0; len < 6; len++) {
      const h = header(PduType.PDataTf, len);
      assertPduError(feedError([h]), 'INVALID_LENGTH', 6);
      assertPduError(feedError([Buffer.concat([h, Buffer.alloc(12)])]), 'INVALID_LENGTH', 6);
      assertPduError(feedError(splitAt(h, [2])), 'INVALID_LENGTH', 6);
    }
  });

  test('A-RELEASE-RQ/RP and A-ABORT with length != 4: INVALID_LENGTH', () => {
    for (const type of [PduType.ReleaseRq, PduType.ReleaseRp, PduType.Abort]) {
      for (const len of [0, 3, 5, 6, 100, 0xffffffff]) {
        const h = header(type, len);
        assertPduError(feedError([h]), 'INVALID_LENGTH', 6);
        assertPduError(feedError(bytewise(h)), 'INVALID_LENGTH', 6);
      }
    }
  });

  test('A-ASSOCIATE-RQ/AC/RJ: UnexpectedPduError, abort reason 2', () => {
    for (const type of [PduType.AssociateRq, PduType.AssociateAc, PduType.AssociateRj]) {
      for (const chunks of [[header(type, 4)], bytewise(header(type, 68))]) {
        const err = feedError(chunks);
        assert.ok(err instanceof UnexpectedPduError, `type ${type}: ${String(err)}`);
        assert.equal(err.abortReason, 2);
        assert.equal(err.code, 'UNEXPECTED_PDU');
      }
    }
  });

  test('unrecognized PDU types (0x00, 0x08, 0xff): UNRECOGNIZED_PDU, abort reason 1', () => {
    for (const type of [0x00, 0x08, 0x09, 0xff]) {
      assertPduError(feedError([header(type, 4)]), 'UNRECOGNIZED_PDU', 1);
      assertPduError(feedError(bytewise(header(type, 4))), 'UNRECOGNIZED_PDU', 1);
    }
  });

  test('property: random bytes, any chunking -> only PduError or UnexpectedPduError, never another error', () => {
    const noisy = fc.oneof(
      fc.uint8Array({ maxLength: 200 }).map((u) => Buffer.from(u)),
      // valid streams with a few corrupted bytes reach deeper states
      fc
        .tuple(
          fc.array(fixtureArb, { minLength: 1, maxLength: 4 }),
          fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 4 }),
        )
        .map(([fixtures, flips]) => {
          const b = Buffer.from(concatFixtures(fixtures));
          for (const [at, v] of flips) b[at % b.length] = v;
          return b;
        }),
      // a header with a type byte from the interesting range followed by noise
      fc
        .tuple(fc.integer({ min: 0, max: 9 }), fc.nat({ max: 40 }), fc.uint8Array({ maxLength: 60 }))
        .map(([type, len, rest]) => Buffer.concat([header(type, len), Buffer.from(rest)])),
    );
    fc.assert(
      fc.property(noisy, fc.array(fc.nat({ max: 260 }), { maxLength: 8 }), (input, cuts) => {
        const chunks = splitAt(
          input,
          cuts.map((c) => Math.min(c, input.length)),
        );
        const rec = new Recorder();
        const scanner = new PDataScanner(rec, 64);
        try {
          for (const c of chunks) scanner.feed(c);
        } catch (err) {
          if (err instanceof PduError || err instanceof UnexpectedPduError) {
            assert.ok([1, 2, 6].includes(err.abortReason));
            return;
          }
          throw err;
        }
      }),
      RUN,
    );
  });
});
