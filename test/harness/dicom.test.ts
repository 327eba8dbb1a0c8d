import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import {
  SOP_CLASS,
  TS,
  buildPart10,
  datasetOf,
  datasetOffset,
  metaString,
  newUid,
  writeInstances,
} from '../helpers/dicom.js';
import { describeRun, makeTempDir, removeTempDir, runTool, skipUnlessPeer } from '../helpers/peers.js';

/** Walk a little-endian data set's top level and return its tags (explicit or implicit VR). */
function topLevelTags(ds: Buffer, explicit: boolean): string[] {
  const tags: string[] = [];
  const long = new Set(['OB', 'OD', 'OF', 'OL', 'OV', 'OW', 'SQ', 'SV', 'UC', 'UN', 'UR', 'UT', 'UV']);
  let off = 0;
  while (off < ds.length) {
    const group = ds.readUInt16LE(off);
    const element = ds.readUInt16LE(off + 2);
    tags.push(`${group.toString(16).padStart(4, '0')},${element.toString(16).padStart(4, '0')}`);
    let len: number;
    if (!explicit) {
      len = ds.readUInt32LE(off + 4);
      off += 8;
    } else if (long.has(ds.toString('latin1', off + 4, off + 6))) {
      len = ds.readUInt32LE(off + 8);
      off += 12;
    } else {
      len = ds.readUInt16LE(off + 6);
      off += 8;
    }
    if (len === 0xffffffff) {
      // Encapsulated pixel data: items up to the sequence delimiter.
      for (;;) {
        const itemTag = ds.readUInt16LE(off + 2);
        const itemLen = ds.readUInt32LE(off + 4);
        off += 8 + itemLen;
        if (itemTag === 0xe0dd) break;
      }
    } else {
      assert.equal(len % 2, 0, `odd length at ${tags.at(-1) ?? ''}`);
      off += len;
    }
  }
  assert.equal(off, ds.length);
  return tags;
}

describe('DICOM Part 10 test files (test/helpers/dicom.ts)', () => {
  let dir: string | undefined;
  after(async () => removeTempDir(dir));

  it('newUid makes distinct 2.25 UIDs of legal length', () => {
    const uids = new Set(Array.from({ length: 1000 }, () => newUid()));
    assert.equal(uids.size, 1000);
    for (const u of uids) {
      assert.match(u, /^2\.25\.(0|[1-9][0-9]*)$/);
      assert.ok(u.length <= 64);
    }
  });

  it('writes preamble, DICM, meta group with group length, then the data set in ascending tag order', () => {
    for (const ts of [TS.explicitLE, TS.implicitLE, TS.jpegBaseline, TS.rle, TS.jpeg2000]) {
      const sop = newUid();
      const f = buildPart10({
        pixelBytes: 10_001,
        transferSyntaxUid: ts,
        sopInstanceUid: sop,
        withPrivateTags: true,
        withGroupLengths: true,
        fragments: 2,
      });
      assert.equal(f.toString('latin1', 128, 132), 'DICM');
      assert.ok(f.subarray(0, 128).equals(Buffer.alloc(128)));
      assert.equal(metaString(f, 0x0010), ts);
      assert.equal(metaString(f, 0x0003), sop);
      assert.equal(metaString(f, 0x0002), SOP_CLASS.secondaryCapture);
      const ds = datasetOf(f);
      assert.equal(datasetOffset(f) + ds.length, f.length);
      const tags = topLevelTags(ds, ts !== TS.implicitLE);
      assert.deepEqual([...tags].sort(), tags, 'ascending order');
      for (const t of [
        '0008,0000',
        '0009,0010',
        '0009,1001',
        '0010,0020',
        '0020,000d',
        '0028,0010',
        '7fe0,0010',
      ]) {
        assert.ok(tags.includes(t), `${t} present for ${ts}`);
      }
    }
  });

  it('makes native pixel geometry consistent with the pixel bytes', () => {
    const f = buildPart10({ pixelBytes: 512 * 1024, sopClassUid: SOP_CLASS.ctImage });
    const ds = datasetOf(f);
    // Rows (0028,0010) and Columns (0028,0011) are US in explicit VR: tag(4) VR(2) len(2) value(2).
    const rowsAt = ds.indexOf(Buffer.from([0x28, 0x00, 0x10, 0x00, 0x55, 0x53]));
    const colsAt = ds.indexOf(Buffer.from([0x28, 0x00, 0x11, 0x00, 0x55, 0x53]));
    const rows = ds.readUInt16LE(rowsAt + 8);
    const cols = ds.readUInt16LE(colsAt + 8);
    assert.equal(rows * cols * 2, 512 * 1024);
  });

  it('builds a ~200 MB instance quickly and deterministically', () => {
    const t0 = performance.now();
    const a = buildPart10({ pixelBytes: 200 * 1024 * 1024, seed: 7, sopInstanceUid: '1.2.3' });
    const ms = performance.now() - t0;
    assert.ok(a.length > 200 * 1024 * 1024);
    assert.ok(ms < 10_000, `took ${ms} ms`);
    const b = buildPart10({ pixelBytes: 4096, seed: 7, sopInstanceUid: '1.2.3' });
    const c = buildPart10({ pixelBytes: 4096, seed: 8, sopInstanceUid: '1.2.3' });
    assert.ok(a.subarray(a.length - 4096).equals(a.subarray(a.length - 4096 - 65536, a.length - 65536)));
    assert.ok(!datasetOf(b).subarray(-4096).equals(datasetOf(c).subarray(-4096)), 'seed changes the pixels');
  });

  it('writeInstances writes unique SOP instances sharing one study and series', async () => {
    dir = await makeTempDir('dicom');
    const paths = await writeInstances(join(dir, 'batch'), 5, { pixelBytes: 1024 });
    assert.equal(paths.length, 5);
    const files = await Promise.all(paths.map((p) => readFile(p)));
    assert.equal(new Set(files.map((f) => metaString(f, 0x0003))).size, 5);
    const studyOf = (f: Buffer) => {
      const ds = datasetOf(f);
      const at = ds.indexOf(Buffer.from([0x20, 0x00, 0x0d, 0x00, 0x55, 0x49]));
      return ds.toString('latin1', at + 8, at + 8 + ds.readUInt16LE(at + 6));
    };
    assert.equal(new Set(files.map(studyOf)).size, 1);
  });

  it('dcmdump parses every variant without complaint', async (t) => {
    if (!skipUnlessPeer(t, 'dcmtk')) return;
    dir ??= await makeTempDir('dicom');
    const variants = [
      { transferSyntaxUid: TS.explicitLE, withPrivateTags: true, withGroupLengths: true },
      { transferSyntaxUid: TS.implicitLE, withPrivateTags: true, withGroupLengths: true },
      { transferSyntaxUid: TS.jpegBaseline, fragments: 3 },
      { transferSyntaxUid: TS.rle },
      { transferSyntaxUid: TS.jpeg2000, sopClassUid: SOP_CLASS.ctImage },
      { sopClassUid: SOP_CLASS.ctImage, withGroupLengths: true },
    ];
    for (const [i, v] of variants.entries()) {
      const path = join(dir, `variant-${i}.dcm`);
      await writeFile(path, buildPart10({ pixelBytes: 3000, ...v }));
      const r = await runTool('dcmdump', ['-M', '-Ep', path], { timeoutMs: 10_000 });
      assert.equal(r.code, 0, describeRun(r));
      assert.doesNotMatch(r.stderr, /^[EWF]:/m, describeRun(r));
      assert.match(r.stdout, /PixelData/);
    }
  });
});
