// Streaming scanner for one direction of an established association (PS3.8 9.3.5, state Sta6).
//
// Hot path. The bytes read from one socket are forwarded unchanged, as the very chunks that were read
// whenever possible: one write per chunk, no copies, no per-PDU allocation. The scanner only follows PDU
// and PDV boundaries:
//   - a P-DATA-TF PDU made of exactly one data PDV (how bulk data travels) is streamed: its bytes are
//     forwarded as they arrive and reported to the sink as (buffer, start, end) ranges for counting and
//     hashing, unless the sink says the message it belongs to is being dropped;
//   - every other PDU (a P-DATA-TF carrying a command fragment or several PDVs, A-RELEASE-RQ/RP,
//     A-ABORT) is held whole — bounded by the negotiated maximum — and handed to the sink, which decides
//     synchronously what to forward. When it lets the PDU pass unchanged, the scanner forwards the PDU's
//     own bytes in the chunk's forward range, so a command and the data that follows it in the same
//     read leave in one write (one TLS record sequence, one system call) instead of two.
// The sink may also inject PDUs of its own toward the same destination; they are written only at a PDU
// boundary so they never split a PDU that is being streamed.

import { PDU_HEADER_LENGTH, PduType } from '../pdu/constants.js';
import { PduError } from '../pdu/errors.js';

export interface ScannerSink {
  /** Write bytes toward the other side, unchanged. */
  forward(bytes: Buffer): void;
  /**
   * A whole PDU (header included) that needs a decision; the sink forwards, rewrites or drops it now.
   * Returning true asks the scanner to forward the PDU's bytes itself, unchanged, at this point of the
   * stream (the sink wrote nothing of it): in place in the read buffer when it lies whole in it.
   */
  held(pdu: Buffer, type: number): boolean;
  /** Start of a streamed single-data-PDV PDU. Return true to drop its bytes (message refused). */
  dataStart(contextId: number, valueLength: number, last: boolean): boolean;
  /** Bytes [start, end) of buf are data PDV value bytes of the current streamed PDV. */
  dataBytes(buf: Buffer, start: number, end: number): void;
  /** The streamed PDV is complete. */
  dataEnd(): void;
}

/** Thrown for a PDU type that must not appear once the association is established (PS3.8 9.2, Sta6). */
export class UnexpectedPduError extends Error {
  readonly code = 'UNEXPECTED_PDU';
  readonly field = 'PDU-type';
  readonly abortReason = 2; // PS3.8 9.3.8: unexpected PDU
  constructor(readonly pduType: number) {
    super(
      `PDU type 0x${pduType.toString(16).padStart(2, '0')} is not expected on an established association`,
    );
    this.name = 'UnexpectedPduError';
  }
}

const P_DATA_PEEK = 12; // PDU header (6) + first PDV header (length 4, context id 1, control header 1)
/** Held PDUs up to this size are copied out of the read buffer rather than viewed in it. */
const HELD_COPY_LIMIT = 4096;

const enum Phase {
  /** At a PDU boundary, possibly with a partial header in the scratch buffer. */
  Header,
  /** Inside a streamed single-data-PDV PDU. */
  Stream,
  /** Accumulating a held PDU that did not fit in one chunk. */
  Hold,
}

export class PDataScanner {
  private phase = Phase.Header;
  private readonly scratch = Buffer.alloc(P_DATA_PEEK);
  private scratchLen = 0;
  private streamRemaining = 0;
  private discarding = false;
  private hold: Buffer | null = null;
  private holdLen = 0;
  private holdType = 0;
  private feeding = false;
  /** During feedInner: start of the open forward range in the current chunk, or -1. */
  private fwd = -1;
  private readonly injections: Buffer[] = [];
  /**
   * True when, during the last feed(), a view into the chunk was handed to the sink's held() (a PDU
   * larger than HELD_COPY_LIMIT): then the chunk may be referenced after the call and must not be
   * released early (see ChunkLease in association.ts).
   */
  chunkEscaped = false;

  constructor(
    private readonly sink: ScannerSink,
    /** Largest PDU length field accepted for P-DATA-TF: the maximum the receiving side advertised (PS3.8 D.1), capped by the proxy. */
    private readonly maxPDataLength: number,
  ) {}

  /** True when no PDU is partly read: an injected PDU can be written immediately. */
  get atBoundary(): boolean {
    return this.phase === Phase.Header && this.scratchLen === 0;
  }

