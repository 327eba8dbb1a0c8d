// Verify a ledger (a directory, or one of its files) against the format in format.ts, streaming.
import {
  type ChainState,
  type LedgerIssue,
  START_STATE,
  type SignatureKey,
  resolveLedgerPath,
  scanFile,
} from './chain.js';
import { keyIdOf, loadPublicKey } from './keys.js';

export type { LedgerIssue } from './chain.js';

export interface VerifyReport {
  /** True when the chain is intact (a torn tail alone does not make it false). */
  ok: boolean;
  files: number;
  /** Whole lines checked (every record position), without a torn tail. */
  records: number;
  instances: number;
  checkpoints: number;
  /** Checkpoint signatures checked and valid (0 without a public key). */
  signaturesVerified: number;
  unsignedCheckpoints: number;
  tornTail: { file: string; line: number; bytes: number } | null;
  /** In chain order: the first error is the first place the ledger is broken. */
  errors: LedgerIssue[];
  /** The last record (what the next record would chain to); null when there is none. */
  head: { seq: number; hash: string; file: string } | null;
  /** Records after the last checkpoint (protected by the chain only, not yet by a signature). */
  recordsAfterLastCheckpoint: number;
}

/**
 * Check a ledger: canonical form, hashes, links and seq across files, file-start continuity,
 * checkpoints, and with `publicKeyPem` every checkpoint's signature (each must be signed by that key).
 */
export async function verifyLedger(
  path: string,
  opts: { publicKeyPem?: string } = {},
): Promise<VerifyReport> {
  let key: SignatureKey | null = null;
  if (opts.publicKeyPem !== undefined) {
    const k = loadPublicKey(opts.publicKeyPem);
    key = { key: k, keyId: keyIdOf(k) };
  }
  const { dir, files, single } = await resolveLedgerPath(path);
  const report: VerifyReport = {
    ok: false,
    files: files.length,
    records: 0,
    instances: 0,
    checkpoints: 0,
    signaturesVerified: 0,
    unsignedCheckpoints: 0,
    tornTail: null,
    errors: [],
    head: null,
    recordsAfterLastCheckpoint: 0,
  };
  if (files.length === 0) {
    report.errors.push({ file: path, line: 0, message: 'no ledger files (ledger-NNNNNN.jsonl) found' });
    return report;
  }
  let state: ChainState = single
    ? { ...START_STATE, prev: null, seq: null, previousFile: undefined }
    : START_STATE;
  let lastCheckpointSeq: number | null = null;
  for (let i = 0; i < files.length; i++) {
    const name = files[i]!;
    const scan = await scanFile(dir, name, state, { isLast: i === files.length - 1, key });
    report.records += scan.lines;
    report.instances += scan.instances;
    report.checkpoints += scan.checkpoints;
    report.signaturesVerified += scan.signaturesVerified;
    report.unsignedCheckpoints += scan.unsignedCheckpoints;
    report.errors.push(...scan.errors);
    if (scan.torn) report.tornTail = { file: name, line: scan.torn.line, bytes: scan.torn.bytes };
    if (scan.last) report.head = { seq: scan.last.seq, hash: scan.last.hash, file: name };
    if (scan.lastCheckpointSeq !== null) lastCheckpointSeq = scan.lastCheckpointSeq;
    state = { ...scan.end, previousFile: name };
  }
  if (report.head) report.recordsAfterLastCheckpoint = report.head.seq - (lastCheckpointSeq ?? 0);
  report.ok = report.errors.length === 0;
  return report;
}
