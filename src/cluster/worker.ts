// One relay worker (workers: N > 1). It relays associations exactly as the single process does: its own
// ProxyServer, hashing every instance itself. What is kept once for all workers lives in the primary and
// is reached over the IPC channel: every event (logs, metrics and audit subscribe to them there), every
// ledger record (one writer, one chain), and the association counts (the limits hold over all workers).
// A worker never loads the configuration file: it runs the configuration the primary validated.
import { ProxyEvents, type ProxyEventMap } from '../observe/events.js';
import { ProxyServer, type AdmissionBroker } from '../relay/server.js';
import type { AdmissionRefusal, LedgerBinding } from '../relay/association.js';
import { InlineHasher } from '../integrity/hasher.js';
import type { CommitmentEvidence, InstanceEvidence, LedgerSink } from '../integrity/types.js';
import { buildRuntimeSnapshot } from '../runtime/snapshot.js';
import { tuneRuntime } from '../util/gc.js';
import type { ProxyConfig } from '../config/types.js';
import {
  Outbox,
  isMessage,
  type LedgerAck,
  type PendingAnswer,
  type PrimaryMessage,
  type WorkerInit,
  type WorkerItem,
  type WorkerMessage,
} from './protocol.js';

/** Events that also go, in order, to the primary. */
class ForwardedEvents extends ProxyEvents {
  constructor(private readonly out: Outbox<WorkerItem>) {
    super();
  }

  override emit<K extends keyof ProxyEventMap>(name: K, ...args: ProxyEventMap[K]): boolean {
    this.out.push({ k: 'event', name, payload: args[0] });
    return super.emit(name, ...(args as never));
  }
}

/** The ledger as a worker sees it: records go to the primary's writer, answers come back by sequence. */
class RemoteLedger implements LedgerSink {
  healthy: boolean;
  private seq = 0;
  private readonly waiting = new Map<
    number,
    { written?: () => void; resolve: () => void; reject: (e: Error) => void }
  >();

  constructor(
    private readonly out: Outbox<WorkerItem>,
    healthy: boolean,
  ) {
    this.healthy = healthy;
  }

  append(evidence: InstanceEvidence, onWritten?: () => void): Promise<void> {
    const seq = ++this.seq;
    return new Promise((resolve, reject) => {
      this.waiting.set(seq, { ...(onWritten ? { written: onWritten } : {}), resolve, reject });
      this.out.push({ k: 'append', seq, evidence });
    });
  }

  appendCommitted(evidence: CommitmentEvidence): Promise<void> {
    const seq = ++this.seq;
    return new Promise((resolve, reject) => {
      this.waiting.set(seq, { resolve, reject });
      this.out.push({ k: 'commit', seq, evidence });
    });
  }

  answer(ack: LedgerAck): void {
    const w = this.waiting.get(ack.seq);
    if (!w) return;
    if (ack.kind === 'written') {
      const written = w.written;
      delete w.written;
      written?.();
      return;
    }
    this.waiting.delete(ack.seq);
    if (ack.error === undefined) w.resolve();
    else w.reject(new Error(ack.error));
  }
}

/** The association counts of every worker, kept by the primary (cluster/admission.ts). */
class RemoteAdmission implements AdmissionBroker {
  private readonly waiting = new Map<string, (over: AdmissionRefusal | null) => void>();
  private token = 0;
  private readonly pending = new Map<number, (answer: PendingAnswer['refused']) => void>();

  constructor(private readonly out: Outbox<WorkerItem>) {}

  reserve(
    id: string,
    request: { peerAeTitle: string; peerLimit: number; maxAssociations: number },
  ): Promise<AdmissionRefusal | null> {
    return new Promise((resolve) => {
      this.waiting.set(id, resolve);
      this.out.push({ k: 'reserve', id, ...request });
    });
  }

  release(id: string): void {
    this.waiting.get(id)?.(null);
    this.waiting.delete(id);
    this.out.push({ k: 'release', id });
    this.out.flush(); // at once: the peer may open its next association as soon as this one closed
  }

  takePending(
    request: Parameters<AdmissionBroker['takePending']>[0],
  ): ReturnType<AdmissionBroker['takePending']> {
    const token = ++this.token;
    return new Promise((resolve) => {
      this.pending.set(token, (answer) => {
        if (answer) {
          resolve({ kind: 'refused', reason: answer.reason, message: answer.message });
        } else {
          let held = true;
          resolve({
            kind: 'taken',
            release: () => {
              if (!held) return;
              held = false;
              this.out.push({ k: 'release-pending', token });
            },
          });
        }
      });
      this.out.push({ k: 'take-pending', token, ...request });
    });
  }

