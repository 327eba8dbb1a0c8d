import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';

import { aeTitleField, decodePdu, encodePdu, presentationContextsRq } from '../../src/pdu/codec.js';
import { PduError } from '../../src/pdu/errors.js';
import type {
  AssociateItem,
  AssociatePdu,
  PresentationContextAc,
  PresentationContextRq,
  UserInfoSubItem,
} from '../../src/pdu/types.js';
import {
  MAX_PRESENTATION_CONTEXTS,
  answerRequestor,
  capMaxLength,
  checkPresentationContexts,
  forwardRequest,
  maxLengths,
} from '../../src/relay/negotiation.js';
import { a, hex } from '../pdu/fixtures.js';

const APP_CONTEXT = '1.2.840.10008.3.1.1.1';
const CT = '1.2.840.10008.5.1.4.1.1.2';
const MR = '1.2.840.10008.5.1.4.1.1.4';
const VERIFICATION = '1.2.840.10008.1.1';
const EXPLICIT_LE = '1.2.840.10008.1.2.1';
const IMPLICIT_LE = '1.2.840.10008.1.2';
const JPEG_LOSSLESS = '1.2.840.10008.1.2.4.70';
const CEILING = 65536;

const zeros = (n: number): string => '00'.repeat(n);

// ------------------------------------------------------------------------------------------------
// Builders of decoded PDUs (the shapes decodePdu returns)
// ------------------------------------------------------------------------------------------------

const appContext: AssociateItem = { kind: 'application-context', name: APP_CONTEXT };

function pc(id: number, abstractSyntax: string, transferSyntaxes = [IMPLICIT_LE]): AssociateItem {
  return { kind: 'presentation-context-rq', context: { id, abstractSyntax, transferSyntaxes } };
}

function answer(id: number, result: number, transferSyntax = ''): AssociateItem {
  return { kind: 'presentation-context-ac', context: { id, result, transferSyntax } };
}

function userInfo(...subItems: UserInfoSubItem[]): AssociateItem {
  return { kind: 'user-information', subItems };
}

const maxLength = (n: number): UserInfoSubItem => ({ kind: 'max-length', maxLength: n });
const classUid = (uid: string): UserInfoSubItem => ({ kind: 'implementation-class-uid', uid });

function associate(
  type: 0x01 | 0x02,
  called: string,
  calling: string,
  items: AssociateItem[],
  reserved = Buffer.alloc(32),
): AssociatePdu {
  return {
    type,
    protocolVersion: 1,
    calledAeTitle: called.padEnd(16, ' '),
    callingAeTitle: calling.padEnd(16, ' '),
    reserved,
    items,
  };
}

const rq = (items: AssociateItem[], called = 'PROXY', calling = 'CT1'): AssociatePdu =>
  associate(0x01, called, calling, items);
const ac = (items: AssociateItem[], called = 'ARCHIVE', calling = 'CT1'): AssociatePdu =>
  associate(0x02, called, calling, items);

/** The contexts of `pdu` by ID, as forwardRequest's `contexts` option wants them. */
function contextsOf(pdu: AssociatePdu, ...ids: number[]): PresentationContextRq[] {
  return checkPresentationContexts(pdu).contexts.filter((c) => ids.includes(c.id));
}

function forward(pdu: AssociatePdu, ids: number[], callingAeTitle: string | null = null): AssociatePdu {
  return forwardRequest(pdu, {
    contexts: contextsOf(pdu, ...ids),
    calledAeTitle: 'ARCHIVE',
    callingAeTitle,
    ceiling: CEILING,
  });
}

function roundTrips(pdu: AssociatePdu): void {
  assert.deepEqual(decodePdu(encodePdu(pdu)), pdu);
}

function contextsAc(pdu: AssociatePdu): PresentationContextAc[] {
  return pdu.items.flatMap((i) => (i.kind === 'presentation-context-ac' ? [i.context] : []));
}

/** The modality's request of most cases: CT (two transfer syntaxes), MR, unlimited max length. */
const modalityRq = rq([
  appContext,
  pc(1, CT, [EXPLICIT_LE, IMPLICIT_LE]),
  pc(3, MR),
  userInfo(maxLength(0), classUid('1.2.3.4')),
  { kind: 'unknown', type: 0x60, value: Buffer.from('abcd', 'hex') },
]);

// ------------------------------------------------------------------------------------------------

