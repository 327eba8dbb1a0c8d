/**
 * Audit messages to an Audit Record Repository: RFC 5424 syslog messages over TLS (RFC 5425), as IHE ITI
 * Record Audit Event [ITI-20] and DICOM PS3.15 A.6 (Audit Trail Message Transmission Profile - SYSLOG-TLS)
 * specify, with a durable on-disk spool.
 *
 * Message (RFC 5424 section 6):  <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - BOM XML
 *  - PRI = facility 10 (security/authorization, ITI-20) * 8 + severity; ITI-20 says severity 5 (notice) or
 *    4 (warning) should be used: 5 for a successful event, 4 for any failure outcome.
 *  - MSGID "IHE+RFC-3881" (ITI-20); STRUCTURED-DATA is the NILVALUE "-".
 *  - MSG is UTF-8 with the BOM (RFC 5424 section 6.4, MSG-UTF8).
 * Framing (RFC 5425 section 4.3, octet counting):  MSG-LEN SP SYSLOG-MSG
 *
 * Delivery. Every message is first appended to the spool (segment files in spoolDir, written and fdatasync'd
 * in batches: everything queued while the previous batch was being written goes in the next one) and only
 * then sent, oldest first, in order. A message leaves the spool once it has been written to the TLS socket
 * and the write has completed (handed to the kernel). TLS syslog has no application-level acknowledgement
 * (RFC 5425 section 4.3 defines none): messages the collector had not yet read when a connection breaks can
 * be lost with it; everything not yet written survives in the spool, across restarts (the delivery cursor
 * is persisted lazily, so after a crash the last few messages may be sent twice: at-least-once for what was
 * spooled).
 *
 * Bound. The spool holds at most spoolMaxBytes of undelivered frames. When a message would exceed it, that
 * new message is refused: send() returns false and an 'alarm' event carries it (the caller can log it
 * elsewhere). Spooled messages are never dropped to make room: the oldest records are the most valuable
 * evidence of what happened while the repository was unreachable.
 */
import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, unlink, writeFile, type FileHandle } from 'node:fs/promises';
import { isIP } from 'node:net';
import { join } from 'node:path';
import * as tls from 'node:tls';
import type { AuditSyslogConfig } from '../../config/audit.js';
import { TLS_PROFILES, type TlsProfileName } from '../../tls/profiles.js';
import { peerKeyProblem } from '../../tls/keys.js';
import type { EventOutcome } from './messages.js';
import type { AuditConnectionState } from '../../vocabulary/outcomes.js';
import { systemClock, type Clock, type TimerHandle } from '../../util/clock.js';
import { syncDir } from '../../util/fs.js';
import { processAlive } from '../../util/process.js';

// ------------------------------------------------------------------------------------- RFC 5424 format

/** RFC 5424 section 6.2.1: facility 10 = security/authorization messages (ITI-20 requires it). */
export const SYSLOG_FACILITY_AUTHPRIV = 10;
/** ITI-20: MSGID of an audit message. */
export const IHE_MSGID = 'IHE+RFC-3881';
/** RFC 5424 section 6.2.1 severities used by ITI-20. */
export const SEVERITY_NOTICE = 5;
export const SEVERITY_WARNING = 4;

const BOM = Buffer.from([0xef, 0xbb, 0xbf]);

/** ITI-20: severity 5 (normal but significant) for success, 4 (warning) for failures. */
export function severityForOutcome(outcome: EventOutcome): number {
  return outcome === 0 ? SEVERITY_NOTICE : SEVERITY_WARNING;
}

/** RFC 5424 section 6.2.1: PRI value = facility * 8 + severity. */
export function priority(facility: number, severity: number): number {
  if (!Number.isInteger(facility) || facility < 0 || facility > 23)
    throw new RangeError(`bad facility ${facility}`);
  if (!Number.isInteger(severity) || severity < 0 || severity > 7)
    throw new RangeError(`bad severity ${severity}`);
  return facility * 8 + severity;
}

/** A header field: PRINTUSASCII (%d33-126) of at most `max` characters, or the NILVALUE "-" when empty. */
export function headerField(value: string | null | undefined, max: number): string {
  const clean = (value ?? '').replace(/[^\x21-\x7e]/g, '').slice(0, max);
  return clean.length === 0 ? '-' : clean;
}

/**
 * RFC 5424 section 6.2.3 TIMESTAMP: RFC 3339 full-date "T" full-time in UTC ("Z"), with at most 6 fractional
 * digits (Date gives 3).
 */
export function syslogTimestamp(time: Date): string {
  return time.toISOString();
}

export interface SyslogMessageFields {
  facility?: number;
  severity: number;
  time: Date;
  hostname: string;
  appName: string;
  procId?: string | null;
  msgId?: string;
  /** The MSG: written as UTF-8 after a BOM. */
  message: string;
}

/** One SYSLOG-MSG (RFC 5424 section 6): HEADER SP STRUCTURED-DATA SP BOM MSG. */
export function formatSyslogMessage(f: SyslogMessageFields): Buffer {
  const pri = priority(f.facility ?? SYSLOG_FACILITY_AUTHPRIV, f.severity);
  const header =
    `<${pri}>1 ${syslogTimestamp(f.time)} ${headerField(f.hostname, 255)} ` +
    `${headerField(f.appName, 48)} ${headerField(f.procId, 128)} ${headerField(f.msgId ?? IHE_MSGID, 32)} - `;
  return Buffer.concat([Buffer.from(header, 'ascii'), BOM, Buffer.from(f.message, 'utf8')]);
}

