#!/usr/bin/env node
// The command line. The one place allowed to exit the process.
import './cli/reexec.js'; // first: `start` re-executes itself with the daemon's heap flags (util/gc.ts)
import { Command, InvalidArgumentError, Option } from 'commander';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { ConfigError } from './config/errors.js';
import { buildRuntimeSnapshot } from './runtime/snapshot.js';
import { runStart } from './cli/start.js';
import { adminRequest, fetchStatus, formatAssociations } from './observe/status.js';
import { explainQuery, formatExplanation, type Explanation, type ExplainQuery } from './policy/explain.js';
import { compilePolicy } from './policy/policy.js';
import type { LiveAssociation } from './observe/events.js';
import { diffConfigs, formatChanges } from './config/diff.js';
import { TlsMaterialError } from './tls/upstream.js';
import { writeSigningKey } from './integrity/keys.js';
import { registerLedgerCommands } from './cli/ledger.js';
import { describeAssociateReject } from './pdu/constants.js';

// The YAML parser and the config schema are loaded only by the commands that read a configuration
// here; `start` validates in a child process and keeps them out of the relay's heap (config/load-isolated.ts).
const loadConfig = async (path: string): Promise<import('./config/types.js').ProxyConfig> =>
  (await import('./config/load.js')).loadConfig(path);

// `dimse-tls-proxy ledger export | head`: when the reader goes away, stop quietly with the exit code so
// far, never a stack trace. The daemon (`start`) keeps serving: a log reader that went away must not take
// the proxy with it (its log lines to that pipe are lost; the log file, when configured, has them).
const isDaemon = process.argv[2] === 'start';
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code !== 'EPIPE') throw err;
    if (!isDaemon) process.exit(typeof process.exitCode === 'number' ? process.exitCode : 0);
  });
}

const program = new Command();
program
  .name('dimse-tls-proxy')
  .description('Transparent DICOM DIMSE proxy: plaintext modalities to a mutual-TLS archive')
  .version(readVersion());

function readVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as {
      version: string;
    };
    return pkg.version;
  } catch {
    return '0.0.0';
  }
}

/** Print a load/validation failure the way an admin needs it: file, line, key, message. */
function explain(err: unknown): string {
  if (err instanceof ConfigError) return err.message;
  if (err instanceof TlsMaterialError) return `TLS material: ${err.message}`;
  return (err as Error)?.message ?? String(err);
}

program
  .command('start')
  .description('run the proxy (SIGHUP reloads the policy and certificates; SIGTERM drains and exits 0)')
  .requiredOption('-c, --config <file>', 'YAML policy file')
  .action(async (opts: { config: string }) => {
    await runStart(resolve(opts.config), {
      explain,
      fail: (message) => {
        process.stderr.write(`dimse-tls-proxy: ${message}\n`);
        process.exit(1);
      },
    });
  });

/** The admin endpoint to talk to: --admin, else the config's admin section, else the default. */
async function adminAddress(opts: { admin?: string; config?: string }): Promise<string> {
  if (opts.admin) return opts.admin;
  if (opts.config) {
    try {
      const c = await loadConfig(resolve(opts.config));
      if (c.admin)
        return `${c.admin.host.includes(':') ? `[${c.admin.host}]` : c.admin.host}:${c.admin.port}`;
      process.stderr.write(`${opts.config}: admin is disabled (admin: null)\n`);
      process.exit(2);
    } catch (err) {
      process.stderr.write(`${explain(err)}\n`);
      process.exit(2);
    }
  }
  return '127.0.0.1:9464';
}

