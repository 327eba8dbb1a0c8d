/*
 * THE LEDGER FORMAT (version 2; version 1 is read as well). This comment is a public contract: an auditor must be able to check a
 * ledger with nothing but this text, a JSON parser and SHA-256 / Ed25519.
 *
 * Files
 *   A ledger is a directory of JSON Lines files named `ledger-000001.jsonl`, `ledger-000002.jsonl`, …
 *   (index of 6 or more decimal digits). The chain runs through the files in index order (which is name
 *   order up to ledger-999999). Other files in the directory (keys, `*.torn-*` copies) are not part of
 *   the chain. Every record is one line: UTF-8 JSON followed by one LF (0x0A). No line is longer than
 *   MAX_LINE_BYTES. The writer only appends whole lines, each with a single write() call: one line, or
 *   several consecutive lines at once (a batch of records sealed together); a line is never split across
 *   two write() calls.
 *
 * Canonical form
 *   A line is valid only if it is well-formed UTF-8 and JSON.stringify(JSON.parse(line)) === line, i.e.
 *   exactly what JavaScript's JSON.stringify produces: no whitespace, keys in the order listed below,
 *   numbers in shortest form. Any byte edit, even of whitespace, therefore shows.
 *
 * Hash chain
 *   Every record is an object whose keys appear in the fixed order listed below, the last two always
 *   being "prev" then "hash".
 *     hash = lower-case hex SHA-256 of the UTF-8 bytes of JSON.stringify(the record without "hash")
 *            (equivalently: of the line with its trailing `,"hash":"…"` removed).
 *     prev = the hash of the record before it in the chain (across files); 64 "0" characters for the
 *            very first record of the ledger.
 *     seq  = 1 for the first record of the ledger, then +1 for every record, across files.
 *     v    = 2 (this format version) for every record written now; 1 for records written before it. A
 *            ledger may hold both: a chain started by an earlier release continues with version 2
 *            records. Version 1 differs only in the instance record, which had no studyInstanceUid.
 *     time = ISO 8601 (UTC, as Date.prototype.toISOString) when the ledger wrote the record; for
 *            `instance` records, the time the relay saw the response (InstanceEvidence.time).
 *
 * Record types and their exact key order
 *   file-start  v, type, seq, time, file, previousFile, prev, hash
 *               The first record of every file. `file` is the file's own name; `previousFile` the name
 *               of the file before it (null for the first file); its prev is the last hash of that
 *               previous file, so a missing, renamed or truncated file shows at the next file's line 1.
 *   instance    v, type, seq, time, association, direction, callingAeTitle, calledAeTitle,
 *               upstreamAeTitle, peerAddress, archiveAddress, archiveCertSha256, clientCertSha256,
 *               sopClassUid, sopInstanceUid, studyInstanceUid, transferSyntaxUid, bytes, sha256,
 *               status, outcome, moveOriginatorAeTitle, moveOriginatorMessageId, prev, hash
 *               (version 1: the same without studyInstanceUid)
 *               One transferred instance (see InstanceEvidence in types.ts). `direction` is one of
 *               modality-to-archive, archive-to-modality (C-GET sub-operations), archive-to-destination
 *               (C-MOVE sub-operations relayed by the return listener; peerAddress is then the
 *               destination's receiver and archiveAddress the archive that called in),
 *               destination-to-archive. `sha256` is over the data
 *               set bytes exactly as transferred (for a Part 10 file: every byte after the File Meta
 *               Information); `status` is the C-STORE-RSP status or null when none came;
 *               `studyInstanceUid` the Study Instance UID (0020,000D) read from the data set's first
 *               bytes, or null when they did not hold it.
 *   committed   v, type, seq, time, sopClassUid, sopInstanceUid, transactionUid, confirms, prev, hash
 *               A Storage Commitment confirmation; `confirms` is the seq of the instance record it
 *               confirms, or null when none was found.
 *   checkpoint  v, type, seq, time, head, count, keyId, signature, prev, hash
 *               head = the hash of the record before it (= its prev); count = seq - 1 (the number of
 *               records before it). keyId = lower-case hex SHA-256 of the Ed25519 public key in DER
 *               SubjectPublicKeyInfo form; signature = base64 Ed25519 signature of the UTF-8 text
 *                 `dimse-tls-proxy ledger checkpoint v1\n${head}\n${count}\n${time}`
 *               (no trailing newline). Both null when the writer had no signing key. The writer puts a
 *               checkpoint at most every checkpointIntervalMs while records are written, as the last
 *               record of every file it rotates away from, and at shutdown.
 *   recovered   v, type, seq, time, file, tornBytes, savedAs, prev, hash
 *               Written at start-up after a torn last line (a crash during a write) was cut from `file`:
 *               `tornBytes` bytes were removed and saved, unchanged, to `savedAs` (a file name in the
 *               ledger directory).
 *
 * Torn tail
 *   The last line of the last file may be incomplete after a crash: it has no trailing LF, or it is not
 *   canonical JSON. Verification reports it without failing; the writer copies it to
 *   `<file>.torn-<UTC time>`, cuts it off and appends a `recovered` record. An invalid line anywhere
 *   else breaks the ledger. A crash during a write() that carried several lines tears the tail of that
 *   batch: the lines it got out whole are ordinary records that chain and stay, the line it was cut in
 *   is the torn last line, and the lines after that are simply absent (as if not yet written).
 *
 * What it proves: any change to, insertion into, deletion from or reordering of the chain shows as a
 * broken hash or link, naming the file and line. Someone able to rewrite the whole chain can only hide
 * it from a verifier holding the public key if they also hold the private signing key; records after the
 * last signed checkpoint, and records cut from the very end, are protected only by copies kept elsewhere
 * (e.g. the head hash noted from `ledger verify`).
 */
