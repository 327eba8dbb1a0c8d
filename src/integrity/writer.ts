// The ledger writer: appends records to the hash chain described in format.ts in call order, with fsync
// policy, rotation, periodic signed checkpoints and torn-tail recovery at start-up. Appends that arrive
// while the writer is busy (or in the same tick) are sealed together and written with one write() call
// and, with fsync 'always', one fdatasync: the per-record cost on the event loop is sealing (JSON +
// SHA-256), not I/O round trips. It also keeps a bounded index from SOP Instance UID to the seq of the
// latest successfully stored instance record, so a `committed` record can name the record it confirms.
import { type KeyObject, sign } from 'node:crypto';
import { type FileHandle, mkdir, open, readFile, unlink } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { type ChainState, START_STATE, listLedgerFiles, scanFile } from './chain.js';
import { LedgerError, describeFsError } from './errors.js';
import {
  GENESIS_PREV,
  type LedgerRecord,
  FORMAT_VERSION,
  MAX_LINE_BYTES,
  type RecordType,
  type UnsealedRecord,
  checkpointMessage,
  compactTime,
  ledgerFileIndex,
  ledgerFileName,
  parseLine,
  sealOrdered,
  utcDay,
} from './format.js';
import { keyIdOf, loadSigningKey } from './keys.js';
import type { InstanceEvidence, LedgerSink } from './types.js';
import { syncDir } from '../util/fs.js';
import { processAlive } from '../util/process.js';
import { monotonicClock, type Clock, type TimerHandle } from '../util/clock.js';
import type { LedgerConfig } from '../config/types.js';

export { LedgerError, type LedgerErrorCode } from './errors.js';

export interface LedgerOptions {
  dir: string;
  /** always: fdatasync after every record before append() resolves; batch: at most fsyncIntervalMs later. */
  fsync: 'always' | 'batch';
  fsyncIntervalMs: number;
  /** Start a new file when the current one would exceed this (a file always holds at least one record). */
  rotateMaxBytes: number;
  /** Start a new file when the UTC day changes. */
  rotateDaily: boolean;
  /** A checkpoint at most this often while records are written; also at rotation and at close(). */
  checkpointIntervalMs: number;
  /**
   * Called with every checkpoint line (without its LF) once it has been written, to be kept off the box
   * (integrity/witness.ts). Must not throw; it is not awaited.
   */
  onCheckpoint?: (line: string) => void;
  /** Ed25519 private key (PKCS#8 PEM); null = checkpoints unsigned. */
  signingKeyPem: string | null;
  now?: () => Date;
  /**
   * Time source of the batch sync timer and the checkpoint interval (default the process's timers with a
   * monotonic now(), so a step of the wall clock neither hurries nor holds back a checkpoint). Record
   * times come from `now`.
   */
  clock?: Clock;
  /**
   * Most SOP Instance UIDs the index behind lookupInstance() and appendCommitted() holds (default
   * DEFAULT_INDEX_SIZE; 0 = no index). The UID whose record was written longest ago is evicted first.
   */
  indexSize?: number;
  /**
   * While the ledger cannot write (disk full, permissions), try again this often (default 5000 ms): a
   * probe write and sync in the ledger directory; when it succeeds the writer is healthy again.
   */
  recoveryIntervalMs?: number;
  /** Called when the writer turns unhealthy (with the reason) and when it has recovered (null). */
  onHealth?: (healthy: boolean, reason: string | null) => void;
}

/** Default LedgerOptions.recoveryIntervalMs. */
export const DEFAULT_RECOVERY_INTERVAL_MS = 5000;
/** Bytes the recovery probe writes and syncs: room for a batch of records, not just one. */
const RECOVERY_PROBE_BYTES = 64 * 1024;

/** Default LedgerOptions.indexSize: about 10-20 MB of UIDs. */
export const DEFAULT_INDEX_SIZE = 100_000;

export interface CommittedEvidence {
  sopClassUid: string;
  sopInstanceUid: string;
  transactionUid: string;
  /**
   * The seq of the instance record this confirms; null when there is none. Undefined (or absent):
   * looked up in the writer's index when the record is sealed, i.e. after every append called before.
   */
  confirms?: number | null;
}

/**
 * Outcomes of an instance record that the index keeps: the archive stored the instance (PS3.4 B.2.3,
 * success or warning), so a Storage Commitment can confirm it.
 */
const INDEXED_OUTCOMES: ReadonlySet<string> = new Set(['success', 'warning']);
const TO_ARCHIVE: ReadonlySet<string> = new Set(['modality-to-archive', 'destination-to-archive']);

/**
 * SOP Instance UID -> seq of the latest indexed instance record. Bounded: writing a UID again makes it
 * the newest entry; past the capacity the oldest written is evicted (a Map iterates in insertion order).
 */
class InstanceIndex {
  private readonly map = new Map<string, number>();

  constructor(readonly capacity: number) {}

  get(sopInstanceUid: string): number | null {
    return this.map.get(sopInstanceUid) ?? null;
  }

  set(sopInstanceUid: string, seq: number): void {
    if (this.capacity === 0) return;
    this.map.delete(sopInstanceUid);
    this.map.set(sopInstanceUid, seq);
    if (this.map.size > this.capacity) {
      const oldest = this.map.keys().next();
      if (!oldest.done) this.map.delete(oldest.value);
    }
  }
}

