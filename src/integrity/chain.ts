// Checking one ledger file against the chain: shared by verifyLedger (all files) and LedgerWriter.open
// (the last file, before appending to it).
import { type KeyObject, verify as verifySignature } from 'node:crypto';
import { readdir, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import {
  type CheckpointRecord,
  GENESIS_PREV,
  type LedgerRecord,
  MAX_LINE_BYTES,
  checkpointMessage,
  ledgerFileIndex,
  parseLine,
} from './format.js';
import { type RawLine, readLines } from './lines.js';

export interface LedgerIssue {
  file: string;
  line: number;
  seq?: number;
  message: string;
}

/** What the next record must continue from. null = unknown (after an unreadable line, or one file alone). */
export interface ChainState {
  prev: string | null;
  prevLine: number | null;
  prevFile: string | null;
  seq: number | null;
  /** Name of the file before this one; null for the first file; undefined = unknown (one file alone). */
  previousFile: string | null | undefined;
}

export const START_STATE: ChainState = {
  prev: GENESIS_PREV,
  prevLine: null,
  prevFile: null,
  seq: 1,
  previousFile: null,
};

export interface SignatureKey {
  key: KeyObject;
  keyId: string;
}

/** Why a checkpoint is not validly signed by `key`, or null when it is. */
export function checkpointSignatureProblem(r: CheckpointRecord, key: SignatureKey): string | null {
  if (r.signature === null || r.keyId === null) return 'checkpoint is not signed, but a public key was given';
  if (r.keyId !== key.keyId) {
    return `checkpoint signed by key ${r.keyId}, not by the given public key ${key.keyId}`;
  }
  const valid = verifySignature(
    null,
    checkpointMessage(r.head, r.count, r.time),
    key.key,
    Buffer.from(r.signature, 'base64'),
  );
  return valid ? null : 'checkpoint signature does not verify with the given public key';
}

export interface FileScan {
  name: string;
  errors: LedgerIssue[];
  /** The last line, when it is torn (only possible when scanned with isLast). */
  torn: { line: number; offset: number; bytes: number } | null;
  /** Whole lines (records or not), without a torn tail. */
  lines: number;
  /** Offset after the last whole line: where the next record goes once a torn tail is cut. */
  goodSize: number;
  first: LedgerRecord | null;
  last: LedgerRecord | null;
  lastLine: number;
  instances: number;
  checkpoints: number;
  signaturesVerified: number;
  unsignedCheckpoints: number;
  /** seq of the last checkpoint in the file, if any. */
  lastCheckpointSeq: number | null;
  end: ChainState;
}

export interface ScanOptions {
  /** The last file of the ledger: a torn last line is allowed, and it need not end with a checkpoint. */
  isLast: boolean;
  key: SignatureKey | null;
  onRecord?: (record: LedgerRecord, line: number) => void;
}

/** Ledger files of a directory in chain order (by index). */
export async function listLedgerFiles(dir: string): Promise<string[]> {
  const names = (await readdir(dir)).filter((n) => ledgerFileIndex(n) !== null);
  return names.sort((a, b) => ledgerFileIndex(a)! - ledgerFileIndex(b)! || (a < b ? -1 : 1));
}

/** A directory -> its ledger files; a file -> just it. */
export async function resolveLedgerPath(
  path: string,
): Promise<{ dir: string; files: string[]; single: boolean }> {
  const s = await stat(path);
  if (s.isDirectory()) return { dir: path, files: await listLedgerFiles(path), single: false };
  return { dir: dirname(path), files: [basename(path)], single: true };
}

export async function scanFile(
  dir: string,
  name: string,
  state: ChainState,
  opts: ScanOptions,
): Promise<FileScan> {
  const scan: FileScan = {
    name,
    errors: [],
    torn: null,
    lines: 0,
    goodSize: 0,
    first: null,
    last: null,
    lastLine: 0,
    instances: 0,
    checkpoints: 0,
    signaturesVerified: 0,
    unsignedCheckpoints: 0,
    lastCheckpointSeq: null,
    end: { ...state },
  };
  const s = scan.end;
  const issue = (line: number, message: string, seq?: number): void => {
    scan.errors.push(seq === undefined ? { file: name, line, message } : { file: name, line, seq, message });
  };

  const handle = (raw: RawLine, isLastLine: boolean): void => {
    if (raw.overlong) {
      if (isLastLine && opts.isLast && !raw.terminated) {
        scan.torn = { line: raw.line, offset: raw.offset, bytes: raw.length };
        return;
      }
      issue(raw.line, `line is longer than ${MAX_LINE_BYTES} bytes (${raw.length})`);
      unknown(raw);
      return;
    }
    const parsed = parseLine(raw.bytes);
    if (isLastLine && opts.isLast && (!raw.terminated || parsed.kind === 'not-canonical')) {
      scan.torn = { line: raw.line, offset: raw.offset, bytes: raw.terminated ? raw.length + 1 : raw.length };
      return;
    }
    if (!raw.terminated) {
      issue(raw.line, 'torn line (no line feed at the end) in a file that is not the last one');
    }
    if (parsed.kind === 'not-canonical') {
      issue(raw.line, `${parsed.message} (record edited or damaged)`);
      unknown(raw);
      return;
    }
    if (parsed.kind === 'invalid') {
      issue(raw.line, parsed.message, parsed.claimed.seq ?? undefined);
      // Go on from the hash it claims; count it at the position it holds (its seq may be the edit).
      record(raw, parsed.claimed.hash, s.seq ?? parsed.claimed.seq);
      return;
    }
    const r = parsed.record;
    checkLinks(raw.line, r.prev, r.seq);
    checkContent(raw.line, r);
    opts.onRecord?.(r, raw.line);
    if (scan.first === null && raw.line === 1) scan.first = r;
    scan.last = r;
    record(raw, r.hash, r.seq);
  };

  const record = (raw: RawLine, hash: string | null, seq: number | null): void => {
    scan.lines = raw.line;
    scan.lastLine = raw.line;
    scan.goodSize = raw.offset + raw.length + 1;
    s.prev = hash;
    s.prevLine = raw.line;
    s.prevFile = name;
    s.seq = seq === null ? null : seq + 1;
  };
  const unknown = (raw: RawLine): void => record(raw, null, null);

  const checkLinks = (line: number, prev: string, seq: number): void => {
    if (s.prev !== null && prev !== s.prev) {
      const where =
        s.prevFile === null
          ? 'the genesis value (64 zeros) of the first record'
          : s.prevFile === name
            ? `the hash of line ${s.prevLine}`
            : `the hash of the last record of ${s.prevFile}${s.prevLine === null ? '' : ` (line ${s.prevLine})`}`;
      issue(line, `prev does not match ${where}: a record before it was removed, inserted or reordered`, seq);
    }
    if (s.seq !== null && seq !== s.seq) {
      issue(line, `seq ${seq} where ${s.seq} was expected: records missing, inserted or reordered`, seq);
    }
  };

  const checkContent = (line: number, r: LedgerRecord): void => {
    if (r.type === 'file-start') {
      if (line !== 1) issue(line, 'a file-start record in the middle of a file', r.seq);
      if (r.file !== name) issue(line, `file-start names the file ${r.file}, but it is ${name}`, r.seq);
      if (line === 1 && s.previousFile !== undefined && r.previousFile !== s.previousFile) {
        issue(
          line,
          s.previousFile === null
            ? `file-start says the previous file is ${r.previousFile}, but this is the first file (file missing?)`
            : `file-start says the previous file is ${String(r.previousFile)}, but the preceding file is ${s.previousFile} (file missing or renamed?)`,
          r.seq,
        );
      }
    } else if (line === 1) {
      issue(line, `the first record of a file must be a file-start, not ${r.type}`, r.seq);
    }
    if (r.type === 'instance') scan.instances += 1;
    if (r.type === 'checkpoint') {
      scan.checkpoints += 1;
      scan.lastCheckpointSeq = r.seq;
      if (r.head !== r.prev) issue(line, 'checkpoint head is not the hash of the record before it', r.seq);
      if (r.count !== r.seq - 1)
        issue(line, `checkpoint count ${r.count} is not seq - 1 (${r.seq - 1})`, r.seq);
      if (r.signature === null) scan.unsignedCheckpoints += 1;
      if (opts.key) {
        const problem = checkpointSignatureProblem(r, opts.key);
        if (problem !== null) issue(line, problem, r.seq);
        else scan.signaturesVerified += 1;
      }
    }
  };

  // The first line of a file is checked with the file-start rule: when one file is checked alone and it
  // is the first of its ledger (previousFile null), its chain starts at the genesis values.
  let pending: RawLine | null = null;
  for await (const raw of readLines(join(dir, name))) {
    if (pending) handle(pending, false);
    else if (raw.line === 1) primeSingle(raw, s);
    pending = raw;
  }
  if (pending) handle(pending, true);
  else if (opts.isLast) scan.torn = { line: 1, offset: 0, bytes: 0 };
  else issue(1, 'file is empty');

  if (!opts.isLast && scan.last !== null && scan.last.type !== 'checkpoint') {
    issue(
      scan.lastLine,
      'file does not end with a checkpoint although a later file follows (records cut from its end?)',
      scan.last.seq,
    );
  }
  return scan;
}

/** One file checked alone: if it is the ledger's first file, start from the genesis values. */
function primeSingle(raw: RawLine, s: ChainState): void {
  if (s.previousFile !== undefined || raw.overlong) return;
  const parsed = parseLine(raw.bytes);
  if (
    parsed.kind === 'record' &&
    parsed.record.type === 'file-start' &&
    parsed.record.previousFile === null
  ) {
    s.prev = GENESIS_PREV;
    s.seq = 1;
    s.previousFile = null;
  }
}
