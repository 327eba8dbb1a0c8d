// Golden PDUs written byte by byte (PS3.8 9.3), with the objects decodePdu must return for them.
// Lengths are literal; text is spelled with a() only for readability.

import type { Pdu } from '../../src/pdu/index.js';

/** Hex of ASCII text. */
export function a(text: string): string {
  return Buffer.from(text, 'latin1').toString('hex');
}

/** Bytes from hex fragments (whitespace ignored). */
export function hex(...parts: string[]): Buffer {
  return Buffer.from(parts.join('').replace(/\s+/g, ''), 'hex');
}

const zeros = (n: number): string => '00'.repeat(n);

const APP_CONTEXT = '1.2.840.10008.3.1.1.1';
const CT = '1.2.840.10008.5.1.4.1.1.2';
const ENHANCED_CT = '1.2.840.10008.5.1.4.1.1.2.1';
const MR = '1.2.840.10008.5.1.4.1.1.4';
const VERIFICATION = '1.2.840.10008.1.1';
const EXPLICIT_LE = '1.2.840.10008.1.2.1';
const IMPLICIT_LE = '1.2.840.10008.1.2';
const EXPLICIT_BE = '1.2.840.10008.1.2.2';
const JPEG_LOSSLESS = '1.2.840.10008.1.2.4.70';
const STORAGE_SERVICE = '1.2.840.10008.4.2';
const DCMTK_CLASS_UID = '1.2.276.0.7230010.3.0.3.6.8';
const DCMTK_VERSION = 'OFFIS_DCMTK_368';

export interface Fixture {
  name: string;
  bytes: Buffer;
  pdu: Pdu;
}

// A-ASSOCIATE-RQ as DCMTK storescu sends it, plus a user identity, a common extended negotiation,
// an unknown sub-item 0x5F and an unknown item 0x60. PS3.8 9.3.2
const associateRqBytes = hex(
  '01 00 0000024d', // A-ASSOCIATE-RQ, PDU length 589 = 68 + 521
  '0001 0000', // protocol version 1, reserved
  a('STORESCP        '), // called AE title
  a('STORESCU        '), // calling AE title
  zeros(32), // reserved
  // application context item, 4 + 21 = 25
  '10 00 0015',
  a(APP_CONTEXT),
  // presentation context 1, 4 + 100 = 104
  '20 00 0064 01 00 00 00',
  '30 00 0019',
  a(CT),
  '40 00 0013',
  a(EXPLICIT_LE),
  '40 00 0011',
  a(IMPLICIT_LE),
  '40 00 0013',
  a(EXPLICIT_BE),
  // presentation context 3, 4 + 82 = 86
  '20 00 0052 03 00 00 00',
  '30 00 0019',
  a(MR),
  '40 00 0016',
  a(JPEG_LOSSLESS),
  '40 00 0013',
  a(EXPLICIT_LE),
  // presentation context 5, abstract syntax NUL padded to even length, 4 + 47 = 51
  '20 00 002f 05 00 00 00',
  '30 00 0012',
  a(VERIFICATION),
  '00',
  '40 00 0011',
  a(IMPLICIT_LE),
  // user information item, 4 + 245 = 249
  '50 00 00f5',
  '51 00 0004 00004000', // max length 16384 (8)
  '52 00 001b', // implementation class UID (31)
  a(DCMTK_CLASS_UID),
  '53 00 0004 0001 0001', // async operations window 1/1 (8)
  '54 00 001d 0019', // role selection (33)
  a(CT),
  '01 00',
  '55 00 000f', // implementation version name (19)
  a(DCMTK_VERSION),
  '56 00 0021 0019', // extended negotiation (37)
  a(CT),
  '02 00 00 00 02 00',
  '57 00 004d 001b', // common extended negotiation (81)
  a(ENHANCED_CT),
  '0011',
  a(STORAGE_SERVICE),
  '001b 0019',
  a(CT),
  '58 00 0011 02 01 0005', // user identity: username and passcode, positive response requested (21)
  a('alice'),
  '0006',
  a('s3cret'),
  '5f 00 0003 010203', // unknown sub-item (7)
  // unknown item type 0x60 (6)
  '60 00 0002 abcd',
);

