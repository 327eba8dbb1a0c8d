/**
 * The audit repository connection made visible: each change of the syslog sender's connection state is one
 * log line (audit-connected at info, audit-disconnected and audit-retrying at warn) with the reason and the
 * time of the next attempt, and counted in dimse_proxy_audit_connection_state_changes_total{state}; the
 * connected gauge, the spool's bytes and the age of its oldest message, and the messages accepted,
 * delivered and refused are read from the sender at each scrape.
 */
import type { ProxyMetrics } from '../metrics.js';
import type { SyslogStateChange, SyslogTlsSender } from './syslog.js';

/** The logger methods used (a winston logger has them). */
export interface AuditTransportLog {
  info(message: string, meta: Record<string, unknown>): unknown;
  warn(message: string, meta: Record<string, unknown>): unknown;
}

const MESSAGES: Record<SyslogStateChange['state'], string> = {
  connected: 'audit repository connected; delivering the spool',
  disconnected: 'audit repository connection lost; audit messages are spooled until it is back',
  retrying: 'audit repository unreachable; audit messages are spooled until it is back',
};

/** One log line's fields for a state change. */
export function stateChangeMeta(c: SyslogStateChange): Record<string, unknown> {
  return {
    event: `audit-${c.state}`,
    state: c.state,
    previous: c.previous,
    host: c.host,
    port: c.port,
    ...(c.state === 'connected'
      ? { protocol: c.protocol }
      : { reason: c.reason, retryAt: c.retryAt?.toISOString() ?? null, retryInMs: c.retryInMs }),
    failedConnects: c.failedConnects,
    spoolBytes: c.spoolBytes,
  };
}

/** Logs and counts the sender's state changes and feeds the audit metrics. Returns a function that stops it. */
export function observeAuditTransport(
  sender: SyslogTlsSender,
  opts: { log: AuditTransportLog; metrics?: ProxyMetrics | null },
): () => void {
  const onState = (c: SyslogStateChange): void => {
    opts.metrics?.auditConnectionState(c.state);
    const meta = stateChangeMeta(c);
    if (c.state === 'connected') opts.log.info(MESSAGES[c.state], meta);
    else opts.log.warn(MESSAGES[c.state], meta);
  };
  sender.on('state', onState);
  opts.metrics?.observeAudit(() => sender.stats());
  return () => {
    sender.off('state', onState);
    opts.metrics?.observeAudit(null);
  };
}
