// Connections before association: per source address and overall caps with room kept for configured
// peers' addresses, on both listeners; a stalled TLS handshake on the return listener is closed at
// returnListener.tls.handshakeTimeout. 127.0.0.1 is the configured peer's address, 127.0.0.2 (also
// loopback) the unknown host that floods.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import type { ProxyEventMap } from '../../src/observe/events.js';
import { PendingConnections, sourceKey } from '../../src/relay/pending.js';
import { RawScu, associateRq, VERIFICATION } from '../helpers/raw.js';
import { startTestArchive, type TestArchive } from '../helpers/instances.js';
import {
  removePki,
  standardPki,
  startProxy,
  type ProxyUnderTest,
  writeProxyServerCert,
} from '../helpers/proxy.js';

type Pki = Awaited<ReturnType<typeof standardPki>>;

const PEER = '127.0.0.1';
const STRANGER = '127.0.0.2';

/** Open file descriptors of this process (client and proxy sockets both live here). */
function openFds(): number {
  return readdirSync('/proc/self/fd').length;
}

async function openMany(port: number, localAddress: string, n: number): Promise<RawScu[]> {
  const out: RawScu[] = [];
  // In batches: the listen backlog is finite, and the point is many open sockets, not a SYN flood.
  for (let i = 0; i < n; i += 50) {
    const batch = Math.min(50, n - i);
    out.push(
      ...(await Promise.all(Array.from({ length: batch }, () => RawScu.connectFrom(port, localAddress)))),
    );
  }
  return out;
}

