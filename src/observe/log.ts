// Structured JSON logs (winston), one line per association plus one per refusal or failure.
// Subscribes to the core's events; nothing here is on the per-PDU path.
import winston from 'winston';
import { PROTOCOL_ERROR_ABORT_REASONS, type ProtocolErrorCode } from '../vocabulary/outcomes.js';
import type { ProxyEventMap, ProxyEvents } from './events.js';

import { LOG_LEVELS, type LogLevel } from '../config/types.js';

export type { LogLevel };

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
      stderrLevels: opts.stderr ? [...LOG_LEVELS] : ['error'],
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

/** A protocol error that ends the association says so; a finding the association survives does not. */
function protocolErrorMessage(code: ProtocolErrorCode): string {
  return PROTOCOL_ERROR_ABORT_REASONS[code] === null
    ? 'protocol finding, association continues'
    : 'protocol error, association aborted';
}

/** Refused connections from one address for one reason: one line per this window, with the count since. */
const REFUSAL_LOG_WINDOW_MS = 10_000;
/** Addresses tracked for that (a flood from many addresses costs no more than this many entries). */
const REFUSAL_LOG_KEYS = 1024;

/**
 * A flood of refused connections must not become a flood of log lines: the first refusal of an address
 * for a reason is logged, then at most one line per window carrying `suppressed`, the refusals not logged
 * since (the metric counts every one).
 */
function refusalLogger(log: winston.Logger): (e: ProxyEventMap['connection-refused'][0]) => void {
  const seen = new Map<string, { until: number; suppressed: number }>();
  return (e) => {
    const key = `${e.listener} ${e.reason} ${e.remoteAddress}`;
    const now = Date.now();
    const entry = seen.get(key);
    if (entry && now < entry.until) {
      entry.suppressed++;
      return;
    }
    if (!entry && seen.size >= REFUSAL_LOG_KEYS) seen.clear();
    seen.set(key, { until: now + REFUSAL_LOG_WINDOW_MS, suppressed: 0 });
    log.warn('connection refused before association', {
      event: 'connection-refused',
      ...meta(e),
      ...(entry ? { suppressed: entry.suppressed } : {}),
    });
  };
}

/** Wire the core's events to log lines. Returns a function that unsubscribes. */
export function logEvents(events: ProxyEvents, log: winston.Logger): () => void {
  const off: Array<() => void> = [];
  // Typed by the event map: each line's `refusal`, `reason`, `code` and `outcome` are the vocabulary's names.
  const handlers: { [K in keyof ProxyEventMap]?: (e: ProxyEventMap[K][0]) => void } = {
    'association-refused': (e) =>
      log.warn('association rejected', { event: 'association-rejected', ...meta(e) }),
    'association-accepted': (e) =>
      log.debug('association accepted', { event: 'association-accepted', ...meta(e) }),
    'upstream-failed': (e) =>
      log.error('archive unreachable, association rejected 2/3/1', { event: 'upstream-failed', ...meta(e) }),
    'dimse-refused': (e) =>
      log.warn('DIMSE request refused by policy', { event: 'dimse-refused', ...meta(e) }),
    'protocol-error': (e) => log.warn(protocolErrorMessage(e.code), { event: 'protocol-error', ...meta(e) }),
    // Patient data stays out of the logs: of what the data set named, only the study is logged.
    instance: ({ dataset, ...e }) =>
      log.debug('instance', {
        event: 'instance',
        ...meta(e),
        studyInstanceUid: dataset.studyInstanceUid,
      }),
    'association-closed': (e) => {
      const level = e.outcome === 'released' || e.outcome === 'rejected' ? 'info' : 'warn';
      log.log(level, 'association', { event: 'association', ...meta(e) });
    },
    'tls-client-rejected': (e) =>
      log.warn('TLS client rejected by the return listener', { event: 'tls-client-rejected', ...meta(e) }),
    'listener-error': (e) => log.error('listener error', { event: 'listener-error', ...meta(e) }),
    'connection-refused': refusalLogger(log),
    'worker-started': (e) => log.info('relay worker started', { event: 'worker-started', ...meta(e) }),
    'worker-exited': (e) =>
      log.error('relay worker exited; its associations were closed with it', {
        event: 'worker-exited',
        ...meta(e),
      }),
  };
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
