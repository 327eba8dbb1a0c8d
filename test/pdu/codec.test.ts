import { test, describe } from 'node:test';
import assert from 'node:assert/strict';

import {
  AbortReason,
  PduError,
  aeTitleField,
  aeTitleText,
  decodePdu,
  encodeAbort,
  encodeAssociateRj,
  encodePdu,
  encodeReleaseRp,
  encodeReleaseRq,
  maxLengthOf,
  presentationContextsAc,
  presentationContextsRq,
  roleSelections,
  uidText,
  userInfoSubItems,
  withMaxLength,
  type AssociatePdu,
  type PduErrorCode,
} from '../../src/pdu/index.js';
import {
  a,
  appContextItem,
  associate,
  contextAcItem,
  contextRqItem,
  fixture,
  fixtures,
  hex,
  item,
  lv,
  pdu,
  uidItem,
  uids,
} from './fixtures.js';

interface Expected {
  code: PduErrorCode;
  field: string;
  abortReason?: number;
  message?: RegExp;
}

function throwsPdu(fn: () => unknown, expected: Expected): PduError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof PduError, `expected a PduError, got ${String(caught)}`);
  assert.equal(caught.code, expected.code, caught.message);
  assert.equal(caught.field, expected.field, caught.message);
  assert.equal(
    caught.abortReason,
    expected.abortReason ?? AbortReason.InvalidPduParameterValue,
    caught.message,
  );
  assert.ok(caught.message.startsWith(`${expected.field}: `), caught.message);
  if (expected.message) assert.match(caught.message, expected.message);
  return caught;
}

function decodeThrows(raw: Buffer, expected: Expected): PduError {
  return throwsPdu(() => decodePdu(raw), expected);
}

function decodeAssociate(raw: Buffer): AssociatePdu {
  const d = decodePdu(raw);
  assert.ok(d.type === 0x01 || d.type === 0x02);
  return d;
}

function roundTrips(raw: Buffer): void {
  assert.deepEqual(encodePdu(decodePdu(raw)), raw);
}

const rq = (...items: string[]): Buffer => associate(1, items);
const ac = (...items: string[]): Buffer => associate(2, items);
/** An RQ with the standard application and presentation context and the given user information sub-items. */
const rqWithUserInfo = (...subItems: string[]): Buffer =>
  rq(appContextItem, contextRqItem, item(0x50, ...subItems));
const UI = 'A-ASSOCIATE-RQ.user-information';

describe('golden fixtures', () => {
  for (const f of fixtures) {
    test(`${f.name} decodes to the expected object`, () => {
      assert.deepEqual(decodePdu(f.bytes), f.pdu);
    });
    test(`${f.name} encodes to the golden bytes`, () => {
      assert.deepEqual(encodePdu(f.pdu), f.bytes);
      assert.deepEqual(encodePdu(decodePdu(f.bytes)), f.bytes);
    });
  }

  test('fixed PDU encoders produce the golden bytes', () => {
    assert.deepEqual(encodeAssociateRj(1, 1, 3), fixture('A-ASSOCIATE-RJ 1/1/3').bytes);
    assert.deepEqual(encodeReleaseRq(), fixture('A-RELEASE-RQ').bytes);
    assert.deepEqual(encodeReleaseRp(), fixture('A-RELEASE-RP').bytes);
    assert.deepEqual(encodeAbort(2, 6), fixture('A-ABORT 2/6').bytes);
  });

  test('decoded PDV values are views into the raw PDU', () => {
    const raw = Buffer.from(fixture('P-DATA-TF').bytes);
    const d = decodePdu(raw);
    assert.equal(d.type, 0x04);
    if (d.type !== 0x04) return;
    assert.equal(d.pdvs[2]?.value.buffer, raw.buffer);
  });
});

