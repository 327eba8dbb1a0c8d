// The layer rules of .dependency-cruiser.cjs (README "Layers"), run with the same command-line tool as
// `npm run deps` on small source trees in a temporary directory: a clean tree passes, and an upward
// import, a cycle, an import of the entry module and a folder outside the list are each reported. So a
// broken rule (a typo in a path pattern, a lost option) fails here instead of silently passing every tree.
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const configPath = join(root, '.dependency-cruiser.cjs');
const cli = join(root, 'node_modules', 'dependency-cruiser', 'bin', 'dependency-cruiser.mjs');

interface Rule {
  name: string;
}

/** The layer order as the config generates it: one `no-upward-from-<layer>` rule per layer, bottom first. */
const layers = (createRequire(import.meta.url)(configPath) as { forbidden: Rule[] }).forbidden
  .map((r) => /^no-upward-from-(.+)$/.exec(r.name)?.[1])
  .filter((l): l is string => l !== undefined);

interface Violation {
  from: string;
  to: string;
  rule: { name: string };
  cycle?: { name: string }[];
}

const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** Writes `files` (path → source) under a temporary directory and cruises its src/ with the project's config. */
function cruise(files: Record<string, string>): Violation[] {
  const dir = mkdtempSync(join(tmpdir(), 'layers-'));
  dirs.push(dir);
  const tsconfig = { compilerOptions: { module: 'NodeNext', moduleResolution: 'NodeNext', strict: true } };
  writeFileSync(join(dir, 'tsconfig.json'), JSON.stringify(tsconfig));
  for (const [path, text] of Object.entries(files)) {
    mkdirSync(dirname(join(dir, path)), { recursive: true });
    writeFileSync(join(dir, path), text);
  }
  const depcruise = (outputType: string) =>
    spawnSync(process.execPath, [cli, 'src', '--config', configPath, '--output-type', outputType], {
      cwd: dir,
      encoding: 'utf8',
    });
  const run = depcruise('json');
  assert.notEqual(run.stdout, '', `dependency-cruiser printed nothing: ${run.stderr}`);
  const violations = (JSON.parse(run.stdout) as { summary: { violations: Violation[] } }).summary.violations;
  // The exit status `npm run deps` gives (the json output always exits 0): non-zero exactly when reported.
  const err = depcruise('err-long');
  assert.equal(
    err.status === 0,
    violations.length === 0,
    `exit status ${err.status}: ${err.stdout}${err.stderr}`,
  );
  return violations;
}

const exporting = (name: string): string => `export type ${name} = { id: string };\n`;

describe('layer rules (.dependency-cruiser.cjs)', () => {
  it('lists the layers bottom to top', () => {
    assert.deepEqual(layers, [
      'util',
      'vocabulary',
      'pdu',
      'dimse',
      'dicom',
      'config',
      'tls',
      'policy',
      'integrity',
      'observe',
      'runtime',
      'relay',
      'cluster',
      'demo',
      'cli',
    ]);
  });

  it('passes a tree whose imports all point downward, type-only ones included', () => {
    const files: Record<string, string> = {};
    layers.forEach((layer, i) => {
      const below = layers
        .slice(0, i)
        .map((l) => `import type { T as ${l.replace(/\W/g, '_')} } from '../${l}/mod.js';\n`);
      files[`src/${layer}/mod.ts`] =
        `${below.join('')}import { helper } from './helper.js';\n${exporting('T')}`;
      files[`src/${layer}/helper.ts`] = 'export const helper = 1;\n';
    });
    files['src/cli.ts'] =
      `import type { T } from './cli/mod.js';\nimport type { T as U } from './util/mod.js';\n`;
    assert.deepEqual(cruise(files), []);
  });

  it('reports every import that points one layer up', () => {
    const files: Record<string, string> = {};
    layers.forEach((layer, i) => {
      const up = layers[i + 1];
      files[`src/${layer}/mod.ts`] =
        (up ? `import type { T as Up } from '../${up}/mod.js';\n` : '') + exporting('T');
    });
    const found = cruise(files).map((v) => `${v.rule.name}: ${v.from} -> ${v.to}`);
    const expected = layers
      .slice(0, -1)
      .map((layer, i) => `no-upward-from-${layer}: src/${layer}/mod.ts -> src/${layers[i + 1]}/mod.ts`);
    assert.deepEqual(found.sort(), expected.sort());
  });

  it('reports an upward type import and a cycle, next to clean modules', () => {
    const violations = cruise({
      'src/pdu/codec.ts': `import type { Server } from '../relay/server.js';\n${exporting('Pdu')}export type S = Server;\n`,
      'src/relay/server.ts': `import type { Pdu } from '../pdu/codec.js';\n${exporting('Server')}export type P = Pdu;\n`,
      'src/config/a.ts': `import type { B } from './b.js';\n${exporting('A')}export type BB = B;\n`,
      'src/config/b.ts': `import type { A } from './a.js';\n${exporting('B')}export type AA = A;\n`,
      'src/config/leaf.ts': exporting('Leaf'),
      'src/tls/ok.ts': `import type { Leaf } from '../config/leaf.js';\nexport type L = Leaf;\n`,
    });
    const upward = violations.filter((v) => v.rule.name === 'no-upward-from-pdu');
    assert.deepEqual(
      upward.map((v) => [v.from, v.to]),
      [['src/pdu/codec.ts', 'src/relay/server.ts']],
    );
    const cycles = violations.filter((v) => v.rule.name === 'no-circular');
    // The pdu → relay → pdu loop and a ↔ b, each reported from at least one of its modules.
    assert.ok(cycles.some((v) => v.from === 'src/config/a.ts' || v.from === 'src/config/b.ts'));
    assert.ok(cycles.some((v) => v.from === 'src/pdu/codec.ts' || v.from === 'src/relay/server.ts'));
    assert.ok(violations.every((v) => !v.from.includes('leaf') && !v.from.includes('ok.ts')));
  });

  it('reports an import of the entry module and of a folder missing from the list', () => {
    const violations = cruise({
      'src/cli.ts': exporting('Entry'),
      'src/relay/server.ts': `import type { Entry } from '../cli.js';\nexport type E = Entry;\n`,
      'src/extras/thing.ts': exporting('Thing'),
      'src/observe/log.ts': `import type { Thing } from '../extras/thing.js';\nexport type X = Thing;\n`,
    });
    assert.deepEqual(violations.map((v) => `${v.rule.name}: ${v.from} -> ${v.to}`).sort(), [
      'no-unlisted-layer: src/observe/log.ts -> src/extras/thing.ts',
      'no-upward-from-relay: src/relay/server.ts -> src/cli.ts',
    ]);
  });

  it("passes the project's own src/", () => {
    const run = spawnSync(process.execPath, [cli, 'src', '--config', configPath, '--output-type', 'err'], {
      cwd: root,
      encoding: 'utf8',
    });
    assert.equal(run.status, 0, run.stdout + run.stderr);
  });
});
