// The relay workers (workers: N > 1), seen from the daemon's process (the primary). The primary keeps
// everything that must exist once: the ledger writer (one chain, fed by every worker), the association
// counts behind the limits (admission.ts), logs, metrics and the audit trail (they subscribe to `events`,
// where every worker's events are re-emitted in order), reload and the admin endpoint. It offers the
// daemon the same surface as a ProxyServer, so cli/start.ts wires either the same way.
//
// round-robin: the primary accepts each connection and hands it to a worker (node:cluster SCHED_RR);
// reuseport: every worker binds the listeners itself with SO_REUSEPORT and the kernel picks one per
// connection (by a hash of the addresses and ports). A worker that exits is restarted (backoff while it
// keeps failing); the associations it carried end with outcome worker-exited, the others are untouched.
import cluster, { type Worker } from 'node:cluster';
import { fileURLToPath } from 'node:url';
import { extname } from 'node:path';
import type { AddressInfo } from 'node:net';
import {
  ProxyEvents,
  type AssociationSummary,
  type LiveAssociation,
  type ProxyEventMap,
} from '../observe/events.js';
import type { LedgerSink } from '../integrity/types.js';
import type { RuntimeSnapshot } from '../runtime/snapshot.js';
import type { LedgerFailureMode, ProxyConfig, WorkersConfig } from '../config/types.js';
import type { AdmissionRefusal } from '../relay/association.js';
import { ClusterAdmission } from './admission.js';
import {
  Outbox,
  isMessage,
  type LedgerAck,
  type ListeningReport,
  type PendingAnswer,
  type WorkerItem,
  type WorkerMessage,
} from './protocol.js';

/** A restarted worker that fails again within this time waits twice as long before the next start. */
const STABLE_AFTER_MS = 30_000;
const RESTART_DELAY_MIN_MS = 100;
const RESTART_DELAY_MAX_MS = 30_000;
/** How long a worker may take from fork to listening before it counts as failed. */
const START_TIMEOUT_MS = 30_000;
/** A worker that has not sent its association list within this time is left out of it. */
const LIST_TIMEOUT_MS = 2_000;
/** A reload a worker has not answered within this time has failed. */
const RELOAD_TIMEOUT_MS = 30_000;

type AckItem =
  | { k: 'ledger'; ack: LedgerAck }
  | { k: 'admission'; id: string; over: AdmissionRefusal | null }
  | { k: 'pending'; answer: PendingAnswer };

/** What the primary tracks of an accepted association, to end it properly if its worker dies. */
interface Carried {
  accepted: ProxyEventMap['association-accepted'][0];
  startedAt: number;
}

class Slot {
  worker: Worker | null = null;
  listening: ListeningReport | null = null;
  restarts = 0;
  startedAt = 0;
  restartDelayMs = RESTART_DELAY_MIN_MS;
  restartTimer: NodeJS.Timeout | null = null;
  readonly carried = new Map<string, Carried>();
  acks: Outbox<AckItem> | null = null;
  drained = false;
  constructor(readonly index: number) {}
}

/** How many workers `workers.count` means on this machine. */
export function resolveWorkerCount(count: WorkersConfig['count'], available: number): number {
  return count === 'auto' ? Math.max(1, available) : count;
}

/** The worker entry module next to this one's tree: dist/worker.js, or src/worker.ts under tsx. */
function workerEntry(): string {
  const ext = extname(fileURLToPath(import.meta.url));
  return fileURLToPath(new URL(`../worker${ext}`, import.meta.url));
}

export interface WorkerPoolOptions {
  count: number;
  balance: WorkersConfig['balance'];
  /** The one ledger writer (null: no ledger configured). */
  ledger: LedgerSink | null;
  onLedgerFailure: LedgerFailureMode;
  /** The worker entry module (default: dist/worker.js, or src/worker.ts under tsx). */
  entry?: string;
}

export class WorkerPool {
  readonly events = new ProxyEvents();
  private config: ProxyConfig;
  private readonly slots: Slot[];
  private readonly admission = new ClusterAdmission();
  private stopping = false;
  private reloadSeq = 0;
  private listSeq = 0;
  /** Association lists asked of the workers, by `${index}:${seq}`. */
  private readonly lists = new Map<string, (list: LiveAssociation[]) => void>();
  private readonly reloads = new Map<
    string,
    { resolve: (rebound: string[]) => void; reject: (e: Error) => void }
  >();
  /** The ports the first worker bound (reuseport with a configured port 0: the others bind these). */
  private ports: { forward: number | null; return: number | null } = { forward: null, return: null };

