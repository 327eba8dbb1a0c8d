import { readFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { LineCounter, parseDocument, type Document } from 'yaml';
import type { z } from 'zod';
import { DEFAULTS, deepFreeze } from './defaults.js';
import { parseDuration } from './duration.js';
import { ConfigError, type ConfigIssue } from './errors.js';
import { formatPath, locate, type KeyPath } from './locate.js';
import {
  errorMap,
  peerSchema,
  rootSchema,
  upstreamSchema,
  type RawPeer,
  type RawRoot,
  type RawUpstream,
} from './schema.js';
import { aeTitleError, trimAeTitle } from './syntax.js';
import { parseAddressRange } from './address.js';
import { applyAdminDefaults } from './admin.js';
import { auditCrossIssues, resolveAuditConfig } from './audit.js';
import { parseExpiryWindow } from './tls-policy.js';
import type {
  ProxyProtocolConfig,
  CertificateIdentityKind,
  LedgerConfig,
  LedgerFailureMode,
  LedgerFsyncMode,
  LimitsConfig,
  LoggingConfig,
  PeerConfig,
  ProxyConfig,
  ReturnListenerConfig,
  RouteConfig,
  ServiceName,
  TlsProfileName,
  UpstreamConfig,
  WorkersConfig,
} from './types.js';

export { DEFAULTS } from './defaults.js';

const UPSTREAM_NAME_RE = /^[A-Za-z0-9_.-]+$/;

interface PendingIssue {
  path: KeyPath;
  message: string;
  /** Point at the mapping key itself rather than its value. */
  at?: 'key' | 'value';
}

/**
 * Parses and validates configuration text and returns a deep-frozen snapshot. Relative file paths are
 * resolved against the directory of `sourcePath` (or the working directory when it is null).
 * Throws ConfigError listing every problem found, each with its key path and line:column.
 */
export function parseConfig(text: string, sourcePath: string | null): ProxyConfig {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, {
    lineCounter,
    keepSourceTokens: true,
    prettyErrors: false,
    uniqueKeys: true,
  });

  if (doc.errors.length > 0) {
    const issues = doc.errors.map((error): ConfigIssue => {
      const pos = lineCounter.linePos(error.pos[0]);
      return { path: '', line: pos.line, column: pos.col, message: `YAML syntax error: ${error.message}` };
    });
    throw new ConfigError(sourcePath, issues);
  }

  let raw: unknown;
  try {
    raw = doc.toJS({ maxAliasCount: 100 });
  } catch (error) {
    // e.g. alias expansion beyond maxAliasCount (a "billion laughs" document).
    const reason = error instanceof Error ? error.message : String(error);
    throw new ConfigError(sourcePath, [
      { path: '', line: null, column: null, message: `YAML error: ${reason}` },
    ]);
  }
  const pending: PendingIssue[] = [];
  const root = validate(raw, pending);

  if (pending.length > 0 || root === null) {
    throw new ConfigError(sourcePath, toIssues(doc, lineCounter, pending));
  }
  const baseDir = sourcePath === null ? process.cwd() : dirname(resolve(sourcePath));
  return deepFreeze(buildProxyConfig(root, sourcePath === null ? null : resolve(sourcePath), baseDir));
}

/** Reads `path` and parses it with parseConfig. A file that cannot be read is a ConfigError naming the path. */
export async function loadConfig(path: string): Promise<ProxyConfig> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw new ConfigError(path, [
      { path: '', line: null, column: null, message: `cannot read configuration file: ${reason}` },
    ]);
  }
  return parseConfig(text, path);
}

interface ValidatedRoot {
  root: z.output<typeof rootSchema>;
  upstreams: [string, RawUpstream][];
  peers: [string, RawPeer][];
}

