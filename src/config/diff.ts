// What changed between two configuration snapshots, for reload logs, `check-config --against` and
// `reload --dry-run`; and the content fingerprints of every file a configuration names, so a reload can
// report "certificate file X content changed" even when the configuration text did not change.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { formatPath, type KeyPath } from './keypath.js';
import type { ProxyConfig } from './types.js';

export interface ConfigChange {
  /** Key path of what changed, e.g. `peers.CT_ROOM1.services`, `upstreams.archive`, `limits.idleTimeoutMs`. */
  path: string;
  kind: 'added' | 'removed' | 'changed';
  before?: unknown;
  after?: unknown;
  /** The running process cannot take this change over on reload; it applies at the next restart. */
  restartRequired?: boolean;
  /** One line for humans, e.g. `peer CT_ROOM1: services +find -store`. */
  summary: string;
}

/** Top-level sections compared field by field; any other key is compared as a whole (see diffConfigs). */
const HANDLED_SECTIONS = new Set([
  'sourcePath',
  'workers',
  'listen',
  'upstreams',
  'routes',
  'peers',
  'limits',
  'logging',
  'ledger',
]);

/**
 * Settings the running process only reads at start: the listening socket is bound once, the ledger writer
 * is opened once with all of its settings, the log file transport is created once.
 */
const RESTART_REQUIRED: ReadonlySet<string> = new Set([
  'listen',
  'workers',
  'ledger',
  'ledger.path',
  'ledger.fsync',
  'ledger.fsyncIntervalMs',
  'ledger.rotateMaxBytes',
  'ledger.rotateDaily',
  'ledger.checkpointIntervalMs',
  'ledger.signingKey',
  'ledger.onLedgerFailure',
  'ledger.witness',
  'ledger.witness.file',
  'ledger.witness.syslog',
  'logging.file',
]);

/** Peer fields whose value is a set of strings: reported as +added -removed. */
const PEER_SET_FIELDS = new Set(['addresses', 'services', 'moveDestinations', 'sopClasses']);

/** Preferred report order of known fields; unknown (future) fields follow in alphabetical order. */
const PEER_FIELD_ORDER = [
  'aeTitle',
  'addresses',
  'services',
  'moveDestinations',
  'maxAssociations',
  'sopClasses',
];
const UPSTREAM_FIELD_ORDER = ['name', 'host', 'port', 'aeTitle', 'callingAeTitle', 'connectTimeoutMs', 'tls'];
const TLS_FIELD_ORDER = ['ca', 'cert', 'key', 'serverName', 'verifyHostname', 'profile'];

/**
 * Lists what changed from `before` to `after`, section by section in file order. Pure: reads no files
 * (file *content* changes are found with fileFingerprints / changedFiles). Top-level sections this function
 * does not know are compared as a whole and reported as "<key> changed", so no section is ever ignored.
 */
export function diffConfigs(before: ProxyConfig, after: ProxyConfig): ConfigChange[] {
  const out: ConfigChange[] = [];
  const b = before as unknown as Record<string, unknown>;
  const a = after as unknown as Record<string, unknown>;

  if (!sameValue(before.listen, after.listen)) {
    // The listening socket is bound once: one line for the address as a whole.
    const sameAddress = before.listen.host === after.listen.host && before.listen.port === after.listen.port;
    if (sameAddress && !sameValue(before.listen.proxyProtocol, after.listen.proxyProtocol)) {
      // Read for each new connection: applies at once.
      out.push({
        path: 'listen.proxyProtocol',
        kind: 'changed',
        before: before.listen.proxyProtocol,
        after: after.listen.proxyProtocol,
        summary: `listen.proxyProtocol ${show(before.listen.proxyProtocol)} -> ${show(after.listen.proxyProtocol)}`,
      });
    }
  }
  if (before.listen.host !== after.listen.host || before.listen.port !== after.listen.port) {
    const address = (l: ProxyConfig['listen']): string =>
      l.host.includes(':') ? `[${l.host}]:${l.port}` : `${l.host}:${l.port}`;
    out.push({
      path: 'listen',
      kind: 'changed',
      before: before.listen,
      after: after.listen,
      restartRequired: true,
      summary: `listen address ${address(before.listen)} -> ${address(after.listen)}`,
    });
  }
  diffUpstreams(out, before.upstreams, after.upstreams);
  diffRoutes(out, before.routes, after.routes);
  diffPeers(out, before.peers, after.peers);
  diffFlatSection(out, 'limits', before.limits, after.limits, (k) => `limits.${k}`);
  diffFlatSection(out, 'logging', before.logging, after.logging, (k) => `logging.${k}`);
  diffFlatSection(out, 'ledger', before.ledger, after.ledger, (k) => `ledger.${k}`);
  // The worker processes are started once: a new count or balance takes a restart.
  diffFlatSection(out, 'workers', before.workers, after.workers, (k) => `workers.${k}`);

  const others = [...new Set([...Object.keys(b), ...Object.keys(a)])]
    .filter((key) => !HANDLED_SECTIONS.has(key))
    .sort();
  for (const key of others) {
    const was = b[key];
    const now = a[key];
    if (sameValue(was, now)) continue;
    const path = formatPath([key]);
    if (was === undefined) {
      out.push({ path, kind: 'added', after: now, summary: `${path} added` });
    } else if (now === undefined) {
      out.push({ path, kind: 'removed', before: was, summary: `${path} removed` });
    } else {
      out.push({ path, kind: 'changed', before: was, after: now, summary: `${path} changed` });
    }
  }
  return out;
}

