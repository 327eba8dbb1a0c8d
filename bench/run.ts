// npm run bench — throughput of DCMTK storescu -> storescp (+tls) three ways, measured in the same run:
//   direct   storescu +tls ──mTLS──▶ storescp +tls
//   stunnel  storescu ──plain──▶ stunnel (client mode, verifies the archive) ──mTLS──▶ storescp +tls
//   proxy    storescu ──plain──▶ dimse-tls-proxy ──mTLS──▶ storescp +tls
// Every mode is first warmed up with unmeasured transfers (the daemon runs for weeks: what matters is
// its steady state, after V8 has optimised the relay's hot functions — on the 512 KB set that takes a
// few thousand messages), then measured runs are interleaved, each round starting with the next mode
// (direct, stunnel, proxy, … then stunnel, proxy, …, direct) so machine noise and position hit all modes
// alike. The table reports the median MB/s, the proxy/stunnel and proxy/direct ratios, and the proxy's
// peak RSS (VmHWM of a proxy process started fresh for each set).
//
// Environment: BENCH_RUNS (measured runs per mode; default 15 on the small set, 7 on the large one),
// BENCH_WARMUP (unmeasured transfers per mode; default 10 small, 1 large), BENCH_SETS (comma list of
// small,large; default both), BENCH_SMALL_COUNT (200), BENCH_LARGE_MB (200), BENCH_LARGE_COUNT (3).
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { writeDemoPki } from '../src/tls/pki.js';
import { writeSigningKey } from '../src/integrity/keys.js';
import { writeInstances } from '../test/helpers/dicom.js';
import {
  Procs,
  freePort,
  makeTempDir,
  peerAvailability,
  removeTempDir,
  runStorescu,
  startStorescp,
  startStunnelClient,
  waitForListen,
} from '../test/helpers/peers.js';

/** As the package bin and the container run the daemon (see README, Performance). */
const V8_HEAP_FLAG = '--initial-old-space-size=64';
const SETS = (process.env.BENCH_SETS ?? 'small,large').split(',');
const SMALL_COUNT = Number(process.env.BENCH_SMALL_COUNT ?? 200);
const LARGE_COUNT = Number(process.env.BENCH_LARGE_COUNT ?? 3);
const LARGE_MB = Number(process.env.BENCH_LARGE_MB ?? 200);

interface SetSpec {
  key: string;
  label: string;
  count: number;
  pixelBytes: number;
  runs: number;
  warmup: number;
}

function envCount(name: string, fallback: number): number {
  const v = process.env[name];
  return v === undefined || v === '' ? fallback : Number(v);
}

const ALL_SETS: SetSpec[] = [
  {
    key: 'small',
    label: `${SMALL_COUNT} × 512 KB`,
    count: SMALL_COUNT,
    pixelBytes: 512 * 1024,
    runs: envCount('BENCH_RUNS', 15),
    warmup: envCount('BENCH_WARMUP', 10),
  },
  {
    key: 'large',
    label: `${LARGE_COUNT} × ${LARGE_MB} MB`,
    count: LARGE_COUNT,
    pixelBytes: LARGE_MB * 1024 * 1024,
    runs: envCount('BENCH_RUNS', 7),
    warmup: envCount('BENCH_WARMUP', 1),
  },
];

type Mode = 'direct' | 'stunnel' | 'proxy' | 'ledger';
const MODES: Mode[] = ['direct', 'stunnel', 'proxy', 'ledger'];
const LABEL: Record<Mode, string> = {
  direct: 'direct',
  stunnel: 'stunnel',
  proxy: 'proxy',
  ledger: 'proxy+ledger',
};

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

function peakRssMb(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /VmHWM:\s+(\d+) kB/.exec(status);
  return m ? Number(m[1]) / 1024 : NaN;
}

