// Streaming, byte-exact line splitting for ledger files. Only LF ends a line (readline would also split
// on CR and decode UTF-8 lossily, which could hide an edit); memory stays bounded by MAX_LINE_BYTES.
import { createReadStream } from 'node:fs';
import { MAX_LINE_BYTES } from './format.js';

export interface RawLine {
  /** 1-based line number. */
  line: number;
  /** Byte offset of the line's first byte. */
  offset: number;
  /** Length in bytes, without the LF. */
  length: number;
  /** The line's bytes (without LF); empty when the line is longer than MAX_LINE_BYTES. */
  bytes: Buffer;
  overlong: boolean;
  /** False for a last line that has no LF. */
  terminated: boolean;
}

export async function* readLines(path: string): AsyncGenerator<RawLine> {
  let parts: Buffer[] = [];
  let partLength = 0;
  let length = 0;
  let offset = 0;
  let line = 1;
  const take = (): { bytes: Buffer; overlong: boolean } => {
    const overlong = length > MAX_LINE_BYTES;
    const bytes = overlong
      ? Buffer.alloc(0)
      : parts.length === 1
        ? parts[0]!
        : Buffer.concat(parts, partLength);
    parts = [];
    partLength = 0;
    return { bytes, overlong };
  };
  const stream = createReadStream(path, { highWaterMark: 64 * 1024 });
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    let start = 0;
    while (start < chunk.length) {
      const lf = chunk.indexOf(0x0a, start);
      const end = lf === -1 ? chunk.length : lf;
      if (end > start) {
        length += end - start;
        if (length <= MAX_LINE_BYTES) {
          parts.push(chunk.subarray(start, end));
          partLength += end - start;
        } else if (parts.length > 0) {
          parts = [];
          partLength = 0;
        }
      }
      if (lf === -1) break;
      const { bytes, overlong } = take();
      yield { line, offset, length, bytes, overlong, terminated: true };
      offset += length + 1;
      length = 0;
      line += 1;
      start = lf + 1;
    }
  }
  if (length > 0) {
    const { bytes, overlong } = take();
    yield { line, offset, length, bytes, overlong, terminated: false };
  }
}