function validate(raw: unknown, pending: PendingIssue[]): ValidatedRoot | null {
  if (raw === null || raw === undefined || typeof raw !== 'object' || Array.isArray(raw)) {
    pending.push({
      path: [],
      message: 'the configuration must be a YAML mapping (listen, upstreams, routes, peers…)',
    });
    return null;
  }
  const rootResult = rootSchema.safeParse(raw, { error: errorMap });
  if (!rootResult.success) collectZodIssues(rootResult.error.issues, [], pending);

  const rawRoot = raw as Record<string, unknown>;
  const upstreams = validateEntries(rawRoot, 'upstreams', upstreamSchema, pending, true, (name, path) => {
    if (!UPSTREAM_NAME_RE.test(name)) {
      pending.push({
        path,
        at: 'key',
        message: `upstream name "${name}" must match ${UPSTREAM_NAME_RE.source}`,
      });
    }
    return name;
  });

  const seenPeers = new Map<string, string>();
  const peers = validateEntries(rawRoot, 'peers', peerSchema, pending, false, (key, path) => {
    const aeTitle = trimAeTitle(key);
    const problem = aeTitleError(aeTitle);
    if (problem !== null) {
      pending.push({ path, at: 'key', message: problem });
    } else if (seenPeers.has(aeTitle)) {
      pending.push({
        path,
        at: 'key',
        message: `peer AE title "${aeTitle}" is listed twice (also as ${JSON.stringify(seenPeers.get(aeTitle))})`,
      });
    } else {
      seenPeers.set(aeTitle, key);
    }
    return aeTitle;
  });

  checkRoutes(rawRoot, pending);
  checkReturnListener(rawRoot, pending);
  checkPendingLimits(rawRoot, pending);
  if (rootResult.success && rootResult.data.audit) {
    for (const issue of auditCrossIssues(resolveAuditConfig(rootResult.data.audit, '/'))) {
      pending.push({ path: ['audit', ...issue.path], message: issue.message });
    }
  }

  if (!rootResult.success || upstreams === null || peers === null) return null;
  return { root: rootResult.data, upstreams, peers };
}

/**
 * Validates a mapping of name -> object entry by entry (rather than with z.record) so that every key,
 * including odd ones such as "__proto__", is seen and reported with its own path.
 */
function validateEntries<S extends z.ZodType>(
  rawRoot: Record<string, unknown>,
  section: string,
  schema: S,
  pending: PendingIssue[],
  requireOne: boolean,
  checkKey: (key: string, path: KeyPath) => string,
): [string, z.output<S>][] | null {
  const value = rawRoot[section];
  if (value === undefined) {
    pending.push({ path: [section], message: 'is required' });
    return null;
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    pending.push({ path: [section], message: `expected a mapping, got ${describeKind(value)}` });
    return null;
  }
  const entries = Object.entries(value as Record<string, unknown>);
  if (requireOne && entries.length === 0) {
    pending.push({ path: [section], message: 'must define at least one entry' });
    return null;
  }
  const out: [string, z.output<S>][] = [];
  let ok = true;
  for (const [key, entry] of entries) {
    const path = [section, key];
    const before = pending.length;
    const name = checkKey(key, path);
    const result = schema.safeParse(entry, { error: errorMap });
    if (!result.success) collectZodIssues(result.error.issues, path, pending);
    if (result.success && pending.length === before) out.push([name, result.data]);
    else ok = false;
  }
  return ok ? out : null;
}

function checkRoutes(rawRoot: Record<string, unknown>, pending: PendingIssue[]): void {
  const routes = rawRoot['routes'];
  const upstreams = rawRoot['upstreams'];
  if (!Array.isArray(routes)) return;
  const upstreamNames =
    upstreams !== null && typeof upstreams === 'object' && !Array.isArray(upstreams)
      ? Object.keys(upstreams)
      : null;
  const calledSeen = new Map<string, number>();
  routes.forEach((route: unknown, index) => {
    if (route === null || typeof route !== 'object') return;
    const { calledAeTitle, upstream } = route as Record<string, unknown>;
    if (typeof upstream === 'string' && upstreamNames !== null && !upstreamNames.includes(upstream)) {
      const known = upstreamNames.length > 0 ? ` (defined: ${upstreamNames.join(', ')})` : '';
      pending.push({
        path: ['routes', index, 'upstream'],
        message: `unknown upstream "${upstream}"${known}`,
      });
    }
    if (typeof calledAeTitle === 'string') {
      const called = trimAeTitle(calledAeTitle);
      const first = calledSeen.get(called);
      if (first !== undefined) {
        pending.push({
          path: ['routes', index, 'calledAeTitle'],
          message: `duplicate route for called AE title "${called}" (first defined at routes[${first}])`,
        });
      } else {
        calledSeen.set(called, index);
      }
    }
  });
}

