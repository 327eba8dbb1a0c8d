/**
 * The DICOM audit trail (IHE ATNA): turns the core's events (src/observe/events.ts) and a few facts the
 * lead reports directly into PS3.15 A.5 audit messages (messages.ts) and hands them to the sinks — a local
 * file (file.ts) and/or a syslog-over-TLS collector with a durable spool (syslog.ts).
 *
 * Event mapping:
 *  - 'association-refused'  -> Security Alert (A.5.3.11): Node Authentication (110126) for refusals of the
 *                              node itself (unknown calling AE, address, certificate), Use of Restricted
 *                              Function (110132) for the others; the A-ASSOCIATE-RJ result/source/reason
 *                              and refusal are in the Alert Description. A return-listener refusal for
 *                              'certificate-identity-mismatch' is the certificate / AE title mismatch alert.
 *  - 'tls-client-rejected'  -> Security Alert 110126 (TLS node authentication failure).
 *  - 'upstream-failed'      -> Security Alert 110126 when the archive's TLS authentication failed.
 *  - 'dimse-refused'        -> Security Alert 110132 naming the command and the move destination.
 *  - 'dimse-completed' C-FIND -> Query (A.5.3.10).
 *  - 'instance' + 'association-closed' -> DICOM Instances Transferred (A.5.3.7), EventActionCode R, one
 *    message per association, direction and outcome (A.5.2: successes and failures are never mixed in one
 *    message), participant objects per SOP Class with NumberOfInstances and the SOP Instance UIDs.
 *    Memory is bounded: a message is emitted early once it lists maxInstancesPerMessage instances, and
 *    at most maxTrackedAssociations associations are followed (the oldest is emitted when exceeded).
 *    'instance' events may trail 'association-closed' (ledger digests complete asynchronously): the
 *    message is emitted closeGraceMs after the close; later stragglers get a message of their own.
 */
import { EventEmitter } from 'node:events';
import { hostname as osHostname, userInfo } from 'node:os';
import type { AuditConfig } from '../../config/audit.js';
import { statusClass } from '../../dimse/command.js';
import type { UpstreamFailure } from '../../vocabulary/outcomes.js';
import type {
  AssociationSummary,
  Direction,
  ListenerKind,
  ProxyEvents,
  ProxyEventMap,
  TlsSessionInfo,
} from '../events.js';
import { FileAuditSink } from './file.js';
import {
  applicationActivityMessage,
  associationRejectedMessage,
  auditRecordingGapMessage,
  beginTransferringMessage,
  certificateAeMismatchMessage,
  configurationChangeMessage,
  dimseRefusedMessage,
  instancesTransferredMessage,
  queryMessage,
  tlsAuthenticationFailureMessage,
  type CertificateIdentity,
  type ConfigurationChangeKind,
  type PresentedCertificateIdentity,
  type EventOutcome,
  type MessageContext,
  type NodeParticipant,
  type ProxyIdentity,
  type PatientEntry,
  type SopClassEntry,
  type StudyEntry,
} from './messages.js';
import { SEVERITY_NOTICE, SyslogTlsSender } from './syslog.js';
import { CHECKPOINT_MSGID } from '../../integrity/witness.js';

export * from './messages.js';
export { FileAuditSink, type FileSinkAlarm } from './file.js';
export {
  SyslogTlsSender,
  formatSyslogMessage,
  frameOctetCounting,
  severityForOutcome,
  type SpoolAlarm,
  type SyslogSenderStats,
  type SyslogTlsSenderOptions,
} from './syslog.js';

/** One audit message as handed to the sinks. */
export interface AuditRecord {
  xml: string;
  outcome: EventOutcome;
  time: Date;
  /** EventID csd-code, e.g. "110104". */
  eventId: string;
}

/** Where audit messages go. write() returns false when the sink refused the message (it raised an alarm). */
export interface AuditSink {
  readonly name: string;
  write(record: AuditRecord): boolean;
  close(deadlineMs?: number): Promise<unknown>;
}

export interface AuditAlarm {
  sink: string;
  code: string;
  message: string;
  /** Audit messages (XML) that could not be recorded by that sink. */
  refused: string[];
}

export interface AuditTrailEvents {
  /** A sink refused or lost messages, or repaired its spool: log it, count it, page someone. */
  alarm: [AuditAlarm];
  /** Every message produced (before the sinks). */
  record: [AuditRecord];
}