describe('round trip details', () => {
  test('UID pads (NUL or space) are kept and stripped by uidText', () => {
    const raw = rq(
      appContextItem,
      item(0x20, '01 00 00 00', uidItem(0x30, `${uids.CT}\0`), uidItem(0x40, `${uids.EXPLICIT_LE} `)),
    );
    const d = decodeAssociate(raw);
    const [pc] = presentationContextsRq(d);
    assert.equal(pc?.abstractSyntax, `${uids.CT}\0`);
    assert.equal(uidText(pc?.abstractSyntax ?? ''), uids.CT);
    assert.equal(uidText(pc?.transferSyntaxes[0] ?? ''), uids.EXPLICIT_LE);
    roundTrips(raw);
  });

  test('a 64-character UID with a NUL pad is valid', () => {
    const uid = `1.${'2'.repeat(62)}`;
    roundTrips(rq(appContextItem, item(0x20, '01 00 00 00', uidItem(0x30, `${uid}\0`), uidItem(0x40, uid))));
  });

  test('rejected AC context: absent, empty and untested transfer syntax sub-items round trip', () => {
    const raw = ac(
      appContextItem,
      item(0x21, '01 00 03 00'),
      item(0x21, '03 00 04 00', item(0x40)),
      item(0x21, '05 00 01 00', item(0x40, a('not a uid!'))),
    );
    const d = decodeAssociate(raw);
    assert.deepEqual(presentationContextsAc(d), [
      { id: 1, result: 3, transferSyntax: '' },
      { id: 3, result: 4, transferSyntax: '', emptyTransferSyntaxItem: true },
      { id: 5, result: 1, transferSyntax: 'not a uid!' },
    ]);
    roundTrips(raw);
  });

  test('the AE title fields of an A-ASSOCIATE-AC are not tested', () => {
    roundTrips(associate(2, [appContextItem, contextAcItem], { called: 'A\\B\n            ' }));
  });

  test('AE titles padded with trailing NULs are accepted', () => {
    const d = decodeAssociate(
      associate(1, [appContextItem, contextRqItem], { calling: 'MODALITY\0\0\0\0\0\0\0\0' }),
    );
    assert.equal(aeTitleText(d.callingAeTitle), 'MODALITY');
  });

  test('unknown items keep their position, the 32 reserved bytes are kept', () => {
    const raw = rq(item(0x7f, 'ff'), appContextItem, item(0x30, 'ee'), contextRqItem, item(0x50), item(0x11));
    raw.fill(0xa5, 42, 74);
    const d = decodeAssociate(raw);
    assert.deepEqual(
      d.items.map((i) => (i.kind === 'unknown' ? i.type : i.kind)),
      [0x7f, 'application-context', 0x30, 'presentation-context-rq', 'user-information', 0x11],
    );
    assert.deepEqual(d.reserved, Buffer.alloc(32, 0xa5));
    roundTrips(raw);
  });

  test('the protocol version is carried as given', () => {
    const raw = rq(appContextItem, contextRqItem);
    raw.writeUInt16BE(0x0002, 6);
    assert.equal(decodeAssociate(raw).protocolVersion, 2);
    roundTrips(raw);
  });

  test('small reserved fields are not tested and are encoded as 00H (PS3.8 9.3.1)', () => {
    const raw = hex('05 ff 00000004 deadbeef');
    assert.deepEqual(decodePdu(raw), { type: 0x05 });
    assert.deepEqual(encodePdu(decodePdu(raw)), fixture('A-RELEASE-RQ').bytes);
    assert.deepEqual(decodePdu(hex('07 00 00000004 ffff 00 09')), { type: 0x07, source: 0, reason: 9 });
  });
});

