// npm run load — the daemon under sustained load, then a soak, with pass/fail thresholds:
//   1. load: LOAD_ASSOCIATIONS concurrent associations (default 100) for LOAD_SECONDS (default 60),
//      each storing instances one after the other (64 KB, with a 2 MB one after every 17th, as a mixed
//      study arrives; each C-STORE waits for its C-STORE-RSP, as a modality does);
//   2. soak: short associations, SOAK_CONCURRENCY (default 4) at a time, each connect, associate,
//      store SOAK_INSTANCES (default 3), release: SOAK_WARMUP_SECONDS (default 60) of them, then
//      SOAK_SECONDS (default 300) measured. The warm-up is there because the proxy's RSS steps up when
//      short associations start (V8 grows its young generation toward its 32 MB semi-spaces, the C
//      allocator keeps freed TLS and socket memory for reuse) and then levels off; what the soak
//      measures is growth once it has, which is what a leak looks like.
// modality (this process) ──plain──▶ dimse-tls-proxy ──mutual TLS──▶ storescp +tls --fork (the archive).
// The proxy is started exactly as an admin would: `node dist/cli.js start -c FILE`, no node flags, and
// stopped by PID at the end. Everything listens on and talks to 127.0.0.1 only.
//
// Every LOAD_SAMPLE_SECONDS (default 5) the proxy's RSS (/proc/PID/status VmRSS) and open file
// descriptors (entries of /proc/PID/fd) are sampled. Printed at the end: per phase, associations
// completed, instances, throughput, association setup latency p50/p99 (TCP connect → A-ASSOCIATE-AC) and
// errors (any non-success status, A-ABORT, A-ASSOCIATE-RJ, connection error, close before release,
// no progress within LOAD_TIMEOUT_SECONDS; in any phase); RSS (and the V8 heap used / committed, from the
// admin endpoint's /metrics) and fds at baseline (before the load), peak, after the load, soak start,
// soak end and after the drain; the samples over time.
//
// Exit status 1 when errors > 0, RSS growth over the measured soak > LOAD_MAX_RSS_GROWTH_MB (default
// 20), or the fds are not back to baseline within LOAD_SETTLE_SECONDS (default 30; polled every 100 ms)
// after the last association has ended; 2 when DCMTK is missing.
//
// Short mode (`npm run load -- --short` or LOAD_SHORT=1, run by test/load/load-short.test.ts): 20
// associations × 10 s, soak warm-up 20 s, soak 20 s, samples every second, settle 15 s. Its RSS limit
// is 50 MB: 20 s after a 20 s warm-up is not yet level (RSS measured 17–36 MB above the soak start, with
// the V8 heap in use flat), so the short run catches gross leaks; the 5-minute soak is the measure.
//
// New associations are opened at most LOAD_SETUP_CONCURRENCY (default 8) at a time, so that from the
// one loopback address the proxy never has more than its default limits.pendingPerAddress (8)
// connections not yet admitted: the load runs against the proxy's default admission limits.
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import { cpus } from 'node:os';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { PduFramer } from '../src/pdu/framer.js';
import { decodePdu, encodePdu } from '../src/pdu/codec.js';
import { decodeCommand, encodeCommand } from '../src/dimse/command.js';
import { writeDemoPki } from '../src/tls/pki.js';
import { CT_IMAGE, EXPLICIT_LE, associateRq } from '../test/helpers/raw.js';
import {
  Procs,
  freePort,
  makeTempDir,
  peerAvailability,
  removeTempDir,
  startStorescp,
  waitForListen,
} from '../test/helpers/peers.js';
import { percentile, prepareLoad } from './load.js';

const SHORT = process.env.LOAD_SHORT === '1' || process.argv.slice(2).includes('--short');

function knob(name: string, full: number, short: number): number {
  const v = process.env[name];
  const n = v === undefined || v === '' ? (SHORT ? short : full) : Number(v);
  if (!Number.isFinite(n) || n < 0) throw new Error(`${name} must be a non-negative number, got ${v}`);
  return n;
}

