// Evidence for the ledger, for one association: the SHA-256 of every C-STORE data set as relayed, the
// transfers in flight, and the Storage Commitment reports that confirm instances (PS3.4 J.3.3).
//
// An instance is recorded once BOTH its response has been relayed (or the association ended without
// one) AND its data set has passed whole (or the association ended first): so the record always covers
// exactly the bytes relayed for it, never the part relayed so far when an archive answers early.

import type { Direction, ProxyEvents, QueryIdentifier, TlsSessionInfo } from '../observe/events.js';
import type { InstanceEvidence, LedgerSink } from '../integrity/types.js';
import type { HashStream, StreamHasher } from '../integrity/hasher.js';
import { CommandField, hasDataSet, statusClass, type CommandSet } from '../dimse/command.js';
import { parseCommitmentDataSet, type CommitmentResult } from '../dicom/commitment.js';
import { DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, trimUid } from '../dicom/dataset.js';
import {
  DataSetPrefixReader,
  inflatePrefix,
  PREFIX_BUDGET,
  readSummary,
  UNKNOWN_SUMMARY,
  type DataSetSummary,
} from '../dicom/prefix.js';
import type { ChunkLease } from './outbound.js';

export interface LedgerBinding {
  sink: LedgerSink;
  onFailure: 'abort' | 'continue';
  /** Computes the data-set digests (on the relay thread: see integrity/hasher.ts). */
  hasher: StreamHasher;
}

/** What a record says about the association, read when the record is made. */
export interface RecordContext {
  callingAeTitle: string;
  calledAeTitle: string;
  upstreamAeTitle: string | null;
  peerAddress: string;
  archiveAddress: string;
  tls: TlsSessionInfo | null;
}

export interface EvidenceHost {
  readonly id: string;
  readonly events: ProxyEvents;
  readonly ledger: LedgerBinding | null;
  trackRecord(done: Promise<void>): void;
  recordContext(): RecordContext;
  /** The read buffer being scanned now (its bytes may be queued for hashing; see ChunkLease). */
  currentLease(): ChunkLease | null;
  /** A record could not be written. */
  ledgerFailed(err: unknown): void;
  /** The record of the transfer under `key` has been handed to the OS (may be called more than once). */
  recordWritten(key: number): void;
}

export interface Transfer {
  /** messageKey of its request. */
  key: number;
  direction: Direction;
  messageId: number;
  sopClassUid: string;
  sopInstanceUid: string;
  transferSyntaxUid: string;
  bytes: number;
  /** SHA-256 over the data PDV values as they pass (only when a ledger is configured). */
  hash: HashStream | null;
  /** Reads Patient and Study from the data set's first bytes as they pass (dicom/prefix.ts). */
  prefix: DataSetPrefixReader;
  moveOriginatorAeTitle: string | null;
  moveOriginatorMessageId: number | null;
  /** The last data fragment has been relayed. */
  complete: boolean;
  /** The final response's status once relayed; undefined while none has been. */
  status: number | undefined;
}

/** The data set of a Storage Commitment N-EVENT-REPORT being collected (small; bounded). */
interface CommitmentCapture {
  transferSyntaxUid: string;
  chunks: Buffer[];
  bytes: number;
  overflow: boolean;
}

/** Storage Commitment Push Model SOP Class (PS3.4 J.3). */
export const STORAGE_COMMITMENT_SOP_CLASS = '1.2.840.10008.1.20.1';
/** Largest N-EVENT-REPORT data set kept for the ledger's commitment records. */
const MAX_COMMITMENT_DATASET = 16 * 1024 * 1024;
/** Relayed data bytes that may wait for the check phase to be hashed (see scheduleHashes). */
const HASH_BACKLOG = 1024 * 1024;
/** Most bytes of a C-FIND identifier kept for the audit trail's Query message (PS3.15 A.5.3.10). */
export const MAX_QUERY_IDENTIFIER = 4096;
/** C-FIND identifiers kept at once, waiting for their final response. */
const MAX_QUERIES_KEPT = 64;

/** What reads relayed data bytes after they were written: a digest, or the data set prefix reader. */
interface DataSink {
  update(buf: Buffer, start: number, end: number): void;
}

/** Requests whose identifier (data set) is kept: C-FIND, C-MOVE, C-GET. */
const IDENTIFIER_COMMANDS: ReadonlySet<number> = new Set([
  CommandField.CFindRq,
  CommandField.CMoveRq,
  CommandField.CGetRq,
]);

interface QueryCapture {
  key: number;
  cmd: CommandSet;
  direction: Direction;
  transferSyntaxUid: string;
  chunks: Buffer[];
  bytes: number;
  total: number;
}

