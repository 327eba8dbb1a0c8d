// ProxyMetrics: events in, bounded series out; certificate expiry gauges; METRIC_NAMES is what /metrics has.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ProxyEvents, type AssociationSummary } from '../../src/observe/events.js';
import {
  METRIC_NAMES,
  PROXY_METRIC_NAMES,
  ProxyMetrics,
  TLS_CIPHERS,
  certificateFilesFromConfig,
  metricBoundsFromConfig,
} from '../../src/observe/metrics.js';
import type { ReadinessStatus } from '../../src/observe/readiness.js';
import { createCa, issueCertificate } from '../../src/tls/pki.js';
import { parseConfig } from '../../src/config/load.js';
import { UNKNOWN_SUMMARY } from '../../src/dicom/prefix.js';

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parse the Prometheus text exposition into samples. */
function parseExposition(text: string): { samples: Sample[]; types: Map<string, string> } {
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  for (const line of text.split('\n')) {
    if (line.startsWith('# TYPE ')) {
      const [, , name, type] = line.split(' ');
      if (name && type) types.set(name, type);
      continue;
    }
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)/.exec(line);
    assert.ok(m, `unparsable line ${line}`);
    const labels: Record<string, string> = {};
    for (const lm of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) {
      labels[lm[1] as string] = (lm[2] as string).replace(/\\"/g, '"').replace(/\\n/g, '\n');
    }
    samples.push({ name: m[1] as string, labels, value: Number(m[3]) });
  }
  return { samples, types };
}

async function samples(metrics: ProxyMetrics): Promise<Sample[]> {
  return parseExposition(await metrics.metrics()).samples;
}

function find(all: Sample[], name: string, labels: Record<string, string> = {}): Sample[] {
  return all.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
}

/** The series that counted something (a fresh registry has every bounded combination at 0). */
function counted(all: Sample[], name: string, labels: Record<string, string> = {}): Sample[] {
  return find(all, name, labels).filter((s) => s.value !== 0);
}

function value(all: Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  // Labels left out match any value: among the series at 0 that every bounded combination starts with,
  // at most one may have counted something.
  const all0 = find(all, name, labels);
  const found = all0.length > 1 ? all0.filter((s) => s.value !== 0) : all0;
  assert.ok(found.length <= 1, `${name} ${JSON.stringify(labels)} matches ${found.length} series`);
  return found[0]?.value ?? (all0.length > 0 ? 0 : undefined);
}

const BOUNDS = { knownPeers: ['CT1', 'MR1'], routes: ['DICOM_PROXY'], upstreams: ['archive'] };

function summary(over: Partial<AssociationSummary>): AssociationSummary {
  return {
    id: 'a1',
    remoteAddress: '127.0.0.1',
    remotePort: 40000,
    callingAeTitle: 'CT1',
    calledAeTitle: 'DICOM_PROXY',
    peer: 'CT1',
    upstream: 'archive',
    upstreamAeTitle: 'ARCHIVE',
    listener: 'forward',
    outcome: 'released',
    reason: null,
    reject: null,
    startedAt: new Date().toISOString(),
    durationMs: 5,
    bytesFromModality: 0,
    bytesFromArchive: 0,
    instances: 0,
    operations: {},
    tls: null,
    ...over,
  };
}

const TLS = {
  protocol: 'TLSv1.3',
  cipher: 'TLS_AES_256_GCM_SHA384',
  peerSubject: 'archive.local',
  peerFingerprint256: null,
};

