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
import { checkOwnCertificate, type MaterialFinding, type OwnCertificateSpec } from '../tls/keys.js';

export interface RuntimeSnapshot {
  readonly config: ProxyConfig;
  readonly policy: Policy;
  readonly upstreamTls: ReadonlyMap<string, UpstreamTlsContext>;
  /** The return listener's server context; null when no return listener is configured. */
  readonly returnTls: ServerTlsContext | null;
  /** The ledger's Ed25519 signing key (PEM), read and checked at load; null when not configured. */
  readonly ledgerSigningKeyPem: string | null;
  /** The proxy's own certificates that expire within tls.expiryWarning (logged at start and reload). */
  readonly certificateWarnings: readonly CertificateWarning[];
  readonly loadedAt: Date;
}

export interface CertificateWarning {
  /** The config key naming the certificate, e.g. "upstreams.archive.tls.cert". */
  path: string;
  file: string;
  message: string;
  notAfter: Date;
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
  return configProblems(config, [{ keyPath: path, message }]);
}

/** A ConfigError listing each problem at the key that names it (and its line, when the file is known). */
function configProblems(
  config: ProxyConfig,
  problems: readonly { keyPath: string[]; message: string }[],
): ConfigError {
  let text: string | null = null;
  let locateInText: typeof import('../config/locate.js').locateInText | null = null;
  try {
    if (config.sourcePath) {
      locateInText = (requireLocal('../config/locate.js') as typeof import('../config/locate.js'))
        .locateInText;
      text = readFileSync(config.sourcePath, 'utf8');
    }
  } catch {
    text = null;
  }
  return new ConfigError(
    config.sourcePath,
    problems.map(({ keyPath, message }) => {
      let pos: ReturnType<typeof import('../config/locate.js').locateInText> = null;
      try {
        if (text !== null && locateInText) pos = locateInText(text, keyPath);
      } catch {
        // the problem is still reported, without its line
      }
      return { path: keyPath.join('.'), line: pos?.line ?? null, column: pos?.column ?? null, message };
    }),
  );
}

/** Every certificate/key pair the proxy presents: upstream client, return listener server, audit client. */
export function ownCertificateSpecs(config: ProxyConfig): OwnCertificateSpec[] {
  const specs: OwnCertificateSpec[] = [];
  const pair = (at: string[], t: { cert: string; key: string }, role: 'client' | 'server'): void => {
    specs.push({ cert: t.cert, key: t.key, certPath: [...at, 'cert'], keyPath: [...at, 'key'], role });
  };
  for (const [name, u] of Object.entries(config.upstreams)) pair(['upstreams', name, 'tls'], u.tls, 'client');
  if (config.returnListener) pair(['returnListener', 'tls'], config.returnListener.tls, 'server');
  if (config.audit?.syslog) pair(['audit', 'syslog', 'tls'], config.audit.syslog.tls, 'client');
  return specs;
}

/**
 * Check the proxy's own certificates and keys (tls/keys.ts checkOwnCertificate); throws a ConfigError with
 * every problem, each at the key naming the file, and returns the expiry warnings.
 */
function checkOwnCertificates(config: ProxyConfig): CertificateWarning[] {
  const errors: MaterialFinding[] = [];
  const warnings: CertificateWarning[] = [];
  for (const spec of ownCertificateSpecs(config)) {
    const r = checkOwnCertificate(spec, { warningMs: config.tls.expiryWarningMs });
    errors.push(...r.errors);
    for (const w of r.warnings)
      warnings.push({ path: w.path, file: w.file, message: w.message, notAfter: w.notAfter });
  }
  if (errors.length > 0) throw configProblems(config, errors);
  return warnings;
}

/** Build a snapshot; throws (ConfigError-like or TlsMaterialError) without side effects on failure. */
export function buildRuntimeSnapshot(config: ProxyConfig): RuntimeSnapshot {
  const policy = compilePolicy(config);
  const certificateWarnings = checkOwnCertificates(config);
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
    certificateWarnings,
    loadedAt: new Date(),
  });
}
