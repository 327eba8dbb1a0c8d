// Prometheus metrics. A ProxyMetrics owns its own prom-client Registry (never the global one) and learns
// everything from the core's events (see events.ts) plus a few public methods for facts that have no
// event. Nothing here is on the per-PDU path: counters move once per association, operation or instance.
//
// Cardinality is bounded by construction: every label value is either a name of src/vocabulary/ (typed,
// so nothing else can be emitted), from a fixed list in this file, or from the configuration snapshot (peer
// AE titles, routes, upstream names, certificate files); a calling AE, route or upstream the snapshot does
// not know is "unknown", an open-ended value (DIMSE command, status class, TLS version or cipher) outside
// its list is "other". A modality cannot create series by choosing its AE title. Counters of fixed label
// sets start at 0 for every combination (boundedSeries), so dashboards show 0 rather than no data.
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { ProxyConfig } from '../config/types.js';
import { statusClass } from '../dimse/command.js';
import { TLS_PROFILES } from '../tls/profiles.js';
import {
  ABORT_REASONS,
  AUDIT_CONNECTION_STATES,
  CONNECTION_REFUSALS,
  DIMSE_DENIAL_STATUSES,
  DIMSE_DENIALS,
  DIRECTIONS,
  FAR_SIDE_REFUSALS,
  LISTENERS,
  PROTOCOL_ERROR_ABORT_REASONS,
  PROTOCOL_ERROR_CODES,
  PROTOCOL_ERROR_SIDES,
  PROXY_REFUSALS,
  REFUSALS,
  TLS_CLIENT_REJECTIONS,
  UPSTREAM_FAILURES,
  type AbortReason,
  type AssociationOutcome,
  type AuditConnectionState,
  type DimseDenial,
  type Direction,
  type ListenerKind,
  type Refusal,
  type UpstreamFailure,
} from '../vocabulary/outcomes.js';
import type { ProxyEvents, ProxyEventMap } from './events.js';
import type { ReadinessStatus } from './readiness.js';

/** Label value for a calling AE, route or upstream the snapshot does not know. */
export const UNKNOWN = 'unknown';
/** Label value for an open-ended value (a DIMSE command, TLS version or cipher) outside its fixed list. */
export const OTHER = 'other';
/** Label value when there is no reason (e.g. a released association). */
export const NONE = 'none';

/** The `reason` label of dimse_proxy_associations_total: refusals, upstream failures, abort reasons, none. */
export const ASSOCIATION_REASONS = Object.freeze([
  ...new Set<AssociationReason>([...REFUSALS, ...UPSTREAM_FAILURES, ...ABORT_REASONS, NONE]),
]);
export type AssociationReason = Refusal | UpstreamFailure | AbortReason | typeof NONE;

/**
 * The reasons each outcome is counted with (the series a fresh registry starts at 0): a rejection by its
 * refusal, an upstream failure by its reason, a release without one, every other end by an abort reason or
 * none. Exhaustive over the outcomes.
 */
export const OUTCOME_REASONS = Object.freeze({
  released: [NONE],
  rejected: REFUSALS,
  'upstream-failed': UPSTREAM_FAILURES,
  'aborted-by-modality': [NONE, ...ABORT_REASONS],
  'aborted-by-archive': [NONE, ...ABORT_REASONS],
  'aborted-by-proxy': [NONE, ...ABORT_REASONS],
  closed: [NONE, ...ABORT_REASONS],
  timeout: [NONE, ...ABORT_REASONS],
  'worker-exited': [NONE],
} as const satisfies Record<AssociationOutcome, readonly AssociationReason[]>);

/** DIMSE services (command names without -RQ / -RSP). */
export const DIMSE_COMMANDS = Object.freeze([
  'C-ECHO',
  'C-STORE',
  'C-FIND',
  'C-MOVE',
  'C-GET',
  'C-CANCEL',
  'N-EVENT-REPORT',
  'N-GET',
  'N-SET',
  'N-ACTION',
  'N-CREATE',
  'N-DELETE',
] as const);

/** PS3.7 Annex C status classes (dimse/command.ts), 'refused' for requests the proxy's policy answered. */
export const STATUS_CLASSES = Object.freeze(['success', 'warning', 'failure', 'cancel', 'pending'] as const);

/** DIMSE-level policy denials, by the status the proxy answered (PS3.7 C.5.x, PS3.4 C.4.2.1.4). */
const DIMSE_DENIAL_BY_STATUS: ReadonlyMap<number, DimseDenial> = new Map(
  DIMSE_DENIALS.map((d) => [DIMSE_DENIAL_STATUSES[d], d]),
);

/** The `reason` label of dimse_proxy_policy_denials_total: the proxy's association refusals and DIMSE denials. */
export const POLICY_DENIAL_REASONS = Object.freeze([...PROXY_REFUSALS, ...DIMSE_DENIALS] as const);

export const TLS_PROTOCOLS = Object.freeze(['TLSv1.2', 'TLSv1.3'] as const);

/** status_class of dimse_proxy_dimse_operations_total a final response can have, and `refused` (by policy). */
const OPERATION_STATUS_CLASSES = ['success', 'warning', 'failure', 'cancel', 'refused'] as const;
/** status_class of dimse_proxy_instances_relayed_total: of the C-STORE-RSP, or none when there was none. */
const INSTANCE_STATUS_CLASSES = ['success', 'warning', 'failure', NONE] as const;
/** result of dimse_proxy_config_reloads_total. */
const RELOAD_RESULTS = ['success', 'failure'] as const;
/**
 * result of dimse_proxy_audit_messages_total (audit repository): accepted into the spool, delivered (written
 * to the repository's connection), refused (spool full, too large, write failure: each one an alarm).
 */
