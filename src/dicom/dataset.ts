// Walking DICOM data sets (PS3.5 7): the element, item and delimitation headers of every transfer syntax
// the proxy meets, with every length checked against the bytes that remain, nesting depth and element
// count bounded. Pure: bytes in, callbacks out, no I/O. Shared by the Storage Commitment parser
// (commitment.ts) and the data set prefix reader (prefix.ts). Malformed input throws a DataSetParseError
// naming the tag and offset, and nothing else.
import { inflateRawSync } from 'node:zlib';

/** The data set is not a well-formed DICOM data set in the given transfer syntax. */
export class DataSetParseError extends Error {
  readonly code = 'DATASET_MALFORMED';
  /** The tag being read, as `(gggg,eeee)`, when one was read. */
  readonly tag: string | null;
  /** Byte offset of the element or item header at fault (in the inflated bytes for the deflated syntax). */
  readonly offset: number;

  constructor(message: string, tag: string | null, offset: number) {
    super(`${tag === null ? '' : `${tag} `}at offset ${offset}: ${message}`);
    this.name = 'DataSetParseError';
    this.tag = tag;
    this.offset = offset;
  }
}

export const IMPLICIT_VR_LITTLE_ENDIAN = '1.2.840.10008.1.2';
export const EXPLICIT_VR_LITTLE_ENDIAN = '1.2.840.10008.1.2.1';
export const EXPLICIT_VR_BIG_ENDIAN = '1.2.840.10008.1.2.2';
export const DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = '1.2.840.10008.1.2.1.99';

/** Largest data set accepted, before and (deflated syntax) after inflation. */
export const MAX_DATASET_BYTES = 16 * 1024 * 1024;
/** Deepest nesting of sequences accepted. */
export const MAX_SEQUENCE_DEPTH = 16;
/** Most element, item and delimiter headers read from one data set. */
export const MAX_ELEMENTS = 1_000_000;

/** Item, Item Delimitation and Sequence Delimitation tags (PS3.5 7.5). */
const ITEM = 0xfffee000;
export const ITEM_DELIMITATION = 0xfffee00d;
export const SEQUENCE_DELIMITATION = 0xfffee0dd;

export const UNDEFINED_LENGTH = 0xffffffff;

/** All VRs of PS3.5 6.2 (Table 6.2-1). */
// prettier-ignore
const KNOWN_VRS = new Set([
  'AE', 'AS', 'AT', 'CS', 'DA', 'DS', 'DT', 'FD', 'FL', 'IS', 'LO', 'LT', 'OB', 'OD', 'OF', 'OL', 'OV',
  'OW', 'PN', 'SH', 'SL', 'SQ', 'SS', 'ST', 'SV', 'TM', 'UC', 'UI', 'UL', 'UN', 'UR', 'US', 'UT', 'UV',
]);

/**
 * VRs whose explicit-VR header has 2 reserved bytes and a 32-bit length (PS3.5 7.1.2, Table 7.1-1);
 * every other VR has a 16-bit length.
 */
// prettier-ignore
const LONG_LENGTH_VRS = new Set([
  'OB', 'OD', 'OF', 'OL', 'OV', 'OW', 'SQ', 'SV', 'UC', 'UN', 'UR', 'UT', 'UV',
]);

export interface Mode {
  explicit: boolean;
  little: boolean;
}

export const IMPLICIT_LE: Mode = { explicit: false, little: true };
export const EXPLICIT_LE: Mode = { explicit: true, little: true };
export const EXPLICIT_BE: Mode = { explicit: true, little: false };

export interface Header {
  tag: number;
  /** The explicit VR, or null for implicit VR and for item / delimitation tags. */
  vr: string | null;
  length: number;
  /** Offset of the header. */
  offset: number;
  valueStart: number;
  /** The encoding of this element. */
  mode: Mode;
}

/** What to do with the elements of a data set or item; may return the handler of a sequence's items. */
export type OnElement = (header: Header, value: Buffer | null) => OnItem | undefined;
/** Called at the start of each item of a sequence; returns the handler of the item's elements. */
export type OnItem = () => OnElement;

export const skipElement: OnElement = () => undefined;

export function tagText(tag: number): string {
  const hex = (n: number): string => n.toString(16).toUpperCase().padStart(4, '0');
  return `(${hex(tag >>> 16)},${hex(tag & 0xffff)})`;
}

/** A UID without its trailing padding: NUL (PS3.5 6.2, UI; and 6.4 for even length) or space. */
export function trimUid(text: string): string {
  let end = text.length;
  while (end > 0 && (text.charCodeAt(end - 1) === 0x00 || text.charCodeAt(end - 1) === 0x20)) end--;
  return text.slice(0, end);
}