program
  .command('status')
  .description(
    'readiness and health of a running proxy, from its admin endpoint (exit 0 ready, 1 not ready, 2 unreachable)',
  )
  .option('--admin <host:port>', 'admin endpoint (default: from --config, else 127.0.0.1:9464)')
  .option('-c, --config <file>', 'read the admin address from this policy file')
  .option(
    '--live',
    'liveness only (/healthz): exit 0 while the process is healthy, whatever the upstreams (container HEALTHCHECK)',
  )
  .option(
    '--associations',
    'also list the live associations (peer, address, route, state, operations, bytes)',
  )
  .action(async (opts: { admin?: string; config?: string; live?: boolean; associations?: boolean }) => {
    const admin = await adminAddress(opts);
    const report = await fetchStatus(admin);
    process.stdout.write(report.text.endsWith('\n') ? report.text : `${report.text}\n`);
    if (opts.associations && report.reachable) {
      try {
        const r = await adminRequest(admin, '/associations');
        const list = (r.body as { associations?: LiveAssociation[] }).associations ?? [];
        process.stdout.write(`\n${formatAssociations(list)}\n`);
      } catch (err) {
        process.stderr.write(`${(err as Error).message}\n`);
        process.exit(2);
      }
    }
    process.exit(opts.live ? report.liveExitCode : report.exitCode);
  });

program
  .command('explain')
  .description(
    'what the policy answers a calling AE from an address (accept, or the exact A-ASSOCIATE-RJ / DIMSE status) and which rule decided; exit 0 accepted, 1 refused',
  )
  .requiredOption('--calling <ae>', 'calling AE title (the modality)')
  .requiredOption('--from <address>', 'source address of the modality')
  .option('--called <ae>', "called AE title (default: the only route's)")
  .option(
    '--service <service|uid>',
    'a service (echo, store, find, move, get, worklist, mpps, commitment) or a SOP Class UID',
  )
  .option('--move-destination <ae>', 'with a C-MOVE: the destination AE title')
  .option('-c, --config <file>', 'the policy in this file (default: the running policy, from --admin)')
  .option('--admin <host:port>', 'ask the running proxy (default 127.0.0.1:9464)')
  .option('--json', 'print the answer as JSON')
  .action(
    async (opts: {
      calling: string;
      from: string;
      called?: string;
      service?: string;
      moveDestination?: string;
      config?: string;
      admin?: string;
      json?: boolean;
    }) => {
      let query: ExplainQuery = {
        callingAeTitle: opts.calling,
        remoteAddress: opts.from,
        calledAeTitle: opts.called ?? '',
        service: opts.service ?? null,
        moveDestination: opts.moveDestination ?? null,
      };
      let e: Explanation;
      try {
        if (opts.config && !opts.admin) {
          const config = await loadConfig(resolve(opts.config));
          if (opts.called === undefined) {
            if (config.routes.length !== 1) {
              process.stderr.write(`--called is needed: ${opts.config} has ${config.routes.length} routes\n`);
              process.exit(2);
            }
            query = { ...query, calledAeTitle: config.routes[0]?.calledAeTitle ?? '' };
          }
          e = explainQuery(compilePolicy(config), query);
        } else {
          if (opts.called === undefined) {
            process.stderr.write('--called is needed when asking the running proxy\n');
            process.exit(2);
          }
          const params = new URLSearchParams({
            calling: query.callingAeTitle,
            from: query.remoteAddress,
            called: query.calledAeTitle,
          });
          if (query.service) params.set('service', query.service);
          if (query.moveDestination) params.set('moveDestination', query.moveDestination);
          const r = await adminRequest(opts.admin ?? '127.0.0.1:9464', `/explain?${params.toString()}`);
          if (r.code !== 200) throw new Error(`/explain answered ${r.code}: ${JSON.stringify(r.body)}`);
          e = r.body as Explanation;
        }
      } catch (err) {
        process.stderr.write(`${explain(err)}\n`);
        process.exit(2);
      }
      process.stdout.write(
        opts.json ? `${JSON.stringify({ query, ...e }, null, 2)}\n` : formatExplanation(query, e),
      );
      process.exit(e.association.accepted && (e.request?.allowed ?? true) ? 0 : 1);
    },
  );

