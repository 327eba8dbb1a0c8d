// Worker-thread entry of loadConfigIsolated (load-isolated.ts): load, validate, post the result, exit.
import { parentPort, workerData } from 'node:worker_threads';
import { loadConfig } from './load.js';
import { ConfigError } from './errors.js';
import { nullPrototypePaths, type LoadReply } from './load-isolated.js';

const { path } = workerData as { path: string };
const port = parentPort;
if (port === null) throw new Error('load-worker.ts runs only as a worker thread');

loadConfig(path).then(
  (config) =>
    port.postMessage({ ok: true, config, nullPrototype: nullPrototypePaths(config) } satisfies LoadReply),
  (err: unknown) => {
    const reply: LoadReply =
      err instanceof ConfigError
        ? { ok: false, kind: 'config', file: err.file, issues: err.issues }
        : { ok: false, kind: 'error', message: (err as Error)?.message ?? String(err) };
    port.postMessage(reply);
  },
);
