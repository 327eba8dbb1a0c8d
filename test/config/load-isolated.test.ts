// The daemon validates its configuration in a worker thread (config/load-isolated.ts): what comes back
// must be exactly what the in-process loader gives, and a bad file must fail with the same ConfigError.
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ConfigError } from '../../src/config/errors.js';
import { loadConfig } from '../../src/config/load.js';
import { loadConfigIsolated } from '../../src/config/load-isolated.js';
import { proxyYaml, removePki, standardPki, type TestPki } from '../helpers/proxy.js';

const T = { timeout: 30_000 };

describe('loadConfigIsolated', () => {
  let pki: TestPki;
  before(async () => {
    pki = await standardPki();
  });
  after(() => removePki(pki));

  it('returns the same frozen configuration as loadConfig', T, async () => {
    const path = join(pki.dir, 'good.yaml');
    await writeFile(path, proxyYaml({ archivePort: 1104, pki }));
    const isolated = await loadConfigIsolated(path);
    assert.deepEqual(isolated, await loadConfig(path));
    assert.ok(Object.isFrozen(isolated) && Object.isFrozen(isolated.limits), 'the snapshot is frozen');
    // Maps keyed by AE title stay null-prototype: a peer named constructor or __proto__ is only data.
    assert.equal(Object.getPrototypeOf(isolated.peers), null);
    assert.equal(Object.getPrototypeOf(isolated.upstreams), null);
  });

  it('fails with the ConfigError loadConfig throws: file, line, key', T, async () => {
    const path = join(pki.dir, 'bad.yaml');
    await writeFile(path, proxyYaml({ archivePort: 1104, pki, limits: '{ relayBuffer: 12 }' }));
    const inProcess = await loadConfig(path).then(
      () => null,
      (err: unknown) => err,
    );
    assert.ok(inProcess instanceof ConfigError);
    await assert.rejects(loadConfigIsolated(path), (err: unknown) => {
      assert.ok(err instanceof ConfigError, `not a ConfigError: ${String(err)}`);
      assert.equal(err.message, inProcess.message);
      assert.deepEqual(err.issues, inProcess.issues);
      assert.match(err.message, /bad\.yaml:\d+:\d+ limits\.relayBuffer: must be at least 65536/);
      return true;
    });
  });

  it('reports a missing file like loadConfig', T, async () => {
    const path = join(pki.dir, 'absent.yaml');
    await assert.rejects(loadConfigIsolated(path), (err: unknown) => {
      assert.ok(err instanceof ConfigError);
      assert.match(err.message, /cannot read configuration file/);
      return true;
    });
  });
});