/** The index entry an instance record makes, if any. */
function indexEntry(record: UnsealedRecord | LedgerRecord): [string, number] | null {
  if (record.type !== 'instance' || !INDEXED_OUTCOMES.has(record.outcome)) return null;
  // Only instances sent *to* the archive can be committed by it (a retrieval is not a store).
  if (!TO_ARCHIVE.has(record.direction)) return null;
  return [record.sopInstanceUid, record.seq];
}

interface Waiter {
  resolve: () => void;
  reject: (err: unknown) => void;
}

/**
 * A record waiting to be written, and its caller. `body` is either the record with its keys in order
 * (seq and prev are set when it is sealed) or a function making it from them (time-dependent records);
 * `confirmed` is lookupInstance as of that point of the chain (records sealed before it included).
 */
interface Pending extends Waiter {
  /** Called once the record's write() has returned (handed to the OS, not yet synced). */
  written?: () => void;
  body:
    | UnsealedRecord
    | ((seq: number, prev: string, confirmed: (sopInstanceUid: string) => number | null) => UnsealedRecord);
}

/** Consecutive sealed lines for the current file, written with one write() call. */
interface Run {
  text: string;
  count: number;
  /** The last record of the run: the head once it is written. */
  seq: number;
  hash: string;
  type: RecordType;
  /** It holds a checkpoint. */
  checkpoint: boolean;
  /** A record other than a checkpoint (or file-start) comes after its last checkpoint, if any. */
  uncheckpointed: boolean;
  /** The appends whose records it holds (empty for the writer's own records). */
  entries: Pending[];
  /** Index entries of its instance records (UID -> seq, oldest first): indexed once the run is written. */
  indexed: Map<string, number> | null;
  /** Its checkpoint lines (with their LF), for the witness once written. */
  checkpointLines?: string[];
}

const noop = (): void => {};

/** A batch longer than this is written with more than one write() (memory and event-loop time bounded). */
const MAX_WRITE_BYTES = 1024 * 1024;

/** `,"hash":"<64 hex>"` and the LF that sealing adds to JSON.stringify of an unsealed record. */
const SEAL_OVERHEAD = 75;

function lineLength(body: UnsealedRecord): number {
  return Buffer.byteLength(JSON.stringify(body), 'utf8') + SEAL_OVERHEAD;
}

/** The last record of a (non-last) ledger file, read from its end. */
async function readLastRecord(dir: string, name: string): Promise<LedgerRecord> {
  const fh = await open(join(dir, name), 'r');
  try {
    const { size } = await fh.stat();
    const length = Math.min(size, MAX_LINE_BYTES + 2);
    const buf = Buffer.alloc(length);
    await fh.read(buf, 0, length, size - length);
    const corrupt = (why: string): LedgerError =>
      new LedgerError(
        'LEDGER_CORRUPT',
        `${name}: ${why}; refusing to append to a broken chain (run "ledger verify")`,
      );
    if (length === 0 || buf[length - 1] !== 0x0a) throw corrupt('its last line is torn');
    const start = buf.lastIndexOf(0x0a, length - 2) + 1;
    const parsed = parseLine(buf.subarray(start, length - 1));
    if (parsed.kind !== 'record') throw corrupt(`its last line is not a valid record (${parsed.message})`);
    return parsed.record;
  } finally {
    await fh.close();
  }
}

export const LOCK_FILE = 'ledger.lock';

/** Ledger directories this process has open (a lock file with our own PID may also be a reused PID). */
const openHere = new Set<string>();

export class LedgerWriter implements LedgerSink {
  private readonly now: () => Date;
  private readonly clock: Clock;
  private readonly signing: { key: KeyObject; keyId: string } | null;

  private fh: FileHandle | null = null;
  private fileIndex = 1;
  private fileName = ledgerFileName(1);
  private previousFileName: string | null = null;
  /** Bytes of whole records in the current file. */
  private fileSize = 0;
  private fileLines = 0;
  private fileHasStart = false;
  private fileDay: string | null = null;
  /** fileDay as [start, end) in ms (cached for dayChanged). */
  private dayBounds: { day: string; start: number; end: number } | null = null;
  /** A failed write may have left part of a line: cut back to fileSize before the next write. */
  private dirty = false;

  private headSeq = 0;
  private headHash = GENESIS_PREV;
  private headType: RecordType | null = null;

  private queue: Promise<unknown> = Promise.resolve();
  /** Appends not yet taken by a flush; a flush is queued whenever this is not empty. */
  private pending: Pending[] = [];
  /** Written, waiting for the next batch sync. */
  private waiters: Waiter[] = [];
  private syncTimer: TimerHandle | null = null;
  private checkpointTimer: TimerHandle | null = null;
  /** A checkpoint is scheduled or queued. */
  private checkpointDue = false;
  /** clock.now() when the last checkpoint was written (or the writer was made). */
  private lastCheckpointAt: number;
  private closed = false;
  private closing: Promise<void> | null = null;
  private _healthy = true;
  private _recovery: { file: string; tornBytes: number; savedAs: string } | null = null;
  /** Length of a checkpoint line without the digits of its seq and count (see checkpointLength). */
  private readonly checkpointBaseLength: number;
  /** SOP Instance UID -> seq of its latest written success/warning instance record. */
  private readonly index: InstanceIndex;

