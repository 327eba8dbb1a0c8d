import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';

import {
  CommandError,
  CommandField,
  NO_DATA_SET,
  Status,
  decodeCommand,
  encodeCommand,
  encodeRefusalResponse,
  hasDataSet,
  isResponse,
  statusClass,
  type CommandSet,
} from '../../src/dimse/command.js';

const RUN = { numRuns: 300, interruptAfterTimeLimit: 4000 } as const;

const CT_IMAGE_STORAGE = '1.2.840.10008.5.1.4.1.1.2'; // 25 characters: odd
const STUDY_ROOT_MOVE = '1.2.840.10008.5.1.4.1.2.2.2'; // 27 characters: odd
const STUDY_ROOT_FIND = '1.2.840.10008.5.1.4.1.2.2.1';
const STORAGE_COMMITMENT = '1.2.840.10008.1.20.1';
const INSTANCE = '1.2.3.4.5.6.7.8.9.10'; // 20 characters: even

// ------------------------------------------------------------------------------------------------
// Raw element helpers (Implicit VR Little Endian, group 0000)
// ------------------------------------------------------------------------------------------------

interface RawElement {
  group: number;
  element: number;
  value: Buffer;
}

/** Walks a command set without the code under test. */
function walk(buf: Buffer): RawElement[] {
  const out: RawElement[] = [];
  let pos = 0;
  while (pos < buf.length) {
    assert.ok(pos + 8 <= buf.length, 'element header inside the buffer');
    const length = buf.readUInt32LE(pos + 4);
    assert.ok(pos + 8 + length <= buf.length, 'element value inside the buffer');
    out.push({
      group: buf.readUInt16LE(pos),
      element: buf.readUInt16LE(pos + 2),
      value: buf.subarray(pos + 8, pos + 8 + length),
    });
    pos += 8 + length;
  }
  return out;
}

function valueOf(buf: Buffer, element: number): Buffer | undefined {
  return walk(buf).find((e) => e.element === element)?.value;
}

/** One raw element: a number is written as US, a string as latin1 bytes (no padding added). */
function el(element: number, value: number | string | Buffer, group = 0x0000): Buffer {
  let v: Buffer;
  if (typeof value === 'number') {
    v = Buffer.alloc(2);
    v.writeUInt16LE(value);
  } else {
    v = typeof value === 'string' ? Buffer.from(value, 'latin1') : value;
  }
  const h = Buffer.alloc(8);
  h.writeUInt16LE(group, 0);
  h.writeUInt16LE(element, 2);
  h.writeUInt32LE(v.length, 4);
  return Buffer.concat([h, v]);
}

function commandError(buf: Buffer, message: RegExp): CommandError {
  let caught: unknown;
  try {
    decodeCommand(buf);
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof CommandError, `expected a CommandError, got ${String(caught)}`);
  assert.equal(caught.code, 'INVALID_COMMAND_SET');
  assert.match(caught.message, message);
  return caught;
}

/** Checks the layout PS3.7 requires: group length first and correct, tags ascending, even lengths. */
function assertWellFormed(buf: Buffer): void {
  const els = walk(buf);
  const first = els[0];
  assert.ok(first !== undefined);
  assert.equal(first.element, 0x0000, 'Command Group Length first');
  assert.equal(first.value.length, 4);
  assert.equal(first.value.readUInt32LE(0), buf.length - 12, 'group length counts the bytes after it');
  for (const [i, e] of els.entries()) {
    assert.equal(e.group, 0x0000);
    assert.equal(e.value.length % 2, 0, `element (0000,${e.element.toString(16)}) has an even length`);
    if (i > 0) assert.ok(e.element > (els[i - 1] as RawElement).element, 'tags strictly ascending');
  }
}

// ------------------------------------------------------------------------------------------------
// Round trips
// ------------------------------------------------------------------------------------------------

