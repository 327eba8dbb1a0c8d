// One vocabulary (src/vocabulary/outcomes.ts): the lists are consistent with each other and with the
// modules that emit the names, a fresh metrics registry exports every bounded combination at 0, and the
// README's metrics section lists every name.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as V from '../src/vocabulary/outcomes.js';
import {
  ASSOCIATION_REASONS,
  OUTCOME_REASONS,
  POLICY_DENIAL_REASONS,
  PROXY_METRICS,
  ProxyMetrics,
  boundedSeries,
} from '../src/observe/metrics.js';
import type { ProxyEventMap } from '../src/observe/events.js';
import type { AdmitDecision, ReturnAdmitDecision } from '../src/policy/policy.js';
import type { ClientHandshakeFailure } from '../src/tls/identity.js';
import type { UpstreamFailureReason } from '../src/tls/upstream.js';
import type { PduErrorCode } from '../src/pdu/errors.js';

const root = fileURLToPath(new URL('..', import.meta.url));

// ------------------------------------------------------------------ compile-time: the names agree

type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
type Extends<A, B> = [A] extends [B] ? true : false;
type Refusal<D> = D extends { accepted: false; refusal: infer R } ? R : never;

// Each line fails to compile when a module's names and the vocabulary's drift apart.
const agreements: [
  Equal<ClientHandshakeFailure, V.TlsClientRejection>,
  Equal<UpstreamFailureReason, V.UpstreamConnectFailure>,
  Extends<PduErrorCode, V.ProtocolErrorCode>,
  Equal<Refusal<AdmitDecision>, V.AdmitRefusal>,
  Equal<Refusal<ReturnAdmitDecision>, V.ReturnAdmitRefusal>,
  Equal<V.AdmitRefusal | V.ReturnAdmitRefusal, V.PolicyRefusal>,
  Equal<ProxyEventMap['association-refused'][0]['refusal'], V.Refusal>,
  Equal<ProxyEventMap['upstream-failed'][0]['reason'], V.UpstreamFailure>,
  Equal<ProxyEventMap['protocol-error'][0]['code'], V.ProtocolErrorCode>,
  Equal<ProxyEventMap['tls-client-rejected'][0]['reason'], V.TlsClientRejection>,
  Equal<ProxyEventMap['connection-refused'][0]['reason'], V.ConnectionRefusal>,
  Equal<ProxyEventMap['association-closed'][0]['outcome'], V.AssociationOutcome>,
  Equal<keyof typeof OUTCOME_REASONS, V.AssociationOutcome>,
  Equal<(typeof POLICY_DENIAL_REASONS)[number], V.ProxyRefusal | V.DimseDenial>,
] = [true, true, true, true, true, true, true, true, true, true, true, true, true, true];

test('the vocabulary types agree with the modules that emit the names (compile time)', () => {
  assert.ok(agreements.every((a) => a));
});

// ------------------------------------------------------------------ run time: the lists

const TUPLES = {
  LISTENERS: V.LISTENERS,
  DIRECTIONS: V.DIRECTIONS,
  ASSOCIATION_OUTCOMES: V.ASSOCIATION_OUTCOMES,
  REFUSALS: V.REFUSALS,
  UPSTREAM_FAILURES: V.UPSTREAM_FAILURES,
  PROTOCOL_ERROR_CODES: V.PROTOCOL_ERROR_CODES,
  ABORT_REASONS: V.ABORT_REASONS,
  PROTOCOL_ERROR_SIDES: V.PROTOCOL_ERROR_SIDES,
  TLS_CLIENT_REJECTIONS: V.TLS_CLIENT_REJECTIONS,
  CONNECTION_REFUSALS: V.CONNECTION_REFUSALS,
  DIMSE_DENIALS: V.DIMSE_DENIALS,
  AUDIT_CONNECTION_STATES: V.AUDIT_CONNECTION_STATES,
} as const;

