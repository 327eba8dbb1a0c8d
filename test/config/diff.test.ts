import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { parseConfig } from '../../src/config/load.js';
import type { ProxyConfig } from '../../src/config/types.js';
import {
  changedFiles,
  diffConfigs,
  fileFingerprints,
  fileReferences,
  formatChanges,
  referencedFiles,
  type ConfigChange,
} from '../../src/config/diff.js';

interface Parts {
  listen?: string;
  upstreams?: string[];
  routes?: string[];
  peers?: string[];
  limits?: string;
  logging?: string;
  ledger?: string;
}

const ARCHIVE = [
  '  archive:',
  '    host: pacs.example.org',
  '    port: 2762',
  '    aeTitle: PACS',
  '    tls: { ca: /pki/ca.pem, cert: /pki/client.pem, key: /pki/client.key }',
];
const CT = '  CT_ROOM1: { addresses: [10.20.0.15], services: [echo, store] }';
const WS = '  WS_READ3: { addresses: [10.20.1.0/24], services: [echo, find, move], maxAssociations: 4 }';

function config(p: Parts = {}): ProxyConfig {
  const text = [
    ...(p.listen ? [`listen: ${p.listen}`] : []),
    'upstreams:',
    ...(p.upstreams ?? ARCHIVE),
    'routes:',
    ...(p.routes ?? ['  - { calledAeTitle: DICOM_PROXY, upstream: archive }']),
    'peers:',
    ...(p.peers ?? [CT, WS]),
    ...(p.limits ? [`limits: ${p.limits}`] : []),
    ...(p.logging ? [`logging: ${p.logging}`] : []),
    ...(p.ledger ? [`ledger: ${p.ledger}`] : []),
    '',
  ].join('\n');
  return parseConfig(text, '/etc/proxy/proxy.yaml');
}

function only(changes: ConfigChange[], path: string): ConfigChange {
  const found = changes.filter((c) => c.path === path);
  assert.equal(found.length, 1, `expected one change at ${path}, got ${JSON.stringify(changes, null, 2)}`);
  return found[0] as ConfigChange;
}

