// Everything an association needs from the configuration, built once per (re)load and never mutated:
// a live association keeps the snapshot it started with.
import { readFileSync } from 'node:fs';
import type { ProxyConfig } from '../config/types.js';
import { ConfigError } from '../config/errors.js';
import { locateInText } from '../config/locate.js';
import { compilePolicy, type Policy } from '../policy/policy.js';
import { buildUpstreamTlsContext, TlsMaterialError, type UpstreamTlsContext } from '../tls/upstream.js';

export interface RuntimeSnapshot {
  readonly config: ProxyConfig;
  readonly policy: Policy;
  readonly upstreamTls: ReadonlyMap<string, UpstreamTlsContext>;
  readonly loadedAt: Date;
}

/** Build a snapshot; throws (ConfigError-like or TlsMaterialError) without side effects on failure. */
export function buildSnapshot(config: ProxyConfig): RuntimeSnapshot {
  const policy = compilePolicy(config);
  const upstreamTls = new Map<string, UpstreamTlsContext>();
  for (const [name, upstream] of Object.entries(config.upstreams)) {
    try {
      upstreamTls.set(name, buildUpstreamTlsContext(upstream.tls));
    } catch (err) {
      if (!(err instanceof TlsMaterialError)) throw err;
      // Report it like any other config problem: the key that names the file, and its line.
      const field = (['cert', 'key', 'ca'] as const).find((f) => upstream.tls[f] === err.file) ?? 'cert';
      const path = ['upstreams', name, 'tls', field];
      let pos = null;
      try {
        if (config.sourcePath) pos = locateInText(readFileSync(config.sourcePath, 'utf8'), path);
      } catch {
        pos = null;
      }
      throw new ConfigError(config.sourcePath, [
        { path: path.join('.'), line: pos?.line ?? null, column: pos?.column ?? null, message: err.message },
      ]);
    }
  }
  return Object.freeze({ config, policy, upstreamTls, loadedAt: new Date() });
}
