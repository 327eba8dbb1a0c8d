// Value schemas shared by every part of the policy file (schema.ts and the admin and audit sections,
// which schema.ts imports, so they cannot import these from it).
import { z } from 'zod';
import { parseDuration } from './duration.js';
import { TLS_PROFILE_NAMES } from './tls-profile-names.js';

/** `500ms`, `10s`, `5m`, `1h` or a bare number of seconds (see duration.ts), as milliseconds. */
export const durationSchema = z.unknown().transform((value, ctx) => {
  const result = parseDuration(value);
  if (!result.ok) {
    ctx.addIssue({ code: 'custom', message: result.message });
    return z.NEVER;
  }
  return result.ms;
});

export const hostSchema = z
  .string()
  .min(1)
  .regex(/^[^\s/]+$/, { message: 'must be a host name or IP address without spaces or slashes' });

export const filePathSchema = z.string().min(1);

/** A TLS client's files and checks: the archive leg (upstreams.*.tls) and the audit syslog connection. */
export const clientTlsSchema = z.strictObject({
  ca: filePathSchema,
  cert: filePathSchema,
  key: filePathSchema,
  serverName: hostSchema.optional(),
  verifyHostname: z.boolean().optional(),
  profile: z.enum(TLS_PROFILE_NAMES as [string, ...string[]]).optional(),
});
