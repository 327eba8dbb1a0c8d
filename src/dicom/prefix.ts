// What the audit trail and the ledger need to know of a C-STORE data set, read from a bounded prefix of it
// while it streams through: Patient ID, Patient's Name, Issuer of Patient ID, Study Instance UID,
// Accession Number and Modality (PS3.3 C.7.1.1, C.7.2.1, C.7.3.1). The data set itself is never changed:
// the reader sees the bytes after they were relayed, copies at most a bounded prefix, and answers
// "unknown" (null) for anything it cannot read — a hostile or malformed data set costs it at most
// PREFIX_BUDGET bytes of copying and a few bounded walks, never an error.
//
// The elements of a data set are in ascending tag order (PS3.5 7.1), so the walk of the top level stops at
// the first element past Study Instance UID (0020,000D); sequences of defined or undefined length before
// it (Referenced Study Sequence, private sequences, …) are walked over, never into their values. Deflated
// Explicit VR Little Endian (PS3.5 A.5): only a bounded prefix of the deflate stream is inflated.
import { TextDecoder } from 'node:util';
import { constants as zlib, inflateRawSync } from 'node:zlib';
import {
  DataSetParseError,
  DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
  modeOf,
  trimUid,
  Walker,
  type Header,
} from './dataset.js';

/** The identifying elements read from a data set; null where the prefix did not hold the element. */
export interface DataSetSummary {
  /** Patient ID (0010,0020). */
  patientId: string | null;
  /** Patient's Name (0010,0010), decoded in the data set's Specific Character Set (0008,0005). */
  patientName: string | null;
  /** Issuer of Patient ID (0010,0021). */
  issuerOfPatientId: string | null;
  /** Study Instance UID (0020,000D). */
  studyInstanceUid: string | null;
  /** Accession Number (0008,0050). */
  accessionNumber: string | null;
  /** Modality (0008,0060). */
  modality: string | null;
}

/** Most bytes of a data set (inflated bytes, for the deflated syntax) the reader copies and walks. */
export const PREFIX_BUDGET = 64 * 1024;
/** Most characters kept of one value (LO and PN are at most 64 characters per PS3.5 6.2). */
const MAX_VALUE_CHARS = 256;

const TAG_SPECIFIC_CHARACTER_SET = 0x00080005;
const TAG_ACCESSION_NUMBER = 0x00080050;
const TAG_MODALITY = 0x00080060;
const TAG_PATIENT_NAME = 0x00100010;
const TAG_PATIENT_ID = 0x00100020;
const TAG_ISSUER_OF_PATIENT_ID = 0x00100021;
const TAG_STUDY_INSTANCE_UID = 0x0020000d;

export const UNKNOWN_SUMMARY: Readonly<DataSetSummary> = Object.freeze({
  patientId: null,
  patientName: null,
  issuerOfPatientId: null,
  studyInstanceUid: null,
  accessionNumber: null,
  modality: null,
});

/**
 * Specific Character Set defined terms (PS3.3 C.12.1.1.2) → WHATWG encoding labels. Code extension
 * (ISO 2022) terms map to the encoding of their first, single-byte set; escape sequences are then shown
 * as they decode. Anything not listed decodes its ASCII bytes and replaces the rest with U+FFFD.
 */
const CHARSETS: Readonly<Record<string, string>> = {
  '': 'latin1',
  ISO_IR_6: 'latin1',
  ISO_IR_100: 'latin1',
  ISO_IR_101: 'iso-8859-2',
  ISO_IR_109: 'iso-8859-3',
  ISO_IR_110: 'iso-8859-4',
  ISO_IR_144: 'iso-8859-5',
  ISO_IR_127: 'iso-8859-6',
  ISO_IR_126: 'iso-8859-7',
  ISO_IR_138: 'iso-8859-8',
  ISO_IR_148: 'iso-8859-9',
  ISO_IR_203: 'iso-8859-15',
  ISO_IR_166: 'windows-874',
  ISO_IR_13: 'shift_jis',
  ISO_IR_192: 'utf-8',
  GB18030: 'gb18030',
  GBK: 'gbk',
};

const decoders = new Map<string, TextDecoder | null>();

function decoderFor(charset: string): TextDecoder | null {
  // "ISO 2022 IR 100" and "ISO_IR 100" name the same set; only the first value matters for PN's first group.
  const first = (charset.split('\\')[0] ?? '')
    .trim()
    .replace(/^ISO 2022 IR /, 'ISO_IR ')
    .replace(/ /g, '_');
  const label = CHARSETS[first];
  if (label === undefined) return null;
  let d = decoders.get(label);
  if (d === undefined) {
    try {
      d = new TextDecoder(label);
    } catch {
      d = null; // a runtime without the full ICU data
    }
    decoders.set(label, d);
  }
  return d;
}

/** A text value without leading and trailing spaces and NUL padding (PS3.5 6.2), bounded in length. */
function text(value: Buffer, charset: string | null): string | null {
  let s: string;
  const ascii = !value.some((b) => b > 0x7f);
  if (ascii) s = value.toString('latin1');
  else {
    const d = decoderFor(charset ?? '');
    s = d ? d.decode(value) : value.toString('latin1').replace(/[\u0080-\u00ff]/g, '\uFFFD');
  }
  s = trimUid(s).replace(/^ +/, '');
  if (s.length > MAX_VALUE_CHARS) s = s.slice(0, MAX_VALUE_CHARS);
  return s === '' ? null : s;
}

export interface PrefixResult {
  summary: DataSetSummary;
  /** True when nothing more can be learnt from more bytes (stopped past the tags, or the data set ended). */
  done: boolean;
}