/** RFC 5425 section 4.3 octet-counting: MSG-LEN SP SYSLOG-MSG, MSG-LEN the octet count of SYSLOG-MSG. */
export function frameOctetCounting(syslogMsg: Buffer): Buffer {
  if (syslogMsg.length === 0)
    throw new RangeError('an empty SYSLOG-MSG cannot be framed (MSG-LEN is NONZERO-DIGIT...)');
  return Buffer.concat([Buffer.from(`${syslogMsg.length} `, 'ascii'), syslogMsg]);
}

/** Largest frame the spool accepts (a bound on what a corrupted length field can make us read). */
export const MAX_FRAME_BYTES = 16 * 1024 * 1024;

export type FrameScan =
  { ok: true; frames: number; end: number } | { ok: false; frames: number; end: number; problem: string };

/**
 * Walks octet-counted frames in `buf` from `start`. `end` is the offset after the last complete frame; a
 * trailing partial frame is not an error (`ok` stays true), a malformed length is (`problem`).
 */
export function scanFrames(buf: Buffer, start = 0): FrameScan {
  let pos = start;
  let frames = 0;
  while (pos < buf.length) {
    let i = pos;
    let len = 0;
    while (i < buf.length && i - pos <= 9) {
      const c = buf[i] as number;
      if (c === 0x20) break;
      if (c < 0x30 || c > 0x39 || (i === pos && c === 0x30)) {
        return { ok: false, frames, end: pos, problem: `bad MSG-LEN at offset ${pos}` };
      }
      len = len * 10 + (c - 0x30);
      i++;
    }
    if (i >= buf.length) break; // header not complete yet
    if (buf[i] !== 0x20 || i === pos)
      return { ok: false, frames, end: pos, problem: `bad MSG-LEN at offset ${pos}` };
    if (len > MAX_FRAME_BYTES)
      return { ok: false, frames, end: pos, problem: `MSG-LEN ${len} too large at ${pos}` };
    const frameEnd = i + 1 + len;
    if (frameEnd > buf.length) break; // partial frame
    pos = frameEnd;
    frames++;
  }
  return { ok: true, frames, end: pos };
}

// --------------------------------------------------------------------------------------------- sender

export interface SyslogTlsMaterial {
  /** PEM CA bundle that verifies the collector. */
  ca: string | Buffer;
  /** PEM client certificate (chain). */
  cert: string | Buffer;
  /** PEM private key. */
  key: string | Buffer;
  /** Name verified in the collector's certificate, also the SNI unless an IP address. */
  serverName: string;
  verifyHostname?: boolean;
  profile?: TlsProfileName;
}

export interface SyslogTlsSenderOptions {
  host: string;
  port: number;
  tls: SyslogTlsMaterial;
  spoolDir: string;
  spoolMaxBytes: number;
  /** RFC 5424 APP-NAME. */
  appName: string;
  /** RFC 5424 HOSTNAME. */
  hostname: string;
  /** RFC 5424 PROCID (default the process ID). */
  procId?: string;
  /** RFC 5424 MSGID (default "IHE+RFC-3881"). */
  msgId?: string;
  connectTimeoutMs?: number;
  reconnectMinMs?: number;
  reconnectMaxMs?: number;
  /** Size at which the spool starts a new segment file (default min(4 MiB, spoolMaxBytes / 8)). */
  segmentBytes?: number;
  /** How often, at most, the delivery cursor is persisted while delivering (default 1 s). */
  cursorSyncIntervalMs?: number;
  /**
   * Time source of the connect timeout, the TLS 1.3 settling time, the reconnect backoff, the cursor sync,
   * the timestamp of a message sent without one and the age of the oldest spooled message (default the
   * system clock; its now() must be wall-clock time). The deadlines given to drained() and close() are
   * wall-clock time.
   */
  clock?: Clock;
}

export type SpoolAlarmCode =
  'spool-full' | 'message-too-large' | 'spool-write-failed' | 'spool-repaired' | 'closed';

export interface SpoolAlarm {
  code: SpoolAlarmCode;
  message: string;
  /** The refused audit message (XML), for spool-full / spool-write-failed / closed. */
  refused?: string;
  spoolBytes: number;
  spoolMaxBytes: number;
  /** Messages refused since the sender started. */
  refusedTotal: number;
}

export interface SyslogSenderStats {
  connected: boolean;
  /** Undelivered bytes (on disk and queued for it). */
  spoolBytes: number;
  spoolMaxBytes: number;
  /** Messages accepted into the spool since start. */
  accepted: number;
  /** Messages written to the collector since start. */
  delivered: number;
  /** Messages refused (spool full, write failure, closed) since start. */
  refused: number;
  /** The spool is refusing messages (full) right now. */
  full: boolean;
  /** Consecutive failed connection attempts. */
  failedConnects: number;
  /** The connection's state (null until the first attempt has succeeded or failed). */
  state: AuditConnectionState | null;
  /** Why it is disconnected or retrying (null when connected). */
  stateReason: string | null;
  /** When the next connection attempt starts (null while connected or attempting). */
  retryAt: Date | null;
  /** RFC 5424 TIMESTAMP of the oldest undelivered message (null when the spool is empty). */
  oldestMessageTime: Date | null;
  /** Its age by the sender's clock, in milliseconds (0 when the spool is empty). */
  oldestAgeMs: number;
}

/** A change of the connection's state: one per transition (or new reason), never one per attempt. */
export interface SyslogStateChange {
  state: AuditConnectionState;
  /** The state before (null: the first since start). */
  previous: AuditConnectionState | null;
  /** Why the session ended or the attempt failed (null for connected). */
  reason: string | null;
  /** When the next attempt starts (null for connected). */
  retryAt: Date | null;
  /** Milliseconds until then (null for connected). */
  retryInMs: number | null;
  host: string;
  port: number;
  /** TLS version of the session (connected only). */
  protocol: string | null;
  /** Consecutive failed attempts so far. */
  failedConnects: number;
  /** Undelivered bytes at the change. */
  spoolBytes: number;
}

