// Splits a byte stream into whole PDUs using the 6-byte PDU header (PS3.8 9.3.1): PDU-type (1),
// reserved (1), PDU-length (4, big endian, bytes after the header).

import { PDU_HEADER_LENGTH, PduType } from './constants.js';
import { PduError } from './errors.js';
import { pduName } from './codec.js';

export interface FramerLimits {
  /** Maximum value of the PDU length field of a P-DATA-TF. */
  maxPDataLength: number;
  /** Maximum value of the PDU length field of any other PDU (A-ASSOCIATE-RQ/AC can be tens of KB). */
  maxOtherLength: number;
}

/**
 * Incremental PDU framer. It holds at most one incomplete PDU: a partial header in a 6-byte scratch, then,
 * once the header is known and checked against the limits, one buffer of exactly the PDU size. A PDU that
 * lies wholly inside a pushed chunk is returned as a subarray of that chunk without copying.
 * After push() throws, the framer is unusable: every later push() rethrows the same error.
 */
export class PduFramer {
  private readonly limits: FramerLimits;
  private readonly header = Buffer.alloc(PDU_HEADER_LENGTH);
  private headerFill = 0;
  /** The whole PDU being assembled (header included) once its header is known. */
  private pdu: Buffer | undefined;
  private pduFill = 0;
  private failure: PduError | undefined;

  constructor(limits: FramerLimits) {
    for (const key of ['maxPDataLength', 'maxOtherLength'] as const) {
      const v = limits[key];
      if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) {
        throw new RangeError(`FramerLimits.${key} must be an integer 0-4294967295, got ${v}`);
      }
    }
    this.limits = { ...limits };
  }

  /** Bytes held toward an incomplete PDU. */
  get pendingBytes(): number {
    return this.pdu === undefined ? this.headerFill : this.pduFill;
  }

  /**
   * Returns every complete raw PDU (header included) now available, in stream order. Each Buffer is safe
   * to keep. Throws PduError for a PDU type other than 1-7 (as soon as the type byte arrives) or a PDU
   * length above the limit (as soon as the 6 header bytes are known, before any body byte is buffered).
   */
  push(chunk: Buffer): Buffer[] {
    if (this.failure !== undefined) throw this.failure;
    try {
      return this.split(chunk);
    } catch (err) {
      if (err instanceof PduError) {
        this.failure = err;
        this.reset();
      }
      throw err;
    }
  }

  /** Returns (and forgets) the bytes of the incomplete PDU, header included. */
  takeRemainder(): Buffer {
    const rest =
      this.pdu === undefined
        ? Buffer.from(this.header.subarray(0, this.headerFill))
        : this.pdu.subarray(0, this.pduFill);
    this.reset();
    return rest;
  }

  private reset(): void {
    this.headerFill = 0;
    this.pdu = undefined;
    this.pduFill = 0;
  }

  private split(chunk: Buffer): Buffer[] {
    const out: Buffer[] = [];
    let pos = 0;
    while (pos < chunk.length) {
      if (this.pdu !== undefined) {
        // Body of a PDU whose header came in an earlier chunk.
        const n = Math.min(this.pdu.length - this.pduFill, chunk.length - pos);
        chunk.copy(this.pdu, this.pduFill, pos, pos + n);
        this.pduFill += n;
        pos += n;
        if (this.pduFill === this.pdu.length) {
          out.push(this.pdu);
          this.reset();
        }
      } else if (this.headerFill === 0 && chunk.length - pos >= PDU_HEADER_LENGTH) {
        // Fast path: the whole header is in this chunk.
        const total = this.checkHeader(chunk, pos);
        if (chunk.length - pos >= total) {
          out.push(chunk.subarray(pos, pos + total));
          pos += total;
        } else {
          this.start(total, chunk.subarray(pos));
          pos = chunk.length;
        }
      } else {
        // Header split across chunks: collect it in the scratch.
        const n = Math.min(PDU_HEADER_LENGTH - this.headerFill, chunk.length - pos);
        chunk.copy(this.header, this.headerFill, pos, pos + n);
        this.headerFill += n;
        pos += n;
        this.checkType(this.header.readUInt8(0));
        if (this.headerFill === PDU_HEADER_LENGTH) {
          const total = this.checkHeader(this.header, 0);
          this.headerFill = 0;
          const pdu = this.start(total, this.header);
          if (this.pduFill === total) {
            out.push(pdu);
            this.reset();
          }
        }
      }
    }
    return out;
  }

  /** Allocates the exact-size PDU buffer and copies `head` (header and possibly some body bytes). */
  private start(total: number, head: Buffer): Buffer {
    const pdu = Buffer.allocUnsafe(total);
    head.copy(pdu, 0);
    this.pdu = pdu;
    this.pduFill = head.length;
    return pdu;
  }

  private checkType(type: number): void {
    if (type < PduType.AssociateRq || type > PduType.Abort) {
      throw new PduError(
        'UNRECOGNIZED_PDU',
        'PDU.type',
        `unrecognized PDU type 0x${type.toString(16).padStart(2, '0')}`,
      );
    }
  }

  /** Checks the header at buf[off..off+6) and returns the total PDU size (header included). */
  private checkHeader(buf: Buffer, off: number): number {
    const type = buf.readUInt8(off);
    this.checkType(type);
    const length = buf.readUInt32BE(off + 2);
    const limit = type === PduType.PDataTf ? this.limits.maxPDataLength : this.limits.maxOtherLength;
    if (length > limit) {
      const name = pduName(type);
      throw new PduError(
        'PDU_TOO_LARGE',
        `${name}.length`,
        `${name} PDU length ${length} exceeds the limit ${limit}`,
      );
    }
    return PDU_HEADER_LENGTH + length;
  }
}
