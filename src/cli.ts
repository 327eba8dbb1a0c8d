#!/usr/bin/env node
// The command line. The one place allowed to exit the process.
import { Command, InvalidArgumentError, Option } from 'commander';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { loadConfig } from './config/load.js';
import { ConfigError } from './config/errors.js';
import { buildSnapshot } from './relay/snapshot.js';
import { ProxyServer } from './relay/server.js';
import { createLogger, logEvents } from './observe/log.js';
import { TlsMaterialError } from './tls/upstream.js';
import { writeDemoPki } from './tls/pki.js';
import { writeSigningKey } from './integrity/keys.js';
import { LedgerWriter } from './integrity/writer.js';
import { InlineHasher } from './integrity/hasher.js';
import { registerLedgerCommands } from './cli/ledger.js';
import type { LedgerBinding } from './relay/association.js';

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
  .description('run the proxy')
  .requiredOption('-c, --config <file>', 'YAML policy file')
  .action(async (opts: { config: string }) => {
    let snapshot;
    try {
      snapshot = buildSnapshot(await loadConfig(resolve(opts.config)));
    } catch (err) {
      process.stderr.write(`dimse-tls-proxy: cannot start: ${explain(err)}\n`);
      process.exit(1);
    }
    const { config } = snapshot;
    const log = createLogger({ level: config.logging.level, file: config.logging.file });
    // The integrity ledger lives as long as the process: one chain, one writer.
    let ledger: LedgerWriter | null = null;
    if (config.ledger.path) {
      try {
        ledger = await LedgerWriter.open({
          dir: config.ledger.path,
          fsync: config.ledger.fsync,
          fsyncIntervalMs: config.ledger.fsyncIntervalMs,
          rotateMaxBytes: config.ledger.rotateMaxBytes,
          rotateDaily: config.ledger.rotateDaily,
          checkpointIntervalMs: config.ledger.checkpointIntervalMs,
          signingKeyPem: snapshot.ledgerSigningKeyPem,
        });
      } catch (err) {
        log.error('cannot open the integrity ledger', {
          event: 'ledger-open-failed',
          path: config.ledger.path,
          message: (err as Error).message,
        });
        process.exit(1);
      }
      if (ledger.recovery) {
        log.warn('ledger torn tail recovered', { event: 'ledger-recovered', ...ledger.recovery });
      }
      log.info('ledger open', { event: 'ledger-open', path: config.ledger.path, head: ledger.head });
    }
    const hasher = ledger ? new InlineHasher() : null;
    const binding: LedgerBinding | null =
      ledger && hasher ? { sink: ledger, onFailure: config.ledger.onLedgerFailure, hasher } : null;
    const server = new ProxyServer(snapshot, { ledger: binding });
    logEvents(server.events, log);
    try {
      const addr = await server.listen();
      log.info('listening', {
        event: 'listening',
        host: addr.address,
        port: addr.port,
        routes: config.routes.map((r) => `${r.calledAeTitle} -> ${r.upstream}`),
        peers: Object.keys(config.peers).length,
      });
      const ret = await server.listenReturn();
      if (ret) {
        log.info('return listener', {
          event: 'listening-return',
          host: ret.address,
          port: ret.port,
          receivers: Object.values(config.peers)
            .filter((p) => p.receiver)
            .map((p) => `${p.aeTitle} -> ${p.receiver?.host ?? ''}:${p.receiver?.port ?? 0}`),
        });
      }
    } catch (err) {
      log.error('cannot listen', { event: 'listen-failed', message: (err as Error).message });
      process.exit(1);
    }
    let stopping = false;
    const stop = (signal: string): void => {
      if (stopping) return;
      stopping = true;
      log.info('stopping', { event: 'stopping', signal, liveAssociations: server.liveAssociations });
      void server
        .close(10000)
        .then(() => ledger?.close())
        .then(() => hasher?.close())
        .catch((err: unknown) =>
          log.error('ledger close failed', { event: 'ledger-failed', message: String(err) }),
        )
        .then(() => {
          log.info('stopped', { event: 'stopped' });
          log.on('finish', () => process.exit(0));
          log.end();
          setTimeout(() => process.exit(0), 1000).unref();
        });
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
  });

program
  .command('check-config')
  .description('validate a policy file (schema, references, certificates) and exit 0 if it is usable')
  .requiredOption('-c, --config <file>', 'YAML policy file')
  .action(async (opts: { config: string }) => {
    try {
      const snapshot = buildSnapshot(await loadConfig(resolve(opts.config)));
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
    const paths = await writeDemoPki(resolve(opts.dir), { overwrite: opts.force });
    const ledgerKey = await writeSigningKey(resolve(opts.dir), { overwrite: opts.force });
    const all = { ...paths, ledgerSigningKey: ledgerKey.privateKey, ledgerPublicKey: ledgerKey.publicKey };
    for (const [k, v] of Object.entries(all)) if (k !== 'dir') process.stdout.write(`${k.padEnd(18)} ${v}\n`);
  });

program
  .command('echo')
  .description('send a C-ECHO to any DICOM node (troubleshooting), optionally over mutual TLS')
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
  .option('--tls', 'use mutual TLS', false)
  .option('--ca <file>', 'CA bundle (with --tls)')
  .option('--cert <file>', 'client certificate (with --tls)')
  .option('--key <file>', 'client key (with --tls)')
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
        timeout: number;
      },
    ) => {
      let tls;
      if (opts.tls) {
        if (!opts.ca || !opts.cert || !opts.key) {
          process.stderr.write('--tls needs --ca, --cert and --key\n');
          process.exit(2);
        }
        tls = { ca: readFileSync(opts.ca), cert: readFileSync(opts.cert), key: readFileSync(opts.key) };
      }
      // Loaded on demand: dcmjs-dimse's dictionaries would enlarge the relay's heap and so every GC.
      const { echo } = await import('./dicom/dcmjs.js');
      const r = await echo({
        host,
        port,
        callingAeTitle: opts.aet,
        calledAeTitle: opts.aec,
        timeoutMs: opts.timeout,
        ...(tls ? { tls } : {}),
      });
      if (r.ok) {
        process.stdout.write(
          `C-ECHO ${opts.aet} -> ${opts.aec}@${host}:${port}: success in ${r.durationMs.toFixed(1)} ms\n`,
        );
      } else {
        process.stdout.write(
          `C-ECHO ${opts.aet} -> ${opts.aec}@${host}:${port}: FAILED: ${r.error}` +
            (r.status !== null ? ` (status 0x${r.status.toString(16).padStart(4, '0')})` : '') +
            '\n',
        );
        process.exit(1);
      }
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
