/**
 * The `admin:` section: the HTTP endpoint serving /metrics, /healthz and /readyz, and the upstream
 * readiness probe. Loopback by default: metrics and readiness name peers, upstreams and certificates, so
 * exposing them beyond the host is an explicit choice. `admin: null` disables the endpoint (and the probe).
 *
 * Same conventions as schema.ts: strict objects (an unknown key is an error), durations as parseDuration
 * accepts them (`500ms`, `10s`, `5m`, `1h`, or a number of seconds), defaults applied after validation.
 */
import { z } from 'zod';
import { parseDuration } from './duration.js';
import { ConfigError, type ConfigIssue } from './errors.js';
import { deepFreeze } from './defaults.js';
import { errorMap } from './messages.js';
import { durationSchema, hostSchema } from './primitives.js';

/** Defaults, in the units of the YAML surface (durations as written in the file). */
export const ADMIN_DEFAULTS = deepFreeze({
  host: '127.0.0.1',
  port: 9464,
  readiness: {
    interval: '15s',
    maxAge: '60s',
    timeout: '5s',
  },
} as const);

export const adminReadinessSchema = z.strictObject({
  /** How often each upstream is probed with a mutual-TLS C-ECHO. */
  interval: durationSchema.optional(),
  /** Longest time since an upstream's last successful probe for it to count as ready. */
  maxAge: durationSchema.optional(),
  /** Budget of one probe (TCP connect + TLS handshake + association + C-ECHO). */
  timeout: durationSchema.optional(),
});

/** The `admin:` mapping as written (no defaults applied; durations already in milliseconds). */
export const adminSchema = z.strictObject({
  host: hostSchema.optional(),
  port: z.int().min(0).max(65535).optional(),
  readiness: adminReadinessSchema.nullable().optional(),
});

export type RawAdmin = z.output<typeof adminSchema>;

export interface AdminReadinessConfig {
  intervalMs: number;
  maxAgeMs: number;
  timeoutMs: number;
}

/** The resolved, deep-frozen admin configuration. */
export interface AdminConfig {
  host: string;
  port: number;
  readiness: AdminReadinessConfig;
}

function defaultMs(text: string): number {
  const parsed = parseDuration(text);
  if (!parsed.ok) throw new Error(`bad built-in default duration ${text}`);
  return parsed.ms;
}

/**
 * Apply defaults to an already validated `admin:` value. `undefined` (key absent) gives the defaults,
 * `null` disables the admin endpoint. Throws ConfigError when the durations contradict each other.
 */
export function applyAdminDefaults(
  raw: RawAdmin | null | undefined,
  sourcePath: string | null = null,
): AdminConfig | null {
  if (raw === null) return null;
  const r = raw ?? {};
  const readiness = r.readiness ?? {};
  const config: AdminConfig = {
    host: r.host ?? ADMIN_DEFAULTS.host,
    port: r.port ?? ADMIN_DEFAULTS.port,
    readiness: {
      intervalMs: readiness.interval ?? defaultMs(ADMIN_DEFAULTS.readiness.interval),
      maxAgeMs: readiness.maxAge ?? defaultMs(ADMIN_DEFAULTS.readiness.maxAge),
      timeoutMs: readiness.timeout ?? defaultMs(ADMIN_DEFAULTS.readiness.timeout),
    },
  };
  const issues: ConfigIssue[] = [];
  const { intervalMs, maxAgeMs, timeoutMs } = config.readiness;
  if (maxAgeMs <= intervalMs) {
    issues.push({
      path: 'admin.readiness.maxAge',
      line: null,
      column: null,
      message: `must be longer than admin.readiness.interval (${intervalMs}ms), got ${maxAgeMs}ms: otherwise every upstream turns not ready between two probes`,
    });
  }
  if (timeoutMs >= maxAgeMs) {
    issues.push({
      path: 'admin.readiness.timeout',
      line: null,
      column: null,
      message: `must be shorter than admin.readiness.maxAge (${maxAgeMs}ms), got ${timeoutMs}ms`,
    });
  }
  if (issues.length > 0) throw new ConfigError(sourcePath, issues);
  return deepFreeze(config);
}

/**
 * Validate the raw YAML value of `admin:` (as parsed from the file, before any transformation) and apply
 * the defaults. Absent gives the defaults (127.0.0.1:9464), `null` disables (returns null). Throws
 * ConfigError listing every problem with its key path (`admin.…`); line numbers are left to the caller,
 * which holds the document (see load.ts).
 */
export function resolveAdminConfig(raw: unknown, sourcePath: string | null = null): AdminConfig | null {
  if (raw === null) return null;
  if (raw === undefined) return applyAdminDefaults(undefined, sourcePath);
  const parsed = adminSchema.safeParse(raw, { error: errorMap });
  if (!parsed.success) {
    throw new ConfigError(
      sourcePath,
      parsed.error.issues.flatMap((issue): ConfigIssue[] => {
        const path = ['admin', ...issue.path.map(String)];
        if (issue.code === 'unrecognized_keys') {
          return issue.keys.map((key) => ({
            path: [...path, key].join('.'),
            line: null,
            column: null,
            message: `unknown key "${key}"`,
          }));
        }
        return [{ path: path.join('.'), line: null, column: null, message: issue.message }];
      }),
    );
  }
  return applyAdminDefaults(parsed.data, sourcePath);
}
