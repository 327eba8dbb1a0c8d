// The time source of the components that wait on timers of their own (the configuration watcher's
// debounce and poll, the readiness probe interval and age, the audit syslog sender's connect timeout,
// TLS settle time, reconnect backoff and cursor sync, the admin endpoint's event-loop lag window). They
// take an optional Clock, systemClock by default; tests pass a manual clock and move time themselves.

/** What a timer returns: enough for callers that unref their timers. */
export interface TimerHandle {
  ref(): unknown;
  unref(): unknown;
}

export interface Clock {
  /** Milliseconds since the epoch (systemClock: Date.now()). */
  now(): number;
  setTimeout(fn: () => void, ms: number): TimerHandle;
  setInterval(fn: () => void, ms: number): TimerHandle;
  /** Cancels a timeout or an interval; null and undefined are ignored. */
  clearTimeout(timer: TimerHandle | null | undefined): void;
}

/** The process's timers and wall clock. */
export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  setInterval: (fn, ms) => setInterval(fn, ms),
  clearTimeout: (timer) => {
    if (timer != null) clearTimeout(timer as NodeJS.Timeout);
  },
};

/** The process's timers with a monotonic now() (performance.now()), for measuring durations and drift. */
export const monotonicClock: Clock = { ...systemClock, now: () => performance.now() };
