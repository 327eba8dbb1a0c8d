// One association = one downstream socket + one upstream socket. On the forward path the downstream is a
// modality (plaintext) and the upstream the archive (mutual TLS); on the return path the downstream is
// the archive calling in over mutual TLS (C-MOVE sub-operations, storage commitment reports) and the
// upstream a receiver on the modality segment (plaintext). The code says "modality" and "archive" for
// the forward path's roles; on the return path read "archive (caller)" and "receiver". The states follow PS3.8 9.2 (Sta2 awaiting A-ASSOCIATE-RQ, Sta5 awaiting A-ASSOCIATE-AC,
// Sta6 established, Sta7 awaiting release response, Sta13 awaiting transport close), seen from the
// proxy sitting in the middle: it is the acceptor toward the modality and the requestor toward the archive.

import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { randomUUID } from 'node:crypto';
import {
  AbortReason,
  AbortSource,
  DICOM_APPLICATION_CONTEXT,
  PDU_HEADER_LENGTH,
  PduType,
  PresentationContextResult,
  RejectReason,
  RejectResult,
  RejectSource,
} from '../pdu/constants.js';
import { PduError } from '../pdu/errors.js';
import { PduFramer } from '../pdu/framer.js';
import {
  aeTitleField,
  aeTitleText,
  decodePdu,
  encodeAbort,
  encodeAssociateRj,
  encodePdu,
  maxLengthOf,
  presentationContextsAc,
  presentationContextsRq,
  roleSelections,
  uidText,
  withMaxLength,
} from '../pdu/codec.js';
import type { AssociateItem, AssociatePdu, PDataPdu, Pdv, PresentationContextRq } from '../pdu/types.js';
import { MessageAssembler, MessageSequenceError } from '../dimse/assembler.js';
import {
  CommandField,
  Status,
  commandName,
  encodeRefusalResponse,
  isResponse,
  statusClass,
  type CommandSet,
} from '../dimse/command.js';
import type { AdmitDecision, PeerPolicy } from '../policy/policy.js';
import type { RouteConfig } from '../config/types.js';
import { PDataScanner, UnexpectedPduError, type ScannerSink } from './scanner.js';
import { ChunkLease, Outbound, RELAY_BUFFER_FLOOR, type RelayBudget } from './outbound.js';
import {
  connectPlain,
  connectTimings,
  connectUpstream,
  peerCertificateSummary,
  UpstreamConnectError,
  type UpstreamTlsContext,
} from '../tls/upstream.js';
import type { CertificateIdentities } from '../tls/identity.js';
import type {
  AssociationOutcome,
  Direction,
  ProxyEvents,
  RejectSpec,
  TlsSessionInfo,
} from '../observe/events.js';
import type { RuntimeSnapshot } from '../runtime/snapshot.js';
import type { InstanceEvidence, LedgerSink } from '../integrity/types.js';
import type { HashStream, StreamHasher } from '../integrity/hasher.js';
import { parseCommitmentDataSet, type CommitmentResult } from '../dicom/commitment.js';

/** Largest A-ASSOCIATE-RQ/AC accepted (PS3.8 puts no limit on them; a real one is a few tens of KB). */
export const MAX_ASSOCIATE_PDU_LENGTH = 512 * 1024;

type State = 'Sta2' | 'awaiting-upstream' | 'Sta5' | 'Sta6' | 'Sta7' | 'Sta13';

/** Which listener the association came in on. */
export type ListenerKind = 'forward' | 'return';

/** Where an admitted association is relayed to: an archive (mutual TLS) or a receiver (plaintext). */
export interface RelayTarget {
  /** Upstream name (forward) or destination peer AE title (return). */
  name: string;
  host: string;
  port: number;
  /** Called AE title presented to the target. */
  aeTitle: string;
  /** When set, replaces the caller's calling AE title toward the target. */
  callingAeTitle: string | null;
  connectTimeoutMs: number;
  /** null = plaintext. */
  tls: UpstreamTlsContext | null;
}

/** The downstream leg's TLS facts (return listener): the caller's verified certificate. */
export interface DownstreamTls {
  identities: CertificateIdentities | null;
  session: TlsSessionInfo;
}

export interface AssociationOptions {
  listener?: ListenerKind;
  downTls?: DownstreamTls | null;
}

const DIRECTIONS: Record<ListenerKind, [Direction, Direction]> = {
  forward: ['modality-to-archive', 'archive-to-modality'],
  return: ['archive-to-destination', 'destination-to-archive'],
};

export interface LedgerBinding {
  sink: LedgerSink;
  onFailure: 'abort' | 'continue';
  /** Computes the data-set digests (on the relay thread: see integrity/hasher.ts). */
  hasher: StreamHasher;
}

export interface AssociationHost {
  readonly events: ProxyEvents;
  /** The integrity ledger, when configured: every C-STORE is hashed and recorded. */
  readonly ledger: LedgerBinding | null;
  /** Counts of live admitted associations, for the policy's limits. */
  activeTotal(): number;
  activeForPeer(aeTitle: string): number;
  admitted(assoc: Association, peerAeTitle: string): void;
  /** Bytes queued toward slower sockets over all associations (limits.relayBufferTotal). */
  readonly relayBudget?: RelayBudget;
  /** A ledger record in progress: shutdown waits for it before the ledger closes. */
  trackRecord(done: Promise<void>): void;
  finished(assoc: Association): void;
}

interface AcceptedContext {
  abstractSyntax: string;
  transferSyntax: string;
}

interface PendingRequest {
  command: CommandSet;
  startedAt: number;
}

interface Transfer {
  direction: Direction;
  messageId: number;
  sopClassUid: string;
  sopInstanceUid: string;
  transferSyntaxUid: string;
  bytes: number;
  /** SHA-256 over the data PDV values as they pass (only when a ledger is configured). */
  hash: HashStream | null;
  moveOriginatorAeTitle: string | null;
  moveOriginatorMessageId: number | null;
}

/** The data set of a Storage Commitment N-EVENT-REPORT being collected (small; bounded). */
interface CommitmentCapture {
  transferSyntaxUid: string;
  chunks: Buffer[];
  bytes: number;
  overflow: boolean;
}

/** Storage Commitment Push Model SOP Class (PS3.4 J.3). */
const STORAGE_COMMITMENT_SOP_CLASS = '1.2.840.10008.1.20.1';
/** Largest N-EVENT-REPORT data set kept for the ledger's commitment records. */
const MAX_COMMITMENT_DATASET = 16 * 1024 * 1024;

interface DropState {
  request: CommandSet;
  contextId: number;
  refusal: Buffer;
}

const PDV_HEADER = 6;

/** Relayed data bytes that may wait for the check phase to be hashed (see scheduleHashes). */
const HASH_BACKLOG = 1024 * 1024;

/** Map key of a request: Message IDs are US (PS3.7 E.1), unique per direction while outstanding. */
function messageKey(dir: 0 | 1, messageId: number): number {
  return dir * 0x10000 + messageId;
}

function pdataPdu(contextId: number, command: Buffer): Buffer {
  // PS3.8 9.3.5 / Annex E: one command PDV, last fragment (control header bits 0 and 1 set).
  return encodePdu({
    type: PduType.PDataTf,
    pdvs: [{ contextId, command: true, last: true, value: command }],
  });
}