export const AUDIT_MESSAGE_RESULTS = ['accepted', 'delivered', 'refused'] as const;
/** result of dimse_proxy_storage_commitment_reports_total (PS3.4 J.3.3). */
const COMMITMENT_REPORT_RESULTS = ['success', 'failures', 'error'] as const;
/** result of dimse_proxy_storage_commitment_instances_total. */
const COMMITMENT_INSTANCE_RESULTS = ['committed', 'failed'] as const;

// IANA (RFC) names of the TLS 1.2 suites the profiles allow: Node reports cipher.standardName.
const IANA_CIPHER_NAMES: Record<string, string> = {
  'ECDHE-ECDSA-AES128-GCM-SHA256': 'TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256',
  'ECDHE-RSA-AES128-GCM-SHA256': 'TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384': 'TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384',
  'ECDHE-RSA-AES256-GCM-SHA384': 'TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305': 'TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256',
  'ECDHE-RSA-CHACHA20-POLY1305': 'TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256',
  'DHE-RSA-AES128-GCM-SHA256': 'TLS_DHE_RSA_WITH_AES_128_GCM_SHA256',
  'DHE-RSA-AES256-GCM-SHA384': 'TLS_DHE_RSA_WITH_AES_256_GCM_SHA384',
};

/** Every cipher any profile allows, by OpenSSL and by IANA name: the `cipher` label's values. */
export const TLS_CIPHERS: readonly string[] = Object.freeze(
  [
    ...new Set(
      Object.values(TLS_PROFILES).flatMap((p) =>
        p.ciphers.split(':').flatMap((c) => [c, ...(IANA_CIPHER_NAMES[c] ? [IANA_CIPHER_NAMES[c]] : [])]),
      ),
    ),
  ].sort(),
);

const DURATION_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];
const CONNECT_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

type MetricType = 'counter' | 'gauge' | 'histogram';

interface MetricDef {
  name: string;
  type: MetricType;
  help: string;
  labels: readonly string[];
  buckets?: number[];
}

