// A raw DICOM UL client for hostile and edge-case tests: sends exact bytes, reads whole PDUs.
import * as net from 'node:net';
import * as tls from 'node:tls';
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

  /** Wrap a connected socket (an accepted one, or a TLS client). */
  static attach(socket: net.Socket): RawScu {
    socket.setNoDelay(true);
    return new RawScu(socket);
  }

  /** A mutual-TLS client (the archive calling the return listener). */
  static connectTls(port: number, options: tls.ConnectionOptions): Promise<RawScu> {
    return new Promise((resolve, reject) => {
      const s = tls.connect({ port, host: '127.0.0.1', ...options }, () => resolve(new RawScu(s)));
      s.once('error', reject);
    });
  }

  /** A TCP connection to 127.0.0.1:`port` from the loopback address `localAddress` (e.g. 127.0.0.2). */
  static connectFrom(port: number, localAddress: string): Promise<RawScu> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ port, host: '127.0.0.1', localAddress, noDelay: true }, () =>
        resolve(RawScu.attach(s)),
      );
      s.once('error', reject);
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

/** A listening raw DICOM UL peer (an archive over mutual TLS, or a plaintext receiver): each accepted
 * connection is handed out as a RawScu, in order. */
export interface RawServer {
  port: number;
  accept(timeoutMs?: number): Promise<RawScu>;
  close(): void;
}

export async function startRawServer(tlsOptions: tls.TlsOptions | null): Promise<RawServer> {
  const accepted: RawScu[] = [];
  const all: net.Socket[] = [];
  let waiter: (() => void) | null = null;
  const onSocket = (socket: net.Socket): void => {
    all.push(socket);
    accepted.push(RawScu.attach(socket));
    waiter?.();
  };
  const server = tlsOptions ? tls.createServer(tlsOptions, onSocket) : net.createServer(onSocket);
  server.on('tlsClientError', () => undefined);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as net.AddressInfo).port,
    async accept(timeoutMs = 5000) {
      const deadline = Date.now() + timeoutMs;
      while (accepted.length === 0) {
        if (Date.now() > deadline) throw new Error(`no connection within ${timeoutMs} ms`);
        await new Promise<void>((r) => {
          const t = setTimeout(r, 50);
          waiter = () => {
            clearTimeout(t);
            r();
          };
        });
        waiter = null;
      }
      return accepted.shift() as RawScu;
    },
    close() {
      for (const s of all) s.destroy();
      server.close();
    },
  };
}
