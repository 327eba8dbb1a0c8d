// Sealing: sealOrdered (the writer's fast path) gives exactly the line and hash the format defines, and
// the same as sealRecord; it refuses bodies that are not in the fixed key order or not valid.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, it } from 'node:test';
import {
  FORMAT_VERSION,
  GENESIS_PREV,
  KEY_ORDER,
  type UnsealedRecord,
  parseLine,
  sealOrdered,
  sealRecord,
  sha256Hex,
} from '../../src/integrity/format.js';

function instanceBody(over: Record<string, unknown> = {}): UnsealedRecord {
  return {
    v: FORMAT_VERSION,
    type: 'instance',
    seq: 7,
    time: '2025-01-01T12:00:00.000Z',
    association: 'assoc-"quoted"\\back\tslash',
    direction: 'modality-to-archive',
    callingAeTitle: 'MODALITÄT-Ω-😀',
    calledAeTitle: 'ARCHIVE\u0001\u2028',
    upstreamAeTitle: null,
    peerAddress: '10.0.0.5:40000',
    archiveAddress: 'pacs.example:2762',
    archiveCertSha256: 'ab'.repeat(32),
    clientCertSha256: null,
    sopClassUid: '1.2.840.10008.5.1.4.1.1.2',
    sopInstanceUid: '1.2.3.4.\ud800', // a lone surrogate: JSON.stringify escapes it
    studyInstanceUid: '1.2.3',
    transferSyntaxUid: '1.2.840.10008.1.2.1',
    bytes: 1000,
    sha256: 'cd'.repeat(32),
    status: 0,
    outcome: 'success',
    moveOriginatorAeTitle: null,
    moveOriginatorMessageId: null,
    prev: GENESIS_PREV,
    ...over,
  } as UnsealedRecord;
}

describe('sealing', () => {
  it('sha256Hex hashes a string as its UTF-8 bytes', () => {
    for (const text of ['', 'abc', 'MODALITÄT-Ω-😀', '\u2028']) {
      const expected = createHash('sha256').update(Buffer.from(text, 'utf8')).digest('hex');
      assert.equal(sha256Hex(text), expected);
      assert.equal(sha256Hex(Buffer.from(text, 'utf8')), expected);
    }
  });

  it('sealOrdered: the line is JSON.stringify of the record with its hash last, and parses back', () => {
    const body = instanceBody();
    const before = JSON.stringify(body);
    const { hash, line } = sealOrdered(body);
    assert.equal(JSON.stringify(body), before, 'the body is left unchanged');
    assert.equal(hash, createHash('sha256').update(Buffer.from(before, 'utf8')).digest('hex'));
    assert.equal(line, `${JSON.stringify({ ...body, hash })}\n`);
    const parsed = parseLine(Buffer.from(line.slice(0, -1), 'utf8'));
    assert.equal(parsed.kind, 'record', JSON.stringify(parsed));
    if (parsed.kind === 'record') assert.deepEqual(Object.keys(parsed.record), [...KEY_ORDER.instance]);
    const viaRecord = sealRecord(body);
    assert.equal(viaRecord.line.toString('utf8'), line);
    assert.equal(viaRecord.record.hash, hash);
  });

  it('sealOrdered refuses another key order, a missing or undefined field, and invalid values', () => {
    const { v, type, seq, ...rest } = instanceBody() as unknown as Record<string, unknown>;
    const reordered = { type, v, seq, ...rest } as unknown as UnsealedRecord;
    assert.throws(() => sealOrdered(reordered), /invalid instance record: keys of a instance record must be/);
    assert.throws(
      () => sealOrdered(instanceBody({ status: undefined })),
      /status must be an integer or null/,
    );
    assert.throws(() => sealOrdered(instanceBody({ bytes: -1 })), /bytes must be a non-negative integer/);
    assert.throws(() => sealOrdered(instanceBody({ hash: 'ab'.repeat(32) })), /keys of a instance record/);
  });

  it('sealRecord still orders keys and turns undefined into null', () => {
    const body = instanceBody({ upstreamAeTitle: undefined }) as unknown as Record<string, unknown>;
    const shuffled = Object.fromEntries(Object.entries(body).reverse()) as unknown as UnsealedRecord;
    const { record, line } = sealRecord(shuffled);
    assert.deepEqual(Object.keys(record), [...KEY_ORDER.instance]);
    assert.equal((record as { upstreamAeTitle: unknown }).upstreamAeTitle, null);
    assert.equal(parseLine(line.subarray(0, -1)).kind, 'record');
  });
});

describe('format versions', () => {
  /** A version 1 instance record (no studyInstanceUid), sealed as the earlier writer did. */
  function v1Line(): string {
    const { studyInstanceUid: _study, ...rest } = instanceBody({ v: 1 }) as unknown as Record<
      string,
      unknown
    >;
    return sealOrdered(rest as unknown as UnsealedRecord).line;
  }

  it('writes version 2 with studyInstanceUid after sopInstanceUid; reads version 1 records as they are', () => {
    assert.equal(FORMAT_VERSION, 2);
    const i = KEY_ORDER.instance.indexOf('studyInstanceUid');
    assert.equal(KEY_ORDER.instance[i - 1], 'sopInstanceUid');
    const parsed = parseLine(Buffer.from(v1Line().slice(0, -1), 'utf8'));
    assert.equal(parsed.kind, 'record', JSON.stringify(parsed));
    if (parsed.kind === 'record') assert.ok(!('studyInstanceUid' in parsed.record));
  });

  it('refuses a version 1 record with the version 2 key, a version 2 record without it, and version 3', () => {
    const v1WithStudy = instanceBody({ v: 1 });
    assert.throws(() => sealOrdered(v1WithStudy), /keys of a instance record must be/);
    const { studyInstanceUid: _s, ...v2Without } = instanceBody() as unknown as Record<string, unknown>;
    assert.throws(() => sealOrdered(v2Without as unknown as UnsealedRecord), /keys of a instance record/);
    assert.throws(() => sealOrdered(instanceBody({ v: 3 })), /v must be 1 or 2, not 3/);
    // A version 1 line edited to claim version 2 no longer matches its hash or its key order.
    const edited = v1Line().slice(0, -1).replace('"v":1,', '"v":2,');
    const parsed = parseLine(Buffer.from(edited, 'utf8'));
    assert.equal(parsed.kind, 'invalid');
  });
});