/** The proxy's own metrics: name, type, help text and labels. METRIC_NAMES is derived from this table. */
export const PROXY_METRICS = Object.freeze({
  associations: {
    name: 'dimse_proxy_associations_total',
    type: 'counter',
    help:
      'Associations, counted once each: at the refusal for rejected ones, otherwise when they end. ' +
      'listener = forward (modalities) or return (the archive, toward receivers); route = called AE ' +
      'title of a configured route (or receiving peer) else "unknown"; calling_ae = a configured peer or ' +
      'return caller AE title else "unknown"; outcome = released, rejected, aborted-by-modality, ' +
      'aborted-by-archive, aborted-by-proxy, upstream-failed, closed (closed without release), timeout, ' +
      'worker-exited (the relay worker carrying it exited); ' +
      'reason = the refusal (rejected), the upstream failure reason (upstream-failed), the abort reason ' +
      '(unexpected-pdu, pdu-too-long, unmatched-response, ledger-failed, ...) or none.',
    labels: ['listener', 'route', 'calling_ae', 'outcome', 'reason'],
  },
  associationsAccepted: {
    name: 'dimse_proxy_associations_accepted_total',
    type: 'counter',
    help: 'Associations accepted by the proxy and the far side (A-ASSOCIATE-AC relayed), counted at acceptance.',
    labels: ['listener', 'route', 'calling_ae'],
  },
  workers: {
    name: 'dimse_proxy_workers',
    type: 'gauge',
    help: 'Relay worker processes running and listening (workers: N > 1; 0 when the relay runs in the daemon process).',
    labels: [],
  },
  workerExits: {
    name: 'dimse_proxy_worker_exits_total',
    type: 'counter',
    help: 'Relay worker processes that exited other than by a drain (each is restarted).',
    labels: [],
  },
  workerAssociations: {
    name: 'dimse_proxy_worker_associations_total',
    type: 'counter',
    help: 'Associations accepted, by the relay worker (1..workers) that carried them: how evenly the load is spread.',
    labels: ['worker'],
  },
  activeAssociations: {
    name: 'dimse_proxy_active_associations',
    type: 'gauge',
    help: 'Associations accepted and not yet ended.',
    labels: [],
  },
  dimseOperations: {
    name: 'dimse_proxy_dimse_operations_total',
    type: 'counter',
    help:
      'DIMSE operations completed (final response relayed), by command (C-STORE, C-FIND, ...), direction ' +
      'of the request and status class (success, warning, failure, cancel); status_class "refused" counts ' +
      'requests the proxy policy answered itself without forwarding.',
    labels: ['command', 'direction', 'status_class'],
  },
  operationDuration: {
    name: 'dimse_proxy_dimse_operation_duration_seconds',
    type: 'histogram',
    help: 'Time from a DIMSE request to its final response, as seen by the proxy.',
    labels: ['command'],
    buckets: DURATION_BUCKETS,
  },
  bytesRelayed: {
    name: 'dimse_proxy_bytes_relayed_total',
    type: 'counter',
    help:
      'Bytes received from one side and relayed toward the other (all PDUs), counted when the association ' +
      'ends. direction = modality-to-archive, archive-to-modality (forward listener), ' +
      'archive-to-destination, destination-to-archive (return listener).',
    labels: ['direction'],
  },
  instances: {
    name: 'dimse_proxy_instances_relayed_total',
    type: 'counter',
    help:
      'SOP instances (C-STORE data sets) relayed, by direction and the status class of their C-STORE-RSP ' +
      '("none" when the association ended without one).',
    labels: ['direction', 'status_class'],
  },
  instanceBytes: {
    name: 'dimse_proxy_instance_bytes_total',
    type: 'counter',
    help: 'Bytes of C-STORE data sets relayed, by direction, counted when each instance is complete.',
    labels: ['direction'],
  },
  upstreamConnectDuration: {
    name: 'dimse_proxy_upstream_connect_duration_seconds',
    type: 'histogram',
    help: 'TCP connect time to an upstream archive.',
    labels: ['upstream'],
    buckets: CONNECT_BUCKETS,
  },
  tlsHandshakeDuration: {
    name: 'dimse_proxy_upstream_tls_handshake_duration_seconds',
    type: 'histogram',
    help: 'Mutual-TLS handshake time with an upstream archive (after the TCP connect).',
    labels: ['upstream'],
    buckets: CONNECT_BUCKETS,
  },
  upstreamFailures: {
    name: 'dimse_proxy_upstream_failures_total',
    type: 'counter',
    help:
      'Associations the proxy rejected (2/3/1) because the upstream could not be reached or did not ' +
      'answer, by upstream and reason (refused, timeout, unreachable, certificate-expired, unknown-ca, ' +
      'hostname-mismatch, client-certificate-rejected, handshake-failed, closed, protocol-error, ...).',
    labels: ['upstream', 'reason'],
  },
  tlsSessions: {
    name: 'dimse_proxy_tls_sessions_total',
    type: 'counter',
    help:
      'TLS sessions of accepted associations (forward: the proxy to the archive; return: the archive to ' +
      'the proxy), by negotiated protocol version and cipher suite (bounded by the TLS profiles).',
    labels: ['listener', 'protocol', 'cipher'],
  },
  tlsClientRejections: {
    name: 'dimse_proxy_tls_client_rejections_total',
    type: 'counter',
    help:
      'TLS clients of the return listener that failed the handshake, by reason (no-client-certificate, ' +
      'client-certificate-untrusted, client-certificate-expired, handshake-timeout, ...).',
    labels: ['listener', 'reason'],
  },
  connectionsRefused: {
    name: 'dimse_proxy_connections_refused_total',
    type: 'counter',
    help:
      'Connections closed before any association, by listener and reason: refused when accepted ' +
      '(per-address-limit, pending-limit, shutting-down) or, on the return listener, closed when the TLS ' +
      'handshake did not finish within handshakeTimeout (handshake-timeout).',
    labels: ['listener', 'reason'],
  },
  policyDenials: {
    name: 'dimse_proxy_policy_denials_total',
    type: 'counter',
    help:
      'Requests refused by the proxy policy: associations (unknown-calling-ae, address-not-allowed, ' +
      'unknown-called-ae, too-many-associations, too-many-peer-associations; on the return listener also ' +
      'no-client-certificate, certificate-identity-mismatch, unknown-destination; from the request itself ' +
      'protocol-version-not-supported, application-context-not-supported, no-valid-presentation-context, ' +
      'no-permitted-presentation-context) and DIMSE requests (service-not-allowed, ' +
      'move-destination-not-allowed).',
    labels: ['reason'],
  },
  protocolErrors: {
    name: 'dimse_proxy_protocol_errors_total',
    type: 'counter',
    help:
      'Protocol errors and findings, by the side at fault and code (EARLY_RESPONSE and ' +
      'INVALID_PRESENTATION_CONTEXT are logged and the association goes on; the others abort it).',
    labels: ['side', 'code'],
  },
  configReloads: {
    name: 'dimse_proxy_config_reloads_total',
    type: 'counter',
    help: 'Configuration reloads, by result (success or failure; a failed reload keeps the previous one).',
    labels: ['result'],
  },
  configLastReloadSuccess: {
    name: 'dimse_proxy_config_last_reload_success_timestamp_seconds',
    type: 'gauge',
    help: 'Unix time of the last successful configuration load (the initial load or a reload).',
    labels: [],
  },
  configLastReloadSuccessful: {
    name: 'dimse_proxy_config_last_reload_successful',
    type: 'gauge',
    help: '1 when the last configuration reload succeeded (or none was attempted), 0 when it failed.',
    labels: [],
  },
  commitmentReports: {
    name: 'dimse_proxy_storage_commitment_reports_total',
    type: 'counter',
    help:
      'Storage Commitment N-EVENT-REPORTs relayed, by result: success (all committed), failures (some ' +
      'instances reported failed) or error (the report could not be read).',
    labels: ['result'],
  },
  commitmentInstances: {
    name: 'dimse_proxy_storage_commitment_instances_total',
    type: 'counter',
    help: 'Instances in relayed Storage Commitment reports, by result (committed or failed).',
    labels: ['result'],
  },
  ledgerRecords: {
    name: 'dimse_proxy_ledger_records_total',
    type: 'counter',
    help: 'Integrity ledger records written.',
    labels: [],
  },
  ledgerWriteFailures: {
    name: 'dimse_proxy_ledger_write_failures_total',
    type: 'counter',
    help: 'Integrity ledger records that could not be written (each one is an alarm).',
    labels: [],
  },
  ledgerHealthy: {
    name: 'dimse_proxy_ledger_healthy',
    type: 'gauge',
    help:
      '1 while the integrity ledger can write, 0 after a write failed until a probe write succeeds again ' +
      '(with onLedgerFailure abort no C-STORE is relayed meanwhile).',
    labels: [],
  },
  certificateNotAfter: {
    name: 'dimse_proxy_certificate_not_after_timestamp_seconds',
    type: 'gauge',
    help:
      'Unix time at which a loaded certificate or CA expires (notAfter), per file and subject; a bundle ' +
      'gives one series per certificate (the earliest when several share a subject).',
    labels: ['file', 'subject'],
  },
  auditSpoolBytes: {
    name: 'dimse_proxy_audit_spool_bytes',
    type: 'gauge',
    help: 'Bytes of audit messages spooled locally, waiting to be delivered.',
    labels: [],
  },
  auditAlarms: {
    name: 'dimse_proxy_audit_alarms_total',
    type: 'counter',
    help: 'Audit alarms raised (audit messages that could not be delivered or spooled).',
    labels: [],
  },
  auditConnected: {
    name: 'dimse_proxy_audit_connected',
    type: 'gauge',
    help:
      '1 while a TLS session with the audit record repository is up, else 0 (exported only when ' +
      'audit.syslog is configured).',
    labels: [],
  },
  auditConnectionStateChanges: {
    name: 'dimse_proxy_audit_connection_state_changes_total',
    type: 'counter',
    help:
      'Changes of the audit repository connection state (connected, disconnected, retrying): one per ' +
      'transition, as logged.',
    labels: ['state'],
  },
  auditSpoolOldestAge: {
    name: 'dimse_proxy_audit_spool_oldest_age_seconds',
    type: 'gauge',
    help: 'Age of the oldest audit message in the spool not yet delivered to the repository (0 when empty).',
    labels: [],
  },
  auditMessages: {
    name: 'dimse_proxy_audit_messages_total',
    type: 'counter',
    help:
      'Audit messages for the repository by result: accepted into the spool, delivered, or refused ' +
      '(each refusal is an alarm).',
    labels: ['result'],
  },
  upstreamReady: {
    name: 'dimse_proxy_upstream_ready',
    type: 'gauge',
    help: '1 when the upstream answered a mutual-TLS C-ECHO within the readiness maxAge, else 0.',
    labels: ['upstream'],
  },
  upstreamLastReadySuccess: {
    name: 'dimse_proxy_upstream_readiness_last_success_timestamp_seconds',
    type: 'gauge',
    help: 'Unix time of the last successful readiness C-ECHO to the upstream (absent when none yet).',
    labels: ['upstream'],
  },
} satisfies Record<string, MetricDef>);