/**
 * Reads the summary from `bytes`, the first bytes of a data set (already inflated for the deflated
 * syntax). `complete` says the data set ends there. Never throws.
 */
export function readSummary(bytes: Buffer, transferSyntaxUid: string, complete: boolean): PrefixResult {
  const summary: DataSetSummary = { ...UNKNOWN_SUMMARY };
  let charset: string | null = null;
  const walker = new Walker(bytes, TAG_STUDY_INSTANCE_UID);
  const value = (h: Header, v: Buffer | null): Buffer | null =>
    v === null || (h.vr !== null && h.vr === 'SQ') ? null : v;
  try {
    walker.walk(modeOf(transferSyntaxUid), 0, bytes.length, bytes.length, 0, (h, raw) => {
      const v = value(h, raw);
      if (v === null) return undefined;
      switch (h.tag) {
        case TAG_SPECIFIC_CHARACTER_SET:
          charset = v.toString('latin1');
          break;
        case TAG_ACCESSION_NUMBER:
          summary.accessionNumber = text(v, charset);
          break;
        case TAG_MODALITY:
          summary.modality = text(v, null);
          break;
        case TAG_PATIENT_NAME:
          summary.patientName = text(v, charset);
          break;
        case TAG_PATIENT_ID:
          summary.patientId = text(v, charset);
          break;
        case TAG_ISSUER_OF_PATIENT_ID:
          summary.issuerOfPatientId = text(v, charset);
          break;
        case TAG_STUDY_INSTANCE_UID:
          summary.studyInstanceUid = text(v, null);
          break;
      }
      return undefined;
    });
    return { summary, done: walker.stopped || complete || summary.studyInstanceUid !== null };
  } catch (err) {
    if (!(err instanceof DataSetParseError)) throw err;
    // Cut short (more bytes may make it whole) or malformed: what was read so far stands.
    return { summary, done: complete };
  }
}

/**
 * Inflates a prefix of a raw deflate stream (PS3.5 A.5) to at most `budget` bytes. A stream that inflates
 * to more is inflated from a shorter prefix of its input (a deflate stream inflates at most ~1032 × its
 * size); returns null when nothing can be inflated.
 */
export function inflatePrefix(deflated: Buffer, budget: number): Buffer | null {
  let input = deflated;
  for (let attempt = 0; attempt < 24 && input.length > 0; attempt++) {
    try {
      return inflateRawSync(input, { finishFlush: zlib.Z_SYNC_FLUSH, maxOutputLength: budget });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ERR_BUFFER_TOO_LARGE') return null;
      input = input.subarray(0, input.length >>> 1);
    }
  }
  return null;
}

/**
 * Reads the summary of one data set as its bytes pass: update() with each relayed fragment, summary()
 * once it is complete (or the association ended). The first fragment is read in place; only when it does
 * not hold the elements are bytes copied, at most PREFIX_BUDGET of them, and walked again as the copy
 * doubles (so a data set sent in tiny fragments costs O(budget), not O(budget × fragments)).
 */
export class DataSetPrefixReader {
  private readonly deflated: boolean;
  private acc: Buffer | null = null;
  private accLength = 0;
  private nextRead = 0;
  private result: DataSetSummary | null = null;
  private partial: DataSetSummary = UNKNOWN_SUMMARY;

  constructor(
    private readonly transferSyntaxUid: string,
    private readonly budget = PREFIX_BUDGET,
  ) {
    this.deflated = trimUid(transferSyntaxUid) === DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN;
  }

  /** Nothing more is needed: later fragments are not looked at. */
  get done(): boolean {
    return this.result !== null;
  }

  update(buf: Buffer, start: number, end: number): void {
    if (this.result !== null || end <= start) return;
    if (this.accLength === 0 && !this.deflated) {
      const r = readSummary(
        buf.subarray(start, Math.min(end, start + this.budget)),
        this.transferSyntaxUid,
        false,
      );
      if (r.done) {
        this.result = r.summary;
        return;
      }
      this.partial = r.summary;
      this.nextRead = 2 * (end - start); // walked once already: again when the copy has doubled
    }
    const take = Math.min(end - start, this.budget - this.accLength);
    if (take > 0) {
      const need = this.accLength + take;
      if (this.acc === null || this.acc.length < need) {
        const grown = Buffer.allocUnsafe(Math.min(this.budget, Math.max(4096, need * 2)));
        if (this.acc !== null) this.acc.copy(grown, 0, 0, this.accLength);
        this.acc = grown;
      }
      buf.copy(this.acc, this.accLength, start, start + take);
      this.accLength = need;
    }
    const full = this.accLength >= this.budget;
    if (full || this.accLength >= this.nextRead) {
      this.nextRead = this.accLength * 2;
      this.read(false);
      if (full && this.result === null) this.settle();
    }
  }

  /** The summary: what the prefix held (every field null when nothing could be read). */
  summary(): DataSetSummary {
    if (this.result === null) {
      // The data set ended (or was cut short by the association's end): read what there is, once more.
      if (this.acc !== null) this.read(true);
      this.settle();
    }
    return this.result as DataSetSummary;
  }

  private read(complete: boolean): void {
    const acc = (this.acc as Buffer).subarray(0, this.accLength);
    const bytes = this.deflated ? inflatePrefix(acc, this.budget) : acc;
    if (bytes === null) return;
    // A deflated prefix ends where the inflated bytes end, which is the data set's end only if all came.
    const r = readSummary(bytes, this.transferSyntaxUid, complete && !this.deflated);
    this.partial = r.summary;
    if (r.done || complete) this.result = r.summary;
  }

  private settle(): void {
    this.result ??= this.partial;
    this.acc = null; // the copy is not needed any more
  }
}