import * as crypto from 'node:crypto';
import type { TransferDirection } from './types.js';

/** Values of an instance record's `direction` (forward listener, then return listener). */
export const TRANSFER_DIRECTIONS: ReadonlySet<string> = new Set<TransferDirection>([
  'modality-to-archive',
  'archive-to-modality',
  'archive-to-destination',
  'destination-to-archive',
]);

export const FORMAT_VERSION = 2;
/** Format versions a ledger may hold (verify and find read every one). */
export const READABLE_VERSIONS: ReadonlySet<number> = new Set([1, 2]);
export const GENESIS_PREV = '0'.repeat(64);
export const MAX_LINE_BYTES = 1024 * 1024;
export const CHECKPOINT_DOMAIN = 'dimse-tls-proxy ledger checkpoint v1';

export const FILE_NAME_PATTERN = /^ledger-(\d{6,})\.jsonl$/;

export function ledgerFileName(index: number): string {
  return `ledger-${String(index).padStart(6, '0')}.jsonl`;
}

/** The index of a ledger file name, or null when the name is not one. */
export function ledgerFileIndex(name: string): number | null {
  const m = FILE_NAME_PATTERN.exec(name);
  return m?.[1] === undefined ? null : Number(m[1]);
}

export type RecordType = 'file-start' | 'instance' | 'committed' | 'checkpoint' | 'recovered';

export const KEY_ORDER = {
  'file-start': ['v', 'type', 'seq', 'time', 'file', 'previousFile', 'prev', 'hash'],
  instance: [
    'v',
    'type',
    'seq',
    'time',
    'association',
    'direction',
    'callingAeTitle',
    'calledAeTitle',
    'upstreamAeTitle',
    'peerAddress',
    'archiveAddress',
    'archiveCertSha256',
    'clientCertSha256',
    'sopClassUid',
    'sopInstanceUid',
    'studyInstanceUid',
    'transferSyntaxUid',
    'bytes',
    'sha256',
    'status',
    'outcome',
    'moveOriginatorAeTitle',
    'moveOriginatorMessageId',
    'prev',
    'hash',
  ],
  committed: [
    'v',
    'type',
    'seq',
    'time',
    'sopClassUid',
    'sopInstanceUid',
    'transactionUid',
    'confirms',
    'prev',
    'hash',
  ],
  checkpoint: ['v', 'type', 'seq', 'time', 'head', 'count', 'keyId', 'signature', 'prev', 'hash'],
  recovered: ['v', 'type', 'seq', 'time', 'file', 'tornBytes', 'savedAs', 'prev', 'hash'],
} as const satisfies Record<RecordType, readonly string[]>;

