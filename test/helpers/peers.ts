/**
 * Real peers on loopback for tests and benchmarks: DCMTK tools, stunnel and Orthanc.
 *
 * Every long-running process goes through a `Procs` registry and is stopped by PID (SIGTERM, then
 * SIGKILL after 3 s); every one-shot tool run is bounded by a timeout that kills it by PID. Readiness is
 * detected from the kernel's listening-socket table (/proc/net/tcp*), so no probe connection disturbs
 * single-process servers (storescp) or shows up in a peer's logs.
 *
 * Quirks worth knowing (DCMTK 3.6.7, stunnel 5.68, Orthanc 1.10.1):
 * - DCMTK leaves Nagle on unless the environment has TCP_NODELAY=1; every spawn here sets it.
 * - DCMTK TLS: `+tls KEY CERT` (key first), `+cf CA`; it checks the chain but never the hostname.
 *   A TLS storescp requires a client certificate by default (`-rc`). movescu/getscu/dcmqrscp: no TLS.
 * - storescu converts compressed files to the proposed uncompressed syntax and fails ("unable to
 *   convert dataset") unless it is given a `-xf <cfg> <profile>` that proposes each file's own transfer
 *   syntax; `proposeFileTransferSyntax` writes such a config from the files' meta headers.
 * - storescp `+xa` accepts all transfer syntaxes, `-pm` unknown SOP classes, `+B` writes the received
 *   data set bytes unchanged after a fresh meta header; files are named `<modality>.<SOP instance UID>`.
 * - storescp and Orthanc bind all interfaces (no listen-address option); only ever talk to 127.0.0.1.
 * - movescu/getscu may exit 0 even when the C-MOVE/C-GET failed (a refused move exited 69 once) ("DIMSE status is: Failed: ..." on
 *   stderr): check the received files, not only the exit code. getscu has no "+xa": it only takes the
 *   uncompressed syntaxes (plus one preferred, e.g. +xy), and Orthanc's C-GET SCP cannot transcode the
 *   fake compressed pixel data, so C-GET through Orthanc needs uncompressed test instances.
 * - Orthanc (TLS) logs "TLS error: peer did not return a certificate" for anonymous clients; it stores
 *   and forwards (C-STORE SCU, C-MOVE) the data set bytes it received unchanged.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { constants as fsConstants, accessSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, open, readdir, rm, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { type AddressInfo, connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import type { TestContext } from 'node:test';

export const REQUIRE_PEERS = process.env.DIMSE_PROXY_REQUIRE_PEERS === '1';

export type PeerTool = 'dcmtk' | 'orthanc' | 'stunnel' | 'haproxy';

const INSTALL_HINT: Record<PeerTool, string> = {
  dcmtk: 'apt-get install -y dcmtk',
  orthanc: 'apt-get install -y orthanc',
  stunnel: 'apt-get install -y stunnel4',
  haproxy: 'apt-get install -y haproxy',
};

/** Resolve an executable on PATH (no shell). */
export function which(cmd: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir === '') continue;
    const candidate = join(dir, cmd);
    try {
      accessSync(candidate, fsConstants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

const availability = new Map<PeerTool, { ok: boolean; why: string }>();

function probe(tool: PeerTool): { ok: boolean; why: string } {
  if (tool === 'dcmtk') {
    const missing = ['storescp', 'storescu', 'echoscu', 'findscu', 'movescu', 'getscu'].filter(
      (c) => which(c) === undefined,
    );
    if (missing.length > 0) return { ok: false, why: `DCMTK tools not on PATH: ${missing.join(', ')}` };
    const version = spawnSync('storescu', ['--version'], { encoding: 'utf8', timeout: 10_000 });
    if (!/OpenSSL/i.test(`${version.stdout}${version.stderr}`)) {
      return { ok: false, why: 'DCMTK is installed but built without OpenSSL (no +tls support)' };
    }
    return { ok: true, why: 'DCMTK with OpenSSL found' };
  }
  if (tool === 'stunnel') {
    return stunnelBinary() !== undefined
      ? { ok: true, why: 'stunnel found' }
      : { ok: false, why: 'stunnel not on PATH' };
  }
  if (tool === 'haproxy') {
    return which('haproxy') !== undefined
      ? { ok: true, why: 'haproxy found' }
      : { ok: false, why: 'haproxy not on PATH' };
  }
  return which('Orthanc') !== undefined
    ? { ok: true, why: 'Orthanc found' }
    : { ok: false, why: 'Orthanc not on PATH' };
}

export function peerAvailability(tool: PeerTool): { ok: boolean; why: string } {
  let result = availability.get(tool);
  if (result === undefined) {
    result = probe(tool);
    availability.set(tool, result);
  }
  return result;
}

/**
 * `if (!skipUnlessPeer(t, 'dcmtk')) return;` — skips loudly when the tool is missing, or fails the test
 * when DIMSE_PROXY_REQUIRE_PEERS=1 (CI installs the peers, so a missing one there is a real failure).
 */
export function skipUnlessPeer(t: TestContext, tool: PeerTool): boolean {
  const { ok, why } = peerAvailability(tool);
  if (ok) return true;
  const message = `${tool} not installed: ${INSTALL_HINT[tool]} (${why})`;
  if (REQUIRE_PEERS) {
    throw new Error(`DIMSE_PROXY_REQUIRE_PEERS=1 but ${message}`);
  }
  process.stderr.write(`\n!!! SKIPPING "${t.name}": ${message} !!!\n\n`);
  t.skip(message);
  return false;
}

/** A free TCP port on 127.0.0.1 (bind to port 0, read it, close). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

/** A fresh directory under the OS temp dir. */
export async function makeTempDir(prefix: string): Promise<string> {
  return mkdtemp(join(tmpdir(), `dimse-proxy-${prefix}-`));
}

/** Remove a temp dir (kept when DIMSE_PROXY_KEEP_TMP=1, for debugging). */
export async function removeTempDir(dir: string | undefined): Promise<void> {
  if (dir === undefined) return;
  if (process.env.DIMSE_PROXY_KEEP_TMP === '1') {
    process.stderr.write(`keeping ${dir}\n`);
    return;
  }
  await rm(dir, { recursive: true, force: true });
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Whether `p` settles within `ms`; the timer is cleared either way so it never holds the event loop. */
async function settlesWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([p.then(() => true as const), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------------------------------------------
// Process registry

/**
 * Safety net: every child still alive when this process exits (a test timed out, an `after` hook never
 * ran) gets SIGKILL by PID — synchronously, from the 'exit' handler.
 */
const liveChildren = new Map<number, { group: boolean }>();
let exitHookInstalled = false;

function trackLive(child: ChildProcess, group: boolean): void {
  const pid = child.pid;
  if (pid === undefined) return;
  liveChildren.set(pid, { group });
  child.once('exit', () => liveChildren.delete(pid));
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.once('exit', () => {
      for (const [livePid, { group }] of liveChildren) {
        try {
          process.kill(group ? -livePid : livePid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    });
  }
}

export interface SpawnOptions {
  cwd?: string;
  /** Added to process.env (plus TCP_NODELAY=1). */
  env?: Record<string, string>;
  /** Label used in error messages (defaults to the command). */
  name?: string;
  /**
   * Start the process in its own process group and signal the whole group (negative PID) on stop: for
   * servers that fork per association (dcmqrscp, storescp --fork).
   */
  processGroup?: boolean;
  /** Keep at most this many characters of stdout and of stderr (the tail). Default 1 MiB. */
  maxOutput?: number;
}

interface Tracked {
  child: ChildProcess;
  name: string;
  processGroup: boolean;
  stdout: string;
  stderr: string;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  exited: boolean;
}

export class Procs {
  private readonly tracked = new Map<number, Tracked>();

  spawn(cmd: string, args: readonly string[], opts: SpawnOptions = {}): ChildProcess {
    const child = spawn(cmd, args, {
      cwd: opts.cwd,
      env: { ...process.env, TCP_NODELAY: '1', ...opts.env },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: opts.processGroup === true,
    });
    const pid = child.pid;
    if (pid === undefined) {
      child.on('error', () => undefined);
      throw new Error(`failed to spawn ${cmd} (not installed or not executable?)`);
    }
    trackLive(child, opts.processGroup === true);
    const maxOutput = opts.maxOutput ?? 1024 * 1024;
    const entry: Tracked = {
      child,
      name: opts.name ?? cmd,
      processGroup: opts.processGroup === true,
      stdout: '',
      stderr: '',
      exited: false,
      exit: new Promise((resolve) => {
        child.once('exit', (code, signal) => {
          entry.exited = true;
          resolve({ code, signal });
        });
      }),
    };
    child.on('error', (err) => {
      entry.stderr += `\n[spawn error] ${err.message}\n`;
    });
    child.stdout?.setEncoding('utf8');
    child.stderr?.setEncoding('utf8');
    child.stdout?.on('data', (s: string) => {
      entry.stdout = (entry.stdout + s).slice(-maxOutput);
    });
    child.stderr?.on('data', (s: string) => {
      entry.stderr = (entry.stderr + s).slice(-maxOutput);
    });
    this.tracked.set(pid, entry);
    return child;
  }

  private entry(child: ChildProcess | number): Tracked {
    const pid = typeof child === 'number' ? child : child.pid;
    const entry = pid === undefined ? undefined : this.tracked.get(pid);
    if (entry === undefined) throw new Error(`process ${String(pid)} is not tracked by this registry`);
    return entry;
  }

  /** Output collected so far (tails, see maxOutput). */
  output(child: ChildProcess | number): { stdout: string; stderr: string } {
    const e = this.entry(child);
    return { stdout: e.stdout, stderr: e.stderr };
  }

  isRunning(child: ChildProcess | number): boolean {
    return !this.entry(child).exited;
  }

  /** Resolves when the process exits. */
  exited(child: ChildProcess | number): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    return this.entry(child).exit;
  }

  /** A short description of a process for error messages: name, pid, exit status and output tail. */
  describe(child: ChildProcess | number, tail = 4000): string {
    const e = this.entry(child);
    const status = e.exited
      ? `exited (code ${String(e.child.exitCode)}, signal ${String(e.child.signalCode)})`
      : 'running';
    return `${e.name} pid ${String(e.child.pid)} ${status}\n--- stdout ---\n${e.stdout.slice(-tail)}\n--- stderr ---\n${e.stderr.slice(-tail)}`;
  }

  private signal(e: Tracked, sig: NodeJS.Signals): void {
    const pid = e.child.pid;
    if (pid === undefined || e.exited) return;
    try {
      process.kill(e.processGroup ? -pid : pid, sig);
    } catch {
      // already gone
    }
  }

  /** SIGTERM, then SIGKILL after `graceMs`; waits (bounded) for the exit. */
  async stop(child: ChildProcess | number, graceMs = 3000): Promise<void> {
    const e = this.entry(child);
    if (!e.exited) {
      this.signal(e, 'SIGTERM');
      if (!(await settlesWithin(e.exit, graceMs))) {
        this.signal(e, 'SIGKILL');
        await settlesWithin(e.exit, 2000);
      }
    } else if (e.processGroup) {
      // The leader is gone; make sure forked children of its group are too.
      const pid = e.child.pid;
      if (pid !== undefined) {
        try {
          process.kill(-pid, 'SIGKILL');
        } catch {
          // no group left
        }
      }
    }
    e.child.stdout?.destroy();
    e.child.stderr?.destroy();
  }

  /** Stop every process this registry started, in parallel. */
  async stopAll(): Promise<void> {
    await Promise.all([...this.tracked.values()].map((e) => this.stop(e.child)));
  }
}

// ---------------------------------------------------------------------------------------------------
// Readiness

function listeningPorts(): Set<number> | undefined {
  const ports = new Set<number>();
  let any = false;
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    any = true;
    for (const line of text.split('\n').slice(1)) {
      const cols = line.trim().split(/\s+/);
      const local = cols[1];
      if (local === undefined || cols[3] !== '0A') continue; // 0A = LISTEN
      const portHex = local.slice(local.lastIndexOf(':') + 1);
      ports.add(parseInt(portHex, 16));
    }
  }
  return any ? ports : undefined;
}

function tcpProbe(port: number, host: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ port, host });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(500, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

/**
 * Wait until something listens on `port` (bounded). Fails early with the process output if the
 * process exits first.
 */
export async function waitForListen(
  port: number,
  opts: { timeoutMs?: number; procs?: Procs; child?: ChildProcess; host?: string } = {},
): Promise<void> {
  const deadline = Date.now() + (opts.timeoutMs ?? 15_000);
  while (Date.now() < deadline) {
    if (opts.procs !== undefined && opts.child !== undefined && !opts.procs.isRunning(opts.child)) {
      throw new Error(`process exited before listening on ${port}: ${opts.procs.describe(opts.child)}`);
    }
    const ports = listeningPorts();
    if (ports !== undefined ? ports.has(port) : await tcpProbe(port, opts.host ?? '127.0.0.1')) return;
    await sleep(25);
  }
  const detail =
    opts.procs !== undefined && opts.child !== undefined ? `: ${opts.procs.describe(opts.child)}` : '';
  throw new Error(`nothing listening on port ${port} after ${opts.timeoutMs ?? 15_000} ms${detail}`);
}

// ---------------------------------------------------------------------------------------------------
// One-shot tool runs

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
  /** The full command line, for error messages. */
  command: string;
}

/** Run a command to completion, killing it by PID (SIGKILL) after `timeoutMs`. */
export function runTool(
  cmd: string,
  args: readonly string[],
  opts: { timeoutMs?: number; env?: Record<string, string>; cwd?: string } = {},
): Promise<RunResult> {
  const timeoutMs = opts.timeoutMs ?? 60_000;
  const command = [cmd, ...args].join(' ');
  return new Promise((resolve) => {
    const child = spawn(cmd, args, {
      cwd: opts.cwd,
      env: { ...process.env, TCP_NODELAY: '1', ...opts.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    trackLive(child, false);
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    child.stdout.on('data', (s: string) => {
      stdout = (stdout + s).slice(-4 * 1024 * 1024);
    });
    child.stderr.on('data', (s: string) => {
      stderr = (stderr + s).slice(-4 * 1024 * 1024);
    });
    const timer = setTimeout(() => {
      timedOut = true;
      if (child.pid !== undefined) {
        try {
          process.kill(child.pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    }, timeoutMs);
    child.once('error', (err) => {
      clearTimeout(timer);
      resolve({
        code: null,
        signal: null,
        stdout,
        stderr: `${stderr}\n[spawn error] ${err.message}`,
        timedOut,
        command,
      });
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, timedOut, command });
    });
  });
}

/** Format a RunResult for assertion messages. */
export function describeRun(r: RunResult, tail = 4000): string {
  return `${r.command}\n=> code ${String(r.code)} signal ${String(r.signal)}${r.timedOut ? ' (TIMED OUT)' : ''}\n--- stdout ---\n${r.stdout.slice(-tail)}\n--- stderr ---\n${r.stderr.slice(-tail)}`;
}

// ---------------------------------------------------------------------------------------------------
// DCMTK

/** DCMTK TLS settings. Without key/cert an SCU uses anonymous TLS (`+tla`, no client certificate). */
export interface DcmtkTls {
  key?: string;
  cert?: string;
  /** Trusted CA certificate file(s) (`+cf`). */
  ca?: string | string[];
  /** Peer certificate check: require (-rc, default), verify if present (-vc, SCP only), ignore (-ic). */
  peerCert?: 'require' | 'verify' | 'ignore';
  /** Security profile flag, e.g. '+py' (BCP 195 non-downgrading, DCMTK's default), '+px', '+pz'. */
  profile?: string;
}

export function dcmtkTlsArgs(tls: DcmtkTls | undefined, role: 'scu' | 'scp'): string[] {
  if (tls === undefined) return [];
  const args: string[] = [];
  if (tls.key !== undefined && tls.cert !== undefined) {
    args.push('+tls', tls.key, tls.cert, '-pw'); // -pw: unencrypted key, never prompt on stdin
  } else if (tls.key !== undefined || tls.cert !== undefined) {
    throw new Error('DCMTK TLS needs both key and cert, or neither (anonymous TLS)');
  } else if (role === 'scu') {
    args.push('+tla');
  } else {
    throw new Error('a DCMTK TLS SCP needs a key and a certificate');
  }
  for (const ca of typeof tls.ca === 'string' ? [tls.ca] : (tls.ca ?? [])) args.push('+cf', ca);
  if (tls.profile !== undefined) args.push(tls.profile);
  if (tls.peerCert === 'verify') {
    if (role !== 'scp') throw new Error('peerCert "verify" (-vc) exists only for DCMTK SCPs');
    args.push('-vc');
  } else if (tls.peerCert === 'ignore') {
    args.push('-ic');
  }
  return args;
}

export interface StorescpOptions {
  port?: number;
  outDir: string;
  aeTitle?: string;
  tls?: DcmtkTls;
  /** `+B`: write the received data set bytes exactly as received (default true). */
  bitPreserving?: boolean;
  extraArgs?: string[];
  startTimeoutMs?: number;
}

/**
 * Start storescp: accepts every transfer syntax (+xa) and unknown SOP classes (-pm), no reverse DNS
 * lookups (-dhl), writes `<outDir>/<modality>.<SOP instance UID>`. Single-process: one association at
 * a time (pass `extraArgs: ['--fork']` together with a processGroup-aware caller for concurrency).
 */
export async function startStorescp(
  procs: Procs,
  opts: StorescpOptions,
): Promise<{ port: number; pid: number; outDir: string; child: ChildProcess }> {
  const port = opts.port ?? (await freePort());
  await mkdir(opts.outDir, { recursive: true });
  const args = [
    '-aet',
    opts.aeTitle ?? 'STORESCP',
    '+xa',
    '-pm',
    '-dhl',
    '-od',
    opts.outDir,
    ...(opts.bitPreserving === false ? [] : ['+B']),
    ...dcmtkTlsArgs(opts.tls, 'scp'),
    ...(opts.extraArgs ?? []),
    String(port),
  ];
  const fork = (opts.extraArgs ?? []).includes('--fork');
  const child = procs.spawn('storescp', args, { name: 'storescp', processGroup: fork });
  await waitForListen(port, { procs, child, timeoutMs: opts.startTimeoutMs ?? 15_000 });
  return { port, pid: child.pid ?? -1, outDir: opts.outDir, child };
}

export interface ScuOptions {
  host: string;
  port: number;
  callingAe?: string;
  calledAe?: string;
  tls?: DcmtkTls;
  extraArgs?: string[];
  timeoutMs?: number;
  env?: Record<string, string>;
}

function scuArgs(opts: ScuOptions, defaultCalling: string): string[] {
  return [
    '-aet',
    opts.callingAe ?? defaultCalling,
    '-aec',
    opts.calledAe ?? 'ANY-SCP',
    ...dcmtkTlsArgs(opts.tls, 'scu'),
    ...(opts.extraArgs ?? []),
  ];
}

function noTls(tool: string, opts: ScuOptions): void {
  if (opts.tls !== undefined)
    throw new Error(`${tool} has no TLS support in DCMTK 3.6.7: use it on the plaintext side`);
}

/** Read the meta header's SOP class (0002,0002) and transfer syntax (0002,0010) of a Part 10 file. */
async function fileSyntax(path: string): Promise<{ sopClass: string; transferSyntax: string }> {
  const fh = await open(path, 'r');
  try {
    const head = Buffer.alloc(64 * 1024);
    const { bytesRead } = await fh.read(head, 0, head.length, 0);
    const buf = head.subarray(0, bytesRead);
    if (buf.length < 144 || buf.toString('latin1', 128, 132) !== 'DICM')
      throw new Error(`${path}: not a Part 10 file`);
    let off = 132;
    const found: Record<number, string> = {};
    while (off + 8 <= buf.length && buf.readUInt16LE(off) === 0x0002) {
      const element = buf.readUInt16LE(off + 2);
      const vr = buf.toString('latin1', off + 4, off + 6);
      const long = ['OB', 'OW', 'OF', 'SQ', 'UT', 'UN'].includes(vr);
      const len = long ? buf.readUInt32LE(off + 8) : buf.readUInt16LE(off + 6);
      const header = long ? 12 : 8;
      if (element === 0x0002 || element === 0x0010) {
        found[element] = buf.toString('latin1', off + header, off + header + len).replace(/[\0 ]+$/, '');
      }
      off += header + len;
    }
    const sopClass = found[0x0002];
    const transferSyntax = found[0x0010];
    if (sopClass === undefined || transferSyntax === undefined)
      throw new Error(`${path}: meta header incomplete`);
    return { sopClass, transferSyntax };
  } finally {
    await fh.close();
  }
}

/**
 * Write a storescu association config (`-xf <file> FILES`) proposing, for every SOP class among the
 * files, exactly the transfer syntaxes the files are encoded in — one presentation context per pair —
 * so storescu sends every file unchanged instead of trying (and failing) to convert it.
 */
export async function writeStorescuConfig(dir: string, files: readonly string[]): Promise<string> {
  const pairs = new Map<string, { sopClass: string; transferSyntax: string }>();
  for (const file of files) {
    const s = await fileSyntax(file);
    pairs.set(`${s.sopClass}\\${s.transferSyntax}`, s);
  }
  if (pairs.size > 128) throw new Error(`too many SOP class/transfer syntax pairs (${pairs.size} > 128)`);
  const syntaxes = [...new Set([...pairs.values()].map((p) => p.transferSyntax))];
  const lines = ['[[TransferSyntaxes]]'];
  syntaxes.forEach((ts, i) => lines.push(`[TS${i + 1}]`, `TransferSyntax1 = ${ts}`));
  lines.push('[[PresentationContexts]]', '[FILECONTEXTS]');
  [...pairs.values()].forEach((p, i) =>
    lines.push(`PresentationContext${i + 1} = ${p.sopClass}\\TS${syntaxes.indexOf(p.transferSyntax) + 1}`),
  );
  lines.push('[[Profiles]]', '[FILES]', 'PresentationContexts = FILECONTEXTS', '');
  const path = join(dir, 'storescu-files.cfg');
  await writeFile(path, lines.join('\n'));
  return path;
}

export interface StorescuOptions extends ScuOptions {
  files: string[];
  /** Propose each file's own transfer syntax (via a generated `-xf` config) so nothing is converted. */
  proposeFileTransferSyntax?: boolean;
}

export async function runStorescu(opts: StorescuOptions): Promise<RunResult> {
  let cfgDir: string | undefined;
  try {
    const xf: string[] = [];
    if (opts.proposeFileTransferSyntax === true) {
      cfgDir = await makeTempDir('storescu-cfg');
      xf.push('-xf', await writeStorescuConfig(cfgDir, opts.files), 'FILES');
    }
    const args = [...scuArgs(opts, 'STORESCU'), ...xf, opts.host, String(opts.port), ...opts.files];
    return await runTool('storescu', args, { timeoutMs: opts.timeoutMs, env: opts.env });
  } finally {
    if (cfgDir !== undefined) await rm(cfgDir, { recursive: true, force: true });
  }
}

export function runEchoscu(opts: ScuOptions): Promise<RunResult> {
  return runTool('echoscu', [...scuArgs(opts, 'ECHOSCU'), opts.host, String(opts.port)], {
    timeoutMs: opts.timeoutMs,
    env: opts.env,
  });
}

export type QueryModel = 'patient' | 'study' | 'worklist';

const QUERY_MODEL_FLAG: Record<QueryModel, string> = { patient: '-P', study: '-S', worklist: '-W' };

export interface QueryOptions extends ScuOptions {
  /** Information model (default 'study'). */
  model?: QueryModel;
  /** `-k` keys, e.g. ['QueryRetrieveLevel=STUDY', 'StudyInstanceUID=1.2.3', 'PatientName']. */
  keys: string[];
}

/**
 * findscu. Responses are printed by DCMTK as data set dumps on stderr/stdout at the default log level
 * ("Find Response: 1 (Pending)" then the dump); pass `outDir` to also extract them (`-X`) as
 * rsp0001.dcm, ...
 */
export async function runFindscu(opts: QueryOptions & { outDir?: string }): Promise<RunResult> {
  if (opts.outDir !== undefined) await mkdir(opts.outDir, { recursive: true });
  const args = [
    ...scuArgs(opts, 'FINDSCU'),
    QUERY_MODEL_FLAG[opts.model ?? 'study'],
    ...opts.keys.flatMap((k) => ['-k', k]),
    ...(opts.outDir !== undefined ? ['-X', '-od', opts.outDir] : []),
    opts.host,
    String(opts.port),
  ];
  return runTool('findscu', args, { timeoutMs: opts.timeoutMs, env: opts.env });
}

/**
 * movescu (plaintext only). `moveDestination` is the AE the SCP sends to (-aem, default: calling AE);
 * `acceptPort` makes movescu itself listen for the resulting storage sub-associations (+P, files to
 * `outDir`).
 */
export async function runMovescu(
  opts: QueryOptions & { moveDestination?: string; acceptPort?: number; outDir?: string },
): Promise<RunResult> {
  noTls('movescu', opts);
  if (opts.outDir !== undefined) await mkdir(opts.outDir, { recursive: true });
  const args = [
    ...scuArgs(opts, 'MOVESCU'),
    QUERY_MODEL_FLAG[opts.model ?? 'study'],
    ...(opts.moveDestination !== undefined ? ['-aem', opts.moveDestination] : []),
    ...(opts.acceptPort !== undefined ? ['+P', String(opts.acceptPort), '+xa'] : []),
    ...(opts.outDir !== undefined ? ['-od', opts.outDir] : []),
    ...opts.keys.flatMap((k) => ['-k', k]),
    opts.host,
    String(opts.port),
  ];
  return runTool('movescu', args, { timeoutMs: opts.timeoutMs, env: opts.env });
}

/** getscu (plaintext only): C-GET, the instances come back on the same association into `outDir`. */
export async function runGetscu(opts: QueryOptions & { outDir: string }): Promise<RunResult> {
  noTls('getscu', opts);
  await mkdir(opts.outDir, { recursive: true });
  const args = [
    ...scuArgs(opts, 'GETSCU'),
    QUERY_MODEL_FLAG[opts.model ?? 'study'],
    '-od',
    opts.outDir,
    ...opts.keys.flatMap((k) => ['-k', k]),
    opts.host,
    String(opts.port),
  ];
  return runTool('getscu', args, { timeoutMs: opts.timeoutMs, env: opts.env });
}

/** Files storescp (or movescu/getscu) wrote into `dir`, sorted. */
export async function listFiles(dir: string): Promise<string[]> {
  return (await readdir(dir)).sort().map((f) => join(dir, f));
}

// ---------------------------------------------------------------------------------------------------
// stunnel

function stunnelBinary(): string | undefined {
  return which('stunnel') ?? which('stunnel4');
}

export interface StunnelOptions {
  /** Where stunnel listens (127.0.0.1); a free port when omitted. */
  acceptPort?: number;
  connectHost: string;
  connectPort: number;
  ca: string;
  cert?: string;
  key?: string;
  /** Client mode: also require the server certificate to carry this DNS name (`checkHost`). */
  checkHost?: string;
  /** Directory for the generated config (a temp dir when omitted; removed by the caller). */
  dir?: string;
  /** Extra `key = value` lines for the service section. */
  extraServiceLines?: string[];
  startTimeoutMs?: number;
}

export interface StunnelHandle {
  port: number;
  pid: number;
  child: ChildProcess;
  configPath: string;
}

async function startStunnel(
  procs: Procs,
  mode: 'client' | 'server',
  opts: StunnelOptions & { requireClientCert?: boolean },
): Promise<StunnelHandle> {
  const bin = stunnelBinary();
  if (bin === undefined) throw new Error('stunnel is not installed (apt-get install -y stunnel4)');
  const port = opts.acceptPort ?? (await freePort());
  const dir = opts.dir ?? (await makeTempDir('stunnel'));
  await mkdir(dir, { recursive: true });
  const lines = [
    'foreground = yes',
    'pid =',
    'debug = notice',
    'syslog = no',
    '[dicom]',
    `client = ${mode === 'client' ? 'yes' : 'no'}`,
    `accept = 127.0.0.1:${port}`,
    `connect = ${opts.connectHost}:${opts.connectPort}`,
    `CAfile = ${opts.ca}`,
    ...(opts.cert !== undefined ? [`cert = ${opts.cert}`] : []),
    ...(opts.key !== undefined ? [`key = ${opts.key}`] : []),
    'sslVersionMin = TLSv1.2',
    // Client: verify the archive's chain (and name, if asked). Server: verifyChain also makes the client
    // certificate mandatory (stunnel >= 5.51 sets requireCert with it).
    ...(mode === 'client' || opts.requireClientCert === true ? ['verifyChain = yes'] : []),
    ...(opts.checkHost !== undefined ? [`checkHost = ${opts.checkHost}`] : []),
    'socket = l:TCP_NODELAY=1',
    'socket = r:TCP_NODELAY=1',
    'TIMEOUTclose = 0',
    'delay = no',
    ...(opts.extraServiceLines ?? []),
    '',
  ];
  const configPath = join(dir, `stunnel-${mode}-${port}.conf`);
  await writeFile(configPath, lines.join('\n'));
  const child = procs.spawn(bin, [configPath], { name: `stunnel (${mode})` });
  await waitForListen(port, { procs, child, timeoutMs: opts.startTimeoutMs ?? 15_000 });
  return { port, pid: child.pid ?? -1, child, configPath };
}

/** stunnel in client mode: plaintext in on 127.0.0.1:acceptPort, TLS out (verifying the server chain). */
export function startStunnelClient(procs: Procs, opts: StunnelOptions): Promise<StunnelHandle> {
  return startStunnel(procs, 'client', opts);
}

/** stunnel in server mode: TLS in on 127.0.0.1:acceptPort (client certs required by default), plain out. */
export function startStunnelServer(
  procs: Procs,
  opts: StunnelOptions & { cert: string; key: string; requireClientCert?: boolean },
): Promise<StunnelHandle> {
  return startStunnel(procs, 'server', { ...opts, requireClientCert: opts.requireClientCert ?? true });
}

// ---------------------------------------------------------------------------------------------------
// Orthanc

export interface OrthancModality {
  aeTitle: string;
  host: string;
  port: number;
  useTls?: boolean;
}

export interface OrthancOptions {
  /** Working directory: config and storage go here. */
  dir: string;
  aeTitle: string;
  tls?: { cert: string; key: string; ca: string; requireClientCert: boolean };
  modalities: Record<string, OrthancModality>;
  dicomPort?: number;
  httpPort?: number;
  /** Merged over the generated configuration (last word). */
  extraConfig?: Record<string, unknown>;
  startTimeoutMs?: number;
}

export interface HttpResult {
  status: number;
  body: Buffer;
  text(): string;
  json<T = unknown>(): T;
}

function httpRequest(
  port: number,
  method: string,
  path: string,
  body?: Buffer | string,
  contentType?: string,
  timeoutMs = 30_000,
): Promise<HttpResult> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: '127.0.0.1',
        port,
        method,
        path,
        agent: false,
        headers: {
          Connection: 'close',
          ...(body !== undefined
            ? {
                'Content-Type': contentType ?? 'application/octet-stream',
                'Content-Length': Buffer.byteLength(body),
              }
            : {}),
        },
        timeout: timeoutMs,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => {
          const data = Buffer.concat(chunks);
          resolve({
            status: res.statusCode ?? 0,
            body: data,
            text: () => data.toString('utf8'),
            json: <T>() => JSON.parse(data.toString('utf8')) as T,
          });
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error(`HTTP ${method} ${path} timed out after ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(body);
  });
}

export interface OrthancHandle {
  dicomPort: number;
  httpPort: number;
  pid: number;
  child: ChildProcess;
  configPath: string;
  /** POST a Part 10 file to /instances; returns the Orthanc instance ID. */
  upload(file: Buffer): Promise<string>;
  /** Any REST call on 127.0.0.1:httpPort; objects are sent as JSON. */
  rest(method: string, path: string, body?: Buffer | string | object): Promise<HttpResult>;
}

/**
 * Start Orthanc on free ports with a generated configuration (never the packaged service or its
 * /etc/orthanc config): no plugins, HTTP restricted to localhost without authentication, storage in
 * `dir`. With `tls`, Orthanc's DICOM SCP speaks only TLS and uses the same certificate as server and as
 * client (for C-MOVE sub-associations to modalities with `useTls`), so it needs both EKUs.
 * Callers other than C-ECHO/C-STORE ones, and move destinations, must be listed in `modalities`.
 */
export async function startOrthanc(procs: Procs, opts: OrthancOptions): Promise<OrthancHandle> {
  const dicomPort = opts.dicomPort ?? (await freePort());
  const httpPort = opts.httpPort ?? (await freePort());
  const storage = join(opts.dir, 'storage');
  await mkdir(storage, { recursive: true });
  const modalities: Record<string, Record<string, unknown>> = {};
  for (const [name, m] of Object.entries(opts.modalities)) {
    modalities[name] = { AET: m.aeTitle, Host: m.host, Port: m.port, UseDicomTls: m.useTls === true };
  }
  const config: Record<string, unknown> = {
    Name: `test-${opts.aeTitle}`,
    StorageDirectory: storage,
    IndexDirectory: storage,
    StorageCompression: false,
    Plugins: [],
    HttpServerEnabled: true,
    HttpPort: httpPort,
    HttpDescribeErrors: true,
    RemoteAccessAllowed: false,
    AuthenticationEnabled: false,
    SslEnabled: false,
    KeepAlive: false,
    DicomServerEnabled: true,
    DicomAet: opts.aeTitle,
    DicomPort: dicomPort,
    DicomCheckCalledAet: false,
    DicomCheckModalityHost: false,
    DicomAlwaysAllowEcho: true,
    DicomAlwaysAllowStore: true,
    DicomAlwaysAllowFind: false,
    DicomAlwaysAllowGet: false,
    DicomAlwaysAllowMove: false,
    UnknownSopClassAccepted: true,
    DicomScpTimeout: 30,
    DicomScuTimeout: 10,
    DicomModalities: modalities,
    DicomModalitiesInDatabase: false,
    OrthancPeers: {},
    SaveJobs: false,
    StableAge: 2,
    ExecuteLuaEnabled: false,
    LuaScripts: [],
    ...(opts.tls !== undefined
      ? {
          DicomTlsEnabled: true,
          DicomTlsCertificate: opts.tls.cert,
          DicomTlsPrivateKey: opts.tls.key,
          DicomTlsTrustedCertificates: opts.tls.ca,
          DicomTlsRemoteCertificateRequired: opts.tls.requireClientCert,
        }
      : { DicomTlsEnabled: false }),
    ...opts.extraConfig,
  };
  const configPath = join(opts.dir, 'orthanc.json');
  await writeFile(configPath, JSON.stringify(config, null, 2));
  const child = procs.spawn('Orthanc', ['--no-jobs', configPath], { name: 'Orthanc', cwd: opts.dir });

  const rest = (method: string, path: string, body?: Buffer | string | object): Promise<HttpResult> => {
    if (body === undefined || typeof body === 'string' || Buffer.isBuffer(body)) {
      return httpRequest(httpPort, method, path, body);
    }
    return httpRequest(httpPort, method, path, JSON.stringify(body), 'application/json');
  };

  const deadline = Date.now() + (opts.startTimeoutMs ?? 30_000);
  for (;;) {
    if (!procs.isRunning(child)) throw new Error(`Orthanc exited during startup: ${procs.describe(child)}`);
    try {
      const r = await httpRequest(httpPort, 'GET', '/system', undefined, undefined, 2000);
      if (r.status === 200) break;
    } catch {
      // not up yet
    }
    if (Date.now() > deadline)
      throw new Error(`Orthanc did not answer /system in time: ${procs.describe(child)}`);
    await sleep(100);
  }
  await waitForListen(dicomPort, { procs, child, timeoutMs: Math.max(1000, deadline - Date.now()) });

  return {
    dicomPort,
    httpPort,
    pid: child.pid ?? -1,
    child,
    configPath,
    rest,
    async upload(file: Buffer): Promise<string> {
      const r = await httpRequest(httpPort, 'POST', '/instances', file, 'application/dicom');
      if (r.status !== 200) throw new Error(`Orthanc upload failed: HTTP ${r.status} ${r.text()}`);
      const id = r.json<{ ID?: string }>().ID;
      if (typeof id !== 'string') throw new Error(`Orthanc upload: no ID in ${r.text()}`);
      return id;
    },
  };
}
