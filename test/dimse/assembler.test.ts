import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';

import { MessageAssembler, MessageSequenceError } from '../../src/dimse/assembler.js';
import { CommandField, NO_DATA_SET, encodeCommand, type CommandSet } from '../../src/dimse/command.js';

const RUN = { numRuns: 300, interruptAfterTimeLimit: 4000 } as const;

const echoRq: CommandSet = {
  commandField: CommandField.CEchoRq,
  messageId: 1,
  affectedSopClassUid: '1.2.840.10008.1.1',
  commandDataSetType: NO_DATA_SET,
};

const storeRq: CommandSet = {
  commandField: CommandField.CStoreRq,
  messageId: 2,
  affectedSopClassUid: '1.2.840.10008.5.1.4.1.1.2',
  affectedSopInstanceUid: '1.2.3.4.5',
  priority: 0,
  commandDataSetType: 0x0000,
};

function split3(buf: Buffer): [Buffer, Buffer, Buffer] {
  const a = Math.floor(buf.length / 3);
  const b = Math.floor((2 * buf.length) / 3);
  return [buf.subarray(0, a), buf.subarray(a, b), buf.subarray(b)];
}

function sequenceError(fn: () => unknown, abortReason: number, message: RegExp): MessageSequenceError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof MessageSequenceError, `expected a MessageSequenceError, got ${String(caught)}`);
  assert.equal(caught.code, 'MESSAGE_SEQUENCE');
  assert.equal(caught.abortReason, abortReason);
  assert.match(caught.message, message);
  return caught;
}

describe('MessageAssembler: commands', () => {
  test('a single-fragment command is decoded at once', () => {
    const asm = new MessageAssembler();
    assert.equal(asm.midCommand, false);
    assert.equal(asm.expectingData, false);
    assert.deepEqual(asm.command(1, encodeCommand(echoRq), true), echoRq);
    assert.equal(asm.midCommand, false);
    assert.equal(asm.expectingData, false);
  });

  test('a command split in 3 fragments is joined', () => {
    const asm = new MessageAssembler();
    const [a, b, c] = split3(encodeCommand(echoRq));
    assert.equal(asm.command(3, a, false), null);
    assert.equal(asm.midCommand, true);
    assert.equal(asm.command(3, b, false), null);
    assert.equal(asm.midCommand, true);
    assert.deepEqual(asm.command(3, c, true), echoRq);
    assert.equal(asm.midCommand, false);
    assert.equal(asm.expectingData, false);
  });

  test('a command split at every offset, including empty fragments', () => {
    const whole = encodeCommand(storeRq);
    for (let i = 0; i <= whole.length; i++) {
      const asm = new MessageAssembler();
      assert.equal(asm.command(1, whole.subarray(0, i), false), null);
      assert.deepEqual(asm.command(1, whole.subarray(i), true), storeRq);
      assert.equal(asm.expectingData, true);
    }
  });
});

describe('MessageAssembler: data sets', () => {
  test('a command with a data set expects data until a last data fragment', () => {
    const asm = new MessageAssembler();
    assert.deepEqual(asm.command(5, encodeCommand(storeRq), true), storeRq);
    assert.equal(asm.expectingData, true);
    assert.equal(asm.midCommand, false);
    asm.data(5, false);
    assert.equal(asm.expectingData, true);
    asm.data(5, false);
    assert.equal(asm.expectingData, true);
    asm.data(5, true);
    assert.equal(asm.expectingData, false);
    // the next message may start, on any context
    assert.deepEqual(asm.command(7, encodeCommand(echoRq), true), echoRq);
  });

  test('a single last data fragment completes the message', () => {
    const asm = new MessageAssembler();
    asm.command(1, encodeCommand(storeRq), true);
    asm.data(1, true);
    assert.equal(asm.expectingData, false);
  });
});

