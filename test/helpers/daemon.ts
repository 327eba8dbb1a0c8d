// The daemon as an administrator runs it: `node dist/cli.js start -c policy.yaml` in a child process,
// its JSON log lines followed as they are written (waits are on lines, not sleeps), its admin endpoint,
// and a mutual-TLS test archive that can record client certificates and hold a transfer in flight.
import assert from 'node:assert/strict';
import { spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { open } from 'node:fs/promises';
import * as http from 'node:http';
import { join, resolve } from 'node:path';
import type { TLSSocket } from 'node:tls';
import { afterEach } from 'node:test';
import type { PemPair } from '../../src/tls/pki.js';
import { echo, type EchoResult } from '../../src/dicom/dcmjs.js';
import { startTestArchive, type TestArchive } from './instances.js';
import type { Procs } from './peers.js';
import { proxyYaml, type ProxyTestOptions } from './proxy.js';

export const REPO = resolve(import.meta.dirname, '..', '..');
export const CLI = join(REPO, 'dist', 'cli.js');

/** Runs the built CLI to its end (bounded), from `cwd` (default this process's). */
export function runCli(
  args: readonly string[],
  opts: { cwd?: string; timeoutMs?: number } = {},
): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], {
    encoding: 'utf8',
    timeout: opts.timeoutMs ?? 60_000,
    ...(opts.cwd ? { cwd: opts.cwd } : {}),
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** The built CLI must exist: `npm test` builds it (pretest), a single file needs `npm run build` first. */
export function assertBuilt(): void {
  assert.ok(existsSync(CLI), `${CLI} is missing: run \`npm run build\` first`);
}

export interface LogLine {
  event?: string;
  level?: string;
  message?: string;
  timestamp?: string;
  [key: string]: unknown;
}

interface Waiter {
  from: number;
  predicate: (line: LogLine) => boolean;
  resolve: (line: LogLine) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

/** A running `dimse-tls-proxy start`, its log lines parsed as they arrive. */
export class Daemon {
  /**
   * Every JSON log line so far, in the order read. The logger writes level error to stderr and the other
   * levels to stdout (observe/log.ts): both are read, so the order between the two streams is approximate.
   */
  readonly lines: LogLine[] = [];
  port = 0;
  /** The admin endpoint's port; 0 when the config has `admin: null`. */
  adminPort = 0;
  private readonly partial = { stdout: '', stderr: '' };
  private readonly waiters = new Set<Waiter>();
  private exitedWith: { code: number | null; signal: NodeJS.Signals | null } | null = null;
  /** The exit status, once the process has exited and its output has been read to the end. */
  private readonly ended: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  constructor(
    readonly procs: Procs,
    readonly child: ChildProcess,
  ) {
    const streams = (['stdout', 'stderr'] as const).map((name) => {
      const stream = child[name];
      stream?.on('data', (chunk: string | Buffer) => this.push(name, chunk.toString()));
      // 'exit' can come before the last output has been read: the log is complete once both closed too.
      return new Promise<void>((r) => {
        if (stream === null || stream.closed) r();
        else stream.once('close', () => r());
      });
    });
    this.ended = Promise.all([procs.exited(child), ...streams]).then(([status]) => status);
    void this.ended.then((status) => {
      this.exitedWith = status;
      for (const w of [...this.waiters]) {
        this.settle(w);
        w.reject(new Error(`the daemon exited before the awaited log line\n${this.describe()}`));
      }
    });
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  /** Index of the next log line: pass it as `from` to wait only for lines logged after this point. */
  mark(): number {
    return this.lines.length;
  }

  /** The lines (from index `from`) whose event is `event`. */
  events(event: string, from = 0): LogLine[] {
    return this.lines.slice(from).filter((l) => l.event === event);
  }

  /**
   * Resolves with the first line at index >= `from` that satisfies `predicate` (one already logged, or the
   * next one to be); rejects after `timeoutMs` or when the process exits first.
   */
  waitFor(
    predicate: (line: LogLine) => boolean,
    opts: { from?: number; timeoutMs?: number; what?: string } = {},
  ): Promise<LogLine> {
    const from = opts.from ?? 0;
    const found = this.lines.slice(from).find(predicate);
    if (found !== undefined) return Promise.resolve(found);
    const timeoutMs = opts.timeoutMs ?? 30_000;
    return new Promise((resolvePromise, reject) => {
      if (this.exitedWith !== null) {
        reject(
          new Error(`the daemon has exited; no ${opts.what ?? 'matching'} log line\n${this.describe()}`),
        );
        return;
      }
      const waiter: Waiter = {
        from,
        predicate,
        resolve: resolvePromise,
        reject,
        timer: setTimeout(() => {
          this.settle(waiter);
          reject(
            new Error(`no ${opts.what ?? 'matching'} log line within ${timeoutMs} ms\n${this.describe()}`),
          );
        }, timeoutMs),
      };
      this.waiters.add(waiter);
    });
  }

  /** Waits for a line with this `event` (and, optionally, more conditions). */
  waitForEvent(
    event: string,
    opts: { from?: number; timeoutMs?: number; where?: (line: LogLine) => boolean } = {},
  ): Promise<LogLine> {
    const where = opts.where ?? (() => true);
    return this.waitFor((l) => l.event === event && where(l), { ...opts, what: `'${event}'` });
  }

  signal(sig: NodeJS.Signals): void {
    process.kill(this.pid, sig);
  }

  /**
   * Resolves with the exit status once the process has exited and every log line has been read; rejects
   * if that has not happened after `timeoutMs`.
   */
  async exit(timeoutMs = 30_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
        this.ended,
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new Error(`the daemon did not exit within ${timeoutMs} ms\n${this.describe()}`)),
            timeoutMs,
          );
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  isRunning(): boolean {
    return this.procs.isRunning(this.child);
  }

  describe(): string {
    return this.procs.describe(this.child);
  }

  private settle(w: Waiter): void {
    clearTimeout(w.timer);
    this.waiters.delete(w);
  }

  private push(stream: 'stdout' | 'stderr', text: string): void {
    const parts = (this.partial[stream] + text).split('\n');
    this.partial[stream] = parts.pop() ?? '';
    for (const raw of parts) {
      if (!raw.startsWith('{')) continue;
      let line: LogLine;
      try {
        line = JSON.parse(raw) as LogLine;
      } catch {
        continue;
      }
      const index = this.lines.push(line) - 1;
      for (const w of [...this.waiters]) {
        if (index >= w.from && w.predicate(line)) {
          this.settle(w);
          w.resolve(line);
        }
      }
    }
  }
}

/**
 * Spawns the daemon and waits for its 'listening' line (and 'listening-admin' when `admin` is true), so
 * the real ports are known even with port 0 in the config.
 */
export async function startDaemon(
  procs: Procs,
  configPath: string,
  opts: { admin: boolean; timeoutMs?: number },
): Promise<Daemon> {
  const child = procs.spawn(process.execPath, [CLI, 'start', '-c', configPath], {
    name: 'dimse-tls-proxy start',
    cwd: REPO,
  });
  const daemon = new Daemon(procs, child);
  const timeoutMs = opts.timeoutMs ?? 30_000;
  const listening = await daemon.waitForEvent('listening', { timeoutMs });
  daemon.port = Number(listening.port);
  assert.ok(daemon.port > 0, `a real port in ${JSON.stringify(listening)}`);
  if (opts.admin) {
    const admin = await daemon.waitForEvent('listening-admin', { timeoutMs });
    daemon.adminPort = Number(admin.port);
    assert.ok(daemon.adminPort > 0, `a real admin port in ${JSON.stringify(admin)}`);
  }
  return daemon;
}

/**
 * A policy file for the daemon: proxyYaml's upstream/route/peers, the listener on 127.0.0.1:0, info logs,
 * `admin` (127.0.0.1:0 or null) and `reload` as given (`{ watch: false }` by default).
 */
export function daemonYaml(
  o: ProxyTestOptions & { admin: boolean; reload?: string; peerLines?: readonly string[] },
): string {
  const base = proxyYaml({
    ...o,
    ...(o.peerLines ? { peers: o.peerLines.join('\n') } : {}),
    extra: [
      `admin: ${o.admin ? '{ host: 127.0.0.1, port: 0 }' : 'null'}`,
      `reload: ${o.reload ?? '{ watch: false }'}`,
      ...(o.extra ? [o.extra] : []),
    ].join('\n'),
  });
  const text = base.replace(/^logging: \{ level: \w+ \}$/m, 'logging: { level: info }');
  assert.ok(text.includes('logging: { level: info }'), 'proxyYaml has a logging line to set');
  assert.match(text, /^listen: \{ host: 127\.0\.0\.1, port: 0 \}$/m);
  return text;
}

export interface HttpReply {
  status: number;
  text: string;
}

/** One HTTP request to 127.0.0.1:port (no keep-alive), bounded by `timeoutMs`. */
export function httpRequest(
  port: number,
  method: string,
  path: string,
  timeoutMs = 15_000,
): Promise<HttpReply> {
  return new Promise((resolvePromise, reject) => {
    const req = http.request(
      { host: '127.0.0.1', port, method, path, agent: false, headers: { Connection: 'close' } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () =>
          resolvePromise({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }),
        );
      },
    );
    req.setTimeout(timeoutMs, () =>
      req.destroy(new Error(`${method} ${path} timed out after ${timeoutMs} ms`)),
    );
    req.on('error', reject);
    req.end();
  });
}

/** The value of one sample in Prometheus text (`name{labels} value`); undefined when absent. */
export function metricSample(text: string, name: string, labels: string): number | undefined {
  for (const line of text.split('\n')) {
    if (line.startsWith(`${name}{${labels}} `)) return Number(line.slice(name.length + labels.length + 3));
    if (labels === '' && line.startsWith(`${name} `)) return Number(line.slice(name.length + 1));
  }
  return undefined;
}

/**
 * startTestArchive plus: the SHA-256 fingerprint of the client certificate every TLS connection presented,
 * in order; and a one-shot gate that stops reading the first connection that has delivered `holdAfter`
 * bytes (TCP backpressure then holds the whole chain, the proxy's association stays in the middle of the
 * transfer) until release(). close() also destroys every connection, a held one included.
 */
export interface GatedArchive extends TestArchive {
  fingerprints: string[];
  /** Resolves when a connection has been held (it had delivered at least `holdAfter` bytes). */
  held: Promise<void>;
  isHeld(): boolean;
  release(): void;
}

export async function startGatedArchive(
  material: { ca: PemPair; archive: PemPair },
  opts: { holdAfter?: number } = {},
): Promise<GatedArchive> {
  const base = await startTestArchive(material);
  const sockets = new Set<TLSSocket>();
  const fingerprints: string[] = [];
  let heldSocket: TLSSocket | null = null;
  let gateUsed = false;
  let markHeld: () => void = () => undefined;
  const held = new Promise<void>((r) => (markHeld = r));
  base.archive.server.on('secureConnection', (socket: TLSSocket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    fingerprints.push(socket.getPeerCertificate().fingerprint256);
    const limit = opts.holdAfter;
    if (limit === undefined) return;
    let bytes = 0;
    // Registered after the archive's own 'data' listener: the chunk that crosses the limit is delivered.
    const onData = (chunk: Buffer): void => {
      bytes += chunk.length;
      if (gateUsed || bytes < limit) return;
      gateUsed = true;
      heldSocket = socket;
      socket.pause();
      socket.off('data', onData);
      markHeld();
    };
    socket.on('data', onData);
  });
  return {
    ...base,
    fingerprints,
    held,
    isHeld: () => heldSocket !== null,
    release: () => {
      const s = heldSocket;
      heldSocket = null;
      s?.resume();
    },
    close: async () => {
      for (const s of sockets) s.destroy();
      await base.close();
    },
  };
}

/**
 * The pixel data the archive stored for testInstance(index, pixelBytes) is exactly what was sent: the
 * file ends with the PixelData element (its length field = pixelBytes) whose value hashes like the
 * generated pattern.
 */
export async function assertStoredPixels(file: string, index: number, pixelBytes: number): Promise<void> {
  const expected = createHash('sha256');
  const block = new Uint8Array(1 << 20);
  for (let off = 0; off < pixelBytes; off += block.length) {
    const n = Math.min(block.length, pixelBytes - off);
    for (let k = 0; k < n; k++) block[k] = ((off + k) * 7 + index) & 0xff;
    expected.update(block.subarray(0, n));
  }
  const fh = await open(file, 'r');
  try {
    const size = (await fh.stat()).size;
    assert.ok(size > pixelBytes + 12, `${file}: ${size} bytes, fewer than the pixel data`);
    const header = Buffer.alloc(4);
    await fh.read(header, 0, 4, size - pixelBytes - 4);
    assert.equal(header.readUInt32LE(0), pixelBytes, 'the PixelData length field');
    const actual = createHash('sha256');
    const buf = Buffer.alloc(1 << 20);
    for (let pos = size - pixelBytes; pos < size;) {
      const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, size - pos), pos);
      assert.ok(bytesRead > 0, 'short read');
      actual.update(buf.subarray(0, bytesRead));
      pos += bytesRead;
    }
    assert.equal(actual.digest('hex'), expected.digest('hex'), 'the stored pixel data');
  } finally {
    await fh.close();
  }
}

/**
 * Cleanups of the running test, run in reverse order after it (daemon first, then archive, then files):
 * call once at a test file's top level; returns the function that registers one.
 */
export function deferAfterEach(): (fn: () => Promise<void> | void) => void {
  let cleanups: Array<() => Promise<void> | void> = [];
  afterEach(async () => {
    const list = cleanups.reverse();
    cleanups = [];
    for (const fn of list) await fn();
  });
  return (fn) => void cleanups.push(fn);
}

/** A C-ECHO through the daemon to its route DICOM_PROXY, as `callingAeTitle`. */
export function echoAs(daemon: Daemon, callingAeTitle: string): Promise<EchoResult> {
  return echo({
    host: '127.0.0.1',
    port: daemon.port,
    callingAeTitle,
    calledAeTitle: 'DICOM_PROXY',
    timeoutMs: 20_000,
  });
}
