// The admin endpoint (node:http): GET /metrics (Prometheus text), GET /healthz (liveness: is the event
// loop turning?), GET /readyz (readiness: listeners bound and every upstream answering a mutual-TLS
// C-ECHO). Only GET and HEAD; anything else is 404 (unknown path) or 405 (other method). When the
// daemon passes a reload hook, POST /-/reload (?dryRun=1) reloads the configuration like SIGHUP.
// Bind it to loopback unless a scraper elsewhere needs it: the bodies name peers, upstreams and errors.
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { monotonicClock, type Clock, type TimerHandle } from '../util/clock.js';
import type { ReadinessStatus } from './readiness.js';

const JSON_TYPE = 'application/json; charset=utf-8';

/** What /metrics serves (ProxyMetrics fits; so does a bare prom-client Registry). */
export interface MetricsSource {
  metrics(): Promise<string>;
  readonly contentType: string;
}

export interface AdminServerOptions {
  host: string;
  port: number;
  metrics: MetricsSource;
  /** Upstream readiness (UpstreamReadiness fits); null when there is no probe: upstreams do not count. */
  readiness: { status(now?: Date): ReadinessStatus } | null;
  /** True when the DICOM listener(s) are bound and accepting. */
  listenersBound: () => boolean;
  /** /healthz answers 503 when the event loop lagged more than this within the window (default 1000). */
  maxEventLoopLagMs?: number;
  /** How often the loop lag is sampled (default 200 ms). */
  lagSampleIntervalMs?: number;
  /** How far back the worst lag counts (default 5000 ms). */
  lagWindowMs?: number;
  /** Time source of the lag sampler and its window (default the process's timers, monotonic time). */
  clock?: Clock;
  /**
   * POST /-/reload (?dryRun=1): reload the configuration (like SIGHUP) or only report what would change.
   * Resolves with the HTTP status and a JSON-serialisable body. Absent: the route is 404.
   */
  reload?: (dryRun: boolean) => Promise<{ code: number; body: unknown }>;
}

export interface HealthBody {
  status: 'ok' | 'stalled';
  /** Worst event-loop lag seen within the window, in milliseconds. */
  eventLoopLagMs: number;
  maxEventLoopLagMs: number;
}

export interface ReadyBody {
  status: 'ready' | 'not-ready';
  listeners: 'bound' | 'not-bound';
  /** Every upstream that is not ready, with the reason. */
  failing: Array<{ upstream: string; reason: string }>;
  upstreams: ReadinessStatus['upstreams'];
}

/**
 * Event-loop lag by timer drift: a timer due every `intervalMs` that fires late measures how long the
 * loop was blocked. The worst sample within the window is kept, so a stall is still visible to the
 * request that was queued behind it, and to the next probes for a while.
 */
class LagMonitor {
  private timer: TimerHandle | null = null;
  private expected = 0;
  private samples: Array<{ at: number; lag: number }> = [];

  constructor(
    private readonly intervalMs: number,
    private readonly windowMs: number,
    private readonly clock: Clock,
  ) {}

  start(): void {
    if (this.timer) return;
    this.expected = this.clock.now() + this.intervalMs;
    const tick = (): void => {
      const now = this.clock.now();
      this.record(now, Math.max(0, now - this.expected));
      this.expected = now + this.intervalMs;
      this.timer = this.clock.setTimeout(tick, this.intervalMs);
      this.timer.unref();
    };
    this.timer = this.clock.setTimeout(tick, this.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    this.clock.clearTimeout(this.timer);
    this.timer = null;
  }

  private record(at: number, lag: number): void {
    this.samples.push({ at, lag });
    const from = at - this.windowMs;
    while (this.samples.length > 0 && (this.samples[0] as { at: number }).at < from) this.samples.shift();
  }

  /** Worst lag within the window, including the one in progress (a timer overdue right now). */
  lagMs(): number {
    const now = this.clock.now();
    const from = now - this.windowMs;
    let worst = this.timer ? Math.max(0, now - this.expected) : 0;
    for (const s of this.samples) if (s.at >= from && s.lag > worst) worst = s.lag;
    return worst;
  }
}

export class AdminServer {
  private readonly server: http.Server;
  private readonly lag: LagMonitor;
  private readonly maxLagMs: number;

  constructor(private readonly opts: AdminServerOptions) {
    this.maxLagMs = opts.maxEventLoopLagMs ?? 1000;
    this.lag = new LagMonitor(
      opts.lagSampleIntervalMs ?? 200,
      opts.lagWindowMs ?? 5000,
      opts.clock ?? monotonicClock,
    );
    this.server = http.createServer(
      { requestTimeout: 10_000, headersTimeout: 5_000, keepAliveTimeout: 5_000 },
      (req, res) => void this.handle(req, res),
    );
    this.server.maxHeadersCount = 50;
  }