const ASSOCIATIONS = Math.max(1, Math.floor(knob('LOAD_ASSOCIATIONS', 100, 20)));
const LOAD_SECONDS = knob('LOAD_SECONDS', 60, 10);
const SOAK_SECONDS = knob('SOAK_SECONDS', 300, 20);
const SOAK_WARMUP_SECONDS = knob('SOAK_WARMUP_SECONDS', 60, 20);
const SOAK_CONCURRENCY = Math.max(1, Math.floor(knob('SOAK_CONCURRENCY', 4, 4)));
const SOAK_INSTANCES = Math.max(1, Math.floor(knob('SOAK_INSTANCES', 3, 3)));
const SAMPLE_SECONDS = Math.max(0.1, knob('LOAD_SAMPLE_SECONDS', 5, 1));
const MAX_RSS_GROWTH_MB = knob('LOAD_MAX_RSS_GROWTH_MB', 20, 50);
const SETTLE_SECONDS = knob('LOAD_SETTLE_SECONDS', 30, 15);
const SETUP_CONCURRENCY = Math.max(1, Math.floor(knob('LOAD_SETUP_CONCURRENCY', 8, 8)));
const TIMEOUT_MS = knob('LOAD_TIMEOUT_SECONDS', 60, 30) * 1000;

const SMALL = 64 * 1024;
const MEDIUM = 2 * 1024 * 1024;
/** The n-th instance of a stream: 64 KB, with a 2 MB one after every 17th. */
const sizeAt = (n: number): number => (n % 18 === 17 ? MEDIUM : SMALL);
const DATA = prepareLoad([SMALL, MEDIUM]);
const RELEASE_RQ = Buffer.from([0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0]);

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------------
// The proxy process as seen from /proc

function rssMb(pid: number, field: 'VmRSS' | 'VmHWM' = 'VmRSS'): number {
  const m = new RegExp(`${field}:\\s+(\\d+) kB`).exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

function fdCount(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/** V8 heap in use and memory outside it (Buffers, OpenSSL objects V8 knows of), from /metrics, in MB. */
function heapMb(adminPort: number): Promise<{ heap: number; committed: number; external: number }> {
  return new Promise((resolve) => {
    const none = { heap: NaN, committed: NaN, external: NaN };
    const req = http.get({ host: '127.0.0.1', port: adminPort, path: '/metrics', agent: false }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (s: string) => (text += s));
      res.on('end', () => {
        const value = (name: string): number => {
          const m = new RegExp(`^${name} (\\S+)`, 'm').exec(text);
          return m ? Number(m[1]) / (1024 * 1024) : NaN;
        };
        resolve({
          heap: value('nodejs_heap_size_used_bytes'),
          committed: value('nodejs_heap_size_total_bytes'),
          external: value('nodejs_external_memory_bytes'),
        });
      });
      res.on('error', () => resolve(none));
    });
    req.on('error', () => resolve(none));
    req.setTimeout(5000, () => req.destroy());
  });
}

interface Sample {
  t: number;
  phase: 'baseline' | 'load' | 'warm-up' | 'soak' | 'drain';
  rss: number;
  fds: number;
  open: number;
  heap: number;
  committed: number;
  external: number;
}

// ---------------------------------------------------------------------------------------------------
// One association: connect, negotiate, store while `more()` says so, release

/** At most `n` holders at a time (new associations being set up). */
class Gate {
  private free: number;
  private readonly waiting: Array<() => void> = [];
  constructor(n: number) {
    this.free = n;
  }
  async acquire(): Promise<() => void> {
    if (this.free > 0) this.free--;
    else await new Promise<void>((r) => this.waiting.push(r));
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.waiting.shift();
      if (next) next();
      else this.free++;
    };
  }
}

interface Target {
  port: number;
  callingAe: string;
  calledAe: string;
}

interface SessionResult {
  setupMs: number;
  /** P-DATA bytes of the instances the archive acknowledged with status 0000. */
  bytes: number;
  instances: number;
  failure: string | null;
}

let openAssociations = 0;
let uidCounter = 0;

