// Everything an association needs from the configuration, built once per (re)load and never mutated:
// a live association keeps the snapshot it started with.
//
// Layer runtime/ (README "Layers"): above config, tls, policy and integrity, whose parts it assembles, and
// below relay, which only reads a snapshot. Nothing here imports relay/.
import { readFileSync } from 'node:fs';
import { createPrivateKey } from 'node:crypto';
import type { ProxyConfig } from '../config/types.js';
import { ConfigError } from '../config/errors.js';
import { createRequire } from 'node:module';
import { compilePolicy, type Policy } from '../policy/policy.js';
import { buildServerTlsContext, type ServerTlsContext } from '../tls/identity.js';
import { buildUpstreamTlsContext, TlsMaterialError, type UpstreamTlsContext } from '../tls/upstream.js';

export interface RuntimeSnapshot {
  readonly config: ProxyConfig;
  readonly policy: Policy;
  readonly upstreamTls: ReadonlyMap<string, UpstreamTlsContext>;
  /** The return listener's server context; null when no return listener is configured. */
  readonly returnTls: ServerTlsContext | null;
  /** The ledger's Ed25519 signing key (PEM), read and checked at load; null when not configured. */
  readonly ledgerSigningKeyPem: string | null;
  readonly loadedAt: Date;
}

/** Read `ledger.signingKey` and check it is an Ed25519 private key; errors name the key and its line. */
function loadSigningKey(config: ProxyConfig, file: string): string {
  let problem: string;
  try {
    const pem = readFileSync(file, 'utf8');
    const key = createPrivateKey(pem);
    if (key.asymmetricKeyType === 'ed25519') return pem;
    problem = `${file} is a ${key.asymmetricKeyType ?? 'non-asymmetric'} key, the ledger signs with Ed25519`;
  } catch (err) {
    problem = `cannot load the ledger signing key ${file}: ${(err as Error).message}`;
  }
  throw configProblem(config, ['ledger', 'signingKey'], problem);
}

// The YAML library is loaded only to place an error (the daemon does not otherwise load it).
const requireLocal = createRequire(import.meta.url);

function configProblem(config: ProxyConfig, path: string[], message: string): ConfigError {
  let pos = null;
  try {
    if (config.sourcePath) {
      const { locateInText } = requireLocal('../config/locate.js') as typeof import('../config/locate.js');
      pos = locateInText(readFileSync(config.sourcePath, 'utf8'), path);
    }
  } catch {
    pos = null;
  }
  return new ConfigError(config.sourcePath, [
    { path: path.join('.'), line: pos?.line ?? null, column: pos?.column ?? null, message },
  ]);
}

/** Build a snapshot; throws (ConfigError-like or TlsMaterialError) without side effects on failure. */
export function buildRuntimeSnapshot(config: ProxyConfig): RuntimeSnapshot {
  const policy = compilePolicy(config);
  const upstreamTls = new Map<string, UpstreamTlsContext>();
  for (const [name, upstream] of Object.entries(config.upstreams)) {
    try {
      upstreamTls.set(name, buildUpstreamTlsContext(upstream.tls));
    } catch (err) {
      if (!(err instanceof TlsMaterialError)) throw err;
      // Report it like any other config problem: the key that names the file, and its line.
      const field = (['cert', 'key', 'ca'] as const).find((f) => upstream.tls[f] === err.file) ?? 'cert';
      throw configProblem(config, ['upstreams', name, 'tls', field], err.message);
    }
  }
  let returnTls: ServerTlsContext | null = null;
  const rl = config.returnListener;
  if (rl) {
    try {
      returnTls = buildServerTlsContext(rl.tls);
    } catch (err) {
      if (!(err instanceof TlsMaterialError)) throw err;
      const field = (['cert', 'key', 'ca'] as const).find((f) => rl.tls[f] === err.file) ?? 'cert';
      throw configProblem(config, ['returnListener', 'tls', field], err.message);
    }
  }
  const ledgerSigningKeyPem = config.ledger.signingKey
    ? loadSigningKey(config, config.ledger.signingKey)
    : null;
  return Object.freeze({
    config,
    policy,
    upstreamTls,
    returnTls,
    ledgerSigningKeyPem,
    loadedAt: new Date(),
  });
}
