import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { parseConfig, type ProxyConfig } from '../../src/config/index.js';
import { parseAddressRange, parseRemoteAddress, rangeContains } from '../../src/config/address.js';
import type { PresentationContextRq } from '../../src/pdu/types.js';
import { compilePolicy, type AdmitDecision, type AdmitRequest } from '../../src/policy/index.js';

const VERIFICATION = '1.2.840.10008.1.1';
const CT_IMAGE_STORAGE = '1.2.840.10008.5.1.4.1.1.2';
const MR_IMAGE_STORAGE = '1.2.840.10008.5.1.4.1.1.4';
const STUDY_ROOT_FIND = '1.2.840.10008.5.1.4.1.2.2.1';
const STUDY_ROOT_MOVE = '1.2.840.10008.5.1.4.1.2.2.2';
const STUDY_ROOT_GET = '1.2.840.10008.5.1.4.1.2.2.3';
const MODALITY_WORKLIST_FIND = '1.2.840.10008.5.1.4.31';
const MPPS = '1.2.840.10008.3.1.2.3.3';
const STORAGE_COMMITMENT = '1.2.840.10008.1.20.1';
const PRIVATE_SOP_CLASS = '1.3.12.2.1107.5.9.1';

const C_STORE_RQ = 0x0001;
const C_STORE_RSP = 0x8001;
const C_GET_RQ = 0x0010;
const C_FIND_RQ = 0x0020;
const C_MOVE_RQ = 0x0021;
const C_ECHO_RQ = 0x0030;
const N_SET_RQ = 0x0120;
const N_ACTION_RQ = 0x0130;
const N_CREATE_RQ = 0x0140;
const C_CANCEL_RQ = 0x0fff;

const CONFIG = parseConfig(
  `
upstreams:
  archive: { host: pacs.example.org, port: 2762, aeTitle: PACS, tls: { ca: ca.pem, cert: c.pem, key: c.key } }
  research: { host: research.example.org, port: 2762, aeTitle: RESEARCH, tls: { ca: ca.pem, cert: c.pem, key: c.key } }
routes:
  - { calledAeTitle: DICOM_PROXY, upstream: archive }
  - { calledAeTitle: RESEARCH_PROXY, upstream: research }
peers:
  CT_ROOM1: { addresses: [10.20.0.15], services: [echo, store] }
  ECHO_ONLY: { addresses: [10.20.0.16], services: [echo] }
  WS_READ3:
    addresses: [10.20.1.0/24]
    services: [echo, find, move, get]
    moveDestinations: [WS_READ3, WS_VIEW]
    maxAssociations: 2
    sopClasses: [${PRIVATE_SOP_CLASS}]
  GET_ONLY: { addresses: ['fd00:20::/64'], services: [get] }
  V6_HOST: { addresses: ['2001:db8::5'], services: [echo] }
  RIS_MOD: { addresses: [10.30.0.0/16], services: [worklist, mpps, commitment, store] }
limits: { maxAssociations: 5, maxAssociationsPerPeer: 3 }
`,
  null,
);

const policy = compilePolicy(CONFIG);

function request(overrides: Partial<AdmitRequest> = {}): AdmitRequest {
  return {
    callingAeTitle: 'CT_ROOM1',
    calledAeTitle: 'DICOM_PROXY',
    remoteAddress: '10.20.0.15',
    activeTotal: 0,
    activeForPeer: () => 0,
    ...overrides,
  };
}

function refused(decision: AdmitDecision): Extract<AdmitDecision, { accepted: false }> {
  assert.equal(decision.accepted, false, 'expected a refusal');
  return decision as Extract<AdmitDecision, { accepted: false }>;
}

function accepted(decision: AdmitDecision): Extract<AdmitDecision, { accepted: true }> {
  assert.equal(decision.accepted, true, `expected acceptance, got ${JSON.stringify(decision)}`);
  return decision as Extract<AdmitDecision, { accepted: true }>;
}

function ctx(id: number, abstractSyntax: string): PresentationContextRq {
  return { id, abstractSyntax, transferSyntaxes: ['1.2.840.10008.1.2'] };
}

