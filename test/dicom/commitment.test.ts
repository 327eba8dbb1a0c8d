// Storage Commitment data set parser: hand-built data sets in every transfer syntax, defined and
// undefined lengths, nested and UN sequences, padding, malformed input, a cross-check against data sets
// encoded by dcmjs-dimse, and properties over generated and random bytes.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { deflateRawSync } from 'node:zlib';
import dimse from 'dcmjs-dimse';
import fc from 'fast-check';
import {
  type CommitmentItem,
  type CommitmentResult,
  DataSetParseError,
  MAX_DATASET_BYTES,
  MAX_ELEMENTS,
  MAX_SEQUENCE_DEPTH,
  parseCommitmentDataSet,
} from '../../src/dicom/commitment.js';
import {
  DEFLATED,
  EXPLICIT_BE,
  EXPLICIT_LE,
  IMPLICIT,
  IMPLICIT_LE_SYNTAX,
  SYNTAXES,
  UNDEFINED,
  dataSet,
  encode,
  encodeItems,
  header,
  syntaxOf,
  tagBytes,
  u32,
  type Elem,
  type Item,
} from '../helpers/dataset.js';

const { Dataset } = dimse;
dimse.log.setLevel('error');

const CT = '1.2.840.10008.5.1.4.1.1.2';
const MR = '1.2.840.10008.5.1.4.1.1.4';

const ui = (tag: number, value: string): Elem => ({ tag, vr: 'UI', value });
const sq = (tag: number, items: Item[], undefinedLength = false): Elem => ({
  tag,
  vr: 'SQ',
  items,
  undefinedLength,
});
const refItem = (cls: string, inst: string, extra: Elem[] = [], undefinedLength = false): Item => ({
  elements: [ui(0x00081150, cls), ui(0x00081155, inst), ...extra],
  undefinedLength,
});
const failedItem = (cls: string, inst: string, reason: number, undefinedLength = false): Item => ({
  elements: [ui(0x00081150, cls), ui(0x00081155, inst), { tag: 0x00081197, vr: 'US', value: reason }],
  undefinedLength,
});

const ok = (cls: string, inst: string): CommitmentItem => ({
  sopClassUid: cls,
  sopInstanceUid: inst,
  failureReason: null,
});
const bad = (cls: string, inst: string, reason: number | null): CommitmentItem => ({
  sopClassUid: cls,
  sopInstanceUid: inst,
  failureReason: reason,
});

/** An N-EVENT-REPORT-RQ data set, Event Type ID 2 (PS3.4 J.3.3, Table J.3-2). */
function eventReport(undefinedLength: boolean): Elem[] {
  return [
    { tag: 0x00080005, vr: 'CS', value: 'ISO_IR 100' },
    ui(0x00081195, '1.2.3.4.5.6.7'),
    sq(0x00081198, [failedItem(MR, '1.2.3.9', 0x0112, undefinedLength)], undefinedLength),
    sq(
      0x00081199,
      [refItem(CT, '1.2.3.7', [], undefinedLength), refItem(CT, '1.2.3.8', [], undefinedLength)],
      undefinedLength,
    ),
    { tag: 0x00080054, vr: 'AE', value: 'ARCHIVE' }, // Retrieve AE Title
  ].sort((a, b) => a.tag - b.tag);
}

const EVENT_RESULT: CommitmentResult = {
  transactionUid: '1.2.3.4.5.6.7',
  committed: [ok(CT, '1.2.3.7'), ok(CT, '1.2.3.8')],
  failed: [bad(MR, '1.2.3.9', 0x0112)],
};

function rejects(fn: () => unknown, pattern?: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof DataSetParseError, `expected a DataSetParseError, got ${String(err)}`);
    assert.equal(err.code, 'DATASET_MALFORMED');
    if (pattern) assert.match(err.message, pattern);
    return true;
  });
}

