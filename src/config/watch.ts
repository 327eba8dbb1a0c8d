// Watches the configuration file and the files it names (certificates, keys) for content changes.
//
// fs.watch is pointed at directories, never at the files themselves, because the usual ways of replacing a
// file change its inode: an editor's atomic save (write a temporary file, rename it over the old one) and a
// Kubernetes ConfigMap/Secret volume update, where `dir/file -> ..data/file`, `..data -> ..2026_11_25_…`
// and the update renames a new `..data` symlink over the old one. Every directory holding a symlink on the
// way to each file is watched, as is the directory of the file's real path, and the chain is resolved
// again after every check, so the watches follow the swap. An event only schedules a check; the check
// compares SHA-256 content hashes, so events that change nothing (touch, chmod, unrelated files) emit
// nothing. Events are debounced so that a multi-step write gives one 'change'. A slow poll catches what
// fs.watch misses on filesystems where it does not work (NFS, some overlay and FUSE mounts).
import { EventEmitter } from 'node:events';
import { createHash } from 'node:crypto';
import { lstatSync, readlinkSync, statSync, watch, type FSWatcher } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, parse, resolve, sep } from 'node:path';
import { systemClock, type Clock, type TimerHandle } from '../util/clock.js';
import { hashFile as hashFileSync } from './diff.js';

export interface ConfigWatcherOptions {
  /** The configuration file. */
  configPath: string;
  /** The other files to watch (see referencedFiles in diff.ts); called again at every check. */
  files: () => string[];
  /** Quiet time after the last event before the files are checked. Default 250 ms. */
  debounceMs?: number;
  /** Longest a check waits under a continuous stream of events. Default max(1000, 4 × debounceMs). */
  maxWaitMs?: number;
  /** Interval of the poll that backs fs.watch up; 0 = no poll. Default 2000 ms. */
  pollIntervalMs?: number;
  /** Whether the watcher's handles keep the process alive. Default true. */
  persistent?: boolean;
  /** Use fs.watch; false = poll only (for filesystems where fs.watch is known not to work). Default true. */
  fsWatch?: boolean;
  /** Time source of the debounce and the poll (default the system clock). */
  clock?: Clock;
}

export interface ConfigWatcherEvents {
  /** Absolute paths (as given, symlinks not resolved) whose content changed, sorted. */
  change: [paths: string[]];
}

const MAX_SYMLINKS = 40;

interface DirWatch {
  watcher: FSWatcher;
  ino: number;
  dev: number;
}

export class ConfigWatcher extends EventEmitter<ConfigWatcherEvents> {
  private readonly configPath: string;
  private readonly files: () => string[];
  private readonly debounceMs: number;
  private readonly maxWaitMs: number;
  private readonly pollIntervalMs: number;
  private readonly persistent: boolean;
  private readonly fsWatch: boolean;
  private readonly clock: Clock;

  private running = false;
  /** Content hash of every tracked path at the last check; null = missing or unreadable. */
  private hashes = new Map<string, string | null>();
  private lastFiles: string[] = [];
  private readonly watches = new Map<string, DirWatch>();
  /** Names (symlinks and final components) whose events matter, in any watched directory. */
  private names = new Set<string>();
  private debounceTimer: TimerHandle | null = null;
  private burstStart: number | null = null;
  private pollTimer: TimerHandle | null = null;
  private checking: Promise<void> | null = null;
  private recheck = false;
  private polling = false;

  constructor(options: ConfigWatcherOptions) {
    super();
    this.configPath = resolve(options.configPath);
    this.files = options.files;
    this.debounceMs = Math.max(0, options.debounceMs ?? 250);
    this.maxWaitMs = Math.max(this.debounceMs, options.maxWaitMs ?? Math.max(1000, 4 * this.debounceMs));
    this.pollIntervalMs = Math.max(0, options.pollIntervalMs ?? 2000);
    this.persistent = options.persistent ?? true;
    this.fsWatch = options.fsWatch ?? true;
    this.clock = options.clock ?? systemClock;
  }

  /** Records the current content of every file as the baseline and starts watching. */
  start(): void {
    if (this.running) return;
    this.running = true;
    this.hashes = new Map();
    for (const path of this.trackedPaths()) this.hashes.set(path, hashFileSync(path));
    this.updateWatches();
    if (this.pollIntervalMs > 0) {
      this.pollTimer = this.clock.setInterval(() => void this.poll(), this.pollIntervalMs);
      if (!this.persistent) this.pollTimer.unref();
    }
  }

  /** Closes every fs watcher and timer; no 'change' is emitted afterwards. */
  stop(): void {
    this.running = false;
    for (const { watcher } of this.watches.values()) watcher.close();
    this.watches.clear();
    this.clock.clearTimeout(this.debounceTimer);
    this.clock.clearTimeout(this.pollTimer);
    this.debounceTimer = null;
    this.pollTimer = null;
    this.burstStart = null;
    this.recheck = false;
  }

  /**
   * Checks now: calls files() again (new files get their current content as baseline), resolves the
   * symlink chains again and emits 'change' if any content changed. Call it after a reload so that files
   * the new configuration names are watched at once rather than at the next poll.
   */
  refresh(): Promise<void> {
    return this.check();
  }

  /** The directories currently watched (real paths), sorted; for diagnostics and tests. */
  get watchedDirectories(): string[] {
    return [...this.watches.keys()].sort();
  }

