// One association = one downstream socket + one upstream socket. On the forward path the downstream is a
// modality (plaintext) and the upstream the archive (mutual TLS); on the return path the downstream is
// the archive calling in over mutual TLS (C-MOVE sub-operations, storage commitment reports) and the
// upstream a receiver on the modality segment (plaintext). The code says "modality" and "archive" for
// the forward path's roles; on the return path read "archive (caller)" and "receiver".
//
// Each leg runs PS3.8's state machine (fsm.ts, Table 9-10): the proxy is the ACCEPTOR toward the modality
// (leg 0, "down") and the REQUESTOR toward the archive (leg 1, "up"). Every PDU, timer and transport
// event of a leg goes through `event()`, which takes the table's transition and performs its action in
// one switch (`perform`); what a leg indicates becomes a primitive on the other leg (the relay's pairing
// of the two machines). The streamed P-DATA of an established association is the one exception to
// "every PDU through event()": its bytes stay on the hot path (scanner.ts), and only the leg's state is
// checked per PDU (receivesData / sendsData, the DT-/AR-6/AR-7 cells).
//
// This module keeps sockets, states, timers and teardown. Negotiation is negotiation.ts (pure), the
// per-message policy requests.ts, the ledger's evidence evidence.ts.

import { clientEndpoint } from '../util/endpoint.js';
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { randomUUID } from 'node:crypto';
import {
  AbortReason,
  AbortSource,
  DICOM_APPLICATION_CONTEXT,
  PDU_HEADER_LENGTH,
  PduType,
  RejectReason,
  RejectResult,
  RejectSource,
} from '../pdu/constants.js';
import { PduError } from '../pdu/errors.js';
import { PduFramer } from '../pdu/framer.js';
import {
  aeTitleText,
  decodePdu,
  encodeAbort,
  encodeAssociateRj,
  encodePdu,
  encodeReleaseRp,
  presentationContextsRq,
  roleSelections,
  uidText,
} from '../pdu/codec.js';
import type { AssociatePdu, PDataPdu, Pdv, PresentationContextRq } from '../pdu/types.js';
import { MessageAssembler, MessageSequenceError } from '../dimse/assembler.js';
import {
  CommandError,
  CommandField,
  commandName,
  encodeRefusalResponse,
  isResponse,
  statusClass,
  type CommandSet,
} from '../dimse/command.js';
import type { PeerPolicy } from '../policy/policy.js';
import type { RouteConfig } from '../config/types.js';
import { PDataScanner, UnexpectedPduError, type ScannerSink } from './scanner.js';
import { ChunkLease, Outbound, RELAY_BUFFER_FLOOR, type RelayBudget } from './outbound.js';
import {
  classifyUpstreamSocketError,
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
  AssociationParties,
  LiveAssociation,
  ProxyEvents,
  QueryIdentifier,
  RejectSpec,
  TlsSessionInfo,
} from '../observe/events.js';
import type { RuntimeSnapshot } from '../runtime/snapshot.js';
import { systemClock, type Clock, type TimerHandle } from '../util/clock.js';
import type {
  PolicyRefusal,
  ProtocolErrorCode,
  ProxyRefusal,
  UpstreamFailure,
} from '../vocabulary/outcomes.js';
import { pduEvent, UL_EVENTS, UlMachine, type Step, type UlEvent } from './fsm.js';
import { answerRequestor, checkPresentationContexts, forwardRequest, maxLengths } from './negotiation.js';
import { Evidence, type LedgerBinding, type RecordContext } from './evidence.js';
import { RequestPolicy } from '../policy/requests.js';

export type { LedgerBinding } from './evidence.js';

/** Largest A-ASSOCIATE-RQ/AC accepted (PS3.8 puts no limit on them; a real one is a few tens of KB). */
export const MAX_ASSOCIATE_PDU_LENGTH = 512 * 1024;

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
  /** Time source of the association's timers (ARTIM, connect, idle); the system clock by default. */
  clock?: Clock;
}

const DIRECTIONS: Record<ListenerKind, [Direction, Direction]> = {
  forward: ['modality-to-archive', 'archive-to-modality'],
  return: ['archive-to-destination', 'destination-to-archive'],
};

export interface AssociationHost {
  readonly events: ProxyEvents;
  /** The integrity ledger, when configured: every C-STORE is hashed and recorded. */
  readonly ledger: LedgerBinding | null;
  /** Counts of live admitted associations, for the policy's limits. */
  activeTotal(): number;
  activeForPeer(aeTitle: string): number;
  admitted(assoc: Association, peerAeTitle: string, peerLimit: number): void;
  /**
   * When the counts also live beyond this process (worker processes: cluster/admission.ts), the admission
   * confirmed there: resolves null, or the limit the association is over after all. Absent or null: the
   * local counts decided.
   */
  admissionConfirmed?(assoc: Association): Promise<AdmissionRefusal | null> | null;
  /** Bytes queued toward slower sockets over all associations (limits.relayBufferTotal). */
  readonly relayBudget?: RelayBudget;
  /** A ledger record in progress: shutdown waits for it before the ledger closes. */
  trackRecord(done: Promise<void>): void;
  finished(assoc: Association): void;
}

/** An association limit found over by the counts of every process (AssociationHost.admissionConfirmed). */
export interface AdmissionRefusal {
  refusal: 'too-many-associations' | 'too-many-peer-associations';
  reject: RejectSpec;
  message: string;
}

interface AcceptedContext {
  abstractSyntax: string;
  transferSyntax: string;
}

interface PendingRequest {
  command: CommandSet;
  startedAt: number;
}

interface DropState {
  contextId: number;
  refusal: Buffer;
}

/** A success response held until the data set it answers has passed whole (see holdResponse). */
interface HeldResponse {
  /** messageKey of the request it answers. */
  key: number;
  /** Released only once the instance's ledger record has been handed to the OS (onFailure: abort). */
  untilRecorded: boolean;
  /** Bytes in `queue`. */
  bytes: number;
  /** PDUs toward the requestor, in order, from the held response on. */
  queue: Buffer[];
  /** What to do once it has gone out (an abort that arrived behind it: afterHeld). */
  then: (() => void) | null;
}

/** 0 = the leg toward the modality (proxy is acceptor), 1 = toward the archive (proxy is requestor). */
type Leg = 0 | 1;
const SIDES = ['modality', 'archive'] as const;

/** Map key of a request: Message IDs are US (PS3.7 E.1), unique per direction while outstanding. */
function messageKey(dir: Leg, messageId: number): number {
  return dir * 0x10000 + messageId;
}

function pdataPdu(contextId: number, command: Buffer): Buffer {
  // PS3.8 9.3.5 / Annex E: one command PDV, last fragment (control header bits 0 and 1 set).
  return encodePdu({
    type: PduType.PDataTf,
    pdvs: [{ contextId, command: true, last: true, value: command }],
  });
}

/** A response that answers no outstanding request (PS3.7 9.3: Message ID Being Responded To). */
export class CorrelationError extends Error {
  readonly code = 'UNMATCHED_RESPONSE';
  readonly abortReason = AbortReason.InvalidPduParameterValue;
  constructor(message: string) {
    super(message);
    this.name = 'CorrelationError';
  }
}

/** What the relay does on an A-P-ABORT / abort request of its own, toward one leg. */
interface AbortSpec {
  /** The A-ABORT PDU to send: a peer's own (relayed unchanged) or the proxy's (source 2). */
  pdu: Buffer;
}

function providerAbort(reason: number): AbortSpec {
  return { pdu: encodeAbort(AbortSource.ServiceProvider, reason) };
}