describe('encodeCommand / decodeCommand round trip', () => {
  const cases: [string, CommandSet][] = [
    [
      'C-STORE-RQ',
      {
        commandField: CommandField.CStoreRq,
        messageId: 7,
        affectedSopClassUid: CT_IMAGE_STORAGE,
        affectedSopInstanceUid: INSTANCE,
        priority: 0,
        commandDataSetType: 0x0000,
      },
    ],
    [
      'C-STORE-RQ as a C-MOVE sub-operation',
      {
        commandField: CommandField.CStoreRq,
        messageId: 0xffff,
        affectedSopClassUid: CT_IMAGE_STORAGE,
        affectedSopInstanceUid: `${INSTANCE}1`,
        priority: 2,
        commandDataSetType: 0x0102,
        moveOriginatorAeTitle: 'MODALITY1',
        moveOriginatorMessageId: 3,
      },
    ],
    [
      'C-STORE-RSP',
      {
        commandField: CommandField.CStoreRsp,
        messageIdBeingRespondedTo: 7,
        affectedSopClassUid: CT_IMAGE_STORAGE,
        affectedSopInstanceUid: INSTANCE,
        commandDataSetType: NO_DATA_SET,
        status: 0x0000,
      },
    ],
    [
      'C-MOVE-RQ with a move destination',
      {
        commandField: CommandField.CMoveRq,
        messageId: 12,
        affectedSopClassUid: STUDY_ROOT_MOVE,
        priority: 1,
        moveDestination: 'ARCHIVE', // 7 characters: padded with a space
        commandDataSetType: 0x0000,
      },
    ],
    [
      'C-MOVE-RSP with sub-operation counts',
      {
        commandField: CommandField.CMoveRsp,
        messageIdBeingRespondedTo: 12,
        affectedSopClassUid: STUDY_ROOT_MOVE,
        commandDataSetType: NO_DATA_SET,
        status: 0xff00,
        remaining: 10,
        completed: 5,
        failed: 1,
        warning: 2,
      },
    ],
    [
      'C-FIND-RSP pending, with an identifier',
      {
        commandField: CommandField.CFindRsp,
        messageIdBeingRespondedTo: 3,
        affectedSopClassUid: STUDY_ROOT_FIND,
        commandDataSetType: 0x0000,
        status: 0xff00,
      },
    ],
    [
      'C-FIND-RSP failure with an error comment',
      {
        commandField: CommandField.CFindRsp,
        messageIdBeingRespondedTo: 3,
        affectedSopClassUid: STUDY_ROOT_FIND,
        commandDataSetType: NO_DATA_SET,
        status: 0xc000,
        errorComment: 'unable to process', // odd
      },
    ],
    [
      'C-ECHO-RQ',
      {
        commandField: CommandField.CEchoRq,
        messageId: 1,
        affectedSopClassUid: '1.2.840.10008.1.1',
        commandDataSetType: NO_DATA_SET,
      },
    ],
    [
      'N-EVENT-REPORT-RQ without an event type',
      {
        commandField: CommandField.NEventReportRq,
        messageId: 9,
        affectedSopClassUid: STORAGE_COMMITMENT,
        affectedSopInstanceUid: '1.2.840.10008.1.20.1.1',
        commandDataSetType: 0x0000,
      },
    ],
    [
      'N-GET-RQ with requested UIDs',
      {
        commandField: CommandField.NGetRq,
        messageId: 4,
        requestedSopClassUid: '1.2.840.10008.5.1.1.9',
        requestedSopInstanceUid: '1.2.3',
        commandDataSetType: NO_DATA_SET,
      },
    ],
  ];

  for (const [name, cmd] of cases) {
    test(name, () => {
      const buf = encodeCommand(cmd);
      assertWellFormed(buf);
      assert.deepEqual(decodeCommand(buf), cmd);
    });
  }

  test('N-EVENT-REPORT-RQ keeps its Event Type ID (0000,1002)', () => {
    const cmd: CommandSet = {
      commandField: CommandField.NEventReportRq,
      messageId: 9,
      affectedSopClassUid: STORAGE_COMMITMENT,
      affectedSopInstanceUid: '1.2.840.10008.1.20.1.1',
      eventTypeId: 1,
      commandDataSetType: 0x0000,
    };
    const buf = encodeCommand(cmd);
    assert.ok(valueOf(buf, 0x1002)?.equals(Buffer.from([1, 0])), 'Event Type ID element present');
    assert.deepEqual(decodeCommand(buf), cmd);
  });

  test('N-ACTION-RQ keeps its Action Type ID (0000,1008)', () => {
    const cmd: CommandSet = {
      commandField: CommandField.NActionRq,
      messageId: 10,
      requestedSopClassUid: STORAGE_COMMITMENT,
      requestedSopInstanceUid: '1.2.840.10008.1.20.1.1',
      actionTypeId: 1,
      commandDataSetType: 0x0000,
    };
    const buf = encodeCommand(cmd);
    assert.ok(valueOf(buf, 0x1008)?.equals(Buffer.from([1, 0])), 'Action Type ID element present');
    assert.deepEqual(decodeCommand(buf), cmd);
  });

  test('decoding Event Type ID and Action Type ID from raw elements', () => {
    const buf = Buffer.concat([
      el(0x0100, CommandField.NEventReportRq),
      el(0x0800, NO_DATA_SET),
      el(0x1002, 3),
      el(0x1008, 4),
    ]);
    const cmd = decodeCommand(buf);
    assert.equal(cmd.eventTypeId, 3);
    assert.equal(cmd.actionTypeId, 4);
  });
});

