/**
 * The `tls:` configuration section: settings that apply to every TLS endpoint of the proxy (the upstream
 * archives, the return listener, the audit repository), next to the per-endpoint `tls:` blocks that name
 * the certificate files.
 *
 *   tls:
 *     expiryWarning: 30d    # warn when one of the proxy's own certificates expires within this window
 */
import { z } from 'zod';

const DAY_MS = 86_400_000;
const UNIT_MS = { d: DAY_MS, h: 3_600_000, m: 60_000, s: 1000 } as const;
/** At most ten years; 0 turns the warning off. */
export const EXPIRY_WARNING_MAX_MS = 3650 * DAY_MS;

/** `30d`, `720h`, `0`: a whole number with an optional unit d / h / m / s (default d). */
export function parseExpiryWindow(value: unknown): { ok: true; ms: number } | { ok: false; message: string } {
  const text = typeof value === 'number' ? String(value) : value;
  const m = typeof text === 'string' ? /^(\d+)(d|h|m|s)?$/.exec(text.trim()) : null;
  if (!m) {
    return {
      ok: false,
      message: `must be a whole number of days (30d), hours (720h), minutes or seconds, got ${JSON.stringify(value)}`,
    };
  }
  const ms = Number(m[1]) * UNIT_MS[(m[2] ?? 'd') as keyof typeof UNIT_MS];
  if (ms > EXPIRY_WARNING_MAX_MS)
    return { ok: false, message: `must be at most 3650d, got ${String(value)}` };
  return { ok: true, ms };
}

export const tlsPolicySchema = z.strictObject({
  expiryWarning: z
    .unknown()
    .transform((value, ctx) => {
      const r = parseExpiryWindow(value);
      if (!r.ok) {
        ctx.addIssue({ code: 'custom', message: r.message });
        return z.NEVER;
      }
      return r.ms;
    })
    .optional(),
});