export class Association {
  readonly id = randomUUID();
  private readonly clock: Clock;
  private readonly startedAt: number;
  /** PS3.8 9.2 state machines: [toward the modality (acceptor), toward the archive (requestor)]. */
  private readonly legs: [UlMachine, UlMachine];
  /** Frames PDUs before the association is established (Sta2/Sta3 down, Sta5 up) and after a reject. */
  private readonly framers: [PduFramer | null, PduFramer | null];
  /** Streams P-DATA once established: [from the modality, from the archive]. */
  private readonly scanners: [PDataScanner | null, PDataScanner | null] = [null, null];
  private upstreamSocket: Socket | null = null;
  private rq: AssociatePdu | null = null;
  /** The A-ASSOCIATE-RQ as forwarded (its max length is what the archive may send). */
  private forwarded: AssociatePdu | null = null;
  private peer: PeerPolicy | null = null;
  private requestPolicy: RequestPolicy | null = null;
  private route: RouteConfig | null = null;
  private upstream: RelayTarget | null = null;
  private refusedContexts: PresentationContextRq[] = [];
  private accepted = new Map<number, AcceptedContext>();
  private readonly asm: [MessageAssembler, MessageAssembler] = [
    new MessageAssembler(),
    new MessageAssembler(),
  ];
  /** Requests awaiting their final response, by messageKey(direction of the request, Message ID). */
  private readonly pending = new Map<number, PendingRequest>();
  private readonly evidence: Evidence;
  private drop: DropState | null = null;
  private splitCommand: PDataPdu[] | null = null; // held PDUs while a modality command is incomplete
  /** A success response held toward leg [0 | 1] until its request's data set is whole. */
  private readonly heldToward: [HeldResponse | null, HeldResponse | null] = [null, null];
  private readonly streamLast: [boolean, boolean] = [false, false];
  private outcome: AssociationOutcome | null = null;
  private reason: string | null = null;
  private reject: RejectSpec | null = null;
  private tlsInfo: TlsSessionInfo | null = null;
  private bytesFromModality = 0;
  private bytesFromArchive = 0;
  private readonly operations: Record<string, number> = {};
  /** ARTIM per leg (PS3.8 9.1.5): awaiting the A-ASSOCIATE-RQ, and awaiting transport close (Sta13). */
  private readonly artim: [TimerHandle | null, TimerHandle | null] = [null, null];
  /** connectTimeout: the upstream connect, TLS handshake and the wait for A-ASSOCIATE-AC (Sta4, Sta5). */
  private connectTimer: TimerHandle | null = null;
  private idleTimer: TimerHandle | null = null;
  private activity = 0;
  private admittedPeer: string | null = null;
  private readonly blocked: [boolean, boolean] = [false, false];
  /** Writes toward the modality (downstream) and the archive (upstream), with what they hold. */
  private readonly outs: [Outbound, Outbound | null];
  /** What this association has added to the host's RelayBudget, per direction [toward down, toward up]. */
  private readonly charged: [number, number] = [0, 0];
  private completed = false;

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
    this.clock = options.clock ?? systemClock;
    this.startedAt = this.clock.now();
    const client = clientEndpoint(down); // a load balancer's PROXY header names the client
    this.remoteAddress = client.remoteAddress;
    this.remotePort = client.remotePort;
    this.listener = options.listener ?? 'forward';
    this.downTls = options.downTls ?? null;
    this.directions = DIRECTIONS[this.listener];
    this.relayBuffer = snapshot.config.limits.relayBuffer;
    this.legs = [new UlMachine(SIDES[0], 'acceptor', 'Sta1'), new UlMachine(SIDES[1], 'requestor', 'Sta1')];
    // Before the A-ASSOCIATE-AC the modality may send nothing but A-ASSOCIATE-RQ / A-ABORT: a P-DATA-TF
    // of any length is refused at its header (PS3.8 Table 9-10: AA-1 in Sta2, AA-8 in Sta3).
    this.framers = [new PduFramer({ maxPDataLength: 0, maxOtherLength: MAX_ASSOCIATE_PDU_LENGTH }), null];
    // The downstream leg is TLS on the return listener (the archive calling in), plaintext otherwise.
    this.outs = [new Outbound(down, this.downTls !== null, () => this.emptied(0)), null];
    this.evidence = new Evidence({
      id: this.id,
      events: host.events,
      ledger: host.ledger,
      trackRecord: (done) => host.trackRecord(done),
      recordContext: () => this.recordContext(),
      currentLease: () => this.lease,
      ledgerFailed: (err) => this.onLedgerFailure(err),
      recordWritten: (key) => this.onRecordWritten(key),
    });
  }

  readonly remoteAddress: string;
  readonly remotePort: number;

  get peerAeTitle(): string | null {
    return this.admittedPeer;
  }

  /** The PS3.8 state of each leg: toward the modality (acceptor) and toward the archive (requestor). */
  get states(): { modality: string; archive: string } {
    return { modality: this.legs[0].state, archive: this.legs[1].state };
  }

  /** Who and where: the fields the live view and the closing summary share. */
  private parties(): AssociationParties {
    const rq = this.rq;
    return {
      id: this.id,
      listener: this.listener,
      remoteAddress: this.remoteAddress,
      remotePort: this.remotePort,
      callingAeTitle: rq ? aeTitleText(rq.callingAeTitle) : null,
      calledAeTitle: rq ? aeTitleText(rq.calledAeTitle) : null,
      peer: this.admittedPeer,
      upstream: this.upstream?.name ?? null,
      upstreamAeTitle: this.upstream?.aeTitle ?? null,
    };
  }

  /** What GET /associations shows of this association now. */
  live(): LiveAssociation {
    return {
      ...this.parties(),
      state: { caller: this.legs[0].state, far: this.legs[1].state },
      startedAt: new Date(this.startedAt).toISOString(),
      durationMs: this.clock.now() - this.startedAt,
      operations: { ...this.operations },
      bytesFromModality: this.bytesFromModality,
      bytesFromArchive: this.bytesFromArchive,
      instances: this.evidence.instances,
    };
  }

  /** Live counters (for status, tests and metrics). */
  stats(): {
    state: string;
    bytesFromModality: number;
    bytesFromArchive: number;
    instances: number;
    /** Bytes written toward the archive (upstream) / modality (downstream) that the kernel has not taken. */
    queuedTowardArchive: number;
    queuedTowardModality: number;
    /** Success responses held until the data set they answer has passed whole. */
    heldResponses: number;
  } {
    return {
      state: this.legs[0].state,
      bytesFromModality: this.bytesFromModality,
      bytesFromArchive: this.bytesFromArchive,
      instances: this.evidence.instances,
      queuedTowardArchive: this.outs[1]?.pending ?? 0,
      queuedTowardModality: this.outs[0].pending,
      heldResponses: (this.heldToward[0] ? 1 : 0) + (this.heldToward[1] ? 1 : 0),
    };
  }

  start(): void {
    const down = this.down;
    down.setNoDelay(true);
    down.on('data', (chunk: Buffer) => this.onData(0, chunk));
    down.on('end', () => this.event(0, 'transport-closed'));
    down.on('error', (err) => this.onSocketError(0, err));
    down.on('close', () => this.onSocketClosed());
    this.event(0, 'transport-indication');
  }

  // ---------------------------------------------------------------- the one transition function

  /**
   * Take `event` on `leg` through PS3.8 Table 9-10 and perform the action. A cell the table leaves empty
   * is ignored for what the peer or the transport did (nothing can be answered), and is a defect for a
   * primitive the relay issues: logged, and the association aborted rather than left half-way.
   */
  private event(leg: Leg, event: UlEvent, detail: EventDetail = {}): void {
    const machine = this.legs[leg];
    const step = machine.peek(event);
    if (step === null) {
      if (LOCAL_PRIMITIVES.has(event)) {
        this.host.events.emit('protocol-error', {
          id: this.id,
          side: SIDES[leg],
          code: 'INVALID_TRANSITION',
          message: `${SIDES[leg]} leg: no transition for ${event} in ${machine.state}`,
          abortReason: AbortReason.NotSpecified,
        });
        if (!this.completed) this.destroyAll();
      }
      return;
    }
    machine.fire(event);
    this.perform(leg, step, detail);
  }

  /** PS3.8 9.2.3 Tables 9-6 to 9-9: the action of a transition, for the proxy in the middle. */
  private perform(leg: Leg, step: Step, d: EventDetail): void {
    const other: Leg = leg === 0 ? 1 : 0;
    switch (step.action) {
      // ---- establishment
      case 'AE-5': // transport connection indication: ARTIM for the A-ASSOCIATE-RQ (PS3.8 9.1.5)
        this.startArtim(leg);
        return;
      case 'AE-6': // A-ASSOCIATE-RQ: ARTIM stops; the indication is the relay's admission decision
        this.stopArtim(leg);
        this.onAssociateIndication(d.raw as Buffer);
        return;
      case 'AE-1': // the relay's A-ASSOCIATE request toward the archive: connect
        void this.openUpstream();
        return;
      case 'AE-2': // transport connected: send the forwarded A-ASSOCIATE-RQ
        this.send(leg, encodePdu(this.forwarded as AssociatePdu));
        return;
      case 'AE-3': // A-ASSOCIATE-AC from the archive: accept toward the modality
        this.stopConnectTimer();
        this.onAssociateConfirmed(d.raw as Buffer);
        return;
      case 'AE-4': // A-ASSOCIATE-RJ from the archive: relayed as is (it has no AE fields)
        this.stopConnectTimer();
        this.onAssociateRejectedByArchive(d.raw as Buffer);
        this.closeLeg(leg);
        return;
      case 'AE-7': // send the A-ASSOCIATE-AC toward the modality
        this.send(leg, d.raw as Buffer);
        return;
      case 'AE-8': // send A-ASSOCIATE-RJ, ARTIM until the modality closes
        this.send(leg, d.raw as Buffer);
        this.awaitClose(leg);
        return;

      // ---- data transfer: held P-DATA-TF PDUs (the streamed ones never leave the scanner's hot path)
      case 'DT-2':
      case 'AR-6':
        this.onPData(leg, d.raw as Buffer);
        return;
      case 'DT-1':
      case 'AR-7':
        this.relay(leg, d.raw as Buffer);
        return;

      // ---- release (PS3.8 7.2, 9.2.3 Table 9-8)
      case 'AR-1': // the relay's A-RELEASE request: the peer's A-RELEASE-RQ, forwarded
        this.send(leg, d.raw as Buffer);
        return;
      case 'AR-2': // A-RELEASE-RQ: indication -> A-RELEASE request on the other leg
        this.event(other, 'release-request', d);
        return;
      case 'AR-3': // A-RELEASE-RP: confirmation; this leg's transport closes
        this.releaseConfirmed(leg, d);
        this.closeLeg(leg);
        return;
      case 'AR-4': // send A-RELEASE-RP, ARTIM until the peer closes
        this.send(leg, d.raw ?? encodeReleaseRp());
        this.finish('released', null);
        this.awaitClose(leg);
        return;
      case 'AR-8': // release collision (PS3.8 9.2.3 note): the proxy answers it on this leg
        if (this.legs[leg].state === 'Sta9') this.event(leg, 'release-response');
        return;
      case 'AR-9': // collision, requestor side: send A-RELEASE-RP, await the peer's
        this.send(leg, encodeReleaseRp());
        return;
      case 'AR-10': // collision, acceptor side: the peer's A-RELEASE-RP confirms ours
        this.releaseConfirmed(leg, d);
        this.event(leg, 'release-response');
        return;
      case 'AR-5': // transport closed in Sta13: the normal end
      case 'AA-5': // transport closed in Sta2: nothing to tell anyone
        this.stopArtim(leg);
        if (leg === 0 && step.action === 'AA-5') {
          this.finish('closed', 'modality closed the connection before sending an A-ASSOCIATE-RQ');
        }
        this.endLeg(leg);
        return;

      // ---- abort (PS3.8 9.2.3 Table 9-9)
      case 'AA-1': {
        // The relay's abort request, or an unexpected PDU in Sta2: send A-ABORT, ARTIM.
        const inSta2 = step.from === 'Sta2';
        if (inSta2) this.protocolFinding(leg, d, step);
        const fallback = inSta2 ? AbortReason.UnexpectedPdu : AbortReason.NotSpecified;
        if (this.atBoundaryToward(leg)) {
          this.send(leg, (d.abort ?? providerAbort(d.reason ?? fallback)).pdu);
          this.awaitClose(leg);
        } else this.closeLeg(leg); // mid-PDU toward it: closing is the only signal left
        return;
      }
      case 'AA-2': // stop ARTIM; close the transport
        this.stopArtim(leg);
        if (step.event === 'artim-expired') {
          if (step.from === 'Sta2') {
            this.finish('timeout', 'no A-ASSOCIATE-RQ within the association request timeout');
          }
          this.destroyLeg(leg);
        } else this.closeLeg(leg);
        return;
      case 'AA-3': // the peer's A-ABORT: relayed unchanged to the other leg
        this.finish(
          leg === 0 ? 'aborted-by-modality' : 'aborted-by-archive',
          `A-ABORT source ${d.raw?.[PDU_HEADER_LENGTH + 2] ?? 0} reason ${d.raw?.[PDU_HEADER_LENGTH + 3] ?? 0}`,
        );
        this.closeLeg(leg);
        // As for AA-4: a success read just before it that waits for its record goes out first.
        if (!this.afterHeld(other, () => this.abortOther(other, { pdu: d.raw as Buffer }, true)))
          this.abortOther(other, { pdu: d.raw as Buffer }, true);
        return;
      case 'AA-4': // the transport closed under an association: A-P-ABORT -> abort the other leg
        if (leg === 1 && step.from === 'Sta5') {
          this.failUpstream('closed', 'archive closed the connection before answering the A-ASSOCIATE-RQ');
        }
        this.finish(
          leg === 0 ? 'closed' : 'aborted-by-archive',
          d.message ?? `${SIDES[leg]} closed the connection`,
        );
        this.endLeg(leg);
        // A success that arrived before the close and waits for its record still goes out first (as it
        // would have on a direct connection); the abort follows it, or comes at once if the record fails.
        if (!this.afterHeld(other, () => this.abortOther(other, providerAbort(AbortReason.NotSpecified))))
          this.abortOther(other, providerAbort(AbortReason.NotSpecified));
        return;
      case 'AA-6': // a PDU after the association ended: ignored
        return;
      case 'AA-7': // an A-ASSOCIATE-RQ or an invalid PDU after it ended: A-ABORT
        this.protocolFinding(leg, d, step);
        if (this.atBoundaryToward(leg))
          this.send(leg, providerAbort(d.reason ?? AbortReason.UnexpectedPdu).pdu);
        return;
      case 'AA-8': // an unexpected or invalid PDU: A-ABORT (source 2) to its sender, A-P-ABORT to the other
        if (leg === 1 && step.from === 'Sta5')
          this.failUpstream('protocol-error', d.message ?? 'unexpected PDU');
        this.protocolFinding(leg, d, step);
        if (this.atBoundaryToward(leg)) {
          this.send(leg, providerAbort(d.reason ?? AbortReason.UnexpectedPdu).pdu);
          this.awaitClose(leg);
        } else this.closeLeg(leg);
        // As for AA-4: a success read just before the bad PDU that waits for its record goes out first.
        if (!this.afterHeld(other, () => this.abortOther(other, providerAbort(AbortReason.NotSpecified))))
          this.abortOther(other, providerAbort(AbortReason.NotSpecified));
        return;
    }
  }

  /**
   * A PDU that the table answers with an abort: the log line names it. In Sta2 the table's AA-1 is sent
   * with source 2 and the reason, like AA-8: a source-0 (service-user) abort would tell the modality that
   * the archive aborted, which has not even been contacted.
   */
  private protocolFinding(leg: Leg, d: EventDetail, step: Step): void {
    const reason = d.reason ?? AbortReason.UnexpectedPdu;
    // The log line names the cell: what arrived, in which state, and the action taken.
    const message = `${d.message ?? 'unexpected PDU'} (PS3.8 Table 9-10: ${UL_EVENTS[step.event]} ${step.event} in ${step.from}, ${step.action})`;
    this.host.events.emit('protocol-error', {
      id: this.id,
      side: SIDES[leg],
      code: d.code ?? 'UNEXPECTED_PDU',
      message,
      abortReason: reason,
    });
    this.finish('aborted-by-proxy', `${SIDES[leg]} protocol error: ${message}`);
  }

  /** True when nothing is half-written toward `leg`: a PDU of the proxy's own may go out now. */
  private atBoundaryToward(leg: Leg): boolean {
    const streaming = this.scanners[leg === 0 ? 1 : 0];
    return streaming === null || streaming.atBoundary;
  }

  /**
   * The relay's A-ABORT request on `leg` (after the other leg aborted, timed out or failed). `relayed`:
   * the PDU is the other peer's own A-ABORT, passed on unchanged.
   */
  private abortOther(leg: Leg, abort: AbortSpec, relayed = false): void {
    const m = this.legs[leg];
    if (m.state === 'Sta1' || m.state === 'Sta13') return;
    if (m.state === 'Sta2') {
      this.destroyLeg(leg);
      return;
    }
    if (m.state === 'Sta3' && !relayed) {
      // The modality awaits our answer: the archive side failed, so 2/3/1 lets it retry (PS3.8 9.3.4).
      this.rejectRequestor(TRANSIENT_REJECT);
      return;
    }
    this.event(leg, 'abort-request', { abort });
  }

  /** Abort both legs from the relay's own decision (timeout, ledger, shutdown): A-ABORT 2/0 to each. */
  abortBoth(outcome: AssociationOutcome, reason: string): void {
    this.finish(outcome, reason);
    this.abortOther(0, providerAbort(AbortReason.NotSpecified));
    this.abortOther(1, providerAbort(AbortReason.NotSpecified));
  }

  // ---------------------------------------------------------------- timers (PS3.8 9.1.5)

  private startArtim(leg: Leg): void {
    this.stopArtim(leg);
    const t = this.clock.setTimeout(() => {
      this.artim[leg] = null;
      this.event(leg, 'artim-expired');
    }, this.snapshot.config.limits.associationRequestTimeoutMs);
    t.unref();
    this.artim[leg] = t;
  }

  private stopArtim(leg: Leg): void {
    this.clock.clearTimeout(this.artim[leg]);
    this.artim[leg] = null;
  }

  private stopConnectTimer(): void {
    this.clock.clearTimeout(this.connectTimer);
    this.connectTimer = null;
  }

  /**
   * The idle timeout: nothing read from either side for limits.idleTimeout. A tick (at most 1 s, a quarter
   * of the timeout when shorter) notes whether bytes moved, so the hot path only bumps a counter; the
   * abort comes between the setting and one tick after it.
   */
  private startIdleTimer(): void {
    const ms = this.snapshot.config.limits.idleTimeoutMs;
    const tick = Math.max(10, Math.min(1000, Math.floor(ms / 4)));
    let seen = this.activity;
    let lastActive = this.clock.now();
    const t = this.clock.setInterval(() => {
      const now = this.clock.now();
      if (this.activity !== seen) {
        seen = this.activity;
        lastActive = now;
        return;
      }
      if (now - lastActive >= ms) {
        this.stopIdleTimer();
        this.abortBoth('timeout', `idle for ${ms} ms`);
      }
    }, tick);
    t.unref();
    this.idleTimer = t;
  }

  private stopIdleTimer(): void {
    this.clock.clearTimeout(this.idleTimer);
    this.idleTimer = null;
  }

  // ---------------------------------------------------------------- reads

  private onData(leg: Leg, chunk: Buffer): void {
    if (leg === 0) this.bytesFromModality += chunk.length;
    else this.bytesFromArchive += chunk.length;
    this.activity++;
    try {
      const scanner = this.scanners[leg];
      if (scanner) {
        this.feedInPlace(scanner, chunk);
        if (this.evidence.hashesQueued) this.evidence.scheduleHashes();
        return;
      }
      const framer = this.framers[leg];
      if (!framer) return;
      const frames = framer.push(chunk);
      for (let i = 0; i < frames.length; i++) {
        const raw = frames[i] as Buffer;
        this.event(leg, pduEvent(raw[0] ?? 0), { raw });
        const established = this.scanners[leg];
        if (established) {
          // Sta6 from the A-ASSOCIATE-AC on: what followed it in this read streams.
          for (let j = i + 1; j < frames.length; j++) established.feed(frames[j] as Buffer);
          const rest = framer.takeRemainder();
          if (rest.length > 0) established.feed(rest);
          this.framers[leg] = null;
          return;
        }
      }
    } catch (err) {
      this.onReadError(leg, err);
    }
  }

  /** A PDU that cannot be framed or decoded: Evt19, or the event of its type when only its place is wrong. */
  private onReadError(leg: Leg, err: unknown): void {
    const e = err as Error & { code?: ProtocolErrorCode; abortReason?: number; field?: string };
    const known =
      err instanceof PduError ||
      err instanceof MessageSequenceError ||
      err instanceof UnexpectedPduError ||
      err instanceof CorrelationError ||
      err instanceof CommandError;
    if (!known) {
      // A defect of ours, not the peer's: both legs aborted, the daemon carries on.
      this.host.events.emit('protocol-error', {
        id: this.id,
        side: SIDES[leg],
        code: 'INTERNAL',
        message: e.message,
        abortReason: AbortReason.NotSpecified,
      });
      this.abortBoth('aborted-by-proxy', `internal error: ${e.message}`);
      return;
    }
    this.scanners[leg] = null; // the stream is unusable after a framing error: nothing more is parsed
    this.framers[leg] = null;
    let event: UlEvent = 'invalid-pdu';
    let reason = typeof e.abortReason === 'number' ? e.abortReason : AbortReason.InvalidPduParameterValue;
    if (err instanceof UnexpectedPduError) {
      event = pduEvent(err.pduType);
      reason = AbortReason.UnexpectedPdu;
    } else if (err instanceof PduError && err.code === 'PDU_TOO_LARGE' && e.field === 'P-DATA-TF.length') {
      if (!this.legs[leg].receivesData) {
        event = 'p-data-pdu'; // a P-DATA-TF where none may come: unexpected, whatever its length
        reason = AbortReason.UnexpectedPdu;
      }
    }
    this.event(leg, event, { code: e.code ?? 'INVALID_PDU', message: e.message, reason });
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

  /**
   * The held PDU being decided now (the scanner's held()), while it may still be relayed in place: the
   * first write toward its destination during the decision either is that PDU unchanged (then the
   * scanner forwards its bytes itself, `passed`) or ends the chance (anything written before it).
   */
  private passing: { to: Leg; pdu: Buffer; passed: boolean } | null = null;

  /** Relay P-DATA bytes toward `to` (DT-1 / AR-7): only while that leg may send data. */
  private relay(to: Leg, bytes: Buffer): void {
    const out = this.outs[to];
    if (!out || !this.legs[to].sendsData) return; // closing: nothing more is relayed
    const held = this.heldToward[to];
    const passing = this.passing;
    if (passing !== null && passing.to === to) {
      this.passing = null;
      if (bytes === passing.pdu && !held) {
        passing.passed = true; // the scanner writes it, in order, with what follows it
        return;
      }
    }
    if (held) {
      // A success is held toward this leg: what follows it waits behind it, in order (a copy: rare).
      held.queue.push(Buffer.from(bytes));
      held.bytes += bytes.length;
      if (held.bytes > RELAY_BUFFER_FLOOR && !this.pausedForHold[to]) {
        this.pausedForHold[to] = true;
        this.sourceOf(to)?.pause();
      }
      return;
    }
    const lease = this.lease;
    if (lease !== null && bytes.buffer === lease.chunk.buffer) {
      lease.acquire();
      out.write(bytes, lease.written);
    } else out.write(bytes);
    if (this.evidence.hashesQueued) this.evidence.scheduleHashes();
    if (!this.blocked[to] && this.mustPause(to, out.pending)) {
      this.blocked[to] = true;
      this.sourceOf(to)?.pause();
    }
  }

  /** A PDU of the proxy's own or a control PDU toward `leg`, whatever the data state. */
  private send(leg: Leg, pdu: Buffer): void {
    const out = this.outs[leg];
    const socket = leg === 0 ? this.down : this.upstreamSocket;
    if (!out || !socket || socket.destroyed) return;
    if (this.passing?.to === leg) this.passing = null; // written before the PDU being decided
    out.write(pdu);
  }

  /** The socket whose bytes are relayed toward `to`. */
  private sourceOf(to: Leg): Socket | null {
    return to === 0 ? this.upstreamSocket : this.down;
  }

  /** Account `pending` bytes toward side `to`; true when its source must pause. */
  private mustPause(to: Leg, pending: number): boolean {
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
  private emptied(to: Leg): void {
    const budget = this.host.relayBudget;
    if (budget) {
      budget.queued -= this.charged[to];
      this.charged[to] = 0;
    }
    if (this.blocked[to]) {
      this.blocked[to] = false;
      if (!this.pausedForHold[to]) this.sourceOf(to)?.resume();
    }
  }

  // ---------------------------------------------------------------- establishment

  /** AE-6: the modality's A-ASSOCIATE-RQ. Admit and forward, or reject (the local user's answer). */
  private onAssociateIndication(raw: Buffer): void {
    const rq = decodePdu(raw) as AssociatePdu;
    this.rq = rq;
    const calling = aeTitleText(rq.callingAeTitle);
    const called = aeTitleText(rq.calledAeTitle);

    // PS3.8 9.3.2: bit 0 of the protocol version must be set.
    if ((rq.protocolVersion & 0x0001) === 0) {
      this.refuse(
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
      this.refuse(
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
      this.refuse(decision.reject, decision.refusal, decision.message);
      return;
    }
    // PS3.8 9.3.2.2: context IDs odd, 1-255, unique. What is left is what policy judges.
    const checked = checkPresentationContexts(rq);
    if (checked.contexts.length === 0) {
      this.refuse(
        PERMANENT_NO_REASON,
        'no-valid-presentation-context',
        `none of the ${presentationContextsRq(rq).length} proposed presentation contexts has a valid, unique ID (${describeDropped(checked.dropped)})`,
      );
      return;
    }
    const { allowed, refused } = decision.peer.filterPresentationContexts(
      checked.contexts,
      roleSelections(rq),
    );
    if (allowed.length === 0) {
      // Nothing the peer asked for is permitted: there is no service to relay (PS3.8 9.3.4, 1/1/1).
      this.refuse(
        PERMANENT_NO_REASON,
        'no-permitted-presentation-context',
        `none of the ${refused.length} proposed presentation contexts is allowed for ${calling}`,
      );
      return;
    }
    if (checked.dropped.length > 0) {
      this.host.events.emit('protocol-error', {
        id: this.id,
        side: SIDES[0],
        code: 'INVALID_PRESENTATION_CONTEXT',
        message: `presentation contexts dropped before forwarding: ${describeDropped(checked.dropped)}`,
        abortReason: AbortReason.NotSpecified,
      });
    }
    this.peer = decision.peer;
    const ledger = this.host.ledger;
    this.requestPolicy = new RequestPolicy(
      decision.peer,
      () => !ledger || ledger.sink.healthy || ledger.onFailure !== 'abort',
    );
    this.route = decision.route;
    this.upstream = decision.target;
    this.admittedPeer = decision.peer.aeTitle;
    const refusedIds = new Set(refused.map((r) => r.id));
    this.refusedContexts = checked.contexts.filter((c) => refusedIds.has(c.id));
    this.forwarded = forwardRequest(rq, {
      contexts: allowed,
      calledAeTitle: decision.target.aeTitle,
      callingAeTitle: decision.target.callingAeTitle,
      ceiling: this.snapshot.config.limits.maxPduLength,
    });
    this.host.admitted(this, decision.peer.aeTitle, decision.peer.maxAssociations);
    this.event(1, 'associate-request');
  }

  /** The listener's admission decision, as one shape: who the caller is and where to relay to. */
  private admit(
    calling: string,
    called: string,
  ):
    | { accepted: true; peer: PeerPolicy; route: RouteConfig | null; target: RelayTarget }
    | { accepted: false; reject: RejectSpec; refusal: PolicyRefusal; message: string } {
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
    const d = this.snapshot.policy.admit(base);
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

  /** The proxy refuses the association itself: A-ASSOCIATE-RJ (AE-8) and an association-refused event. */
  private refuse(reject: RejectSpec, refusal: ProxyRefusal, message: string): void {
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
    this.finish('rejected', `${refusal}: ${message}`);
    this.rejectRequestor(reject);
  }

  /** A-ASSOCIATE response (reject) toward the modality: AE-8. */
  private rejectRequestor(reject: RejectSpec, raw?: Buffer): void {
    this.reject = reject;
    this.event(0, 'associate-reject', {
      raw: raw ?? encodeAssociateRj(reject.result, reject.source, reject.reason),
    });
  }

  // ---------------------------------------------------------------- upstream connect, Sta4 / Sta5

  private async openUpstream(): Promise<void> {
    const upstream = this.upstream as RelayTarget;
    // With worker processes the limits are counted over all of them: the archive is not called before
    // the daemon's process confirmed there is room (the modality still waits in Sta2/Sta3 meanwhile).
    const confirming = this.host.admissionConfirmed?.(this) ?? null;
    if (confirming) {
      const over = await confirming;
      if (this.legs[1].state !== 'Sta4' || this.down.destroyed) {
        if (this.legs[1].state === 'Sta4') this.legs[1].fire('abort-request'); // AA-2: nothing to close
        this.maybeComplete();
        return;
      }
      if (over) {
        this.legs[1].fire('abort-request'); // AA-2: no transport toward the archive was opened
        this.refuse(over.reject, over.refusal, over.message); // PS3.8 9.3.4: 2/3/2
        return;
      }
    }
    // connectTimeout covers the TCP connect, the TLS handshake and the wait for the A-ASSOCIATE-AC.
    this.connectTimer = this.clock.setTimeout(() => {
      this.connectTimer = null;
      const waiting =
        this.legs[1].state === 'Sta5'
          ? 'answer the A-ASSOCIATE-RQ'
          : upstream.tls
            ? 'complete the TCP connect and TLS handshake'
            : 'accept the TCP connection';
      this.failUpstream('timeout', `archive did not ${waiting} within ${upstream.connectTimeoutMs} ms`);
    }, upstream.connectTimeoutMs);
    this.connectTimer.unref();
    let socket: Socket;
    try {
      const where = { host: upstream.host, port: upstream.port, timeoutMs: upstream.connectTimeoutMs };
      socket = upstream.tls
        ? await connectUpstream({ ...where, tls: upstream.tls })
        : await connectPlain(where);
    } catch (err) {
      const known = err instanceof UpstreamConnectError ? err : null;
      this.failUpstream(known?.reason ?? 'handshake-failed', (err as Error).message, known?.certificate);
      if (this.legs[1].state === 'Sta4') this.legs[1].fire('abort-request'); // AA-2: nothing to close
      this.maybeComplete();
      return;
    }
    if (this.legs[1].state !== 'Sta4' || this.down.destroyed) {
      socket.destroy(); // the association ended while connecting
      if (this.legs[1].state === 'Sta4') this.legs[1].fire('abort-request');
      this.maybeComplete();
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
    socket.on('data', (chunk: Buffer) => this.onData(1, chunk));
    socket.on('end', () => this.event(1, 'transport-closed'));
    socket.on('error', (err) => this.onSocketError(1, err));
    socket.on('close', () => this.onSocketClosed());
    this.outs[1] = new Outbound(socket, upstream.tls !== null, () => this.emptied(1));
    this.framers[1] = new PduFramer({
      maxPDataLength: this.snapshot.config.limits.maxPduLength,
      maxOtherLength: MAX_ASSOCIATE_PDU_LENGTH,
    });
    this.event(1, 'transport-connected');
  }

  /** The archive cannot be reached or did not answer: A-ASSOCIATE-RJ 2/3/1 so the modality retries. */
  private failUpstream(
    reason: UpstreamFailure,
    message: string,
    certificate: { subject: string; issuer: string; fingerprint256: string } | null = null,
  ): void {
    if (this.legs[0].state !== 'Sta3') return; // already answered
    this.stopConnectTimer();
    this.host.events.emit('upstream-failed', {
      id: this.id,
      upstream: this.upstream?.name ?? '',
      reason,
      message,
      ...(certificate ? { certificate } : {}),
    });
    this.finish('upstream-failed', `${reason}: ${message}`);
    // Toward the archive the proxy is the requestor's user giving up: A-ABORT source 0 (AA-1), or no
    // transport yet (AA-2).
    const up = this.legs[1].state;
    if (up === 'Sta4' || up === 'Sta5') {
      this.event(1, 'abort-request', { abort: { pdu: encodeAbort(AbortSource.ServiceUser, 0) } });
    }
    this.rejectRequestor(TRANSIENT_REJECT);
  }

  private onAssociateRejectedByArchive(raw: Buffer): void {
    const rq = this.rq as AssociatePdu;
    const rj = decodePdu(raw);
    if (rj.type !== PduType.AssociateRj) throw new UnexpectedPduError(raw[0] ?? 0);
    const reject = { result: rj.result, source: rj.source, reason: rj.reason };
    const forward = this.listener === 'forward';
    this.host.events.emit('association-refused', {
      id: this.id,
      remoteAddress: this.remoteAddress,
      callingAeTitle: aeTitleText(rq.callingAeTitle),
      calledAeTitle: aeTitleText(rq.calledAeTitle),
      refusal: forward ? 'rejected-by-archive' : 'rejected-by-receiver',
      reject,
      message: `${forward ? 'archive' : 'receiver'} rejected ${rj.result}/${rj.source}/${rj.reason}`,
      listener: this.listener,
    });
    this.finish('rejected', `archive rejected the association (${rj.result}/${rj.source}/${rj.reason})`);
    this.rejectRequestor(reject, raw);
  }

  /** AE-3: the archive accepted; AE-7 toward the modality with the AC rebuilt for it. Both legs in Sta6. */
  private onAssociateConfirmed(raw: Buffer): void {
    const rq = this.rq as AssociatePdu;
    const ac = decodePdu(raw) as AssociatePdu;
    const ceiling = this.snapshot.config.limits.maxPduLength;
    const answer = answerRequestor(rq, ac, {
      forwarded: this.forwarded as AssociatePdu,
      refused: this.refusedContexts,
      ceiling,
    });
    this.accepted = answer.accepted;
    if (answer.problems.length > 0) {
      this.host.events.emit('protocol-error', {
        id: this.id,
        side: SIDES[1],
        code: 'INVALID_PRESENTATION_CONTEXT',
        message: `A-ASSOCIATE-AC answers not relayed: ${answer.problems.map((p) => p.message).join('; ')}`,
        abortReason: AbortReason.NotSpecified,
      });
    }
    // Each side may send P-DATA-TF PDUs up to what the RECEIVING side advertised, as capped by the proxy.
    const max = maxLengths(this.forwarded as AssociatePdu, answer.ac, ceiling);
    this.scanners[0] = new PDataScanner(this.makeSink(0), max.towardArchive);
    this.scanners[1] = new PDataScanner(this.makeSink(1), max.towardModality);
    this.event(0, 'associate-accept', { raw: encodePdu(answer.ac) });
    this.framers[0] = null;
    this.startIdleTimer();
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
  }

  // ---------------------------------------------------------------- release

  /** A-RELEASE confirmation on `leg` (AR-3, AR-10): answer the release the other leg asked for. */
  private releaseConfirmed(leg: Leg, d: EventDetail): void {
    const other: Leg = leg === 0 ? 1 : 0;
    const o = this.legs[other].state;
    if (o === 'Sta8' || o === 'Sta12') this.event(other, 'release-response', { raw: d.raw });
    else if (o === 'Sta9') this.event(other, 'release-response');
  }

  // ---------------------------------------------------------------- Sta6: the two streaming directions

  /** The scanner callbacks of one direction: 0 = modality -> archive, 1 = archive -> modality. */
  private makeSink(dir: Leg): ScannerSink {
    const to: Leg = dir === 0 ? 1 : 0;
    return {
      forward: (bytes) => this.relay(to, bytes),
      held: (pdu, type) => {
        // If the decision relays this very PDU on at once, the scanner writes it in place instead,
        // together with the bytes after it in the same read (see relay()).
        const outer = this.passing;
        this.passing = { to, pdu, passed: false };
        const p = this.passing;
        try {
          this.event(dir, pduEvent(type), { raw: pdu });
        } finally {
          this.passing = outer;
        }
        return p.passed;
      },
      dataStart: (contextId, _len, last) => this.dataStart(dir, contextId, last),
      dataBytes: (buf, start, end) => this.evidence.data(dir, buf, start, end),
      dataEnd: () => {
        if (this.streamLast[dir]) this.dataSetComplete(dir);
      },
    };
  }

  /** A streamed data PDV starts; returns true when its bytes must be dropped. */
  private dataStart(dir: Leg, contextId: number, last: boolean): boolean {
    if (!this.legs[dir].receivesData) {
      // Table 9-10: a P-DATA-TF outside Sta6/Sta7 (AA-8), or after the end (AA-6, ignored).
      this.event(dir, 'p-data-pdu', { message: 'P-DATA-TF after the release or abort began' });
      return true;
    }
    this.checkContext(contextId, dir);
    this.asm[dir].data(contextId, last);
    this.streamLast[dir] = last;
    return dir === 0 && this.drop !== null;
  }

  /** The last data fragment of a message has passed in direction dir. */
  private dataSetComplete(dir: Leg): void {
    if (dir === 0 && this.drop) {
      const d = this.drop;
      this.drop = null;
      this.scanners[1]?.inject(pdataPdu(d.contextId, d.refusal));
      return;
    }
    this.evidence.dataSetComplete(dir);
    // A success held toward the requestor of this data set goes out now that the data set is whole.
    const held = this.heldToward[dir];
    if (held) this.maybeRelease(dir, held.key, false);
  }

  private checkContext(contextId: number, dir: Leg): AcceptedContext {
    const ctx = this.accepted.get(contextId);
    if (!ctx) {
      throw new MessageSequenceError(
        `PDV on presentation context ${contextId}, which was not accepted (from the ${SIDES[dir]})`,
        AbortReason.InvalidPduParameterValue,
      );
    }
    return ctx;
  }

  /** DT-2 / AR-6: a whole P-DATA-TF PDU (commands, several PDVs) from `dir`. */
  private onPData(dir: Leg, raw: Buffer): void {
    if (dir === 0) this.fromModality(raw);
    else this.fromArchive(raw);
  }

  /** A held P-DATA-TF from the modality: requests are judged by policy before any of them is relayed. */
  private fromModality(raw: Buffer): void {
    const pdu = decodePdu(raw) as PDataPdu;
    let changed = false;
    let holdAt = -1;
    const kept: Pdv[] = [];
    for (const pdv of pdu.pdvs) {
      if (this.legs[0].state === ('Sta13' as string)) return;
      const ctx = this.checkContext(pdv.contextId, 0);
      if (pdv.command) {
        const cmd = this.asm[0].command(pdv.contextId, pdv.value, pdv.last);
        if (!pdv.last) {
          // Command split over several PDVs: keep everything from here until it is complete.
          kept.push(pdv);
          continue;
        }
        if (!cmd) continue;
        if (isResponse(cmd.commandField)) {
          if (this.onResponse(0, cmd) === 'hold' && holdAt < 0) holdAt = kept.length;
          kept.push(pdv);
          continue;
        }
        if (this.decideRequest(cmd, pdv.contextId, ctx)) {
          kept.push(pdv);
          continue;
        }
        if (this.legs[0].state === ('Sta13' as string)) return;
        // Refused: drop this command (and the fragments held before it) and its data set.
        changed = true;
        this.discardSplitCommand(kept, pdv.contextId);
        continue;
      }
      this.asm[0].data(pdv.contextId, pdv.last);
      if (this.drop) {
        changed = true;
        if (pdv.last) this.dataSetComplete(0);
        continue;
      }
      this.evidence.data(0, pdv.value, 0, pdv.value.length);
      kept.push(pdv);
      if (pdv.last) this.dataSetComplete(0);
    }
    if (this.asm[0].midCommand) {
      // Hold until the command is whole: the policy must see it before any of it reaches the archive.
      (this.splitCommand ??= []).push({ type: PduType.PDataTf, pdvs: kept });
      return;
    }
    if (this.splitCommand) {
      const held = this.splitCommand;
      this.splitCommand = null;
      for (const p of held) if (p.pdvs.length > 0) this.relay(1, encodePdu(p));
      changed = true;
    }
    const out = changed ? (kept.length > 0 ? encodePdu({ type: PduType.PDataTf, pdvs: kept }) : null) : raw;
    if (out) this.relayOrHold(1, out, holdAt >= 0);
  }

  /** A held P-DATA-TF from the archive: relayed unchanged once its responses are known to answer requests. */
  private fromArchive(raw: Buffer): void {
    const pdu = decodePdu(raw) as PDataPdu;
    let hold = false;
    for (const pdv of pdu.pdvs) {
      const ctx = this.checkContext(pdv.contextId, 1);
      if (pdv.command) {
        const cmd = this.asm[1].command(pdv.contextId, pdv.value, pdv.last);
        if (cmd) {
          if (isResponse(cmd.commandField)) {
            if (this.onResponse(1, cmd) === 'hold') hold = true;
          } else {
            this.count(commandName(cmd.commandField));
            this.onRequest(1, cmd, ctx);
          }
        }
        continue;
      }
      this.asm[1].data(pdv.contextId, pdv.last);
      this.evidence.data(1, pdv.value, 0, pdv.value.length);
      if (pdv.last) this.dataSetComplete(1);
    }
    this.relayOrHold(0, raw, hold);
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
    this.count(name);
    const decision = (this.requestPolicy as RequestPolicy).decide(cmd, contextId, ctx.abstractSyntax);
    if (decision.kind === 'forward') {
      if (cmd.commandField !== CommandField.CCancelRq) this.onRequest(0, cmd, ctx);
      return true;
    }
    if (decision.kind === 'abort') {
      this.host.events.emit('ledger-failed', {
        id: this.id,
        message: 'ledger unhealthy: C-STORE not relayed',
      });
      this.abortBoth('aborted-by-proxy', decision.reason);
      return false;
    }
    const peer = this.peer as PeerPolicy;
    this.host.events.emit('dimse-refused', {
      id: this.id,
      callingAeTitle: peer.aeTitle,
      command: name,
      reason: decision.reason,
      status: decision.status,
      ...(cmd.moveDestination !== undefined ? { moveDestination: cmd.moveDestination } : {}),
    });
    const refusal = encodeRefusalResponse(cmd, decision.status, 'refused by proxy policy');
    if (this.asm[0].expectingData) {
      this.drop = { contextId, refusal }; // answer once its data set has been swallowed
    } else {
      this.scanners[1]?.inject(pdataPdu(contextId, refusal));
    }
    return false;
  }

  private queryOf(cmd: CommandSet, key: number): { query?: QueryIdentifier } {
    if (cmd.commandField !== CommandField.CFindRq) return {};
    const query = this.evidence.takeQuery(key);
    return query ? { query } : {};
  }

  private onRequest(dir: Leg, cmd: CommandSet, ctx: AcceptedContext): void {
    const key = messageKey(dir, cmd.messageId ?? 0);
    this.pending.set(key, { command: cmd, startedAt: performance.now() });
    this.evidence.request(dir, key, this.directions[dir], cmd, ctx.transferSyntax);
  }

  /**
   * A response travelling in direction dir must answer a request that travelled the other way and is
   * still outstanding (PS3.7 9.3: Message ID Being Responded To; for C-STORE also the Affected SOP
   * Instance UID, PS3.7 9.3.1.2). Returns 'hold' for a success whose request's data set is incomplete.
   */
  private onResponse(dir: Leg, cmd: CommandSet): 'relay' | 'hold' {
    const reqDir: Leg = dir === 0 ? 1 : 0;
    const answered = cmd.messageIdBeingRespondedTo ?? -1;
    const key = messageKey(reqDir, answered);
    const name = commandName(cmd.commandField);
    const req = this.pending.get(key);
    if (!req) {
      throw new CorrelationError(
        `${name} from the ${SIDES[dir]} answers Message ID ${answered}, which no outstanding request on this association has (outstanding: ${this.outstandingIds(reqDir)})`,
      );
    }
    const expected = req.command.commandField | 0x8000;
    if (cmd.commandField !== expected) {
      throw new CorrelationError(
        `${name} from the ${SIDES[dir]} answers Message ID ${answered}, which is a ${commandName(req.command.commandField)}`,
      );
    }
    if (
      cmd.commandField === CommandField.CStoreRsp &&
      cmd.affectedSopInstanceUid !== undefined &&
      cmd.affectedSopInstanceUid !== req.command.affectedSopInstanceUid
    ) {
      throw new CorrelationError(
        `C-STORE-RSP from the ${SIDES[dir]} for Message ID ${answered} names SOP instance ${cmd.affectedSopInstanceUid}, the request ${req.command.affectedSopInstanceUid ?? '(none)'}`,
      );
    }
    const status = cmd.status ?? 0xffff;
    const cls = statusClass(status);
    if (cls === 'pending') return 'relay';
    this.pending.delete(key);
    this.host.events.emit('dimse-completed', {
      id: this.id,
      direction: this.directions[reqDir],
      command: commandName(req.command.commandField),
      sopClassUid: req.command.affectedSopClassUid ?? null,
      status,
      statusClass: cls,
      durationMs: performance.now() - req.startedAt,
      ...this.queryOf(req.command, key),
    });
    // The record waits for the data set anyway (evidence.ts); only the relaying of a success is held.
    const ledger = this.host.ledger;
    const untilRecorded =
      ledger !== null &&
      ledger.onFailure === 'abort' &&
      cmd.commandField === CommandField.CStoreRsp &&
      (cls === 'success' || cls === 'warning') &&
      this.evidence.tracks(key);
    const incomplete = this.evidence.incomplete(key) !== null;
    this.evidence.responded(key, status);
    if (cls === 'success' && incomplete) {
      // Never relay a success for a data set not yet relayed whole: held until its last fragment passed.
      this.host.events.emit('protocol-error', {
        id: this.id,
        side: SIDES[dir],
        code: 'EARLY_RESPONSE',
        message: `${name} (success) for Message ID ${answered} arrived before the last fragment of its data set was relayed; held until it is`,
        abortReason: AbortReason.NotSpecified,
      });
      this.pendingHold = { key, untilRecorded };
      return 'hold';
    }
    if (untilRecorded) {
      // The record before the success: the modality learns "stored" only once the ledger has it.
      this.pendingHold = { key, untilRecorded };
      return 'hold';
    }
    return 'relay';
  }

  /** The success to hold found while judging the PDU being handled now. */
  private pendingHold: { key: number; untilRecorded: boolean } | null = null;

  private outstandingIds(reqDir: Leg): string {
    const ids: number[] = [];
    for (const k of this.pending.keys()) if (k >> 16 === reqDir) ids.push(k & 0xffff);
    return ids.length > 0 ? ids.slice(0, 10).join(', ') : 'none';
  }

  /** Relay a held PDU toward `to`, or start holding at it (a success to hold is in it). */
  private relayOrHold(to: Leg, pdu: Buffer, hold: boolean): void {
    const ph = this.pendingHold;
    this.pendingHold = null;
    // PS3.8 Annex E: one data set at a time per direction, so at most one success is held per direction.
    if (!hold || ph === null || this.heldToward[to] !== null) {
      this.relay(to, pdu);
      return;
    }
    if (!this.legs[to].sendsData) return;
    this.heldToward[to] = {
      key: ph.key,
      untilRecorded: ph.untilRecorded,
      bytes: pdu.length,
      queue: [pdu], // held PDUs are the scanner's copies (or views of a poisoned lease), or freshly encoded
      then: null,
    };
  }

  /** The instance's data set passed whole or its record was written: release a success held for it. */
  private maybeRelease(to: Leg, key: number, recorded: boolean): void {
    const held = this.heldToward[to];
    if (!held || held.key !== key) return;
    if (held.untilRecorded ? !recorded : this.evidence.incomplete(key) !== null) return;
    this.heldToward[to] = null;
    for (const b of held.queue) this.relay(to, b);
    if (this.pausedForHold[to]) {
      this.pausedForHold[to] = false;
      if (!this.blocked[to]) this.sourceOf(to)?.resume();
    }
    const then = held.then;
    held.then = null;
    then?.();
  }

  /**
   * Run `fn` once the success held toward `to` for its ledger record has gone out; false (nothing
   * deferred) when no success is held for a record. A failed record aborts both legs instead.
   */
  private afterHeld(to: Leg, fn: () => void): boolean {
    const held = this.heldToward[to];
    if (!held || !held.untilRecorded || held.then) return false;
    held.then = fn;
    return true;
  }

  private onRecordWritten(key: number): void {
    if (this.completed) return;
    this.maybeRelease(0, key, true);
    this.maybeRelease(1, key, true);
  }

  /** Sources paused because what they sent queued behind a held success. */
  private readonly pausedForHold: [boolean, boolean] = [false, false];

  // ---------------------------------------------------------------- ledger

  /** A record that cannot be written is an alarm; by default the association stops relaying. */
  private onLedgerFailure(err: unknown): void {
    const ledger = this.host.ledger;
    this.host.events.emit('ledger-failed', { id: this.id, message: (err as Error)?.message ?? String(err) });
    if (ledger?.onFailure === 'abort' && !this.completed)
      this.abortBoth('aborted-by-proxy', 'ledger write failed');
  }

  private recordContext(): RecordContext {
    const rq = this.rq as AssociatePdu;
    const upstream = this.upstream;
    const targetAddress = upstream ? `${upstream.host}:${upstream.port}` : '';
    const forward = this.listener === 'forward';
    return {
      callingAeTitle: aeTitleText(rq.callingAeTitle),
      calledAeTitle: aeTitleText(rq.calledAeTitle),
      upstreamAeTitle: upstream?.aeTitle ?? null,
      // Return path: the "peer" is the receiver (destination) and the archive is the caller.
      peerAddress: forward ? this.remoteAddress : targetAddress,
      archiveAddress: forward ? targetAddress : this.remoteAddress,
      tls: this.tlsInfo,
    };
  }

  private count(name: string): void {
    this.operations[name] = (this.operations[name] ?? 0) + 1;
  }

  // ---------------------------------------------------------------- transport and teardown

  /**
   * Sta13 after the proxy's last PDU on a leg (AE-8, AR-4, AA-1, AA-8): keep reading — a PDU may still
   * come and is answered by the table (AA-6 / AA-7) — until the peer closes (AR-5) or ARTIM runs out (AA-2).
   * PS3.8 9.2: it is the peer that closes the transport here.
   */
  private awaitClose(leg: Leg): void {
    const socket = leg === 0 ? this.down : this.upstreamSocket;
    socket?.resume();
    this.startArtim(leg);
  }

  /** Half-close a leg once what is queued toward it is written (the peer then closes: Evt17). */
  private endLeg(leg: Leg): void {
    this.outs[leg]?.end();
    // Read (and judge, then ignore) until the peer closes; nothing waits on backpressure any more.
    const socket = leg === 0 ? this.down : this.upstreamSocket;
    socket?.resume();
  }

  /** Close a leg's transport (AE-4, AR-3, AA-2, AA-3): end it, destroyed if it lingers past ARTIM. */
  private closeLeg(leg: Leg): void {
    this.endLeg(leg);
    const socket = leg === 0 ? this.down : this.upstreamSocket;
    if (!socket || socket.destroyed) return;
    const t = this.clock.setTimeout(
      () => socket.destroy(),
      this.snapshot.config.limits.associationRequestTimeoutMs,
    );
    t.unref();
    socket.once('close', () => this.clock.clearTimeout(t));
  }

  private destroyLeg(leg: Leg): void {
    const socket = leg === 0 ? this.down : this.upstreamSocket;
    socket?.destroy();
  }

  private destroyAll(): void {
    this.down.destroy();
    this.upstreamSocket?.destroy();
  }

  private onSocketError(leg: Leg, err: Error): void {
    if (this.legs[1].state === 'Sta5' && leg === 1) {
      // A TLS alert naming our certificate after the handshake (TLS 1.3) is the archive refusing it.
      this.failUpstream(classifyUpstreamSocketError(err) ?? 'closed', err.message);
    } else {
      this.event(leg, 'transport-closed', { message: `${SIDES[leg]} socket error: ${err.message}` });
    }
    this.destroyLeg(leg);
  }

  private onSocketClosed(): void {
    const up = this.upstreamSocket;
    // A transport closed: Evt17 for its leg if 'end' did not say so already (a cell then says nothing).
    if (this.down.destroyed || this.down.closed) this.event(0, 'transport-closed');
    if (up && (up.destroyed || up.closed)) this.event(1, 'transport-closed');
    this.maybeComplete();
  }

  /** Both transports are gone (and no connect is under way): the association is over. */
  private maybeComplete(): void {
    const up = this.upstreamSocket;
    const downGone = this.down.destroyed || this.down.closed;
    const upGone = !up || up.destroyed || up.closed;
    if (downGone && upGone && this.legs[1].state !== 'Sta4') this.complete();
  }

  /** Record the first outcome; the summary is emitted when both sockets are closed. */
  private finish(outcome: AssociationOutcome, reason: string | null): void {
    if (this.outcome === null) {
      this.outcome = outcome;
      this.reason = reason;
    }
  }

  private complete(): void {
    if (this.completed) return;
    this.completed = true;
    this.stopArtim(0);
    this.stopArtim(1);
    this.stopConnectTimer();
    this.stopIdleTimer();
    // Nothing of this association waits in memory any more.
    this.emptied(0);
    this.emptied(1);
    if (this.outcome === null) this.outcome = 'closed';
    // Instances without a relayed response (or whose data set never completed) are reported too.
    this.evidence.end();
    this.host.events.emit('association-closed', {
      ...this.parties(),
      outcome: this.outcome,
      reason: this.reason,
      reject: this.reject,
      startedAt: new Date(this.startedAt).toISOString(),
      durationMs: this.clock.now() - this.startedAt,
      bytesFromModality: this.bytesFromModality,
      bytesFromArchive: this.bytesFromArchive,
      instances: this.evidence.instances,
      operations: this.operations,
      tls: this.tlsInfo,
    });
    this.host.finished(this);
  }

  /** Used by the server on shutdown: A-ABORT to both sides of an established association. */
  shutdown(): void {
    if (this.completed) return;
    const s = this.legs[0].state;
    if (s === 'Sta2' || s === 'Sta1') {
      this.finish('aborted-by-proxy', 'proxy shutting down');
      this.destroyAll();
      return;
    }
    this.abortBoth('aborted-by-proxy', 'proxy shutting down');
    // Shutting down, the proxy does not wait ARTIM for the peers: each has 2 s to take its A-ABORT.
    this.endLeg(0);
    this.endLeg(1);
    const t = this.clock.setTimeout(() => this.destroyAll(), 2000);
    t.unref();
  }
}

/** What an event carries to its action. */
interface EventDetail {
  /** The PDU that caused it, or the PDU an action sends. */
  raw?: Buffer;
  /** The A-ABORT to send (relay's abort request). */
  abort?: AbortSpec;
  /** PS3.8 9.3.8 A-ABORT reason toward the sender of a bad PDU. */
  reason?: number;
  code?: ProtocolErrorCode;
  message?: string;
}

/** Primitives the relay itself issues: a missing cell for one of them is a defect, not a peer's error. */
const LOCAL_PRIMITIVES: ReadonlySet<UlEvent> = new Set<UlEvent>([
  'associate-request',
  'associate-accept',
  'associate-reject',
  'p-data-request',
  'release-request',
  'release-response',
]);

/** PS3.8 9.3.4: 2/3/1, temporary congestion (the modality retries later). */
const TRANSIENT_REJECT: RejectSpec = {
  result: RejectResult.Transient,
  source: RejectSource.ServiceProviderPresentation,
  reason: RejectReason.TemporaryCongestion,
};

/** PS3.8 9.3.4: 1/1/1, rejected permanently, no reason given. */
const PERMANENT_NO_REASON: RejectSpec = {
  result: RejectResult.Permanent,
  source: RejectSource.ServiceUser,
  reason: RejectReason.NoReasonGiven,
};

function describeDropped(dropped: ReadonlyArray<{ id: number; problem: string }>): string {
  const shown = dropped.slice(0, 8).map((d) => `${d.id}: ${d.problem}`);
  return dropped.length > 8 ? `${shown.join(', ')}, … ${dropped.length} in all` : shown.join(', ');
}
