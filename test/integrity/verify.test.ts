// verifyLedger: every kind of tampering is found and named by file and line; signatures; torn tails; and a
// property test: any single-byte edit of a ledger file is detected.
import assert from 'node:assert/strict';
import { cp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { GENESIS_PREV, type UnsealedRecord, parseLine, sealRecord } from '../../src/integrity/format.js';
import { type VerifyReport, verifyLedger } from '../../src/integrity/verify.js';
import { findRecords } from '../../src/integrity/find.js';
import { LedgerWriter } from '../../src/integrity/writer.js';
import {
  KEYS,
  OTHER_KEYS,
  buildLedger,
  evidence,
  options,
  ledgerFiles,
  readLinesOf,
  removeDir,
  tempDir,
  writeLines,
} from './helpers.js';

function firstError(report: VerifyReport): { file: string; line: number; message: string } {
  assert.equal(report.ok, false, 'verification should fail');
  const e = report.errors[0];
  assert.ok(e, 'an error is reported');
  return e;
}

describe('verifyLedger', () => {
  let root: string;
  let pristine: string;
  let files: string[];
  let n = 0;
  /** A fresh copy of the pristine ledger: 4+ files, signed checkpoints, ~40 records. */
  const copy = async (): Promise<string> => {
    const dir = join(root, `c${++n}`);
    await cp(pristine, dir, { recursive: true });
    return dir;
  };

  before(async () => {
    root = await tempDir();
    pristine = join(root, 'pristine');
    await buildLedger(pristine, { records: 30, rotateMaxBytes: 6000, checkpointEvery: 7 });
    files = await ledgerFiles(pristine);
    assert.ok(files.length >= 4, `${files.length} files`);
  });
  after(async () => {
    await removeDir(root);
  });

  it('passes an intact ledger, whole or file by file', async () => {
    const report = await verifyLedger(pristine, { publicKeyPem: KEYS.publicKeyPem });
    assert.equal(report.ok, true, JSON.stringify(report.errors));
    assert.equal(report.files, files.length);
    assert.equal(report.instances, 30);
    assert.equal(report.signaturesVerified, report.checkpoints);
    assert.ok(report.checkpoints >= 4 + files.length - 1);
    assert.equal(report.unsignedCheckpoints, 0);
    assert.equal(report.tornTail, null);
    for (const f of files) {
      const single = await verifyLedger(join(pristine, f), { publicKeyPem: KEYS.publicKeyPem });
      assert.equal(single.ok, true, `${f}: ${JSON.stringify(single.errors)}`);
      assert.equal(single.files, 1);
    }
  });

  it('one edited byte: names the file and line', async () => {
    const dir = await copy();
    const file = join(dir, files[1]!);
    const lines = await readLinesOf(file);
    const edited = lines[3]!.replace('"callingAeTitle":"MODALITY1"', '"callingAeTitle":"MODALITY2"');
    assert.notEqual(edited, lines[3]);
    lines[3] = edited;
    await writeLines(file, lines);
    const report = await verifyLedger(dir);
    const e = firstError(report);
    assert.equal(e.file, files[1]);
    assert.equal(e.line, 4);
    assert.match(e.message, /hash mismatch/);
    assert.equal(report.errors.length, 1, JSON.stringify(report.errors));
  });

  it('whitespace added: not canonical', async () => {
    const dir = await copy();
    const file = join(dir, files[0]!);
    const lines = await readLinesOf(file);
    lines[1] = lines[1]!.replace('"v":2,', '"v": 2,');
    await writeLines(file, lines);
    const e = firstError(await verifyLedger(dir));
    assert.deepEqual([e.file, e.line], [files[0], 2]);
    assert.match(e.message, /canonical/);
  });

  it('a line deleted', async () => {
    const dir = await copy();
    const file = join(dir, files[2]!);
    const lines = await readLinesOf(file);
    lines.splice(2, 1);
    await writeLines(file, lines);
    const e = firstError(await verifyLedger(dir));
    assert.deepEqual([e.file, e.line], [files[2], 3]);
    assert.match(e.message, /prev does not match the hash of line 2/);
  });

  it('a line inserted (a copy of another record)', async () => {
    const dir = await copy();
    const file = join(dir, files[1]!);
    const lines = await readLinesOf(file);
    lines.splice(3, 0, lines[1]!);
    await writeLines(file, lines);
    const e = firstError(await verifyLedger(dir));
    assert.deepEqual([e.file, e.line], [files[1], 4]);
  });

  it('two lines swapped', async () => {
    const dir = await copy();
    const file = join(dir, files[1]!);
    const lines = await readLinesOf(file);
    [lines[2], lines[3]] = [lines[3]!, lines[2]!];
    await writeLines(file, lines);
    const e = firstError(await verifyLedger(dir));
    assert.deepEqual([e.file, e.line], [files[1], 3]);
  });

  it('a whole file deleted from the middle', async () => {
    const dir = await copy();
    await rm(join(dir, files[1]!));
    const report = await verifyLedger(dir);
    const e = firstError(report);
    assert.deepEqual([e.file, e.line], [files[2], 1]);
    assert.ok(
      report.errors.some(
        (x) => x.file === files[2] && /previous file is .*preceding file is/.test(x.message),
      ),
      JSON.stringify(report.errors),
    );
  });

  it('the first file deleted', async () => {
    const dir = await copy();
    await rm(join(dir, files[0]!));
    const e = firstError(await verifyLedger(dir));
    assert.deepEqual([e.file, e.line], [files[1], 1]);
  });

  it('a file truncated in the middle (whole lines cut from its end)', async () => {
    const dir = await copy();
    const file = join(dir, files[1]!);
    const lines = await readLinesOf(file);
    assert.equal(JSON.parse(lines[4]!).type, 'instance');
    await writeLines(file, lines.slice(0, 5));
    const report = await verifyLedger(dir);
    const e = firstError(report);
    assert.deepEqual([e.file, e.line], [files[1], 5]);
    assert.match(e.message, /does not end with a checkpoint/);
    assert.ok(
      report.errors.some((x) => x.file === files[2] && x.line === 1 && /prev does not match/.test(x.message)),
    );
  });

  it('a file truncated mid-line', async () => {
    const dir = await copy();
    const file = join(dir, files[1]!);
    const bytes = await readFile(file);
    await writeFile(file, bytes.subarray(0, Math.floor(bytes.length / 2)));
    const e = firstError(await verifyLedger(dir));
    assert.equal(e.file, files[1]);
    assert.ok(e.line >= 2);
  });

  it('a file renamed into the gap of a missing one', async () => {
    const dir = await copy();
    const last = files.at(-1)!;
    const bytes = await readFile(join(dir, last));
    await rm(join(dir, last));
    await writeFile(join(dir, 'ledger-000099.jsonl'), bytes);
    const e = firstError(await verifyLedger(dir));
    assert.equal(e.file, 'ledger-000099.jsonl');
    assert.match(e.message, /file-start names the file/);
  });

  it('a forged chain (edited, then every hash recomputed) passes without the key, fails with it', async () => {
    const dir = await copy();
    let prev = GENESIS_PREV;
    for (const f of files) {
      const out: string[] = [];
      for (const text of await readLinesOf(join(dir, f))) {
        const parsed = parseLine(Buffer.from(text));
        assert.ok(parsed.kind === 'record');
        const { hash: _hash, ...rest } = parsed.record;
        const body = { ...rest, prev } as UnsealedRecord;
        if (body.type === 'instance' && body.sopInstanceUid === '1.2.3.4.5')
          body.sopInstanceUid = '1.2.3.4.555';
        if (body.type === 'checkpoint') body.head = prev;
        const { record, line } = sealRecord(body);
        prev = record.hash;
        out.push(line.toString().trimEnd());
      }
      await writeLines(join(dir, f), out);
    }
    assert.equal((await verifyLedger(dir)).ok, true);
    const report = await verifyLedger(dir, { publicKeyPem: KEYS.publicKeyPem });
    const e = firstError(report);
    assert.match(e.message, /signature does not verify/);
  });

  describe('signatures', () => {
    it('the right key verifies every checkpoint; another key fails; no key leaves them unchecked', async () => {
      const right = await verifyLedger(pristine, { publicKeyPem: KEYS.publicKeyPem });
      assert.equal(right.ok, true);
      assert.equal(right.signaturesVerified, right.checkpoints);

      const wrong = await verifyLedger(pristine, { publicKeyPem: OTHER_KEYS.publicKeyPem });
      const e = firstError(wrong);
      assert.match(e.message, /signed by key [0-9a-f]{64}, not by the given public key/);
      assert.equal(wrong.signaturesVerified, 0);
      assert.equal(wrong.errors.length, wrong.checkpoints);

      const none = await verifyLedger(pristine);
      assert.equal(none.ok, true);
      assert.equal(none.signaturesVerified, 0);
    });

    it('the private key PEM works as the verification key too', async () => {
      const report = await verifyLedger(pristine, { publicKeyPem: KEYS.privateKeyPem });
      assert.equal(report.ok, true);
    });

    it('unsigned checkpoints fail when a key is given', async () => {
      const dir = join(root, 'unsigned');
      await buildLedger(dir, { records: 3, signed: false });
      const none = await verifyLedger(dir);
      assert.equal(none.ok, true);
      assert.equal(none.unsignedCheckpoints, 1);
      assert.match(
        firstError(await verifyLedger(dir, { publicKeyPem: KEYS.publicKeyPem })).message,
        /not signed/,
      );
    });
  });

  describe('torn tail', () => {
    it('a partial last line of the last file is reported, not an error', async () => {
      const dir = await copy();
      const last = files.at(-1)!;
      const lines = await readLinesOf(join(dir, last));
      await writeFile(join(dir, last), lines.map((l) => `${l}\n`).join('') + '{"v":1,"type":"inst');
      const report = await verifyLedger(dir, { publicKeyPem: KEYS.publicKeyPem });
      assert.equal(report.ok, true, JSON.stringify(report.errors));
      assert.deepEqual(report.tornTail, { file: last, line: lines.length + 1, bytes: 19 });
      assert.equal(report.records, (await verifyLedger(pristine)).records);
    });

    it('a partial line elsewhere is an error', async () => {
      const dir = await copy();
      const file = join(dir, files[0]!);
      await writeFile(file, (await readFile(file)).subarray(0, -1)); // drop the final LF
      const e = firstError(await verifyLedger(dir));
      assert.equal(e.file, files[0]);
      assert.match(e.message, /torn line/);
    });

    it('an empty ledger directory is not intact', async () => {
      const dir = join(root, 'empty');
      await cp(pristine, dir, { recursive: true, filter: (src) => !src.endsWith('.jsonl') });
      const report = await verifyLedger(dir);
      assert.equal(report.ok, false);
      assert.match(report.errors[0]!.message, /no ledger files/);
    });
  });

  it('property: any single-byte edit of any ledger file is detected (or is a reported torn tail)', async () => {
    const dir = await copy();
    const originals = await Promise.all(files.map((f) => readFile(join(dir, f))));
    const lastIndex = files.length - 1;
    const lastFile = originals[lastIndex]!;
    const lastLineStart = lastFile.lastIndexOf(0x0a, lastFile.length - 2) + 1;
    let runs = 0;
    let torn = 0;
    const started = performance.now();
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 0, max: files.length - 1 }),
        fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }),
        fc.integer({ min: 1, max: 255 }),
        async (fileIndex, where, delta) => {
          const original = originals[fileIndex]!;
          const pos = Math.floor(where * original.length);
          const edited = Buffer.from(original);
          edited[pos] = (edited[pos]! + delta) % 256;
          const path = join(dir, files[fileIndex]!);
          await writeFile(path, edited);
          try {
            const report = await verifyLedger(dir, { publicKeyPem: KEYS.publicKeyPem });
            runs += 1;
            if (report.ok) {
              // Only allowed when the edit made the last line of the last file torn (and it is reported).
              assert.equal(fileIndex, lastIndex, `undetected edit at ${files[fileIndex]} byte ${pos}`);
              assert.ok(pos >= lastLineStart, `undetected edit at byte ${pos}`);
              assert.ok(report.tornTail, 'a torn tail is reported');
              torn += 1;
            } else {
              const e = report.errors[0]!;
              assert.equal(e.file, files[fileIndex], JSON.stringify(report.errors));
            }
          } finally {
            await writeFile(path, original);
          }
        },
      ),
      { numRuns: 200, interruptAfterTimeLimit: 2500 },
    );
    assert.ok(runs >= 50, `only ${runs} runs in ${(performance.now() - started).toFixed(0)} ms`);
    assert.ok(torn < runs / 2, `${torn} torn`);
  });
});

