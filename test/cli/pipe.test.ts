// Every command's output may go to a reader that stops early (`… | head`): the command ends quietly with
// its exit code, never a stack trace.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { LedgerWriter } from '../../src/integrity/writer.js';
import { CLI, assertBuilt } from '../helpers/daemon.js';
import { evidence, options } from '../integrity/helpers.js';

/** Runs the CLI, closes its stdout after the first chunk it writes, and resolves with its exit and stderr. */
function runClosingStdout(args: string[]): Promise<{ code: number | null; stderr: string; read: number }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    let read = 0;
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`still running after 60 s: ${args.join(' ')}`));
    }, 60_000);
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.stdout.once('data', (d: Buffer) => {
      read = d.length;
      child.stdout.destroy(); // the reader goes away, as `head -1` does
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stderr, read });
    });
  });
}

describe('a closed pipe', { timeout: 120_000 }, () => {
  let dir: string;
  let ledger: string;
  before(async () => {
    assertBuilt();
    dir = await mkdtemp(join(tmpdir(), 'pipe-test-'));
    ledger = join(dir, 'ledger');
    const w = await LedgerWriter.open(options(ledger, { fsync: 'batch' }));
    await Promise.all(Array.from({ length: 4000 }, (_, i) => w.append(evidence(i))));
    await w.close();
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  for (const args of [
    ['ledger', 'export', '--format', 'json'],
    ['ledger', 'export', '--format', 'csv'],
    ['ledger', 'find', '--calling-ae', 'MODALITY1'],
  ]) {
    it(`${args.join(' ')} | head: exit 0, no stack trace`, async () => {
      const r = await runClosingStdout([...args, '--ledger', ledger]);
      assert.ok(r.read > 0, 'some output was read');
      assert.equal(r.code, 0, r.stderr);
      assert.doesNotMatch(r.stderr, /EPIPE|Error|\n\s+at /, r.stderr);
    });
  }
});
