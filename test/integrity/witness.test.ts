// Checkpoints witnessed off the box: the writer hands every checkpoint line to the witness, the witness
// file holds them, and `ledger verify --checkpoints` catches what the ledger alone cannot show — a ledger
// rewritten with re-signed checkpoints (the signing key is on the box), a tail cut off, a last file
// deleted — next to the intact ledger it accepts.
import assert from 'node:assert/strict';
import { readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { keyId, loadPublicKey } from '../../src/integrity/keys.js';
import { verifyLedger } from '../../src/integrity/verify.js';
import { WitnessFile, checkWitnessed } from '../../src/integrity/witness.js';
import { LedgerWriter } from '../../src/integrity/writer.js';
import {
  KEYS,
  OTHER_KEYS,
  evidence,
  ledgerFiles,
  options,
  readLinesOf,
  removeDir,
  runLedgerCli,
  tempDir,
} from './helpers.js';

/** Writes `records` instance records with a checkpoint after every third, witnessed into `witnessPath`. */
async function witnessedLedger(
  dir: string,
  witnessPath: string,
  opts: { records: number; edit?: number; rotateMaxBytes?: number; signingKeyPem?: string },
): Promise<void> {
  const witness = new WitnessFile(witnessPath, (err) => assert.fail(err));
  const w = await LedgerWriter.open(
    options(dir, {
      onCheckpoint: (line) => witness.append(line),
      ...(opts.rotateMaxBytes !== undefined ? { rotateMaxBytes: opts.rotateMaxBytes } : {}),
      ...(opts.signingKeyPem !== undefined ? { signingKeyPem: opts.signingKeyPem } : {}),
    }),
  );
  for (let i = 0; i < opts.records; i++) {
    await w.append(evidence(i, i === opts.edit ? { sha256: 'ee'.repeat(32) } : {}));
    if ((i + 1) % 3 === 0) await w.checkpoint();
  }
  await w.close();
  await witness.flush();
}

const key = { key: loadPublicKey(KEYS.publicKeyPem), keyId: keyId(KEYS.publicKeyPem) };

describe('checkpoints witnessed off the box', () => {
  let root: string;
  before(async () => {
    root = await tempDir('witness-test-');
  });
  after(async () => {
    await removeDir(root);
  });

  it('the witness file holds every checkpoint line of the ledger, and the intact ledger matches it', async () => {
    const dir = join(root, 'intact');
    const witness = join(root, 'intact.witness');
    await witnessedLedger(dir, witness, { records: 7 });
    const ledgerCheckpoints = (
      await Promise.all((await ledgerFiles(dir)).map((f) => readLinesOf(join(dir, f))))
    )
      .flat()
      .filter((l) => l.includes('"type":"checkpoint"'));
    assert.deepEqual(await readLinesOf(witness), ledgerCheckpoints, 'the same lines, in order');
    assert.equal(ledgerCheckpoints.length, 3, 'after records 3 and 6, and at close');
    const r = await checkWitnessed(dir, witness, { key });
    assert.deepEqual([r.ok, r.witnessed, r.matched], [true, 3, 3], JSON.stringify(r.errors));
  });

  it('a ledger rewritten with re-signed checkpoints verifies on its own, and fails against the witness', async () => {
    const dir = join(root, 'rewritten');
    const witness = join(root, 'rewritten.witness');
    await witnessedLedger(dir, witness, { records: 7 });
    // Someone with root on the proxy (and so the signing key) rewrites record 2 and re-signs everything.
    await rm(dir, { recursive: true });
    await witnessedLedger(dir, join(root, 'attacker.witness'), { records: 7, edit: 1 });
    const local = await verifyLedger(dir, { publicKeyPem: KEYS.publicKeyPem });
    assert.equal(local.ok, true, 'the rewrite is invisible to the ledger alone');
    const r = await checkWitnessed(dir, witness, { key });
    assert.equal(r.ok, false);
    assert.match(
      r.errors[0]?.message ?? '',
      /record seq \d+ differs from the checkpoint witnessed at .* the ledger was rewritten/,
    );
    assert.match(r.errors[0]?.where ?? '', /ledger-\d{6}\.jsonl:\d+$/);
  });

  it('a tail cut after the last witnessed checkpoint, and a deleted last file, are caught', async () => {
    const dir = join(root, 'cut');
    const witness = join(root, 'cut.witness');
    await witnessedLedger(dir, witness, { records: 7 });
    const [file] = await ledgerFiles(dir);
    const lines = await readLinesOf(join(dir, file!));
    // Cut the last three lines (the records after checkpoint 2 and the final checkpoint): still a valid chain.
    const keep = lines.slice(0, -3);
    await truncate(join(dir, file!), Buffer.byteLength(keep.map((l) => `${l}\n`).join('')));
    assert.equal((await verifyLedger(dir, { publicKeyPem: KEYS.publicKeyPem })).ok, true);
    const r = await checkWitnessed(dir, witness, { key });
    assert.equal(r.ok, false);
    assert.match(
      r.errors.at(-1)?.message ?? '',
      /was witnessed, but the ledger ends at seq \d+: records were cut from its end or its last file deleted/,
    );

    const rotated = join(root, 'rotated');
    const witness2 = join(root, 'rotated.witness');
    await witnessedLedger(rotated, witness2, { records: 30, rotateMaxBytes: 4096 });
    const files = await ledgerFiles(rotated);
    assert.ok(files.length >= 3, `rotated into ${files.length} files`);
    await rm(join(rotated, files.at(-1)!));
    assert.equal(
      (await verifyLedger(rotated, { publicKeyPem: KEYS.publicKeyPem })).ok,
      true,
      'each file ends with a checkpoint',
    );
    const r2 = await checkWitnessed(rotated, witness2, { key });
    assert.equal(r2.ok, false);
    assert.match(r2.errors.at(-1)?.message ?? '', /the ledger ends at seq/);
  });

  it('witness lines as a syslog collector stores them are read; a witness signed by another key is refused', async () => {
    const dir = join(root, 'syslog');
    const witness = join(root, 'syslog.witness');
    await witnessedLedger(dir, witness, { records: 3 });
    const lines = await readLinesOf(witness);
    const stored = join(root, 'syslog.store');
    await writeFile(
      stored,
      [
        'noise before',
        ...lines.map(
          (l) => `<85>1 2026-12-03T10:00:00Z gw1 dimse-tls-proxy 1 LEDGER_CHECKPOINT - \uFEFF${l}\r`,
        ),
      ]
        .map((l) => `${l}\n`)
        .join(''),
    );
    const r = await checkWitnessed(dir, stored, { key });
    assert.deepEqual([r.ok, r.witnessed, r.matched, r.otherLines], [true, lines.length, lines.length, 1]);
    const other = { key: loadPublicKey(OTHER_KEYS.publicKeyPem), keyId: keyId(OTHER_KEYS.publicKeyPem) };
    const forged = await checkWitnessed(dir, stored, { key: other });
    assert.equal(forged.ok, false);
    assert.match(forged.errors[0]?.message ?? '', /witnessed checkpoint signed by key/);
  });

  it('ledger verify --checkpoints: INTACT (exit 0) next to BROKEN (exit 1) for a rewritten ledger', async () => {
    const dir = join(root, 'cli');
    const witness = join(root, 'cli.witness');
    await witnessedLedger(dir, witness, { records: 4 });
    const pub = join(root, 'pub.pem');
    await writeFile(pub, KEYS.publicKeyPem);
    const run = (args: string[]) => runLedgerCli(['verify', ...args]);
    const ok = await run(['--ledger', dir, '--public-key', pub, '--checkpoints', witness]);
    assert.equal(ok.code, 0, ok.stdout + ok.stderr);
    assert.match(
      ok.stdout,
      /witnessed checkpoints: 2 in .*\(latest seq \d+ of .*\), 2 identical in the ledger\nINTACT\n$/,
    );
    await rm(dir, { recursive: true });
    await witnessedLedger(dir, join(root, 'cli-attacker.witness'), { records: 4, edit: 0 });
    const bad = await run(['--ledger', dir, '--public-key', pub, '--checkpoints', witness]);
    assert.equal(bad.code, 1, bad.stdout + bad.stderr);
    assert.match(bad.stdout, /the ledger was rewritten/);
    assert.match(bad.stdout, /BROKEN: the ledger does not hold the checkpoints witnessed off the box/);
    const empty = join(root, 'empty.witness');
    await writeFile(empty, 'nothing here\n');
    const none = await run(['--ledger', dir, '--checkpoints', empty]);
    assert.equal(none.code, 1, 'a witness file without checkpoints proves nothing');
    assert.match(none.stdout, /holds no checkpoint record/);
    assert.ok((await readFile(witness, 'utf8')).length > 0);
  });
});
