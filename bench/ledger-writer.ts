// node --import tsx bench/ledger-writer.ts — CPU cost of the integrity ledger writer per record.
//
// Opens a LedgerWriter in a temp dir with the production defaults (64 MiB files, daily rotation, signed
// checkpoints every 5 min) and appends N realistic InstanceEvidence records in bursts of B, awaiting
// each burst (like B instances completing close together), once with fsync 'batch' (200 ms) and once
// with fsync 'always'. Reports per record:
//   - process CPU: process.cpuUsage() user+system, i.e. every thread: the main thread, the libuv threads
//     doing the writes and syncs, V8's helper threads (and tsx's loader thread while benchmarking);
//   - main thread CPU (Linux: /proc/self/task/<pid>/schedstat, ns resolution): what the relay's event
//     loop pays;
//   - the I/O floor: the same per burst without the ledger: one write() of the burst's bytes and the
//     policy's sync ('batch': a fsyncIntervalMs timer, then fdatasync; 'always': fdatasync), i.e. what
//     any writer doing one write per burst pays here. With 'batch', awaiting each burst's sync makes a
//     run last N/B x fsyncIntervalMs, and waking up after each such idle wait costs the main thread
//     far more than the writing itself on small VMs: "writer" = measured - floor is the writer's own
//     cost;
// plus wall time and records/s. Then verifies the ledger it wrote (verifyLedger with the public key) and
// fails if it is not intact or not complete.
//
// Environment: BENCH_N (5000), BENCH_BURST (4), BENCH_MODES (batch,always), BENCH_FSYNC_INTERVAL_MS
// (200), BENCH_FLOOR_BURSTS (at most this many bursts for the 'batch' floor: 250), BENCH_DIR (a parent
// directory for the temp ledgers; default the OS temp dir, which should be on the disk the ledger would
// use for the sync figures to mean anything).
import { randomBytes, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdtemp, open, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { generateSigningKey } from '../src/integrity/keys.js';
import type { InstanceEvidence } from '../src/integrity/types.js';
import { verifyLedger } from '../src/integrity/verify.js';
import { LedgerWriter } from '../src/integrity/writer.js';

const N = Number(process.env.BENCH_N ?? 5000);
const BURST = Number(process.env.BENCH_BURST ?? 4);
const MODES = (process.env.BENCH_MODES ?? 'batch,always').split(',') as Array<'batch' | 'always'>;
const FSYNC_INTERVAL_MS = Number(process.env.BENCH_FSYNC_INTERVAL_MS ?? 200);
const PARENT = process.env.BENCH_DIR ?? tmpdir();
const FLOOR_BURSTS = Number(process.env.BENCH_FLOOR_BURSTS ?? 250);
const WARMUP = 500;

/** CPU time of the main thread in µs (Linux), or null where that is not readable. */
function mainThreadCpuUs(): number | null {
  try {
    const text = readFileSync(`/proc/self/task/${process.pid}/schedstat`, 'utf8');
    return Number(text.split(' ')[0]) / 1000;
  } catch {
    return null;
  }
}

function processCpuUs(since?: NodeJS.CpuUsage): number {
  const u = process.cpuUsage(since);
  return u.user + u.system;
}

const KEYS = generateSigningKey();
const STUDY = `1.2.826.0.1.3680043.8.498.${BigInt(`0x${randomBytes(8).toString('hex')}`)}`;
const ARCHIVE_CERT = randomBytes(32).toString('hex');

/** What the relay hands the ledger for one 512 KB CT image stored through it (built before timing). */
function makeEvidence(n: number): InstanceEvidence[] {
  const t0 = Date.now();
  const out: InstanceEvidence[] = [];
  let association = randomUUID();
  for (let i = 0; i < n; i++) {
    if (i % 200 === 0) association = randomUUID(); // a 200-instance series per association
    out.push({
      time: new Date(t0 + i * 2).toISOString(),
      association,
      direction: 'modality-to-archive',
      callingAeTitle: 'CT_SCANNER_01',
      calledAeTitle: 'PACS_ARCHIVE',
      upstreamAeTitle: 'PACS_ARCHIVE',
      peerAddress: '10.20.30.41:51234',
      archiveAddress: 'pacs.hospital.example:2762',
      archiveCertSha256: ARCHIVE_CERT,
      clientCertSha256: null,
      sopClassUid: '1.2.840.10008.5.1.4.1.1.2',
      sopInstanceUid: `${STUDY}.${Math.floor(i / 200) + 1}.${(i % 200) + 1}`,
      transferSyntaxUid: '1.2.840.10008.1.2.1',
      bytes: 524_288 + (i % 7) * 16,
      sha256: randomBytes(32).toString('hex'),
      status: 0,
      outcome: 'success',
      moveOriginatorAeTitle: null,
      moveOriginatorMessageId: null,
    });
  }
  return out;
}

async function openWriter(dir: string, fsync: 'batch' | 'always'): Promise<LedgerWriter> {
  return LedgerWriter.open({
    dir,
    fsync,
    fsyncIntervalMs: FSYNC_INTERVAL_MS,
    rotateMaxBytes: 64 * 1024 * 1024,
    rotateDaily: true,
    checkpointIntervalMs: 5 * 60_000,
    signingKeyPem: KEYS.privateKeyPem,
  });
}

async function appendAll(w: LedgerWriter, records: InstanceEvidence[]): Promise<void> {
  for (let i = 0; i < records.length; i += BURST) {
    const burst: Array<Promise<void>> = [];
    for (let j = i; j < Math.min(i + BURST, records.length); j++) burst.push(w.append(records[j]!));
    await Promise.all(burst);
  }
}

interface Cost {
  /** Process CPU, µs per record. */
  process: number;
  /** Main thread CPU, µs per record (null where not measurable). */
  main: number | null;
}

interface Result extends Cost {
  recordsPerSecond: number;
  wallMs: number;
  /** Average bytes per line of the ledger written. */
  lineBytes: number;
}

/** Measure `fn` (which handles `records` records). */
async function measure(records: number, fn: () => Promise<void>): Promise<Cost & { wallMs: number }> {
  const main0 = mainThreadCpuUs();
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await fn();
  const wallMs = performance.now() - t0;
  const cpuUs = processCpuUs(cpu0);
  const main1 = mainThreadCpuUs();
  return {
    process: cpuUs / records,
    main: main0 === null || main1 === null ? null : (main1 - main0) / records,
    wallMs,
  };
}

async function run(fsync: 'batch' | 'always', records: InstanceEvidence[]): Promise<Result> {
  const dir = await mkdtemp(join(PARENT, 'ledger-bench-'));
  try {
    const w = await openWriter(dir, fsync);
    const cost = await measure(records.length, () => appendAll(w, records));
    await w.close();

    const report = await verifyLedger(dir, { publicKeyPem: KEYS.publicKeyPem });
    if (!report.ok || report.instances !== records.length || report.tornTail !== null) {
      throw new Error(
        `the ${fsync} ledger does not verify: ok=${report.ok} instances=${report.instances}/${records.length} ` +
          `torn=${JSON.stringify(report.tornTail)} ${JSON.stringify(report.errors.slice(0, 3))}`,
      );
    }
    let bytes = 0;
    for (const name of await readdir(dir))
      if (name.endsWith('.jsonl')) bytes += (await stat(join(dir, name))).size;
    return {
      ...cost,
      recordsPerSecond: records.length / (cost.wallMs / 1000),
      lineBytes: bytes / report.records,
    };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** One write() per burst of the same bytes and the policy's sync, no ledger: see the top comment. */
async function floor(fsync: 'batch' | 'always', lineBytes: number): Promise<Cost> {
  const dir = await mkdtemp(join(PARENT, 'ledger-bench-floor-'));
  const fh = await open(join(dir, 'floor'), 'a', 0o600);
  try {
    const bursts = fsync === 'batch' ? Math.min(FLOOR_BURSTS, Math.ceil(N / BURST)) : Math.ceil(N / BURST);
    const data = Buffer.alloc(Math.round(lineBytes * BURST), 0x61);
    return await measure(bursts * BURST, async () => {
      for (let i = 0; i < bursts; i++) {
        await fh.write(data, 0, data.length, null);
        if (fsync === 'batch') await new Promise((r) => setTimeout(r, FSYNC_INTERVAL_MS));
        await fh.datasync();
      }
    });
  } finally {
    await fh.close();
    await rm(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  console.log(
    `ledger writer: ${N} instance records in bursts of ${BURST} (each burst awaited), ledger in ${PARENT}`,
  );
  // Warm the JIT on the same code paths (not measured).
  await run('always', makeEvidence(WARMUP));
  const us = (x: number | null): string => (x === null ? 'n/a' : x.toFixed(1)).padStart(6);
  const minus = (a: number | null, b: number | null): number | null =>
    a === null || b === null ? null : a - b;
  for (const mode of MODES) {
    const r = await run(mode, makeEvidence(N));
    const f = await floor(mode, r.lineBytes);
    const label = mode === 'batch' ? `batch ${FSYNC_INTERVAL_MS}ms` : 'always';
    console.log(
      `fsync ${label.padEnd(12)} ${r.recordsPerSecond.toFixed(0).padStart(5)} records/s, ` +
        `${(r.wallMs / 1000).toFixed(1)} s, ledger verified\n` +
        `  CPU µs/record   process ${us(r.process)}   main thread ${us(r.main)}\n` +
        `  I/O floor       process ${us(f.process)}   main thread ${us(f.main)}\n` +
        `  writer's own    process ${us(r.process - f.process)}   main thread ${us(minus(r.main, f.main))}`,
    );
  }
}

await main();
