// DICOM Part 10 file framing (PS3.10 7.1): 128-byte preamble, "DICM", File Meta Information (group 0002,
// always Explicit VR Little Endian), then the data set exactly as transferred.

export const IMPLEMENTATION_CLASS_UID = '1.2.826.0.1.3680043.10.1461.1';
export const IMPLEMENTATION_VERSION_NAME = 'DIMSETLSPROXY01';

export interface FileMeta {
  sopClassUid: string;
  sopInstanceUid: string;
  transferSyntaxUid: string;
  sourceAeTitle?: string;
}

function element(elementNo: number, vr: string, value: Buffer): Buffer {
  const longForm = vr === 'OB' || vr === 'UN' || vr === 'SQ' || vr === 'UT';
  const header = Buffer.alloc(longForm ? 12 : 8);
  header.writeUInt16LE(0x0002, 0);
  header.writeUInt16LE(elementNo, 2);
  header.write(vr, 4, 'latin1');
  if (longForm) header.writeUInt32LE(value.length, 8);
  else header.writeUInt16LE(value.length, 6);
  return Buffer.concat([header, value]);
}

function text(value: string, pad: '\0' | ' '): Buffer {
  return Buffer.from(value.length % 2 === 1 ? value + pad : value, 'latin1');
}

/** Preamble + DICM + group 0002 with its group length. */
export function encodeFileMeta(meta: FileMeta): Buffer {
  const elements = [
    element(0x0001, 'OB', Buffer.from([0x00, 0x01])),
    element(0x0002, 'UI', text(meta.sopClassUid, '\0')),
    element(0x0003, 'UI', text(meta.sopInstanceUid, '\0')),
    element(0x0010, 'UI', text(meta.transferSyntaxUid, '\0')),
    element(0x0012, 'UI', text(IMPLEMENTATION_CLASS_UID, '\0')),
    element(0x0013, 'SH', text(IMPLEMENTATION_VERSION_NAME, ' ')),
  ];
  if (meta.sourceAeTitle) elements.push(element(0x0016, 'AE', text(meta.sourceAeTitle, ' ')));
  const body = Buffer.concat(elements);
  const groupLength = Buffer.alloc(4);
  groupLength.writeUInt32LE(body.length);
  return Buffer.concat([
    Buffer.alloc(128),
    Buffer.from('DICM', 'latin1'),
    element(0x0000, 'UL', groupLength),
    body,
  ]);
}

export class Part10Error extends Error {
  readonly code = 'NOT_PART10';
}

/**
 * Offset of the data set in a Part 10 file: after the meta group, located by its group length
 * (0002,0000) when present, else by walking the group 0002 elements.
 */
export function datasetOffset(file: Buffer): number {
  if (file.length < 132 || file.toString('latin1', 128, 132) !== 'DICM') {
    throw new Part10Error('not a DICOM Part 10 file (no DICM prefix at offset 128)');
  }
  let pos = 132;
  while (pos + 8 <= file.length && file.readUInt16LE(pos) === 0x0002) {
    const el = file.readUInt16LE(pos + 2);
    const vr = file.toString('latin1', pos + 4, pos + 6);
    const longForm = ['OB', 'OW', 'OF', 'SQ', 'UT', 'UN', 'UC', 'UR', 'OD', 'OL', 'OV'].includes(vr);
    const len = longForm ? file.readUInt32LE(pos + 8) : file.readUInt16LE(pos + 6);
    const valueStart = pos + (longForm ? 12 : 8);
    if (el === 0x0000 && len === 4) return valueStart + 4 + file.readUInt32LE(valueStart);
    pos = valueStart + len;
  }
  if (pos > file.length) throw new Part10Error('file meta information is truncated');
  return pos;
}
