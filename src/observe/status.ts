// Client side of the admin endpoint for the CLI's `status` command: reads /healthz and /readyz and
// renders them for a terminal. Exit code: 0 ready, 1 not ready (or event loop stalled), 2 unreachable.
// Also the requests of `status --associations`, `explain --admin` and `log-level` (adminRequest).
import type { HealthBody, ReadyBody } from './admin.js';
import type { LiveAssociation } from './events.js';

export type StatusExitCode = 0 | 1 | 2;

export interface StatusReport {
  /** The admin base URL queried. */
  url: string;
  exitCode: StatusExitCode;
  /**
   * Liveness only (`status --live`: container HEALTHCHECK, liveness probes): 0 healthy whatever the
   * upstreams' readiness, 1 unhealthy, 2 unreachable.
   */
  liveExitCode: StatusExitCode;
  reachable: boolean;
  /** Healthy and ready. */
  ready: boolean;
  healthCode: number | null;
  health: HealthBody | null;
  readyCode: number | null;
  readiness: ReadyBody | null;
  /** Why the endpoint is unreachable (connection error, timeout, not the admin endpoint). */
  error: string | null;
  /** Human-readable summary and upstream table. */
  text: string;
}

export interface FetchStatusOptions {
  /** Per request (default 5000 ms). */
  timeoutMs?: number;
}

/** `127.0.0.1:9464`, `http://host:9464`, `http://host:9464/prefix/` or `.../readyz` -> the base URL. */
export function adminBaseUrl(input: string): URL {
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(input) ? input : `http://${input}`;
  const url = new URL(withScheme);
  url.pathname = url.pathname.replace(/\/(readyz|healthz|metrics)\/?$/, '/');
  if (!url.pathname.endsWith('/')) url.pathname += '/';
  url.search = '';
  url.hash = '';
  return url;
}

async function getJson(
  url: URL,
  timeoutMs: number,
  method: 'GET' | 'POST' = 'GET',
): Promise<{ code: number; body: unknown }> {
  const res = await fetch(url, {
    method,
    headers: { accept: 'application/json' },
    signal: AbortSignal.timeout(timeoutMs),
    redirect: 'error',
  });
  const text = await res.text();
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw new Error(
      `${url.pathname} answered HTTP ${res.status} without JSON: not the proxy's admin endpoint?`,
    );
  }
  return { code: res.status, body };
}

function isHealth(v: unknown): v is HealthBody {
  const o = v as Partial<HealthBody> | null;
  return (
    typeof o === 'object' &&
    o !== null &&
    typeof o.status === 'string' &&
    typeof o.eventLoopLagMs === 'number'
  );
}

function isReady(v: unknown): v is ReadyBody {
  const o = v as Partial<ReadyBody> | null;
  return (
    typeof o === 'object' &&
    o !== null &&
    typeof o.status === 'string' &&
    Array.isArray(o.failing) &&
    typeof o.upstreams === 'object' &&
    o.upstreams !== null
  );
}

function describeError(err: unknown): string {
  const e = err as Error & { cause?: { code?: string; message?: string } };
  if (e?.name === 'TimeoutError' || e?.name === 'AbortError') return 'no answer in time';
  const cause = e?.cause;
  if (cause?.code) return `${cause.code}${cause.message ? `: ${cause.message}` : ''}`;
  if (cause?.message) return `${e.message}: ${cause.message}`;
  return e?.message ?? String(err);
}

/**
 * One request to the admin endpoint at `admin` (host:port or URL): `path` may carry a query string.
 * Throws with a readable reason when the endpoint cannot be reached or does not answer JSON.
 */
export async function adminRequest(
  admin: string,
  path: string,
  opts: { method?: 'GET' | 'POST'; timeoutMs?: number } = {},
): Promise<{ code: number; body: unknown }> {
  const base = adminBaseUrl(admin);
  try {
    return await getJson(
      new URL(path.replace(/^\//, ''), base),
      opts.timeoutMs ?? 5000,
      opts.method ?? 'GET',
    );
  } catch (err) {
    throw new Error(`admin endpoint ${base.href}: ${describeError(err)}`, { cause: err });
  }
}

/** The `status --associations` table. */
export function formatAssociations(list: readonly LiveAssociation[], now = Date.now()): string {
  if (list.length === 0) return 'no live associations';
  const rows = [['ID', 'PEER', 'FROM', 'CALLED -> TO', 'STATE', 'AGE', 'OPERATIONS', 'IN / OUT', 'WORKER']];
  for (const a of list) {
    const ops = Object.entries(a.operations)
      .map(([k, v]) => `${k.replace(/-RQ$/, '')} ${v}`)
      .join(', ');
    rows.push([
      a.id,
      a.peer ?? a.callingAeTitle ?? '-',
      `${a.remoteAddress}:${a.remotePort}`,
      `${a.calledAeTitle ?? '-'} -> ${a.upstream ?? '-'}`,
      `${a.state.caller}/${a.state.far}`,
      formatAge(now - Date.parse(a.startedAt)),
      ops || '-',
      `${formatBytes(a.bytesFromModality)} / ${formatBytes(a.bytesFromArchive)}`,
      a.worker === undefined ? '-' : String(a.worker),
    ]);
  }
  return `${list.length} live association(s)\n${table(rows)}`;
}

function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 ** 3) return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  return `${(n / 1024 ** 3).toFixed(2)} GiB`;
}

