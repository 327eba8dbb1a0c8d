// A mutual-TLS archive that accepts every association and then stops reading (a stalled PACS), for the
// backpressure and relay-memory tests. It counts what it receives after the A-ASSOCIATE-AC.
import * as tls from 'node:tls';
import { PduFramer } from '../../src/pdu/framer.js';
import { decodePdu, encodePdu } from '../../src/pdu/codec.js';
import type { AssociatePdu } from '../../src/pdu/types.js';
import { acceptAll } from './scripted-archive.js';
import type { standardPki } from './proxy.js';
import { CT_IMAGE, commandPdu, pdata, type RawScu } from './raw.js';

export interface StalledArchive {
  port: number;
  /** Bytes received after the A-ASSOCIATE-AC, over all associations. */
  bytes(): number;
  /** Associations accepted so far. */
  associations(): number;
  /** Start reading again, on every association. */
  resume(): void;
  close(): void;
}

export async function startStalledArchive(
  pki: Awaited<ReturnType<typeof standardPki>>,
): Promise<StalledArchive> {
  const sockets: tls.TLSSocket[] = [];
  let bytes = 0;
  let stalled = true;
  const server = tls.createServer(
    {
      ca: pki.ca.cert,
      cert: pki.archive.cert,
      key: pki.archive.key,
      requestCert: true,
      rejectUnauthorized: true,
    },
    (socket) => {
      sockets.push(socket);
      let afterAc = false;
      const framer = new PduFramer({ maxPDataLength: 1 << 24, maxOtherLength: 1 << 20 });
      socket.on('data', (chunk: Buffer) => {
        if (afterAc) {
          bytes += chunk.length;
          return;
        }
        const [rqRaw] = framer.push(chunk);
        if (!rqRaw) return;
        afterAc = true;
        socket.write(encodePdu(acceptAll(decodePdu(rqRaw) as AssociatePdu)));
        if (stalled) socket.pause(); // the archive stops reading
      });
      socket.on('error', () => undefined);
    },
  );
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as { port: number }).port,
    bytes: () => bytes,
    associations: () => sockets.length,
    resume: () => {
      stalled = false;
      for (const s of sockets) s.resume();
    },
    close: () => {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}

/**
 * Start a C-STORE on an established association and send its data PDVs until the socket refuses more
 * and no 'drain' comes for a second (the stall reached the modality), or `limit` bytes were sent.
 */
export async function storeUntilStalled(
  scu: RawScu,
  pduValue: number,
  limit: number,
): Promise<{ sent: number; stalled: boolean }> {
  let sent = 0;
  const command = commandPdu(1, {
    commandField: 0x0001,
    messageId: 1,
    affectedSopClassUid: CT_IMAGE,
    affectedSopInstanceUid: '1.2.3.4',
    priority: 0,
    commandDataSetType: 0x0000,
  });
  scu.socket.write(command);
  sent += command.length;
  const chunk = pdata(1, false, false, Buffer.alloc(pduValue, 0x5a));
  while (sent < limit) {
    const accepted = scu.socket.write(chunk);
    sent += chunk.length;
    if (accepted) continue;
    const drained = await Promise.race([
      new Promise<boolean>((r) => scu.socket.once('drain', () => r(true))),
      new Promise<boolean>((r) => setTimeout(() => r(false), 1000)),
    ]);
    if (!drained) return { sent, stalled: true };
  }
  return { sent, stalled: false };
}