  constructor(
    snapshot: RuntimeSnapshot,
    private readonly options: WorkerPoolOptions,
  ) {
    this.config = snapshot.config;
    this.slots = Array.from({ length: options.count }, (_, i) => new Slot(i + 1));
    cluster.setupPrimary({
      exec: options.entry ?? workerEntry(),
      args: [],
      execArgv: process.execArgv,
      serialization: 'advanced',
    });
    cluster.schedulingPolicy = options.balance === 'round-robin' ? cluster.SCHED_RR : cluster.SCHED_NONE;
  }

  /** Start every worker, one after the other; resolves with the forward listener's address. */
  async listen(): Promise<AddressInfo> {
    for (const slot of this.slots) {
      const report = await this.start(slot);
      if (this.options.balance === 'reuseport' && this.ports.forward === null) {
        this.ports = { forward: report.forward.port, return: report.return?.port ?? null };
      }
    }
    const first = this.slots[0]?.listening;
    if (!first) throw new Error('no relay worker is listening');
    return { address: first.forward.address, port: first.forward.port, family: '' };
  }

  /** The return listener's address (bound by listen() with the forward one). */
  async listenReturn(): Promise<AddressInfo | null> {
    const r = this.slots[0]?.listening?.return ?? null;
    return r ? { address: r.address, port: r.port, family: '' } : null;
  }

  /** True while every worker runs and listens (readiness). */
  listenersBound(): boolean {
    return this.slots.every((s) => s.worker !== null && s.listening !== null);
  }

  get liveAssociations(): number {
    return this.admission.total;
  }

  /**
   * The live associations of every worker (each tagged with its worker), asked for now; a worker that does
   * not answer within LIST_TIMEOUT_MS is left out (its count is still in liveAssociations).
   */
  async listAssociations(): Promise<LiveAssociation[]> {
    const lists = await Promise.all(
      this.slots.map(
        (slot) =>
          new Promise<LiveAssociation[]>((resolve) => {
            const worker = slot.worker;
            if (!worker?.isConnected()) {
              resolve([]);
              return;
            }
            const seq = ++this.listSeq;
            const key = `${slot.index}:${seq}`;
            const timer = setTimeout(() => {
              this.lists.delete(key);
              resolve([]);
            }, LIST_TIMEOUT_MS);
            this.lists.set(key, (list) => {
              clearTimeout(timer);
              resolve(list.map((a) => ({ ...a, worker: slot.index })));
            });
            worker.send({ t: 'associations', seq });
          }),
      ),
    );
    return lists.flat().sort((a, b) => a.startedAt.localeCompare(b.startedAt));
  }

  setLedgerHealthy(healthy: boolean): void {
    for (const s of this.slots) {
      if (s.worker?.isConnected()) s.worker.send({ t: 'ledger-health', healthy });
    }
  }

