// Connections a listener has accepted and not admitted yet: in the TLS handshake (return listener),
// awaiting the A-ASSOCIATE-RQ (Sta2), or refused and awaiting the peer's close (Sta13). They are counted per
// source and in total, and room is kept for the addresses the configuration lists, so that one host that
// opens sockets and sends nothing cannot lock the peers out (limits.pendingPerAddress, pendingTotal,
// pendingReservedForPeers). A connection leaves this count when it is admitted (then limits.maxAssociations
// counts it) or closes.
import { parseRemoteAddress } from '../config/address.js';
import type { LimitsConfig } from '../config/types.js';
import type { ConnectionRefusal } from '../vocabulary/outcomes.js';

/** The limits that apply, taken from the snapshot current when the connection arrives. */
export type PendingLimits = Pick<
  LimitsConfig,
  'pendingPerAddress' | 'pendingTotal' | 'pendingReservedForPeers'
>;

/** One connection's place in the count; release() is idempotent. */
export interface PendingSlot {
  release(): void;
}

/**
 * The source a connection counts against: the IPv4 address (IPv4-mapped IPv6 included), or the /64 of an
 * IPv6 address (one host commonly holds a whole /64, so counting single IPv6 addresses would not bound it).
 */
export function sourceKey(remoteAddress: string): string {
  const address = parseRemoteAddress(remoteAddress);
  if (address === null) return remoteAddress;
  if (address.kind() === 'ipv4') return address.toString();
  const parts = address.toByteArray().slice(0, 8);
  return `${Buffer.from(parts).toString('hex')}/64`;
}

export class PendingConnections {
  private readonly bySource = new Map<string, number>();
  private all = 0;
  /** Connections from addresses no peer lists. */
  private unlisted = 0;

  /** Connections counted now. */
  get total(): number {
    return this.all;
  }

  /** Connections counted now from one source (see sourceKey). */
  fromSource(remoteAddress: string): number {
    return this.bySource.get(sourceKey(remoteAddress)) ?? 0;
  }

  /**
   * A place for a connection from `remoteAddress`, or the limit it is over. `listed`: a peer of this
   * listener is configured with this address (it may use the reserved part of pendingTotal).
   */
  take(remoteAddress: string, listed: boolean, limits: PendingLimits): PendingSlot | ConnectionRefusal {
    const key = sourceKey(remoteAddress);
    const fromSource = this.bySource.get(key) ?? 0;
    if (fromSource >= limits.pendingPerAddress) return 'per-address-limit';
    if (this.all >= limits.pendingTotal) return 'pending-limit';
    if (!listed && this.unlisted >= limits.pendingTotal - limits.pendingReservedForPeers)
      return 'pending-limit';
    this.bySource.set(key, fromSource + 1);
    this.all++;
    if (!listed) this.unlisted++;
    let held = true;
    return {
      release: () => {
        if (!held) return;
        held = false;
        const n = (this.bySource.get(key) ?? 1) - 1;
        if (n <= 0) this.bySource.delete(key);
        else this.bySource.set(key, n);
        this.all--;
        if (!listed) this.unlisted--;
      },
    };
  }
}
