import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';

import {
  PduError,
  PduFramer,
  decodePdu,
  encodePdu,
  type AssociateItem,
  type AssociatePdu,
  type FramerLimits,
  type Pdu,
  type UserInfoSubItem,
} from '../../src/pdu/index.js';
import { fixtures } from './fixtures.js';

const RUN = { numRuns: 1000, interruptAfterTimeLimit: 2500 } as const;

// ------------------------------------------------------------------------------------------------
// Arbitraries for valid PDUs, generated from the types under the decoder's validation rules.
// ------------------------------------------------------------------------------------------------

/** fc.record with ordinary prototypes, so decoded objects compare equal. */
function rec<T>(model: { [K in keyof T]: fc.Arbitrary<T[K]> }): fc.Arbitrary<T> {
  return fc.record(model, { noNullPrototype: true });
}

const buffer = (maxLength: number): fc.Arbitrary<Buffer> =>
  fc.uint8Array({ maxLength }).map((u) => Buffer.from(u));

const latin1 = (minLength: number, maxLength: number): fc.Arbitrary<string> =>
  fc
    .array(fc.integer({ min: 0, max: 0xff }), { minLength, maxLength })
    .map((codes) => String.fromCharCode(...codes));

/** A UID of 1..64 digits and dots, sometimes with one NUL or space pad. */
const uid: fc.Arbitrary<string> = fc
  .tuple(fc.stringMatching(/^[0-9.]{1,64}$/), fc.constantFrom('', '', '\0', ' '))
  .map(([text, pad]) => text + pad);

const AE_CHARS = Array.from({ length: 0x7f - 0x20 }, (_, i) => String.fromCharCode(0x20 + i)).filter(
  (c) => c !== '\\',
);

/** A valid RQ AE title field: allowed characters, padded with spaces or trailing NULs. */
const aeField: fc.Arbitrary<string> = fc
  .tuple(fc.array(fc.constantFrom(...AE_CHARS), { maxLength: 16 }), fc.constantFrom(' ', '\0'))
  .map(([chars, pad]) => chars.join('').padEnd(16, pad));

const oddId = fc.integer({ min: 0, max: 127 }).map((n) => 2 * n + 1);

const KNOWN_SUB_ITEMS = new Set([0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59]);
const KNOWN_ITEMS = new Set([0x10, 0x20, 0x21, 0x50]);

const subItem: fc.Arbitrary<UserInfoSubItem> = fc.oneof(
  rec({ kind: fc.constant('max-length' as const), maxLength: fc.nat({ max: 0xffffffff }) }),
  rec({ kind: fc.constant('implementation-class-uid' as const), uid }),
  rec({
    kind: fc.constant('async-operations-window' as const),
    invoked: fc.nat({ max: 0xffff }),
    performed: fc.nat({ max: 0xffff }),
  }),
  rec({
    kind: fc.constant('role-selection' as const),
    sopClassUid: uid,
    scuRole: fc.integer({ min: 0, max: 1 }),
    scpRole: fc.integer({ min: 0, max: 1 }),
  }),
  rec({ kind: fc.constant('implementation-version-name' as const), name: latin1(0, 20) }),
  rec({ kind: fc.constant('extended-negotiation' as const), sopClassUid: uid, info: buffer(20) }),
  rec({
    kind: fc.constant('common-extended-negotiation' as const),
    sopClassUid: uid,
    serviceClassUid: uid,
    relatedGeneralSopClassUids: fc.array(uid, { maxLength: 3 }),
  }),
  rec({
    kind: fc.constant('user-identity-rq' as const),
    identityType: fc.nat({ max: 0xff }),
    positiveResponseRequested: fc.nat({ max: 0xff }),
    primaryField: buffer(30),
    secondaryField: buffer(30),
  }),
  rec({ kind: fc.constant('user-identity-ac' as const), serverResponse: buffer(30) }),
  rec({
    kind: fc.constant('unknown' as const),
    type: fc.nat({ max: 0xff }).filter((t) => !KNOWN_SUB_ITEMS.has(t)),
    value: buffer(20),
  }),
);

const unknownItem: fc.Arbitrary<AssociateItem> = rec({
  kind: fc.constant('unknown' as const),
  type: fc.nat({ max: 0xff }).filter((t) => !KNOWN_ITEMS.has(t)),
  value: buffer(20),
});

const userInformation: fc.Arbitrary<AssociateItem> = rec({
  kind: fc.constant('user-information' as const),
  subItems: fc.array(subItem, { maxLength: 8 }),
});

const contextRq: fc.Arbitrary<AssociateItem> = rec({
  kind: fc.constant('presentation-context-rq' as const),
  context: rec({
    id: oddId,
    abstractSyntax: uid,
    transferSyntaxes: fc.array(uid, { minLength: 1, maxLength: 4 }),
  }),
});

