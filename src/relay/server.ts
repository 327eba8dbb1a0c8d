// The listeners: the plaintext one modalities connect to and, when configured, the mutual-TLS return
// listener the archive opens C-MOVE / storage commitment associations to. Owns the set of live
// associations and their counts (one budget for both listeners).
import * as net from 'node:net';
import * as tls from 'node:tls';
import { Association, type AssociationHost, type LedgerBinding } from './association.js';
import { RelayBudget } from './outbound.js';
import {
  classifyClientHandshakeError,
  peerIdentities,
  refuseClient,
  remoteEndpoint,
} from '../tls/identity.js';
import { ProxyEvents } from '../observe/events.js';
import { systemClock, type Clock } from '../util/clock.js';
import type { RuntimeSnapshot } from '../runtime/snapshot.js';

/** Bind `server` to host:port; resolves with the bound address. */
function bind(server: net.Server, host: string, port: number): Promise<net.AddressInfo> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error): void => reject(err);
    server.once('error', onError);
    server.listen({ host, port }, () => {
      server.removeListener('error', onError);
      resolve(server.address() as net.AddressInfo);
    });
  });
}

/** Stop accepting on `server`; its live connections are not touched. */
function unbind(server: net.Server | null): Promise<void> {
  return new Promise((resolve) => {
    if (!server?.listening) resolve();
    else server.close(() => resolve());
  });
}

export class ProxyServer implements AssociationHost {
  readonly events: ProxyEvents;
  private snapshot: RuntimeSnapshot;
  private server: net.Server;
  private returnServer: tls.Server | null = null;
  /** The addresses the listeners were bound with, as configured (port 0 stays 0). */
  private boundForward: { host: string; port: number } | null = null;
  private boundReturn: { host: string; port: number } | null = null;
  private readonly live = new Set<Association>();
  private readonly perPeer = new Map<string, number>();
  private admittedTotal = 0;
  private closing = false;

  readonly ledger: LedgerBinding | null;
  /** Time source of every association's timers (tests drive it). */
  private readonly clock: Clock;
  /** Bytes queued toward slower sockets over every live association (limits.relayBufferTotal). */
  readonly relayBudget: RelayBudget;

  constructor(
    snapshot: RuntimeSnapshot,
    options: { events?: ProxyEvents; ledger?: LedgerBinding | null; clock?: Clock } = {},
  ) {
    this.snapshot = snapshot;
    this.clock = options.clock ?? systemClock;
    this.events = options.events ?? new ProxyEvents();
    this.ledger = options.ledger ?? null;
    this.relayBudget = new RelayBudget(snapshot.config.limits.relayBufferTotal);
    this.server = this.createForwardServer();
    this.returnServer = this.createReturnServer(snapshot);
  }

  private createForwardServer(): net.Server {
    const server = net.createServer({ noDelay: true, pauseOnConnect: false }, (socket) =>
      this.onConnection(socket),
    );
    server.on('error', (err) => this.events.emit('listener-error', { message: err.message }));
    return server;
  }

  private createReturnServer(snapshot: RuntimeSnapshot): tls.Server | null {
    const rl = snapshot.config.returnListener;
    if (!rl || !snapshot.returnTls) return null;
    // PS3.15 B.12/B.13 on the return leg too; the caller must present a certificate from the CA bundle
    // (rejectUnauthorized), and its identity is then bound to the calling AE title by the policy.
    const server = tls.createServer(
      {
        ...snapshot.returnTls.options,
        requestCert: true,
        // The chain is verified in the handshake, the verdict given in onReturnConnection (refuseClient):
        // there the refused certificate can still be read, named in the log and the Security Alert.
        rejectUnauthorized: false,
        handshakeTimeout: rl.tls.handshakeTimeoutMs,
        noDelay: true,
      },
      (socket) => this.onReturnConnection(socket),
    );
    server.on('tlsClientError', (err, socket) => {
      this.events.emit('tls-client-rejected', {
        listener: 'return',
        ...remoteEndpoint(socket),
        certificate: null,
        reason: classifyClientHandshakeError(err, socket.authorizationError),
        message: socket.authorizationError
          ? `certificate verification failed: ${String(socket.authorizationError)}`
          : err.message,
      });
    });
    server.on('error', (err) => this.events.emit('listener-error', { message: err.message }));
    return server;
  }

  get current(): RuntimeSnapshot {
    return this.snapshot;
  }

  /**
   * New associations use the new snapshot; live ones keep theirs. Listener changes are applied first:
   * a moved listener is bound at its new address before the old one stops accepting (live associations
   * are not touched), and if binding fails nothing changes and the error is thrown.
   */
  async setSnapshot(snapshot: RuntimeSnapshot): Promise<{ rebound: string[] }> {
    const rebound: string[] = [];
    const { listen, returnListener: rl } = snapshot.config;
    let newForward: net.Server | null = null;
    let newReturn: tls.Server | null | undefined; // undefined = unchanged
    try {
      if (
        this.boundForward &&
        (this.boundForward.host !== listen.host || this.boundForward.port !== listen.port)
      ) {
        newForward = this.createForwardServer();
        await bind(newForward, listen.host, listen.port);
        rebound.push(`listen ${listen.host}:${listen.port}`);
      }
      if (this.boundForward) {
        const before = this.boundReturn;
        if (!rl && before) {
          newReturn = null;
          rebound.push('returnListener removed');
        } else if (rl && (!before || before.host !== rl.host || before.port !== rl.port)) {
          newReturn = this.createReturnServer(snapshot);
          if (newReturn) await bind(newReturn, rl.host, rl.port);
          rebound.push(`returnListener ${rl.host}:${rl.port}`);
        }
      }
    } catch (err) {
      void unbind(newForward);
      if (newReturn) void unbind(newReturn);
      throw err;
    }
    this.snapshot = snapshot;
    this.relayBudget.limit = snapshot.config.limits.relayBufferTotal;
    if (newForward) {
      const old = this.server;
      this.server = newForward;
      this.boundForward = { host: listen.host, port: listen.port };
      void unbind(old); // stops accepting now; its 'close' waits for the live connections, not us
    }
    if (newReturn !== undefined) {
      const old = this.returnServer;
      this.returnServer = newReturn;
      this.boundReturn = rl && newReturn ? { host: rl.host, port: rl.port } : null;
      void unbind(old);
    } else if (this.returnServer && snapshot.returnTls) {
      // New TLS sessions use the new certificates; live ones keep theirs.
      this.returnServer.setSecureContext(snapshot.returnTls.options);
    }
    return { rebound };
  }