export interface SyslogTlsSenderEvents {
  /** A message was refused or the spool needed repair: never silent. */
  alarm: [SpoolAlarm];
  /** The spool accepts messages again after being full; `refused` were refused meanwhile. */
  'alarm-cleared': [{ code: 'spool-full'; refused: number; since: Date; until: Date }];
  connected: [{ host: string; port: number; protocol: string | null }];
  disconnected: [{ reason: string }];
  /** The connection changed state (connected, disconnected, retrying): log it, count it. */
  state: [SyslogStateChange];
  /** A connection attempt or the connection failed (not 'error': emitting it never throws). */
  'transport-error': [{ error: Error }];
  delivered: [{ messages: number; bytes: number }];
}

interface Segment {
  index: number;
  path: string;
  /** Durable (written and synced) bytes. */
  size: number;
}

interface Waiter {
  resolve: () => void;
  reject: (err: unknown) => void;
}

const SEGMENT_RE = /^(\d{12})\.spool$/;
const CURSOR_FILE = 'cursor.json';
const LOCK_FILE = 'lock';
const READ_CHUNK = 256 * 1024;
/** See connect(): how long a TLS 1.3 session is given to be refused before frames are written. */
export const TLS13_SETTLE_MS = 500;
/** Spool directories in use by a sender of this process (the lock file guards against other processes). */
const inUse = new Set<string>();

function segmentName(index: number): string {
  return `${String(index).padStart(12, '0')}.spool`;
}

function jitter(ms: number): number {
  return Math.round(ms * (0.8 + Math.random() * 0.4));
}

/**
 * Sends audit messages to a syslog collector over mutual TLS (RFC 5425), through a durable spool. Call
 * start() once; send()/write() any time (before start completes they are queued); close() at shutdown.
 */
export class SyslogTlsSender extends EventEmitter<SyslogTlsSenderEvents> {
  readonly name = 'syslog';
  private readonly opts: Required<Omit<SyslogTlsSenderOptions, 'tls' | 'procId' | 'msgId' | 'clock'>> & {
    procId: string;
    msgId: string;
  };
  private readonly secureContext: tls.SecureContext;
  private readonly tlsMaterial: SyslogTlsMaterial;
  private readonly clock: Clock;

  private segments: Segment[] = [];
  /** Delivery position inside segments[0]. */
  private cursorOffset = 0;
  private appendHandle: FileHandle | null = null;
  private appendIndex = -1;
  /** Highest segment index used or named by the cursor: new segments go above it (indexes only grow). */
  private maxIndex = 0;
  private readonly unlinking = new Set<Promise<void>>();

  private queue: Buffer[] = [];
  private queueBytes = 0;
  private queueWaiters: Waiter[] = [];
  private flushing: Promise<void> | null = null;

  private socket: tls.TLSSocket | null = null;
  private connected = false;
  private connecting = false;
  private pumping = false;
  private reconnectTimer: TimerHandle | null = null;
  private cursorTimer: TimerHandle | null = null;
  private cursorDirty = false;
  private lastCursorWrite = 0;

  private started: Promise<void> | null = null;
  private ready = false;
  private closing = false;
  private closed = false;
  private lockHeld = false;

  private counters = { accepted: 0, delivered: 0, refused: 0, failedConnects: 0 };
  private state: AuditConnectionState | null = null;
  private stateReason: string | null = null;
  /** Clock time of the next connection attempt (null while none is scheduled). */
  private retryAt: number | null = null;
  /** TIMESTAMP (ms) of the oldest undelivered message; null when the spool is empty. */
  private oldestTime: number | null = null;
  private fullSince: Date | null = null;
  private refusedWhileFull = 0;
  private drainWaiters: (() => void)[] = [];

  constructor(options: SyslogTlsSenderOptions) {
    super();
    if (options.spoolMaxBytes < 1024) throw new RangeError('spoolMaxBytes must be at least 1024');
    this.tlsMaterial = options.tls;
    this.clock = options.clock ?? systemClock;
    this.opts = {
      host: options.host,
      port: options.port,
      spoolDir: options.spoolDir,
      spoolMaxBytes: options.spoolMaxBytes,
      appName: options.appName,
      hostname: options.hostname,
      procId: options.procId ?? String(process.pid),
      msgId: options.msgId ?? IHE_MSGID,
      connectTimeoutMs: options.connectTimeoutMs ?? 10_000,
      reconnectMinMs: options.reconnectMinMs ?? 1_000,
      reconnectMaxMs: Math.max(options.reconnectMaxMs ?? 60_000, options.reconnectMinMs ?? 1_000),
      segmentBytes:
        options.segmentBytes ?? Math.max(16 * 1024, Math.min(4 * 1024 * 1024, options.spoolMaxBytes / 8)),
      cursorSyncIntervalMs: options.cursorSyncIntervalMs ?? 1_000,
    };
    const profile = TLS_PROFILES[options.tls.profile ?? 'bcp195'];
    // RFC 5425 section 5 / RFC 9662: TLS 1.2 or later, mutual certificate authentication.
    this.secureContext = tls.createSecureContext({
      ca: options.tls.ca,
      cert: options.tls.cert,
      key: options.tls.key,
      minVersion: profile.minVersion,
      maxVersion: profile.maxVersion,
      ciphers: profile.ciphers,
    });
  }

