/**
 * The one place configuration defaults live, in the units of the YAML surface (durations as written in the
 * file). config/example.yaml documents the same values. Keys absent here are required.
 */
export const DEFAULTS = deepFreeze({
  listen: {
    host: '0.0.0.0',
    port: 11112,
  },
  proxyProtocol: {
    headerTimeout: '5s',
  },
  upstream: {
    callingAeTitle: null,
    connectTimeout: '10s',
    tls: {
      // serverName defaults to the upstream's host.
      verifyHostname: true,
      profile: 'bcp195',
    },
  },
  peer: {
    // moveDestinations defaults to the peer's own AE title.
    maxAssociations: null,
    sopClasses: [] as readonly string[],
    // null = the peer receives nothing through the return listener.
    receiver: null,
  },
  receiver: {
    // aeTitle defaults to the peer's AE title.
    callingAeTitle: null,
    connectTimeout: '10s',
  },
  returnListener: {
    host: '0.0.0.0',
    port: 11113,
    tls: {
      profile: 'bcp195',
      handshakeTimeout: '10s',
    },
    caller: {
      addresses: null,
      services: ['echo', 'store', 'commitment'] as readonly string[],
      maxAssociations: null,
    },
  },
  limits: {
    maxAssociations: 200,
    maxAssociationsPerPeer: 16,
    associationRequestTimeout: '10s',
    idleTimeout: '5m',
    maxPduLength: 1_048_576,
    drainTimeout: '30s',
    relayBuffer: 1_048_576,
    relayBufferTotal: 16_777_216,
    pendingPerAddress: 8,
    pendingTotal: 64,
    pendingReservedForPeers: 16,
  },
  tls: {
    expiryWarning: '30d',
  },
  workers: {
    count: 1,
    balance: 'round-robin',
  },
  reload: {
    watch: true,
    pollInterval: '2s',
  },
  logging: {
    level: 'info',
    file: null,
  },
  ledger: {
    // null = ledger off.
    path: null,
    fsync: 'batch',
    fsyncInterval: '200ms',
    rotate: {
      maxBytes: 64 * 1024 * 1024,
      daily: true,
    },
    checkpointEvery: '5m',
    // null = unsigned checkpoints.
    signingKey: null,
    onLedgerFailure: 'abort',
    witness: {
      // null = no witness file.
      file: null,
      syslog: true,
    },
  },
} as const);

/** Freezes `value` and everything reachable from it. */
export function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const key of Reflect.ownKeys(value)) {
      deepFreeze((value as Record<string | symbol, unknown>)[key]);
    }
  }
  return value;
}
