// The data set prefix reader: Patient, Study, Accession and Modality read from the first bytes of a C-STORE
// data set in every transfer syntax the proxy meets, fed whole, split at every offset and byte by byte;
// sequences of defined and undefined length before the tags; character sets; the byte budget; malformed,
// truncated and hostile input (never an error, never slow); a cross-check against dcmjs-dimse encodings.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { deflateRawSync } from 'node:zlib';
import dimse from 'dcmjs-dimse';
import fc from 'fast-check';
import {
  DataSetPrefixReader,
  inflatePrefix,
  PREFIX_BUDGET,
  readSummary,
  UNKNOWN_SUMMARY,
  type DataSetSummary,
} from '../../src/dicom/prefix.js';
import {
  DEFLATED,
  EXPLICIT_BE,
  EXPLICIT_LE,
  IMPLICIT,
  SYNTAXES,
  dataSet,
  encode,
  syntaxOf,
  type Elem,
  type Item,
} from '../helpers/dataset.js';

const { Dataset } = dimse;
dimse.log.setLevel('error');

const CT = '1.2.840.10008.5.1.4.1.1.2';
const STUDY = '1.2.826.0.1.3680043.2.1125.9.1';

const str = (tag: number, vr: string, value: string | Buffer): Elem => ({ tag, vr, value });
const sq = (tag: number, items: Item[], undefinedLength = false): Elem => ({
  tag,
  vr: 'SQ',
  items,
  undefinedLength,
});

/** A CT image's leading elements, with a nested sequence of each kind before the patient, then pixel data. */
function image(
  opts: { charset?: string; name?: string | Buffer; pixels?: number; extra?: Elem[] } = {},
): Elem[] {
  const referenced = sq(0x00081140, [
    { elements: [str(0x00081150, 'UI', CT), str(0x00081155, 'UI', '1.2.3.4')] },
    {
      elements: [
        str(0x00081150, 'UI', CT),
        sq(0x00089215, [{ elements: [str(0x00080100, 'SH', 'X')] }], true),
      ],
      undefinedLength: true,
    },
  ]);
  return [
    ...(opts.charset !== undefined ? [str(0x00080005, 'CS', opts.charset)] : []),
    str(0x00080016, 'UI', CT),
    str(0x00080018, 'UI', '1.2.826.0.1.3680043.2.1125.9.1.1'),
    str(0x00080050, 'SH', 'ACC-0042'),
    str(0x00080060, 'CS', 'CT'),
    sq(0x00081032, [{ elements: [str(0x00080100, 'SH', 'CODE')], undefinedLength: true }], true),
    referenced,
    ...(opts.extra ?? []),
    str(0x00100010, 'PN', opts.name ?? 'Doe^Jane'),
    str(0x00100020, 'LO', 'PID-001'),
    str(0x00100021, 'LO', 'HOSP'),
    str(0x00100030, 'DA', '19700101'),
    str(0x0020000d, 'UI', STUDY),
    str(0x0020000e, 'UI', `${STUDY}.1`),
    str(0x7fe00010, 'OW', Buffer.alloc(opts.pixels ?? 4096, 7)),
  ];
}

const EXPECTED: DataSetSummary = {
  patientId: 'PID-001',
  patientName: 'Doe^Jane',
  issuerOfPatientId: 'HOSP',
  studyInstanceUid: STUDY,
  accessionNumber: 'ACC-0042',
  modality: 'CT',
};

/** Feeds `bytes` to a reader in fragments cut at `cuts`, as the relay would; returns the summary. */
function stream(bytes: Buffer, ts: string, cuts: number[]): DataSetSummary {
  const r = new DataSetPrefixReader(ts);
  let at = 0;
  for (const cut of [...cuts, bytes.length]) {
    // Each fragment in a buffer of its own, with bytes before and after, as a read buffer holds PDUs.
    const frame = Buffer.concat([Buffer.from([0xee, 0xee]), bytes.subarray(at, cut), Buffer.from([0xee])]);
    r.update(frame, 2, 2 + (cut - at));
    at = cut;
  }
  return r.summary();
}