describe('parseCommitmentDataSet', () => {
  for (const ts of SYNTAXES) {
    for (const undefinedLength of [false, true]) {
      it(`reads an N-EVENT-REPORT data set in ${ts}, ${undefinedLength ? 'undefined' : 'defined'} lengths`, () => {
        assert.deepEqual(parseCommitmentDataSet(dataSet(eventReport(undefinedLength), ts), ts), EVENT_RESULT);
      });
    }
  }

  it('reads an N-ACTION request data set (Table J.3-1) into committed, skipping what it does not need', () => {
    for (const ts of SYNTAXES) {
      const elements: Elem[] = [
        { tag: 0x00080005, vr: 'CS', value: 'ISO_IR 192' },
        // Referenced Performed Procedure Step Sequence, with a nested (0008,1199) that is not the top-level one.
        sq(
          0x00081111,
          [
            {
              elements: [
                ui(0x00081150, '1.2.840.10008.3.1.2.3.3'),
                ui(0x00081155, '9.9.9'),
                sq(0x00081199, [refItem(CT, '9.9.9.1')], true),
              ],
              undefinedLength: true,
            },
          ],
          true,
        ),
        ui(0x00081195, '2.25.1234'),
        sq(0x00081199, [
          refItem(CT, '1.2.3.1', [
            { tag: 0x00880130, vr: 'SH', value: 'FILESET' },
            sq(0x00400555, [{ elements: [sq(0x0040a730, [refItem(MR, '7.7.7')], true)] }], true),
          ]),
          refItem(MR, '1.2.3.2', [], true),
        ]),
        { tag: 0x00880130, vr: 'SH', value: 'FILESET1' },
        ui(0x00880140, '1.2.3.99'),
      ];
      assert.deepEqual(
        parseCommitmentDataSet(dataSet(elements, ts), ts),
        { transactionUid: '2.25.1234', committed: [ok(CT, '1.2.3.1'), ok(MR, '1.2.3.2')], failed: [] },
        ts,
      );
    }
  });

  it('trims NUL and space padding of UIDs and of the transfer syntax UID', () => {
    const elements: Elem[] = [
      { tag: 0x00081195, vr: 'UI', value: Buffer.from('1.2.3\0', 'latin1') },
      sq(0x00081199, [
        {
          elements: [
            { tag: 0x00081150, vr: 'UI', value: Buffer.from(`${CT} `, 'latin1') },
            { tag: 0x00081155, vr: 'UI', value: Buffer.from('1.2.30\0\0', 'latin1') },
          ],
        },
      ]),
    ];
    for (const ts of [IMPLICIT, EXPLICIT_BE]) {
      assert.deepEqual(parseCommitmentDataSet(encode(elements, syntaxOf(ts)), `${ts}\0`), {
        transactionUid: '1.2.3',
        committed: [ok(CT, '1.2.30')],
        failed: [],
      });
    }
  });

  it('reads failures with and without a Failure Reason, and several failed items', () => {
    const elements: Elem[] = [
      ui(0x00081195, '1.9'),
      sq(0x00081198, [
        failedItem(CT, '1.1', 0x0110),
        { elements: [ui(0x00081150, CT), ui(0x00081155, '1.2')] },
        failedItem(CT, '1.3', 0xa7ff, true),
        { elements: [ui(0x00081150, CT), ui(0x00081155, '1.4'), { tag: 0x00081197, vr: 'US', value: '' }] },
      ]),
    ];
    for (const ts of SYNTAXES) {
      assert.deepEqual(
        parseCommitmentDataSet(dataSet(elements, ts), ts),
        {
          transactionUid: '1.9',
          committed: [],
          failed: [
            bad(CT, '1.1', 0x0110),
            bad(CT, '1.2', null),
            bad(CT, '1.3', 0xa7ff),
            bad(CT, '1.4', null),
          ],
        },
        ts,
      );
    }
  });

  it('returns empty lists and a null transaction UID for an empty data set or empty sequences', () => {
    for (const ts of SYNTAXES) {
      assert.deepEqual(parseCommitmentDataSet(dataSet([], ts), ts), {
        transactionUid: null,
        committed: [],
        failed: [],
      });
      const empty = [sq(0x00081198, [], true), sq(0x00081199, [])];
      assert.deepEqual(parseCommitmentDataSet(dataSet(empty, ts), ts), {
        transactionUid: null,
        committed: [],
        failed: [],
      });
    }
    assert.deepEqual(parseCommitmentDataSet([], EXPLICIT_LE), {
      transactionUid: null,
      committed: [],
      failed: [],
    });
  });

  it('gives an item without its UIDs empty strings', () => {
    const elements = [sq(0x00081199, [{ elements: [ui(0x00081155, '1.5')] }, { elements: [] }])];
    assert.deepEqual(parseCommitmentDataSet(dataSet(elements, EXPLICIT_LE), EXPLICIT_LE).committed, [
      ok('', '1.5'),
      ok('', ''),
    ]);
  });

  it('accepts the data set as fragments, split anywhere', () => {
    for (const ts of [IMPLICIT, EXPLICIT_LE, EXPLICIT_BE, DEFLATED]) {
      const bytes = dataSet(eventReport(true), ts);
      for (let cut = 0; cut <= bytes.length; cut += 3) {
        const fragments = [bytes.subarray(0, cut), bytes.subarray(cut, cut + 5), bytes.subarray(cut + 5)];
        assert.deepEqual(parseCommitmentDataSet(fragments, ts), EVENT_RESULT, `${ts} cut at ${cut}`);
      }
      assert.deepEqual(parseCommitmentDataSet([bytes], ts), EVENT_RESULT);
    }
  });

  it('skips elements of every VR, 2-byte and 4-byte length forms, and group lengths', () => {
    const twoByte = ['AE', 'AS', 'AT', 'CS', 'DA', 'DS', 'DT', 'FD', 'FL', 'IS', 'LO', 'LT', 'PN', 'SH'];
    const moreTwoByte = ['SL', 'SS', 'ST', 'TM', 'UI', 'UL', 'US'];
    const fourByte = ['OB', 'OD', 'OF', 'OL', 'OV', 'OW', 'SV', 'UC', 'UN', 'UR', 'UT', 'UV'];
    const elements: Elem[] = [{ tag: 0x00080000, vr: 'UL', value: Buffer.alloc(4) }];
    [...twoByte, ...moreTwoByte, ...fourByte].forEach((vr, i) => {
      elements.push({ tag: 0x00090010 + i, vr, value: Buffer.alloc(8, 0xfe) });
    });
    // A 4-byte-length VR with a value longer than a 16-bit length can hold.
    elements.push({ tag: 0x00091000, vr: 'UT', value: Buffer.alloc(70_000, 0x41) });
    elements.push(ui(0x00101195, '5.5'), sq(0x00111199, [refItem(CT, '6.6')]));
    elements.push(ui(0x00200000, '0'));
    elements.unshift(ui(0x00081195, '1.2'));
    for (const ts of [EXPLICIT_LE, EXPLICIT_BE, DEFLATED, IMPLICIT]) {
      assert.deepEqual(
        parseCommitmentDataSet(dataSet(elements, ts), ts),
        { transactionUid: '1.2', committed: [], failed: [] },
        ts,
      );
    }
  });

  it('reads UN of undefined length as an Implicit VR Little Endian sequence (PS3.5 6.2.2)', () => {
    const unSequence = (tag: number, items: Item[]): Elem => ({
      tag,
      vr: 'UN',
      items,
      undefinedLength: true,
    });
    const elements: Elem[] = [
      // A private sequence of unknown VR with a nested sequence of undefined length inside.
      unSequence(0x00091010, [
        {
          elements: [sq(0x00091020, [refItem(CT, '8.8')], true), ui(0x00091030, '8.9')],
          undefinedLength: true,
        },
      ]),
      ui(0x00081195, '3.3'),
      // The Referenced SOP Sequence itself as UN (e.g. relayed by a node whose dictionary lacked it).
      unSequence(0x00081199, [refItem(CT, '3.3.1'), refItem(MR, '3.3.2', [], true)]),
      unSequence(0x00081198, [failedItem(CT, '3.3.3', 0x0122)]),
    ].sort((a, b) => a.tag - b.tag);
    for (const ts of [EXPLICIT_LE, EXPLICIT_BE, DEFLATED]) {
      assert.deepEqual(
        parseCommitmentDataSet(dataSet(elements, ts), ts),
        {
          transactionUid: '3.3',
          committed: [ok(CT, '3.3.1'), ok(MR, '3.3.2')],
          failed: [bad(CT, '3.3.3', 0x0122)],
        },
        ts,
      );
    }
  });

  it('reads a UN sequence of defined length as Implicit VR Little Endian too', () => {
    const items = encodeItems([failedItem(CT, '4.4', 0x0119)], IMPLICIT_LE_SYNTAX);
    const elements: Elem[] = [{ tag: 0x00081198, vr: 'UN', value: items }];
    for (const ts of [EXPLICIT_LE, EXPLICIT_BE]) {
      assert.deepEqual(parseCommitmentDataSet(dataSet(elements, ts), ts).failed, [bad(CT, '4.4', 0x0119)]);
    }
  });

  it('skips undefined-length OB (encapsulated fragments) without reading the fragments as data sets', () => {
    const fragments = Buffer.concat([
      tagBytes(0xfffee000, { explicit: true, little: true }),
      u32(4, { explicit: true, little: true }),
      Buffer.from([0xfe, 0xff, 0x0d, 0xe0]),
      tagBytes(0xfffee0dd, { explicit: true, little: true }),
      u32(0, { explicit: true, little: true }),
    ]);
    const bytes = Buffer.concat([
      encode([ui(0x00081195, '7.7')], syntaxOf(EXPLICIT_LE)),
      header(0x7fe00010, 'OB', UNDEFINED, syntaxOf(EXPLICIT_LE)),
      fragments,
    ]);
    assert.deepEqual(parseCommitmentDataSet(bytes, EXPLICIT_LE), {
      transactionUid: '7.7',
      committed: [],
      failed: [],
    });
  });

  it('ignores the pad byte after a deflate stream of odd length (PS3.5 A.5)', () => {
    const deflated = dataSet(eventReport(true), DEFLATED);
    assert.deepEqual(parseCommitmentDataSet([deflated, Buffer.from([0])], DEFLATED), EVENT_RESULT);
  });

  it('reads any other transfer syntax as Explicit VR Little Endian', () => {
    const bytes = dataSet(eventReport(false), EXPLICIT_LE);
    for (const ts of ['1.2.840.10008.1.2.4.50', '1.2.840.10008.1.2.5', '1.2.3.4.5', '']) {
      assert.deepEqual(parseCommitmentDataSet(bytes, ts), EVENT_RESULT, ts);
    }
  });

  it('accepts sequences nested up to the depth bound and refuses deeper ones', () => {
    const nest = (levels: number, undefinedLengths = true): Elem => {
      let e: Elem = ui(0x00091001, '1');
      for (let i = 0; i < levels; i++) {
        e = sq(0x00091002, [{ elements: [e], undefinedLength: undefinedLengths }], undefinedLengths);
      }
      return e;
    };
    for (const ts of [IMPLICIT, EXPLICIT_LE]) {
      assert.equal(parseCommitmentDataSet(dataSet([nest(MAX_SEQUENCE_DEPTH)], ts), ts).transactionUid, null);
      rejects(() => parseCommitmentDataSet(dataSet([nest(MAX_SEQUENCE_DEPTH + 1)], ts), ts), /nested deeper/);
    }
    // A defined-length sequence nobody reads is skipped whole: its nesting is not looked at.
    const deep = [nest(MAX_SEQUENCE_DEPTH + 5, false), ui(0x00191195, '1.5')];
    assert.deepEqual(parseCommitmentDataSet(dataSet(deep, EXPLICIT_LE), EXPLICIT_LE).committed, []);
  });

  describe('malformed input', () => {
    const good = dataSet(eventReport(false), EXPLICIT_LE);

    it('gives a DataSetParseError naming the offset, or a shorter well-formed result, for every truncation', () => {
      for (const ts of [IMPLICIT, EXPLICIT_LE, EXPLICIT_BE]) {
        for (const undefinedLength of [false, true]) {
          const bytes = dataSet(eventReport(undefinedLength), ts);
          for (let n = 1; n < bytes.length; n++) {
            // Truncation exactly between two top-level elements leaves a well-formed (shorter) data set.
            let result: CommitmentResult | null = null;
            try {
              result = parseCommitmentDataSet(bytes.subarray(0, n), ts);
            } catch (err) {
              assert.ok(err instanceof DataSetParseError, `${ts} n=${n}: ${String(err)}`);
              assert.match(err.message, /at offset \d+: /);
              assert.ok(err.offset >= 0 && err.offset <= n);
            }
            if (result) assert.ok(result.committed.length <= 2 && result.failed.length <= 1);
          }
        }
      }
    });

    it('refuses a value longer than the bytes left, naming tag and offset', () => {
      const bytes = encode(
        [ui(0x00081195, '1.2'), { tag: 0x00100010, vr: 'PN', value: 'A', rawLength: 40 }],
        syntaxOf(EXPLICIT_LE),
      );
      rejects(
        () => parseCommitmentDataSet(bytes, EXPLICIT_LE),
        /^\(0010,0010\) at offset 12: value length 40 exceeds the 2 bytes left$/,
      );
    });

    it('refuses an item longer than its sequence', () => {
      const s = syntaxOf(EXPLICIT_LE);
      const item = Buffer.concat([tagBytes(0xfffee000, s), u32(100, s), Buffer.alloc(8)]);
      const bytes = Buffer.concat([header(0x00081199, 'SQ', item.length, s), item]);
      rejects(
        () => parseCommitmentDataSet(bytes, EXPLICIT_LE),
        /\(FFFE,E000\) at offset 12: item length 100 exceeds the 8 bytes left/,
      );
    });

    it('refuses a sequence or item of undefined length without its delimiter', () => {
      const s = syntaxOf(IMPLICIT);
      const noSeqDelim = Buffer.concat([
        header(0x00081199, 'SQ', UNDEFINED, s),
        encodeItems([refItem(CT, '1')], s),
      ]);
      rejects(
        () => parseCommitmentDataSet(noSeqDelim, IMPLICIT),
        /\(0008,1199\) at offset 0: sequence of undefined length without a Sequence Delimitation Item/,
      );
      const item = encode(refItem(CT, '1').elements, s);
      const noItemDelim = Buffer.concat([
        header(0x00081199, 'SQ', UNDEFINED, s),
        tagBytes(0xfffee000, s),
        u32(UNDEFINED, s),
        item,
        tagBytes(0xfffee0dd, s),
        u32(0, s),
      ]);
      rejects(
        () => parseCommitmentDataSet(noItemDelim, IMPLICIT),
        /\(FFFE,E0DD\) at offset \d+: item or delimitation tag among data elements/,
      );
      const cutItem = Buffer.concat([
        header(0x00081199, 'SQ', UNDEFINED, s),
        tagBytes(0xfffee000, s),
        u32(UNDEFINED, s),
        item,
      ]);
      rejects(() => parseCommitmentDataSet(cutItem, IMPLICIT), /without an Item Delimitation Item/);
    });

    it('refuses an element where an item was expected, and stray delimiters', () => {
      const s = syntaxOf(EXPLICIT_LE);
      const body = encode([ui(0x00081150, CT)], s);
      rejects(
        () =>
          parseCommitmentDataSet(
            Buffer.concat([header(0x00081199, 'SQ', body.length, s), body]),
            EXPLICIT_LE,
          ),
        /\(0008,1150\) at offset 12: found where an Item \(FFFE,E000\) of sequence \(0008,1199\) was expected/,
      );
      rejects(
        () => parseCommitmentDataSet(Buffer.concat([tagBytes(0xfffee0dd, s), u32(0, s)]), EXPLICIT_LE),
        /among data elements/,
      );
      rejects(
        () => parseCommitmentDataSet(Buffer.concat([tagBytes(0xfffee00d, s), u32(0, s)]), EXPLICIT_LE),
        /outside an item/,
      );
      const seqDelimInDefined = Buffer.concat([
        header(0x00081199, 'SQ', 8, s),
        tagBytes(0xfffee0dd, s),
        u32(0, s),
      ]);
      rejects(
        () => parseCommitmentDataSet(seqDelimInDefined, EXPLICIT_LE),
        /in a sequence of defined length/,
      );
    });

    it('refuses an unknown VR, undefined length on a VR that cannot have it, and a wrong VR for a sequence', () => {
      const s = syntaxOf(EXPLICIT_LE);
      rejects(
        () => parseCommitmentDataSet(Buffer.from('08009511' + '5a5a' + '0000', 'hex'), EXPLICIT_LE),
        /unknown VR "ZZ"/,
      );
      rejects(
        () => parseCommitmentDataSet(Buffer.concat([header(0x00100010, 'UT', UNDEFINED, s)]), EXPLICIT_LE),
        /\(0010,0010\) at offset 0: undefined length for VR UT/,
      );
      rejects(
        () => parseCommitmentDataSet(encode([ui(0x00081199, '1.2')], s), EXPLICIT_LE),
        /\(0008,1199\) at offset 0: VR UI where SQ was expected/,
      );
      const implicitUid = Buffer.concat([
        header(0x00081195, '', UNDEFINED, IMPLICIT_LE_SYNTAX),
        tagBytes(0xfffee0dd, IMPLICIT_LE_SYNTAX),
        u32(0, IMPLICIT_LE_SYNTAX),
      ]);
      rejects(() => parseCommitmentDataSet(implicitUid, IMPLICIT), /undefined length for a UID/);
    });

    it('refuses a Failure Reason of odd length', () => {
      const elements = [
        sq(0x00081198, [
          { elements: [{ tag: 0x00081197, vr: 'US', value: Buffer.from([1, 2, 3]), rawLength: 3 }] },
        ]),
      ];
      rejects(
        () => parseCommitmentDataSet(encode(elements, syntaxOf(EXPLICIT_LE)), EXPLICIT_LE),
        /\(0008,1197\) at offset \d+: US value of odd length 3/,
      );
    });

    it('refuses more than MAX_DATASET_BYTES, as one buffer or as fragments', () => {
      rejects(() => parseCommitmentDataSet(Buffer.alloc(MAX_DATASET_BYTES + 1), EXPLICIT_LE), /exceeds/);
      const half = Buffer.alloc(MAX_DATASET_BYTES / 2 + 1);
      rejects(() => parseCommitmentDataSet([half, half], EXPLICIT_LE), /more than/);
    });

    it('refuses a deflate stream that does not inflate, or inflates to more than MAX_DATASET_BYTES', () => {
      rejects(() => parseCommitmentDataSet(Buffer.from([0xff, 0xff, 0xff]), DEFLATED), /does not inflate/);
      rejects(() => parseCommitmentDataSet(good.subarray(0, 20), DEFLATED), /does not inflate/);
      const bomb = deflateRawSync(Buffer.alloc(MAX_DATASET_BYTES + 1024));
      assert.ok(bomb.length < 64 * 1024);
      rejects(() => parseCommitmentDataSet(bomb, DEFLATED), /inflates to more than/);
      // Not deflated at all: the same bytes as Explicit VR LE are not a deflate stream.
      rejects(() => parseCommitmentDataSet(good, DEFLATED));
    });

    it('refuses more than MAX_ELEMENTS elements', () => {
      // Empty (0009,xxxx) LO elements, 8 bytes each.
      const one = encode([{ tag: 0x00091000, vr: 'LO', value: '' }], syntaxOf(EXPLICIT_LE));
      const bytes = Buffer.alloc(one.length * (MAX_ELEMENTS + 1));
      for (let i = 0; i <= MAX_ELEMENTS; i++) one.copy(bytes, i * one.length);
      rejects(
        () => parseCommitmentDataSet(bytes, EXPLICIT_LE),
        new RegExp(`more than ${MAX_ELEMENTS} elements`),
      );
      assert.deepEqual(parseCommitmentDataSet(bytes.subarray(one.length), EXPLICIT_LE).committed, []);
    });
  });

  describe('data sets encoded by dcmjs-dimse', () => {
    const elements = {
      TransactionUID: '1.2.826.0.1.3680043.2.1125.1.1',
      RetrieveAETitle: 'ARCHIVE',
      ReferencedSOPSequence: [
        { ReferencedSOPClassUID: CT, ReferencedSOPInstanceUID: '1.2.826.0.1.3680043.2.1125.2.1' },
        { ReferencedSOPClassUID: MR, ReferencedSOPInstanceUID: '1.2.826.0.1.3680043.2.1125.2.22' },
      ],
      FailedSOPSequence: [
        {
          ReferencedSOPClassUID: CT,
          ReferencedSOPInstanceUID: '1.2.826.0.1.3680043.2.1125.2.333',
          FailureReason: 0x0112,
        },
      ],
    };
    const expected: CommitmentResult = {
      transactionUid: '1.2.826.0.1.3680043.2.1125.1.1',
      committed: [ok(CT, '1.2.826.0.1.3680043.2.1125.2.1'), ok(MR, '1.2.826.0.1.3680043.2.1125.2.22')],
      failed: [bad(CT, '1.2.826.0.1.3680043.2.1125.2.333', 0x0112)],
    };

    for (const ts of [IMPLICIT, EXPLICIT_LE, EXPLICIT_BE]) {
      it(`reads an N-EVENT-REPORT data set dcmjs-dimse encoded in ${ts}`, () => {
        const bytes = new Dataset(elements, ts).getDenaturalizedDataset();
        assert.deepEqual(parseCommitmentDataSet(bytes, ts), expected);
        // And dcmjs-dimse reads our encoding of the same data set the same way.
        const ours = dataSet(eventReport(true), ts);
        const back = new Dataset(ours, ts).getElements() as {
          TransactionUID: string;
          ReferencedSOPSequence: Array<{ ReferencedSOPInstanceUID: string }>;
          FailedSOPSequence: Array<{ FailureReason: number }>;
        };
        assert.equal(back.TransactionUID, EVENT_RESULT.transactionUid);
        assert.deepEqual(
          back.ReferencedSOPSequence.map((i) => i.ReferencedSOPInstanceUID),
          EVENT_RESULT.committed.map((i) => i.sopInstanceUid),
        );
        assert.equal(back.FailedSOPSequence[0]?.FailureReason, 0x0112);
      });
    }

    it('reads the dcmjs-dimse Explicit VR LE encoding deflated (PS3.5 A.5)', () => {
      // dcmjs-dimse leaves deflation to the network layer: deflate its Explicit VR LE bytes here.
      const bytes = new Dataset(elements, DEFLATED).getDenaturalizedDataset();
      assert.deepEqual(parseCommitmentDataSet(deflateRawSync(bytes), DEFLATED), expected);
    });
  });

  describe('properties', () => {
    const uidArb = fc
      .tuple(fc.stringMatching(/^[0-9][0-9.]{0,62}$/), fc.constantFrom('', '\0', ' '))
      .map(([text, pad]) => ({ text, padded: text + pad }));
    const itemArb = fc.record({
      cls: uidArb,
      inst: uidArb,
      reason: fc.option(fc.integer({ min: 0, max: 0xffff }), { nil: null }),
      undefinedLength: fc.boolean(),
      noise: fc.boolean(),
    });
    const dataSetArb = fc.record({
      ts: fc.constantFrom(...SYNTAXES),
      transactionUid: fc.option(uidArb, { nil: null }),
      committed: fc.array(itemArb, { maxLength: 5 }),
      failed: fc.array(itemArb, { maxLength: 5 }),
      seqUndefined: fc.tuple(fc.boolean(), fc.boolean()),
      private: fc.boolean(),
    });
    type Generated = typeof dataSetArb extends fc.Arbitrary<infer T> ? T : never;
    type GeneratedItem = Generated['committed'][number];

    const toItem = (i: GeneratedItem, withReason: boolean): Item => ({
      elements: [
        ...(i.noise ? [{ tag: 0x00080005, vr: 'CS', value: 'ISO_IR 100' }] : []),
        { tag: 0x00081150, vr: 'UI', value: Buffer.from(i.cls.padded, 'latin1') },
        { tag: 0x00081155, vr: 'UI', value: Buffer.from(i.inst.padded, 'latin1') },
        ...(withReason && i.reason !== null ? [{ tag: 0x00081197, vr: 'US', value: i.reason }] : []),
        ...(i.noise ? [sq(0x00400555, [refItem(CT, '1.1', [], true)], true)] : []),
      ],
      undefinedLength: i.undefinedLength,
    });

    const build = (g: Generated): Buffer => {
      const elements: Elem[] = [];
      if (g.private)
        elements.push({ tag: 0x00091010, vr: 'UN', items: [refItem(CT, '2.2')], undefinedLength: true });
      if (g.transactionUid) {
        elements.push({ tag: 0x00081195, vr: 'UI', value: Buffer.from(g.transactionUid.padded, 'latin1') });
      }
      elements.push(
        sq(
          0x00081198,
          g.failed.map((i) => toItem(i, true)),
          g.seqUndefined[0],
        ),
      );
      elements.push(
        sq(
          0x00081199,
          g.committed.map((i) => toItem(i, false)),
          g.seqUndefined[1],
        ),
      );
      const bytes = encode(
        elements.sort((a, b) => a.tag - b.tag),
        g.ts === IMPLICIT ? IMPLICIT_LE_SYNTAX : syntaxOf(g.ts === DEFLATED ? EXPLICIT_LE : g.ts),
      );
      return g.ts === DEFLATED ? deflateRawSync(bytes) : bytes;
    };

    /** Parse, allowing only a result or a DataSetParseError; check the result is bounded by the input. */
    const parseBounded = (bytes: Buffer | Buffer[], ts: string): CommitmentResult | DataSetParseError => {
      const started = performance.now();
      try {
        const result = parseCommitmentDataSet(bytes, ts);
        const total = Buffer.isBuffer(bytes) ? bytes.length : bytes.reduce((n, b) => n + b.length, 0);
        const inflated = ts === DEFLATED ? MAX_DATASET_BYTES : total;
        assert.ok((result.committed.length + result.failed.length) * 8 <= inflated);
        return result;
      } catch (err) {
        if (err instanceof DataSetParseError) return err;
        throw err;
      } finally {
        assert.ok(performance.now() - started < 1000, 'took more than a second');
      }
    };

    it('reads what the encoder generated, in every syntax and length form', () => {
      fc.assert(
        fc.property(dataSetArb, (g) => {
          assert.deepEqual(parseCommitmentDataSet(build(g), g.ts), {
            transactionUid: g.transactionUid?.text ?? null,
            committed: g.committed.map((i) => ok(i.cls.text, i.inst.text)),
            failed: g.failed.map((i) => bad(i.cls.text, i.inst.text, i.reason)),
          });
        }),
        { numRuns: 500 },
      );
    });

    it('throws nothing but DataSetParseError for random bytes', () => {
      fc.assert(
        fc.property(fc.uint8Array({ maxLength: 512 }), fc.constantFrom(...SYNTAXES), (u, ts) => {
          parseBounded(Buffer.from(u), ts);
        }),
        { numRuns: 3000 },
      );
    });

    it('throws nothing but DataSetParseError for damaged generated data sets', () => {
      const damage = fc.record({
        edits: fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 6 }),
        cut: fc.option(fc.nat()),
        split: fc.nat(),
      });
      fc.assert(
        fc.property(dataSetArb, damage, (g, d) => {
          // Damage the uncompressed bytes (random bytes rarely inflate), then deflate them if needed.
          const ts = g.ts === DEFLATED ? EXPLICIT_LE : g.ts;
          const bytes = Buffer.from(build({ ...g, ts }));
          for (const [at, byte] of d.edits) if (bytes.length > 0) bytes[at % bytes.length] = byte;
          const cut = d.cut === null ? bytes : bytes.subarray(0, d.cut % (bytes.length + 1));
          const input = g.ts === DEFLATED ? deflateRawSync(cut) : cut;
          const at = d.split % (input.length + 1);
          parseBounded([input.subarray(0, at), input.subarray(at)], g.ts);
        }),
        { numRuns: 3000 },
      );
    });

    it('refuses long runs of undefined-length nesting within the bounds', () => {
      // (0009,1010) SQ, undefined length, its item undefined length, and so on: deeper than the bound.
      const s = syntaxOf(EXPLICIT_LE);
      const open = Buffer.concat([
        header(0x00091010, 'SQ', UNDEFINED, s),
        tagBytes(0xfffee000, s),
        u32(UNDEFINED, s),
      ]);
      const bytes = Buffer.concat(Array.from({ length: 10_000 }, () => open));
      const result = parseBounded(bytes, EXPLICIT_LE);
      assert.ok(result instanceof DataSetParseError);
      assert.match(result.message, /nested deeper/);
    });
  });
});