test('METRIC_NAMES lists exactly the series names the registry exposes', async () => {
  const metrics = new ProxyMetrics(BOUNDS);
  // dimse_proxy_audit_connected is exported once an audit repository's sender is observed.
  metrics.observeAudit(() => null);
  const { types } = parseExposition(await metrics.metrics());
  const exposed = new Set<string>();
  for (const [name, type] of types) {
    if (type === 'histogram') for (const s of ['_bucket', '_sum', '_count']) exposed.add(name + s);
    else exposed.add(name);
  }
  for (const name of exposed) assert.ok(METRIC_NAMES.includes(name), `${name} missing from METRIC_NAMES`);
  for (const name of PROXY_METRIC_NAMES) assert.ok(exposed.has(name), `${name} not registered`);
  if (process.platform === 'linux') assert.deepEqual([...exposed].sort(), [...METRIC_NAMES].sort());
  assert.equal(new Set(METRIC_NAMES).size, METRIC_NAMES.length, 'no duplicates');
  for (const name of PROXY_METRIC_NAMES) assert.match(name, /^dimse_proxy_[a-z0-9_]+$/);
  // Every metric has help text.
  for (const line of (await metrics.metrics())
    .split('\n')
    .filter((l) => l.startsWith('# HELP dimse_proxy_'))) {
    assert.ok(line.split(' ').length > 3, `no help text: ${line}`);
  }
});

test('two instances have independent registries', async () => {
  const a = new ProxyMetrics({ ...BOUNDS, defaultMetrics: false });
  const b = new ProxyMetrics({ ...BOUNDS, defaultMetrics: false });
  a.ledgerRecord();
  assert.equal(value(await samples(a), 'dimse_proxy_ledger_records_total'), 1);
  assert.equal(value(await samples(b), 'dimse_proxy_ledger_records_total'), 0);
  assert.equal(find(await samples(a), 'process_cpu_seconds_total').length, 0);
});

