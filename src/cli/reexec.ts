// cli.ts's first import, so it runs before any other module of the program is evaluated: `start`
// replaces this process with itself plus the daemon's heap flags (util/gc.ts reexecWithHeapFlags).
import { reexecWithHeapFlags } from '../util/gc.js';

reexecWithHeapFlags();
