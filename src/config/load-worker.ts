// Entry of the child process behind loadConfigIsolated (load-isolated.ts): load, validate, print the
// result as one JSON document on stdout, exit. Usage: node load-worker.js <config.yaml>
import { loadConfig } from './load.js';
import { ConfigError } from './errors.js';
import { nullPrototypePaths, type LoadReply } from './load-isolated.js';

const path = process.argv[2];
if (path === undefined) {
  process.stderr.write('usage: load-worker.js <config.yaml>\n');
  process.exit(2);
}
const reply = (r: LoadReply): void => void process.stdout.write(JSON.stringify(r));

loadConfig(path).then(
  (config) => reply({ ok: true, config, nullPrototype: nullPrototypePaths(config) }),
  (err: unknown) => {
    reply(
      err instanceof ConfigError
        ? { ok: false, kind: 'config', file: err.file, issues: err.issues }
        : { ok: false, kind: 'error', message: (err as Error)?.message ?? String(err) },
    );
  },
);
