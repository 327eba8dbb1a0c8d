// In-process proxy and per-run PKI for relay tests. Everything binds 127.0.0.1 on port 0.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createCa, issueCertificate, type PemPair } from '../../src/tls/pki.js';
import { parseConfig } from '../../src/config/load.js';
import { buildRuntimeSnapshot } from '../../src/runtime/snapshot.js';
import { ProxyServer } from '../../src/relay/server.js';
import type { LedgerBinding } from '../../src/relay/association.js';
import type { ProxyEventMap } from '../../src/observe/events.js';
import type { Clock } from '../../src/util/clock.js';

export interface TestPki {
  dir: string;
  ca: PemPair;
  files: Record<string, string>;
  /** Write a PEM pair as <name>.pem/<name>.key and return the paths. */
  write(name: string, pair: PemPair): Promise<{ cert: string; key: string }>;
}

export async function makePki(): Promise<TestPki> {
  const dir = await mkdtemp(join(tmpdir(), 'dimse-pki-'));
  const ca = await createCa('Test CA');
  const files: Record<string, string> = { ca: join(dir, 'ca.pem') };
  await writeFile(files.ca as string, ca.cert);
  const pki: TestPki = {
    dir,
    ca,
    files,
    async write(name, pair) {
      const cert = join(dir, `${name}.pem`);
      const key = join(dir, `${name}.key`);
      await writeFile(cert, pair.cert);
      await writeFile(key, pair.key, { mode: 0o600 });
      files[name] = cert;
      files[`${name}.key`] = key;
      return { cert, key };
    },
  };
  return pki;
}

/** The usual material: proxy client cert and an archive cert (server+client, SAN archive.local/127.0.0.1). */
export async function standardPki(): Promise<TestPki & { archive: PemPair; client: PemPair }> {
  const pki = await makePki();
  const archive = await issueCertificate(pki.ca, {
    commonName: 'archive.local',
    dnsNames: ['archive.local', 'localhost'],
    ipAddresses: ['127.0.0.1'],
    usage: 'both',
  });
  const client = await issueCertificate(pki.ca, { commonName: 'dimse-tls-proxy', usage: 'client' });
  await pki.write('archive', archive);
  await pki.write('client', client);
  return Object.assign(pki, { archive, client });
}

/**
 * The proxy's return-listener server certificate (CN and DNS SAN proxy.local, IP SAN 127.0.0.1,
 * serverAuth), issued by the test CA and written as `proxy-server` / `proxy-server.key`.
 */
export async function writeProxyServerCert(pki: TestPki): Promise<void> {
  await pki.write(
    'proxy-server',
    await issueCertificate(pki.ca, {
      commonName: 'proxy.local',
      dnsNames: ['proxy.local'],
      ipAddresses: ['127.0.0.1'],
      usage: 'server',
    }),
  );
}

export async function removePki(pki: TestPki | undefined): Promise<void> {
  if (pki) await rm(pki.dir, { recursive: true, force: true });
}

export interface ProxyUnderTest {
  server: ProxyServer;
  port: number;
  /** The return listener's port (0 when none is configured). */
  returnPort: number;
  events: { [K in keyof ProxyEventMap]?: ProxyEventMap[K][0][] };
  /**
   * Resolves with the next summary of a forward-listener association (or the one already recorded at
   * index n among them). Return-listener summaries are in events['association-closed'] too.
   */
  closed(n?: number, timeoutMs?: number): Promise<ProxyEventMap['association-closed'][0]>;
  close(): Promise<void>;
}

export interface ProxyTestOptions {
  archivePort: number;
  pki: TestPki;
  /** Extra YAML appended under `peers:` (indented 2). Default: a full-service peer SCU from 127.0.0.1. */
  peers?: string;
  limits?: string;
  upstreamExtra?: string;
  serverName?: string;
  clientCert?: string;
  clientKey?: string;
  connectTimeout?: string;
  ledger?: LedgerBinding;
  /** Extra lines under `tls:` (indented 6), e.g. `      verifyHostname: false`. */
  tlsExtra?: string;
  /** Extra top-level YAML (e.g. a `returnListener:` section). */
  extra?: string;
  /** Time source of the associations' timers (a ManualClock in timer tests). */
  clock?: Clock;
  /** Extra keys of the `listen:` mapping, e.g. `proxyProtocol: { from: [127.0.0.1] }`. */
  listenExtra?: string;
}

export function proxyYaml(o: ProxyTestOptions): string {
  return [
    `listen: { host: 127.0.0.1, port: 0${o.listenExtra ? `, ${o.listenExtra}` : ''} }`,
    'upstreams:',
    '  archive:',
    '    host: 127.0.0.1',
    `    port: ${o.archivePort}`,
    '    aeTitle: ARCHIVE',
    `    connectTimeout: ${o.connectTimeout ?? '3s'}`,
    ...(o.upstreamExtra ? [o.upstreamExtra] : []),
    '    tls:',
    `      ca: ${o.pki.files.ca}`,
    `      cert: ${o.clientCert ?? o.pki.files.client}`,
    `      key: ${o.clientKey ?? o.pki.files['client.key']}`,
    `      serverName: ${o.serverName ?? 'archive.local'}`,
    ...(o.tlsExtra ? [o.tlsExtra] : []),
    'routes:',
    '  - { calledAeTitle: DICOM_PROXY, upstream: archive }',
    'peers:',
    o.peers ??
      '  SCU: { addresses: [127.0.0.1], services: [echo, store, find, move, get, mpps, commitment], moveDestinations: [SCU, WS_OK] }',
    `limits: ${o.limits ?? '{ associationRequestTimeout: 2s, idleTimeout: 30s }'}`,
    'logging: { level: error }',
    ...(o.extra ? [o.extra] : []),
    '',
  ].join('\n');
}

export async function startProxy(o: ProxyTestOptions): Promise<ProxyUnderTest> {
  const config = parseConfig(proxyYaml(o), null);
  const server = new ProxyServer(buildRuntimeSnapshot(config), {
    ledger: o.ledger ?? null,
    ...(o.clock ? { clock: o.clock } : {}),
  });
  const events: ProxyUnderTest['events'] = {};
  const waiters: Array<() => void> = [];
  for (const name of [
    'association-refused',
    'association-accepted',
    'upstream-failed',
    'dimse-refused',
    'dimse-completed',
    'retrieve-started',
    'instance',
    'protocol-error',
    'association-closed',
    'ledger-failed',
    'tls-client-rejected',
    'connection-refused',
  ] as const) {
    server.events.on(name as 'instance', (e: unknown) => {
      ((events[name] ??= []) as unknown[]).push(e);
      if (name === 'association-closed') waiters.splice(0).forEach((w) => w());
    });
  }
  const addr = await server.listen('127.0.0.1', 0);
  const ret = await server.listenReturn(); // as configured (tests give 127.0.0.1 and a port)
  let seen = 0;
  return {
    server,
    port: addr.port,
    returnPort: ret?.port ?? 0,
    events,
    async closed(n, timeoutMs = 10000) {
      const index = n ?? seen;
      seen = index + 1;
      const deadline = Date.now() + timeoutMs;
      const forward = () => (events['association-closed'] ?? []).filter((e) => e.listener === 'forward');
      while (!forward()[index]) {
        if (Date.now() > deadline) throw new Error(`no association summary #${index} within ${timeoutMs} ms`);
        await new Promise<void>((r) => {
          const t = setTimeout(r, 100);
          waiters.push(() => {
            clearTimeout(t);
            r();
          });
        });
      }
      return forward()[index] as ProxyEventMap['association-closed'][0];
    },
    close: () => server.close(0),
  };
}