  /** Bind (port 0 picks a free port); resolves with the bound address. */
  listen(): Promise<AddressInfo> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void => reject(err);
      this.server.once('error', onError);
      this.server.listen({ host: this.opts.host, port: this.opts.port }, () => {
        this.server.removeListener('error', onError);
        this.lag.start();
        resolve(this.server.address() as AddressInfo);
      });
    });
  }

  address(): AddressInfo | null {
    const a = this.server.address();
    return a && typeof a === 'object' ? a : null;
  }

  /** Stop listening and close every connection (idle keep-alive ones included). */
  close(): Promise<void> {
    this.lag.stop();
    if (!this.server.listening) return Promise.resolve();
    return new Promise((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }

  /** The /healthz verdict. */
  health(): { code: number; body: HealthBody } {
    const lagMs = Math.round(this.lag.lagMs());
    const ok = lagMs <= this.maxLagMs;
    return {
      code: ok ? 200 : 503,
      body: { status: ok ? 'ok' : 'stalled', eventLoopLagMs: lagMs, maxEventLoopLagMs: this.maxLagMs },
    };
  }

  /** The /readyz verdict (as of `now`; default the readiness's own clock). */
  readiness(now?: Date): { code: number; body: ReadyBody } {
    let bound: boolean;
    try {
      bound = this.opts.listenersBound();
    } catch {
      bound = false;
    }
    const status = this.opts.readiness?.status(now) ?? null;
    const failing: ReadyBody['failing'] = [];
    if (status) {
      for (const [upstream, entry] of Object.entries(status.upstreams)) {
        if (!entry.ok) failing.push({ upstream, reason: entry.error ?? 'not ready' });
      }
    }
    const ready = bound && (status === null || status.ready);
    return {
      code: ready ? 200 : 503,
      body: {
        status: ready ? 'ready' : 'not-ready',
        listeners: bound ? 'bound' : 'not-bound',
        failing,
        upstreams: status?.upstreams ?? {},
      },
    };
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    let path: string;
    let dryRun = false;
    try {
      const url = new URL(req.url ?? '/', 'http://admin');
      path = url.pathname;
      dryRun = ['1', 'true'].includes(url.searchParams.get('dryRun') ?? '');
    } catch {
      path = '';
    }
    const reload = this.opts.reload;
    if (path === '/-/reload' && reload) {
      if (req.method !== 'POST') {
        res.setHeader('Allow', 'POST');
        send(res, req, 405, JSON_TYPE, JSON.stringify({ error: 'method not allowed' }));
        return;
      }
      try {
        const { code, body } = await reload(dryRun);
        send(res, req, code, JSON_TYPE, JSON.stringify(body));
      } catch (err) {
        send(res, req, 500, JSON_TYPE, JSON.stringify({ error: (err as Error).message }));
      }
      return;
    }
    const known = path === '/metrics' || path === '/healthz' || path === '/readyz';
    if (!known) {
      send(res, req, 404, JSON_TYPE, JSON.stringify({ error: 'not found' }));
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('Allow', 'GET, HEAD');
      send(res, req, 405, JSON_TYPE, JSON.stringify({ error: 'method not allowed' }));
      return;
    }
    try {
      if (path === '/metrics') {
        const text = await this.opts.metrics.metrics();
        send(res, req, 200, this.opts.metrics.contentType, text);
      } else if (path === '/healthz') {
        const { code, body } = this.health();
        send(res, req, code, JSON_TYPE, JSON.stringify(body));
      } else {
        const { code, body } = this.readiness();
        send(res, req, code, JSON_TYPE, JSON.stringify(body));
      }
    } catch (err) {
      send(res, req, 500, JSON_TYPE, JSON.stringify({ error: (err as Error).message }));
    }
  }
}

function send(
  res: http.ServerResponse,
  req: http.IncomingMessage,
  code: number,
  contentType: string,
  body: string,
): void {
  if (res.headersSent) {
    res.end();
    return;
  }
  const payload = Buffer.from(body, 'utf8');
  res.writeHead(code, {
    'Content-Type': contentType,
    'Content-Length': payload.length,
    'Cache-Control': 'no-store',
    'X-Content-Type-Options': 'nosniff',
  });
  res.end(req.method === 'HEAD' ? undefined : payload);
}