function session(
  target: Target,
  gate: Gate,
  more: (stored: number) => boolean,
  label: string,
): Promise<SessionResult> {
  return gate.acquire().then(
    (release) =>
      new Promise<SessionResult>((resolve) => {
        const started = performance.now();
        let setupMs = -1;
        let bytes = 0;
        let instances = 0;
        let inFlight = 0; // size of the instance awaiting its response, 0 when none
        let messageId = 0;
        let done = false;
        const framer = new PduFramer({ maxPDataLength: 1 << 21, maxOtherLength: 1 << 20 });
        openAssociations++;
        const socket = net.connect({ host: '127.0.0.1', port: target.port, noDelay: true });
        let timer = setTimeout(() => finish(`no progress within ${TIMEOUT_MS} ms`), TIMEOUT_MS);
        const progress = (): void => {
          clearTimeout(timer);
          timer = setTimeout(() => finish(`no progress within ${TIMEOUT_MS} ms`), TIMEOUT_MS);
        };
        const finish = (failure: string | null): void => {
          if (done) return;
          done = true;
          openAssociations--;
          clearTimeout(timer);
          release();
          socket.destroy();
          resolve({ setupMs, bytes, instances, failure: failure === null ? null : `${label}: ${failure}` });
        };
        const sendNext = (): void => {
          if (!more(instances)) {
            socket.write(RELEASE_RQ);
            return;
          }
          const size = sizeAt(uidCounter);
          messageId = (messageId % 0xffff) + 1;
          const command = encodeCommand({
            commandField: 0x0001,
            messageId,
            priority: 0,
            commandDataSetType: 0x0000,
            affectedSopClassUid: CT_IMAGE,
            affectedSopInstanceUid: `1.2.826.0.1.3680043.10.511.10.${process.pid}.${++uidCounter}`,
          });
          socket.write(
            encodePdu({ type: 0x04, pdvs: [{ contextId: 1, command: true, last: true, value: command }] }),
          );
          socket.write(DATA.get(size) as Buffer);
          inFlight = size;
        };
        socket.on('connect', () =>
          socket.write(
            associateRq(
              target.callingAe,
              target.calledAe,
              [{ id: 1, abstractSyntax: CT_IMAGE, transferSyntaxes: [EXPLICIT_LE] }],
              16384,
            ),
          ),
        );
        socket.on('data', (chunk: Buffer) => {
          progress();
          let frames: Buffer[];
          try {
            frames = framer.push(chunk);
          } catch (err) {
            finish(`unreadable PDU stream: ${(err as Error).message}`);
            return;
          }
          for (const raw of frames) {
            const type = raw[0];
            if (type === 0x02) {
              setupMs = performance.now() - started;
              release();
              sendNext();
            } else if (type === 0x03) {
              finish(`A-ASSOCIATE-RJ ${[...raw.subarray(7, 10)].join('/')}`);
            } else if (type === 0x07) {
              finish(`A-ABORT source ${raw[8]} reason ${raw[9]}`);
            } else if (type === 0x06) {
              finish(inFlight === 0 ? null : 'A-RELEASE-RP with a C-STORE outstanding');
            } else if (type === 0x05) {
              finish('A-RELEASE-RQ from the proxy');
            } else if (type === 0x04) {
              const pdu = decodePdu(raw);
              if (pdu.type !== 0x04) continue;
              for (const pdv of pdu.pdvs) {
                if (!pdv.command || !pdv.last) continue;
                const rsp = decodeCommand(pdv.value);
                if (rsp.commandField !== 0x8001 || rsp.messageIdBeingRespondedTo !== messageId) {
                  finish(`unexpected response 0x${rsp.commandField.toString(16)} to message ${messageId}`);
                  return;
                }
                if (rsp.status !== 0) {
                  finish(`C-STORE status 0x${(rsp.status ?? 0xffff).toString(16).padStart(4, '0')}`);
                  return;
                }
                bytes += (DATA.get(inFlight) as Buffer).length;
                instances++;
                inFlight = 0;
                sendNext();
              }
            }
          }
        });
        socket.on('error', (err) => finish(`connection error: ${err.message}`));
        socket.on('close', () => finish('closed before release'));
      }),
  );
}

interface PhaseResult {
  seconds: number;
  completed: number;
  instances: number;
  bytes: number;
  setupMs: number[];
  failures: string[];
}

