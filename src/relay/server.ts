// The listeners: the plaintext one modalities connect to and, when configured, the mutual-TLS return
// listener the archive opens C-MOVE / storage commitment associations to. Owns the set of live
// associations and their counts (one budget for both listeners), and the connections not admitted yet
// (pending.ts: capped per source and in total on each listener, with room kept for configured peers).
import * as net from 'node:net';
import * as tls from 'node:tls';
import {
  Association,
  type AdmissionRefusal,
  type AssociationHost,
  type LedgerBinding,
} from './association.js';
import { RelayBudget } from './outbound.js';
import { PendingConnections, type PendingLimits, type PendingSlot } from './pending.js';
import {
  classifyClientHandshakeError,
  peerIdentities,
  refuseClient,
  remoteEndpoint,
} from '../tls/identity.js';
import { ProxyEvents, type LiveAssociation } from '../observe/events.js';
import { readPreamble } from './proxy-protocol.js';
import { declareClientEndpoint, clientEndpoint } from '../util/endpoint.js';
import {
  parseAddressRange,
  parseRemoteAddress,
  rangeContains,
  type AddressRange,
} from '../config/address.js';
import type { ProxyProtocolConfig } from '../config/types.js';
import { systemClock, type Clock } from '../util/clock.js';
import type { RuntimeSnapshot } from '../runtime/snapshot.js';
import type { ConnectionRefusal, ListenerKind } from '../vocabulary/outcomes.js';

/**
 * The return listener: a TCP listener that counts each connection before any TLS work is done, and the TLS
 * server it hands the admitted ones to (which holds the certificates and verifies the caller's).
 */
interface ReturnServer {
  tcp: net.Server;
  tls: tls.Server;
}

/**
 * Association counts kept beyond this process (cluster/admission.ts): the limits hold over every worker.
 * reserve() resolves null when there is room (the association is then counted until release()), or the
 * limit it is over.
 */
export interface AdmissionBroker {
  reserve(
    id: string,
    request: { peerAeTitle: string; peerLimit: number; maxAssociations: number },
  ): Promise<AdmissionRefusal | null>;
  release(id: string): void;
  /** Count a connection not admitted yet on every worker's behalf (limits.pending*), or refuse it. */
  takePending(request: {
    listener: ListenerKind;
    remoteAddress: string;
    listed: boolean;
    limits: PendingLimits;
  }): Promise<
    { kind: 'taken'; release(): void } | { kind: 'refused'; reason: ConnectionRefusal; message: string }
  >;
}

/**
 * The part of a per-process budget one of `workers` processes holds: their sum never exceeds the limit
 * (for limits of at least `workers`, as limits.relayBufferTotal's 1 MiB minimum always is).
 */
export function workerShare(limit: number, workers: number): number {
  return workers <= 1 ? limit : Math.max(1, Math.floor(limit / workers));
}

/** The refusal message of a pending-connection limit (the same words in every process that counts). */
export function pendingRefusal(
  reason: ConnectionRefusal,
  limits: PendingLimits,
  listed: boolean,
  fromSource: number,
  total: number,
): string {
  if (reason === 'per-address-limit') {
    return `${fromSource} connections from this address not admitted yet; limits.pendingPerAddress is ${limits.pendingPerAddress}; connection closed`;
  }
  if (reason === 'pending-limit') {
    const cap = listed
      ? `limits.pendingTotal is ${limits.pendingTotal}`
      : `for addresses no peer lists, limits.pendingTotal - pendingReservedForPeers is ${limits.pendingTotal - limits.pendingReservedForPeers}`;
    return `${total} connections not admitted yet; ${cap}; connection closed`;
  }
  return reason;
}

/** A TCP connection's endpoints: the same for the accepted socket and the TLS socket wrapping it. */
function endpointKey(socket: net.Socket): string {
  return `${socket.remoteAddress}|${socket.remotePort}|${socket.localAddress}|${socket.localPort}`;
}