program
  .command('log-level')
  .description(
    "show or set a running proxy's log level (until its next reload, which restores logging.level)",
  )
  .argument('[level]', 'error, warn, info or debug')
  .option('--admin <host:port>', 'admin endpoint (default: from --config, else 127.0.0.1:9464)')
  .option('-c, --config <file>', 'read the admin address from this policy file')
  .action(async (level: string | undefined, opts: { admin?: string; config?: string }) => {
    const admin = await adminAddress(opts);
    try {
      const r = await adminRequest(
        admin,
        level === undefined ? '/-/log-level' : `/-/log-level?level=${encodeURIComponent(level)}`,
        { method: level === undefined ? 'GET' : 'POST' },
      );
      const body = r.body as { level?: string; configured?: string; error?: string };
      if (r.code !== 200) {
        process.stderr.write(`log level not changed: ${body.error ?? JSON.stringify(body)}\n`);
        process.exit(1);
      }
      process.stdout.write(
        `log level ${body.level ?? '?'} (logging.level in the configuration: ${body.configured ?? '?'})\n`,
      );
    } catch (err) {
      process.stderr.write(`${(err as Error).message}\n`);
      process.exit(2);
    }
  });

program
  .command('reload')
  .description(
    "reload a running proxy's policy and certificates (like SIGHUP), or with --dry-run show what would change",
  )
  .option('--dry-run', 'validate and list the changes without applying them')
  .option('--admin <host:port>', 'admin endpoint (default: from --config, else 127.0.0.1:9464)')
  .option('-c, --config <file>', 'read the admin address from this policy file')
  .action(async (opts: { admin?: string; config?: string; dryRun?: boolean }) => {
    const base = await adminAddress(opts);
    const url = `${/^https?:\/\//.test(base) ? base : `http://${base}`}/-/reload${opts.dryRun ? '?dryRun=1' : ''}`;
    try {
      const res = await fetch(url, { method: 'POST', signal: AbortSignal.timeout(30_000) });
      const body = (await res.json()) as { ok?: boolean; text?: string; message?: string };
      if (body.ok) {
        process.stdout.write(`${opts.dryRun ? 'would apply' : 'applied'}: ${body.text ?? ''}\n`);
        process.exit(0);
      }
      process.stderr.write(
        `reload failed, the running configuration stays in force:\n${body.message ?? JSON.stringify(body)}\n`,
      );
      process.exit(1);
    } catch (err) {
      process.stderr.write(`cannot reach the admin endpoint ${url}: ${(err as Error).message}\n`);
      process.exit(2);
    }
  });

program
  .command('check-config')
  .description('validate a policy file (schema, references, certificates) and exit 0 if it is usable')
  .requiredOption('-c, --config <file>', 'YAML policy file')
  .option('--against <file>', 'also list what changes compared with this (e.g. the running) policy file')
  .action(async (opts: { config: string; against?: string }) => {
    try {
      const snapshot = buildRuntimeSnapshot(await loadConfig(resolve(opts.config)));
      if (opts.against) {
        const before = await loadConfig(resolve(opts.against));
        process.stdout.write(`${formatChanges(diffConfigs(before, snapshot.config))}\n`);
      }
      const c = snapshot.config;
      process.stdout.write(
        `OK ${opts.config}: listen ${c.listen.host}:${c.listen.port}, ${Object.keys(c.upstreams).length} upstream(s), ` +
          `${c.routes.length} route(s), ${Object.keys(c.peers).length} peer(s)\n`,
      );
      for (const [name, t] of snapshot.upstreamTls) {
        process.stdout.write(
          `  upstream ${name}: client certificate ${t.clientCertSubject.replace(/\n/g, ', ')} valid until ${t.clientCertNotAfter.toISOString()}\n`,
        );
      }
      for (const w of snapshot.certificateWarnings)
        process.stdout.write(`  warning: ${w.path} ${w.message}\n`);
      if (c.audit?.syslog) {
        const { largestTransferMessageBytes, COMMON_SYSLOG_MESSAGE_LIMIT } =
          await import('./observe/audit/index.js');
        const bytes = largestTransferMessageBytes(c.audit);
        if (bytes > COMMON_SYSLOG_MESSAGE_LIMIT) {
          let fits = c.audit.maxInstancesPerMessage;
          while (
            fits > 1 &&
            largestTransferMessageBytes({ ...c.audit, maxInstancesPerMessage: fits }) >
              COMMON_SYSLOG_MESSAGE_LIMIT
          ) {
            fits = Math.floor(fits * 0.8);
          }
          process.stdout.write(
            `  warning: audit.maxInstancesPerMessage ${c.audit.maxInstancesPerMessage} lets a DICOM Instances Transferred message reach ~${Math.ceil(bytes / 1024)} KiB; ` +
              `rsyslog accepts ${COMMON_SYSLOG_MESSAGE_LIMIT / 1024} KiB by default (global(maxMessageSize=…)) and cuts longer ones: ` +
              `raise the receiver's limit, or set audit.maxInstancesPerMessage to ${fits} or less\n`,
          );
        }
      }
    } catch (err) {
      process.stderr.write(`${explain(err)}\n`);
      process.exit(1);
    }
  });

