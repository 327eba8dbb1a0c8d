// The daemon's own V8 settings (util/gc.ts): applied on the Node LTS lines they were measured on,
// never over a flag the admin passed, and left alone (with a reason) elsewhere.
import { after, before, describe, it } from 'node:test';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import { fork, spawnSync } from 'node:child_process';
import {
  GC_FLAGS,
  HEAP_FLAGS,
  HEAP_FLAGS_ENV,
  heapFlagsApplied,
  heapFlagsToAdd,
  tuneRuntime,
} from '../../src/util/gc.js';

const T = { timeout: 60_000 };

describe('tuneRuntime', () => {
  it('applies the GC settings on Node 24 and 26', () => {
    for (const v of ['24.21.0', '26.12.1']) {
      const r = tuneRuntime(v);
      assert.equal(r.skipped, null);
      assert.deepEqual(r.applied, GC_FLAGS);
    }
  });

  it('changes nothing on a Node line it was not measured on, and says why', () => {
    for (const v of ['20.20.2', '28.0.0']) {
      const r = tuneRuntime(v);
      assert.deepEqual(r.applied, []);
      assert.match(r.skipped ?? '', new RegExp(`Node ${v.replace(/\./g, '\\.')}: .*left at V8 defaults`));
    }
  });

  it('leaves a flag the admin passed on the command line alone', () => {
    const script = [
      `import { tuneRuntime } from ${JSON.stringify(new URL('../../src/util/gc.ts', import.meta.url).href)};`,
      `process.stdout.write(JSON.stringify(tuneRuntime('26.0.0')));`,
    ].join('\n');
    const run = (execArgv: string[]): { applied: string[] } => {
      const r = spawnSync(
        process.execPath,
        [...execArgv, '--import', 'tsx', '--input-type=module', '-e', script],
        {
          encoding: 'utf8',
          timeout: 30_000,
        },
      );
      assert.equal(r.status, 0, r.stderr);
      assert.equal(r.stderr, '', 'no warning printed');
      return JSON.parse(r.stdout) as { applied: string[] };
    };
    assert.deepEqual(run([]).applied, GC_FLAGS);
    assert.deepEqual(run(['--incremental-marking-soft-trigger=30']).applied, [
      '--incremental-marking-hard-trigger=80',
    ]);
  });
});

describe('the heap flags start re-executes itself with', () => {
  it('are added on Node 24 and 26 only, once, and never over a flag the admin set', () => {
    assert.deepEqual(HEAP_FLAGS, ['--max-semi-space-size=8']);
    for (const v of ['24.21.0', '26.12.1']) assert.deepEqual(heapFlagsToAdd(v, [], {}), HEAP_FLAGS);
    for (const v of ['20.20.2', '28.0.0']) assert.deepEqual(heapFlagsToAdd(v, [], {}), []);
    assert.deepEqual(heapFlagsToAdd('26.12.1', [...HEAP_FLAGS], {}), [], 'once re-executed');
    assert.deepEqual(
      heapFlagsApplied({ [HEAP_FLAGS_ENV]: HEAP_FLAGS.join(' ') }, [...HEAP_FLAGS]),
      HEAP_FLAGS,
    );
    assert.deepEqual(heapFlagsApplied({ [HEAP_FLAGS_ENV]: HEAP_FLAGS.join(' ') }, []), [], 'inherited only');
    assert.deepEqual(heapFlagsToAdd('26.12.1', ['--max-semi-space-size=16'], {}), []);
    assert.deepEqual(heapFlagsToAdd('26.12.1', ['--max_semi_space_size=16'], {}), []);
    assert.deepEqual(heapFlagsToAdd('26.12.1', [], { NODE_OPTIONS: '--max-semi-space-size=2' }), []);
    assert.deepEqual(heapFlagsToAdd('26.12.1', ['--max-old-space-size=512'], {}), HEAP_FLAGS);
  });

  // A program that re-executes as `start` would, then says what it runs with. process.execve keeps the
  // PID and the standard streams (what a service unit, PID 1 in a container and signals rely on).
  const script = [
    `import { heapFlagsApplied, reexecWithHeapFlags } from ${JSON.stringify(new URL('../../src/util/gc.ts', import.meta.url).href)};`,
    `reexecWithHeapFlags();`,
    `process.stdout.write(JSON.stringify({ pid: process.pid, execArgv: process.execArgv, applied: heapFlagsApplied() }));`,
  ].join('\n');
  let dir = '';
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'heap-flags-'));
    writeFileSync(join(dir, 'program.mjs'), script);
  });
  after(() => rmSync(dir, { recursive: true, force: true }));
  const run = (command: string, nodeArgs: string[] = [], env: Record<string, string> = {}) => {
    const r = spawnSync(
      process.execPath,
      [...nodeArgs, '--import', 'tsx', join(dir, 'program.mjs'), command],
      { encoding: 'utf8', timeout: 30_000, env: { ...process.env, NODE_OPTIONS: '', ...env } },
    );
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stderr, '', 'no warning printed');
    return {
      child: r.pid,
      ...(JSON.parse(r.stdout) as { pid: number; execArgv: string[]; applied: string[] }),
    };
  };

  it('start: the same process (same PID) runs again with the flags, and knows it did', () => {
    const r = run('start');
    assert.equal(r.pid, r.child, 'the same process');
    assert.deepEqual(r.applied, HEAP_FLAGS);
    assert.deepEqual(r.execArgv.slice(0, 1), HEAP_FLAGS);
    assert.ok(
      r.execArgv.includes('tsx'),
      `the node arguments it had are kept: ${JSON.stringify(r.execArgv)}`,
    );
  });

  it('not for another command, nor over an admin flag on the command line or in NODE_OPTIONS', () => {
    const other = run('ledger');
    assert.deepEqual(other.applied, []);
    assert.ok(!other.execArgv.some((a) => a.startsWith('--max-semi-space-size')));
    const own = run('start', ['--max-semi-space-size=16']);
    assert.deepEqual(own.applied, []);
    assert.deepEqual(
      own.execArgv.filter((a) => a.startsWith('--max-semi-space-size')),
      ['--max-semi-space-size=16'],
    );
    assert.deepEqual(run('start', [], { NODE_OPTIONS: '--max-semi-space-size=16' }).applied, []);
  });

  it('not when started with an IPC channel (a process manager forked it)', T, async () => {
    const child = fork(join(dir, 'program.mjs'), ['start'], {
      execArgv: ['--import', 'tsx'],
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
      env: { ...process.env, NODE_OPTIONS: '' },
    });
    let out = '';
    child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
    clearTimeout(timer);
    assert.equal(code, 0);
    assert.deepEqual((JSON.parse(out) as { applied: string[] }).applied, []);
  });
});
