// PS3.8 Table 9-10 conformance, table-driven: every PDU type (and an unrecognized one) is sent in every
// state a peer can put a leg in, on both legs of both listeners, and the answer seen on the wire — by the
// sender and by the peer on the other leg — is the one the table's action calls for. The expectations
// come from the action of each cell (fsm.ts TRANSITIONS), translated into what a peer observes; a second
// test pins the cells themselves to the standard's table so that a wrong cell cannot pass both.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  decodePdu,
  encodeAbort,
  encodeAssociateRj,
  encodePdu,
  encodeReleaseRp,
  encodeReleaseRq,
} from '../../src/pdu/codec.js';
import type { AssociatePdu, Pdu } from '../../src/pdu/types.js';
import { encodeCommand } from '../../src/dimse/command.js';
import { PDU_EVENTS, TRANSITIONS, transition, type UlEvent, type UlState } from '../../src/relay/fsm.js';
import { RawScu, associateRq, pdata, startRawServer, VERIFICATION, type RawServer } from '../helpers/raw.js';
import { acceptAll } from '../helpers/scripted-archive.js';
import {
  removePki,
  standardPki,
  startProxy,
  type ProxyUnderTest,
  writeProxyServerCert,
} from '../helpers/proxy.js';

type Pki = Awaited<ReturnType<typeof standardPki>>;
type Listener = 'forward' | 'return';
type Leg = 'down' | 'up';

/** The states a peer can drive each leg into (Sta1/Sta4 have no transport to send on; Sta9–12 are
 * release collisions, reached from Sta7 by the AR-8 cases below). */
const DOWN_STATES: UlState[] = ['Sta2', 'Sta3', 'Sta6', 'Sta7', 'Sta8', 'Sta13'];
const UP_STATES: UlState[] = ['Sta5', 'Sta6', 'Sta7', 'Sta8', 'Sta13'];

const ARTIM = 600; // limits.associationRequestTimeout for this test, in ms

interface Scene {
  /** The peer that sends the PDU under test (the leg's remote end). */
  near: RawScu;
  /** The peer on the other leg, when it is connected. */
  far: RawScu | null;
}