export interface AuditTrailOptions {
  /** AE titles the proxy answers to (the routes' called AE titles), for its AlternativeUserID. */
  aeTitles?: readonly string[];
  /** Host name or address identifying the proxy node (A.5.2.4); default os.hostname(). */
  hostname?: string;
  /** A.5.2.1 UserID of the proxy process; default the process ID. */
  processId?: string;
  /** A.5.2.3 UserName of the proxy process; default "dimse-tls-proxy". */
  processName?: string;
  /**
   * Address (host) and AE title of a relay target by name: an upstream (forward listener) or a destination
   * (return listener), for that participant's NetworkAccessPointID and UserID.
   */
  target?: (
    name: string,
    listener: ListenerKind,
  ) => { address: string | null; aeTitle: string | null } | null;
  /** Who launched the application, for Application Activity (default the OS user, if known). */
  launchedBy?: string | null;
  /** Wait after 'association-closed' for trailing 'instance' events (default 2000 ms). */
  closeGraceMs?: number;
  /** Associations followed at once for transfer aggregation (default 10000). */
  maxTrackedAssociations?: number;
  now?: () => Date;
}

/**
 * Which 'upstream-failed' reasons are a failed TLS node authentication (Security Alert 110126); the others
 * are not security events. Exhaustive: a new upstream failure reason needs its answer here.
 */
const TLS_AUTH_FAILURES = {
  refused: false,
  timeout: false,
  unreachable: false,
  'certificate-expired': true,
  'certificate-not-yet-valid': true,
  'certificate-wrong-key-usage': true,
  'weak-key': true,
  'unknown-ca': true,
  'hostname-mismatch': true,
  'client-certificate-rejected': true,
  'handshake-failed': true,
  closed: false,
  'protocol-error': false,
} as const satisfies Record<UpstreamFailure, boolean>;

/** Distinct (study, SOP Class) entries in one Transferred message (a bound, like maxInstancesPerMessage). */
const MAX_SOP_CLASSES_PER_MESSAGE = 64;
/** Messages (patients × directions × outcomes) being collected for one association at a time. */
const MAX_GROUPS_PER_ASSOCIATION = 64;
/** Contexts of recently closed associations kept for stragglers. */
const RECENTLY_CLOSED = 1024;

/**
 * What is known of an association: the caller opened it (a modality on the forward listener, the archive on
 * the return listener), the target is where the proxy relays it (the archive, or a C-MOVE destination).
 * The TLS session is the archive's in both cases (upstream leg forward, downstream leg on return).
 */
interface AssociationContext {
  listener: ListenerKind;
  remoteAddress: string;
  callingAeTitle: string | null;
  calledAeTitle: string | null;
  target: string | null;
  targetAeTitle: string | null;
  tls: TlsSessionInfo | null;
}

/** Directions in which the caller sends (the first of each listener's pair in src/relay/association.ts). */
const CALLER_SENDS: ReadonlySet<Direction> = new Set<Direction>([
  'modality-to-archive',
  'archive-to-destination',
]);

/** The instances of one study in a message: Accession Numbers and instances by SOP Class. */
interface StudyGroup {
  accessions: Set<string>;
  sopClasses: Map<string, { count: number; uids: string[] }>;
}

/**
 * The instances of one message: one association, direction, outcome and patient (A.5.3.7: one patient per
 * message), by study ('' = the data set did not name its study).
 */
interface TransferGroup {
  direction: Direction;
  failed: boolean;
  patient: PatientEntry;
  studies: Map<string, StudyGroup>;
  /** Distinct (study, SOP Class) entries: bounded like the instances. */
  entries: number;
  listed: number;
  lastAt: Date;
  statuses: Set<string>;
}

interface AssociationState {
  id: string;
  context: AssociationContext | null;
  groups: Map<string, TransferGroup>;
  seen: number;
  closedInstances: number | null;
  timer: NodeJS.Timeout | null;
}

type Listener = (...args: never[]) => void;

export class AuditTrail extends EventEmitter<AuditTrailEvents> {
  private readonly proxy: ProxyIdentity;
  private readonly source: { sourceId: string; enterpriseSiteId: string | null };
  private readonly now: () => Date;
  private readonly closeGraceMs: number;
  private readonly maxTracked: number;
  private readonly maxInstances: number;
  private readonly patientNames: boolean;
  private readonly closeTimeoutMs: number;
  private readonly contexts = new Map<string, AssociationContext>();
  private readonly recentlyClosed = new Map<string, AssociationContext>();
  private readonly states = new Map<string, AssociationState>();
  private closed = false;

