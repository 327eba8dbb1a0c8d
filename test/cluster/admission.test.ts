// The pieces of the worker mode that need no process: the `workers` setting as the config file writes
// it, the count over all workers (limits.maxAssociations, a peer's limit, limits.pending*) that refuses
// next to the one that accepts, and the share of limits.relayBufferTotal each worker holds.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConfigError, parseConfig } from '../../src/config/index.js';
import { ClusterAdmission } from '../../src/cluster/admission.js';
import { resolveWorkerCount } from '../../src/cluster/pool.js';
import { workerShare } from '../../src/relay/server.js';
import { diffConfigs } from '../../src/config/diff.js';

const BASE = [
  'upstreams:',
  '  archive:',
  '    host: 10.0.0.5',
  '    port: 2762',
  '    aeTitle: PACS',
  '    tls: { ca: /c/ca.pem, cert: /c/client.pem, key: /c/client.key }',
  'routes:',
  '  - { calledAeTitle: DICOM_PROXY, upstream: archive }',
  'peers:',
  '  CT1: { addresses: [10.20.0.15], services: [echo, store] }',
].join('\n');

function issues(text: string): string[] {
  try {
    parseConfig(text, 'test.yaml');
  } catch (err) {
    assert.ok(err instanceof ConfigError);
    return err.issues.map((i) => `${i.path} line ${i.line ?? '?'}: ${i.message}`);
  }
  assert.fail('expected a ConfigError');
}

describe('workers setting', () => {
  it('defaults to 1 (the relay in the daemon process), round-robin', () => {
    assert.deepEqual(parseConfig(BASE, null).workers, { count: 1, balance: 'round-robin' });
  });
  it('takes auto, a number, or the long form', () => {
    assert.deepEqual(parseConfig(`${BASE}\nworkers: auto\n`, null).workers, {
      count: 'auto',
      balance: 'round-robin',
    });
    assert.deepEqual(parseConfig(`${BASE}\nworkers: 4\n`, null).workers, {
      count: 4,
      balance: 'round-robin',
    });
    assert.deepEqual(parseConfig(`${BASE}\nworkers: { count: 2, balance: reuseport }\n`, null).workers, {
      count: 2,
      balance: 'reuseport',
    });
  });
  it('refuses 0, a word other than auto, an unknown balance, an unknown key; naming the key and line', () => {
    for (const bad of [
      'workers: 0',
      'workers: many',
      'workers: { count: 2, balance: random }',
      'workers: { threads: 2 }',
    ]) {
      const found = issues(`${BASE}\n${bad}\n`);
      assert.equal(found.length, 1, `${bad}: ${found.join('; ')}`);
      assert.match(found[0] ?? '', /^workers(\.\w+)? line 11: /, `${bad}: ${found.join('; ')}`);
    }
  });
  it('auto is one worker per CPU the process may use', () => {
    assert.equal(resolveWorkerCount('auto', 6), 6);
    assert.equal(resolveWorkerCount('auto', 0), 1);
    assert.equal(resolveWorkerCount(3, 6), 3);
  });
  it('a new count is reported as needing a restart', () => {
    const changes = diffConfigs(
      parseConfig(`${BASE}\nworkers: 2\n`, null),
      parseConfig(`${BASE}\nworkers: 3\n`, null),
    );
    assert.deepEqual(
      changes.map((c) => [c.path, c.restartRequired]),
      [['workers.count', true]],
    );
  });
});

describe('ClusterAdmission: the counts over every worker', () => {
  const limits = { peerAeTitle: 'CT1', peerLimit: 2, maxAssociations: 3 };

  it("a peer's limit holds over workers; a release makes room again", () => {
    const a = new ClusterAdmission();
    assert.equal(a.reserve(1, 'a', limits), null);
    assert.equal(a.reserve(2, 'b', limits), null);
    const over = a.reserve(1, 'c', limits);
    assert.equal(over?.refusal, 'too-many-peer-associations');
    assert.deepEqual(over?.reject, { result: 2, source: 3, reason: 2 }); // PS3.8 9.3.4: 2/3/2
    assert.match(
      over?.message ?? '',
      /2 associations active for "CT1"; its limit is 2 \(counted over all workers\)/,
    );
    a.release('a');
    assert.equal(a.reserve(2, 'c', limits), null);
    assert.equal(a.forPeer('CT1'), 2);
  });

  it('limits.maxAssociations holds over peers and workers', () => {
    const a = new ClusterAdmission();
    for (const [w, id, peer] of [
      [1, 'a', 'P1'],
      [2, 'b', 'P2'],
      [1, 'c', 'P3'],
    ] as const) {
      assert.equal(a.reserve(w, id, { ...limits, peerAeTitle: peer }), null);
    }
    assert.equal(a.reserve(2, 'd', { ...limits, peerAeTitle: 'P4' })?.refusal, 'too-many-associations');
  });

  it("a worker that exits gives back its associations and connections, not the others'", () => {
    const a = new ClusterAdmission();
    a.reserve(1, 'a', limits);
    a.reserve(2, 'b', limits);
    const pending = {
      listener: 'forward' as const,
      remoteAddress: '10.1.1.1',
      listed: false,
      limits: { pendingPerAddress: 2, pendingTotal: 10, pendingReservedForPeers: 2 },
    };
    assert.equal(a.takePending(1, 1, pending), null);
    assert.equal(a.takePending(2, 1, pending), null);
    const refused = a.takePending(2, 2, pending);
    assert.equal(refused?.reason, 'per-address-limit');
    assert.match(
      refused?.message ?? '',
      /2 connections from this address not admitted yet; limits.pendingPerAddress is 2/,
    );
    a.releaseWorker(1);
    assert.equal(a.total, 1);
    assert.equal(a.pendingTotal('forward'), 1);
    assert.equal(a.takePending(2, 3, pending), null, 'room again after worker 1 exited');
    a.releasePending(2, 1);
    a.releasePending(2, 3);
    assert.equal(a.pendingTotal('forward'), 0);
  });

  it('the room kept for configured peers holds over workers', () => {
    const a = new ClusterAdmission();
    const l = { pendingPerAddress: 8, pendingTotal: 4, pendingReservedForPeers: 2 };
    const from = (remoteAddress: string, listed: boolean) => ({
      listener: 'return' as const,
      remoteAddress,
      listed,
      limits: l,
    });
    assert.equal(a.takePending(1, 1, from('10.9.0.1', false)), null);
    assert.equal(a.takePending(2, 1, from('10.9.0.2', false)), null);
    assert.equal(a.takePending(1, 2, from('10.9.0.3', false))?.reason, 'pending-limit');
    assert.equal(a.takePending(2, 2, from('10.20.0.15', true)), null, 'a listed peer still gets in');
  });
});

describe('workerShare: per-process budgets split so their sum never exceeds the limit', () => {
  it('splits; a share is never 0', () => {
    assert.equal(workerShare(16 * 1024 * 1024, 1), 16 * 1024 * 1024);
    assert.equal(workerShare(16 * 1024 * 1024, 2), 8 * 1024 * 1024);
    assert.equal(workerShare(5, 2), 2);
    assert.equal(workerShare(1, 4), 1);
  });
});
