/**
 * The `audit:` configuration section: the DICOM audit trail (PS3.15 A.5 messages, IHE ATNA) written to a
 * local file and/or sent to an Audit Record Repository with RFC 5424 syslog over TLS (RFC 5425).
 *
 *   audit:
 *     sourceId: dimse-tls-proxy@host      # AuditSourceIdentification@AuditSourceID (PS3.15 A.5.1)
 *     enterpriseSiteId: null              # AuditSourceIdentification@AuditEnterpriseSiteID
 *     file: null                          # local file, one XML message per line, appended
 *     maxInstancesPerMessage: 500         # Instance UIDs listed in one "DICOM Instances Transferred"
 *     patientNames: true                  # Patient's Name in the Patient participant object (false: left out)
 *     syslog:                             # optional
 *       host: audit.example.org
 *       port: 6514                        # RFC 5425 section 4.1
 *       tls: { ca: ..., cert: ..., key: ..., serverName: ..., verifyHostname: true, profile: bcp195 }
 *       spoolDir: var/audit-spool         # durable buffer while the repository is unreachable
 *       spoolMaxBytes: 104857600          # bound of the spool; beyond it new messages are refused + alarm
 *       appName: dimse-tls-proxy          # RFC 5424 APP-NAME
 *       hostname: <os.hostname()>         # RFC 5424 HOSTNAME
 *       connectTimeout: 10s
 *       reconnectMin: 1s                  # reconnect backoff, doubled per failure up to reconnectMax
 *       reconnectMax: 60s
 *       closeTimeout: 5s                  # how long shutdown waits for the spool to drain
 *
 * Like src/config/schema.ts, every object is strict (an unknown key is an error) and the schema's output
 * keeps "absent" distinguishable; defaults are applied by resolveAuditConfig. Durations come out in
 * milliseconds, paths absolute (relative ones are resolved against the configuration file's directory).
 *
 * Spool bound policy: when the spool is full the newest message is refused (and an alarm raised carrying
 * the refused message), the oldest spooled messages are never dropped. An audit trail with a hole at its
 * end is detectable (the alarm, the refused counter, an "Audit Recording Stopped" alert once space is
 * back); a trail silently missing its oldest records is not.
 */
import { hostname as osHostname } from 'node:os';
import { resolve } from 'node:path';
import { z } from 'zod';
import { parseDuration } from './duration.js';
import { ConfigError, type ConfigIssue } from './errors.js';
import { formatPath } from './locate.js';
import { errorMap } from './messages.js';
import { clientTlsSchema, durationSchema, filePathSchema, hostSchema } from './primitives.js';
import type { TlsProfileName } from './tls-profile-names.js';

/** RFC 5425 section 4.1: the port assigned to syslog over TLS. */
export const SYSLOG_TLS_PORT = 6514;
export const AUDIT_SPOOL_MIN_BYTES = 64 * 1024;
export const AUDIT_SPOOL_MAX_BYTES = 1024 * 1024 * 1024 * 1024;

/** Defaults, in the units of the YAML surface (see config/defaults.ts for the convention). */
export const AUDIT_DEFAULTS = Object.freeze({
  // sourceId defaults to "dimse-tls-proxy@<hostname>".
  enterpriseSiteId: null,
  file: null,
  maxInstancesPerMessage: 500,
  patientNames: true,
  syslog: Object.freeze({
    port: SYSLOG_TLS_PORT,
    spoolDir: 'var/audit-spool',
    spoolMaxBytes: 104_857_600,
    appName: 'dimse-tls-proxy',
    // hostname defaults to os.hostname().
    connectTimeout: '10s',
    reconnectMin: '1s',
    reconnectMax: '60s',
    closeTimeout: '5s',
    tls: Object.freeze({
      // serverName defaults to the syslog host.
      verifyHostname: true,
      profile: 'bcp195' as TlsProfileName,
    }),
  }),
});