describe('a ledger begun by an earlier release (format version 1) and continued in version 2', () => {
  it('verifies whole, and find reads both versions', async () => {
    const dir = await tempDir();
    try {
      // What the earlier writer left: a file-start and an instance record of version 1.
      const start = sealRecord({
        v: 1,
        type: 'file-start',
        seq: 1,
        time: '2025-01-01T00:00:00.000Z',
        file: 'ledger-000001.jsonl',
        previousFile: null,
        prev: GENESIS_PREV,
      } as UnsealedRecord);
      const { studyInstanceUid: _none, ...v1Evidence } = {
        v: 1,
        type: 'instance',
        seq: 2,
        ...evidence(0),
        prev: start.record.hash,
      } as Record<string, unknown>;
      const instance = sealRecord(v1Evidence as unknown as UnsealedRecord);
      await writeFile(join(dir, 'ledger-000001.jsonl'), Buffer.concat([start.line, instance.line]));
      assert.ok(!instance.line.toString().includes('studyInstanceUid'));
      // This release continues the chain.
      const w = await LedgerWriter.open(options(dir));
      await w.append(evidence(1, { studyInstanceUid: '1.2.3.4' }));
      await w.close();
      const report = await verifyLedger(dir, { publicKeyPem: KEYS.publicKeyPem });
      assert.equal(report.ok, true, JSON.stringify(report.errors));
      assert.equal(report.instances, 2);
      const found = await findRecords(dir, {});
      assert.deepEqual(
        found.map((f) => [f.record.v, f.record.studyInstanceUid]),
        [
          [1, undefined],
          [2, '1.2.3.4'],
        ],
      );
    } finally {
      await removeDir(dir);
    }
  });
});