/** `workers` loops of sessions until `seconds` have passed; each worker opens a new one when one ends. */
async function phase(
  target: Target,
  workers: number,
  seconds: number,
  more: (deadline: number) => (stored: number) => boolean,
  label: string,
): Promise<PhaseResult> {
  const gate = new Gate(SETUP_CONCURRENCY);
  const started = performance.now();
  const deadline = started + seconds * 1000;
  const r: PhaseResult = { seconds: 0, completed: 0, instances: 0, bytes: 0, setupMs: [], failures: [] };
  let n = 0;
  await Promise.all(
    Array.from({ length: workers }, async () => {
      while (performance.now() < deadline) {
        const s = await session(target, gate, more(deadline), `${label} association ${++n}`);
        r.bytes += s.bytes;
        r.instances += s.instances;
        if (s.setupMs >= 0) r.setupMs.push(s.setupMs);
        if (s.failure === null) r.completed++;
        else {
          r.failures.push(s.failure);
          if (r.failures.length <= 10) process.stderr.write(`  ${s.failure}\n`);
          await sleep(100);
        }
      }
    }),
  );
  r.seconds = (performance.now() - started) / 1000;
  return r;
}

// ---------------------------------------------------------------------------------------------------

async function startProxy(
  procs: Procs,
  work: string,
  pki: Awaited<ReturnType<typeof writeDemoPki>>,
  archivePort: number,
): Promise<{ port: number; adminPort: number; child: ChildProcess; pid: number }> {
  const port = await freePort();
  const adminPort = await freePort();
  const cfg = join(work, 'proxy.yaml');
  const max = ASSOCIATIONS + SOAK_CONCURRENCY + 8;
  writeFileSync(
    cfg,
    [
      `listen: { host: 127.0.0.1, port: ${port} }`,
      'upstreams:',
      '  archive:',
      '    host: 127.0.0.1',
      `    port: ${archivePort}`,
      '    aeTitle: ARCHIVE',
      `    tls: { ca: ${pki.caCert}, cert: ${pki.proxyClientCert}, key: ${pki.proxyClientKey}, serverName: archive.local }`,
      'routes:',
      '  - { calledAeTitle: DICOM_PROXY, upstream: archive }',
      'peers:',
      `  STORESCU: { addresses: [127.0.0.1], services: [echo, store], maxAssociations: ${max} }`,
      `limits: { maxAssociations: ${Math.max(max, 200)}, maxAssociationsPerPeer: ${max} }`,
      'logging: { level: warn }',
      // The admin endpoint for /metrics (V8 heap figures); no readiness probe, so the only associations
      // the proxy relays are the load's.
      `admin: { host: 127.0.0.1, port: ${adminPort}, readiness: null }`,
      'reload: { watch: false }',
      '',
    ].join('\n'),
  );
  const child = procs.spawn(
    process.execPath,
    [join(import.meta.dirname, '..', 'dist', 'cli.js'), 'start', '-c', cfg],
    { name: 'dimse-tls-proxy' },
  );
  await waitForListen(port, { procs, child, timeoutMs: 15_000 });
  await waitForListen(adminPort, { procs, child, timeoutMs: 15_000 });
  return { port, adminPort, child, pid: child.pid as number };
}

const f1 = (x: number): string => (Number.isFinite(x) ? x.toFixed(1) : '–');
const signed = (x: number): string => (x >= 0 ? `+${f1(x)}` : f1(x));