describe('capMaxLength (PS3.8 D.1)', () => {
  test('0 and absent mean unlimited and become the ceiling; larger values are lowered to it', () => {
    assert.equal(capMaxLength(undefined, CEILING), CEILING);
    assert.equal(capMaxLength(0, CEILING), CEILING);
    assert.equal(capMaxLength(CEILING + 1, CEILING), CEILING);
    assert.equal(capMaxLength(0xffffffff, CEILING), CEILING);
    assert.equal(capMaxLength(CEILING, CEILING), CEILING);
    assert.equal(capMaxLength(16384, CEILING), 16384);
    assert.equal(capMaxLength(1, CEILING), 1);
  });

  test('the ceiling must be a usable maximum length', () => {
    for (const bad of [0, -1, 1.5, 0x100000000, Number.NaN]) {
      assert.throws(() => capMaxLength(16384, bad), RangeError);
    }
  });
});

describe('checkPresentationContexts (PS3.8 9.3.2.2)', () => {
  test('a valid request keeps every context in proposal order', () => {
    const checked = checkPresentationContexts(modalityRq);
    assert.deepEqual(checked, {
      contexts: [
        { id: 1, abstractSyntax: CT, transferSyntaxes: [EXPLICIT_LE, IMPLICIT_LE] },
        { id: 3, abstractSyntax: MR, transferSyntaxes: [IMPLICIT_LE] },
      ],
      dropped: [],
    });
  });

  test('duplicate IDs: the first occurrence is kept, later ones dropped', () => {
    const pdu = rq([
      appContext,
      pc(1, CT),
      pc(3, MR),
      pc(1, VERIFICATION),
      pc(5, VERIFICATION),
      pc(3, CT, [EXPLICIT_LE]),
      userInfo(maxLength(16384)),
    ]);
    // duplicates decode (only the relay can see them), so the check runs on what the wire gives
    const decoded = decodePdu(encodePdu(pdu)) as AssociatePdu;
    assert.deepEqual(checkPresentationContexts(decoded), {
      contexts: [
        { id: 1, abstractSyntax: CT, transferSyntaxes: [IMPLICIT_LE] },
        { id: 3, abstractSyntax: MR, transferSyntaxes: [IMPLICIT_LE] },
        { id: 5, abstractSyntax: VERIFICATION, transferSyntaxes: [IMPLICIT_LE] },
      ],
      dropped: [
        { id: 1, problem: 'duplicate-id' },
        { id: 3, problem: 'duplicate-id' },
      ],
    });
  });

  test('even ID 2 and ID 0 are dropped (0 as out of range), as are IDs above 255', () => {
    const pdu = rq([appContext, pc(2, CT), pc(1, CT), pc(0, MR), pc(257, MR), pc(3, MR), pc(-1, MR)]);
    assert.deepEqual(checkPresentationContexts(pdu), {
      contexts: [
        { id: 1, abstractSyntax: CT, transferSyntaxes: [IMPLICIT_LE] },
        { id: 3, abstractSyntax: MR, transferSyntaxes: [IMPLICIT_LE] },
      ],
      dropped: [
        { id: 2, problem: 'even-id' },
        { id: 0, problem: 'out-of-range' },
        { id: 257, problem: 'out-of-range' },
        { id: -1, problem: 'out-of-range' },
      ],
    });
  });

  test('on the wire an even ID never gets this far: decodePdu rejects it (A-ABORT, PS3.8 Table 9-10)', () => {
    const raw = encodePdu(rq([appContext, pc(1, CT), pc(2, MR)]));
    assert.throws(
      () => decodePdu(raw),
      (err: unknown) =>
        err instanceof PduError && /presentation context ID 2 is not an odd/.test(err.message),
    );
  });

  test('130 contexts numbered 1, 3, ... wrap around 255: 128 kept, the rest are too many', () => {
    const items: AssociateItem[] = [appContext];
    for (let i = 0; i < 130; i++) items.push(pc((2 * i + 1) & 0xff, CT));
    const decoded = decodePdu(encodePdu(rq(items))) as AssociatePdu;
    const checked = checkPresentationContexts(decoded);
    assert.equal(checked.contexts.length, MAX_PRESENTATION_CONTEXTS);
    assert.deepEqual(
      checked.contexts.map((c) => c.id),
      Array.from({ length: 128 }, (_, i) => 2 * i + 1),
    );
    assert.deepEqual(checked.dropped, [
      { id: 1, problem: 'too-many' },
      { id: 3, problem: 'too-many' },
    ]);
  });

  test('a duplicate within the first 128 is a duplicate, not too many', () => {
    const items: AssociateItem[] = [appContext, pc(1, CT), pc(1, MR)];
    for (let i = 1; i < 128; i++) items.push(pc(2 * i + 1, CT));
    items.push(pc(7, MR));
    const checked = checkPresentationContexts(rq(items));
    assert.equal(checked.contexts.length, 128);
    assert.deepEqual(checked.dropped, [
      { id: 1, problem: 'duplicate-id' },
      { id: 7, problem: 'too-many' },
    ]);
  });

  test('a request whose every context is invalid is left with none (the caller refuses it 1/1/1)', () => {
    const pdu = rq([appContext, pc(0, CT), pc(2, CT), pc(300, MR), userInfo(maxLength(0))]);
    assert.deepEqual(checkPresentationContexts(pdu), {
      contexts: [],
      dropped: [
        { id: 0, problem: 'out-of-range' },
        { id: 2, problem: 'even-id' },
        { id: 300, problem: 'out-of-range' },
      ],
    });
    assert.throws(
      () =>
        forwardRequest(pdu, {
          contexts: checkPresentationContexts(pdu).contexts,
          calledAeTitle: 'ARCHIVE',
          callingAeTitle: null,
          ceiling: CEILING,
        }),
      /no presentation context left to forward/,
    );
  });
});

