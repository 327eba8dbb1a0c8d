// PROXY protocol (v1 and v2) in front of the listeners: the header is read only from configured load
// balancers, and the client it names is the address the AE binding, limits, logs and events use. Each
// refusal next to the twin it is told apart from. 127.0.0.1 plays the load balancer, 127.0.0.2 the
// modality behind it (the only address its AE title is bound to), 127.0.0.3 a host that is neither.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as net from 'node:net';
import * as tls from 'node:tls';
import fc from 'fast-check';
import {
  PROXY_V1_MAX,
  PROXY_V2_SIGNATURE,
  encodeProxyV2,
  parseProxyHeader,
} from '../../src/relay/proxy-protocol.js';
import type { ProxyEventMap } from '../../src/observe/events.js';
import type { Pdu } from '../../src/pdu/types.js';
import { RawScu, associateRq, VERIFICATION } from '../helpers/raw.js';
import { startTestArchive, type TestArchive } from '../helpers/instances.js';
import {
  removePki,
  standardPki,
  startProxy,
  type ProxyUnderTest,
  writeProxyServerCert,
} from '../helpers/proxy.js';
import { ManualClock } from '../helpers/clock.js';

const BALANCER = '127.0.0.1';
const MODALITY = '127.0.0.2';
const OTHER = '127.0.0.3';

describe('PROXY protocol header parser', () => {
  test('v1: TCP4, TCP6 and UNKNOWN; the bytes after the line are not consumed', () => {
    const v4 = Buffer.from('PROXY TCP4 10.1.2.3 10.0.0.1 40001 11112\r\n\x01\x00');
    assert.deepEqual(parseProxyHeader(v4), {
      kind: 'header',
      version: 1,
      length: v4.length - 2,
      source: { address: '10.1.2.3', port: 40001 },
    });
    const v6 = parseProxyHeader(Buffer.from('PROXY TCP6 2001:db8::0:1 2001:db8::2 5 6\r\n'));
    assert.deepEqual(v6.kind === 'header' && v6.source, { address: '2001:db8::1', port: 5 });
    const unknown = parseProxyHeader(Buffer.from('PROXY UNKNOWN\r\n'));
    assert.deepEqual(unknown, { kind: 'header', version: 1, length: 15, source: null });
  });

  test('v2: PROXY over TCP4 and TCP6 with TLVs, LOCAL; an IPv4-mapped client as a socket reports it', () => {
    const h = encodeProxyV2({ address: '10.9.8.7', port: 4242 }, { address: '10.0.0.1', port: 11112 });
    assert.deepEqual(parseProxyHeader(Buffer.concat([h, Buffer.from([0x01])])), {
      kind: 'header',
      version: 2,
      length: 28,
      source: { address: '10.9.8.7', port: 4242 },
    });
    // A TLV (type 0x04 NOOP, 3 bytes) after the addresses is counted in the length and skipped.
    const withTlv = Buffer.from(h);
    withTlv.writeUInt16BE(12 + 6, 14);
    const tlv = Buffer.concat([withTlv, Buffer.from([0x04, 0x00, 0x03, 1, 2, 3])]);
    const r = parseProxyHeader(tlv);
    assert.equal(r.kind === 'header' && r.length, tlv.length);
    const v6 = parseProxyHeader(encodeProxyV2({ address: '::ffff:192.0.2.5', port: 1 }));
    assert.deepEqual(v6.kind === 'header' && v6.source, { address: '::ffff:192.0.2.5', port: 1 });
    assert.deepEqual(parseProxyHeader(encodeProxyV2(null)), {
      kind: 'header',
      version: 2,
      length: 16,
      source: null,
    });
  });

  test('refuses: wrong version, unknown command, a v1 line past 107 bytes, bad addresses and ports', () => {
    const bad = (b: Buffer): string => {
      const r = parseProxyHeader(b);
      assert.equal(r.kind, 'invalid', `${b.toString('latin1')}: ${JSON.stringify(r)}`);
      return r.kind === 'invalid' ? r.message : '';
    };
    const h = encodeProxyV2({ address: '10.0.0.9', port: 1 });
    assert.match(bad(Buffer.concat([h.subarray(0, 12), Buffer.from([0x11]), h.subarray(13)])), /version 1/);
    assert.match(bad(Buffer.concat([h.subarray(0, 12), Buffer.from([0x22]), h.subarray(13)])), /command 2/);
    const huge = Buffer.from(h);
    huge.writeUInt16BE(0xffff, 14);
    assert.match(bad(huge), /exceeds/);
    assert.match(bad(Buffer.from(`PROXY TCP4 ${'1'.repeat(PROXY_V1_MAX)}`)), /longer than 107/);
    assert.match(bad(Buffer.from('PROXY TCP4 10.0.0.1 10.0.0.2 99999 1\r\n')), /port/);
    assert.match(bad(Buffer.from('PROXY TCP4 010.0.0.1 10.0.0.2 1 1\r\n')), /address/);
    assert.match(bad(Buffer.from('PROXY TCP6 10.0.0.1 10.0.0.2 1 1\r\n')), /address/);
  });

  test('tells a header apart from DICOM and TLS by the first bytes; waits while a prefix still fits', () => {
    assert.equal(parseProxyHeader(Buffer.from([0x01, 0x00, 0x00])).kind, 'absent'); // A-ASSOCIATE-RQ
    assert.equal(parseProxyHeader(Buffer.from([0x16, 0x03, 0x01])).kind, 'absent'); // TLS ClientHello
    assert.equal(parseProxyHeader(Buffer.from('PROX')).kind, 'incomplete');
    assert.equal(parseProxyHeader(PROXY_V2_SIGNATURE.subarray(0, 7)).kind, 'incomplete');
    assert.equal(parseProxyHeader(Buffer.from('PRIVATE')).kind, 'absent');
  });

  test('property: any bytes give an answer without throwing; every encoded header reads back', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => {
        const withSig = Buffer.concat([PROXY_V2_SIGNATURE, Buffer.from(bytes)]);
        for (const b of [
          Buffer.from(bytes),
          withSig,
          Buffer.concat([Buffer.from('PROXY '), Buffer.from(bytes)]),
        ]) {
          const r = parseProxyHeader(b);
          if (r.kind === 'header') assert.ok(r.length <= b.length);
        }
      }),
      { numRuns: 2000 },
    );
    fc.assert(
      fc.property(fc.oneof(fc.ipV4(), fc.ipV6()), fc.integer({ min: 0, max: 65535 }), (address, port) => {
        const r = parseProxyHeader(encodeProxyV2({ address, port }));
        assert.equal(r.kind, 'header');
        assert.equal(r.kind === 'header' && r.source?.port, port);
      }),
      { numRuns: 500 },
    );
  });
});

