// The shipped systemd unit (deploy/systemd/dimse-tls-proxy.service): `systemd-analyze verify` accepts it
// without a warning (its ExecStart pointed at this checkout's node and build, the rest as shipped), its
// `systemd-analyze security` exposure stays at 2.0 or lower, and it agrees with the daemon: stop waits
// longer than the drain, reload is SIGHUP, nothing but the state directory is writable.
import { describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULTS } from '../../src/config/defaults.js';
import { parseDuration } from '../../src/config/duration.js';
import { CLI, assertBuilt } from '../helpers/daemon.js';
import { REQUIRE_PEERS, which } from '../helpers/peers.js';

const UNIT = join(import.meta.dirname, '..', '..', 'deploy', 'systemd', 'dimse-tls-proxy.service');
const text = readFileSync(UNIT, 'utf8');

/** Every value of `key` in the unit (a key may repeat), in order. */
function values(key: string): string[] {
  return [...text.matchAll(new RegExp(`^${key}=(.*)$`, 'gm'))].map((m) => (m[1] ?? '').trim());
}

function needAnalyze(t: TestContext): boolean {
  if (which('systemd-analyze')) return true;
  const message = 'systemd-analyze not installed: apt-get install -y systemd';
  if (REQUIRE_PEERS) throw new Error(`DIMSE_PROXY_REQUIRE_PEERS=1 but ${message}`);
  t.skip(message);
  return false;
}

function analyze(args: string[]): { code: number | null; out: string } {
  const r = spawnSync('systemd-analyze', args, { encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, out: `${r.stdout}${r.stderr}`.trim() };
}

/** The unit with its executables pointed at this checkout, written to a temporary folder. */
function localCopy(edit: (unit: string) => string = (u) => u): { path: string; done: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'dimse-unit-'));
  const path = join(dir, 'dimse-tls-proxy.service');
  const local = text
    .replaceAll('/usr/bin/node', process.execPath)
    .replaceAll('/opt/dimse-tls-proxy/dist/cli.js', CLI);
  writeFileSync(path, edit(local));
  return { path, done: () => rmSync(dir, { recursive: true, force: true }) };
}

describe('systemd unit', () => {
  test('systemd-analyze verify accepts it without a warning; a broken copy is reported', (t) => {
    if (!needAnalyze(t)) return;
    assertBuilt();
    const good = localCopy();
    try {
      const r = analyze(['verify', good.path]);
      assert.deepEqual([r.code, r.out], [0, ''], r.out);
    } finally {
      good.done();
    }
    const bad = localCopy((u) => u.replace('ProtectSystem=strict', 'ProtectSystem=strict\nProtectSystm=yes'));
    try {
      assert.match(analyze(['verify', bad.path]).out, /Unknown key 'ProtectSystm'/);
    } finally {
      bad.done();
    }
  });

  test('systemd-analyze security: overall exposure 2.0 or lower', (t) => {
    if (!needAnalyze(t)) return;
    const r = analyze(['security', '--offline=true', UNIT]);
    const m = /Overall exposure level for \S+: ([0-9.]+)/.exec(r.out);
    assert.ok(m, r.out.slice(-2000));
    const exposure = Number(m[1]);
    t.diagnostic(`exposure ${exposure}`);
    assert.ok(exposure <= 2.0, `exposure ${exposure} > 2.0`);
  });

  test('agrees with the daemon: stop outlasts the drain, reload is SIGHUP, only the state directory is writable', () => {
    const drain = parseDuration(DEFAULTS.limits.drainTimeout);
    const stop = parseDuration(values('TimeoutStopSec')[0] ?? '');
    assert.ok(drain.ok && stop.ok);
    assert.ok(stop.ms > drain.ms, `TimeoutStopSec ${stop.ms} ms must exceed drainTimeout ${drain.ms} ms`);
    assert.deepEqual(values('ExecReload'), ['/bin/kill -HUP $MAINPID']);
    assert.deepEqual(values('KillSignal'), ['SIGTERM']);
    assert.deepEqual(values('ProtectSystem'), ['strict']);
    assert.deepEqual(values('ReadWritePaths'), [`/var/lib/${values('StateDirectory')[0]}`]);
    assert.deepEqual(values('CapabilityBoundingSet'), ['']);
    assert.deepEqual(values('NoNewPrivileges'), ['yes']);
    assert.match(values('ExecStart')[0] ?? '', / start -c \/etc\/dimse-tls-proxy\/proxy\.yaml$/);
  });
});