  private constructor(private readonly opts: LedgerOptions) {
    this.now = opts.now ?? (() => new Date());
    this.clock = opts.clock ?? monotonicClock;
    this.lastCheckpointAt = this.clock.now();
    this.index = new InstanceIndex(opts.indexSize ?? DEFAULT_INDEX_SIZE);
    if (opts.signingKeyPem === null) this.signing = null;
    else {
      const key = loadSigningKey(opts.signingKeyPem);
      this.signing = { key, keyId: keyIdOf(key) };
    }
    const hex = '0'.repeat(64);
    this.checkpointBaseLength =
      lineLength({
        v: FORMAT_VERSION,
        type: 'checkpoint',
        seq: 1,
        time: '2000-01-01T00:00:00.000Z',
        head: hex,
        count: 0,
        keyId: this.signing ? hex : null,
        signature: this.signing ? 'A'.repeat(86) + '==' : null,
        prev: hex,
      }) - 2;
  }

  private locked = false;

  /** Open (or create) the ledger in opts.dir and get it ready to append. */
  /** Open the ledger a policy configures (`ledger:`; `dir` is its path) with the snapshot's signing key. */
  static openConfigured(
    dir: string,
    config: LedgerConfig,
    signingKeyPem: string | null,
    extra: Pick<LedgerOptions, 'onHealth' | 'recoveryIntervalMs' | 'onCheckpoint'> = {},
  ): Promise<LedgerWriter> {
    return LedgerWriter.open({
      dir,
      fsync: config.fsync,
      fsyncIntervalMs: config.fsyncIntervalMs,
      rotateMaxBytes: config.rotateMaxBytes,
      rotateDaily: config.rotateDaily,
      checkpointIntervalMs: config.checkpointIntervalMs,
      signingKeyPem,
      ...extra,
    });
  }

  static async open(opts: LedgerOptions): Promise<LedgerWriter> {
    for (const k of ['fsyncIntervalMs', 'rotateMaxBytes', 'checkpointIntervalMs'] as const) {
      if (!(Number.isFinite(opts[k]) && opts[k] > 0)) throw new RangeError(`${k} must be a positive number`);
    }
    if (opts.indexSize !== undefined && !(Number.isSafeInteger(opts.indexSize) && opts.indexSize >= 0)) {
      throw new RangeError('indexSize must be a non-negative integer');
    }
    const writer = new LedgerWriter(opts);
    try {
      await writer.init();
    } catch (err) {
      await writer.abandon();
      throw err;
    }
    return writer;
  }

  /** Set when open() cut a torn last line (saved to `savedAs` in the ledger directory). */
  get recovery(): { file: string; tornBytes: number; savedAs: string } | null {
    return this._recovery;
  }

  private recoveryTimer: TimerHandle | null = null;

  private markUnhealthy(reason = 'a write or sync failed'): void {
    if (this._healthy) {
      this._healthy = false;
      this.opts.onHealth?.(false, reason);
    }
    this.scheduleRecovery();
  }

  private markHealthy(): void {
    if (this.recoveryTimer) {
      this.clock.clearTimeout(this.recoveryTimer);
      this.recoveryTimer = null;
    }
    if (this._healthy) return;
    this._healthy = true;
    this.opts.onHealth?.(true, null);
  }

  /** While unhealthy: a probe every recoveryIntervalMs, in the writer's queue (never beside a write). */
  private scheduleRecovery(): void {
    if (this.closed || this.recoveryTimer) return;
    const t = this.clock.setTimeout(() => {
      this.recoveryTimer = null;
      this.enqueue(() => this.probe()).catch(noop);
    }, this.opts.recoveryIntervalMs ?? DEFAULT_RECOVERY_INTERVAL_MS);
    t.unref();
    this.recoveryTimer = t;
  }

  /**
   * Can the ledger write again? Cut any partly written line, write and sync RECOVERY_PROBE_BYTES in a
   * probe file beside the ledger (not a ledger file: verify and find never read it), sync the ledger file.
   */
  private async probe(): Promise<void> {
    if (this._healthy || this.closed) return;
    const path = join(this.opts.dir, '.ledger-write-probe');
    try {
      if (this.dirty && this.fh) {
        await this.fh.truncate(this.fileSize);
        this.dirty = false;
      }
      const h = await open(path, 'w');
      try {
        await h.write(Buffer.alloc(RECOVERY_PROBE_BYTES), 0, RECOVERY_PROBE_BYTES, 0);
        await h.datasync();
      } finally {
        await h.close();
        await unlink(path).catch(noop);
      }
      if (this.fh) await this.fh.datasync();
      this.markHealthy();
    } catch {
      await unlink(path).catch(noop);
      this.scheduleRecovery();
    }
  }

  get healthy(): boolean {
    return this._healthy;
  }

  /** The last record written: what the next one chains to. */
  get head(): { seq: number; hash: string; file: string } {
    return { seq: this.headSeq, hash: this.headHash, file: this.fileName };
  }