  /** Builds a sender from the resolved `audit.syslog` section (reads the PEM files). */
  static fromConfig(config: AuditSyslogConfig, opts: { procId?: string } = {}): SyslogTlsSender {
    return new SyslogTlsSender({
      host: config.host,
      port: config.port,
      tls: {
        ca: readFileSync(config.tls.ca),
        cert: readFileSync(config.tls.cert),
        key: readFileSync(config.tls.key),
        serverName: config.tls.serverName,
        verifyHostname: config.tls.verifyHostname,
        profile: config.tls.profile,
      },
      spoolDir: config.spoolDir,
      spoolMaxBytes: config.spoolMaxBytes,
      appName: config.appName,
      hostname: config.hostname,
      connectTimeoutMs: config.connectTimeoutMs,
      reconnectMinMs: config.reconnectMinMs,
      reconnectMaxMs: config.reconnectMaxMs,
      ...(opts.procId !== undefined ? { procId: opts.procId } : {}),
    });
  }

  /** Recovers the spool (messages left by a previous run are sent first) and starts connecting. */
  start(): Promise<void> {
    if (this.started === null) {
      this.started = this.recover().then(() => {
        this.ready = true;
        this.connect();
        this.kickFlush();
      });
    }
    return this.started;
  }

  /** AuditSink: formats `xml` as an RFC 5424 message with the severity of its outcome and spools it. */
  write(record: { xml: string; outcome: EventOutcome; time?: Date }): boolean {
    return this.send(record.xml, {
      outcome: record.outcome,
      time: record.time ?? new Date(this.clock.now()),
    });
  }

  /**
   * Spools one audit message. Returns false when it is refused (spool full, sender closed), in which case an
   * 'alarm' carrying the message has been emitted. Use flush() to wait until accepted messages are on disk.
   */
  send(
    xml: string,
    opts: { outcome?: EventOutcome; severity?: number; time?: Date; msgId?: string } = {},
  ): boolean {
    const time = opts.time ?? new Date(this.clock.now());
    const frame = frameOctetCounting(
      formatSyslogMessage({
        severity: opts.severity ?? severityForOutcome(opts.outcome ?? 0),
        time,
        hostname: this.opts.hostname,
        appName: this.opts.appName,
        procId: this.opts.procId,
        msgId: opts.msgId ?? this.opts.msgId,
        message: xml,
      }),
    );
    if (this.closing || this.closed) {
      this.refuse('closed', 'audit sender is closed', xml);
      return false;
    }
    if (frame.length > Math.min(MAX_FRAME_BYTES, this.opts.spoolMaxBytes)) {
      this.refuse(
        'message-too-large',
        `audit message of ${frame.length} bytes exceeds what the spool holds`,
        xml,
      );
      return false;
    }
    if (this.spoolBytes() + frame.length > this.opts.spoolMaxBytes) {
      if (this.fullSince === null) this.fullSince = new Date();
      this.refusedWhileFull++;
      this.refuse(
        'spool-full',
        `audit spool full (${this.spoolBytes()} of ${this.opts.spoolMaxBytes} bytes): message refused`,
        xml,
      );
      return false;
    }
    this.clearFull();
    if (this.spoolBytes() === 0) this.oldestTime = time.getTime();
    this.queue.push(frame);
    this.queueBytes += frame.length;
    this.counters.accepted++;
    this.kickFlush();
    return true;
  }

  /** Resolves when every message accepted so far is written and synced to the spool. */
  async flush(): Promise<void> {
    if (this.queue.length === 0 && this.flushing === null) return;
    await new Promise<void>((resolve, reject) => {
      this.queueWaiters.push({ resolve, reject });
      this.kickFlush();
    });
  }

