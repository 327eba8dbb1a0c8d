// npm run bench — the proxy against the tools people use today, all measured in the same run:
//   direct   storescu +tls ──mTLS──▶ storescp +tls
//   stunnel  storescu ──plain──▶ stunnel (client mode, verifies the archive) ──mTLS──▶ storescp +tls
//   bare     storescu ──plain──▶ a bare Node relay (bench/bare-relay.mjs: no DICOM at all) ──mTLS──▶ …
//   proxy    storescu ──plain──▶ dimse-tls-proxy ──mTLS──▶ storescp +tls
//   ledger   the same proxy with the integrity ledger on (fsync batch, signed checkpoints)
// The proxy is started exactly as an admin would: `node dist/cli.js start -c FILE`, no flags.
//
// Sets: `small` (200 × 512 KB) and `large` (3 × 200 MB), sent by DCMTK storescu, and `many`: 100
// concurrent associations (bench/load.ts), each 50 × 64 KB + 3 × 2 MB, into storescp --fork, for
// stunnel, the bare relay and the proxy; it reports throughput, relay CPU per GB, association setup
// latency p50/p99, errors, peak RSS, and what an idle (negotiated, not backed up) association costs.
//
// Every mode is first warmed up with unmeasured transfers (the daemon runs for weeks: what matters is
// its steady state, after V8 has optimised the relay's hot functions), then measured runs are
// interleaved, each round starting with the next mode, so machine noise and position hit all modes
// alike. Tables report medians; CPU is the relay process's user+system time (/proc/PID/stat) per run.
// Peak RSS is VmHWM of a relay process started fresh for each set. The many set also runs the proxy
// with BENCH_WORKERS relay workers (default 2; 1 = skipped): its CPU is the daemon's and the workers'
// together, its peak RSS the sum of each process's peak; BENCH_BALANCE=reuseport runs it with
// workers.balance reuseport instead of round-robin.
//
// Environment: BENCH_RUNS (measured runs per mode; default 15 small, 7 large, 5 many), BENCH_WARMUP
// (unmeasured transfers per mode; default 10 small, 1 large, 1 many), BENCH_SETS (comma list of
// small,large,many; default all), BENCH_SMALL_COUNT (200), BENCH_LARGE_MB (200), BENCH_LARGE_COUNT (3),
// BENCH_ASSOCIATIONS (100); BENCH_BASELINE (another build's dist/cli.js, measured in every set as
// `baseline` for a before/after in one run) and BENCH_BASELINE_ARGS (node flags for it); with
// BENCH_BASELINE_LEDGER=1 the baseline runs with the ledger on and is compared with proxy+ledger (a
// before/after of a ledger change).
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { availableParallelism } from 'node:os';
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
import { openIdle, percentile, prepareLoad, runLoad } from './load.js';

const SETS = (process.env.BENCH_SETS ?? 'small,large,many').split(',');
/** The many set also runs the proxy with this many relay workers (`workers: N`); 1 = not run. */
const BENCH_WORKERS = Number(process.env.BENCH_WORKERS ?? 2);
/** workers.balance of that run: round-robin (default) or reuseport. */
const BENCH_BALANCE = process.env.BENCH_BALANCE === 'reuseport' ? 'reuseport' : 'round-robin';
const SMALL_COUNT = Number(process.env.BENCH_SMALL_COUNT ?? 200);
const LARGE_COUNT = Number(process.env.BENCH_LARGE_COUNT ?? 3);
const LARGE_MB = Number(process.env.BENCH_LARGE_MB ?? 200);
const ASSOCIATIONS = Number(process.env.BENCH_ASSOCIATIONS ?? 100);
/** Before/after in one run: another build's cli.js (e.g. of the parent commit) measured as `baseline`. */
const BASELINE = process.env.BENCH_BASELINE ?? '';
/** Node flags for the baseline build, as that build's own documentation started it. */
const BASELINE_LEDGER = process.env.BENCH_BASELINE_LEDGER === '1';
const BASELINE_ARGS = (process.env.BENCH_BASELINE_ARGS ?? '').split(' ').filter((a) => a !== '');