describe('admit', () => {
  it('accepts a known peer from its address and routes by called AE title', () => {
    const decision = accepted(policy.admit(request()));
    assert.equal(decision.peer.aeTitle, 'CT_ROOM1');
    assert.equal(decision.route.calledAeTitle, 'DICOM_PROXY');
    assert.equal(decision.upstream.name, 'archive');
    const other = accepted(policy.admit(request({ calledAeTitle: 'RESEARCH_PROXY' })));
    assert.equal(other.upstream.name, 'research');
  });

  it('trims the space and NUL padding of AE titles on the wire', () => {
    const seen: string[] = [];
    const decision = policy.admit(
      request({
        callingAeTitle: 'CT_ROOM1        ',
        calledAeTitle: ' DICOM_PROXY\0\0\0\0',
        activeForPeer: (ae) => {
          seen.push(ae);
          return 0;
        },
      }),
    );
    accepted(decision);
    assert.deepEqual(seen, ['CT_ROOM1']);
  });

  it('refuses an unknown calling AE title with 1/1/3', () => {
    const decision = refused(policy.admit(request({ callingAeTitle: 'INTRUDER' })));
    assert.equal(decision.refusal, 'unknown-calling-ae');
    assert.deepEqual(decision.reject, { result: 1, source: 1, reason: 3 });
    assert.equal(decision.peerAeTitle, null);
  });

  it('treats AE titles as case-sensitive', () => {
    assert.equal(
      refused(policy.admit(request({ callingAeTitle: 'ct_room1' }))).refusal,
      'unknown-calling-ae',
    );
  });

  it('does not treat Object.prototype members as peers or routes', () => {
    assert.equal(
      refused(policy.admit(request({ callingAeTitle: 'toString' }))).refusal,
      'unknown-calling-ae',
    );
    assert.equal(
      refused(policy.admit(request({ calledAeTitle: 'constructor' }))).refusal,
      'unknown-called-ae',
    );
    assert.equal(policy.peer('__proto__'), undefined);
  });

  it('refuses a known AE title from another address with the same 1/1/3 but a distinct refusal', () => {
    const decision = refused(policy.admit(request({ remoteAddress: '10.20.0.99' })));
    assert.equal(decision.refusal, 'address-not-allowed');
    assert.deepEqual(decision.reject, refused(policy.admit(request({ callingAeTitle: 'INTRUDER' }))).reject);
    assert.equal(decision.peerAeTitle, 'CT_ROOM1');
    // An address that belongs to another peer does not help.
    assert.equal(
      refused(policy.admit(request({ remoteAddress: '10.20.0.16' }))).refusal,
      'address-not-allowed',
    );
    assert.equal(
      refused(policy.admit(request({ remoteAddress: 'not-an-address' }))).refusal,
      'address-not-allowed',
    );
  });

  it('refuses a called AE title without a route with 1/1/7', () => {
    const decision = refused(policy.admit(request({ calledAeTitle: 'ANY_SCP' })));
    assert.equal(decision.refusal, 'unknown-called-ae');
    assert.deepEqual(decision.reject, { result: 1, source: 1, reason: 7 });
    assert.equal(decision.peerAeTitle, 'CT_ROOM1');
  });

  it('checks calling AE, then address, then called AE, then the limits', () => {
    const all = {
      callingAeTitle: 'INTRUDER',
      remoteAddress: '192.0.2.1',
      calledAeTitle: 'NOPE',
      activeTotal: 99,
    };
    assert.equal(refused(policy.admit(request(all))).refusal, 'unknown-calling-ae');
    const { callingAeTitle: _c, ...knownAe } = all;
    assert.equal(refused(policy.admit(request(knownAe))).refusal, 'address-not-allowed');
    assert.equal(
      refused(policy.admit(request({ calledAeTitle: 'NOPE', activeTotal: 99 }))).refusal,
      'unknown-called-ae',
    );
    assert.equal(
      refused(policy.admit(request({ activeTotal: 99, activeForPeer: () => 99 }))).refusal,
      'too-many-associations',
    );
  });

  it('refuses at exactly limits.maxAssociations with 2/3/2 and accepts just below', () => {
    accepted(policy.admit(request({ activeTotal: 4 })));
    const decision = refused(policy.admit(request({ activeTotal: 5 })));
    assert.equal(decision.refusal, 'too-many-associations');
    assert.deepEqual(decision.reject, { result: 2, source: 3, reason: 2 });
  });

  it('applies limits.maxAssociationsPerPeer to a peer without its own limit', () => {
    assert.equal(policy.peer('CT_ROOM1')?.maxAssociations, 3);
    accepted(policy.admit(request({ activeForPeer: () => 2 })));
    const decision = refused(policy.admit(request({ activeForPeer: () => 3 })));
    assert.equal(decision.refusal, 'too-many-peer-associations');
    assert.deepEqual(decision.reject, { result: 2, source: 3, reason: 2 });
  });

  it("applies a peer's own maxAssociations", () => {
    const ws = request({ callingAeTitle: 'WS_READ3', remoteAddress: '10.20.1.40' });
    assert.equal(policy.peer('WS_READ3')?.maxAssociations, 2);
    accepted(policy.admit({ ...ws, activeForPeer: () => 1 }));
    assert.equal(
      refused(policy.admit({ ...ws, activeForPeer: () => 2 })).refusal,
      'too-many-peer-associations',
    );
  });

  it('matches IPv4-mapped IPv6 addresses from a dual-stack socket', () => {
    accepted(policy.admit(request({ remoteAddress: '::ffff:10.20.0.15' })));
    accepted(policy.admit(request({ callingAeTitle: 'WS_READ3', remoteAddress: '::ffff:10.20.1.77' })));
    assert.equal(
      refused(policy.admit(request({ remoteAddress: '::ffff:10.20.0.99' }))).refusal,
      'address-not-allowed',
    );
  });

  it('matches IPv6 CIDRs and single IPv6 addresses as /128', () => {
    const get = request({ callingAeTitle: 'GET_ONLY' });
    accepted(policy.admit({ ...get, remoteAddress: 'fd00:20::1234' }));
    accepted(policy.admit({ ...get, remoteAddress: 'fd00:20:0:0:ffff::1' }));
    assert.equal(
      refused(policy.admit({ ...get, remoteAddress: 'fd00:21::1' })).refusal,
      'address-not-allowed',
    );
    assert.equal(
      refused(policy.admit({ ...get, remoteAddress: '10.20.0.15' })).refusal,
      'address-not-allowed',
    );
    const v6 = request({ callingAeTitle: 'V6_HOST' });
    accepted(policy.admit({ ...v6, remoteAddress: '2001:db8::5' }));
    accepted(policy.admit({ ...v6, remoteAddress: '2001:0db8:0000::0005' }));
    assert.equal(
      refused(policy.admit({ ...v6, remoteAddress: '2001:db8::6' })).refusal,
      'address-not-allowed',
    );
  });

  it('matches a single IPv4 address as /32', () => {
    assert.equal(
      refused(policy.admit(request({ remoteAddress: '10.20.0.14' }))).refusal,
      'address-not-allowed',
    );
  });
});

