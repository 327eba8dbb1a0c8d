// A raw DICOM UL client for hostile and edge-case tests: sends exact bytes, reads whole PDUs.
import * as net from 'node:net';
import { PduFramer } from '../../src/pdu/framer.js';
import { decodePdu, encodePdu, aeTitleField } from '../../src/pdu/codec.js';
import type { AssociateItem, AssociatePdu, Pdu, UserInfoSubItem } from '../../src/pdu/types.js';
import { encodeCommand, type CommandSet } from '../../src/dimse/command.js';

export const VERIFICATION = '1.2.840.10008.1.1';
export const CT_IMAGE = '1.2.840.10008.5.1.4.1.1.2';
export const STUDY_ROOT_MOVE = '1.2.840.10008.5.1.4.1.2.2.2';
export const IMPLICIT_LE = '1.2.840.10008.1.2';
export const EXPLICIT_LE = '1.2.840.10008.1.2.1';

export function associateRq(
  calling: string,
  called: string,
  contexts: Array<{ id: number; abstractSyntax: string; transferSyntaxes?: string[] }>,
  maxLength = 16384,
  extraSubItems: UserInfoSubItem[] = [],
): Buffer {
  const items: AssociateItem[] = [
    { kind: 'application-context', name: '1.2.840.10008.3.1.1.1' },
    ...contexts.map((c): AssociateItem => ({
      kind: 'presentation-context-rq',
      context: {
        id: c.id,
        abstractSyntax: c.abstractSyntax,
        transferSyntaxes: c.transferSyntaxes ?? [IMPLICIT_LE],
      },
    })),
    {
      kind: 'user-information',
      subItems: [
        { kind: 'max-length', maxLength },
        { kind: 'implementation-class-uid', uid: '1.2.3.4' },
        { kind: 'implementation-version-name', name: 'RAWTEST' },
        ...extraSubItems,
      ],
    },
  ];
  const pdu: AssociatePdu = {
    type: 0x01,
    protocolVersion: 1,
    calledAeTitle: aeTitleField(called),
    callingAeTitle: aeTitleField(calling),
    reserved: Buffer.alloc(32),
    items,
  };
  return encodePdu(pdu);
}

/** One P-DATA-TF with a single PDV. */
export function pdata(contextId: number, command: boolean, last: boolean, value: Buffer): Buffer {
  return encodePdu({ type: 0x04, pdvs: [{ contextId, command, last, value }] });
}

export function commandPdu(contextId: number, cmd: CommandSet): Buffer {
  return pdata(contextId, true, true, encodeCommand(cmd));
}

export class RawScu {
  private readonly framer = new PduFramer({ maxPDataLength: 16 * 1024 * 1024, maxOtherLength: 1024 * 1024 });
  private readonly queue: Buffer[] = [];
  private waiter: (() => void) | null = null;
  closed = false;
  error: Error | null = null;

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      try {
        this.queue.push(...this.framer.push(chunk));
      } catch (err) {
        this.error = err as Error;
      }
      this.waiter?.();
    });
    socket.on('close', () => {
      this.closed = true;
      this.waiter?.();
    });
    socket.on('error', (err) => {
      this.error = err;
    });
  }

  static connect(port: number, host = '127.0.0.1'): Promise<RawScu> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ port, host, noDelay: true }, () => resolve(new RawScu(s)));
      s.once('error', reject);
    });
  }

  send(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  /** Next whole PDU, decoded; null when the connection closed first. */
  async next(timeoutMs = 5000): Promise<Pdu | null> {
    const deadline = Date.now() + timeoutMs;
    while (this.queue.length === 0 && !this.closed) {
      if (Date.now() > deadline) throw new Error(`no PDU within ${timeoutMs} ms`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, 50);
        this.waiter = () => {
          clearTimeout(t);
          r();
        };
      });
      this.waiter = null;
    }
    const raw = this.queue.shift();
    return raw ? decodePdu(raw) : null;
  }

  /** Resolves when the peer closed the connection. */
  async waitClosed(timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed) {
      if (Date.now() > deadline) throw new Error(`connection still open after ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  destroy(): void {
    this.socket.destroy();
  }
}
