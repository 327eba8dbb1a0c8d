import { z } from 'zod';
import { describeValue } from './messages.js';
import { parseAddressRange } from './address.js';
import { adminSchema } from './admin.js';
import { auditSchema } from './audit.js';
import { tlsPolicySchema } from './tls-policy.js';
import { parseDuration } from './duration.js';
import { clientTlsSchema, durationSchema, filePathSchema, hostSchema } from './primitives.js';
import { aeTitleError, trimAeTitle, uidError } from './syntax.js';
import {
  LEDGER_FAILURE_MODES,
  LEDGER_FSYNC_MODES,
  LOG_LEVELS,
  SERVICE_NAMES,
  TLS_PROFILE_NAMES,
  WORKER_BALANCE_MODES,
} from './types.js';

/**
 * Zod schemas for the YAML surface. They check each value on its own (type, syntax, range); checks that
 * relate several values (routes -> upstreams, duplicates, mapping keys) live in load.ts. Every object is
 * strict: an unknown key is an error. Defaults are not applied here but from DEFAULTS when the snapshot is
 * built, so these schemas' outputs keep "absent" distinguishable.
 */

export const aeTitleSchema = z.string().transform((value, ctx) => {
  const trimmed = trimAeTitle(value);
  const problem = aeTitleError(trimmed);
  if (problem !== null) {
    ctx.addIssue({ code: 'custom', message: problem });
    return z.NEVER;
  }
  return trimmed;
});

/** A duration (see durationSchema) no longer than `maxMs`; `maxText` is how the limit is written in the file. */
function durationAtMost(maxMs: number, maxText: string) {
  return z.unknown().transform((value, ctx) => {
    const result = parseDuration(value);
    if (!result.ok) {
      ctx.addIssue({ code: 'custom', message: result.message });
      return z.NEVER;
    }
    if (result.ms > maxMs) {
      ctx.addIssue({
        code: 'custom',
        message: `duration ${String(value)} is too long: must be at most ${maxText}`,
      });
      return z.NEVER;
    }
    return result.ms;
  });
}

const uidSchema = z.string().superRefine((value, ctx) => {
  const problem = uidError(value);
  if (problem !== null) ctx.addIssue({ code: 'custom', message: problem });
});

const addressSchema = z.string().superRefine((value, ctx) => {
  const result = parseAddressRange(value);
  if (!result.ok) ctx.addIssue({ code: 'custom', message: result.message });
});

const positiveInt = z.int().min(1);

const optionalDuration = durationSchema.optional();

/** PROXY protocol from load balancers in front of a listener (relay/proxy-protocol.ts). */
export const proxyProtocolSchema = z.strictObject({
  from: z.array(addressSchema).min(1),
  headerTimeout: optionalDuration,
});

export const listenSchema = z.strictObject({
  host: hostSchema.optional(),
  port: z.int().min(0).max(65535).optional(),
  proxyProtocol: proxyProtocolSchema.nullable().optional(),
});

export const upstreamTlsSchema = clientTlsSchema;

export const upstreamSchema = z.strictObject({
  host: hostSchema,
  port: z.int().min(1).max(65535),
  aeTitle: aeTitleSchema,
  callingAeTitle: aeTitleSchema.nullable().optional(),
  connectTimeout: optionalDuration,
  tls: upstreamTlsSchema,
});

export const routeSchema = z.strictObject({
  calledAeTitle: aeTitleSchema,
  upstream: z.string().min(1),
});

export const receiverSchema = z.strictObject({
  host: hostSchema,
  port: z.int().min(1).max(65535),
  aeTitle: aeTitleSchema.optional(),
  callingAeTitle: aeTitleSchema.nullable().optional(),
  connectTimeout: optionalDuration,
});

const serviceSchema = z.enum(SERVICE_NAMES as [string, ...string[]]);

export const peerSchema = z.strictObject({
  addresses: z.array(addressSchema).min(1),
  services: z.array(serviceSchema).min(1),
  moveDestinations: z.array(aeTitleSchema).optional(),
  maxAssociations: positiveInt.nullable().optional(),
  sopClasses: z.array(uidSchema).optional(),
  receiver: receiverSchema.nullable().optional(),
});

/** Exactly one of dns / ip / uri / cn (checked in load.ts so the message can name the keys). */
export const identitySchema = z.strictObject({
  dns: z.string().min(1).optional(),
  ip: z.string().min(1).optional(),
  uri: z.string().min(1).optional(),
  cn: z.string().min(1).optional(),
});

export const returnCallerSchema = z.strictObject({
  aeTitles: z.array(aeTitleSchema).min(1),
  identity: identitySchema,
  addresses: z.array(addressSchema).min(1).nullable().optional(),
  services: z.array(serviceSchema).min(1).optional(),
  maxAssociations: positiveInt.nullable().optional(),
});

