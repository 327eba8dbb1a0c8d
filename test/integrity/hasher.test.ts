import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { InlineHasher, WorkerHasher } from '../../src/integrity/hasher.js';

test('WorkerHasher: digests equal SHA-256 of the bytes, across staging-buffer boundaries and interleaved streams', async () => {
  const hasher = new WorkerHasher();
  try {
    const a = randomBytes(3 * 1024 * 1024 + 17);
    const b = randomBytes(1000);
    const sa = hasher.begin();
    const sb = hasher.begin();
    const se = hasher.begin();
    for (let at = 0; at < a.length; at += 65536) {
      sa.update(a, at, Math.min(at + 65536, a.length));
      if (at === 0) sb.update(b, 0, 400);
    }
    sb.update(b, 400, 1000);
    const [da, db, de] = await Promise.all([sa.digest(), sb.digest(), se.digest()]);
    assert.equal(da, createHash('sha256').update(a).digest('hex'));
    assert.equal(db, createHash('sha256').update(b).digest('hex'));
    assert.equal(de, createHash('sha256').digest('hex'), 'an empty data set');
    await assert.rejects(sa.digest(), /twice/);
  } finally {
    await hasher.close();
  }
});

test('WorkerHasher: a dead worker fails pending digests instead of hanging, then hashes inline', async () => {
  const hasher = new WorkerHasher();
  const s = hasher.begin();
  s.update(Buffer.from('abc'), 0, 3);
  // Kill the worker the way a crash would.
  await (hasher as unknown as { worker: { terminate(): Promise<number> } }).worker.terminate();
  await assert.rejects(s.digest());
  const after = hasher.begin();
  after.update(Buffer.from('abc'), 0, 3);
  assert.equal(await after.digest(), createHash('sha256').update('abc').digest('hex'));
  await hasher.close();
});

test('InlineHasher gives the same digests', async () => {
  const s = new InlineHasher().begin();
  s.update(Buffer.from('xhellox'), 1, 6);
  assert.equal(await s.digest(), createHash('sha256').update('hello').digest('hex'));
});