describe('PeerPolicy.filterPresentationContexts', () => {
  it('echo-only peer keeps Verification and refuses storage and find with their ids', () => {
    const peer = policy.peer('ECHO_ONLY');
    assert.ok(peer);
    const contexts = [ctx(1, VERIFICATION), ctx(3, CT_IMAGE_STORAGE), ctx(5, STUDY_ROOT_FIND)];
    const result = peer.filterPresentationContexts(contexts, []);
    assert.deepEqual(
      result.allowed.map((c) => c.id),
      [1],
    );
    assert.deepEqual(result.refused, [
      { id: 3, abstractSyntax: CT_IMAGE_STORAGE },
      { id: 5, abstractSyntax: STUDY_ROOT_FIND },
    ]);
  });

  it('store peer keeps CT Image Storage (UID padded with NUL) and returns the context unchanged', () => {
    const peer = policy.peer('CT_ROOM1');
    assert.ok(peer);
    const padded = ctx(7, CT_IMAGE_STORAGE + '\0');
    const result = peer.filterPresentationContexts([padded, ctx(9, STUDY_ROOT_FIND)], []);
    assert.equal(result.allowed.length, 1);
    assert.equal(result.allowed[0], padded);
    assert.deepEqual(result.refused, [{ id: 9, abstractSyntax: STUDY_ROOT_FIND }]);
  });

  it('get-only peer keeps a storage context only when it asks for the SCP role for that SOP class', () => {
    const peer = policy.peer('GET_ONLY');
    assert.ok(peer);
    const contexts = [ctx(1, STUDY_ROOT_GET), ctx(3, CT_IMAGE_STORAGE), ctx(5, MR_IMAGE_STORAGE)];
    const withRole = peer.filterPresentationContexts(contexts, [
      { sopClassUid: CT_IMAGE_STORAGE + '\0', scuRole: 0, scpRole: 1 },
      { sopClassUid: MR_IMAGE_STORAGE, scuRole: 1, scpRole: 0 },
    ]);
    assert.deepEqual(
      withRole.allowed.map((c) => c.id),
      [1, 3],
    );
    assert.deepEqual(
      withRole.refused.map((c) => c.id),
      [5],
    );
    const withoutRole = peer.filterPresentationContexts(contexts, []);
    assert.deepEqual(
      withoutRole.allowed.map((c) => c.id),
      [1],
    );
    assert.deepEqual(
      withoutRole.refused.map((c) => c.id),
      [3, 5],
    );
  });

  it('find/move/get peer keeps its query/retrieve models and refuses worklist and storage', () => {
    const peer = policy.peer('WS_READ3');
    assert.ok(peer);
    const result = peer.filterPresentationContexts(
      [
        ctx(1, STUDY_ROOT_FIND),
        ctx(3, STUDY_ROOT_MOVE),
        ctx(5, STUDY_ROOT_GET),
        ctx(7, MODALITY_WORKLIST_FIND),
        ctx(9, CT_IMAGE_STORAGE),
      ],
      [],
    );
    assert.deepEqual(
      result.allowed.map((c) => c.id),
      [1, 3, 5],
    );
    assert.deepEqual(
      result.refused.map((c) => c.id),
      [7, 9],
    );
  });

  it('worklist/mpps/commitment peer keeps those SOP classes', () => {
    const peer = policy.peer('RIS_MOD');
    assert.ok(peer);
    const result = peer.filterPresentationContexts(
      [ctx(1, MODALITY_WORKLIST_FIND), ctx(3, MPPS), ctx(5, STORAGE_COMMITMENT), ctx(7, VERIFICATION)],
      [],
    );
    assert.deepEqual(
      result.allowed.map((c) => c.id),
      [1, 3, 5],
    );
    assert.deepEqual(
      result.refused.map((c) => c.id),
      [7],
    );
  });

  it('keeps a private SOP class only for a peer that lists it in sopClasses', () => {
    const contexts = [ctx(11, PRIVATE_SOP_CLASS)];
    assert.deepEqual(
      policy
        .peer('WS_READ3')
        ?.filterPresentationContexts(contexts, [])
        .allowed.map((c) => c.id),
      [11],
    );
    assert.deepEqual(
      policy
        .peer('CT_ROOM1')
        ?.filterPresentationContexts(contexts, [])
        .refused.map((c) => c.id),
      [11],
    );
  });
});

