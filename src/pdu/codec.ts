// Pure encoder/decoder for the DICOM Upper Layer PDUs, PS3.8 9.3 (user information sub-items: PS3.7 D.3.3).
//
// Design of the round trip law (encodePdu(decodePdu(x)) is byte-identical to x for every valid x):
// - Text fields (AE titles, UIDs, implementation version name) are stored exactly as on the wire, decoded as
//   latin1 (one char per byte, so any byte survives). UIDs keep their trailing NUL (or space) pad in the
//   string; validation strips one pad byte, consumers compare with uidText(). AE titles keep their padding;
//   consumers compare with aeTitleText().
// - Items and sub-items are kept in wire order, unrecognized ones as { kind: 'unknown' } with their value.
// - The 32 reserved bytes of A-ASSOCIATE-RQ/AC are kept. Every other reserved field (header byte 1, the
//   2 bytes after the protocol version, item header byte 1, the presentation context reserved bytes, the
//   reserved bytes of A-ASSOCIATE-RJ, A-RELEASE and A-ABORT) "shall be sent with a value 00H but not tested
//   to this value when received" (PS3.8 9.3.1): decode ignores it and encode writes 00H.
// - A rejected presentation context in an A-ASSOCIATE-AC may omit the transfer syntax sub-item
//   (transferSyntax '') or carry one with an empty value (emptyTransferSyntaxItem: true).
// Decoded Buffers (reserved, PDV values, sub-item octet strings, unknown values) are views into the input.
//
// Validation: every declared length is checked against the bytes that remain in its container before
// anything is read. Errors are PduError with the field path, e.g.
// 'A-ASSOCIATE-RQ.presentation-context[2].transfer-syntax[0].length'.

import { AbortReason, ItemType, PDU_HEADER_LENGTH, PduType } from './constants.js';
import { PduError } from './errors.js';
import type {
  AbortPdu,
  AssociateItem,
  AssociatePdu,
  AssociateRjPdu,
  PDataPdu,
  Pdu,
  Pdv,
  PresentationContextAc,
  PresentationContextRq,
  UserInfoSubItem,
} from './types.js';

/** protocol-version (2), reserved (2), called AE (16), calling AE (16), reserved (32). PS3.8 9.3.2 */
const ASSOCIATE_FIXED_LENGTH = 68;
const AE_FIELD_LENGTH = 16;
const ASSOCIATE_RESERVED_LENGTH = 32;
/** item-type (1), reserved (1), item-length (2). PS3.8 9.3.2.1 */
const ITEM_HEADER_LENGTH = 4;
/** PS3.5 9.1: a UID is at most 64 characters. */
const UID_MAX_LENGTH = 64;
const MAX_U16 = 0xffff;
const MAX_U32 = 0xffffffff;

const PDU_NAMES: Readonly<Record<number, string>> = {
  [PduType.AssociateRq]: 'A-ASSOCIATE-RQ',
  [PduType.AssociateAc]: 'A-ASSOCIATE-AC',
  [PduType.AssociateRj]: 'A-ASSOCIATE-RJ',
  [PduType.PDataTf]: 'P-DATA-TF',
  [PduType.ReleaseRq]: 'A-RELEASE-RQ',
  [PduType.ReleaseRp]: 'A-RELEASE-RP',
  [PduType.Abort]: 'A-ABORT',
};

/** Field names of the user information sub-items. PS3.7 D.3.3 */
const SUB_ITEM_NAMES: Readonly<Record<number, string>> = {
  [ItemType.MaxLength]: 'max-length',
  [ItemType.ImplementationClassUid]: 'implementation-class-uid',
  [ItemType.AsyncOperationsWindow]: 'async-operations-window',
  [ItemType.RoleSelection]: 'role-selection',
  [ItemType.ImplementationVersionName]: 'implementation-version-name',
  [ItemType.ExtendedNegotiation]: 'extended-negotiation',
  [ItemType.CommonExtendedNegotiation]: 'common-extended-negotiation',
  [ItemType.UserIdentityRq]: 'user-identity-rq',
  [ItemType.UserIdentityAc]: 'user-identity-ac',
};
/** Sub-items that may occur once per SOP class, so their field names carry an occurrence index. */
const REPEATABLE_SUB_ITEMS: ReadonlySet<number> = new Set([
  ItemType.RoleSelection,
  ItemType.ExtendedNegotiation,
  ItemType.CommonExtendedNegotiation,
]);

/** Name of a PDU type for messages and field paths. */
export function pduName(type: number): string {
  return PDU_NAMES[type] ?? `PDU type ${hex(type)}`;
}

function hex(n: number): string {
  return `0x${n.toString(16).padStart(2, '0')}`;
}

/** A printable, bounded rendering of wire text for error messages. */
function show(text: string): string {
  const cut = text.length > 80 ? `${text.slice(0, 80)}...` : text;
  return JSON.stringify(cut).replace(/[\x7f-\xff]/g, (c) => `\\x${c.charCodeAt(0).toString(16)}`);
}

// ---------------------------------------------------------------------------------------------------------
// Text fields
// ---------------------------------------------------------------------------------------------------------

/** `s` without trailing characters in `chars` (a loop, not a regex: linear on long runs of padding). */
function trimEnd(s: string, chars: string): string {
  let end = s.length;
  while (end > 0 && chars.includes(s.charAt(end - 1))) end--;
  return s.slice(0, end);
}

/** A UID without its trailing NUL/space padding (PS3.5 9.1: UIDs are NUL padded to even length). */
export function uidText(s: string): string {
  return trimEnd(s, '\0 ');
}

/** The significant part of an AE title field: leading/trailing spaces are not significant (PS3.8 9.3.2).
 * Trailing NUL bytes, which some implementations pad with, are dropped as well. */
export function aeTitleText(field: string): string {
  const trimmed = trimEnd(trimEnd(field, '\0'), ' ');
  let start = 0;
  while (start < trimmed.length && trimmed.charAt(start) === ' ') start++;
  return trimmed.slice(start);
}

