// The audit repository connection is visible: each change of state (connected, disconnected, retrying) is
// one log line with its reason and the next attempt's time, and the metrics show whether the repository is
// connected, how many bytes wait in the spool and how old the oldest undelivered message is. A real TLS
// syslog collector runs in-process on 127.0.0.1; time moves only with the manual clock.
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as tls from 'node:tls';
import { SyslogTlsSender } from '../../src/observe/audit/syslog.js';
import { observeAuditTransport, type AuditTransportLog } from '../../src/observe/audit/transport.js';
import { ProxyMetrics } from '../../src/observe/metrics.js';
import { createCa, issueCertificate, type PemPair } from '../../src/tls/pki.js';
import { ManualClock } from '../helpers/clock.js';

interface Line {
  level: string;
  message: string;
  meta: Record<string, unknown>;
}

function memoryLog(lines: Line[]): AuditTransportLog {
  const at =
    (level: string) =>
    (message: string, meta: Record<string, unknown> = {}): void => {
      lines.push({ level, message, meta });
    };
  return { info: at('info'), warn: at('warn') };
}

/** A syslog-TLS collector requiring client certificates; counts the octet-counted frames it receives. */
class Collector {
  frames = 0;
  private readonly sockets = new Set<tls.TLSSocket>();
  private constructor(private readonly server: tls.Server) {}

