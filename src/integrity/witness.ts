// Checkpoints witnessed off the box. The hash chain and signed checkpoints show any change to a ledger to
// a verifier holding the public key — unless the change is a rewrite by someone who also holds the
// signing key (root on the proxy), or a cut of the tail. Both show against copies of the checkpoints kept
// elsewhere: every checkpoint line the writer writes is also appended to a witness file on other storage
// and/or sent over the audit syslog-TLS connection (MSGID LEDGER_CHECKPOINT), and `ledger verify
// --checkpoints FILE` checks the local ledger against what was collected there.
import { open } from 'node:fs/promises';
import { type CheckpointRecord, parseLine } from './format.js';
import { type SignatureKey, checkpointSignatureProblem } from './chain.js';
import { readRecords } from './find.js';
import { readLines } from './lines.js';

/** RFC 5424 MSGID of a checkpoint sent to the audit repository (printable US-ASCII, at most 32). */
export const CHECKPOINT_MSGID = 'LEDGER_CHECKPOINT';

/**
 * Appends checkpoint lines to a file, in order, each synced before the next (a checkpoint is written
 * every few minutes: one open, write, sync and close each keeps no descriptor on remote storage).
 */
export class WitnessFile {
  private chain: Promise<void> = Promise.resolve();

  constructor(
    readonly path: string,
    private readonly onError: (err: Error) => void,
  ) {}

  append(line: string): void {
    this.chain = this.chain.then(() => this.write(line)).catch((err: unknown) => this.onError(err as Error));
  }

  /** Resolves once every line appended so far has been written (or failed). */
  flush(): Promise<void> {
    return this.chain;
  }

  private async write(line: string): Promise<void> {
    const fh = await open(this.path, 'a', 0o600);
    try {
      await fh.write(`${line}\n`);
      await fh.datasync();
    } finally {
      await fh.close();
    }
  }
}

export interface WitnessIssue {
  /** Where: `witness-file:line`, or the ledger file and line. */
  where: string;
  message: string;
}

export interface WitnessReport {
  ok: boolean;
  /** Checkpoint records read from the witness file. */
  witnessed: number;
  /** Of those, found identical in the ledger. */
  matched: number;
  /** Lines of the witness file that hold no checkpoint record (syslog noise, other messages). */
  otherLines: number;
  /** The newest checkpoint witnessed (highest seq), if any. */
  latest: { seq: number; time: string } | null;
  /** The ledger's last seq (null: no records). */
  ledgerHead: number | null;
  errors: WitnessIssue[];
}

/** The checkpoint record a witness line holds: the JSON object from `{"v":` to the end of the line. */
function checkpointIn(bytes: Buffer): CheckpointRecord | null {
  const at = bytes.indexOf('{"v":');
  if (at < 0) return null;
  let end = bytes.length;
  while (end > at && (bytes[end - 1] === 0x0d || bytes[end - 1] === 0x20)) end--;
  const parsed = parseLine(bytes.subarray(at, end));
  return parsed.kind === 'record' && parsed.record.type === 'checkpoint' ? parsed.record : null;
}

/**
 * Checks a ledger against checkpoints collected elsewhere (one per line, as the witness file holds them
 * or as a syslog collector stored them). Every witnessed checkpoint must be in the ledger, byte for
 * byte, at its seq: a ledger rewritten and re-signed differs there, a ledger cut short or missing its
 * last file lacks it. With a key, every witnessed checkpoint must also be signed by it.
 */
export async function checkWitnessed(
  ledgerPath: string,
  witnessPath: string,
  opts: { key?: SignatureKey | null } = {},
): Promise<WitnessReport> {
  const report: WitnessReport = {
    ok: false,
    witnessed: 0,
    matched: 0,
    otherLines: 0,
    latest: null,
    ledgerHead: null,
    errors: [],
  };
  const wanted = new Map<number, { record: CheckpointRecord; where: string }>();
  for await (const raw of readLines(witnessPath)) {
    const record = raw.overlong ? null : checkpointIn(Buffer.from(raw.bytes));
    const where = `${witnessPath}:${raw.line}`;
    if (record === null) {
      report.otherLines++;
      continue;
    }
    report.witnessed++;
    if (opts.key) {
      const problem = checkpointSignatureProblem(record, opts.key);
      if (problem !== null) report.errors.push({ where, message: `witnessed ${problem}` });
    }
    const seen = wanted.get(record.seq);
    if (seen !== undefined && seen.record.hash !== record.hash) {
      report.errors.push({
        where,
        message: `two different checkpoints with seq ${record.seq} were witnessed (also ${seen.where}): the ledger was rewritten between them`,
      });
    }
    wanted.set(record.seq, { record, where });
    if (report.latest === null || record.seq > report.latest.seq) {
      report.latest = { seq: record.seq, time: record.time };
    }
  }
  for await (const { file, line, record } of readRecords(ledgerPath)) {
    report.ledgerHead = record.seq;
    const w = wanted.get(record.seq);
    if (w === undefined) continue;
    wanted.delete(record.seq);
    if (record.hash === w.record.hash) {
      report.matched++;
      continue;
    }
    report.errors.push({
      where: `${file}:${line}`,
      message:
        `record seq ${record.seq} differs from the checkpoint witnessed at ${w.record.time} (${w.where}): ` +
        `the ledger has hash ${record.hash}, the witness ${w.record.hash} — the ledger was rewritten`,
    });
  }
  for (const { record, where } of [...wanted.values()].sort((a, b) => a.record.seq - b.record.seq)) {
    report.errors.push({
      where,
      message:
        report.ledgerHead === null || record.seq > report.ledgerHead
          ? `checkpoint seq ${record.seq} of ${record.time} was witnessed, but the ledger ends at seq ${report.ledgerHead ?? 0}: records were cut from its end or its last file deleted`
          : `checkpoint seq ${record.seq} of ${record.time} was witnessed, but the ledger has no valid record with that seq`,
    });
  }
  report.ok = report.errors.length === 0;
  return report;
}