  constructor(
    config: AuditConfig,
    private readonly sinks: readonly AuditSink[],
    private readonly options: AuditTrailOptions = {},
  ) {
    super();
    this.source = { sourceId: config.sourceId, enterpriseSiteId: config.enterpriseSiteId };
    this.maxInstances = config.maxInstancesPerMessage;
    this.patientNames = config.patientNames;
    this.closeTimeoutMs = config.syslog?.closeTimeoutMs ?? 5_000;
    this.proxy = {
      processId: options.processId ?? String(process.pid),
      name: options.processName ?? 'dimse-tls-proxy',
      host: options.hostname ?? osHostname(),
      aeTitles: options.aeTitles ?? [],
    };
    this.now = options.now ?? (() => new Date());
    this.closeGraceMs = options.closeGraceMs ?? 2_000;
    this.maxTracked = options.maxTrackedAssociations ?? 10_000;
    for (const sink of sinks) this.watchSink(sink);
  }

  /** The syslog sender among the sinks, if any: its stats() feed metrics (spool bytes, refused, connected). */
  get syslogSender(): SyslogTlsSender | null {
    return (this.sinks.find((s) => s instanceof SyslogTlsSender) as SyslogTlsSender | undefined) ?? null;
  }

  // ------------------------------------------------------------------------------ facts from the lead

  /** PS3.15 A.5.3.1 Application Activity, Application Start (110120). */
  applicationStart(): void {
    this.record(
      applicationActivityMessage({ ...this.context(), kind: 'start', launchers: this.launchers() }),
      0,
    );
  }

  /** PS3.15 A.5.3.1 Application Activity, Application Stop (110121). */
  applicationStop(): void {
    this.record(
      applicationActivityMessage({ ...this.context(), kind: 'stop', launchers: this.launchers() }),
      0,
    );
  }

  /** Security Alert 110129 Security Configuration (or 110128 network / 110131 software), informative. */
  configurationChanged(
    detail:
      | string
      | {
          description: string;
          kind?: ConfigurationChangeKind;
          file?: string | null;
          changedBy?: string | null;
        },
  ): void {
    const d = typeof detail === 'string' ? { description: detail } : detail;
    this.record(configurationChangeMessage({ ...this.context(), ...d }), 0);
  }

  /**
   * Security Alert 110129 (or 110128 / 110131) for a configuration change that failed: outcome 4 when it
   * was refused before anything changed (the running configuration stays in force), 8 when it could not be
   * installed.
   */
  configurationChangeFailed(detail: {
    description: string;
    outcome: 4 | 8;
    kind?: ConfigurationChangeKind;
    file?: string | null;
    changedBy?: string | null;
  }): void {
    this.record(configurationChangeMessage({ ...this.context(), ...detail }), detail.outcome);
  }

  /**
   * Security Alert 110126: a TLS handshake with a peer failed. The return listener's failures already come
   * as 'tls-client-rejected' events (subscribe()): call this only for endpoints without such an event.
   */
  tlsAuthenticationFailure(e: {
    remoteAddress: string;
    remotePort?: number | null;
    reason: string;
    listener: string;
    certificate?: PresentedCertificateIdentity | null;
  }): void {
    this.record(tlsAuthenticationFailureMessage({ ...this.context(), ...e }), 8);
  }

  /**
   * Security Alert 110126: the calling AE title is not bound to the certificate the peer presented. The
   * return listener's refusals ('association-refused', refusal 'certificate-identity-mismatch') are mapped
   * to this by subscribe(): call it only for other endpoints.
   */
  certificateAeMismatch(e: {
    remoteAddress: string;
    callingAeTitle: string;
    certificateIdentity: CertificateIdentity;
  }): void {
    this.record(certificateAeMismatchMessage({ ...this.context(), ...e }), 8);
  }