  static async start(cert: PemPair, ca: string, port: number): Promise<Collector> {
    const server = tls.createServer({ cert: cert.cert, key: cert.key, ca, requestCert: true });
    const c = new Collector(server);
    server.on('secureConnection', (socket) => {
      c.sockets.add(socket);
      let buf = Buffer.alloc(0);
      socket.on('data', (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        for (;;) {
          const sp = buf.indexOf(0x20);
          if (sp < 0) break;
          const len = Number(buf.subarray(0, sp).toString());
          if (buf.length < sp + 1 + len) break;
          c.frames++;
          buf = buf.subarray(sp + 1 + len);
        }
      });
      socket.on('error', () => undefined);
      socket.on('close', () => c.sockets.delete(socket));
    });
    server.on('tlsClientError', () => undefined);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => resolve());
    });
    return c;
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** Waits for I/O (a connection attempt, a delivery) to have happened; fails with `state()` after 10 s. */
async function until(cond: () => boolean, state: () => string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!cond()) {
    assert.ok(Date.now() < deadline, `condition not met: ${state()}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** The value of one series in the text exposition, or undefined. */
async function sample(
  metrics: ProxyMetrics,
  name: string,
  labels: Record<string, string> = {},
): Promise<number | undefined> {
  for (const line of (await metrics.metrics()).split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const got: Record<string, string> = {};
    for (const lm of (m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)) got[lm[1] as string] = lm[2] as string;
    if (Object.entries(labels).every(([k, v]) => got[k] === v)) return Number(m[3]);
  }
  return undefined;
}

const xml = (i: number): string => `<AuditMessage n="${i}"/>`;

describe('audit transport state: logs and metrics', { timeout: 60_000 }, () => {
  let ca: PemPair;
  let collectorCert: PemPair;
  let client: PemPair;
  let work: string;
  const cleanup: (() => Promise<unknown>)[] = [];

  before(async () => {
    ca = await createCa('audit transport test CA');
    collectorCert = await issueCertificate(ca, {
      commonName: 'audit.local',
      ipAddresses: ['127.0.0.1'],
      usage: 'server',
    });
    client = await issueCertificate(ca, { commonName: 'dimse-tls-proxy', usage: 'client' });
    work = await mkdtemp(join(tmpdir(), 'audit-transport-'));
  });

  after(async () => {
    for (const c of cleanup.reverse()) await c().catch(() => undefined);
    await rm(work, { recursive: true, force: true });
  });

  function sender(port: number, clock: ManualClock, spoolDir: string): SyslogTlsSender {
    const s = new SyslogTlsSender({
      host: '127.0.0.1',
      port,
      tls: { ca: ca.cert, cert: client.cert, key: client.key, serverName: '127.0.0.1' },
      spoolDir,
      spoolMaxBytes: 1024 * 1024,
      appName: 'dimse-tls-proxy',
      hostname: 'gw1',
      procId: '4242',
      connectTimeoutMs: 3_000,
      reconnectMinMs: 1_000,
      reconnectMaxMs: 4_000,
      clock,
    });
    cleanup.push(() => s.close(0));
    return s;
  }

  function freshMetrics(): ProxyMetrics {
    return new ProxyMetrics({ knownPeers: [], routes: [], upstreams: [], defaultMetrics: false });
  }

  test('unreachable: one retrying line, gauges 0, spool grows old; back: connected, spool drains; gone: disconnected', async () => {
    const port = await freePort();
    const clock = new ManualClock();
    const s = sender(port, clock, join(work, 'spool-a'));
    const metrics = freshMetrics();
    assert.equal(
      await sample(metrics, 'dimse_proxy_audit_connected'),
      undefined,
      'no repository, no connection gauge (nothing to alert on)',
    );
    const lines: Line[] = [];
    const stop = observeAuditTransport(s, { log: memoryLog(lines), metrics });
    cleanup.push(async () => stop());

    for (const state of ['connected', 'disconnected', 'retrying'])
      assert.equal(
        await sample(metrics, 'dimse_proxy_audit_connection_state_changes_total', { state }),
        0,
        `state changes ${state} start at 0`,
      );
    for (const result of ['accepted', 'delivered', 'refused'])
      assert.equal(await sample(metrics, 'dimse_proxy_audit_messages_total', { result }), 0, result);

    // Repository unreachable: the first attempt fails, one line says so, why, and when the next one is.
    await s.start();
    await until(
      () => lines.length > 0,
      () => JSON.stringify(s.stats()),
    );
    const retrying = lines[0] as Line;
    assert.equal(retrying.level, 'warn');
    assert.equal(retrying.meta.event, 'audit-retrying');
    assert.match(String(retrying.meta.reason), /ECONNREFUSED/);
    assert.equal(retrying.meta.host, '127.0.0.1');
    assert.equal(retrying.meta.port, port);
    const due = clock.dueIn();
    assert.equal(due.length, 1, 'the reconnect is the only timer armed');
    assert.equal(retrying.meta.retryAt, new Date(clock.now() + (due[0] as number)).toISOString());
    assert.equal(retrying.meta.retryInMs, due[0]);

    const t0 = clock.now();
    for (let i = 0; i < 3; i++) assert.equal(s.send(xml(i)), true);
    await s.flush();
    assert.equal(await sample(metrics, 'dimse_proxy_audit_connected'), 0);
    const spooled = (await sample(metrics, 'dimse_proxy_audit_spool_bytes')) ?? 0;
    assert.ok(spooled > 0, `spool bytes ${spooled}`);
    assert.equal(await sample(metrics, 'dimse_proxy_audit_spool_oldest_age_seconds'), 0);

    // It stays away: further attempts fail the same way (no new line), the oldest message ages.
    for (let i = 0; i < 4; i++) {
      const failed = s.stats().failedConnects;
      clock.advance(clock.dueIn()[0] as number);
      await until(
        () => s.stats().failedConnects > failed && clock.pending === 1,
        () => `${JSON.stringify(s.stats())} timers ${clock.dueIn()}`,
      );
    }
    clock.jump(10 * 60_000 - (clock.now() - t0)); // ten minutes after the messages were written
    assert.equal(await sample(metrics, 'dimse_proxy_audit_spool_oldest_age_seconds'), 600);
    assert.equal(await sample(metrics, 'dimse_proxy_audit_spool_bytes'), spooled);
    assert.equal(await sample(metrics, 'dimse_proxy_audit_connected'), 0);
    assert.deepEqual(
      lines.map((l) => l.meta.event),
      ['audit-retrying'],
      'one line for the transition, not one per attempt',
    );
    assert.equal(
      await sample(metrics, 'dimse_proxy_audit_connection_state_changes_total', { state: 'retrying' }),
      1,
    );
    assert.equal(await sample(metrics, 'dimse_proxy_audit_messages_total', { result: 'accepted' }), 3);
    assert.equal(await sample(metrics, 'dimse_proxy_audit_messages_total', { result: 'delivered' }), 0);

    // The repository comes back: the next attempt connects, one line says so, the spool drains.
    const collector = await Collector.start(collectorCert, ca.cert, port);
    cleanup.push(() => collector.close());
    clock.advance(clock.dueIn()[0] as number);
    await until(
      () => lines.length === 2 && collector.frames === 3 && s.stats().spoolBytes === 0,
      () => `${JSON.stringify(lines)} frames ${collector.frames} ${JSON.stringify(s.stats())}`,
    );
    const connected = lines[1] as Line;
    assert.equal(connected.level, 'info');
    assert.equal(connected.meta.event, 'audit-connected');
    assert.equal(connected.meta.previous, 'retrying');
    assert.equal(connected.meta.spoolBytes, spooled, 'what was waiting when the connection came up');
    assert.match(String(connected.meta.protocol), /^TLSv1\.[23]$/);
    assert.equal(await sample(metrics, 'dimse_proxy_audit_connected'), 1);
    assert.equal(await sample(metrics, 'dimse_proxy_audit_spool_bytes'), 0);
    assert.equal(await sample(metrics, 'dimse_proxy_audit_spool_oldest_age_seconds'), 0);
    assert.equal(await sample(metrics, 'dimse_proxy_audit_messages_total', { result: 'delivered' }), 3);
    assert.equal(
      await sample(metrics, 'dimse_proxy_audit_connection_state_changes_total', { state: 'connected' }),
      1,
    );

    // The repository goes away while connected: one disconnected line with the reason and the retry time.
    await collector.close();
    await until(
      () => lines.length === 3,
      () => JSON.stringify(lines),
    );
    const disconnected = lines[2] as Line;
    assert.equal(disconnected.level, 'warn');
    assert.equal(disconnected.meta.event, 'audit-disconnected');
    assert.equal(disconnected.meta.previous, 'connected');
    assert.ok(String(disconnected.meta.reason).length > 0);
    const next = disconnected.meta.retryInMs as number;
    assert.ok(next >= 800 && next <= 1_200, `retry in ${next} ms`);
    assert.ok(clock.dueIn().includes(next), `the reconnect is armed: timers ${clock.dueIn()}`);
    assert.equal(disconnected.meta.retryAt, new Date(clock.now() + next).toISOString());
    assert.equal(await sample(metrics, 'dimse_proxy_audit_connected'), 0);
    assert.equal(
      await sample(metrics, 'dimse_proxy_audit_connection_state_changes_total', { state: 'disconnected' }),
      1,
    );
    stop();
  });

  test('after a restart the oldest age comes from the spooled message itself', async () => {
    const port = await freePort();
    const dir = join(work, 'spool-b');
    const clock = new ManualClock();
    const s1 = sender(port, clock, dir);
    await s1.start();
    const t0 = clock.now();
    s1.send(xml(0));
    s1.send(xml(1));
    await s1.flush();
    assert.equal(await s1.close(0), false, 'nothing delivered');

    clock.jump(120_000);
    const s2 = sender(port, clock, dir);
    const metrics = freshMetrics();
    const stop = observeAuditTransport(s2, { log: memoryLog([]), metrics });
    await s2.start();
    assert.equal(s2.stats().oldestMessageTime?.getTime(), t0);
    assert.equal(await sample(metrics, 'dimse_proxy_audit_spool_oldest_age_seconds'), 120);
    assert.ok(((await sample(metrics, 'dimse_proxy_audit_spool_bytes')) ?? 0) > 0);
    stop();
  });
});
