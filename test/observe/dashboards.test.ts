// The Grafana dashboard and the Prometheus alerting rules only use metrics (and labels) the proxy exports.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';
import { METRIC_NAMES, PROXY_METRICS } from '../../src/observe/metrics.js';

const root = fileURLToPath(new URL('../../', import.meta.url));
const DASHBOARD = `${root}config/monitoring/grafana-dashboard.json`;
const ALERTS = `${root}config/monitoring/alerts.yaml`;

const NAME_RE = /\b(?:dimse_proxy_\w+|process_\w+|nodejs_\w+)/g;

/** Labels of each of the proxy's series names (histograms: _bucket has `le`). */
const PROXY_LABELS = new Map<string, readonly string[]>();
for (const def of Object.values(PROXY_METRICS) as Array<{
  name: string;
  type: string;
  labels: readonly string[];
}>) {
  if (def.type === 'histogram') {
    PROXY_LABELS.set(`${def.name}_bucket`, [...def.labels, 'le']);
    PROXY_LABELS.set(`${def.name}_sum`, def.labels);
    PROXY_LABELS.set(`${def.name}_count`, def.labels);
  } else {
    PROXY_LABELS.set(def.name, def.labels);
  }
}
/** Target labels Prometheus adds at scrape time. */
const TARGET_LABELS = ['instance', 'job'];

function metricNames(expr: string): string[] {
  return [...expr.matchAll(NAME_RE)].map((m) => m[0]);
}

/** Problems with one PromQL expression: unknown metric names, labels no metric of the expression has. */
function checkExpr(expr: string, where: string): string[] {
  const problems: string[] = [];
  const names = metricNames(expr);
  if (names.length === 0) problems.push(`${where}: no metric in ${expr}`);
  for (const name of names) {
    if (!METRIC_NAMES.includes(name)) problems.push(`${where}: ${name} is not exported`);
  }
  // Label matchers directly after a proxy metric name belong to that metric.
  for (const m of expr.matchAll(/\b(dimse_proxy_\w+)\{([^}]*)\}/g)) {
    const labels = PROXY_LABELS.get(m[1] as string);
    if (!labels) continue;
    for (const lm of (m[2] as string).matchAll(/(\w+)\s*(?:=~|!~|!=|=)/g)) {
      const label = lm[1] as string;
      if (!labels.includes(label) && !TARGET_LABELS.includes(label))
        problems.push(`${where}: ${m[1]} has no label ${label}`);
    }
  }
  // by (...) / without (...) / on (...) labels must exist on a metric of the expression (when all are ours).
  if (names.every((n) => PROXY_LABELS.has(n))) {
    const allowed = new Set([...TARGET_LABELS, ...names.flatMap((n) => PROXY_LABELS.get(n) ?? [])]);
    for (const m of expr.matchAll(/\b(?:by|without|on|ignoring)\s*\(([^)]*)\)/g)) {
      for (const label of (m[1] as string)
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean)) {
        if (!allowed.has(label)) problems.push(`${where}: no metric of the expression has label ${label}`);
      }
    }
  }
  // Brackets balance (outside string literals).
  const stack: string[] = [];
  const pairs: Record<string, string> = { ')': '(', ']': '[', '}': '{' };
  for (const ch of expr.replace(/"(?:[^"\\]|\\.)*"/g, '""')) {
    if (ch === '(' || ch === '[' || ch === '{') stack.push(ch);
    else if (ch in pairs && stack.pop() !== pairs[ch]) problems.push(`${where}: unbalanced ${ch} in ${expr}`);
  }
  if (stack.length > 0) problems.push(`${where}: unclosed ${stack.join('')} in ${expr}`);
  return problems;
}

interface Panel {
  id: number;
  type: string;
  title: string;
  gridPos: { h: number; w: number; x: number; y: number };
  targets?: Array<{ refId: string; expr: string }>;
  panels?: Panel[];
}