describe('forwardRequest (PS3.8 9.3.2)', () => {
  test('one refused context: removed, called AE rewritten, max length 0 becomes the ceiling (golden)', () => {
    const fwd = forward(modalityRq, [1]);
    assert.deepEqual(
      fwd,
      rq(
        [
          appContext,
          pc(1, CT, [EXPLICIT_LE, IMPLICIT_LE]),
          userInfo(maxLength(CEILING), classUid('1.2.3.4')),
          { kind: 'unknown', type: 0x60, value: Buffer.from('abcd', 'hex') },
        ],
        'ARCHIVE',
        'CT1',
      ),
    );
    assert.equal(
      encodePdu(fwd).toString('hex'),
      hex(
        '01 00 000000cb', // A-ASSOCIATE-RQ, PDU length 203 = 68 + 25 + 81 + 23 + 6
        '0001 0000',
        a('ARCHIVE         '), // called AE rewritten
        a('CT1             '), // calling AE as received
        zeros(32),
        '10 00 0015', // application context, 21
        a(APP_CONTEXT),
        '20 00 004d 01 00 00 00', // presentation context 1, 77 = 4 + 29 + 23 + 21
        '30 00 0019',
        a(CT),
        '40 00 0013',
        a(EXPLICIT_LE),
        '40 00 0011',
        a(IMPLICIT_LE),
        // presentation context 3 (refused) is gone
        '50 00 0013', // user information, 19 = 8 + 11
        '51 00 0004 00010000', // maximum length 65536 (was 0: unlimited)
        '52 00 0007',
        a('1.2.3.4'),
        '60 00 0002 abcd', // unknown item kept
      ).toString('hex'),
    );
    roundTrips(fwd);
  });

  test('the input is not modified', () => {
    const before = decodePdu(encodePdu(modalityRq));
    forward(modalityRq, [1], 'PROXY-AE');
    assert.deepEqual(modalityRq, before);
  });

  test('the calling AE title is rewritten when configured', () => {
    const fwd = forward(modalityRq, [1, 3], 'PROXY-AE');
    assert.equal(fwd.callingAeTitle, aeTitleField('PROXY-AE'));
    assert.equal(fwd.calledAeTitle, 'ARCHIVE         ');
    assert.deepEqual(
      presentationContextsRq(fwd).map((c) => c.id),
      [1, 3],
    );
    roundTrips(fwd);
  });

  test('max length: below the ceiling kept, above lowered, 0 and absent set to the ceiling', () => {
    const withMax = (items: AssociateItem[]): AssociatePdu =>
      forward(rq([appContext, pc(1, CT), ...items]), [1]);
    const maxOf = (pdu: AssociatePdu): UserInfoSubItem[] =>
      pdu.items.flatMap((i) => (i.kind === 'user-information' ? i.subItems : []));
    assert.deepEqual(maxOf(withMax([userInfo(maxLength(16384))])), [maxLength(16384)]);
    assert.deepEqual(maxOf(withMax([userInfo(maxLength(CEILING))])), [maxLength(CEILING)]);
    assert.deepEqual(maxOf(withMax([userInfo(maxLength(CEILING + 1))])), [maxLength(CEILING)]);
    assert.deepEqual(maxOf(withMax([userInfo(maxLength(0xffffffff))])), [maxLength(CEILING)]);
    assert.deepEqual(maxOf(withMax([userInfo(maxLength(0))])), [maxLength(CEILING)]);
    // no maximum length sub-item: one is added first in the user information item
    assert.deepEqual(maxOf(withMax([userInfo(classUid('1.2.3'))])), [maxLength(CEILING), classUid('1.2.3')]);
    // no user information item: one is added after the presentation contexts
    const bare = withMax([]);
    assert.deepEqual(bare.items, [appContext, pc(1, CT), userInfo(maxLength(CEILING))]);
    roundTrips(bare);
  });

  test('duplicates: each allowed ID forwarded once, from its first occurrence and at its position', () => {
    const pdu = decodePdu(
      encodePdu(
        rq([
          appContext,
          pc(3, MR),
          pc(1, CT),
          pc(3, VERIFICATION),
          pc(5, VERIFICATION),
          pc(1, MR),
          userInfo(maxLength(16384)),
        ]),
      ),
    ) as AssociatePdu;
    const fwd = forward(pdu, [1, 3, 5]);
    assert.deepEqual(fwd.items, [
      appContext,
      pc(3, MR),
      pc(1, CT),
      pc(5, VERIFICATION),
      userInfo(maxLength(16384)),
    ]);
    roundTrips(fwd);
  });

  test('user information sub-items and unknown items are kept in order, contexts interleaved with them', () => {
    const subItems: UserInfoSubItem[] = [
      classUid('1.2.3.4'),
      { kind: 'unknown', type: 0x5f, value: Buffer.from('0102', 'hex') },
      maxLength(1_000_000),
      { kind: 'role-selection', sopClassUid: CT, scuRole: 1, scpRole: 1 },
      { kind: 'implementation-version-name', name: 'MODALITY_1' },
      {
        kind: 'user-identity-rq',
        identityType: 2,
        positiveResponseRequested: 1,
        primaryField: Buffer.from('user'),
        secondaryField: Buffer.from('secret'),
      },
      { kind: 'extended-negotiation', sopClassUid: CT, info: Buffer.from('01', 'hex') },
    ];
    const pdu = rq([
      { kind: 'unknown', type: 0x7f, value: Buffer.from('ff', 'hex') },
      appContext,
      pc(1, CT),
      { kind: 'unknown', type: 0x33, value: Buffer.alloc(0) },
      pc(3, MR),
      pc(5, VERIFICATION),
      userInfo(...subItems),
      { kind: 'unknown', type: 0x61, value: Buffer.from('0a0b0c', 'hex') },
    ]);
    const fwd = forward(pdu, [1, 5]);
    assert.deepEqual(
      fwd,
      rq(
        [
          { kind: 'unknown', type: 0x7f, value: Buffer.from('ff', 'hex') },
          appContext,
          pc(1, CT),
          { kind: 'unknown', type: 0x33, value: Buffer.alloc(0) },
          pc(5, VERIFICATION),
          userInfo(...subItems.map((s) => (s.kind === 'max-length' ? maxLength(CEILING) : s))),
          { kind: 'unknown', type: 0x61, value: Buffer.from('0a0b0c', 'hex') },
        ],
        'ARCHIVE',
      ),
    );
    roundTrips(fwd);
  });

  test('the contexts are forwarded as given (a narrowed transfer syntax list is honoured)', () => {
    const narrowed = { id: 1, abstractSyntax: CT, transferSyntaxes: [IMPLICIT_LE] };
    const fwd = forwardRequest(modalityRq, {
      contexts: [narrowed],
      calledAeTitle: 'ARCHIVE',
      callingAeTitle: null,
      ceiling: CEILING,
    });
    assert.deepEqual(presentationContextsRq(fwd), [narrowed]);
  });

  test('a context given but not in the request, or with an invalid ID, is never emitted', () => {
    const pdu = rq([appContext, pc(1, CT), pc(2, MR), userInfo(maxLength(0))]);
    const fwd = forwardRequest(pdu, {
      contexts: [
        { id: 1, abstractSyntax: CT, transferSyntaxes: [IMPLICIT_LE] },
        { id: 2, abstractSyntax: MR, transferSyntaxes: [IMPLICIT_LE] },
        { id: 9, abstractSyntax: MR, transferSyntaxes: [IMPLICIT_LE] },
      ],
      calledAeTitle: 'ARCHIVE',
      callingAeTitle: null,
      ceiling: CEILING,
    });
    assert.deepEqual(
      presentationContextsRq(fwd).map((c) => c.id),
      [1],
    );
  });
});