describe('helpers', () => {
  const rqPdu = fixture('A-ASSOCIATE-RQ').pdu as AssociatePdu;
  const acPdu = fixture('A-ASSOCIATE-AC').pdu as AssociatePdu;

  test('presentationContextsRq / Ac return copies in wire order', () => {
    const contexts = presentationContextsRq(rqPdu);
    assert.deepEqual(
      contexts.map((c) => c.id),
      [1, 3, 5],
    );
    contexts[0]?.transferSyntaxes.push('9.9');
    assert.deepEqual(presentationContextsRq(rqPdu)[0]?.transferSyntaxes.length, 3);
    assert.deepEqual(presentationContextsAc(acPdu), [
      { id: 1, result: 0, transferSyntax: uids.EXPLICIT_LE },
      { id: 3, result: 3, transferSyntax: '' },
      { id: 5, result: 4, transferSyntax: uids.IMPLICIT_LE },
    ]);
    assert.deepEqual(presentationContextsAc(rqPdu), []);
  });

  test('userInfoSubItems, maxLengthOf, roleSelections', () => {
    assert.equal(userInfoSubItems(rqPdu).length, 9);
    assert.equal(maxLengthOf(rqPdu), 16384);
    assert.equal(maxLengthOf(acPdu), 32768);
    assert.deepEqual(roleSelections(rqPdu), [
      { kind: 'role-selection', sopClassUid: uids.CT, scuRole: 1, scpRole: 0 },
    ]);
    const bare = decodeAssociate(rq(appContextItem, contextRqItem));
    assert.deepEqual(userInfoSubItems(bare), []);
    assert.equal(maxLengthOf(bare), undefined);
    assert.deepEqual(roleSelections(bare), []);
  });

  test('withMaxLength replaces the value and keeps everything else, unknown items included', () => {
    const raw = fixture('A-ASSOCIATE-RQ').bytes;
    const original = decodeAssociate(raw);
    const snapshot = encodePdu(original);
    const changed = withMaxLength(original, 65536);
    assert.equal(maxLengthOf(changed), 65536);
    const out = encodePdu(changed);
    assert.equal(out.length, raw.length);
    const at = raw.indexOf(hex('51 00 0004 00004000'));
    assert.deepEqual(out.subarray(0, at + 4), raw.subarray(0, at + 4));
    assert.deepEqual(out.subarray(at + 4, at + 8), hex('00010000'));
    assert.deepEqual(out.subarray(at + 8), raw.subarray(at + 8));
    // the input is not mutated
    assert.deepEqual(encodePdu(original), snapshot);
    assert.equal(maxLengthOf(original), 16384);
  });

  test('withMaxLength adds the sub-item first in the user information item when absent', () => {
    const d = decodeAssociate(rqWithUserInfo(uidItem(0x52, uids.DCMTK_CLASS_UID), item(0x5f, '01')));
    const changed = withMaxLength(d, 16384);
    assert.deepEqual(
      userInfoSubItems(changed).map((s) => s.kind),
      ['max-length', 'implementation-class-uid', 'unknown'],
    );
    assert.deepEqual(userInfoSubItems(d).length, 2);
    assert.deepEqual(decodePdu(encodePdu(changed)), changed);
  });

  test('withMaxLength adds a user information item before higher item types when absent', () => {
    const d = decodeAssociate(rq(appContextItem, contextRqItem, item(0x60, 'ab')));
    const changed = withMaxLength(d, 0);
    assert.deepEqual(
      changed.items.map((i) => i.kind),
      ['application-context', 'presentation-context-rq', 'user-information', 'unknown'],
    );
    assert.equal(maxLengthOf(changed), 0);
    assert.equal(d.items.length, 3);
    const last = decodeAssociate(rq(appContextItem, contextRqItem));
    assert.equal(withMaxLength(last, 1).items.at(-1)?.kind, 'user-information');
  });

  test('withMaxLength refuses values outside 0..2^32-1', () => {
    for (const bad of [-1, 2 ** 32, 1.5, Number.NaN]) {
      throwsPdu(() => withMaxLength(rqPdu, bad), {
        code: 'INVALID_VALUE',
        field: 'user-information.max-length',
      });
    }
  });

  test('aeTitleText trims the non-significant spaces (and NUL padding)', () => {
    assert.equal(aeTitleText('STORESCU        '), 'STORESCU');
    assert.equal(aeTitleText('  MY AE         '), 'MY AE');
    assert.equal(aeTitleText('PACS\0\0\0\0\0\0\0\0\0\0\0\0'), 'PACS');
    assert.equal(aeTitleText('                '), '');
  });

  test('aeTitleField pads to 16 and refuses invalid titles', () => {
    assert.equal(aeTitleField('STORESCU'), 'STORESCU        ');
    assert.equal(aeTitleField('ABCDEFGHIJKLMNOP'), 'ABCDEFGHIJKLMNOP');
    assert.equal(aeTitleField(' X'), ' X              ');
    throwsPdu(() => aeTitleField('ABCDEFGHIJKLMNOPQ'), {
      code: 'INVALID_VALUE',
      field: 'AE-title',
      message: /17 characters, max 16/,
    });
    throwsPdu(() => aeTitleField('A\\B'), {
      code: 'INVALID_VALUE',
      field: 'AE-title',
      message: /0x5c at offset 1/,
    });
    throwsPdu(() => aeTitleField('A\nB'), { code: 'INVALID_VALUE', field: 'AE-title', message: /0x0a/ });
    throwsPdu(() => aeTitleField('\u00e9'), { code: 'INVALID_VALUE', field: 'AE-title' });
    throwsPdu(() => aeTitleField('   '), { code: 'INVALID_VALUE', field: 'AE-title' });
    throwsPdu(() => aeTitleField(''), { code: 'INVALID_VALUE', field: 'AE-title' });
  });

  test('uidText and aeTitleText stay linear on long runs of padding', () => {
    const spaces = ' '.repeat(200_000);
    assert.equal(uidText(`${spaces}x`), `${spaces}x`);
    assert.equal(uidText(`1${'\0 '.repeat(100_000)}`), '1');
    assert.equal(aeTitleText(`${spaces}x${spaces}`), 'x');
  });

  test('uidText strips trailing NULs and spaces only', () => {
    assert.equal(uidText('1.2.3\0'), '1.2.3');
    assert.equal(uidText('1.2.3 '), '1.2.3');
    assert.equal(uidText('1.2.3'), '1.2.3');
    assert.equal(uidText(' 1.2'), ' 1.2');
  });
});

describe('PduError', () => {
  test('carries code, field, abortReason and cause', () => {
    const cause = new Error('inner');
    const e = new PduError('INVALID_VALUE', 'X.y', 'bad', { cause });
    assert.ok(e instanceof Error);
    assert.equal(e.name, 'PduError');
    assert.equal(e.message, 'X.y: bad');
    assert.equal(e.cause, cause);
    assert.equal(e.abortReason, 6);
    assert.equal(new PduError('UNRECOGNIZED_PDU', 'PDU.type', 'x').abortReason, 1);
    assert.equal(new PduError('INVALID_VALUE', 'f', 'x', { abortReason: 5 }).abortReason, 5);
  });
});