const associateRq: Pdu = {
  type: 0x01,
  protocolVersion: 1,
  calledAeTitle: 'STORESCP        ',
  callingAeTitle: 'STORESCU        ',
  reserved: Buffer.alloc(32),
  items: [
    { kind: 'application-context', name: APP_CONTEXT },
    {
      kind: 'presentation-context-rq',
      context: { id: 1, abstractSyntax: CT, transferSyntaxes: [EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE] },
    },
    {
      kind: 'presentation-context-rq',
      context: { id: 3, abstractSyntax: MR, transferSyntaxes: [JPEG_LOSSLESS, EXPLICIT_LE] },
    },
    {
      kind: 'presentation-context-rq',
      context: { id: 5, abstractSyntax: `${VERIFICATION}\0`, transferSyntaxes: [IMPLICIT_LE] },
    },
    {
      kind: 'user-information',
      subItems: [
        { kind: 'max-length', maxLength: 16384 },
        { kind: 'implementation-class-uid', uid: DCMTK_CLASS_UID },
        { kind: 'async-operations-window', invoked: 1, performed: 1 },
        { kind: 'role-selection', sopClassUid: CT, scuRole: 1, scpRole: 0 },
        { kind: 'implementation-version-name', name: DCMTK_VERSION },
        { kind: 'extended-negotiation', sopClassUid: CT, info: hex('02 00 00 00 02 00') },
        {
          kind: 'common-extended-negotiation',
          sopClassUid: ENHANCED_CT,
          serviceClassUid: STORAGE_SERVICE,
          relatedGeneralSopClassUids: [CT],
        },
        {
          kind: 'user-identity-rq',
          identityType: 2,
          positiveResponseRequested: 1,
          primaryField: Buffer.from('alice'),
          secondaryField: Buffer.from('s3cret'),
        },
        { kind: 'unknown', type: 0x5f, value: hex('010203') },
      ],
    },
    { kind: 'unknown', type: 0x60, value: hex('abcd') },
  ],
};

// The matching A-ASSOCIATE-AC. PS3.8 9.3.3
const associateAcBytes = hex(
  '02 00 00000112', // A-ASSOCIATE-AC, PDU length 274 = 68 + 206
  '0001 0000',
  a('STORESCP        '), // echoed, not tested
  a('STORESCU        '),
  zeros(32),
  '10 00 0015', // application context (25)
  a(APP_CONTEXT),
  '21 00 001b 01 00 00 00', // context 1 accepted (31)
  '40 00 0013',
  a(EXPLICIT_LE),
  '21 00 0004 03 00 03 00', // context 3 abstract syntax not supported, no transfer syntax sub-item (8)
  '21 00 0019 05 00 04 00', // context 5 transfer syntaxes not supported (29)
  '40 00 0011',
  a(IMPLICIT_LE),
  '50 00 006d', // user information, 4 + 109 = 113
  '51 00 0004 00008000', // max length 32768 (8)
  '52 00 001b', // (31)
  a(DCMTK_CLASS_UID),
  '53 00 0004 0001 0001', // (8)
  '54 00 001d 0019', // (33)
  a(CT),
  '01 00',
  '55 00 000f', // (19)
  a(DCMTK_VERSION),
  '59 00 0006 0004', // user identity server response (10)
  a('tokn'),
);

const associateAc: Pdu = {
  type: 0x02,
  protocolVersion: 1,
  calledAeTitle: 'STORESCP        ',
  callingAeTitle: 'STORESCU        ',
  reserved: Buffer.alloc(32),
  items: [
    { kind: 'application-context', name: APP_CONTEXT },
    { kind: 'presentation-context-ac', context: { id: 1, result: 0, transferSyntax: EXPLICIT_LE } },
    { kind: 'presentation-context-ac', context: { id: 3, result: 3, transferSyntax: '' } },
    { kind: 'presentation-context-ac', context: { id: 5, result: 4, transferSyntax: IMPLICIT_LE } },
    {
      kind: 'user-information',
      subItems: [
        { kind: 'max-length', maxLength: 32768 },
        { kind: 'implementation-class-uid', uid: DCMTK_CLASS_UID },
        { kind: 'async-operations-window', invoked: 1, performed: 1 },
        { kind: 'role-selection', sopClassUid: CT, scuRole: 1, scpRole: 0 },
        { kind: 'implementation-version-name', name: DCMTK_VERSION },
        { kind: 'user-identity-ac', serverResponse: Buffer.from('tokn') },
      ],
    },
  ],
};

// C-ECHO-RQ command set, implicit VR little endian (PS3.7 9.3.5): 68 bytes.
const echoCommand = hex(
  '0000 0000 04000000 38000000', // (0000,0000) group length 56
  '0000 0200 12000000',
  a(VERIFICATION),
  '00', // (0000,0002) affected SOP class UID
  '0000 0001 02000000 3000', // (0000,0100) command field C-ECHO-RQ
  '0000 1001 02000000 0100', // (0000,0110) message ID 1
  '0000 0008 02000000 0101', // (0000,0800) no data set
);

