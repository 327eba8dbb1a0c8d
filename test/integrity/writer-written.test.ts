// LedgerWriter.append's onWritten: called once the record's write() returned — with a batched fsync,
// before the append resolves at the sync. The relay lets the archive's success through on it.
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { verifyLedger } from '../../src/integrity/verify.js';
import { LedgerWriter } from '../../src/integrity/writer.js';
import { evidence, options, removeDir, tempDir } from './helpers.js';
import { ManualClock } from '../helpers/clock.js';

describe('ledger writer: written before synced', () => {
  const dirs: string[] = [];
  after(async () => {
    for (const d of dirs) await removeDir(d);
  });

  it('fsync batch: onWritten comes at the write, the promise at the sync fsyncIntervalMs later', async () => {
    const dir = await tempDir();
    dirs.push(dir);
    const clock = new ManualClock();
    const w = await LedgerWriter.open(options(dir, { fsync: 'batch', fsyncIntervalMs: 500, clock }));
    const armed = clock.armed;
    let written = false;
    let resolved = false;
    const p = w.append(evidence(0), () => (written = true)).then(() => (resolved = true));
    await clock.untilArmed(armed + 1); // the write is done and the sync scheduled
    assert.equal(written, true, 'handed to the OS');
    assert.equal(resolved, false, 'not synced yet');
    clock.advance(500);
    await p;
    assert.equal(resolved, true);
    await w.close();
    assert.equal((await verifyLedger(dir)).ok, true);
  });

  it('fsync always: onWritten comes before the append resolves', async () => {
    const dir = await tempDir();
    dirs.push(dir);
    const w = await LedgerWriter.open(options(dir, { fsync: 'always' }));
    const order: string[] = [];
    await w.append(evidence(1), () => order.push('written')).then(() => order.push('resolved'));
    assert.deepEqual(order, ['written', 'resolved']);
    await w.close();
  });
});