/** Cross-checks of returnListener: one identity kind per caller, each calling AE title under one caller. */
/** limits.pendingReservedForPeers and pendingPerAddress against pendingTotal (each as set or defaulted). */
function checkPendingLimits(rawRoot: Record<string, unknown>, pending: PendingIssue[]): void {
  const raw = rawRoot['limits'];
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) return;
  const l = raw as Record<string, unknown>;
  const value = (key: 'pendingPerAddress' | 'pendingTotal' | 'pendingReservedForPeers'): number | null => {
    const v = l[key] === undefined ? DEFAULTS.limits[key] : l[key];
    return Number.isInteger(v) ? (v as number) : null; // a wrong type is the schema's error
  };
  const total = value('pendingTotal');
  const reserved = value('pendingReservedForPeers');
  const perAddress = value('pendingPerAddress');
  if (total === null) return;
  if (reserved !== null && reserved >= total) {
    pending.push({
      path: [
        'limits',
        l['pendingReservedForPeers'] !== undefined ? 'pendingReservedForPeers' : 'pendingTotal',
      ],
      message: `pendingReservedForPeers (${reserved}) must be less than pendingTotal (${total}): addresses no peer lists need room too`,
    });
  }
  if (perAddress !== null && perAddress > total) {
    pending.push({
      path: ['limits', l['pendingPerAddress'] !== undefined ? 'pendingPerAddress' : 'pendingTotal'],
      message: `pendingPerAddress (${perAddress}) must not exceed pendingTotal (${total})`,
    });
  }
}

function checkReturnListener(rawRoot: Record<string, unknown>, pending: PendingIssue[]): void {
  const rl = rawRoot['returnListener'];
  if (rl === null || typeof rl !== 'object' || Array.isArray(rl)) return;
  const callers = (rl as Record<string, unknown>)['callers'];
  if (!Array.isArray(callers)) return;
  const seen = new Map<string, number>();
  callers.forEach((caller: unknown, index) => {
    if (caller === null || typeof caller !== 'object') return;
    const { identity, aeTitles } = caller as Record<string, unknown>;
    if (identity !== null && typeof identity === 'object' && !Array.isArray(identity)) {
      const kinds = Object.keys(identity).filter((k) => ['dns', 'ip', 'uri', 'cn'].includes(k));
      if (kinds.length !== 1) {
        pending.push({
          path: ['returnListener', 'callers', index, 'identity'],
          message: `must name exactly one of dns, ip, uri, cn (got ${kinds.length === 0 ? 'none' : kinds.join(', ')})`,
        });
      }
      const ip = (identity as Record<string, unknown>)['ip'];
      if (typeof ip === 'string' && !parseAddressRange(ip).ok) {
        pending.push({
          path: ['returnListener', 'callers', index, 'identity', 'ip'],
          message: `"${ip}" is not an IP address`,
        });
      }
    }
    if (Array.isArray(aeTitles)) {
      aeTitles.forEach((ae: unknown, j) => {
        if (typeof ae !== 'string') return;
        const title = trimAeTitle(ae);
        const first = seen.get(title);
        if (first !== undefined && first !== index) {
          pending.push({
            path: ['returnListener', 'callers', index, 'aeTitles', j],
            message: `AE title "${title}" is already bound to returnListener.callers[${first}]: one calling AE title, one certificate identity`,
          });
        } else seen.set(title, index);
      });
    }
  });
}

function collectZodIssues(
  issues: readonly z.core.$ZodIssue[],
  prefix: KeyPath,
  pending: PendingIssue[],
): void {
  for (const issue of issues) {
    const path = [...prefix, ...issue.path.filter((p): p is string | number => typeof p !== 'symbol')];
    if (issue.code === 'unrecognized_keys') {
      for (const key of issue.keys)
        pending.push({ path: [...path, key], at: 'key', message: `unknown key "${key}"` });
    } else {
      pending.push({ path, message: issue.message });
    }
  }
}

function describeKind(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'a list';
  return typeof value;
}

function toIssues(doc: Document, lineCounter: LineCounter, pending: PendingIssue[]): ConfigIssue[] {
  const issues = pending.map((p): ConfigIssue => {
    const pos = locate(doc, lineCounter, p.path, p.at ?? 'value');
    return {
      path: formatPath(p.path),
      line: pos?.line ?? null,
      column: pos?.column ?? null,
      message: p.message,
    };
  });
  return issues
    .map((issue, index) => ({ issue, index }))
    .sort(
      (a, b) =>
        (a.issue.line ?? Infinity) - (b.issue.line ?? Infinity) ||
        (a.issue.column ?? 0) - (b.issue.column ?? 0) ||
        a.index - b.index,
    )
    .map(({ issue }) => issue);
}