const contextAc: fc.Arbitrary<AssociateItem> = fc
  .oneof(
    rec({ id: oddId, result: fc.constant(0), transferSyntax: uid }),
    // rejected: the transfer syntax sub-item is absent, empty, or anything (not tested)
    rec({ id: oddId, result: fc.integer({ min: 1, max: 4 }), transferSyntax: fc.constant('') }),
    rec({
      id: oddId,
      result: fc.integer({ min: 1, max: 4 }),
      transferSyntax: fc.constant(''),
      emptyTransferSyntaxItem: fc.constant(true as const),
    }),
    rec({ id: oddId, result: fc.integer({ min: 1, max: 4 }), transferSyntax: latin1(1, 70) }),
  )
  .map((context) => ({ kind: 'presentation-context-ac' as const, context }));

const associate = (type: 0x01 | 0x02): fc.Arbitrary<AssociatePdu> =>
  fc
    .record({
      protocolVersion: fc.nat({ max: 0xffff }),
      calledAeTitle: type === 0x01 ? aeField : latin1(16, 16),
      callingAeTitle: type === 0x01 ? aeField : latin1(16, 16),
      reserved: fc.uint8Array({ minLength: 32, maxLength: 32 }).map((u) => Buffer.from(u)),
      applicationContext: uid.map((name): AssociateItem => ({ kind: 'application-context', name })),
      contexts: fc.array(type === 0x01 ? contextRq : contextAc, {
        minLength: type === 0x01 ? 1 : 0,
        maxLength: 5,
      }),
      userInformation: fc.option(userInformation, { nil: undefined }),
      unknown: fc.array(unknownItem, { maxLength: 2 }),
      order: fc.array(fc.nat(), { minLength: 12, maxLength: 12 }),
    })
    .map((r): AssociatePdu => {
      const items = [
        r.applicationContext,
        ...r.contexts,
        ...(r.userInformation ? [r.userInformation] : []),
        ...r.unknown,
      ];
      // a random but deterministic permutation of the items (the decoder keeps any order)
      const keyed = items.map((it, i) => ({ it, key: r.order[i % r.order.length] ?? 0, i }));
      keyed.sort((x, y) => x.key - y.key || x.i - y.i);
      return {
        type,
        protocolVersion: r.protocolVersion,
        calledAeTitle: r.calledAeTitle,
        callingAeTitle: r.callingAeTitle,
        reserved: r.reserved,
        items: keyed.map((k) => k.it),
      };
    });

const pData: fc.Arbitrary<Pdu> = rec({
  type: fc.constant(0x04 as const),
  pdvs: fc.array(
    rec({
      contextId: fc.nat({ max: 0xff }),
      command: fc.boolean(),
      last: fc.boolean(),
      value: buffer(200),
    }),
    { minLength: 1, maxLength: 5 },
  ),
});

const validPdu: fc.Arbitrary<Pdu> = fc.oneof(
  associate(0x01),
  associate(0x02),
  rec({
    type: fc.constant(0x03 as const),
    result: fc.integer({ min: 1, max: 2 }),
    source: fc.integer({ min: 1, max: 3 }),
    reason: fc.nat({ max: 0xff }),
  }),
  pData,
  rec({ type: fc.constantFrom(0x05 as const, 0x06 as const) }),
  rec({
    type: fc.constant(0x07 as const),
    source: fc.integer({ min: 0, max: 2 }),
    reason: fc.nat({ max: 0xff }),
  }),
);

/** Cut a buffer at the given (unsorted, arbitrary) positions. */
function chunked(buf: Buffer, cuts: number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => c % (buf.length + 1)))].sort((x, y) => x - y);
  const out: Buffer[] = [];
  let prev = 0;
  for (const p of points) {
    out.push(buf.subarray(prev, p));
    prev = p;
  }
  out.push(buf.subarray(prev));
  return out;
}

function onlyPduErrors(fn: () => void): void {
  try {
    fn();
  } catch (err) {
    if (!(err instanceof PduError)) throw err;
    assert.ok(err.field.length > 0);
    assert.ok([1, 4, 5, 6].includes(err.abortReason));
  }
}

/** If the bytes decode, the result must be stable under encode/decode. */
function decodeStable(raw: Buffer): void {
  onlyPduErrors(() => {
    const decoded = decodePdu(raw);
    const again = encodePdu(decoded);
    assert.deepEqual(decodePdu(again), decoded);
    assert.deepEqual(encodePdu(decodePdu(again)), again);
  });
}