  /** Resolves true once the spool is empty (everything delivered), false at the deadline. */
  async drained(timeoutMs: number): Promise<boolean> {
    if (this.spoolBytes() === 0) return true;
    return new Promise<boolean>((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        resolve(true);
      };
      const timer = setTimeout(() => {
        this.drainWaiters = this.drainWaiters.filter((w) => w !== done);
        resolve(this.spoolBytes() === 0);
      }, timeoutMs);
      this.drainWaiters.push(done);
    });
  }

  stats(): SyslogSenderStats {
    // An empty spool has no oldest message, whatever delivery has still to tidy up.
    const oldest = this.spoolBytes() === 0 ? null : this.oldestTime;
    return {
      connected: this.connected,
      spoolBytes: this.spoolBytes(),
      spoolMaxBytes: this.opts.spoolMaxBytes,
      accepted: this.counters.accepted,
      delivered: this.counters.delivered,
      refused: this.counters.refused,
      full: this.fullSince !== null,
      failedConnects: this.counters.failedConnects,
      state: this.state,
      stateReason: this.stateReason,
      retryAt: this.retryAt === null ? null : new Date(this.retryAt),
      oldestMessageTime: oldest === null ? null : new Date(oldest),
      oldestAgeMs: oldest === null ? 0 : Math.max(0, this.clock.now() - oldest),
    };
  }

  /**
   * Stops accepting messages, syncs the spool, and tries for up to `deadlineMs` to deliver what it holds
   * (reconnecting if needed). What is left stays in the spool for the next start. Resolves true when the
   * spool was emptied.
   */
  async close(deadlineMs = 5_000): Promise<boolean> {
    if (this.closed) return this.spoolBytes() === 0;
    this.closing = true;
    const deadline = Date.now() + deadlineMs;
    let emptied = false;
    try {
      if (this.started) await this.started.catch(() => undefined);
      if (this.ready) {
        await this.flush().catch(() => undefined);
        emptied = await this.drained(Math.max(0, deadline - Date.now()));
      } else if (this.queue.length > 0) {
        // Never started (or the spool could not be opened): what was queued is refused, loudly.
        const frames = this.queue;
        this.queue = [];
        this.queueBytes = 0;
        this.counters.accepted -= frames.length;
        for (const frame of frames) this.refuse('closed', 'audit spool was never opened', xmlOfFrame(frame));
        for (const w of this.queueWaiters.splice(0)) w.reject(new Error('audit spool was never opened'));
      }
    } finally {
      this.closed = true;
      this.clock.clearTimeout(this.reconnectTimer);
      this.reconnectTimer = null;
      this.retryAt = null;
      this.clock.clearTimeout(this.cursorTimer);
      this.cursorTimer = null;
      const socket = this.socket;
      this.socket = null;
      this.connected = false;
      if (socket) await endSocket(socket, Math.max(100, Math.min(1_000, deadline - Date.now())));
      // Wait for a delivery in progress to settle before the cursor is written for the last time.
      const until = Date.now() + 1_000;
      while (this.pumping && Date.now() < until) await sleep(5);
      await this.appendHandle?.close().catch(() => undefined);
      this.appendHandle = null;
      if (this.ready) {
        // Everything delivered: the last segment goes too, the cursor then names the next index.
        const last = this.segments[0];
        if (
          this.segments.length === 1 &&
          last !== undefined &&
          this.cursorOffset >= last.size &&
          this.queueBytes === 0
        ) {
          this.segments = [];
          this.cursorOffset = 0;
          this.cursorDirty = true;
          await unlink(last.path).catch(() => undefined);
        }
        this.cursorDirty = true;
        await this.writeCursor().catch(() => undefined);
      }
      await Promise.all([...this.unlinking]);
      await this.releaseLock();
    }
    return emptied;
  }

  // ------------------------------------------------------------------------------------------ spool

  private spoolBytes(): number {
    let bytes = this.queueBytes;
    for (const s of this.segments) bytes += s.size;
    return bytes - this.cursorOffset;
  }

  /**
   * The oldest message's time from what is in memory: none when the spool is empty, the first queued
   * frame's when everything on disk has been delivered. Otherwise the time noted when the frame at the
   * cursor was read (delivery, recovery) stands.
   */
  private refreshOldest(): void {
    if (this.spoolBytes() === 0) {
      this.oldestTime = null;
      return;
    }
    if (this.spoolBytes() === this.queueBytes) {
      const first = this.queue[0];
      this.oldestTime = (first && frameTime(first)) ?? this.oldestTime;
    }
  }

  private refuse(code: SpoolAlarmCode, message: string, xml: string): void {
    this.counters.refused++;
    this.emit('alarm', {
      code,
      message,
      refused: xml,
      spoolBytes: this.spoolBytes(),
      spoolMaxBytes: this.opts.spoolMaxBytes,
      refusedTotal: this.counters.refused,
    });
  }

  private clearFull(): void {
    if (this.fullSince === null) return;
    const since = this.fullSince;
    const refused = this.refusedWhileFull;
    this.fullSince = null;
    this.refusedWhileFull = 0;
    this.emit('alarm-cleared', { code: 'spool-full', refused, since, until: new Date() });
  }

  private async recover(): Promise<void> {
    const dir = this.opts.spoolDir;
    await mkdir(dir, { recursive: true, mode: 0o700 });
    await this.acquireLock();
    let cursor: { segment: number; offset: number } | null = null;
    try {
      const parsed = JSON.parse(await readFile(join(dir, CURSOR_FILE), 'utf8')) as unknown;
      const c = parsed as { segment?: unknown; offset?: unknown };
      if (Number.isSafeInteger(c.segment) && Number.isSafeInteger(c.offset) && (c.offset as number) >= 0) {
        cursor = { segment: c.segment as number, offset: c.offset as number };
      }
    } catch {
      cursor = null; // none yet, or unreadable: resend from the oldest segment (at-least-once)
    }
    const indexes = (await readdir(dir))
      .map((n) => SEGMENT_RE.exec(n)?.[1])
      .filter((m): m is string => m !== undefined)
      .map(Number)
      .sort((a, b) => a - b);
    const segments: Segment[] = [];
    for (const index of indexes) {
      const path = join(dir, segmentName(index));
      if (cursor !== null && index < cursor.segment) {
        await unlink(path).catch(() => undefined); // delivered before the last cursor write
        continue;
      }
      const data = await readFile(path);
      const scan = scanFrames(data);
      if (!scan.ok || scan.end !== data.length) {
        // A torn tail (crash during an append) or damage: keep the whole frames before it.
        const fh = await open(path, 'r+');
        try {
          await fh.truncate(scan.end);
          await fh.datasync();
        } finally {
          await fh.close();
        }
        this.emit('alarm', {
          code: 'spool-repaired',
          message:
            `audit spool segment ${path}: ${data.length - scan.end} trailing byte(s) removed ` +
            `(${scan.ok ? 'incomplete message from an interrupted write' : scan.problem})`,
          spoolBytes: 0,
          spoolMaxBytes: this.opts.spoolMaxBytes,
          refusedTotal: this.counters.refused,
        });
      }
      segments.push({ index, path, size: scan.end });
    }
    this.segments = segments;
    this.maxIndex = Math.max(cursor?.segment ?? 0, ...segments.map((seg) => seg.index));
    const first = segments[0];
    if (first && cursor !== null && cursor.segment === first.index) {
      // The cursor must sit on a frame boundary not past the end.
      const data = await readFile(first.path);
      const scan = scanFrames(data.subarray(0, Math.min(cursor.offset, first.size)));
      this.cursorOffset = scan.ok ? scan.end : 0;
    } else {
      this.cursorOffset = 0;
    }
    // The oldest undelivered message left by a previous run: its own TIMESTAMP.
    this.oldestTime = await this.timeAtCursor();
    if (this.oldestTime === null) this.refreshOldest();
  }

  /** TIMESTAMP of the first undelivered frame on disk (null when none, or unreadable). */
  private async timeAtCursor(): Promise<number | null> {
    let offset = this.cursorOffset;
    for (const seg of this.segments) {
      if (offset < seg.size) {
        const fh = await open(seg.path, 'r').catch(() => null);
        if (fh === null) return null;
        try {
          return frameTime(await readAt(fh, offset, Math.min(256, seg.size - offset)));
        } catch {
          return null;
        } finally {
          await fh.close().catch(() => undefined);
        }
      }
      offset = 0;
    }
    return null;
  }

  private async acquireLock(): Promise<void> {
    const dir = this.opts.spoolDir;
    if (inUse.has(dir)) throw new Error(`audit spool ${dir} is already in use by this process`);
    const path = join(dir, LOCK_FILE);
    try {
      await writeFile(path, `${process.pid}\n`, { flag: 'wx', mode: 0o600 });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const pid = Number((await readFile(path, 'utf8').catch(() => '')).trim());
      if (Number.isSafeInteger(pid) && pid > 0 && pid !== process.pid && processAlive(pid)) {
        throw new Error(`audit spool ${dir} is in use by process ${pid}`, { cause: err });
      }
      await writeFile(path, `${process.pid}\n`, { mode: 0o600 }); // stale lock of a process that is gone
    }
    inUse.add(dir);
    this.lockHeld = true;
  }

  private async releaseLock(): Promise<void> {
    if (!this.lockHeld) return;
    this.lockHeld = false;
    inUse.delete(this.opts.spoolDir);
    await unlink(join(this.opts.spoolDir, LOCK_FILE)).catch(() => undefined);
  }

  private kickFlush(): void {
    if (!this.ready || this.flushing !== null) return;
    if (this.queue.length === 0) {
      const waiters = this.queueWaiters;
      this.queueWaiters = [];
      for (const w of waiters) w.resolve();
      return;
    }
    this.flushing = this.flushBatch().finally(() => {
      this.flushing = null;
      this.kickFlush();
    });
  }

  /** Appends everything queued with one write and one fdatasync, then lets delivery see it. */
  private async flushBatch(): Promise<void> {
    const frames = this.queue;
    const bytes = this.queueBytes;
    const waiters = this.queueWaiters;
    this.queue = [];
    this.queueWaiters = [];
    try {
      const segment = await this.appendSegment();
      const handle = this.appendHandle as FileHandle;
      const data = Buffer.concat(frames, bytes);
      let written = 0;
      while (written < data.length) {
        const r = await handle.write(data, written, data.length - written, null);
        written += r.bytesWritten;
      }
      await handle.datasync();
      segment.size += data.length;
      this.queueBytes -= bytes;
      for (const w of waiters) w.resolve();
      this.pump();
    } catch (err) {
      // The batch could not be made durable: it is refused, loudly, message by message.
      this.queueBytes -= bytes;
      this.counters.accepted -= frames.length;
      await this.reopenAfterFailure();
      for (const frame of frames) {
        this.refuse(
          'spool-write-failed',
          `audit spool write failed: ${(err as Error).message}`,
          xmlOfFrame(frame),
        );
      }
      this.refreshOldest();
      for (const w of waiters) w.reject(err);
    }
  }

  /** The segment appends go to: a new one when the current is large, or fully delivered (so it can go). */
  private async appendSegment(): Promise<Segment> {
    let last = this.segments[this.segments.length - 1];
    const deliveredAll = last !== undefined && this.segments.length === 1 && this.cursorOffset >= last.size;
    if (
      last === undefined ||
      last.size >= this.opts.segmentBytes ||
      (deliveredAll && last.size > 0) ||
      (this.appendHandle === null && last.index !== this.appendIndex && last.size > 0)
    ) {
      const index = ++this.maxIndex;
      const path = join(this.opts.spoolDir, segmentName(index));
      await this.appendHandle?.close().catch(() => undefined);
      this.appendHandle = null;
      const handle = await open(path, 'a', 0o600);
      await syncDir(this.opts.spoolDir);
      this.appendHandle = handle;
      this.appendIndex = index;
      last = { index, path, size: 0 };
      this.segments.push(last);
      this.afterAdvance(); // the previous segment may now be fully delivered: remove it
    } else if (this.appendHandle === null) {
      this.appendHandle = await open(last.path, 'a', 0o600);
      this.appendIndex = last.index;
    }
    return last;
  }

  private async reopenAfterFailure(): Promise<void> {
    // The file may now end with a partial batch: continue in a fresh segment so frames stay aligned.
    await this.appendHandle?.close().catch(() => undefined);
    this.appendHandle = null;
    const last = this.segments[this.segments.length - 1];
    if (last) {
      const fh = await open(last.path, 'r+').catch(() => null);
      if (fh) {
        await fh.truncate(last.size).catch(() => undefined);
        await fh.close().catch(() => undefined);
      }
    }
    this.appendIndex = -1;
  }

  // --------------------------------------------------------------------------------------- delivery

  private connect(): void {
    if (this.closed || this.connecting || this.connected || this.socket !== null) return;
    this.connecting = true;
    const m = this.tlsMaterial;
    const verifyHostname = m.verifyHostname ?? true;
    const socket = tls.connect({
      host: this.opts.host,
      port: this.opts.port,
      servername: isIP(m.serverName) === 0 ? m.serverName : undefined,
      secureContext: this.secureContext,
      rejectUnauthorized: true, // RFC 5425 section 5.2: the collector's certificate is verified
      checkServerIdentity: verifyHostname
        ? (_host, cert) => tls.checkServerIdentity(m.serverName, cert)
        : () => undefined,
    });
    this.socket = socket;
    const timer = this.clock.setTimeout(() => {
      socket.destroy(
        new Error(
          `no TLS session with ${this.opts.host}:${this.opts.port} within ${this.opts.connectTimeoutMs} ms`,
        ),
      );
    }, this.opts.connectTimeoutMs);
    timer.unref();
    let failed = false;
    const fail = (err: Error | null, reason: string): void => {
      if (failed) return;
      failed = true;
      this.clock.clearTimeout(timer);
      const wasConnected = this.connected;
      this.connecting = false;
      this.connected = false;
      if (this.socket === socket) this.socket = null;
      socket.destroy();
      if (err) this.emit('transport-error', { error: err });
      if (wasConnected) this.emit('disconnected', { reason });
      else this.counters.failedConnects++;
      this.scheduleReconnect();
      this.setState(wasConnected ? 'disconnected' : 'retrying', reason, null);
    };
    const established = (): void => {
      if (failed || this.socket !== socket || this.closed) return;
      this.clock.clearTimeout(timer);
      this.connecting = false;
      this.connected = true;
      socket.setKeepAlive(true, 30_000);
      this.emit('connected', { host: this.opts.host, port: this.opts.port, protocol: socket.getProtocol() });
      this.setState('connected', null, socket.getProtocol());
      this.counters.failedConnects = 0;
      this.pump();
    };
    socket.once('secureConnect', () => {
      // BCP 195 / RFC 9325 section 4.5: the repository's key must be strong enough (RSA ≥ 2048, EC ≥ 256).
      const weak = peerKeyProblem(socket);
      if (weak) {
        fail(new Error(`weak-key: the audit repository's certificate: ${weak}`), `weak-key: ${weak}`);
        return;
      }
      if (socket.getProtocol() !== 'TLSv1.3') {
        established();
        return;
      }
      // TLS 1.3 (RFC 8446 section 4.4.2): the client finishes its handshake before the server has checked
      // the client certificate; a collector refusing it answers with an alert after 'secureConnect'.
      // Frames written before that alert would be lost, so delivery starts only once the server has shown
      // it accepted the session (its NewSessionTicket, the 'session' event) or after a short settling time.
      const settle = this.clock.setTimeout(established, TLS13_SETTLE_MS);
      settle.unref();
      socket.once('session', () => {
        this.clock.clearTimeout(settle);
        established();
      });
      socket.once('close', () => this.clock.clearTimeout(settle));
    });
    socket.on('data', () => undefined); // RFC 5425: the collector sends nothing; anything is ignored
    socket.on('error', (err) => fail(err, err.message));
    socket.on('end', () => fail(null, 'collector closed the connection'));
    socket.on('close', () => fail(null, 'connection closed'));
  }

  private scheduleReconnect(): void {
    if (this.closed || this.reconnectTimer !== null) return;
    const attempts = Math.max(0, this.counters.failedConnects - 1);
    const delay = Math.min(this.opts.reconnectMaxMs, this.opts.reconnectMinMs * 2 ** Math.min(attempts, 30));
    const wait = jitter(delay);
    this.retryAt = this.clock.now() + wait;
    this.reconnectTimer = this.clock.setTimeout(() => {
      this.reconnectTimer = null;
      this.retryAt = null;
      this.connect();
    }, wait);
    this.reconnectTimer.unref();
  }

  /**
   * Records the connection's state and emits 'state' when it changed, or when it stays disconnected or
   * retrying for a different reason: a repository that stays away gives one line, not one per attempt.
   */
  private setState(state: AuditConnectionState, reason: string | null, protocol: string | null): void {
    if (this.closed) return;
    const previous = this.state;
    if (previous === state && this.stateReason === reason) return;
    this.state = state;
    this.stateReason = reason;
    const retryAt = state === 'connected' ? null : this.retryAt;
    this.emit('state', {
      state,
      previous,
      reason,
      retryAt: retryAt === null ? null : new Date(retryAt),
      retryInMs: retryAt === null ? null : Math.max(0, retryAt - this.clock.now()),
      host: this.opts.host,
      port: this.opts.port,
      protocol,
      failedConnects: this.counters.failedConnects,
      spoolBytes: this.spoolBytes(),
    });
  }

  /** Sends spooled frames in order while connected. One delivery loop at a time. */
  private pump(): void {
    if (this.pumping || !this.connected || this.closed) return;
    this.pumping = true;
    void this.pumpLoop().finally(() => {
      this.pumping = false;
      if (this.connected && !this.closed && this.pendingDelivery()) this.pump();
    });
  }

  private pendingDelivery(): boolean {
    const first = this.segments[0];
    return first !== undefined && (this.cursorOffset < first.size || this.segments.length > 1);
  }

  private async pumpLoop(): Promise<void> {
    let reader: { index: number; handle: FileHandle } | null = null;
    try {
      while (this.connected && this.socket !== null) {
        this.afterAdvance();
        const seg = this.segments[0];
        if (seg === undefined || this.cursorOffset >= seg.size) break;
        if (reader === null || reader.index !== seg.index) {
          await reader?.handle.close().catch(() => undefined);
          reader = { index: seg.index, handle: await open(seg.path, 'r') };
        }
        let length = Math.min(READ_CHUNK, seg.size - this.cursorOffset);
        let chunk = await readAt(reader.handle, this.cursorOffset, length);
        let scan = scanFrames(chunk);
        if (scan.ok && scan.frames === 0) {
          // One frame larger than the chunk: read exactly it.
          const header = chunk.subarray(0, chunk.indexOf(0x20));
          length = Math.min(
            seg.size - this.cursorOffset,
            header.length + 1 + Number(header.toString('ascii')),
          );
          chunk = await readAt(reader.handle, this.cursorOffset, length);
          scan = scanFrames(chunk);
        }
        // The frame at the cursor is the oldest undelivered one.
        this.oldestTime = frameTime(chunk) ?? this.oldestTime;
        if (!scan.ok || scan.frames === 0) {
          // Damage between the cursor and the durable end: skip the segment rather than wedge delivery.
          this.emit('alarm', {
            code: 'spool-repaired',
            message: `audit spool segment ${seg.path} unreadable at ${this.cursorOffset}: ${scan.ok ? 'truncated' : scan.problem}; skipped`,
            spoolBytes: this.spoolBytes(),
            spoolMaxBytes: this.opts.spoolMaxBytes,
            refusedTotal: this.counters.refused,
          });
          this.cursorOffset = seg.size;
          continue;
        }
        const socket = this.socket;
        await writeAll(socket, chunk.subarray(0, scan.end));
        this.cursorOffset += scan.end;
        if (this.spoolBytes() === 0) this.oldestTime = null;
        this.counters.delivered += scan.frames;
        this.cursorDirty = true;
        this.emit('delivered', { messages: scan.frames, bytes: scan.end });
        this.scheduleCursorWrite();
      }
    } catch (err) {
      // The socket failed mid-write: the frames stay in the spool and go again after reconnecting.
      this.emit('transport-error', { error: err as Error });
    } finally {
      await reader?.handle.close().catch(() => undefined);
    }
    this.afterAdvance();
    // Delivery stopped (all sent, or the connection went): the frame at the cursor is the oldest now.
    if (this.spoolBytes() > this.queueBytes) this.oldestTime = (await this.timeAtCursor()) ?? this.oldestTime;
    this.refreshOldest();
    if (this.spoolBytes() === 0) {
      const waiters = this.drainWaiters;
      this.drainWaiters = [];
      for (const w of waiters) w();
    }
  }

  /** Removes fully delivered segments other than the one appends go to. */
  private afterAdvance(): void {
    while (this.segments.length > 1) {
      const first = this.segments[0] as Segment;
      if (this.cursorOffset < first.size) break;
      this.segments.shift();
      this.cursorOffset = 0;
      this.cursorDirty = true;
      const path = first.path;
      // The cursor names the next segment before the old one goes (a crash in between only repeats
      // nothing: segments below the cursor are deleted at start-up).
      const done: Promise<void> = this.writeCursor()
        .then(() => unlink(path))
        .catch(() => undefined)
        .finally(() => this.unlinking.delete(done));
      this.unlinking.add(done);
    }
  }

  private scheduleCursorWrite(): void {
    if (this.cursorTimer !== null || this.closed) return;
    const wait = Math.max(0, this.lastCursorWrite + this.opts.cursorSyncIntervalMs - this.clock.now());
    this.cursorTimer = this.clock.setTimeout(() => {
      this.cursorTimer = null;
      void this.writeCursor().catch(() => undefined);
    }, wait);
    this.cursorTimer.unref();
  }

  private cursorWriting: Promise<void> = Promise.resolve();

  /** Persists the delivery position (write to a temporary file, rename over the old one). */
  private writeCursor(): Promise<void> {
    const next = this.cursorWriting.then(async () => {
      if (!this.cursorDirty) return;
      this.cursorDirty = false;
      const first = this.segments[0];
      const cursor = first
        ? { segment: first.index, offset: this.cursorOffset }
        : { segment: this.maxIndex + 1, offset: 0 };
      const tmp = join(this.opts.spoolDir, `${CURSOR_FILE}.tmp`);
      await writeFile(tmp, JSON.stringify(cursor) + '\n', { mode: 0o600 });
      await rename(tmp, join(this.opts.spoolDir, CURSOR_FILE));
      this.lastCursorWrite = this.clock.now();
    });
    this.cursorWriting = next.catch(() => undefined);
    return next;
  }
}