/** Query /healthz and /readyz of the admin endpoint at `url`. Never throws. */
export async function fetchStatus(url: string, opts: FetchStatusOptions = {}): Promise<StatusReport> {
  const timeoutMs = opts.timeoutMs ?? 5000;
  let base: URL;
  try {
    base = adminBaseUrl(url);
  } catch (err) {
    return finish({ url, error: `invalid URL ${JSON.stringify(url)}: ${(err as Error).message}` });
  }
  const shown = base.href;
  try {
    const [h, r] = await Promise.all([
      getJson(new URL('healthz', base), timeoutMs),
      getJson(new URL('readyz', base), timeoutMs),
    ]);
    if (!isHealth(h.body) || !isReady(r.body)) {
      return finish({ url: shown, error: "unexpected answer: not the proxy's admin endpoint?" });
    }
    return finish({ url: shown, healthCode: h.code, health: h.body, readyCode: r.code, readiness: r.body });
  } catch (err) {
    return finish({ url: shown, error: describeError(err) });
  }
}

function finish(p: {
  url: string;
  error?: string;
  healthCode?: number;
  health?: HealthBody;
  readyCode?: number;
  readiness?: ReadyBody;
}): StatusReport {
  const reachable = p.error === undefined;
  const healthy = p.healthCode === 200 && p.health?.status === 'ok';
  const ready = reachable && healthy && p.readyCode === 200 && p.readiness?.status === 'ready';
  const report: StatusReport = {
    url: p.url,
    exitCode: !reachable ? 2 : ready ? 0 : 1,
    liveExitCode: !reachable ? 2 : healthy ? 0 : 1,
    reachable,
    ready,
    healthCode: p.healthCode ?? null,
    health: p.health ?? null,
    readyCode: p.readyCode ?? null,
    readiness: p.readiness ?? null,
    error: p.error ?? null,
    text: '',
  };
  report.text = formatStatus(report);
  return report;
}

function formatAge(ms: number | null): string {
  if (ms === null) return '-';
  const s = Math.round(ms / 1000);
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.round(s / 60)}m`;
  return `${Math.round(s / 3600)}h`;
}

/** Left-aligned columns separated by two spaces; the last column is not padded. */
export function table(rows: string[][]): string {
  const widths: number[] = [];
  for (const row of rows) row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, cell.length)));
  return rows
    .map((row) =>
      row
        .map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i] ?? 0)))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

/** The terminal rendering of a report. */
export function formatStatus(report: StatusReport): string {
  const lines: string[] = [`dimse-tls-proxy admin endpoint ${report.url}`];
  if (!report.reachable) {
    lines.push(`  UNREACHABLE: ${report.error ?? 'unknown error'}`);
    return lines.join('\n');
  }
  const h = report.health;
  const r = report.readiness;
  lines.push(
    table([
      [
        '  health:',
        h ? `${h.status} (event loop lag ${h.eventLoopLagMs} ms, limit ${h.maxEventLoopLagMs} ms)` : '?',
      ],
      ['  listeners:', r?.listeners ?? '?'],
      ['  ready:', report.ready ? 'yes' : 'NO'],
    ]),
  );
  const upstreams = Object.entries(r?.upstreams ?? {});
  if (upstreams.length > 0) {
    const rows = [['UPSTREAM', 'STATE', 'LAST SUCCESS', 'AGE', 'LAST PROBE', 'ERROR']];
    for (const [name, u] of upstreams.sort(([a], [b]) => a.localeCompare(b))) {
      rows.push([
        name,
        u.ok ? 'ready' : 'NOT READY',
        u.lastSuccess ?? 'never',
        formatAge(u.ageMs),
        u.lastCheck ? `${u.lastCheck.ok ? 'ok' : 'failed'} ${u.lastCheck.durationMs}ms` : '-',
        u.error ?? '-',
      ]);
    }
    lines.push('', table(rows));
  }
  return lines.join('\n');
}