describe('padding', () => {
  test('odd-length UIDs are padded with NUL, AE titles and LO with a space; decoded without padding', () => {
    const cmd: CommandSet = {
      commandField: CommandField.CMoveRq,
      messageId: 1,
      affectedSopClassUid: STUDY_ROOT_MOVE,
      affectedSopInstanceUid: '1.2.3',
      moveDestination: 'DEST1',
      errorComment: 'abc',
      moveOriginatorAeTitle: 'ORIGIN',
      commandDataSetType: 0x0000,
    };
    const buf = encodeCommand(cmd);
    assert.deepEqual(valueOf(buf, 0x0002), Buffer.from(`${STUDY_ROOT_MOVE}\0`, 'latin1'));
    assert.deepEqual(valueOf(buf, 0x1000), Buffer.from('1.2.3\0', 'latin1'));
    assert.deepEqual(valueOf(buf, 0x0600), Buffer.from('DEST1 ', 'latin1'));
    assert.deepEqual(valueOf(buf, 0x0902), Buffer.from('abc ', 'latin1'));
    assert.deepEqual(valueOf(buf, 0x1030), Buffer.from('ORIGIN', 'latin1'), 'even: no pad');
    assert.deepEqual(decodeCommand(buf), cmd);
  });

  test('even-length values are not padded', () => {
    const buf = encodeCommand({
      commandField: CommandField.CStoreRq,
      affectedSopClassUid: '1.2.34',
      commandDataSetType: 0,
    });
    assert.deepEqual(valueOf(buf, 0x0002), Buffer.from('1.2.34', 'latin1'));
  });

  test('decoding strips trailing NUL/space padding and leading spaces of AE titles', () => {
    const buf = Buffer.concat([
      el(0x0000, Buffer.from([0, 0, 0, 0])),
      el(0x0002, '1.2.3\0'),
      el(0x0100, CommandField.CMoveRq),
      el(0x0600, ' DEST          '),
      el(0x0800, 0x0000),
      el(0x1000, '1.2.3.4 '),
      el(0x1030, 'ORIG\0\0'),
    ]);
    assert.deepEqual(decodeCommand(buf), {
      commandField: CommandField.CMoveRq,
      commandDataSetType: 0x0000,
      affectedSopClassUid: '1.2.3',
      moveDestination: 'DEST',
      affectedSopInstanceUid: '1.2.3.4',
      moveOriginatorAeTitle: 'ORIG',
    });
  });

  test('elements the proxy does not need are skipped; an empty text value decodes as an empty string', () => {
    const buf = Buffer.concat([
      el(0x0100, CommandField.CEchoRq),
      el(0x0005, Buffer.alloc(10, 0x41)),
      el(0x0800, NO_DATA_SET),
      el(0x0902, ''),
    ]);
    assert.deepEqual(decodeCommand(buf), {
      commandField: CommandField.CEchoRq,
      commandDataSetType: NO_DATA_SET,
      errorComment: '',
    });
  });
});

