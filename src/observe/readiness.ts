// Upstream readiness: each upstream of the snapshot is probed periodically with a real mutual-TLS C-ECHO
// (the proxy's client certificate, the upstream's CA bundle, its called AE title), so "ready" means an
// association through the same TLS material the relay uses would be accepted right now, not merely that
// a port is open. The proxy is ready when every upstream answered within maxAge.
import type { ProxyConfig, UpstreamConfig } from '../config/types.js';
import { echoUpstream } from '../tls/probe.js';
import { systemClock, type Clock, type TimerHandle } from '../util/clock.js';

/** Calling AE title of the probe when the upstream does not set callingAeTitle. */
export const PROBE_CALLING_AE_TITLE = 'DIMSE_PROXY';

/** One probe's result. */
export interface UpstreamCheck {
  ok: boolean;
  checkedAt: Date;
  durationMs: number;
  error: string | null;
}

export interface UpstreamReadinessEntry {
  /** A successful probe within maxAge. */
  ok: boolean;
  /** ISO time of the last successful probe, null when none yet. */
  lastSuccess: string | null;
  /** Milliseconds since the last successful probe, null when none yet. */
  ageMs: number | null;
  /** Why the upstream is not ready; for a ready one, the last probe's error if that probe failed. */
  error: string | null;
  /** The last probe, whatever its result; null before the first one finishes. */
  lastCheck: { ok: boolean; checkedAt: string; durationMs: number; error: string | null } | null;
}

export interface ReadinessStatus {
  /** Every upstream had a successful probe within maxAge (true when there are no upstreams). */
  ready: boolean;
  /** ISO time the status was computed at. */
  at: string;
  maxAgeMs: number;
  upstreams: Record<string, UpstreamReadinessEntry>;
}

export interface ReadinessOptions {
  intervalMs: number;
  maxAgeMs: number;
  timeoutMs: number;
  /** Called after every probe (e.g. for logs). */
  onCheck?: (upstream: string, check: UpstreamCheck) => void;
  /**
   * The C-ECHO implementation (tests may replace it). Default: echoUpstream, over exactly the relay's TLS
   * path (profile, client certificate, server name and hostname check), reading the files afresh.
   */
  probe?: (
    upstream: UpstreamConfig,
    timeoutMs: number,
  ) => Promise<{ ok: boolean; status: number | null; error: string | null }>;
  /** Time source of the probe interval, the probe times and the age against maxAge (default the system clock). */
  clock?: Clock;
}

interface State {
  /** Identifies the probe target; a reload that changes it forgets the upstream's history. */
  key: string;
  upstream: UpstreamConfig;
  lastCheck: UpstreamCheck | null;
  lastSuccess: Date | null;
  /** Sequence of the probe whose result is recorded: a slower older probe never overwrites a newer one. */
  recordedSeq: number;
}

function targetKey(u: UpstreamConfig): string {
  return JSON.stringify([
    u.host,
    u.port,
    u.aeTitle,
    u.callingAeTitle,
    u.tls.ca,
    u.tls.cert,
    u.tls.key,
    u.tls.serverName,
  ]);
}

export class UpstreamReadiness {
  private readonly states = new Map<string, State>();
  private readonly options: ReadinessOptions;
  private readonly clock: Clock;
  private timer: TimerHandle | null = null;
  private running = false;
  private seq = 0;
  private readonly inFlight = new Set<Promise<unknown>>();

  constructor(snapshot: { readonly config: ProxyConfig }, options: ReadinessOptions) {
    this.options = options;
    this.clock = options.clock ?? systemClock;
    this.setSnapshot(snapshot);
  }

  /**
   * Follow a reloaded configuration: upstreams that are gone are forgotten, new or changed ones start
   * not ready and are probed at once (when started); unchanged ones keep their history.
   */
  setSnapshot(snapshot: { readonly config: ProxyConfig }): void {
    const upstreams = snapshot.config.upstreams;
    for (const name of [...this.states.keys()]) {
      if (!(name in upstreams)) this.states.delete(name);
    }
    const changed: string[] = [];
    for (const [name, upstream] of Object.entries(upstreams)) {
      const key = targetKey(upstream);
      const state = this.states.get(name);
      if (state && state.key === key) {
        state.upstream = upstream;
        continue;
      }
      this.states.set(name, { key, upstream, lastCheck: null, lastSuccess: null, recordedSeq: 0 });
      changed.push(name);
    }
    if (this.running && changed.length > 0) void this.track(Promise.all(changed.map((n) => this.probe(n))));
  }

