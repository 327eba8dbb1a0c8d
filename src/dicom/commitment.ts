// Storage Commitment Push Model data sets (PS3.4 J.3): what an N-ACTION-RQ asks to commit and what an
// N-EVENT-REPORT-RQ reports as committed or failed. Pure: bytes in, result out, no I/O.
//
//   N-ACTION-RQ, Action Type ID 1 "Request Storage Commitment" (PS3.4 J.3.2, Table J.3-1):
//     Transaction UID (0008,1195) and Referenced SOP Sequence (0008,1199), the instances to commit.
//   N-EVENT-REPORT-RQ, Event Type ID 1 "all success" / 2 "failures exist" (PS3.4 J.3.3, Table J.3-2):
//     Transaction UID (0008,1195), Referenced SOP Sequence (0008,1199) of the committed instances and,
//     for Event Type 2, Failed SOP Sequence (0008,1198) whose items add Failure Reason (0008,1197, US;
//     values in PS3.3 C.14.1.1).
//   Every item holds Referenced SOP Class UID (0008,1150) and Referenced SOP Instance UID (0008,1155).
//
// The parser walks the data set (PS3.5 7) with every length checked against the bytes that remain,
// nesting depth and element count bounded; anything else it finds (Retrieve AE Title, File-Set ID,
// nested sequences, private elements) is skipped without being interpreted. Malformed input throws a
// DataSetParseError naming the tag and offset, and nothing else.
import {
  DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
  Walker,
  inflate,
  joinFragments,
  modeOf,
  trimUid,
  type Header,
  type OnItem,
} from './dataset.js';

export {
  DataSetParseError,
  DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
  EXPLICIT_VR_BIG_ENDIAN,
  EXPLICIT_VR_LITTLE_ENDIAN,
  IMPLICIT_VR_LITTLE_ENDIAN,
  MAX_DATASET_BYTES,
  MAX_ELEMENTS,
  MAX_SEQUENCE_DEPTH,
} from './dataset.js';

export interface CommitmentItem {
  sopClassUid: string;
  sopInstanceUid: string;
  /** Failure Reason (0008,1197) of a Failed SOP Sequence item; null for a referenced item, or when absent. */
  failureReason: number | null;
}

export interface CommitmentResult {
  /** Transaction UID (0008,1195), or null when the data set has none. */
  transactionUid: string | null;
  /**
   * Items of the Referenced SOP Sequence (0008,1199), in order: in an N-EVENT-REPORT the instances
   * committed; in an N-ACTION request the instances asked for (the caller knows which message it is).
   */
  committed: CommitmentItem[];
  /** Items of the Failed SOP Sequence (0008,1198), in order, with their Failure Reason. */
  failed: CommitmentItem[];
}

const TAG_TRANSACTION_UID = 0x00081195;
const TAG_FAILURE_REASON = 0x00081197;
const TAG_FAILED_SOP_SEQUENCE = 0x00081198;
const TAG_REFERENCED_SOP_SEQUENCE = 0x00081199;
const TAG_REFERENCED_SOP_CLASS_UID = 0x00081150;
const TAG_REFERENCED_SOP_INSTANCE_UID = 0x00081155;

/**
 * Parse the data set of a Storage Commitment N-ACTION-RQ or N-EVENT-REPORT-RQ, given as one buffer or
 * as the fragments (data PDV values) it arrived in, in the presentation context's transfer syntax.
 * Unknown transfer syntaxes are read as Explicit VR Little Endian (see modeOf). Throws
 * DataSetParseError, and only that, for malformed input or more than MAX_DATASET_BYTES.
 */
export function parseCommitmentDataSet(
  bytes: Buffer | Buffer[],
  transferSyntaxUid: string,
): CommitmentResult {
  let data = joinFragments(bytes);
  if (trimUid(transferSyntaxUid) === DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN) {
    data = inflate(data);
  }
  const result: CommitmentResult = { transactionUid: null, committed: [], failed: [] };
  const walker: Walker = new Walker(data);

  /** The handler of one item of a Referenced / Failed SOP Sequence, filling `item`. */
  const itemHandler =
    (list: CommitmentItem[], withReason: boolean): OnItem =>
    () => {
      const item: CommitmentItem = { sopClassUid: '', sopInstanceUid: '', failureReason: null };
      list.push(item);
      return (h, value) => {
        if (h.tag === TAG_REFERENCED_SOP_CLASS_UID) item.sopClassUid = stringValue(h, value);
        else if (h.tag === TAG_REFERENCED_SOP_INSTANCE_UID) item.sopInstanceUid = stringValue(h, value);
        else if (h.tag === TAG_FAILURE_REASON && withReason) item.failureReason = usValue(h, value);
        return undefined;
      };
    };

  const stringValue = (h: Header, value: Buffer | null): string => {
    if (value === null) walker.fail('undefined length for a UID', h.tag, h.offset);
    return trimUid(value.toString('latin1'));
  };

  /** US (PS3.5 6.2): the first value, or null when empty. A UN value is little endian (PS3.5 6.2.2). */
  const usValue = (h: Header, value: Buffer | null): number | null => {
    if (value === null) walker.fail('undefined length for a US value', h.tag, h.offset);
    if (value.length === 0) return null;
    if (value.length % 2 !== 0) walker.fail(`US value of odd length ${value.length}`, h.tag, h.offset);
    return h.vr === 'UN' || h.mode.little ? value.readUInt16LE(0) : value.readUInt16BE(0);
  };

  /** A sequence of interest must be SQ, or UN / implicit VR (which are read as SQ). */
  const sequenceOf = (h: Header, list: CommitmentItem[], withReason: boolean): OnItem => {
    if (h.vr !== null && h.vr !== 'SQ' && h.vr !== 'UN') {
      walker.fail(`VR ${h.vr} where SQ was expected`, h.tag, h.offset);
    }
    return itemHandler(list, withReason);
  };

  walker.walk(modeOf(transferSyntaxUid), 0, data.length, data.length, 0, (h, value) => {
    switch (h.tag) {
      case TAG_TRANSACTION_UID:
        result.transactionUid = stringValue(h, value);
        return undefined;
      case TAG_REFERENCED_SOP_SEQUENCE:
        return sequenceOf(h, result.committed, false);
      case TAG_FAILED_SOP_SEQUENCE:
        return sequenceOf(h, result.failed, true);
      default:
        return undefined;
    }
  });
  return result;
}
