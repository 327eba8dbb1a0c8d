import type { AdminConfig } from './admin.js';
import type { AuditConfig } from './audit.js';
import type { TlsProfileName } from './tls-profile-names.js';

/**
 * The validated, immutable configuration snapshot produced by `parseConfig` / `loadConfig`.
 * Every object in a snapshot is deep-frozen; durations are milliseconds and file paths are absolute.
 */

/** DIMSE services a peer may be granted (see src/policy/services.ts for the SOP classes each covers). */
export type ServiceName = 'echo' | 'store' | 'find' | 'move' | 'get' | 'worklist' | 'mpps' | 'commitment';

/** Log levels, most severe first (winston's npm levels). */
export const LOG_LEVELS = Object.freeze(['error', 'warn', 'info', 'debug'] as const);
export type LogLevel = (typeof LOG_LEVELS)[number];

export const SERVICE_NAMES: readonly ServiceName[] = Object.freeze([
  'echo',
  'store',
  'find',
  'move',
  'get',
  'worklist',
  'mpps',
  'commitment',
] as const);

export { TLS_PROFILE_NAMES, type TlsProfileName } from './tls-profile-names.js';

export interface UpstreamTlsConfig {
  /** Absolute path of the PEM CA bundle used to verify the archive's certificate. */
  ca: string;
  /** Absolute path of the proxy's PEM client certificate (chain). */
  cert: string;
  /** Absolute path of the proxy's PEM private key. */
  key: string;
  /** SNI / hostname to verify; defaults to the upstream host. */
  serverName: string;
  verifyHostname: boolean;
  profile: TlsProfileName;
}

export interface UpstreamConfig {
  name: string;
  host: string;
  port: number;
  /** Called AE title presented to the archive. */
  aeTitle: string;
  /** When set, replaces the modality's calling AE title toward the archive. */
  callingAeTitle: string | null;
  /** TCP connect + TLS handshake budget. */
  connectTimeoutMs: number;
  tls: UpstreamTlsConfig;
}

export interface RouteConfig {
  calledAeTitle: string;
  upstream: string;
}

export interface PeerConfig {
  /** Calling AE title of the modality / workstation (trimmed). */
  aeTitle: string;
  /** IPv4/IPv6 addresses or CIDRs, as written in the file. */
  addresses: string[];
  services: ServiceName[];
  /** C-MOVE destinations this peer may name; defaults to [aeTitle]. */
  moveDestinations: string[];
  /** Per-peer association limit; null = limits.maxAssociationsPerPeer. */
  maxAssociations: number | null;
  /** Extra (e.g. private) SOP Class UIDs this peer may negotiate and use with any command. */
  sopClasses: string[];
  /**
   * Where the archive's associations for this AE title (C-MOVE destination, storage commitment report)
   * are relayed by the return listener, in plaintext; null = this peer receives nothing.
   */
  receiver: ReceiverConfig | null;
}

export interface ReceiverConfig {
  host: string;
  port: number;
  /** Called AE title presented to the receiver (default: the peer's AE title). */
  aeTitle: string;
  /** When set, replaces the archive's calling AE title toward the receiver. */
  callingAeTitle: string | null;
  connectTimeoutMs: number;
}

/** What a caller's TLS certificate must carry: one subjectAltName entry, or the subject common name. */
export type CertificateIdentityKind = 'dns' | 'ip' | 'uri' | 'cn';

export interface CertificateIdentity {
  kind: CertificateIdentityKind;
  value: string;
}

export interface ReturnCallerConfig {
  /** Calling AE titles this certificate identity may use. */
  aeTitles: string[];
  identity: CertificateIdentity;
  /** Source addresses/CIDRs allowed in addition to the certificate check; null = any. */
  addresses: string[] | null;
  /** What the caller may do on the return path (default echo, store, commitment). */
  services: ServiceName[];
  /** Per-caller association limit; null = limits.maxAssociationsPerPeer. */
  maxAssociations: number | null;
}

export interface ServerTlsConfig {
  ca: string;
  cert: string;
  key: string;
  profile: TlsProfileName;
  /** TLS handshake budget for an incoming connection. */
  handshakeTimeoutMs: number;
}

/** The mutual-TLS listener the archive opens C-MOVE / storage commitment associations to. */
/**
 * PROXY protocol (v1 or v2) on a listener: connections from `from` (the load balancers) must begin with a
 * header naming the client, which is then the connection's address everywhere; a header from any other
 * address is refused. null = no header is read (a connection's address is its socket's).
 */
export interface ProxyProtocolConfig {
  /** The load balancers' addresses or CIDR ranges, as written (compiled by the policy). */
  from: string[];
  /** How long a balancer's connection may take to deliver its header. */
  headerTimeoutMs: number;
}

export interface ListenConfig {
  host: string;
  port: number;
  proxyProtocol: ProxyProtocolConfig | null;
}

export interface ReturnListenerConfig {
  host: string;
  port: number;
  tls: ServerTlsConfig;
  callers: ReturnCallerConfig[];
  proxyProtocol: ProxyProtocolConfig | null;
}

