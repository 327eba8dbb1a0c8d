// The admin endpoint (node:http): GET /metrics (Prometheus text), GET /healthz (liveness: is the event
// loop turning?), GET /readyz (readiness: listeners bound and every upstream answering a mutual-TLS
// C-ECHO), and with the daemon's hooks GET /associations (live associations), GET /explain (what the
// running policy answers a calling AE), GET / POST /-/log-level (the log level until the next reload)
// and POST /-/reload (?dryRun=1; like SIGHUP). An unknown path is 404, another method 405.
// Bind it to loopback unless a scraper elsewhere needs it: the bodies name peers, upstreams and errors.
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { monotonicClock, type Clock, type TimerHandle } from '../util/clock.js';
import type { ReadinessStatus } from './readiness.js';
import type { LiveAssociation } from './events.js';
import type { Explanation, ExplainQuery } from '../policy/explain.js';

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
  /** GET /associations: the live associations. Absent: 404. */
  associations?: () => Promise<LiveAssociation[]> | LiveAssociation[];
  /** GET /explain?calling=&from=&called=&service=&moveDestination=: the running policy's answer. */
  explain?: (query: ExplainQuery) => Explanation;
  /** GET /-/log-level; POST /-/log-level?level=debug sets it until the next reload. */
  logLevel?: {
    get(): { level: string; configured: string };
    set(level: string): { code: number; body: unknown };
  };
}

type Reply = { code: number; body: unknown; type?: string; text?: string };

interface Route {
  methods: readonly string[];
  run(url: URL): Promise<Reply> | Reply;
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
  private readonly routeTable: Map<string, Route>;

  constructor(private readonly opts: AdminServerOptions) {
    this.maxLagMs = opts.maxEventLoopLagMs ?? 1000;
    this.routeTable = this.routes();
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

  /** The routes this endpoint serves with the hooks it was given (path -> methods and handler). */
  private routes(): Map<string, Route> {
    const o = this.opts;
    const GET = ['GET', 'HEAD'] as const;
    const routes = new Map<string, Route>([
      [
        '/metrics',
        {
          methods: GET,
          run: async () => ({
            code: 200,
            body: null,
            type: o.metrics.contentType,
            text: await o.metrics.metrics(),
          }),
        },
      ],
      ['/healthz', { methods: GET, run: () => this.health() }],
      ['/readyz', { methods: GET, run: () => this.readiness() }],
    ]);
    const reload = o.reload;
    if (reload) {
      routes.set('/-/reload', {
        methods: ['POST'],
        run: (url) => reload(['1', 'true'].includes(url.searchParams.get('dryRun') ?? '')),
      });
    }
    const associations = o.associations;
    if (associations) {
      routes.set('/associations', {
        methods: GET,
        run: async () => {
          const list = await associations();
          return { code: 200, body: { count: list.length, associations: list } };
        },
      });
    }
    const explain = o.explain;
    if (explain) {
      routes.set('/explain', {
        methods: GET,
        run: (url) => {
          const p = url.searchParams;
          const calling = p.get('calling');
          const from = p.get('from');
          if (!calling || !from) {
            return {
              code: 400,
              body: { error: 'calling and from are required (and called, service, moveDestination)' },
            };
          }
          const query: ExplainQuery = {
            callingAeTitle: calling,
            remoteAddress: from,
            calledAeTitle: p.get('called') ?? '',
            service: p.get('service'),
            moveDestination: p.get('moveDestination'),
          };
          return { code: 200, body: { query, ...explain(query) } };
        },
      });
    }
    const logLevel = o.logLevel;
    if (logLevel) {
      routes.set('/-/log-level', {
        methods: ['GET', 'HEAD', 'POST'],
        run: (url) => {
          const level = url.searchParams.get('level');
          if (level === null) return { code: 200, body: logLevel.get() };
          return logLevel.set(level);
        },
      });
    }
    return routes;
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    let url: URL | null;
    try {
      url = new URL(req.url ?? '/', 'http://admin');
    } catch {
      url = null;
    }
    const route = url ? this.routeTable.get(url.pathname) : undefined;
    if (!url || !route) {
      send(res, req, 404, JSON_TYPE, JSON.stringify({ error: 'not found' }));
      return;
    }
    const method = req.method ?? 'GET';
    // A POST changes something; a GET with a level (or dryRun) must not.
    const allowed =
      route.methods.includes(method) &&
      !(url.pathname === '/-/log-level' && method !== 'POST' && url.searchParams.has('level'));
    if (!allowed) {
      res.setHeader('Allow', route.methods.join(', '));
      send(res, req, 405, JSON_TYPE, JSON.stringify({ error: 'method not allowed' }));
      return;
    }
    try {
      const r = await route.run(url);
      send(res, req, r.code, r.type ?? JSON_TYPE, r.text ?? JSON.stringify(r.body));
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
