/** Largest delay Node timers accept (2^31 - 1 ms); longer values silently fire after 1 ms. */
export const MAX_DURATION_MS = 2_147_483_647;

const UNIT_MS = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 } as const;
const DURATION_RE = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/;

export type DurationResult = { ok: true; ms: number } | { ok: false; message: string };

/**
 * Parses a configuration duration: `500ms`, `10s`, `5m`, `1h`, or a bare number of seconds (YAML number or
 * numeric string). Result is a positive whole number of milliseconds no larger than MAX_DURATION_MS.
 */
export function parseDuration(value: unknown): DurationResult {
  let amount: number;
  let unit: keyof typeof UNIT_MS = 's';
  if (typeof value === 'number') {
    amount = value;
  } else if (typeof value === 'string') {
    const match = DURATION_RE.exec(value);
    if (match === null || match[1] === undefined) {
      return {
        ok: false,
        message: `invalid duration "${value}": use e.g. 500ms, 10s, 5m, 1h or a number of seconds`,
      };
    }
    amount = Number(match[1]);
    unit = (match[2] as keyof typeof UNIT_MS | undefined) ?? 's';
  } else {
    return { ok: false, message: 'expected a duration such as 500ms, 10s, 5m, 1h or a number of seconds' };
  }
  if (!Number.isFinite(amount) || amount < 0) {
    return { ok: false, message: `invalid duration ${String(value)}: must be a positive amount` };
  }
  const ms = Math.round(amount * UNIT_MS[unit]);
  if (ms <= 0) return { ok: false, message: `invalid duration ${String(value)}: must be at least 1ms` };
  if (ms > MAX_DURATION_MS) {
    return {
      ok: false,
      message: `invalid duration ${String(value)}: must not exceed ${MAX_DURATION_MS}ms (~24.8 days)`,
    };
  }
  return { ok: true, ms };
}