export class Walker {
  private elements = 0;
  /** The walk ended at the first top-level element whose tag is past `stopAfter`. */
  stopped = false;

  /**
   * @param stopAfter the walk of the top level (depth 0) ends, without reading its value, at the first
   *   element whose tag is greater than this one (the elements of a data set are in ascending tag order,
   *   PS3.5 7.1): a reader that wants only a few leading elements need not have the rest of the bytes.
   */
  constructor(
    private readonly buf: Buffer,
    private readonly stopAfter = 0xffffffff,
  ) {}

  fail(message: string, tag: number | null, offset: number): never {
    throw new DataSetParseError(message, tag === null ? null : tagText(tag), offset);
  }

  private u16(mode: Mode, at: number): number {
    return mode.little ? this.buf.readUInt16LE(at) : this.buf.readUInt16BE(at);
  }

  private u32(mode: Mode, at: number): number {
    return mode.little ? this.buf.readUInt32LE(at) : this.buf.readUInt32BE(at);
  }

  /** The header at `at`, which must lie wholly before `limit`. */
  private header(mode: Mode, at: number, limit: number): Header {
    if (at + 8 > limit) this.fail(`truncated element header (${limit - at} bytes left)`, null, at);
    if (++this.elements > MAX_ELEMENTS) this.fail(`more than ${MAX_ELEMENTS} elements`, null, at);
    const tag = ((this.u16(mode, at) << 16) | this.u16(mode, at + 2)) >>> 0;
    // Item and delimitation tags have no VR in any transfer syntax (PS3.5 7.5).
    if (tag >>> 16 === 0xfffe || !mode.explicit) {
      return { tag, vr: null, length: this.u32(mode, at + 4), offset: at, valueStart: at + 8, mode };
    }
    const vr = this.buf.toString('latin1', at + 4, at + 6);
    if (!KNOWN_VRS.has(vr)) this.fail(`unknown VR ${JSON.stringify(vr)}`, tag, at);
    if (!LONG_LENGTH_VRS.has(vr)) {
      return { tag, vr, length: this.u16(mode, at + 6), offset: at, valueStart: at + 8, mode };
    }
    if (at + 12 > limit) this.fail(`truncated element header (${limit - at} bytes left)`, tag, at);
    return { tag, vr, length: this.u32(mode, at + 8), offset: at, valueStart: at + 12, mode };
  }

  /**
   * Walk the elements of a data set or item from `pos` to `end`, or, when `end` is null (an item of
   * undefined length), up to and including its Item Delimitation Item, which must come before `bound`.
   * Returns the offset after it.
   */
  walk(mode: Mode, pos: number, end: number | null, bound: number, depth: number, on: OnElement): number {
    const limit = end ?? bound;
    for (;;) {
      if (pos === end) return pos;
      if (end === null && pos >= bound) {
        this.fail('item of undefined length without an Item Delimitation Item', null, pos);
      }
      const h = this.header(mode, pos, limit);
      if (depth === 0 && h.tag > this.stopAfter) {
        this.stopped = true;
        return h.offset;
      }
      if (h.tag === ITEM_DELIMITATION) {
        // PS3.5 7.5.2: ends an item of undefined length; its length (which should be 0) is not used.
        if (end === null) return h.valueStart;
        this.fail('Item Delimitation Item outside an item of undefined length', h.tag, h.offset);
      }
      if (h.tag >>> 16 === 0xfffe) this.fail('item or delimitation tag among data elements', h.tag, h.offset);
      pos = this.element(h, limit, depth, on);
    }
  }

