// limits.relayBufferTotal: the proxy's memory follows the bytes actually waiting, not relayBuffer ×
// associations. With the archive stalled on every association, the proxy's queues together stay within
// the total (plus one read per association); with a roomy total, one association may still use its own
// relayBuffer (the twin that shows the total is what bounds the first case).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RawScu, associateRq, CT_IMAGE } from '../helpers/raw.js';
import { removePki, standardPki, startProxy } from '../helpers/proxy.js';
import { startStalledArchive, storeUntilStalled } from '../helpers/stalled-archive.js';

const PDU_VALUE = 16 * 1024;
const LIMIT = 128 * 1024 * 1024; // what each modality tries to send while the archive is stalled
const RELAY_BUFFER = 8 * 1024 * 1024; // per association and direction
const READ = 64 * 1024; // one socket read, relayed whole before its source is paused
const FLOOR = 64 * 1024; // RELAY_BUFFER_FLOOR

async function stalledAssociations(relayBufferTotal: number, count: number): Promise<number[]> {
  const pki = await standardPki();
  const archive = await startStalledArchive(pki);
  const proxy = await startProxy({
    archivePort: archive.port,
    pki,
    limits: `{ maxPduLength: 65536, idleTimeout: 1m, relayBuffer: ${RELAY_BUFFER}, relayBufferTotal: ${relayBufferTotal} }`,
  });
  const scus: RawScu[] = [];
  try {
    for (let i = 0; i < count; i++) {
      const scu = await RawScu.connect(proxy.port);
      scus.push(scu);
      // The stalled archive echoes the requested maximum PDU length; 64 KiB lets 16 KiB PDVs through (PS3.8 D.1).
      scu.send(associateRq('SCU', 'DICOM_PROXY', [{ id: 1, abstractSyntax: CT_IMAGE }], 65536));
      assert.equal((await scu.next())?.type, 0x02);
    }
    // One after the other, so each later association finds the total already used by the earlier ones.
    for (const scu of scus) {
      const { stalled, sent } = await storeUntilStalled(scu, PDU_VALUE, LIMIT);
      assert.ok(stalled, `a modality was never stalled: it sent ${sent} bytes`);
    }
    return proxy.server.associations().map((a) => a.stats().queuedTowardArchive);
  } finally {
    for (const scu of scus) scu.destroy();
    await proxy.close();
    archive.close();
    await removePki(pki);
  }
}

test(
  'a small relayBufferTotal bounds what all stalled associations hold together',
  { timeout: 120_000 },
  async () => {
    const TOTAL = 1024 * 1024;
    const queued = await stalledAssociations(TOTAL, 4);
    assert.equal(queued.length, 4);
    const sum = queued.reduce((a, b) => a + b, 0);
    for (const q of queued) assert.ok(q > 0, `every association holds something: ${queued.join(', ')}`);
    // The first association fills the total; each later one is paused once it holds more than one read.
    assert.ok(
      sum <= TOTAL + queued.length * (FLOOR + READ + PDU_VALUE),
      `queued toward the archive: ${queued.join(' + ')} = ${sum} bytes with relayBufferTotal ${TOTAL}`,
    );
    for (const q of queued.slice(1))
      assert.ok(q <= FLOOR + READ + PDU_VALUE, `a later association held ${q}`);
  },
);

test(
  'with room in relayBufferTotal one association may queue up to its relayBuffer',
  { timeout: 120_000 },
  async () => {
    const [queued] = await stalledAssociations(256 * 1024 * 1024, 1);
    assert.ok(queued !== undefined);
    assert.ok(
      queued > 2 * 1024 * 1024 && queued <= RELAY_BUFFER + READ + PDU_VALUE,
      `one association held ${queued} bytes with relayBuffer ${RELAY_BUFFER}`,
    );
  },
);