describe('MessageAssembler: sequence errors', () => {
  test('data without a command: abort reason 5', () => {
    const asm = new MessageAssembler();
    sequenceError(() => asm.data(1, true), 5, /data fragment on context 1 without a command/);
  });

  test('data after a command without a data set: abort reason 5', () => {
    const asm = new MessageAssembler();
    asm.command(1, encodeCommand(echoRq), true);
    sequenceError(() => asm.data(1, false), 5, /without a command announcing a data set/);
  });

  test('data after the last data fragment: abort reason 5', () => {
    const asm = new MessageAssembler();
    asm.command(1, encodeCommand(storeRq), true);
    asm.data(1, true);
    sequenceError(() => asm.data(1, true), 5, /without a command/);
  });

  test('data while a command is incomplete: abort reason 5', () => {
    const asm = new MessageAssembler();
    asm.command(1, split3(encodeCommand(storeRq))[0], false);
    sequenceError(() => asm.data(1, false), 5, /without a command/);
  });

  test('data on another context: abort reason 6', () => {
    const asm = new MessageAssembler();
    asm.command(1, encodeCommand(storeRq), true);
    asm.data(1, false);
    sequenceError(() => asm.data(3, false), 6, /data fragment on context 3 inside a message on context 1/);
    sequenceError(() => asm.data(3, true), 6, /context 3 inside a message on context 1/);
  });

  test('a command fragment while the data set is incomplete: abort reason 5', () => {
    const asm = new MessageAssembler();
    asm.command(1, encodeCommand(storeRq), true);
    sequenceError(
      () => asm.command(1, encodeCommand(echoRq), true),
      5,
      /command fragment on context 1 while the data set on context 1 is incomplete/,
    );
    asm.data(1, false);
    sequenceError(
      () => asm.command(3, encodeCommand(echoRq), false),
      5,
      /context 3 while the data set on context 1/,
    );
  });

  test('a command continuing on another context: abort reason 6', () => {
    const asm = new MessageAssembler();
    const [a, b] = split3(encodeCommand(echoRq));
    asm.command(1, a, false);
    sequenceError(
      () => asm.command(3, b, false),
      6,
      /command fragment on context 3 continues a command started on context 1/,
    );
  });

  test('a command bigger than maxCommandBytes: abort reason 6', () => {
    const whole = encodeCommand(storeRq);
    // exactly the limit is accepted
    assert.deepEqual(new MessageAssembler(whole.length).command(1, whole, true), storeRq);
    // one byte over, in one fragment
    sequenceError(
      () => new MessageAssembler(whole.length - 1).command(1, whole, true),
      6,
      new RegExp(`command set exceeds ${whole.length - 1} bytes \\(${whole.length} so far\\) on context 1`),
    );
    // over the limit across fragments: detected on the fragment that crosses it, before the last one
    const asm = new MessageAssembler(40);
    assert.equal(asm.command(1, Buffer.alloc(30), false), null);
    sequenceError(() => asm.command(1, Buffer.alloc(11), false), 6, /exceeds 40 bytes \(41 so far\)/);
  });

  test('the default limit is 64 KiB', () => {
    const asm = new MessageAssembler();
    assert.equal(asm.command(1, Buffer.alloc(64 * 1024), false), null);
    sequenceError(() => asm.command(1, Buffer.alloc(1), false), 6, /exceeds 65536 bytes/);
  });

  test('an undecodable command: abort reason 6', () => {
    sequenceError(
      () => new MessageAssembler().command(1, Buffer.from([1, 2, 3]), true),
      6,
      /undecodable command set on context 1: command set truncated/,
    );
    const noField = encodeCommand(echoRq).subarray(0, 12); // group length only
    sequenceError(() => new MessageAssembler().command(9, noField, true), 6, /context 9: .*no Command Field/);
  });
});

describe('MessageAssembler: property', () => {
  interface Message {
    contextId: number;
    cmd: CommandSet;
    commandCuts: number[];
    dataFragments: number;
  }
  const oddId = fc.integer({ min: 0, max: 127 }).map((n) => 2 * n + 1);
  const message: fc.Arbitrary<Message> = fc.record(
    {
      contextId: oddId,
      cmd: fc.constantFrom(echoRq, storeRq, { ...storeRq, commandDataSetType: 0x0102, messageId: 3 }),
      commandCuts: fc.array(fc.nat({ max: 200 }), { maxLength: 4 }),
      dataFragments: fc.integer({ min: 1, max: 4 }),
    },
    { noNullPrototype: true },
  );

  test('any sequence of well-formed messages, any fragmentation, is followed without error', () => {
    fc.assert(
      fc.property(fc.array(message, { maxLength: 6 }), (messages) => {
        const asm = new MessageAssembler();
        for (const m of messages) {
          const whole = encodeCommand(m.cmd);
          const cuts = [...new Set(m.commandCuts.map((c) => c % (whole.length + 1)))].sort((a, b) => a - b);
          const frags: Buffer[] = [];
          let prev = 0;
          for (const c of cuts) {
            frags.push(whole.subarray(prev, c));
            prev = c;
          }
          frags.push(whole.subarray(prev));
          frags.forEach((f, i) => {
            const last = i === frags.length - 1;
            const got = asm.command(m.contextId, f, last);
            if (last) assert.deepEqual(got, m.cmd);
            else {
              assert.equal(got, null);
              assert.equal(asm.midCommand, true);
            }
          });
          const withData = m.cmd.commandDataSetType !== NO_DATA_SET;
          assert.equal(asm.expectingData, withData);
          if (withData) {
            for (let i = 0; i < m.dataFragments; i++) {
              asm.data(m.contextId, i === m.dataFragments - 1);
              assert.equal(asm.expectingData, i < m.dataFragments - 1);
            }
          }
          assert.equal(asm.midCommand, false);
          assert.equal(asm.expectingData, false);
        }
      }),
      RUN,
    );
  });
});