test('association events: known peers keep their AE title, unknown calling AEs collapse to "unknown"', async () => {
  const events = new ProxyEvents();
  const metrics = new ProxyMetrics({ ...BOUNDS, defaultMetrics: false });
  const off = metrics.subscribe(events);

  // A refusal of an unknown calling AE (with a hostile-looking title) and of an unknown called AE.
  events.emit('association-refused', {
    id: 'r1',
    remoteAddress: '10.0.0.9',
    callingAeTitle: 'EVIL"{x}',
    calledAeTitle: 'DICOM_PROXY',
    refusal: 'unknown-calling-ae',
    reject: { result: 1, source: 1, reason: 3 },
    message: 'unknown',
    listener: 'forward',
  });
  events.emit('association-closed', summary({ id: 'r1', callingAeTitle: 'EVIL"{x}', outcome: 'rejected' }));
  events.emit('association-refused', {
    id: 'r2',
    remoteAddress: '127.0.0.1',
    callingAeTitle: 'MR1',
    calledAeTitle: 'NOWHERE',
    refusal: 'unknown-called-ae',
    reject: { result: 1, source: 1, reason: 7 },
    message: 'unknown',
    listener: 'forward',
  });
  events.emit('association-refused', {
    id: 'r3',
    remoteAddress: '127.0.0.1',
    callingAeTitle: 'CT1',
    calledAeTitle: 'DICOM_PROXY',
    refusal: 'rejected-by-archive',
    reject: { result: 1, source: 1, reason: 3 },
    message: 'archive said no',
    listener: 'forward',
  });

  // An accepted association, released.
  events.emit('association-accepted', {
    id: 'a1',
    remoteAddress: '127.0.0.1',
    callingAeTitle: 'CT1',
    calledAeTitle: 'DICOM_PROXY',
    upstream: 'archive',
    listener: 'forward',
    acceptedContexts: 1,
    refusedContexts: 0,
    tls: TLS,
  });
  let all = await samples(metrics);
  assert.equal(value(all, 'dimse_proxy_active_associations'), 1);
  assert.equal(metrics.activeAssociations, 1);
  events.emit(
    'association-closed',
    summary({ id: 'a1', bytesFromModality: 1000, bytesFromArchive: 200, tls: TLS }),
  );

  // An association whose upstream failed, from an unknown AE on an unknown upstream name.
  events.emit('upstream-failed', { id: 'u1', upstream: 'archive', reason: 'unknown-ca', message: 'x' });
  events.emit(
    'association-closed',
    summary({ id: 'u1', callingAeTitle: 'STRANGER', outcome: 'upstream-failed' }),
  );
  events.emit('upstream-failed', { id: 'u2', upstream: 'gone', reason: 'refused', message: 'x' });

  all = await samples(metrics);
  const A = 'dimse_proxy_associations_total';
  assert.equal(
    value(all, A, { calling_ae: 'unknown', outcome: 'rejected', reason: 'unknown-calling-ae' }),
    1,
    'the rejected association is counted once (refusal), not again at its close',
  );
  assert.equal(value(all, A, { route: 'unknown', calling_ae: 'MR1', reason: 'unknown-called-ae' }), 1);
  assert.equal(value(all, A, { calling_ae: 'CT1', outcome: 'rejected', reason: 'rejected-by-archive' }), 1);
  assert.equal(
    value(all, A, { route: 'DICOM_PROXY', calling_ae: 'CT1', outcome: 'released', reason: 'none' }),
    1,
  );
  assert.equal(value(all, A, { calling_ae: 'unknown', outcome: 'upstream-failed', reason: 'unknown-ca' }), 1);
  assert.equal(counted(all, A).length, 5);
  for (const s of all) {
    if (s.labels.calling_ae !== undefined)
      assert.ok(['CT1', 'MR1', 'unknown'].includes(s.labels.calling_ae), JSON.stringify(s));
  }
  assert.equal(value(all, 'dimse_proxy_associations_accepted_total', { calling_ae: 'CT1' }), 1);
  assert.equal(value(all, 'dimse_proxy_active_associations'), 0);
  assert.equal(
    value(all, 'dimse_proxy_tls_sessions_total', {
      listener: 'forward',
      protocol: 'TLSv1.3',
      cipher: 'TLS_AES_256_GCM_SHA384',
    }),
    1,
  );
  assert.equal(value(all, 'dimse_proxy_bytes_relayed_total', { direction: 'modality-to-archive' }), 1000);
  assert.equal(value(all, 'dimse_proxy_bytes_relayed_total', { direction: 'archive-to-modality' }), 200);
  assert.equal(
    value(all, 'dimse_proxy_upstream_failures_total', { upstream: 'archive', reason: 'unknown-ca' }),
    1,
  );
  assert.equal(
    value(all, 'dimse_proxy_upstream_failures_total', { upstream: 'unknown', reason: 'refused' }),
    1,
  );
  assert.equal(value(all, 'dimse_proxy_policy_denials_total', { reason: 'unknown-calling-ae' }), 1);
  assert.equal(value(all, 'dimse_proxy_policy_denials_total', { reason: 'unknown-called-ae' }), 1);
  assert.equal(find(all, 'dimse_proxy_policy_denials_total', { reason: 'rejected-by-archive' }).length, 0);

  // Unsubscribed: nothing moves any more.
  off();
  events.emit('association-refused', {
    id: 'r4',
    remoteAddress: '127.0.0.1',
    callingAeTitle: 'CT1',
    calledAeTitle: 'DICOM_PROXY',
    refusal: 'too-many-associations',
    reject: { result: 2, source: 3, reason: 2 },
    message: 'busy',
    listener: 'forward',
  });
  assert.equal(counted(await samples(metrics), A, { reason: 'too-many-associations' }).length, 0);
  assert.equal(events.listenerCount('association-refused'), 0);
});