// A stream of valid PDU encodings, and arbitrary corruptions of it.
const validBytes = validPdu.map((p) => encodePdu(p));
const corrupted: fc.Arbitrary<Buffer> = fc
  .tuple(
    validBytes,
    fc.array(fc.tuple(fc.nat(), fc.nat({ max: 0xff })), { maxLength: 4 }),
    fc.option(fc.nat(), { nil: undefined }),
    fc.boolean(),
  )
  .map(([raw, flips, cut, fixLength]) => {
    const b = Buffer.from(raw);
    for (const [at, value] of flips) b[at % b.length] = value;
    const out = cut === undefined ? b : b.subarray(0, cut % (b.length + 1));
    if (fixLength && out.length >= 6) out.writeUInt32BE(out.length - 6, 2);
    return out;
  });

describe('properties', () => {
  test('every valid PDU round trips byte-identically', () => {
    fc.assert(
      fc.property(validPdu, (p) => {
        const bytes = encodePdu(p);
        const decoded = decodePdu(bytes);
        assert.deepEqual(decoded, p);
        assert.deepEqual(encodePdu(decoded), bytes);
      }),
      RUN,
    );
  });

  test('fixtures round trip after random chunking of the stream (framer + codec)', () => {
    fc.assert(
      fc.property(
        fc.array(fc.constantFrom(...fixtures), { minLength: 1, maxLength: 10 }),
        fc.array(fc.nat(), { maxLength: 20 }),
        (picked, cuts) => {
          const stream = Buffer.concat(picked.map((f) => f.bytes));
          const framer = new PduFramer({ maxPDataLength: 1 << 16, maxOtherLength: 1 << 16 });
          const frames = chunked(stream, cuts).flatMap((c) => framer.push(c));
          assert.deepEqual(
            frames,
            picked.map((f) => f.bytes),
          );
          assert.deepEqual(
            frames.map((f) => encodePdu(decodePdu(f))),
            picked.map((f) => f.bytes),
          );
        },
      ),
      RUN,
    );
  });

  test('any chunking of a stream of valid PDUs yields the same frames', () => {
    fc.assert(
      fc.property(
        fc.array(validBytes, { minLength: 1, maxLength: 6 }),
        fc.array(fc.nat(), { maxLength: 30 }),
        (pdus, cuts) => {
          const framer = new PduFramer({ maxPDataLength: 1 << 20, maxOtherLength: 1 << 20 });
          const frames = chunked(Buffer.concat(pdus), cuts).flatMap((c) => framer.push(c));
          assert.deepEqual(frames, pdus);
          assert.equal(framer.pendingBytes, 0);
        },
      ),
      RUN,
    );
  });

  test('random bytes into decodePdu throw only PduError', () => {
    fc.assert(
      fc.property(buffer(300), (raw) => decodeStable(raw)),
      RUN,
    );
    // with a plausible header, so the body parsers are reached
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 7 }), buffer(400), (type, body) => {
        const raw = Buffer.concat([Buffer.from([type, 0, 0, 0, 0, 0]), body]);
        raw.writeUInt32BE(body.length, 2);
        decodeStable(raw);
      }),
      RUN,
    );
  });

  test('corrupted valid PDUs into decodePdu throw only PduError, and whatever decodes is stable', () => {
    fc.assert(
      fc.property(corrupted, (raw) => decodeStable(raw)),
      RUN,
    );
  });

  test('random bytes into the framer throw only PduError and never hold more than limit + 6 bytes', () => {
    const limits: FramerLimits = { maxPDataLength: 300, maxOtherLength: 500 };
    const segment = fc.oneof(
      buffer(50),
      // a header with a small length, then some body bytes
      fc
        .tuple(fc.integer({ min: 0, max: 8 }), fc.nat({ max: 600 }), buffer(600))
        .map(([type, length, body]) => {
          const h = Buffer.from([type, 0, 0, 0, 0, 0]);
          h.writeUInt32BE(length, 2);
          return Buffer.concat([h, body.subarray(0, length)]);
        }),
    );
    fc.assert(
      fc.property(
        fc.array(segment, { maxLength: 6 }),
        fc.array(fc.nat(), { maxLength: 20 }),
        (segments, cuts) => {
          const framer = new PduFramer(limits);
          onlyPduErrors(() => {
            for (const chunk of chunked(Buffer.concat(segments), cuts)) {
              for (const f of framer.push(chunk)) {
                const length = f.readUInt32BE(2);
                assert.equal(f.length, 6 + length);
                assert.ok(length <= (f[0] === 0x04 ? limits.maxPDataLength : limits.maxOtherLength));
                decodeStable(f);
              }
              assert.ok(framer.pendingBytes <= Math.max(limits.maxPDataLength, limits.maxOtherLength) + 6);
            }
          });
        },
      ),
      RUN,
    );
  });
});
