// The admin endpoint: /metrics, /healthz (event-loop lag), /readyz backed by real mutual-TLS C-ECHOs to
// archives that come and go; the status client; the admin configuration section. Loopback, port 0.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as net from 'node:net';
import { AdminServer } from '../../src/observe/admin.js';
import { ProxyMetrics } from '../../src/observe/metrics.js';
import { UpstreamReadiness } from '../../src/observe/readiness.js';
import { fetchStatus } from '../../src/observe/status.js';
import { resolveAdminConfig } from '../../src/config/admin.js';
import { ConfigError } from '../../src/config/errors.js';
import { parseConfig } from '../../src/config/load.js';
import { createCa, issueCertificate } from '../../src/tls/pki.js';
import { ManualClock } from '../helpers/clock.js';
import { startTestArchive, type TestArchive } from '../helpers/instances.js';
import { removePki, standardPki, type TestPki } from '../helpers/proxy.js';

async function get(
  base: string,
  path: string,
  method = 'GET',
): Promise<{ code: number; type: string | null; text: string }> {
  const res = await fetch(base + path, { method, signal: AbortSignal.timeout(5000) });
  return { code: res.status, type: res.headers.get('content-type'), text: await res.text() };
}

function baseOf(addr: net.AddressInfo): string {
  return `http://127.0.0.1:${addr.port}`;
}

