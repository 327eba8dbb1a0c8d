// Backpressure end to end (DESIGN habit 4): an archive that stops reading must stall the modality, not
// grow the proxy's memory; when the archive reads again, every byte arrives.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tls from 'node:tls';
import { PduFramer } from '../../src/pdu/framer.js';
import { decodePdu, encodePdu } from '../../src/pdu/codec.js';
import type { AssociatePdu } from '../../src/pdu/types.js';
import { RawScu, associateRq, commandPdu, pdata, CT_IMAGE } from '../helpers/raw.js';
import { removePki, standardPki, startProxy } from '../helpers/proxy.js';
import { acceptAll } from '../helpers/scripted-archive.js';

const PDU_VALUE = 16 * 1024;
const TARGET = 256 * 1024 * 1024; // what the modality tries to send while the archive is stalled
const RELAY_BUFFER = 65_536; // limits.relayBuffer: the proxy's own queue toward the archive
const READ_CHUNK = 65_536; // one socket read, relayed whole before the modality is paused

test('a stalled archive stalls the modality; the proxy holds a bounded amount; all bytes arrive after', async () => {
  const pki = await standardPki();
  let archiveSocket: tls.TLSSocket | null = null;
  let archiveBytes = 0;
  let afterAc = false;
  const archive = tls.createServer(
    {
      ca: pki.ca.cert,
      cert: pki.archive.cert,
      key: pki.archive.key,
      requestCert: true,
      rejectUnauthorized: true,
    },
    (socket) => {
      archiveSocket = socket;
      const framer = new PduFramer({ maxPDataLength: 1 << 24, maxOtherLength: 1 << 20 });
      socket.on('data', (chunk: Buffer) => {
        if (afterAc) {
          archiveBytes += chunk.length;
          return;
        }
        const [rqRaw] = framer.push(chunk);
        if (!rqRaw) return;
        const ac = acceptAll(decodePdu(rqRaw) as AssociatePdu);
        afterAc = true;
        socket.write(encodePdu(ac));
        socket.pause(); // the archive stops reading: a stalled PACS
      });
      socket.on('error', () => undefined);
    },
  );
  await new Promise<void>((r) => archive.listen(0, '127.0.0.1', r));
  const archivePort = (archive.address() as { port: number }).port;
  const proxy = await startProxy({
    archivePort,
    pki,
    limits: `{ maxPduLength: 65536, idleTimeout: 1m, relayBuffer: ${RELAY_BUFFER} }`,
  });
  const scu = await RawScu.connect(proxy.port);
  try {
    scu.send(associateRq('SCU', 'DICOM_PROXY', [{ id: 1, abstractSyntax: CT_IMAGE }]));
    const ac = await scu.next();
    assert.equal(ac?.type, 0x02);
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
    const chunk = pdata(1, false, false, Buffer.alloc(PDU_VALUE, 0x5a));
    // Write until the socket refuses more and no drain comes for a second: the stall reached the modality.
    let stalled = false;
    while (sent < TARGET) {
      if (!scu.socket.write(chunk)) {
        sent += chunk.length;
        const drained = await Promise.race([
          new Promise<boolean>((r) => scu.socket.once('drain', () => r(true))),
          new Promise<boolean>((r) => setTimeout(() => r(false), 1000)),
        ]);
        if (!drained) {
          stalled = true;
          break;
        }
      } else {
        sent += chunk.length;
      }
    }
    assert.ok(stalled, `the modality was never stalled: it sent ${sent} bytes`);
    const live = proxy.server.associations()[0];
    assert.ok(live);
    const held = live.stats().bytesFromModality;
    // The proxy's own queue toward the archive is what paused the modality: it holds bytes, at most
    // limits.relayBuffer plus the read that crossed it (the rest sits in kernel buffers).
    const queued = (live as unknown as { upstreamSocket: tls.TLSSocket }).upstreamSocket.writableLength;
    assert.ok(
      queued > 0 && queued <= RELAY_BUFFER + READ_CHUNK + 1024,
      `queued toward the archive: ${queued} bytes with relayBuffer ${RELAY_BUFFER}`,
    );
    // Kernel socket buffers on three hops plus the proxy's bounded write queue; far below what was sent.
    assert.ok(
      held < 48 * 1024 * 1024,
      `the proxy read ${held} bytes from a modality whose archive is stalled`,
    );
    assert.ok(sent < TARGET, 'the modality could not push everything');

    // The archive reads again: every byte the modality handed over reaches it, in full.
    (archiveSocket as tls.TLSSocket | null)?.resume();
    const expected = live.stats().bytesFromModality;
    const deadline = Date.now() + 20000;
    while (archiveBytes < sent && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.equal(
      archiveBytes,
      sent,
      `archive received ${archiveBytes} of ${sent} (proxy had read ${expected})`,
    );
    // Closing without A-RELEASE is a broken leg: the proxy aborts the archive side (PS3.8 A-ABORT, 10 bytes).
    scu.socket.end();
    while (archiveBytes < sent + 10 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.equal(archiveBytes, sent + 10);
  } finally {
    scu.destroy();
    (archiveSocket as tls.TLSSocket | null)?.destroy();
    await proxy.close();
    archive.close();
    await removePki(pki);
  }
});