// P-DATA-TF with one command PDV and two data PDVs. PS3.8 9.3.5, annex E
const pDataBytes = Buffer.concat([
  hex('04 00 0000005e'), // P-DATA-TF, PDU length 94 = 74 + 12 + 8
  hex('00000046 01 03'), // PDV length 70, context 1, command + last
  echoCommand,
  hex('00000008 01 00 deadbeef0001'), // PDV length 8, context 1, data, not last
  hex('00000004 01 02 cafe'), // PDV length 4, context 1, data, last
]);

const pData: Pdu = {
  type: 0x04,
  pdvs: [
    { contextId: 1, command: true, last: true, value: echoCommand },
    { contextId: 1, command: false, last: false, value: hex('deadbeef0001') },
    { contextId: 1, command: false, last: true, value: hex('cafe') },
  ],
};

export const fixtures: readonly Fixture[] = [
  { name: 'A-ASSOCIATE-RQ', bytes: associateRqBytes, pdu: associateRq },
  { name: 'A-ASSOCIATE-AC', bytes: associateAcBytes, pdu: associateAc },
  {
    name: 'A-ASSOCIATE-RJ 1/1/3', // permanent, service user, calling AE not recognized. PS3.8 9.3.4
    bytes: hex('03 00 00000004 00 01 01 03'),
    pdu: { type: 0x03, result: 1, source: 1, reason: 3 },
  },
  { name: 'P-DATA-TF', bytes: pDataBytes, pdu: pData },
  { name: 'A-RELEASE-RQ', bytes: hex('05 00 00000004 00000000'), pdu: { type: 0x05 } }, // PS3.8 9.3.6
  { name: 'A-RELEASE-RP', bytes: hex('06 00 00000004 00000000'), pdu: { type: 0x06 } }, // PS3.8 9.3.7
  {
    name: 'A-ABORT 2/6', // service provider, invalid PDU parameter value. PS3.8 9.3.8
    bytes: hex('07 00 00000004 0000 02 06'),
    pdu: { type: 0x07, source: 2, reason: 6 },
  },
];

export function fixture(name: string): Fixture {
  const f = fixtures.find((x) => x.name === name);
  if (f === undefined) throw new Error(`no fixture ${name}`);
  return f;
}

/** All fixtures back to back, as one stream. */
export const fixtureStream: Buffer = Buffer.concat(fixtures.map((f) => f.bytes));

// Builders for malformed variants (these compute lengths; the golden fixtures above do not).

function hex16(n: number): string {
  return n.toString(16).padStart(4, '0');
}

/** Hex of an item or sub-item: type, reserved 00, 2-byte length, value. PS3.8 9.3.2.1 */
export function item(type: number, ...value: string[]): string {
  const v = value.join('').replace(/\s+/g, '');
  return type.toString(16).padStart(2, '0') + '00' + hex16(v.length / 2) + v;
}

/** Hex of a UID item or sub-item. */
export function uidItem(type: number, uid: string): string {
  return item(type, a(uid));
}

/** Hex of a 2-byte length prefixed value. */
export function lv(valueHex: string): string {
  const v = valueHex.replace(/\s+/g, '');
  return hex16(v.length / 2) + v;
}

/** A whole PDU with a correct length field around `body` (hex). */
export function pdu(type: number, ...body: string[]): Buffer {
  const b = hex(...body);
  const h = Buffer.alloc(6);
  h.writeUInt8(type, 0);
  h.writeUInt32BE(b.length, 2);
  return Buffer.concat([h, b]);
}

export const uids = { APP_CONTEXT, CT, MR, VERIFICATION, EXPLICIT_LE, IMPLICIT_LE, DCMTK_CLASS_UID } as const;

/** Standard application context and one presentation context item (hex), for RQ variants. */
export const appContextItem = uidItem(0x10, APP_CONTEXT);
export const contextRqItem = item(0x20, '01 00 00 00', uidItem(0x30, CT), uidItem(0x40, IMPLICIT_LE));
export const contextAcItem = item(0x21, '01 00 00 00', uidItem(0x40, IMPLICIT_LE));

/** An A-ASSOCIATE-RQ (type 1) or -AC (type 2) around the given items (hex). */
export function associate(
  type: 1 | 2,
  items: string[],
  titles: { called?: string; calling?: string } = {},
): Buffer {
  return pdu(
    type,
    '0001 0000',
    a(titles.called ?? 'STORESCP        '),
    a(titles.calling ?? 'STORESCU        '),
    zeros(32),
    ...items,
  );
}
