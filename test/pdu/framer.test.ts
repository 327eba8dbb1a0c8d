import { test, describe } from 'node:test';
import assert from 'node:assert/strict';

import { PduError, PduFramer, type FramerLimits, type PduErrorCode } from '../../src/pdu/index.js';
import { fixtureStream, fixtures, hex } from './fixtures.js';

const LIMITS: FramerLimits = { maxPDataLength: 16384, maxOtherLength: 65536 };

/** Pushes the chunks and returns every frame, checking pendingBytes along the way. */
function frame(chunks: Buffer[], limits: FramerLimits = LIMITS): { frames: Buffer[]; framer: PduFramer } {
  const framer = new PduFramer(limits);
  const frames: Buffer[] = [];
  for (const chunk of chunks) {
    frames.push(...framer.push(chunk));
    assert.ok(framer.pendingBytes <= Math.max(limits.maxPDataLength, limits.maxOtherLength) + 6);
  }
  return { frames, framer };
}

function splitAt(buf: Buffer, ...offsets: number[]): Buffer[] {
  const out: Buffer[] = [];
  let prev = 0;
  for (const o of offsets) {
    out.push(buf.subarray(prev, o));
    prev = o;
  }
  out.push(buf.subarray(prev));
  return out;
}

function bytewise(buf: Buffer): Buffer[] {
  return [...buf].map((b) => Buffer.from([b]));
}

function pushThrows(framer: PduFramer, chunk: Buffer, code: PduErrorCode, field: string): PduError {
  let caught: unknown;
  try {
    framer.push(chunk);
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof PduError, `expected a PduError, got ${String(caught)}`);
  assert.equal(caught.code, code);
  assert.equal(caught.field, field);
  return caught;
}

describe('framing the fixtures', () => {
  for (const f of fixtures) {
    test(`${f.name}: whole, as a subarray of the chunk`, () => {
      const chunk = Buffer.from(f.bytes);
      const { frames, framer } = frame([chunk]);
      assert.deepEqual(frames, [f.bytes]);
      assert.equal(frames[0]?.buffer, chunk.buffer);
      assert.equal(framer.pendingBytes, 0);
    });

    test(`${f.name}: split at every offset`, () => {
      for (let i = 0; i <= f.bytes.length; i++) {
        const { frames, framer } = frame(splitAt(f.bytes, i));
        assert.deepEqual(frames, [f.bytes], `split at ${i}`);
        assert.equal(framer.pendingBytes, 0);
      }
    });

    test(`${f.name}: byte by byte`, () => {
      const framer = new PduFramer(LIMITS);
      const frames: Buffer[] = [];
      for (const [i, chunk] of bytewise(f.bytes).entries()) {
        frames.push(...framer.push(chunk));
        assert.equal(framer.pendingBytes, i + 1 === f.bytes.length ? 0 : i + 1);
      }
      assert.deepEqual(frames, [f.bytes]);
    });
  }

  test('all fixtures concatenated, split at every offset', () => {
    const expected = fixtures.map((f) => f.bytes);
    for (let i = 0; i <= fixtureStream.length; i++) {
      const { frames, framer } = frame(splitAt(fixtureStream, i));
      assert.deepEqual(frames, expected, `split at ${i}`);
      assert.equal(framer.pendingBytes, 0);
    }
  });

  test('all fixtures concatenated, split at every pair of offsets 7 apart and byte by byte', () => {
    const expected = fixtures.map((f) => f.bytes);
    for (let i = 0; i + 7 <= fixtureStream.length; i++) {
      assert.deepEqual(frame(splitAt(fixtureStream, i, i + 7)).frames, expected, `split at ${i}, ${i + 7}`);
    }
    assert.deepEqual(frame(bytewise(fixtureStream)).frames, expected);
  });

  test('frames assembled across chunks do not alias the chunks', () => {
    const f = fixtures[0];
    assert.ok(f);
    const chunks = splitAt(Buffer.from(f.bytes), 3, 100);
    const { frames } = frame(chunks);
    for (const c of chunks) c.fill(0);
    assert.deepEqual(frames, [f.bytes]);
  });

  test('a PDU with length 0 is framed (decodePdu judges it)', () => {
    const empty = hex('04 00 00000000');
    assert.deepEqual(frame([empty]).frames, [empty]);
    assert.deepEqual(frame(splitAt(empty, 2)).frames, [empty]);
    assert.deepEqual(frame([Buffer.concat([empty, empty])]).frames, [empty, empty]);
  });

  test('an empty chunk is harmless', () => {
    const framer = new PduFramer(LIMITS);
    assert.deepEqual(framer.push(Buffer.alloc(0)), []);
    assert.deepEqual(framer.push(hex('0500')), []);
    assert.deepEqual(framer.push(Buffer.alloc(0)), []);
    assert.equal(framer.pendingBytes, 2);
  });
});