/**
 * prom-client default metrics (collectDefaultMetrics) as registered on Linux, histograms expanded.
 * process_virtual_memory_bytes, process_heap_bytes, process_open_fds and process_max_fds exist on Linux only.
 */
export const DEFAULT_METRIC_NAMES: readonly string[] = Object.freeze([
  'process_cpu_user_seconds_total',
  'process_cpu_system_seconds_total',
  'process_cpu_seconds_total',
  'process_start_time_seconds',
  'process_resident_memory_bytes',
  'process_virtual_memory_bytes',
  'process_heap_bytes',
  'process_open_fds',
  'process_max_fds',
  'nodejs_eventloop_lag_seconds',
  'nodejs_eventloop_lag_min_seconds',
  'nodejs_eventloop_lag_max_seconds',
  'nodejs_eventloop_lag_mean_seconds',
  'nodejs_eventloop_lag_stddev_seconds',
  'nodejs_eventloop_lag_p50_seconds',
  'nodejs_eventloop_lag_p90_seconds',
  'nodejs_eventloop_lag_p99_seconds',
  'nodejs_active_resources',
  'nodejs_active_resources_total',
  'nodejs_active_handles',
  'nodejs_active_handles_total',
  'nodejs_active_requests',
  'nodejs_active_requests_total',
  'nodejs_heap_size_total_bytes',
  'nodejs_heap_size_used_bytes',
  'nodejs_external_memory_bytes',
  'nodejs_heap_space_size_total_bytes',
  'nodejs_heap_space_size_used_bytes',
  'nodejs_heap_space_size_available_bytes',
  'nodejs_version_info',
  'nodejs_gc_duration_seconds_bucket',
  'nodejs_gc_duration_seconds_sum',
  'nodejs_gc_duration_seconds_count',
]);

function exposedNames(def: MetricDef): string[] {
  if (def.type !== 'histogram') return [def.name];
  return [`${def.name}_bucket`, `${def.name}_sum`, `${def.name}_count`];
}

/** The proxy's own series names (histograms expanded to _bucket, _sum and _count). */
export const PROXY_METRIC_NAMES: readonly string[] = Object.freeze(
  Object.values(PROXY_METRICS as Record<string, MetricDef>).flatMap(exposedNames),
);

/** Every series name /metrics exposes (the proxy's and the default process metrics). */
export const METRIC_NAMES: readonly string[] = Object.freeze([
  ...PROXY_METRIC_NAMES,
  ...DEFAULT_METRIC_NAMES,
]);

export interface MetricBounds {
  /** Configured peer AE titles: the only calling_ae label values besides "unknown". */
  knownPeers: readonly string[];
  /** Called AE titles of the configured routes. */
  routes: readonly string[];
  /** Configured upstream names. */
  upstreams: readonly string[];
}

export interface ProxyMetricsOptions extends MetricBounds {
  /** Register prom-client's process / Node.js default metrics (default true). */
  defaultMetrics?: boolean;
  /** When the configuration in force was loaded (sets the last-success gauge; default now). */
  loadedAt?: Date;
}

/**
 * Label bounds from a configuration snapshot. Peers and return-listener callers are the known calling AEs;
 * routes' called AE titles and receiving peers (the return listener's called AEs) are the routes;
 * upstreams and receiving peers (the return listener's relay targets) are the upstreams.
 */
export function metricBoundsFromConfig(config: ProxyConfig): MetricBounds {
  const receivers = Object.values(config.peers)
    .filter((p) => p.receiver !== null && p.receiver !== undefined)
    .map((p) => p.aeTitle);
  const callers = (config.returnListener?.callers ?? []).flatMap((c) => c.aeTitles);
  const unique = (xs: string[]): string[] => [...new Set(xs)];
  return {
    knownPeers: unique([...Object.values(config.peers).map((p) => p.aeTitle), ...callers]),
    routes: unique([...config.routes.map((r) => r.calledAeTitle), ...receivers]),
    upstreams: unique([...Object.keys(config.upstreams), ...receivers]),
  };
}

/**
 * The certificate files a configuration loads: every upstream's CA bundle and client certificate, and the
 * return listener's CA bundle and server certificate.
 */
export function certificateFilesFromConfig(config: ProxyConfig): string[] {
  const files = new Set<string>();
  for (const u of Object.values(config.upstreams)) {
    files.add(u.tls.ca);
    files.add(u.tls.cert);
  }
  if (config.returnListener) {
    files.add(config.returnListener.tls.ca);
    files.add(config.returnListener.tls.cert);
  }
  return [...files];
}