export class Association {
  readonly id = randomUUID();
  private state: State = 'Sta2';
  private readonly startedAt = Date.now();
  private readonly framer = new PduFramer({ maxPDataLength: 0, maxOtherLength: MAX_ASSOCIATE_PDU_LENGTH });
  private upstreamSocket: Socket | null = null;
  private upFramer: PduFramer | null = null;
  private rq: AssociatePdu | null = null;
  private peer: PeerPolicy | null = null;
  private route: RouteConfig | null = null;
  private upstream: RelayTarget | null = null;
  private refusedContexts: PresentationContextRq[] = [];
  private readonly accepted = new Map<number, AcceptedContext>();
  private downScanner: PDataScanner | null = null; // bytes from modality -> archive
  private upScanner: PDataScanner | null = null; // bytes from archive -> modality
  private readonly downAsm = new MessageAssembler();
  private readonly upAsm = new MessageAssembler();
  /** Requests awaiting their final response, by messageKey(direction of the request, Message ID). */
  private readonly pending = new Map<number, PendingRequest>();
  private readonly invokeCache = new Map<number, boolean>();
  private readonly transfers = new Map<number, Transfer>();
  private currentTransfer: [Transfer | null, Transfer | null] = [null, null]; // [down, up]
  private commitCapture: [CommitmentCapture | null, CommitmentCapture | null] = [null, null];
  private drop: DropState | null = null;
  private splitCommand: PDataPdu[] | null = null; // held PDUs while a modality command is incomplete
  private pendingDownBytes: Buffer[] = [];
  private outcome: AssociationOutcome | null = null;
  private reason: string | null = null;
  private reject: RejectSpec | null = null;
  private tlsInfo: TlsSessionInfo | null = null;
  private bytesFromModality = 0;
  private bytesFromArchive = 0;
  private instances = 0;
  private readonly operations: Record<string, number> = {};
  private timer: NodeJS.Timeout | null = null;
  private activity = 0;
  private idleSeen = -1;
  private closedSockets = 0;
  private finished = false;
  private admittedPeer: string | null = null;
  private downBlocked = false;
  private upBlocked = false;
  /** Writes toward the modality (downstream) and the archive (upstream), with what they hold. */
  private readonly downOut: Outbound;
  private upOut: Outbound | null = null;
  /** What this association has added to the host's RelayBudget, per direction [toward down, toward up]. */
  private readonly charged: [number, number] = [0, 0];

  readonly listener: ListenerKind;
  private readonly downTls: DownstreamTls | null;
  private readonly directions: [Direction, Direction];
  private readonly relayBuffer: number;

  constructor(
    private readonly down: Socket,
    private readonly snapshot: RuntimeSnapshot,
    private readonly host: AssociationHost,
    options: AssociationOptions = {},
  ) {
    this.remoteAddress = down.remoteAddress ?? '';
    this.remotePort = down.remotePort ?? 0;
    this.listener = options.listener ?? 'forward';
    this.downTls = options.downTls ?? null;
    this.directions = DIRECTIONS[this.listener];
    this.relayBuffer = snapshot.config.limits.relayBuffer;
    // The downstream leg is TLS on the return listener (the archive calling in), plaintext otherwise.
    this.downOut = new Outbound(down, this.downTls !== null, () => this.emptied(0));
  }

  readonly remoteAddress: string;
  readonly remotePort: number;

  get peerAeTitle(): string | null {
    return this.admittedPeer;
  }

  /** Live counters (for status, tests and, later, metrics). */
  stats(): {
    state: string;
    bytesFromModality: number;
    bytesFromArchive: number;
    instances: number;
    /** Bytes written toward the archive (upstream) / modality (downstream) that the kernel has not taken. */
    queuedTowardArchive: number;
    queuedTowardModality: number;
  } {
    return {
      state: this.state,
      bytesFromModality: this.bytesFromModality,
      bytesFromArchive: this.bytesFromArchive,
      instances: this.instances,
      queuedTowardArchive: this.upOut?.pending ?? 0,
      queuedTowardModality: this.downOut.pending,
    };
  }

  start(): void {
    const down = this.down;
    down.setNoDelay(true);
    down.on('data', (chunk: Buffer) => this.onDownData(chunk));
    down.on('end', () => this.onDownEnd());
    down.on('error', (err) => this.onSocketError('modality', err));
    down.on('close', () => this.onSocketClosed());
    // PS3.8 9.1.2 ARTIM: the A-ASSOCIATE-RQ must arrive within the association request timeout.
    this.armTimer(this.snapshot.config.limits.associationRequestTimeoutMs, () => {
      this.finish('timeout', 'no A-ASSOCIATE-RQ within the association request timeout');
      down.destroy();
    });
  }

  // ---------------------------------------------------------------- timers