describe('validation: PDU header and fixed PDUs', () => {
  test('fewer than 6 bytes', () => {
    decodeThrows(hex('05 00 0000'), { code: 'TRUNCATED', field: 'PDU.header', message: /4 bytes/ });
  });

  test('unrecognized PDU types', () => {
    for (const t of [0x00, 0x08, 0xff]) {
      decodeThrows(pdu(t, '00000000'), { code: 'UNRECOGNIZED_PDU', field: 'PDU.type', abortReason: 1 });
    }
  });

  test('PDU length larger than the bytes present', () => {
    decodeThrows(hex('05 00 00000004 0000'), {
      code: 'TRUNCATED',
      field: 'A-RELEASE-RQ.length',
      message: /PDU length 4 exceeds the 2 bytes present/,
    });
  });

  test('bytes after the PDU', () => {
    decodeThrows(hex('06 00 00000004 00000000 00'), {
      code: 'INVALID_LENGTH',
      field: 'A-RELEASE-RP.length',
      message: /PDU length 4 but 5 bytes follow/,
    });
  });

  for (const [type, name] of [
    [0x03, 'A-ASSOCIATE-RJ'],
    [0x05, 'A-RELEASE-RQ'],
    [0x06, 'A-RELEASE-RP'],
    [0x07, 'A-ABORT'],
  ] as const) {
    test(`${name} body length must be 4`, () => {
      decodeThrows(pdu(type, '000101'), {
        code: 'INVALID_LENGTH',
        field: `${name}.length`,
        message: /length 3, expected 4/,
      });
      decodeThrows(pdu(type, '0001010100'), {
        code: 'INVALID_LENGTH',
        field: `${name}.length`,
        message: /length 5/,
      });
    });
  }

  test('A-ASSOCIATE-RJ result and source', () => {
    decodeThrows(pdu(0x03, '00 03 01 01'), {
      code: 'INVALID_VALUE',
      field: 'A-ASSOCIATE-RJ.result',
      message: /3/,
    });
    decodeThrows(pdu(0x03, '00 01 00 01'), { code: 'INVALID_VALUE', field: 'A-ASSOCIATE-RJ.source' });
    decodeThrows(pdu(0x03, '00 02 04 01'), { code: 'INVALID_VALUE', field: 'A-ASSOCIATE-RJ.source' });
    assert.deepEqual(decodePdu(pdu(0x03, '00 02 03 02')), { type: 0x03, result: 2, source: 3, reason: 2 });
  });

  test('A-ABORT source', () => {
    decodeThrows(pdu(0x07, '0000 03 00'), {
      code: 'INVALID_VALUE',
      field: 'A-ABORT.source',
      message: /source 3/,
    });
  });
});

describe('validation: P-DATA-TF', () => {
  test('PDV length below 2', () => {
    decodeThrows(pdu(0x04, '00000001 01'), {
      code: 'INVALID_LENGTH',
      field: 'P-DATA-TF.pdv[0].length',
      message: /PDV length 1 in PDV\[0\] is less than 2/,
    });
  });

  test('PDV length beyond the PDU', () => {
    const raw = pdu(0x04, '00000002 01 00', '00011170 01 02', '00'.repeat(16376));
    assert.equal(raw.readUInt32BE(2), 16388);
    decodeThrows(raw, {
      code: 'INVALID_LENGTH',
      field: 'P-DATA-TF.pdv[1].length',
      message: /PDV length 70000 exceeds remaining P-DATA-TF length 16378 in PDV\[1\]/,
    });
  });

  test('bytes too few for a PDV header', () => {
    decodeThrows(pdu(0x04, '00000003 01 02 ff', '000000'), {
      code: 'INVALID_LENGTH',
      field: 'P-DATA-TF.pdv[1]',
      message: /3 bytes remain/,
    });
  });

  test('zero PDVs', () => {
    decodeThrows(pdu(0x04), { code: 'MISSING_ITEM', field: 'P-DATA-TF.pdv' });
  });

  test('reserved message control header bits', () => {
    decodeThrows(pdu(0x04, '00000003 01 04 ff'), {
      code: 'INVALID_VALUE',
      field: 'P-DATA-TF.pdv[0].message-control-header',
      message: /0x04/,
    });
  });

  test('an empty PDV value is valid', () => {
    assert.deepEqual(decodePdu(pdu(0x04, '00000002 03 02')), {
      type: 0x04,
      pdvs: [{ contextId: 3, command: false, last: true, value: Buffer.alloc(0) }],
    });
  });
});

