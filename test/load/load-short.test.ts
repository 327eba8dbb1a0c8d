// `npm run load -- --short` as CI runs it: 20 concurrent associations × 10 s, then a short soak, through
// the daemon started as an admin would (bench/soak.ts). Passes when the script exits 0: no errors, RSS
// growth over the soak within its limit, file descriptors back to baseline. Needs DCMTK (storescp +tls);
// skipped without it, a failure when DIMSE_PROXY_REQUIRE_PEERS=1.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { assertBuilt, REPO } from '../helpers/daemon.js';
import { Procs, skipUnlessPeer } from '../helpers/peers.js';

const BOUND_MS = 85_000;

describe('npm run load, short mode', { timeout: 90_000 }, () => {
  it('20 associations × 10 s, then a soak: 0 errors, RSS bounded, fds back to baseline', async (t) => {
    if (!skipUnlessPeer(t, 'dcmtk')) return;
    assertBuilt();
    const procs = new Procs();
    // Its own process, so the load generator and the measured daemon share nothing with the test runner.
    const child = procs.spawn(
      process.execPath,
      ['--import', 'tsx', join(REPO, 'bench', 'soak.ts'), '--short'],
      {
        cwd: REPO,
        name: 'bench/soak.ts --short',
        // The script's own defaults for short mode, whatever the environment carries.
        env: {
          LOAD_SHORT: '1',
          LOAD_ASSOCIATIONS: '',
          LOAD_SECONDS: '',
          SOAK_SECONDS: '',
          SOAK_WARMUP_SECONDS: '',
          LOAD_MAX_RSS_GROWTH_MB: '',
        },
      },
    );
    let timer: NodeJS.Timeout | undefined;
    try {
      const status = await Promise.race([
        procs.exited(child),
        new Promise<'timeout'>((resolve) => {
          timer = setTimeout(() => resolve('timeout'), BOUND_MS);
        }),
      ]);
      const { stdout } = procs.output(child);
      t.diagnostic(stdout.trim());
      assert.notEqual(status, 'timeout', `did not finish within ${BOUND_MS} ms\n${procs.describe(child)}`);
      assert.deepEqual(status, { code: 0, signal: null }, procs.describe(child));
      assert.match(stdout, /^ok {3}errors 0 /m);
      assert.match(stdout, /^ok {3}RSS growth over the soak /m);
      assert.match(stdout, /^ok {3}fds after the drain /m);
    } finally {
      clearTimeout(timer);
      await procs.stop(child, 10_000);
    }
  });
});