describe('decodeCommand errors', () => {
  const valid = Buffer.concat([el(0x0100, CommandField.CEchoRq), el(0x0800, NO_DATA_SET)]);

  test('truncated element header', () => {
    for (let n = 1; n < 8; n++) {
      const buf = Buffer.concat([valid, Buffer.alloc(n)]);
      commandError(buf, new RegExp(`truncated in an element header at offset ${valid.length}$`));
    }
    commandError(Buffer.alloc(7), /truncated in an element header at offset 0/);
  });

  test('length beyond the buffer', () => {
    const buf = Buffer.concat([valid, el(0x0002, '1.2.3.4')]).subarray(0, valid.length + 8 + 4);
    commandError(buf, /element \(0000,0002\) length 7 exceeds the 4 bytes left in the command set/);
    const huge = Buffer.concat([valid, el(0x0900, 0)]);
    huge.writeUInt32LE(0xffffffff, valid.length + 4);
    commandError(huge, /element \(0000,0900\) length 4294967295 exceeds the 2 bytes left/);
  });

  test('element outside group 0000', () => {
    const buf = Buffer.concat([valid, el(0x0016, '1.2', 0x0008)]);
    commandError(buf, new RegExp(`element \\(0008,0016\\) at offset ${valid.length} is not in group 0000`));
    commandError(
      Buffer.concat([el(0x0100, 1, 0x0002), valid]),
      /\(0002,0100\) at offset 0 is not in group 0000/,
    );
  });

  test('missing Command Field', () => {
    commandError(el(0x0800, NO_DATA_SET), /no Command Field \(0000,0100\)/);
    commandError(Buffer.alloc(0), /no Command Field \(0000,0100\)/);
  });

  test('missing Command Data Set Type', () => {
    commandError(el(0x0100, CommandField.CEchoRq), /no Command Data Set Type \(0000,0800\)/);
  });

  test('US element with a length other than 2', () => {
    commandError(
      Buffer.concat([el(0x0100, Buffer.from([1, 0, 0, 0])), el(0x0800, NO_DATA_SET)]),
      /element \(0000,0100\) US length 4, expected 2/,
    );
    commandError(
      Buffer.concat([valid, el(0x0110, Buffer.alloc(0))]),
      /\(0000,0110\) US length 0, expected 2/,
    );
  });

  test('property: random bytes throw only CommandError', () => {
    const noisy = fc.oneof(
      fc.uint8Array({ maxLength: 100 }).map((u) => Buffer.from(u)),
      fc
        .tuple(
          fc.array(fc.tuple(fc.integer({ min: 0, max: 0x1040 }), fc.uint8Array({ maxLength: 6 })), {
            maxLength: 6,
          }),
          fc.nat({ max: 60 }),
        )
        .map(([els, cut]) => {
          const b = Buffer.concat(els.map(([t, v]) => el(t, Buffer.from(v))));
          return b.subarray(0, Math.max(0, b.length - (cut % 4)));
        }),
    );
    fc.assert(
      fc.property(noisy, (buf) => {
        try {
          decodeCommand(buf);
        } catch (err) {
          if (!(err instanceof CommandError)) throw err;
        }
      }),
      RUN,
    );
  });
});

// ------------------------------------------------------------------------------------------------
// Refusal responses
// ------------------------------------------------------------------------------------------------

