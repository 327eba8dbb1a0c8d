// The messages between the daemon's process (the primary: ledger, audit, metrics, logs, reload, admin)
// and its relay workers, over the node:cluster IPC channel with the 'advanced' (structured clone)
// serialization. Everything a worker observes leaves it as one ordered stream of items, batched per turn
// of its event loop (Outbox), so the primary sees each association's events in the order they happened.
import type { ProxyConfig, WorkersConfig } from '../config/types.js';
import type { CommitmentEvidence, InstanceEvidence } from '../integrity/types.js';
import type { AdmissionRefusal } from '../relay/association.js';
import type { LedgerFailureMode } from '../config/types.js';
import type { PendingLimits } from '../relay/pending.js';
import type { ConnectionRefusal, ListenerKind } from '../vocabulary/outcomes.js';
import type { LiveAssociation } from '../observe/events.js';

/** The daemon's answer to a worker's take-pending: null = counted, else the limit it is over. */
export interface PendingAnswer {
  token: number;
  refused: { reason: ConnectionRefusal; message: string } | null;
}

/** What a worker needs to run: the configuration the primary validated, and its place among the workers. */
export interface WorkerInit {
  t: 'init';
  config: ProxyConfig;
  /** 1..workers: stable over restarts (a restarted worker takes the index of the one it replaces). */
  index: number;
  workers: number;
  balance: WorkersConfig['balance'];
  /** Ports to bind instead of the configured ones (reuseport with port 0: the first worker's ports). */
  ports: { forward: number | null; return: number | null };
  /** null = no ledger configured. */
  ledger: { onFailure: LedgerFailureMode; healthy: boolean } | null;
}

export interface LedgerAck {
  seq: number;
  /** written: the record's write() returned; done: append settled (error set when it failed). */
  kind: 'written' | 'done';
  error?: string;
}

export type PrimaryMessage =
  | WorkerInit
  | { t: 'reload'; seq: number; config: ProxyConfig }
  | { t: 'ledger-health'; healthy: boolean }
  | {
      t: 'acks';
      ledger: LedgerAck[];
      admission: Array<{ id: string; over: AdmissionRefusal | null }>;
      pending: PendingAnswer[];
    }
  | { t: 'drain'; graceMs: number }
  | { t: 'associations'; seq: number };

/** One observation or request of a worker, in the order it happened. */
export type WorkerItem =
  | { k: 'event'; name: string; payload: unknown }
  | { k: 'append'; seq: number; evidence: InstanceEvidence }
  | { k: 'commit'; seq: number; evidence: CommitmentEvidence }
  | { k: 'reserve'; id: string; peerAeTitle: string; peerLimit: number; maxAssociations: number }
  | { k: 'release'; id: string }
  | {
      k: 'take-pending';
      token: number;
      listener: ListenerKind;
      remoteAddress: string;
      listed: boolean;
      limits: PendingLimits;
    }
  | { k: 'release-pending'; token: number };

export interface ListeningReport {
  forward: { address: string; port: number };
  return: { address: string; port: number } | null;
}

export type WorkerMessage =
  | { t: 'items'; items: WorkerItem[] }
  | ({ t: 'listening' } & ListeningReport)
  | { t: 'failed'; stage: 'start' | 'listen'; message: string }
  | { t: 'reloaded'; seq: number; rebound: string[] }
  | { t: 'reload-failed'; seq: number; message: string }
  | { t: 'drained' }
  | { t: 'associations'; seq: number; list: LiveAssociation[] };

/**
 * Items queued during one turn of the event loop and sent as one message at its end: one IPC message per
 * turn instead of one per event, and nothing is reordered.
 */
export class Outbox<T> {
  private items: T[] = [];
  private scheduled = false;

  constructor(private readonly send: (items: T[]) => void) {}

  push(item: T): void {
    this.items.push(item);
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => this.flush());
  }

  /** Send what is queued now (also called before a worker reports that it drained). */
  flush(): void {
    this.scheduled = false;
    if (this.items.length === 0) return;
    const items = this.items;
    this.items = [];
    this.send(items);
  }
}

/**
 * A message of this protocol (an object with its tag `t`), as opposed to node:cluster's own messages on
 * the same channel. T: the direction the receiver expects.
 */
export function isMessage<T extends WorkerMessage | PrimaryMessage>(m: unknown): m is T {
  return typeof m === 'object' && m !== null && typeof (m as { t?: unknown }).t === 'string';
}
