import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, beforeEach, describe, it } from 'node:test';
import { ConfigError } from '../../src/config/errors.js';
import { loadConfig } from '../../src/config/load.js';
import {
  Reloader,
  type ReloadFailure,
  type ReloadResult,
  type ReloadSuccess,
} from '../../src/runtime/reload.js';
import type { ProxyConfig } from '../../src/config/types.js';
import { buildRuntimeSnapshot, type RuntimeSnapshot } from '../../src/runtime/snapshot.js';
import { issueCertificate } from '../../src/tls/pki.js';
import { proxyYaml, removePki, standardPki, type TestPki } from '../helpers/proxy.js';

const T = { timeout: 10_000 };

const PEERS_BEFORE = [
  '  SCU: { addresses: [127.0.0.1], services: [echo, store] }',
  '  OLD_WS: { addresses: [10.0.0.9], services: [echo, find] }',
].join('\n');
const PEERS_AFTER = [
  '  SCU: { addresses: [127.0.0.1], services: [echo, find] }',
  '  NEW_CT: { addresses: [10.0.0.7], services: [echo, store] }',
].join('\n');

let pki: TestPki;
let configPath: string;

before(async () => {
  pki = await standardPki();
  configPath = join(pki.dir, 'proxy.yaml');
});

after(() => removePki(pki));

beforeEach(async () => {
  await writeFile(configPath, proxyYaml({ archivePort: 2762, pki, peers: PEERS_BEFORE }));
});

interface Harness {
  reloader: Reloader;
  initial: RuntimeSnapshot;
  applied: RuntimeSnapshot[];
  reloaded: ReloadSuccess[];
  failed: ReloadFailure[];
}

async function harness(options: Partial<ConstructorParameters<typeof Reloader>[0]> = {}): Promise<Harness> {
  const initial = buildRuntimeSnapshot(await loadConfig(configPath));
  const applied: RuntimeSnapshot[] = [];
  const reloader = new Reloader({
    configPath,
    initial,
    apply: (s) => {
      applied.push(s);
    },
    ...options,
  });
  const h: Harness = { reloader, initial, applied, reloaded: [], failed: [] };
  reloader.on('reloaded', (r) => h.reloaded.push(r));
  reloader.on('reload-failed', (r) => h.failed.push(r));
  return h;
}

function assertOk(result: ReloadResult): asserts result is ReloadSuccess {
  assert.ok(result.ok, result.ok ? '' : `reload failed: ${result.message}`);
}

function assertFailed(result: ReloadResult): asserts result is ReloadFailure {
  assert.equal(result.ok, false, 'expected the reload to fail');
}