/** The 16-character AE title field for `title` (PS3.8 9.3.2), padded with spaces. */
export function aeTitleField(title: string): string {
  const field = 'AE-title';
  if (title.length > AE_FIELD_LENGTH) {
    throw new PduError(
      'INVALID_VALUE',
      field,
      `AE title ${show(title)} has ${title.length} characters, max 16`,
    );
  }
  checkAeChars(title, field);
  if (title.trim() === '') {
    throw new PduError('INVALID_VALUE', field, 'an AE title of only spaces shall not be used (PS3.8 9.3.2)');
  }
  return title.padEnd(AE_FIELD_LENGTH, ' ');
}

/** PS3.8 9.3.2 / PS3.5 6.2 AE: ISO 646 G0 characters, no backslash and no control characters. */
function checkAeChars(text: string, field: string): void {
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x20 || c > 0x7e || c === 0x5c) {
      throw new PduError(
        'INVALID_VALUE',
        field,
        `character ${hex(c)} at offset ${i} of AE title ${show(text)} is not allowed (backslash, control or non ISO 646 character)`,
      );
    }
  }
}

/** Validates a received 16-byte AE title field; trailing NUL padding is tolerated. */
function checkAeField(value: string, field: string): void {
  checkAeChars(trimEnd(value, '\0'), field);
}

/** PS3.5 9.1: at most 64 characters, digits and dots; one trailing NUL (or space) pad is allowed. */
function checkUid(value: string, field: string, what: string): void {
  const text = value.endsWith('\0') || value.endsWith(' ') ? value.slice(0, -1) : value;
  if (text.length === 0) {
    throw new PduError('INVALID_VALUE', field, `${what} is empty (value length ${value.length})`);
  }
  if (text.length > UID_MAX_LENGTH) {
    throw new PduError('INVALID_VALUE', field, `${what} length ${text.length} exceeds ${UID_MAX_LENGTH}`);
  }
  if (!/^[0-9.]+$/.test(text)) {
    throw new PduError(
      'INVALID_VALUE',
      field,
      `${what} ${show(text)} contains characters other than digits and dots`,
    );
  }
}