export class Evidence {
  /** Transfers by message key (direction of the request, Message ID), until recorded. */
  private readonly transfers = new Map<number, Transfer>();
  /** The transfer whose data set streams now in each direction [0 = from down, 1 = from up]. */
  private readonly current: [Transfer | null, Transfer | null] = [null, null];
  private readonly commitCapture: [CommitmentCapture | null, CommitmentCapture | null] = [null, null];
  private readonly queryCapture: [QueryCapture | null, QueryCapture | null] = [null, null];
  /** Identifiers of C-FIND requests whose data set passed, until their final response (bounded). */
  private readonly queries = new Map<number, QueryIdentifier>();
  /** Instances whose data set passed whole. */
  instances = 0;

  constructor(private readonly host: EvidenceHost) {}

  // ---------------------------------------------------------------- hashing off the critical path
  //
  // (The data set prefix reader is fed through the same queue: it reads what was relayed, never holds it.)
  //
  // With a ledger every data byte is hashed, but only once the write that relays it has reached the
  // kernel. A socket write is not always sent at once: while the previous write to a TLS socket is
  // completing (Node completes TLS writes in an immediate), further writes wait in the stream's buffer.
  // So scanning queues flat (hash, buffer, start, end) entries (no allocation per chunk; read buffers
  // are never reused, so the bytes cannot change) and a setImmediate hashes them — after the reads of
  // this loop turn have been forwarded and the waiting writes flushed. The queue is bounded: beyond
  // HASH_BACKLOG bytes it is hashed at once. A digest hashes what is queued first (record).

  private readonly hashQueue: Array<DataSink | Buffer | number> = [];
  /** Read buffers with bytes waiting in hashQueue (released once hashed). */
  private readonly hashLeases: ChunkLease[] = [];
  private hashBacklog = 0;
  private hashScheduled = false;
  private readonly hashTick = (): void => {
    this.hashScheduled = false;
    this.drainHashes();
  };

  get hashesQueued(): boolean {
    return this.hashQueue.length > 0;
  }

  private hashLater(hash: DataSink, buf: Buffer, start: number, end: number): void {
    this.hashQueue.push(hash, buf, start, end);
    this.hashBacklog += end - start;
    const lease = this.host.currentLease();
    if (lease !== null && !lease.hashPending && buf.buffer === lease.chunk.buffer) {
      lease.hashPending = true;
      lease.acquire();
      this.hashLeases.push(lease);
    }
  }

  /** After writes and reads: hash the queue in this loop turn's check phase, or now if it is too long. */
  scheduleHashes(): void {
    if (this.hashBacklog > HASH_BACKLOG) this.drainHashes();
    else if (!this.hashScheduled) {
      this.hashScheduled = true;
      setImmediate(this.hashTick);
    }
  }

  private drainHashes(): void {
    const q = this.hashQueue;
    for (let i = 0; i < q.length; i += 4) {
      (q[i] as DataSink).update(q[i + 1] as Buffer, q[i + 2] as number, q[i + 3] as number);
    }
    q.length = 0;
    this.hashBacklog = 0;
    const leases = this.hashLeases;
    for (let i = 0; i < leases.length; i++) {
      const lease = leases[i] as ChunkLease;
      lease.hashPending = false;
      lease.release();
    }
    leases.length = 0;
  }

  // ---------------------------------------------------------------- transfers

  /** A request passed in direction dir: a C-STORE starts a transfer, a commitment report a capture. */
  request(dir: 0 | 1, key: number, direction: Direction, cmd: CommandSet, transferSyntaxUid: string): void {
    if (cmd.commandField === 0x0001) {
      const t: Transfer = {
        key,
        direction,
        messageId: cmd.messageId ?? 0,
        sopClassUid: cmd.affectedSopClassUid ?? '',
        sopInstanceUid: cmd.affectedSopInstanceUid ?? '',
        transferSyntaxUid,
        bytes: 0,
        hash: this.host.ledger ? this.host.ledger.hasher.begin() : null,
        prefix: new DataSetPrefixReader(transferSyntaxUid),
        moveOriginatorAeTitle: cmd.moveOriginatorAeTitle ?? null,
        moveOriginatorMessageId: cmd.moveOriginatorMessageId ?? null,
        complete: false,
        status: undefined,
      };
      this.transfers.set(key, t);
      this.current[dir] = t;
    } else if (
      cmd.commandField === 0x0100 &&
      cmd.affectedSopClassUid === STORAGE_COMMITMENT_SOP_CLASS &&
      (cmd.eventTypeId === 1 || cmd.eventTypeId === 2) &&
      this.host.ledger?.sink.appendCommitted
    ) {
      // PS3.4 J.3.3: the archive reports the outcome of a commitment request (1 = all committed,
      // 2 = failures exist); the instances it lists as committed get `committed` ledger records.
      this.commitCapture[dir] = { transferSyntaxUid, chunks: [], bytes: 0, overflow: false };
    } else if (IDENTIFIER_COMMANDS.has(cmd.commandField) && hasDataSet(cmd)) {
      // The identifier of a C-FIND is what the Query audit message carries (PS3.15 A.5.3.10); that of a
      // C-MOVE / C-GET names the patient and study the Begin Transferring message is about (A.5.3.3).
      this.queryCapture[dir] = { key, cmd, direction, transferSyntaxUid, chunks: [], bytes: 0, total: 0 };
    }
  }