test('unknown AEs become known after setBounds (reload)', async () => {
  const events = new ProxyEvents();
  const metrics = new ProxyMetrics({ ...BOUNDS, defaultMetrics: false });
  metrics.subscribe(events);
  const accept = (id: string): void => {
    events.emit('association-accepted', {
      id,
      remoteAddress: '127.0.0.1',
      callingAeTitle: 'US1',
      calledAeTitle: 'DICOM_PROXY',
      upstream: 'archive',
      listener: 'forward',
      acceptedContexts: 1,
      refusedContexts: 0,
      tls: { ...TLS, cipher: 'NULL-MD5', protocol: 'SSLv3' },
    });
  };
  accept('x1');
  metrics.setBounds({ ...BOUNDS, knownPeers: [...BOUNDS.knownPeers, 'US1'] });
  accept('x2');
  const all = await samples(metrics);
  assert.equal(value(all, 'dimse_proxy_associations_accepted_total', { calling_ae: 'unknown' }), 1);
  assert.equal(value(all, 'dimse_proxy_associations_accepted_total', { calling_ae: 'US1' }), 1);
  assert.equal(value(all, 'dimse_proxy_tls_sessions_total', { protocol: 'other', cipher: 'other' }), 2);
  assert.equal(value(all, 'dimse_proxy_active_associations'), 2);
  assert.ok(TLS_CIPHERS.includes('TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256'));
  assert.ok(TLS_CIPHERS.includes('ECDHE-ECDSA-AES128-GCM-SHA256'));
});

test('DIMSE, instance, ledger and protocol events', async () => {
  const events = new ProxyEvents();
  const metrics = new ProxyMetrics({ ...BOUNDS, defaultMetrics: false });
  metrics.subscribe(events);
  const completed = (command: string, statusClass: string, durationMs: number): void => {
    events.emit('dimse-completed', {
      id: 'a1',
      direction: 'modality-to-archive',
      command,
      sopClassUid: null,
      status: 0,
      statusClass,
      durationMs,
    });
  };
  completed('C-STORE-RQ', 'success', 20);
  completed('C-STORE-RQ', 'success', 3000);
  completed('C-STORE-RQ', 'warning', 1);
  completed('UNKNOWN(0x1234)', 'weird', 1);
  events.emit('dimse-refused', {
    id: 'a1',
    callingAeTitle: 'CT1',
    command: 'C-MOVE-RQ',
    reason: 'move destination X is not allowed for CT1',
    status: 0xa801,
    moveDestination: 'X',
  });
  events.emit('dimse-refused', {
    id: 'a1',
    callingAeTitle: 'CT1',
    command: 'C-STORE-RQ',
    reason: 'C-STORE on 1.2.3 is not allowed for CT1',
    status: 0x0124,
  });
  const instance = (
    direction: 'modality-to-archive' | 'archive-to-modality',
    status: number | null,
  ): void => {
    events.emit('instance', {
      id: 'a1',
      direction,
      messageId: 1,
      sopClassUid: '1.2.840.10008.5.1.4.1.1.7',
      sopInstanceUid: '1.2.3.4',
      transferSyntaxUid: '1.2.840.10008.1.2.1',
      bytes: 500,
      sha256: null,
      status,
      dataset: UNKNOWN_SUMMARY,
    });
  };
  instance('modality-to-archive', 0);
  instance('modality-to-archive', 0xa700);
  instance('archive-to-modality', null);
  events.emit('ledger-failed', { id: 'a1', message: 'disk full' });
  events.emit('protocol-error', {
    id: 'p1',
    side: 'modality',
    code: 'PDU_TOO_LARGE',
    message: 'too large',
    abortReason: 6,
  });
  events.emit('association-closed', summary({ id: 'p1', outcome: 'aborted-by-proxy' }));

  const all = await samples(metrics);
  const OPS = 'dimse_proxy_dimse_operations_total';
  assert.equal(value(all, OPS, { command: 'C-STORE', status_class: 'success' }), 2);
  assert.equal(value(all, OPS, { command: 'C-STORE', status_class: 'warning' }), 1);
  assert.equal(value(all, OPS, { command: 'other', status_class: 'other' }), 1);
  assert.equal(value(all, OPS, { command: 'C-MOVE', status_class: 'refused' }), 1);
  assert.equal(value(all, OPS, { command: 'C-STORE', status_class: 'refused' }), 1);
  const H = 'dimse_proxy_dimse_operation_duration_seconds';
  assert.equal(value(all, `${H}_count`, { command: 'C-STORE' }), 3);
  assert.ok(Math.abs((value(all, `${H}_sum`, { command: 'C-STORE' }) ?? 0) - 3.021) < 1e-9);
  assert.equal(value(all, `${H}_bucket`, { command: 'C-STORE', le: '0.025' }), 2);
  assert.equal(value(all, `${H}_bucket`, { command: 'C-STORE', le: '+Inf' }), 3);
  assert.equal(value(all, 'dimse_proxy_policy_denials_total', { reason: 'move-destination-not-allowed' }), 1);
  assert.equal(value(all, 'dimse_proxy_policy_denials_total', { reason: 'service-not-allowed' }), 1);
  const I = 'dimse_proxy_instances_relayed_total';
  assert.equal(value(all, I, { direction: 'modality-to-archive', status_class: 'success' }), 1);
  assert.equal(value(all, I, { direction: 'modality-to-archive', status_class: 'failure' }), 1);
  assert.equal(value(all, I, { direction: 'archive-to-modality', status_class: 'none' }), 1);
  assert.equal(value(all, 'dimse_proxy_instance_bytes_total', { direction: 'modality-to-archive' }), 1000);
  assert.equal(value(all, 'dimse_proxy_ledger_write_failures_total'), 1);
  assert.equal(
    value(all, 'dimse_proxy_protocol_errors_total', { side: 'modality', code: 'PDU_TOO_LARGE' }),
    1,
  );
  assert.equal(
    value(all, 'dimse_proxy_associations_total', { outcome: 'aborted-by-proxy', reason: 'pdu-too-long' }),
    1,
  );
});