  /**
   * A ledger checkpoint line, sent to the audit repository as a message of its own (MSGID
   * LEDGER_CHECKPOINT, not an audit message), so that a copy of every checkpoint is kept off the box
   * (integrity/witness.ts). Only over syslog: the local audit file is on the same box. Returns false when
   * there is no syslog sender or it refused the line (an alarm was raised).
   */
  witnessCheckpoint(line: string): boolean {
    const sender = this.syslogSender;
    if (sender === null) return false;
    return sender.send(line, { msgId: CHECKPOINT_MSGID, severity: SEVERITY_NOTICE });
  }

  /** PS3.15 A.5.3.3 Begin Transferring DICOM Instances (e.g. when a C-MOVE or C-GET is relayed). */
  beginTransferring(e: {
    source: NodeParticipant;
    destination: NodeParticipant;
    sopClasses?: readonly SopClassEntry[];
    proxyAeTitles?: readonly string[];
    outcome?: EventOutcome;
    description?: string | null;
  }): void {
    const outcome = e.outcome ?? 0;
    this.record(
      beginTransferringMessage({
        ...this.context(),
        sender: e.source,
        receiver: e.destination,
        sopClasses: e.sopClasses ?? [],
        ...(e.proxyAeTitles ? { proxyAeTitles: e.proxyAeTitles } : {}),
        outcome,
        outcomeDescription: e.description ?? null,
      }),
      outcome,
    );
  }

  /** PS3.15 A.5.3.10 Query, for callers that know more than the 'dimse-completed' event carries. */
  query(e: {
    requestor: NodeParticipant;
    responder: NodeParticipant;
    sopClassUid: string;
    queryDataset?: Uint8Array | null;
    transferSyntaxUid?: string | null;
    proxyAeTitles?: readonly string[];
    outcome?: EventOutcome;
    description?: string | null;
  }): void {
    const outcome = e.outcome ?? 0;
    this.record(
      queryMessage({ ...this.context(), ...e, outcome, outcomeDescription: e.description ?? null }),
      outcome,
    );
  }

  // ----------------------------------------------------------------------------------- core events

  /** Maps the core's events to audit messages. Returns a function that unsubscribes. */
  subscribe(events: ProxyEvents): () => void {
    const handlers: { [K in keyof ProxyEventMap]?: (...args: ProxyEventMap[K]) => void } = {
      'association-accepted': (e) => {
        this.contexts.set(e.id, {
          listener: e.listener,
          remoteAddress: e.remoteAddress,
          callingAeTitle: e.callingAeTitle,
          calledAeTitle: e.calledAeTitle,
          target: e.upstream || null,
          targetAeTitle: null,
          tls: e.tls,
        });
        this.boundContexts();
      },
      'association-refused': (e) => {
        if (e.refusal === 'certificate-identity-mismatch') {
          this.certificateAeMismatch({
            remoteAddress: e.remoteAddress,
            callingAeTitle: e.callingAeTitle,
            certificateIdentity: { subject: e.certificateSubject ?? null },
          });
          return;
        }
        this.record(associationRejectedMessage({ ...this.context(), ...e }), 4);
      },
      'tls-client-rejected': (e) => {
        this.tlsAuthenticationFailure({
          remoteAddress: e.remoteAddress,
          remotePort: e.remotePort ?? null,
          reason: `${e.reason}: ${e.message}`,
          listener: `${e.listener} listener`,
          certificate: e.certificate ?? null,
        });
      },
      'upstream-failed': (e) => {
        if (!TLS_AUTH_FAILURES[e.reason]) return;
        this.record(
          tlsAuthenticationFailureMessage({
            ...this.context(),
            remoteAddress: this.options.target?.(e.upstream, 'forward')?.address ?? e.upstream,
            reason: `${e.reason}: ${e.message}`,
            listener: `upstream ${e.upstream}`,
            outbound: true,
            certificate: e.certificate ?? null,
          }),
          8,
        );
      },
      'dimse-refused': (e) => {
        const ctx = this.contexts.get(e.id) ?? this.recentlyClosed.get(e.id) ?? null;
        this.record(
          dimseRefusedMessage({
            ...this.context(),
            remoteAddress: ctx?.remoteAddress ?? null,
            callingAeTitle: e.callingAeTitle,
            calledAeTitle: ctx?.calledAeTitle ?? null,
            command: e.command,
            reason: e.reason,
            status: e.status,
            moveDestination: e.moveDestination ?? null,
          }),
          4,
        );
      },
      'dimse-completed': (e) => {
        if (!/^C-FIND/.test(e.command)) return;
        this.onFindCompleted(e);
      },
      'retrieve-started': (e) => this.onRetrieveStarted(e),
      instance: (e) => this.onInstance(e),
      'association-closed': (e) => this.onClosed(e),
    };
    const off: (() => void)[] = [];
    for (const [name, fn] of Object.entries(handlers)) {
      events.on(name as never, fn as Listener as never);
      off.push(() => events.off(name as never, fn as Listener as never));
    }
    return () => off.forEach((f) => f());
  }