describe('limits', () => {
  test('a too large P-DATA-TF is refused from its 6 header bytes alone', () => {
    const framer = new PduFramer(LIMITS);
    const e = pushThrows(framer, hex('04 00 00004001'), 'PDU_TOO_LARGE', 'P-DATA-TF.length');
    assert.match(e.message, /P-DATA-TF PDU length 16385 exceeds the limit 16384/);
    assert.equal(e.abortReason, 6);
    assert.equal(framer.pendingBytes, 0);
  });

  test('the limit itself is allowed', () => {
    const framer = new PduFramer(LIMITS);
    assert.deepEqual(framer.push(hex('04 00 00004000')), []);
    assert.equal(framer.pendingBytes, 6);
  });

  test('other PDU types use maxOtherLength', () => {
    const framer = new PduFramer({ maxPDataLength: 1 << 20, maxOtherLength: 1000 });
    pushThrows(framer, hex('01 00 000003e9'), 'PDU_TOO_LARGE', 'A-ASSOCIATE-RQ.length');
    const pData = new PduFramer({ maxPDataLength: 1 << 20, maxOtherLength: 1000 });
    assert.deepEqual(pData.push(hex('04 00 000003e9')), []);
    const small = new PduFramer({ maxPDataLength: 100, maxOtherLength: 1 << 20 });
    assert.deepEqual(small.push(hex('02 00 000003e9')), []);
  });

  test('a header split across chunks is checked once complete', () => {
    const framer = new PduFramer(LIMITS);
    assert.deepEqual(framer.push(hex('04 00 00')), []);
    assert.deepEqual(framer.push(hex('00 40')), []);
    assert.equal(framer.pendingBytes, 5);
    pushThrows(framer, hex('01 ff ff'), 'PDU_TOO_LARGE', 'P-DATA-TF.length');
  });

  test('a header at the end of a chunk after a whole PDU', () => {
    const framer = new PduFramer(LIMITS);
    const release = hex('05 00 00000004 00000000');
    pushThrows(framer, Buffer.concat([release, hex('04 00 ffffffff')]), 'PDU_TOO_LARGE', 'P-DATA-TF.length');
  });

  test('limits must be integers 0..2^32-1', () => {
    assert.throws(() => new PduFramer({ maxPDataLength: -1, maxOtherLength: 10 }), RangeError);
    assert.throws(() => new PduFramer({ maxPDataLength: 10, maxOtherLength: 2 ** 32 }), RangeError);
  });
});

describe('unknown types', () => {
  test('refused as soon as the type byte arrives', () => {
    const framer = new PduFramer(LIMITS);
    const e = pushThrows(framer, hex('08'), 'UNRECOGNIZED_PDU', 'PDU.type');
    assert.equal(e.abortReason, 1);
    assert.match(e.message, /0x08/);
  });

  test('refused with a whole header and after a valid PDU', () => {
    pushThrows(new PduFramer(LIMITS), hex('00 00 00000004 00000000'), 'UNRECOGNIZED_PDU', 'PDU.type');
    const framer = new PduFramer(LIMITS);
    assert.equal(framer.push(hex('06 00 00000004 000000')).length, 0);
    pushThrows(framer, hex('00 ff'), 'UNRECOGNIZED_PDU', 'PDU.type');
  });

  test('a failed framer keeps failing with the same error', () => {
    const framer = new PduFramer(LIMITS);
    const first = pushThrows(framer, hex('09'), 'UNRECOGNIZED_PDU', 'PDU.type');
    let again: unknown;
    try {
      framer.push(hex('05 00 00000004 00000000'));
    } catch (err) {
      again = err;
    }
    assert.equal(again, first);
  });
});

describe('takeRemainder', () => {
  const release = hex('05 00 00000004 00000000');

  test('returns the partial header', () => {
    const framer = new PduFramer(LIMITS);
    assert.deepEqual(framer.push(Buffer.concat([release, hex('04 00 00')])), [release]);
    assert.equal(framer.pendingBytes, 3);
    assert.deepEqual(framer.takeRemainder(), hex('04 00 00'));
    assert.equal(framer.pendingBytes, 0);
    assert.deepEqual(framer.takeRemainder(), Buffer.alloc(0));
  });

  test('returns the header and the partial body', () => {
    const f = fixtures[0];
    assert.ok(f);
    const framer = new PduFramer(LIMITS);
    assert.deepEqual(framer.push(Buffer.concat([release, f.bytes.subarray(0, 16)])), [release]);
    assert.deepEqual(framer.push(f.bytes.subarray(16, 40)), []);
    assert.equal(framer.pendingBytes, 40);
    assert.deepEqual(framer.takeRemainder(), f.bytes.subarray(0, 40));
    assert.equal(framer.pendingBytes, 0);
    // the framer starts afresh
    assert.deepEqual(framer.push(release), [release]);
  });

  test('a split header then its remainder', () => {
    const framer = new PduFramer(LIMITS);
    framer.push(hex('04 00'));
    framer.push(hex('00 00 00 08 00'));
    assert.deepEqual(framer.takeRemainder(), hex('04 00 00 00 00 08 00'));
  });
});
