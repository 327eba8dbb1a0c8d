// `dimse-tls-proxy start`: the daemon. Wires the relay to the ledger, logs, metrics, readiness, the admin
// endpoint and live reload, and owns the signals: SIGHUP reloads, SIGTERM/SIGINT drain and exit 0.
import { loadConfigIsolated } from '../config/load-isolated.js';
import { formatChanges, referencedFiles } from '../config/diff.js';
import { Reloader, type ReloadResult } from '../runtime/reload.js';
import { ConfigWatcher } from '../config/watch.js';
import { LOG_LEVELS, type ProxyConfig } from '../config/types.js';
import type { LiveAssociation } from '../observe/events.js';
import { explainQuery } from '../policy/explain.js';
import { buildRuntimeSnapshot, type RuntimeSnapshot } from '../runtime/snapshot.js';
import { ProxyServer } from '../relay/server.js';
import type { LedgerBinding } from '../relay/association.js';
import { createLogger, logEvents } from '../observe/log.js';
import { ProxyMetrics, certificateFilesFromConfig, metricBoundsFromConfig } from '../observe/metrics.js';
import { UpstreamReadiness } from '../observe/readiness.js';
import { AdminServer } from '../observe/admin.js';
import { openAuditTrail, type AuditTrail } from '../observe/audit/index.js';
import { observeAuditTransport } from '../observe/audit/transport.js';
import { auditReloads } from '../runtime/reload-audit.js';
import { LedgerWriter } from '../integrity/writer.js';
import { WitnessFile } from '../integrity/witness.js';
import { InlineHasher } from '../integrity/hasher.js';
import type { CommitmentEvidence, InstanceEvidence, LedgerSink } from '../integrity/types.js';
import { heapFlagsApplied, tuneRuntime } from '../util/gc.js';
import { formatWindow } from '../tls/keys.js';
import { WorkerPool, resolveWorkerCount } from '../cluster/pool.js';
import { availableParallelism } from 'node:os';

/** What the daemon drives: the relay in this process, or the relay workers (workers: N > 1). */
type Relay = Pick<
  ProxyServer,
  'events' | 'listen' | 'listenReturn' | 'setSnapshot' | 'close' | 'listenersBound' | 'liveAssociations'
> & { listAssociations(): LiveAssociation[] | Promise<LiveAssociation[]> };

export interface StartHooks {
  /** Print a load failure (file:line key: message) and exit 1. */
  fail(message: string): never;
  explain(err: unknown): string;
}

/** The ledger as the relay sees it, counting written records for the metrics. */
function countingSink(writer: LedgerWriter, onWritten: () => void): LedgerSink {
  return {
    get healthy() {
      return writer.healthy;
    },
    append: (e: InstanceEvidence, written?: () => void) => writer.append(e, written).then(onWritten),
    appendCommitted: (e: CommitmentEvidence) => writer.appendCommitted(e).then(onWritten),
  };
}

/** A short, loggable form of a reload result. */
export function describeReload(r: ReloadResult): Record<string, unknown> {
  if (!r.ok) return { ok: false, stage: r.stage, message: r.message };
  return {
    ok: true,
    dryRun: r.dryRun,
    changes: r.changes.map((c) => c.summary),
    changedFiles: r.changedFiles,
    restartRequired: r.changes.filter((c) => c.restartRequired).map((c) => c.path),
    text: formatChanges(r.changes, r.changedFiles),
  };
}