test('every list is duplicate-free and its names are well-formed', () => {
  for (const [name, list] of Object.entries(TUPLES)) {
    assert.equal(new Set(list).size, list.length, `${name} has duplicates`);
    const pattern = name === 'PROTOCOL_ERROR_CODES' ? /^[A-Z]+(_[A-Z]+)*$/ : /^[a-z0-9]+(-[a-z0-9]+)*$/;
    for (const value of list) assert.match(value, pattern, `${name}: ${value}`);
  }
  assert.deepEqual(
    [...V.REFUSALS].sort(),
    [...V.POLICY_REFUSALS, ...V.NEGOTIATION_REFUSALS, ...V.FAR_SIDE_REFUSALS].sort(),
  );
  assert.deepEqual(
    [...new Set([...V.ADMIT_REFUSALS, ...V.RETURN_ADMIT_REFUSALS])].sort(),
    [...V.POLICY_REFUSALS].sort(),
  );
  // A refusal, an upstream failure and an abort reason never share a name (one `reason` label holds all).
  const reasons = [...V.REFUSALS, ...V.UPSTREAM_FAILURES, ...V.ABORT_REASONS];
  assert.equal(new Set(reasons).size, reasons.length);
  assert.deepEqual([...ASSOCIATION_REASONS].sort(), [...reasons, 'none'].sort());
});

test('every protocol error code has its abort reason (or none), every abort reason is reachable', () => {
  assert.deepEqual(Object.keys(V.PROTOCOL_ERROR_ABORT_REASONS).sort(), [...V.PROTOCOL_ERROR_CODES].sort());
  const mapped = new Set(Object.values(V.PROTOCOL_ERROR_ABORT_REASONS).filter((r) => r !== null));
  // ledger-failed comes from the 'ledger-failed' event, not a protocol error.
  assert.deepEqual([...mapped, 'ledger-failed'].sort(), [...V.ABORT_REASONS].sort());
  assert.deepEqual(Object.keys(V.DIMSE_DENIAL_STATUSES).sort(), [...V.DIMSE_DENIALS].sort());
});

/** The source text of every module under src/<dir>. */
function sources(dir: string): string {
  const full = join(root, 'src', dir);
  return readdirSync(full, { recursive: true, encoding: 'utf8' })
    .filter((f) => f.endsWith('.ts'))
    .map((f) => readFileSync(join(full, f), 'utf8'))
    .join('\n');
}

test('the names are the ones the code emits: each refusal and code appears where it is decided', () => {
  const policy = sources('policy');
  for (const r of V.POLICY_REFUSALS) assert.ok(policy.includes(`'${r}'`), `policy/ never decides ${r}`);
  const relay = sources('relay');
  for (const r of [...V.NEGOTIATION_REFUSALS, ...V.FAR_SIDE_REFUSALS])
    assert.ok(relay.includes(`'${r}'`), `relay/ never emits ${r}`);
  const tls = sources('tls');
  for (const r of V.UPSTREAM_CONNECT_FAILURES) assert.ok(tls.includes(`'${r}'`), `tls/ never gives ${r}`);
  for (const r of V.TLS_CLIENT_REJECTIONS) assert.ok(tls.includes(`'${r}'`), `tls/ never gives ${r}`);
  for (const r of V.CONNECTION_REFUSALS)
    assert.ok(relay.includes(`'${r}'`) || tls.includes(`'${r}'`), `relay/ never emits ${r}`);
  // The vocabulary imports nothing from the project: it is the bottom layer.
  assert.doesNotMatch(sources('vocabulary'), /^\s*import\b/m);
});

// ------------------------------------------------------------------ metrics start at 0

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

function parse(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)/.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    for (const lm of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g))
      labels[lm[1] as string] = lm[2] as string;
    out.push({ name: m[1] as string, labels, value: Number(m[3]) });
  }
  return out;
}

const key = (name: string, labels: Record<string, string>): string =>
  `${name}${JSON.stringify(Object.fromEntries(Object.entries(labels).sort()))}`;

