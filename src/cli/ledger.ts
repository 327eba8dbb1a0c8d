// `dimse-tls-proxy ledger …`: verify, search, export the integrity ledger and create its signing key.
// Exit codes: 0 = intact / found / done, 1 = ledger broken / nothing matched, 2 = could not run.
import { type Command, InvalidArgumentError, Option } from 'commander';
import { readFile, stat } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { exportRecords, findRecords, hashPart10File, type RecordQuery } from '../integrity/find.js';
import { PUBLIC_KEY_FILE, keyId, keyIdOf, loadPublicKey, writeSigningKey } from '../integrity/keys.js';
import { checkWitnessed } from '../integrity/witness.js';
import { verifyLedger } from '../integrity/verify.js';

export const DEFAULT_LEDGER = 'var/ledger';

export interface LedgerCliIo {
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
  /** Set the exit code (never exits: output must flush). */
  setExitCode: (code: number) => void;
}

const processIo: LedgerCliIo = {
  stdout: process.stdout,
  stderr: process.stderr,
  setExitCode: (code) => {
    process.exitCode = code;
  },
};

function parseTime(value: string): Date {
  const ms = Date.parse(value);
  if (Number.isNaN(ms)) throw new InvalidArgumentError(`not an ISO 8601 time: ${JSON.stringify(value)}`);
  return new Date(ms);
}

/**
 * The ledger path and public key a command works on: given on the command line, else from the policy
 * file (`ledger.path`; the public key beside `ledger.signingKey`, or derived from that key), else the
 * default path.
 */
async function ledgerOptions(opts: {
  ledger?: string;
  config?: string;
  publicKey?: string;
}): Promise<{ ledger: string; publicKey?: string }> {
  if (opts.config === undefined) {
    return {
      ledger: opts.ledger ?? DEFAULT_LEDGER,
      ...(opts.publicKey ? { publicKey: opts.publicKey } : {}),
    };
  }
  const { loadConfig } = await import('../config/load.js');
  const config = await loadConfig(resolve(opts.config));
  const path = opts.ledger ?? config.ledger.path;
  if (path === null) throw new Error(`${opts.config}: ledger.path is not set (no ledger is kept)`);
  let publicKey = opts.publicKey;
  const signingKey = config.ledger.signingKey;
  if (publicKey === undefined && signingKey !== null) {
    const beside = join(dirname(signingKey), PUBLIC_KEY_FILE);
    publicKey = (await stat(beside).then(
      () => true,
      () => false,
    ))
      ? beside
      : signingKey; // a private key PEM gives its public key (integrity/keys.ts loadPublicKey)
  }
  return { ledger: path, ...(publicKey !== undefined ? { publicKey } : {}) };
}

function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}

/** How to name a ledger file in messages: the ledger path joined with it (or the file itself). */
async function displayName(ledger: string): Promise<(file: string) => string> {
  const isDir = await stat(ledger).then(
    (s) => s.isDirectory(),
    () => true,
  );
  return (file) => (isDir ? join(ledger, file) : ledger);
}

