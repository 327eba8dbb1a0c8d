// Process-wide runtime settings for the daemon: applied by `start` and `demo` before any socket opens,
// so the proxy is as fast when run as `node dist/cli.js start` (or from a service unit, a container or
// the package bin) as with any hand-picked command-line flag. Nothing here needs the user's help.
//
// Why (profiled on Node 26, README "Performance"): since V8 13.6 (Node 24; Node 26 has 14.x) V8 starts incremental
// marking from a task whenever the old generation's headroom is smaller than the young generation's
// target capacity, which V8 13.6 raised from 8 to 32 MB per semi-space. The relay's process holds a
// ~12–20 MB heap (policy, metrics, logging), so after every mark-compact the headroom
// (8 MB step + new space) is below that target and the next marking starts at once: during a transfer
// the daemon ran a full mark-compact every ~40 ms, spending 40 % of its CPU in the collector (cpu
// profile, --trace-gc, --trace-incremental-marking "Start (task)"). V8's own
// `--incremental-marking-soft-trigger` / `--incremental-marking-hard-trigger` replace that rule with
// "start marking when this percentage of the headroom is used": 50 % via a task, 80 % at once. V8
// reads both on every decision (heap.cc IncrementalMarkingLimitReached), so setting them at run time
// takes effect immediately; the heap limits themselves are unchanged and the collector still runs on
// allocation failure and external-memory pressure. A/B, 200 × 512 KB, Node 26.10: relay CPU per
// 105 MB 290 → 140 ms, 0.59 → 0.96 × stunnel in the same run.

import { setFlagsFromString } from 'node:v8';

/** The GC settings the daemon applies, as V8 flags (also printed in the start log). */
export const GC_FLAGS: readonly string[] = [
  '--incremental-marking-soft-trigger=50',
  '--incremental-marking-hard-trigger=80',
];

/**
 * Node majors the settings apply to: both ship V8 ≥ 13.6 (the 32 MB young-generation target that causes
 * the marking storm; Node 24 defaults `--scavenger-max-new-space-capacity-mb=32`) and both flags. The A/B
 * was measured on Node 26; on Node 24 two A/Bs on a heavily loaded host were inconclusive (README).
 */
const TUNED_MAJORS = new Set([24, 26]);

export interface RuntimeTuning {
  applied: readonly string[];
  /** Why nothing was applied, when nothing was. */
  skipped: string | null;
}

/** The V8 flags the user passed explicitly win: a flag already on the command line is not overridden. */
function givenOnCommandLine(flag: string): boolean {
  const name = flag.replace(/=.*$/, '');
  const alt = name.replace(/-/g, '_');
  const sources = [...process.execArgv, ...(process.env.NODE_OPTIONS ?? '').split(/\s+/)];
  return sources.some((a) => a.startsWith(name) || a.startsWith(alt));
}

/**
 * Apply the daemon's GC settings once, process-wide. `version` is injectable for tests. On any other Node
 * major nothing is changed (V8 would print "unrecognized flag" for a flag
 * it no longer has, and the heuristics may differ): the start log says so.
 */
export function tuneRuntime(version: string = process.versions.node): RuntimeTuning {
  const major = Number(version.split('.')[0]);
  if (!TUNED_MAJORS.has(major)) {
    return {
      applied: [],
      skipped: `Node ${version}: GC settings are for Node 24 and 26 only, left at V8 defaults`,
    };
  }
  const applied: string[] = [];
  for (const flag of GC_FLAGS) {
    if (givenOnCommandLine(flag)) continue;
    setFlagsFromString(flag);
    applied.push(flag);
  }
  return { applied, skipped: null };
}