test('the Grafana dashboard is a valid dashboard using only exported metrics and labels', () => {
  const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as {
    title: string;
    uid: string;
    schemaVersion: number;
    panels: Panel[];
    templating: { list: Array<{ name: string; type: string; query: unknown; definition?: string }> };
  };
  assert.equal(typeof dashboard.title, 'string');
  assert.match(dashboard.uid, /^[A-Za-z0-9_-]{1,40}$/);
  assert.ok(Number.isInteger(dashboard.schemaVersion) && dashboard.schemaVersion >= 30);
  const panels = dashboard.panels.flatMap((p) => [p, ...(p.panels ?? [])]);
  const ids = panels.map((p) => p.id);
  assert.equal(new Set(ids).size, ids.length, 'panel ids are unique');

  const exprs: Array<{ expr: string; where: string }> = [];
  for (const p of panels) {
    assert.ok(p.title, `panel ${p.id} has a title`);
    const g = p.gridPos;
    assert.ok(g.w > 0 && g.h > 0 && g.x >= 0 && g.y >= 0 && g.x + g.w <= 24, `panel ${p.title} gridPos`);
    if (p.type === 'row') continue;
    assert.ok((p.targets ?? []).length > 0, `panel ${p.title} has targets`);
    const refIds = (p.targets ?? []).map((t) => t.refId);
    assert.equal(new Set(refIds).size, refIds.length, `refIds unique in ${p.title}`);
    for (const t of p.targets ?? []) {
      assert.equal(typeof t.expr, 'string');
      exprs.push({ expr: t.expr, where: `panel "${p.title}" ${t.refId}` });
    }
  }
  for (const v of dashboard.templating.list) {
    if (v.type !== 'query') continue;
    const q = typeof v.query === 'string' ? v.query : (v.query as { query: string }).query;
    exprs.push({ expr: q, where: `variable $${v.name}` });
  }
  const problems = exprs.flatMap(({ expr, where }) => checkExpr(expr, where));
  assert.deepEqual(problems, []);

  // The dashboard covers what it promises.
  const used = new Set(exprs.flatMap(({ expr }) => metricNames(expr)));
  for (const name of [
    'dimse_proxy_instance_bytes_total',
    'dimse_proxy_associations_total',
    'dimse_proxy_active_associations',
    'dimse_proxy_dimse_operations_total',
    'dimse_proxy_dimse_operation_duration_seconds_bucket',
    'dimse_proxy_upstream_connect_duration_seconds_bucket',
    'dimse_proxy_upstream_tls_handshake_duration_seconds_bucket',
    'dimse_proxy_upstream_ready',
    'dimse_proxy_certificate_not_after_timestamp_seconds',
    'dimse_proxy_ledger_write_failures_total',
    'dimse_proxy_config_reloads_total',
  ]) {
    assert.ok(used.has(name), `the dashboard shows ${name}`);
  }
  assert.ok(
    exprs.some(({ expr }) => expr.includes('histogram_quantile(')),
    'latency quantiles',
  );
});

test('the alerting rules are valid and use only exported metrics and labels', () => {
  const doc = parseYaml(readFileSync(ALERTS, 'utf8')) as {
    groups: Array<{
      name: string;
      rules: Array<{
        alert?: string;
        expr: unknown;
        for?: string;
        labels?: Record<string, string>;
        annotations?: Record<string, string>;
      }>;
    }>;
  };
  assert.ok(Array.isArray(doc.groups) && doc.groups.length > 0);
  const alerts = new Map<string, string>();
  const problems: string[] = [];
  for (const group of doc.groups) {
    assert.equal(typeof group.name, 'string');
    for (const rule of group.rules) {
      assert.equal(typeof rule.alert, 'string', 'alerting rules only');
      const name = rule.alert as string;
      assert.ok(!alerts.has(name), `duplicate alert ${name}`);
      assert.equal(typeof rule.expr, 'string', `${name} expr`);
      if (rule.for !== undefined) assert.match(rule.for, /^\d+[smhd]$/, `${name} for`);
      assert.ok(['warning', 'critical'].includes(rule.labels?.severity ?? ''), `${name} severity`);
      assert.ok(rule.annotations?.summary, `${name} summary`);
      for (const text of Object.values(rule.annotations ?? {})) {
        // Names quoted in annotations must exist too.
        for (const n of metricNames(text))
          if (!METRIC_NAMES.includes(n)) problems.push(`${name} annotation: ${n} is not exported`);
      }
      alerts.set(name, rule.expr as string);
      problems.push(...checkExpr(rule.expr as string, `alert ${name}`));
    }
  }
  assert.deepEqual(problems, []);

  const exprs = [...alerts.values()];
  const some = (re: RegExp, what: string): void =>
    assert.ok(
      exprs.some((e) => re.test(e)),
      what,
    );
  some(
    /dimse_proxy_certificate_not_after_timestamp_seconds[\s\S]*<\s*30\s*\*\s*86400/,
    'certificate < 30 days',
  );
  some(/dimse_proxy_upstream_ready\s*==\s*0/, 'upstream not ready');
  some(/dimse_proxy_associations_total\{outcome="rejected"\}/, 'rejected associations spike');
  some(/dimse_proxy_ledger_write_failures_total/, 'ledger write failure');
  some(/dimse_proxy_config_last_reload_successful\s*==\s*0/, 'reload failed');
  some(/dimse_proxy_audit_connected\s*==\s*0/, 'audit repository unreachable');
  some(/dimse_proxy_audit_spool_oldest_age_seconds\s*>/, 'audit spool not empty');
  const rules = doc.groups.flatMap((g) => g.rules);
  const unreachable = rules.find((r) => /dimse_proxy_audit_connected\s*==\s*0/.test(String(r.expr)));
  assert.ok(unreachable?.for, 'unreachable for some minutes, not at the first failed attempt');
});

test('the expression checker catches unknown metrics and labels', () => {
  assert.equal(checkExpr('rate(dimse_proxy_associations_total{outcome="x"}[5m])', 'ok').length, 0);
  assert.equal(checkExpr('rate(dimse_proxy_nope_total[5m])', 'x').length, 1);
  assert.equal(checkExpr('dimse_proxy_associations_total{result="x"}', 'x').length, 1);
  assert.equal(checkExpr('sum by (upstream) (dimse_proxy_associations_total)', 'x').length, 1);
  assert.equal(checkExpr('sum(rate(dimse_proxy_associations_total[5m])', 'x').length, 1);
  assert.equal(checkExpr('nodejs_eventloop_lag_p99_seconds > 1', 'ok').length, 0);
});
