// Small helpers shared by the interop (real DCMTK / Orthanc peers) and CLI tests.
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import type { PemPair } from '../../src/tls/pki.js';
import { datasetOf, metaString } from './dicom.js';
import { listFiles } from './peers.js';

/** Map SOP instance UID (from the meta header) → file bytes. */
export async function bySopInstance(paths: readonly string[]): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  for (const p of paths) {
    const bytes = await readFile(p);
    const uid = metaString(bytes, 0x0003);
    assert.ok(uid, `no SOP instance UID in the meta header of ${p}`);
    out.set(uid, bytes);
  }
  return out;
}

/** SOP instance UIDs of the Part 10 files in `dir` (sorted); [] if none. */
export async function receivedUids(dir: string): Promise<string[]> {
  return [...(await bySopInstance(await listFiles(dir))).keys()].sort();
}

/**
 * Every sent file arrived in `dir` with the same transfer syntax in its meta header and a data set equal
 * byte for byte. Returns the received files by SOP instance UID.
 */
export async function assertDelivered(sent: readonly string[], dir: string): Promise<Map<string, Buffer>> {
  const received = await bySopInstance(await listFiles(dir));
  const expected = await bySopInstance(sent);
  for (const [uid, bytes] of expected) {
    const got = received.get(uid);
    assert.ok(got, `instance ${uid} not received (received: ${[...received.keys()].join(', ') || 'none'})`);
    assert.equal(
      metaString(got, 0x0010),
      metaString(bytes, 0x0010),
      `transfer syntax of ${uid} changed on the way`,
    );
    const a = datasetOf(got);
    const b = datasetOf(bytes);
    if (!a.equals(b)) {
      let at = 0;
      while (at < Math.min(a.length, b.length) && a[at] === b[at]) at++;
      assert.fail(
        `data set of ${uid} differs: received ${a.length} bytes, sent ${b.length} bytes, first difference at ${at}`,
      );
    }
  }
  return received;
}

/** Write a PEM pair as <dir>/<name>.pem and <dir>/<name>.key (0600). */
export async function writePemPair(
  dir: string,
  name: string,
  pair: PemPair,
): Promise<{ cert: string; key: string }> {
  const cert = join(dir, `${name}.pem`);
  const key = join(dir, `${name}.key`);
  await writeFile(cert, pair.cert);
  await writeFile(key, pair.key, { mode: 0o600 });
  return { cert, key };
}

/** Poll `predicate` until it holds or `timeoutMs` passes; returns whether it held. */
export async function eventually(predicate: () => boolean, timeoutMs = 5000, stepMs = 50): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (predicate()) return true;
    if (Date.now() > deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, stepMs));
  }
}

/** Whether a TCP port on 127.0.0.1 can be bound right now. */
export function portIsFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.unref();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

/** A file path recorded in a TestPki (`ca`, `archive`, `archive.key`, …); throws if it was never written. */
export function pkiFile(pki: { files: Record<string, string> }, name: string): string {
  const path = pki.files[name];
  if (path === undefined)
    throw new Error(`no ${name} in the test PKI (have ${Object.keys(pki.files).join(', ')})`);
  return path;
}