async function main(): Promise<number> {
  const dcmtk = peerAvailability('dcmtk');
  if (!dcmtk.ok) {
    process.stderr.write(`npm run load needs DCMTK (storescp +tls): ${dcmtk.why}\n`);
    return 2;
  }
  const work = await makeTempDir('dimse-load');
  const procs = new Procs();
  const stopAll = (): void => {
    void procs
      .stopAll()
      .then(() => removeTempDir(work))
      .then(() => process.exit(130));
  };
  process.once('SIGTERM', stopAll);
  process.once('SIGINT', stopAll);
  try {
    const pki = await writeDemoPki(join(work, 'pki'));
    const scp = await startStorescp(procs, {
      outDir: join(work, 'archive'),
      aeTitle: 'ARCHIVE',
      tls: { key: pki.archiveKey, cert: pki.archiveCert, ca: pki.caCert },
      extraArgs: ['--ignore', '--fork'],
    });
    const proxy = await startProxy(procs, work, pki, scp.port);
    const target: Target = { port: proxy.port, callingAe: 'STORESCU', calledAe: 'DICOM_PROXY' };
    const began = performance.now();
    const samples: Sample[] = [];
    let current: Sample['phase'] = 'baseline';
    /** RSS and fds first, then the heap figures (the /metrics request holds one fd while it runs). */
    const sample = async (withHeap = true): Promise<Sample> => {
      const s: Sample = {
        t: (performance.now() - began) / 1000,
        phase: current,
        rss: rssMb(proxy.pid),
        fds: fdCount(proxy.pid),
        open: openAssociations,
        heap: NaN,
        committed: NaN,
        external: NaN,
      };
      if (withHeap) Object.assign(s, await heapMb(proxy.adminPort));
      samples.push(s);
      return s;
    };
    const baseline = await sample();
    process.stderr.write(
      `proxy pid ${proxy.pid}: RSS ${f1(baseline.rss)} MB, ${baseline.fds} fds before the load\n` +
        `load: ${ASSOCIATIONS} concurrent associations for ${LOAD_SECONDS} s…\n`,
    );
    const sampler = setInterval(() => {
      if (!procs.isRunning(proxy.child)) return;
      void sample().then((s) =>
        process.stderr.write(
          `  ${s.t.toFixed(0).padStart(4)} s ${s.phase.padEnd(7)} RSS ${f1(s.rss).padStart(6)} MB  ` +
            `V8 heap ${f1(s.heap).padStart(5)} of ${f1(s.committed).padStart(5)} MB  external ${f1(s.external).padStart(5)} MB  ` +
            `fds ${String(s.fds).padStart(4)}  associations open ${s.open}\n`,
        ),
      );
    }, SAMPLE_SECONDS * 1000);

    current = 'load';
    const load = await phase(
      target,
      ASSOCIATIONS,
      LOAD_SECONDS,
      (deadline) => () => performance.now() < deadline,
      'load',
    );
    const afterLoad = procs.isRunning(proxy.child) ? fdCount(proxy.pid) : NaN;
    const shortOnes = () => (stored: number) => stored < SOAK_INSTANCES;
    process.stderr.write(
      `load done: ${load.completed} associations, ${load.failures.length} errors; ` +
        `soak: short associations, ${SOAK_WARMUP_SECONDS} s warm-up then ${SOAK_SECONDS} s measured…\n`,
    );
    current = 'warm-up';
    const warmStart = await sample();
    const warmup = await phase(target, SOAK_CONCURRENCY, SOAK_WARMUP_SECONDS, shortOnes, 'soak warm-up');
    current = 'soak';
    const soakStart = await sample();
    const soak = await phase(target, SOAK_CONCURRENCY, SOAK_SECONDS, shortOnes, 'soak');
    const soakEnd = await sample();
    current = 'drain';
    clearInterval(sampler);

    // Every association has ended on this side; the proxy closes its upstream halves as the archive
    // answers the release. Poll until its fds are back to the baseline, bounded.
    const settleStarted = performance.now();
    let after = await sample(false);
    while (
      after.fds > baseline.fds &&
      performance.now() - settleStarted < SETTLE_SECONDS * 1000 &&
      procs.isRunning(proxy.child)
    ) {
      await sleep(100);
      after = await sample(false);
    }
    const settleSeconds = (performance.now() - settleStarted) / 1000;
    const alive = procs.isRunning(proxy.child);
    const hwm = alive ? rssMb(proxy.pid, 'VmHWM') : NaN;
    const peakFds = Math.max(...samples.map((s) => s.fds), afterLoad);
    const peakSampledRss = Math.max(...samples.map((s) => s.rss));
    const finite = (xs: number[]): number[] => xs.filter((x) => Number.isFinite(x));
    const peakHeap = Math.max(...finite(samples.map((s) => s.heap)));
    const peakCommitted = Math.max(...finite(samples.map((s) => s.committed)));
    const growth = soakEnd.rss - soakStart.rss;

    const errors = load.failures.length + warmup.failures.length + soak.failures.length + (alive ? 0 : 1);
    const checks = [
      {
        ok: errors === 0,
        text: `errors ${errors} (allowed 0)${alive ? '' : '; the proxy exited during the run'}`,
      },
      {
        ok: growth <= MAX_RSS_GROWTH_MB,
        text: `RSS growth over the soak ${signed(growth)} MB (allowed ${MAX_RSS_GROWTH_MB} MB)`,
      },
      {
        ok: after.fds <= baseline.fds,
        text: `fds after the drain ${after.fds}, baseline ${baseline.fds} (settled after ${settleSeconds.toFixed(1)} s; bound ${SETTLE_SECONDS} s)`,
      },
    ];

    const soakDesc = `${SOAK_CONCURRENCY} at a time, each ${SOAK_INSTANCES} instances then release`;
    const point = (name: string, p: Sample): string =>
      `| ${name} | ${f1(p.rss)} | ${f1(p.heap)} / ${f1(p.committed)} | ${p.fds} |`;
    const row = (name: string, p: PhaseResult, desc: string): string =>
      `| ${name} | ${desc} | ${p.completed} | ${p.instances} | ${f1(p.bytes / 1e6 / p.seconds)} | ` +
      `${f1(percentile(p.setupMs, 50))} | ${f1(percentile(p.setupMs, 99))} | ${p.failures.length} |`;
    const series = samples.filter((s) => s.phase !== 'baseline' && s.phase !== 'drain');
    const every = Math.max(1, Math.ceil(series.length / 16));
    const out = [
      `node ${process.version}, ${cpus().length} CPUs${SHORT ? ', short mode' : ''}; proxy: node dist/cli.js start -c FILE ` +
        `(pid ${proxy.pid}, no node flags); archive: storescp +tls --fork over mutual TLS; loopback; ` +
        `instances 64 KB with a 2 MB one after every 17th`,
      '',
      '| phase | associations | completed | instances | MB/s | setup p50 ms | setup p99 ms | errors |',
      '|---|---|---:|---:|---:|---:|---:|---:|',
      row('load', load, `${ASSOCIATIONS} concurrent × ${LOAD_SECONDS} s`),
      row('soak warm-up', warmup, `${SOAK_WARMUP_SECONDS} s, ${soakDesc}`),
      row('soak', soak, `${SOAK_SECONDS} s, ${soakDesc}`),
      '',
      '| proxy | RSS MB | V8 heap used / committed MB | open fds |',
      '|---|---:|---:|---:|',
      point('baseline (before the load)', baseline),
      `| peak | ${f1(hwm)} (VmHWM; sampled ${f1(peakSampledRss)}) | ${f1(peakHeap)} / ${f1(peakCommitted)} | ${peakFds} |`,
      point('after the load', warmStart),
      point('soak start (after the warm-up)', soakStart),
      point('soak end', soakEnd),
      point('after the drain', after),
      `| growth over the soak | ${signed(growth)} (from the end of the load: ${signed(soakEnd.rss - warmStart.rss)}) | ` +
        `${signed(soakEnd.heap - soakStart.heap)} / ${signed(soakEnd.committed - soakStart.committed)} | |`,
      '',
      `Samples (every ${SAMPLE_SECONDS * every} s): ` +
        series
          .filter((_, i) => i % every === 0)
          .map((s) => `${s.t.toFixed(0)} s ${s.phase} ${f1(s.rss)} MB/${s.fds} fd`)
          .join(', '),
      '',
      ...checks.map((c) => `${c.ok ? 'ok  ' : 'FAIL'} ${c.text}`),
    ];
    process.stdout.write(`\n${out.join('\n')}\n`);
    const failed = checks.some((c) => !c.ok);
    if (failed && !alive) process.stderr.write(procs.describe(proxy.child));
    return failed ? 1 : 0;
  } finally {
    await procs.stopAll();
    await removeTempDir(work);
  }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`npm run load failed: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);