describe('Reloader', () => {
  it('applies a valid change and reports peers added, removed and services changed', T, async () => {
    const h = await harness();
    await writeFile(configPath, proxyYaml({ archivePort: 2762, pki, peers: PEERS_AFTER }));
    const result = await h.reloader.reload();
    assertOk(result);
    assert.equal(result.dryRun, false);
    assert.deepEqual(
      result.changes.map((c) => [c.path, c.kind]),
      [
        ['peers.NEW_CT', 'added'],
        ['peers.OLD_WS', 'removed'],
        ['peers.SCU.services', 'changed'],
      ],
    );
    assert.equal(result.changes[2]?.summary, 'peer SCU: services +find -store');
    assert.deepEqual(result.changedFiles, []);
    assert.equal(h.applied.length, 1);
    assert.equal(h.applied[0], result.snapshot);
    assert.equal(h.reloader.current, result.snapshot);
    assert.equal(result.previous, h.initial);
    assert.ok(result.snapshot.config.peers['NEW_CT']);
    assert.equal(h.reloaded.length, 1);
    assert.equal(h.failed.length, 0);

    // Reloading the same file again: applied again, nothing to report.
    const again = await h.reloader.reload();
    assertOk(again);
    assert.deepEqual(again.changes, []);
    assert.equal(h.applied.length, 2);
  });

  it('rejects broken YAML with file:line and applies nothing', T, async () => {
    const h = await harness();
    const text = proxyYaml({ archivePort: 2762, pki, peers: PEERS_AFTER }).replace(
      'logging: { level: error }',
      'logging: { level: error',
    );
    await writeFile(configPath, text);
    const result = await h.reloader.reload();
    assertFailed(result);
    assert.equal(result.stage, 'load');
    assert.ok(result.error instanceof ConfigError);
    assert.match(
      result.message,
      new RegExp(`^${configPath.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:\\d+:\\d+: YAML`),
    );
    assert.equal(h.applied.length, 0);
    assert.equal(h.reloader.current, h.initial);
    assert.equal(h.failed.length, 1);
    assert.equal(h.failed[0], result);
    assert.equal(h.reloaded.length, 0);
  });

  it('rejects a TLS file that cannot be read, naming its key, and applies nothing', T, async () => {
    const h = await harness();
    const missing = join(pki.dir, 'missing-client.pem');
    await writeFile(
      configPath,
      proxyYaml({ archivePort: 2762, pki, peers: PEERS_AFTER, clientCert: missing }),
    );
    const result = await h.reloader.reload();
    assertFailed(result);
    assert.equal(result.stage, 'build');
    assert.ok(result.error instanceof ConfigError);
    assert.match(
      result.message,
      /proxy\.yaml:\d+:\d+ upstreams\.archive\.tls\.cert: cannot read client certificate/,
    );
    assert.ok(result.message.includes(missing));
    assert.equal(h.applied.length, 0);
    assert.equal(h.reloader.current, h.initial);
  });

  it('reports certificate files whose content changed', T, async () => {
    const h = await harness();
    const certPath = pki.files['client'] as string;
    const keyPath = pki.files['client.key'] as string;
    const original = { cert: await readFile(certPath), key: await readFile(keyPath) };
    try {
      const renewed = await issueCertificate(pki.ca, { commonName: 'dimse-tls-proxy', usage: 'client' });
      await pki.write('client', renewed);
      const result = await h.reloader.reload();
      assertOk(result);
      assert.deepEqual(result.changes, []);
      assert.deepEqual(result.changedFiles, [keyPath, certPath].sort());
      // The next reload compares with what was applied.
      const again = await h.reloader.reload();
      assertOk(again);
      assert.deepEqual(again.changedFiles, []);
    } finally {
      // The other tests use the original pair.
      await writeFile(certPath, original.cert);
      await writeFile(keyPath, original.key);
    }
  });

  it('dryRun validates and diffs without applying', T, async () => {
    const h = await harness();
    await writeFile(configPath, proxyYaml({ archivePort: 2762, pki, peers: PEERS_AFTER }));
    const result = await h.reloader.dryRun();
    assertOk(result);
    assert.equal(result.dryRun, true);
    assert.equal(result.changes.length, 3);
    assert.equal(h.applied.length, 0);
    assert.equal(h.reloader.current, h.initial);
    assert.equal(h.reloaded.length, 0);
  });

  it('keeps the running snapshot when apply fails', T, async () => {
    let fail = true;
    const h = await harness({
      apply: () => {
        if (fail) throw new Error('listener busy');
      },
    });
    await writeFile(configPath, proxyYaml({ archivePort: 2762, pki, peers: PEERS_AFTER }));
    const result = await h.reloader.reload();
    assertFailed(result);
    assert.equal(result.stage, 'apply');
    assert.match(result.message, /applying the new configuration failed: listener busy/);
    assert.equal(h.reloader.current, h.initial);
    fail = false;
    const retry = await h.reloader.reload();
    assertOk(retry);
    assert.equal(retry.changes.length, 3, 'the diff is still against the snapshot that runs');
  });

  it('serialises reloads: one requested during another runs once, after it', T, async () => {
    let running = 0;
    let maxRunning = 0;
    let loads = 0;
    // Each load waits for the test to let it finish: the first is held while the others are requested.
    let entered: () => void = () => undefined;
    let release: () => void = () => undefined;
    const firstEntered = new Promise<void>((resolve) => (entered = resolve));
    let gate = new Promise<void>((resolve) => (release = resolve));
    const h = await harness({
      load: async (path: string): Promise<ProxyConfig> => {
        loads++;
        running++;
        maxRunning = Math.max(maxRunning, running);
        entered();
        await gate;
        running--;
        return loadConfig(path);
      },
    });
    const first = h.reloader.reload();
    await firstEntered;
    const second = h.reloader.reload();
    const third = h.reloader.reload();
    assert.equal(second, third, 'requests made while one runs share the next run');
    assert.equal(loads, 1, 'the next run waits for the one under way');
    const held = release;
    gate = Promise.resolve(); // later loads run through
    held();
    const results = await Promise.all([first, second, third]);
    assert.ok(results.every((r) => r.ok));
    assert.equal(loads, 2);
    assert.equal(maxRunning, 1);
    assert.equal(h.applied.length, 2);
    // Idle again: the next request runs at once.
    await h.reloader.reload();
    assert.equal(loads, 3);
  });
});
