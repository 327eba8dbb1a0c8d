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
//
// The young generation's size is the other setting: V8 fixes it when the heap is created, so it cannot
// be changed from JavaScript (`setFlagsFromString('--max-semi-space-size=…')` after start leaves it as it
// was). `start` therefore replaces its own process image once, before anything is opened, with the same
// command plus HEAP_FLAGS (`process.execve`: same PID, same standard streams, so PID 1 in a container, a
// service unit's MainPID and signals are unaffected). 8 MB semi-spaces instead of V8's 32 MB: 100
// associations, peak RSS 169–170 → 144–146 MB at the same CPU per GB in two runs; 200 × 512 KB and
// 3 × 200 MB within noise or faster (bench A/B, README "Performance").

import { setFlagsFromString } from 'node:v8';

/** The heap-size flags `start` runs with (set by re-executing, see above). */
export const HEAP_FLAGS: readonly string[] = ['--max-semi-space-size=8'];
/** Set in the re-executed daemon's environment: the flags it was given that way (for its log). */
export const HEAP_FLAGS_ENV = 'DIMSE_TLS_PROXY_HEAP_FLAGS';

/** The collector settings the daemon applies at run time, as V8 flags (also printed in the start log). */
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
function givenOnCommandLine(
  flag: string,
  execArgv: readonly string[] = process.execArgv,
  nodeOptions: string = process.env.NODE_OPTIONS ?? '',
): boolean {
  const name = flag.replace(/=.*$/, '');
  const alt = `--${name.slice(2).replace(/-/g, '_')}`; // V8 takes --max_semi_space_size as well
  const sources = [...execArgv, ...nodeOptions.split(/\s+/)];
  return sources.some((a) => a.startsWith(name) || a.startsWith(alt));
}

/**
 * The heap flags a `start` process still lacks: none on a Node line the settings were not measured on,
 * none already on the command line — the admin's, or ours once re-executed — or in NODE_OPTIONS.
 */
export function heapFlagsToAdd(
  version: string,
  execArgv: readonly string[],
  env: Readonly<Record<string, string | undefined>>,
): string[] {
  if (!TUNED_MAJORS.has(Number(version.split('.')[0]))) return [];
  return HEAP_FLAGS.filter((f) => !givenOnCommandLine(f, execArgv, env.NODE_OPTIONS ?? ''));
}

/**
 * For `start` only: run this same command again, in this same process, with HEAP_FLAGS. Called before
 * any module opens anything (cli/reexec.ts is cli.ts's first import). Returns only when nothing
 * was to be done or the runtime cannot (then the daemon runs with V8's defaults and says so).
 */
export function reexecWithHeapFlags(argv: readonly string[] = process.argv): void {
  if (argv[2] !== 'start') return;
  // Started with an IPC channel (a process manager's fork): an exec'd image would inherit the channel's
  // descriptor mid-conversation. Run as is.
  if (process.channel) return;
  const flags = heapFlagsToAdd(process.versions.node, process.execArgv, process.env);
  if (flags.length === 0 || typeof process.execve !== 'function') return;
  try {
    process.execve(process.execPath, [process.execPath, ...flags, ...process.execArgv, ...argv.slice(1)], {
      ...process.env,
      [HEAP_FLAGS_ENV]: flags.join(' '),
    });
  } catch {
    // Not replaced (a platform without execve): carry on as is; the runtime log line shows no heapFlags.
  }
}

/** The heap flags this process was re-executed with (for the start log; empty when it was not). */
export function heapFlagsApplied(
  env: Readonly<Record<string, string | undefined>> = process.env,
  execArgv: readonly string[] = process.execArgv,
): string[] {
  // Both: an environment inherited from another daemon does not make this one's flags.
  return (env[HEAP_FLAGS_ENV] ?? '').split(' ').filter((f) => f !== '' && execArgv.includes(f));
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