describe(
  'PS3.8 Table 9-10: every PDU in every reachable state, both legs, both listeners',
  { timeout: 240_000 },
  () => {
    let pki: Pki;
    let archive: RawServer;
    let receiver: RawServer;
    let proxy: ProxyUnderTest;

    before(async () => {
      pki = await standardPki();
      await writeProxyServerCert(pki);
      archive = await startRawServer({
        ca: pki.ca.cert,
        cert: pki.archive.cert,
        key: pki.archive.key,
        requestCert: true,
        rejectUnauthorized: true,
      });
      receiver = await startRawServer(null);
      proxy = await startProxy({
        archivePort: archive.port,
        pki,
        peers: [
          '  SCU: { addresses: [127.0.0.1], services: [echo] }',
          `  WS: { addresses: [127.0.0.1], services: [echo], receiver: { host: 127.0.0.1, port: ${receiver.port} } }`,
        ].join('\n'),
        limits: `{ associationRequestTimeout: ${ARTIM}ms, idleTimeout: 30s }`,
        extra: [
          'returnListener:',
          '  host: 127.0.0.1',
          '  port: 0',
          `  tls: { ca: ${pki.files.ca}, cert: ${pki.files['proxy-server']}, key: ${pki.files['proxy-server.key']}, handshakeTimeout: 3s }`,
          '  callers:',
          '    - { aeTitles: [ARCHIVE], identity: { dns: archive.local } }',
        ].join('\n'),
      });
    });

    after(async () => {
      await proxy?.close();
      archive?.close();
      receiver?.close();
      await removePki(pki);
    });

    const names = (l: Listener) =>
      l === 'forward' ? { calling: 'SCU', called: 'DICOM_PROXY' } : { calling: 'ARCHIVE', called: 'WS' };

    async function connectDown(l: Listener): Promise<RawScu> {
      if (l === 'forward') return RawScu.connect(proxy.port);
      return RawScu.connectTls(proxy.returnPort, {
        ca: pki.ca.cert,
        cert: pki.archive.cert,
        key: pki.archive.key,
        servername: 'proxy.local',
      });
    }

    const upstreamOf = (l: Listener): RawServer => (l === 'forward' ? archive : receiver);

    /** Until every association of the previous case has ended, so events and sockets do not mix. */
    async function quiet(): Promise<void> {
      const deadline = Date.now() + 10_000;
      while (proxy.server.liveAssociations > 0) {
        if (Date.now() > deadline) throw new Error('an association of the previous case is still live');
        await new Promise((r) => setTimeout(r, 20));
      }
    }

    /** The summary of the association under test, once it has ended. */
    async function lastSummary() {
      await quiet();
      const all = proxy.events['association-closed'] ?? [];
      const last = all[all.length - 1];
      assert.ok(last, 'an association summary');
      return last;
    }

    const rqFor = (l: Listener): Buffer =>
      associateRq(names(l).calling, names(l).called, [{ id: 1, abstractSyntax: VERIFICATION }]);

    /** Drive the leg into `state` with real PDUs; returns the peers. */
    async function reach(l: Listener, leg: Leg, state: UlState): Promise<Scene> {
      const modality = await connectDown(l);
      if (leg === 'down' && state === 'Sta2') return { near: modality, far: null };
      if (leg === 'down' && state === 'Sta13') {
        // Refused (calling AE unknown): A-ASSOCIATE-RJ, then the proxy awaits the close (AE-8).
        modality.send(associateRq('NOBODY', names(l).called, [{ id: 1, abstractSyntax: VERIFICATION }]));
        assert.equal((await modality.next())?.type, 0x03);
        return { near: modality, far: null };
      }
      modality.send(rqFor(l));
      const up = await upstreamOf(l).accept();
      const rq = (await up.next()) as AssociatePdu;
      assert.equal(rq.type, 0x01);
      const scene = (near: RawScu, far: RawScu): Scene => ({ near, far });
      const pair = (): Scene => (leg === 'down' ? scene(modality, up) : scene(up, modality));
      if (state === 'Sta3' || state === 'Sta5') return pair();
      up.send(encodePdu(acceptAll(rq)));
      assert.equal((await modality.next())?.type, 0x02);
      if (state === 'Sta6') return pair();
      if ((leg === 'down' && state === 'Sta8') || (leg === 'up' && state === 'Sta7')) {
        modality.send(encodeReleaseRq()); // the modality releases: relayed, the archive does not answer yet
        assert.equal((await up.next())?.type, 0x05);
        return pair();
      }
      if ((leg === 'down' && state === 'Sta7') || (leg === 'up' && state === 'Sta8')) {
        up.send(encodeReleaseRq()); // the archive releases: relayed to the modality
        assert.equal((await modality.next())?.type, 0x05);
        return pair();
      }
      if (leg === 'up' && state === 'Sta13') {
        modality.send(encodeAbort(0, 0)); // AA-3 on the modality leg -> AA-1 toward the archive
        assert.deepEqual(await up.next(), { type: 0x07, source: 0, reason: 0 });
        return { near: up, far: modality };
      }
      throw new Error(`cannot reach ${leg} ${state}`);
    }

    /** The PDU of each kind, as this peer would send it. */
    function pduOf(event: UlEvent, l: Listener, leg: Leg): Buffer {
      switch (event) {
        case 'associate-rq-pdu':
          return rqFor(l);
        case 'associate-ac-pdu':
          return encodePdu(acceptAll(decodePdu(rqFor(l)) as AssociatePdu));
        case 'associate-rj-pdu':
          return encodeAssociateRj(1, 1, 1);
        case 'p-data-pdu':
          // A C-ECHO-RQ on the accepted Verification context (a request, so correlation does not object).
          return pdata(
            1,
            true,
            true,
            encodeCommand({
              commandField: 0x0030,
              messageId: leg === 'down' ? 7 : 9,
              affectedSopClassUid: VERIFICATION,
              commandDataSetType: 0x0101,
            }),
          );
        case 'release-rq-pdu':
          return encodeReleaseRq();
        case 'release-rp-pdu':
          return encodeReleaseRp();
        case 'abort-pdu':
          return encodeAbort(0, 0);
        case 'invalid-pdu':
          return Buffer.from([0x09, 0, 0, 0, 0, 4, 0, 0, 0, 0]); // PDU type 09: unrecognized
        default:
          throw new Error(event);
      }
    }

    const sideOf = (leg: Leg) => (leg === 'down' ? 'modality' : 'archive');

    /** What the sender and the other peer must see for the table's action. */
    async function observe(
      l: Listener,
      leg: Leg,
      state: UlState,
      event: UlEvent,
      s: Scene,
      errorsBefore: number,
    ): Promise<void> {
      const role = leg === 'down' ? 'acceptor' : 'requestor';
      const step = transition(role, state, event);
      assert.ok(step, `the table has a cell for ${event} in ${state}`);
      const where = `${l} ${leg} ${state} ${event} -> ${step.action}`;
      const reason = event === 'invalid-pdu' ? 1 : 2; // PS3.8 9.3.8: unrecognized PDU / unexpected PDU
      const errors = () => (proxy.events['protocol-error'] ?? []).slice(errorsBefore);
      switch (step.action) {
        case 'AA-8': {
          assert.deepEqual(await s.near.next(), { type: 0x07, source: 2, reason }, where);
          await s.near.waitClosed(ARTIM * 4);
          if (s.far) {
            const farSees = await s.far.next();
            if (leg === 'up' && state === 'Sta5') {
              // The modality awaits the A-ASSOCIATE-AC: it gets 2/3/1, so it retries later.
              assert.deepEqual(farSees, { type: 0x03, result: 2, source: 3, reason: 1 }, where);
            } else {
              assert.deepEqual(farSees, { type: 0x07, source: 2, reason: 0 }, where);
            }
          }
          const e = errors().find((x) => x.side === sideOf(leg));
          assert.ok(e, `${where}: a protocol-error log line for the ${sideOf(leg)}`);
          assert.equal(e.abortReason, reason, where);
          return;
        }
        case 'AA-1': // Sta2: the modality sent something before its A-ASSOCIATE-RQ
        case 'AA-7': {
          // AA-7: after the end, an A-ASSOCIATE-RQ or an unrecognized PDU is answered with A-ABORT.
          assert.deepEqual(await s.near.next(), { type: 0x07, source: 2, reason }, where);
          const e = errors().find((x) => x.side === sideOf(leg));
          assert.ok(e, `${where}: a protocol-error log line for the ${sideOf(leg)}`);
          return;
        }
        case 'AA-6': // ignored: nothing is sent; the proxy closes when ARTIM runs out
        case 'AA-2': // the sender's A-ABORT in Sta2 / Sta13: the transport is closed, nothing sent
          assert.equal(await s.near.next(ARTIM * 5), null, `${where}: nothing answered, then closed`);
          return;
        case 'AA-3': {
          assert.equal(await s.near.next(ARTIM * 5), null, `${where}: the sender's transport is closed`);
          if (s.far)
            assert.deepEqual(await s.far.next(), { type: 0x07, source: 0, reason: 0 }, `${where}: relayed`);
          const summary = await lastSummary();
          assert.equal(
            summary.outcome,
            leg === 'down' ? 'aborted-by-modality' : 'aborted-by-archive',
            `${where}: ${summary.reason}`,
          );
          return;
        }
        case 'AE-6': // the A-ASSOCIATE-RQ: forwarded (with the upstream's AE title)
          assert.equal((await (await upstreamOf(l).accept()).next())?.type, 0x01, where);
          return;
        case 'AE-3': // the archive's A-ASSOCIATE-AC: the modality gets an AC
          assert.equal((await (s.far as RawScu).next())?.type, 0x02, where);
          return;
        case 'AE-4': // the archive's A-ASSOCIATE-RJ: relayed unchanged
          assert.deepEqual(
            await (s.far as RawScu).next(),
            { type: 0x03, result: 1, source: 1, reason: 1 },
            where,
          );
          return;
        case 'DT-2':
        case 'AR-6': {
          // P-DATA-TF: relayed to the other leg unchanged.
          const got = await (s.far as RawScu).next();
          assert.equal(got?.type, 0x04, where);
          return;
        }
        case 'AR-2': // A-RELEASE-RQ: relayed
          assert.equal((await (s.far as RawScu).next())?.type, 0x05, where);
          return;
        case 'AR-3': // A-RELEASE-RP answering ours: the other peer gets its RP, the sender is closed
          assert.equal((await (s.far as RawScu).next())?.type, 0x06, where);
          assert.equal(await s.near.next(ARTIM * 5), null, `${where}: the sender's transport is closed`);
          assert.equal((await lastSummary()).outcome, 'released', where);
          return;
        case 'AR-8': {
          // Release collision (PS3.8 9.2.3): requestor side answers A-RELEASE-RP at once (AR-9, Sta11);
          // acceptor side waits for the peer's RP (Sta10 -> AR-10), then answers both legs.
          if (role === 'requestor') {
            assert.equal((await s.near.next())?.type, 0x06, `${where}: AR-9`);
            s.near.send(encodeReleaseRp()); // Sta11 + RP -> AR-3; the modality then gets its RP
            assert.equal((await (s.far as RawScu).next())?.type, 0x06, `${where}: RP to the other leg`);
          } else {
            s.near.send(encodeReleaseRp()); // Sta10 + RP -> AR-10 -> Sta12 -> AR-4
            assert.equal((await s.near.next())?.type, 0x06, `${where}: AR-4 after AR-10`);
            assert.equal(
              (await (s.far as RawScu).next())?.type,
              0x06,
              `${where}: the archive's release answered`,
            );
          }
          return;
        }
        default:
          assert.fail(`${where}: no observation for ${step.action}`);
      }
    }

    for (const l of ['forward', 'return'] as const) {
      for (const leg of ['down', 'up'] as const) {
        for (const state of leg === 'down' ? DOWN_STATES : UP_STATES) {
          test(`${l} listener, ${leg === 'down' ? 'acceptor leg (toward the requestor)' : 'requestor leg (toward the acceptor)'} in ${state}: each PDU answered as Table 9-10 says`, async () => {
            for (const event of PDU_EVENTS) {
              await quiet();
              const errorsBefore = (proxy.events['protocol-error'] ?? []).length;
              const s = await reach(l, leg, state);
              try {
                s.near.send(pduOf(event, l, leg));
                await observe(l, leg, state, event, s, errorsBefore);
              } finally {
                s.near.destroy();
                s.far?.destroy();
              }
            }
          });
        }
      }
    }
  },
);

