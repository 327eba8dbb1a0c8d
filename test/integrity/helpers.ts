// Shared bits of the ledger tests: temp dirs, evidence, a settable clock, ledgers built to order.
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateSigningKey } from '../../src/integrity/keys.js';
import type { InstanceEvidence } from '../../src/integrity/types.js';
import { type LedgerOptions, LedgerWriter } from '../../src/integrity/writer.js';
import { PassThrough } from 'node:stream';
import { Command, CommanderError } from 'commander';
import { registerLedgerCommands } from '../../src/cli/ledger.js';

export async function tempDir(prefix = 'ledger-test-'): Promise<string> {
  return mkdtemp(join(tmpdir(), prefix));
}

export async function removeDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
}

export const KEYS = generateSigningKey();
export const OTHER_KEYS = generateSigningKey();

export function evidence(i: number, over: Partial<InstanceEvidence> = {}): InstanceEvidence {
  return {
    time: new Date(Date.UTC(2025, 0, 1, 12, 0, i)).toISOString(),
    association: `assoc-${Math.floor(i / 10)}`,
    direction: 'modality-to-archive',
    callingAeTitle: 'MODALITY1',
    calledAeTitle: 'ARCHIVE',
    upstreamAeTitle: 'PACS',
    peerAddress: '10.0.0.5:40000',
    archiveAddress: 'pacs.example:2762',
    archiveCertSha256: 'ab'.repeat(32),
    clientCertSha256: null,
    sopClassUid: '1.2.840.10008.5.1.4.1.1.2',
    sopInstanceUid: `1.2.3.4.${i}`,
    transferSyntaxUid: '1.2.840.10008.1.2.1',
    bytes: 1000 + i,
    sha256: (i.toString(16).padStart(2, '0') + 'cd').repeat(16),
    status: 0,
    outcome: 'success',
    moveOriginatorAeTitle: null,
    moveOriginatorMessageId: null,
    ...over,
  };
}

/** A clock tests can set; every read returns the current value. */
export class Clock {
  constructor(public t = new Date('2025-01-01T12:00:00.000Z')) {}
  readonly now = (): Date => new Date(this.t.getTime());
  advance(ms: number): void {
    this.t = new Date(this.t.getTime() + ms);
  }
}

export function options(dir: string, over: Partial<LedgerOptions> = {}): LedgerOptions {
  return {
    dir,
    fsync: 'always',
    fsyncIntervalMs: 50,
    rotateMaxBytes: 64 * 1024 * 1024,
    rotateDaily: false,
    checkpointIntervalMs: 60_000,
    signingKeyPem: KEYS.privateKeyPem,
    ...over,
  };
}

/**
 * A ledger of `files` files with `perFile` instance records each (rotation forced by checkpoint() +
 * a tiny size limit), closed cleanly.
 */
export async function buildLedger(
  dir: string,
  opts: { records: number; rotateMaxBytes?: number; checkpointEvery?: number; signed?: boolean },
): Promise<void> {
  const w = await LedgerWriter.open(
    options(dir, {
      fsync: 'always',
      rotateMaxBytes: opts.rotateMaxBytes ?? 64 * 1024 * 1024,
      signingKeyPem: opts.signed === false ? null : KEYS.privateKeyPem,
    }),
  );
  for (let i = 0; i < opts.records; i++) {
    await w.append(evidence(i));
    if (opts.checkpointEvery && (i + 1) % opts.checkpointEvery === 0) await w.checkpoint();
  }
  await w.close();
}

export async function ledgerFiles(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((n) => /^ledger-\d+\.jsonl$/.test(n)).sort();
}

export async function readLinesOf(path: string): Promise<string[]> {
  const text = await readFile(path, 'utf8');
  return text.split('\n').slice(0, -1);
}

export async function writeLines(path: string, lines: string[]): Promise<void> {
  await writeFile(path, lines.map((l) => `${l}\n`).join(''));
}

export interface Run {
  code: number | undefined;
  stdout: string;
  stderr: string;
}

/** `dimse-tls-proxy ledger …` driven in-process: registerLedgerCommands with its output captured. */
export async function runLedgerCli(args: string[]): Promise<Run> {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let out = '';
  let err = '';
  stdout.on('data', (c: Buffer) => (out += c.toString()));
  stderr.on('data', (c: Buffer) => (err += c.toString()));
  let code: number | undefined;
  const program = new Command().name('dimse-tls-proxy').exitOverride();
  program.configureOutput({ writeOut: (s) => (out += s), writeErr: (s) => (err += s) });
  registerLedgerCommands(program, { stdout, stderr, setExitCode: (c) => (code = c) });
  try {
    await program.parseAsync(['ledger', ...args], { from: 'user' });
  } catch (e) {
    if (!(e instanceof CommanderError)) throw e;
    code = e.exitCode;
  }
  await new Promise((r) => setImmediate(r));
  return { code, stdout: out, stderr: err };
}