export function registerLedgerCommands(program: Command, io: LedgerCliIo = processIo): void {
  const out = (text: string): void => void io.stdout.write(text);
  const err = (text: string): void => void io.stderr.write(text);
  /** Run an action; anything thrown is reported and exits 2. */
  const guarded =
    <A extends unknown[]>(name: string, fn: (...args: A) => Promise<void>) =>
    async (...args: A): Promise<void> => {
      try {
        await fn(...args);
      } catch (e) {
        err(`dimse-tls-proxy ledger ${name}: ${(e as Error)?.message ?? String(e)}\n`);
        io.setExitCode(2);
      }
    };

  const ledger = program
    .command('ledger')
    .description('the integrity ledger: verify it, find records, export, create the signing key');

  /** The two options every reading command takes: where the ledger is, directly or through the policy. */
  const withLedger = (cmd: Command): Command =>
    cmd
      .option(
        '-l, --ledger <dir|file>',
        `ledger directory or one ledger file (default: from --config, else ${DEFAULT_LEDGER})`,
      )
      .option(
        '-c, --config <file>',
        'take the ledger path (and for verify the public key) from this policy file',
      );

  withLedger(ledger.command('verify'))
    .description('check the hash chain, file continuity and checkpoint signatures; exit 0 only if intact')
    .option('-k, --public-key <file>', 'Ed25519 public key (PEM): every checkpoint must be signed by it')
    .option(
      '--checkpoints <file>',
      'checkpoints collected off the box (witness file or syslog store): each must be in the ledger, unchanged',
    )
    .action(
      guarded(
        'verify',
        async (given: { ledger?: string; config?: string; publicKey?: string; checkpoints?: string }) => {
          const opts = { ...given, ...(await ledgerOptions(given)) };
          const publicKeyPem =
            opts.publicKey === undefined ? undefined : await readFile(opts.publicKey, 'utf8');
          const report = await verifyLedger(opts.ledger, publicKeyPem === undefined ? {} : { publicKeyPem });
          let witnessOk = true;
          const witnessLines: string[] = [];
          if (opts.checkpoints !== undefined) {
            const key =
              publicKeyPem === undefined
                ? null
                : (() => {
                    const k = loadPublicKey(publicKeyPem);
                    return { key: k, keyId: keyIdOf(k) };
                  })();
            const w = await checkWitnessed(opts.ledger, opts.checkpoints, { key });
            witnessOk = w.ok && w.witnessed > 0;
            witnessLines.push(
              `witnessed checkpoints: ${w.witnessed} in ${opts.checkpoints}` +
                (w.latest ? ` (latest seq ${w.latest.seq} of ${w.latest.time})` : '') +
                `, ${w.matched} identical in the ledger\n`,
            );
            if (w.witnessed === 0) {
              witnessLines.push(`${opts.checkpoints}: holds no checkpoint record: nothing to compare with\n`);
            }
            for (const e of w.errors) witnessLines.push(`${e.where}: ${e.message}\n`);
          }
          const name = await displayName(opts.ledger);
          out(
            `ledger ${opts.ledger}: ${plural(report.files, 'file')}, ${plural(report.records, 'record')} ` +
              `(${plural(report.instances, 'instance')}, ${plural(report.checkpoints, 'checkpoint')})\n`,
          );
          if (publicKeyPem !== undefined) {
            out(`signatures: ${report.signaturesVerified} verified with key ${keyId(publicKeyPem)}\n`);
          } else {
            out(
              `signatures: not checked (no --public-key)` +
                (report.unsignedCheckpoints > 0
                  ? `; ${plural(report.unsignedCheckpoints, 'unsigned checkpoint')}`
                  : '') +
                '\n',
            );
          }
          if (report.head) {
            out(`head: seq ${report.head.seq} in ${report.head.file}, hash ${report.head.hash}\n`);
            if (report.recordsAfterLastCheckpoint > 0) {
              out(`after the last checkpoint: ${plural(report.recordsAfterLastCheckpoint, 'record')}\n`);
            }
          }
          if (report.tornTail) {
            const t = report.tornTail;
            out(
              `torn tail: ${name(t.file)}:${t.line} (${plural(t.bytes, 'byte')}): a write cut short by a crash; ` +
                'the proxy saves it aside and cuts it at its next start\n',
            );
          }
          for (const l of witnessLines) out(l);
          if (report.ok && witnessOk) {
            out('INTACT\n');
            io.setExitCode(0);
            return;
          }
          if (!report.ok) {
            out(
              `BROKEN: ${plural(report.errors.length, 'problem')} (the first is where the ledger was first altered)\n`,
            );
            for (const e of report.errors)
              out(`${e.line > 0 ? `${name(e.file)}:${e.line}` : e.file}: ${e.message}\n`);
          } else {
            out('BROKEN: the ledger does not hold the checkpoints witnessed off the box (see above)\n');
          }
          io.setExitCode(1);
        },
      ),
    );

  withLedger(ledger.command('find'))
    .description(
      'print the instance records of a DICOM file (by data set SHA-256), a SOP Instance UID, a study or a calling AE title',
    )
    .option('-f, --file <file.dcm>', 'DICOM Part 10 file: match the SHA-256 of its data set')
    .option('-u, --sop-instance-uid <uid>', 'match the SOP Instance UID')
    .option('-s, --study <uid>', 'match the Study Instance UID')
    .option('-a, --calling-ae <aet>', 'match the calling AE title (who sent or asked)')
    .action(
      guarded(
        'find',
        async (opts: {
          file?: string;
          sopInstanceUid?: string;
          study?: string;
          callingAe?: string;
          ledger?: string;
          config?: string;
        }) => {
          const { ledger: ledgerPath } = await ledgerOptions(opts);
          if (
            opts.file === undefined &&
            opts.sopInstanceUid === undefined &&
            opts.study === undefined &&
            opts.callingAe === undefined
          ) {
            err(
              'dimse-tls-proxy ledger find: give --file <file.dcm>, --sop-instance-uid <uid>, --study <uid> or --calling-ae <aet>\n',
            );
            io.setExitCode(2);
            return;
          }
          const query: RecordQuery = {};
          const wanted: string[] = [];
          if (opts.file !== undefined) {
            const { sha256, bytes } = await hashPart10File(resolve(opts.file));
            err(`${opts.file}: data set SHA-256 ${sha256} (${plural(bytes, 'byte')})\n`);
            query.sha256 = sha256;
            wanted.push(`sha256 ${sha256} (${opts.file})`);
          }
          if (opts.sopInstanceUid !== undefined) {
            query.sopInstanceUid = opts.sopInstanceUid;
            wanted.push(`SOP Instance UID ${opts.sopInstanceUid}`);
          }
          if (opts.study !== undefined) {
            query.studyInstanceUid = opts.study;
            wanted.push(`Study Instance UID ${opts.study}`);
          }
          if (opts.callingAe !== undefined) {
            query.callingAeTitle = opts.callingAe;
            wanted.push(`calling AE title ${opts.callingAe}`);
          }
          const found = await findRecords(ledgerPath, query);
          if (found.length === 0) {
            err(`no record matches ${wanted.join(' and ')} in ${ledgerPath}\n`);
            io.setExitCode(1);
            return;
          }
          const name = await displayName(ledgerPath);
          for (const f of found) out(`${name(f.file)}:${f.line} ${JSON.stringify(f.record)}\n`);
          io.setExitCode(0);
        },
      ),
    );

  withLedger(ledger.command('export'))
    .description('write instance and committed records (since <= time < until) to stdout as CSV or JSON')
    .option('--since <time>', 'ISO 8601 time: records at or after it', parseTime)
    .option('--until <time>', 'ISO 8601 time: records before it', parseTime)
    .option('-s, --study <uid>', 'only instances of this Study Instance UID (and what confirms them)')
    .option('-a, --calling-ae <aet>', 'only instances this calling AE title sent or asked for')
    .addOption(new Option('--format <format>', 'output format').choices(['csv', 'json']).default('csv'))
    .action(
      guarded(
        'export',
        async (opts: {
          ledger?: string;
          config?: string;
          since?: Date;
          until?: Date;
          format: 'csv' | 'json';
          study?: string;
          callingAe?: string;
        }) => {
          const { ledger: ledgerPath } = await ledgerOptions(opts);
          await stat(ledgerPath); // a clear ENOENT before any output
          await exportRecords(
            ledgerPath,
            {
              format: opts.format,
              ...(opts.since ? { since: opts.since } : {}),
              ...(opts.until ? { until: opts.until } : {}),
              ...(opts.study !== undefined ? { studyInstanceUid: opts.study } : {}),
              ...(opts.callingAe !== undefined ? { callingAeTitle: opts.callingAe } : {}),
            },
            io.stdout,
          );
          io.setExitCode(0);
        },
      ),
    );

  ledger
    .command('keygen')
    .description('create the Ed25519 key pair that signs ledger checkpoints (keeps existing files)')
    .option('-d, --dir <dir>', 'output folder', 'certs')
    .option('--force', 'replace an existing key pair', false)
    .action(
      guarded('keygen', async (opts: { dir: string; force: boolean }) => {
        const r = await writeSigningKey(opts.dir, { overwrite: opts.force });
        out(`${r.created ? 'created' : 'kept existing'} ledger signing key ${r.keyId}\n`);
        out(`private key  ${r.privateKey}\n`);
        out(`public key   ${r.publicKey}\n`);
        io.setExitCode(0);
      }),
    );
}