function envCount(name: string, fallback: number): number {
  const v = process.env[name];
  return v === undefined || v === '' ? fallback : Number(v);
}

interface StorescuSet {
  key: 'small' | 'large';
  label: string;
  count: number;
  pixelBytes: number;
  runs: number;
  warmup: number;
}

const STORESCU_SETS: StorescuSet[] = [
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

type Mode = 'direct' | 'stunnel' | 'bare' | 'proxy' | 'workers' | 'ledger' | 'baseline';
const LABEL: Record<Mode, string> = {
  direct: 'direct TLS',
  stunnel: 'stunnel',
  bare: 'bare Node relay',
  proxy: 'proxy',
  workers: `proxy, ${BENCH_WORKERS} workers${BENCH_BALANCE === 'reuseport' ? ' (reuseport)' : ''}`,
  ledger: 'proxy+ledger',
  baseline: 'baseline build',
};

function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

function procStatus(pid: number, field: 'VmHWM' | 'VmRSS'): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = new RegExp(`${field}:\\s+(\\d+) kB`).exec(status);
  return m ? Number(m[1]) / 1024 : NaN;
}

/** `pid` and its child processes (the relay workers of `workers: N`), from /proc. */
function processTree(pid: number): number[] {
  const children: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid) children.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return [pid, ...children];
}