describe('answerRequestor (PS3.8 9.3.3)', () => {
  const forwarded = forward(modalityRq, [1]);
  const answerOf = (archiveAc: AssociatePdu, fwd = forwarded, refused = [{ id: 3 }]) =>
    answerRequestor(modalityRq, archiveAc, { forwarded: fwd, refused, ceiling: CEILING });

  test('one refused context: answered 3 after the archive answer, AE fields restored (golden)', () => {
    const archiveAc = ac([
      appContext,
      answer(1, 0, EXPLICIT_LE),
      userInfo(maxLength(0x8000), classUid('1.2.3.5')),
    ]);
    const result = answerOf(archiveAc);
    assert.deepEqual(result.problems, []);
    assert.deepEqual([...result.accepted], [[1, { abstractSyntax: CT, transferSyntax: EXPLICIT_LE }]]);
    assert.deepEqual(
      result.ac,
      ac(
        [
          appContext,
          answer(1, 0, EXPLICIT_LE),
          answer(3, 3),
          userInfo(maxLength(0x8000), classUid('1.2.3.5')),
        ],
        'PROXY',
        'CT1',
      ),
    );
    assert.equal(
      encodePdu(result.ac).toString('hex'),
      hex(
        '02 00 0000009b', // A-ASSOCIATE-AC, PDU length 155 = 68 + 25 + 31 + 8 + 23
        '0001 0000',
        a('PROXY           '), // the modality's called AE, not the archive's
        a('CT1             '),
        zeros(32),
        '10 00 0015',
        a(APP_CONTEXT),
        '21 00 001b 01 00 00 00', // context 1 accepted, 27 = 4 + 23
        '40 00 0013',
        a(EXPLICIT_LE),
        '21 00 0004 03 00 03 00', // context 3: abstract syntax not supported, no transfer syntax sub-item
        '50 00 0013',
        '51 00 0004 00008000', // the archive's 32768, under the ceiling
        '52 00 0007',
        a('1.2.3.5'),
      ).toString('hex'),
    );
    roundTrips(result.ac);
  });

  test("the requestor's AE fields and reserved bytes are restored whatever the archive echoed", () => {
    const reserved = Buffer.alloc(32, 0x5a);
    const modality = { ...modalityRq, reserved };
    const fwd = forward(modality, [1]);
    const archiveAc = associate(0x02, 'SOMETHING', 'ELSE', [appContext, answer(1, 0, IMPLICIT_LE)]);
    const result = answerRequestor(modality, archiveAc, {
      forwarded: fwd,
      refused: [{ id: 3 }],
      ceiling: CEILING,
    });
    assert.equal(result.ac.calledAeTitle, 'PROXY           ');
    assert.equal(result.ac.callingAeTitle, 'CT1             ');
    assert.deepEqual(result.ac.reserved, reserved);
  });

  test('answers in the order the modality proposed, placed where the archive put its answers', () => {
    const pdu = rq([appContext, pc(5, CT), pc(1, MR), pc(3, VERIFICATION), userInfo(maxLength(0))]);
    const fwd = forward(pdu, [5, 3]);
    const archiveAc = ac([
      { kind: 'unknown', type: 0x70, value: Buffer.from('01', 'hex') },
      appContext,
      answer(3, 0, IMPLICIT_LE),
      { kind: 'unknown', type: 0x71, value: Buffer.alloc(0) },
      answer(5, 4),
      userInfo(maxLength(0), { kind: 'user-identity-ac', serverResponse: Buffer.from('ok') }),
      { kind: 'unknown', type: 0x72, value: Buffer.from('02', 'hex') },
    ]);
    const result = answerRequestor(pdu, archiveAc, {
      forwarded: fwd,
      refused: [{ id: 1 }],
      ceiling: CEILING,
    });
    assert.deepEqual(result.problems, []);
    assert.deepEqual(result.ac.items, [
      { kind: 'unknown', type: 0x70, value: Buffer.from('01', 'hex') },
      appContext,
      answer(5, 4),
      answer(1, 3),
      answer(3, 0, IMPLICIT_LE),
      { kind: 'unknown', type: 0x71, value: Buffer.alloc(0) },
      userInfo(maxLength(CEILING), { kind: 'user-identity-ac', serverResponse: Buffer.from('ok') }),
      { kind: 'unknown', type: 0x72, value: Buffer.from('02', 'hex') },
    ]);
    assert.deepEqual(
      [...result.accepted],
      [[3, { abstractSyntax: VERIFICATION, transferSyntax: IMPLICIT_LE }]],
    );
    roundTrips(result.ac);
  });

  test('an archive AC without presentation context items gets them before the user information', () => {
    const result = answerOf(ac([appContext, userInfo(maxLength(16384))]));
    assert.deepEqual(result.ac.items, [appContext, answer(1, 2), answer(3, 3), userInfo(maxLength(16384))]);
    assert.deepEqual(result.problems, [
      { id: 1, problem: 'not-answered', message: 'presentation context 1: not answered by the acceptor' },
    ]);
    assert.equal(result.accepted.size, 0);
  });

  test('an answer for an ID that was not forwarded is dropped (refused 3 still answered 3)', () => {
    const result = answerOf(
      ac([appContext, answer(7, 0, IMPLICIT_LE), answer(1, 0, EXPLICIT_LE), answer(3, 0, IMPLICIT_LE)]),
    );
    assert.deepEqual(contextsAc(result.ac), [
      { id: 1, result: 0, transferSyntax: EXPLICIT_LE },
      { id: 3, result: 3, transferSyntax: '' },
    ]);
    assert.deepEqual(result.problems, [
      {
        id: 7,
        problem: 'not-forwarded',
        message: 'presentation context 7: answered (result 0) but not proposed to the acceptor',
      },
      {
        id: 3,
        problem: 'not-forwarded',
        message: 'presentation context 3: answered (result 0) but not proposed to the acceptor',
      },
    ]);
    assert.deepEqual([...result.accepted.keys()], [1]);
  });

  test('a duplicate answer is dropped, the first one counts', () => {
    const result = answerOf(ac([appContext, answer(1, 4), answer(1, 0, EXPLICIT_LE)]));
    assert.deepEqual(contextsAc(result.ac), [
      { id: 1, result: 4, transferSyntax: '' },
      { id: 3, result: 3, transferSyntax: '' },
    ]);
    assert.deepEqual(result.problems, [
      {
        id: 1,
        problem: 'duplicate-answer',
        message: 'presentation context 1: a second answer (result 0) is ignored',
      },
    ]);
    assert.equal(result.accepted.size, 0);
  });

  test('an acceptance with a transfer syntax that was not proposed is answered 2 (no reason)', () => {
    const result = answerOf(ac([appContext, answer(1, 0, `${JPEG_LOSSLESS}\0`), answer(1, 0, EXPLICIT_LE)]));
    assert.deepEqual(contextsAc(result.ac), [
      { id: 1, result: 2, transferSyntax: '' },
      { id: 3, result: 3, transferSyntax: '' },
    ]);
    assert.deepEqual(result.problems, [
      {
        id: 1,
        problem: 'transfer-syntax-not-proposed',
        message: `presentation context 1: accepted with transfer syntax "${JPEG_LOSSLESS}", which was not proposed for it`,
      },
      {
        id: 1,
        problem: 'duplicate-answer',
        message: 'presentation context 1: a second answer (result 0) is ignored',
      },
    ]);
    assert.equal(result.accepted.size, 0);
  });

  test('the transfer syntax check compares UIDs without their wire padding', () => {
    const result = answerOf(ac([appContext, answer(1, 0, `${IMPLICIT_LE}\0`)]));
    assert.deepEqual(result.problems, []);
    assert.deepEqual([...result.accepted], [[1, { abstractSyntax: CT, transferSyntax: IMPLICIT_LE }]]);
    assert.deepEqual(contextsAc(result.ac)[0], { id: 1, result: 0, transferSyntax: `${IMPLICIT_LE}\0` });
  });

  test('a forwarded context the archive did not answer is answered 2 (no-reason, provider rejection)', () => {
    const pdu = rq([appContext, pc(1, CT), pc(3, MR), pc(5, VERIFICATION), userInfo(maxLength(0))]);
    const fwd = forward(pdu, [1, 3, 5]);
    const result = answerRequestor(pdu, ac([appContext, answer(3, 0, IMPLICIT_LE)]), {
      forwarded: fwd,
      refused: [],
      ceiling: CEILING,
    });
    assert.deepEqual(contextsAc(result.ac), [
      { id: 1, result: 2, transferSyntax: '' },
      { id: 3, result: 0, transferSyntax: IMPLICIT_LE },
      { id: 5, result: 2, transferSyntax: '' },
    ]);
    assert.deepEqual(
      result.problems.map((p) => [p.id, p.problem]),
      [
        [1, 'not-answered'],
        [5, 'not-answered'],
      ],
    );
  });

  test('duplicates and invalid IDs of the request: each valid ID answered once, invalid ones never', () => {
    const pdu = rq([appContext, pc(1, CT), pc(2, CT), pc(1, MR), pc(3, MR), userInfo(maxLength(0))]);
    const fwd = forward(pdu, [1, 3]);
    const result = answerRequestor(pdu, ac([appContext, answer(1, 0, IMPLICIT_LE), answer(3, 1)]), {
      forwarded: fwd,
      refused: [],
      ceiling: CEILING,
    });
    assert.deepEqual(contextsAc(result.ac), [
      { id: 1, result: 0, transferSyntax: IMPLICIT_LE },
      { id: 3, result: 1, transferSyntax: '' },
    ]);
    assert.deepEqual([...result.accepted], [[1, { abstractSyntax: CT, transferSyntax: IMPLICIT_LE }]]);
  });

  test('the max length toward the modality is capped: 0 and above the ceiling become the ceiling', () => {
    const maxOf = (n: number): number | undefined => {
      const back = answerOf(ac([appContext, answer(1, 0, IMPLICIT_LE), userInfo(maxLength(n))])).ac;
      const ui = back.items.find((i) => i.kind === 'user-information');
      const sub =
        ui?.kind === 'user-information' ? ui.subItems.find((s) => s.kind === 'max-length') : undefined;
      return sub?.kind === 'max-length' ? sub.maxLength : undefined;
    };
    assert.equal(maxOf(0), CEILING);
    assert.equal(maxOf(CEILING * 4), CEILING);
    assert.equal(maxOf(4096), 4096);
  });
});

