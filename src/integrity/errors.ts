// The one error type of the integrity ledger (re-exported by writer.ts).

export type LedgerErrorCode =
  'LEDGER_WRITE_FAILED' | 'LEDGER_CORRUPT' | 'LEDGER_KEY_INVALID' | 'LEDGER_LOCKED';

export class LedgerError extends Error {
  override readonly name = 'LedgerError';
  constructor(
    readonly code: LedgerErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** `ENOSPC: no space left on device…` style text of an fs error, for messages that must name the errno. */
export function describeFsError(err: unknown): string {
  const e = err as NodeJS.ErrnoException | undefined;
  if (e && typeof e === 'object' && typeof e.message === 'string') {
    return e.code && !e.message.startsWith(e.code) ? `${e.code}: ${e.message}` : e.message;
  }
  return String(err);
}