  private identifierComplete(q: QueryCapture): void {
    const bytes = Buffer.concat(q.chunks, q.bytes);
    if (q.cmd.commandField === CommandField.CFindRq) {
      // Bounded: a modality has at most its async window of C-FINDs outstanding, each taken at its end.
      if (this.queries.size < MAX_QUERIES_KEPT) {
        this.queries.set(q.key, {
          identifier: bytes.toString('base64'),
          transferSyntaxUid: q.transferSyntaxUid,
          truncated: q.total > q.bytes,
        });
      }
      return;
    }
    const inflated =
      trimUid(q.transferSyntaxUid) === DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN
        ? inflatePrefix(bytes, PREFIX_BUDGET)
        : bytes;
    this.host.events.emit('retrieve-started', {
      id: this.host.id,
      direction: q.direction,
      command: q.cmd.commandField === CommandField.CMoveRq ? 'C-MOVE' : 'C-GET',
      sopClassUid: q.cmd.affectedSopClassUid ?? null,
      moveDestination: q.cmd.moveDestination ?? null,
      dataset:
        inflated === null
          ? UNKNOWN_SUMMARY
          : readSummary(inflated, q.transferSyntaxUid, q.total === q.bytes).summary,
    });
  }

  /** The captured identifier of the C-FIND request under `key` (taken once, when it completes). */
  takeQuery(key: number): QueryIdentifier | null {
    const q = this.queries.get(key);
    if (q === undefined) return null;
    this.queries.delete(key);
    return q;
  }

  /** Data PDV value bytes [start, end) of buf, relayed in direction dir. */
  data(dir: 0 | 1, buf: Buffer, start: number, end: number): void {
    const t = this.current[dir];
    if (t) {
      t.bytes += end - start;
      if (t.hash) this.hashLater(t.hash, buf, start, end);
      if (!t.prefix.done) this.hashLater(t.prefix, buf, start, end);
    } else if (this.commitCapture[dir]) this.capture(dir, buf, start, end);
    else {
      const q = this.queryCapture[dir];
      if (q) {
        q.total += end - start;
        const take = Math.min(end - start, MAX_QUERY_IDENTIFIER - q.bytes);
        if (take > 0) {
          q.chunks.push(Buffer.from(buf.subarray(start, start + take))); // a copy: the bytes go out unchanged
          q.bytes += take;
        }
      }
    }
  }

  /** The transfer whose data set is streaming in direction dir, if it is the one for `key`. */
  incomplete(key: number): Transfer | null {
    const t = this.transfers.get(key);
    return t && !t.complete ? t : null;
  }

  /** The last data fragment of a message has passed in direction dir. */
  dataSetComplete(dir: 0 | 1): void {
    const q = this.queryCapture[dir];
    if (q) {
      this.queryCapture[dir] = null;
      this.identifierComplete(q);
    }
    const c = this.commitCapture[dir];
    if (c) {
      this.commitCapture[dir] = null;
      this.recordCommitment(c);
    }
    const t = this.current[dir];
    if (!t) return;
    this.current[dir] = null;
    t.complete = true;
    this.instances++;
    if (t.status !== undefined) this.recordKey(t);
  }

  /** The final response for the request under `key` has been relayed with `status`. */
  responded(key: number, status: number): void {
    const t = this.transfers.get(key);
    if (!t) return;
    t.status = status;
    if (t.complete) this.recordKey(t);
  }

  /** The association ended: every transfer not yet recorded is, with what passed and no status. */
  end(): void {
    for (const t of this.transfers.values()) this.record(t, t.status ?? null);
    this.transfers.clear();
    this.current[0] = this.current[1] = null;
    this.queryCapture[0] = this.queryCapture[1] = null;
    this.queries.clear();
  }

  private recordKey(t: Transfer): void {
    this.transfers.delete(t.key);
    this.record(t, t.status ?? null);
  }