/** User + system CPU time of a process (all its threads) and its children now running, in ms. */
function cpuMs(pid: number): number {
  let sum = 0;
  for (const p of processTree(pid)) {
    const stat = readFileSync(`/proc/${p}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    sum += ((Number(fields[11]) + Number(fields[12])) * 1000) / 100; // USER_HZ = 100 on Linux
  }
  return sum;
}

/**
 * The machine's CPU time so far, all cores, in ms (/proc/stat; USER_HZ = 100): busy (user, nice, system,
 * irq, softirq), stolen (the hypervisor ran someone else on our cores: this host's noise) and in all.
 */
function machineCpu(): { busy: number; steal: number; total: number } {
  const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0] as string;
  // user nice system idle iowait irq softirq steal
  const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] = line
    .trim()
    .split(/\s+/)
    .slice(1, 9)
    .map(Number);
  const busy = user + nice + system + irq + softirq;
  return { busy: busy * 10, steal: steal * 10, total: (busy + idle + iowait + steal) * 10 };
}

/** What the machine did between two machineCpu() readings: busy and steal shares (%), busy ms per GB. */
function machineShare(
  m0: ReturnType<typeof machineCpu>,
  m1: ReturnType<typeof machineCpu>,
  bytes: number,
): { busy: number; steal: number; perGb: number } {
  const total = m1.total - m0.total;
  return {
    busy: (100 * (m1.busy - m0.busy)) / total,
    steal: (100 * (m1.steal - m0.steal)) / total,
    perGb: ((m1.busy - m0.busy) * 1e9) / bytes,
  };
}

/** Peak RSS of a process, plus its children's (workers: each one's peak, summed: an upper bound). */
function treePeakRss(pid: number): number {
  return processTree(pid).reduce((sum, p) => sum + procStatus(p, 'VmHWM'), 0);
}

interface Relay {
  port: number;
  pid: number;
  stop(): Promise<void>;
}

interface Env {
  work: string;
  procs: Procs;
  pki: Awaited<ReturnType<typeof writeDemoPki>>;
  signingKey: string;
}

/** A fresh relay process of the given mode in front of the archive on archivePort. */
async function startRelay(
  env: Env,
  mode: 'bare' | 'proxy' | 'workers' | 'ledger' | 'baseline',
  name: string,
  archivePort: number,
): Promise<Relay> {
  const { pki, work } = env;
  const port = await freePort();
  let args: string[];
  if (mode === 'bare') {
    args = [
      join(import.meta.dirname, 'bare-relay.mjs'),
      String(port),
      '127.0.0.1',
      String(archivePort),
      pki.caCert,
      pki.proxyClientCert,
      pki.proxyClientKey,
      'archive.local',
    ];
  } else {
    const cfg = join(work, `proxy-${name}.yaml`);
    writeFileSync(
      cfg,
      [
        `listen: { host: 127.0.0.1, port: ${port} }`,
        'upstreams:',
        '  archive:',
        `    host: 127.0.0.1`,
        `    port: ${archivePort}`,
        '    aeTitle: ARCHIVE',
        `    tls: { ca: ${pki.caCert}, cert: ${pki.proxyClientCert}, key: ${pki.proxyClientKey}, serverName: archive.local }`,
        'routes:',
        '  - { calledAeTitle: DICOM_PROXY, upstream: archive }',
        'peers:',
        `  STORESCU: { addresses: [127.0.0.1], services: [echo, store], maxAssociations: ${ASSOCIATIONS + 8} }`,
        // The many-associations set opens its associations at once from one loopback address, where a
        // site has one modality per address: the per-address admission cap is raised to match.
        `limits: { maxAssociations: ${ASSOCIATIONS + 8}, maxAssociationsPerPeer: ${ASSOCIATIONS + 8}, ` +
          `pendingPerAddress: ${ASSOCIATIONS + 8}, pendingTotal: ${ASSOCIATIONS + 24} }`,
        ...(mode === 'ledger' || (mode === 'baseline' && BASELINE_LEDGER)
          ? [`ledger: { path: ${join(work, `ledger-${name}`)}, fsync: batch, signingKey: ${env.signingKey} }`]
          : []),
        ...(mode === 'workers' ? [`workers: { count: ${BENCH_WORKERS}, balance: ${BENCH_BALANCE} }`] : []),
        'logging: { level: warn }',
        // No admin endpoint: relays run side by side, and readiness C-ECHOs would add associations.
        'admin: null',
        'reload: { watch: false }',
        '',
      ].join('\n'),
    );
    // Exactly what an admin types: no node flags (the baseline build as its own docs said).
    args =
      mode === 'baseline'
        ? [...BASELINE_ARGS, BASELINE, 'start', '-c', cfg]
        : [join(import.meta.dirname, '..', 'dist', 'cli.js'), 'start', '-c', cfg];
  }
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'inherit'] });
  await waitForListen(port, { timeoutMs: 15000 });
  return {
    port,
    pid: child.pid as number,
    stop: async () => {
      if (child.exitCode !== null) return;
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
    },
  };
}

/** The archive (storescp +tls, discarding what it receives) and stunnel in client mode in front of it. */
async function startArchive(env: Env, name: string, fork: boolean) {
  const { pki, procs, work } = env;
  const scp = await startStorescp(procs, {
    outDir: join(work, `out-${name}`),
    aeTitle: 'ARCHIVE',
    tls: { key: pki.archiveKey, cert: pki.archiveCert, ca: pki.caCert },
    extraArgs: fork ? ['--ignore', '--fork'] : ['--ignore'],
  });
  const stunnel = await startStunnelClient(procs, {
    connectHost: '127.0.0.1',
    connectPort: scp.port,
    ca: pki.caCert,
    cert: pki.proxyClientCert,
    key: pki.proxyClientKey,
    checkHost: 'archive.local',
    dir: join(work, `stunnel-${name}`),
  });
  return { scp, stunnel };
}

interface StorescuSummary {
  set: string;
  runs: number;
  warmup: number;
  mbps: Record<Mode, number>;
  cpuPerGb: Partial<Record<Mode, number>>;
  /** Share of all the machine's cores busy during a run (every process: peers, relay, the rest). */
  busy: Partial<Record<Mode, number>>;
  /** Share of the machine's CPU time stolen by the hypervisor during a run (noise from other guests). */
  steal: Partial<Record<Mode, number>>;
  /** The machine's busy CPU time per GB relayed (every process), ms. */
  machineCpuPerGb: Partial<Record<Mode, number>>;
  rss: Partial<Record<Mode, number>>;
}

async function storescuSet(
  env: Env,
  set: StorescuSet,
  archivePort: number,
  stunnel: { port: number; pid: number },
): Promise<StorescuSummary> {
  const { pki, work } = env;
  process.stderr.write(`generating ${set.label}…\n`);
  const files = await writeInstances(join(work, set.key), set.count, { pixelBytes: set.pixelBytes });
  let totalBytes = 0;
  for (const f of files) totalBytes += readFileSync(f).length;
  const cliTls = { key: pki.proxyClientKey, cert: pki.proxyClientCert, ca: pki.caCert };
  const relays = {
    bare: await startRelay(env, 'bare', `${set.key}-bare`, archivePort),
    proxy: await startRelay(env, 'proxy', `${set.key}-proxy`, archivePort),
    ledger: await startRelay(env, 'ledger', `${set.key}-ledger`, archivePort),
    ...(BASELINE ? { baseline: await startRelay(env, 'baseline', `${set.key}-baseline`, archivePort) } : {}),
  };
  const modes: Mode[] = [
    'direct',
    'stunnel',
    'bare',
    'proxy',
    'ledger',
    ...(BASELINE ? ['baseline' as const] : []),
  ];
  const target: Partial<
    Record<Mode, { port: number; pid: number | null; tls?: typeof cliTls; called: string }>
  > = {
    direct: { port: archivePort, pid: null, tls: cliTls, called: 'ARCHIVE' },
    stunnel: { port: stunnel.port, pid: stunnel.pid, called: 'ARCHIVE' },
    bare: { port: relays.bare.port, pid: relays.bare.pid, called: 'ARCHIVE' },
    proxy: { port: relays.proxy.port, pid: relays.proxy.pid, called: 'DICOM_PROXY' },
    ledger: { port: relays.ledger.port, pid: relays.ledger.pid, called: 'DICOM_PROXY' },
    ...(relays.baseline
      ? { baseline: { port: relays.baseline.port, pid: relays.baseline.pid, called: 'DICOM_PROXY' } }
      : {}),
  };
  const series = (): Record<Mode, number[]> => ({
    direct: [],
    stunnel: [],
    bare: [],
    proxy: [],
    workers: [],
    ledger: [],
    baseline: [],
  });
  const mbps = series();
  const cpu = series();
  const busy = series();
  const steal = series();
  const machine = series();
  try {
    // Warm-up rounds (run < 0), then measured ones; round r starts with mode r mod 5.
    for (let run = -set.warmup; run < set.runs; run++) {
      const shift = ((run % modes.length) + modes.length) % modes.length;
      for (const mode of [...modes.slice(shift), ...modes.slice(0, shift)]) {
        const t = target[mode] as NonNullable<(typeof target)[Mode]>;
        const cpu0 = t.pid === null ? 0 : cpuMs(t.pid);
        const m0 = machineCpu();
        const started = performance.now();
        const r = await runStorescu({
          host: '127.0.0.1',
          port: t.port,
          callingAe: 'STORESCU',
          calledAe: t.called,
          files,
          ...(t.tls ? { tls: t.tls } : {}),
          timeoutMs: 600_000,
        });
        const seconds = (performance.now() - started) / 1000;
        if (r.code !== 0 || /Failed|error/i.test(r.stderr)) {
          throw new Error(`${mode} run ${run} failed (exit ${r.code}):\n${r.stderr.slice(-2000)}`);
        }
        const m1 = machineCpu();
        if (run < 0) continue;
        mbps[mode].push(totalBytes / 1e6 / seconds);
        if (t.pid !== null) cpu[mode].push(((cpuMs(t.pid) - cpu0) * 1e9) / totalBytes);
        const share = machineShare(m0, m1, totalBytes);
        busy[mode].push(share.busy);
        steal[mode].push(share.steal);
        machine[mode].push(share.perGb);
        process.stderr.write(
          `  ${set.label} run ${run + 1} ${LABEL[mode].padEnd(16)} ${(totalBytes / 1e6 / seconds).toFixed(1)} MB/s\n`,
        );
      }
    }
    return {
      set: set.label,
      runs: set.runs,
      warmup: set.warmup,
      mbps: {
        direct: median(mbps.direct),
        stunnel: median(mbps.stunnel),
        bare: median(mbps.bare),
        proxy: median(mbps.proxy),
        workers: NaN, // the many set only
        ledger: median(mbps.ledger),
        baseline: median(mbps.baseline),
      },
      cpuPerGb: {
        stunnel: median(cpu.stunnel),
        bare: median(cpu.bare),
        proxy: median(cpu.proxy),
        ledger: median(cpu.ledger),
        baseline: median(cpu.baseline),
      },
      busy: Object.fromEntries(modes.map((m) => [m, median(busy[m])])),
      steal: Object.fromEntries(modes.map((m) => [m, median(steal[m])])),
      machineCpuPerGb: Object.fromEntries(modes.map((m) => [m, median(machine[m])])),
      rss: {
        bare: procStatus(relays.bare.pid, 'VmHWM'),
        proxy: procStatus(relays.proxy.pid, 'VmHWM'),
        ledger: procStatus(relays.ledger.pid, 'VmHWM'),
        ...(relays.baseline ? { baseline: procStatus(relays.baseline.pid, 'VmHWM') } : {}),
      },
    };
  } finally {
    for (const r of Object.values(relays)) await r.stop();
    await removeTempDir(join(work, set.key));
  }
}

interface ManySummary {
  runs: number;
  warmup: number;
  associations: number;
  perAssociationMb: number;
  rows: Array<{
    mode: Mode;
    mbps: number;
    cpuPerGb: number;
    busy: number;
    steal: number;
    machineCpuPerGb: number;
    setupP50: number;
    setupP99: number;
    errors: number;
    rss: number;
  }>;
  idle: { count: number; before: number; after: number; failures: number };
}

async function manySet(env: Env): Promise<ManySummary> {
  const { procs } = env;
  const runs = envCount('BENCH_RUNS', 5);
  const warmup = envCount('BENCH_WARMUP', 1);
  // The archive forks one process per association, as a PACS serves many modalities at once.
  const { scp, stunnel } = await startArchive(env, 'many', true);
  const bare = await startRelay(env, 'bare', 'many-bare', scp.port);
  const proxy = await startRelay(env, 'proxy', 'many-proxy', scp.port);
  const workers = BENCH_WORKERS > 1 ? await startRelay(env, 'workers', 'many-workers', scp.port) : null;
  const baseline = BASELINE ? await startRelay(env, 'baseline', 'many-baseline', scp.port) : null;
  // 50 × 64 KB with a 2 MB instance after every 17th, as a mixed study arrives.
  const instances: number[] = [];
  for (let i = 0; i < 50; i++) {
    instances.push(64 * 1024);
    if (i % 17 === 16) instances.push(2 * 1024 * 1024);
  }
  const data = prepareLoad(instances);
  const modes: Mode[] = [
    'stunnel',
    'bare',
    'proxy',
    ...(workers ? ['workers' as const] : []),
    ...(baseline ? ['baseline' as const] : []),
  ];
  const target: Record<string, { port: number; pid: number; called: string }> = {
    stunnel: { port: stunnel.port, pid: stunnel.pid, called: 'ARCHIVE' },
    bare: { port: bare.port, pid: bare.pid, called: 'ARCHIVE' },
    proxy: { port: proxy.port, pid: proxy.pid, called: 'DICOM_PROXY' },
    ...(workers ? { workers: { port: workers.port, pid: workers.pid, called: 'DICOM_PROXY' } } : {}),
    ...(baseline ? { baseline: { port: baseline.port, pid: baseline.pid, called: 'DICOM_PROXY' } } : {}),
  };
  const acc: Record<
    string,
    {
      mbps: number[];
      cpu: number[];
      busy: number[];
      steal: number[];
      machine: number[];
      setup: number[];
      errors: number;
    }
  > = {};
  for (const m of modes)
    acc[m] = { mbps: [], cpu: [], busy: [], steal: [], machine: [], setup: [], errors: 0 };
  try {
    // What an association that is not backed up costs: RSS with ASSOCIATIONS idle associations open, on
    // a proxy process of its own (so it does not add to the loaded proxy's peak).
    const idleProxy = await startRelay(env, 'proxy', 'many-idle', scp.port);
    const before = procStatus(idleProxy.pid, 'VmRSS');
    const idleSet = await openIdle(
      {
        host: '127.0.0.1',
        port: idleProxy.port,
        callingAe: 'STORESCU',
        calledAe: 'DICOM_PROXY',
        timeoutMs: 30_000,
      },
      ASSOCIATIONS,
    );
    await new Promise((r) => setTimeout(r, 500));
    const after = procStatus(idleProxy.pid, 'VmRSS');
    idleSet.close();
    await idleProxy.stop();
    const idle = { count: ASSOCIATIONS, before, after, failures: idleSet.failures };

    for (let run = -warmup; run < runs; run++) {
      const shift = ((run % modes.length) + modes.length) % modes.length;
      for (const mode of [...modes.slice(shift), ...modes.slice(0, shift)]) {
        const t = target[mode] as { port: number; pid: number; called: string };
        const cpu0 = cpuMs(t.pid);
        const m0 = machineCpu();
        const r = await runLoad(
          {
            host: '127.0.0.1',
            port: t.port,
            callingAe: 'STORESCU',
            calledAe: t.called,
            associations: ASSOCIATIONS,
            instances,
            timeoutMs: 300_000,
          },
          data,
        );
        const cpu = cpuMs(t.pid) - cpu0;
        const m1 = machineCpu();
        const a = acc[mode] as (typeof acc)[string];
        a.errors += r.failures.length;
        for (const f of r.failures.slice(0, 3)) process.stderr.write(`  ${mode}: ${f}\n`);
        if (run < 0) continue;
        a.mbps.push(r.bytes / 1e6 / r.seconds);
        a.cpu.push((cpu * 1e9) / r.bytes);
        const share = machineShare(m0, m1, r.bytes);
        a.busy.push(share.busy);
        a.steal.push(share.steal);
        a.machine.push(share.perGb);
        a.setup.push(...r.setupMs);
        process.stderr.write(
          `  ${ASSOCIATIONS} associations run ${run + 1} ${LABEL[mode].padEnd(16)} ${(r.bytes / 1e6 / r.seconds).toFixed(1)} MB/s, ` +
            `${r.failures.length} errors\n`,
        );
      }
    }
    const rssOf: Record<string, number> = {
      stunnel: procStatus(stunnel.pid, 'VmHWM'),
      bare: procStatus(bare.pid, 'VmHWM'),
      proxy: procStatus(proxy.pid, 'VmHWM'),
      ...(workers ? { workers: treePeakRss(workers.pid) } : {}),
      ...(baseline ? { baseline: procStatus(baseline.pid, 'VmHWM') } : {}),
    };
    return {
      runs,
      warmup,
      associations: ASSOCIATIONS,
      perAssociationMb: [...data.entries()].reduce(
        (sum, [size, pdus]) => sum + (pdus.length * instances.filter((s) => s === size).length) / 1e6,
        0,
      ),
      rows: modes.map((mode) => {
        const a = acc[mode] as (typeof acc)[string];
        return {
          mode,
          mbps: median(a.mbps),
          cpuPerGb: median(a.cpu),
          busy: median(a.busy),
          steal: median(a.steal),
          machineCpuPerGb: median(a.machine),
          setupP50: percentile(a.setup, 50),
          setupP99: percentile(a.setup, 99),
          errors: a.errors,
          rss: rssOf[mode] as number,
        };
      }),
      idle,
    };
  } finally {
    await bare.stop();
    await proxy.stop();
    await workers?.stop();
    await baseline?.stop();
    await procs.stop(stunnel.child);
    await procs.stop(scp.child);
  }
}

const f1 = (x: number | undefined): string => (x === undefined || Number.isNaN(x) ? '–' : x.toFixed(1));
const f2 = (x: number): string => (Number.isNaN(x) ? '–' : x.toFixed(2));
const f0 = (x: number | undefined): string => (x === undefined || Number.isNaN(x) ? '–' : x.toFixed(0));

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
  const out: string[] = [];
  try {
    const pki = await writeDemoPki(join(work, 'pki'));
    await writeSigningKey(join(work, 'pki'), { overwrite: true });
    const env: Env = { work, procs, pki, signingKey: join(work, 'pki', 'ledger-signing.key') };
    const summaries: StorescuSummary[] = [];
    const storescuSets = STORESCU_SETS.filter((s) => SETS.includes(s.key));
    if (storescuSets.length > 0) {
      const { scp, stunnel } = await startArchive(env, 'storescu', false);
      for (const set of storescuSets) summaries.push(await storescuSet(env, set, scp.port, stunnel));
      await procs.stop(stunnel.child);
      await procs.stop(scp.child);
    }
    const many = SETS.includes('many') ? await manySet(env) : null;

    out.push(
      `node ${process.version} (V8 ${process.versions.v8}, OpenSSL ${process.versions.openssl}), TCP_NODELAY=1, ` +
        `relays started without node flags; medians`,
      '',
    );
    if (summaries.length > 0) {
      out.push(
        `storescu → storescp over mutual TLS; ` +
          summaries.map((s) => `${s.set}: ${s.runs} interleaved runs after ${s.warmup} warm-up`).join('; '),
        '',
        '| set | direct TLS MB/s | stunnel MB/s | bare relay MB/s | proxy MB/s | proxy / stunnel | proxy / bare | proxy+ledger MB/s | ledger cost | relay CPU ms/GB: stunnel / bare / proxy / +ledger | peak RSS: bare / proxy / +ledger |',
        '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
      );
      for (const s of summaries) {
        out.push(
          `| ${s.set} | ${f1(s.mbps.direct)} | ${f1(s.mbps.stunnel)} | ${f1(s.mbps.bare)} | ${f1(s.mbps.proxy)} | ` +
            `${f2(s.mbps.proxy / s.mbps.stunnel)} | ${f2(s.mbps.proxy / s.mbps.bare)} | ${f1(s.mbps.ledger)} | ` +
            `${((1 - s.mbps.ledger / s.mbps.proxy) * 100).toFixed(1)} % | ` +
            `${f0(s.cpuPerGb.stunnel)} / ${f0(s.cpuPerGb.bare)} / ${f0(s.cpuPerGb.proxy)} / ${f0(s.cpuPerGb.ledger)} | ` +
            `${f0(s.rss.bare)} / ${f0(s.rss.proxy)} / ${f0(s.rss.ledger)} MB |`,
        );
      }
      out.push(
        '',
        `Machine CPU during the runs (all ${availableParallelism()} cores, every process: storescu, relay, storescp, the rest): ` +
          'busy share, busy CPU time per GB relayed, and the share stolen by the hypervisor (other guests: noise)',
        '',
        `| set | ${
          summaries[0]
            ? Object.keys(summaries[0].busy)
                .map((m) => LABEL[m as Mode])
                .join(' | ')
            : ''
        } |`,
        `|---|${
          summaries[0]
            ? Object.keys(summaries[0].busy)
                .map(() => '---:')
                .join('|')
            : ''
        }|`,
      );
      for (const s of summaries) {
        out.push(
          `| ${s.set} | ${Object.keys(s.busy)
            .map(
              (m) =>
                `${f0(s.busy[m as Mode])} % · ${f0(s.machineCpuPerGb[m as Mode])} ms/GB · steal ${f1(s.steal[m as Mode])} %`,
            )
            .join(' | ')} |`,
        );
      }
      out.push('');
      if (BASELINE) {
        const after = BASELINE_LEDGER ? 'proxy+ledger' : 'proxy';
        out.push(
          `Before/after in this run: baseline = ${BASELINE}${BASELINE_ARGS.length ? ` (node ${BASELINE_ARGS.join(' ')})` : ''}${BASELINE_LEDGER ? ' with the ledger on' : ''}, ${after} = this build`,
          '',
          `| set | baseline MB/s | ${after} MB/s | ${after} / baseline | relay CPU ms/GB baseline / ${after} | peak RSS baseline / ${after} |`,
          '|---|---:|---:|---:|---:|---:|',
        );
        for (const s of summaries) {
          const mbps = BASELINE_LEDGER ? s.mbps.ledger : s.mbps.proxy;
          const cpu = BASELINE_LEDGER ? s.cpuPerGb.ledger : s.cpuPerGb.proxy;
          const rss = BASELINE_LEDGER ? s.rss.ledger : s.rss.proxy;
          out.push(
            `| ${s.set} | ${f1(s.mbps.baseline)} | ${f1(mbps)} | ${f2(mbps / s.mbps.baseline)} | ` +
              `${f0(s.cpuPerGb.baseline)} / ${f0(cpu)} | ${f0(s.rss.baseline)} / ${f0(rss)} MB |`,
          );
        }
        out.push('');
      }
    }
    if (many) {
      const stunnelRow = many.rows.find((r) => r.mode === 'stunnel');
      out.push(
        `${many.associations} concurrent associations (bench/load.ts), each 50 × 64 KB + 3 × 2 MB ` +
          `(${many.perAssociationMb.toFixed(1)} MB), into storescp --fork over mutual TLS; ` +
          `${many.runs} interleaved runs after ${many.warmup} warm-up`,
        '',
        '| relay | MB/s | × stunnel | CPU ms/GB | CPU × stunnel | setup p50 ms | setup p99 ms | errors | peak RSS | machine busy | machine CPU ms/GB | stolen |',
        '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
      );
      for (const r of many.rows) {
        out.push(
          `| ${LABEL[r.mode]} | ${f1(r.mbps)} | ${stunnelRow ? f2(r.mbps / stunnelRow.mbps) : '–'} | ${f0(r.cpuPerGb)} | ` +
            `${stunnelRow ? f2(r.cpuPerGb / stunnelRow.cpuPerGb) : '–'} | ${f1(r.setupP50)} | ${f1(r.setupP99)} | ${r.errors} | ${f0(r.rss)} MB | ` +
            `${f0(r.busy)} % | ${f0(r.machineCpuPerGb)} | ${f1(r.steal)} % |`,
        );
      }
      const i = many.idle;
      out.push(
        '',
        `Idle associations: ${i.count} negotiated and not backed up took the proxy's RSS from ${f1(i.before)} to ` +
          `${f1(i.after)} MB (${(((i.after - i.before) * 1024) / i.count).toFixed(0)} KB each` +
          `${i.failures > 0 ? `, ${i.failures} failed to open` : ''}).`,
      );
    }
    process.stdout.write(`\n${out.join('\n')}\n`);
  } finally {
    await procs.stopAll();
    await removeTempDir(work);
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`bench failed: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