describe('PeerPolicy.mayMoveTo', () => {
  it('defaults to the peer itself', () => {
    const peer = policy.peer('CT_ROOM1');
    assert.equal(peer?.mayMoveTo('CT_ROOM1'), true);
    assert.equal(peer?.mayMoveTo('CT_ROOM1        '), true);
    assert.equal(peer?.mayMoveTo('WS_READ3'), false);
  });

  it('allows the listed destinations only', () => {
    const peer = policy.peer('WS_READ3');
    assert.equal(peer?.mayMoveTo('WS_READ3'), true);
    assert.equal(peer?.mayMoveTo(' WS_VIEW '), true);
    assert.equal(peer?.mayMoveTo('EXFIL_AE'), false);
  });
});

describe('PeerPolicy.mayInvoke', () => {
  it('allows C-STORE-RQ on a storage context only with the store service', () => {
    assert.equal(policy.peer('CT_ROOM1')?.mayInvoke(CT_IMAGE_STORAGE, C_STORE_RQ), true);
    assert.equal(policy.peer('GET_ONLY')?.mayInvoke(CT_IMAGE_STORAGE, C_STORE_RQ), false);
    assert.equal(policy.peer('ECHO_ONLY')?.mayInvoke(CT_IMAGE_STORAGE, C_STORE_RQ), false);
  });

  it('lets a get-only peer answer the C-STOREs of its C-GET and send C-GET-RQ', () => {
    const peer = policy.peer('GET_ONLY');
    assert.equal(peer?.mayInvoke(CT_IMAGE_STORAGE, C_STORE_RSP), true);
    assert.equal(peer?.mayInvoke(STUDY_ROOT_GET + '\0', C_GET_RQ), true);
    assert.equal(peer?.mayInvoke(STUDY_ROOT_GET, C_CANCEL_RQ), true);
    assert.equal(peer?.mayInvoke(STUDY_ROOT_FIND, C_FIND_RQ), false);
    assert.equal(peer?.mayInvoke(STUDY_ROOT_MOVE, C_MOVE_RQ), false);
  });

  it('matches the command to the SOP class, not just the service', () => {
    const peer = policy.peer('WS_READ3');
    assert.equal(peer?.mayInvoke(STUDY_ROOT_FIND, C_FIND_RQ), true);
    assert.equal(peer?.mayInvoke(STUDY_ROOT_FIND, C_CANCEL_RQ), true);
    assert.equal(peer?.mayInvoke(STUDY_ROOT_MOVE, C_MOVE_RQ), true);
    assert.equal(peer?.mayInvoke(STUDY_ROOT_FIND, C_MOVE_RQ), false);
    assert.equal(peer?.mayInvoke(STUDY_ROOT_MOVE, C_FIND_RQ), false);
    assert.equal(peer?.mayInvoke(VERIFICATION, C_ECHO_RQ), true);
    assert.equal(peer?.mayInvoke(VERIFICATION, C_STORE_RQ), false);
  });

  it('allows the normalized commands of mpps and commitment', () => {
    const peer = policy.peer('RIS_MOD');
    assert.equal(peer?.mayInvoke(MPPS, N_CREATE_RQ), true);
    assert.equal(peer?.mayInvoke(MPPS, N_SET_RQ), true);
    assert.equal(peer?.mayInvoke(STORAGE_COMMITMENT, N_ACTION_RQ), true);
    assert.equal(peer?.mayInvoke(MODALITY_WORKLIST_FIND, C_FIND_RQ), true);
    assert.equal(peer?.mayInvoke(STORAGE_COMMITMENT, N_CREATE_RQ), false);
    assert.equal(policy.peer('CT_ROOM1')?.mayInvoke(MPPS, N_CREATE_RQ), false);
  });

  it('allows any command on a private SOP class listed for the peer, and none for others', () => {
    assert.equal(policy.peer('WS_READ3')?.mayInvoke(PRIVATE_SOP_CLASS, N_ACTION_RQ), true);
    assert.equal(policy.peer('WS_READ3')?.mayInvoke(PRIVATE_SOP_CLASS, C_STORE_RQ), true);
    assert.equal(policy.peer('CT_ROOM1')?.mayInvoke(PRIVATE_SOP_CLASS, C_STORE_RQ), false);
  });
});