  /** Probe now and then every intervalMs (the timer does not keep the process alive). */
  start(): void {
    if (this.running) return;
    this.running = true;
    void this.round();
  }

  /** Stop probing; resolves when the probes in flight have finished (each is bounded by timeoutMs). */
  async stop(): Promise<void> {
    this.running = false;
    this.clock.clearTimeout(this.timer);
    this.timer = null;
    while (this.inFlight.size > 0) await Promise.allSettled([...this.inFlight]);
  }

  /** Probe every upstream now (whether started or not); resolves with the status afterwards. */
  async checkNow(): Promise<ReadinessStatus> {
    await this.track(Promise.all([...this.states.keys()].map((name) => this.probe(name))));
    return this.status();
  }

  /** Readiness as of `now`. */
  status(now: Date = new Date(this.clock.now())): ReadinessStatus {
    const maxAgeMs = this.options.maxAgeMs;
    const upstreams: Record<string, UpstreamReadinessEntry> = {};
    let ready = true;
    for (const [name, s] of this.states) {
      const ageMs = s.lastSuccess ? Math.max(0, now.getTime() - s.lastSuccess.getTime()) : null;
      const ok = ageMs !== null && ageMs <= maxAgeMs;
      const lastError = s.lastCheck && !s.lastCheck.ok ? s.lastCheck.error : null;
      let error: string | null = lastError;
      if (!ok) {
        if (s.lastCheck === null) error = 'not probed yet';
        else if (ageMs === null) error = lastError ?? 'C-ECHO failed';
        else
          error = `last successful C-ECHO ${Math.round(ageMs / 1000)}s ago (maxAge ${Math.round(maxAgeMs / 1000)}s)${lastError ? `; last error: ${lastError}` : ''}`;
      }
      if (!ok) ready = false;
      upstreams[name] = {
        ok,
        lastSuccess: s.lastSuccess?.toISOString() ?? null,
        ageMs,
        error,
        lastCheck: s.lastCheck
          ? {
              ok: s.lastCheck.ok,
              checkedAt: s.lastCheck.checkedAt.toISOString(),
              durationMs: Math.round(s.lastCheck.durationMs),
              error: s.lastCheck.error,
            }
          : null,
      };
    }
    return { ready, at: now.toISOString(), maxAgeMs, upstreams };
  }

  private track<T>(p: Promise<T>): Promise<T> {
    this.inFlight.add(p);
    void p.finally(() => this.inFlight.delete(p)).catch(() => undefined);
    return p;
  }

  private async round(): Promise<void> {
    if (!this.running) return;
    try {
      await this.track(Promise.all([...this.states.keys()].map((name) => this.probe(name))));
    } finally {
      if (this.running) {
        this.timer = this.clock.setTimeout(() => void this.round(), this.options.intervalMs);
        this.timer.unref();
      }
    }
  }

  /** One C-ECHO to one upstream; never throws. */
  private async probe(name: string): Promise<void> {
    const state = this.states.get(name);
    if (!state) return;
    const seq = ++this.seq;
    const key = state.key;
    const upstream = state.upstream;
    const checkedAt = new Date(this.clock.now());
    const started = performance.now();
    let result: { ok: boolean; error: string | null };
    try {
      const r = await (this.options.probe ?? echoUpstream)(upstream, this.options.timeoutMs);
      result = {
        ok: r.ok,
        error: r.ok
          ? null
          : (r.error ?? 'C-ECHO failed') +
            (r.status !== null ? ` (status 0x${r.status.toString(16).padStart(4, '0')})` : ''),
      };
    } catch (err) {
      result = { ok: false, error: (err as Error).message };
    }
    const check: UpstreamCheck = {
      ok: result.ok,
      checkedAt,
      durationMs: performance.now() - started,
      error: result.error,
    };
    const current = this.states.get(name);
    // Recorded only for the same target, and only when no newer probe has recorded already.
    if (current && current.key === key && seq > current.recordedSeq) {
      current.recordedSeq = seq;
      current.lastCheck = check;
      if (check.ok) current.lastSuccess = checkedAt;
    }
    try {
      this.options.onCheck?.(name, check);
    } catch {
      /* a failing observer must not break the probe loop */
    }
  }
}