  /** Hand one element to `on` and skip past its value; returns the offset after it. */
  private element(h: Header, limit: number, depth: number, on: OnElement): number {
    const undefinedLength = h.length === UNDEFINED_LENGTH;
    if (undefinedLength) {
      // Only SQ and UN (and OB / OW for encapsulated Pixel Data) may have an undefined length with
      // explicit VR (PS3.5 7.1.2); with implicit VR it means a sequence (PS3.5 7.5, A.1).
      if (h.vr !== null && !['SQ', 'UN', 'OB', 'OW'].includes(h.vr)) {
        this.fail(`undefined length for VR ${h.vr}`, h.tag, h.offset);
      }
    } else if (h.valueStart + h.length > limit) {
      this.fail(`value length ${h.length} exceeds the ${limit - h.valueStart} bytes left`, h.tag, h.offset);
    }
    const value = undefinedLength ? null : this.buf.subarray(h.valueStart, h.valueStart + h.length);
    const onItem = on(h, value);
    // A defined-length element nobody reads as a sequence is skipped whole, nested sequences included.
    if (!undefinedLength && onItem === undefined) return h.valueStart + h.length;
    if (depth >= MAX_SEQUENCE_DEPTH) {
      this.fail(`sequences nested deeper than ${MAX_SEQUENCE_DEPTH}`, h.tag, h.offset);
    }
    // The value of a UN element is an Implicit VR Little Endian sequence whatever the transfer syntax
    // (PS3.5 6.2.2). Undefined-length OB/OW (encapsulated Pixel Data, PS3.5 A.4, never in this SOP
    // class) is skipped as a sequence too: its fragments are items of defined length.
    return this.sequence(h.vr === 'UN' ? IMPLICIT_LE : h.mode, h, limit, depth + 1, onItem);
  }

  /** Walk the items of sequence `h` (PS3.5 7.5.1, 7.5.2); returns the offset after the sequence. */
  private sequence(mode: Mode, h: Header, limit: number, depth: number, onItem: OnItem | undefined): number {
    const end = h.length === UNDEFINED_LENGTH ? null : h.valueStart + h.length;
    const bound = end ?? limit;
    let pos = h.valueStart;
    for (;;) {
      if (pos === end) return pos;
      if (end === null && pos >= bound) {
        this.fail('sequence of undefined length without a Sequence Delimitation Item', h.tag, h.offset);
      }
      const item = this.header(mode, pos, bound);
      if (item.tag === SEQUENCE_DELIMITATION) {
        if (end === null) return item.valueStart;
        this.fail('Sequence Delimitation Item in a sequence of defined length', item.tag, item.offset);
      }
      if (item.tag !== ITEM) {
        this.fail(
          `found where an Item (FFFE,E000) of sequence ${tagText(h.tag)} was expected`,
          item.tag,
          item.offset,
        );
      }
      const on = onItem ? onItem() : skipElement;
      if (item.length === UNDEFINED_LENGTH) {
        pos = this.walk(mode, item.valueStart, null, bound, depth, on);
      } else {
        const itemEnd = item.valueStart + item.length;
        if (itemEnd > bound) {
          this.fail(
            `item length ${item.length} exceeds the ${bound - item.valueStart} bytes left`,
            item.tag,
            item.offset,
          );
        }
        // Without a handler the item's content is not looked at (an encapsulated fragment is not a data set).
        pos = onItem ? this.walk(mode, item.valueStart, itemEnd, itemEnd, depth, on) : itemEnd;
      }
    }
  }
}

export function modeOf(transferSyntaxUid: string): Mode {
  switch (trimUid(transferSyntaxUid)) {
    case IMPLICIT_VR_LITTLE_ENDIAN:
      return IMPLICIT_LE;
    case EXPLICIT_VR_BIG_ENDIAN:
      return EXPLICIT_BE;
    default:
      // Explicit VR Little Endian, the deflated syntax once inflated, and any other syntax: the
      // encapsulated (compressed pixel data) syntaxes encode everything but Pixel Data as Explicit VR
      // Little Endian (PS3.5 A.4); the readers here never reach Pixel Data.
      return EXPLICIT_LE;
  }
}

export function joinFragments(bytes: Buffer | Buffer[]): Buffer {
  if (Buffer.isBuffer(bytes)) {
    if (bytes.length > MAX_DATASET_BYTES) {
      throw new DataSetParseError(`data set of ${bytes.length} bytes exceeds ${MAX_DATASET_BYTES}`, null, 0);
    }
    return bytes;
  }
  let total = 0;
  for (const fragment of bytes) {
    total += fragment.length;
    if (total > MAX_DATASET_BYTES) {
      throw new DataSetParseError(`data set of more than ${MAX_DATASET_BYTES} bytes`, null, 0);
    }
  }
  return bytes.length === 1 ? bytes[0]! : Buffer.concat(bytes, total);
}

/** Deflated Explicit VR Little Endian (PS3.5 A.5): the whole data set is a raw deflate stream (RFC 1951). */
export function inflate(data: Buffer): Buffer {
  try {
    return inflateRawSync(data, { maxOutputLength: MAX_DATASET_BYTES });
  } catch (err) {
    const tooLarge = (err as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE';
    throw new DataSetParseError(
      tooLarge
        ? `deflated data set inflates to more than ${MAX_DATASET_BYTES} bytes`
        : `deflated data set does not inflate (${(err as Error).message})`,
      null,
      0,
    );
  }
}