const certs = program.command('certs').description('certificate helpers');
certs
  .command('init')
  .description(
    'create a demo CA, proxy client/server and demo archive certificates (ECDSA P-256) and the ledger signing key (Ed25519)',
  )
  .option('-d, --dir <dir>', 'output folder', 'certs')
  .option('--force', 'overwrite existing files', false)
  .action(async (opts: { dir: string; force: boolean }) => {
    // Loaded on demand: the certificate library is needed by this command only, not by the daemon.
    const { writeDemoPki } = await import('./tls/pki.js');
    const paths = await writeDemoPki(resolve(opts.dir), { overwrite: opts.force });
    const ledgerKey = await writeSigningKey(resolve(opts.dir), { overwrite: opts.force });
    const all = { ...paths, ledgerSigningKey: ledgerKey.privateKey, ledgerPublicKey: ledgerKey.publicKey };
    for (const [k, v] of Object.entries(all)) if (k !== 'dir') process.stdout.write(`${k.padEnd(18)} ${v}\n`);
  });

/** What a rejection means, and where to look when the node is a dimse-tls-proxy. */
function rejectionHint(r: { result: number; source: number; reason: number }, calling: string): string {
  const words = describeAssociateReject(r.result, r.source, r.reason);
  const hint =
    r.source === 1 && r.reason === 3
      ? `at a dimse-tls-proxy: calling AE title ${calling} is not configured there, or not from this address ` +
        `(\`dimse-tls-proxy explain --calling ${calling} --from <this host's address>\` says which)`
      : r.source === 1 && r.reason === 7
        ? 'at a dimse-tls-proxy: no route for this called AE title (routes[].calledAeTitle)'
        : r.source === 3 && r.reason === 1
          ? 'at a dimse-tls-proxy: the archive behind it did not answer (see its upstream-failed log line)'
          : r.source === 3 && r.reason === 2
            ? "at a dimse-tls-proxy: an association limit (limits.maxAssociations or the peer's maxAssociations)"
            : null;
  return hint ? `${words}; ${hint}` : words;
}

certs
  .command('inspect')
  .description(
    'print a certificate, chain or CSR: subject, names, issuer, validity, key, fingerprint, key usage; exit 1 if the proxy would object to it',
  )
  .argument('<file>', 'PEM (one or more certificates, or a CSR) or DER certificate')
  .option('--json', 'print as JSON')
  .action(async (file: string, opts: { json?: boolean }) => {
    const { inspectCertificates, formatInspected } = await import('./tls/inspect.js');
    let list;
    try {
      list = await inspectCertificates(readFileSync(file));
    } catch (err) {
      process.stderr.write(`${file}: ${(err as Error).message}\n`);
      process.exit(2);
    }
    process.stdout.write(opts.json ? `${JSON.stringify(list, null, 2)}\n` : formatInspected(list));
    if (list.some((c) => c.problems.length > 0)) process.exit(1);
  });

