/**
 * Local audit file: one PS3.15 A.5 XML message per line, appended (the builders in messages.ts never emit
 * a raw line break, so a line is a message). Writes are batched — everything written while the previous
 * batch was on its way goes in one write() and one fdatasync — and reopen() supports external rotation
 * (logrotate: rename the file, then reopen). A write failure is never silent: the messages concerned are
 * reported through the 'alarm' event, with their text.
 */
import { EventEmitter } from 'node:events';
import { mkdir, open, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { EventOutcome } from './messages.js';

export interface FileSinkAlarm {
  code: 'file-write-failed' | 'closed';
  message: string;
  /** The messages that could not be written. */
  refused: string[];
}

export interface FileAuditSinkEvents {
  alarm: [FileSinkAlarm];
}

export interface FileAuditSinkOptions {
  /** fdatasync after each batch (default true). */
  sync?: boolean;
}

/** Appends audit messages to a file, one per line. */
export class FileAuditSink extends EventEmitter<FileAuditSinkEvents> {
  readonly name = 'file';
  private handle: FileHandle | null = null;
  private queue: string[] = [];
  private writing: Promise<void> | null = null;
  private idleWaiters: (() => void)[] = [];
  private closed = false;
  private readonly sync: boolean;

  constructor(
    readonly path: string,
    opts: FileAuditSinkOptions = {},
  ) {
    super();
    this.sync = opts.sync ?? true;
  }

  /** Creates the directory if needed and opens the file for appending. */
  async start(): Promise<void> {
    await mkdir(dirname(this.path), { recursive: true });
    this.handle = await open(this.path, 'a', 0o640);
    this.kick();
  }

  /** AuditSink: queues one message; false (and an alarm) once closed. */
  write(record: { xml: string; outcome?: EventOutcome; time?: Date }): boolean {
    if (this.closed) {
      this.emit('alarm', { code: 'closed', message: 'audit file sink is closed', refused: [record.xml] });
      return false;
    }
    // Defensive: a message is one line whatever produced it.
    this.queue.push(record.xml.replace(/[\r\n\u0085\u2028\u2029]/g, ' '));
    this.kick();
    return true;
  }

  /** Resolves once everything queued so far has been written (and synced). */
  flush(): Promise<void> {
    if (this.queue.length === 0 && this.writing === null) return Promise.resolve();
    return new Promise((resolve) => {
      this.idleWaiters.push(resolve);
      this.kick();
    });
  }

  /** Reopens the file by name (after an external rotation renamed it). */
  async reopen(): Promise<void> {
    await this.flush();
    const old = this.handle;
    this.handle = await open(this.path, 'a', 0o640);
    await old?.close().catch(() => undefined);
  }

  async close(_deadlineMs?: number): Promise<boolean> {
    if (this.closed) return true;
    if (this.handle !== null) await this.flush();
    this.closed = true;
    const left = this.queue;
    this.queue = [];
    if (left.length > 0) {
      this.emit('alarm', {
        code: 'closed',
        message: 'audit file sink closed before it was opened',
        refused: left,
      });
    }
    await this.handle?.close().catch(() => undefined);
    this.handle = null;
    return left.length === 0;
  }

  private kick(): void {
    if (this.writing !== null || this.handle === null) return;
    if (this.queue.length === 0) {
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of waiters) w();
      return;
    }
    const batch = this.queue;
    this.queue = [];
    this.writing = this.writeBatch(this.handle, batch).finally(() => {
      this.writing = null;
      this.kick();
    });
  }

  private async writeBatch(handle: FileHandle, batch: string[]): Promise<void> {
    try {
      await handle.appendFile(batch.join('\n') + '\n', 'utf8');
      if (this.sync) await handle.datasync();
    } catch (err) {
      this.emit('alarm', {
        code: 'file-write-failed',
        message: `audit file ${this.path}: ${(err as Error).message}`,
        refused: batch,
      });
    }
  }
}