test('return listener: callers, receivers, TLS client rejections, storage commitment', async () => {
  const events = new ProxyEvents();
  // As metricBoundsFromConfig gives them: the archive's calling AE is a caller, WS1 a receiving peer.
  const metrics = new ProxyMetrics({
    knownPeers: ['CT1', 'ARCHIVE'],
    routes: ['DICOM_PROXY', 'WS1'],
    upstreams: ['archive', 'WS1'],
    defaultMetrics: false,
  });
  metrics.subscribe(events);
  events.emit('association-accepted', {
    id: 'ret1',
    remoteAddress: '127.0.0.1',
    callingAeTitle: 'ARCHIVE',
    calledAeTitle: 'WS1',
    upstream: 'WS1',
    listener: 'return',
    acceptedContexts: 1,
    refusedContexts: 0,
    tls: { ...TLS, protocol: 'TLSv1.2', cipher: 'TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256' },
  });
  events.emit('dimse-refused', {
    id: 'ret1',
    callingAeTitle: 'ARCHIVE',
    command: 'C-FIND-RQ',
    reason: 'not allowed',
    status: 0x0124,
  });
  events.emit('association-closed', {
    ...summary({ id: 'ret1', callingAeTitle: 'ARCHIVE', calledAeTitle: 'WS1', upstream: 'WS1' }),
    listener: 'return',
    bytesFromModality: 700,
    bytesFromArchive: 30,
  });
  events.emit('association-refused', {
    id: 'ret2',
    remoteAddress: '127.0.0.1',
    callingAeTitle: 'ARCHIVE',
    calledAeTitle: 'WS1',
    refusal: 'certificate-identity-mismatch',
    reject: { result: 1, source: 1, reason: 3 },
    message: 'identity',
    listener: 'return',
    certificateSubject: 'CN=someone',
  });
  events.emit('association-refused', {
    id: 'ret3',
    remoteAddress: '127.0.0.1',
    callingAeTitle: 'ARCHIVE',
    calledAeTitle: 'WS1',
    refusal: 'rejected-by-receiver',
    reject: { result: 1, source: 1, reason: 7 },
    message: 'receiver said no',
    listener: 'return',
  });
  events.emit('tls-client-rejected', {
    listener: 'return',
    remoteAddress: '10.1.1.1',
    reason: 'no-client-certificate',
    message: 'x',
  });
  events.emit('tls-client-rejected', {
    listener: 'return',
    remoteAddress: '10.1.1.1',
    reason: 'handshake-timeout',
    message: 'x',
  });
  events.emit('commitment', { id: 'c', transactionUid: '1.2', committed: 3, failed: 0, error: null });
  events.emit('commitment', { id: 'c', transactionUid: '1.3', committed: 1, failed: 2, error: null });
  events.emit('commitment', { id: 'c', transactionUid: null, committed: 0, failed: 0, error: 'unreadable' });

  const all = await samples(metrics);
  const A = 'dimse_proxy_associations_total';
  assert.equal(
    value(all, A, { listener: 'return', route: 'WS1', calling_ae: 'ARCHIVE', outcome: 'released' }),
    1,
  );
  assert.equal(value(all, A, { listener: 'return', reason: 'certificate-identity-mismatch' }), 1);
  assert.equal(value(all, A, { listener: 'return', reason: 'rejected-by-receiver' }), 1);
  assert.equal(
    value(all, 'dimse_proxy_associations_accepted_total', { listener: 'return', route: 'WS1' }),
    1,
  );
  assert.equal(
    value(all, 'dimse_proxy_policy_denials_total', { reason: 'certificate-identity-mismatch' }),
    1,
  );
  assert.equal(find(all, 'dimse_proxy_policy_denials_total', { reason: 'rejected-by-receiver' }).length, 0);
  assert.equal(value(all, 'dimse_proxy_bytes_relayed_total', { direction: 'archive-to-destination' }), 700);
  assert.equal(value(all, 'dimse_proxy_bytes_relayed_total', { direction: 'destination-to-archive' }), 30);
  assert.equal(
    value(all, 'dimse_proxy_dimse_operations_total', {
      command: 'C-FIND',
      direction: 'archive-to-destination',
      status_class: 'refused',
    }),
    1,
  );
  assert.equal(
    value(all, 'dimse_proxy_tls_sessions_total', {
      listener: 'return',
      protocol: 'TLSv1.2',
      cipher: 'TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256',
    }),
    1,
  );
  const R = 'dimse_proxy_tls_client_rejections_total';
  assert.equal(value(all, R, { listener: 'return', reason: 'no-client-certificate' }), 1);
  assert.equal(value(all, R, { listener: 'return', reason: 'handshake-timeout' }), 1);
  assert.equal(value(all, 'dimse_proxy_storage_commitment_reports_total', { result: 'success' }), 1);
  assert.equal(value(all, 'dimse_proxy_storage_commitment_reports_total', { result: 'failures' }), 1);
  assert.equal(value(all, 'dimse_proxy_storage_commitment_reports_total', { result: 'error' }), 1);
  assert.equal(value(all, 'dimse_proxy_storage_commitment_instances_total', { result: 'committed' }), 4);
  assert.equal(value(all, 'dimse_proxy_storage_commitment_instances_total', { result: 'failed' }), 2);
  assert.equal(value(all, 'dimse_proxy_active_associations'), 0);
});

