import assert from 'node:assert/strict';
import { mkdir, mkdtemp, realpath, rename, rm, symlink, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { ConfigWatcher, type ConfigWatcherOptions } from '../../src/config/watch.js';
import { ManualClock } from '../helpers/clock.js';

const T = { timeout: 10_000 };

let dir: string;
let watchers: ConfigWatcher[] = [];

beforeEach(async () => {
  // realpath: on some systems the temporary directory itself is behind a symlink (macOS /var -> /private/var).
  dir = await realpath(await mkdtemp(join(tmpdir(), 'dimse-watch-')));
  watchers = [];
});

afterEach(async () => {
  for (const w of watchers) w.stop();
  await rm(dir, { recursive: true, force: true });
});

interface Recorder {
  events: string[][];
  /** Resolves once `count` events have been seen (rejects after timeoutMs). */
  waitFor(count: number, timeoutMs?: number): Promise<string[][]>;
}

// The watcher's debounce and poll run on a manual clock: a test moves time itself, so nothing depends on how
// fast the machine is. File system events are real; `noticed` waits until the watcher has reacted to one.

/** Runs `action` and resolves once the watcher has armed a timer after it (an fs event scheduled a check). */
async function noticed(clock: ManualClock, action: () => Promise<unknown>): Promise<void> {
  const mark = clock.armed;
  await action();
  await clock.untilArmed(mark + 1);
}

/**
 * Lets the watcher finish: fires every timer due within `ms` and waits for the check they started (and
 * one more, which reads the files as they are now). Whatever it emits is in rec.events afterwards.
 */
async function quiesce(watcher: ConfigWatcher, clock: ManualClock, ms = 10_000): Promise<void> {
  clock.advance(ms);
  await watcher.refresh();
}

function startWatcher(options: Partial<ConfigWatcherOptions> & { configPath: string }): {
  watcher: ConfigWatcher;
  rec: Recorder;
  clock: ManualClock;
} {
  const clock = new ManualClock();
  const watcher = new ConfigWatcher({
    files: () => [],
    debounceMs: 100,
    pollIntervalMs: 0,
    clock,
    ...options,
  });
  watchers.push(watcher);
  const events: string[][] = [];
  const waiters: Array<() => void> = [];
  watcher.on('change', (paths) => {
    events.push(paths);
    waiters.splice(0).forEach((w) => w());
  });
  watcher.start();
  const rec: Recorder = {
    events,
    async waitFor(count, timeoutMs = 5000) {
      const deadline = Date.now() + timeoutMs;
      while (events.length < count) {
        const left = deadline - Date.now();
        if (left <= 0)
          throw new Error(
            `expected ${count} change event(s) within ${timeoutMs} ms, got ${JSON.stringify(events)}`,
          );
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, left);
          waiters.push(() => {
            clearTimeout(t);
            resolve();
          });
        });
      }
      return events;
    },
  };
  return { watcher, rec, clock };
}