export async function runStart(configPath: string, hooks: StartHooks): Promise<void> {
  let snapshot: RuntimeSnapshot;
  try {
    snapshot = buildRuntimeSnapshot(await loadConfigIsolated(configPath));
  } catch (err) {
    hooks.fail(`cannot start: ${hooks.explain(err)}`);
  }
  const { config } = snapshot;
  const log = createLogger({ level: config.logging.level, file: config.logging.file });
  // V8's collector settings for a relay (src/util/gc.ts): applied here, so no flag is needed.
  const tuning = tuneRuntime();
  log.info('runtime', {
    event: 'runtime',
    node: process.version,
    gcFlags: tuning.applied,
    heapFlags: heapFlagsApplied(),
    ...(tuning.skipped ? { gcSettings: tuning.skipped } : {}),
  });

  const metrics = new ProxyMetrics({ ...metricBoundsFromConfig(config), loadedAt: snapshot.loadedAt });
  const workers = resolveWorkerCount(config.workers.count, availableParallelism());
  let pool: WorkerPool | null = null;
  // The integrity ledger lives as long as the process: one chain, one writer.
  let ledger: LedgerWriter | null = null;
  // Every checkpoint is also kept off the box (integrity/witness.ts): a file on other storage, the audit
  // repository (the trail is opened below; a checkpoint written before it is there goes to the file only).
  const witnessPath = config.ledger.witness.file;
  const witnessFile =
    config.ledger.path && witnessPath
      ? new WitnessFile(witnessPath, (err) =>
          log.error('ledger checkpoint could not be written to the witness file', {
            event: 'ledger-witness-failed',
            path: witnessPath,
            error: err.message,
          }),
        )
      : null;
  let audit: AuditTrail | null = null;
  const witness = (line: string): void => {
    witnessFile?.append(line);
    if (config.ledger.witness.syslog) audit?.witnessCheckpoint(line);
  };
  if (config.ledger.path) {
    try {
      ledger = await LedgerWriter.openConfigured(
        config.ledger.path,
        config.ledger,
        snapshot.ledgerSigningKeyPem,
        {
          // The alarm clears by itself once a probe write succeeds (disk space back, permissions fixed).
          onCheckpoint: witness,
          onHealth: (healthy, reason) => {
            metrics.setLedgerHealthy(healthy);
            pool?.setLedgerHealthy(healthy);
            if (healthy) log.warn('integrity ledger writes again', { event: 'ledger-healthy' });
            else log.error('integrity ledger cannot write', { event: 'ledger-unhealthy', reason });
          },
        },
      );
    } catch (err) {
      log.error('cannot open the integrity ledger', {
        event: 'ledger-open-failed',
        path: config.ledger.path,
        error: (err as Error).message,
      });
      process.exit(1);
    }
    if (ledger.recovery)
      log.warn('ledger torn tail recovered', { event: 'ledger-recovered', ...ledger.recovery });
    log.info('ledger open', { event: 'ledger-open', path: config.ledger.path, head: ledger.head });
  }

  if (ledger) metrics.setLedgerHealthy(ledger.healthy);
  const sink = ledger ? countingSink(ledger, () => metrics.ledgerRecord()) : null;
  // With workers, each hashes its own associations and sends the records here, to the one writer.
  const hasher = ledger && workers === 1 ? new InlineHasher() : null;
  const binding: LedgerBinding | null =
    sink && hasher ? { sink, onFailure: config.ledger.onLedgerFailure, hasher } : null;
  if (workers > 1) {
    pool = new WorkerPool(snapshot, {
      count: workers,
      balance: config.workers.balance,
      ledger: sink,
      onLedgerFailure: config.ledger.onLedgerFailure,
    });
  }
  const server: Relay = pool ?? new ProxyServer(snapshot, { ledger: binding });
  let unsubscribeLog = logEvents(server.events, log);
  metrics.subscribe(server.events);
  server.events.on('upstream-connected', (e) => {
    if (e.tls) metrics.upstreamConnected(e.upstream, e.connectMs, e.handshakeMs);
  });
  reportCertificates(metrics, config, log);

  try {
    const addr = await server.listen();
    log.info('listening', {
      event: 'listening',
      host: addr.address,
      port: addr.port,
      ...(pool ? { workers, balance: config.workers.balance } : {}),
      routes: config.routes.map((r) => `${r.calledAeTitle} -> ${r.upstream}`),
      peers: Object.keys(config.peers).length,
    });
    const ret = await server.listenReturn();
    if (ret) {
      log.info('return listener', {
        event: 'listening-return',
        host: ret.address,
        port: ret.port,
        receivers: Object.values(config.peers)
          .filter((p) => p.receiver)
          .map((p) => `${p.aeTitle} -> ${p.receiver?.host ?? ''}:${p.receiver?.port ?? 0}`),
      });
    }
  } catch (err) {
    log.error('cannot listen', { event: 'listen-failed', error: (err as Error).message });
    process.exit(1);
  }

  // The DICOM audit trail (PS3.15 A.5): file and/or syslog over TLS with a durable spool.
  let unsubscribeAudit: (() => void) | null = null;
  let unobserveAudit: (() => void) | null = null;
  if (config.audit) {
    try {
      audit = await openAuditTrail(config.audit, {
        aeTitles: config.routes.map((r) => r.calledAeTitle),
        target: (name, listener) => {
          const c = reloader?.current.config ?? config;
          if (listener === 'forward') {
            const u = c.upstreams[name];
            return u ? { address: u.host, aeTitle: u.aeTitle } : null;
          }
          const r = c.peers[name]?.receiver;
          return r ? { address: r.host, aeTitle: r.aeTitle } : null;
        },
      });
    } catch (err) {
      log.error('cannot open the audit trail', {
        event: 'audit-open-failed',
        error: (err as Error).message,
      });
      process.exit(1);
    }
    const trail = audit;
    trail.on('alarm', (a) => {
      metrics.auditAlarm();
      log.error('audit alarm', { event: 'audit-alarm', ...(a as object) });
    });
    // The repository connection: audit-connected / audit-disconnected / audit-retrying lines, and the
    // connected, spool bytes, oldest message age and message gauges read at each scrape.
    const sender = trail.syslogSender;
    if (sender) unobserveAudit = observeAuditTransport(sender, { log, metrics });
    unsubscribeAudit = trail.subscribe(server.events);
    trail.applicationStart();
  }

  // Live reload: build everything, swap, keep the old snapshot on any error (runtime/reload.ts).
  const readiness = config.admin?.readiness ? new UpstreamReadiness(snapshot, config.admin.readiness) : null;
  if (readiness) metrics.observeReadiness(() => readiness.status());
  // eslint-disable-next-line prefer-const -- assigned once; read by the audit target lookup above
  let reloader: Reloader;
  reloader = new Reloader({
    load: loadConfigIsolated,
    configPath,
    initial: snapshot,
    apply: async (s) => {
      const { rebound } = await server.setSnapshot(s);
      for (const what of rebound) log.info('listener moved', { event: 'listener-rebound', listener: what });
    },
  });
  let watcher: ConfigWatcher | null = null;
  // Changes and failures alike go on the audit trail (Security Alert 110129; runtime/reload-audit.ts).
  if (audit) auditReloads(reloader, audit);
  reloader.on('reloaded', (r) => {
    const next = r.snapshot.config;
    metrics.reloadResult(true, r.snapshot.loadedAt);
    metrics.setBounds(metricBoundsFromConfig(next));
    reportCertificates(metrics, next, log);
    readiness?.setSnapshot(r.snapshot);
    log.level = next.logging.level;
    unsubscribeLog();
    unsubscribeLog = logEvents(server.events, log);
    log.info('configuration reloaded', { event: 'config-reloaded', ...describeReload(r), text: undefined });
    const restart = r.changes.filter((c) => c.restartRequired);
    if (restart.length > 0) {
      log.warn('some changes take effect only after a restart', {
        event: 'config-restart-required',
        keys: restart.map((c) => c.path),
      });
    }
    void watcher?.refresh();
  });
  reloader.on('reload-failed', (r) => {
    metrics.reloadResult(false);
    log.error('configuration reload failed; the running policy and certificates stay in force', {
      event: 'config-reload-failed',
      stage: r.stage,
      error: r.message,
    });
  });
  const reload = (trigger: string): void => {
    log.info('reloading configuration', { event: 'config-reload', trigger });
    void reloader.reload();
  };
  process.on('SIGHUP', () => reload('SIGHUP'));
  if (config.reload.watch) {
    watcher = new ConfigWatcher({
      configPath,
      files: () => referencedFiles(reloader.current.config),
      pollIntervalMs: config.reload.pollIntervalMs,
      persistent: false,
    });
    watcher.on('change', (paths) => reload(`file change: ${paths.join(', ')}`));
    watcher.start();
  }

  // The admin endpoint (bound once; moving it needs a restart).
  let admin: AdminServer | null = null;
  if (config.admin) {
    admin = new AdminServer({
      host: config.admin.host,
      port: config.admin.port,
      metrics,
      readiness,
      listenersBound: () => server.listenersBound(),
      reload: async (dryRun) => {
        const r = dryRun ? await reloader.dryRun() : await reloader.reload();
        return { code: r.ok ? 200 : 422, body: describeReload(r) };
      },
      associations: () => server.listAssociations(),
      explain: (query) => explainQuery(reloader.current.policy, query),
      logLevel: {
        get: () => ({ level: log.level, configured: reloader.current.config.logging.level }),
        set: (level) => {
          if (!(LOG_LEVELS as readonly string[]).includes(level)) {
            return {
              code: 400,
              body: { error: `level must be one of ${LOG_LEVELS.join(', ')}, not ${JSON.stringify(level)}` },
            };
          }
          const before = log.level;
          log.level = level;
          // The per-instance debug lines are subscribed only while debug is on (observe/log.ts).
          unsubscribeLog();
          unsubscribeLog = logEvents(server.events, log);
          log.warn('log level changed until the next reload', {
            event: 'log-level',
            from: before,
            to: level,
          });
          return { code: 200, body: { level, configured: reloader.current.config.logging.level } };
        },
      },
    });
    try {
      const addr = await admin.listen();
      log.info('admin endpoint', { event: 'listening-admin', host: addr.address, port: addr.port });
    } catch (err) {
      log.error('cannot listen (admin endpoint)', {
        event: 'listen-failed',
        error: (err as Error).message,
      });
      process.exit(1);
    }
    readiness?.start();
  }

  // Graceful drain: stop accepting, let live associations finish up to limits.drainTimeout, then
  // A-ABORT the rest (both sides), write the last ledger records and checkpoint, exit 0.
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    const drainMs = reloader.current.config.limits.drainTimeoutMs;
    const liveAssociations = server.liveAssociations;
    watcher?.stop();
    // close() stops accepting before it returns (a single process closes its listening sockets at once;
    // the pool's primary refuses every pending connection from then on), so 'stopping' is only said when
    // it is true: a connection made after this line is refused.
    const closed = server.close(drainMs);
    log.info('stopping', { event: 'stopping', signal, liveAssociations, drainTimeoutMs: drainMs });
    void closed
      .then(async () => {
        await readiness?.stop();
        await admin?.close();
        // The ledger first: its final checkpoint still reaches the witnesses (file, audit syslog).
        await ledger?.close();
        await witnessFile?.flush();
        unsubscribeAudit?.();
        audit?.applicationStop();
        await audit?.close();
        unobserveAudit?.();
        await hasher?.close();
      })
      .catch((err: unknown) =>
        log.error('shutdown step failed', { event: 'shutdown-failed', error: String(err) }),
      )
      .then(() => {
        log.info('stopped', { event: 'stopped' });
        log.on('finish', () => process.exit(0));
        log.end();
        setTimeout(() => process.exit(0), 1000).unref();
      });
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

/** Certificate not-after gauges for every certificate and CA the config names; unreadable ones are logged. */
function reportCertificates(
  metrics: ProxyMetrics,
  config: ProxyConfig,
  log: ReturnType<typeof createLogger>,
): void {
  const { certificates, errors } = metrics.setCertificates(certificateFilesFromConfig(config));
  const window = config.tls.expiryWarningMs;
  const soon = Date.now() + window;
  for (const c of certificates) {
    if (c.notAfter.getTime() < soon) {
      log.warn(`certificate expires within tls.expiryWarning (${formatWindow(window)})`, {
        event: 'certificate-expiring',
        ...c,
      });
    }
  }
  for (const e of errors)
    log.warn('certificate not readable for metrics', { event: 'certificate-unreadable', ...e });
}
