// A real HAProxy (Debian package) in TCP mode with `send-proxy-v2` in front of two proxy instances on
// loopback, with its health checks (`check-send-proxy`, so they carry the header too). The modality's AE
// title is bound to 127.0.0.2: it is accepted only when HAProxy's header says the client is 127.0.0.2 (and
// both instances serve it, round robin, so both passed HAProxy's health check), refused when the header
// says 127.0.0.3; and a header from an address that is not a configured load balancer (HAProxy sending
// from 127.0.0.4 on a second backend) is refused before anything is read.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as net from 'node:net';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { RawScu, associateRq, VERIFICATION } from '../helpers/raw.js';
import { startTestArchive, type TestArchive } from '../helpers/instances.js';
import { removePki, standardPki, startProxy, type ProxyUnderTest } from '../helpers/proxy.js';
import {
  Procs,
  freePort,
  makeTempDir,
  removeTempDir,
  skipUnlessPeer,
  waitForListen,
} from '../helpers/peers.js';

const HAPROXY_ADDRESS = '127.0.0.1'; // HAProxy's own source address toward the proxies (the balancer)
const MODALITY = '127.0.0.2';
const STRANGER = '127.0.0.3';
const ROGUE_SOURCE = '127.0.0.4'; // a "balancer" the proxies do not list

/** Associate as CT_ROOM1 through `port` from `from`; the answer's PDU type (null: closed without one). */
async function associate(port: number, from: string): Promise<{ type: number | null; rj: number[] }> {
  const scu = await RawScu.connectFrom(port, from);
  try {
    scu.send(associateRq('CT_ROOM1', 'DICOM_PROXY', [{ id: 1, abstractSyntax: VERIFICATION }]));
    const answer = await scu.next(10_000);
    return {
      type: answer?.type ?? null,
      rj: answer?.type === 0x03 ? [answer.result, answer.source, answer.reason] : [],
    };
  } finally {
    scu.destroy();
  }
}

async function until(
  what: string,
  ok: () => boolean,
  timeoutMs = 15_000,
  refresh: () => Promise<void> = async () => undefined,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  await refresh();
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
    await refresh();
  }
}