  private armTimer(ms: number, fn: () => void): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(fn, ms);
    this.timer.unref();
  }

  private armIdleTimer(): void {
    const ms = this.snapshot.config.limits.idleTimeoutMs;
    this.idleSeen = this.activity;
    this.armTimer(ms, () => {
      if (this.activity !== this.idleSeen) {
        this.armIdleTimer();
        return;
      }
      this.abortBoth(AbortReason.NotSpecified, AbortReason.NotSpecified, 'timeout', `idle for ${ms} ms`);
    });
  }

  // ---------------------------------------------------------------- writes with backpressure
  //
  // The source socket is paused only when bytes really queue toward the other side (an Outbound's
  // `pending`, not write()'s return value: that is false for any chunk above the socket's high-water
  // mark even when the kernel took it at once, and pausing on it would pause and resume the source for
  // every chunk). An association may hold up to limits.relayBuffer per direction; once all associations
  // together hold more than limits.relayBufferTotal, each is paused as soon as it holds more than one
  // read (RELAY_BUFFER_FLOOR). So memory follows the bytes actually waiting, not the configured caps: an
  // association whose peer keeps up costs nothing here. The source resumes when the queue is empty.
  // Each pause/resume cycle costs CPU: in four A/B runs on the 200 MB bench set, a 1 MiB relayBuffer
  // (the default) used 2–11 % less relay CPU than 256 KB.

  private writeDown(bytes: Buffer): void {
    if (this.state === 'Sta13') return; // closing: nothing more is relayed
    const lease = this.lease;
    if (lease !== null && bytes.buffer === lease.chunk.buffer) {
      lease.acquire();
      this.downOut.write(bytes, lease.written);
    } else this.downOut.write(bytes);
    if (this.hashQueue.length > 0) this.scheduleHashes();
    if (!this.downBlocked && this.mustPause(0, this.downOut.pending)) {
      this.downBlocked = true;
      this.upstreamSocket?.pause();
    }
  }

  private writeUp(bytes: Buffer): void {
    const out = this.upOut;
    if (!out || this.state === 'Sta13') return; // closing: nothing more is relayed
    const lease = this.lease;
    if (lease !== null && bytes.buffer === lease.chunk.buffer) {
      lease.acquire();
      out.write(bytes, lease.written);
    } else out.write(bytes);
    if (this.hashQueue.length > 0) this.scheduleHashes();
    if (!this.upBlocked && this.mustPause(1, out.pending)) {
      this.upBlocked = true;
      this.down.pause();
    }
  }

  /** The read buffer being scanned right now (relayed in place; see ChunkLease). */
  private lease: ChunkLease | null = null;

  /** Scan one read buffer in Sta6; its memory is returned as soon as nothing needs its bytes. */
  private feedInPlace(scanner: PDataScanner, chunk: Buffer): void {
    const lease = new ChunkLease(chunk);
    this.lease = lease;
    try {
      scanner.feed(chunk);
    } catch (err) {
      lease.poison(); // whatever failed may still reference the chunk; the GC will free it
      throw err;
    } finally {
      this.lease = null;
    }
    if (scanner.chunkEscaped) lease.poison();
    lease.release();
  }

  /** Account `pending` bytes toward side `to` (0 = down, 1 = up); true when its source must pause. */
  private mustPause(to: 0 | 1, pending: number): boolean {
    const budget = this.host.relayBudget;
    if (budget) {
      // Only a real backlog counts: up to one read is in transit on every busy socket, and a plaintext
      // socket signals 'drain' (which uncharges) only once it held more than its 64 KiB high-water mark.
      const charge = pending > RELAY_BUFFER_FLOOR ? pending : 0;
      budget.queued += charge - this.charged[to];
      this.charged[to] = charge;
    }
    if (pending > this.relayBuffer) return true;
    return budget !== undefined && pending > RELAY_BUFFER_FLOOR && budget.queued > budget.limit;
  }

  /** Everything written toward side `to` has reached the kernel: resume its source. */
  private emptied(to: 0 | 1): void {
    const budget = this.host.relayBudget;
    if (budget) {
      budget.queued -= this.charged[to];
      this.charged[to] = 0;
    }
    if (to === 0 && this.downBlocked) {
      this.downBlocked = false;
      this.upstreamSocket?.resume();
    } else if (to === 1 && this.upBlocked) {
      this.upBlocked = false;
      this.down.resume();
    }
  }

  // ---------------------------------------------------------------- hashing off the critical path
  //
  // With a ledger every data byte is hashed, but only once the write that relays it has reached the
  // kernel. A socket write is not always sent at once: while the previous write to a TLS socket is
  // completing (Node completes TLS writes in an immediate), further writes wait in the stream's buffer.
  // So scanning queues flat (hash, buffer, start, end) entries (no allocation per chunk; read buffers
  // are never reused, so the bytes cannot change) and a setImmediate hashes them — after the reads of
  // this loop turn have been forwarded and the waiting writes flushed. The queue is bounded: beyond
  // HASH_BACKLOG bytes it is hashed at once. A digest hashes what is queued first (recordInstance).

  private readonly hashQueue: Array<HashStream | Buffer | number> = [];
  /** Read buffers with bytes waiting in hashQueue (released once hashed). */
  private readonly hashLeases: ChunkLease[] = [];
  private hashBacklog = 0;
  private hashScheduled = false;
  private readonly hashTick = (): void => {
    this.hashScheduled = false;
    this.drainHashes();
  };

  private hashLater(hash: HashStream, buf: Buffer, start: number, end: number): void {
    this.hashQueue.push(hash, buf, start, end);
    this.hashBacklog += end - start;
    const lease = this.lease;
    if (lease !== null && !lease.hashPending && buf.buffer === lease.chunk.buffer) {
      lease.hashPending = true;
      lease.acquire();
      this.hashLeases.push(lease);
    }
  }

  /** After writes and reads: hash the queue in this loop turn's check phase, or now if it is too long. */
  private scheduleHashes(): void {
    if (this.hashBacklog > HASH_BACKLOG) this.drainHashes();
    else if (!this.hashScheduled) {
      this.hashScheduled = true;
      setImmediate(this.hashTick);
    }
  }

  private drainHashes(): void {
    const q = this.hashQueue;
    for (let i = 0; i < q.length; i += 4) {
      (q[i] as HashStream).update(q[i + 1] as Buffer, q[i + 2] as number, q[i + 3] as number);
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

  // ---------------------------------------------------------------- Sta2: awaiting A-ASSOCIATE-RQ

  private onDownData(chunk: Buffer): void {
    this.bytesFromModality += chunk.length;
    this.activity++;
    try {
      if (this.state === 'Sta13') return; // rejected, aborted or released: nothing more is relayed
      if (this.downScanner) {
        this.feedInPlace(this.downScanner, chunk);
        if (this.hashQueue.length > 0) this.scheduleHashes();
        return;
      }
      if (this.state !== 'Sta2') {
        this.pendingDownBytes.push(chunk);
        return;
      }
      const frames = this.framer.push(chunk);
      if (frames.length === 0) return;
      const [first, ...rest] = frames;
      const remainder = this.framer.takeRemainder();
      for (const f of rest) this.pendingDownBytes.push(f);
      if (remainder.length > 0) this.pendingDownBytes.push(remainder);
      this.onAssociateRequest(first as Buffer);
    } catch (err) {
      this.onProtocolError('modality', err);
    }
  }

  private onAssociateRequest(raw: Buffer): void {
    const type = raw[0];
    if (type !== PduType.AssociateRq) {
      // PS3.8 9.2 Sta2: any other PDU is unexpected -> A-ABORT.
      throw new UnexpectedPduError(type ?? 0);
    }
    const rq = decodePdu(raw) as AssociatePdu;
    this.rq = rq;
    this.down.pause(); // nothing more is read from the modality until the decision is made
    const calling = aeTitleText(rq.callingAeTitle);
    const called = aeTitleText(rq.calledAeTitle);

    // PS3.8 9.3.2: bit 0 of the protocol version must be set.
    if ((rq.protocolVersion & 0x0001) === 0) {
      this.rejectDown(
        {
          result: RejectResult.Permanent,
          source: RejectSource.ServiceProviderAcse,
          reason: RejectReason.ProtocolVersionNotSupported,
        },
        'protocol-version-not-supported',
        `protocol version 0x${rq.protocolVersion.toString(16)} not supported`,
      );
      return;
    }
    const appContext = rq.items.find((i) => i.kind === 'application-context');
    if (!appContext || uidText(appContext.name) !== DICOM_APPLICATION_CONTEXT) {
      this.rejectDown(
        {
          result: RejectResult.Permanent,
          source: RejectSource.ServiceUser,
          reason: RejectReason.ApplicationContextNotSupported,
        },
        'application-context-not-supported',
        `application context ${appContext ? uidText(appContext.name) : '(none)'} not supported`,
      );
      return;
    }

    const decision = this.admit(calling, called);
    if (!decision.accepted) {
      this.rejectDown(decision.reject, decision.refusal, decision.message);
      return;
    }
    const { allowed, refused } = decision.peer.filterPresentationContexts(
      presentationContextsRq(rq),
      roleSelections(rq),
    );
    if (allowed.length === 0) {
      // Nothing the peer asked for is permitted: there is no service to relay (PS3.8 9.3.4, 1/1/1).
      this.rejectDown(
        {
          result: RejectResult.Permanent,
          source: RejectSource.ServiceUser,
          reason: RejectReason.NoReasonGiven,
        },
        'no-permitted-presentation-context',
        `none of the ${refused.length} proposed presentation contexts is allowed for ${calling}`,
      );
      return;
    }
    this.peer = decision.peer;
    this.route = decision.route;
    this.upstream = decision.target;
    this.admittedPeer = decision.peer.aeTitle;
    const refusedIds = new Set(refused.map((r) => r.id));
    this.refusedContexts = presentationContextsRq(rq).filter((c) => refusedIds.has(c.id));
    this.host.admitted(this, decision.peer.aeTitle);
    this.state = 'awaiting-upstream';
    void this.openUpstream(refusedIds);
  }

  /** The listener's admission decision, as one shape: who the caller is and where to relay to. */
  private admit(
    calling: string,
    called: string,
  ):
    | { accepted: true; peer: PeerPolicy; route: RouteConfig | null; target: RelayTarget }
    | { accepted: false; reject: RejectSpec; refusal: string; message: string } {
    const base = {
      callingAeTitle: calling,
      calledAeTitle: called,
      remoteAddress: this.remoteAddress,
      activeTotal: this.host.activeTotal(),
      activeForPeer: (ae: string) => this.host.activeForPeer(ae),
    };
    if (this.listener === 'return') {
      const d = this.snapshot.policy.admitReturn({ ...base, identities: this.downTls?.identities ?? null });
      if (!d.accepted) return d;
      const r = d.receiver;
      return {
        accepted: true,
        peer: d.caller,
        route: null,
        target: {
          name: d.destination,
          host: r.host,
          port: r.port,
          aeTitle: r.aeTitle,
          callingAeTitle: r.callingAeTitle,
          connectTimeoutMs: r.connectTimeoutMs,
          tls: null,
        },
      };
    }
    const d: AdmitDecision = this.snapshot.policy.admit(base);
    if (!d.accepted) return d;
    const u = d.upstream;
    const tls = this.snapshot.upstreamTls.get(u.name);
    if (!tls) throw new Error(`internal error: no TLS context for upstream ${u.name}`);
    return {
      accepted: true,
      peer: d.peer,
      route: d.route,
      target: {
        name: u.name,
        host: u.host,
        port: u.port,
        aeTitle: u.aeTitle,
        callingAeTitle: u.callingAeTitle,
        connectTimeoutMs: u.connectTimeoutMs,
        tls,
      },
    };
  }

  private rejectDown(reject: RejectSpec, refusal: string, message: string): void {
    const rq = this.rq;
    this.host.events.emit('association-refused', {
      id: this.id,
      remoteAddress: this.remoteAddress,
      callingAeTitle: rq ? aeTitleText(rq.callingAeTitle) : '',
      calledAeTitle: rq ? aeTitleText(rq.calledAeTitle) : '',
      refusal,
      reject,
      message,
      listener: this.listener,
      ...(this.downTls?.identities ? { certificateSubject: this.downTls.identities.subject } : {}),
    });
    this.reject = reject;
    this.state = 'Sta13';
    this.down.resume(); // read (and discard) until the modality closes
    this.finish('rejected', `${refusal}: ${message}`);
    // PS3.8 9.2: after A-ASSOCIATE-RJ the acceptor waits for the requestor to close (ARTIM bounds it).
    this.downOut.end(encodeAssociateRj(reject.result, reject.source, reject.reason));
    this.armTimer(this.snapshot.config.limits.associationRequestTimeoutMs, () => this.destroyAll());
  }

  // ---------------------------------------------------------------- upstream connect, Sta5

  private async openUpstream(refusedIds: Set<number>): Promise<void> {
    const upstream = this.upstream as RelayTarget;
    const rq = this.rq as AssociatePdu;
    let socket: Socket;
    try {
      const where = { host: upstream.host, port: upstream.port, timeoutMs: upstream.connectTimeoutMs };
      socket = upstream.tls
        ? await connectUpstream({ ...where, tls: upstream.tls })
        : await connectPlain(where);
    } catch (err) {
      const reason = err instanceof UpstreamConnectError ? err.reason : 'handshake-failed';
      this.failUpstream(reason, (err as Error).message);
      return;
    }
    if (this.finished || this.down.destroyed) {
      socket.destroy();
      return;
    }
    this.upstreamSocket = socket;
    const t = connectTimings(socket);
    if (t) {
      this.host.events.emit('upstream-connected', {
        id: this.id,
        upstream: upstream.name,
        listener: this.listener,
        tls: upstream.tls !== null,
        ...t,
      });
    }
    if (upstream.tls) {
      const tlsSocket = socket as TLSSocket;
      const peerCert = peerCertificateSummary(tlsSocket);
      const cipher = tlsSocket.getCipher();
      this.tlsInfo = {
        protocol: tlsSocket.getProtocol() ?? null,
        cipher: cipher?.standardName ?? cipher?.name ?? null,
        peerSubject: peerCert?.subject ?? null,
        peerFingerprint256: peerCert?.fingerprint256 ?? null,
      };
    } else {
      // Return path: the TLS session is the archive's, on the downstream leg.
      this.tlsInfo = this.downTls?.session ?? null;
    }
    socket.on('data', (chunk: Buffer) => this.onUpData(chunk));
    socket.on('end', () => this.onUpEnd());
    socket.on('error', (err) => this.onSocketError('archive', err));
    socket.on('close', () => this.onSocketClosed());
    this.upOut = new Outbound(socket, upstream.tls !== null, () => this.emptied(1));

    // Forward the A-ASSOCIATE-RQ: called AE rewritten to the archive's, refused contexts removed,
    // max PDU length capped at the proxy's ceiling (PS3.8 D.1: 0 means unlimited).
    const ceiling = this.snapshot.config.limits.maxPduLength;
    const items: AssociateItem[] = rq.items.filter(
      (i) => !(i.kind === 'presentation-context-rq' && refusedIds.has(i.context.id)),
    );
    const fwd: AssociatePdu = withMaxLength(
      {
        ...rq,
        calledAeTitle: aeTitleField(upstream.aeTitle),
        callingAeTitle: upstream.callingAeTitle ? aeTitleField(upstream.callingAeTitle) : rq.callingAeTitle,
        items,
      },
      capMaxLength(maxLengthOf(rq), ceiling),
    );
    this.upFramer = new PduFramer({ maxPDataLength: ceiling, maxOtherLength: MAX_ASSOCIATE_PDU_LENGTH });
    this.state = 'Sta5';
    this.armTimer(this.snapshot.config.limits.associationRequestTimeoutMs, () => {
      this.failUpstream(
        'timeout',
        'no A-ASSOCIATE-AC/RJ from the archive within the association request timeout',
      );
    });
    this.writeUp(encodePdu(fwd));
  }

  /** The archive cannot be reached or did not answer: A-ASSOCIATE-RJ 2/3/1 so the modality retries. */
  private failUpstream(reason: string, message: string): void {
    if (this.finished) return;
    const upstreamName = this.upstream?.name ?? '';
    this.host.events.emit('upstream-failed', { id: this.id, upstream: upstreamName, reason, message });
    const reject = {
      result: RejectResult.Transient,
      source: RejectSource.ServiceProviderPresentation,
      reason: RejectReason.TemporaryCongestion,
    };
    this.reject = reject;
    this.state = 'Sta13';
    this.down.resume(); // read (and discard) until the modality closes
    this.finish('upstream-failed', `${reason}: ${message}`);
    this.upOut?.end(encodeAbort(AbortSource.ServiceUser, AbortReason.NotSpecified));
    this.downOut.end(encodeAssociateRj(reject.result, reject.source, reject.reason));
    this.armTimer(this.snapshot.config.limits.associationRequestTimeoutMs, () => this.destroyAll());
  }

  private onUpData(chunk: Buffer): void {
    this.bytesFromArchive += chunk.length;
    this.activity++;
    try {
      if (this.state === 'Sta13') return;
      if (this.upScanner) {
        this.feedInPlace(this.upScanner, chunk);
        if (this.hashQueue.length > 0) this.scheduleHashes();
        return;
      }
      if (this.state !== 'Sta5' || !this.upFramer) return;
      const frames = this.upFramer.push(chunk);
      if (frames.length === 0) return;
      const [first, ...rest] = frames;
      const remainder = this.upFramer.takeRemainder();
      this.onAssociateResponse(first as Buffer);
      if (this.upScanner) {
        const scanner: PDataScanner = this.upScanner;
        for (const f of rest) scanner.feed(f);
        if (remainder.length > 0) scanner.feed(remainder);
      }
    } catch (err) {
      this.onProtocolError('archive', err);
    }
  }

  private onAssociateResponse(raw: Buffer): void {
    const type = raw[0];
    const rq = this.rq as AssociatePdu;
    if (type === PduType.AssociateRj) {
      // The archive's own rejection is relayed as is (no AE fields in A-ASSOCIATE-RJ).
      const rj = decodePdu(raw);
      if (rj.type !== PduType.AssociateRj) throw new UnexpectedPduError(type);
      this.reject = { result: rj.result, source: rj.source, reason: rj.reason };
      this.host.events.emit('association-refused', {
        id: this.id,
        remoteAddress: this.remoteAddress,
        callingAeTitle: aeTitleText(rq.callingAeTitle),
        calledAeTitle: aeTitleText(rq.calledAeTitle),
        refusal: this.listener === 'forward' ? 'rejected-by-archive' : 'rejected-by-receiver',
        reject: this.reject,
        message: `${this.listener === 'forward' ? 'archive' : 'receiver'} rejected ${rj.result}/${rj.source}/${rj.reason}`,
        listener: this.listener,
      });
      this.state = 'Sta13';
      this.finish('rejected', `archive rejected the association (${rj.result}/${rj.source}/${rj.reason})`);
      this.downOut.end(raw);
      this.upOut?.end();
      this.armTimer(this.snapshot.config.limits.associationRequestTimeoutMs, () => this.destroyAll());
      return;
    }
    if (type === PduType.Abort) {
      this.state = 'Sta13';
      this.finish('aborted-by-archive', 'archive aborted during association negotiation');
      this.downOut.end(raw);
      this.upOut?.end();
      this.armTimer(this.snapshot.config.limits.associationRequestTimeoutMs, () => this.destroyAll());
      return;
    }
    if (type !== PduType.AssociateAc) throw new UnexpectedPduError(type ?? 0);
    const ac = decodePdu(raw) as AssociatePdu;
    const ceiling = this.snapshot.config.limits.maxPduLength;

    // Accepted contexts, for following messages (PS3.8 9.3.3.2: result 0 = acceptance).
    const proposed = new Map(presentationContextsRq(rq).map((c) => [c.id, c]));
    for (const c of presentationContextsAc(ac)) {
      const p = proposed.get(c.id);
      if (c.result === PresentationContextResult.Acceptance && p) {
        this.accepted.set(c.id, {
          abstractSyntax: uidText(p.abstractSyntax),
          transferSyntax: uidText(c.transferSyntax),
        });
      }
    }

    // Toward the modality: its own called/calling AE fields back (PS3.8 9.3.3.2), the refused contexts
    // answered "abstract syntax not supported" with their original ids, in the order it proposed them.
    const answered = new Map<number, AssociateItem>();
    for (const item of ac.items)
      if (item.kind === 'presentation-context-ac') answered.set(item.context.id, item);
    for (const c of this.refusedContexts) {
      answered.set(c.id, {
        kind: 'presentation-context-ac',
        context: {
          id: c.id,
          result: PresentationContextResult.AbstractSyntaxNotSupported,
          transferSyntax: '',
        },
      });
    }
    const ordered: AssociateItem[] = [];
    for (const c of presentationContextsRq(rq)) {
      const item = answered.get(c.id);
      if (item) ordered.push(item);
    }
    const items: AssociateItem[] = [];
    let placed = false;
    for (const item of ac.items) {
      if (item.kind === 'presentation-context-ac') {
        if (!placed) items.push(...ordered);
        placed = true;
        continue;
      }
      if (item.kind === 'user-information' && !placed) {
        items.push(...ordered);
        placed = true;
      }
      items.push(item);
    }
    if (!placed) items.push(...ordered);
    const back = withMaxLength(
      { ...ac, calledAeTitle: rq.calledAeTitle, callingAeTitle: rq.callingAeTitle, items },
      capMaxLength(maxLengthOf(ac), ceiling),
    );

    // Sta6: streaming from now on.
    this.downScanner = new PDataScanner(this.makeSink(0), ceiling);
    this.upScanner = new PDataScanner(this.makeSink(1), ceiling);
    this.state = 'Sta6';
    this.armIdleTimer();
    this.host.events.emit('association-accepted', {
      id: this.id,
      remoteAddress: this.remoteAddress,
      callingAeTitle: aeTitleText(rq.callingAeTitle),
      calledAeTitle: aeTitleText(rq.calledAeTitle),
      upstream: this.upstream?.name ?? '',
      listener: this.listener,
      acceptedContexts: this.accepted.size,
      refusedContexts: this.refusedContexts.length,
      tls: this.tlsInfo as TlsSessionInfo,
    });
    this.writeDown(encodePdu(back));
    const early = this.pendingDownBytes;
    this.pendingDownBytes = [];
    for (const b of early) this.downScanner.feed(b);
    if (!this.upBlocked) this.down.resume();
  }

  // ---------------------------------------------------------------- Sta6: the two streaming directions

  /** The scanner callbacks of one direction: 0 = modality -> archive, 1 = archive -> modality. */
  private makeSink(dir: 0 | 1): ScannerSink {
    return {
      forward: dir === 0 ? (bytes) => this.writeUp(bytes) : (bytes) => this.writeDown(bytes),
      held:
        dir === 0
          ? (pdu, type) => this.heldFromModality(pdu, type)
          : (pdu, type) => this.heldFromArchive(pdu, type),
      dataStart: (contextId, _len, last) => this.dataStart(dir, contextId, last),
      dataBytes: (buf, start, end) => {
        const t = this.currentTransfer[dir];
        if (t) {
          t.bytes += end - start;
          if (t.hash) this.hashLater(t.hash, buf, start, end);
        } else if (this.commitCapture[dir]) this.capture(dir, buf, start, end);
      },
      dataEnd: () => this.dataEnd(dir),
    };
  }

  private streamLast: [boolean, boolean] = [false, false];

  /** A streamed data PDV starts; returns true when its bytes must be dropped (refused message). */
  private dataStart(dir: 0 | 1, contextId: number, last: boolean): boolean {
    this.checkContext(contextId, dir);
    (dir === 0 ? this.downAsm : this.upAsm).data(contextId, last);
    this.streamLast[dir] = last;
    return dir === 0 && this.drop !== null;
  }

  private dataEnd(dir: 0 | 1): void {
    if (!this.streamLast[dir]) return;
    this.dataSetComplete(dir);
  }

  /** The last data fragment of a message has passed in direction dir. */
  private dataSetComplete(dir: 0 | 1): void {
    if (dir === 0 && this.drop) {
      const d = this.drop;
      this.drop = null;
      this.upScanner?.inject(pdataPdu(d.contextId, d.refusal));
      return;
    }
    const c = this.commitCapture[dir];
    if (c) {
      this.commitCapture[dir] = null;
      this.recordCommitment(c);
    }
    const t = this.currentTransfer[dir];
    if (t) {
      this.currentTransfer[dir] = null;
      // Its digest is taken when it is recorded: the bytes of this last chunk are relayed before they are
      // hashed, like every other chunk's.
      this.instances++;
    }
  }

  private checkContext(contextId: number, dir: 0 | 1): AcceptedContext {
    const ctx = this.accepted.get(contextId);
    if (!ctx) {
      throw new MessageSequenceError(
        `PDV on presentation context ${contextId}, which was not accepted (from the ${dir === 0 ? 'modality' : 'archive'})`,
        AbortReason.InvalidPduParameterValue,
      );
    }
    return ctx;
  }

  /** A whole PDU from the modality that needs a decision (commands, multi-PDV, release, abort). */
  private heldFromModality(raw: Buffer, type: number): void {
    if (type !== PduType.PDataTf) {
      this.controlPdu('modality', raw, type);
      return;
    }
    const pdu = decodePdu(raw) as PDataPdu;
    let changed = false;
    const kept: Pdv[] = [];
    for (const pdv of pdu.pdvs) {
      if (this.state === 'Sta13') return;
      const ctx = this.checkContext(pdv.contextId, 0);
      if (pdv.command) {
        const cmd = this.downAsm.command(pdv.contextId, pdv.value, pdv.last);
        if (!pdv.last) {
          // Command split over several PDVs: keep everything from here until it is complete.
          kept.push(pdv);
          continue;
        }
        if (cmd && this.decideRequest(cmd, pdv.contextId, ctx)) {
          kept.push(pdv);
          continue;
        }
        // Refused: drop this command (and the fragments held before it) and its data set.
        changed = true;
        this.discardSplitCommand(kept, pdv.contextId);
        continue;
      }
      this.downAsm.data(pdv.contextId, pdv.last);
      if (this.drop) {
        changed = true;
        if (pdv.last) this.dataSetComplete(0);
        continue;
      }
      const t = this.currentTransfer[0];
      if (t) {
        t.bytes += pdv.value.length;
        if (t.hash) this.hashLater(t.hash, pdv.value, 0, pdv.value.length);
      } else if (this.commitCapture[0]) this.capture(0, pdv.value, 0, pdv.value.length);
      kept.push(pdv);
      if (pdv.last) this.dataSetComplete(0);
    }
    if (this.downAsm.midCommand) {
      // Hold until the command is whole: the policy must see it before any of it reaches the archive.
      (this.splitCommand ??= []).push({ type: PduType.PDataTf, pdvs: kept });
      return;
    }
    if (this.splitCommand) {
      const held = this.splitCommand;
      this.splitCommand = null;
      for (const p of held) if (p.pdvs.length > 0) this.writeUp(encodePdu(p));
      changed = true;
    }
    if (!changed) this.writeUp(raw);
    else if (kept.length > 0) this.writeUp(encodePdu({ type: PduType.PDataTf, pdvs: kept }));
  }

  private discardSplitCommand(kept: Pdv[], contextId: number): void {
    for (let i = kept.length - 1; i >= 0; i--) {
      const k = kept[i] as Pdv;
      if (k.command && k.contextId === contextId) kept.splice(i, 1);
    }
    if (this.splitCommand) {
      for (const p of this.splitCommand)
        p.pdvs = p.pdvs.filter((k) => !(k.command && k.contextId === contextId));
    }
  }

  /**
   * Policy on each request the modality sends. Returns true to forward it. A refused request is answered
   * by the proxy with a failure status (never a success) and nothing of it reaches the archive.
   */
  private decideRequest(cmd: CommandSet, contextId: number, ctx: AcceptedContext): boolean {
    const name = commandName(cmd.commandField);
    if (isResponse(cmd.commandField)) {
      this.onResponse(0, cmd);
      return true;
    }
    this.count(name);
    if (cmd.commandField === CommandField.CCancelRq) return true;
    const ledger = this.host.ledger;
    if (
      cmd.commandField === CommandField.CStoreRq &&
      ledger &&
      !ledger.sink.healthy &&
      ledger.onFailure === 'abort'
    ) {
      // The ledger cannot record right now: relay no instance that would go unrecorded.
      this.host.events.emit('ledger-failed', {
        id: this.id,
        message: 'ledger unhealthy: C-STORE not relayed',
      });
      this.abortBoth(
        AbortReason.NotSpecified,
        AbortReason.NotSpecified,
        'aborted-by-proxy',
        'ledger unavailable',
      );
      return false;
    }
    const peer = this.peer as PeerPolicy;
    let status: number | null = null;
    let reason = '';
    // The accepted contexts are fixed for the association: remember each (context, command) answer.
    const key = contextId * 0x10000 + cmd.commandField;
    let mayInvoke = this.invokeCache.get(key);
    if (mayInvoke === undefined) {
      mayInvoke = peer.mayInvoke(ctx.abstractSyntax, cmd.commandField);
      this.invokeCache.set(key, mayInvoke);
    }
    if (!mayInvoke) {
      status = Status.RefusedNotAuthorized;
      reason = `${name} on ${ctx.abstractSyntax} is not allowed for ${peer.aeTitle}`;
    } else if (cmd.commandField === CommandField.CMoveRq) {
      const dest = cmd.moveDestination ?? '';
      if (!peer.mayMoveTo(dest)) {
        // PS3.4 C.4.2.1.4 / PS3.7 9.1.4.1.9: A801 Refused: Move Destination unknown.
        status = Status.MoveDestinationUnknown;
        reason = `move destination ${dest} is not allowed for ${peer.aeTitle}`;
      }
    }
    if (status === null) {
      this.onRequest(0, cmd, ctx);
      return true;
    }
    this.host.events.emit('dimse-refused', {
      id: this.id,
      callingAeTitle: peer.aeTitle,
      command: name,
      reason,
      status,
      ...(cmd.moveDestination !== undefined ? { moveDestination: cmd.moveDestination } : {}),
    });
    const refusal = encodeRefusalResponse(cmd, status, 'refused by proxy policy');
    if (this.downAsm.expectingData) {
      this.drop = { request: cmd, contextId, refusal }; // answer once its data set has been swallowed
    } else {
      this.upScanner?.inject(pdataPdu(contextId, refusal));
    }
    return false;
  }

  /** A whole PDU from the archive: relayed unchanged; commands are followed for bookkeeping. */
  private heldFromArchive(raw: Buffer, type: number): void {
    if (type !== PduType.PDataTf) {
      this.controlPdu('archive', raw, type);
      return;
    }
    const pdu = decodePdu(raw) as PDataPdu;
    // Nothing here needs a decision: the validated PDU goes out first (a response is on the modality's
    // critical path), the bookkeeping follows. A sequence error found by it still aborts both sides.
    this.writeDown(raw);
    for (const pdv of pdu.pdvs) {
      const ctx = this.checkContext(pdv.contextId, 1);
      if (pdv.command) {
        const cmd = this.upAsm.command(pdv.contextId, pdv.value, pdv.last);
        if (cmd) {
          if (isResponse(cmd.commandField)) this.onResponse(1, cmd);
          else {
            this.count(commandName(cmd.commandField));
            this.onRequest(1, cmd, ctx);
          }
        }
        continue;
      }
      this.upAsm.data(pdv.contextId, pdv.last);
      const t = this.currentTransfer[1];
      if (t) {
        t.bytes += pdv.value.length;
        if (t.hash) this.hashLater(t.hash, pdv.value, 0, pdv.value.length);
      } else if (this.commitCapture[1]) this.capture(1, pdv.value, 0, pdv.value.length);
      if (pdv.last) this.dataSetComplete(1);
    }
  }

  private onRequest(dir: 0 | 1, cmd: CommandSet, ctx: AcceptedContext): void {
    const direction: Direction = this.directions[dir];
    const key = messageKey(dir, cmd.messageId ?? 0);
    this.pending.set(key, { command: cmd, startedAt: performance.now() });
    if (cmd.commandField === CommandField.CStoreRq) {
      const t: Transfer = {
        direction,
        messageId: cmd.messageId ?? 0,
        sopClassUid: cmd.affectedSopClassUid ?? '',
        sopInstanceUid: cmd.affectedSopInstanceUid ?? '',
        transferSyntaxUid: ctx.transferSyntax,
        bytes: 0,
        hash: this.host.ledger ? this.host.ledger.hasher.begin() : null,
        moveOriginatorAeTitle: cmd.moveOriginatorAeTitle ?? null,
        moveOriginatorMessageId: cmd.moveOriginatorMessageId ?? null,
      };
      this.transfers.set(key, t);
      this.currentTransfer[dir] = t;
    } else if (
      cmd.commandField === CommandField.NEventReportRq &&
      cmd.affectedSopClassUid === STORAGE_COMMITMENT_SOP_CLASS &&
      (cmd.eventTypeId === 1 || cmd.eventTypeId === 2) &&
      this.host.ledger?.sink.appendCommitted
    ) {
      // PS3.4 J.3.3: the archive reports the outcome of a commitment request (1 = all committed,
      // 2 = failures exist); the instances it lists as committed get `committed` ledger records.
      this.commitCapture[dir] = {
        transferSyntaxUid: ctx.transferSyntax,
        chunks: [],
        bytes: 0,
        overflow: false,
      };
    }
  }

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
        id: this.id,
        transactionUid: null,
        committed: 0,
        failed: 0,
        error: (err as Error).message,
      });
      return;
    }
    this.host.events.emit('commitment', {
      id: this.id,
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
      this.host.trackRecord(written.catch((err: unknown) => this.onLedgerFailure(err)));
    }
  }

  /** A response travelling in direction dir answers a request that travelled the other way. */
  private onResponse(dir: 0 | 1, cmd: CommandSet): void {
    const reqDir = dir === 0 ? 1 : 0;
    const key = messageKey(reqDir, cmd.messageIdBeingRespondedTo ?? 0);
    const status = cmd.status ?? 0xffff;
    const cls = statusClass(status);
    if (cls === 'pending') return;
    const req = this.pending.get(key);
    this.pending.delete(key);
    const direction: Direction = this.directions[reqDir];
    if (req) {
      this.host.events.emit('dimse-completed', {
        id: this.id,
        direction,
        command: commandName(req.command.commandField),
        sopClassUid: req.command.affectedSopClassUid ?? null,
        status,
        statusClass: cls,
        durationMs: performance.now() - req.startedAt,
      });
    }
    const t = this.transfers.get(key);
    if (t) {
      this.transfers.delete(key);
      this.recordInstance(t, status);
    }
  }

  /**
   * Report one transferred instance (event) and, with a ledger, append its evidence. Called when its
   * C-STORE-RSP has been relayed, or with status null when the association ended without one.
   */
  private recordInstance(t: Transfer, status: number | null): void {
    const ledger = this.host.ledger;
    if (!ledger) {
      this.emitInstance(t, status, null);
      return;
    }
    // A data set cut short still gets the digest of what passed: the ledger is the truth of what happened.
    this.drainHashes();
    const digest = (t.hash ?? ledger.hasher.begin()).digest();
    t.hash = null;
    const rq = this.rq as AssociatePdu;
    const upstream = this.upstream;
    const time = new Date().toISOString();
    const targetAddress = upstream ? `${upstream.host}:${upstream.port}` : '';
    const forward = this.listener === 'forward';
    const written = digest.then((sha256) => {
      this.emitInstance(t, status, sha256);
      const evidence: InstanceEvidence = {
        time,
        association: this.id,
        direction: t.direction,
        callingAeTitle: aeTitleText(rq.callingAeTitle),
        calledAeTitle: aeTitleText(rq.calledAeTitle),
        upstreamAeTitle: upstream?.aeTitle ?? null,
        // Return path: the "peer" is the receiver (destination) and the archive is the caller.
        peerAddress: forward ? this.remoteAddress : targetAddress,
        archiveAddress: forward ? targetAddress : this.remoteAddress,
        archiveCertSha256: this.tlsInfo?.peerFingerprint256?.replace(/:/g, '').toLowerCase() ?? null,
        clientCertSha256: null, // the modality / receiver leg is plaintext
        sopClassUid: t.sopClassUid,
        sopInstanceUid: t.sopInstanceUid,
        transferSyntaxUid: t.transferSyntaxUid,
        bytes: t.bytes,
        sha256,
        status,
        outcome: status === null ? 'no response: aborted' : statusClass(status),
        moveOriginatorAeTitle: t.moveOriginatorAeTitle,
        moveOriginatorMessageId: t.moveOriginatorMessageId,
      };
      return ledger.sink.append(evidence);
    });
    this.host.trackRecord(written.catch((err: unknown) => this.onLedgerFailure(err)));
  }

  private emitInstance(t: Transfer, status: number | null, sha256: string | null): void {
    this.host.events.emit('instance', {
      id: this.id,
      direction: t.direction,
      messageId: t.messageId,
      sopClassUid: t.sopClassUid,
      sopInstanceUid: t.sopInstanceUid,
      transferSyntaxUid: t.transferSyntaxUid,
      bytes: t.bytes,
      sha256,
      status,
    });
  }

  /** A record that cannot be written is an alarm; by default the association stops relaying. */
  private onLedgerFailure(err: unknown): void {
    const ledger = this.host.ledger;
    this.host.events.emit('ledger-failed', { id: this.id, message: (err as Error)?.message ?? String(err) });
    if (ledger?.onFailure === 'abort' && !this.completed) {
      this.abortBoth(
        AbortReason.NotSpecified,
        AbortReason.NotSpecified,
        'aborted-by-proxy',
        'ledger write failed',
      );
    }
  }

  private count(name: string): void {
    this.operations[name] = (this.operations[name] ?? 0) + 1;
  }

  /** A-RELEASE-RQ/RP and A-ABORT in Sta6/Sta7 (PS3.8 9.2): forwarded, state followed. */
  private controlPdu(from: 'modality' | 'archive', raw: Buffer, type: number): void {
    const toArchive = from === 'modality';
    const write = (b: Buffer): void => (toArchive ? this.writeUp(b) : this.writeDown(b));
    switch (type) {
      case PduType.ReleaseRq:
        this.state = 'Sta7';
        write(raw);
        return;
      case PduType.ReleaseRp:
        write(raw);
        this.finish('released', null);
        this.state = 'Sta13';
        // PS3.8 9.2: the requestor closes the transport after A-RELEASE-RP; bound the wait.
        this.armTimer(this.snapshot.config.limits.associationRequestTimeoutMs, () => this.destroyAll());
        return;
      case PduType.Abort: {
        const src = raw[PDU_HEADER_LENGTH + 2] ?? 0;
        const rsn = raw[PDU_HEADER_LENGTH + 3] ?? 0;
        this.finish(
          toArchive ? 'aborted-by-modality' : 'aborted-by-archive',
          `A-ABORT source ${src} reason ${rsn}`,
        );
        write(raw);
        this.state = 'Sta13';
        this.endBoth();
        return;
      }
      default:
        throw new UnexpectedPduError(type);
    }
  }

  // ---------------------------------------------------------------- errors, ends, teardown

  private onProtocolError(side: 'modality' | 'archive', err: unknown): void {
    if (this.finished && this.state === 'Sta13') return;
    const e = err as Error & { code?: string; abortReason?: number };
    const known =
      err instanceof PduError || err instanceof MessageSequenceError || err instanceof UnexpectedPduError;
    const reason = known && typeof e.abortReason === 'number' ? e.abortReason : AbortReason.NotSpecified;
    this.host.events.emit('protocol-error', {
      id: this.id,
      side,
      code: e.code ?? 'INTERNAL',
      message: e.message,
      abortReason: reason,
    });
    if (this.state === 'Sta5' && side === 'archive') {
      this.failUpstream('protocol-error', e.message);
      return;
    }
    // PS3.8 9.3.8: A-ABORT from the service provider (source 2) with the reason, to the side at fault;
    // the other side learns of the abort with reason 0.
    const toModality = side === 'modality' ? reason : AbortReason.NotSpecified;
    const toArchive = side === 'archive' ? reason : AbortReason.NotSpecified;
    this.abortBoth(toModality, toArchive, 'aborted-by-proxy', `${side} protocol error: ${e.message}`);
  }

  /** Provider-initiated abort toward both legs (written only at a PDU boundary), then close both. */
  abortBoth(toModality: number, toArchive: number, outcome: AssociationOutcome, reason: string): void {
    this.finish(outcome, reason);
    const inSta6 = this.downScanner !== null;
    if (!this.down.destroyed && (!inSta6 || this.upScanner?.atBoundary)) {
      this.downOut.write(encodeAbort(AbortSource.ServiceProvider, toModality));
    }
    const up = this.upstreamSocket;
    if (up && !up.destroyed && (!inSta6 || this.downScanner?.atBoundary)) {
      this.upOut?.write(encodeAbort(AbortSource.ServiceProvider, toArchive));
    }
    this.state = 'Sta13';
    this.endBoth();
  }

  private endBoth(): void {
    this.downOut.end();
    this.upOut?.end();
    this.down.resume();
    this.upstreamSocket?.resume();
    this.armTimer(2000, () => this.destroyAll());
  }

  private destroyAll(): void {
    this.down.destroy();
    this.upstreamSocket?.destroy();
  }

  private onDownEnd(): void {
    if (this.state === 'Sta13' || this.outcome === 'released') {
      this.upOut?.end();
      this.downOut.end();
      return;
    }
    // Transport closed by the modality without release or abort: a broken leg aborts the other.
    if (this.upstreamSocket) {
      this.abortBoth(
        AbortReason.NotSpecified,
        AbortReason.NotSpecified,
        'closed',
        'modality closed the connection',
      );
    } else {
      this.finish('closed', 'modality closed the connection before the association was established');
      this.downOut.end();
    }
  }

  private onUpEnd(): void {
    if (this.state === 'Sta13' || this.outcome === 'released') {
      this.downOut.end();
      this.upOut?.end();
      return;
    }
    if (this.state === 'Sta5') {
      this.failUpstream('closed', 'archive closed the connection before answering the A-ASSOCIATE-RQ');
      return;
    }
    this.abortBoth(
      AbortReason.NotSpecified,
      AbortReason.NotSpecified,
      'aborted-by-archive',
      'archive closed the connection',
    );
  }

  private onSocketError(side: 'modality' | 'archive', err: Error): void {
    if (this.state === 'Sta5' && side === 'archive') {
      this.failUpstream('closed', err.message);
      return;
    }
    if (!this.finished) {
      this.finish(
        side === 'modality' ? 'closed' : 'aborted-by-archive',
        `${side} socket error: ${err.message}`,
      );
    }
    this.abortBoth(AbortReason.NotSpecified, AbortReason.NotSpecified, 'closed', `${side} socket error`);
    this.destroyAll();
  }

  private onSocketClosed(): void {
    this.closedSockets++;
    const expected = this.upstreamSocket ? 2 : 1;
    if (this.down.destroyed && (!this.upstreamSocket || this.upstreamSocket.destroyed)) {
      this.complete();
    } else if (this.closedSockets >= expected) {
      this.complete();
    } else if (!this.finished) {
      // One leg closed: the other cannot go on.
      this.abortBoth(AbortReason.NotSpecified, AbortReason.NotSpecified, 'closed', 'a connection closed');
    }
  }

  /** Record the first outcome; the summary is emitted when both sockets are closed. */
  private finish(outcome: AssociationOutcome, reason: string | null): void {
    if (this.outcome === null) {
      this.outcome = outcome;
      this.reason = reason;
    }
    this.finished = true;
  }

  private completed = false;

  private complete(): void {
    if (this.completed) return;
    this.completed = true;
    if (this.timer) clearTimeout(this.timer);
    // Nothing of this association waits in memory any more.
    this.emptied(0);
    this.emptied(1);
    if (this.outcome === null) this.outcome = 'closed';
    // Instances that never got their C-STORE-RSP are reported too: the truth of what happened.
    for (const t of this.transfers.values()) this.recordInstance(t, null);
    this.transfers.clear();
    const rq = this.rq;
    this.host.events.emit('association-closed', {
      id: this.id,
      remoteAddress: this.remoteAddress,
      remotePort: this.remotePort,
      callingAeTitle: rq ? aeTitleText(rq.callingAeTitle) : null,
      calledAeTitle: rq ? aeTitleText(rq.calledAeTitle) : null,
      peer: this.admittedPeer,
      upstream: this.upstream?.name ?? null,
      upstreamAeTitle: this.upstream?.aeTitle ?? null,
      listener: this.listener,
      outcome: this.outcome,
      reason: this.reason,
      reject: this.reject,
      startedAt: new Date(this.startedAt).toISOString(),
      durationMs: Date.now() - this.startedAt,
      bytesFromModality: this.bytesFromModality,
      bytesFromArchive: this.bytesFromArchive,
      instances: this.instances,
      operations: this.operations,
      tls: this.tlsInfo,
    });
    this.host.finished(this);
  }

  /** Used by the server on shutdown. */
  shutdown(): void {
    if (this.completed) return;
    if (this.state === 'Sta6' || this.state === 'Sta7') {
      this.abortBoth(
        AbortReason.NotSpecified,
        AbortReason.NotSpecified,
        'aborted-by-proxy',
        'proxy shutting down',
      );
    } else {
      this.finish('aborted-by-proxy', 'proxy shutting down');
      this.destroyAll();
    }
  }
}

function capMaxLength(requested: number | undefined, ceiling: number): number {
  if (requested === undefined || requested === 0) return ceiling;
  return Math.min(requested, ceiling);
}

export const __test = { capMaxLength, PDV_HEADER };
