// The ledger recovers by itself: after a write fails (disk full), the writer probes every
// recoveryIntervalMs and is healthy again once a probe write and sync succeed — no restart needed.
import assert from 'node:assert/strict';
import { open, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { verifyLedger } from '../../src/integrity/verify.js';
import { LedgerWriter } from '../../src/integrity/writer.js';
import { evidence, options, removeDir, tempDir } from './helpers.js';
import { ManualClock } from '../helpers/clock.js';

type Write = FileHandle['write'];

/** Resolves at the writer's next onHealth call (bounded: the probe is real file I/O on a loaded machine). */
function nextHealth(waiters: Array<(h: boolean) => void>, what: string): Promise<boolean> {
  return new Promise<boolean>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no onHealth call: ${what}`)), 10_000);
    waiters.push((h) => {
      clearTimeout(t);
      resolve(h);
    });
  });
}

describe('ledger writer: recovery when space returns', () => {
  const dirs: string[] = [];
  let restore: (() => void) | null = null;
  after(async () => {
    restore?.();
    for (const d of dirs) await removeDir(d);
  });

  it('unhealthy on ENOSPC, still unhealthy while the disk is full, healthy again once a probe succeeds', async () => {
    const dir = await tempDir();
    dirs.push(dir);
    // Every FileHandle's write() fails with ENOSPC while `full` (the writer's and the probe's).
    const probe = await open(join(dir, 'proto'), 'w');
    const proto = Object.getPrototypeOf(probe) as { write: Write };
    await probe.close();
    const original = proto.write;
    let full = false;
    proto.write = function (this: FileHandle, ...args: Parameters<Write>) {
      if (full)
        return Promise.reject(
          Object.assign(new Error('ENOSPC: no space left on device'), { code: 'ENOSPC' }),
        );
      return (original as (...a: unknown[]) => ReturnType<Write>).apply(this, args);
    } as Write;
    restore = () => (proto.write = original);

    const clock = new ManualClock();
    const health: Array<[boolean, string | null]> = [];
    const waiters: Array<(h: boolean) => void> = [];
    const w = await LedgerWriter.open(
      options(dir, {
        fsync: 'always',
        clock,
        recoveryIntervalMs: 1000,
        onHealth: (h, r) => {
          health.push([h, r]);
          waiters.shift()?.(h);
        },
      }),
    );
    await w.append(evidence(0));
    full = true;
    await assert.rejects(w.append(evidence(1)), /ENOSPC|cannot write/);
    assert.equal(w.healthy, false);
    assert.equal(health.length, 1);
    assert.equal(health[0]?.[0], false);

    const armed = clock.armed;
    clock.advance(1000); // a probe while the disk is still full: fails, the next one is scheduled
    await clock.untilArmed(armed + 1);
    assert.equal(w.healthy, false);
    assert.equal(health.length, 1, 'a failed probe does not announce anything');

    full = false; // space returns
    const recovered = nextHealth(waiters, 'recovery after space returned');
    clock.advance(1000);
    assert.equal(await recovered, true);
    assert.equal(w.healthy, true);
    assert.deepEqual(health.at(-1), [true, null]);
    await w.append(evidence(2));
    await w.close();
    restore();
    restore = null;
    const v = await verifyLedger(dir);
    assert.equal(v.ok, true);
  });
});
