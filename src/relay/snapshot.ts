// Everything an association needs from the configuration, built once per (re)load and never mutated:
// a live association keeps the snapshot it started with.
import type { ProxyConfig } from '../config/types.js';
import { compilePolicy, type Policy } from '../policy/policy.js';
import { buildUpstreamTlsContext, type UpstreamTlsContext } from '../tls/upstream.js';

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
    upstreamTls.set(name, buildUpstreamTlsContext(upstream.tls));
  }
  return Object.freeze({ config, policy, upstreamTls, loadedAt: new Date() });
}