  answerPending(a: PendingAnswer): void {
    this.pending.get(a.token)?.(a.refused);
    this.pending.delete(a.token);
  }

  answer(id: string, over: AdmissionRefusal | null): void {
    this.waiting.get(id)?.(over);
    this.waiting.delete(id);
  }
}

function send(message: WorkerMessage): void {
  if (process.connected) process.send?.(message);
}

/**
 * Run this process as a relay worker until the primary drains it or the IPC channel closes. Resolves with
 * the exit code (the entry module exits with it).
 */
export async function runWorker(): Promise<number> {
  tuneRuntime();
  const init = await new Promise<WorkerInit>((resolve) => {
    const onMessage = (m: unknown): void => {
      if (isMessage<PrimaryMessage>(m) && m.t === 'init') {
        process.off('message', onMessage);
        resolve(m);
      }
    };
    process.on('message', onMessage);
  });
  const out = new Outbox<WorkerItem>((items) => send({ t: 'items', items }));
  const events = new ForwardedEvents(out);
  const ledgerSink = init.ledger ? new RemoteLedger(out, init.ledger.healthy) : null;
  const ledger: LedgerBinding | null =
    init.ledger && ledgerSink
      ? { sink: ledgerSink, onFailure: init.ledger.onFailure, hasher: new InlineHasher() }
      : null;
  const admission = new RemoteAdmission(out);

  let server: ProxyServer;
  try {
    server = new ProxyServer(buildRuntimeSnapshot(init.config), {
      events,
      ledger,
      workers: init.workers,
      admission,
      reusePort: init.balance === 'reuseport',
    });
  } catch (err) {
    send({ t: 'failed', stage: 'start', message: (err as Error).message });
    return 1;
  }
  try {
    const c = init.config;
    const forward = await server.listen(c.listen.host, init.ports.forward ?? c.listen.port);
    const ret = c.returnListener
      ? await server.listenReturn(c.returnListener.host, init.ports.return ?? c.returnListener.port)
      : null;
    send({
      t: 'listening',
      forward: { address: forward.address, port: forward.port },
      return: ret ? { address: ret.address, port: ret.port } : null,
    });
  } catch (err) {
    send({ t: 'failed', stage: 'listen', message: (err as Error).message });
    return 1;
  }

  return new Promise<number>((resolve) => {
    let draining = false;
    const drain = async (graceMs: number): Promise<void> => {
      if (draining) return;
      draining = true;
      await server.close(graceMs); // also waits for every ledger record to be answered
      out.flush();
      send({ t: 'drained' });
      resolve(0);
    };
    const apply = async (seq: number, config: ProxyConfig): Promise<void> => {
      try {
        const { rebound } = await server.setSnapshot(buildRuntimeSnapshot(config));
        send({ t: 'reloaded', seq, rebound });
      } catch (err) {
        send({ t: 'reload-failed', seq, message: (err as Error).message });
      }
    };
    process.on('message', (m: unknown) => {
      if (!isMessage<PrimaryMessage>(m)) return;
      const message: PrimaryMessage = m;
      switch (message.t) {
        case 'acks':
          for (const a of message.ledger) ledgerSink?.answer(a);
          for (const a of message.admission) admission.answer(a.id, a.over);
          for (const a of message.pending) admission.answerPending(a);
          break;
        case 'ledger-health':
          if (ledgerSink) ledgerSink.healthy = message.healthy;
          break;
        case 'reload':
          void apply(message.seq, message.config);
          break;
        case 'drain':
          void drain(message.graceMs);
          break;
        case 'associations':
          send({ t: 'associations', seq: message.seq, list: server.listAssociations() });
          break;
        case 'init':
          break;
      }
    });
    // The daemon process gone (killed, crashed), node:cluster exits this worker at once: nothing could be
    // recorded any more, so nothing is relayed; its connections close with it.
    // SIGTERM/SIGINT reach the whole process group from a terminal or a service manager: the primary
    // decides when workers drain, so these are ignored here.
    process.on('SIGTERM', () => undefined);
    process.on('SIGINT', () => undefined);
    process.on('SIGHUP', () => undefined);
  });
}
