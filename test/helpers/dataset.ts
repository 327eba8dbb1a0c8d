// A small DICOM data set encoder for tests (PS3.5 7.1, 7.5): explicit and implicit VR, both byte orders,
// defined and undefined lengths, UN sequences, and the deflated syntax (PS3.5 A.5).
import { deflateRawSync } from 'node:zlib';

export const IMPLICIT = '1.2.840.10008.1.2';
export const EXPLICIT_LE = '1.2.840.10008.1.2.1';
export const EXPLICIT_BE = '1.2.840.10008.1.2.2';
export const DEFLATED = '1.2.840.10008.1.2.1.99';
export const SYNTAXES = [IMPLICIT, EXPLICIT_LE, EXPLICIT_BE, DEFLATED] as const;

export interface Item {
  elements: Elem[];
  undefinedLength?: boolean;
}
export type Elem =
  | { tag: number; vr: string; value: string | number | Buffer; rawLength?: number }
  | { tag: number; vr: 'SQ' | 'UN'; items: Item[]; undefinedLength?: boolean };

export interface Syntax {
  explicit: boolean;
  little: boolean;
}
export const IMPLICIT_LE_SYNTAX: Syntax = { explicit: false, little: true };
export const syntaxOf = (ts: string): Syntax =>
  ts === IMPLICIT ? IMPLICIT_LE_SYNTAX : { explicit: true, little: ts !== EXPLICIT_BE };

export const LONG = new Set(['OB', 'OD', 'OF', 'OL', 'OV', 'OW', 'SQ', 'SV', 'UC', 'UN', 'UR', 'UT', 'UV']);
export const UNDEFINED = 0xffffffff;

export function u16(n: number, s: Syntax): Buffer {
  const b = Buffer.alloc(2);
  if (s.little) b.writeUInt16LE(n);
  else b.writeUInt16BE(n);
  return b;
}
export function u32(n: number, s: Syntax): Buffer {
  const b = Buffer.alloc(4);
  if (s.little) b.writeUInt32LE(n);
  else b.writeUInt32BE(n);
  return b;
}
export function tagBytes(tag: number, s: Syntax): Buffer {
  return Buffer.concat([u16(tag >>> 16, s), u16(tag & 0xffff, s)]);
}

export function header(tag: number, vr: string, length: number, s: Syntax): Buffer {
  if (!s.explicit) return Buffer.concat([tagBytes(tag, s), u32(length, s)]);
  const vrBytes = Buffer.from(vr, 'latin1');
  if (LONG.has(vr)) return Buffer.concat([tagBytes(tag, s), vrBytes, Buffer.alloc(2), u32(length, s)]);
  return Buffer.concat([tagBytes(tag, s), vrBytes, u16(length, s)]);
}

function valueBytes(vr: string, value: string | number | Buffer, s: Syntax): Buffer {
  if (Buffer.isBuffer(value)) return value;
  if (typeof value === 'number') return u16(value, s);
  return Buffer.from(value.length % 2 === 1 ? value + (vr === 'UI' ? '\0' : ' ') : value, 'latin1');
}

export function encodeItems(items: Item[], s: Syntax): Buffer {
  const parts: Buffer[] = [];
  for (const item of items) {
    const body = encode(item.elements, s);
    parts.push(tagBytes(0xfffee000, s), u32(item.undefinedLength ? UNDEFINED : body.length, s), body);
    if (item.undefinedLength) parts.push(tagBytes(0xfffee00d, s), u32(0, s));
  }
  return Buffer.concat(parts);
}

export function encode(elements: Elem[], s: Syntax): Buffer {
  const parts: Buffer[] = [];
  for (const e of elements) {
    if ('items' in e) {
      // The value of a UN sequence is Implicit VR Little Endian whatever the syntax (PS3.5 6.2.2).
      const inner = e.vr === 'UN' ? IMPLICIT_LE_SYNTAX : s;
      const body = encodeItems(e.items, inner);
      parts.push(header(e.tag, e.vr, e.undefinedLength ? UNDEFINED : body.length, s), body);
      if (e.undefinedLength) parts.push(tagBytes(0xfffee0dd, inner), u32(0, inner));
    } else {
      const value = valueBytes(e.vr, e.value, s);
      parts.push(header(e.tag, e.vr, e.rawLength ?? value.length, s), value);
    }
  }
  return Buffer.concat(parts);
}

/** The data set in a transfer syntax (the deflated one: Explicit VR LE, raw deflate, PS3.5 A.5). */
export function dataSet(elements: Elem[], ts: string): Buffer {
  const bytes = encode(elements, syntaxOf(ts === DEFLATED ? EXPLICIT_LE : ts));
  return ts === DEFLATED ? deflateRawSync(bytes) : bytes;
}
