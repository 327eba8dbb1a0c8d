// The ledger writer: appends records to the hash chain described in format.ts, one write() per line, in
// call order, with fsync policy, rotation, periodic signed checkpoints and torn-tail recovery at start-up.
import { type KeyObject, sign } from 'node:crypto';
import { type FileHandle, mkdir, open, readFile, unlink } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { type ChainState, START_STATE, listLedgerFiles, scanFile } from './chain.js';
import { LedgerError, describeFsError } from './errors.js';
import {
  GENESIS_PREV,
  type LedgerRecord,
  MAX_LINE_BYTES,
  type RecordType,
  type UnsealedRecord,
  checkpointMessage,
  compactTime,
  ledgerFileIndex,
  ledgerFileName,
  parseLine,
  sealRecord,
  utcDay,
} from './format.js';
import { keyIdOf, loadSigningKey } from './keys.js';
import type { InstanceEvidence, LedgerSink } from './types.js';

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
  /** Ed25519 private key (PKCS#8 PEM); null = checkpoints unsigned. */
  signingKeyPem: string | null;
  now?: () => Date;
}

export interface CommittedEvidence {
  sopClassUid: string;
  sopInstanceUid: string;
  transactionUid: string;
  confirms: number | null;
}

interface Waiter {
  resolve: () => void;
  reject: (err: unknown) => void;
}

const noop = (): void => {};

/** `,"hash":"<64 hex>"` and the LF that sealing adds to JSON.stringify of an unsealed record. */
const SEAL_OVERHEAD = 75;

function lineLength(body: UnsealedRecord): number {
  return Buffer.byteLength(JSON.stringify(body), 'utf8') + SEAL_OVERHEAD;
}