describe('validation: A-ASSOCIATE-RQ/AC structure', () => {
  test('shorter than the fixed part', () => {
    decodeThrows(pdu(0x01, '00'.repeat(67)), {
      code: 'INVALID_LENGTH',
      field: 'A-ASSOCIATE-RQ.length',
      message: /PDU length 67 is shorter than the 68-byte/,
    });
  });

  test('AE title characters (RQ)', () => {
    const ok = [appContextItem, contextRqItem];
    decodeThrows(associate(1, ok, { calling: 'A\\B             ' }), {
      code: 'INVALID_VALUE',
      field: 'A-ASSOCIATE-RQ.calling-ae-title',
      message: /0x5c at offset 1/,
    });
    decodeThrows(associate(1, ok, { called: 'AB\x07             ' }), {
      code: 'INVALID_VALUE',
      field: 'A-ASSOCIATE-RQ.called-ae-title',
    });
    decodeThrows(associate(1, ok, { called: 'AB\xe9             ' }), {
      code: 'INVALID_VALUE',
      field: 'A-ASSOCIATE-RQ.called-ae-title',
    });
    decodeThrows(associate(1, ok, { called: 'A\0B             ' }), {
      code: 'INVALID_VALUE',
      field: 'A-ASSOCIATE-RQ.called-ae-title',
    });
  });

  test('item header cut short', () => {
    decodeThrows(rq(appContextItem, contextRqItem, '5000'), {
      code: 'INVALID_LENGTH',
      field: 'A-ASSOCIATE-RQ.item[2]',
      message: /2 bytes remain in A-ASSOCIATE-RQ/,
    });
  });

  test('item length beyond the PDU', () => {
    decodeThrows(rq(appContextItem, contextRqItem, '50 00 0010 51000004'), {
      code: 'INVALID_LENGTH',
      field: 'A-ASSOCIATE-RQ.user-information.length',
      message: /item length 16 exceeds the 4 bytes remaining in A-ASSOCIATE-RQ/,
    });
  });

  test('application context item is required', () => {
    decodeThrows(rq(contextRqItem), { code: 'MISSING_ITEM', field: 'A-ASSOCIATE-RQ.application-context' });
    decodeThrows(ac(contextAcItem), { code: 'MISSING_ITEM', field: 'A-ASSOCIATE-AC.application-context' });
  });

  test('a second application context item', () => {
    decodeThrows(rq(appContextItem, appContextItem, contextRqItem), {
      code: 'INVALID_VALUE',
      field: 'A-ASSOCIATE-RQ.application-context',
      abortReason: 5,
    });
  });

  test('application context name must be a UID', () => {
    decodeThrows(rq(uidItem(0x10, '1.2.x'), contextRqItem), {
      code: 'INVALID_VALUE',
      field: 'A-ASSOCIATE-RQ.application-context',
      message: /"1.2.x" contains characters other than digits and dots/,
    });
  });

  test('an RQ needs a presentation context; an AC may have none', () => {
    decodeThrows(rq(appContextItem), { code: 'MISSING_ITEM', field: 'A-ASSOCIATE-RQ.presentation-context' });
    assert.equal(decodeAssociate(ac(appContextItem)).items.length, 1);
  });

  test('presentation context items of the other direction', () => {
    decodeThrows(rq(appContextItem, contextAcItem), {
      code: 'INVALID_VALUE',
      field: 'A-ASSOCIATE-RQ.presentation-context[0]',
      abortReason: 5,
      message: /type 0x21 in A-ASSOCIATE-RQ, expected 0x20/,
    });
    decodeThrows(ac(appContextItem, contextRqItem), {
      code: 'INVALID_VALUE',
      field: 'A-ASSOCIATE-AC.presentation-context[0]',
      abortReason: 5,
    });
  });

  test('a second user information item', () => {
    decodeThrows(rq(appContextItem, contextRqItem, item(0x50), item(0x50)), {
      code: 'INVALID_VALUE',
      field: 'A-ASSOCIATE-RQ.user-information',
      abortReason: 5,
    });
  });
});