/** A port nothing listens on (bound then released). */
async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen({ host: '127.0.0.1', port: 0 }, resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

function upstreamYaml(name: string, port: number, pki: TestPki): string {
  return [
    `  ${name}:`,
    '    host: 127.0.0.1',
    `    port: ${port}`,
    '    aeTitle: ARCHIVE',
    '    tls:',
    `      ca: ${pki.files.ca}`,
    `      cert: ${pki.files.client}`,
    `      key: ${pki.files['client.key']}`,
    '      serverName: archive.local',
  ].join('\n');
}

function configFor(pki: TestPki, upstreams: Record<string, number>) {
  const names = Object.keys(upstreams);
  return parseConfig(
    [
      'listen: { host: 127.0.0.1, port: 0 }',
      'upstreams:',
      ...names.map((n) => upstreamYaml(n, upstreams[n] as number, pki)),
      'routes:',
      ...names.map((n, i) => `  - { calledAeTitle: ROUTE_${i}, upstream: ${n} }`),
      'peers:',
      '  SCU: { addresses: [127.0.0.1], services: [echo] }',
      'logging: { level: error }',
      '',
    ].join('\n'),
    null,
  );
}

test('/metrics, /healthz, /readyz without a probe, 404, 405, HEAD', async () => {
  const metrics = new ProxyMetrics({ knownPeers: ['SCU'], routes: ['R'], upstreams: ['archive'] });
  let bound = true;
  const admin = new AdminServer({
    host: '127.0.0.1',
    port: 0,
    metrics,
    readiness: null,
    listenersBound: () => bound,
  });
  const addr = await admin.listen();
  try {
    assert.ok(addr.port > 0);
    const base = baseOf(addr);
    metrics.ledgerRecord();
    const m = await get(base, '/metrics');
    assert.equal(m.code, 200);
    assert.equal(m.type, metrics.registry.contentType);
    assert.match(m.text, /^dimse_proxy_ledger_records_total 1$/m);
    assert.match(m.text, /^# HELP process_cpu_seconds_total /m);

    const h = await get(base, '/healthz');
    assert.equal(h.code, 200);
    assert.match(h.type ?? '', /^application\/json/);
    assert.equal(JSON.parse(h.text).status, 'ok');

    const r = await get(base, '/readyz?verbose=1');
    assert.equal(r.code, 200);
    assert.equal(JSON.parse(r.text).status, 'ready');
    bound = false;
    const r2 = await get(base, '/readyz');
    assert.equal(r2.code, 503);
    assert.equal(JSON.parse(r2.text).listeners, 'not-bound');
    bound = true;

    assert.equal((await get(base, '/')).code, 404);
    assert.equal((await get(base, '/metrics/extra')).code, 404);
    assert.equal((await get(base, '/../etc/passwd')).code, 404);
    const post = await fetch(`${base}/metrics`, {
      method: 'POST',
      body: 'x',
      signal: AbortSignal.timeout(5000),
    });
    assert.equal(post.status, 405);
    assert.equal(post.headers.get('allow'), 'GET, HEAD');
    await post.text();
    const head = await get(base, '/healthz', 'HEAD');
    assert.equal(head.code, 200);
    assert.equal(head.text, '');
  } finally {
    await admin.close();
  }
  await admin.close(); // idempotent
});

test('/healthz is 503 while the event loop lags beyond the limit, 200 again after the window', async () => {
  const metrics = new ProxyMetrics({ knownPeers: [], routes: [], upstreams: [], defaultMetrics: false });
  const clock = new ManualClock();
  const admin = new AdminServer({
    host: '127.0.0.1',
    port: 0,
    metrics,
    readiness: null,
    listenersBound: () => true,
    maxEventLoopLagMs: 150,
    lagSampleIntervalMs: 20,
    lagWindowMs: 800,
    clock,
  });
  const base = baseOf(await admin.listen());
  try {
    clock.advance(60); // three samples on time
    assert.equal((await get(base, '/healthz')).code, 200);
    clock.jump(400); // the loop is blocked: the sample due 20 ms later has not run
    const stalled = await get(base, '/healthz');
    assert.equal(stalled.code, 503, 'the overdue sample counts while it is overdue');
    const body = JSON.parse(stalled.text);
    assert.equal(body.status, 'stalled');
    assert.equal(body.eventLoopLagMs, 380, stalled.text);
    clock.advance(0); // the late sample runs: 380 ms of lag on record
    clock.advance(800); // samples on time since, the stall at the very edge of the window
    assert.equal((await get(base, '/healthz')).code, 503, 'the stall stays visible for the window');
    clock.advance(1);
    assert.equal((await get(base, '/healthz')).code, 200);
  } finally {
    await admin.close();
  }
  assert.equal(clock.pending, 0, 'close() stops the sampler');
});

test('/healthz sees a real blocked event loop', async () => {
  const metrics = new ProxyMetrics({ knownPeers: [], routes: [], upstreams: [], defaultMetrics: false });
  const admin = new AdminServer({
    host: '127.0.0.1',
    port: 0,
    metrics,
    readiness: null,
    listenersBound: () => true,
    maxEventLoopLagMs: 150,
    lagSampleIntervalMs: 20,
    lagWindowMs: 60_000,
  });
  const base = baseOf(await admin.listen());
  try {
    // Only the direction a loaded machine cannot undo: a 400 ms block is at least 380 ms of lag.
    const until = Date.now() + 400;
    while (Date.now() < until) {
      /* block the event loop */
    }
    const stalled = await get(base, '/healthz');
    assert.equal(stalled.code, 503);
    assert.ok(JSON.parse(stalled.text).eventLoopLagMs >= 150, stalled.text);
  } finally {
    await admin.close();
  }
});

test('/readyz follows real mutual-TLS C-ECHOs: archive up, down, back on the same port; a twin from another CA', async () => {
  const pki = await standardPki();
  const archives: TestArchive[] = [];
  let readiness: UpstreamReadiness | null = null;
  let admin: AdminServer | null = null;
  try {
    const first = await startTestArchive({ ca: pki.ca, archive: pki.archive });
    archives.push(first);
    const port = first.archive.port;
    const config = configFor(pki, { archive: port });
    const metrics = new ProxyMetrics({ knownPeers: [], routes: [], upstreams: ['archive', 'twin'] });
    const clock = new ManualClock();
    readiness = new UpstreamReadiness(
      { config },
      { intervalMs: 60_000, maxAgeMs: 400, timeoutMs: 3000, clock },
    );
    metrics.observeReadiness(() => readiness?.status() ?? null);
    const r = readiness;
    admin = new AdminServer({
      host: '127.0.0.1',
      port: 0,
      metrics,
      readiness: r,
      listenersBound: () => true,
    });
    const base = baseOf(await admin.listen());

    // Before any probe: not ready, and says why.
    let res = await get(base, '/readyz');
    assert.equal(res.code, 503);
    assert.deepEqual(JSON.parse(res.text).failing, [{ upstream: 'archive', reason: 'not probed yet' }]);

    // The archive answers the C-ECHO over mutual TLS.
    let status = await r.checkNow();
    assert.equal(status.upstreams.archive?.lastCheck?.error, null, JSON.stringify(status));
    assert.equal(status.ready, true);
    assert.deepEqual(first.archive.requests, ['C-ECHO']);
    res = await get(base, '/readyz');
    assert.equal(res.code, 200, res.text);
    let body = JSON.parse(res.text);
    assert.equal(body.status, 'ready');
    assert.equal(body.upstreams.archive.ok, true);
    assert.match(
      await (await fetch(`${base}/metrics`)).text(),
      /^dimse_proxy_upstream_ready\{upstream="archive"\} 1$/m,
    );
    const ok = await fetchStatus(base);
    assert.equal(ok.exitCode, 0, ok.text);
    assert.equal(ok.liveExitCode, 0);
    assert.match(ok.text, /archive\s+ready/);

    // The archive stops: once the last success is older than maxAge, /readyz names it.
    await first.close();
    archives.length = 0;
    clock.advance(400);
    status = await r.checkNow();
    assert.equal(status.upstreams.archive?.lastCheck?.ok, false);
    assert.equal(status.ready, true, 'a failed probe within maxAge of the last success is still ready');
    assert.equal((await get(base, '/readyz')).code, 200);
    clock.advance(1);
    res = await get(base, '/readyz');
    assert.equal(res.code, 503);
    body = JSON.parse(res.text);
    assert.equal(body.failing.length, 1);
    assert.equal(body.failing[0].upstream, 'archive');
    assert.match(body.failing[0].reason, /ECONNREFUSED|network error|closed/i);
    assert.match(
      await (await fetch(`${base}/metrics`)).text(),
      /^dimse_proxy_upstream_ready\{upstream="archive"\} 0$/m,
    );
    const down = await fetchStatus(base);
    assert.equal(down.exitCode, 1);
    assert.equal(down.liveExitCode, 0, 'not ready, but alive: status --live passes');
    assert.match(down.text, /archive\s+NOT READY/);

    // A new archive on the same port: ready again.
    const second = await startTestArchive({ ca: pki.ca, archive: pki.archive }, { port });
    archives.push(second);
    assert.equal(second.archive.port, port);
    await r.checkNow();
    res = await get(base, '/readyz');
    assert.equal(res.code, 200, res.text);

    // A twin whose certificate comes from another CA (and which trusts only that CA) is not ready.
    const otherCa = await createCa('Other CA');
    const twinCert = await issueCertificate(otherCa, {
      commonName: 'archive.local',
      dnsNames: ['archive.local'],
      ipAddresses: ['127.0.0.1'],
      usage: 'both',
    });
    const twin = await startTestArchive({ ca: otherCa, archive: twinCert });
    archives.push(twin);
    r.setSnapshot({ config: configFor(pki, { archive: port, twin: twin.archive.port }) });
    status = await r.checkNow();
    assert.equal(status.upstreams.archive?.ok, true, 'unchanged upstreams keep their history');
    assert.equal(status.upstreams.twin?.ok, false);
    res = await get(base, '/readyz');
    assert.equal(res.code, 503);
    body = JSON.parse(res.text);
    assert.deepEqual(
      body.failing.map((f: { upstream: string }) => f.upstream),
      ['twin'],
    );
    assert.ok(body.failing[0].reason.length > 0);
    assert.match(body.failing[0].reason, /certificate|network error|closed|alert/i, body.failing[0].reason);
    assert.deepEqual(twin.archive.requests, [], 'the twin never got a C-ECHO');

    // A reload that removes the twin: ready again, the twin forgotten.
    r.setSnapshot({ config: configFor(pki, { archive: port }) });
    res = await get(base, '/readyz');
    assert.equal(res.code, 200, res.text);
    assert.deepEqual(Object.keys(JSON.parse(res.text).upstreams), ['archive']);
  } finally {
    await readiness?.stop();
    await admin?.close();
    for (const a of archives) await a.close();
    await removePki(pki);
  }
});

test('the probe checks the archive the way the relay does: a wrong server name is not ready, verifyHostname: false is', async () => {
  const pki = await standardPki();
  const archive = await startTestArchive({ ca: pki.ca, archive: pki.archive });
  try {
    const yaml = (extra: string) =>
      parseConfig(
        [
          'upstreams:',
          upstreamYaml('archive', archive.archive.port, pki).replace(
            'serverName: archive.local',
            'serverName: other.local',
          ),
          extra,
          'routes: [{ calledAeTitle: R, upstream: archive }]',
          'peers: { SCU: { addresses: [127.0.0.1], services: [echo] } }',
          '',
        ].join('\n'),
        null,
      );
    const wrong = new UpstreamReadiness(
      { config: yaml('') },
      { intervalMs: 60_000, maxAgeMs: 5000, timeoutMs: 3000 },
    );
    const refused = await wrong.checkNow();
    assert.equal(refused.ready, false);
    assert.match(refused.upstreams.archive?.lastCheck?.error ?? '', /hostname-mismatch/);
    const lenient = new UpstreamReadiness(
      { config: yaml('      verifyHostname: false') },
      { intervalMs: 60_000, maxAgeMs: 5000, timeoutMs: 3000 },
    );
    const accepted = await lenient.checkNow();
    assert.equal(accepted.ready, true, JSON.stringify(accepted));
  } finally {
    await archive.close();
    await removePki(pki);
  }
});

test('start() probes at once and then periodically; stop() ends it', async () => {
  const pki = await standardPki();
  const archive = await startTestArchive({ ca: pki.ca, archive: pki.archive });
  const checks: string[] = [];
  const clock = new ManualClock();
  const readiness = new UpstreamReadiness(
    { config: configFor(pki, { archive: archive.archive.port }) },
    {
      intervalMs: 100,
      maxAgeMs: 1000,
      timeoutMs: 3000,
      onCheck: (name, c) => checks.push(`${name}:${c.ok}`),
      clock,
    },
  );
  try {
    readiness.start();
    assert.equal(checks.length, 0, 'the first probe is under way');
    // Each round arms the next one intervalMs after it finished.
    for (let round = 1; round <= 3; round++) {
      await clock.untilArmed(round);
      assert.equal(checks.length, round);
      assert.deepEqual(clock.dueIn(), [100]);
      if (round < 3) clock.advance(100);
    }
    assert.deepEqual(checks, ['archive:true', 'archive:true', 'archive:true']);
    assert.equal(readiness.status().ready, true);
  } finally {
    await readiness.stop();
    const pending = clock.pending;
    clock.advance(1000);
    await archive.close();
    await removePki(pki);
    assert.equal(pending, 0, 'stop() clears the next round');
    assert.equal(checks.length, 3, 'no probe after stop()');
  }
});

test('fetchStatus: unreachable is exit code 2', async () => {
  const port = await freePort();
  const report = await fetchStatus(`127.0.0.1:${port}`, { timeoutMs: 2000 });
  assert.equal(report.exitCode, 2);
  assert.equal(report.liveExitCode, 2);
  assert.equal(report.reachable, false);
  assert.match(report.text, /UNREACHABLE/);
  assert.equal(report.url, `http://127.0.0.1:${port}/`);
});

test('admin configuration: defaults on loopback, null disables, durations, strict keys', () => {
  assert.deepEqual(resolveAdminConfig(undefined), {
    host: '127.0.0.1',
    port: 9464,
    readiness: { intervalMs: 15_000, maxAgeMs: 60_000, timeoutMs: 5_000 },
  });
  assert.equal(resolveAdminConfig(null), null);
  const c = resolveAdminConfig({ port: 0, readiness: { interval: '500ms', maxAge: 2, timeout: '1s' } });
  assert.deepEqual(c, {
    host: '127.0.0.1',
    port: 0,
    readiness: { intervalMs: 500, maxAgeMs: 2000, timeoutMs: 1000 },
  });
  assert.ok(Object.isFrozen(c));
  const problems = (raw: unknown): string[] => {
    try {
      resolveAdminConfig(raw);
    } catch (err) {
      assert.ok(err instanceof ConfigError);
      return err.issues.map((i) => `${i.path}: ${i.message}`);
    }
    return [];
  };
  assert.deepEqual(problems({ bind: 'x' }), ['admin.bind: unknown key "bind"']);
  assert.match(problems({ port: 70000 })[0] ?? '', /^admin\.port: must be at most 65535/);
  assert.match(
    problems({ readiness: { interval: 'soon' } })[0] ?? '',
    /^admin\.readiness\.interval: invalid duration/,
  );
  assert.match(
    problems({ readiness: { interval: '2m' } })[0] ?? '',
    /^admin\.readiness\.maxAge: must be longer/,
  );
  assert.match(
    problems({ readiness: { timeout: '2m' } })[0] ?? '',
    /^admin\.readiness\.timeout: must be shorter/,
  );
  assert.match(problems({ host: 'a b' })[0] ?? '', /^admin\.host: /);
});
