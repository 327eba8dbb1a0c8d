// `explain`: what a policy answers a calling AE from an address, and which rule decided — each refusal
// next to the accept it differs from; and the same answers from the relay itself (raw A-ASSOCIATE-RQs
// from 127.0.0.1 and 127.0.0.2 to an in-process proxy), so explain cannot drift from what runs.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { parseConfig } from '../../src/config/index.js';
import { compilePolicy } from '../../src/policy/policy.js';
import { explainQuery, formatExplanation, type ExplainQuery } from '../../src/policy/explain.js';
import { freePort } from '../helpers/peers.js';
import {
  proxyYaml,
  removePki,
  standardPki,
  startProxy,
  type ProxyTestOptions,
  type ProxyUnderTest,
  type TestPki,
} from '../helpers/proxy.js';
import { RawScu, associateRq } from '../helpers/raw.js';

const PEERS = [
  '  CT1: { addresses: [127.0.0.1, 10.20.0.15], services: [echo, store] }',
  '  WS1: { addresses: [127.0.0.1], services: [echo, find, move], moveDestinations: [WS1], maxAssociations: 2 }',
  '  PRIV: { addresses: [127.0.0.1], services: [echo], sopClasses: [1.3.12.2.1107.5.9.1] }',
].join('\n');

const CONFIG = parseConfig(
  `
upstreams:
  archive: { host: 127.0.0.1, port: 2762, aeTitle: PACS, tls: { ca: ca.pem, cert: c.pem, key: c.key } }
routes:
  - { calledAeTitle: DICOM_PROXY, upstream: archive }
peers:
${PEERS}
`,
  null,
);
const policy = compilePolicy(CONFIG);
const q = (over: Partial<ExplainQuery>): ExplainQuery => ({
  callingAeTitle: 'CT1',
  remoteAddress: '10.20.0.15',
  calledAeTitle: 'DICOM_PROXY',
  ...over,
});