function diffUpstreams(
  out: ConfigChange[],
  before: Record<string, unknown>,
  after: Record<string, unknown>,
): void {
  for (const name of unionKeys(before, after)) {
    const was = record(before[name]);
    const now = record(after[name]);
    const path = formatPath(['upstreams', name]);
    if (was === null && now === null) continue;
    if (was === null) {
      out.push({
        path,
        kind: 'added',
        after: now,
        summary: `upstream ${name} added (${describeUpstream(now)})`,
      });
      continue;
    }
    if (now === null) {
      out.push({
        path,
        kind: 'removed',
        before: was,
        summary: `upstream ${name} removed (was ${describeUpstream(was)})`,
      });
      continue;
    }
    for (const field of orderedKeys(was, now, UPSTREAM_FIELD_ORDER)) {
      const w = was[field];
      const n = now[field];
      if (sameValue(w, n)) continue;
      const tlsWas = record(w);
      const tlsNow = record(n);
      if (field === 'tls' && tlsWas !== null && tlsNow !== null) {
        for (const tlsField of orderedKeys(tlsWas, tlsNow, TLS_FIELD_ORDER)) {
          const tw = tlsWas[tlsField];
          const tn = tlsNow[tlsField];
          if (sameValue(tw, tn)) continue;
          const what = tlsField === 'ca' || tlsField === 'cert' || tlsField === 'key' ? ' file' : '';
          out.push(
            changed(
              ['upstreams', name, 'tls', tlsField],
              tw,
              tn,
              `upstream ${name}: tls.${tlsField}${what} ${show(tw)} -> ${show(tn)}`,
            ),
          );
        }
        continue;
      }
      out.push(
        changed(['upstreams', name, field], w, n, `upstream ${name}: ${field} ${show(w)} -> ${show(n)}`),
      );
    }
  }
}

function diffRoutes(out: ConfigChange[], before: readonly unknown[], after: readonly unknown[]): void {
  // Called AE titles are unique, so a route is identified by its called AE title; order does not matter.
  const byCalled = (routes: readonly unknown[]): Map<string, Record<string, unknown>> => {
    const map = new Map<string, Record<string, unknown>>();
    routes.forEach((route, index) => {
      const r = record(route);
      if (r === null) return;
      const called = typeof r['calledAeTitle'] === 'string' ? r['calledAeTitle'] : `#${index}`;
      map.set(called, r);
    });
    return map;
  };
  const was = byCalled(before);
  const now = byCalled(after);
  const called = [...new Set([...was.keys(), ...now.keys()])].sort();
  for (const title of called) {
    const w = was.get(title);
    const n = now.get(title);
    const path = `routes[${JSON.stringify(title)}]`;
    if (sameValue(w, n)) continue;
    if (w === undefined) {
      out.push({
        path,
        kind: 'added',
        after: n,
        summary: `route ${title} -> ${show(n?.['upstream'])} added`,
      });
    } else if (n === undefined) {
      out.push({
        path,
        kind: 'removed',
        before: w,
        summary: `route ${title} -> ${show(w['upstream'])} removed`,
      });
    } else if (!sameValue(w['upstream'], n['upstream'])) {
      out.push({
        path,
        kind: 'changed',
        before: w,
        after: n,
        summary: `route ${title}: upstream ${show(w['upstream'])} -> ${show(n['upstream'])}`,
      });
    } else {
      out.push({ path, kind: 'changed', before: w, after: n, summary: `route ${title} changed` });
    }
  }
}