test('facts without events: reloads, upstream connect times, ledger records, audit, readiness', async () => {
  const loadedAt = new Date('2030-01-01T00:00:00Z');
  const metrics = new ProxyMetrics({ ...BOUNDS, defaultMetrics: false, loadedAt });
  let all = await samples(metrics);
  assert.equal(
    value(all, 'dimse_proxy_config_last_reload_success_timestamp_seconds'),
    loadedAt.getTime() / 1000,
  );
  assert.equal(value(all, 'dimse_proxy_config_last_reload_successful'), 1);

  metrics.reloadResult(false);
  all = await samples(metrics);
  assert.equal(value(all, 'dimse_proxy_config_reloads_total', { result: 'failure' }), 1);
  assert.equal(value(all, 'dimse_proxy_config_last_reload_successful'), 0);
  assert.equal(
    value(all, 'dimse_proxy_config_last_reload_success_timestamp_seconds'),
    loadedAt.getTime() / 1000,
  );
  const later = new Date('2030-01-02T00:00:00Z');
  metrics.reloadResult(true, later);
  all = await samples(metrics);
  assert.equal(value(all, 'dimse_proxy_config_reloads_total', { result: 'success' }), 1);
  assert.equal(value(all, 'dimse_proxy_config_last_reload_successful'), 1);
  assert.equal(
    value(all, 'dimse_proxy_config_last_reload_success_timestamp_seconds'),
    later.getTime() / 1000,
  );

  metrics.upstreamConnected('archive', 2, 8);
  metrics.upstreamConnected('somewhere-else', 2, 8);
  metrics.ledgerRecord();
  metrics.ledgerRecord();
  metrics.setAuditSpoolBytes(4096);
  metrics.auditAlarm();
  let status: ReadinessStatus | null = {
    ready: false,
    at: new Date().toISOString(),
    maxAgeMs: 60000,
    upstreams: {
      archive: {
        ok: true,
        lastSuccess: '2030-01-01T00:00:10.000Z',
        ageMs: 5,
        error: null,
        lastCheck: null,
      },
      twin: { ok: false, lastSuccess: null, ageMs: null, error: 'refused', lastCheck: null },
    },
  };
  metrics.observeReadiness(() => status);
  all = await samples(metrics);
  const C = 'dimse_proxy_upstream_connect_duration_seconds';
  assert.equal(value(all, `${C}_count`, { upstream: 'archive' }), 1);
  assert.equal(value(all, `${C}_sum`, { upstream: 'archive' }), 0.002);
  assert.equal(value(all, `${C}_count`, { upstream: 'unknown' }), 1);
  assert.equal(
    value(all, 'dimse_proxy_upstream_tls_handshake_duration_seconds_sum', { upstream: 'archive' }),
    0.008,
  );
  assert.equal(value(all, 'dimse_proxy_ledger_records_total'), 2);
  assert.equal(value(all, 'dimse_proxy_audit_spool_bytes'), 4096);
  assert.equal(value(all, 'dimse_proxy_audit_alarms_total'), 1);
  assert.equal(value(all, 'dimse_proxy_upstream_ready', { upstream: 'archive' }), 1);
  assert.equal(
    value(all, 'dimse_proxy_upstream_ready', { upstream: 'unknown' }),
    0,
    '"twin" is not configured',
  );
  assert.equal(
    value(all, 'dimse_proxy_upstream_readiness_last_success_timestamp_seconds', { upstream: 'archive' }),
    Date.parse('2030-01-01T00:00:10.000Z') / 1000,
  );
  status = null;
  all = await samples(metrics);
  assert.equal(find(all, 'dimse_proxy_upstream_ready').length, 0);
});