/** PS3.8 9.3.2.2: presentation context IDs are odd integers between 1 and 255. */
function checkContextId(id: number, field: string): void {
  if (id % 2 === 0) {
    throw new PduError('INVALID_VALUE', field, `presentation context ID ${id} is not an odd integer 1-255`);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------------------

interface RawItem {
  type: number;
  /** value start (after the 4-byte item header) */
  start: number;
  /** value end */
  end: number;
  field: string;
}

/** Splits [start, end) into items with a 4-byte header (PS3.8 9.3.2.1), checking every item length. */
function splitItems(
  raw: Buffer,
  start: number,
  end: number,
  container: string,
  what: string,
  nameOf: (type: number, index: number) => string,
): RawItem[] {
  const items: RawItem[] = [];
  let pos = start;
  while (pos < end) {
    const remaining = end - pos;
    if (remaining < ITEM_HEADER_LENGTH) {
      throw new PduError(
        'INVALID_LENGTH',
        `${container}.${what}[${items.length}]`,
        `${remaining} bytes remain in ${container}, too few for a ${ITEM_HEADER_LENGTH}-byte ${what} header`,
      );
    }
    const type = raw.readUInt8(pos);
    const length = raw.readUInt16BE(pos + 2);
    const field = nameOf(type, items.length);
    if (length > remaining - ITEM_HEADER_LENGTH) {
      throw new PduError(
        'INVALID_LENGTH',
        `${field}.length`,
        `${what} length ${length} exceeds the ${remaining - ITEM_HEADER_LENGTH} bytes remaining in ${container}`,
      );
    }
    items.push({ type, start: pos + ITEM_HEADER_LENGTH, end: pos + ITEM_HEADER_LENGTH + length, field });
    pos += ITEM_HEADER_LENGTH + length;
  }
  return items;
}

/** Sequential bounds-checked reads inside one item value. */
class FieldReader {
  private pos: number;

  constructor(
    private readonly raw: Buffer,
    private readonly start: number,
    private readonly end: number,
    private readonly field: string,
    private readonly what: string,
  ) {
    this.pos = start;
  }

  get remaining(): number {
    return this.end - this.pos;
  }

  private need(n: number, name: string): void {
    if (n > this.remaining) {
      throw new PduError(
        'INVALID_LENGTH',
        `${this.field}.length`,
        `${this.what} length ${this.end - this.start} is too short: ${name} needs ${n} bytes, ${this.remaining} remain`,
      );
    }
  }

  u8(name: string): number {
    this.need(1, name);
    return this.raw.readUInt8(this.pos++);
  }

  u16(name: string): number {
    this.need(2, name);
    const v = this.raw.readUInt16BE(this.pos);
    this.pos += 2;
    return v;
  }

  /** A 2-byte length followed by that many bytes; returns the [start, end) of the value. */
  lengthPrefixed(name: string): [number, number] {
    const length = this.u16(`${name}-length`);
    if (length > this.remaining) {
      throw new PduError(
        'INVALID_LENGTH',
        `${this.field}.${name}.length`,
        `${name} length ${length} exceeds the ${this.remaining} bytes remaining in the ${this.what}`,
      );
    }
    const start = this.pos;
    this.pos += length;
    return [start, this.pos];
  }

  bytes16(name: string): Buffer {
    const [s, e] = this.lengthPrefixed(name);
    return this.raw.subarray(s, e);
  }

  uid16(name: string, what: string): string {
    const [s, e] = this.lengthPrefixed(name);
    const uid = this.raw.toString('latin1', s, e);
    checkUid(uid, `${this.field}.${name}`, what);
    return uid;
  }

  rest(): Buffer {
    const v = this.raw.subarray(this.pos, this.end);
    this.pos = this.end;
    return v;
  }

  finish(): void {
    if (this.pos !== this.end) {
      throw new PduError(
        'INVALID_LENGTH',
        `${this.field}.length`,
        `${this.what} length ${this.end - this.start} leaves ${this.end - this.pos} bytes after its last field`,
      );
    }
  }
}

function expectLength(item: RawItem, expected: number, what: string): void {
  const length = item.end - item.start;
  if (length !== expected) {
    throw new PduError(
      'INVALID_LENGTH',
      `${item.field}.length`,
      `${what} length ${length}, expected ${expected}`,
    );
  }
}

function readUid(raw: Buffer, item: RawItem, what: string): string {
  const uid = raw.toString('latin1', item.start, item.end);
  checkUid(uid, item.field, what);
  return uid;
}

/** Decodes one whole PDU (header included) and validates it; throws PduError. */
export function decodePdu(raw: Buffer): Pdu {
  if (raw.length < PDU_HEADER_LENGTH) {
    throw new PduError(
      'TRUNCATED',
      'PDU.header',
      `${raw.length} bytes, a PDU header needs ${PDU_HEADER_LENGTH}`,
    );
  }
  const type = raw.readUInt8(0);
  if (type < PduType.AssociateRq || type > PduType.Abort) {
    throw new PduError('UNRECOGNIZED_PDU', 'PDU.type', `unrecognized PDU type ${hex(type)}`);
  }
  const name = pduName(type);
  const length = raw.readUInt32BE(2);
  const received = raw.length - PDU_HEADER_LENGTH;
  if (length > received) {
    throw new PduError(
      'TRUNCATED',
      `${name}.length`,
      `PDU length ${length} exceeds the ${received} bytes present after the header`,
    );
  }
  if (length < received) {
    throw new PduError(
      'INVALID_LENGTH',
      `${name}.length`,
      `PDU length ${length} but ${received} bytes follow the header (${received - length} extra)`,
    );
  }
  switch (type) {
    case PduType.AssociateRq:
    case PduType.AssociateAc:
      return decodeAssociate(raw, type, length);
    case PduType.AssociateRj:
      return decodeAssociateRj(raw, length);
    case PduType.PDataTf:
      return decodePData(raw, length);
    case PduType.ReleaseRq:
    case PduType.ReleaseRp:
      expectFixedBody(name, length);
      return { type };
    default:
      return decodeAbort(raw, length);
  }
}

/** A-ASSOCIATE-RJ, A-RELEASE-RQ/RP and A-ABORT have a 4-byte body. PS3.8 9.3.4, 9.3.6, 9.3.7, 9.3.8 */
function expectFixedBody(name: string, length: number): void {
  if (length !== 4) {
    throw new PduError('INVALID_LENGTH', `${name}.length`, `PDU length ${length}, expected 4`);
  }
}

// PS3.8 9.3.4: reserved (1), result (1), source (1), reason/diag (1)
function decodeAssociateRj(raw: Buffer, length: number): AssociateRjPdu {
  expectFixedBody('A-ASSOCIATE-RJ', length);
  const result = raw.readUInt8(7);
  const source = raw.readUInt8(8);
  const reason = raw.readUInt8(9);
  if (result !== 1 && result !== 2) {
    throw new PduError('INVALID_VALUE', 'A-ASSOCIATE-RJ.result', `result ${result}, expected 1 or 2`);
  }
  if (source < 1 || source > 3) {
    throw new PduError('INVALID_VALUE', 'A-ASSOCIATE-RJ.source', `source ${source}, expected 1, 2 or 3`);
  }
  return { type: PduType.AssociateRj, result, source, reason };
}

// PS3.8 9.3.8: reserved (2), source (1), reason/diag (1)
function decodeAbort(raw: Buffer, length: number): AbortPdu {
  expectFixedBody('A-ABORT', length);
  const source = raw.readUInt8(8);
  const reason = raw.readUInt8(9);
  if (source > 2) {
    throw new PduError('INVALID_VALUE', 'A-ABORT.source', `source ${source}, expected 0, 1 or 2`);
  }
  return { type: PduType.Abort, source, reason };
}

// PS3.8 9.3.5 and annex E: PDV items of item-length (4), presentation-context-ID (1),
// message control header (1), fragment.
function decodePData(raw: Buffer, length: number): PDataPdu {
  const end = PDU_HEADER_LENGTH + length;
  const pdvs: Pdv[] = [];
  let pos = PDU_HEADER_LENGTH;
  while (pos < end) {
    const i = pdvs.length;
    const remaining = end - pos;
    if (remaining < 4) {
      throw new PduError(
        'INVALID_LENGTH',
        `P-DATA-TF.pdv[${i}]`,
        `${remaining} bytes remain in P-DATA-TF, too few for the 4-byte item length of PDV[${i}]`,
      );
    }
    const pdvLength = raw.readUInt32BE(pos);
    if (pdvLength < 2) {
      throw new PduError(
        'INVALID_LENGTH',
        `P-DATA-TF.pdv[${i}].length`,
        `PDV length ${pdvLength} in PDV[${i}] is less than 2 (context ID and message control header)`,
      );
    }
    if (pdvLength > remaining - 4) {
      throw new PduError(
        'INVALID_LENGTH',
        `P-DATA-TF.pdv[${i}].length`,
        `PDV length ${pdvLength} exceeds remaining P-DATA-TF length ${remaining - 4} in PDV[${i}]`,
      );
    }
    const contextId = raw.readUInt8(pos + 4);
    const control = raw.readUInt8(pos + 5);
    // PS3.8 E.2: bits 2-7 of the message control header are always 0.
    if ((control & 0xfc) !== 0) {
      throw new PduError(
        'INVALID_VALUE',
        `P-DATA-TF.pdv[${i}].message-control-header`,
        `message control header ${hex(control)} of PDV[${i}] has reserved bits 2-7 set`,
      );
    }
    pdvs.push({
      contextId,
      command: (control & 0x01) !== 0,
      last: (control & 0x02) !== 0,
      value: raw.subarray(pos + 6, pos + 4 + pdvLength),
    });
    pos += 4 + pdvLength;
  }
  if (pdvs.length === 0) {
    throw new PduError('MISSING_ITEM', 'P-DATA-TF.pdv', 'P-DATA-TF with PDU length 0 carries no PDV item');
  }
  return { type: PduType.PDataTf, pdvs };
}

// PS3.8 9.3.2 (RQ) and 9.3.3 (AC)
function decodeAssociate(raw: Buffer, type: 0x01 | 0x02, length: number): AssociatePdu {
  const name = pduName(type);
  const isRq = type === PduType.AssociateRq;
  if (length < ASSOCIATE_FIXED_LENGTH) {
    throw new PduError(
      'INVALID_LENGTH',
      `${name}.length`,
      `PDU length ${length} is shorter than the ${ASSOCIATE_FIXED_LENGTH}-byte fixed part`,
    );
  }
  const protocolVersion = raw.readUInt16BE(6);
  const calledAeTitle = raw.toString('latin1', 10, 26);
  const callingAeTitle = raw.toString('latin1', 26, 42);
  // PS3.8 9.3.3: in the AC these fields are reserved, echoed from the RQ and not tested.
  if (isRq) {
    checkAeField(calledAeTitle, `${name}.called-ae-title`);
    checkAeField(callingAeTitle, `${name}.calling-ae-title`);
  }
  const reserved = raw.subarray(42, 42 + ASSOCIATE_RESERVED_LENGTH);

  let contextIndex = 0;
  const rawItems = splitItems(
    raw,
    PDU_HEADER_LENGTH + ASSOCIATE_FIXED_LENGTH,
    PDU_HEADER_LENGTH + length,
    name,
    'item',
    (itemType, index) => {
      switch (itemType) {
        case ItemType.ApplicationContext:
          return `${name}.application-context`;
        case ItemType.PresentationContextRq:
        case ItemType.PresentationContextAc:
          return `${name}.presentation-context[${contextIndex++}]`;
        case ItemType.UserInformation:
          return `${name}.user-information`;
        default:
          return `${name}.item[${index}]`;
      }
    },
  );

  const items: AssociateItem[] = [];
  let haveApplicationContext = false;
  let haveUserInformation = false;
  let contexts = 0;
  for (const item of rawItems) {
    switch (item.type) {
      case ItemType.ApplicationContext: {
        if (haveApplicationContext) {
          throw new PduError('INVALID_VALUE', item.field, 'more than one application context item', {
            abortReason: AbortReason.UnexpectedPduParameter,
          });
        }
        haveApplicationContext = true;
        items.push({ kind: 'application-context', name: readUid(raw, item, 'application context name') });
        break;
      }
      case ItemType.PresentationContextRq:
      case ItemType.PresentationContextAc: {
        const expected = isRq ? ItemType.PresentationContextRq : ItemType.PresentationContextAc;
        if (item.type !== expected) {
          throw new PduError(
            'INVALID_VALUE',
            item.field,
            `presentation context item type ${hex(item.type)} in ${name}, expected ${hex(expected)}`,
            { abortReason: AbortReason.UnexpectedPduParameter },
          );
        }
        contexts++;
        if (isRq) items.push({ kind: 'presentation-context-rq', context: decodeContextRq(raw, item) });
        else items.push({ kind: 'presentation-context-ac', context: decodeContextAc(raw, item) });
        break;
      }
      case ItemType.UserInformation: {
        if (haveUserInformation) {
          throw new PduError('INVALID_VALUE', item.field, 'more than one user information item', {
            abortReason: AbortReason.UnexpectedPduParameter,
          });
        }
        haveUserInformation = true;
        items.push({ kind: 'user-information', subItems: decodeUserInformation(raw, item) });
        break;
      }
      default:
        // PS3.8 9.3.1: items of unrecognized types are ignored (kept here for the round trip).
        items.push({ kind: 'unknown', type: item.type, value: raw.subarray(item.start, item.end) });
    }
  }
  if (!haveApplicationContext) {
    throw new PduError(
      'MISSING_ITEM',
      `${name}.application-context`,
      `${name} has no application context item`,
    );
  }
  if (isRq && contexts === 0) {
    throw new PduError(
      'MISSING_ITEM',
      `${name}.presentation-context`,
      `${name} has no presentation context item`,
    );
  }
  return { type, protocolVersion, calledAeTitle, callingAeTitle, reserved, items };
}

/** The 4-byte fixed part both presentation context items start with; returns the checked context ID. */
function contextFixedPart(raw: Buffer, item: RawItem): number {
  if (item.end - item.start < 4) {
    throw new PduError(
      'INVALID_LENGTH',
      `${item.field}.length`,
      `presentation context item length ${item.end - item.start} is shorter than its 4-byte fixed part`,
    );
  }
  const id = raw.readUInt8(item.start);
  checkContextId(id, `${item.field}.id`);
  return id;
}

// PS3.8 9.3.2.2: presentation-context-ID (1), reserved (3), one abstract syntax sub-item (9.3.2.2.1),
// one or more transfer syntax sub-items (9.3.2.2.2).
function decodeContextRq(raw: Buffer, item: RawItem): PresentationContextRq {
  const f = item.field;
  const id = contextFixedPart(raw, item);
  let transferIndex = 0;
  const subs = splitItems(raw, item.start + 4, item.end, f, 'sub-item', (type, index) => {
    if (type === ItemType.AbstractSyntax) return `${f}.abstract-syntax`;
    if (type === ItemType.TransferSyntax) return `${f}.transfer-syntax[${transferIndex++}]`;
    return `${f}.sub-item[${index}]`;
  });
  let abstractSyntax: string | undefined;
  const transferSyntaxes: string[] = [];
  for (const [index, sub] of subs.entries()) {
    if (sub.type === ItemType.AbstractSyntax) {
      if (abstractSyntax !== undefined) {
        throw new PduError(
          'INVALID_VALUE',
          sub.field,
          `second abstract syntax sub-item (sub-item ${index})`,
          { abortReason: AbortReason.UnexpectedPduParameter },
        );
      }
      if (transferSyntaxes.length > 0) {
        throw new PduError(
          'INVALID_VALUE',
          sub.field,
          'abstract syntax sub-item after a transfer syntax sub-item',
          { abortReason: AbortReason.UnexpectedPduParameter },
        );
      }
      abstractSyntax = readUid(raw, sub, 'abstract syntax');
    } else if (sub.type === ItemType.TransferSyntax) {
      if (abstractSyntax === undefined) {
        throw new PduError(
          'INVALID_VALUE',
          sub.field,
          'transfer syntax sub-item before the abstract syntax sub-item',
          { abortReason: AbortReason.UnexpectedPduParameter },
        );
      }
      transferSyntaxes.push(readUid(raw, sub, 'transfer syntax'));
    } else {
      throw new PduError('INVALID_VALUE', sub.field, `unrecognized sub-item type ${hex(sub.type)}`, {
        abortReason: AbortReason.UnrecognizedPduParameter,
      });
    }
  }
  if (abstractSyntax === undefined) {
    throw new PduError(
      'MISSING_ITEM',
      `${f}.abstract-syntax`,
      `presentation context ${id} has no abstract syntax`,
    );
  }
  if (transferSyntaxes.length === 0) {
    throw new PduError(
      'MISSING_ITEM',
      `${f}.transfer-syntax`,
      `presentation context ${id} has no transfer syntax`,
    );
  }
  return { id, abstractSyntax, transferSyntaxes };
}

// PS3.8 9.3.3.2: presentation-context-ID (1), reserved (1), result/reason (1), reserved (1), one transfer
// syntax sub-item, "not significant and not tested" when the result is not acceptance.
function decodeContextAc(raw: Buffer, item: RawItem): PresentationContextAc {
  const f = item.field;
  const id = contextFixedPart(raw, item);
  const result = raw.readUInt8(item.start + 2);
  if (result > 4) {
    throw new PduError(
      'INVALID_VALUE',
      `${f}.result`,
      `presentation context ${id} result/reason ${result}, expected 0-4`,
    );
  }
  const subs = splitItems(raw, item.start + 4, item.end, f, 'sub-item', (type, index) =>
    type === ItemType.TransferSyntax ? `${f}.transfer-syntax` : `${f}.sub-item[${index}]`,
  );
  let transferSyntax: string | undefined;
  for (const [index, sub] of subs.entries()) {
    if (sub.type !== ItemType.TransferSyntax) {
      throw new PduError('INVALID_VALUE', sub.field, `unrecognized sub-item type ${hex(sub.type)}`, {
        abortReason: AbortReason.UnrecognizedPduParameter,
      });
    }
    if (transferSyntax !== undefined) {
      throw new PduError('INVALID_VALUE', sub.field, `second transfer syntax sub-item (sub-item ${index})`, {
        abortReason: AbortReason.UnexpectedPduParameter,
      });
    }
    transferSyntax = raw.toString('latin1', sub.start, sub.end);
    if (result === 0) checkUid(transferSyntax, sub.field, 'transfer syntax');
  }
  if (transferSyntax === undefined) {
    if (result === 0) {
      throw new PduError(
        'MISSING_ITEM',
        `${f}.transfer-syntax`,
        `accepted presentation context ${id} has no transfer syntax sub-item`,
      );
    }
    return { id, result, transferSyntax: '' };
  }
  return transferSyntax === ''
    ? { id, result, transferSyntax, emptyTransferSyntaxItem: true }
    : { id, result, transferSyntax };
}

// PS3.8 9.3.2.3 and PS3.7 D.3.3
function decodeUserInformation(raw: Buffer, item: RawItem): UserInfoSubItem[] {
  const counts = new Map<number, number>();
  const subs = splitItems(raw, item.start, item.end, item.field, 'sub-item', (type, index) => {
    const kind = SUB_ITEM_NAMES[type];
    if (kind === undefined) return `${item.field}.sub-item[${index}]`;
    if (!REPEATABLE_SUB_ITEMS.has(type)) return `${item.field}.${kind}`;
    const n = counts.get(type) ?? 0;
    counts.set(type, n + 1);
    return `${item.field}.${kind}[${n}]`;
  });
  return subs.map((sub) => decodeSubItem(raw, sub));
}

function decodeSubItem(raw: Buffer, sub: RawItem): UserInfoSubItem {
  switch (sub.type) {
    case ItemType.MaxLength: // PS3.8 D.1.1
      expectLength(sub, 4, 'maximum length sub-item');
      return { kind: 'max-length', maxLength: raw.readUInt32BE(sub.start) };
    case ItemType.ImplementationClassUid: // PS3.7 D.3.3.2.1
      return { kind: 'implementation-class-uid', uid: readUid(raw, sub, 'implementation class UID') };
    case ItemType.AsyncOperationsWindow: // PS3.7 D.3.3.3.1
      expectLength(sub, 4, 'asynchronous operations window sub-item');
      return {
        kind: 'async-operations-window',
        invoked: raw.readUInt16BE(sub.start),
        performed: raw.readUInt16BE(sub.start + 2),
      };
    case ItemType.RoleSelection: {
      // PS3.7 D.3.3.4.1: UID-length (2), SOP class UID, SCU-role (1), SCP-role (1)
      const r = new FieldReader(raw, sub.start, sub.end, sub.field, 'role selection sub-item');
      const sopClassUid = r.uid16('sop-class-uid', 'SOP class UID');
      const scuRole = r.u8('scu-role');
      const scpRole = r.u8('scp-role');
      r.finish();
      for (const [role, value] of [
        ['scu-role', scuRole],
        ['scp-role', scpRole],
      ] as const) {
        if (value > 1) {
          throw new PduError('INVALID_VALUE', `${sub.field}.${role}`, `${role} ${value}, expected 0 or 1`);
        }
      }
      return { kind: 'role-selection', sopClassUid, scuRole, scpRole };
    }
    case ItemType.ImplementationVersionName: // PS3.7 D.3.3.2.3, carried as given
      return { kind: 'implementation-version-name', name: raw.toString('latin1', sub.start, sub.end) };
    case ItemType.ExtendedNegotiation: {
      // PS3.7 D.3.3.5.1: SOP-class-uid-length (2), SOP class UID, service-class-application-information
      const r = new FieldReader(raw, sub.start, sub.end, sub.field, 'extended negotiation sub-item');
      const sopClassUid = r.uid16('sop-class-uid', 'SOP class UID');
      return { kind: 'extended-negotiation', sopClassUid, info: r.rest() };
    }
    case ItemType.CommonExtendedNegotiation: {
      // PS3.7 D.3.3.6.1: SOP class UID, service class UID and the related general SOP class
      // identification, each with a 2-byte length.
      const r = new FieldReader(raw, sub.start, sub.end, sub.field, 'common extended negotiation sub-item');
      const sopClassUid = r.uid16('sop-class-uid', 'SOP class UID');
      const serviceClassUid = r.uid16('service-class-uid', 'service class UID');
      const [s, e] = r.lengthPrefixed('related-general-sop-classes');
      r.finish();
      const list = new FieldReader(
        raw,
        s,
        e,
        `${sub.field}.related-general-sop-classes`,
        'related SOP class list',
      );
      const relatedGeneralSopClassUids: string[] = [];
      while (list.remaining > 0) {
        const name = `uid[${relatedGeneralSopClassUids.length}]`;
        relatedGeneralSopClassUids.push(list.uid16(name, 'related general SOP class UID'));
      }
      return {
        kind: 'common-extended-negotiation',
        sopClassUid,
        serviceClassUid,
        relatedGeneralSopClassUids,
      };
    }
    case ItemType.UserIdentityRq: {
      // PS3.7 D.3.3.7.1: user-identity-type (1), positive-response-requested (1), primary-field-length (2),
      // primary-field, secondary-field-length (2), secondary-field
      const r = new FieldReader(raw, sub.start, sub.end, sub.field, 'user identity sub-item');
      const identityType = r.u8('user-identity-type');
      const positiveResponseRequested = r.u8('positive-response-requested');
      const primaryField = r.bytes16('primary-field');
      const secondaryField = r.bytes16('secondary-field');
      r.finish();
      return {
        kind: 'user-identity-rq',
        identityType,
        positiveResponseRequested,
        primaryField,
        secondaryField,
      };
    }
    case ItemType.UserIdentityAc: {
      // PS3.7 D.3.3.7.2: server-response-length (2), server-response
      const r = new FieldReader(raw, sub.start, sub.end, sub.field, 'user identity sub-item');
      const serverResponse = r.bytes16('server-response');
      r.finish();
      return { kind: 'user-identity-ac', serverResponse };
    }
    default:
      return { kind: 'unknown', type: sub.type, value: raw.subarray(sub.start, sub.end) };
  }
}

// ---------------------------------------------------------------------------------------------------------
// Encoding: checks only that every value fits its field; the semantic checks are decodePdu's.
// ---------------------------------------------------------------------------------------------------------

function uint(value: number, max: number, field: string): number {
  if (!Number.isInteger(value) || value < 0 || value > max) {
    throw new PduError('INVALID_VALUE', field, `${value} is not an integer 0-${max}`);
  }
  return value;
}

function latin1(text: string, field: string): Buffer {
  const bad = /[\u0100-\uffff]/.exec(text);
  if (bad !== null) {
    throw new PduError(
      'INVALID_VALUE',
      field,
      `character U+${bad[0].charCodeAt(0).toString(16)} is not one byte`,
    );
  }
  return Buffer.from(text, 'latin1');
}

function header(type: number, length: number, field: string): Buffer {
  const h = Buffer.alloc(PDU_HEADER_LENGTH);
  h.writeUInt8(type, 0);
  h.writeUInt32BE(uint(length, MAX_U32, field), 2);
  return h;
}

/** item-type (1), reserved (1), item-length (2), value. PS3.8 9.3.2.1 */
function item(type: number, value: Buffer, field: string): Buffer {
  if (value.length > MAX_U16) {
    throw new PduError(
      'INVALID_VALUE',
      `${field}.length`,
      `${value.length} bytes do not fit a 2-byte item length`,
    );
  }
  const h = Buffer.alloc(ITEM_HEADER_LENGTH);
  h.writeUInt8(uint(type, 0xff, `${field}.type`), 0);
  h.writeUInt16BE(value.length, 2);
  return Buffer.concat([h, value]);
}

/** 2-byte length followed by the value. */
function lengthPrefixed(value: Buffer, field: string): Buffer {
  if (value.length > MAX_U16) {
    throw new PduError(
      'INVALID_VALUE',
      `${field}.length`,
      `${value.length} bytes do not fit a 2-byte length`,
    );
  }
  const h = Buffer.alloc(2);
  h.writeUInt16BE(value.length, 0);
  return Buffer.concat([h, value]);
}

function bytes(values: number[]): Buffer {
  return Buffer.from(values);
}

function u16(value: number, field: string): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(uint(value, MAX_U16, field), 0);
  return b;
}

/** Encodes a whole PDU (header included). */
export function encodePdu(pdu: Pdu): Buffer {
  switch (pdu.type) {
    case PduType.AssociateRq:
    case PduType.AssociateAc:
      return encodeAssociate(pdu);
    case PduType.AssociateRj:
      return encodeAssociateRj(pdu.result, pdu.source, pdu.reason);
    case PduType.PDataTf:
      return encodePData(pdu);
    case PduType.ReleaseRq:
      return encodeReleaseRq();
    case PduType.ReleaseRp:
      return encodeReleaseRp();
    case PduType.Abort:
      return encodeAbort(pdu.source, pdu.reason);
    default: {
      const unknown: { type: unknown } = pdu;
      throw new PduError('UNRECOGNIZED_PDU', 'PDU.type', `cannot encode PDU type ${String(unknown.type)}`);
    }
  }
}

function fixedPdu(type: number, b7: number, b8: number, b9: number): Buffer {
  return bytes([type, 0, 0, 0, 0, 4, 0, b7, b8, b9]);
}

/** A-ABORT, PS3.8 9.3.8. */
export function encodeAbort(source: number, reason: number): Buffer {
  return fixedPdu(
    PduType.Abort,
    0,
    uint(source, 0xff, 'A-ABORT.source'),
    uint(reason, 0xff, 'A-ABORT.reason'),
  );
}

/** A-ASSOCIATE-RJ, PS3.8 9.3.4. */
export function encodeAssociateRj(result: number, source: number, reason: number): Buffer {
  return fixedPdu(
    PduType.AssociateRj,
    uint(result, 0xff, 'A-ASSOCIATE-RJ.result'),
    uint(source, 0xff, 'A-ASSOCIATE-RJ.source'),
    uint(reason, 0xff, 'A-ASSOCIATE-RJ.reason'),
  );
}

/** A-RELEASE-RQ, PS3.8 9.3.6. */
export function encodeReleaseRq(): Buffer {
  return fixedPdu(PduType.ReleaseRq, 0, 0, 0);
}

/** A-RELEASE-RP, PS3.8 9.3.7. */
export function encodeReleaseRp(): Buffer {
  return fixedPdu(PduType.ReleaseRp, 0, 0, 0);
}

// PS3.8 9.3.5: one allocation for the whole PDU.
function encodePData(pdu: PDataPdu): Buffer {
  let length = 0;
  for (const pdv of pdu.pdvs) length += 6 + pdv.value.length;
  const out = Buffer.allocUnsafe(PDU_HEADER_LENGTH + uint(length, MAX_U32, 'P-DATA-TF.length'));
  header(PduType.PDataTf, length, 'P-DATA-TF.length').copy(out, 0);
  let pos = PDU_HEADER_LENGTH;
  for (const [i, pdv] of pdu.pdvs.entries()) {
    out.writeUInt32BE(2 + pdv.value.length, pos);
    out.writeUInt8(uint(pdv.contextId, 0xff, `P-DATA-TF.pdv[${i}].context-id`), pos + 4);
    out.writeUInt8((pdv.command ? 0x01 : 0) | (pdv.last ? 0x02 : 0), pos + 5);
    pdv.value.copy(out, pos + 6);
    pos += 6 + pdv.value.length;
  }
  return out;
}

function encodeAssociate(pdu: AssociatePdu): Buffer {
  const name = pduName(pdu.type);
  const fixed = Buffer.alloc(ASSOCIATE_FIXED_LENGTH);
  fixed.writeUInt16BE(uint(pdu.protocolVersion, MAX_U16, `${name}.protocol-version`), 0);
  for (const [offset, field, value] of [
    [4, 'called-ae-title', pdu.calledAeTitle],
    [20, 'calling-ae-title', pdu.callingAeTitle],
  ] as const) {
    const b = latin1(value, `${name}.${field}`);
    if (b.length !== AE_FIELD_LENGTH) {
      throw new PduError(
        'INVALID_VALUE',
        `${name}.${field}`,
        `field has ${b.length} characters, expected 16`,
      );
    }
    b.copy(fixed, offset);
  }
  if (pdu.reserved.length !== ASSOCIATE_RESERVED_LENGTH) {
    throw new PduError('INVALID_VALUE', `${name}.reserved`, `${pdu.reserved.length} bytes, expected 32`);
  }
  pdu.reserved.copy(fixed, 36);
  let contextIndex = 0;
  const parts: Buffer[] = [fixed];
  for (const [index, it] of pdu.items.entries()) {
    switch (it.kind) {
      case 'application-context': {
        const f = `${name}.application-context`;
        parts.push(item(ItemType.ApplicationContext, latin1(it.name, f), f));
        break;
      }
      case 'presentation-context-rq':
        parts.push(encodeContextRq(it.context, `${name}.presentation-context[${contextIndex++}]`));
        break;
      case 'presentation-context-ac':
        parts.push(encodeContextAc(it.context, `${name}.presentation-context[${contextIndex++}]`));
        break;
      case 'user-information':
        parts.push(encodeUserInformation(it.subItems, `${name}.user-information`));
        break;
      case 'unknown':
        parts.push(item(it.type, it.value, `${name}.item[${index}]`));
        break;
    }
  }
  const body = Buffer.concat(parts);
  return Buffer.concat([header(pdu.type, body.length, `${name}.length`), body]);
}

function encodeContextRq(context: PresentationContextRq, f: string): Buffer {
  const parts = [
    bytes([uint(context.id, 0xff, `${f}.id`), 0, 0, 0]),
    item(
      ItemType.AbstractSyntax,
      latin1(context.abstractSyntax, `${f}.abstract-syntax`),
      `${f}.abstract-syntax`,
    ),
  ];
  for (const [i, ts] of context.transferSyntaxes.entries()) {
    const tf = `${f}.transfer-syntax[${i}]`;
    parts.push(item(ItemType.TransferSyntax, latin1(ts, tf), tf));
  }
  return item(ItemType.PresentationContextRq, Buffer.concat(parts), f);
}

function encodeContextAc(context: PresentationContextAc, f: string): Buffer {
  const parts = [bytes([uint(context.id, 0xff, `${f}.id`), 0, uint(context.result, 0xff, `${f}.result`), 0])];
  if (context.transferSyntax !== '' || context.emptyTransferSyntaxItem === true) {
    const tf = `${f}.transfer-syntax`;
    parts.push(item(ItemType.TransferSyntax, latin1(context.transferSyntax, tf), tf));
  }
  return item(ItemType.PresentationContextAc, Buffer.concat(parts), f);
}

function encodeUserInformation(subItems: readonly UserInfoSubItem[], f: string): Buffer {
  const parts = subItems.map((sub, i) => encodeSubItem(sub, `${f}.sub-item[${i}]`));
  return item(ItemType.UserInformation, Buffer.concat(parts), f);
}

function encodeSubItem(sub: UserInfoSubItem, f: string): Buffer {
  switch (sub.kind) {
    case 'max-length': {
      const b = Buffer.alloc(4);
      b.writeUInt32BE(uint(sub.maxLength, MAX_U32, `${f}.max-length`), 0);
      return item(ItemType.MaxLength, b, f);
    }
    case 'implementation-class-uid':
      return item(ItemType.ImplementationClassUid, latin1(sub.uid, f), f);
    case 'async-operations-window':
      return item(
        ItemType.AsyncOperationsWindow,
        Buffer.concat([u16(sub.invoked, `${f}.invoked`), u16(sub.performed, `${f}.performed`)]),
        f,
      );
    case 'role-selection':
      return item(
        ItemType.RoleSelection,
        Buffer.concat([
          lengthPrefixed(latin1(sub.sopClassUid, `${f}.sop-class-uid`), `${f}.sop-class-uid`),
          bytes([uint(sub.scuRole, 0xff, `${f}.scu-role`), uint(sub.scpRole, 0xff, `${f}.scp-role`)]),
        ]),
        f,
      );
    case 'implementation-version-name':
      return item(ItemType.ImplementationVersionName, latin1(sub.name, f), f);
    case 'extended-negotiation':
      return item(
        ItemType.ExtendedNegotiation,
        Buffer.concat([
          lengthPrefixed(latin1(sub.sopClassUid, `${f}.sop-class-uid`), `${f}.sop-class-uid`),
          sub.info,
        ]),
        f,
      );
    case 'common-extended-negotiation': {
      const related = sub.relatedGeneralSopClassUids.map((uid, i) => {
        const uf = `${f}.related-general-sop-classes.uid[${i}]`;
        return lengthPrefixed(latin1(uid, uf), uf);
      });
      return item(
        ItemType.CommonExtendedNegotiation,
        Buffer.concat([
          lengthPrefixed(latin1(sub.sopClassUid, `${f}.sop-class-uid`), `${f}.sop-class-uid`),
          lengthPrefixed(latin1(sub.serviceClassUid, `${f}.service-class-uid`), `${f}.service-class-uid`),
          lengthPrefixed(Buffer.concat(related), `${f}.related-general-sop-classes`),
        ]),
        f,
      );
    }
    case 'user-identity-rq':
      return item(
        ItemType.UserIdentityRq,
        Buffer.concat([
          bytes([
            uint(sub.identityType, 0xff, `${f}.user-identity-type`),
            uint(sub.positiveResponseRequested, 0xff, `${f}.positive-response-requested`),
          ]),
          lengthPrefixed(sub.primaryField, `${f}.primary-field`),
          lengthPrefixed(sub.secondaryField, `${f}.secondary-field`),
        ]),
        f,
      );
    case 'user-identity-ac':
      return item(ItemType.UserIdentityAc, lengthPrefixed(sub.serverResponse, `${f}.server-response`), f);
    case 'unknown':
      return item(sub.type, sub.value, f);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Helpers over AssociatePdu: pure, they return new objects (Buffers are shared) and never mutate the input.
// UID strings are returned as stored (pad included): compare them with uidText().
// ---------------------------------------------------------------------------------------------------------

function cloneSubItem(sub: UserInfoSubItem): UserInfoSubItem {
  return sub.kind === 'common-extended-negotiation'
    ? { ...sub, relatedGeneralSopClassUids: [...sub.relatedGeneralSopClassUids] }
    : { ...sub };
}

function cloneItem(it: AssociateItem): AssociateItem {
  switch (it.kind) {
    case 'presentation-context-rq':
      return {
        kind: it.kind,
        context: { ...it.context, transferSyntaxes: [...it.context.transferSyntaxes] },
      };
    case 'presentation-context-ac':
      return { kind: it.kind, context: { ...it.context } };
    case 'user-information':
      return { kind: it.kind, subItems: it.subItems.map(cloneSubItem) };
    default:
      return { ...it };
  }
}

function itemTypeOf(it: AssociateItem): number {
  switch (it.kind) {
    case 'application-context':
      return ItemType.ApplicationContext;
    case 'presentation-context-rq':
      return ItemType.PresentationContextRq;
    case 'presentation-context-ac':
      return ItemType.PresentationContextAc;
    case 'user-information':
      return ItemType.UserInformation;
    case 'unknown':
      return it.type;
  }
}

/** The presentation context items of an A-ASSOCIATE-RQ, in wire order. */
export function presentationContextsRq(pdu: AssociatePdu): PresentationContextRq[] {
  const out: PresentationContextRq[] = [];
  for (const it of pdu.items) {
    if (it.kind === 'presentation-context-rq') {
      out.push({ ...it.context, transferSyntaxes: [...it.context.transferSyntaxes] });
    }
  }
  return out;
}

/** The presentation context items of an A-ASSOCIATE-AC, in wire order. */
export function presentationContextsAc(pdu: AssociatePdu): PresentationContextAc[] {
  const out: PresentationContextAc[] = [];
  for (const it of pdu.items) if (it.kind === 'presentation-context-ac') out.push({ ...it.context });
  return out;
}

/** The user information sub-items in wire order, [] if there is no user information item. */
export function userInfoSubItems(pdu: AssociatePdu): UserInfoSubItem[] {
  for (const it of pdu.items) if (it.kind === 'user-information') return it.subItems.map(cloneSubItem);
  return [];
}

/** The maximum length sub-item (0x51) value, PS3.8 D.1. 0 means no limit. */
export function maxLengthOf(pdu: AssociatePdu): number | undefined {
  for (const sub of userInfoSubItems(pdu)) if (sub.kind === 'max-length') return sub.maxLength;
  return undefined;
}

/**
 * A copy of `pdu` whose maximum length sub-item(s) carry `maxLength`. Everything else keeps its value and
 * order. Without such a sub-item one is added first in the user information item (lowest sub-item type);
 * without a user information item one is added before the first item of a higher type (or last).
 */
export function withMaxLength(pdu: AssociatePdu, maxLength: number): AssociatePdu {
  uint(maxLength, MAX_U32, 'user-information.max-length');
  const maxItem: UserInfoSubItem = { kind: 'max-length', maxLength };
  let found = false;
  const items = pdu.items.map((it): AssociateItem => {
    if (it.kind !== 'user-information' || found) return cloneItem(it);
    found = true;
    const subItems = it.subItems.map((sub) =>
      sub.kind === 'max-length' ? { ...maxItem } : cloneSubItem(sub),
    );
    if (!subItems.some((sub) => sub.kind === 'max-length')) subItems.unshift({ ...maxItem });
    return { kind: 'user-information', subItems };
  });
  if (!found) {
    const at = items.findIndex((it) => itemTypeOf(it) > ItemType.UserInformation);
    items.splice(at === -1 ? items.length : at, 0, { kind: 'user-information', subItems: [maxItem] });
  }
  return { ...pdu, items };
}

/** The SCP/SCU role selection sub-items, PS3.7 D.3.3.4. */
export function roleSelections(pdu: AssociatePdu): Extract<UserInfoSubItem, { kind: 'role-selection' }>[] {
  const out: Extract<UserInfoSubItem, { kind: 'role-selection' }>[] = [];
  for (const sub of userInfoSubItems(pdu)) if (sub.kind === 'role-selection') out.push(sub);
  return out;
}