describe('validation: presentation context items', () => {
  const PC = (n: number): string => `A-ASSOCIATE-RQ.presentation-context[${n}]`;
  const rq3 = (third: string): Buffer => rq(appContextItem, contextRqItem, contextRqItem, third);

  test('sub-item length beyond the presentation context item', () => {
    decodeThrows(rq3(item(0x20, '05 00 00 00', uidItem(0x30, uids.CT), '40 00 0040', a(uids.IMPLICIT_LE))), {
      code: 'INVALID_LENGTH',
      field: 'A-ASSOCIATE-RQ.presentation-context[2].transfer-syntax[0].length',
      message:
        /sub-item length 64 exceeds the 17 bytes remaining in A-ASSOCIATE-RQ.presentation-context\[2\]/,
    });
  });

  test('item shorter than its fixed fields', () => {
    decodeThrows(rq3(item(0x20, '05 00 00')), {
      code: 'INVALID_LENGTH',
      field: `${PC(2)}.length`,
      message: /item length 3 is shorter than its 4-byte fixed part/,
    });
    decodeThrows(ac(appContextItem, item(0x21, '01 00')), {
      code: 'INVALID_LENGTH',
      field: 'A-ASSOCIATE-AC.presentation-context[0].length',
    });
  });

  test('context IDs must be odd', () => {
    decodeThrows(rq3(item(0x20, '04 00 00 00', uidItem(0x30, uids.CT), uidItem(0x40, uids.IMPLICIT_LE))), {
      code: 'INVALID_VALUE',
      field: `${PC(2)}.id`,
      message: /presentation context ID 4 is not an odd/,
    });
    decodeThrows(ac(appContextItem, item(0x21, '00 00 00 00', uidItem(0x40, uids.IMPLICIT_LE))), {
      code: 'INVALID_VALUE',
      field: 'A-ASSOCIATE-AC.presentation-context[0].id',
    });
  });

  test('exactly one abstract syntax, first', () => {
    decodeThrows(rq3(item(0x20, '05 00 00 00')), { code: 'MISSING_ITEM', field: `${PC(2)}.abstract-syntax` });
    decodeThrows(rq3(item(0x20, '05 00 00 00', uidItem(0x40, uids.IMPLICIT_LE), uidItem(0x30, uids.CT))), {
      code: 'INVALID_VALUE',
      field: `${PC(2)}.transfer-syntax[0]`,
      abortReason: 5,
      message: /before the abstract syntax/,
    });
    decodeThrows(
      rq3(
        item(
          0x20,
          '05 00 00 00',
          uidItem(0x30, uids.CT),
          uidItem(0x30, uids.MR),
          uidItem(0x40, uids.IMPLICIT_LE),
        ),
      ),
      {
        code: 'INVALID_VALUE',
        field: `${PC(2)}.abstract-syntax`,
        abortReason: 5,
        message: /second abstract syntax/,
      },
    );
    decodeThrows(
      rq3(
        item(
          0x20,
          '05 00 00 00',
          uidItem(0x30, uids.CT),
          uidItem(0x40, uids.IMPLICIT_LE),
          uidItem(0x30, uids.MR),
        ),
      ),
      { code: 'INVALID_VALUE', field: `${PC(2)}.abstract-syntax`, abortReason: 5 },
    );
  });

  test('at least one transfer syntax', () => {
    decodeThrows(rq3(item(0x20, '05 00 00 00', uidItem(0x30, uids.CT))), {
      code: 'MISSING_ITEM',
      field: `${PC(2)}.transfer-syntax`,
      message: /presentation context 5 has no transfer syntax/,
    });
  });

  test('unrecognized sub-items', () => {
    decodeThrows(rq3(item(0x20, '05 00 00 00', uidItem(0x30, uids.CT), item(0x35, '00'))), {
      code: 'INVALID_VALUE',
      field: `${PC(2)}.sub-item[1]`,
      abortReason: 4,
      message: /unrecognized sub-item type 0x35/,
    });
    decodeThrows(ac(appContextItem, item(0x21, '01 00 00 00', item(0x30, a(uids.CT)))), {
      code: 'INVALID_VALUE',
      field: 'A-ASSOCIATE-AC.presentation-context[0].sub-item[0]',
      abortReason: 4,
    });
  });

  test('UID values', () => {
    const withTs = (ts: string): Buffer =>
      rq3(item(0x20, '05 00 00 00', uidItem(0x30, uids.CT), uidItem(0x40, uids.EXPLICIT_LE), item(0x40, ts)));
    const field = `${PC(2)}.transfer-syntax[1]`;
    decodeThrows(withTs(a(`1.${'2'.repeat(63)}`)), {
      code: 'INVALID_VALUE',
      field,
      message: /transfer syntax length 65 exceeds 64/,
    });
    decodeThrows(withTs(a('1.2.840.10008.1.2.4.50a')), {
      code: 'INVALID_VALUE',
      field,
      message: /digits and dots/,
    });
    decodeThrows(withTs(a('1.2\n')), { code: 'INVALID_VALUE', field, message: /"1.2\\n"/ });
    decodeThrows(withTs(a('1.2\0\0')), { code: 'INVALID_VALUE', field });
    decodeThrows(withTs(''), { code: 'INVALID_VALUE', field, message: /transfer syntax is empty/ });
    decodeThrows(withTs('00'), { code: 'INVALID_VALUE', field, message: /empty \(value length 1\)/ });
  });

  test('AC: an accepted context needs one valid transfer syntax', () => {
    const PCA = 'A-ASSOCIATE-AC.presentation-context[0]';
    decodeThrows(ac(appContextItem, item(0x21, '01 00 00 00')), {
      code: 'MISSING_ITEM',
      field: `${PCA}.transfer-syntax`,
      message: /accepted presentation context 1 has no transfer syntax/,
    });
    decodeThrows(ac(appContextItem, item(0x21, '01 00 00 00', item(0x40))), {
      code: 'INVALID_VALUE',
      field: `${PCA}.transfer-syntax`,
    });
    decodeThrows(ac(appContextItem, item(0x21, '01 00 00 00', uidItem(0x40, 'x'))), {
      code: 'INVALID_VALUE',
      field: `${PCA}.transfer-syntax`,
    });
  });

  test('AC: at most one transfer syntax', () => {
    decodeThrows(
      ac(
        appContextItem,
        item(0x21, '01 00 00 00', uidItem(0x40, uids.IMPLICIT_LE), uidItem(0x40, uids.EXPLICIT_LE)),
      ),
      {
        code: 'INVALID_VALUE',
        field: 'A-ASSOCIATE-AC.presentation-context[0].transfer-syntax',
        abortReason: 5,
        message: /second transfer syntax sub-item \(sub-item 1\)/,
      },
    );
  });

  test('AC: result/reason 0-4', () => {
    decodeThrows(ac(appContextItem, item(0x21, '01 00 05 00')), {
      code: 'INVALID_VALUE',
      field: 'A-ASSOCIATE-AC.presentation-context[0].result',
      message: /result\/reason 5/,
    });
  });
});

