// The association counts of every worker, kept in the primary: limits.maxAssociations and each peer's
// limit hold over all of them. A worker admits on its own counts first (a subset of these: never more
// lenient) and then asks here before it calls the archive; the answer is the same check the policy makes
// (policy.ts associationLimit), on the counts of all workers.
import { associationLimit } from '../policy/policy.js';
import type { AdmissionRefusal } from '../relay/association.js';
import { PendingConnections, type PendingLimits, type PendingSlot } from '../relay/pending.js';
import { pendingRefusal } from '../relay/server.js';
import type { ConnectionRefusal, ListenerKind } from '../vocabulary/outcomes.js';

interface Held {
  worker: number;
  peer: string;
}

export class ClusterAdmission {
  private readonly held = new Map<string, Held>();
  private readonly perPeer = new Map<string, number>();

  get total(): number {
    return this.held.size;
  }

  forPeer(aeTitle: string): number {
    return this.perPeer.get(aeTitle) ?? 0;
  }

  /** Count association `id` of `worker`, or give the limit it is over (then it is not counted). */
  reserve(
    worker: number,
    id: string,
    r: { peerAeTitle: string; peerLimit: number; maxAssociations: number },
  ): AdmissionRefusal | null {
    if (this.held.has(id)) return null;
    const over = associationLimit({
      calling: r.peerAeTitle,
      activeTotal: this.held.size,
      activeForPeer: this.forPeer(r.peerAeTitle),
      maxAssociations: r.maxAssociations,
      peerLimit: r.peerLimit,
    });
    if (over) return { ...over, message: `${over.message} (counted over all workers)` };
    this.held.set(id, { worker, peer: r.peerAeTitle });
    this.perPeer.set(r.peerAeTitle, this.forPeer(r.peerAeTitle) + 1);
    return null;
  }

  release(id: string): void {
    const h = this.held.get(id);
    if (!h) return;
    this.held.delete(id);
    const n = this.forPeer(h.peer) - 1;
    if (n <= 0) this.perPeer.delete(h.peer);
    else this.perPeer.set(h.peer, n);
  }

  /** Connections accepted by any worker and not admitted yet, per listener (limits.pending*). */
  private readonly pending: Record<ListenerKind, PendingConnections> = {
    forward: new PendingConnections(),
    return: new PendingConnections(),
  };
  private readonly pendingSlots = new Map<string, { worker: number; slot: PendingSlot }>();

  pendingTotal(listener: ListenerKind): number {
    return this.pending[listener].total;
  }

  /** Count connection `token` of `worker`, or give the limit it is over (the same check as one process's). */
  takePending(
    worker: number,
    token: number,
    r: { listener: ListenerKind; remoteAddress: string; listed: boolean; limits: PendingLimits },
  ): { reason: ConnectionRefusal; message: string } | null {
    const pending = this.pending[r.listener];
    const slot = pending.take(r.remoteAddress, r.listed, r.limits);
    if (typeof slot === 'string') {
      const message = pendingRefusal(
        slot,
        r.limits,
        r.listed,
        pending.fromSource(r.remoteAddress),
        pending.total,
      );
      return { reason: slot, message };
    }
    this.pendingSlots.set(`${worker}:${token}`, { worker, slot });
    return null;
  }

  releasePending(worker: number, token: number): void {
    const key = `${worker}:${token}`;
    this.pendingSlots.get(key)?.slot.release();
    this.pendingSlots.delete(key);
  }

  /** A worker exited: its associations and connections are gone with it. */
  releaseWorker(worker: number): void {
    for (const [id, h] of [...this.held]) if (h.worker === worker) this.release(id);
    for (const [key, p] of [...this.pendingSlots]) {
      if (p.worker !== worker) continue;
      p.slot.release();
      this.pendingSlots.delete(key);
    }
  }
}
