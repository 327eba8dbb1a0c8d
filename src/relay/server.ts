// The listeners: the plaintext one modalities connect to and, when configured, the mutual-TLS return
// listener the archive opens C-MOVE / storage commitment associations to. Owns the set of live
// associations and their counts (one budget for both listeners).
import * as net from 'node:net';
import * as tls from 'node:tls';
import { Association, type AssociationHost, type LedgerBinding } from './association.js';
import { classifyClientHandshakeError, peerIdentities } from '../tls/identity.js';
import { ProxyEvents } from '../observe/events.js';
import type { RuntimeSnapshot } from './snapshot.js';

export class ProxyServer implements AssociationHost {
  readonly events: ProxyEvents;
  private snapshot: RuntimeSnapshot;
  private readonly server: net.Server;
  private readonly returnServer: tls.Server | null = null;
  private readonly live = new Set<Association>();
  private readonly perPeer = new Map<string, number>();
  private admittedTotal = 0;
  private closing = false;

  readonly ledger: LedgerBinding | null;

  constructor(
    snapshot: RuntimeSnapshot,
    options: { events?: ProxyEvents; ledger?: LedgerBinding | null } = {},
  ) {
    this.snapshot = snapshot;
    this.events = options.events ?? new ProxyEvents();
    this.ledger = options.ledger ?? null;
    this.server = net.createServer({ noDelay: true, pauseOnConnect: false }, (socket) =>
      this.onConnection(socket),
    );
    this.server.on('error', (err) => this.events.emit('listener-error', { message: err.message }));
    const rl = snapshot.config.returnListener;
    if (rl && snapshot.returnTls) {
      // PS3.15 B.12/B.13 on the return leg too; the caller must present a certificate from the CA bundle
      // (rejectUnauthorized), and its identity is then bound to the calling AE title by the policy.
      const server = tls.createServer(
        {
          ...snapshot.returnTls.options,
          requestCert: true,
          rejectUnauthorized: true,
          handshakeTimeout: rl.tls.handshakeTimeoutMs,
          noDelay: true,
        },
        (socket) => this.onReturnConnection(socket),
      );
      server.on('tlsClientError', (err, socket) => {
        this.events.emit('tls-client-rejected', {
          listener: 'return',
          remoteAddress: socket.remoteAddress ?? '',
          reason: classifyClientHandshakeError(err, socket.authorizationError),
          message: socket.authorizationError
            ? `certificate verification failed: ${String(socket.authorizationError)}`
            : err.message,
        });
      });
      server.on('error', (err) => this.events.emit('listener-error', { message: err.message }));
      this.returnServer = server;
    }
  }

  get current(): RuntimeSnapshot {
    return this.snapshot;
  }

  /** New associations use the new snapshot; live ones keep theirs. */
  setSnapshot(snapshot: RuntimeSnapshot): void {
    this.snapshot = snapshot;
    // New TLS sessions use the new certificates; live ones keep theirs.
    if (this.returnServer && snapshot.returnTls)
      this.returnServer.setSecureContext(snapshot.returnTls.options);
  }

  listen(
    host = this.snapshot.config.listen.host,
    port = this.snapshot.config.listen.port,
  ): Promise<net.AddressInfo> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void => reject(err);
      this.server.once('error', onError);
      this.server.listen({ host, port }, () => {
        this.server.removeListener('error', onError);
        resolve(this.server.address() as net.AddressInfo);
      });
    });
  }

  address(): net.AddressInfo | null {
    const a = this.server.address();
    return a && typeof a === 'object' ? a : null;
  }

  /** Bind the return listener (no-op resolving null when none is configured). */
  listenReturn(
    host = this.snapshot.config.returnListener?.host,
    port = this.snapshot.config.returnListener?.port,
  ): Promise<net.AddressInfo | null> {
    const server = this.returnServer;
    if (!server) return Promise.resolve(null);
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void => reject(err);
      server.once('error', onError);
      server.listen({ host, port }, () => {
        server.removeListener('error', onError);
        resolve(server.address() as net.AddressInfo);
      });
    });
  }

  returnAddress(): net.AddressInfo | null {
    const a = this.returnServer?.address();
    return a && typeof a === 'object' ? a : null;
  }

  private onReturnConnection(socket: tls.TLSSocket): void {
    if (this.closing || this.live.size >= this.snapshot.config.limits.maxAssociations * 2) {
      socket.destroy();
      return;
    }
    const identities = peerIdentities(socket);
    const cipher = socket.getCipher();
    const assoc = new Association(socket, this.snapshot, this, {
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
    const assoc = new Association(socket, this.snapshot, this);
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
    const listening = Promise.all(
      [this.server, this.returnServer].map(
        (srv) =>
          new Promise<void>((resolve) => {
            if (!srv?.listening) resolve();
            else srv.close(() => resolve());
          }),
      ),
    );
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
