// Key paths into the configuration and how they are printed. No YAML here: the daemon's relay process
// imports this (config diffs, reload summaries) without loading the YAML library.

export type KeyPath = readonly (string | number)[];

export interface SourcePosition {
  line: number;
  column: number;
}

/** Formats a key path as `peers.CT_ROOM1.addresses[0]`; keys that are not plain identifiers are quoted. */
export function formatPath(path: KeyPath): string {
  let out = '';
  for (const segment of path) {
    if (typeof segment === 'number') out += `[${segment}]`;
    else if (/^[A-Za-z0-9_-]+$/.test(segment)) out += out === '' ? segment : `.${segment}`;
    else out += `[${JSON.stringify(segment)}]`;
  }
  return out;
}
