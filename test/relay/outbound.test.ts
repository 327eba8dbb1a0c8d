// The relay's write side (relay/outbound.ts) over real mutual-TLS loopback sockets: at most one write in
// flight toward a TLS socket, bytes in order, end() after the queue, and read buffers whose memory is
// returned (detached) exactly when nothing needs them any more.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as tls from 'node:tls';
import { ChunkLease, Outbound } from '../../src/relay/outbound.js';
import { removePki, standardPki } from '../helpers/proxy.js';

const T = { timeout: 30_000 };
type Pki = Awaited<ReturnType<typeof standardPki>>;

/** A TLS server that does not read until told to, and a connected client socket. */
async function tlsPair(pki: Pki): Promise<{
  client: tls.TLSSocket;
  received: () => Buffer;
  startReading: () => void;
  ended: Promise<void>;
  close: () => void;
}> {
  const chunks: Buffer[] = [];
  let serverSocket: tls.TLSSocket | null = null;
  let resolveEnded: () => void = () => undefined;
  const ended = new Promise<void>((r) => (resolveEnded = r));
  const server = tls.createServer(
    {
      ca: pki.ca.cert,
      cert: pki.archive.cert,
      key: pki.archive.key,
      requestCert: true,
      rejectUnauthorized: true,
    },
    (socket) => {
      serverSocket = socket;
      socket.pause();
      socket.on('data', (c: Buffer) => chunks.push(c));
      socket.on('end', () => resolveEnded());
      socket.on('error', () => undefined);
    },
  );
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  const client = await new Promise<tls.TLSSocket>((resolve, reject) => {
    const s = tls.connect(
      {
        host: '127.0.0.1',
        port,
        ca: pki.ca.cert,
        cert: pki.client.cert,
        key: pki.client.key,
        servername: 'archive.local',
      },
      () => resolve(s),
    );
    s.once('error', reject);
  });
  while (serverSocket === null) await new Promise((r) => setTimeout(r, 5));
  return {
    client,
    received: () => Buffer.concat(chunks),
    startReading: () => (serverSocket as tls.TLSSocket | null)?.resume(),
    ended,
    close: () => {
      client.destroy();
      (serverSocket as tls.TLSSocket | null)?.destroy();
      server.close();
    },
  };
}

async function until(predicate: () => boolean, timeoutMs = 10_000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 10));
  }
  return true;
}

describe('Outbound toward a TLS socket', () => {
  let pki: Pki;
  before(async () => {
    pki = await standardPki();
  });
  after(() => removePki(pki));

  it('keeps one write in flight, delivers every byte in order, ends after the queue', T, async () => {
    const pair = await tlsPair(pki);
    try {
      let emptied = 0;
      const out = new Outbound(pair.client, true, () => emptied++);
      const CHUNK = 64 * 1024;
      const COUNT = 256; // 16 MiB: far more than the kernel buffers take while the peer does not read
      const sent: Buffer[] = [];
      let maxInSocket = 0;
      for (let i = 0; i < COUNT; i++) {
        const chunk = Buffer.alloc(CHUNK, i & 0xff);
        chunk.writeUInt32BE(i, 0);
        sent.push(chunk);
        out.write(chunk);
        maxInSocket = Math.max(maxInSocket, pair.client.writableLength);
      }
      await new Promise((r) => setTimeout(r, 200));
      maxInSocket = Math.max(maxInSocket, pair.client.writableLength);
      // The socket itself never holds more than the one buffer in flight; the rest waits here, counted.
      assert.ok(maxInSocket <= CHUNK, `the TLS socket held ${maxInSocket} bytes at once`);
      assert.ok(
        out.pending > 4 * CHUNK,
        `pending ${out.pending}: the stalled peer should leave bytes queued`,
      );
      assert.equal(emptied, 0);
      out.end();
      pair.startReading();
      await pair.ended;
      assert.ok(pair.received().equals(Buffer.concat(sent)), 'every byte arrived, in order');
      assert.equal(out.pending, 0);
    } finally {
      pair.close();
    }
  });

  it('calls onEmpty once everything written has reached the kernel', T, async () => {
    const pair = await tlsPair(pki);
    try {
      let emptied = 0;
      const out = new Outbound(pair.client, true, () => emptied++);
      pair.startReading();
      out.write(Buffer.alloc(1000, 1));
      out.write(Buffer.alloc(1000, 2));
      assert.ok(await until(() => emptied === 1), 'onEmpty after the queue drained');
      assert.equal(out.pending, 0);
    } finally {
      pair.close();
    }
  });

  it(
    'detaches a relayed read buffer once its write and every other use are done, and only then',
    T,
    async () => {
      const pair = await tlsPair(pki);
      try {
        const out = new Outbound(pair.client, true, () => undefined);
        pair.startReading();
        // Released: the whole-ArrayBuffer chunk, written twice (two views), hashed once.
        const chunk = Buffer.from(new ArrayBuffer(4096));
        chunk.fill(7);
        const lease = new ChunkLease(chunk);
        lease.acquire();
        out.write(chunk.subarray(0, 2048), lease.written);
        lease.acquire();
        out.write(chunk.subarray(2048), lease.written);
        lease.acquire(); // a pending hash
        lease.release(); // the feed returns
        assert.equal(chunk.buffer.detached, false, 'still in use: not detached');
        assert.ok(await until(() => pair.received().length === 4096));
        assert.equal(chunk.buffer.detached, false, 'the hash has not run yet');
        lease.release(); // the hash ran
        assert.equal(chunk.buffer.detached, true, 'returned as soon as nothing needs it');
        assert.ok(pair.received().equals(Buffer.alloc(4096, 7)), 'the bytes sent were the bytes written');

        // Kept: a buffer something else may still view (poisoned), and a view into a larger ArrayBuffer.
        const viewed = Buffer.from(new ArrayBuffer(1024));
        const poisoned = new ChunkLease(viewed);
        poisoned.poison();
        poisoned.release();
        assert.equal(viewed.buffer.detached, false);
        const slab = new ArrayBuffer(8192);
        const part = Buffer.from(slab, 1024, 1024);
        new ChunkLease(part).release();
        assert.equal(slab.detached, false, 'a view into a shared ArrayBuffer is left to the collector');
      } finally {
        pair.close();
      }
    },
  );

  it('does not detach a buffer whose write failed', T, async () => {
    const pair = await tlsPair(pki);
    try {
      const out = new Outbound(pair.client, true, () => undefined);
      pair.client.on('error', () => undefined);
      // The peer does not read: after a few MB the kernel takes no more and the writes below stay queued.
      for (let i = 0; i < 256; i++) out.write(Buffer.alloc(65536));
      await new Promise((r) => setTimeout(r, 200));
      const outcomes: boolean[] = [];
      const chunk = Buffer.from(new ArrayBuffer(65536));
      const lease = new ChunkLease(chunk);
      lease.acquire();
      out.write(chunk, (err) => {
        outcomes.push(!err);
        lease.written(err);
      });
      lease.release(); // the feed returns: only the queued write still counts
      assert.ok(out.pending > 65536, 'the chunk is queued behind a stalled peer');
      pair.client.destroy(new Error('connection reset'));
      assert.ok(await until(() => outcomes.length === 1), 'the queued write learns it failed');
      assert.deepEqual(outcomes, [false]);
      assert.equal(chunk.buffer.detached, false, 'the socket layer may still reference it: left to the GC');
    } finally {
      pair.close();
    }
  });
});