type Refused = ProxyEventMap['connection-refused'][0];

describe('PROXY protocol on the forward listener', { timeout: 60_000 }, () => {
  let pki: Awaited<ReturnType<typeof standardPki>>;
  let archive: TestArchive;
  let proxy: ProxyUnderTest;
  const clock = new ManualClock();
  before(async () => {
    pki = await standardPki();
    archive = await startTestArchive(pki);
    proxy = await startProxy({
      archivePort: archive.archive.port,
      pki,
      clock,
      listenExtra: `proxyProtocol: { from: [${BALANCER}/32], headerTimeout: 5s }`,
      peers: `  CT_ROOM1: { addresses: [${MODALITY}], services: [echo] }`,
    });
  });
  after(async () => {
    await proxy?.close();
    await archive?.close();
    await removePki(pki);
  });

  /** Associate as CT_ROOM1 over a connection from `from` that first sends `preamble`. */
  async function associate(from: string, preamble: Buffer | null): Promise<number | null> {
    const scu = await RawScu.connectFrom(proxy.port, from);
    try {
      scu.send(
        Buffer.concat([
          ...(preamble ? [preamble] : []),
          associateRq('CT_ROOM1', 'DICOM_PROXY', [{ id: 1, abstractSyntax: VERIFICATION }]),
        ]),
      );
      const answer = await scu.next();
      return answer?.type ?? null;
    } finally {
      scu.destroy();
    }
  }

  function refusedSince(n: number): Refused[] {
    return (proxy.events['connection-refused'] ?? []).slice(n);
  }

  async function refusalAfter(n: number): Promise<Refused> {
    const deadline = Date.now() + 5000;
    while (refusedSince(n).length === 0) {
      if (Date.now() > deadline) throw new Error('no connection-refused event');
      await new Promise((r) => setTimeout(r, 10));
    }
    return refusedSince(n)[0] as Refused;
  }

  test('accepts: the balancer names the bound address (v2, and v1 in the same read as the RQ); refuses: it names another', async () => {
    const v2 = encodeProxyV2({ address: MODALITY, port: 40000 }, { address: '127.0.0.1', port: proxy.port });
    assert.equal(await associate(BALANCER, v2), 0x02, 'A-ASSOCIATE-AC');
    const accepted = (proxy.events['association-accepted'] ?? []).at(-1);
    assert.equal(accepted?.remoteAddress, MODALITY, 'the event names the client, not the balancer');
    const v1 = Buffer.from(`PROXY TCP4 ${MODALITY} 127.0.0.1 40001 ${proxy.port}\r\n`);
    assert.equal(await associate(BALANCER, v1), 0x02);
    // Twin: the same balancer naming a client the AE title is not bound to.
    const other = encodeProxyV2({ address: OTHER, port: 40002 });
    assert.equal(await associate(BALANCER, other), 0x03, 'A-ASSOCIATE-RJ');
    const rejected = (proxy.events['association-refused'] ?? []).at(-1);
    assert.equal(rejected?.remoteAddress, OTHER);
    assert.equal(rejected?.refusal, 'address-not-allowed');
  });

  test('refuses: a connection from the balancer without a header (proxy-header-missing)', async () => {
    const n = refusedSince(0).length;
    assert.equal(await associate(BALANCER, null), null, 'closed, no PDU');
    const r = await refusalAfter(n);
    assert.deepEqual([r.reason, r.remoteAddress], ['proxy-header-missing', BALANCER]);
  });

  test('refuses: a header from an address that is not a balancer (proxy-header-untrusted); accepts: that address without one', async () => {
    const n = refusedSince(0).length;
    const claim = encodeProxyV2({ address: MODALITY, port: 1 });
    assert.equal(await associate(OTHER, claim), null, 'closed, no PDU');
    const r = await refusalAfter(n);
    assert.deepEqual([r.reason, r.remoteAddress], ['proxy-header-untrusted', OTHER]);
    // Direct connections are still served on a listener with PROXY protocol: the modality itself.
    assert.equal(await associate(MODALITY, null), 0x02);
  });

  test('refuses: a malformed header from the balancer (proxy-header-invalid)', async () => {
    const n = refusedSince(0).length;
    assert.equal(await associate(BALANCER, Buffer.from('PROXY TCP4 nonsense\r\n')), null);
    const r = await refusalAfter(n);
    assert.equal(r.reason, 'proxy-header-invalid');
    assert.match(r.message, /malformed/);
  });

  test('refuses: a balancer connection that sends half a header and stalls (proxy-header-timeout)', async () => {
    const n = refusedSince(0).length;
    const armed = clock.armed;
    const scu = await RawScu.connectFrom(proxy.port, BALANCER);
    try {
      scu.send(encodeProxyV2({ address: MODALITY, port: 2 }).subarray(0, 20));
      await clock.untilArmed(armed + 1);
      clock.advance(4999);
      assert.equal(refusedSince(n).length, 0, 'not before headerTimeout');
      clock.advance(1);
      const r = await refusalAfter(n);
      assert.equal(r.reason, 'proxy-header-timeout');
      await scu.waitClosed();
    } finally {
      scu.destroy();
    }
  });
});