describe('maxLengths (PS3.8 D.1)', () => {
  const req = (n?: number): AssociatePdu =>
    rq([appContext, pc(1, CT), ...(n === undefined ? [] : [userInfo(maxLength(n))])]);
  const acc = (n?: number): AssociatePdu =>
    ac([appContext, answer(1, 0, IMPLICIT_LE), ...(n === undefined ? [] : [userInfo(maxLength(n))])]);

  test('each direction is bounded by what the receiving side advertised, capped at the ceiling', () => {
    // the modality sends toward the archive: the archive's AC value; the archive: the modality's RQ value
    assert.deepEqual(maxLengths(req(16384), acc(32768), CEILING), {
      towardArchive: 32768,
      towardModality: 16384,
    });
    assert.deepEqual(maxLengths(req(0), acc(0), CEILING), {
      towardArchive: CEILING,
      towardModality: CEILING,
    });
    assert.deepEqual(maxLengths(req(), acc(), CEILING), { towardArchive: CEILING, towardModality: CEILING });
    assert.deepEqual(maxLengths(req(CEILING * 2), acc(4096), CEILING), {
      towardArchive: 4096,
      towardModality: CEILING,
    });
  });

  test('the PDUs as received and as the proxy sent them give the same limits', () => {
    const forwarded = forward(modalityRq, [1]);
    const archiveAc = ac([appContext, answer(1, 0, EXPLICIT_LE), userInfo(maxLength(0))]);
    const back = answerRequestor(modalityRq, archiveAc, {
      forwarded,
      refused: [{ id: 3 }],
      ceiling: CEILING,
    }).ac;
    assert.deepEqual(maxLengths(forwarded, back, CEILING), maxLengths(modalityRq, archiveAc, CEILING));
    assert.deepEqual(maxLengths(forwarded, back, CEILING), {
      towardArchive: CEILING,
      towardModality: CEILING,
    });
  });
});