  /** Emits what is still aggregated, then closes every sink (each within deadlineMs). */
  async close(deadlineMs = this.closeTimeoutMs): Promise<void> {
    if (this.closed) return;
    for (const state of [...this.states.values()]) this.emitState(state);
    this.closed = true;
    await Promise.all(this.sinks.map((s) => s.close(deadlineMs).catch(() => undefined)));
  }

  /** Builds a record for an XML message and hands it to every sink. */
  record(xml: string, outcome: EventOutcome, eventId = /csd-code="(\d+)"/.exec(xml)?.[1] ?? ''): void {
    const record: AuditRecord = { xml, outcome, time: this.now(), eventId };
    this.emit('record', record);
    for (const sink of this.sinks) {
      try {
        sink.write(record);
      } catch (err) {
        this.alarm({ sink: sink.name, code: 'sink-failed', message: (err as Error).message, refused: [xml] });
      }
    }
  }

  // --------------------------------------------------------------------------------------- internals

  /**
   * Alarms are never dropped: with no 'alarm' listener they go to stderr as a JSON line, refused messages
   * included, so that what the trail could not record is still somewhere.
   */
  private alarm(a: AuditAlarm): void {
    if (this.listenerCount('alarm') > 0) {
      this.emit('alarm', a);
      return;
    }
    process.stderr.write(
      JSON.stringify({ event: 'audit-alarm', time: this.now().toISOString(), ...a }) + '\n',
    );
  }

  private context(): MessageContext {
    return { time: this.now(), source: this.source, proxy: this.proxy };
  }

  private launchers(): { userId: string; requestor: boolean }[] {
    let user = this.options.launchedBy;
    if (user === undefined) {
      try {
        user = userInfo().username;
      } catch {
        user = null;
      }
    }
    return user ? [{ userId: user, requestor: true }] : [];
  }

  private watchSink(sink: AuditSink): void {
    const emitter = sink as unknown as Partial<EventEmitter>;
    if (typeof emitter.on !== 'function') return;
    emitter.on('alarm', (a: { code: string; message: string; refused?: string | string[] }) => {
      const refused = a.refused === undefined ? [] : Array.isArray(a.refused) ? a.refused : [a.refused];
      this.alarm({ sink: sink.name, code: a.code, message: a.message, refused });
    });
    if (sink instanceof SyslogTlsSender) {
      sink.on('alarm-cleared', (c) => {
        // The hole in the trail goes on record as soon as the spool accepts messages again.
        this.record(
          auditRecordingGapMessage({
            ...this.context(),
            refused: c.refused,
            since: c.since,
            until: c.until,
            reason: 'audit spool full (syslog repository unreachable)',
          }),
          8,
        );
      });
    }
  }

  private boundContexts(): void {
    while (this.contexts.size > this.maxTracked) {
      const oldest = this.contexts.keys().next().value as string;
      this.contexts.delete(oldest);
    }
  }

  private contextOf(id: string): AssociationContext | null {
    return this.contexts.get(id) ?? this.recentlyClosed.get(id) ?? null;
  }