describe('compilePolicy', () => {
  it('looks peers up with padding removed', () => {
    assert.equal(policy.peer('CT_ROOM1      \0')?.aeTitle, 'CT_ROOM1');
    assert.equal(policy.peer('NOBODY'), undefined);
    assert.equal(policy.config, CONFIG);
  });

  it('refuses a hand-built configuration whose route names no upstream', () => {
    const broken: ProxyConfig = { ...CONFIG, routes: [{ calledAeTitle: 'X', upstream: 'missing' }] };
    assert.throws(() => compilePolicy(broken), /unknown upstream/);
  });
});

describe('address matching (property)', () => {
  const ipv4 = fc.tuple(fc.nat(255), fc.nat(255), fc.nat(255), fc.nat(255));
  const toNumber = (o: [number, number, number, number]): number =>
    ((o[0] << 24) | (o[1] << 16) | (o[2] << 8) | o[3]) >>> 0;

  it('an IPv4 CIDR contains exactly the addresses sharing its first prefix bits, mapped or not', () => {
    fc.assert(
      fc.property(ipv4, ipv4, fc.integer({ min: 0, max: 32 }), (net, host, prefix) => {
        const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
        const netNum = (toNumber(net) & mask) >>> 0;
        const netText = [24, 16, 8, 0].map((s) => (netNum >>> s) & 0xff).join('.');
        const range = parseAddressRange(`${netText}/${prefix}`);
        assert.ok(range.ok);
        const hostText = host.join('.');
        const expected = (toNumber(host) & mask) >>> 0 === netNum;
        const plain = parseRemoteAddress(hostText);
        const mapped = parseRemoteAddress(`::ffff:${hostText}`);
        assert.ok(plain && mapped);
        assert.equal(rangeContains(range, plain), expected);
        assert.equal(rangeContains(range, mapped), expected);
      }),
    );
  });
});