describe('encodeRefusalResponse', () => {
  const storeRq: CommandSet = {
    commandField: CommandField.CStoreRq,
    messageId: 42,
    affectedSopClassUid: CT_IMAGE_STORAGE,
    affectedSopInstanceUid: INSTANCE,
    priority: 0,
    commandDataSetType: 0x0000,
  };

  test('C-STORE-RQ refused: C-STORE-RSP, responding to its message id, no data set, status as given', () => {
    const buf = encodeRefusalResponse(storeRq, Status.RefusedNotAuthorized, 'not authorized');
    assertWellFormed(buf);
    assert.deepEqual(decodeCommand(buf), {
      commandField: CommandField.CStoreRsp,
      messageIdBeingRespondedTo: 42,
      affectedSopClassUid: CT_IMAGE_STORAGE,
      affectedSopInstanceUid: INSTANCE,
      commandDataSetType: NO_DATA_SET,
      status: 0x0124,
      errorComment: 'not authorized',
    });
    assert.equal(valueOf(buf, 0x0110), undefined, 'a response has no Message ID');
  });

  test('C-MOVE-RQ refused: C-MOVE-RSP with zero sub-operation counts', () => {
    const moveRq: CommandSet = {
      commandField: CommandField.CMoveRq,
      messageId: 5,
      affectedSopClassUid: STUDY_ROOT_MOVE,
      moveDestination: 'NOWHERE',
      priority: 0,
      commandDataSetType: 0x0000,
    };
    const cmd = decodeCommand(
      encodeRefusalResponse(moveRq, Status.MoveDestinationUnknown, 'unknown destination'),
    );
    assert.equal(cmd.commandField, CommandField.CMoveRsp);
    assert.equal(cmd.messageIdBeingRespondedTo, 5);
    assert.equal(cmd.status, 0xa801);
    assert.equal(cmd.commandDataSetType, NO_DATA_SET);
    assert.equal(cmd.moveDestination, undefined);
    assert.deepEqual([cmd.remaining, cmd.completed, cmd.failed, cmd.warning], [0, 0, 0, 0]);
  });

  test('C-GET-RQ refused: C-GET-RSP with zero sub-operation counts', () => {
    const cmd = decodeCommand(
      encodeRefusalResponse(
        {
          commandField: CommandField.CGetRq,
          messageId: 6,
          affectedSopClassUid: '1.2.840.10008.5.1.4.1.2.2.3',
          commandDataSetType: 0,
        },
        Status.ProcessingFailure,
        'refused',
      ),
    );
    assert.equal(cmd.commandField, CommandField.CGetRsp);
    assert.deepEqual([cmd.remaining, cmd.completed, cmd.failed, cmd.warning], [0, 0, 0, 0]);
  });

  test('C-FIND-RQ and C-ECHO-RQ refused: no sub-operation counts', () => {
    for (const field of [CommandField.CFindRq, CommandField.CEchoRq]) {
      const buf = encodeRefusalResponse(
        { commandField: field, messageId: 1, commandDataSetType: 0 },
        0x0124,
        'x',
      );
      const cmd = decodeCommand(buf);
      assert.equal(cmd.commandField, field | 0x8000);
      assert.equal(cmd.remaining, undefined);
      assert.equal(valueOf(buf, 0x1020), undefined);
      assert.equal(cmd.affectedSopClassUid, undefined, 'no SOP class in the request: none in the response');
    }
  });

  test('N-* requests: requested SOP class/instance become the affected ones', () => {
    const cmd = decodeCommand(
      encodeRefusalResponse(
        {
          commandField: CommandField.NSetRq,
          messageId: 77,
          requestedSopClassUid: '1.2.840.10008.5.1.1.9',
          requestedSopInstanceUid: '1.2.3',
          commandDataSetType: 0,
        },
        0x0124,
        'no',
      ),
    );
    assert.equal(cmd.commandField, CommandField.NSetRsp);
    assert.equal(cmd.affectedSopClassUid, '1.2.840.10008.5.1.1.9');
    assert.equal(cmd.affectedSopInstanceUid, '1.2.3');
    assert.equal(cmd.requestedSopClassUid, undefined);
  });

  test('a missing message id responds to 0; the comment is cut to 64 characters', () => {
    const cmd = decodeCommand(
      encodeRefusalResponse(
        { commandField: CommandField.CEchoRq, commandDataSetType: NO_DATA_SET },
        0x0110,
        'x'.repeat(100),
      ),
    );
    assert.equal(cmd.messageIdBeingRespondedTo, 0);
    assert.equal(cmd.errorComment, 'x'.repeat(64));
  });

  test('status 0 (success) throws: the proxy never fabricates success', () => {
    assert.throws(() => encodeRefusalResponse(storeRq, Status.Success, 'ok'), /never fabricates a success/);
    assert.throws(() => encodeRefusalResponse(storeRq, 0, ''));
  });

  test('property: any request and non-success status give a well-formed refusal', () => {
    const fields = Object.values(CommandField).filter((f) => !isResponse(f));
    fc.assert(
      fc.property(
        commandSet(fc.constantFrom(...fields)),
        fc.integer({ min: 1, max: 0xffff }),
        commentText,
        (rq, status, comment) => {
          const buf = encodeRefusalResponse(rq, status, comment);
          assertWellFormed(buf);
          const rsp = decodeCommand(buf);
          assert.equal(rsp.commandField, rq.commandField | 0x8000);
          assert.ok(isResponse(rsp.commandField));
          assert.equal(rsp.messageIdBeingRespondedTo, rq.messageId ?? 0);
          assert.equal(rsp.status, status);
          assert.equal(rsp.commandDataSetType, NO_DATA_SET);
          assert.equal(hasDataSet(rsp), false);
          assert.equal(rsp.messageId, undefined);
          assert.equal(rsp.errorComment, comment.slice(0, 64).trim());
          const counts = rq.commandField === CommandField.CMoveRq || rq.commandField === CommandField.CGetRq;
          assert.deepEqual(
            [rsp.remaining, rsp.completed, rsp.failed, rsp.warning],
            counts ? [0, 0, 0, 0] : [undefined, undefined, undefined, undefined],
          );
        },
      ),
      RUN,
    );
  });
});

