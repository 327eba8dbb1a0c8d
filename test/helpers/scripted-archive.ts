// A scripted mutual-TLS archive for relay tests: accepts every proposed presentation context with its
// first transfer syntax, decodes each command it receives and lets the test answer with raw PDUs.
import * as tls from 'node:tls';
import { PduFramer } from '../../src/pdu/framer.js';
import { decodePdu, encodePdu } from '../../src/pdu/codec.js';
import type { AssociatePdu } from '../../src/pdu/types.js';
import { decodeCommand, type CommandSet } from '../../src/dimse/command.js';

/** The A-ASSOCIATE-AC accepting every proposed context with its first transfer syntax. */
export function acceptAll(rq: AssociatePdu): AssociatePdu {
  return {
    ...rq,
    type: 0x02,
    items: rq.items.map((i) =>
      i.kind === 'presentation-context-rq'
        ? {
            kind: 'presentation-context-ac',
            context: { id: i.context.id, result: 0, transferSyntax: i.context.transferSyntaxes[0] ?? '' },
          }
        : i,
    ),
  };
}

export interface ScriptedArchive {
  port: number;
  /** Every command set the archive received, in order, with its presentation context id. */
  commands: Array<{ contextId: number; command: CommandSet }>;
  close(): void;
}

export type OnCommand = (cmd: CommandSet, contextId: number, reply: (pdu: Buffer) => void) => void;

export async function startScriptedArchive(
  material: { ca: string; cert: string; key: string },
  onCommand: OnCommand,
): Promise<ScriptedArchive> {
  const commands: ScriptedArchive['commands'] = [];
  const sockets = new Set<tls.TLSSocket>();
  const server = tls.createServer(
    { ca: material.ca, cert: material.cert, key: material.key, requestCert: true, rejectUnauthorized: true },
    (socket) => {
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket));
      const framer = new PduFramer({ maxPDataLength: 1 << 24, maxOtherLength: 1 << 20 });
      socket.on('error', () => undefined);
      socket.on('data', (chunk: Buffer) => {
        for (const raw of framer.push(chunk)) {
          const pdu = decodePdu(raw);
          if (pdu.type === 0x01) {
            const ac: AssociatePdu = {
              ...pdu,
              type: 0x02,
              items: pdu.items.map((i) =>
                i.kind === 'presentation-context-rq'
                  ? {
                      kind: 'presentation-context-ac',
                      context: {
                        id: i.context.id,
                        result: 0,
                        transferSyntax: i.context.transferSyntaxes[0] ?? '',
                      },
                    }
                  : i,
              ),
            };
            socket.write(encodePdu(ac));
          } else if (pdu.type === 0x04) {
            for (const pdv of pdu.pdvs) {
              if (!pdv.command) continue;
              const command = decodeCommand(pdv.value);
              commands.push({ contextId: pdv.contextId, command });
              onCommand(command, pdv.contextId, (reply) => socket.write(reply));
            }
          } else if (pdu.type === 0x05) {
            socket.end(Buffer.from([0x06, 0, 0, 0, 0, 4, 0, 0, 0, 0]));
          }
        }
      });
    },
  );
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as { port: number }).port,
    commands,
    close: () => {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}