/**
 * Bind `server` to host:port; resolves with the bound address. reusePort: the socket is this process's own
 * (SO_REUSEPORT, the kernel spreads connections over every process bound so), not one shared by node:cluster.
 */
function bind(server: net.Server, host: string, port: number, reusePort = false): Promise<net.AddressInfo> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error): void => reject(err);
    server.once('error', onError);
    server.listen({ host, port, ...(reusePort ? { reusePort: true, exclusive: true } : {}) }, () => {
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
  private returnServer: ReturnServer | null = null;
  /** The addresses the listeners were bound with, as configured (port 0 stays 0). */
  private boundForward: { host: string; port: number } | null = null;
  private boundReturn: { host: string; port: number } | null = null;
  private readonly live = new Set<Association>();
  private readonly perPeer = new Map<string, number>();
  private admittedTotal = 0;
  private closing = false;
  private readonly reusePort: boolean;
  /** Connections accepted and not admitted yet, per listener (limits.pending*). */
  private readonly pending: Record<ListenerKind, PendingConnections> = {
    forward: new PendingConnections(),
    return: new PendingConnections(),
  };
  /** The pending slot of each live association until it is admitted. */
  private readonly slots = new Map<Association, PendingSlot>();
  /** Return-listener connections in the TLS handshake, by endpointKey. */
  private readonly handshaking = new Map<string, { socket: net.Socket; slot: PendingSlot }>();

  readonly ledger: LedgerBinding | null;
  /** Time source of every association's timers (tests drive it). */
  private readonly clock: Clock;
  /** Bytes queued toward slower sockets over every live association (limits.relayBufferTotal). */
  readonly relayBudget: RelayBudget;

  /** Worker processes sharing the listeners (1 = this process alone): limits.relayBufferTotal is split. */
  private readonly workers: number;
  private readonly admission: AdmissionBroker | null;
  /** Confirmations asked of the broker, until the association starts toward the archive. */
  private readonly confirming = new Map<Association, Promise<AdmissionRefusal | null>>();

  constructor(
    snapshot: RuntimeSnapshot,
    options: {
      events?: ProxyEvents;
      ledger?: LedgerBinding | null;
      clock?: Clock;
      /**
       * This process is one of `workers` sharing the listeners: limits.relayBufferTotal is split; the
       * other limits are counted by `admission`.
       */
      workers?: number;
      admission?: AdmissionBroker | null;
      /** Binding options of the listeners (reuseport: each worker binds its own socket). */
      reusePort?: boolean;
    } = {},
  ) {
    this.snapshot = snapshot;
    this.clock = options.clock ?? systemClock;
    this.events = options.events ?? new ProxyEvents();
    this.ledger = options.ledger ?? null;
    this.workers = options.workers ?? 1;
    this.admission = options.admission ?? null;
    this.reusePort = options.reusePort ?? false;
    this.relayBudget = new RelayBudget(workerShare(snapshot.config.limits.relayBufferTotal, this.workers));
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

  private createReturnServer(snapshot: RuntimeSnapshot): ReturnServer | null {
    const rl = snapshot.config.returnListener;
    if (!rl || !snapshot.returnTls) return null;
    // PS3.15 B.12/B.13 on the return leg too; the caller must present a certificate from the CA bundle
    // (rejectUnauthorized), and its identity is then bound to the calling AE title by the policy.
    // handshakeTimeout runs from the TCP connection, however slowly the ClientHello drips in.
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
      const { remoteAddress, remotePort } = remoteEndpoint(socket);
      const reason = classifyClientHandshakeError(err, socket.authorizationError);
      // Node reports a handshake timeout and leaves the socket open: it is closed here (every other
      // handshake failure has closed it already).
      socket.destroy();
      this.events.emit('tls-client-rejected', {
        listener: 'return',
        remoteAddress,
        remotePort,
        certificate: null,
        reason,
        message: socket.authorizationError
          ? `certificate verification failed: ${String(socket.authorizationError)}`
          : err.message,
      });
      if (reason === 'handshake-timeout') {
        this.events.emit('connection-refused', {
          listener: 'return',
          remoteAddress,
          remotePort,
          reason,
          message: `TLS handshake not finished within returnListener.tls.handshakeTimeout (${rl.tls.handshakeTimeoutMs} ms); connection closed`,
        });
      }
    });
    server.on('error', (err) => this.events.emit('listener-error', { message: err.message }));
    const tcp = net.createServer({ noDelay: true }, (socket) => {
      const pp = this.snapshot.config.returnListener?.proxyProtocol ?? null;
      if (!pp) this.admitConnection(socket, 'return', (slot) => this.handToTls(socket, server, slot));
      else this.withPreamble(socket, 'return', pp, (slot) => this.handToTls(socket, server, slot));
    });
    tcp.on('error', (err) => this.events.emit('listener-error', { message: err.message }));
    return { tcp, tls: server };
  }

  /** A return-listener connection, counted (slot), goes to the TLS server for its handshake. */
  private handToTls(socket: net.Socket, server: tls.Server, slot: PendingSlot | null): void {
    if (!slot) return;
    const key = endpointKey(socket);
    this.handshaking.set(key, { socket, slot });
    socket.once('close', () => {
      if (this.handshaking.get(key)?.socket === socket) this.handshaking.delete(key);
    });
    server.emit('connection', socket); // bytes read past a PROXY header were unshifted: TLS reads them first
  }

  /** The load balancers' ranges of a PROXY protocol setting, compiled once per setting object. */
  private readonly balancers = new WeakMap<ProxyProtocolConfig, AddressRange[]>();

  private fromBalancer(pp: ProxyProtocolConfig, address: string): boolean {
    let ranges = this.balancers.get(pp);
    if (!ranges) {
      ranges = pp.from.flatMap((text) => {
        const r = parseAddressRange(text);
        return r.ok ? [{ address: r.address, prefix: r.prefix }] : []; // validated at load
      });
      this.balancers.set(pp, ranges);
    }
    const ip = parseRemoteAddress(address);
    return ip !== null && ranges.some((r) => rangeContains(r, ip));
  }

  /**
   * On a listener with PROXY protocol: a configured balancer's connection must begin with a header, and
   * the client it names is the connection's address from then on (it is counted under that address once
   * the header is in; until then the header timeout bounds it); anyone else is counted at once and
   * refused if it sends a header. `then` gets the counted connection with the header consumed.
   */
  private withPreamble(
    socket: net.Socket,
    listener: ListenerKind,
    pp: ProxyProtocolConfig,
    then: (slot: PendingSlot | null) => void,
  ): void {
    // Read now: once the peer has gone (a balancer's health check closes at once), the socket no longer
    // knows its address.
    const remoteAddress = socket.remoteAddress;
    const remotePort = socket.remotePort ?? 0;
    if (remoteAddress === undefined) {
      socket.destroy(); // closed before it could be looked at: nothing was read, nothing to refuse
      return;
    }
    const balancer = this.fromBalancer(pp, remoteAddress);
    const read = (direct: PendingSlot | null): void => {
      const onError = (): void => void socket.destroy(); // reset while reading the header: 'close' follows
      socket.on('error', onError);
      void readPreamble(socket, balancer, pp.headerTimeoutMs, this.clock).then((r) => {
        socket.removeListener('error', onError);
        if (socket.destroyed) return;
        if (r.kind === 'refused') {
          socket.destroy();
          this.events.emit('connection-refused', {
            listener,
            remoteAddress,
            remotePort,
            reason: r.reason,
            message: `${r.message}; connection closed`,
          });
          return;
        }
        if (r.kind === 'proxied' && r.source) {
          declareClientEndpoint(socket, { remoteAddress: r.source.address, remotePort: r.source.port });
        }
        if (direct) then(direct);
        else this.admitConnection(socket, listener, then);
      });
    };
    if (balancer) read(null);
    else this.admitConnection(socket, listener, (direct) => direct && read(direct));
  }

  /**
   * Count a connection the moment it is accepted, or close it unread when it is over a limit (or the
   * proxy is shutting down); `then` gets its slot (null when refused). The slot is released when the
   * connection is admitted or closes. With worker processes the count is also taken in the daemon's
   * process, over every worker (AdmissionBroker.takePending), before `then` runs.
   */
  private admitConnection(
    socket: net.Socket,
    listener: ListenerKind,
    then: (slot: PendingSlot | null) => void,
  ): void {
    const { remoteAddress, remotePort } = clientEndpoint(socket);
    const refuse = (reason: ConnectionRefusal, message: string): void => {
      socket.destroy();
      this.events.emit('connection-refused', { listener, remoteAddress, remotePort, reason, message });
      then(null);
    };
    if (this.closing) return refuse('shutting-down', 'the proxy is shutting down; connection closed');
    const limits = this.snapshot.config.limits;
    const listed = this.snapshot.policy.isKnownAddress(listener, remoteAddress);
    const pending = this.pending[listener];
    const slot = pending.take(remoteAddress, listed, limits);
    if (typeof slot === 'string') {
      return refuse(
        slot,
        pendingRefusal(slot, limits, listed, pending.fromSource(remoteAddress), pending.total),
      );
    }
    const broker = this.admission;
    if (!broker) {
      socket.once('close', () => slot.release());
      then(slot);
      return;
    }
    // The same limits over every worker: the local count above is a part of it, never more lenient.
    void broker.takePending({ listener, remoteAddress, listed, limits }).then((r) => {
      if (r.kind === 'refused') {
        slot.release();
        refuse(
          r.reason,
          r.reason === 'shutting-down' ? r.message : `${r.message} (counted over all workers)`,
        );
        return;
      }
      const both: PendingSlot = {
        release: () => {
          slot.release();
          r.release();
        },
      };
      if (socket.destroyed) {
        both.release();
        then(null);
        return;
      }
      socket.once('close', () => both.release());
      then(both);
    });
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
    let newReturn: ReturnServer | null | undefined; // undefined = unchanged
    try {
      if (
        this.boundForward &&
        (this.boundForward.host !== listen.host || this.boundForward.port !== listen.port)
      ) {
        newForward = this.createForwardServer();
        await bind(newForward, listen.host, listen.port, this.reusePort);
        rebound.push(`listen ${listen.host}:${listen.port}`);
      }
      if (this.boundForward) {
        const before = this.boundReturn;
        if (!rl && before) {
          newReturn = null;
          rebound.push('returnListener removed');
        } else if (rl && (!before || before.host !== rl.host || before.port !== rl.port)) {
          newReturn = this.createReturnServer(snapshot);
          if (newReturn) await bind(newReturn.tcp, rl.host, rl.port, this.reusePort);
          rebound.push(`returnListener ${rl.host}:${rl.port}`);
        }
      }
    } catch (err) {
      void unbind(newForward);
      if (newReturn) void unbind(newReturn.tcp);
      throw err;
    }
    this.snapshot = snapshot;
    this.relayBudget.limit = workerShare(snapshot.config.limits.relayBufferTotal, this.workers);
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
      void unbind(old?.tcp ?? null);
    } else if (this.returnServer && snapshot.returnTls) {
      // New TLS sessions use the new certificates; live ones keep theirs.
      this.returnServer.tls.setSecureContext(snapshot.returnTls.options);
    }
    return { rebound };
  }

  async listen(
    host = this.snapshot.config.listen.host,
    port = this.snapshot.config.listen.port,
  ): Promise<net.AddressInfo> {
    const addr = await bind(this.server, host, port, this.reusePort);
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
    const addr = await bind(server.tcp, host, port, this.reusePort);
    this.boundReturn = { host, port };
    return addr;
  }

  returnAddress(): net.AddressInfo | null {
    const a = this.returnServer?.tcp.address();
    return a && typeof a === 'object' ? a : null;
  }

  /** True while every configured listener accepts connections (readiness). */
  listenersBound(): boolean {
    if (!this.server.listening) return false;
    return this.snapshot.config.returnListener === null || this.returnServer?.tcp.listening === true;
  }

  private onReturnConnection(socket: tls.TLSSocket): void {
    const key = endpointKey(socket);
    const slot = this.handshaking.get(key)?.slot;
    this.handshaking.delete(key);
    // No byte is read from a client refused here (tls/identity.ts refuseClient: no certificate, failed
    // verification, weak key).
    const refusal = refuseClient(socket);
    if (refusal) {
      const endpoint = remoteEndpoint(socket);
      socket.destroy();
      this.events.emit('tls-client-rejected', { listener: 'return', ...endpoint, ...refusal });
      return;
    }
    if (this.closing) {
      socket.destroy();
      this.events.emit('connection-refused', {
        listener: 'return',
        ...clientEndpoint(socket),
        reason: 'shutting-down',
        message: 'the proxy is shutting down; connection closed after the TLS handshake',
      });
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
    if (slot) this.slots.set(assoc, slot);
    this.live.add(assoc);
    assoc.start();
  }

  private onConnection(socket: net.Socket): void {
    const pp = this.snapshot.config.listen.proxyProtocol;
    if (!pp) this.admitConnection(socket, 'forward', (slot) => this.startForward(socket, slot));
    else
      this.withPreamble(socket, 'forward', pp, (slot) => {
        this.startForward(socket, slot);
        socket.resume(); // paused while the header was read
      });
  }

  private startForward(socket: net.Socket, slot: PendingSlot | null): void {
    // Counted until admitted; ARTIM closes those that send no A-ASSOCIATE-RQ.
    if (!slot) return;
    const assoc = new Association(socket, this.snapshot, this, { clock: this.clock });
    this.slots.set(assoc, slot);
    this.live.add(assoc);
    assoc.start();
  }

  /** Connections accepted on `listener` and not admitted yet (status, tests). */
  pendingConnections(listener: ListenerKind): number {
    return this.pending[listener].total;
  }

  /** The association leaves the count of connections not admitted yet. */
  private settle(assoc: Association): void {
    this.slots.get(assoc)?.release();
    this.slots.delete(assoc);
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

  admitted(assoc: Association, peerAeTitle: string, peerLimit: number): void {
    this.settle(assoc);
    this.admittedTotal++;
    this.perPeer.set(peerAeTitle, (this.perPeer.get(peerAeTitle) ?? 0) + 1);
    if (this.admission) {
      const request = {
        peerAeTitle,
        peerLimit,
        maxAssociations: this.snapshot.config.limits.maxAssociations,
      };
      this.confirming.set(assoc, this.admission.reserve(assoc.id, request));
    }
  }

  admissionConfirmed(assoc: Association): Promise<AdmissionRefusal | null> | null {
    const p = this.confirming.get(assoc) ?? null;
    this.confirming.delete(assoc);
    return p;
  }

  finished(assoc: Association): void {
    this.settle(assoc);
    if (!this.live.delete(assoc)) return;
    const peer = assoc.peerAeTitle;
    this.confirming.delete(assoc);
    if (peer !== null) {
      this.admission?.release(assoc.id);
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

  /** The live associations as GET /associations shows them, oldest first. */
  listAssociations(): LiveAssociation[] {
    return [...this.live].map((a) => a.live());
  }

  get liveAssociations(): number {
    return this.live.size;
  }

  private onDrained: (() => void) | null = null;

  /** Stop listening; abort live associations after graceMs (A-ABORT to both sides). */
  async close(graceMs = 0): Promise<void> {
    this.closing = true;
    const listening = Promise.all([unbind(this.server), unbind(this.returnServer?.tcp ?? null)]);
    // TLS handshakes in progress will not become associations now.
    for (const { socket } of this.handshaking.values()) socket.destroy();
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