describe('validation: user information sub-items', () => {
  test('sub-item header cut short', () => {
    decodeThrows(rqWithUserInfo(item(0x51, '00004000'), '52'), {
      code: 'INVALID_LENGTH',
      field: `${UI}.sub-item[1]`,
      message: /1 bytes remain in A-ASSOCIATE-RQ.user-information/,
    });
  });

  test('sub-item length beyond the item', () => {
    decodeThrows(rqWithUserInfo('52 00 0020', a(uids.DCMTK_CLASS_UID)), {
      code: 'INVALID_LENGTH',
      field: `${UI}.implementation-class-uid.length`,
      message: /sub-item length 32 exceeds the 27 bytes remaining/,
    });
  });

  test('maximum length sub-item is 4 bytes', () => {
    decodeThrows(rqWithUserInfo(item(0x51, '4000')), {
      code: 'INVALID_LENGTH',
      field: `${UI}.max-length.length`,
      message: /maximum length sub-item length 2, expected 4/,
    });
  });

  test('asynchronous operations window sub-item is 4 bytes', () => {
    decodeThrows(rqWithUserInfo(item(0x53, '000100')), {
      code: 'INVALID_LENGTH',
      field: `${UI}.async-operations-window.length`,
    });
  });

  test('implementation class UID', () => {
    decodeThrows(rqWithUserInfo(uidItem(0x52, 'OFFIS')), {
      code: 'INVALID_VALUE',
      field: `${UI}.implementation-class-uid`,
    });
  });

  test('role selection', () => {
    decodeThrows(rqWithUserInfo(item(0x54, '0040', a(uids.CT), '0100')), {
      code: 'INVALID_LENGTH',
      field: `${UI}.role-selection[0].sop-class-uid.length`,
      message: /sop-class-uid length 64 exceeds the 27 bytes remaining/,
    });
    decodeThrows(rqWithUserInfo(item(0x54, lv(a(uids.CT)), '01')), {
      code: 'INVALID_LENGTH',
      field: `${UI}.role-selection[0].length`,
      message: /scp-role needs 1 bytes, 0 remain/,
    });
    decodeThrows(rqWithUserInfo(item(0x54, lv(a(uids.CT)), '0100'), item(0x54, lv(a(uids.MR)), '010000')), {
      code: 'INVALID_LENGTH',
      field: `${UI}.role-selection[1].length`,
      message: /leaves 1 bytes after its last field/,
    });
    decodeThrows(rqWithUserInfo(item(0x54, lv(a(uids.CT)), '0200')), {
      code: 'INVALID_VALUE',
      field: `${UI}.role-selection[0].scu-role`,
    });
    decodeThrows(rqWithUserInfo(item(0x54, lv(a('1.2.a')), '0100')), {
      code: 'INVALID_VALUE',
      field: `${UI}.role-selection[0].sop-class-uid`,
    });
    decodeThrows(rqWithUserInfo(item(0x54, '00')), {
      code: 'INVALID_LENGTH',
      field: `${UI}.role-selection[0].length`,
    });
  });

  test('extended negotiation', () => {
    decodeThrows(rqWithUserInfo(item(0x56, '00')), {
      code: 'INVALID_LENGTH',
      field: `${UI}.extended-negotiation[0].length`,
    });
    decodeThrows(rqWithUserInfo(item(0x56, '0030', a(uids.CT))), {
      code: 'INVALID_LENGTH',
      field: `${UI}.extended-negotiation[0].sop-class-uid.length`,
    });
  });

  test('common extended negotiation', () => {
    const CEN = `${UI}.common-extended-negotiation[0]`;
    const head = lv(a(uids.CT)) + lv(a('1.2.840.10008.4.2'));
    decodeThrows(rqWithUserInfo(item(0x57, head, '0030', lv(a(uids.MR)))), {
      code: 'INVALID_LENGTH',
      field: `${CEN}.related-general-sop-classes.length`,
      message: /length 48 exceeds the 27 bytes/,
    });
    decodeThrows(rqWithUserInfo(item(0x57, head, '0010', lv(a(uids.MR)).slice(0, 32))), {
      code: 'INVALID_LENGTH',
      field: `${CEN}.related-general-sop-classes.uid[0].length`,
    });
    decodeThrows(rqWithUserInfo(item(0x57, head, lv(lv(a(uids.MR)) + '00'))), {
      code: 'INVALID_LENGTH',
      field: `${CEN}.related-general-sop-classes.length`,
      message: /uid\[1\]-length needs 2 bytes, 1 remain/,
    });
    decodeThrows(rqWithUserInfo(item(0x57, head, lv(lv(a('1.2.3x'))))), {
      code: 'INVALID_VALUE',
      field: `${CEN}.related-general-sop-classes.uid[0]`,
    });
    decodeThrows(rqWithUserInfo(item(0x57, head)), { code: 'INVALID_LENGTH', field: `${CEN}.length` });
    decodeThrows(rqWithUserInfo(item(0x57, head, lv(''), 'ff')), {
      code: 'INVALID_LENGTH',
      field: `${CEN}.length`,
    });
    const ok = decodeAssociate(rqWithUserInfo(item(0x57, head, lv(''))));
    assert.deepEqual(userInfoSubItems(ok), [
      {
        kind: 'common-extended-negotiation',
        sopClassUid: uids.CT,
        serviceClassUid: '1.2.840.10008.4.2',
        relatedGeneralSopClassUids: [],
      },
    ]);
  });

  test('user identity', () => {
    decodeThrows(rqWithUserInfo(item(0x58, '01 00 0009', a('alice'), '0000')), {
      code: 'INVALID_LENGTH',
      field: `${UI}.user-identity-rq.primary-field.length`,
      message: /primary-field length 9 exceeds the 7 bytes remaining in the user identity sub-item/,
    });
    decodeThrows(rqWithUserInfo(item(0x58, '01 00 0005', a('alice'))), {
      code: 'INVALID_LENGTH',
      field: `${UI}.user-identity-rq.length`,
      message: /secondary-field-length needs 2 bytes, 0 remain/,
    });
    decodeThrows(rqWithUserInfo(item(0x59, '0005', a('tok'))), {
      code: 'INVALID_LENGTH',
      field: `${UI}.user-identity-ac.server-response.length`,
    });
    decodeThrows(rqWithUserInfo(item(0x59, '0001', a('tok'))), {
      code: 'INVALID_LENGTH',
      field: `${UI}.user-identity-ac.length`,
    });
  });

  test('empty and unknown sub-items are kept', () => {
    const raw = rqWithUserInfo(item(0x55), item(0x5a, 'ff'), item(0x00));
    assert.deepEqual(userInfoSubItems(decodeAssociate(raw)), [
      { kind: 'implementation-version-name', name: '' },
      { kind: 'unknown', type: 0x5a, value: hex('ff') },
      { kind: 'unknown', type: 0x00, value: Buffer.alloc(0) },
    ]);
    roundTrips(raw);
  });
});