  append(e: InstanceEvidence, onWritten?: () => void): Promise<void> {
    // The record as the evidence is now (even if the caller reuses the object), keys in their fixed
    // order; seq and prev are set when it is sealed. `?? null`: a missing optional field is null.
    return this.submit(
      {
        v: FORMAT_VERSION,
        type: 'instance',
        seq: 0,
        time: e.time,
        association: e.association,
        direction: e.direction,
        callingAeTitle: e.callingAeTitle,
        calledAeTitle: e.calledAeTitle,
        upstreamAeTitle: e.upstreamAeTitle ?? null,
        peerAddress: e.peerAddress,
        archiveAddress: e.archiveAddress,
        archiveCertSha256: e.archiveCertSha256 ?? null,
        clientCertSha256: e.clientCertSha256 ?? null,
        sopClassUid: e.sopClassUid,
        sopInstanceUid: e.sopInstanceUid,
        studyInstanceUid: e.studyInstanceUid ?? null,
        transferSyntaxUid: e.transferSyntaxUid,
        bytes: e.bytes,
        sha256: e.sha256,
        status: e.status ?? null,
        outcome: e.outcome,
        moveOriginatorAeTitle: e.moveOriginatorAeTitle ?? null,
        moveOriginatorMessageId: e.moveOriginatorMessageId ?? null,
        prev: '',
      },
      onWritten,
    );
  }

  /**
   * Append a `committed` record. Without `confirms` (undefined), it is the seq of the latest
   * success/warning instance record of the SOP Instance UID in the index when the record is sealed
   * (so an instance appended just before counts), or null.
   */
  appendCommitted(committed: CommittedEvidence): Promise<void> {
    const { sopClassUid, sopInstanceUid, transactionUid, confirms } = committed;
    return this.submit((seq, prev, confirmed) => ({
      v: FORMAT_VERSION,
      type: 'committed',
      seq,
      time: this.now().toISOString(),
      sopClassUid,
      sopInstanceUid,
      transactionUid,
      confirms: confirms === undefined ? confirmed(sopInstanceUid) : confirms,
      prev,
    }));
  }

  /**
   * The seq of the latest success/warning instance record for a SOP Instance UID among the records
   * this writer wrote, and those of the ledger's last file when it opened; null when none is known
   * (never written, failed, or evicted from the bounded index).
   */
  lookupInstance(sopInstanceUid: string): number | null {
    return this.index.get(sopInstanceUid);
  }

  /** Write a (signed) checkpoint now (after the appends called before it). */
  checkpoint(): Promise<void> {
    return this.submit((seq, prev) => this.checkpointBody(seq, prev));
  }

  /** Final checkpoint (unless the last record is one), sync, close. Idempotent. */
  close(): Promise<void> {
    if (this.closing) return this.closing;
    this.closed = true;
    if (this.recoveryTimer) {
      this.clock.clearTimeout(this.recoveryTimer);
      this.recoveryTimer = null;
    }
    this.closing = this.enqueue(async () => {
      this.clearTimers();
      const fh = this.fh;
      if (!fh) {
        await this.unlock();
        return;
      }
      try {
        if (this.headType !== 'checkpoint') await this.writeRecord(this.checkpointBody());
      } finally {
        this.fh = null;
        await this.finishFile(fh);
        await this.unlock();
      }
    });
    return this.closing;
  }

  // ---- internals ----

  private closedError(): LedgerError {
    return new LedgerError('LEDGER_WRITE_FAILED', 'the ledger writer is closed');
  }

