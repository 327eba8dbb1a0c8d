import { AbortReason } from './constants.js';

export type PduErrorCode =
  'UNRECOGNIZED_PDU' | 'PDU_TOO_LARGE' | 'INVALID_LENGTH' | 'INVALID_VALUE' | 'MISSING_ITEM' | 'TRUNCATED';

export interface PduErrorOptions {
  cause?: unknown;
  /** Overrides the A-ABORT reason derived from the code (e.g. 4 or 5, PS3.8 9.3.8). */
  abortReason?: number;
}

/**
 * A malformed or unacceptable PDU. `field` names the offending field as a path, e.g.
 * 'A-ASSOCIATE-RQ.presentation-context[2].transfer-syntax[0].length'; the message starts with it.
 * `abortReason` is the PS3.8 9.3.8 A-ABORT reason/diag the receiver should send (source 2):
 * 1 for an unrecognized PDU type, otherwise 6 (invalid PDU parameter value) unless the error says
 * 4 (unrecognized PDU parameter) or 5 (unexpected PDU parameter).
 */
export class PduError extends Error {
  readonly code: PduErrorCode;
  readonly field: string;
  readonly abortReason: number;

  constructor(code: PduErrorCode, field: string, message: string, options?: PduErrorOptions) {
    super(`${field}: ${message}`, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'PduError';
    this.code = code;
    this.field = field;
    this.abortReason =
      options?.abortReason ??
      (code === 'UNRECOGNIZED_PDU' ? AbortReason.UnrecognizedPdu : AbortReason.InvalidPduParameterValue);
  }
}