async function main(): Promise<void> {
  for (const tool of ['dcmtk', 'stunnel'] as const) {
    const a = peerAvailability(tool);
    if (!a.ok) {
      process.stderr.write(`bench needs ${tool}: ${a.why}\n`);
      process.exit(2);
    }
  }
  const work = await makeTempDir('dimse-bench');
  const procs = new Procs();
  const results: string[] = [];
  const summary: Array<{
    set: string;
    mbps: Record<Mode, number>;
    rss: number;
    ledgerRss: number;
    runs: number;
    warmup: number;
  }> = [];
  try {
    const pki = await writeDemoPki(join(work, 'pki'));
    const scpTls = { key: pki.archiveKey, cert: pki.archiveCert, ca: pki.caCert };
    const cliTls = { key: pki.proxyClientKey, cert: pki.proxyClientCert, ca: pki.caCert };
    const signingKey = join(work, 'pki', 'ledger-signing.key');
    await writeSigningKey(join(work, 'pki'), { overwrite: true });
    const scp = await startStorescp(procs, {
      outDir: join(work, 'out'),
      aeTitle: 'ARCHIVE',
      tls: scpTls,
      extraArgs: ['--ignore'],
    });
    const stunnel = await startStunnelClient(procs, {
      connectHost: '127.0.0.1',
      connectPort: scp.port,
      ca: pki.caCert,
      cert: pki.proxyClientCert,
      key: pki.proxyClientKey,
      checkHost: 'archive.local',
      dir: join(work, 'stunnel'),
    });

    for (const set of ALL_SETS.filter((s) => SETS.includes(s.key))) {
      process.stderr.write(`generating ${set.label}…\n`);
      const files = await writeInstances(join(work, set.key), set.count, { pixelBytes: set.pixelBytes });
      let totalBytes = 0;
      for (const f of files) totalBytes += readFileSync(f).length;

      // Fresh proxy processes per set, so their peak RSS belongs to this set: one without the ledger,
      // one with it (fsync batch, signed checkpoints), to measure what the integrity ledger costs.
      const startProxy = async (
        name: string,
        ledgerDir: string | null,
      ): Promise<{ port: number; pid: number; stop(): Promise<void> }> => {
        const port = await freePort();
        const cfg = join(work, `proxy-${set.key}-${name}.yaml`);
        writeFileSync(
          cfg,
          [
            `listen: { host: 127.0.0.1, port: ${port} }`,
            'upstreams:',
            '  archive:',
            `    host: 127.0.0.1`,
            `    port: ${scp.port}`,
            '    aeTitle: ARCHIVE',
            `    tls: { ca: ${pki.caCert}, cert: ${pki.proxyClientCert}, key: ${pki.proxyClientKey}, serverName: archive.local }`,
            'routes:',
            '  - { calledAeTitle: DICOM_PROXY, upstream: archive }',
            'peers:',
            '  STORESCU: { addresses: [127.0.0.1], services: [echo, store] }',
            ...(ledgerDir ? [`ledger: { path: ${ledgerDir}, fsync: batch, signingKey: ${signingKey} }`] : []),
            'logging: { level: warn }',
            // No admin endpoint: two proxies run side by side, and readiness C-ECHOs would add associations.
            'admin: null',
            'reload: { watch: false }',
            '',
          ].join('\n'),
        );
        const child = spawn(
          process.execPath,
          [V8_HEAP_FLAG, join(import.meta.dirname, '..', 'dist', 'cli.js'), 'start', '-c', cfg],
          {
            stdio: ['ignore', 'ignore', 'inherit'],
          },
        );
        await waitForListen(port, { timeoutMs: 15000 });
        return {
          port,
          pid: child.pid as number,
          stop: async () => {
            child.kill('SIGTERM');
            await new Promise((r) => child.once('exit', r));
          },
        };
      };
      const plainProxy = await startProxy('plain', null);
      const ledgerProxy = await startProxy('ledger', join(work, `ledger-${set.key}`));
      const proxyPid = plainProxy.pid;
      const proxyPort = plainProxy.port;

      const target: Record<Mode, { port: number; tls?: typeof cliTls }> = {
        direct: { port: scp.port, tls: cliTls },
        stunnel: { port: stunnel.port },
        proxy: { port: proxyPort },
        ledger: { port: ledgerProxy.port },
      };
      const mbps: Record<Mode, number[]> = { direct: [], stunnel: [], proxy: [], ledger: [] };
      // Warm-up rounds (run < 0: JIT, TLS session caches, page cache of the files), then measured ones;
      // round r starts with mode r mod 4, so no mode always runs right after the same other one.
      for (let run = -set.warmup; run < set.runs; run++) {
        const shift = ((run % MODES.length) + MODES.length) % MODES.length;
        for (const mode of [...MODES.slice(shift), ...MODES.slice(0, shift)]) {
          const t = target[mode];
          const started = performance.now();
          const r = await runStorescu({
            host: '127.0.0.1',
            port: t.port,
            callingAe: 'STORESCU',
            calledAe: mode === 'proxy' || mode === 'ledger' ? 'DICOM_PROXY' : 'ARCHIVE',
            files,
            ...(t.tls ? { tls: t.tls } : {}),
            timeoutMs: 600_000,
          });
          const seconds = (performance.now() - started) / 1000;
          if (r.code !== 0 || /Failed|error/i.test(r.stderr)) {
            throw new Error(`${mode} run ${run} failed (exit ${r.code}):\n${r.stderr.slice(-2000)}`);
          }
          if (run < 0) continue;
          const rate = totalBytes / 1e6 / seconds;
          mbps[mode].push(rate);
          process.stderr.write(
            `  ${set.label} run ${run + 1} ${LABEL[mode].padEnd(12)} ${rate.toFixed(1)} MB/s\n`,
          );
        }
      }
      const rss = peakRssMb(proxyPid);
      const ledgerRss = peakRssMb(ledgerProxy.pid);
      await plainProxy.stop();
      await ledgerProxy.stop();
      const med = {
        direct: median(mbps.direct),
        stunnel: median(mbps.stunnel),
        proxy: median(mbps.proxy),
        ledger: median(mbps.ledger),
      };
      summary.push({ set: set.label, mbps: med, rss, ledgerRss, runs: set.runs, warmup: set.warmup });
      await removeTempDir(join(work, set.key));
    }
    results.push(
      `| set | direct TLS MB/s | stunnel MB/s | proxy MB/s | proxy / stunnel | proxy / direct | proxy peak RSS | proxy+ledger MB/s | ledger cost | proxy+ledger peak RSS |`,
      `|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|`,
    );
    for (const s of summary) {
      results.push(
        `| ${s.set} | ${s.mbps.direct.toFixed(1)} | ${s.mbps.stunnel.toFixed(1)} | ${s.mbps.proxy.toFixed(1)} | ` +
          `${(s.mbps.proxy / s.mbps.stunnel).toFixed(2)} | ${(s.mbps.proxy / s.mbps.direct).toFixed(2)} | ${s.rss.toFixed(0)} MB | ` +
          `${s.mbps.ledger.toFixed(1)} | ${((1 - s.mbps.ledger / s.mbps.proxy) * 100).toFixed(1)} % | ${s.ledgerRss.toFixed(0)} MB |`,
      );
    }
    process.stdout.write(
      `\nstorescu → storescp over mutual TLS, TCP_NODELAY=1, node ${process.version}; per set: median of ` +
        summary.map((s) => `${s.runs} interleaved runs after ${s.warmup} warm-up (${s.set})`).join(', ') +
        '\n\n',
    );
    process.stdout.write(results.join('\n') + '\n');
  } finally {
    await procs.stopAll();
    await removeTempDir(work);
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`bench failed: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