/** Resolves when every socket in `sockets` is closed, or rejects after `timeoutMs`. */
async function allClosed(sockets: RawScu[], timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (sockets.some((s) => !s.closed)) {
    if (Date.now() > deadline) {
      throw new Error(`${sockets.filter((s) => !s.closed).length} of ${sockets.length} still open`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Resolves when the proxy counts `n` connections not admitted yet on `listener`. */
async function pendingIs(proxy: ProxyUnderTest, listener: 'forward' | 'return', n: number): Promise<void> {
  const deadline = Date.now() + 5000;
  while (proxy.server.pendingConnections(listener) !== n) {
    if (Date.now() > deadline) {
      throw new Error(`${proxy.server.pendingConnections(listener)} pending on ${listener}, expected ${n}`);
    }
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function echoAssociation(port: number, from = PEER): Promise<number | undefined> {
  const scu = await RawScu.connectFrom(port, from);
  try {
    scu.send(associateRq('SCU', 'DICOM_PROXY', [{ id: 1, abstractSyntax: VERIFICATION }]));
    return (await scu.next())?.type;
  } finally {
    scu.destroy();
  }
}

type Refused = ProxyEventMap['connection-refused'][0];

/** The connection-refused events recorded from now on. */
function refusals(proxy: ProxyUnderTest): Refused[] {
  const out: Refused[] = [];
  proxy.server.events.on('connection-refused', (e) => out.push(e));
  return out;
}

describe('connections before association, forward listener', { timeout: 60_000 }, () => {
  let pki: Pki;
  let archive: TestArchive;

  before(async () => {
    pki = await standardPki();
    archive = await startTestArchive(pki);
  });
  after(async () => {
    await archive?.close();
    await removePki(pki);
  });

  test('400 idle sockets from one unknown host: its excess is closed at once, a configured peer still associates', async () => {
    // Default limits: the flood of the issue (400 idle sockets from one host).
    const proxy = await startProxy({
      archivePort: archive.archive.port,
      pki,
      peers: `  SCU: { addresses: [${PEER}], services: [echo] }`,
    });
    const refused = refusals(proxy);
    const baseline = openFds();
    let flood: RawScu[] = [];
    try {
      flood = await openMany(proxy.port, STRANGER, 400);
      // The accepting side: the configured peer, from its own address, gets A-ASSOCIATE-AC.
      assert.equal(
        await echoAssociation(proxy.port),
        0x02,
        'the peer is served while the flood holds sockets',
      );
      // The refusing side: beyond limits.pendingPerAddress the stranger's connections were closed at once.
      await allClosed(flood.slice(8), 2000);
      assert.ok(
        flood.slice(0, 8).every((s) => !s.closed),
        'the first 8 stay open until ARTIM',
      );
      assert.equal(refused.filter((r) => r.reason === 'per-address-limit').length, 392);
      assert.ok(refused.every((r) => r.listener === 'forward' && r.remoteAddress === STRANGER));
    } finally {
      for (const s of flood) s.destroy();
      await proxy.close();
    }
    await allClosed(flood, 2000);
    // File descriptors are back (a few may belong to unrelated handles of the test runner).
    assert.ok(openFds() <= baseline + 4, `${openFds()} fds open, ${baseline} before the flood`);
  });

  test('the overall cap: addresses no peer lists get pendingTotal - pendingReservedForPeers, the peers the rest', async () => {
    const proxy = await startProxy({
      archivePort: archive.archive.port,
      pki,
      peers: `  SCU: { addresses: [${PEER}, 127.0.0.6], services: [echo] }`,
      limits:
        '{ pendingPerAddress: 3, pendingTotal: 8, pendingReservedForPeers: 3, associationRequestTimeout: 10s }',
    });
    const refused = refusals(proxy);
    const held: RawScu[] = [];
    try {
      // Two unknown hosts: 5 connections in all (8 - 3) are held, the sixth is closed at once.
      held.push(...(await openMany(proxy.port, STRANGER, 3)));
      const second = await openMany(proxy.port, '127.0.0.3', 3);
      held.push(...second);
      await allClosed(second.slice(2), 2000);
      assert.deepEqual(
        refused.map((r) => [r.remoteAddress, r.reason]),
        [['127.0.0.3', 'pending-limit']],
      );
      await pendingIs(proxy, 'forward', 5);
      // A third unknown host gets nothing; the peer's address still does (the reserve).
      const third = await RawScu.connectFrom(proxy.port, '127.0.0.4');
      await third.waitClosed(2000);
      assert.equal(await echoAssociation(proxy.port), 0x02, 'the peer associates from the reserve');
      // The peer's idle connections fill pendingTotal; its other address is then refused too, and its
      // own address meets its per-address cap first.
      const peerIdle = await openMany(proxy.port, PEER, 3);
      held.push(...peerIdle);
      await pendingIs(proxy, 'forward', 8);
      const otherAddress = await RawScu.connectFrom(proxy.port, '127.0.0.6');
      await otherAddress.waitClosed(2000);
      const fourth = await RawScu.connectFrom(proxy.port, PEER);
      await fourth.waitClosed(2000);
      assert.deepEqual(
        refused.slice(1).map((r) => [r.remoteAddress, r.reason]),
        [
          ['127.0.0.4', 'pending-limit'],
          ['127.0.0.6', 'pending-limit'],
          [PEER, 'per-address-limit'],
        ],
      );
      assert.ok(held.filter((s) => !second.slice(2).includes(s)).every((s) => !s.closed));
      // Room comes back as connections close: the peer's other address associates.
      for (const s of peerIdle) s.destroy();
      await pendingIs(proxy, 'forward', 5);
      assert.equal(await echoAssociation(proxy.port, '127.0.0.6'), 0x02);
    } finally {
      for (const s of held) s.destroy();
      await proxy.close();
    }
  });
});

describe('connections before association, return listener', { timeout: 60_000 }, () => {
  let pki: Pki;
  let proxy: ProxyUnderTest;
  let refused: Refused[];

  before(async () => {
    pki = await standardPki();
    await writeProxyServerCert(pki);
    proxy = await startProxy({
      archivePort: 9, // the forward path is not used here
      pki,
      peers: `  WS: { addresses: [${PEER}], services: [echo], receiver: { host: 127.0.0.1, port: 9 } }`,
      extra: [
        'returnListener:',
        '  host: 127.0.0.1',
        '  port: 0',
        `  tls: { ca: ${pki.files.ca}, cert: ${pki.files['proxy-server']}, key: ${pki.files['proxy-server.key']}, handshakeTimeout: 500ms }`,
        '  callers:',
        `    - { aeTitles: [ARCHIVE], identity: { dns: archive.local }, addresses: [${PEER}] }`,
      ].join('\n'),
    });
    refused = refusals(proxy);
  });
  after(async () => {
    await proxy?.close();
    await removePki(pki);
  });

  test('one unknown host floods the return listener: its excess is closed before any TLS, the archive is served', async () => {
    const before = refused.length;
    const flood = await openMany(proxy.returnPort, STRANGER, 30);
    try {
      await allClosed(flood.slice(8), 2000);
      assert.ok(
        flood.slice(0, 8).every((s) => !s.closed),
        'within pendingPerAddress: open until handshakeTimeout',
      );
      const counted = refused.slice(before);
      assert.equal(counted.length, 22);
      assert.ok(counted.every((r) => r.listener === 'return' && r.reason === 'per-address-limit'));
      // The archive, from its listed address, completes the handshake and gets an answer to its RQ.
      const caller = await RawScu.connectTls(proxy.returnPort, {
        ca: pki.ca.cert,
        cert: pki.archive.cert,
        key: pki.archive.key,
        servername: 'proxy.local',
      });
      try {
        caller.send(associateRq('ARCHIVE', 'WS', [{ id: 1, abstractSyntax: VERIFICATION }]));
        const answer = await caller.next();
        // WS's receiver (port 9) is down: the archive is told so (2/3/1), it is not reset.
        assert.deepEqual(answer, { type: 0x03, result: 2, source: 3, reason: 1 });
      } finally {
        caller.destroy();
      }
    } finally {
      for (const s of flood) s.destroy();
    }
    await pendingIs(proxy, 'return', 0);
  });

  test('stalled TLS handshakes are closed by the proxy at handshakeTimeout, each counted', async () => {
    const baseline = openFds();
    const before = refused.length;
    const stalled = await openMany(proxy.returnPort, PEER, 6); // TCP only: no ClientHello, ever
    try {
      await allClosed(stalled, 5000);
    } finally {
      for (const s of stalled) s.destroy();
    }
    const timeouts = refused.slice(before).filter((r) => r.reason === 'handshake-timeout');
    assert.equal(timeouts.length, 6);
    assert.ok(timeouts.every((r) => r.listener === 'return'));
    const rejected = (proxy.events['tls-client-rejected'] ?? []).filter(
      (e) => e.reason === 'handshake-timeout',
    );
    assert.equal(rejected.length, 6, 'each is a TLS client rejection too (metrics, audit)');
    assert.ok(openFds() <= baseline + 4, `${openFds()} fds open, ${baseline} before`);
  });
});

describe('the count of connections not admitted yet', () => {
  const limits = { pendingPerAddress: 2, pendingTotal: 4, pendingReservedForPeers: 1 };

  test('an IPv4-mapped IPv6 address counts as its IPv4 address, an IPv6 address by its /64', () => {
    assert.equal(sourceKey('::ffff:127.0.0.1'), sourceKey('127.0.0.1'));
    assert.equal(sourceKey('2001:db8:1:2::1'), sourceKey('2001:db8:1:2:ffff::9'));
    assert.notEqual(sourceKey('2001:db8:1:2::1'), sourceKey('2001:db8:1:3::1'));
    assert.equal(sourceKey('::1'), sourceKey('::2'));
  });

  test('per source, unlisted, overall; a released slot is room again, released once', () => {
    const p = new PendingConnections();
    const a = p.take('10.0.0.1', false, limits);
    assert.equal(typeof p.take('10.0.0.1', false, limits), 'object');
    assert.equal(p.take('::ffff:10.0.0.1', false, limits), 'per-address-limit');
    assert.equal(typeof p.take('10.0.0.2', false, limits), 'object');
    assert.equal(p.take('10.0.0.3', false, limits), 'pending-limit', 'unlisted: 4 - 1');
    assert.equal(typeof p.take('10.0.0.9', true, limits), 'object', 'listed: the reserve');
    assert.equal(p.take('10.0.0.8', true, limits), 'pending-limit', 'pendingTotal');
    assert.equal(p.total, 4);
    assert.ok(typeof a === 'object');
    a.release();
    a.release();
    assert.equal(p.total, 3);
    assert.equal(p.fromSource('10.0.0.1'), 1);
    assert.equal(typeof p.take('10.0.0.3', false, limits), 'object');
  });
});