  private trackedPaths(): string[] {
    try {
      this.lastFiles = this.files().map((f) => resolve(f));
    } catch {
      // Keep the previous list: a failing callback must not stop the watching of what we know.
    }
    return [...new Set([this.configPath, ...this.lastFiles])];
  }

  /** An fs event or a poll found something: check once things have been quiet for debounceMs. */
  private schedule(): void {
    if (!this.running) return;
    const now = this.clock.now();
    this.burstStart ??= now;
    this.clock.clearTimeout(this.debounceTimer);
    const delay = Math.max(0, Math.min(this.debounceMs, this.burstStart + this.maxWaitMs - now));
    this.debounceTimer = this.clock.setTimeout(() => {
      this.debounceTimer = null;
      this.burstStart = null;
      void this.check();
    }, delay);
    if (!this.persistent) this.debounceTimer.unref();
  }

  /** Compares content hashes with the baseline and emits the changed paths; serialised. */
  private check(): Promise<void> {
    if (this.checking) {
      this.recheck = true;
      return this.checking;
    }
    const run = async (): Promise<void> => {
      do {
        this.recheck = false;
        if (!this.running) return;
        const paths = this.trackedPaths();
        const next = new Map<string, string | null>();
        const changed: string[] = [];
        for (const path of paths) {
          const hash = await hashFile(path);
          next.set(path, hash);
          if (this.hashes.has(path) && this.hashes.get(path) !== hash) changed.push(path);
        }
        if (!this.running) return;
        this.hashes = next;
        this.updateWatches();
        if (changed.length > 0) this.emit('change', changed.sort());
      } while (this.recheck && this.running);
    };
    const promise = run().finally(() => {
      this.checking = null;
    });
    this.checking = promise;
    return promise;
  }

  /** The poll: re-establish lost watches; if some content differs, check after the debounce (a write may be under way). */
  private async poll(): Promise<void> {
    if (!this.running || this.polling || this.debounceTimer !== null || this.checking !== null) return;
    this.polling = true;
    try {
      const paths = this.trackedPaths();
      let differs = paths.some((path) => !this.hashes.has(path));
      for (const path of paths) {
        if (differs) break;
        differs = (await hashFile(path)) !== this.hashes.get(path);
      }
      if (!this.running) return;
      this.updateWatches();
      if (differs) this.schedule();
    } finally {
      this.polling = false;
    }
  }

  /** Watches exactly the directories the current symlink chains go through. */
  private updateWatches(): void {
    if (!this.running || !this.fsWatch) return;
    const dirs = new Set<string>();
    const names = new Set<string>();
    for (const path of this.hashes.keys()) collectChain(path, dirs, names);
    this.names = names;

    for (const [dir, entry] of this.watches) {
      if (!dirs.has(dir) || !sameInode(dir, entry)) {
        entry.watcher.close();
        this.watches.delete(dir);
      }
    }
    for (const dir of dirs) {
      if (this.watches.has(dir)) continue;
      let ino: number;
      let dev: number;
      let watcher: FSWatcher;
      try {
        ({ ino, dev } = statSync(dir));
        watcher = watch(dir, { persistent: this.persistent }, (_event, filename) => {
          const name = filename === null ? null : filename.toString();
          if (name === null || this.names.has(name)) this.schedule();
        });
      } catch {
        continue; // missing or not watchable: the poll covers it and retries.
      }
      watcher.on('error', () => {
        // e.g. the directory was removed: drop the watch; the next check or poll sets it up again.
        watcher.close();
        if (this.watches.get(dir)?.watcher === watcher) this.watches.delete(dir);
        this.schedule();
      });
      this.watches.set(dir, { watcher, ino, dev });
    }
  }
}

function sameInode(dir: string, entry: DirWatch): boolean {
  try {
    const st = statSync(dir);
    return st.ino === entry.ino && st.dev === entry.dev;
  } catch {
    return false;
  }
}

/**
 * Resolves `path` one component at a time. Every directory that holds a symlink on the way is added to
 * `dirs` (its real path) and the symlink's name to `names`; so are the real directory of the final file
 * and the file's name. A missing component ends the walk at the deepest existing directory.
 */
function collectChain(path: string, dirs: Set<string>, names: Set<string>): void {
  let pending = isAbsolute(path) ? path : resolve(path);
  let hops = 0;
  restart: while (true) {
    const { root } = parse(pending);
    const parts = pending
      .slice(root.length)
      .split(sep)
      .filter((p) => p !== '' && p !== '.');
    let current = root;
    for (let i = 0; i < parts.length; i++) {
      const part = parts[i] as string;
      if (part === '..') {
        current = dirname(current);
        continue;
      }
      const next = join(current, part);
      let isLink: boolean;
      try {
        isLink = lstatSync(next).isSymbolicLink();
      } catch {
        dirs.add(current);
        names.add(part);
        return;
      }
      if (isLink) {
        dirs.add(current);
        names.add(part);
        if (++hops > MAX_SYMLINKS) return;
        let target: string;
        try {
          target = readlinkSync(next);
        } catch {
          return;
        }
        pending = join(resolve(current, target), ...parts.slice(i + 1));
        continue restart;
      }
      current = next;
    }
    if (current !== root) {
      dirs.add(dirname(current));
      names.add(basename(current));
    }
    return;
  }
}

async function hashFile(path: string): Promise<string | null> {
  try {
    return createHash('sha256')
      .update(await readFile(path))
      .digest('hex');
  } catch {
    return null;
  }
}