  /** True while a transfer is known under `key` (not yet recorded). */
  tracks(key: number): boolean {
    return this.transfers.has(key);
  }

  /**
   * Report one transferred instance (event) and, with a ledger, append its evidence. Called when its
   * response has been relayed and its data set passed, or with status null when the association ended
   * without a response.
   */
  private record(t: Transfer, status: number | null): void {
    const ledger = this.host.ledger;
    // A data set cut short still gets the digest of what passed: the ledger is the truth of what happened.
    this.drainHashes();
    const dataset = t.prefix.summary();
    if (!ledger) {
      this.emitInstance(t, status, null, dataset);
      return;
    }
    const digest = (t.hash ?? ledger.hasher.begin()).digest();
    t.hash = null;
    const ctx = this.host.recordContext();
    const time = new Date().toISOString();
    const written = digest.then((sha256) => {
      this.emitInstance(t, status, sha256, dataset);
      const evidence: InstanceEvidence = {
        time,
        association: this.host.id,
        direction: t.direction,
        callingAeTitle: ctx.callingAeTitle,
        calledAeTitle: ctx.calledAeTitle,
        upstreamAeTitle: ctx.upstreamAeTitle,
        peerAddress: ctx.peerAddress,
        archiveAddress: ctx.archiveAddress,
        archiveCertSha256: ctx.tls?.peerFingerprint256?.replace(/:/g, '').toLowerCase() ?? null,
        clientCertSha256: null, // the modality / receiver leg is plaintext
        sopClassUid: t.sopClassUid,
        sopInstanceUid: t.sopInstanceUid,
        studyInstanceUid: dataset.studyInstanceUid,
        transferSyntaxUid: t.transferSyntaxUid,
        bytes: t.bytes,
        sha256,
        status,
        outcome: status === null ? 'no response: aborted' : statusClass(status),
        moveOriginatorAeTitle: t.moveOriginatorAeTitle,
        moveOriginatorMessageId: t.moveOriginatorMessageId,
      };
      const key = t.key;
      return ledger.sink
        .append(evidence, () => this.host.recordWritten(key))
        .then(() => {
          this.host.recordWritten(key);
        });
    });
    this.host.trackRecord(written.catch((err: unknown) => this.host.ledgerFailed(err)));
  }

  private emitInstance(
    t: Transfer,
    status: number | null,
    sha256: string | null,
    dataset: DataSetSummary,
  ): void {
    this.host.events.emit('instance', {
      id: this.host.id,
      direction: t.direction,
      messageId: t.messageId,
      sopClassUid: t.sopClassUid,
      sopInstanceUid: t.sopInstanceUid,
      transferSyntaxUid: t.transferSyntaxUid,
      bytes: t.bytes,
      sha256,
      status,
      dataset,
    });
  }

  // ---------------------------------------------------------------- storage commitment

  private capture(dir: 0 | 1, buf: Buffer, start: number, end: number): void {
    const c = this.commitCapture[dir] as CommitmentCapture;
    if (c.overflow) return;
    c.bytes += end - start;
    if (c.bytes > MAX_COMMITMENT_DATASET) {
      c.overflow = true;
      c.chunks = [];
      return;
    }
    c.chunks.push(Buffer.from(buf.subarray(start, end))); // a copy: the bytes also go out unchanged
  }

  /** The N-EVENT-REPORT data set is complete: one `committed` ledger record per committed instance. */
  private recordCommitment(c: CommitmentCapture): void {
    const sink = this.host.ledger?.sink;
    if (!sink?.appendCommitted) return;
    let result: CommitmentResult;
    try {
      if (c.overflow) throw new Error(`data set larger than ${MAX_COMMITMENT_DATASET} bytes`);
      result = parseCommitmentDataSet(c.chunks, c.transferSyntaxUid);
    } catch (err) {
      // The report is relayed regardless; the ledger just cannot say what it confirmed.
      this.host.events.emit('commitment', {
        id: this.host.id,
        transactionUid: null,
        committed: 0,
        failed: 0,
        error: (err as Error).message,
      });
      return;
    }
    this.host.events.emit('commitment', {
      id: this.host.id,
      transactionUid: result.transactionUid,
      committed: result.committed.length,
      failed: result.failed.length,
      error: null,
    });
    for (const item of result.committed) {
      const written = sink.appendCommitted({
        sopClassUid: item.sopClassUid,
        sopInstanceUid: item.sopInstanceUid,
        transactionUid: result.transactionUid ?? '',
      });
      this.host.trackRecord(written.catch((err: unknown) => this.host.ledgerFailed(err)));
    }
  }
}