/** The key order of version 1 records: the instance record had no studyInstanceUid. */
const KEY_ORDER_V1: Record<RecordType, readonly string[]> = {
  ...KEY_ORDER,
  instance: KEY_ORDER.instance.filter((k) => k !== 'studyInstanceUid'),
};

interface RecordHead<T extends RecordType> {
  v: 1 | 2;
  type: T;
  seq: number;
  time: string;
}
interface RecordTail {
  prev: string;
  hash: string;
}

export type FileStartRecord = RecordHead<'file-start'> & {
  file: string;
  previousFile: string | null;
} & RecordTail;

export type InstanceRecord = RecordHead<'instance'> & {
  association: string;
  direction: TransferDirection;
  callingAeTitle: string;
  calledAeTitle: string;
  upstreamAeTitle: string | null;
  peerAddress: string;
  archiveAddress: string;
  archiveCertSha256: string | null;
  clientCertSha256: string | null;
  sopClassUid: string;
  sopInstanceUid: string;
  /** Absent from version 1 records. */
  studyInstanceUid?: string | null;
  transferSyntaxUid: string;
  bytes: number;
  sha256: string;
  status: number | null;
  outcome: string;
  moveOriginatorAeTitle: string | null;
  moveOriginatorMessageId: number | null;
} & RecordTail;

export type CommittedRecord = RecordHead<'committed'> & {
  sopClassUid: string;
  sopInstanceUid: string;
  transactionUid: string;
  confirms: number | null;
} & RecordTail;

export type CheckpointRecord = RecordHead<'checkpoint'> & {
  head: string;
  count: number;
  keyId: string | null;
  signature: string | null;
} & RecordTail;

export type RecoveredRecord = RecordHead<'recovered'> & {
  file: string;
  tornBytes: number;
  savedAs: string;
} & RecordTail;

export type LedgerRecord =
  FileStartRecord | InstanceRecord | CommittedRecord | CheckpointRecord | RecoveredRecord;

/** A record before it is sealed (no hash yet). */
export type UnsealedRecord = LedgerRecord extends infer R
  ? R extends LedgerRecord
    ? Omit<R, 'hash'>
    : never
  : never;

const HEX64 = /^[0-9a-f]{64}$/;

type Check = (value: unknown) => boolean;
const isString: Check = (x) => typeof x === 'string';
const isStringOrNull: Check = (x) => x === null || typeof x === 'string';
const isCount: Check = (x) => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
const isIntOrNull: Check = (x) => x === null || (typeof x === 'number' && Number.isSafeInteger(x));
const isHex64: Check = (x) => typeof x === 'string' && HEX64.test(x);

/** What each field must hold (the same name means the same thing in every record type). */
const FIELD_CHECKS: Record<string, [Check, string]> = {
  v: [(x) => typeof x === 'number' && READABLE_VERSIONS.has(x), [...READABLE_VERSIONS].join(' or ')],
  type: [isString, 'a string'],
  seq: [(x) => isCount(x) && x !== 0, 'a positive integer'],
  time: [isString, 'a string'],
  file: [isString, 'a string'],
  previousFile: [isStringOrNull, 'a string or null'],
  association: [isString, 'a string'],
  direction: [(x) => typeof x === 'string' && TRANSFER_DIRECTIONS.has(x), 'a transfer direction'],
  callingAeTitle: [isString, 'a string'],
  calledAeTitle: [isString, 'a string'],
  upstreamAeTitle: [isStringOrNull, 'a string or null'],
  peerAddress: [isString, 'a string'],
  archiveAddress: [isString, 'a string'],
  archiveCertSha256: [isStringOrNull, 'a string or null'],
  clientCertSha256: [isStringOrNull, 'a string or null'],
  sopClassUid: [isString, 'a string'],
  sopInstanceUid: [isString, 'a string'],
  studyInstanceUid: [isStringOrNull, 'a string or null'],
  transferSyntaxUid: [isString, 'a string'],
  bytes: [isCount, 'a non-negative integer'],
  sha256: [isString, 'a string'],
  status: [isIntOrNull, 'an integer or null'],
  outcome: [isString, 'a string'],
  moveOriginatorAeTitle: [isStringOrNull, 'a string or null'],
  moveOriginatorMessageId: [isIntOrNull, 'an integer or null'],
  transactionUid: [isString, 'a string'],
  confirms: [(x) => x === null || (isCount(x) && x !== 0), 'a positive integer or null'],
  head: [isHex64, '64 lower-case hex digits'],
  count: [isCount, 'a non-negative integer'],
  keyId: [(x) => x === null || isHex64(x), '64 lower-case hex digits or null'],
  signature: [isStringOrNull, 'a string or null'],
  tornBytes: [isCount, 'a non-negative integer'],
  savedAs: [isString, 'a string'],
  prev: [isHex64, '64 lower-case hex digits'],
  hash: [isHex64, '64 lower-case hex digits'],
};

