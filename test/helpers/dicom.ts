/**
 * DICOM Part 10 test files, built byte by byte (no DICOM library in the loop, so the bytes are exactly
 * what the test asked for: private tags and group lengths included).
 *
 * Layout: 128-byte preamble, "DICM", file meta group (0002) in explicit VR little endian with its group
 * length, then the data set in the requested transfer syntax. Pixel data is either native (OB/OW) or
 * encapsulated (undefined length, empty basic offset table, fake fragments, sequence delimiter).
 */
import { randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

export const TS = {
  implicitLE: '1.2.840.10008.1.2',
  explicitLE: '1.2.840.10008.1.2.1',
  jpegBaseline: '1.2.840.10008.1.2.4.50',
  rle: '1.2.840.10008.1.2.5',
  jpeg2000: '1.2.840.10008.1.2.4.90',
} as const;

export const SOP_CLASS = {
  secondaryCapture: '1.2.840.10008.5.1.4.1.1.7',
  ctImage: '1.2.840.10008.5.1.4.1.1.2',
} as const;

const IMPLEMENTATION_CLASS_UID = '2.25.152903651306128617622352127473232186123';
const IMPLEMENTATION_VERSION = 'DIMSE_PROXY_TEST';
export const PRIVATE_CREATOR = 'DIMSE TLS PROXY TEST';

export interface InstanceSpec {
  sopClassUid?: string;
  sopInstanceUid?: string;
  studyInstanceUid?: string;
  seriesInstanceUid?: string;
  patientId?: string;
  patientName?: string;
  transferSyntaxUid?: string;
  /** Size of the pixel data value (native) or of all fragments together (encapsulated); rounded up to even. */
  pixelBytes: number;
  withPrivateTags?: boolean;
  withGroupLengths?: boolean;
  seed?: number;
  /** Encapsulated syntaxes only: number of fragments the pixel bytes are split into (default 1). */
  fragments?: number;
}

/** 2.25.<128-bit random decimal> (PS3.5 B.2). */
export function newUid(): string {
  return `2.25.${BigInt(`0x${randomBytes(16).toString('hex')}`).toString(10)}`;
}

const ENCAPSULATED = new Set<string>([TS.jpegBaseline, TS.rle, TS.jpeg2000]);
const KNOWN_TS = new Set<string>([TS.implicitLE, TS.explicitLE, ...ENCAPSULATED]);
/** Explicit VR: these VRs have a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2). */
const LONG_VRS = new Set(['OB', 'OD', 'OF', 'OL', 'OV', 'OW', 'SQ', 'SV', 'UC', 'UN', 'UR', 'UT', 'UV']);
const UNDEFINED_LENGTH = 0xffffffff;

/** Something to write: a ready value, or the pixel data (filled in place to avoid a copy). */
interface Element {
  group: number;
  element: number;
  vr: string;
  value: Buffer | PixelData;
}

interface PixelData {
  kind: 'pixels';
  bytes: number;
  /** 0 = native, otherwise number of encapsulated fragments. */
  fragments: number;
  seed: number;
}

function isPixels(v: Buffer | PixelData): v is PixelData {
  return !Buffer.isBuffer(v);
}

function str(vr: string, s: string): Buffer {
  const b = Buffer.from(s, 'latin1');
  if (b.length % 2 === 0) return b;
  return Buffer.concat([b, Buffer.from([vr === 'UI' ? 0 : 0x20])]);
}

function us(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(n);
  return b;
}

function ul(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
}

function el(group: number, element: number, vr: string, value: Buffer | string | PixelData): Element {
  return { group, element, vr, value: typeof value === 'string' ? str(vr, value) : value };
}

/** Bytes the value occupies on the wire (for encapsulated pixel data: items + delimiter). */
function valueLength(v: Buffer | PixelData): number {
  if (!isPixels(v)) return v.length;
  if (v.fragments === 0) return v.bytes;
  return 8 /* empty offset table item */ + v.fragments * 8 + v.bytes + 8; /* sequence delimiter */
}

function headerLength(e: Element, explicit: boolean): number {
  if (!explicit) return 8;
  return LONG_VRS.has(e.vr) ? 12 : 8;
}

function encodedLength(e: Element, explicit: boolean): number {
  return headerLength(e, explicit) + valueLength(e.value);
}

/** Split `total` (even) into `n` even-sized fragments. */
function fragmentSizes(total: number, n: number): number[] {
  const base = Math.floor(total / n / 2) * 2;
  const sizes = new Array<number>(n).fill(base);
  sizes[n - 1] = total - base * (n - 1);
  return sizes;
}

/** A 64 KiB deterministic block (xorshift32), repeated over the pixel area by `fillPattern`. */
function patternBlock(seed: number): Buffer {
  const block = Buffer.allocUnsafe(65536);
  let x = (seed >>> 0) ^ 0x9e3779b9 || 1;
  for (let i = 0; i < block.length; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    block.writeUInt32LE(x >>> 0, i);
  }
  return block;
}

/**
 * Repeat `block` over buf[start, end) by doubling memcpy (copyWithin): Buffer#fill with a Buffer value
 * is several times slower on hundreds of megabytes.
 */
function fillPattern(buf: Buffer, start: number, end: number, block: Buffer): void {
  const total = end - start;
  if (total <= 0) return;
  let filled = block.copy(buf, start, 0, Math.min(block.length, total));
  while (filled < total) {
    const n = Math.min(filled, total - filled);
    buf.copyWithin(start + filled, start, start + n);
    filled += n;
  }
}

function writeElement(buf: Buffer, off: number, e: Element, explicit: boolean): number {
  buf.writeUInt16LE(e.group, off);
  buf.writeUInt16LE(e.element, off + 2);
  const v = e.value;
  const encapsulated = isPixels(v) && v.fragments > 0;
  const len = encapsulated ? UNDEFINED_LENGTH : valueLength(v);
  if (!explicit) {
    buf.writeUInt32LE(len, off + 4);
    off += 8;
  } else if (LONG_VRS.has(e.vr)) {
    buf.write(e.vr, off + 4, 'latin1');
    buf.writeUInt16LE(0, off + 6);
    buf.writeUInt32LE(len, off + 8);
    off += 12;
  } else {
    if (len > 0xffff)
      throw new RangeError(`value of (${hex(e.group)},${hex(e.element)}) too long for ${e.vr}`);
    buf.write(e.vr, off + 4, 'latin1');
    buf.writeUInt16LE(len, off + 6);
    off += 8;
  }
  if (!isPixels(v)) {
    v.copy(buf, off);
    return off + v.length;
  }
  const block = patternBlock(v.seed);
  if (v.fragments === 0) {
    fillPattern(buf, off, off + v.bytes, block);
    return off + v.bytes;
  }
  // Basic offset table: an empty item.
  off = writeItemHeader(buf, off, 0xe000, 0);
  const sizes = fragmentSizes(v.bytes, v.fragments);
  sizes.forEach((size, i) => {
    off = writeItemHeader(buf, off, 0xe000, size);
    fillPattern(buf, off, off + size, block);
    // Look a little like JPEG: SOI at the start of the first fragment, EOI at the end of the last one.
    if (i === 0 && size >= 2) buf.writeUInt16BE(0xffd8, off);
    if (i === sizes.length - 1 && size >= 2) buf.writeUInt16BE(0xffd9, off + size - 2);
    off += size;
  });
  return writeItemHeader(buf, off, 0xe0dd, 0);
}

function writeItemHeader(buf: Buffer, off: number, element: number, len: number): number {
  buf.writeUInt16LE(0xfffe, off);
  buf.writeUInt16LE(element, off + 2);
  buf.writeUInt32LE(len, off + 4);
  return off + 8;
}

function hex(n: number): string {
  return n.toString(16).toUpperCase().padStart(4, '0');
}

/** Insert a (gggg,0000) UL group length before the first element of each group (except 0002, done apart). */
function withGroupLengths(elements: Element[], explicit: boolean): Element[] {
  const out: Element[] = [];
  const groups = [...new Set(elements.map((e) => e.group))];
  for (const group of groups) {
    const members = elements.filter((e) => e.group === group);
    const length = members.reduce((sum, e) => sum + encodedLength(e, explicit), 0);
    out.push(el(group, 0x0000, 'UL', ul(length)), ...members);
  }
  return out;
}

interface Geometry {
  rows: number;
  columns: number;
  frames: number;
}

function divisors(n: number): number[] {
  const small: number[] = [];
  const large: number[] = [];
  for (let d = 1; d * d <= n; d++) {
    if (n % d === 0) {
      small.push(d);
      if (d * d !== n) large.unshift(n / d);
    }
  }
  return [...small, ...large];
}

/** Rows × Columns (× NumberOfFrames) = pixels, each dimension ≤ 65535, as square as possible. */
function geometry(pixels: number): Geometry {
  const divs = divisors(pixels);
  const square = (q: number): { rows: number; columns: number } | undefined => {
    let best: { rows: number; columns: number } | undefined;
    for (const c of divs) {
      if (c > 65535 || q % c !== 0) continue;
      const r = q / c;
      if (r > 65535) continue;
      if (best === undefined || Math.min(r, c) > Math.min(best.rows, best.columns))
        best = { rows: r, columns: c };
    }
    return best;
  };
  for (const frames of divs) {
    const g = square(pixels / frames);
    if (g !== undefined) return { ...g, frames };
  }
  return { rows: 1, columns: 1, frames: pixels };
}

function today(): { date: string; time: string } {
  const iso = new Date().toISOString();
  return { date: iso.slice(0, 10).replace(/-/g, ''), time: iso.slice(11, 19).replace(/:/g, '') };
}

/** Build a complete Part 10 file. Allocates once; pixel data is a cheap repeated pattern. */
export function buildPart10(spec: InstanceSpec): Buffer {
  const ts = spec.transferSyntaxUid ?? TS.explicitLE;
  if (!KNOWN_TS.has(ts)) throw new RangeError(`unsupported transfer syntax ${ts}`);
  if (!Number.isSafeInteger(spec.pixelBytes) || spec.pixelBytes < 2 || spec.pixelBytes > 0xfffffff0) {
    throw new RangeError(`pixelBytes out of range: ${spec.pixelBytes}`);
  }
  const explicit = ts !== TS.implicitLE;
  const encapsulated = ENCAPSULATED.has(ts);
  const fragments = encapsulated ? Math.max(1, Math.floor(spec.fragments ?? 1)) : 0;
  const pixelBytes = spec.pixelBytes + (spec.pixelBytes % 2);
  if (fragments * 2 > pixelBytes) throw new RangeError('more fragments than pixel bytes allow');

  const sopClass = spec.sopClassUid ?? SOP_CLASS.secondaryCapture;
  const sopInstance = spec.sopInstanceUid ?? newUid();
  const isCt = sopClass === SOP_CLASS.ctImage;
  // 8-bit monochrome: one byte per pixel; CT: 16 bits allocated, 12 stored.
  const bitsAllocated = isCt ? 16 : 8;
  const g = geometry(pixelBytes / (bitsAllocated / 8));
  const { date, time } = today();

  let data: Element[] = [
    el(0x0008, 0x0005, 'CS', 'ISO_IR 100'),
    el(0x0008, 0x0008, 'CS', isCt ? 'ORIGINAL\\PRIMARY\\AXIAL' : 'DERIVED\\SECONDARY'),
    el(0x0008, 0x0016, 'UI', sopClass),
    el(0x0008, 0x0018, 'UI', sopInstance),
    el(0x0008, 0x0020, 'DA', date),
    el(0x0008, 0x0030, 'TM', time),
    el(0x0008, 0x0050, 'SH', ''),
    el(0x0008, 0x0060, 'CS', isCt ? 'CT' : 'OT'),
    ...(isCt ? [] : [el(0x0008, 0x0064, 'CS', 'WSD')]),
    el(0x0008, 0x0070, 'LO', 'dimse-tls-proxy tests'),
    el(0x0008, 0x0090, 'PN', ''),
  ];
  if (spec.withPrivateTags === true) {
    const privateValue = Buffer.alloc(16);
    for (let i = 0; i < privateValue.length; i++) privateValue[i] = (i * 37 + (spec.seed ?? 0)) & 0xff;
    data.push(
      el(0x0009, 0x0010, 'LO', PRIVATE_CREATOR),
      el(0x0009, 0x1001, 'OB', privateValue),
      el(0x0009, 0x1002, 'LO', 'private text value'),
    );
  }
  data.push(
    el(0x0010, 0x0010, 'PN', spec.patientName ?? 'TEST^PATIENT'),
    el(0x0010, 0x0020, 'LO', spec.patientId ?? 'TEST-0001'),
    el(0x0010, 0x0030, 'DA', ''),
    el(0x0010, 0x0040, 'CS', 'O'),
    ...(isCt ? [el(0x0018, 0x0050, 'DS', '1'), el(0x0018, 0x0060, 'DS', '120')] : []),
    el(0x0020, 0x000d, 'UI', spec.studyInstanceUid ?? newUid()),
    el(0x0020, 0x000e, 'UI', spec.seriesInstanceUid ?? newUid()),
    el(0x0020, 0x0010, 'SH', '1'),
    el(0x0020, 0x0011, 'IS', '1'),
    el(0x0020, 0x0013, 'IS', '1'),
    ...(isCt
      ? [
          el(0x0020, 0x0032, 'DS', '0\\0\\0'),
          el(0x0020, 0x0037, 'DS', '1\\0\\0\\0\\1\\0'),
          el(0x0020, 0x0052, 'UI', newUid()),
        ]
      : [el(0x0020, 0x0020, 'CS', '')]),
    el(0x0028, 0x0002, 'US', us(1)),
    el(0x0028, 0x0004, 'CS', 'MONOCHROME2'),
    ...(g.frames > 1 ? [el(0x0028, 0x0008, 'IS', String(g.frames))] : []),
    el(0x0028, 0x0010, 'US', us(g.rows)),
    el(0x0028, 0x0011, 'US', us(g.columns)),
    el(0x0028, 0x0100, 'US', us(bitsAllocated)),
    el(0x0028, 0x0101, 'US', us(isCt ? 12 : 8)),
    el(0x0028, 0x0102, 'US', us(isCt ? 11 : 7)),
    el(0x0028, 0x0103, 'US', us(0)),
    ...(isCt ? [el(0x0028, 0x1052, 'DS', '-1024'), el(0x0028, 0x1053, 'DS', '1')] : []),
    el(0x7fe0, 0x0010, encapsulated || bitsAllocated === 8 ? 'OB' : 'OW', {
      kind: 'pixels',
      bytes: pixelBytes,
      fragments,
      seed: spec.seed ?? 0,
    }),
  );
  if (spec.withGroupLengths === true) data = withGroupLengths(data, explicit);

  const metaBody: Element[] = [
    el(0x0002, 0x0001, 'OB', Buffer.from([0x00, 0x01])),
    el(0x0002, 0x0002, 'UI', sopClass),
    el(0x0002, 0x0003, 'UI', sopInstance),
    el(0x0002, 0x0010, 'UI', ts),
    el(0x0002, 0x0012, 'UI', IMPLEMENTATION_CLASS_UID),
    el(0x0002, 0x0013, 'SH', IMPLEMENTATION_VERSION),
  ];
  const metaBodyLength = metaBody.reduce((sum, e) => sum + encodedLength(e, true), 0);
  const meta = [el(0x0002, 0x0000, 'UL', ul(metaBodyLength)), ...metaBody];

  const total =
    132 +
    meta.reduce((sum, e) => sum + encodedLength(e, true), 0) +
    data.reduce((sum, e) => sum + encodedLength(e, explicit), 0);
  const buf = Buffer.allocUnsafe(total);
  buf.fill(0, 0, 128);
  buf.write('DICM', 128, 'latin1');
  let off = 132;
  for (const e of meta) off = writeElement(buf, off, e, true);
  for (const e of data) off = writeElement(buf, off, e, explicit);
  if (off !== total) throw new Error(`internal error: wrote ${off} of ${total} bytes`);
  return buf;
}

/** Offset of the first data set byte: after the preamble, "DICM" and the meta group (via 0002,0000). */
export function datasetOffset(part10: Buffer): number {
  if (part10.length < 144 || part10.toString('latin1', 128, 132) !== 'DICM') {
    throw new RangeError('not a DICOM Part 10 file (no DICM prefix)');
  }
  if (
    part10.readUInt16LE(132) !== 0x0002 ||
    part10.readUInt16LE(134) !== 0x0000 ||
    part10.toString('latin1', 136, 138) !== 'UL' ||
    part10.readUInt16LE(138) !== 4
  ) {
    throw new RangeError('Part 10 file does not start its meta header with (0002,0000) UL');
  }
  const end = 144 + part10.readUInt32LE(140);
  if (end > part10.length) throw new RangeError('meta group length runs past the end of the file');
  return end;
}

/** The data set bytes (a view, no copy): exactly what a C-STORE carries in its data PDVs. */
export function datasetOf(part10: Buffer): Buffer {
  return part10.subarray(datasetOffset(part10));
}

/** Read a string element of the meta group (explicit VR LE), e.g. 0x0003 SOP instance, 0x0010 TS. */
export function metaString(part10: Buffer, element: number): string | undefined {
  const end = datasetOffset(part10);
  let off = 132;
  while (off + 8 <= end) {
    const group = part10.readUInt16LE(off);
    const elem = part10.readUInt16LE(off + 2);
    const vr = part10.toString('latin1', off + 4, off + 6);
    let len: number;
    let header: number;
    if (LONG_VRS.has(vr)) {
      len = part10.readUInt32LE(off + 8);
      header = 12;
    } else {
      len = part10.readUInt16LE(off + 6);
      header = 8;
    }
    if (group === 0x0002 && elem === element) {
      return part10.toString('latin1', off + header, off + header + len).replace(/[\0 ]+$/, '');
    }
    off += header + len;
  }
  return undefined;
}

/**
 * Write `count` instances into `dir` (created if needed) with unique SOP instance UIDs. Study and series
 * UIDs are generated once for the batch unless given. Returns the file paths in order.
 */
export async function writeInstances(
  dir: string,
  count: number,
  spec: Omit<InstanceSpec, 'sopInstanceUid'>,
): Promise<string[]> {
  await mkdir(dir, { recursive: true });
  const shared = {
    ...spec,
    studyInstanceUid: spec.studyInstanceUid ?? newUid(),
    seriesInstanceUid: spec.seriesInstanceUid ?? newUid(),
  };
  const paths: string[] = [];
  for (let i = 0; i < count; i++) {
    const path = join(dir, `inst-${String(i + 1).padStart(5, '0')}.dcm`);
    await writeFile(path, buildPart10({ ...shared, seed: (spec.seed ?? 0) + i, sopInstanceUid: newUid() }));
    paths.push(path);
  }
  return paths;
}