describe('the transition table is PS3.8 Table 9-10', () => {
  // Cells checked against the standard's table one by one (the rest follow the same column patterns).
  const cells: Array<[UlEvent, UlState, string]> = [
    ['associate-ac-pdu', 'Sta2', 'AA-1'],
    ['associate-ac-pdu', 'Sta5', 'AE-3'],
    ['associate-ac-pdu', 'Sta6', 'AA-8'],
    ['associate-ac-pdu', 'Sta13', 'AA-6'],
    ['associate-rj-pdu', 'Sta5', 'AE-4'],
    ['associate-rq-pdu', 'Sta2', 'AE-6'],
    ['associate-rq-pdu', 'Sta6', 'AA-8'],
    ['associate-rq-pdu', 'Sta13', 'AA-7'],
    ['p-data-pdu', 'Sta2', 'AA-1'],
    ['p-data-pdu', 'Sta3', 'AA-8'],
    ['p-data-pdu', 'Sta6', 'DT-2'],
    ['p-data-pdu', 'Sta7', 'AR-6'],
    ['p-data-pdu', 'Sta8', 'AA-8'],
    ['p-data-pdu', 'Sta13', 'AA-6'],
    ['p-data-request', 'Sta6', 'DT-1'],
    ['p-data-request', 'Sta8', 'AR-7'],
    ['release-rq-pdu', 'Sta6', 'AR-2'],
    ['release-rq-pdu', 'Sta7', 'AR-8'],
    ['release-rq-pdu', 'Sta8', 'AA-8'],
    ['release-rp-pdu', 'Sta6', 'AA-8'],
    ['release-rp-pdu', 'Sta7', 'AR-3'],
    ['release-rp-pdu', 'Sta10', 'AR-10'],
    ['release-rp-pdu', 'Sta11', 'AR-3'],
    ['release-response', 'Sta8', 'AR-4'],
    ['release-response', 'Sta9', 'AR-9'],
    ['release-response', 'Sta12', 'AR-4'],
    ['abort-request', 'Sta4', 'AA-2'],
    ['abort-request', 'Sta6', 'AA-1'],
    ['abort-pdu', 'Sta2', 'AA-2'],
    ['abort-pdu', 'Sta6', 'AA-3'],
    ['abort-pdu', 'Sta13', 'AA-2'],
    ['transport-closed', 'Sta2', 'AA-5'],
    ['transport-closed', 'Sta6', 'AA-4'],
    ['transport-closed', 'Sta13', 'AR-5'],
    ['artim-expired', 'Sta2', 'AA-2'],
    ['artim-expired', 'Sta13', 'AA-2'],
    ['invalid-pdu', 'Sta2', 'AA-1'],
    ['invalid-pdu', 'Sta6', 'AA-8'],
    ['invalid-pdu', 'Sta13', 'AA-7'],
  ];
  for (const [event, state, action] of cells) {
    test(`${event} in ${state} is ${action}`, () => {
      assert.equal(TRANSITIONS[event][state], action);
    });
  }

  test('AR-8 goes to Sta9 on the requestor side and Sta10 on the acceptor side', () => {
    assert.equal(transition('requestor', 'Sta7', 'release-rq-pdu')?.next, 'Sta9');
    assert.equal(transition('acceptor', 'Sta7', 'release-rq-pdu')?.next, 'Sta10');
  });

  test('every PDU event has a cell in every state where a transport exists (Sta2, Sta3, Sta5–Sta13)', () => {
    const withTransport: UlState[] = [
      'Sta2',
      'Sta3',
      'Sta5',
      'Sta6',
      'Sta7',
      'Sta8',
      'Sta9',
      'Sta10',
      'Sta11',
      'Sta12',
      'Sta13',
    ];
    for (const e of PDU_EVENTS) {
      for (const s of withTransport) assert.ok(TRANSITIONS[e][s], `${e} in ${s}`);
    }
  });

  // Keep the type import used: the decoded PDU shapes the observations compare against.
  void (null as unknown as Pdu);
});
