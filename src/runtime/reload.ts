// Reloading the policy and certificates of a running proxy (SIGHUP, file change, `reload`): read and
// validate the configuration, build a complete new runtime snapshot (policy, TLS contexts, signing key),
// and only when all of that succeeded hand it to `apply`. On any error the running snapshot stays.
//
// Layer runtime/, next to the snapshot it builds and below relay/: the running servers are reached only
// through the `apply` callback (cli/start.ts passes one that calls ProxyServer.setSnapshot), so reloading
// needs no import of relay/. It is not in config/ because a snapshot holds the compiled policy and the TLS
// contexts, which sit above config; the file watcher (config/watch.ts) only reads and hashes files and
// stays in config/.
import { EventEmitter } from 'node:events';
import { buildRuntimeSnapshot, type RuntimeSnapshot } from './snapshot.js';
import {
  changedFiles,
  diffConfigs,
  fileFingerprints,
  referencedFiles,
  type ConfigChange,
} from '../config/diff.js';
import { ConfigError } from '../config/errors.js';
import type { ProxyConfig } from '../config/types.js';

export interface ReloaderOptions {
  configPath: string;
  /** The snapshot the process is running with. */
  initial: RuntimeSnapshot;
  /** Installs a new snapshot; a throw (or rejection) makes the reload fail and keeps the current snapshot. */
  apply: (snapshot: RuntimeSnapshot) => void | Promise<void>;
  /** Default loadConfig (in this thread); the daemon passes loadConfigIsolated. */
  load?: (path: string) => Promise<ProxyConfig>;
  /** Default buildRuntimeSnapshot. */
  build?: (config: ProxyConfig) => RuntimeSnapshot;
}

export interface ReloadSuccess {
  ok: true;
  /** True for dryRun(): nothing was applied. */
  dryRun: boolean;
  changes: ConfigChange[];
  /** Files named by both configurations whose content changed (certificates, keys), sorted. */
  changedFiles: string[];
  snapshot: RuntimeSnapshot;
  /** The snapshot that was running before. */
  previous: RuntimeSnapshot;
}

export interface ReloadFailure {
  ok: false;
  dryRun: boolean;
  /** Where it failed: reading/validating the file, building the snapshot (TLS material, keys), or apply. */
  stage: 'load' | 'build' | 'apply';
  error: ConfigError | Error;
  /** For logs: a ConfigError's `file:line:col key.path: message` lines, otherwise the file and the error. */
  message: string;
}

export type ReloadResult = ReloadSuccess | ReloadFailure;

export interface ReloaderEvents {
  reloaded: [result: ReloadSuccess];
  'reload-failed': [result: ReloadFailure];
}

export class Reloader extends EventEmitter<ReloaderEvents> {
  readonly configPath: string;
  private readonly applyFn: (snapshot: RuntimeSnapshot) => void | Promise<void>;
  private readonly load: (path: string) => Promise<ProxyConfig>;
  private readonly build: (config: ProxyConfig) => RuntimeSnapshot;
  private snapshot: RuntimeSnapshot;
  private fingerprints: Map<string, string>;
  private active: Promise<ReloadResult> | null = null;
  private queued: Promise<ReloadResult> | null = null;

  constructor(options: ReloaderOptions) {
    super();
    this.configPath = options.configPath;
    this.snapshot = options.initial;
    this.applyFn = options.apply;
    // Loaded on demand: the daemon passes loadConfigIsolated and never loads the YAML/schema libraries.
    this.load = options.load ?? (async (path) => (await import('../config/load.js')).loadConfig(path));
    this.build = options.build ?? buildRuntimeSnapshot;
    // Taken now rather than when `initial` was built: a file changed in between is not reported.
    this.fingerprints = fileFingerprints(options.initial.config);
  }

  /** The snapshot last applied (or the initial one). */
  get current(): RuntimeSnapshot {
    return this.snapshot;
  }

  /**
   * Loads, validates and builds the configuration and applies it. Failures are results, not rejections
   * (only a throwing 'reloaded' / 'reload-failed' listener makes it reject).
   * Reloads are serialised: one requested while another runs starts after it, and all the requests made
   * meanwhile share that one run (and its result).
   */
  reload(): Promise<ReloadResult> {
    if (this.queued) return this.queued;
    if (this.active) {
      const next = (): Promise<ReloadResult> => {
        this.queued = null;
        return this.startReload();
      };
      this.queued = this.active.then(next, next);
      return this.queued;
    }
    return this.startReload();
  }

  /** Everything reload() does except apply: validation and the list of changes, for `reload --dry-run`. */
  dryRun(): Promise<ReloadResult> {
    return this.run(true);
  }

  private startReload(): Promise<ReloadResult> {
    const promise = this.run(false).finally(() => {
      if (this.active === promise) this.active = null;
    });
    this.active = promise;
    return promise;
  }

  private async run(dryRun: boolean): Promise<ReloadResult> {
    const previous = this.snapshot;
    const fail = (stage: ReloadFailure['stage'], thrown: unknown): ReloadFailure => {
      const error = thrown instanceof Error ? thrown : new Error(String(thrown));
      let message: string;
      if (error instanceof ConfigError) message = error.message;
      else if (stage === 'apply')
        message = `${this.configPath}: applying the new configuration failed: ${error.message}`;
      else message = `${this.configPath}: ${error.message}`;
      const result: ReloadFailure = { ok: false, dryRun, stage, error, message };
      if (!dryRun) this.emit('reload-failed', result);
      return result;
    };

    let config: ProxyConfig;
    try {
      config = await this.load(this.configPath);
    } catch (err) {
      return fail('load', err);
    }

    let snapshot: RuntimeSnapshot;
    let fingerprints: Map<string, string>;
    try {
      // Fingerprints before the build: if a file changes in between, the next reload still reports it.
      fingerprints = fileFingerprints(config);
      snapshot = this.build(config);
    } catch (err) {
      return fail('build', err);
    }

    const changes = diffConfigs(previous.config, config);
    const oldFiles = new Set(referencedFiles(previous.config));
    const common = referencedFiles(config).filter((file) => oldFiles.has(file));
    const files = changedFiles(this.fingerprints, fingerprints, common);

    if (!dryRun) {
      try {
        await this.applyFn(snapshot);
      } catch (err) {
        return fail('apply', err);
      }
      this.snapshot = snapshot;
      this.fingerprints = fingerprints;
    }
    const result: ReloadSuccess = { ok: true, dryRun, changes, changedFiles: files, snapshot, previous };
    if (!dryRun) this.emit('reloaded', result);
    return result;
  }
}