// crypto.hash (Node >= 20.12) saves a Hash object per call; reached through the namespace so that older
// Node 20 releases, which lack it, still load this module.
const oneShotHash = (crypto as { hash?: typeof crypto.hash }).hash;

/** Lower-case hex SHA-256; a string is hashed as its UTF-8 bytes. */
export function sha256Hex(data: string | Buffer): string {
  return oneShotHash
    ? oneShotHash('sha256', data, 'hex')
    : crypto.createHash('sha256').update(data).digest('hex');
}

function isRecordType(x: unknown): x is RecordType {
  return typeof x === 'string' && Object.prototype.hasOwnProperty.call(KEY_ORDER, x);
}

/** KEY_ORDER without the final "hash": the keys of a record before it is sealed. */
const UNSEALED_KEY_ORDER: Record<RecordType, readonly string[]> = {
  'file-start': KEY_ORDER['file-start'].slice(0, -1),
  instance: KEY_ORDER.instance.slice(0, -1),
  committed: KEY_ORDER.committed.slice(0, -1),
  checkpoint: KEY_ORDER.checkpoint.slice(0, -1),
  recovered: KEY_ORDER.recovered.slice(0, -1),
};

/** The key order of a record of format version v (null for a version this reader does not know). */
function keyOrderOf(v: unknown, type: RecordType, unsealed: boolean): readonly string[] | null {
  const order = v === 1 ? KEY_ORDER_V1[type] : v === FORMAT_VERSION ? KEY_ORDER[type] : null;
  return order === null ? null : unsealed ? order.slice(0, -1) : order;
}

/**
 * Field problems of a parsed object as a record (key order, field types), or null when it is fine.
 * With `unsealed`, the object is a record before sealing: every key but the final "hash".
 */
export function structureProblem(obj: Record<string, unknown>, unsealed = false): string | null {
  const type = obj.type;
  if (!isRecordType(type)) return `unknown record type ${JSON.stringify(type)}`;
  const expected = keyOrderOf(obj.v, type, unsealed);
  if (expected === null) {
    return `v must be ${[...READABLE_VERSIONS].join(' or ')}, not ${JSON.stringify(obj.v)}`;
  }
  const keys = Object.keys(obj);
  if (keys.length !== expected.length || keys.some((k, i) => k !== expected[i])) {
    return `keys of a ${type} record must be ${expected.join(',')}, not ${keys.join(',')}`;
  }
  for (const key of keys) {
    const check = FIELD_CHECKS[key];
    if (check && !check[0](obj[key])) return `${key} must be ${check[1]}, not ${JSON.stringify(obj[key])}`;
  }
  if (type === 'checkpoint' && (obj.keyId === null) !== (obj.signature === null)) {
    return 'keyId and signature must both be set or both be null';
  }
  return null;
}

/**
 * Build the record with its keys in the fixed order and add its hash. Returns the record and its line
 * (including the trailing LF).
 */
