// The bytes an association writes toward one socket, and what they cost in memory.
//
// Hot path. Toward a TLS socket at most one write is in flight: the next buffer is handed to the socket
// when the previous one has been encrypted and passed to the kernel. Node's TLS socket turns several
// queued writes into one writev, and its TLS layer copies every buffer of a writev into one new
// allocation before encrypting it, then holds the whole encrypted result until the kernel takes it, so
// 1 MiB queued toward a slow archive cost three times that (measured with 100 concurrent associations,
// a bare Node relay: peak RSS 288 → 189 MB with one write in flight, same CPU and throughput). Toward
// a plaintext socket writes go straight to the socket (a writev there copies nothing).
//
// `pending` is what this direction holds in memory: the queue here plus the socket's own buffer. The
// association pauses the socket it reads from when that grows too large, and resumes it on `onEmpty`.

import type { Socket } from 'node:net';

/** Total bytes queued toward slower sockets, over every association of a listener set. */
export class RelayBudget {
  queued = 0;
  constructor(
    /** Above this total, an association holding more than RELAY_BUFFER_FLOOR is paused. */
    public limit: number,
  ) {}
}

/**
 * What an association may always queue per direction before it is paused, however busy the proxy is:
 * one read from a socket (Node reads 64 KiB at a time).
 */
export const RELAY_BUFFER_FLOOR = 64 * 1024;

/** Called once a write has reached the kernel (no error) or failed: a socket write callback. */
export type WriteDone = (err?: Error | null) => void;

export class Outbound {
  private readonly queue: Buffer[] = [];
  /** queue[i]'s completion callback, or null. */
  private readonly dones: Array<WriteDone | null> = [];
  private inFlightDone: WriteDone | null = null;
  private head = 0;
  private queuedBytes = 0;
  private inFlight = false;
  private ending = false;

  constructor(
    private readonly socket: Socket,
    /** One write in flight at a time (TLS sockets). */
    private readonly serial: boolean,
    /** Called when everything written so far has reached the kernel. */
    private readonly onEmpty: () => void,
  ) {
    if (!serial) socket.on('drain', onEmpty);
  }

  /** Bytes written here that the kernel has not taken yet. */
  get pending(): number {
    return this.queuedBytes + this.socket.writableLength;
  }

  /** Write `bytes`; `done` (optional) learns when the socket no longer needs them. */
  write(bytes: Buffer, done: WriteDone | null = null): void {
    if (this.ending) return;
    if (!this.serial) {
      this.socket.write(bytes, done ?? undefined);
      return;
    }
    if (this.inFlight) {
      this.queue.push(bytes);
      this.dones.push(done);
      this.queuedBytes += bytes.length;
      return;
    }
    this.inFlight = true;
    this.inFlightDone = done;
    this.socket.write(bytes, this.written);
  }

  /** Write `last` (if given) after everything queued, then end the socket (FIN). */
  end(last?: Buffer): void {
    if (this.ending) return;
    if (last) this.write(last);
    this.ending = true;
    if (!this.inFlight) this.socket.end();
  }

  private readonly written = (err?: Error | null): void => {
    const done = this.inFlightDone;
    this.inFlightDone = null;
    if (err) {
      // The socket emits 'error' (the association aborts and closes both legs): drop the rest.
      done?.(err);
      for (let i = this.head; i < this.dones.length; i++) this.dones[i]?.(err);
      this.queue.length = 0;
      this.dones.length = 0;
      this.head = 0;
      this.queuedBytes = 0;
      this.inFlight = false;
      return;
    }
    done?.(null);
    if (this.head < this.queue.length) {
      const next = this.queue[this.head] as Buffer;
      this.inFlightDone = this.dones[this.head] ?? null;
      this.queue[this.head] = EMPTY; // drop the reference as soon as it is handed on
      this.dones[this.head++] = null;
      this.queuedBytes -= next.length;
      if (this.head === this.queue.length) {
        this.queue.length = 0;
        this.dones.length = 0;
        this.head = 0;
      }
      this.socket.write(next, this.written);
      return;
    }
    this.inFlight = false;
    if (this.ending) {
      this.socket.end();
      return;
    }
    this.onEmpty();
  };
}

const EMPTY = Buffer.alloc(0);

/**
 * A read buffer relayed in place. Node allocates a fresh buffer for every socket read, and V8 frees it
 * only when its collector finds it unreachable: under load that left ~100 MB of relayed, dead read
 * buffers waiting for a mark-compact (100 associations; a heap snapshot taken at the same moment held
 * 8.6 MB of live buffers). So once every write of the buffer has reached the kernel and every hash of
 * it has run, its memory is returned at once by detaching it (ArrayBuffer.prototype.transfer(0)).
 * Only a buffer that is exactly one whole ArrayBuffer and that nothing else may still view (the
 * scanner reports views it handed out: `poison()`) is detached; anything else is left to the GC.
 */
export class ChunkLease {
  /** The feed itself holds one reference until it returns. */
  private refs = 1;
  private poisoned = false;
  hashPending = false;

  constructor(readonly chunk: Buffer) {}

  /** One more user (a write, a pending hash) of the chunk's bytes. */
  acquire(): void {
    this.refs++;
  }

  /** The chunk may be referenced beyond what the lease counts: never detach it. */
  poison(): void {
    this.poisoned = true;
  }

  release(): void {
    if (--this.refs !== 0 || this.poisoned) return;
    const c = this.chunk;
    const ab = c.buffer;
    if (ab instanceof ArrayBuffer && c.byteOffset === 0 && c.byteLength === ab.byteLength && !ab.detached) {
      ab.transfer(0);
    }
  }

  /** As a WriteDone: a failed write may leave the socket layer referencing the bytes. */
  readonly written: WriteDone = (err) => {
    if (err) this.poisoned = true;
    this.release();
  };
}