  /** Queue a whole PDU of the proxy's own for this scanner's destination, written at the next boundary. */
  inject(pdu: Buffer): void {
    if (!this.feeding && this.atBoundary) this.sink.forward(pdu);
    else this.injections.push(pdu);
  }

  private flushInjections(): void {
    while (this.injections.length > 0) this.sink.forward(this.injections.shift() as Buffer);
  }

  /** Process one chunk read from the source socket. Throws PduError on a framing violation. */
  feed(chunk: Buffer): void {
    this.feeding = true;
    this.chunkEscaped = false;
    try {
      this.feedInner(chunk);
    } finally {
      this.feeding = false;
    }
    if (this.atBoundary && this.injections.length > 0) this.flushInjections();
  }

  private feedInner(chunk: Buffer): void {
    const len = chunk.length;
    let pos = 0;
    // Start of the range of `chunk` that will be forwarded as one write; -1 when none is open.
    this.fwd = this.phase === Phase.Stream && !this.discarding ? 0 : -1;

    try {
      while (pos < len) {
        if (this.phase === Phase.Stream) {
          const n = Math.min(this.streamRemaining, len - pos);
          if (!this.discarding) this.sink.dataBytes(chunk, pos, pos + n);
          pos += n;
          this.streamRemaining -= n;
          if (this.streamRemaining === 0) {
            this.phase = Phase.Header;
            this.sink.dataEnd();
            if (this.discarding) {
              this.discarding = false;
            }
          }
          continue;
        }

        if (this.phase === Phase.Hold) {
          const hold = this.hold as Buffer;
          const n = Math.min(hold.length - this.holdLen, len - pos);
          chunk.copy(hold, this.holdLen, pos, pos + n);
          this.holdLen += n;
          pos += n;
          if (this.holdLen === hold.length) {
            this.hold = null;
            this.holdLen = 0;
            this.phase = Phase.Header;
            if (this.sink.held(hold, this.holdType)) this.sink.forward(hold);
          }
          continue;
        }

        // Phase.Header: at a PDU boundary.
        if (this.scratchLen === 0 && this.injections.length > 0) {
          this.flush(chunk, pos);
          this.flushInjections();
        }
        let src: Buffer;
        let off: number;
        let avail: number;
        let consumedFromChunk: number; // bytes of `chunk` that belong to the peeked region
        if (this.scratchLen === 0 && len - pos >= PDU_HEADER_LENGTH) {
          src = chunk;
          off = pos;
          avail = len - pos;
          consumedFromChunk = 0;
        } else {
          // Header split across chunks: top the scratch up to what a decision needs.
          this.flush(chunk, pos);
          const need = this.scratchLen < PDU_HEADER_LENGTH ? PDU_HEADER_LENGTH : P_DATA_PEEK;
          const n = Math.min(need - this.scratchLen, len - pos);
          chunk.copy(this.scratch, this.scratchLen, pos, pos + n);
          this.scratchLen += n;
          pos += n;
          if (this.scratchLen < PDU_HEADER_LENGTH) continue;
          if (this.scratch[0] === PduType.PDataTf && this.scratchLen < P_DATA_PEEK && pos < len) continue;
          if (this.scratch[0] === PduType.PDataTf && this.scratchLen < P_DATA_PEEK) {
            this.checkHeader(this.scratch, 0);
            break; // wait for more bytes
          }
          src = this.scratch;
          off = 0;
          avail = this.scratchLen;
          consumedFromChunk = -1; // header bytes live in the scratch
        }

        const type = this.checkHeader(src, off);
        const pduLength = src.readUInt32BE(off + 2);
        const total = PDU_HEADER_LENGTH + pduLength;

        if (type === PduType.PDataTf) {
          if (avail < P_DATA_PEEK) {
            // Contiguous case with fewer than 12 bytes left in the chunk: move them to the scratch.
            this.flush(chunk, pos);
            chunk.copy(this.scratch, 0, pos, len);
            this.scratchLen = len - pos;
            break;
          }
          const pdvLength = src.readUInt32BE(off + 6);
          const contextId = src[off + 10] as number;
          const control = src[off + 11] as number;
          if ((control & 0x01) === 0 && pdvLength + 4 === pduLength && pdvLength >= 2) {
            // Stream: one data PDV fills the PDU.
            const drop = this.sink.dataStart(contextId, pdvLength - 2, (control & 0x02) !== 0);
            this.discarding = drop;
            this.streamRemaining = pdvLength - 2;
            this.phase = Phase.Stream;
            if (consumedFromChunk === 0) {
              // Header is in the chunk: keep or open the forward range, skip the header.
              if (drop) this.flush(chunk, pos);
              else if (this.fwd < 0) this.fwd = pos;
              pos += P_DATA_PEEK;
            } else {
              // Header came through the scratch; `pos` already points after the bytes copied into it.
              if (!drop) this.sink.forward(Buffer.from(this.scratch.subarray(0, P_DATA_PEEK)));
              this.scratchLen = 0;
              if (!drop) this.fwd = pos;
            }
            if (this.streamRemaining === 0) {
              this.phase = Phase.Header;
              this.sink.dataEnd();
              this.discarding = false;
            }
            continue;
          }
        }

        // Hold the whole PDU.
        this.flush(chunk, pos);
        if (consumedFromChunk === 0 && len - pos >= total) {
          // Small PDUs (command sets, release, abort) are copied out of the read buffer (a pooled copy of a
          // few hundred bytes), so the read buffer itself stays releasable as soon as it has been relayed.
          let pass: boolean;
          if (total <= HELD_COPY_LIMIT)
            pass = this.sink.held(Buffer.from(chunk.subarray(pos, pos + total)), type);
          else {
            this.chunkEscaped = true;
            pass = this.sink.held(chunk.subarray(pos, pos + total), type);
          }
          // Passed unchanged: its bytes open the forward range (the range was flushed before held(), so
          // whatever the sink wrote meanwhile stays before them, and what it injected comes after them).
          if (pass) this.fwd = pos;
          pos += total;
          continue;
        }
        const hold = Buffer.allocUnsafe(total);
        if (consumedFromChunk === 0) {
          const n = Math.min(total, len - pos);
          chunk.copy(hold, 0, pos, pos + n);
          this.holdLen = n;
          pos += n;
        } else {
          const n = Math.min(total, this.scratchLen);
          this.scratch.copy(hold, 0, 0, n);
          this.holdLen = n;
          this.scratchLen = 0;
        }
        this.hold = hold;
        this.holdType = type;
        this.phase = Phase.Hold;
        if (this.holdLen === total) {
          this.hold = null;
          this.holdLen = 0;
          this.phase = Phase.Header;
          if (this.sink.held(hold, type)) this.sink.forward(hold);
        }
      }
    } catch (err) {
      // A PDU that cannot be relayed (a framing error, or one its sink refuses by throwing): what precedes
      // it in this read still goes out, as it would over a direct connection, so the bytes already
      // forwarded end on a PDU boundary and the A-ABORT that follows is read as one (PS3.8 9.3.8), and a
      // response passed in place before it is not lost. In a streamed PDU's value nothing is flushed:
      // only the Header phase is a boundary.
      if (this.phase === Phase.Header) this.flush(chunk, pos);
      throw err;
    }
    this.flush(chunk, len);
  }