function defaultDurationMs(value: string): number {
  const result = parseDuration(value);
  if (!result.ok) throw new Error(`internal error: bad default duration ${value}`);
  return result.ms;
}

function defaultExpiryWindowMs(value: string): number {
  const result = parseExpiryWindow(value);
  if (!result.ok) throw new Error(`internal error: bad default expiry window ${value}`);
  return result.ms;
}

function buildProxyConfig(validated: ValidatedRoot, sourcePath: string | null, baseDir: string): ProxyConfig {
  const { root } = validated;
  const file = (p: string): string => resolve(baseDir, p);

  const upstreams: Record<string, UpstreamConfig> = Object.create(null) as Record<string, UpstreamConfig>;
  for (const [name, u] of validated.upstreams) {
    upstreams[name] = {
      name,
      host: u.host,
      port: u.port,
      aeTitle: u.aeTitle,
      callingAeTitle: u.callingAeTitle ?? DEFAULTS.upstream.callingAeTitle,
      connectTimeoutMs: u.connectTimeout ?? defaultDurationMs(DEFAULTS.upstream.connectTimeout),
      tls: {
        ca: file(u.tls.ca),
        cert: file(u.tls.cert),
        key: file(u.tls.key),
        serverName: u.tls.serverName ?? u.host,
        verifyHostname: u.tls.verifyHostname ?? DEFAULTS.upstream.tls.verifyHostname,
        profile: (u.tls.profile as TlsProfileName | undefined) ?? DEFAULTS.upstream.tls.profile,
      },
    };
  }

  const routes: RouteConfig[] = root.routes.map((r) => ({
    calledAeTitle: r.calledAeTitle,
    upstream: r.upstream,
  }));

  const peers: Record<string, PeerConfig> = Object.create(null) as Record<string, PeerConfig>;
  for (const [aeTitle, p] of validated.peers) {
    peers[aeTitle] = {
      aeTitle,
      addresses: [...p.addresses],
      services: unique(p.services as ServiceName[]),
      moveDestinations: unique(p.moveDestinations ?? [aeTitle]),
      maxAssociations: p.maxAssociations ?? DEFAULTS.peer.maxAssociations,
      sopClasses: unique(p.sopClasses ?? [...DEFAULTS.peer.sopClasses]),
      receiver: p.receiver
        ? {
            host: p.receiver.host,
            port: p.receiver.port,
            aeTitle: p.receiver.aeTitle ?? aeTitle,
            callingAeTitle: p.receiver.callingAeTitle ?? DEFAULTS.receiver.callingAeTitle,
            connectTimeoutMs:
              p.receiver.connectTimeout ?? defaultDurationMs(DEFAULTS.receiver.connectTimeout),
          }
        : DEFAULTS.peer.receiver,
    };
  }

  const r = root.returnListener ?? null;
  const R = DEFAULTS.returnListener;
  const returnListener: ReturnListenerConfig | null = r
    ? {
        host: r.host ?? R.host,
        port: r.port ?? R.port,
        tls: {
          ca: file(r.tls.ca),
          cert: file(r.tls.cert),
          key: file(r.tls.key),
          profile: (r.tls.profile as TlsProfileName | undefined) ?? R.tls.profile,
          handshakeTimeoutMs: r.tls.handshakeTimeout ?? defaultDurationMs(R.tls.handshakeTimeout),
        },
        proxyProtocol: proxyProtocolConfig(r.proxyProtocol),
        callers: r.callers.map((c) => {
          const [kind, value] = Object.entries(c.identity)[0] as [CertificateIdentityKind, string];
          return {
            aeTitles: unique(c.aeTitles),
            identity: { kind, value },
            addresses: c.addresses ? [...c.addresses] : R.caller.addresses,
            services: unique((c.services ?? [...R.caller.services]) as ServiceName[]),
            maxAssociations: c.maxAssociations ?? R.caller.maxAssociations,
          };
        }),
      }
    : null;

  const l = root.limits ?? {};
  const limits: LimitsConfig = {
    maxAssociations: l.maxAssociations ?? DEFAULTS.limits.maxAssociations,
    maxAssociationsPerPeer: l.maxAssociationsPerPeer ?? DEFAULTS.limits.maxAssociationsPerPeer,
    associationRequestTimeoutMs:
      l.associationRequestTimeout ?? defaultDurationMs(DEFAULTS.limits.associationRequestTimeout),
    idleTimeoutMs: l.idleTimeout ?? defaultDurationMs(DEFAULTS.limits.idleTimeout),
    maxPduLength: l.maxPduLength ?? DEFAULTS.limits.maxPduLength,
    drainTimeoutMs: l.drainTimeout ?? defaultDurationMs(DEFAULTS.limits.drainTimeout),
    relayBuffer: l.relayBuffer ?? DEFAULTS.limits.relayBuffer,
    relayBufferTotal: l.relayBufferTotal ?? DEFAULTS.limits.relayBufferTotal,
    pendingPerAddress: l.pendingPerAddress ?? DEFAULTS.limits.pendingPerAddress,
    pendingTotal: l.pendingTotal ?? DEFAULTS.limits.pendingTotal,
    pendingReservedForPeers: l.pendingReservedForPeers ?? DEFAULTS.limits.pendingReservedForPeers,
  };

  const g = root.logging ?? {};
  const logFile = g.file === undefined ? DEFAULTS.logging.file : g.file;
  const logging: LoggingConfig = {
    level: g.level ?? DEFAULTS.logging.level,
    file: logFile === null ? null : file(logFile),
  };

  const d = root.ledger ?? {};
  const rotate = d.rotate ?? {};
  const ledgerPath = d.path === undefined ? DEFAULTS.ledger.path : d.path;
  const signingKey = d.signingKey === undefined ? DEFAULTS.ledger.signingKey : d.signingKey;
  const witnessFile = d.witness?.file === undefined ? DEFAULTS.ledger.witness.file : d.witness.file;
  const ledger: LedgerConfig = {
    path: ledgerPath === null ? null : file(ledgerPath),
    fsync: (d.fsync as LedgerFsyncMode | undefined) ?? DEFAULTS.ledger.fsync,
    fsyncIntervalMs: d.fsyncInterval ?? defaultDurationMs(DEFAULTS.ledger.fsyncInterval),
    rotateMaxBytes: rotate.maxBytes ?? DEFAULTS.ledger.rotate.maxBytes,
    rotateDaily: rotate.daily ?? DEFAULTS.ledger.rotate.daily,
    checkpointIntervalMs: d.checkpointEvery ?? defaultDurationMs(DEFAULTS.ledger.checkpointEvery),
    signingKey: signingKey === null ? null : file(signingKey),
    onLedgerFailure: (d.onLedgerFailure as LedgerFailureMode | undefined) ?? DEFAULTS.ledger.onLedgerFailure,
    witness: {
      file: witnessFile === null ? null : file(witnessFile),
      syslog: d.witness?.syslog ?? DEFAULTS.ledger.witness.syslog,
    },
  };

  return {
    sourcePath,
    listen: {
      host: root.listen?.host ?? DEFAULTS.listen.host,
      port: root.listen?.port ?? DEFAULTS.listen.port,
      proxyProtocol: proxyProtocolConfig(root.listen?.proxyProtocol),
    },
    upstreams,
    routes,
    peers,
    limits,
    logging,
    ledger,
    returnListener,
    admin: applyAdminDefaults(root.admin, sourcePath),
    audit: root.audit ? resolveAuditConfig(root.audit, baseDir) : null,
    tls: { expiryWarningMs: root.tls?.expiryWarning ?? defaultExpiryWindowMs(DEFAULTS.tls.expiryWarning) },
    workers: workersConfig(root.workers),
    reload: {
      watch: root.reload?.watch ?? DEFAULTS.reload.watch,
      pollIntervalMs: root.reload?.pollInterval ?? defaultDurationMs(DEFAULTS.reload.pollInterval),
    },
  };
}

function workersConfig(w: RawRoot['workers']): WorkersConfig {
  if (w === null || w === undefined) return { ...DEFAULTS.workers };
  if (typeof w !== 'object') return { count: w, balance: DEFAULTS.workers.balance };
  return { count: w.count ?? DEFAULTS.workers.count, balance: w.balance ?? DEFAULTS.workers.balance };
}

function unique<T>(values: readonly T[]): T[] {
  return [...new Set(values)];
}

function proxyProtocolConfig(
  p: { from: string[]; headerTimeout?: number | undefined } | null | undefined,
): ProxyProtocolConfig | null {
  if (!p) return null;
  return {
    from: unique(p.from),
    headerTimeoutMs: p.headerTimeout ?? defaultDurationMs(DEFAULTS.proxyProtocol.headerTimeout),
  };
}