export interface CertificateSource {
  /** Path shown in the `file` label (and read when `pem` is absent). */
  file: string;
  pem?: string | Buffer;
}

export interface CertificateExpiry {
  file: string;
  subject: string;
  notAfter: Date;
}

export interface CertificateReport {
  certificates: CertificateExpiry[];
  /** Files that could not be read or hold no parsable certificate. */
  errors: Array<{ file: string; message: string }>;
}

const PEM_CERT_RE = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

/** Every certificate in a PEM text (a bundle has many). Throws when one block does not parse. */
export function parsePemCertificates(pem: string): X509Certificate[] {
  return (pem.match(PEM_CERT_RE) ?? []).map((block) => new X509Certificate(block));
}

/** One-line subject: node prints one RDN per line. */
function subjectLine(cert: X509Certificate): string {
  return cert.subject.split('\n').filter(Boolean).join(', ');
}

function commandLabel(command: string): string {
  const base = command.replace(/-(RQ|RSP)$/, '');
  return (DIMSE_COMMANDS as readonly string[]).includes(base) ? base : OTHER;
}

/** A counter and one combination of its labels. */
export interface BoundedSeries {
  metric: keyof typeof PROXY_METRICS;
  labels: Record<string, string>;
}

/** Every combination of the values in `sets`, one label each. */
function combinations(sets: Record<string, readonly string[]>): Record<string, string>[] {
  let out: Record<string, string>[] = [{}];
  for (const [label, values] of Object.entries(sets)) {
    out = out.flatMap((partial) => values.map((v) => ({ ...partial, [label]: v })));
  }
  return out;
}

/**
 * The series of counters with bounded label sets a fresh registry exports at 0: every combination of the
 * fixed lists (the vocabulary, directions, status classes, results), with `unknown` for the configured
 * route and calling AE (their product with every peer would multiply the series for no dashboard's
 * benefit) and every configured upstream for upstream failures. Counters without labels start at 0 anyway.
 */
export function boundedSeries(bounds: MetricBounds): BoundedSeries[] {
  const of = (metric: BoundedSeries['metric'], sets: Record<string, readonly string[]>): BoundedSeries[] =>
    combinations(sets).map((labels) => ({ metric, labels }));
  const unknownCaller = { route: [UNKNOWN], calling_ae: [UNKNOWN] };
  return [
    ...Object.entries(OUTCOME_REASONS).flatMap(([outcome, reasons]) =>
      of('associations', { listener: LISTENERS, ...unknownCaller, outcome: [outcome], reason: reasons }),
    ),
    ...of('associationsAccepted', { listener: LISTENERS, ...unknownCaller }),
    ...of('dimseOperations', {
      command: DIMSE_COMMANDS,
      direction: DIRECTIONS,
      status_class: OPERATION_STATUS_CLASSES,
    }),
    ...of('bytesRelayed', { direction: DIRECTIONS }),
    ...of('instances', { direction: DIRECTIONS, status_class: INSTANCE_STATUS_CLASSES }),
    ...of('instanceBytes', { direction: DIRECTIONS }),
    ...of('upstreamFailures', { upstream: bounds.upstreams, reason: UPSTREAM_FAILURES }),
    ...of('tlsSessions', { listener: LISTENERS, protocol: TLS_PROTOCOLS, cipher: TLS_CIPHERS }),
    ...of('tlsClientRejections', { listener: LISTENERS, reason: TLS_CLIENT_REJECTIONS }),
    ...of('connectionsRefused', { listener: LISTENERS, reason: CONNECTION_REFUSALS }),
    ...of('policyDenials', { reason: POLICY_DENIAL_REASONS }),
    ...of('protocolErrors', { side: PROTOCOL_ERROR_SIDES, code: PROTOCOL_ERROR_CODES }),
    ...of('configReloads', { result: RELOAD_RESULTS }),
    ...of('auditConnectionStateChanges', { state: AUDIT_CONNECTION_STATES }),
    ...of('auditMessages', { result: AUDIT_MESSAGE_RESULTS }),
    ...of('commitmentReports', { result: COMMITMENT_REPORT_RESULTS }),
    ...of('commitmentInstances', { result: COMMITMENT_INSTANCE_RESULTS }),
  ];
}

function isFarSide(refusal: Refusal): boolean {
  return (FAR_SIDE_REFUSALS as readonly Refusal[]).includes(refusal);
}

function oneOf(value: string | null | undefined, allowed: readonly string[]): string {
  return value !== null && value !== undefined && allowed.includes(value) ? value : OTHER;
}

/** Direction of the bytes from the caller's side, and toward it, per listener (as association.ts). */
const BYTE_DIRECTIONS: Record<ListenerKind, [Direction, Direction]> = {
  forward: ['modality-to-archive', 'archive-to-modality'],
  return: ['archive-to-destination', 'destination-to-archive'],
};

/** The Storage Commitment fact (events.ts 'commitment'), subscribed by name so this file does not need it typed. */
interface CommitmentFact {
  committed: number;
  failed: number;
  error: string | null;
}

/** Bounded map id -> value for facts waiting for their association's end (never grows without bound). */
class PendingById<V> {
  private readonly map = new Map<string, V>();
  constructor(private readonly max = 65_536) {}
  set(id: string, value: V): void {
    this.map.delete(id);
    this.map.set(id, value);
    if (this.map.size > this.max) {
      const oldest = this.map.keys().next();
      if (!oldest.done) this.map.delete(oldest.value);
    }
  }
  has(id: string): boolean {
    return this.map.has(id);
  }
  get(id: string): V | undefined {
    return this.map.get(id);
  }
  take(id: string): V | undefined {
    const v = this.map.get(id);
    this.map.delete(id);
    return v;
  }
  get size(): number {
    return this.map.size;
  }
}