certs
  .command('csr')
  .description(
    "create a key and a certificate signing request for the proxy's client (toward archives) or server (return listener) certificate",
  )
  .requiredOption('--cn <name>', 'subject common name')
  .addOption(
    new Option('--usage <usage>', 'extended key usage to request')
      .choices(['client', 'server', 'both'])
      .makeOptionMandatory(),
  )
  .option('--dns <names>', 'DNS subject alternative names, comma-separated')
  .option('--ip <addresses>', 'IP subject alternative names, comma-separated')
  .addOption(new Option('--key-type <type>', 'key').choices(['ec-p256', 'rsa-2048']).default('ec-p256'))
  .option('-d, --dir <dir>', 'output folder', 'certs')
  .option('--name <name>', 'file name stem (default proxy-<usage>)')
  .option('--force', 'overwrite existing files', false)
  .action(
    async (opts: {
      cn: string;
      usage: 'client' | 'server' | 'both';
      dns?: string;
      ip?: string;
      keyType: 'ec-p256' | 'rsa-2048';
      dir: string;
      name?: string;
      force: boolean;
    }) => {
      const { createCsr } = await import('./tls/pki.js');
      const { inspectCertificates, formatInspected } = await import('./tls/inspect.js');
      const { mkdir, writeFile } = await import('node:fs/promises');
      const { existsSync } = await import('node:fs');
      const list = (v?: string): string[] =>
        (v ?? '')
          .split(',')
          .map((x) => x.trim())
          .filter(Boolean);
      const stem = resolve(opts.dir, opts.name ?? `proxy-${opts.usage}`);
      const csrPath = `${stem}.csr`;
      const keyPath = `${stem}.key`;
      for (const p of [csrPath, keyPath]) {
        if (existsSync(p) && !opts.force) {
          process.stderr.write(`${p} exists: keep it, or pass --force to replace it\n`);
          process.exit(2);
        }
      }
      let made;
      try {
        made = await createCsr({
          commonName: opts.cn,
          usage: opts.usage,
          dnsNames: list(opts.dns),
          ipAddresses: list(opts.ip),
          keyType: opts.keyType,
        });
      } catch (err) {
        process.stderr.write(`${(err as Error).message}\n`);
        process.exit(2);
      }
      await mkdir(resolve(opts.dir), { recursive: true });
      await writeFile(keyPath, made.key, { mode: 0o600 });
      await writeFile(csrPath, made.csr, { mode: 0o644 });
      process.stdout.write(
        `private key  ${keyPath} (keep it on this host)\ncsr          ${csrPath} (send it to your CA)\n`,
      );
      process.stdout.write(formatInspected(await inspectCertificates(Buffer.from(made.csr))));
    },
  );

