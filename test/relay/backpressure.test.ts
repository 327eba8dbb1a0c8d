// Backpressure end to end (DESIGN habit 4): an archive that stops reading must stall the modality, not
// grow the proxy's memory; when the archive reads again, every byte arrives.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RawScu, associateRq, CT_IMAGE } from '../helpers/raw.js';
import { removePki, standardPki, startProxy } from '../helpers/proxy.js';
import { startStalledArchive, storeUntilStalled } from '../helpers/stalled-archive.js';

const PDU_VALUE = 16 * 1024;
const TARGET = 256 * 1024 * 1024; // what the modality tries to send while the archive is stalled
const RELAY_BUFFER = 65_536; // limits.relayBuffer: the proxy's own queue toward the archive
const READ_CHUNK = 65_536; // one socket read, relayed whole before the modality is paused

test('a stalled archive stalls the modality; the proxy holds a bounded amount; all bytes arrive after', async () => {
  const pki = await standardPki();
  const archive = await startStalledArchive(pki);
  const archivePort = archive.port;
  const proxy = await startProxy({
    archivePort,
    pki,
    limits: `{ maxPduLength: 65536, idleTimeout: 1m, relayBuffer: ${RELAY_BUFFER} }`,
  });
  const scu = await RawScu.connect(proxy.port);
  try {
    // The stalled archive echoes the requested maximum PDU length; 64 KiB lets 16 KiB PDVs through (PS3.8 D.1).
    scu.send(associateRq('SCU', 'DICOM_PROXY', [{ id: 1, abstractSyntax: CT_IMAGE }], 65536));
    const ac = await scu.next();
    assert.equal(ac?.type, 0x02);
    const { sent, stalled } = await storeUntilStalled(scu, PDU_VALUE, TARGET);
    assert.ok(stalled, `the modality was never stalled: it sent ${sent} bytes`);
    const live = proxy.server.associations()[0];
    assert.ok(live);
    const held = live.stats().bytesFromModality;
    // The proxy's own queue toward the archive is what paused the modality: it holds bytes, at most
    // limits.relayBuffer plus the read that crossed it (the rest sits in kernel buffers).
    const queued = live.stats().queuedTowardArchive;
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
    archive.resume();
    const expected = live.stats().bytesFromModality;
    const deadline = Date.now() + 20000;
    while (archive.bytes() < sent && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.equal(
      archive.bytes(),
      sent,
      `archive received ${archive.bytes()} of ${sent} (proxy had read ${expected})`,
    );
    // Closing without A-RELEASE is a broken leg: the proxy aborts the archive side (PS3.8 A-ABORT, 10 bytes).
    scu.socket.end();
    while (archive.bytes() < sent + 10 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.equal(archive.bytes(), sent + 10);
  } finally {
    scu.destroy();
    await proxy.close();
    archive.close();
    await removePki(pki);
  }
});
