// The batched sync does not hold up writes: while an fdatasync is in flight, the next record is still
// written at once (its onWritten called — what the relay's held success waits for), and its own append
// settles with the next sync, never with the one that began before it was written.
import assert from 'node:assert/strict';
import { open, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { verifyLedger } from '../../src/integrity/verify.js';
import { LedgerWriter } from '../../src/integrity/writer.js';
import { ManualClock } from '../helpers/clock.js';
import { evidence, options, removeDir, tempDir } from './helpers.js';
import { within } from '../helpers/within.js';

type Datasync = FileHandle['datasync'];

describe('ledger writer: the batched sync runs beside the writes', () => {
  const dirs: string[] = [];
  let restore: (() => void) | null = null;
  after(async () => {
    restore?.(); // also lets any held sync go
    for (const d of dirs) await removeDir(d);
  });

  it('a record is written while the previous batch is still being synced', async () => {
    const dir = await tempDir();
    dirs.push(dir);
    const probe = await open(join(dir, 'proto'), 'w');
    const proto = Object.getPrototypeOf(probe) as { datasync: Datasync };
    await probe.close();
    const original = proto.datasync;
    // Once the ledger is open, every datasync waits until the test lets it go.
    const gates: Array<() => void> = [];
    let gating = false;
    proto.datasync = function (this: FileHandle) {
      if (!gating) return original.call(this);
      return new Promise<void>((resolve, reject) => {
        gates.push(() => original.call(this).then(resolve, reject));
      });
    } as Datasync;
    restore = () => {
      proto.datasync = original;
      gating = false;
      for (const go of gates.splice(0)) go();
    };
    const syncStarted = async (): Promise<void> => {
      const deadline = Date.now() + 10_000;
      while (gates.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 2));
    };

    const clock = new ManualClock();
    const w = await within(
      LedgerWriter.open(options(dir, { fsync: 'batch', fsyncIntervalMs: 50, clock })),
      'the ledger opens',
    );
    gating = true;
    let firstWritten = false;
    let firstSynced = false;
    const armed = clock.armed;
    const first = w.append(evidence(0), () => (firstWritten = true)).then(() => (firstSynced = true));
    await within(clock.untilArmed(armed + 1), 'the first record is written'); // the batched sync is scheduled
    assert.equal(firstWritten, true);
    clock.advance(50); // the sync starts, and hangs
    await syncStarted();
    assert.equal(gates.length, 1, 'one sync in flight');

    let secondWritten = false;
    let secondSynced = false;
    const second = w.append(evidence(1), () => (secondWritten = true)).then(() => (secondSynced = true));
    await within(
      (async () => {
        while (!secondWritten) await new Promise((r) => setTimeout(r, 5));
      })(),
      'the second record is written while the first sync is in flight',
    );
    assert.equal(firstSynced, false);
    gates.shift()?.(); // the first sync completes: only the first append settles
    await within(first, 'the first append settles with its sync');
    assert.equal(secondSynced, false, 'written after that sync began: it waits for the next one');
    clock.advance(50);
    await syncStarted();
    gates.shift()?.();
    await within(second, 'the second append settles with the next sync');
    restore();
    restore = null;
    await within(w.close(), 'the writer closes');
    const v = await verifyLedger(dir);
    assert.equal(v.ok, true);
    assert.equal(v.instances, 2);
  });
});