describe('explain: the policy answer and the rule that decided', () => {
  it('accepts a configured peer from its address on a route, naming the limits that would apply', () => {
    const e = explainQuery(policy, q({}));
    assert.equal(e.association.accepted, true);
    assert.match(
      e.association.answer,
      /^A-ASSOCIATE-AC once the archive accepts \(upstream archive, called AE PACS/,
    );
    assert.match(
      e.association.rule,
      /peers\.CT1\.addresses, routes\[DICOM_PROXY\], limits\.maxAssociationsPerPeer/,
    );
    assert.equal(e.request, undefined);
    const ws = explainQuery(policy, q({ callingAeTitle: 'WS1', remoteAddress: '127.0.0.1' }));
    assert.match(ws.association.rule, /peers\.WS1\.maxAssociations/);
    assert.match(ws.association.reason, /while 2 association\(s\) of WS1/);
  });

  it('refuses an unknown calling AE 1/1/3, a wrong address 1/1/3 and an unrouted called AE 1/1/7', () => {
    const cases: Array<[Partial<ExplainQuery>, string, string, RegExp]> = [
      [{ callingAeTitle: 'CT9' }, 'A-ASSOCIATE-RJ 1/1/3', 'unknown-calling-ae', /^peers \(no entry "CT9"\)$/],
      [
        { remoteAddress: '10.9.9.9' },
        'A-ASSOCIATE-RJ 1/1/3',
        'address-not-allowed',
        /^peers\.CT1\.addresses$/,
      ],
      [
        { calledAeTitle: 'NOWHERE' },
        'A-ASSOCIATE-RJ 1/1/7',
        'unknown-called-ae',
        /routes\[\]\.calledAeTitle/,
      ],
    ];
    for (const [over, answer, refusal, rule] of cases) {
      const e = explainQuery(policy, q({ ...over, service: 'store' }));
      assert.equal(e.association.accepted, false, JSON.stringify(over));
      assert.equal(e.association.answer, answer);
      assert.equal(e.association.refusal, refusal);
      assert.match(e.association.rule, rule);
      assert.equal(e.request, undefined, 'no request on a refused association');
    }
  });

  it('a service: allowed, its context refused (result 3), a refused move destination 0xA801; private SOP classes', () => {
    const store = explainQuery(policy, q({ service: 'store' })).request;
    assert.deepEqual(
      [store?.command, store?.allowed, store?.rule],
      ['C-STORE-RQ', true, 'peers.CT1.services [echo, store]'],
    );
    const mr = explainQuery(policy, q({ service: '1.2.840.10008.5.1.4.1.1.4' })).request;
    assert.deepEqual(
      [mr?.command, mr?.sopClassUid, mr?.allowed],
      ['C-STORE-RQ', '1.2.840.10008.5.1.4.1.1.4', true],
    );
    const find = explainQuery(policy, q({ service: 'find' })).request;
    assert.equal(find?.allowed, false);
    assert.match(find?.answer ?? '', /result 3, abstract syntax not supported.*A-ASSOCIATE-RJ 1\/1\/1/);
    const ws = { callingAeTitle: 'WS1', remoteAddress: '127.0.0.1' };
    const moveOk = explainQuery(policy, q({ ...ws, service: 'move', moveDestination: 'WS1' })).request;
    assert.deepEqual(
      [moveOk?.allowed, moveOk?.rule],
      [true, 'peers.WS1.services [echo, find, move], peers.WS1.moveDestinations'],
    );
    const moveBad = explainQuery(policy, q({ ...ws, service: 'move', moveDestination: 'EVIL' })).request;
    assert.equal(moveBad?.allowed, false);
    assert.equal(
      moveBad?.answer,
      'C-MOVE-RSP status 0xA801 (Refused: Move Destination unknown) from the proxy; nothing reaches the archive',
    );
    assert.equal(moveBad?.rule, 'peers.WS1.moveDestinations');
    const priv = { callingAeTitle: 'PRIV', remoteAddress: '127.0.0.1' };
    assert.equal(explainQuery(policy, q({ ...priv, service: '1.3.12.2.1107.5.9.1' })).request?.allowed, true);
    assert.equal(explainQuery(policy, q({ ...priv, service: 'store' })).request?.allowed, false);
    const text = formatExplanation(
      q({ ...ws, service: 'move', moveDestination: 'EVIL' }),
      explainQuery(policy, q({ ...ws, service: 'move', moveDestination: 'EVIL' })),
    );
    assert.match(text, /^association WS1@127\.0\.0\.1 -> DICOM_PROXY: ACCEPT\n/);
    assert.match(
      text,
      /\nC-MOVE-RQ 1\.2\.840\.10008\.5\.1\.4\.1\.2\.2\.2: REFUSE\n {2}answer: C-MOVE-RSP status 0xA801/,
    );
  });
});

describe('explain agrees with the relay', { timeout: 60_000 }, () => {
  let pki: TestPki;
  let proxy: ProxyUnderTest;
  let options: ProxyTestOptions;
  before(async () => {
    pki = await standardPki();
    // The archive port is closed: an association the policy admits is answered 2/3/1 (archive unreachable).
    options = { archivePort: await freePort(), pki, peers: PEERS, connectTimeout: '2s' };
    proxy = await startProxy(options);
  });
  after(async () => {
    await proxy?.close();
    await removePki(pki);
  });

  /** What the relay answers a raw A-ASSOCIATE-RQ: 'A-ASSOCIATE-RJ r/s/x'. */
  async function relayAnswer(calling: string, from: string, called: string, sop: string): Promise<string> {
    const scu = await RawScu.connectFrom(proxy.port, from);
    try {
      scu.send(associateRq(calling, called, [{ id: 1, abstractSyntax: sop }]));
      const pdu = await scu.next(10_000);
      assert.ok(pdu && pdu.type === 0x03, `expected an A-ASSOCIATE-RJ, got ${JSON.stringify(pdu?.type)}`);
      return `A-ASSOCIATE-RJ ${pdu.result}/${pdu.source}/${pdu.reason}`;
    } finally {
      scu.destroy();
    }
  }

  it('the same refusals, and "accepted" exactly where the relay goes on to the archive', async () => {
    const cases: Array<[string, string, string, string]> = [
      ['CT9', '127.0.0.1', 'DICOM_PROXY', 'store'],
      ['CT1', '127.0.0.2', 'DICOM_PROXY', 'store'],
      ['CT1', '127.0.0.1', 'NOWHERE', 'store'],
      ['CT1', '127.0.0.1', 'DICOM_PROXY', 'find'], // its only context refused: 1/1/1
      ['CT1', '127.0.0.1', 'DICOM_PROXY', 'store'], // admitted: on to the (unreachable) archive
    ];
    const running = compilePolicy(parseConfig(proxyYaml(options), null)); // the proxy's own configuration
    for (const [calling, from, called, service] of cases) {
      const e = explainQuery(running, {
        callingAeTitle: calling,
        remoteAddress: from,
        calledAeTitle: called,
        service,
      });
      const sop = e.request?.sopClassUid ?? '1.2.840.10008.5.1.4.1.1.2';
      const got = await relayAnswer(calling, from, called, sop);
      const expected = !e.association.accepted
        ? e.association.answer
        : e.request && !e.request.allowed
          ? 'A-ASSOCIATE-RJ 1/1/1'
          : 'A-ASSOCIATE-RJ 2/3/1';
      assert.equal(got, expected, `${calling}@${from} -> ${called} ${service}`);
    }
  });
});