describe('encoding checks', () => {
  const base = fixture('A-ASSOCIATE-RQ').pdu as AssociatePdu;

  test('AE title fields must be 16 one-byte characters', () => {
    throwsPdu(() => encodePdu({ ...base, calledAeTitle: 'SHORT' }), {
      code: 'INVALID_VALUE',
      field: 'A-ASSOCIATE-RQ.called-ae-title',
      message: /5 characters, expected 16/,
    });
    throwsPdu(() => encodePdu({ ...base, callingAeTitle: '\u20acAAAAAAAAAAAAAAA' }), {
      code: 'INVALID_VALUE',
      field: 'A-ASSOCIATE-RQ.calling-ae-title',
    });
  });

  test('reserved must be 32 bytes', () => {
    throwsPdu(() => encodePdu({ ...base, reserved: Buffer.alloc(31) }), {
      code: 'INVALID_VALUE',
      field: 'A-ASSOCIATE-RQ.reserved',
    });
  });

  test('numbers must fit their fields', () => {
    throwsPdu(() => encodePdu({ ...base, protocolVersion: 0x10000 }), {
      code: 'INVALID_VALUE',
      field: 'A-ASSOCIATE-RQ.protocol-version',
    });
    throwsPdu(() => encodeAbort(256, 0), { code: 'INVALID_VALUE', field: 'A-ABORT.source' });
    throwsPdu(() => encodeAssociateRj(1, 1, -1), { code: 'INVALID_VALUE', field: 'A-ASSOCIATE-RJ.reason' });
    throwsPdu(
      () =>
        encodePdu({
          type: 0x04,
          pdvs: [{ contextId: 300, command: false, last: false, value: Buffer.alloc(0) }],
        }),
      { code: 'INVALID_VALUE', field: 'P-DATA-TF.pdv[0].context-id' },
    );
  });

  test('item values must fit a 2-byte length', () => {
    throwsPdu(
      () => encodePdu({ ...base, items: [{ kind: 'unknown', type: 0x60, value: Buffer.alloc(65536) }] }),
      {
        code: 'INVALID_VALUE',
        field: 'A-ASSOCIATE-RQ.item[0].length',
      },
    );
    const big: AssociatePdu = {
      ...base,
      items: [
        {
          kind: 'user-information',
          subItems: [{ kind: 'implementation-version-name', name: 'x'.repeat(40000) }],
        },
      ],
    };
    big.items.push(big.items[0] as AssociatePdu['items'][number]);
    assert.equal(encodePdu(big).length, 6 + 68 + 2 * (8 + 40000));
    throwsPdu(
      () =>
        encodePdu({
          ...base,
          items: [
            {
              kind: 'user-information',
              subItems: [
                { kind: 'implementation-version-name', name: 'x'.repeat(40000) },
                { kind: 'implementation-version-name', name: 'x'.repeat(40000) },
              ],
            },
          ],
        }),
      { code: 'INVALID_VALUE', field: 'A-ASSOCIATE-RQ.user-information.length' },
    );
  });

  test('P-DATA-TF with several PDVs is one allocation with the right layout', () => {
    const out = encodePdu({
      type: 0x04,
      pdvs: [
        { contextId: 7, command: true, last: false, value: hex('0102') },
        { contextId: 7, command: false, last: true, value: Buffer.alloc(0) },
      ],
    });
    assert.deepEqual(out, hex('04 00 0000000e', '00000004 07 01 0102', '00000002 07 02'));
  });
});