describe('data set prefix reader', () => {
  for (const ts of SYNTAXES) {
    it(`reads patient, study, accession and modality in ${ts}, whole, split anywhere and byte by byte`, () => {
      const bytes = dataSet(image(), ts);
      assert.deepEqual(stream(bytes, ts, []), EXPECTED);
      for (let cut = 0; cut <= bytes.length; cut += ts === DEFLATED ? 1 : 7) {
        assert.deepEqual(stream(bytes, ts, [cut]), EXPECTED, `split at ${cut}`);
      }
      const prefix = Math.min(bytes.length, 1200);
      const oneByOne = Array.from({ length: prefix }, (_, i) => i);
      assert.deepEqual(stream(bytes, ts, oneByOne), EXPECTED, 'byte by byte');
    });
  }

  it('reads the first fragment in place and stops there when it holds the elements', () => {
    const bytes = dataSet(image({ pixels: 200_000 }), EXPLICIT_LE);
    const r = new DataSetPrefixReader(EXPLICIT_LE);
    r.update(bytes, 0, 16384);
    assert.equal(r.done, true, 'done after the first 16 KiB');
    r.update(Buffer.alloc(16), 0, 16); // later fragments are not looked at
    assert.deepEqual(r.summary(), EXPECTED);
  });

  it('stops at the first element past Study Instance UID: the rest may be anything', () => {
    const bytes = Buffer.concat([
      encode(image().slice(0, -2), syntaxOf(EXPLICIT_LE)),
      Buffer.from([0x20, 0x00, 0x0e, 0x00, 0x55, 0x49, 0xff, 0xff]), // (0020,000E) claiming 64 KiB
      Buffer.alloc(8, 0xff),
    ]);
    const r = readSummary(bytes, EXPLICIT_LE, false);
    assert.equal(r.done, true);
    assert.deepEqual(r.summary, EXPECTED);
  });

  it('decodes Patient Name in the Specific Character Set (ISO_IR 192, ISO_IR 100, ISO_IR 144)', () => {
    const cases: Array<[string, Buffer, string]> = [
      ['ISO_IR 192', Buffer.from('Müller^Zoë', 'utf8'), 'Müller^Zoë'],
      ['ISO_IR 100', Buffer.from('Müller^Zoë', 'latin1'), 'Müller^Zoë'],
      ['ISO_IR 144', Buffer.from([0xbf, 0xe3, 0xe8, 0xda, 0xd8, 0xdd]), 'Пушкин'],
      ['', Buffer.from('Plain^Ascii'), 'Plain^Ascii'],
      ['ISO 2022 IR 999', Buffer.from([0x41, 0xe9]), 'A\uFFFD'],
    ];
    for (const [charset, name, want] of cases) {
      const elements = image({
        charset,
        name: name.length % 2 ? Buffer.concat([name, Buffer.from(' ')]) : name,
      });
      assert.equal(
        readSummary(dataSet(elements, EXPLICIT_LE), EXPLICIT_LE, true).summary.patientName,
        want,
        charset,
      );
    }
  });

  it('reads the elements with VR UN (explicit VR, PS3.5 6.2.2) and leaves absent ones null', () => {
    const elements: Elem[] = [
      str(0x00100010, 'UN', Buffer.from('Un^Known ')),
      str(0x0020000d, 'UN', Buffer.from(`${STUDY}\0`)),
    ];
    const r = readSummary(dataSet(elements, EXPLICIT_LE), EXPLICIT_LE, true);
    assert.deepEqual(r.summary, { ...UNKNOWN_SUMMARY, patientName: 'Un^Known', studyInstanceUid: STUDY });
  });

  it('answers unknown past the byte budget, keeping what came before it', () => {
    const big = str(0x00091010, 'OB', Buffer.alloc(PREFIX_BUDGET + 10)); // a private element before the patient
    const bytes = dataSet(image({ extra: [big] }), EXPLICIT_LE);
    const got = stream(bytes, EXPLICIT_LE, [1000, 30000, 70000]);
    assert.deepEqual(got, { ...UNKNOWN_SUMMARY, accessionNumber: 'ACC-0042', modality: 'CT' });
  });

  it('answers unknown for malformed and truncated data sets, and for an association cut short', () => {
    assert.deepEqual(
      readSummary(Buffer.from('not a data set at all'), EXPLICIT_LE, true).summary,
      UNKNOWN_SUMMARY,
    );
    const bytes = dataSet(image(), IMPLICIT);
    const cut = new DataSetPrefixReader(IMPLICIT);
    cut.update(bytes, 0, 60); // the association ends here
    assert.deepEqual(cut.summary(), UNKNOWN_SUMMARY);
    const none = new DataSetPrefixReader(EXPLICIT_BE);
    assert.deepEqual(none.summary(), UNKNOWN_SUMMARY, 'no bytes at all');
  });

  it('inflates only a bounded prefix of a deflate bomb, quickly', () => {
    const bomb = deflateRawSync(Buffer.alloc(64 * 1024 * 1024)); // 64 MiB of zeros in ~64 KiB
    const started = process.hrtime.bigint();
    const out = inflatePrefix(bomb, PREFIX_BUDGET);
    assert.ok(out !== null && out.length <= PREFIX_BUDGET);
    const r = new DataSetPrefixReader(DEFLATED);
    for (let at = 0; at < bomb.length; at += 1024) r.update(bomb, at, Math.min(bomb.length, at + 1024));
    assert.deepEqual(r.summary(), UNKNOWN_SUMMARY);
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    assert.ok(ms < 5000, `took ${ms.toFixed(0)} ms`);
    assert.equal(inflatePrefix(Buffer.from([0xff, 0xff, 0xff]), PREFIX_BUDGET), null, 'not a deflate stream');
  });

  it('reads data sets encoded by dcmjs-dimse in each syntax', () => {
    const elements = {
      SOPClassUID: CT,
      SOPInstanceUID: '1.2.3.99',
      AccessionNumber: 'A77',
      Modality: 'MR',
      ReferencedStudySequence: [{ ReferencedSOPClassUID: CT, ReferencedSOPInstanceUID: '1.2.3.5' }],
      PatientName: 'Roe^Richard',
      PatientID: 'P77',
      StudyInstanceUID: '1.2.3.77',
      SeriesInstanceUID: '1.2.3.77.1',
    };
    for (const ts of [IMPLICIT, EXPLICIT_LE, EXPLICIT_BE, DEFLATED]) {
      let bytes = new Dataset(elements, ts).getDenaturalizedDataset();
      if (ts === DEFLATED) bytes = deflateRawSync(bytes);
      assert.deepEqual(
        stream(bytes, ts, [5]),
        {
          patientId: 'P77',
          patientName: 'Roe^Richard',
          issuerOfPatientId: null,
          studyInstanceUid: '1.2.3.77',
          accessionNumber: 'A77',
          modality: 'MR',
        },
        ts,
      );
    }
  });

  describe('properties', () => {
    it('never throws on random bytes, in any syntax and any fragmentation', () => {
      fc.assert(
        fc.property(
          fc.uint8Array({ maxLength: 2048 }),
          fc.constantFrom(...SYNTAXES),
          fc.array(fc.nat(), { maxLength: 8 }),
          (u, ts, cuts) => {
            const bytes = Buffer.from(u);
            const sorted = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
            stream(bytes, ts, sorted);
          },
        ),
        { numRuns: 2000 },
      );
    });

    it('a damaged data set gives a summary or unknown, never an error', () => {
      const good = dataSet(image(), EXPLICIT_LE);
      fc.assert(
        fc.property(
          fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 6 }),
          (edits) => {
            const bytes = Buffer.from(good);
            for (const [at, byte] of edits) bytes[at % bytes.length] = byte;
            for (const ts of SYNTAXES) stream(ts === DEFLATED ? deflateRawSync(bytes) : bytes, ts, [97]);
          },
        ),
        { numRuns: 1000 },
      );
    });

    it('any fragmentation of a valid data set gives the same summary', () => {
      fc.assert(
        fc.property(fc.constantFrom(...SYNTAXES), fc.array(fc.nat(), { maxLength: 12 }), (ts, cuts) => {
          const bytes = dataSet(image(), ts);
          const sorted = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
          assert.deepEqual(stream(bytes, ts, sorted), EXPECTED);
        }),
        { numRuns: 300 },
      );
    });
  });
});