function diffPeers(
  out: ConfigChange[],
  before: Record<string, unknown>,
  after: Record<string, unknown>,
): void {
  for (const name of unionKeys(before, after)) {
    const was = record(before[name]);
    const now = record(after[name]);
    const path = formatPath(['peers', name]);
    if (was === null && now === null) continue;
    if (was === null) {
      out.push({ path, kind: 'added', after: now, summary: `peer ${name} added (${describePeer(now)})` });
      continue;
    }
    if (now === null) {
      out.push({ path, kind: 'removed', before: was, summary: `peer ${name} removed` });
      continue;
    }
    for (const field of orderedKeys(was, now, PEER_FIELD_ORDER)) {
      const w = was[field];
      const n = now[field];
      if (sameValue(w, n)) continue;
      let detail: string;
      if (PEER_SET_FIELDS.has(field) && Array.isArray(w) && Array.isArray(n)) {
        detail = setDelta(w, n);
      } else if (field === 'maxAssociations') {
        const fmt = (v: unknown): string =>
          v === null ? 'default (limits.maxAssociationsPerPeer)' : show(v);
        detail = `${fmt(w)} -> ${fmt(n)}`;
      } else {
        detail = `${show(w)} -> ${show(n)}`;
      }
      out.push(changed(['peers', name, field], w, n, `peer ${name}: ${field} ${detail}`));
    }
  }
}

/** Compares a flat section key by key (limits, logging, ledger); nested values compare as a whole. */
function diffFlatSection(
  out: ConfigChange[],
  section: string,
  before: object | undefined,
  after: object | undefined,
  label: (key: string) => string,
): void {
  const was = record(before) ?? {};
  const now = record(after) ?? {};
  for (const key of unionKeys(was, now)) {
    const w = was[key];
    const n = now[key];
    if (sameValue(w, n)) continue;
    out.push(changed([section, key], w, n, `${label(key)} ${show(w)} -> ${show(n)}`));
  }
}

function changed(path: KeyPath, before: unknown, after: unknown, summary: string): ConfigChange {
  const p = formatPath(path);
  const change: ConfigChange = { path: p, kind: 'changed', before, after, summary };
  if (before === undefined) change.kind = 'added';
  else if (after === undefined) change.kind = 'removed';
  if (RESTART_REQUIRED.has(p) || RESTART_REQUIRED.has(String(path[0]))) change.restartRequired = true;
  return change;
}

function describeUpstream(u: Record<string, unknown> | null): string {
  if (u === null) return '';
  return `${show(u['host'])}:${show(u['port'])} AE ${show(u['aeTitle'])}`;
}

function describePeer(p: Record<string, unknown> | null): string {
  if (p === null) return '';
  const list = (v: unknown): string => (Array.isArray(v) ? v.map(String).join(', ') : show(v));
  return `addresses ${list(p['addresses'])}; services ${list(p['services'])}`;
}

function setDelta(before: readonly unknown[], after: readonly unknown[]): string {
  const was = new Set(before.map(String));
  const now = new Set(after.map(String));
  const added = [...now].filter((v) => !was.has(v));
  const removed = [...was].filter((v) => !now.has(v));
  const parts = [...added.map((v) => `+${v}`), ...removed.map((v) => `-${v}`)];
  // Same members, other order (the order of moveDestinations or addresses carries no meaning today).
  return parts.length > 0 ? parts.join(' ') : `reordered ${show(before)} -> ${show(after)}`;
}

/** Short display of a value for summaries. */
function show(value: unknown): string {
  if (value === undefined) return '(unset)';
  if (value === null) return 'null';
  if (typeof value === 'string') return value;
  if (Array.isArray(value))
    return `[${value.map((v) => (typeof v === 'string' ? v : stableJson(v))).join(', ')}]`;
  return stableJson(value);
}

function record(value: unknown): Record<string, unknown> | null {
  return value !== null && typeof value === 'object' && !Array.isArray(value)
    ? (value as Record<string, unknown>)
    : null;
}

function unionKeys(a: object, b: object): string[] {
  return [...new Set([...Object.keys(a), ...Object.keys(b)])].sort();
}

function orderedKeys(a: object, b: object, order: readonly string[]): string[] {
  const all = unionKeys(a, b);
  return [...order.filter((k) => all.includes(k)), ...all.filter((k) => !order.includes(k))];
}

function sameValue(a: unknown, b: unknown): boolean {
  return a === b || stableJson(a) === stableJson(b);
}

/** JSON with object keys sorted, so that key order never counts as a change. */
function stableJson(value: unknown): string {
  return (
    JSON.stringify(value, (_key, v: unknown) => {
      const r = record(v);
      if (r === null) return v;
      const sorted: Record<string, unknown> = {};
      for (const k of Object.keys(r).sort()) sorted[k] = r[k];
      return sorted;
    }) ?? 'undefined'
  );
}

