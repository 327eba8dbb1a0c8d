// The client endpoint of a connection: its socket's remote address and port, or — when a configured
// load balancer's PROXY protocol header named the client (relay/proxy-protocol.ts) — the one it named.
// Everything that identifies a caller by address (AE binding, limits, logs, metrics, ledger, audit) reads
// it here, so the header's address is used everywhere or nowhere.

export interface ClientEndpoint {
  remoteAddress: string;
  remotePort: number;
}

interface SocketLike {
  remoteAddress?: string | undefined;
  remotePort?: number | undefined;
}

const declared = new WeakMap<object, ClientEndpoint>();

/** Record the client a PROXY header named for this TCP socket. */
export function declareClientEndpoint(socket: object, endpoint: ClientEndpoint): void {
  declared.set(socket, endpoint);
}

/**
 * The client endpoint of `socket` (a TCP socket, or a TLS socket wrapping one: the header was read on the
 * TCP socket). A TLS socket destroyed during its handshake no longer knows its peer; the TCP socket it
 * wraps (read when the connection was accepted) still does.
 */
export function clientEndpoint(socket: SocketLike): ClientEndpoint {
  const parent = (socket as { _parent?: SocketLike })._parent;
  const known = declared.get(socket) ?? (parent ? declared.get(parent) : undefined);
  if (known) return known;
  return {
    remoteAddress: socket.remoteAddress ?? parent?.remoteAddress ?? '',
    remotePort: socket.remotePort ?? parent?.remotePort ?? 0,
  };
}
