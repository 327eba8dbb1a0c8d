// A Clock whose time moves only when the test says so: advance(ms) fires the timers that fall due, in
// order of due time (then of arming), each with now() at its due time, including timers armed by those
// callbacks. jump(ms) moves time without firing anything, as a blocked event loop does; the next
// advance() then fires the overdue timers late.
import type { Clock, TimerHandle } from '../../src/util/clock.js';

interface ManualTimer extends TimerHandle {
  readonly id: number;
  due: number;
  readonly interval: number | null;
  readonly fn: () => void;
}

export class ManualClock implements Clock {
  private time: number;
  private seq = 0;
  private readonly timers = new Map<number, ManualTimer>();
  private armedWaiters: Array<{ count: number; resolve: () => void }> = [];
  /** Timers armed since the clock was made (setTimeout and setInterval calls). */
  armed = 0;

  constructor(start = Date.UTC(2026, 0, 1)) {
    this.time = start;
  }

  now(): number {
    return this.time;
  }

  setTimeout(fn: () => void, ms: number): TimerHandle {
    return this.arm(fn, ms, null);
  }

  setInterval(fn: () => void, ms: number): TimerHandle {
    return this.arm(fn, ms, Math.max(1, ms));
  }

  clearTimeout(timer: TimerHandle | null | undefined): void {
    if (timer != null) this.timers.delete((timer as ManualTimer).id);
  }

  /** Timers armed and not yet fired or cleared. */
  get pending(): number {
    return this.timers.size;
  }

  /** Due times of the pending timers, relative to now, soonest first. */
  dueIn(): number[] {
    return [...this.timers.values()].map((t) => t.due - this.time).sort((a, b) => a - b);
  }

  /** Resolves once `armed` reaches `count` (a component has armed a timer: it saw what it waits on). */
  untilArmed(count: number, timeoutMs = 10_000): Promise<void> {
    if (this.armed >= count) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`${this.armed} timer(s) armed, waited for ${count} for ${timeoutMs} ms`)),
        timeoutMs,
      );
      this.armedWaiters.push({
        count,
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
      });
    });
  }

  /** Moves time forward by `ms`, firing every timer due by then. */
  advance(ms: number): void {
    const end = this.time + Math.max(0, ms);
    for (;;) {
      let next: ManualTimer | null = null;
      for (const t of this.timers.values()) {
        if (t.due <= end && (next === null || t.due < next.due || (t.due === next.due && t.id < next.id)))
          next = t;
      }
      if (next === null) break;
      this.time = Math.max(this.time, next.due);
      if (next.interval === null) this.timers.delete(next.id);
      else next.due = this.time + next.interval;
      next.fn();
    }
    this.time = end;
  }

  /** Moves time forward without firing anything (the event loop was blocked for `ms`). */
  jump(ms: number): void {
    this.time += Math.max(0, ms);
  }

  private arm(fn: () => void, ms: number, interval: number | null): TimerHandle {
    const timer: ManualTimer = {
      id: ++this.seq,
      due: this.time + Math.max(0, ms),
      interval,
      fn,
      ref: () => timer,
      unref: () => timer,
    };
    this.timers.set(timer.id, timer);
    this.armed++;
    const ready = this.armedWaiters.filter((w) => this.armed >= w.count);
    this.armedWaiters = this.armedWaiters.filter((w) => this.armed < w.count);
    for (const w of ready) w.resolve();
    return timer;
  }
}
