// An archive endpoint that misbehaves on purpose, one connection at a time: each accepted TCP connection
// takes the next mode from a queue (default `tls`) — a mutual-TLS DICOM peer the test scripts PDU by PDU,
// or one that never speaks (`silent`), answers in plaintext (`plain`), or resets the connection (`reset`).
// `refuse()` closes the listening socket, so connects are refused, and `listenAgain()` reopens the port.
import * as net from 'node:net';
import * as tls from 'node:tls';
import { RawScu } from './raw.js';

export type FaultMode = 'tls' | 'silent' | 'plain' | 'reset';

export interface FaultArchive {
  readonly port: number;
  /** Modes for the next connections, in order; once used up, `tls`. */
  next(...modes: FaultMode[]): void;
  /** The next mutual-TLS connection, once its handshake completed. */
  accept(timeoutMs?: number): Promise<RawScu>;
  /** Reset (RST) the TCP connection under an accepted TLS connection: the archive process died. */
  kill(conn: RawScu): void;
  /** Connections accepted so far (any mode). */
  readonly connections: number;
  /** Resolves once `count` connections have been accepted. */
  untilConnections(count: number, timeoutMs?: number): Promise<void>;
  /** Stop listening: connects are refused (ECONNREFUSED) until listenAgain(). */
  refuse(): Promise<void>;
  listenAgain(): Promise<void>;
  close(): Promise<void>;
}

export async function startFaultArchive(material: {
  ca: string;
  cert: string;
  key: string;
}): Promise<FaultArchive> {
  const context = tls.createSecureContext({ ca: material.ca, cert: material.cert, key: material.key });
  const modes: FaultMode[] = [];
  const ready: RawScu[] = [];
  const tcpOf = new Map<RawScu, net.Socket>();
  const sockets = new Set<net.Socket>();
  let wake: Array<() => void> = [];
  let connections = 0;
  const notify = (): void => {
    const w = wake;
    wake = [];
    for (const f of w) f();
  };
  const waitUntil = async (cond: () => boolean, what: string, timeoutMs: number): Promise<void> => {
    const deadline = Date.now() + timeoutMs;
    while (!cond()) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`fault archive: ${what} within ${timeoutMs} ms`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.min(left, 100));
        wake.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  };

  const onConnection = (socket: net.Socket): void => {
    connections++;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    const mode = modes.shift() ?? 'tls';
    if (mode === 'reset') socket.resetAndDestroy();
    else if (mode === 'plain') {
      // A plaintext DICOM peer: it answers the TLS ClientHello with an A-ABORT PDU in clear.
      socket.once('data', () => socket.write(Buffer.from([0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0])));
    } else if (mode === 'tls') {
      const secure = new tls.TLSSocket(socket, {
        isServer: true,
        secureContext: context,
        requestCert: true,
        rejectUnauthorized: true,
      });
      secure.on('error', () => undefined);
      secure.once('secure', () => {
        const conn = RawScu.attach(secure);
        tcpOf.set(conn, socket);
        socket.once('close', () => tcpOf.delete(conn));
        ready.push(conn);
        notify();
      });
    }
    notify();
  };

  let server = net.createServer(onConnection);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  const closeServer = (s: net.Server): Promise<void> => new Promise((r) => s.close(() => r()));

  return {
    port,
    next: (...m) => void modes.push(...m),
    kill(conn) {
      tcpOf.get(conn)?.resetAndDestroy();
    },
    get connections() {
      return connections;
    },
    async accept(timeoutMs = 5000) {
      await waitUntil(() => ready.length > 0, 'no TLS connection', timeoutMs);
      return ready.shift() as RawScu;
    },
    untilConnections: (count, timeoutMs = 5000) =>
      waitUntil(() => connections >= count, `not ${count} connections`, timeoutMs),
    async refuse() {
      await closeServer(server);
    },
    async listenAgain() {
      server = net.createServer(onConnection);
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(port, '127.0.0.1', () => resolve());
      });
    },
    async close() {
      for (const s of sockets) s.destroy();
      if (server.listening) await closeServer(server);
    },
  };
}