describe('diffConfigs', () => {
  it('reports nothing for equal configurations', () => {
    assert.deepEqual(diffConfigs(config(), config()), []);
  });

  it('reports peers added and removed', () => {
    const changes = diffConfigs(
      config({ peers: [CT, WS] }),
      config({ peers: [WS, '  MR_2: { addresses: [10.0.0.2], services: [echo] }'] }),
    );
    assert.equal(changes.length, 2);
    const added = only(changes, 'peers.MR_2');
    assert.equal(added.kind, 'added');
    assert.match(added.summary, /peer MR_2 added/);
    assert.match(added.summary, /10\.0\.0\.2/);
    assert.equal((added.after as { aeTitle: string }).aeTitle, 'MR_2');
    const removed = only(changes, 'peers.CT_ROOM1');
    assert.equal(removed.kind, 'removed');
    assert.equal(removed.summary, 'peer CT_ROOM1 removed');
    assert.equal(removed.restartRequired, undefined);
  });

  it('reports each peer field that changed', () => {
    const changes = diffConfigs(
      config({ peers: [CT, WS] }),
      config({
        peers: [
          '  CT_ROOM1: { addresses: [10.20.0.16], services: [echo, find], moveDestinations: [CT_ROOM1, WS1] }',
          '  WS_READ3: { addresses: [10.20.1.0/24], services: [echo, find, move], sopClasses: [1.2.3.4] }',
        ],
      }),
    );
    assert.deepEqual(
      changes.map((c) => c.path),
      [
        'peers.CT_ROOM1.addresses',
        'peers.CT_ROOM1.services',
        'peers.CT_ROOM1.moveDestinations',
        'peers.WS_READ3.maxAssociations',
        'peers.WS_READ3.sopClasses',
      ],
    );
    assert.equal(only(changes, 'peers.CT_ROOM1.services').summary, 'peer CT_ROOM1: services +find -store');
    assert.equal(
      only(changes, 'peers.CT_ROOM1.addresses').summary,
      'peer CT_ROOM1: addresses +10.20.0.16 -10.20.0.15',
    );
    assert.equal(
      only(changes, 'peers.CT_ROOM1.moveDestinations').summary,
      'peer CT_ROOM1: moveDestinations +WS1',
    );
    const max = only(changes, 'peers.WS_READ3.maxAssociations');
    assert.equal(max.kind, 'changed');
    assert.equal(max.before, 4);
    assert.equal(max.after, null);
    assert.match(max.summary, /4 -> default/);
    assert.deepEqual(only(changes, 'peers.WS_READ3.sopClasses').after, ['1.2.3.4']);
  });

  it('quotes peer names that are not identifiers in paths', () => {
    const changes = diffConfigs(
      config({ peers: [CT] }),
      config({ peers: [CT, "  'CT.ROOM 2': { addresses: [10.0.0.3], services: [echo] }"] }),
    );
    assert.equal(only(changes, 'peers["CT.ROOM 2"]').kind, 'added');
  });

  it('reports upstreams added, removed and changed, field by field including TLS settings', () => {
    const second = [
      '  backup:',
      '    host: backup.example.org',
      '    port: 2762',
      '    aeTitle: BACKUP',
      '    tls: { ca: /pki/ca.pem, cert: /pki/client.pem, key: /pki/client.key }',
    ];
    const added = diffConfigs(config(), config({ upstreams: [...ARCHIVE, ...second] }));
    assert.equal(added.length, 1);
    assert.equal(only(added, 'upstreams.backup').kind, 'added');
    assert.match(only(added, 'upstreams.backup').summary, /backup\.example\.org:2762 AE BACKUP/);
    const removed = diffConfigs(config({ upstreams: [...ARCHIVE, ...second] }), config());
    assert.equal(only(removed, 'upstreams.backup').kind, 'removed');

    const changed = diffConfigs(
      config(),
      config({
        upstreams: [
          '  archive:',
          '    host: pacs2.example.org',
          '    port: 2763',
          '    aeTitle: PACS2',
          '    tls:',
          '      ca: /pki/ca.pem',
          '      cert: /pki/client2.pem',
          '      key: /pki/client.key',
          '      serverName: pacs.example.org',
          '      verifyHostname: false',
          '      profile: modified-bcp195',
        ],
      }),
    );
    assert.deepEqual(
      changed.map((c) => c.path),
      [
        'upstreams.archive.host',
        'upstreams.archive.port',
        'upstreams.archive.aeTitle',
        'upstreams.archive.tls.cert',
        'upstreams.archive.tls.verifyHostname',
        'upstreams.archive.tls.profile',
      ],
    );
    assert.equal(only(changed, 'upstreams.archive.port').summary, 'upstream archive: port 2762 -> 2763');
    assert.equal(
      only(changed, 'upstreams.archive.tls.cert').summary,
      'upstream archive: tls.cert file /pki/client.pem -> /pki/client2.pem',
    );
    assert.ok(changed.every((c) => c.kind === 'changed' && c.restartRequired === undefined));
  });

  it('reports routes added, removed and re-pointed, ignoring their order', () => {
    const second = [
      '  backup:',
      '    host: backup.example.org',
      '    port: 2762',
      '    aeTitle: BACKUP',
      '    tls: { ca: /pki/ca.pem, cert: /pki/client.pem, key: /pki/client.key }',
    ];
    const upstreams = [...ARCHIVE, ...second];
    const before = config({
      upstreams,
      routes: ['  - { calledAeTitle: A, upstream: archive }', '  - { calledAeTitle: B, upstream: archive }'],
    });
    const reordered = config({
      upstreams,
      routes: ['  - { calledAeTitle: B, upstream: archive }', '  - { calledAeTitle: A, upstream: archive }'],
    });
    assert.deepEqual(diffConfigs(before, reordered), []);
    const after = config({
      upstreams,
      routes: ['  - { calledAeTitle: B, upstream: backup }', '  - { calledAeTitle: C, upstream: archive }'],
    });
    const changes = diffConfigs(before, after);
    assert.deepEqual(
      changes.map((c) => [c.path, c.kind]),
      [
        ['routes["A"]', 'removed'],
        ['routes["B"]', 'changed'],
        ['routes["C"]', 'added'],
      ],
    );
    assert.equal(only(changes, 'routes["B"]').summary, 'route B: upstream archive -> backup');
    assert.equal(only(changes, 'routes["C"]').summary, 'route C -> archive added');
  });

  it('reports a listen address change as needing a restart', () => {
    const changes = diffConfigs(config(), config({ listen: '{ host: "::", port: 104 }' }));
    const change = only(changes, 'listen');
    assert.equal(change.restartRequired, true);
    assert.equal(change.summary, 'listen address 0.0.0.0:11112 -> [::]:104');
    assert.deepEqual(change.after, { host: '::', port: 104, proxyProtocol: null });
  });

  it('reports a PROXY protocol change on the same address as applying at once', () => {
    const changes = diffConfigs(
      config(),
      config({ listen: '{ host: 0.0.0.0, port: 11112, proxyProtocol: { from: [10.0.0.10] } }' }),
    );
    const change = only(changes, 'listen.proxyProtocol');
    assert.equal(change.restartRequired, undefined);
    assert.deepEqual(change.after, { from: ['10.0.0.10'], headerTimeoutMs: 5000 });
    assert.equal(changes.filter((c) => c.path === 'listen').length, 0);
  });

  it('reports each limit that changed', () => {
    const changes = diffConfigs(
      config(),
      config({ limits: '{ maxAssociations: 10, idleTimeout: 1m, maxPduLength: 65536 }' }),
    );
    assert.deepEqual(
      changes.map((c) => c.path),
      ['limits.idleTimeoutMs', 'limits.maxAssociations', 'limits.maxPduLength'],
    );
    assert.equal(only(changes, 'limits.maxAssociations').summary, 'limits.maxAssociations 200 -> 10');
    assert.equal(only(changes, 'limits.idleTimeoutMs').after, 60000);
    assert.ok(changes.every((c) => !c.restartRequired));
  });

  it('reports logging changes; the log file needs a restart, the level does not', () => {
    const changes = diffConfigs(config(), config({ logging: '{ level: debug, file: /var/log/proxy.log }' }));
    assert.equal(only(changes, 'logging.level').summary, 'logging.level info -> debug');
    assert.equal(only(changes, 'logging.level').restartRequired, undefined);
    assert.equal(only(changes, 'logging.file').restartRequired, true);
  });

  it('marks ledger changes as needing a restart', () => {
    const changes = diffConfigs(
      config({ ledger: '{ path: /var/ledger, fsync: batch }' }),
      config({ ledger: '{ path: /var/ledger2, fsync: always }' }),
    );
    assert.deepEqual(
      changes.map((c) => [c.path, c.restartRequired]),
      [
        ['ledger.fsync', true],
        ['ledger.path', true],
      ],
    );
    assert.equal(only(changes, 'ledger.path').summary, 'ledger.path /var/ledger -> /var/ledger2');
  });

  it('never ignores a top-level section it does not know', () => {
    const base = config();
    const withFuture = {
      ...base,
      futureSection: { syslog: { host: 'siem', port: 514 } },
    } as unknown as ProxyConfig;
    const changedFuture = {
      ...base,
      futureSection: { syslog: { host: 'siem2', port: 514 } },
    } as unknown as ProxyConfig;
    assert.deepEqual(
      diffConfigs(base, withFuture).map((c) => [c.path, c.kind, c.summary]),
      [['futureSection', 'added', 'futureSection added']],
    );
    assert.deepEqual(
      diffConfigs(withFuture, base).map((c) => [c.path, c.kind]),
      [['futureSection', 'removed']],
    );
    const changed = diffConfigs(withFuture, changedFuture);
    assert.equal(only(changed, 'futureSection').summary, 'futureSection changed');
    assert.deepEqual(only(changed, 'futureSection').after, { syslog: { host: 'siem2', port: 514 } });
    // Key order is not a change.
    const reordered = {
      ...base,
      futureSection: { syslog: { port: 514, host: 'siem' } },
    } as unknown as ProxyConfig;
    assert.deepEqual(diffConfigs(withFuture, reordered), []);
  });

  it('compares unknown fields of known sections too', () => {
    const base = config();
    const limits = { ...base.limits, maxPdvsPerAssociation: 5 };
    const changes = diffConfigs(base, { ...base, limits } as unknown as ProxyConfig);
    assert.equal(only(changes, 'limits.maxPdvsPerAssociation').kind, 'added');
    const peer = { ...base.peers['CT_ROOM1'], receiver: { host: '10.20.0.15', port: 104 } };
    const withReceiver = { ...base, peers: { ...base.peers, CT_ROOM1: peer } } as unknown as ProxyConfig;
    const receiver = only(diffConfigs(base, withReceiver), 'peers.CT_ROOM1.receiver');
    assert.match(receiver.summary, /^peer CT_ROOM1: receiver .* -> \{"host":"10\.20\.0\.15","port":104\}$/);
  });
});

