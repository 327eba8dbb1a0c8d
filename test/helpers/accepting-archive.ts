// A mutual-TLS archive (or, with no TLS material, a plaintext receiver) for hostile-input and fuzz tests: accepts every association (every proposed
// presentation context with its first transfer syntax), answers C-ECHO at once and C-STORE once its data
// set has arrived whole, both with success, and A-RELEASE-RQ with A-RELEASE-RP. It never throws from a
// socket handler, whatever it receives: anything it cannot decode closes that connection, and is counted.
import { createHash } from 'node:crypto';
import * as net from 'node:net';
import * as tls from 'node:tls';
import { PduFramer } from '../../src/pdu/framer.js';
import { decodePdu, encodePdu, encodeReleaseRp } from '../../src/pdu/codec.js';
import type { AssociatePdu } from '../../src/pdu/types.js';
import { decodeCommand, encodeCommand, type CommandSet } from '../../src/dimse/command.js';
import { acceptAll } from './scripted-archive.js';

export interface ReceivedStore {
  sopInstanceUid: string;
  /** SHA-256 (hex) of the data set bytes received, every fragment concatenated. */
  sha256: string;
  bytes: number;
}

export interface AcceptingArchive {
  port: number;
  /** Every A-ASSOCIATE-RQ received, decoded. */
  requests: AssociatePdu[];
  commands: CommandSet[];
  stores: ReceivedStore[];
  /** Every A-ABORT received, as [source, reason]. */
  aborts: Array<[number, number]>;
  /** Connections closed because what arrived could not be decoded. */
  undecodable: number;
  /** Open connections. */
  readonly open: number;
  close(): void;
}

export async function startAcceptingArchive(
  material: { ca: string; cert: string; key: string } | null,
): Promise<AcceptingArchive> {
  const sockets = new Set<net.Socket>();
  const state: AcceptingArchive = {
    port: 0,
    requests: [],
    commands: [],
    stores: [],
    aborts: [],
    undecodable: 0,
    get open() {
      return sockets.size;
    },
    close: () => {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
  const onSocket = (socket: net.Socket): void => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    const framer = new PduFramer({ maxPDataLength: 1 << 24, maxOtherLength: 1 << 20 });
    // Per presentation context: the command whose data set is arriving, and its hash so far.
    const pending = new Map<
      number,
      { cmd: CommandSet; hash: ReturnType<typeof createHash>; bytes: number }
    >();
    const answer = (contextId: number, cmd: CommandSet): void => {
      const rsp: CommandSet = {
        commandField: cmd.commandField | 0x8000,
        messageIdBeingRespondedTo: cmd.messageId ?? 0,
        affectedSopClassUid: cmd.affectedSopClassUid ?? '',
        commandDataSetType: 0x0101,
        status: 0x0000,
        ...(cmd.affectedSopInstanceUid !== undefined
          ? { affectedSopInstanceUid: cmd.affectedSopInstanceUid }
          : {}),
      };
      const value = encodeCommand(rsp);
      socket.write(encodePdu({ type: 0x04, pdvs: [{ contextId, command: true, last: true, value }] }));
    };
    socket.on('data', (chunk: Buffer) => {
      try {
        for (const raw of framer.push(chunk)) {
          const pdu = decodePdu(raw);
          if (pdu.type === 0x01) {
            state.requests.push(pdu);
            socket.write(encodePdu(acceptAll(pdu)));
          } else if (pdu.type === 0x04) {
            for (const pdv of pdu.pdvs) {
              if (pdv.command) {
                if (!pdv.last) continue; // this archive needs no fragmented commands
                const cmd = decodeCommand(pdv.value);
                state.commands.push(cmd);
                if (cmd.commandDataSetType === 0x0101) answer(pdv.contextId, cmd);
                else pending.set(pdv.contextId, { cmd, hash: createHash('sha256'), bytes: 0 });
              } else {
                const p = pending.get(pdv.contextId);
                if (!p) continue;
                p.hash.update(pdv.value);
                p.bytes += pdv.value.length;
                if (pdv.last) {
                  pending.delete(pdv.contextId);
                  state.stores.push({
                    sopInstanceUid: p.cmd.affectedSopInstanceUid ?? '',
                    sha256: p.hash.digest('hex'),
                    bytes: p.bytes,
                  });
                  answer(pdv.contextId, p.cmd);
                }
              }
            }
          } else if (pdu.type === 0x05) {
            socket.end(encodeReleaseRp());
          } else if (pdu.type === 0x07) {
            state.aborts.push([pdu.source, pdu.reason]);
            socket.destroy();
          }
        }
      } catch {
        state.undecodable++;
        socket.destroy();
      }
    });
  };
  const server = material
    ? tls.createServer(
        {
          ca: material.ca,
          cert: material.cert,
          key: material.key,
          requestCert: true,
          rejectUnauthorized: true,
        },
        onSocket,
      )
    : net.createServer(onSocket);
  server.on('tlsClientError', () => undefined);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  state.port = (server.address() as { port: number }).port;
  return state;
}