const READINESS_GAUGES = new Set(['upstreamReady', 'upstreamLastReadySuccess']);
/** Read from the audit sender when scraped (observeAudit). */
const AUDIT_TRANSPORT_METRICS = new Set([
  'auditConnected',
  'auditSpoolBytes',
  'auditSpoolOldestAge',
  'auditMessages',
]);

/** What the audit metrics read from the syslog sender (its stats()) at each scrape. */
export interface AuditTransportStats {
  connected: boolean;
  spoolBytes: number;
  oldestAgeMs: number;
  accepted: number;
  delivered: number;
  refused: number;
}

type Labels<T extends MetricDef> = T['labels'][number];

export class ProxyMetrics {
  readonly registry: Registry;

  private peers = new Set<string>();
  private routes = new Set<string>();
  private upstreams = new Set<string>();
  private readinessSource: (() => ReadinessStatus | null) | null = null;
  private auditSource: (() => AuditTransportStats | null) | null = null;
  /** The sender's message counts at the last scrape (the counter moves by the difference). */
  private auditCounted: Record<(typeof AUDIT_MESSAGE_RESULTS)[number], number> = {
    accepted: 0,
    delivered: 0,
    refused: 0,
  };

  // Associations waiting for their end: refused ones (already counted), accepted ones (active), reasons.
  private readonly counted = new PendingById<true>();
  /** Accepted and not yet ended, with their listener. */
  private readonly active = new PendingById<ListenerKind>();
  private readonly endReasons = new PendingById<UpstreamFailure | AbortReason>();

  private readonly m: {
    [K in keyof typeof PROXY_METRICS]: (typeof PROXY_METRICS)[K]['type'] extends 'counter'
      ? Counter<Labels<(typeof PROXY_METRICS)[K]>>
      : (typeof PROXY_METRICS)[K]['type'] extends 'gauge'
        ? Gauge<Labels<(typeof PROXY_METRICS)[K]>>
        : Histogram<Labels<(typeof PROXY_METRICS)[K]>>;
  };

  constructor(opts: ProxyMetricsOptions) {
    this.registry = new Registry();
    // Readiness is read when scraped, so the gauges never lag behind /readyz.
    const collectReadiness = (): void => this.collectReadiness();
    const collectAudit = (): void => this.collectAudit();
    const make = (key: string, def: MetricDef): Counter<string> | Gauge<string> | Histogram<string> => {
      const common = {
        name: def.name,
        help: def.help,
        labelNames: [...def.labels],
        registers: [this.registry],
        ...(AUDIT_TRANSPORT_METRICS.has(key) ? { collect: collectAudit } : {}),
      };
      if (def.type === 'counter') return new Counter(common);
      if (def.type === 'gauge')
        return new Gauge(READINESS_GAUGES.has(key) ? { ...common, collect: collectReadiness } : common);
      return new Histogram({ ...common, buckets: def.buckets ?? DURATION_BUCKETS });
    };
    const metrics: Record<string, unknown> = {};
    for (const [key, def] of Object.entries(PROXY_METRICS as Record<string, MetricDef>)) {
      metrics[key] = make(key, def);
    }
    this.m = metrics as typeof this.m;
    // Without an audit repository there is no connection to be up: the gauge appears with observeAudit().
    this.registry.removeSingleMetric(PROXY_METRICS.auditConnected.name);
    // Every counter of a bounded label set starts at 0 for each combination: a dashboard shows 0, not no data.
    for (const { metric, labels } of boundedSeries(opts)) (this.m[metric] as Counter<string>).inc(labels, 0);
    this.setBounds(opts);

    this.m.configLastReloadSuccess.set((opts.loadedAt ?? new Date()).getTime() / 1000);
    this.m.configLastReloadSuccessful.set(1);
    this.m.activeAssociations.set(0);
    if (opts.defaultMetrics ?? true) collectDefaultMetrics({ register: this.registry });
  }

  /** Refresh the audit transport series from the sender (each one's collect refreshes all: cheap). */
  private collectAudit(): void {
    const stats = this.auditSource?.() ?? null;
    if (!stats) return;
    this.m.auditConnected.set(stats.connected ? 1 : 0);
    this.m.auditSpoolBytes.set(Math.max(0, stats.spoolBytes));
    this.m.auditSpoolOldestAge.set(Math.max(0, stats.oldestAgeMs) / 1000);
    for (const result of AUDIT_MESSAGE_RESULTS) {
      const now = stats[result];
      const delta = now - this.auditCounted[result];
      if (delta > 0) this.m.auditMessages.inc({ result }, delta);
      this.auditCounted[result] = now;
    }
  }

  /** Refresh both readiness gauges from the source (each one's collect refreshes both: cheap). */
  private collectReadiness(): void {
    const ready = this.m.upstreamReady;
    const lastSuccess = this.m.upstreamLastReadySuccess;
    ready.reset();
    lastSuccess.reset();
    const status = this.readinessSource?.() ?? null;
    if (!status) return;
    for (const [name, entry] of Object.entries(status.upstreams)) {
      const upstream = this.upstreamLabel(name);
      ready.set({ upstream }, entry.ok ? 1 : 0);
      if (entry.lastSuccess !== null) lastSuccess.set({ upstream }, Date.parse(entry.lastSuccess) / 1000);
    }
  }

  /** Replace the label bounds after a configuration reload (series already exported stay). */
  setBounds(bounds: MetricBounds): void {
    this.peers = new Set(bounds.knownPeers);
    this.routes = new Set(bounds.routes);
    this.upstreams = new Set(bounds.upstreams);
    // Upstreams added by a reload start at 0 too (inc by 0 leaves an existing series as it is).
    for (const upstream of this.upstreams)
      for (const reason of UPSTREAM_FAILURES) this.m.upstreamFailures.inc({ upstream, reason }, 0);
  }