/** RFC 5424 section 6: header fields are PRINTUSASCII (%d33-126) of bounded length. */
function printUsAscii(max: number) {
  return z
    .string()
    .min(1)
    .max(max)
    .regex(/^[\x21-\x7e]+$/, { message: 'must be printable US-ASCII without spaces (RFC 5424 section 6)' });
}

/** XML token text for an attribute (PS3.15 A.5.1): no control characters. */
const tokenSchema = z
  .string()
  .min(1)
  .max(256)
  // eslint-disable-next-line no-control-regex -- control characters are exactly what is rejected
  .regex(/^[^\x00-\x1f\x7f]+$/, { message: 'must not contain control characters' });

export const auditSyslogTlsSchema = clientTlsSchema;

export const auditSyslogSchema = z.strictObject({
  host: hostSchema,
  port: z.int().min(1).max(65535).optional(),
  tls: auditSyslogTlsSchema,
  spoolDir: filePathSchema.optional(),
  spoolMaxBytes: z.int().min(AUDIT_SPOOL_MIN_BYTES).max(AUDIT_SPOOL_MAX_BYTES).optional(),
  appName: printUsAscii(48).optional(),
  hostname: printUsAscii(255).optional(),
  connectTimeout: durationSchema.optional(),
  reconnectMin: durationSchema.optional(),
  reconnectMax: durationSchema.optional(),
  closeTimeout: durationSchema.optional(),
});

export const auditSchema = z.strictObject({
  sourceId: tokenSchema.optional(),
  enterpriseSiteId: tokenSchema.nullable().optional(),
  file: filePathSchema.nullable().optional(),
  maxInstancesPerMessage: z.int().min(1).max(100_000).optional(),
  patientNames: z.boolean().optional(),
  syslog: auditSyslogSchema.nullable().optional(),
});

export type RawAudit = z.output<typeof auditSchema>;

export interface AuditSyslogTlsConfig {
  /** Absolute path of the PEM CA bundle that verifies the repository's certificate. */
  ca: string;
  /** Absolute path of the proxy's PEM client certificate (chain). */
  cert: string;
  /** Absolute path of the proxy's PEM private key. */
  key: string;
  /** Name verified in the repository's certificate (and sent as SNI unless an IP); defaults to host. */
  serverName: string;
  verifyHostname: boolean;
  profile: TlsProfileName;
}

export interface AuditSyslogConfig {
  host: string;
  port: number;
  tls: AuditSyslogTlsConfig;
  /** Absolute path of the spool directory. */
  spoolDir: string;
  spoolMaxBytes: number;
  appName: string;
  hostname: string;
  connectTimeoutMs: number;
  reconnectMinMs: number;
  reconnectMaxMs: number;
  closeTimeoutMs: number;
}

/** The resolved `audit` section: durations in ms, paths absolute. */
export interface AuditConfig {
  sourceId: string;
  enterpriseSiteId: string | null;
  /** Absolute path of the local audit file; null = none. */
  file: string | null;
  maxInstancesPerMessage: number;
  /** Write Patient's Name into the Patient participant objects (a site's policy may say no). */
  patientNames: boolean;
  syslog: AuditSyslogConfig | null;
}

export interface ResolveAuditOptions {
  /** Host name for the defaults of sourceId and syslog.hostname (default os.hostname()). */
  hostname?: string;
}

function ms(value: number | undefined, fallback: string): number {
  if (value !== undefined) return value;
  const parsed = parseDuration(fallback);
  if (!parsed.ok) throw new Error(`bad built-in duration ${fallback}`);
  return parsed.ms;
}

/**
 * Applies defaults to an `audit` section already validated by auditSchema (absent or null = defaults:
 * no file, no syslog, so no audit output). Relative paths are resolved against `baseDir`.
 */