  async listen(
    host = this.snapshot.config.listen.host,
    port = this.snapshot.config.listen.port,
  ): Promise<net.AddressInfo> {
    const addr = await bind(this.server, host, port);
    this.boundForward = { host, port };
    return addr;
  }

  address(): net.AddressInfo | null {
    const a = this.server.address();
    return a && typeof a === 'object' ? a : null;
  }

  /** Bind the return listener (resolves null when none is configured). */
  async listenReturn(
    host = this.snapshot.config.returnListener?.host,
    port = this.snapshot.config.returnListener?.port,
  ): Promise<net.AddressInfo | null> {
    const server = this.returnServer;
    if (!server || host === undefined || port === undefined) return null;
    const addr = await bind(server, host, port);
    this.boundReturn = { host, port };
    return addr;
  }

  returnAddress(): net.AddressInfo | null {
    const a = this.returnServer?.address();
    return a && typeof a === 'object' ? a : null;
  }

  /** True while every configured listener accepts connections (readiness). */
  listenersBound(): boolean {
    if (!this.server.listening) return false;
    return this.snapshot.config.returnListener === null || this.returnServer?.listening === true;
  }

  private onReturnConnection(socket: tls.TLSSocket): void {
    // No byte is read from a client refused here (tls/identity.ts refuseClient: no certificate, failed
    // verification, weak key).
    const refusal = refuseClient(socket);
    if (refusal) {
      const endpoint = remoteEndpoint(socket);
      socket.destroy();
      this.events.emit('tls-client-rejected', { listener: 'return', ...endpoint, ...refusal });
      return;
    }
    if (this.closing || this.live.size >= this.snapshot.config.limits.maxAssociations * 2) {
      socket.destroy();
      return;
    }
    const identities = peerIdentities(socket);
    const cipher = socket.getCipher();
    const assoc = new Association(socket, this.snapshot, this, {
      clock: this.clock,
      listener: 'return',
      downTls: {
        identities,
        session: {
          protocol: socket.getProtocol() ?? null,
          cipher: cipher?.standardName ?? cipher?.name ?? null,
          peerSubject: identities?.subject ?? null,
          peerFingerprint256: identities?.fingerprint256 ?? null,
        },
      },
    });
    this.live.add(assoc);
    assoc.start();
  }

  private onConnection(socket: net.Socket): void {
    if (this.closing) {
      socket.destroy();
      return;
    }
    // Connections that have not sent an A-ASSOCIATE-RQ yet are bounded too (ARTIM closes slow ones).
    if (this.live.size >= this.snapshot.config.limits.maxAssociations * 2) {
      socket.destroy();
      return;
    }
    const assoc = new Association(socket, this.snapshot, this, { clock: this.clock });
    this.live.add(assoc);
    assoc.start();
  }

  private readonly records = new Set<Promise<void>>();

  trackRecord(done: Promise<void>): void {
    this.records.add(done);
    void done.finally(() => this.records.delete(done));
  }

  /** Resolves when every ledger record started so far is written (or has failed). */
  async recordsSettled(): Promise<void> {
    while (this.records.size > 0) await Promise.allSettled([...this.records]);
  }

  activeTotal(): number {
    return this.admittedTotal;
  }

  activeForPeer(aeTitle: string): number {
    return this.perPeer.get(aeTitle) ?? 0;
  }

  admitted(_assoc: Association, peerAeTitle: string): void {
    this.admittedTotal++;
    this.perPeer.set(peerAeTitle, (this.perPeer.get(peerAeTitle) ?? 0) + 1);
  }

  finished(assoc: Association): void {
    if (!this.live.delete(assoc)) return;
    const peer = assoc.peerAeTitle;
    if (peer !== null) {
      this.admittedTotal--;
      const n = (this.perPeer.get(peer) ?? 1) - 1;
      if (n <= 0) this.perPeer.delete(peer);
      else this.perPeer.set(peer, n);
    }
    if (this.closing && this.live.size === 0) this.onDrained?.();
  }

  /** The live associations (read-only use: stats, status). */
  associations(): Association[] {
    return [...this.live];
  }

  get liveAssociations(): number {
    return this.live.size;
  }

  private onDrained: (() => void) | null = null;

  /** Stop listening; abort live associations after graceMs (A-ABORT to both sides). */
  async close(graceMs = 0): Promise<void> {
    this.closing = true;
    const listening = Promise.all([unbind(this.server), unbind(this.returnServer)]);
    if (this.live.size > 0) {
      const drained = new Promise<void>((resolve) => (this.onDrained = resolve));
      const timer = setTimeout(() => {
        for (const a of this.live) a.shutdown();
      }, graceMs);
      await drained;
      clearTimeout(timer);
    }
    await listening;
    await this.recordsSettled();
  }
}