/** The RFC 5424 TIMESTAMP (ms since the epoch) of the octet-counted frame at the start of `buf`. */
export function frameTime(buf: Buffer): number | null {
  const m = /^\d+ <\d{1,3}>1 (\S+) /.exec(buf.subarray(0, 128).toString('latin1'));
  if (!m) return null;
  const t = Date.parse(m[1] as string);
  return Number.isFinite(t) ? t : null;
}

function xmlOfFrame(frame: Buffer): string {
  const bom = frame.indexOf(BOM);
  return bom < 0 ? frame.toString('utf8') : frame.subarray(bom + BOM.length).toString('utf8');
}

async function readAt(handle: FileHandle, position: number, length: number): Promise<Buffer> {
  const buf = Buffer.allocUnsafe(length);
  let got = 0;
  while (got < length) {
    const r = await handle.read(buf, got, length - got, position + got);
    if (r.bytesRead === 0) break;
    got += r.bytesRead;
  }
  return buf.subarray(0, got);
}

/** Resolves when the socket has accepted the data and flushed it to the kernel (the write callback). */
function writeAll(socket: tls.TLSSocket, data: Buffer): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    if (socket.destroyed || !socket.writable) {
      reject(new Error('socket is not writable'));
      return;
    }
    const onClose = (): void => reject(new Error('connection closed during write'));
    socket.once('close', onClose);
    socket.write(data, (err) => {
      socket.off('close', onClose);
      if (err) reject(err);
      else resolve();
    });
  });
}

function endSocket(socket: tls.TLSSocket, waitMs: number): Promise<void> {
  return new Promise<void>((resolve) => {
    if (socket.destroyed) {
      resolve();
      return;
    }
    const timer = setTimeout(() => {
      socket.destroy();
      resolve();
    }, waitMs);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve();
    });
    socket.end();
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