// ------------------------------------------------------------------------------------------------
// Properties
// ------------------------------------------------------------------------------------------------

const RUN = { numRuns: 500, interruptAfterTimeLimit: 2500 } as const;

const uid: fc.Arbitrary<string> = fc
  .tuple(fc.stringMatching(/^[0-9.]{1,64}$/), fc.constantFrom('', '\0'))
  .map(([text, pad]) => text + pad);

/** A context item whose ID is anything a buggy requestor might number (decodes when odd 1-255). */
const contextItem = (ids: fc.Arbitrary<number>): fc.Arbitrary<AssociateItem> =>
  fc
    .record(
      {
        id: ids,
        abstractSyntax: uid,
        transferSyntaxes: fc.array(uid, { minLength: 1, maxLength: 3 }),
      },
      { noNullPrototype: true },
    )
    .map((context) => ({ kind: 'presentation-context-rq' as const, context }));

/** At most one user information item (PS3.8 9.3.2) and up to two unknown items. */
const otherItems: fc.Arbitrary<AssociateItem[]> = fc
  .tuple(
    fc.option(
      fc.nat({ max: 0xffffffff }).map((n) => userInfo(maxLength(n), classUid('1.2.3'))),
      { nil: undefined },
    ),
    fc.array(
      fc
        .uint8Array({ maxLength: 8 })
        .map((v): AssociateItem => ({ kind: 'unknown', type: 0x60, value: Buffer.from(v) })),
      { maxLength: 2 },
    ),
  )
  .map(([ui, unknown]) => [...(ui ? [ui] : []), ...unknown]);