  /** Forward chunk[fwd, end) (the whole chunk itself when it is all of it) and close the range. */
  private flush(chunk: Buffer, end: number): void {
    const fwd = this.fwd;
    if (fwd >= 0 && end > fwd)
      this.sink.forward(fwd === 0 && end === chunk.length ? chunk : chunk.subarray(fwd, end));
    this.fwd = -1;
  }

  /** Validate a PDU header at src[off..off+6): returns the type. Every declared length is checked here. */
  private checkHeader(src: Buffer, off: number): number {
    const type = src[off] as number;
    const length = src.readUInt32BE(off + 2);
    switch (type) {
      case PduType.PDataTf:
        if (length > this.maxPDataLength) {
          throw new PduError(
            'PDU_TOO_LARGE',
            'P-DATA-TF.length',
            `P-DATA-TF length ${length} exceeds the maximum PDU length ${this.maxPDataLength} advertised to its sender`,
          );
        }
        if (length < 6) {
          throw new PduError(
            'INVALID_LENGTH',
            'P-DATA-TF.length',
            `P-DATA-TF length ${length} cannot hold a PDV`,
          );
        }
        return type;
      case PduType.ReleaseRq:
      case PduType.ReleaseRp:
      case PduType.Abort:
        if (length !== 4) {
          throw new PduError('INVALID_LENGTH', 'PDU.length', `PDU type ${type} length ${length}, expected 4`);
        }
        return type;
      case PduType.AssociateRq:
      case PduType.AssociateAc:
      case PduType.AssociateRj:
        throw new UnexpectedPduError(type);
      default:
        throw new PduError('UNRECOGNIZED_PDU', 'PDU-type', `unrecognized PDU type 0x${type.toString(16)}`);
    }
  }
}
