// findRecords / hashPart10File / exportRecords on real files.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { Part10Error, encodeFileMeta } from '../../src/dicom/part10.js';
import { EXPORT_COLUMNS, exportRecords, findRecords, hashPart10File } from '../../src/integrity/find.js';
import { LedgerWriter } from '../../src/integrity/writer.js';
import { Clock, evidence, options, removeDir, tempDir } from './helpers.js';

const SOP_CLASS = '1.2.840.10008.5.1.4.1.1.7';
const TS = '1.2.840.10008.1.2.1';

async function collect(fn: (out: NodeJS.WritableStream) => Promise<unknown>): Promise<string> {
  const out = new PassThrough();
  const chunks: Buffer[] = [];
  out.on('data', (c: Buffer) => chunks.push(c));
  await fn(out);
  out.end();
  return Buffer.concat(chunks).toString('utf8');
}

/** Minimal RFC 4180 parser (quoted fields, doubled quotes, CRLF). */
function parseCsv(text: string): string[][] {
  const rows: string[][] = [];
  let row: string[] = [];
  let field = '';
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') {
        field += '"';
        i++;
      } else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"') quoted = true;
    else if (c === ',') {
      row.push(field);
      field = '';
    } else if (c === '\r' && text[i + 1] === '\n') {
      row.push(field);
      rows.push(row);
      row = [];
      field = '';
      i++;
    } else field += c;
  }
  assert.equal(field, '', 'CSV ends with CRLF');
  return rows;
}

describe('find and export', () => {
  let root: string;
  let ledger: string;
  let dcm: string;
  let dataset: Buffer;
  const uid = '1.2.826.0.1.3680043.8.498.1';

  before(async () => {
    root = await tempDir();
    ledger = join(root, 'ledger');
    dataset = randomBytes(3 * 1024 * 1024 + 17); // streamed in several chunks
    dcm = join(root, 'image.dcm');
    await writeFile(
      dcm,
      Buffer.concat([
        encodeFileMeta({
          sopClassUid: SOP_CLASS,
          sopInstanceUid: uid,
          transferSyntaxUid: TS,
          sourceAeTitle: 'MOD',
        }),
        dataset,
      ]),
    );
    const clock = new Clock(new Date('2025-02-01T00:00:00.000Z'));
    const w = await LedgerWriter.open(options(ledger, { now: clock.now, rotateMaxBytes: 4000 }));
    for (let i = 0; i < 10; i++) await w.append(evidence(i));
    await w.append(
      evidence(10, {
        time: '2025-01-01T13:00:00.000Z',
        sopInstanceUid: uid,
        sopClassUid: SOP_CLASS,
        bytes: dataset.length,
        sha256: createHash('sha256').update(dataset).digest('hex'),
        callingAeTitle: 'MOD, "A"',
      }),
    );
    await w.append(
      evidence(11, { time: '2025-01-01T14:00:00.000Z', sopInstanceUid: uid, outcome: 'failure' }),
    );
    await w.appendCommitted({
      sopClassUid: SOP_CLASS,
      sopInstanceUid: uid,
      transactionUid: '1.2.3.77',
      confirms: 13,
    });
    await w.close();
  });
  after(async () => {
    await removeDir(root);
  });

  it('hashPart10File hashes the data set after the meta header', async () => {
    const r = await hashPart10File(dcm);
    assert.equal(r.bytes, dataset.length);
    assert.equal(r.sha256, createHash('sha256').update(dataset).digest('hex'));
  });

  it('hashPart10File: an empty data set, and a file that is not Part 10', async () => {
    const empty = join(root, 'empty.dcm');
    await writeFile(
      empty,
      encodeFileMeta({ sopClassUid: SOP_CLASS, sopInstanceUid: uid, transferSyntaxUid: TS }),
    );
    assert.deepEqual(await hashPart10File(empty), {
      bytes: 0,
      sha256: createHash('sha256').update(Buffer.alloc(0)).digest('hex'),
    });
    const bogus = join(root, 'bogus.dcm');
    await writeFile(bogus, Buffer.alloc(300));
    await assert.rejects(hashPart10File(bogus), Part10Error);
  });

  it('findRecords by data set SHA-256 and by SOP Instance UID', async () => {
    const { sha256 } = await hashPart10File(dcm);
    const bySha = await findRecords(ledger, { sha256 });
    assert.equal(bySha.length, 1);
    assert.equal(bySha[0]!.record.sopInstanceUid, uid);
    assert.match(bySha[0]!.file, /^ledger-\d{6}\.jsonl$/);
    assert.ok(bySha[0]!.line >= 2);

    const byUid = await findRecords(ledger, { sopInstanceUid: uid });
    assert.deepEqual(
      byUid.map((f) => f.record.outcome),
      ['success', 'failure'],
    );
    assert.deepEqual(await findRecords(ledger, { sopInstanceUid: '9.9.9' }), []);
    assert.equal(
      (await findRecords(ledger, { sha256: sha256.toUpperCase(), sopInstanceUid: uid })).length,
      1,
    );
  });

  it('exports CSV (RFC 4180) with since/until', async () => {
    const csv = await collect((out) =>
      exportRecords(
        ledger,
        {
          since: new Date('2025-01-01T12:00:05.000Z'),
          until: new Date('2025-01-01T14:00:00.000Z'),
          format: 'csv',
        },
        out,
      ),
    );
    const rows = parseCsv(csv);
    assert.deepEqual(rows[0], [...EXPORT_COLUMNS]);
    const col = (name: string): number => EXPORT_COLUMNS.indexOf(name);
    const body = rows.slice(1);
    // evidence 5..9 (12:00:05..12:00:09) and the 13:00 one; 14:00 is excluded (until is exclusive),
    // the committed record (2025-02-01) is after until.
    assert.equal(body.length, 6);
    assert.ok(body.every((r) => r.length === EXPORT_COLUMNS.length));
    const special = body.find((r) => r[col('sopInstanceUid')] === uid)!;
    assert.equal(special[col('callingAeTitle')], 'MOD, "A"');
    assert.equal(special[col('clientCertSha256')], '');
    assert.ok(csv.includes('"MOD, ""A"""'));
  });

  it('exports JSON: one array of the records as stored, committed included', async () => {
    const text = await collect((out) =>
      exportRecords(ledger, { since: new Date('2025-01-01T13:00:00Z'), format: 'json' }, out),
    );
    const arr = JSON.parse(text) as Array<{ type: string; sopInstanceUid: string; hash: string }>;
    assert.deepEqual(
      arr.map((r) => r.type),
      ['instance', 'instance', 'committed'],
    );
    assert.ok(arr.every((r) => r.sopInstanceUid === uid && /^[0-9a-f]{64}$/.test(r.hash)));
    const none = await collect((out) =>
      exportRecords(ledger, { until: new Date('2000-01-01'), format: 'json' }, out),
    );
    assert.deepEqual(JSON.parse(none), []);
  });
});