export interface LimitsConfig {
  maxAssociations: number;
  maxAssociationsPerPeer: number;
  associationRequestTimeoutMs: number;
  idleTimeoutMs: number;
  maxPduLength: number;
  /** On SIGTERM: how long live associations may take to finish before they are aborted. */
  drainTimeoutMs: number;
  /**
   * Bytes one association may queue toward a side that reads slower than the other side sends, before
   * the proxy stops reading from the sender (per direction; new associations take a reloaded value).
   */
  relayBuffer: number;
  /**
   * Bytes all associations together may queue toward slower sides; beyond it each association is paused
   * as soon as it holds more than one read (64 KiB) per direction.
   */
  relayBufferTotal: number;
  /**
   * Connections per listener and source address that are not admitted yet (TLS handshake, awaiting or
   * refused A-ASSOCIATE-RQ); one more is closed at once.
   */
  pendingPerAddress: number;
  /** Connections per listener not admitted yet, from all addresses. */
  pendingTotal: number;
  /**
   * Of pendingTotal, the part only addresses listed in peers.<AE>.addresses (forward listener) or
   * returnListener.callers[].addresses (return listener) may use.
   */
  pendingReservedForPeers: number;
}

/**
 * Relay processes (cluster/): 1 = the relay runs in the daemon's own process; more = that many worker
 * processes share the listeners, the daemon's process keeping the ledger, the audit trail, metrics,
 * logs, reload and the admin endpoint.
 */
/** workers.balance: how connections are spread over the relay workers. */
export const WORKER_BALANCE_MODES = Object.freeze(['round-robin', 'reuseport'] as const);
export type WorkerBalance = (typeof WORKER_BALANCE_MODES)[number];

export interface WorkersConfig {
  /** 'auto' = one per CPU the process may use (os.availableParallelism()), resolved at start. */
  count: number | 'auto';
  /**
   * round-robin: the daemon accepts every connection and hands it to the workers in turn (node:cluster);
   * reuseport: each worker binds the listeners itself with SO_REUSEPORT and the kernel spreads them.
   */
  balance: WorkerBalance;
}

export interface ReloadConfig {
  /** Reload when the config file or a file it names changes (SIGHUP always reloads). */
  watch: boolean;
  /** Fallback poll of those files (fs events are not reliable on every filesystem); 0 = no polling. */
  pollIntervalMs: number;
}

export interface LoggingConfig {
  level: LogLevel;
  file: string | null;
}

/** When a ledger record counts as written: synced on its own, or synced with others at most fsyncIntervalMs later. */
export type LedgerFsyncMode = 'always' | 'batch';

export const LEDGER_FSYNC_MODES: readonly LedgerFsyncMode[] = Object.freeze(['always', 'batch'] as const);

/** What the relay does with an instance the ledger cannot record. */
export type LedgerFailureMode = 'abort' | 'continue';

export const LEDGER_FAILURE_MODES: readonly LedgerFailureMode[] = Object.freeze([
  'abort',
  'continue',
] as const);

export interface LedgerConfig {
  /** Absolute path of the directory holding the ledger files; null = ledger off. */
  path: string | null;
  fsync: LedgerFsyncMode;
  /** With fsync 'batch': longest a written record may wait for its sync (1..10000 ms). */
  fsyncIntervalMs: number;
  /** Start a new ledger file once the current one is beyond this size in bytes. */
  rotateMaxBytes: number;
  /** Also start a new ledger file when the UTC day changes. */
  rotateDaily: boolean;
  /** Longest time between checkpoints (one is also written at rotation and shutdown); signed when signingKey is set. */
  checkpointIntervalMs: number;
  /** Absolute path of the Ed25519 PKCS#8 PEM private key signing checkpoints; null = unsigned checkpoints. */
  signingKey: string | null;
  onLedgerFailure: LedgerFailureMode;
  /** Where every checkpoint is also sent, off the box (integrity/witness.ts). */
  witness: {
    /** Absolute path of a file every checkpoint line is appended to (other storage); null = none. */
    file: string | null;
    /** Also send each checkpoint over the audit syslog-TLS connection (when `audit.syslog` is set). */
    syslog: boolean;
  };
}

export interface ProxyConfig {
  /** Absolute path of the file the snapshot was read from, or null when parsed from a string. */
  sourcePath: string | null;
  listen: ListenConfig;
  upstreams: Record<string, UpstreamConfig>;
  routes: RouteConfig[];
  peers: Record<string, PeerConfig>;
  limits: LimitsConfig;
  logging: LoggingConfig;
  ledger: LedgerConfig;
  /** null = no return path (C-MOVE destinations and storage commitment reports behind the proxy). */
  returnListener: ReturnListenerConfig | null;
  reload: ReloadConfig;
  workers: WorkersConfig;
  /** The admin HTTP endpoint (metrics, health, readiness); null = disabled. */
  admin: AdminConfig | null;
  /** The DICOM audit trail (PS3.15 A.5); null = no audit messages. */
  audit: AuditConfig | null;
  /** Settings of every TLS endpoint (config/tls-policy.ts). */
  tls: TlsPolicyConfig;
}

export interface TlsPolicyConfig {
  /** tls.expiryWarning: one of the proxy's own certificates expiring within this window is a warning. */
  expiryWarningMs: number;
}