export function sealRecord(body: UnsealedRecord): { record: LedgerRecord; line: Buffer } {
  const source = body as unknown as Record<string, unknown>;
  const ordered: Record<string, unknown> = {};
  for (const key of keyOrderOf(body.v, body.type, true) ?? UNSEALED_KEY_ORDER[body.type]) {
    ordered[key] = source[key] === undefined ? null : source[key];
  }
  const { hash, line } = sealOrdered(ordered as unknown as UnsealedRecord);
  ordered.hash = hash;
  return { record: ordered as unknown as LedgerRecord, line: Buffer.from(line, 'utf8') };
}

/**
 * Seal a record whose keys are already exactly those of its type in the fixed order (without "hash"),
 * without copying it: its hash, and its line as text (including the trailing LF). The body is left
 * unchanged, so it can be sealed again after its seq and prev changed. Throws a TypeError for any other
 * key order or an invalid field (an undefined value too: it is not turned into null here).
 */
export function sealOrdered(body: UnsealedRecord): { hash: string; line: string } {
  const problem = structureProblem(body as unknown as Record<string, unknown>, true);
  if (problem !== null) throw new TypeError(`invalid ${String(body.type)} record: ${problem}`);
  const text = JSON.stringify(body);
  const hash = sha256Hex(text);
  // = JSON.stringify of the record with "hash" added last (a hex string needs no escaping).
  return { hash, line: `${text.slice(0, -1)},"hash":"${hash}"}\n` };
}

export type ParsedLine =
  /** A well-formed record whose hash matches. */
  | { kind: 'record'; record: LedgerRecord }
  /** Not canonical JSON (incl. bad UTF-8): what a torn write looks like. */
  | { kind: 'not-canonical'; message: string }
  /**
   * Canonical JSON, but not a valid record (structure or hash). `claimed` carries the hash and seq the
   * line claims, when they are readable, so a checker can go on from there.
   */
  | { kind: 'invalid'; message: string; claimed: { hash: string | null; seq: number | null } };

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** Parse one line (without its LF) and check its form and hash; the chain is checked elsewhere. */
export function parseLine(bytes: Uint8Array): ParsedLine {
  let text: string;
  try {
    text = utf8.decode(bytes);
  } catch {
    return { kind: 'not-canonical', message: 'not valid UTF-8' };
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return { kind: 'not-canonical', message: 'not valid JSON' };
  }
  if (JSON.stringify(value) !== text) {
    return { kind: 'not-canonical', message: 'not in canonical form (JSON.stringify of it differs)' };
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return { kind: 'invalid', message: 'not a JSON object', claimed: { hash: null, seq: null } };
  }
  const obj = value as Record<string, unknown>;
  const claimed = {
    hash: isHex64(obj.hash) ? (obj.hash as string) : null,
    seq: isCount(obj.seq) && obj.seq !== 0 ? (obj.seq as number) : null,
  };
  const problem = structureProblem(obj);
  if (problem !== null) return { kind: 'invalid', message: problem, claimed };
  const { hash, ...rest } = obj;
  const actual = sha256Hex(JSON.stringify(rest));
  if (actual !== hash) {
    return {
      kind: 'invalid',
      message: `hash mismatch: the record hashes to ${actual}, its hash field says ${String(hash)} (record edited)`,
      claimed,
    };
  }
  return { kind: 'record', record: obj as unknown as LedgerRecord };
}

/** The exact text a checkpoint signature covers. */
export function checkpointMessage(head: string, count: number, time: string): Buffer {
  return Buffer.from(`${CHECKPOINT_DOMAIN}\n${head}\n${count}\n${time}`, 'utf8');
}

/** `2025-01-02T03:04:05.678Z` -> `20250102T030405678Z` (for file names). */
export function compactTime(date: Date): string {
  return date.toISOString().replace(/[-:.]/g, '');
}

/** The UTC day (YYYY-MM-DD) of an ISO time, or null when it does not parse. */
export function utcDay(time: string | Date): string | null {
  const ms = typeof time === 'string' ? Date.parse(time) : time.getTime();
  return Number.isNaN(ms) ? null : new Date(ms).toISOString().slice(0, 10);
}
