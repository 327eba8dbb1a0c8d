// Message bookkeeping for one direction of an association (PS3.7 9.3 / PS3.8 9.3.5.1 and Annex E):
// a message is its command fragments, then — when the command announces one — its data set fragments,
// all on the same presentation context. The assembler joins command fragments (small, bounded) and
// follows data fragments by count only: data sets are never parsed or kept.

import { decodeCommand, hasDataSet, type CommandSet } from './command.js';

export class MessageSequenceError extends Error {
  readonly code = 'MESSAGE_SEQUENCE';
  constructor(
    message: string,
    /** PS3.8 9.3.8 A-ABORT reason: 5 unexpected PDU parameter, 6 invalid PDU parameter value. */
    readonly abortReason: number,
  ) {
    super(message);
    this.name = 'MessageSequenceError';
  }
}

export class MessageAssembler {
  private parts: Buffer[] = [];
  private partBytes = 0;
  private commandContext = -1;
  private state: 'idle' | 'command' | 'data' = 'idle';
  private dataContext = -1;

  constructor(private readonly maxCommandBytes = 64 * 1024) {}

  get expectingData(): boolean {
    return this.state === 'data';
  }

  get midCommand(): boolean {
    return this.state === 'command';
  }

  /** Feed one command PDV value. Returns the decoded command set when its last fragment arrives. */
  command(contextId: number, value: Buffer, last: boolean): CommandSet | null {
    if (this.state === 'data') {
      throw new MessageSequenceError(
        `command fragment on context ${contextId} while the data set on context ${this.dataContext} is incomplete`,
        5,
      );
    }
    if (this.state === 'command' && contextId !== this.commandContext) {
      throw new MessageSequenceError(
        `command fragment on context ${contextId} continues a command started on context ${this.commandContext}`,
        6,
      );
    }
    this.partBytes += value.length;
    if (this.partBytes > this.maxCommandBytes) {
      throw new MessageSequenceError(
        `command set exceeds ${this.maxCommandBytes} bytes (${this.partBytes} so far) on context ${contextId}`,
        6,
      );
    }
    this.parts.push(value);
    this.commandContext = contextId;
    if (!last) {
      this.state = 'command';
      return null;
    }
    const whole =
      this.parts.length === 1 ? (this.parts[0] as Buffer) : Buffer.concat(this.parts, this.partBytes);
    this.parts = [];
    this.partBytes = 0;
    let cmd: CommandSet;
    try {
      cmd = decodeCommand(whole);
    } catch (err) {
      throw new MessageSequenceError(
        `undecodable command set on context ${contextId}: ${(err as Error).message}`,
        6,
      );
    }
    if (hasDataSet(cmd)) {
      this.state = 'data';
      this.dataContext = contextId;
    } else {
      this.state = 'idle';
    }
    return cmd;
  }

  /** Account for one data PDV. Throws when no data set is expected or the context differs. */
  data(contextId: number, last: boolean): void {
    if (this.state !== 'data') {
      throw new MessageSequenceError(
        `data fragment on context ${contextId} without a command announcing a data set`,
        5,
      );
    }
    if (contextId !== this.dataContext) {
      throw new MessageSequenceError(
        `data fragment on context ${contextId} inside a message on context ${this.dataContext}`,
        6,
      );
    }
    if (last) this.state = 'idle';
  }
}