  /** The text exposition (Prometheus format). */
  metrics(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  // ------------------------------------------------------------------------------------------- events

  /** Map the core's events to metrics. Returns a function that unsubscribes. */
  subscribe(events: ProxyEvents): () => void {
    const handlers: { [K in keyof ProxyEventMap]?: (e: ProxyEventMap[K][0]) => void } = {
      'association-refused': (e) => this.onRefused(e),
      'association-accepted': (e) => this.onAccepted(e),
      'association-closed': (e) => this.onClosed(e),
      'upstream-failed': (e) => this.onUpstreamFailed(e),
      'dimse-refused': (e) => this.onDimseRefused(e),
      'dimse-completed': (e) => this.onDimseCompleted(e),
      instance: (e) => this.onInstance(e),
      'ledger-failed': (e) => this.onLedgerFailed(e),
      'protocol-error': (e) => this.onProtocolError(e),
      'tls-client-rejected': (e) => this.onTlsClientRejected(e),
      'connection-refused': (e) => this.m.connectionsRefused.inc({ listener: e.listener, reason: e.reason }),
      'worker-started': () => this.m.workers.inc(),
      'worker-exited': () => {
        this.m.workers.dec();
        this.m.workerExits.inc();
      },
    };
    const all: Record<string, (e: never) => void> = {
      ...handlers,
      commitment: (e: CommitmentFact) => this.onCommitment(e),
    };
    const off: Array<() => void> = [];
    for (const [name, fn] of Object.entries(all)) {
      events.on(name as never, fn as never);
      off.push(() => events.off(name as never, fn as never));
    }
    return () => off.forEach((f) => f());
  }

  private callingLabel(ae: string | null | undefined): string {
    return ae && this.peers.has(ae) ? ae : UNKNOWN;
  }

  private routeLabel(calledAe: string | null | undefined): string {
    return calledAe && this.routes.has(calledAe) ? calledAe : UNKNOWN;
  }

  private upstreamLabel(name: string | null | undefined): string {
    return name && this.upstreams.has(name) ? name : UNKNOWN;
  }

  private onRefused(e: ProxyEventMap['association-refused'][0]): void {
    const reason = e.refusal;
    this.m.associations.inc({
      listener: e.listener,
      route: this.routeLabel(e.calledAeTitle),
      calling_ae: this.callingLabel(e.callingAeTitle),
      outcome: 'rejected',
      reason,
    });
    if (!isFarSide(reason)) this.m.policyDenials.inc({ reason });
    this.counted.set(e.id, true);
  }

  private onAccepted(e: ProxyEventMap['association-accepted'][0]): void {
    const listener = e.listener;
    this.m.associationsAccepted.inc({
      listener,
      route: this.routeLabel(e.calledAeTitle),
      calling_ae: this.callingLabel(e.callingAeTitle),
    });
    if (e.worker !== undefined) this.m.workerAssociations.inc({ worker: String(e.worker) });
    if (!this.active.has(e.id)) {
      this.active.set(e.id, listener);
      this.m.activeAssociations.inc();
    }
    if (e.tls) {
      this.m.tlsSessions.inc({
        listener,
        protocol: oneOf(e.tls.protocol, TLS_PROTOCOLS),
        cipher: oneOf(e.tls.cipher, TLS_CIPHERS),
      });
    }
  }

  private onTlsClientRejected(e: ProxyEventMap['tls-client-rejected'][0]): void {
    this.m.tlsClientRejections.inc({
      listener: e.listener,
      reason: e.reason,
    });
  }

  private onCommitment(e: CommitmentFact): void {
    const result: (typeof COMMITMENT_REPORT_RESULTS)[number] =
      e.error !== null ? 'error' : e.failed > 0 ? 'failures' : 'success';
    this.m.commitmentReports.inc({ result });
    if (e.committed > 0) this.m.commitmentInstances.inc({ result: 'committed' }, e.committed);
    if (e.failed > 0) this.m.commitmentInstances.inc({ result: 'failed' }, e.failed);
  }

  private onUpstreamFailed(e: ProxyEventMap['upstream-failed'][0]): void {
    const reason = e.reason;
    this.m.upstreamFailures.inc({ upstream: this.upstreamLabel(e.upstream), reason });
    this.endReasons.set(e.id, reason);
  }

  private onProtocolError(e: ProxyEventMap['protocol-error'][0]): void {
    this.m.protocolErrors.inc({
      side: e.side,
      code: e.code,
    });
    // Only a finding that aborts the association is its end reason; the first one is kept.
    const abort: AbortReason | null = PROTOCOL_ERROR_ABORT_REASONS[e.code];
    if (abort !== null && !this.endReasons.has(e.id)) this.endReasons.set(e.id, abort);
  }

  private onLedgerFailed(e: ProxyEventMap['ledger-failed'][0]): void {
    this.m.ledgerWriteFailures.inc();
    // A record may fail after its association ended: only a live association takes it as its end reason.
    if (this.active.has(e.id) && !this.endReasons.has(e.id)) this.endReasons.set(e.id, 'ledger-failed');
  }

  private onDimseRefused(e: ProxyEventMap['dimse-refused'][0]): void {
    // The status is a number on the wire's terms: one the proxy never answers with has no name of its own.
    this.m.policyDenials.inc({ reason: DIMSE_DENIAL_BY_STATUS.get(e.status) ?? OTHER });
    // The refused request came from the caller's side of its association.
    const listener = this.active.get(e.id) === 'return' ? 'return' : 'forward';
    this.m.dimseOperations.inc({
      command: commandLabel(e.command),
      direction: BYTE_DIRECTIONS[listener][0],
      status_class: 'refused',
    });
  }

  private onDimseCompleted(e: ProxyEventMap['dimse-completed'][0]): void {
    const command = commandLabel(e.command);
    this.m.dimseOperations.inc({
      command,
      direction: e.direction,
      status_class: oneOf(e.statusClass, STATUS_CLASSES),
    });
    if (Number.isFinite(e.durationMs) && e.durationMs >= 0)
      this.m.operationDuration.observe({ command }, e.durationMs / 1000);
  }

  private onInstance(e: ProxyEventMap['instance'][0]): void {
    const direction = e.direction;
    const cls = e.status === null ? NONE : statusClass(e.status);
    this.m.instances.inc({ direction, status_class: cls });
    if (e.bytes > 0) this.m.instanceBytes.inc({ direction }, e.bytes);
  }

  private onClosed(e: ProxyEventMap['association-closed'][0]): void {
    const reason = this.endReasons.take(e.id);
    if (this.active.take(e.id) !== undefined) this.m.activeAssociations.dec();
    const listener = e.listener;
    // bytesFromModality: from the caller's side (the archive on the return listener); bytesFromArchive: toward it.
    const [fromCaller, toCaller] = BYTE_DIRECTIONS[listener];
    if (e.bytesFromModality > 0) this.m.bytesRelayed.inc({ direction: fromCaller }, e.bytesFromModality);
    if (e.bytesFromArchive > 0) this.m.bytesRelayed.inc({ direction: toCaller }, e.bytesFromArchive);
    if (this.counted.take(e.id)) return; // a rejection, counted at its refusal
    this.m.associations.inc({
      listener,
      route: this.routeLabel(e.calledAeTitle),
      calling_ae: this.callingLabel(e.callingAeTitle),
      outcome: e.outcome,
      reason: e.outcome === 'released' ? NONE : (reason ?? NONE),
    });
  }

  // ---------------------------------------------------------------------------- facts without events

  /** A configuration reload finished (`ok` false: rejected, the previous configuration stays). */
  reloadResult(ok: boolean, at: Date = new Date()): void {
    this.m.configReloads.inc({ result: ok ? 'success' : 'failure' });
    this.m.configLastReloadSuccessful.set(ok ? 1 : 0);
    if (ok) this.m.configLastReloadSuccess.set(at.getTime() / 1000);
  }

  /** An upstream connection was established: TCP connect and TLS handshake times in milliseconds. */
  upstreamConnected(upstream: string, connectMs: number, handshakeMs: number): void {
    const labels = { upstream: this.upstreamLabel(upstream) };
    if (Number.isFinite(connectMs) && connectMs >= 0)
      this.m.upstreamConnectDuration.observe(labels, connectMs / 1000);
    if (Number.isFinite(handshakeMs) && handshakeMs >= 0)
      this.m.tlsHandshakeDuration.observe(labels, handshakeMs / 1000);
  }

  /** One integrity ledger record was written. */
  ledgerRecord(count = 1): void {
    this.m.ledgerRecords.inc(count);
  }

  /** The ledger can write (1) or not (0). */
  setLedgerHealthy(healthy: boolean): void {
    this.m.ledgerHealthy.set(healthy ? 1 : 0);
  }

  /** Current size of the local audit spool. */
  setAuditSpoolBytes(bytes: number): void {
    this.m.auditSpoolBytes.set(Math.max(0, bytes));
  }

  /** An audit alarm was raised. */
  auditAlarm(): void {
    this.m.auditAlarms.inc();
  }

  /**
   * Where the audit repository series come from (the syslog sender's stats(), read at each scrape):
   * dimse_proxy_audit_connected is exported from then on; null stops it.
   */
  observeAudit(source: (() => AuditTransportStats | null) | null): void {
    this.auditSource = source;
    const name = PROXY_METRICS.auditConnected.name;
    const registered = this.registry.getSingleMetric(name) !== undefined;
    if (source && !registered) this.registry.registerMetric(this.m.auditConnected);
    if (!source && registered) this.registry.removeSingleMetric(name);
  }

  /** The audit repository connection changed state (one per transition, as logged). */
  auditConnectionState(state: AuditConnectionState): void {
    this.m.auditConnectionStateChanges.inc({ state });
  }

  /** Where the upstream readiness gauges come from (read at each scrape); null stops exporting them. */
  observeReadiness(source: (() => ReadinessStatus | null) | null): void {
    this.readinessSource = source;
  }

  /**
   * Replace the certificate expiry gauges with the certificates in `list` (paths, or paths with their PEM
   * text). Every certificate of a bundle is reported; a file that cannot be read or parsed is listed in
   * `errors` and exports nothing.
   */
  setCertificates(list: ReadonlyArray<string | CertificateSource>): CertificateReport {
    const report: CertificateReport = { certificates: [], errors: [] };
    const earliest = new Map<string, CertificateExpiry>();
    for (const item of list) {
      const source: CertificateSource = typeof item === 'string' ? { file: item } : item;
      let certs: X509Certificate[];
      try {
        const pem = source.pem ?? readFileSync(source.file);
        certs = parsePemCertificates(typeof pem === 'string' ? pem : pem.toString('latin1'));
        if (certs.length === 0) throw new Error('no PEM certificate found');
      } catch (err) {
        report.errors.push({ file: source.file, message: (err as Error).message });
        continue;
      }
      for (const cert of certs) {
        const entry: CertificateExpiry = {
          file: source.file,
          subject: subjectLine(cert),
          notAfter: new Date(cert.validTo),
        };
        report.certificates.push(entry);
        const key = `${entry.file}\u0000${entry.subject}`;
        const seen = earliest.get(key);
        if (!seen || entry.notAfter < seen.notAfter) earliest.set(key, entry);
      }
    }
    this.m.certificateNotAfter.reset();
    for (const c of earliest.values()) {
      this.m.certificateNotAfter.set({ file: c.file, subject: c.subject }, c.notAfter.getTime() / 1000);
    }
    return report;
  }

  /** Associations currently counted as active (for tests and status). */
  get activeAssociations(): number {
    return this.active.size;
  }
}