  /**
   * PS3.15 A.5.3.3 Begin Transferring: a C-MOVE or C-GET identifier has been relayed to the archive, which
   * is the source; the destination is the Move Destination (C-MOVE) or the requestor itself (C-GET). The
   * Patient and Study are the identifier's keys (a Patient-level retrieve names no study).
   */
  private onRetrieveStarted(e: ProxyEventMap['retrieve-started'][0]): void {
    const ctx = this.contextOf(e.id);
    const parties = this.parties(ctx, e.direction);
    const d = e.dataset;
    const destination: NodeParticipant =
      e.command === 'C-MOVE'
        ? { aeTitle: e.moveDestination, address: null, requestor: false }
        : { ...parties.sender, requestor: true };
    const sopClass = e.sopClassUid ?? 'unknown';
    this.record(
      beginTransferringMessage({
        ...this.context(),
        sender: { ...parties.receiver, requestor: false },
        receiver: destination,
        proxyAeTitles: parties.proxyAeTitles,
        sopClasses: d.studyInstanceUid === null ? [{ uid: sopClass, numberOfInstances: 0 }] : [],
        studies:
          d.studyInstanceUid === null
            ? []
            : [
                {
                  studyInstanceUid: d.studyInstanceUid,
                  accessionNumbers: d.accessionNumber === null ? [] : [d.accessionNumber],
                  sopClasses: [],
                },
              ],
        patient: {
          id: d.patientId,
          issuer: d.issuerOfPatientId,
          name: this.patientNames ? d.patientName : null,
        },
        outcomeDescription: `${e.command} requested by ${ctx?.callingAeTitle ?? 'unknown'} (${sopClass})`,
      }),
      0,
    );
  }

  private onFindCompleted(e: ProxyEventMap['dimse-completed'][0]): void {
    const ctx = this.contextOf(e.id);
    const sopClassUid = e.sopClassUid ?? 'unknown';
    const parties = this.parties(ctx, e.direction);
    const cls = statusClass(e.status);
    const outcome: EventOutcome = cls === 'failure' ? 4 : 0;
    const status = `0x${e.status.toString(16).toUpperCase().padStart(4, '0')}`;
    this.record(
      queryMessage({
        ...this.context(),
        requestor: { ...parties.sender, requestor: true },
        responder: { ...parties.receiver, requestor: false },
        proxyAeTitles: parties.proxyAeTitles,
        sopClassUid,
        ...(e.query
          ? {
              queryDataset: Buffer.from(e.query.identifier, 'base64'),
              transferSyntaxUid: e.query.transferSyntaxUid,
              queryTruncated: e.query.truncated,
            }
          : {}),
        outcome,
        outcomeDescription: outcome === 0 ? null : `${e.command} completed with status ${status} (${cls})`,
      }),
      outcome,
    );
  }

  /**
   * Sender and receiver of what travelled in `direction` (for a request: who issued it, who answers). The
   * caller opened the association: it is the requestor whichever way the data went.
   */
  private parties(
    ctx: AssociationContext | null,
    direction: Direction,
  ): { sender: NodeParticipant; receiver: NodeParticipant; proxyAeTitles: (string | null)[] } {
    const listener: ListenerKind =
      ctx?.listener ??
      (direction === 'archive-to-destination' || direction === 'destination-to-archive'
        ? 'return'
        : 'forward');
    const info = ctx?.target ? (this.options.target?.(ctx.target, listener) ?? null) : null;
    const tls = ctx?.tls ?? null;
    const certificate =
      tls && (tls.peerSubject || tls.peerFingerprint256)
        ? { subject: tls.peerSubject, fingerprint256: tls.peerFingerprint256 }
        : null;
    // The archive's certificate belongs to the target forward, to the caller on the return listener.
    const caller: NodeParticipant = {
      aeTitle: ctx?.callingAeTitle ?? null,
      address: ctx?.remoteAddress ?? null,
      requestor: true,
      certificate: listener === 'return' ? certificate : null,
    };
    const target: NodeParticipant = {
      aeTitle: ctx?.targetAeTitle ?? info?.aeTitle ?? null,
      address: info?.address ?? ctx?.target ?? null,
      requestor: false,
      certificate: listener === 'forward' ? certificate : null,
    };
    const proxyAeTitles = [ctx?.calledAeTitle ?? null];
    return CALLER_SENDS.has(direction)
      ? { sender: caller, receiver: target, proxyAeTitles }
      : { sender: target, receiver: caller, proxyAeTitles };
  }

  private stateOf(id: string): AssociationState {
    let state = this.states.get(id);
    if (state === undefined) {
      state = {
        id,
        context: this.contextOf(id),
        groups: new Map(),
        seen: 0,
        closedInstances: null,
        timer: null,
      };
      this.states.set(id, state);
      if (this.states.size > this.maxTracked) {
        const oldest = this.states.values().next().value as AssociationState;
        this.emitState(oldest);
      }
    }
    return state;
  }