describe('statusClass and helpers', () => {
  test('status classes (PS3.7 Annex C)', () => {
    const table: [number, string][] = [
      [0x0000, 'success'],
      [0xff00, 'pending'],
      [0xff01, 'pending'],
      [0xfe00, 'cancel'],
      [0xb000, 'warning'],
      [0xb007, 'warning'],
      [0x0001, 'warning'],
      [0x0107, 'warning'],
      [0x0116, 'warning'],
      [0xa801, 'failure'],
      [0xa700, 'failure'],
      [0xc000, 'failure'],
      [0x0110, 'failure'],
      [0x0124, 'failure'],
    ];
    for (const [status, cls] of table) assert.equal(statusClass(status), cls, `0x${status.toString(16)}`);
  });

  test('isResponse and hasDataSet', () => {
    assert.equal(isResponse(CommandField.CStoreRq), false);
    assert.equal(isResponse(CommandField.CStoreRsp), true);
    assert.equal(isResponse(CommandField.CCancelRq), false);
    assert.equal(hasDataSet({ commandField: 1, commandDataSetType: NO_DATA_SET }), false);
    assert.equal(hasDataSet({ commandField: 1, commandDataSetType: 0x0000 }), true);
    assert.equal(hasDataSet({ commandField: 1, commandDataSetType: 0x0102 }), true);
  });
});

// ------------------------------------------------------------------------------------------------
// Property: any CommandSet round-trips
// ------------------------------------------------------------------------------------------------

const u16 = fc.integer({ min: 0, max: 0xffff });
const uid = fc.stringMatching(/^[0-9]{1,3}(\.[0-9]{1,5}){0,12}$/).filter((s) => s.length <= 64);
const AE_CHARS = Array.from({ length: 0x7f - 0x20 }, (_, i) => String.fromCharCode(0x20 + i)).filter(
  (c) => c !== '\\',
);
/** Text without leading/trailing padding characters (padding is not significant, so it is not kept). */
function paddedFree(maxLength: number): fc.Arbitrary<string> {
  return fc.array(fc.constantFrom(...AE_CHARS), { maxLength }).map((cs) => cs.join('').trim());
}
const ae = paddedFree(16).filter((s) => s.length > 0);
const commentText = fc.array(fc.constantFrom(...AE_CHARS), { maxLength: 90 }).map((cs) => cs.join(''));

type Arbs = { [K in keyof CommandSet]-?: fc.Arbitrary<NonNullable<CommandSet[K]>> };

function commandSet(field: fc.Arbitrary<number>, withTypeIds = false): fc.Arbitrary<CommandSet> {
  const model: Arbs = {
    commandField: field,
    messageId: u16,
    messageIdBeingRespondedTo: u16,
    affectedSopClassUid: uid,
    requestedSopClassUid: uid,
    affectedSopInstanceUid: uid,
    requestedSopInstanceUid: uid,
    moveDestination: ae,
    priority: fc.integer({ min: 0, max: 2 }),
    commandDataSetType: fc.oneof(fc.constant(NO_DATA_SET), u16),
    status: u16,
    errorComment: paddedFree(64),
    eventTypeId: u16,
    actionTypeId: u16,
    remaining: u16,
    completed: u16,
    failed: u16,
    warning: u16,
    moveOriginatorAeTitle: ae,
    moveOriginatorMessageId: u16,
  };
  if (!withTypeIds) {
    const { eventTypeId: _e, actionTypeId: _a, ...rest } = model;
    return fc.record(rest, { requiredKeys: ['commandField', 'commandDataSetType'], noNullPrototype: true });
  }
  return fc.record(model, { requiredKeys: ['commandField', 'commandDataSetType'], noNullPrototype: true });
}

const anyField = fc.oneof(fc.constantFrom(...Object.values(CommandField)), u16);

describe('property: CommandSet round trip', () => {
  test('any CommandSet (without Event/Action Type ID) round-trips and is well formed', () => {
    fc.assert(
      fc.property(commandSet(anyField), (cmd) => {
        const buf = encodeCommand(cmd);
        assertWellFormed(buf);
        assert.deepEqual(decodeCommand(buf), cmd);
      }),
      RUN,
    );
  });

  test('any CommandSet, including Event Type ID and Action Type ID, round-trips', () => {
    fc.assert(
      fc.property(commandSet(anyField, true), (cmd) => {
        assert.deepEqual(decodeCommand(encodeCommand(cmd)), cmd);
      }),
      { numRuns: 300, interruptAfterTimeLimit: 2000 },
    );
  });
});
