import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LOCK_FILE, LedgerWriter, type LedgerOptions } from '../../src/integrity/writer.js';

function options(dir: string): LedgerOptions {
  return {
    dir,
    fsync: 'batch',
    fsyncIntervalMs: 50,
    rotateMaxBytes: 1 << 20,
    rotateDaily: false,
    checkpointIntervalMs: 60_000,
    signingKeyPem: null,
  };
}

test('one writer per ledger directory: a second is refused while the first runs; a stale lock is taken over', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'dimse-ledger-lock-'));
  try {
    const first = await LedgerWriter.open(options(dir));
    assert.ok(existsSync(join(dir, LOCK_FILE)));
    await assert.rejects(LedgerWriter.open(options(dir)), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'LEDGER_LOCKED');
      assert.match(err.message, new RegExp(`process ${process.pid}`));
      return true;
    });
    await first.close();
    assert.ok(!existsSync(join(dir, LOCK_FILE)), 'close() releases the lock');
    const second = await LedgerWriter.open(options(dir));
    await second.close();
    // A lock left by a process that no longer exists (kill -9) does not block the next start.
    writeFileSync(join(dir, LOCK_FILE), '2147483646\n');
    const third = await LedgerWriter.open(options(dir));
    await third.close();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