export const serverTlsSchema = z.strictObject({
  ca: filePathSchema,
  cert: filePathSchema,
  key: filePathSchema,
  profile: z.enum(TLS_PROFILE_NAMES as [string, ...string[]]).optional(),
  handshakeTimeout: optionalDuration,
});

export const returnListenerSchema = z.strictObject({
  host: hostSchema.optional(),
  port: z.int().min(0).max(65535).optional(),
  tls: serverTlsSchema,
  callers: z.array(returnCallerSchema).min(1),
  proxyProtocol: proxyProtocolSchema.nullable().optional(),
});

export const limitsSchema = z.strictObject({
  maxAssociations: positiveInt.optional(),
  maxAssociationsPerPeer: positiveInt.optional(),
  associationRequestTimeout: optionalDuration,
  idleTimeout: optionalDuration,
  maxPduLength: z.int().min(4096).max(16_777_216).optional(),
  drainTimeout: optionalDuration,
  relayBuffer: z.int().min(65_536).max(67_108_864).optional(),
  relayBufferTotal: z.int().min(1_048_576).max(4_294_967_296).optional(),
  pendingPerAddress: z.int().min(1).max(65_536).optional(),
  pendingTotal: z.int().min(1).max(65_536).optional(),
  pendingReservedForPeers: z.int().min(0).max(65_536).optional(),
});

export const WORKERS_MAX = 64;

/** `workers: auto | N`, or the long form with the way connections are spread over them. */
const workerCountSchema = z.union([z.literal('auto'), z.int().min(1).max(WORKERS_MAX)]);
export const workersSchema = z.union([
  workerCountSchema,
  z.strictObject({
    count: workerCountSchema.optional(),
    balance: z.enum(WORKER_BALANCE_MODES).optional(),
  }),
]);

export const reloadSchema = z.strictObject({
  watch: z.boolean().optional(),
  pollInterval: optionalDuration,
});

export const loggingSchema = z.strictObject({
  level: z.enum(LOG_LEVELS).optional(),
  file: filePathSchema.nullable().optional(),
});

export const LEDGER_FSYNC_INTERVAL_MAX_MS = 10_000;
export const LEDGER_ROTATE_MIN_BYTES = 1024 * 1024;
export const LEDGER_ROTATE_MAX_BYTES = 16 * 1024 * 1024 * 1024;

export const ledgerRotateSchema = z.strictObject({
  maxBytes: z
    .int()
    .min(LEDGER_ROTATE_MIN_BYTES, {
      error: (issue) =>
        `must be at least ${String(LEDGER_ROTATE_MIN_BYTES)} (1 MiB), got ${describeValue(issue.input)}`,
    })
    .max(LEDGER_ROTATE_MAX_BYTES, {
      error: (issue) =>
        `must be at most ${String(LEDGER_ROTATE_MAX_BYTES)} (16 GiB), got ${describeValue(issue.input)}`,
    })
    .optional(),
  daily: z.boolean().optional(),
});

export const ledgerSchema = z.strictObject({
  path: filePathSchema.nullable().optional(),
  fsync: z.enum(LEDGER_FSYNC_MODES as [string, ...string[]]).optional(),
  fsyncInterval: durationAtMost(LEDGER_FSYNC_INTERVAL_MAX_MS, '10s').optional(),
  rotate: ledgerRotateSchema.nullable().optional(),
  checkpointEvery: optionalDuration,
  signingKey: filePathSchema.nullable().optional(),
  onLedgerFailure: z.enum(LEDGER_FAILURE_MODES as [string, ...string[]]).optional(),
  witness: z
    .strictObject({
      file: filePathSchema.nullable().optional(),
      syslog: z.boolean().optional(),
    })
    .nullable()
    .optional(),
});

/** The document root. `upstreams` and `peers` are mappings checked entry by entry in load.ts. */
export const rootSchema = z.strictObject({
  listen: listenSchema.nullable().optional(),
  upstreams: z.unknown().optional(),
  routes: z.array(routeSchema).min(1),
  peers: z.unknown().optional(),
  limits: limitsSchema.nullable().optional(),
  logging: loggingSchema.nullable().optional(),
  ledger: ledgerSchema.nullable().optional(),
  returnListener: returnListenerSchema.nullable().optional(),
  reload: reloadSchema.nullable().optional(),
  workers: workersSchema.nullable().optional(),
  admin: adminSchema.nullable().optional(),
  audit: auditSchema.nullable().optional(),
  tls: tlsPolicySchema.nullable().optional(),
});

export type RawUpstream = z.output<typeof upstreamSchema>;
export type RawPeer = z.output<typeof peerSchema>;
export type RawRoot = z.output<typeof rootSchema>;

export { describeValue, errorMap } from './messages.js';
