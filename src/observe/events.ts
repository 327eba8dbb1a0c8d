// The core emits facts; logs, metrics, audit and the ledger subscribe. Nothing here calls back into the core.
import { EventEmitter } from 'node:events';
import type { DataSetSummary } from '../dicom/prefix.js';

import type {
  AssociationOutcome,
  ConnectionRefusal,
  Direction,
  ListenerKind,
  ProtocolErrorCode,
  ProtocolErrorSide,
  Refusal,
  TlsClientRejection,
  UpstreamFailure,
} from '../vocabulary/outcomes.js';

export type { AssociationOutcome, Direction, ListenerKind } from '../vocabulary/outcomes.js';

export interface RejectSpec {
  result: number;
  source: number;
  reason: number;
}

export interface TlsSessionInfo {
  protocol: string | null;
  cipher: string | null;
  peerSubject: string | null;
  peerFingerprint256: string | null;
}

/** Who and where an association is: what its live view and its closing summary both say. */
export interface AssociationParties {
  id: string;
  listener: ListenerKind;
  remoteAddress: string;
  remotePort: number;
  callingAeTitle: string | null;
  calledAeTitle: string | null;
  /** The admitted peer (null before admission). */
  peer: string | null;
  /** The upstream (forward) or receiver (return) it is relayed to, once chosen. */
  upstream: string | null;
  upstreamAeTitle: string | null;
}

export interface AssociationSummary extends AssociationParties {
  outcome: AssociationOutcome;
  reason: string | null;
  reject: RejectSpec | null;
  startedAt: string;
  durationMs: number;
  bytesFromModality: number;
  bytesFromArchive: number;
  instances: number;
  operations: Record<string, number>;
  tls: TlsSessionInfo | null;
}

/** The identifier of a C-FIND request, kept (bounded) for its Query audit message. */
export interface QueryIdentifier {
  /** Base64 of the identifier's first bound (relay/evidence.ts MAX_QUERY_IDENTIFIER), as relayed. */
  identifier: string;
  transferSyntaxUid: string;
  /** The identifier was longer than that bound. */
  truncated: boolean;
}

/** One association as it is now (GET /associations, `status --associations`). */
export interface LiveAssociation extends AssociationParties {
  /** PS3.8 states of the two legs: toward the caller, toward the far side. */
  state: { caller: string; far: string };
  startedAt: string;
  durationMs: number;
  /** DIMSE requests relayed so far, by command. */
  operations: Record<string, number>;
  bytesFromModality: number;
  bytesFromArchive: number;
  instances: number;
  /** The relay worker carrying it (workers > 1). */
  worker?: number;
}

export interface ProxyEventMap {
  'association-refused': [
    {
      id: string;
      remoteAddress: string;
      callingAeTitle: string;
      calledAeTitle: string;
      refusal: Refusal;
      reject: RejectSpec;
      message: string;
      listener: ListenerKind;
      /** Subject of the caller's certificate (return listener). */
      certificateSubject?: string;
    },
  ];
  'association-accepted': [
    {
      id: string;
      remoteAddress: string;
      callingAeTitle: string;
      calledAeTitle: string;
      upstream: string;
      listener: ListenerKind;
      acceptedContexts: number;
      refusedContexts: number;
      tls: TlsSessionInfo;
      /** The relay worker carrying it (workers: N > 1; set by the daemon's process). */
      worker?: number;
    },
  ];
  'upstream-failed': [
    {
      id: string;
      upstream: string;
      reason: UpstreamFailure;
      message: string;
      /** The certificate the archive presented, when the TLS handshake got that far (e.g. a weak key). */
      certificate?: { subject: string; issuer: string; fingerprint256: string } | null;
    },
  ];
  /** The upstream (archive, or a receiver on the return path) connection is up: TCP and TLS timings. */
  'upstream-connected': [
    {
      id: string;
      upstream: string;
      listener: ListenerKind;
      tls: boolean;
      connectMs: number;
      handshakeMs: number;
    },
  ];
  'dimse-refused': [
    {
      id: string;
      callingAeTitle: string;
      command: string;
      reason: string;
      status: number;
      moveDestination?: string;
    },
  ];
  'dimse-completed': [
    {
      id: string;
      direction: Direction;
      command: string;
      /** The request's Affected SOP Class UID (for a C-FIND: the information model). */
      sopClassUid: string | null;
      status: number;
      statusClass: string;
      durationMs: number;
      /** A C-FIND's identifier, as relayed (bounded), for the Query audit message. */
      query?: QueryIdentifier;
    },
  ];
  instance: [
    {
      id: string;
      direction: Direction;
      messageId: number;
      sopClassUid: string;
      sopInstanceUid: string;
      transferSyntaxUid: string;
      bytes: number;
      /** SHA-256 of the data set as transferred (null when no ledger is configured). */
      sha256: string | null;
      status: number | null;
      /** Patient and Study read from the data set's first bytes (dicom/prefix.ts); null fields = unknown. */
      dataset: DataSetSummary;
    },
  ];
  /**
   * A C-MOVE or C-GET request's identifier has been relayed: the archive is asked to begin transferring
   * the instances it names (PS3.15 A.5.3.3). `dataset`: the Patient and Study keys of the identifier.
   */
  'retrieve-started': [
    {
      id: string;
      direction: Direction;
      command: 'C-MOVE' | 'C-GET';
      sopClassUid: string | null;
      moveDestination: string | null;
      dataset: DataSetSummary;
    },
  ];
  'ledger-failed': [{ id: string; message: string }];
  /** A Storage Commitment N-EVENT-REPORT passed (PS3.4 J.3.3): how many instances it confirms / reports failed. */
  commitment: [
    { id: string; transactionUid: string | null; committed: number; failed: number; error: string | null },
  ];
  'protocol-error': [
    { id: string; side: ProtocolErrorSide; code: ProtocolErrorCode; message: string; abortReason: number },
  ];
  'association-closed': [AssociationSummary];
  'listener-error': [{ message: string }];
  /** A relay worker process is up and listening (workers: N > 1). */
  'worker-started': [{ worker: number; pid: number; restarts: number }];
  /**
   * A relay worker process exited other than by a drain: the associations it carried were closed with it
   * (each also ends with an 'association-closed' of outcome worker-exited); restartInMs: when it restarts.
   */
  'worker-exited': [
    {
      worker: number;
      pid: number;
      code: number | null;
      signal: string | null;
      associations: number;
      restartInMs: number | null;
    },
  ];
  /**
   * A connection closed before any association: refused when accepted (over a limit, or shutting down),
   * or, on the return listener, closed because its TLS handshake ran out of time.
   */
  'connection-refused': [
    {
      listener: ListenerKind;
      remoteAddress: string;
      remotePort: number;
      reason: ConnectionRefusal;
      message: string;
    },
  ];

  /** A TLS client of the return listener failed the handshake (no certificate, unknown CA, expired…). */
  'tls-client-rejected': [
    {
      listener: ListenerKind;
      remoteAddress: string;
      /** The client's source port, when known. */
      remotePort?: number;
      reason: TlsClientRejection;
      message: string;
      /** The certificate the client presented; null when it presented none or it is not known. */
      certificate?: { subject: string; issuer: string; fingerprint256: string } | null;
    },
  ];
}

export class ProxyEvents extends EventEmitter<ProxyEventMap> {}