program
  .command('echo')
  .description(
    "send a C-ECHO to any DICOM node (troubleshooting); over mutual TLS it prints the TLS version, cipher and the node's certificate",
  )
  .argument('<host>', 'host name or address')
  .argument('<port>', 'port (1-65535)', (v) => {
    const port = Number(v);
    if (!Number.isInteger(port) || port < 1 || port > 65535) {
      throw new InvalidArgumentError(`port must be a whole number from 1 to 65535, not ${JSON.stringify(v)}`);
    }
    return port;
  })
  .option('--aet <ae>', 'calling AE title', 'ECHOSCU')
  .option('--aec <ae>', 'called AE title', 'ANY-SCP')
  .option('--tls', 'use mutual TLS (the same TLS settings the proxy uses toward an archive)', false)
  .option('--ca <file>', "CA bundle the node's certificate must chain to (with --tls)")
  .option('--cert <file>', 'client certificate (with --tls)')
  .option('--key <file>', 'client key (with --tls)')
  .option(
    '--server-name <name>',
    "the name expected in the node's certificate and sent as SNI (default: <host>)",
  )
  .option('--no-verify-hostname', 'check the chain and validity only, not the name')
  .addOption(
    new Option('--profile <profile>', 'TLS profile').choices(['bcp195', 'modified-bcp195']).default('bcp195'),
  )
  .addOption(
    new Option('--timeout <ms>', 'timeout in ms').default(10000).argParser((v) => Number.parseInt(v, 10)),
  )
  .action(
    async (
      host: string,
      port: number,
      opts: {
        aet: string;
        aec: string;
        tls: boolean;
        ca?: string;
        cert?: string;
        key?: string;
        serverName?: string;
        verifyHostname: boolean;
        profile: 'bcp195' | 'modified-bcp195';
        timeout: number;
      },
    ) => {
      if (opts.tls && (!opts.ca || !opts.cert || !opts.key)) {
        process.stderr.write('--tls needs --ca, --cert and --key\n');
        process.exit(2);
      }
      const { echoNode } = await import('./tls/probe.js');
      const r = await echoNode({
        host,
        port,
        callingAeTitle: opts.aet,
        calledAeTitle: opts.aec,
        timeoutMs: opts.timeout,
        tls:
          opts.tls && opts.ca && opts.cert && opts.key
            ? {
                ca: resolve(opts.ca),
                cert: resolve(opts.cert),
                key: resolve(opts.key),
                serverName: opts.serverName ?? host,
                verifyHostname: opts.verifyHostname,
                profile: opts.profile,
              }
            : null,
      });
      const out: string[] = [];
      if (r.tls) {
        out.push(`TLS: ${r.tls.protocol ?? '?'} ${r.tls.cipher}`);
        const c = r.tls.peerCertificate;
        if (c) {
          out.push(
            `node certificate: ${c.subject}`,
            `  issuer:   ${c.issuer}`,
            ...(c.subjectAltName ? [`  names:    ${c.subjectAltName}`] : []),
            `  valid:    ${c.validFrom} to ${c.validTo}`,
            `  SHA-256:  ${c.fingerprint256}`,
          );
        }
      }
      const what = `C-ECHO ${opts.aet} -> ${opts.aec}@${host}:${port}${opts.tls ? ' (TLS)' : ''}`;
      if (r.ok) {
        out.push(`${what}: success in ${r.durationMs.toFixed(1)} ms`);
        process.stdout.write(`${out.join('\n')}\n`);
        return;
      }
      const why = r.rejection
        ? `REJECTED A-ASSOCIATE-RJ ${r.rejection.result}/${r.rejection.source}/${r.rejection.reason}: ${rejectionHint(r.rejection, opts.aet)}`
        : r.status !== null
          ? `FAILED: status 0x${r.status.toString(16).toUpperCase().padStart(4, '0')}`
          : `FAILED: ${r.error ?? 'unknown error'}`;
      out.push(`${what}: ${why}`);
      process.stdout.write(`${out.join('\n')}\n`);
      process.exit(1);
    },
  );

program
  .command('demo')
  .description('embedded demo: certificates, a mutual-TLS demo archive and the proxy in front of it')
  .option('-c, --config <file>', 'demo policy', 'config/demo.yaml')
  .option('--once', 'exit after the demo transfer instead of running until Ctrl-C', false)
  .action(async (opts: { config: string; once: boolean }) => {
    const { runDemo } = await import('./demo/demo.js');
    const code = await runDemo({ configPath: resolve(opts.config), once: opts.once });
    if (opts.once) process.exit(code);
  });

registerLedgerCommands(program);

program.parseAsync(process.argv).catch((err: unknown) => {
  process.stderr.write(`dimse-tls-proxy: ${explain(err)}\n`);
  process.exit(1);
});
