// The integrity ledger's public shapes. The relay produces InstanceEvidence; a LedgerSink records it.
// Several worker processes will later share one chain: they will send evidence to the one process that
// owns the writer, so the relay only ever sees the LedgerSink interface.

export type TransferDirection =
  'modality-to-archive' | 'archive-to-modality' | 'archive-to-destination' | 'destination-to-archive';

/** What the relay knows about one transferred instance when its C-STORE-RSP arrives (or never does). */
export interface InstanceEvidence {
  /** ISO 8601 time the response was relayed (or the association ended without one). */
  time: string;
  association: string;
  direction: TransferDirection;
  callingAeTitle: string;
  calledAeTitle: string;
  upstreamAeTitle: string | null;
  /** Address of the modality / workstation side. */
  peerAddress: string;
  /** host:port of the archive side. */
  archiveAddress: string;
  /** SHA-256 fingerprint (hex, no colons, lower case) of the archive's TLS certificate. */
  archiveCertSha256: string | null;
  /** SHA-256 fingerprint of the client certificate on a TLS leg where one was presented, else null. */
  clientCertSha256: string | null;
  sopClassUid: string;
  sopInstanceUid: string;
  /** Study Instance UID read from the data set's first bytes (dicom/prefix.ts); null when not read. */
  studyInstanceUid?: string | null;
  transferSyntaxUid: string;
  /** Data set bytes (data PDV values) exactly as transferred. */
  bytes: number;
  /** SHA-256 (hex) over those bytes. */
  sha256: string;
  /** The C-STORE-RSP status, or null when none came. */
  status: number | null;
  /** 'success' | 'warning' | 'failure' from the status (PS3.7 Annex C), or 'no response: aborted'. */
  outcome: string;
  moveOriginatorAeTitle: string | null;
  moveOriginatorMessageId: number | null;
}

/** One instance a Storage Commitment N-EVENT-REPORT says the archive has committed (PS3.4 J.3.3). */
export interface CommitmentEvidence {
  sopClassUid: string;
  sopInstanceUid: string;
  transactionUid: string;
}

export interface LedgerSink {
  /**
   * Append one instance record; resolves once written (and synced, per the fsync policy). `onWritten`,
   * when the sink supports it, is called as soon as the record has been handed to the OS (its write()
   * returned), which with a batched fsync is before the promise resolves: the relay holds the archive's
   * success for the instance until then (whichever comes first).
   */
  append(evidence: InstanceEvidence, onWritten?: () => void): Promise<void>;
  /**
   * Append a `committed` record for an instance the archive reports committed; the sink finds the
   * instance record it confirms. Optional: a sink without it records instances only.
   */
  appendCommitted?(evidence: CommitmentEvidence): Promise<void>;
  /** False after a write failure (disk full, permission…), until a later write succeeds. */
  readonly healthy: boolean;
}
