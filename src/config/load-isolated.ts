// Reading and validating the configuration in a short-lived worker thread, for the daemon.
//
// The YAML parser and the schema library are large (≈ 7 MB of V8 heap and ≈ 20 MB of RSS once loaded,
// measured on Node 26), and whatever the relay's isolate holds, every mark-compact must walk again while
// associations are relayed. The daemon therefore never loads them: `start` and every reload validate in a
// worker that exits afterwards, and receive the frozen ProxyConfig (plain data) back. Errors come back as
// the same ConfigError (file, line, key) the in-process loader throws. One-shot commands (check-config,
// status, demo) keep using loadConfig directly.
import { Worker } from 'node:worker_threads';
import { deepFreeze } from './defaults.js';
import { ConfigError, type ConfigIssue } from './errors.js';
import type { ProxyConfig } from './types.js';

/** What the worker posts back (src/config/load-worker.ts). */
export type LoadReply =
  | { ok: true; config: ProxyConfig; nullPrototype: Array<Array<string | number>> }
  | { ok: false; kind: 'config'; file: string | null; issues: ConfigIssue[] }
  | { ok: false; kind: 'error'; message: string };

/** The worker's own heap is bounded: a configuration is a few KB, its schema a few MB. */
const WORKER_LIMITS = { maxOldGenerationSizeMb: 64, maxYoungGenerationSizeMb: 16 };

export function loadConfigIsolated(path: string): Promise<ProxyConfig> {
  return new Promise((resolve, reject) => {
    let settled = false;
    const worker = new Worker(new URL('./load-worker.js', import.meta.url), {
      workerData: { path },
      resourceLimits: WORKER_LIMITS,
      stdout: false,
      stderr: false,
    });
    worker.once('message', (reply: LoadReply) => {
      settled = true;
      if (reply.ok) resolve(deepFreeze(restoreNullPrototypes(reply.config, reply.nullPrototype)));
      else if (reply.kind === 'config') reject(new ConfigError(reply.file, reply.issues));
      else reject(new Error(reply.message));
      void worker.terminate();
    });
    worker.once('error', (err) => {
      if (settled) return;
      settled = true;
      reject(new Error(`configuration loader failed: ${err.message}`, { cause: err }));
    });
    worker.once('exit', (code) => {
      if (settled) return;
      settled = true;
      reject(new Error(`configuration loader exited with code ${code} before answering`));
    });
  });
}

type Path = Array<string | number>;

/**
 * Where the configuration holds null-prototype objects (maps keyed by AE title or upstream name, so that
 * a key such as `constructor` or `__proto__` is only ever data). Structured cloning gives every object
 * Object.prototype back, so the worker lists them and the receiving side restores them.
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
