import { LineCounter, isAlias, isMap, isScalar, isSeq, parseDocument, type Document } from 'yaml';
import type { KeyPath, SourcePosition } from './keypath.js';

export { formatPath, type KeyPath, type SourcePosition } from './keypath.js';

/**
 * Finds where `path` is written in the YAML document: the value's start, or with `at: 'key'` the key's own
 * start (for problems with a mapping key itself). When the path does not exist in full (a missing key),
 * the deepest node that does exist is used, so a missing key points at the mapping it belongs in.
 */
export function locate(
  doc: Document,
  lineCounter: LineCounter,
  path: KeyPath,
  at: 'key' | 'value' = 'value',
): SourcePosition | null {
  let node: unknown = doc.contents;
  let offset: number | null = rangeStart(node);
  for (let i = 0; i < path.length; i++) {
    const segment = path[i];
    if (isAlias(node)) node = node.resolve(doc);
    let next: unknown;
    let keyOffset: number | null = null;
    if (isMap(node)) {
      const pair = node.items.find(
        (item) => isScalar(item.key) && String(item.key.value) === String(segment),
      );
      if (pair === undefined) break;
      keyOffset = rangeStart(pair.key);
      next = pair.value;
    } else if (isSeq(node) && typeof segment === 'number') {
      next = node.items[segment];
      if (next === undefined) break;
    } else {
      break;
    }
    const last = i === path.length - 1;
    const valueOffset = rangeStart(next);
    if (last && at === 'key' && keyOffset !== null) {
      offset = keyOffset;
    } else if (valueOffset !== null) {
      offset = valueOffset;
    } else if (keyOffset !== null) {
      offset = keyOffset;
    }
    node = next;
  }
  if (offset === null) return null;
  const pos = lineCounter.linePos(offset);
  return { line: pos.line, column: pos.col };
}

function rangeStart(node: unknown): number | null {
  if (node === null || typeof node !== 'object' || !('range' in node)) return null;
  const range = (node as { range?: readonly number[] | null }).range;
  return range?.[0] ?? null;
}

/**
 * Where `path` is written in a YAML text (1-based), for problems found after loading — for example a
 * certificate file named by `upstreams.archive.tls.cert` that cannot be read.
 */
export function locateInText(text: string, path: KeyPath): SourcePosition | null {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, keepSourceTokens: true, uniqueKeys: false });
  return locate(doc, lineCounter, path);
}