/**
 * Formats changes for the terminal, one per line: `+` added, `-` removed, `~` changed, with a note on those
 * that only apply after a restart. `changedFiles` (from changedFiles()) are listed after the configuration
 * changes as "file X content changed".
 */
export function formatChanges(
  changes: readonly ConfigChange[],
  changedFiles: readonly string[] = [],
): string {
  if (changes.length === 0 && changedFiles.length === 0) return 'no changes';
  const mark = { added: '+', removed: '-', changed: '~' } as const;
  const lines: string[] = [];
  const total = changes.length + changedFiles.length;
  lines.push(`${total} change${total === 1 ? '' : 's'}:`);
  for (const change of changes) {
    lines.push(
      `  ${mark[change.kind]} ${change.summary}${change.restartRequired ? '  [restart required]' : ''}`,
    );
  }
  for (const file of changedFiles) lines.push(`  ~ file ${file} content changed`);
  const restart = changes.filter((c) => c.restartRequired).length;
  if (restart > 0) {
    lines.push(
      `${restart} change${restart === 1 ? '' : 's'} marked [restart required] take${restart === 1 ? 's' : ''} effect only after a restart`,
    );
  }
  return lines.join('\n');
}

/** Keys whose string values name input files, in any section (present or future). */
const FILE_KEYS = new Set(['ca', 'cert', 'key', 'signingKey']);

/**
 * Every file the configuration names, with the key paths naming it: the TLS ca/cert/key of every upstream,
 * the ledger signing key, and any string (or list of strings) under a key called ca, cert, key or
 * signingKey anywhere in the configuration, so that sections added later are covered too. Relative paths
 * (snapshots hold absolute ones) are resolved against the configuration file's directory.
 */
export function fileReferences(config: ProxyConfig): Map<string, string[]> {
  const base = config.sourcePath === null ? process.cwd() : dirname(config.sourcePath);
  const refs = new Map<string, string[]>();
  const add = (file: string, path: KeyPath): void => {
    if (file === '') return;
    const abs = isAbsolute(file) ? file : resolve(base, file);
    const list = refs.get(abs) ?? [];
    list.push(formatPath(path));
    refs.set(abs, list);
  };
  const walk = (value: unknown, path: KeyPath, seen: Set<object>): void => {
    if (value === null || typeof value !== 'object' || seen.has(value)) return;
    seen.add(value);
    if (Array.isArray(value)) {
      value.forEach((item, i) => walk(item, [...path, i], seen));
      return;
    }
    for (const [key, child] of Object.entries(value as Record<string, unknown>)) {
      if (path.length === 0 && key === 'sourcePath') continue;
      if (FILE_KEYS.has(key)) {
        if (typeof child === 'string') add(child, [...path, key]);
        else if (Array.isArray(child)) {
          child.forEach((item, i) => {
            if (typeof item === 'string') add(item, [...path, key, i]);
          });
        }
      }
      walk(child, [...path, key], seen);
    }
  };
  walk(config, [], new Set());
  return new Map([...refs.entries()].sort(([x], [y]) => (x < y ? -1 : x > y ? 1 : 0)));
}

/** The absolute paths of fileReferences, sorted: what a watcher should watch besides the configuration file. */
export function referencedFiles(config: ProxyConfig): string[] {
  return [...fileReferences(config).keys()];
}

/**
 * SHA-256 (hex) of the content of every file the configuration names (see fileReferences). A file that
 * cannot be read is left out of the map; changedFiles counts appearing and disappearing as a change.
 */
export function fileFingerprints(config: ProxyConfig): Map<string, string> {
  const out = new Map<string, string>();
  for (const file of fileReferences(config).keys()) {
    const hash = hashFile(file);
    if (hash !== null) out.set(file, hash);
  }
  return out;
}

/** SHA-256 (hex) of a file's content, or null when it cannot be read. */
export function hashFile(file: string): string | null {
  try {
    return createHash('sha256').update(readFileSync(file)).digest('hex');
  } catch {
    return null;
  }
}

/**
 * Files named by both configurations (`paths`, normally referencedFiles of the old and the new one
 * intersected) whose content differs between the two fingerprint maps. Without `paths`, every file in
 * either map is compared. A file readable on one side only counts as changed.
 */
export function changedFiles(
  before: ReadonlyMap<string, string>,
  after: ReadonlyMap<string, string>,
  paths?: Iterable<string>,
): string[] {
  const candidates = paths ? new Set(paths) : new Set([...before.keys(), ...after.keys()]);
  return [...candidates].filter((file) => before.get(file) !== after.get(file)).sort();
}