describe('formatChanges', () => {
  it('says so when nothing changed', () => {
    assert.equal(formatChanges([]), 'no changes');
  });

  it('lists changes with +/-/~ marks, restart notes and changed files', () => {
    const changes = diffConfigs(
      config({ peers: [CT, WS] }),
      config({
        peers: [
          '  CT_ROOM1: { addresses: [10.20.0.15], services: [echo] }',
          '  MR_2: { addresses: [10.0.0.2], services: [echo] }',
        ],
        ledger: '{ path: /var/ledger }',
      }),
    );
    const text = formatChanges(changes, ['/pki/client.pem']);
    const lines = text.split('\n');
    assert.equal(lines[0], `${changes.length + 1} changes:`);
    assert.ok(lines.includes('  + peer MR_2 added (addresses 10.0.0.2; services echo)'), text);
    assert.ok(lines.includes('  - peer WS_READ3 removed'), text);
    assert.ok(lines.includes('  ~ peer CT_ROOM1: services -store'), text);
    assert.ok(lines.includes('  ~ ledger.path null -> /var/ledger  [restart required]'), text);
    assert.ok(lines.includes('  ~ file /pki/client.pem content changed'), text);
    assert.match(text, /1 change marked \[restart required\] takes effect only after a restart/);
  });
});