describe('behind a real HAProxy with send-proxy-v2', { timeout: 120_000 }, () => {
  let pki: Awaited<ReturnType<typeof standardPki>> | undefined;
  let archive: TestArchive | undefined;
  const proxies: ProxyUnderTest[] = [];
  const procs = new Procs();
  let dir: string | undefined;
  let front = 0;
  let rogueFront = 0;
  let statsSocket = '';
  let upCount = 0;

  /** The `proxies` backend's servers as HAProxy's stats socket reports them (`show stat`, CSV). */
  async function serverStates(): Promise<Array<{ name: string; status: string; check: string }>> {
    const csv = await new Promise<string>((resolve) => {
      let text = '';
      const s = net.connect(statsSocket, () => s.end('show stat\n'));
      s.setEncoding('utf8');
      s.on('data', (d: string) => (text += d));
      s.on('close', () => resolve(text));
      s.on('error', () => resolve(''));
    });
    const lines = csv.split('\n').filter((l) => l.trim() !== '');
    const header = (lines[0] ?? '').replace(/^# /, '').split(',');
    const col = (name: string): number => header.indexOf(name);
    return lines
      .slice(1)
      .map((l) => l.split(','))
      .filter((f) => f[col('pxname')] === 'proxies' && f[col('svname')] !== 'BACKEND')
      .map((f) => ({
        name: f[col('svname')] ?? '',
        status: f[col('status')] ?? '',
        check: f[col('check_status')] ?? '',
      }));
  }

  before(async () => {
    pki = await standardPki();
    archive = await startTestArchive(pki);
    for (let i = 0; i < 2; i++) {
      proxies.push(
        await startProxy({
          archivePort: archive.archive.port,
          pki,
          listenExtra: `proxyProtocol: { from: [${HAPROXY_ADDRESS}] }`,
          peers: `  CT_ROOM1: { addresses: [${MODALITY}], services: [echo] }`,
        }),
      );
    }
  });
  after(async () => {
    await procs.stopAll();
    for (const p of proxies) await p.close();
    await archive?.close();
    await removePki(pki);
    await removeTempDir(dir);
  });

  async function startHaproxy(): Promise<void> {
    dir = await makeTempDir('haproxy');
    statsSocket = join(dir, 'stats.sock');
    front = await freePort();
    rogueFront = await freePort();
    const [a, b] = proxies as [ProxyUnderTest, ProxyUnderTest];
    const cfg = join(dir, 'haproxy.cfg');
    writeFileSync(
      cfg,
      [
        'global',
        '  maxconn 256',
        `  stats socket ${statsSocket} mode 600`,
        'defaults',
        '  mode tcp',
        '  timeout connect 5s',
        '  timeout client 30s',
        '  timeout server 30s',
        `frontend dicom`,
        `  bind 127.0.0.1:${front}`,
        '  default_backend proxies',
        'backend proxies',
        '  balance roundrobin',
        '  default-server send-proxy-v2 check check-send-proxy inter 200ms fall 2 rise 1',
        `  server p1 127.0.0.1:${a.port}`,
        `  server p2 127.0.0.1:${b.port}`,
        `frontend rogue`,
        `  bind 127.0.0.1:${rogueFront}`,
        '  default_backend rogue',
        'backend rogue',
        `  server p1 127.0.0.1:${a.port} send-proxy-v2 source ${ROGUE_SOURCE}`,
        '',
      ].join('\n'),
    );
    const check = await new Promise<number | null>((resolve) => {
      const c = procs.spawn('haproxy', ['-c', '-f', cfg], { name: 'haproxy -c' });
      c.once('exit', (code) => resolve(code));
    });
    assert.equal(check, 0, 'haproxy -c accepts the configuration');
    procs.spawn('haproxy', ['-db', '-f', cfg], { name: 'haproxy' }); // -db: foreground, no fork
    await waitForListen(front, { timeoutMs: 15_000 });
    await waitForListen(rogueFront, { timeoutMs: 15_000 });
  }

  test('HAProxy health checks pass; the AE bound to 127.0.0.2 is accepted only when the header says 127.0.0.2', async (t) => {
    if (!skipUnlessPeer(t, 'haproxy')) return;
    await startHaproxy();
    // Health checks (with the header, from HAProxy's address) reach both instances and are not refused.
    const [a, b] = proxies as [ProxyUnderTest, ProxyUnderTest];
    const checks = (p: ProxyUnderTest): number =>
      (p.events['connection-refused'] ?? []).filter((e) => e.reason.startsWith('proxy-header')).length;
    // HAProxy's own verdict: both servers UP with a passing check (its stats socket, `show stat`).
    await until(
      'HAProxy marks both instances UP after their health checks',
      () => upCount === 2,
      15_000,
      async () => {
        upCount = (await serverStates()).filter((r) => r.status === 'UP' && /OK/.test(r.check)).length;
      },
    );
    assert.equal(
      checks(a) + checks(b),
      0,
      JSON.stringify(
        [...(a.events['connection-refused'] ?? []), ...(b.events['connection-refused'] ?? [])].slice(0, 3),
      ),
    );

    // Two associations from 127.0.0.2: round robin gives one to each instance, both accepted.
    for (let i = 0; i < 2; i++) {
      const r = await associate(front, MODALITY);
      assert.equal(r.type, 0x02, `association ${i} through HAProxy: A-ASSOCIATE-AC`);
    }
    for (const p of proxies) {
      await until('each instance accepted one association', () =>
        (p.events['association-accepted'] ?? []).some((e) => e.remoteAddress === MODALITY),
      );
    }

    // The twin: the same AE title from 127.0.0.3; HAProxy's header says so, the binding refuses it.
    const refused = await associate(front, STRANGER);
    assert.equal(refused.type, 0x03, 'A-ASSOCIATE-RJ');
    assert.deepEqual(refused.rj, [1, 1, 3]);
    const refusals = proxies.flatMap((p) => p.events['association-refused'] ?? []);
    assert.ok(
      refusals.some((e) => e.refusal === 'address-not-allowed' && e.remoteAddress === STRANGER),
      JSON.stringify(refusals),
    );
  });

  test('a PROXY header from an address that is not a configured load balancer is refused', async (t) => {
    if (!skipUnlessPeer(t, 'haproxy')) return;
    if (rogueFront === 0) await startHaproxy();
    const a = proxies[0] as ProxyUnderTest;
    const before = (a.events['connection-refused'] ?? []).length;
    const r = await associate(rogueFront, MODALITY);
    assert.equal(r.type, null, 'closed without a PDU');
    await until('the refusal is recorded', () => (a.events['connection-refused'] ?? []).length > before);
    const e = (a.events['connection-refused'] ?? [])[before];
    assert.deepEqual([e?.reason, e?.remoteAddress], ['proxy-header-untrusted', ROGUE_SOURCE]);
  });
});