test('certificate not-after gauges: one per certificate of each file, bundles included', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'dimse-metrics-'));
  try {
    const caNotAfter = new Date(Date.UTC(2031, 0, 2, 3, 4, 5));
    const leafNotAfter = new Date(Date.UTC(2027, 5, 6, 7, 8, 9));
    const ca = await createCa('Metrics Test CA', { notAfter: caNotAfter });
    const other = await createCa('Other CA');
    const leaf = await issueCertificate(ca, {
      commonName: 'dimse-tls-proxy',
      usage: 'client',
      notAfter: leafNotAfter,
    });
    const bundle = join(dir, 'bundle.pem');
    const cert = join(dir, 'client.pem');
    const junk = join(dir, 'junk.pem');
    await writeFile(bundle, ca.cert + other.cert);
    await writeFile(cert, leaf.cert);
    await writeFile(junk, 'not a certificate\n');
    const metrics = new ProxyMetrics({ ...BOUNDS, defaultMetrics: false });
    const report = metrics.setCertificates([bundle, cert, junk, join(dir, 'missing.pem')]);
    assert.equal(report.certificates.length, 3);
    assert.deepEqual(
      report.errors.map((e) => e.file),
      [junk, join(dir, 'missing.pem')],
    );
    let all = await samples(metrics);
    const N = 'dimse_proxy_certificate_not_after_timestamp_seconds';
    assert.equal(find(all, N).length, 3);
    assert.equal(value(all, N, { file: bundle, subject: 'CN=Metrics Test CA' }), caNotAfter.getTime() / 1000);
    assert.ok(find(all, N, { file: bundle, subject: 'CN=Other CA' })[0]);
    assert.equal(value(all, N, { file: cert, subject: 'CN=dimse-tls-proxy' }), leafNotAfter.getTime() / 1000);

    // A later call replaces the set (a reload that drops a file drops its series); PEM text may be given.
    metrics.setCertificates([{ file: 'inline.pem', pem: leaf.cert }]);
    all = await samples(metrics);
    assert.equal(find(all, N).length, 1);
    assert.equal(value(all, N, { file: 'inline.pem' }), leafNotAfter.getTime() / 1000);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('metricBoundsFromConfig and certificateFilesFromConfig follow the configuration, return path included', () => {
  const config = parseConfig(
    [
      'upstreams:',
      '  archive:',
      '    host: 127.0.0.1',
      '    port: 2762',
      '    aeTitle: ARCHIVE',
      '    tls: { ca: /tmp/ca.pem, cert: /tmp/c.pem, key: /tmp/c.key }',
      'routes:',
      '  - { calledAeTitle: DICOM_PROXY, upstream: archive }',
      'peers:',
      '  CT1: { addresses: [127.0.0.1], services: [echo] }',
      '  WS1: { addresses: [127.0.0.1], services: [echo, move], receiver: { host: 127.0.0.1, port: 104 } }',
      'returnListener:',
      '  tls: { ca: /tmp/ca.pem, cert: /tmp/s.pem, key: /tmp/s.key }',
      '  callers:',
      '    - { aeTitles: [ARCHIVE, ARCHIVE_B], identity: { dns: archive.local } }',
      '',
    ].join('\n'),
    null,
  );
  assert.deepEqual(metricBoundsFromConfig(config), {
    knownPeers: ['CT1', 'WS1', 'ARCHIVE', 'ARCHIVE_B'],
    routes: ['DICOM_PROXY', 'WS1'],
    upstreams: ['archive', 'WS1'],
  });
  assert.deepEqual(certificateFilesFromConfig(config), ['/tmp/ca.pem', '/tmp/c.pem', '/tmp/s.pem']);
});

test('refusals the relay decides itself are counted under their own names, not "other"', async () => {
  const events = new ProxyEvents();
  const metrics = new ProxyMetrics({ ...BOUNDS, defaultMetrics: false });
  metrics.subscribe(events);
  const refusals = [
    'protocol-version-not-supported',
    'application-context-not-supported',
    'no-permitted-presentation-context',
    'no-valid-presentation-context',
  ] as const;
  for (const [i, refusal] of refusals.entries()) {
    events.emit('association-refused', {
      id: `n${i}`,
      remoteAddress: '127.0.0.1',
      callingAeTitle: 'CT1',
      calledAeTitle: 'DICOM_PROXY',
      refusal,
      reject: { result: 1, source: 1, reason: 1 },
      message: refusal,
      listener: 'forward',
    });
  }
  const all = await samples(metrics);
  for (const reason of refusals) {
    assert.equal(
      value(all, 'dimse_proxy_associations_total', { calling_ae: 'CT1', outcome: 'rejected', reason }),
      1,
      `associations_total reason=${reason}`,
    );
    assert.equal(
      value(all, 'dimse_proxy_policy_denials_total', { reason }),
      1,
      `policy_denials_total ${reason}`,
    );
  }
  assert.equal(value(all, 'dimse_proxy_associations_total', { reason: 'other' }) ?? 0, 0);
  assert.equal(value(all, 'dimse_proxy_policy_denials_total', { reason: 'other' }) ?? 0, 0);
});
