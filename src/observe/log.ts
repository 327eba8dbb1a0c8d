// Structured JSON logs (winston), one line per association plus one per refusal or failure.
// Subscribes to the core's events; nothing here is on the per-PDU path.
import winston from 'winston';
import type { ProxyEvents } from './events.js';

export type LogLevel = 'error' | 'warn' | 'info' | 'debug';

export interface LoggerOptions {
  level: LogLevel;
  file?: string | null;
  /** Write to stderr instead of stdout (used by commands whose stdout is their output). */
  stderr?: boolean;
  silent?: boolean;
}

export function createLogger(opts: LoggerOptions): winston.Logger {
  const transports: winston.transport[] = [
    new winston.transports.Console({
      stderrLevels: opts.stderr ? ['error', 'warn', 'info', 'debug'] : ['error'],
    }),
  ];
  if (opts.file) transports.push(new winston.transports.File({ filename: opts.file }));
  return winston.createLogger({
    level: opts.level,
    silent: opts.silent ?? false,
    format: winston.format.combine(winston.format.timestamp(), winston.format.json()),
    defaultMeta: { service: 'dimse-tls-proxy' },
    transports,
  });
}

/**
 * An event's fields as log metadata. winston appends a metadata `message` to the line's own message, so an
 * event's `message` (its human-readable detail) is logged as `detail`.
 */
function meta(e: object): Record<string, unknown> {
  const { message, ...rest } = e as { message?: unknown };
  return message === undefined ? rest : { ...rest, detail: message };
}

/** Wire the core's events to log lines. Returns a function that unsubscribes. */
export function logEvents(events: ProxyEvents, log: winston.Logger): () => void {
  const off: Array<() => void> = [];
  const handlers = {
    'association-refused': (e: object) =>
      log.warn('association rejected', { event: 'association-rejected', ...meta(e) }),
    'association-accepted': (e: {
      id: string;
      callingAeTitle: string;
      calledAeTitle: string;
      upstream: string;
      acceptedContexts: number;
      refusedContexts: number;
    }) => log.debug('association accepted', { event: 'association-accepted', ...meta(e) }),
    'upstream-failed': (e: { id: string; upstream: string; reason: string; message: string }) =>
      log.error('archive unreachable, association rejected 2/3/1', { event: 'upstream-failed', ...meta(e) }),
    'dimse-refused': (e: object) =>
      log.warn('DIMSE request refused by policy', { event: 'dimse-refused', ...meta(e) }),
    'protocol-error': (e: object) =>
      log.warn('protocol error, association aborted', { event: 'protocol-error', ...meta(e) }),
    instance: (e: object) => log.debug('instance', { event: 'instance', ...meta(e) }),
    'association-closed': (e: { outcome: string }) => {
      const level = e.outcome === 'released' || e.outcome === 'rejected' ? 'info' : 'warn';
      log.log(level, 'association', { event: 'association', ...meta(e) });
    },
    'tls-client-rejected': (e: object) =>
      log.warn('TLS client rejected by the return listener', { event: 'tls-client-rejected', ...meta(e) }),
    'listener-error': (e: { message: string }) =>
      log.error('listener error', { event: 'listener-error', ...meta(e) }),
  } as const;
  // winston formats a message before its transports filter by level: per-instance debug lines would cost
  // a JSON serialisation each even when debug is off, so they are only subscribed when enabled.
  const debugOnly = new Set(['association-accepted', 'instance']);
  for (const [name, fn] of Object.entries(handlers)) {
    if (debugOnly.has(name) && !log.isDebugEnabled()) continue;
    events.on(name as never, fn as never);
    off.push(() => events.off(name as never, fn as never));
  }
  return () => off.forEach((f) => f());
}