  private onInstance(e: ProxyEventMap['instance'][0]): void {
    const state = this.stateOf(e.id);
    const failed = e.status === null || statusClass(e.status) === 'failure';
    const d = e.dataset;
    const key = `${e.direction}:${failed ? 'failed' : 'ok'}:${d.patientId ?? ''}^${d.issuerOfPatientId ?? ''}`;
    let group = state.groups.get(key);
    if (group === undefined) {
      if (state.groups.size >= MAX_GROUPS_PER_ASSOCIATION) {
        const [oldestKey, oldest] = state.groups.entries().next().value as [string, TransferGroup];
        state.groups.delete(oldestKey);
        this.emitGroup(state, oldest);
      }
      group = {
        direction: e.direction,
        failed,
        patient: {
          id: d.patientId,
          issuer: d.issuerOfPatientId,
          name: this.patientNames ? d.patientName : null,
        },
        studies: new Map(),
        entries: 0,
        listed: 0,
        lastAt: this.now(),
        statuses: new Set(),
      };
      state.groups.set(key, group);
    }
    const studyUid = d.studyInstanceUid ?? '';
    let study = group.studies.get(studyUid);
    if (study === undefined) {
      study = { accessions: new Set(), sopClasses: new Map() };
      group.studies.set(studyUid, study);
    }
    if (d.accessionNumber !== null && study.accessions.size < 16) study.accessions.add(d.accessionNumber);
    let entry = study.sopClasses.get(e.sopClassUid);
    if (entry === undefined) {
      entry = { count: 0, uids: [] };
      study.sopClasses.set(e.sopClassUid, entry);
      group.entries++;
    }
    entry.count++;
    entry.uids.push(e.sopInstanceUid);
    group.listed++;
    group.lastAt = this.now();
    if (failed) {
      group.statuses.add(
        e.status === null ? 'no response' : `0x${e.status.toString(16).toUpperCase().padStart(4, '0')}`,
      );
    }
    state.seen++;
    if (group.listed >= this.maxInstances || group.entries >= MAX_SOP_CLASSES_PER_MESSAGE) {
      state.groups.delete(key);
      this.emitGroup(state, group);
    }
    // A straggler after the association closed: emitted after the grace period.
    if (state.closedInstances !== null && state.timer === null) this.armState(state);
  }

  private onClosed(summary: AssociationSummary): void {
    const ctx: AssociationContext = {
      listener: summary.listener,
      remoteAddress: summary.remoteAddress,
      callingAeTitle: summary.callingAeTitle,
      calledAeTitle: summary.calledAeTitle,
      target: summary.upstream,
      targetAeTitle: summary.upstreamAeTitle,
      tls: summary.tls,
    };
    this.contexts.delete(summary.id);
    this.recentlyClosed.set(summary.id, ctx);
    while (this.recentlyClosed.size > RECENTLY_CLOSED) {
      this.recentlyClosed.delete(this.recentlyClosed.keys().next().value as string);
    }
    const state = this.states.get(summary.id);
    if (state === undefined && summary.instances === 0) return;
    const s = state ?? this.stateOf(summary.id);
    s.context = ctx;
    s.closedInstances = summary.instances;
    this.armState(s);
  }

  private armState(state: AssociationState): void {
    if (state.timer !== null) return;
    if (this.closed) {
      this.emitState(state);
      return;
    }
    state.timer = setTimeout(() => {
      state.timer = null;
      this.emitState(state);
    }, this.closeGraceMs);
    state.timer.unref();
  }

  /** Emits every group of an association and forgets it. */
  private emitState(state: AssociationState): void {
    if (state.timer !== null) clearTimeout(state.timer);
    state.timer = null;
    this.states.delete(state.id);
    state.context = state.context ?? this.contextOf(state.id);
    for (const group of state.groups.values()) this.emitGroup(state, group);
    state.groups.clear();
    if (state.seen === 0 && (state.closedInstances ?? 0) > 0) {
      // Instances were relayed but none was reported with its SOP class: still on record.
      this.record(
        instancesTransferredMessage({
          ...this.context(),
          ...this.parties(
            state.context,
            state.context?.listener === 'return' ? 'archive-to-destination' : 'modality-to-archive',
          ),
          sopClasses: [],
          outcome: 0,
          outcomeDescription: `${state.closedInstances} instance(s) relayed; SOP classes not reported`,
        }),
        0,
      );
    }
  }

