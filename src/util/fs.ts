import { open } from 'node:fs/promises';

/**
 * Make a new file's directory entry durable (after creating or renaming a ledger file or an audit spool
 * segment). Best effort: not every platform can fsync a directory (e.g. Windows); the file data itself
 * is synced by its writer regardless.
 */
export async function syncDir(dir: string): Promise<void> {
  try {
    const fh = await open(dir, 'r');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
  } catch {
    // not supported here: nothing more can be done
  }
}