export function resolveAuditConfig(
  raw: RawAudit | null | undefined,
  baseDir: string,
  opts: ResolveAuditOptions = {},
): AuditConfig {
  const host = opts.hostname ?? osHostname();
  const a = raw ?? {};
  const file = (p: string): string => resolve(baseDir, p);
  const s = a.syslog ?? null;
  const D = AUDIT_DEFAULTS.syslog;
  const syslog: AuditSyslogConfig | null =
    s === null
      ? null
      : {
          host: s.host,
          port: s.port ?? D.port,
          tls: {
            ca: file(s.tls.ca),
            cert: file(s.tls.cert),
            key: file(s.tls.key),
            serverName: s.tls.serverName ?? s.host,
            verifyHostname: s.tls.verifyHostname ?? D.tls.verifyHostname,
            profile: (s.tls.profile as TlsProfileName | undefined) ?? D.tls.profile,
          },
          spoolDir: file(s.spoolDir ?? D.spoolDir),
          spoolMaxBytes: s.spoolMaxBytes ?? D.spoolMaxBytes,
          appName: s.appName ?? D.appName,
          hostname: s.hostname ?? (sanitizeHostname(host) || '-'),
          connectTimeoutMs: ms(s.connectTimeout, D.connectTimeout),
          reconnectMinMs: ms(s.reconnectMin, D.reconnectMin),
          reconnectMaxMs: ms(s.reconnectMax, D.reconnectMax),
          closeTimeoutMs: ms(s.closeTimeout, D.closeTimeout),
        };
  return {
    sourceId: a.sourceId ?? `dimse-tls-proxy@${host}`,
    enterpriseSiteId: a.enterpriseSiteId ?? AUDIT_DEFAULTS.enterpriseSiteId,
    file: a.file === undefined || a.file === null ? null : file(a.file),
    maxInstancesPerMessage: a.maxInstancesPerMessage ?? AUDIT_DEFAULTS.maxInstancesPerMessage,
    patientNames: a.patientNames ?? AUDIT_DEFAULTS.patientNames,
    syslog,
  };
}

function sanitizeHostname(name: string): string {
  return name.replace(/[^\x21-\x7e]/g, '').slice(0, 255);
}

/** Checks that relate several values of the section; paths are relative to `audit`. */
export function auditCrossIssues(config: AuditConfig): { path: (string | number)[]; message: string }[] {
  const issues: { path: (string | number)[]; message: string }[] = [];
  const s = config.syslog;
  if (s !== null && s.reconnectMaxMs < s.reconnectMinMs) {
    issues.push({
      path: ['syslog', 'reconnectMax'],
      message: `must be at least reconnectMin (${s.reconnectMinMs}ms), got ${s.reconnectMaxMs}ms`,
    });
  }
  return issues;
}

/**
 * Validates the raw `audit` value of a configuration document (as parsed from YAML) and resolves it.
 * Throws ConfigError whose issue paths start with `audit`. Used standalone (tests, tools); the main loader
 * embeds auditSchema in its root schema and calls resolveAuditConfig itself.
 */
export function parseAuditConfig(
  raw: unknown,
  baseDir: string,
  opts: ResolveAuditOptions & { sourcePath?: string | null } = {},
): AuditConfig {
  const result = auditSchema.nullable().optional().safeParse(raw, { error: errorMap });
  if (!result.success) {
    const issues: ConfigIssue[] = result.error.issues.map((issue) => ({
      path: formatPath(['audit', ...issue.path.filter((p): p is string | number => typeof p !== 'symbol')]),
      line: null,
      column: null,
      message: issue.message,
    }));
    throw new ConfigError(opts.sourcePath ?? null, issues);
  }
  const config = resolveAuditConfig(result.data, baseDir, opts);
  const cross = auditCrossIssues(config);
  if (cross.length > 0) {
    throw new ConfigError(
      opts.sourcePath ?? null,
      cross.map((c) => ({
        path: formatPath(['audit', ...c.path]),
        line: null,
        column: null,
        message: c.message,
      })),
    );
  }
  return config;
}
