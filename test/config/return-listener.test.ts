// returnListener and peers.*.receiver: defaults, resolution, and errors that name the key and line.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConfigError, parseConfig } from '../../src/config/index.js';
import { compilePolicy } from '../../src/policy/policy.js';
import type { CertificateIdentities } from '../../src/tls/identity.js';

const BASE = [
  /* 1 */ 'upstreams:',
  /* 2 */ '  archive: { host: pacs.example.org, port: 2762, aeTitle: PACS, tls: { ca: ca.pem, cert: c.pem, key: c.key } }',
  /* 3 */ 'routes: [{ calledAeTitle: DICOM_PROXY, upstream: archive }]',
  /* 4 */ 'peers:',
  /* 5 */ '  WS1: { addresses: [10.0.0.5], services: [echo, move], receiver: { host: 10.0.0.5, port: 104 } }',
  /* 6 */ '  CT1: { addresses: [10.0.0.6], services: [store] }',
  /* 7 */ 'returnListener:',
  /* 8 */ '  tls: { ca: ca.pem, cert: s.pem, key: s.key }',
  /* 9 */ '  callers:',
  /* 10 */ '    - { aeTitles: [PACS], identity: { dns: pacs.example.org } }',
];

function yaml(replace: Record<number, string> = {}, append: string[] = []): string {
  return [...BASE.map((l, i) => replace[i + 1] ?? l), ...append].join('\n') + '\n';
}

function issues(text: string): { path: string; line: number | null; message: string }[] {
  try {
    parseConfig(text, '/etc/dimse/proxy.yaml');
  } catch (err) {
    assert.ok(err instanceof ConfigError);
    return err.issues.map((i) => ({ path: i.path, line: i.line, message: i.message }));
  }
  assert.fail('expected a ConfigError');
}

const ids = (over: Partial<CertificateIdentities> = {}): CertificateIdentities => ({
  dns: [],
  ip: [],
  uri: [],
  cn: [],
  fingerprint256: 'AA',
  subject: 'CN=x',
  ...over,
});

describe('returnListener configuration', () => {
  it('applies defaults and resolves paths against the file', () => {
    const c = parseConfig(yaml(), '/etc/dimse/proxy.yaml');
    assert.ok(c.returnListener);
    assert.equal(c.returnListener.host, '0.0.0.0');
    assert.equal(c.returnListener.port, 11113);
    assert.equal(c.returnListener.tls.cert, '/etc/dimse/s.pem');
    assert.equal(c.returnListener.tls.profile, 'bcp195');
    assert.equal(c.returnListener.tls.handshakeTimeoutMs, 10_000);
    assert.deepEqual(c.returnListener.callers[0], {
      aeTitles: ['PACS'],
      identity: { kind: 'dns', value: 'pacs.example.org' },
      addresses: null,
      services: ['echo', 'store', 'commitment'],
      maxAssociations: null,
    });
    assert.deepEqual(c.peers['WS1']?.receiver, {
      host: '10.0.0.5',
      port: 104,
      aeTitle: 'WS1',
      callingAeTitle: null,
      connectTimeoutMs: 10_000,
    });
    assert.equal(c.peers['CT1']?.receiver, null);
  });

  it('is optional', () => {
    const c = parseConfig(BASE.slice(0, 6).join('\n'), null);
    assert.equal(c.returnListener, null);
  });

  it('an identity naming two kinds is an error at its line', () => {
    const found = issues(yaml({ 10: '    - { aeTitles: [PACS], identity: { dns: a.org, cn: a } }' }));
    assert.equal(found.length, 1);
    assert.equal(found[0]?.path, 'returnListener.callers[0].identity');
    assert.equal(found[0]?.line, 10);
    assert.match(found[0]?.message ?? '', /exactly one of dns, ip, uri, cn \(got dns, cn\)/);
  });

  it('an empty identity, an unknown identity key and a bad IP are errors', () => {
    assert.match(
      issues(yaml({ 10: '    - { aeTitles: [PACS], identity: {} }' }))[0]?.message ?? '',
      /got none/,
    );
    const unknown = issues(yaml({ 10: '    - { aeTitles: [PACS], identity: { email: a@b } }' }));
    assert.ok(unknown.some((i) => /unknown key "email"/.test(i.message)));
    const ip = issues(yaml({ 10: '    - { aeTitles: [PACS], identity: { ip: 10.0.0.300 } }' }));
    assert.equal(ip[0]?.path, 'returnListener.callers[0].identity.ip');
  });

  it('one calling AE title may be bound to one identity only', () => {
    const found = issues(yaml({}, ['    - { aeTitles: [OTHER, PACS], identity: { cn: other } }']));
    assert.equal(found[0]?.path, 'returnListener.callers[1].aeTitles[1]');
    assert.equal(found[0]?.line, 11);
    assert.match(found[0]?.message ?? '', /already bound to returnListener.callers\[0\]/);
  });

  it('a receiver with a bad port or an unknown key is an error at its line', () => {
    const found = issues(
      yaml({
        5: '  WS1: { addresses: [10.0.0.5], services: [echo], receiver: { host: h, port: 0, tls: x } }',
      }),
    );
    const paths = found.map((i) => i.path).sort();
    assert.deepEqual(paths, ['peers.WS1.receiver.port', 'peers.WS1.receiver.tls']);
    assert.ok(found.every((i) => i.line === 5));
  });
});