  private start(slot: Slot): Promise<ListeningReport> {
    const worker = cluster.fork();
    slot.worker = worker;
    slot.listening = null;
    slot.drained = false;
    slot.startedAt = Date.now();
    slot.acks = new Outbox<AckItem>((items) => {
      if (!worker.isConnected()) return;
      const ledger: LedgerAck[] = [];
      const admission: Array<{ id: string; over: AdmissionRefusal | null }> = [];
      const pending: PendingAnswer[] = [];
      for (const i of items) {
        if (i.k === 'ledger') ledger.push(i.ack);
        else if (i.k === 'admission') admission.push({ id: i.id, over: i.over });
        else pending.push(i.answer);
      }
      worker.send({ t: 'acks', ledger, admission, pending });
    });
    return new Promise<ListeningReport>((resolve, reject) => {
      let settled = false;
      const timer = setTimeout(() => {
        settle(new Error(`relay worker ${slot.index} did not listen within ${START_TIMEOUT_MS} ms`));
        worker.process.kill('SIGKILL');
      }, START_TIMEOUT_MS);
      const settle = (err: Error | null, report?: ListeningReport): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (err) reject(err);
        else if (report) resolve(report);
      };
      worker.on('online', () => {
        worker.send({
          t: 'init',
          config: this.config,
          index: slot.index,
          workers: this.slots.length,
          balance: this.options.balance,
          ports: this.ports,
          ledger: this.options.ledger
            ? { onFailure: this.options.onLedgerFailure, healthy: this.options.ledger.healthy }
            : null,
        });
      });
      worker.on('message', (m: unknown) => {
        if (!isMessage<WorkerMessage>(m)) return;
        if (m.t === 'listening') {
          slot.listening = { forward: m.forward, return: m.return };
          this.events.emit('worker-started', {
            worker: slot.index,
            pid: worker.process.pid ?? 0,
            restarts: slot.restarts,
          });
          settle(null, slot.listening);
        } else if (m.t === 'failed') {
          settle(new Error(`relay worker ${slot.index}: ${m.message}`));
          worker.process.kill('SIGTERM'); // it cannot serve: its exit starts the backoff
        } else {
          this.onMessage(slot, m);
        }
      });
      worker.on('exit', (code, signal) => {
        settle(
          new Error(`relay worker ${slot.index} exited (code ${code}, signal ${signal}) before listening`),
        );
        this.onExit(slot, worker, code, signal);
      });
    });
  }

  private onMessage(slot: Slot, m: WorkerMessage): void {
    switch (m.t) {
      case 'items':
        for (const item of m.items) this.onItem(slot, item);
        break;
      case 'reloaded':
      case 'reload-failed': {
        const key = `${slot.index}:${m.seq}`;
        const waiting = this.reloads.get(key);
        this.reloads.delete(key);
        if (m.t === 'reloaded') waiting?.resolve(m.rebound);
        else waiting?.reject(new Error(`relay worker ${slot.index}: ${m.message}`));
        break;
      }
      case 'drained':
        slot.drained = true;
        slot.worker?.disconnect();
        break;
      case 'associations': {
        const key = `${slot.index}:${m.seq}`;
        const waiting = this.lists.get(key);
        this.lists.delete(key);
        waiting?.(m.list);
        break;
      }
      default:
        break;
    }
  }

  private onItem(slot: Slot, item: WorkerItem): void {
    switch (item.k) {
      case 'event': {
        const name = item.name as keyof ProxyEventMap;
        let payload = item.payload as ProxyEventMap[typeof name][0];
        if (name === 'association-accepted') {
          const e = { ...(payload as ProxyEventMap['association-accepted'][0]), worker: slot.index };
          slot.carried.set(e.id, { accepted: e, startedAt: Date.now() });
          payload = e;
        } else if (name === 'association-closed') {
          slot.carried.delete((payload as AssociationSummary).id);
        }
        this.events.emit(name, payload as never);
        break;
      }
      case 'append': {
        const sink = this.options.ledger;
        const written = (): void => slot.acks?.push({ k: 'ledger', ack: { seq: item.seq, kind: 'written' } });
        this.answerRecord(slot, item.seq, sink ? sink.append(item.evidence, written) : null);
        break;
      }
      case 'commit': {
        const sink = this.options.ledger;
        this.answerRecord(slot, item.seq, sink?.appendCommitted?.(item.evidence) ?? Promise.resolve());
        break;
      }
      case 'reserve': {
        const over = this.admission.reserve(slot.index, item.id, item);
        slot.acks?.push({ k: 'admission', id: item.id, over });
        break;
      }
      case 'release':
        this.admission.release(item.id);
        break;
      case 'take-pending': {
        // A worker learns of a drain over IPC; until it does, the primary refuses its new connections.
        const refused = this.stopping
          ? { reason: 'shutting-down' as const, message: 'the proxy is shutting down; connection closed' }
          : this.admission.takePending(slot.index, item.token, item);
        slot.acks?.push({ k: 'pending', answer: { token: item.token, refused } });
        break;
      }
      case 'release-pending':
        this.admission.releasePending(slot.index, item.token);
        break;
    }
  }

  /** The worker's ledger request `seq` is done when `record` settles (null: no ledger is configured). */
  private answerRecord(slot: Slot, seq: number, record: Promise<void> | null): void {
    const done = (error?: string): void =>
      void slot.acks?.push({
        k: 'ledger',
        ack: { seq, kind: 'done', ...(error === undefined ? {} : { error }) },
      });
    if (!record) {
      done('no ledger is configured');
      return;
    }
    record.then(
      () => done(),
      (err: unknown) => done((err as Error)?.message ?? String(err)),
    );
  }

  private onExit(slot: Slot, worker: Worker, code: number | null, signal: string | null): void {
    if (slot.worker !== worker) return;
    slot.worker = null;
    slot.listening = null;
    slot.acks = null;
    this.admission.releaseWorker(slot.index);
    for (const [key, r] of [...this.reloads]) {
      if (key.startsWith(`${slot.index}:`)) {
        this.reloads.delete(key);
        r.resolve([]); // it restarts with the configuration current then
      }
    }
    if (this.stopping || slot.drained) {
      this.endCarried(slot, `relay worker ${slot.index} stopped`);
      return;
    }
    // Restart at once after a long run; back off while it keeps failing.
    const ranMs = Date.now() - slot.startedAt;
    slot.restartDelayMs =
      ranMs >= STABLE_AFTER_MS
        ? RESTART_DELAY_MIN_MS
        : Math.min(RESTART_DELAY_MAX_MS, Math.max(RESTART_DELAY_MIN_MS, slot.restartDelayMs * 2));
    const associations = slot.carried.size;
    this.events.emit('worker-exited', {
      worker: slot.index,
      pid: worker.process.pid ?? 0,
      code,
      signal,
      associations,
      restartInMs: slot.restartDelayMs,
    });
    this.endCarried(
      slot,
      `relay worker ${slot.index} (pid ${worker.process.pid ?? 0}) exited (${signal ? `signal ${signal}` : `code ${code}`}); the connections closed with it`,
    );
    slot.restartTimer = setTimeout(() => {
      slot.restartTimer = null;
      if (this.stopping) return;
      slot.restarts++;
      this.start(slot).catch(() => undefined); // a failed start ends in 'exit' again: backoff continues
    }, slot.restartDelayMs);
  }

  /** Each association a dead worker carried ends here, for the logs, metrics and audit trail. */
  private endCarried(slot: Slot, reason: string): void {
    const now = Date.now();
    for (const { accepted: a, startedAt } of slot.carried.values()) {
      this.events.emit('association-closed', {
        id: a.id,
        remoteAddress: a.remoteAddress,
        remotePort: 0,
        callingAeTitle: a.callingAeTitle,
        calledAeTitle: a.calledAeTitle,
        peer: a.callingAeTitle,
        upstream: a.upstream,
        upstreamAeTitle: null,
        listener: a.listener,
        outcome: 'worker-exited',
        reason,
        reject: null,
        startedAt: new Date(startedAt).toISOString(),
        durationMs: now - startedAt,
        bytesFromModality: 0,
        bytesFromArchive: 0,
        instances: 0,
        operations: {},
        tls: a.tls,
      });
    }
    slot.carried.clear();
  }

  /**
   * Every worker takes the new configuration (each builds its own TLS contexts from it); if one cannot,
   * those that did go back to the running one and the error is thrown, so all keep one policy.
   */
  async setSnapshot(snapshot: RuntimeSnapshot): Promise<{ rebound: string[] }> {
    const before = this.config;
    const applied: Slot[] = [];
    const apply = (slot: Slot, config: ProxyConfig): Promise<string[]> => {
      const worker = slot.worker;
      if (!worker?.isConnected()) return Promise.resolve([]);
      const seq = ++this.reloadSeq;
      const key = `${slot.index}:${seq}`;
      return new Promise<string[]>((resolve, reject) => {
        const timer = setTimeout(() => {
          this.reloads.delete(key);
          reject(
            new Error(
              `relay worker ${slot.index} did not apply the configuration within ${RELOAD_TIMEOUT_MS} ms`,
            ),
          );
        }, RELOAD_TIMEOUT_MS);
        this.reloads.set(key, {
          resolve: (r) => {
            clearTimeout(timer);
            resolve(r);
          },
          reject: (e) => {
            clearTimeout(timer);
            reject(e);
          },
        });
        worker.send({ t: 'reload', seq, config });
      });
    };
    const results = await Promise.allSettled(
      this.slots.map(async (s) => {
        const rebound = await apply(s, snapshot.config);
        applied.push(s);
        return rebound;
      }),
    );
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) {
      await Promise.allSettled(applied.map((s) => apply(s, before)));
      throw failed.reason instanceof Error ? failed.reason : new Error(String(failed.reason));
    }
    this.config = snapshot.config;
    const first = results.find((r): r is PromiseFulfilledResult<string[]> => r.status === 'fulfilled');
    return { rebound: first?.value ?? [] };
  }

  /**
   * Drain: every worker stops accepting, lets its associations finish up to graceMs, aborts the rest and
   * answers once its last ledger record is written; resolves when every worker has exited.
   */
  async close(graceMs = 0): Promise<void> {
    this.stopping = true;
    const exits: Promise<void>[] = [];
    for (const slot of this.slots) {
      if (slot.restartTimer) clearTimeout(slot.restartTimer);
      const worker = slot.worker;
      if (!worker) continue;
      exits.push(
        new Promise<void>((resolve) => {
          const kill = setTimeout(() => worker.process.kill('SIGKILL'), graceMs + 15_000);
          worker.once('exit', () => {
            clearTimeout(kill);
            resolve();
          });
        }),
      );
      if (worker.isConnected()) worker.send({ t: 'drain', graceMs });
      else worker.process.kill('SIGTERM');
    }
    await Promise.all(exits);
  }
}
