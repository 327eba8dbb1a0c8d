// Looking things up in a ledger: records for an instance or a Part 10 file, and exports for auditors.
// These read records that are well-formed and hash-correct; whether the chain is intact is verify's job.
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { Part10Error, datasetOffset } from '../dicom/part10.js';
import { resolveLedgerPath } from './chain.js';
import {
  type CommittedRecord,
  type InstanceRecord,
  type LedgerRecord,
  KEY_ORDER,
  parseLine,
} from './format.js';
import { readLines } from './lines.js';

export interface FoundRecord<R extends LedgerRecord = InstanceRecord> {
  /** Ledger file name. */
  file: string;
  /** 1-based line. */
  line: number;
  record: R;
}

/** Every well-formed record of a ledger (directory or file), in chain order. */
export async function* readRecords(path: string): AsyncGenerator<FoundRecord<LedgerRecord>> {
  const { dir, files } = await resolveLedgerPath(path);
  for (const file of files) {
    for await (const raw of readLines(join(dir, file))) {
      if (raw.overlong || !raw.terminated) continue;
      const parsed = parseLine(raw.bytes);
      if (parsed.kind === 'record') yield { file, line: raw.line, record: parsed.record };
    }
  }
}

/** What instance records are looked up by; every given criterion must match. */
export interface RecordQuery {
  sha256?: string;
  sopInstanceUid?: string;
  /** Study Instance UID (format version 2 records; version 1 records carry none and never match). */
  studyInstanceUid?: string;
  callingAeTitle?: string;
}

/** A predicate over instance records for a query (AE titles compared without their space padding). */
export function matcher(query: RecordQuery): (record: InstanceRecord) => boolean {
  const sha256 = query.sha256?.toLowerCase();
  const calling = query.callingAeTitle?.trim();
  return (record) =>
    (sha256 === undefined || record.sha256 === sha256) &&
    (query.sopInstanceUid === undefined || record.sopInstanceUid === query.sopInstanceUid) &&
    (query.studyInstanceUid === undefined || record.studyInstanceUid === query.studyInstanceUid) &&
    (calling === undefined || record.callingAeTitle.trim() === calling);
}

/** Instance records matching every given criterion (no criterion: all of them). */
export async function findRecords(
  path: string,
  query: RecordQuery,
): Promise<Array<FoundRecord<InstanceRecord>>> {
  const matches = matcher(query);
  const found: Array<FoundRecord<InstanceRecord>> = [];
  for await (const { file, line, record } of readRecords(path)) {
    if (record.type !== 'instance') continue;
    if (matches(record)) found.push({ file, line, record });
  }
  return found;
}

/**
 * SHA-256 and length of the data set of a DICOM Part 10 file (every byte after the File Meta
 * Information): the value an instance record's `sha256` holds for it. Streams the file.
 */
export async function hashPart10File(file: string): Promise<{ sha256: string; bytes: number }> {
  const fh = await open(file, 'r');
  let offset: number;
  let size: number;
  try {
    size = (await fh.stat()).size;
    // The meta group is small; read more only when it does not end inside what was read.
    for (let want = 64 * 1024; ; want *= 4) {
      const length = Math.min(size, want);
      const head = Buffer.alloc(length);
      const { bytesRead } = await fh.read(head, 0, length, 0);
      const found = datasetOffset(head.subarray(0, bytesRead));
      if (found + 8 <= bytesRead || bytesRead >= size) {
        offset = found;
        break;
      }
    }
  } finally {
    await fh.close();
  }
  if (offset > size) throw new Part10Error('file meta information is truncated');
  const hash = createHash('sha256');
  if (offset < size) {
    for await (const chunk of createReadStream(file, { start: offset, highWaterMark: 1024 * 1024 })) {
      hash.update(chunk as Buffer);
    }
  }
  return { sha256: hash.digest('hex'), bytes: size - offset };
}

/** Columns of the CSV export: every field of instance and committed records (chain fields last). */
export const EXPORT_COLUMNS: readonly string[] = [
  ...KEY_ORDER.instance.filter((k) => k !== 'prev' && k !== 'hash'),
  'transactionUid',
  'confirms',
  'prev',
  'hash',
];

function csvField(value: unknown): string {
  if (value === null || value === undefined) return '';
  const text = String(value);
  return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

async function write(out: NodeJS.WritableStream, text: string): Promise<void> {
  if (!out.write(text)) {
    await new Promise<void>((resolve, reject) => {
      const done = (err?: unknown): void => {
        out.off('drain', done);
        out.off('error', done);
        if (err) reject(err);
        else resolve();
      };
      out.on('drain', done);
      out.on('error', done);
    });
  }
}

/**
 * Write the instance and committed records with since <= time < until (either bound optional) as CSV
 * (RFC 4180: header row, CRLF, fields quoted when needed, null = empty) or as one JSON array of the
 * records exactly as stored. With a study or calling AE filter, instance records must match it and a
 * committed record is written when it confirms an instance written before it. Resolves with the number
 * of records written.
 */
export async function exportRecords(
  path: string,
  opts: {
    since?: Date;
    until?: Date;
    format: 'csv' | 'json';
    studyInstanceUid?: string;
    callingAeTitle?: string;
  },
  out: NodeJS.WritableStream,
): Promise<number> {
  const since = opts.since?.getTime();
  const until = opts.until?.getTime();
  const filtered = opts.studyInstanceUid !== undefined || opts.callingAeTitle !== undefined;
  const matches = matcher({
    ...(opts.studyInstanceUid !== undefined ? { studyInstanceUid: opts.studyInstanceUid } : {}),
    ...(opts.callingAeTitle !== undefined ? { callingAeTitle: opts.callingAeTitle } : {}),
  });
  /** SOP Instance UIDs of the instance records written (bounded: for the committed records). */
  const written = new Set<string>();
  let count = 0;
  if (opts.format === 'csv') await write(out, `${EXPORT_COLUMNS.join(',')}\r\n`);
  else await write(out, '[');
  for await (const { record } of readRecords(path)) {
    if (record.type !== 'instance' && record.type !== 'committed') continue;
    if (since !== undefined || until !== undefined) {
      const t = Date.parse(record.time);
      if (Number.isNaN(t) || (since !== undefined && t < since) || (until !== undefined && t >= until))
        continue;
    }
    if (filtered) {
      if (record.type === 'instance') {
        if (!matches(record)) continue;
        if (written.size < 1_000_000) written.add(record.sopInstanceUid);
      } else if (!written.has(record.sopInstanceUid)) continue;
    }
    const r: InstanceRecord | CommittedRecord = record;
    if (opts.format === 'csv') {
      const fields = r as unknown as Record<string, unknown>;
      await write(out, `${EXPORT_COLUMNS.map((c) => csvField(fields[c])).join(',')}\r\n`);
    } else {
      await write(out, `${count === 0 ? '\n' : ',\n'}${JSON.stringify(r)}`);
    }
    count += 1;
  }
  if (opts.format === 'json') await write(out, count === 0 ? ']\n' : '\n]\n');
  return count;
}