describe('find and export by study and calling AE title', () => {
  let root: string;
  let ledger: string;
  const STUDY_A = '1.2.826.0.1.3680043.8.498.100';
  const STUDY_B = '1.2.826.0.1.3680043.8.498.200';

  before(async () => {
    root = await tempDir();
    ledger = join(root, 'ledger');
    const w = await LedgerWriter.open(options(ledger));
    await w.append(
      evidence(0, { studyInstanceUid: STUDY_A, callingAeTitle: 'CT_ROOM1', sopInstanceUid: '9.1' }),
    );
    await w.append(
      evidence(1, { studyInstanceUid: STUDY_B, callingAeTitle: 'MR_ROOM2', sopInstanceUid: '9.2' }),
    );
    await w.append(
      evidence(2, { studyInstanceUid: STUDY_A, callingAeTitle: 'MR_ROOM2', sopInstanceUid: '9.3' }),
    );
    await w.append(
      evidence(3, { studyInstanceUid: null, callingAeTitle: 'CT_ROOM1', sopInstanceUid: '9.4' }),
    );
    await w.appendCommitted({ sopClassUid: SOP_CLASS, sopInstanceUid: '9.3', transactionUid: '7.7' });
    await w.appendCommitted({ sopClassUid: SOP_CLASS, sopInstanceUid: '9.2', transactionUid: '7.7' });
    await w.close();
  });
  after(async () => {
    await removeDir(root);
  });

  it('findRecords by study, by calling AE title (padding ignored), and by both', async () => {
    const uids = async (q: Parameters<typeof findRecords>[1]) =>
      (await findRecords(ledger, q)).map((f) => f.record.sopInstanceUid);
    assert.deepEqual(await uids({ studyInstanceUid: STUDY_A }), ['9.1', '9.3']);
    assert.deepEqual(await uids({ callingAeTitle: 'CT_ROOM1 ' }), ['9.1', '9.4']);
    assert.deepEqual(await uids({ studyInstanceUid: STUDY_A, callingAeTitle: 'MR_ROOM2' }), ['9.3']);
    assert.deepEqual(await uids({ studyInstanceUid: '1.2.999' }), []);
  });

  it('export --study keeps the instances of the study and the commitment records that confirm them', async () => {
    const json = await collect((out) =>
      exportRecords(ledger, { format: 'json', studyInstanceUid: STUDY_A }, out),
    );
    const records = JSON.parse(json) as Array<{ type: string; sopInstanceUid: string }>;
    assert.deepEqual(
      records.map((r) => [r.type, r.sopInstanceUid]),
      [
        ['instance', '9.1'],
        ['instance', '9.3'],
        ['committed', '9.3'],
      ],
    );
    const csv = parseCsv(
      await collect((out) => exportRecords(ledger, { format: 'csv', callingAeTitle: 'MR_ROOM2' }, out)),
    );
    const col = (csv[0] as string[]).indexOf('studyInstanceUid');
    assert.ok(col > 0, 'studyInstanceUid is an export column');
    assert.deepEqual(
      csv.slice(1).map((r) => r[col]),
      [STUDY_B, STUDY_A, '', ''],
      'the two instances MR_ROOM2 sent and the two commitments confirming them',
    );
  });
});