  private enqueue<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn);
    this.queue = run.then(noop, noop);
    return run;
  }

  /**
   * Queue a record; resolve once it is written and synced per the fsync policy. The first append of a
   * batch queues one flush; the ones after it (until that flush starts) join the batch.
   */
  private submit(body: Pending['body'], written?: () => void): Promise<void> {
    if (this.closed) return Promise.reject(this.closedError());
    return new Promise<void>((resolve, reject) => {
      const p: Pending = { body, resolve, reject };
      if (written) p.written = written;
      if (this.pending.push(p) === 1) {
        this.queue = this.queue.then(this.flush);
      }
    });
  }

  /** Take every pending append, in call order, and write them (one queue step; never rejects). */
  private readonly flush = async (): Promise<void> => {
    const batch = this.pending;
    this.pending = [];
    try {
      await this.writeBatch(batch);
    } catch (err) {
      for (const p of batch) p.reject(err); // not reached: writeBatch settles every append itself
    }
  };

  /**
   * Seal the batch in order into as few writes as possible (one, unless the file rotates), and settle
   * each append once its record is written and synced per the policy. A failure rejects every append of
   * the batch not yet written (a record that cannot be sealed rejects just its own append).
   */
  private async writeBatch(batch: Pending[]): Promise<void> {
    if (this.closed && !this.fh) {
      const err = this.closedError();
      for (const p of batch) p.reject(err);
      return;
    }
    let next = 0;
    try {
      while (next < batch.length) {
        if (!this.fh || !this.fileHasStart) await this.ensureFile();
        const run = this.sealRun(batch, next);
        if (run.count > 0) await this.writeRun(run);
        next = run.end;
        if (run.rotate) await this.rotate();
      }
    } catch (err) {
      for (let i = next; i < batch.length; i++) batch[i]!.reject(err);
    }
  }

  /**
   * Seal appends from batch[from] on, chained to the head, as lines for the current file, up to the
   * first that must go to the next file (`rotate`; `end` is its index) or the end of the batch.
   */
  private sealRun(batch: Pending[], from: number): Run & { end: number; rotate: boolean } {
    const { rotateMaxBytes } = this.opts;
    const newDay = this.dayChanged();
    let lines = this.fileLines;
    let size = this.fileSize;
    const run: Run & { end: number; rotate: boolean } = {
      text: '',
      count: 0,
      seq: this.headSeq,
      hash: this.headHash,
      type: this.headType ?? 'file-start',
      checkpoint: false,
      uncheckpointed: false,
      entries: [],
      indexed: new Map(),
      end: from,
      rotate: false,
    };
    // A committed record sealed after instance records of the same run sees them too.
    const sealed = run.indexed!;
    const confirmed = (uid: string): number | null => sealed.get(uid) ?? this.index.get(uid);
    for (; run.end < batch.length; run.end++) {
      const p = batch[run.end]!;
      let body: UnsealedRecord;
      let line: string;
      let hash: string;
      let length: number;
      try {
        if (typeof p.body === 'function') body = p.body(run.seq + 1, run.hash, confirmed);
        else {
          body = p.body;
          body.seq = run.seq + 1;
          body.prev = run.hash;
        }
        ({ hash, line } = sealOrdered(body));
        length = Buffer.byteLength(line, 'utf8');
        if (length - 1 > MAX_LINE_BYTES) {
          throw new Error(`record of ${length} bytes exceeds ${MAX_LINE_BYTES}`);
        }
      } catch (err) {
        p.reject(new LedgerError('LEDGER_WRITE_FAILED', (err as Error).message, { cause: err }));
        continue;
      }
      if (lines > 1 && (newDay || size + length + this.checkpointLength(run.seq + 1) > rotateMaxBytes)) {
        run.rotate = true;
        break;
      }
      if (run.count > 0 && size - this.fileSize + length > MAX_WRITE_BYTES) break; // the rest: next write
      run.text += line;
      run.count += 1;
      run.seq = body.seq;
      run.hash = hash;
      run.type = body.type;
      if (body.type === 'checkpoint') {
        run.checkpoint = true;
        run.uncheckpointed = false;
        (run.checkpointLines ??= []).push(line);
      } else {
        run.uncheckpointed = true;
      }
      run.entries.push(p);
      lines += 1;
      size += length;
      const entry = this.index.capacity > 0 ? indexEntry(body) : null;
      if (entry) {
        sealed.delete(entry[0]); // the latest record of a UID goes last
        sealed.set(entry[0], entry[1]);
      }
    }
    return run;
  }

  private async init(): Promise<void> {
    const { dir } = this.opts;
    try {
      await mkdir(dir, { recursive: true, mode: 0o700 });
    } catch (err) {
      throw new LedgerError(
        'LEDGER_WRITE_FAILED',
        `cannot create ledger directory ${dir}: ${describeFsError(err)}`,
        {
          cause: err,
        },
      );
    }
    await this.lock();
    const files = await listLedgerFiles(dir);
    const name = files.at(-1);
    if (name === undefined) {
      await this.ensureFile();
      await this.syncCurrent();
      return;
    }
    const previous = files.at(-2) ?? null;
    let state: ChainState = START_STATE;
    if (previous !== null) {
      const last = await readLastRecord(dir, previous);
      state = {
        prev: last.hash,
        prevLine: null,
        prevFile: previous,
        seq: last.seq + 1,
        previousFile: previous,
      };
      this.headSeq = last.seq;
      this.headHash = last.hash;
      this.headType = last.type;
    }
    // The scan also refills the index from the records of the last file (the index stays bounded).
    const scan = await scanFile(dir, name, state, {
      isLast: true,
      key: null,
      onRecord: (record) => {
        const entry = indexEntry(record);
        if (entry) this.index.set(entry[0], entry[1]);
      },
    });
    const first = scan.errors[0];
    if (first) {
      throw new LedgerError(
        'LEDGER_CORRUPT',
        `${name}:${first.line}: ${first.message}; refusing to append to a broken chain (run "ledger verify")` +
          (scan.errors.length > 1 ? ` [${scan.errors.length - 1} more problem(s)]` : ''),
      );
    }
    this.fileIndex = ledgerFileIndex(name)!;
    this.fileName = name;
    this.previousFileName = previous;
    this.fileSize = scan.goodSize;
    this.fileLines = scan.lines;
    this.fileHasStart = scan.first?.type === 'file-start';
    this.fileDay = scan.first ? utcDay(scan.first.time) : null;
    if (scan.last) {
      this.headSeq = scan.last.seq;
      this.headHash = scan.last.hash;
      this.headType = scan.last.type;
    }
    try {
      this.fh = await open(join(dir, name), 'a', 0o600);
    } catch (err) {
      throw new LedgerError('LEDGER_WRITE_FAILED', `cannot open ${name}: ${describeFsError(err)}`, {
        cause: err,
      });
    }
    if (scan.torn && scan.torn.bytes > 0) {
      const savedAs = await this.cutTornTail(scan.torn.offset, scan.torn.bytes);
      this._recovery = { file: name, tornBytes: scan.torn.bytes, savedAs };
    }
    const recovery = this._recovery;
    if (recovery) {
      await this.appendRecord(() => ({
        v: FORMAT_VERSION,
        type: 'recovered',
        seq: this.headSeq + 1,
        time: this.now().toISOString(),
        file: recovery.file,
        tornBytes: recovery.tornBytes,
        savedAs: recovery.savedAs,
        prev: this.headHash,
      }));
    } else {
      await this.ensureFile();
    }
    await this.syncCurrent();
    if (this.headType !== 'checkpoint') this.scheduleCheckpoint();
  }

  /** Copy the torn bytes to `<file>.torn-<time>`, then cut them from the file. */
  private async cutTornTail(offset: number, bytes: number): Promise<string> {
    const { dir } = this.opts;
    const base = `${this.fileName}.torn-${compactTime(this.now())}`;
    const fail = (what: string, err: unknown): LedgerError =>
      new LedgerError('LEDGER_WRITE_FAILED', `${what}: ${describeFsError(err)}`, { cause: err });
    let savedAs = base;
    let out: FileHandle | null = null;
    for (let n = 2; out === null; n++) {
      try {
        out = await open(join(dir, savedAs), 'wx', 0o600);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || n > 100) {
          throw fail(`cannot save the torn tail of ${this.fileName}`, err);
        }
        savedAs = `${base}-${n}`;
      }
    }
    let src: FileHandle | null = null;
    try {
      src = await open(join(dir, this.fileName), 'r');
      const buf = Buffer.alloc(Math.min(bytes, 64 * 1024));
      for (let done = 0; done < bytes;) {
        const { bytesRead } = await src.read(buf, 0, Math.min(buf.length, bytes - done), offset + done);
        if (bytesRead === 0) break;
        await out.write(buf, 0, bytesRead);
        done += bytesRead;
      }
      await out.sync();
    } catch (err) {
      throw fail(`cannot save the torn tail of ${this.fileName}`, err);
    } finally {
      await out.close();
      await src?.close();
    }
    await syncDir(dir);
    try {
      await this.fh!.truncate(offset);
      await this.fh!.datasync();
    } catch (err) {
      throw fail(`cannot cut the torn tail of ${this.fileName}`, err);
    }
    return savedAs;
  }

  /** Make sure a current file is open and starts with its file-start record. */
  private async ensureFile(): Promise<void> {
    if (!this.fh) {
      try {
        this.fh = await open(join(this.opts.dir, this.fileName), 'ax', 0o600);
      } catch (err) {
        this.markUnhealthy();
        throw new LedgerError(
          'LEDGER_WRITE_FAILED',
          `cannot create ${this.fileName}: ${describeFsError(err)}`,
          {
            cause: err,
          },
        );
      }
      this.fileSize = 0;
      this.fileLines = 0;
      this.dirty = false;
      this.fileHasStart = false;
      await syncDir(this.opts.dir);
    }
    if (!this.fileHasStart) {
      const time = this.now();
      await this.writeRecord({
        v: FORMAT_VERSION,
        type: 'file-start',
        seq: this.headSeq + 1,
        time: time.toISOString(),
        file: this.fileName,
        previousFile: this.previousFileName,
        prev: this.headHash,
      });
      this.fileHasStart = true;
      this.fileDay = utcDay(time);
    }
  }

  /** A checkpoint with seq `seq` after the record whose hash is `head` (by default: after the head). */
  private checkpointBody(seq = this.headSeq + 1, head = this.headHash): UnsealedRecord {
    const time = this.now().toISOString();
    const count = seq - 1;
    return {
      v: FORMAT_VERSION,
      type: 'checkpoint',
      seq,
      time,
      head,
      count,
      keyId: this.signing?.keyId ?? null,
      signature: this.signing
        ? sign(null, checkpointMessage(head, count, time), this.signing.key).toString('base64')
        : null,
      prev: head,
    };
  }

  /**
   * Length of the checkpoint that would follow a record with seq `seq` (room kept for rotation): only
   * the digits of its seq (seq + 1) and count (seq) vary.
   */
  private checkpointLength(seq: number): number {
    return this.checkpointBaseLength + String(seq + 1).length + String(seq).length;
  }

  /** With daily rotation: now is not on the UTC day of the current file. */
  private dayChanged(): boolean {
    const day = this.fileDay;
    if (!this.opts.rotateDaily || day === null) return false;
    let bounds = this.dayBounds;
    if (bounds?.day !== day) {
      const start = Date.parse(`${day}T00:00:00.000Z`);
      bounds = this.dayBounds = { day, start, end: start + 86_400_000 };
    }
    const now = this.now().getTime();
    return !(now >= bounds.start && now < bounds.end);
  }

  private shouldRotate(length: number): boolean {
    if (this.fileLines <= 1) return false;
    if (this.dayChanged()) return true;
    return this.fileSize + length + this.checkpointLength(this.headSeq + 1) > this.opts.rotateMaxBytes;
  }

  /** Append one record of the writer's own to the chain (rotating first when due). */
  private async appendRecord(make: () => UnsealedRecord): Promise<void> {
    await this.ensureFile();
    if (this.shouldRotate(lineLength(make()))) {
      await this.rotate();
    }
    await this.writeRecord(make());
  }

  /** Checkpoint the current file as its last record, then start the next file. */
  private async rotate(): Promise<void> {
    const fh = this.fh;
    if (fh) {
      if (this.headType !== 'checkpoint') await this.writeRecord(this.checkpointBody());
      this.fh = null;
      this.previousFileName = this.fileName;
      this.fileIndex += 1;
      this.fileName = ledgerFileName(this.fileIndex);
      this.fileHasStart = false;
      this.fileLines = 0;
      this.fileSize = 0;
      this.dirty = false;
      await this.finishFile(fh);
    }
    await this.ensureFile();
  }

  /** Write one record of the writer's own (file-start, checkpoint, recovered) to the current file. */
  private async writeRecord(body: UnsealedRecord): Promise<void> {
    let sealed: { hash: string; line: string };
    try {
      sealed = sealOrdered(body);
    } catch (err) {
      throw new LedgerError('LEDGER_WRITE_FAILED', (err as Error).message, { cause: err });
    }
    const bytes = Buffer.byteLength(sealed.line, 'utf8');
    if (bytes - 1 > MAX_LINE_BYTES) {
      throw new LedgerError('LEDGER_WRITE_FAILED', `record of ${bytes} bytes exceeds ${MAX_LINE_BYTES}`);
    }
    await this.writeRun({
      text: sealed.line,
      count: 1,
      seq: body.seq,
      hash: sealed.hash,
      type: body.type,
      checkpoint: body.type === 'checkpoint',
      uncheckpointed: body.type !== 'checkpoint' && body.type !== 'file-start',
      entries: [],
      indexed: null,
      ...(body.type === 'checkpoint' ? { checkpointLines: [sealed.line] } : {}),
    });
  }

  /**
   * Write a run of sealed lines with a single write() call; the head moves only when it is all
   * written. Then sync per the policy and settle its appends: with 'always' resolved once synced, with
   * 'batch' handed to the next sync (at most fsyncIntervalMs away). Throws LEDGER_WRITE_FAILED when the
   * write or an 'always' sync fails (its appends are left to the caller to reject).
   */
  private async writeRun(run: Run): Promise<void> {
    const fh = this.fh;
    if (!fh) throw new LedgerError('LEDGER_WRITE_FAILED', 'no ledger file is open');
    const data = Buffer.from(run.text, 'utf8');
    try {
      if (this.dirty) {
        await fh.truncate(this.fileSize);
        this.dirty = false;
      }
      const { bytesWritten } = await fh.write(data, 0, data.length, null);
      if (bytesWritten !== data.length) {
        throw new Error(
          `short write (${bytesWritten} of ${data.length} bytes; disk full or file size limit?)`,
        );
      }
    } catch (err) {
      this.markUnhealthy();
      // Cut whatever part of the lines may have landed now; if that fails too, before the next write.
      this.dirty = !(await fh.truncate(this.fileSize).then(
        () => true,
        () => false,
      ));
      throw new LedgerError(
        'LEDGER_WRITE_FAILED',
        `cannot write to ${join(this.opts.dir, this.fileName)}: ${describeFsError(err)}`,
        { cause: err },
      );
    }
    this.fileSize += data.length;
    this.fileLines += run.count;
    const witness = this.opts.onCheckpoint;
    if (witness && run.checkpointLines) {
      for (const line of run.checkpointLines) {
        try {
          witness(line.slice(0, -1));
        } catch {
          // the witness reports its own failures; the chain goes on
        }
      }
    }
    // Handed to the OS: the relay may now let the archive's success through (the sync follows).
    for (const p of run.entries) {
      try {
        p.written?.();
      } catch {
        // a caller's callback must not break the chain
      }
    }
    this.headSeq = run.seq;
    this.headHash = run.hash;
    this.headType = run.type;
    // In the chain now (even if a sync below fails, the next record chains to them).
    if (run.indexed) for (const [uid, seq] of run.indexed) this.index.set(uid, seq);
    if (run.checkpoint) {
      this.lastCheckpointAt = this.clock.now();
      if (this.checkpointTimer) {
        this.clock.clearTimeout(this.checkpointTimer);
        this.checkpointTimer = null;
        this.checkpointDue = false;
      }
    }
    if (run.uncheckpointed) this.scheduleCheckpoint();
    if (this.opts.fsync === 'always') {
      try {
        await fh.datasync();
      } catch (err) {
        this.markUnhealthy();
        throw new LedgerError(
          'LEDGER_WRITE_FAILED',
          `cannot sync ${this.fileName}: ${describeFsError(err)}`,
          {
            cause: err,
          },
        );
      }
      this.markHealthy();
      for (const p of run.entries) p.resolve();
      return;
    }
    this.markHealthy();
    if (run.entries.length === 0) return;
    for (const p of run.entries) this.waiters.push(p);
    if (!this.syncTimer) {
      // Not unref'd: someone is waiting for this sync, and it is at most fsyncIntervalMs away.
      this.syncTimer = this.clock.setTimeout(this.syncDue, this.opts.fsyncIntervalMs);
    }
  }

  /**
   * The batched sync runs beside the write queue, not in it: records written while it is in flight do
   * not wait for it (their write() is what the relay's held success waits on). One sync at a time; its
   * waiters are the records written before it began, which is what fdatasync covers.
   */
  private syncing: Promise<void> | null = null;

  private readonly syncDue = (): void => {
    this.syncTimer = null;
    const run = (): Promise<void> => this.syncCurrent().catch(noop);
    const next: Promise<void> = (this.syncing ? this.syncing.then(run) : run()).finally(() => {
      if (this.syncing === next) this.syncing = null;
    });
    this.syncing = next;
  };

  /** fdatasync the current file and settle everyone waiting for it. */
  private async syncCurrent(): Promise<void> {
    const waiters = this.waiters.splice(0);
    if (waiters.length === 0) return;
    const fh = this.fh;
    try {
      if (fh) await fh.datasync();
    } catch (err) {
      this.markUnhealthy();
      const failure = new LedgerError(
        'LEDGER_WRITE_FAILED',
        `cannot sync ${this.fileName}: ${describeFsError(err)}`,
        {
          cause: err,
        },
      );
      for (const w of waiters) w.reject(failure);
      throw failure;
    }
    for (const w of waiters) w.resolve();
  }

  /** Sync and close a file we are done with; waiters for it are settled. */
  private async finishFile(fh: FileHandle): Promise<void> {
    if (this.syncing) await this.syncing; // a batched sync on this handle is in flight: let it settle
    const waiters = this.waiters.splice(0);
    let failure: LedgerError | null = null;
    try {
      await fh.datasync();
    } catch (err) {
      this.markUnhealthy();
      failure = new LedgerError('LEDGER_WRITE_FAILED', `cannot sync a ledger file: ${describeFsError(err)}`, {
        cause: err,
      });
    }
    await fh.close().catch(noop);
    for (const w of waiters) {
      if (failure) w.reject(failure);
      else w.resolve();
    }
    if (failure) throw failure;
  }

  /** A checkpoint once checkpointIntervalMs has passed since the last one (unless one comes first). */
  private scheduleCheckpoint(): void {
    if (this.checkpointDue || this.closed) return;
    this.checkpointDue = true;
    const wait = Math.max(0, this.lastCheckpointAt + this.opts.checkpointIntervalMs - this.clock.now());
    this.checkpointTimer = this.clock.setTimeout(() => {
      this.checkpointTimer = null;
      this.enqueue(async () => {
        this.checkpointDue = false;
        if (this.closed || this.headType === 'checkpoint') return;
        if (this.clock.now() - this.lastCheckpointAt < this.opts.checkpointIntervalMs) {
          this.scheduleCheckpoint(); // one was written meanwhile (rotation, checkpoint())
          return;
        }
        await this.ensureFile();
        const body = this.checkpointBody();
        if (this.shouldRotate(lineLength(body)))
          await this.rotate(); // rotation writes the checkpoint
        else await this.writeRecord(body);
      }).catch(noop);
    }, wait);
    this.checkpointTimer.unref();
  }

  private clearTimers(): void {
    this.clock.clearTimeout(this.checkpointTimer);
    this.clock.clearTimeout(this.syncTimer);
    this.checkpointTimer = null;
    this.syncTimer = null;
  }

  /** open() failed: release what init() took. */
  private async abandon(): Promise<void> {
    this.closed = true;
    this.clearTimers();
    const fh = this.fh;
    this.fh = null;
    if (fh) await fh.close().catch(noop);
    await this.unlock();
  }

  /**
   * One writer per ledger directory: two would fork the chain. `ledger.lock` holds the owner's PID; a
   * lock whose process is gone (a crash, kill -9) is taken over.
   */
  private async lock(): Promise<void> {
    const path = join(this.opts.dir, LOCK_FILE);
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        const fh = await open(path, 'wx', 0o600);
        await fh.writeFile(`${process.pid}\n`);
        await fh.close();
        this.locked = true;
        openHere.add(resolve(this.opts.dir));
        return;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
          throw new LedgerError(
            'LEDGER_WRITE_FAILED',
            `cannot lock ledger ${path}: ${describeFsError(err)}`,
            {
              cause: err,
            },
          );
        }
      }
      const owner = Number.parseInt((await readFile(path, 'utf8').catch(() => '')).trim(), 10);
      const ours = owner === process.pid;
      if ((ours && openHere.has(resolve(this.opts.dir))) || (!ours && owner > 0 && processAlive(owner))) {
        throw new LedgerError(
          'LEDGER_LOCKED',
          `ledger ${this.opts.dir} is in use by process ${owner} (${path}); one proxy process owns a ledger`,
        );
      }
      await unlink(path).catch(noop); // stale: its owner is gone
    }
    throw new LedgerError('LEDGER_LOCKED', `cannot take the ledger lock ${path}`);
  }

  private async unlock(): Promise<void> {
    if (!this.locked) return;
    this.locked = false;
    openHere.delete(resolve(this.opts.dir));
    await unlink(join(this.opts.dir, LOCK_FILE)).catch(noop);
  }
}