async function syncDir(dir: string): Promise<void> {
  try {
    const fh = await open(dir, 'r');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
  } catch {
    // Not supported everywhere (e.g. Windows); the file data itself is synced regardless.
  }
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

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export class LedgerWriter implements LedgerSink {
  private readonly now: () => Date;
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
  /** A failed write may have left part of a line: cut back to fileSize before the next write. */
  private dirty = false;

  private headSeq = 0;
  private headHash = GENESIS_PREV;
  private headType: RecordType | null = null;

  private queue: Promise<unknown> = Promise.resolve();
  private waiters: Waiter[] = [];
  private syncTimer: NodeJS.Timeout | null = null;
  private checkpointTimer: NodeJS.Timeout | null = null;
  /** A checkpoint is scheduled or queued. */
  private checkpointDue = false;
  private lastCheckpointAt = performance.now();
  private closed = false;
  private closing: Promise<void> | null = null;
  private _healthy = true;
  private _recovery: { file: string; tornBytes: number; savedAs: string } | null = null;

  private constructor(private readonly opts: LedgerOptions) {
    this.now = opts.now ?? (() => new Date());
    if (opts.signingKeyPem === null) this.signing = null;
    else {
      const key = loadSigningKey(opts.signingKeyPem);
      this.signing = { key, keyId: keyIdOf(key) };
    }
  }

  private locked = false;

  /** Open (or create) the ledger in opts.dir and get it ready to append. */
  static async open(opts: LedgerOptions): Promise<LedgerWriter> {
    for (const k of ['fsyncIntervalMs', 'rotateMaxBytes', 'checkpointIntervalMs'] as const) {
      if (!(Number.isFinite(opts[k]) && opts[k] > 0)) throw new RangeError(`${k} must be a positive number`);
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

  get healthy(): boolean {
    return this._healthy;
  }

  /** The last record written: what the next one chains to. */
  get head(): { seq: number; hash: string; file: string } {
    return { seq: this.headSeq, hash: this.headHash, file: this.fileName };
  }

  append(evidence: InstanceEvidence): Promise<void> {
    const e = { ...evidence }; // as it is now, even if the caller reuses the object
    return this.appendDurably(() => ({
      v: 1,
      type: 'instance',
      seq: this.headSeq + 1,
      time: e.time,
      association: e.association,
      direction: e.direction,
      callingAeTitle: e.callingAeTitle,
      calledAeTitle: e.calledAeTitle,
      upstreamAeTitle: e.upstreamAeTitle,
      peerAddress: e.peerAddress,
      archiveAddress: e.archiveAddress,
      archiveCertSha256: e.archiveCertSha256,
      clientCertSha256: e.clientCertSha256,
      sopClassUid: e.sopClassUid,
      sopInstanceUid: e.sopInstanceUid,
      transferSyntaxUid: e.transferSyntaxUid,
      bytes: e.bytes,
      sha256: e.sha256,
      status: e.status,
      outcome: e.outcome,
      moveOriginatorAeTitle: e.moveOriginatorAeTitle,
      moveOriginatorMessageId: e.moveOriginatorMessageId,
      prev: this.headHash,
    }));
  }

  appendCommitted(committed: CommittedEvidence): Promise<void> {
    const c = { ...committed };
    return this.appendDurably(() => ({
      v: 1,
      type: 'committed',
      seq: this.headSeq + 1,
      time: this.now().toISOString(),
      sopClassUid: c.sopClassUid,
      sopInstanceUid: c.sopInstanceUid,
      transactionUid: c.transactionUid,
      confirms: c.confirms,
      prev: this.headHash,
    }));
  }

  /** Write a (signed) checkpoint now. */
  checkpoint(): Promise<void> {
    return this.appendDurably(() => this.checkpointBody());
  }

  /** Final checkpoint (unless the last record is one), sync, close. Idempotent. */
  close(): Promise<void> {
    if (this.closing) return this.closing;
    this.closed = true;
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

  /** Queue a record; resolve once it is written and synced per the fsync policy. */
  private async appendDurably(make: () => UnsealedRecord): Promise<void> {
    if (this.closed) throw this.closedError();
    const { synced } = await this.enqueue(async () => {
      if (this.closed && !this.fh) throw this.closedError();
      await this.appendRecord(make);
      return { synced: this.syncLater() };
    });
    await synced;
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
    const scan = await scanFile(dir, name, state, { isLast: true, key: null });
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
        v: 1,
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
        this._healthy = false;
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
        v: 1,
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

  private checkpointBody(): UnsealedRecord {
    const time = this.now().toISOString();
    const head = this.headHash;
    const count = this.headSeq;
    return {
      v: 1,
      type: 'checkpoint',
      seq: this.headSeq + 1,
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

  /** Length of the checkpoint that would follow a record with seq `seq` (room kept for rotation). */
  private checkpointLength(seq: number): number {
    const hex = '0'.repeat(64);
    return lineLength({
      v: 1,
      type: 'checkpoint',
      seq: seq + 1,
      time: '2000-01-01T00:00:00.000Z',
      head: hex,
      count: seq,
      keyId: this.signing ? hex : null,
      signature: this.signing ? 'A'.repeat(86) + '==' : null,
      prev: hex,
    });
  }

  private shouldRotate(length: number): boolean {
    if (this.fileLines <= 1) return false;
    if (this.opts.rotateDaily && this.fileDay !== null && utcDay(this.now()) !== this.fileDay) return true;
    return this.fileSize + length + this.checkpointLength(this.headSeq + 1) > this.opts.rotateMaxBytes;
  }

  /** Append one record to the chain (rotating first when due). */
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

  /** Write one sealed line with a single write() call; the head moves only when it is all written. */
  private async writeRecord(body: UnsealedRecord): Promise<LedgerRecord> {
    let sealed: { record: LedgerRecord; line: Buffer };
    try {
      sealed = sealRecord(body);
    } catch (err) {
      throw new LedgerError('LEDGER_WRITE_FAILED', (err as Error).message, { cause: err });
    }
    const { record, line } = sealed;
    if (line.length - 1 > MAX_LINE_BYTES) {
      throw new LedgerError(
        'LEDGER_WRITE_FAILED',
        `record of ${line.length} bytes exceeds ${MAX_LINE_BYTES}`,
      );
    }
    const fh = this.fh;
    if (!fh) throw new LedgerError('LEDGER_WRITE_FAILED', 'no ledger file is open');
    try {
      if (this.dirty) {
        await fh.truncate(this.fileSize);
        this.dirty = false;
      }
      const { bytesWritten } = await fh.write(line, 0, line.length, null);
      if (bytesWritten !== line.length) {
        throw new Error(
          `short write (${bytesWritten} of ${line.length} bytes; disk full or file size limit?)`,
        );
      }
    } catch (err) {
      this._healthy = false;
      // Cut whatever part of the line may have landed now; if that fails too, before the next write.
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
    this.fileSize += line.length;
    this.fileLines += 1;
    this.headSeq = record.seq;
    this.headHash = record.hash;
    this.headType = record.type;
    if (record.type === 'checkpoint') {
      this.lastCheckpointAt = performance.now();
      if (this.checkpointTimer) {
        clearTimeout(this.checkpointTimer);
        this.checkpointTimer = null;
        this.checkpointDue = false;
      }
    } else if (record.type !== 'file-start') {
      this.scheduleCheckpoint();
    }
    if (this.opts.fsync === 'always') {
      try {
        await fh.datasync();
      } catch (err) {
        this._healthy = false;
        throw new LedgerError(
          'LEDGER_WRITE_FAILED',
          `cannot sync ${this.fileName}: ${describeFsError(err)}`,
          {
            cause: err,
          },
        );
      }
    }
    this._healthy = true;
    return record;
  }

  /** In batch mode, a promise for the next sync (at most fsyncIntervalMs away). */
  private syncLater(): Promise<void> {
    if (this.opts.fsync === 'always') return Promise.resolve();
    const synced = new Promise<void>((resolve, reject) => this.waiters.push({ resolve, reject }));
    if (!this.syncTimer) {
      // Not unref'd: someone is waiting for this sync, and it is at most fsyncIntervalMs away.
      this.syncTimer = setTimeout(() => {
        this.syncTimer = null;
        this.enqueue(() => this.syncCurrent()).catch(noop);
      }, this.opts.fsyncIntervalMs);
    }
    return synced;
  }

  /** fdatasync the current file and settle everyone waiting for it. */
  private async syncCurrent(): Promise<void> {
    const waiters = this.waiters.splice(0);
    try {
      if (this.fh) await this.fh.datasync();
    } catch (err) {
      this._healthy = false;
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
    const waiters = this.waiters.splice(0);
    let failure: LedgerError | null = null;
    try {
      await fh.datasync();
    } catch (err) {
      this._healthy = false;
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
    const wait = Math.max(0, this.lastCheckpointAt + this.opts.checkpointIntervalMs - performance.now());
    this.checkpointTimer = setTimeout(() => {
      this.checkpointTimer = null;
      this.enqueue(async () => {
        this.checkpointDue = false;
        if (this.closed || this.headType === 'checkpoint') return;
        if (performance.now() - this.lastCheckpointAt < this.opts.checkpointIntervalMs) {
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
    if (this.checkpointTimer) clearTimeout(this.checkpointTimer);
    if (this.syncTimer) clearTimeout(this.syncTimer);
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