describe('fileFingerprints', () => {
  it('hashes every file the configuration names, in any section, and sees content changes', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'dimse-diff-'));
    try {
      const f = (name: string): string => join(dir, name);
      for (const name of ['ca.pem', 'client.pem', 'client.key', 'signing.key', 'return.pem', 'extra-ca.pem'])
        await writeFile(f(name), `content of ${name}\n`);
      const text = [
        'upstreams:',
        '  archive:',
        '    host: pacs',
        '    port: 2762',
        '    aeTitle: PACS',
        '    tls: { ca: ca.pem, cert: client.pem, key: client.key }',
        'routes: [{ calledAeTitle: P, upstream: archive }]',
        'peers:',
        '  CT: { addresses: [10.0.0.1], services: [echo] }',
        `ledger: { path: ${dir}/ledger, signingKey: signing.key }`,
        '',
      ].join('\n');
      const base = parseConfig(text, f('proxy.yaml'));
      // A future section, with a list under "ca" and a file that does not exist.
      const future = {
        ...base,
        futureSection: { tls: { cert: f('return.pem'), key: f('missing.key'), ca: [f('extra-ca.pem')] } },
      } as unknown as ProxyConfig;

      const refs = fileReferences(future);
      assert.deepEqual(refs.get(f('client.pem')), ['upstreams.archive.tls.cert']);
      assert.deepEqual(refs.get(f('signing.key')), ['ledger.signingKey']);
      assert.deepEqual(refs.get(f('extra-ca.pem')), ['futureSection.tls.ca[0]']);
      assert.deepEqual(referencedFiles(future), [
        f('ca.pem'),
        f('client.key'),
        f('client.pem'),
        f('extra-ca.pem'),
        f('missing.key'),
        f('return.pem'),
        f('signing.key'),
      ]);

      const before = fileFingerprints(future);
      assert.equal(before.size, 6, 'the missing file is left out');
      assert.equal(before.has(f('missing.key')), false);
      assert.match(before.get(f('ca.pem')) ?? '', /^[0-9a-f]{64}$/);

      await writeFile(f('client.pem'), 'renewed certificate\n');
      await writeFile(f('return.pem'), 'renewed return certificate\n');
      await writeFile(f('ca.pem'), 'content of ca.pem\n'); // rewritten, same content
      await writeFile(f('missing.key'), 'now here\n');
      const after = fileFingerprints(future);
      assert.deepEqual(changedFiles(before, after), [f('client.pem'), f('missing.key'), f('return.pem')]);
      assert.deepEqual(changedFiles(before, after, [f('client.pem'), f('ca.pem')]), [f('client.pem')]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