test('a fresh registry exports every bounded label combination at 0', async () => {
  const bounds = { knownPeers: ['CT1'], routes: ['DICOM_PROXY'], upstreams: ['archive', 'backup'] };
  const metrics = new ProxyMetrics({ ...bounds, defaultMetrics: false });
  const all = parse(await metrics.metrics());
  const exported = new Map(all.map((s) => [key(s.name, s.labels), s.value]));
  const expected = boundedSeries(bounds);
  for (const { metric, labels } of expected) {
    assert.equal(
      exported.get(key(PROXY_METRICS[metric].name, labels)),
      0,
      `${metric} ${JSON.stringify(labels)}`,
    );
  }
  // Written out independently of boundedSeries: each name of the vocabulary has its 0 line.
  const has = (name: string, labels: Record<string, string>): boolean =>
    all.some(
      (s) => s.name === name && s.value === 0 && Object.entries(labels).every(([k, v]) => s.labels[k] === v),
    );
  for (const listener of V.LISTENERS) {
    for (const reason of V.REFUSALS)
      assert.ok(has('dimse_proxy_associations_total', { listener, outcome: 'rejected', reason }), reason);
    for (const reason of V.UPSTREAM_FAILURES)
      assert.ok(
        has('dimse_proxy_associations_total', { listener, outcome: 'upstream-failed', reason }),
        reason,
      );
    for (const reason of V.ABORT_REASONS)
      assert.ok(
        has('dimse_proxy_associations_total', { listener, outcome: 'aborted-by-proxy', reason }),
        reason,
      );
    for (const reason of V.TLS_CLIENT_REJECTIONS)
      assert.ok(has('dimse_proxy_tls_client_rejections_total', { listener, reason }), reason);
    for (const reason of V.CONNECTION_REFUSALS)
      assert.ok(has('dimse_proxy_connections_refused_total', { listener, reason }), reason);
  }
  for (const outcome of V.ASSOCIATION_OUTCOMES)
    assert.ok(has('dimse_proxy_associations_total', { outcome }), outcome);
  for (const reason of [...V.PROXY_REFUSALS, ...V.DIMSE_DENIALS])
    assert.ok(has('dimse_proxy_policy_denials_total', { reason }), reason);
  for (const reason of V.FAR_SIDE_REFUSALS)
    assert.ok(!all.some((s) => s.name === 'dimse_proxy_policy_denials_total' && s.labels.reason === reason));
  for (const upstream of bounds.upstreams)
    for (const reason of V.UPSTREAM_FAILURES)
      assert.ok(has('dimse_proxy_upstream_failures_total', { upstream, reason }), `${upstream} ${reason}`);
  for (const side of V.PROTOCOL_ERROR_SIDES)
    for (const code of V.PROTOCOL_ERROR_CODES)
      assert.ok(has('dimse_proxy_protocol_errors_total', { side, code }), `${side} ${code}`);
  for (const name of ['dimse_proxy_ledger_records_total', 'dimse_proxy_ledger_write_failures_total'])
    assert.ok(has(name, {}), name);
  // Nothing at 0 is a catch-all: every exported label value is a name of its own.
  assert.ok(!all.some((s) => Object.values(s.labels).includes('other')), 'no "other" series at start');
  // Every counter series at start is one boundedSeries lists (or an unlabelled counter).
  const listed = new Set(expected.map((e) => key(PROXY_METRICS[e.metric].name, e.labels)));
  for (const s of all.filter((s) => s.name.endsWith('_total') && Object.keys(s.labels).length > 0))
    assert.ok(listed.has(key(s.name, s.labels)), `unlisted series ${key(s.name, s.labels)}`);

  // A reload that adds an upstream gives it its 0 lines; series already counted keep their values.
  metrics.setBounds({ ...bounds, upstreams: [...bounds.upstreams, 'third'] });
  const after = parse(await metrics.metrics());
  for (const reason of V.UPSTREAM_FAILURES) {
    assert.ok(
      after.some(
        (s) =>
          s.name === 'dimse_proxy_upstream_failures_total' &&
          s.labels.upstream === 'third' &&
          s.labels.reason === reason &&
          s.value === 0,
      ),
      reason,
    );
  }
});

// ------------------------------------------------------------------ README

test("README's metrics section lists every name of the vocabulary", () => {
  const readme = readFileSync(join(root, 'README.md'), 'utf8');
  const start = readme.indexOf('### Metrics, health and readiness');
  assert.ok(start >= 0, 'README has a metrics section');
  const end = readme.indexOf('\n#', start + 1);
  const section = readme.slice(start, end < 0 ? undefined : end);
  for (const [name, list] of Object.entries(TUPLES)) {
    for (const value of list) assert.ok(section.includes(`\`${value}\``), `README metrics: ${name} ${value}`);
  }
  for (const value of POLICY_DENIAL_REASONS) assert.ok(section.includes(`\`${value}\``), value);
});
