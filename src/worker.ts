// The entry module of a relay worker process (workers: N > 1), forked by the daemon (cluster/pool.ts).
// Like cli.ts, it is the one place of its process allowed to exit.
import { runWorker } from './cluster/worker.js';

const code = await runWorker();
// Drained: the daemon closes the IPC channel once it has every message; then nothing is left to send.
if (process.connected) process.once('disconnect', () => process.exit(code));
else process.exit(code);
setTimeout(() => process.exit(code), 10_000).unref();
