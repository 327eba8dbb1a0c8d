// `dimse-tls-proxy ledger …`: registerLedgerCommands driven in-process (output captured), plus real
// processes for the exit codes.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { cp, mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { encodeFileMeta } from '../../src/dicom/part10.js';
import { hashPart10File } from '../../src/integrity/find.js';
import { keyId } from '../../src/integrity/keys.js';
import { LedgerWriter } from '../../src/integrity/writer.js';
import {
  KEYS,
  OTHER_KEYS,
  evidence,
  ledgerFiles,
  options,
  readLinesOf,
  removeDir,
  runLedgerCli as run,
  tempDir,
  type Run,
  writeLines,
} from './helpers.js';

const REPO = fileURLToPath(new URL('../..', import.meta.url));
const ENTRY = fileURLToPath(new URL('./ledger-cli-entry.ts', import.meta.url));

function spawnCli(args: string[]): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', ENTRY, ...args], {
      cwd: REPO,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? undefined, stdout, stderr });
    });
  });
}

describe('ledger CLI', () => {
  let root: string;
  let ledger: string;
  let pubFile: string;
  let otherPubFile: string;
  let dcm: string;
  let files: string[];
  const uid = '1.2.826.0.1.3680043.8.498.77';

  before(async () => {
    root = await tempDir();
    ledger = join(root, 'ledger');
    pubFile = join(root, 'pub.pem');
    otherPubFile = join(root, 'other.pem');
    await writeFile(pubFile, KEYS.publicKeyPem);
    await writeFile(otherPubFile, OTHER_KEYS.publicKeyPem);
    const dataset = Buffer.from('fake data set bytes, even length!!');
    dcm = join(root, 'x.dcm');
    await writeFile(
      dcm,
      Buffer.concat([
        encodeFileMeta({
          sopClassUid: '1.2.3',
          sopInstanceUid: uid,
          transferSyntaxUid: '1.2.840.10008.1.2.1',
        }),
        dataset,
      ]),
    );
    const { sha256, bytes } = await hashPart10File(dcm);
    const w = await LedgerWriter.open(options(ledger, { rotateMaxBytes: 3000 }));
    for (let i = 0; i < 8; i++) await w.append(evidence(i));
    await w.append(evidence(8, { sopInstanceUid: uid, sha256, bytes, studyInstanceUid: '1.2.826.77' }));
    await w.close();
    files = await ledgerFiles(ledger);
    assert.ok(files.length >= 3, files.join());
  });
  after(async () => {
    await removeDir(root);
  });

  it('verify: summary and exit 0 when intact, signatures checked with --public-key', async () => {
    const r = await run(['verify', '--ledger', ledger, '--public-key', pubFile]);
    assert.equal(r.code, 0, r.stderr + r.stdout);
    assert.match(
      r.stdout,
      new RegExp(`^ledger .*: ${files.length} files, \\d+ records \\(9 instances, \\d+ checkpoints\\)$`, 'm'),
    );
    assert.match(r.stdout, new RegExp(`signatures: \\d+ verified with key ${keyId(KEYS.publicKeyPem)}`));
    assert.match(r.stdout, new RegExp(`^head: seq \\d+ in ${files.at(-1)!}, hash [0-9a-f]{64}$`, 'm'));
    assert.match(r.stdout, /^INTACT$/m);
    const unchecked = await run(['verify', '--ledger', ledger]);
    assert.equal(unchecked.code, 0);
    assert.match(unchecked.stdout, /signatures: not checked/);
  });

  it('verify: the wrong key fails, listing every problem as file:line: message', async () => {
    const r = await run(['verify', '--ledger', ledger, '--public-key', otherPubFile]);
    assert.equal(r.code, 1);
    assert.match(r.stdout, /^BROKEN: \d+ problems/m);
    const lines = r.stdout.split('\n').filter((l) => l.startsWith(join(ledger, 'ledger-')));
    assert.ok(lines.length >= 3);
    assert.match(lines[0]!, /ledger-000001\.jsonl:\d+: checkpoint signed by key/);
  });

  it('verify: a tampered copy names the line; a torn tail is shown but intact', async () => {
    const copy = join(root, 'tampered');
    await cp(ledger, copy, { recursive: true });
    const file = join(copy, 'ledger-000002.jsonl');
    const lines = await readLinesOf(file);
    lines[1] = lines[1]!.replace('"status":0', '"status":1');
    await writeLines(file, lines);
    const r = await run(['verify', '--ledger', copy]);
    assert.equal(r.code, 1);
    assert.match(
      r.stdout,
      new RegExp(`^${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:2: hash mismatch`, 'm'),
    );

    const torn = join(root, 'torn');
    await cp(ledger, torn, { recursive: true });
    await writeFile(join(torn, files.at(-1)!), '{"v":1,', { flag: 'a' });
    const t = await run(['verify', '--ledger', torn]);
    assert.equal(t.code, 0, t.stdout);
    assert.match(t.stdout, new RegExp(`torn tail: .*${files.at(-1)!}:\\d+ \\(7 bytes\\)`));
  });

  it('-c policy.yaml: the ledger path and (beside the signing key) the public key come from the policy', async () => {
    const keyDir = join(root, 'keys');
    await mkdir(keyDir, { recursive: true });
    await writeFile(join(keyDir, 'ledger-signing.key'), KEYS.privateKeyPem);
    const policy = (ledgerSection: string): string =>
      [
        'upstreams:',
        '  archive: { host: pacs.example.org, port: 2762, aeTitle: PACS, tls: { ca: ca.pem, cert: c.pem, key: c.key } }',
        'routes:',
        '  - { calledAeTitle: DICOM_PROXY, upstream: archive }',
        'peers:',
        '  CT1: { addresses: [10.0.0.1], services: [echo] }',
        ledgerSection,
        '',
      ].join('\n');
    const cfg = join(root, 'proxy.yaml');
    await writeFile(
      cfg,
      policy(`ledger: { path: ${ledger}, signingKey: ${join(keyDir, 'ledger-signing.key')} }`),
    );
    // No public key file beside the signing key: the public key is derived from it.
    const derived = await run(['verify', '-c', cfg]);
    assert.equal(derived.code, 0, derived.stderr + derived.stdout);
    assert.match(
      derived.stdout,
      new RegExp(`signatures: \\d+ verified with key ${keyId(KEYS.publicKeyPem)}`),
    );
    // With the public key beside it, that one (an auditor needs no private key); a wrong one fails.
    await writeFile(join(keyDir, 'ledger-signing.pub.pem'), OTHER_KEYS.publicKeyPem);
    const wrong = await run(['verify', '-c', cfg]);
    assert.equal(wrong.code, 1, 'checked with the public key file beside the signing key');
    assert.equal((await run(['verify', '-c', cfg, '--public-key', pubFile])).code, 0, '--public-key wins');
    const found = await run(['find', '-c', cfg, '--sop-instance-uid', uid]);
    assert.equal(found.code, 0, found.stderr);
    const exported = await run(['export', '-c', cfg, '--format', 'json', '--study', '1.2.826.77']);
    assert.equal(exported.code, 0, exported.stderr);
    assert.equal((JSON.parse(exported.stdout) as unknown[]).length, 1);
    const off = join(root, 'off.yaml');
    await writeFile(off, policy('ledger: { path: null }'));
    const none = await run(['verify', '-c', off]);
    assert.equal(none.code, 2);
    assert.match(none.stderr, /ledger\.path is not set/);
  });

  it('verify: a missing ledger is an error (exit 2)', async () => {
    const r = await run(['verify', '--ledger', join(root, 'nope')]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /ENOENT/);
  });

  it('find by --file and by --sop-instance-uid; exit 1 when nothing matches', async () => {
    const byFile = await run(['find', '--file', dcm, '--ledger', ledger]);
    assert.equal(byFile.code, 0, byFile.stderr);
    const lines = byFile.stdout.trim().split('\n');
    assert.equal(lines.length, 1);
    const m = /^(.*ledger-\d{6}\.jsonl):(\d+) (\{.*\})$/.exec(lines[0]!);
    assert.ok(m, lines[0]);
    const record = JSON.parse(m[3]!) as { sopInstanceUid: string };
    assert.equal(record.sopInstanceUid, uid);
    const onDisk = await readLinesOf(m[1]!);
    assert.equal(onDisk[Number(m[2]) - 1], m[3], 'file:line points at the record');
    assert.match(byFile.stderr, /data set SHA-256 [0-9a-f]{64}/);

    const byUid = await run(['find', '--sop-instance-uid', uid, '--ledger', ledger]);
    assert.equal(byUid.code, 0);
    assert.equal(byUid.stdout, byFile.stdout);

    const none = await run(['find', '--sop-instance-uid', '9.9.9', '--ledger', ledger]);
    assert.equal(none.code, 1);
    assert.equal(none.stdout, '');
    assert.match(none.stderr, /no record matches SOP Instance UID 9\.9\.9/);

    const neither = await run(['find', '--ledger', ledger]);
    assert.equal(neither.code, 2);
    assert.match(neither.stderr, /--study <uid> or --calling-ae <aet>/);

    const byStudy = await run(['find', '--study', '1.2.826.77', '--ledger', ledger]);
    assert.equal(byStudy.code, 0, byStudy.stderr);
    assert.equal(byStudy.stdout, byFile.stdout, 'the one instance of the study');
    const byAe = await run([
      'find',
      '--calling-ae',
      'MODALITY1',
      '--study',
      '1.2.826.78',
      '--ledger',
      ledger,
    ]);
    assert.equal(byAe.code, 1);
    assert.match(
      byAe.stderr,
      /no record matches Study Instance UID 1\.2\.826\.78 and calling AE title MODALITY1/,
    );
    const exported = await run(['export', '--ledger', ledger, '--study', '1.2.826.77', '--format', 'json']);
    assert.equal(exported.code, 0, exported.stderr);
    assert.deepEqual(
      (JSON.parse(exported.stdout) as Array<{ sopInstanceUid: string }>).map((r) => r.sopInstanceUid),
      [uid],
    );
  });

  it('export csv and json to stdout; bad --since is a usage error', async () => {
    const csv = await run(['export', '--ledger', ledger, '--since', '2025-01-01T12:00:04Z']);
    assert.equal(csv.code, 0, csv.stderr);
    const rows = csv.stdout.split('\r\n').filter((l) => l !== '');
    assert.equal(rows.length, 1 + 5);
    assert.match(rows[0]!, /^v,type,seq,time,association,/);
    const json = await run([
      'export',
      '--ledger',
      ledger,
      '--format',
      'json',
      '--until',
      '2025-01-01T12:00:02Z',
    ]);
    assert.equal(json.code, 0);
    assert.equal((JSON.parse(json.stdout) as unknown[]).length, 2);
    const bad = await run(['export', '--ledger', ledger, '--since', 'yesterday']);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /not an ISO 8601 time/);
    const badFormat = await run(['export', '--ledger', ledger, '--format', 'xml']);
    assert.notEqual(badFormat.code, 0);
  });

  it('keygen writes the pair (0600 private key), keeps it, replaces it with --force', async () => {
    const dir = join(root, 'certs');
    const first = await run(['keygen', '--dir', dir]);
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stdout, /^created ledger signing key [0-9a-f]{64}$/m);
    const priv = join(dir, 'ledger-signing.key');
    const pub = join(dir, 'ledger-signing.pub.pem');
    assert.equal((await stat(priv)).mode & 0o777, 0o600);
    const pem = await readFile(pub, 'utf8');
    assert.equal(keyId(pem), keyId(await readFile(priv, 'utf8')));
    const again = await run(['keygen', '--dir', dir]);
    assert.match(again.stdout, /^kept existing/m);
    assert.equal(await readFile(pub, 'utf8'), pem);
    const forced = await run(['keygen', '--dir', dir, '--force']);
    assert.match(forced.stdout, /^created/m);
    assert.notEqual(await readFile(pub, 'utf8'), pem);
    // The key signs a ledger that verifies with its public key.
    const l2 = join(root, 'l2');
    const w = await LedgerWriter.open(options(l2, { signingKeyPem: await readFile(priv, 'utf8') }));
    await w.append(evidence(1));
    await w.close();
    const v = await run(['verify', '--ledger', l2, '--public-key', pub]);
    assert.equal(v.code, 0, v.stdout);
  });

  it('real process: exit codes 0 (intact) and 1 (broken)', async () => {
    const ok = await spawnCli(['ledger', 'verify', '--ledger', ledger, '--public-key', pubFile]);
    assert.equal(ok.code, 0, ok.stderr + ok.stdout);
    assert.match(ok.stdout, /INTACT/);
    const bad = await spawnCli(['ledger', 'verify', '--ledger', ledger, '--public-key', otherPubFile]);
    assert.equal(bad.code, 1, bad.stderr);
    assert.match(bad.stdout, /BROKEN/);
  });
});