describe(
  'PROXY protocol on the return listener (the header before the TLS handshake)',
  { timeout: 60_000 },
  () => {
    let pki: Awaited<ReturnType<typeof standardPki>>;
    let proxy: ProxyUnderTest;
    before(async () => {
      pki = await standardPki();
      await writeProxyServerCert(pki);
      proxy = await startProxy({
        archivePort: 9,
        pki,
        peers: `  WS: { addresses: [${MODALITY}], services: [echo], receiver: { host: 127.0.0.1, port: 9 } }`,
        extra: [
          'returnListener:',
          '  host: 127.0.0.1',
          '  port: 0',
          `  tls: { ca: ${pki.files.ca}, cert: ${pki.files['proxy-server']}, key: ${pki.files['proxy-server.key']} }`,
          '  callers:',
          `    - { aeTitles: [ARCHIVE], identity: { dns: archive.local }, addresses: [${MODALITY}] }`,
          `  proxyProtocol: { from: [${BALANCER}] }`,
        ].join('\n'),
      });
    });
    after(async () => {
      await proxy?.close();
      await removePki(pki);
    });

    /** The archive calls through the balancer: TCP from 127.0.0.1, the header, then mutual TLS. */
    async function callThrough(client: string): Promise<Pdu | null> {
      const tcp = await new Promise<net.Socket>((resolve, reject) => {
        const s = net.connect({ port: proxy.returnPort, host: '127.0.0.1', localAddress: BALANCER }, () =>
          resolve(s),
        );
        s.once('error', reject);
      });
      tcp.write(encodeProxyV2({ address: client, port: 50000 }));
      const caller = await new Promise<RawScu>((resolve, reject) => {
        const s = tls.connect(
          {
            socket: tcp,
            ca: pki.ca.cert,
            cert: pki.archive.cert,
            key: pki.archive.key,
            servername: 'proxy.local',
          },
          () => resolve(RawScu.attach(s)),
        );
        s.once('error', reject);
      });
      try {
        caller.send(associateRq('ARCHIVE', 'WS', [{ id: 1, abstractSyntax: VERIFICATION }]));
        return await caller.next();
      } finally {
        caller.destroy();
      }
    }

    test('accepts: the caller bound to 127.0.0.2 behind the balancer passes the policy; refuses: the same caller named as 127.0.0.3', async () => {
      // WS's receiver does not listen: past the policy, the answer is the transient 2/3/1 of an unreachable target.
      const passed = await callThrough(MODALITY);
      assert.ok(passed?.type === 0x03, `expected A-ASSOCIATE-RJ, got ${JSON.stringify(passed)}`);
      assert.deepEqual([passed.result, passed.source, passed.reason], [2, 3, 1]);
      assert.equal((proxy.events['association-refused'] ?? []).length, 0, 'not refused by the policy');
      const refused = await callThrough(OTHER);
      assert.ok(refused?.type === 0x03);
      assert.deepEqual([refused.result, refused.source, refused.reason], [1, 1, 3]);
      const r = proxy.events['association-refused']?.[0];
      assert.deepEqual([r?.refusal, r?.remoteAddress], ['address-not-allowed', OTHER]);
    });
  },
);