const request = (ids: fc.Arbitrary<number>): fc.Arbitrary<AssociatePdu> =>
  fc
    .tuple(fc.array(contextItem(ids), { minLength: 1, maxLength: 140 }), otherItems)
    .map(([contexts, others]) => rq([appContext, ...contexts, ...others]));

describe('properties', () => {
  test('forwardRequest emits only allowed, valid IDs, each once, in request order', () => {
    fc.assert(
      fc.property(
        request(fc.integer({ min: -2, max: 300 })),
        fc.array(fc.boolean(), { minLength: 140, maxLength: 140 }),
        fc.array(fc.integer({ min: 0, max: 300 }), { maxLength: 4 }),
        (pdu, pick, extraIds) => {
          const valid = checkPresentationContexts(pdu).contexts;
          const chosen = valid.filter((_, i) => pick[i] === true);
          const extra = extraIds.map((id) => ({ id, abstractSyntax: CT, transferSyntaxes: [IMPLICIT_LE] }));
          const allowed = [...chosen, ...extra];
          const allowedIds = new Set(allowed.map((c) => c.id));
          const validIds = new Set(valid.map((c) => c.id));
          const expected = [...validIds].filter((id) => allowedIds.has(id));
          if (expected.length === 0) {
            assert.throws(() =>
              forwardRequest(pdu, {
                contexts: allowed,
                calledAeTitle: 'ARCHIVE',
                callingAeTitle: null,
                ceiling: CEILING,
              }),
            );
            return;
          }
          const fwd = forwardRequest(pdu, {
            contexts: allowed,
            calledAeTitle: 'ARCHIVE',
            callingAeTitle: null,
            ceiling: CEILING,
          });
          const ids = presentationContextsRq(fwd).map((c) => c.id);
          assert.equal(new Set(ids).size, ids.length, 'no duplicate IDs');
          for (const id of ids) assert.ok(allowedIds.has(id) && validIds.has(id), `ID ${id} not allowed`);
          assert.deepEqual(ids, expected);
          assert.ok(ids.length <= MAX_PRESENTATION_CONTEXTS);
        },
      ),
      RUN,
    );
  });

  test('a forwarded request round trips and its other items are the request items in order', () => {
    fc.assert(
      fc.property(
        request(fc.integer({ min: 0, max: 127 }).map((n) => 2 * n + 1)),
        fc.array(fc.boolean(), { minLength: 140, maxLength: 140 }),
        (pdu, pick) => {
          const valid = checkPresentationContexts(pdu).contexts;
          const chosen = valid.filter((_, i) => pick[i] === true || i === 0);
          const fwd = forwardRequest(pdu, {
            contexts: chosen,
            calledAeTitle: 'ARCHIVE',
            callingAeTitle: 'PROXY',
            ceiling: CEILING,
          });
          roundTrips(fwd);
          const others = (p: AssociatePdu): string[] =>
            p.items
              .filter((i) => i.kind === 'unknown' || i.kind === 'application-context')
              .map((i) => JSON.stringify(i));
          assert.deepEqual(others(fwd), others(pdu));
          const limits = maxLengths(fwd, ac([appContext]), CEILING);
          assert.ok(limits.towardModality >= 1 && limits.towardModality <= CEILING);
        },
      ),
      RUN,
    );
  });
});
