// Reading and validating the configuration in a short-lived child process, for the daemon.
//
// The YAML parser and the schema library are large (≈ 7 MB of V8 heap and ≈ 20 MB of RSS once loaded,
// measured on Node 26), and whatever the relay's isolate holds, every mark-compact must walk again while
// associations are relayed. The daemon therefore never loads them: `start` and every reload validate in a
// child process (the same node binary) that prints the ProxyConfig (plain data) as JSON and exits.
// Errors come back as the same ConfigError (file, line, key) the in-process loader throws. One-shot commands (check-config,
// status, demo) keep using loadConfig directly.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { deepFreeze } from './defaults.js';
import { ConfigError, type ConfigIssue } from './errors.js';
import type { ProxyConfig } from './types.js';

/** What the loader prints (src/config/load-worker.ts). */
export type LoadReply =
  | { ok: true; config: ProxyConfig; nullPrototype: Array<Array<string | number>> }
  | { ok: false; kind: 'config'; file: string | null; issues: ConfigIssue[] }
  | { ok: false; kind: 'error'; message: string };

/** The loader's own heap is bounded: a configuration is a few KB, its schema a few MB. */
const LOADER_HEAP_MB = 64;
/** Longest a configuration may take to load (it reads a few small files). */
const LOADER_TIMEOUT_MS = 30_000;

export function loadConfigIsolated(path: string): Promise<ProxyConfig> {
  return new Promise((resolve, reject) => {
    // A child process rather than a worker thread: when it exits, all of its memory goes back to the
    // system (a worker thread's malloc arena stays in this process: +9 MB RSS measured).
    const child = spawn(
      process.execPath,
      [
        ...loaderFlags(process.execArgv),
        `--max-old-space-size=${LOADER_HEAP_MB}`,
        fileURLToPath(new URL('./load-worker.js', import.meta.url)),
        path,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'], timeout: LOADER_TIMEOUT_MS, killSignal: 'SIGKILL' },
    );
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => err.push(c));
    child.once('error', (e) =>
      reject(new Error(`configuration loader failed to start: ${e.message}`, { cause: e })),
    );
    child.once('close', (code, signal) => {
      let reply: LoadReply;
      try {
        reply = JSON.parse(Buffer.concat(out).toString('utf8')) as LoadReply;
      } catch {
        const detail = Buffer.concat(err).toString('utf8').trim().slice(-2000);
        reject(
          new Error(
            `configuration loader exited (${signal ?? `code ${code}`}) without an answer${detail ? `: ${detail}` : ''}`,
          ),
        );
        return;
      }
      if (reply.ok) resolve(deepFreeze(restoreNullPrototypes(reply.config, reply.nullPrototype)));
      else if (reply.kind === 'config') reject(new ConfigError(reply.file, reply.issues));
      else reject(new Error(reply.message));
    });
  });
}

/** Module-loading flags only (a TypeScript loader in tests): not --inspect, --cpu-prof and the like. */
const LOADER_FLAGS = new Set([
  '--import',
  '--require',
  '-r',
  '--loader',
  '--experimental-loader',
  '--conditions',
  '-C',
]);

function loaderFlags(execArgv: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < execArgv.length; i++) {
    const a = execArgv[i] as string;
    const name = a.split('=')[0] as string;
    if (!LOADER_FLAGS.has(name)) continue;
    out.push(a);
    if (!a.includes('=') && i + 1 < execArgv.length) out.push(execArgv[++i] as string);
  }
  return out;
}

type Path = Array<string | number>;

/**
 * Where the configuration holds null-prototype objects (maps keyed by AE title or upstream name, so that
 * a key such as `constructor` or `__proto__` is only ever data). JSON gives every object Object.prototype
 * back, so the loader lists them and the receiving side restores them.
 */
export function nullPrototypePaths(value: unknown, path: Path = [], out: Path[] = []): Path[] {
  if (value === null || typeof value !== 'object') return out;
  if (Array.isArray(value)) {
    value.forEach((v, i) => nullPrototypePaths(v, [...path, i], out));
    return out;
  }
  if (Object.getPrototypeOf(value) === null) out.push(path);
  for (const [k, v] of Object.entries(value)) nullPrototypePaths(v, [...path, k], out);
  return out;
}

function restoreNullPrototypes<T>(root: T, paths: readonly Path[]): T {
  // Deepest first, so a parent copies children that are already restored.
  const sorted = [...paths].sort((a, b) => b.length - a.length);
  let out: unknown = root;
  for (const path of sorted) {
    if (path.length === 0) {
      out = Object.assign(Object.create(null) as object, out);
      continue;
    }
    let parent = out as Record<string | number, unknown>;
    for (const key of path.slice(0, -1)) parent = parent[key] as Record<string | number, unknown>;
    const last = path[path.length - 1] as string | number;
    parent[last] = Object.assign(Object.create(null) as object, parent[last]);
  }
  return out as T;
}