describe('ConfigWatcher', () => {
  it('reports an in-place edit of the configuration file', T, async () => {
    const config = join(dir, 'proxy.yaml');
    await writeFile(config, 'peers: {}\n');
    const { watcher, rec, clock } = startWatcher({ configPath: config });
    await noticed(clock, () => writeFile(config, 'peers: { CT: {} }\n')); // same inode: truncate + write
    clock.advance(100);
    assert.deepEqual(await rec.waitFor(1), [[config]]);
    await quiesce(watcher, clock);
    assert.deepEqual(rec.events, [[config]], 'one event for one write');
  });

  it('reports an editor atomic save (write a temporary file, rename it over the original)', T, async () => {
    const config = join(dir, 'proxy.yaml');
    await writeFile(config, 'a: 1\n');
    const { watcher, rec, clock } = startWatcher({ configPath: config });
    // Twice: the second save checks the watch still works after the inode was replaced.
    for (const [i, content] of ['a: 2\n', 'a: 3\n'].entries()) {
      const tmp = join(dir, `.proxy.yaml.${i}.swp`);
      await writeFile(tmp, content);
      await noticed(clock, () => rename(tmp, config));
      clock.advance(100);
      const events = await rec.waitFor(i + 1);
      assert.deepEqual(events[i], [config]);
    }
    await quiesce(watcher, clock);
    assert.equal(rec.events.length, 2);
  });

  it('follows a Kubernetes ConfigMap/Secret volume update (..data symlink swap)', T, async () => {
    // dir/proxy.yaml -> ..data/proxy.yaml, dir/tls.crt -> ..data/tls.crt, dir/..data -> ..<timestamp>
    const generation = async (stamp: string, files: Record<string, string>): Promise<string> => {
      const name = `..2026_11_25_10_${stamp}.000000001`;
      await mkdir(join(dir, name));
      for (const [file, content] of Object.entries(files)) await writeFile(join(dir, name, file), content);
      return name;
    };
    /** What the kubelet's atomic writer does: new directory, new ..data_tmp symlink renamed over ..data, old directory removed. */
    const swap = async (oldName: string, newName: string): Promise<void> => {
      await symlink(newName, join(dir, '..data_tmp'));
      await rename(join(dir, '..data_tmp'), join(dir, '..data'));
      await rm(join(dir, oldName), { recursive: true });
    };

    const first = await generation('00_00', { 'proxy.yaml': 'v: 1\n', 'tls.crt': 'cert 1\n' });
    await symlink(first, join(dir, '..data'));
    await symlink('..data/proxy.yaml', join(dir, 'proxy.yaml'));
    await symlink('..data/tls.crt', join(dir, 'tls.crt'));
    const config = join(dir, 'proxy.yaml');
    const cert = join(dir, 'tls.crt');

    const { watcher, rec, clock } = startWatcher({ configPath: config, files: () => [cert] });
    assert.deepEqual(watcher.watchedDirectories, [dir, join(dir, first)]);

    // Secret update: only the certificate changes; proxy.yaml has the same content in the new generation.
    const second = await generation('01_00', { 'proxy.yaml': 'v: 1\n', 'tls.crt': 'cert 2\n' });
    await noticed(clock, () => swap(first, second));
    clock.advance(100);
    assert.deepEqual(await rec.waitFor(1), [[cert]]);
    assert.deepEqual(watcher.watchedDirectories, [dir, join(dir, second)]);

    // A second update is seen too (the watches followed the swap); now the configuration changes.
    const third = await generation('02_00', { 'proxy.yaml': 'v: 2\n', 'tls.crt': 'cert 2\n' });
    await noticed(clock, () => swap(second, third));
    clock.advance(100);
    const events = await rec.waitFor(2);
    assert.deepEqual(events[1], [config]);
    await quiesce(watcher, clock);
    assert.equal(rec.events.length, 2, JSON.stringify(rec.events));
  });

  it('reports a change to a file the configuration names, in another directory', T, async () => {
    const config = join(dir, 'proxy.yaml');
    await mkdir(join(dir, 'pki'));
    const cert = join(dir, 'pki', 'client.pem');
    const key = join(dir, 'pki', 'client.key');
    await writeFile(config, 'a: 1\n');
    await writeFile(cert, 'cert 1\n');
    await writeFile(key, 'key 1\n');
    const { rec, clock } = startWatcher({ configPath: config, files: () => [cert, key] });
    await noticed(clock, () => writeFile(cert, 'cert 2\n'));
    clock.advance(100);
    assert.deepEqual(await rec.waitFor(1), [[cert]]);
  });

  it('stays silent for a touch or a rewrite with the same content', T, async () => {
    const config = join(dir, 'proxy.yaml');
    await writeFile(config, 'a: 1\n');
    const { watcher, rec, clock } = startWatcher({ configPath: config, pollIntervalMs: 100 });
    const now = new Date();
    await noticed(clock, () => utimes(config, now, now));
    await writeFile(config, 'a: 1\n');
    const tmp = join(dir, 'proxy.yaml.tmp');
    await writeFile(tmp, 'a: 1\n');
    await rename(tmp, config);
    await writeFile(join(dir, 'unrelated.txt'), 'x\n');
    // The debounced check runs (and every poll for a while), then one more check.
    for (let i = 0; i < 7; i++) clock.advance(100);
    await quiesce(watcher, clock);
    assert.deepEqual(rec.events, []);
  });

  it('merges a burst of writes into one event', T, async () => {
    const config = join(dir, 'proxy.yaml');
    await writeFile(config, 'a: 0\n');
    const { watcher, rec, clock } = startWatcher({
      configPath: config,
      debounceMs: 200,
      pollIntervalMs: 100,
    });
    for (let i = 1; i <= 6; i++) {
      await noticed(clock, () => writeFile(config, `a: ${i}\n`));
      clock.advance(30); // each write comes within the debounce of the one before
    }
    // With the debounce, no check ran during the burst (each would have seen new content and emitted).
    clock.advance(200);
    assert.deepEqual(await rec.waitFor(1), [[config]]);
    await quiesce(watcher, clock);
    assert.equal(rec.events.length, 1);
  });

  it('falls back on polling when fs.watch is off', T, async () => {
    const config = join(dir, 'proxy.yaml');
    await writeFile(config, 'a: 1\n');
    const { watcher, rec, clock } = startWatcher({
      configPath: config,
      fsWatch: false,
      pollIntervalMs: 100,
      debounceMs: 50,
    });
    assert.deepEqual(watcher.watchedDirectories, []);
    await writeFile(config, 'a: 2\n');
    const mark = clock.armed;
    clock.advance(100); // the poll sees different content and schedules a check
    await clock.untilArmed(mark + 1);
    assert.deepEqual(clock.dueIn(), [50, 100]);
    clock.advance(50);
    assert.deepEqual(await rec.waitFor(1), [[config]]);
  });

  it('calls files() again: a file named after a reload is watched from then on', T, async () => {
    const config = join(dir, 'proxy.yaml');
    await mkdir(join(dir, 'new'));
    const oldCert = join(dir, 'old.pem');
    const newCert = join(dir, 'new', 'client.pem');
    await writeFile(config, 'cert: old.pem\n');
    await writeFile(oldCert, 'old\n');
    await writeFile(newCert, 'new 1\n');
    let files = [oldCert];
    const { watcher, rec, clock } = startWatcher({ configPath: config, files: () => files });
    assert.deepEqual(watcher.watchedDirectories, [dir]);

    files = [newCert];
    await noticed(clock, () => writeFile(config, 'cert: new/client.pem\n'));
    clock.advance(100);
    assert.deepEqual(await rec.waitFor(1), [[config]]);
    await watcher.refresh(); // what the reloader does once the new configuration is applied
    assert.deepEqual(watcher.watchedDirectories, [dir, join(dir, 'new')]);

    await writeFile(oldCert, 'old 2\n'); // no longer named: no event
    await noticed(clock, () => writeFile(newCert, 'new 2\n'));
    clock.advance(100);
    const events = await rec.waitFor(2);
    assert.deepEqual(events[1], [newCert]);
    await quiesce(watcher, clock);
    assert.equal(rec.events.length, 2, JSON.stringify(rec.events));
  });

  it('stop() closes every watcher and timer and emits nothing afterwards', T, async () => {
    const config = join(dir, 'proxy.yaml');
    const cert = join(dir, 'cert.pem');
    await writeFile(config, 'a: 1\n');
    await writeFile(cert, 'c\n');
    /** The handles a watcher can hold: fs watches and timers (the manual clock's are counted apart). */
    const count = (): Record<string, number> => {
      const out: Record<string, number> = {};
      for (const r of process.getActiveResourcesInfo())
        if (r === 'FSEventWrap' || r === 'StatWatcher' || r === 'Timeout') out[r] = (out[r] ?? 0) + 1;
      return out;
    };
    const baseline = count();
    const { watcher, rec, clock } = startWatcher({
      configPath: config,
      files: () => [cert],
      pollIntervalMs: 100,
    });
    await noticed(clock, () => writeFile(config, 'a: 2\n'));
    clock.advance(100);
    assert.equal((await rec.waitFor(1)).length, 1);
    await noticed(clock, () => writeFile(config, 'a: 3\n')); // leaves a debounce timer pending
    assert.equal(clock.pending, 2, 'the poll and the debounce');
    const during = count();
    assert.ok((during['FSEventWrap'] ?? 0) > (baseline['FSEventWrap'] ?? 0), JSON.stringify(during));
    watcher.stop();
    assert.equal(clock.pending, 0, 'no timer left');
    // A closed fs watcher's handle goes at the end of the event loop turn.
    for (let i = 0; i < 500 && JSON.stringify(count()) !== JSON.stringify(baseline); i++)
      await new Promise((resolve) => setTimeout(resolve, 10));
    assert.deepEqual(count(), baseline);
    assert.deepEqual(watcher.watchedDirectories, []);
    await writeFile(config, 'a: 4\n');
    clock.advance(10_000);
    await watcher.refresh(); // stopped: checks nothing
    assert.equal(rec.events.length, 1);
  });
});