  private emitGroup(state: AssociationState, group: TransferGroup): void {
    const entries = (m: StudyGroup['sopClasses']): SopClassEntry[] =>
      [...m].map(([uid, e]) => ({ uid, numberOfInstances: e.count, instanceUids: e.uids }));
    const studies: StudyEntry[] = [];
    let unknownStudy: SopClassEntry[] = [];
    for (const [uid, study] of group.studies) {
      if (uid === '') unknownStudy = entries(study.sopClasses);
      else {
        studies.push({
          studyInstanceUid: uid,
          accessionNumbers: [...study.accessions],
          sopClasses: entries(study.sopClasses),
        });
      }
    }
    const outcome: EventOutcome = group.failed ? 4 : 0;
    const description = group.failed
      ? `${group.listed} instance(s) not stored (status ${[...group.statuses].join(', ')})`
      : null;
    this.record(
      instancesTransferredMessage({
        ...this.context(),
        time: group.lastAt,
        ...this.parties(state.context ?? this.contextOf(state.id), group.direction),
        sopClasses: unknownStudy,
        studies,
        patient: group.patient,
        outcome,
        outcomeDescription: description,
      }),
      outcome,
    );
  }
}

/**
 * Builds the sinks the configuration asks for (file, syslog), starts them and returns the trail. Does not
 * subscribe to events nor send Application Start: the caller does (trail.subscribe(events);
 * trail.applicationStart()).
 */
export async function openAuditTrail(
  config: AuditConfig,
  options: AuditTrailOptions = {},
): Promise<AuditTrail> {
  const file = config.file !== null ? new FileAuditSink(config.file) : null;
  const syslog =
    config.syslog !== null
      ? SyslogTlsSender.fromConfig(config.syslog, { procId: options.processId ?? String(process.pid) })
      : null;
  const sinks = [file, syslog].filter((s): s is FileAuditSink | SyslogTlsSender => s !== null);
  // The trail exists before the sinks start, so alarms raised while starting (spool repair) reach it.
  const trail = new AuditTrail(config, sinks, options);
  try {
    await file?.start();
    await syslog?.start();
  } catch (err) {
    await Promise.all(sinks.map((s) => s.close(0).catch(() => undefined)));
    throw err;
  }
  return trail;
}

/** rsyslog's default $MaxMessageSize (8 KiB); syslog-ng's log-msg-size default is 64 KiB. */
export const COMMON_SYSLOG_MESSAGE_LIMIT = 8 * 1024;

/**
 * The largest DICOM Instances Transferred message this configuration can produce, in bytes of the RFC
 * 5424 message (header and BOM included): maxInstancesPerMessage instances with 64-character UIDs, under
 * long AE titles, addresses and certificate names — what `check-config` compares with the limits of
 * common syslog receivers.
 */
export function largestTransferMessageBytes(
  config: Pick<AuditConfig, 'maxInstancesPerMessage' | 'sourceId'>,
): number {
  const uid = (n: number): string =>
    `1.2.826.0.1.3680043.2.1125.${String(n).padStart(64 - 27, '9')}`.slice(0, 64);
  const ae = 'A'.repeat(16);
  const node = { aeTitle: ae, address: 'ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255', requestor: true };
  const xml = instancesTransferredMessage({
    time: new Date(0),
    source: { sourceId: config.sourceId, enterpriseSiteId: 'S'.repeat(64) },
    proxy: { processId: '4194304', name: 'dimse-tls-proxy', host: 'h'.repeat(64), aeTitles: [ae] },
    sender: node,
    receiver: {
      ...node,
      requestor: false,
      certificate: { subject: `CN=${'c'.repeat(64)}`, fingerprint256: 'AA:'.repeat(31) + 'AA' },
    },
    proxyAeTitles: [ae],
    sopClasses: [],
    studies: [
      {
        studyInstanceUid: uid(0),
        accessionNumbers: ['X'.repeat(16)],
        sopClasses: [
          {
            uid: uid(1),
            numberOfInstances: config.maxInstancesPerMessage,
            instanceUids: Array.from({ length: config.maxInstancesPerMessage }, (_, i) => uid(i + 2)),
          },
        ],
      },
    ],
    patient: { id: 'P'.repeat(64), issuer: 'I'.repeat(64), name: 'N'.repeat(64) },
  });
  // <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - BOM (RFC 5424 6): at most ~ 1 + 4 + 32 + 255 + 48 + 128 + 32 + 8.
  return Buffer.byteLength(xml, 'utf8') + 512;
}
