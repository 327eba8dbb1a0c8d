import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { InlineHasher } from '../../src/integrity/hasher.js';

test('InlineHasher: digests equal SHA-256 of the ranges given, across interleaved streams', async () => {
  const hasher = new InlineHasher();
  const a = randomBytes(300_000);
  const b = randomBytes(1000);
  const sa = hasher.begin();
  const sb = hasher.begin();
  const se = hasher.begin();
  for (let at = 0; at < a.length; at += 65536) {
    sa.update(a, at, Math.min(at + 65536, a.length));
    if (at === 0) sb.update(b, 0, 400);
  }
  sb.update(b, 400, 1000);
  assert.equal(await sa.digest(), createHash('sha256').update(a).digest('hex'));
  assert.equal(await sb.digest(), createHash('sha256').update(b).digest('hex'));
  assert.equal(await se.digest(), createHash('sha256').digest('hex'), 'an empty data set');
});
