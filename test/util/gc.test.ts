// The daemon's own V8 settings (util/gc.ts): applied on the Node LTS lines they were measured on,
// never over a flag the admin passed, and left alone (with a reason) elsewhere.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { GC_FLAGS, tuneRuntime } from '../../src/util/gc.js';

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