describe('policy.admitReturn', () => {
  const policy = compilePolicy(
    parseConfig(
      yaml({}, [
        '    - { aeTitles: [PACS_IP], identity: { ip: "::ffff:10.9.9.9" }, addresses: [10.9.0.0/16], services: [echo] }',
        '    - { aeTitles: [PACS_UC], identity: { dns: PACS.EXAMPLE.ORG } }',
      ]),
      null,
    ),
  );
  const req = (over: object = {}) => ({
    callingAeTitle: 'PACS',
    calledAeTitle: 'WS1',
    remoteAddress: '10.1.1.1',
    identities: ids({ dns: ['pacs.example.org'] }),
    activeTotal: 0,
    activeForPeer: () => 0,
    ...over,
  });

  it('accepts the bound identity and routes to the receiver', () => {
    const d = policy.admitReturn(req());
    assert.ok(d.accepted);
    assert.equal(d.destination, 'WS1');
    assert.equal(d.receiver.port, 104);
    assert.equal(d.caller.services.has('store'), true);
  });

  it('matches DNS names case-insensitively and IPs in any notation', () => {
    const upper = policy.admitReturn(req({ callingAeTitle: 'PACS_UC' }));
    assert.ok(upper.accepted, "configured PACS.EXAMPLE.ORG matches the certificate's pacs.example.org");
    const ip = policy.admitReturn(
      req({ callingAeTitle: 'PACS_IP', remoteAddress: '10.9.1.1', identities: ids({ ip: ['10.9.9.9'] }) }),
    );
    assert.ok(ip.accepted);
  });

  it('refuses 1/1/3 without the identity, without a certificate, from another address, for an unknown caller', () => {
    const cases: [object, string][] = [
      [{ identities: ids({ dns: ['other.example.org'] }) }, 'certificate-identity-mismatch'],
      [{ identities: ids({ cn: ['pacs.example.org'] }) }, 'certificate-identity-mismatch'],
      [{ identities: null }, 'no-client-certificate'],
      [
        { callingAeTitle: 'PACS_IP', remoteAddress: '10.1.1.1', identities: ids({ ip: ['10.9.9.9'] }) },
        'address-not-allowed',
      ],
      [{ callingAeTitle: 'NOBODY' }, 'unknown-calling-ae'],
    ];
    for (const [over, refusal] of cases) {
      const d = policy.admitReturn(req(over));
      assert.equal(d.accepted, false, refusal);
      if (!d.accepted) {
        assert.equal(d.refusal, refusal);
        assert.deepEqual({ ...d.reject }, { result: 1, source: 1, reason: 3 });
      }
    }
  });

  it('refuses 1/1/7 a destination without a receiver, 2/3/2 over the limits', () => {
    const none = policy.admitReturn(req({ calledAeTitle: 'CT1' }));
    assert.ok(!none.accepted && none.refusal === 'unknown-destination');
    assert.ok(!none.accepted && none.reject.reason === 7);
    const busy = policy.admitReturn(req({ activeForPeer: () => 16 }));
    assert.ok(!busy.accepted && busy.refusal === 'too-many-peer-associations');
    assert.ok(!busy.accepted && busy.reject.result === 2 && busy.reject.reason === 2);
  });

  it('storage commitment by role: callers may send N-EVENT-REPORT, not N-ACTION; forward peers the reverse', () => {
    const COMMITMENT = '1.2.840.10008.1.20.1';
    const d = policy.admitReturn(req());
    assert.ok(d.accepted);
    assert.equal(d.caller.mayInvoke(COMMITMENT, 0x0100), true, 'caller N-EVENT-REPORT');
    assert.equal(d.caller.mayInvoke(COMMITMENT, 0x0130), false, 'caller N-ACTION');
    const fwd = compilePolicy(
      parseConfig(yaml({ 6: '  CT1: { addresses: [10.0.0.6], services: [store, commitment] }' }), null),
    ).peer('CT1');
    assert.ok(fwd);
    assert.equal(fwd.mayInvoke(COMMITMENT, 0x0130), true, 'modality N-ACTION');
    assert.equal(fwd.mayInvoke(COMMITMENT, 0x0100), false, 'modality N-EVENT-REPORT');
  });
});
