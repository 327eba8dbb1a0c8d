// readLines: byte-exact LF splitting across read chunks, torn last lines, over-long lines.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { MAX_LINE_BYTES } from '../../src/integrity/format.js';
import { readLines } from '../../src/integrity/lines.js';
import { buildLedger, removeDir, tempDir } from './helpers.js';
import { verifyLedger } from '../../src/integrity/verify.js';

describe('readLines', () => {
  let root: string;
  before(async () => {
    root = await tempDir();
  });
  after(async () => {
    await removeDir(root);
  });

  it('splits on LF only, exactly, across 64 KiB chunk boundaries', async () => {
    const parts: Buffer[] = [];
    for (let i = 0; i < 400; i++) {
      const body = Buffer.from(randomBytes(1 + ((i * 7919) % 3000)).map((b) => (b === 0x0a ? 0x0d : b)));
      parts.push(body);
    }
    const file = join(root, 'lines');
    await writeFile(file, Buffer.concat(parts.flatMap((p) => [p, Buffer.from('\n')])));
    let offset = 0;
    let count = 0;
    for await (const raw of readLines(file)) {
      const expected = parts[count]!;
      assert.deepEqual(raw.bytes, expected, `line ${raw.line}`);
      assert.equal(raw.line, count + 1);
      assert.equal(raw.offset, offset);
      assert.equal(raw.terminated, true);
      offset += expected.length + 1;
      count += 1;
    }
    assert.equal(count, parts.length);
  });

  it('reports a last line without LF, and over-long lines without keeping them', async () => {
    const file = join(root, 'long');
    const long = Buffer.alloc(MAX_LINE_BYTES + 10, 0x41);
    await writeFile(file, Buffer.concat([Buffer.from('a\n'), long, Buffer.from('\nb\nc')]));
    const got = [];
    for await (const raw of readLines(file)) got.push(raw);
    assert.deepEqual(
      got.map((r) => [r.line, r.length, r.overlong, r.terminated, r.bytes.toString()]),
      [
        [1, 1, false, true, 'a'],
        [2, long.length, true, true, ''],
        [3, 1, false, true, 'b'],
        [4, 1, false, false, 'c'],
      ],
    );
  });

  it('a ledger file spanning many chunks verifies', async () => {
    const dir = join(root, 'big');
    await buildLedger(dir, { records: 300 });
    const report = await verifyLedger(dir);
    assert.equal(report.ok, true, JSON.stringify(report.errors));
    assert.equal(report.instances, 300);
  });
});
