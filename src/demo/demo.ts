// `npm run demo`: demo certificates, an embedded mutual-TLS archive, the proxy in front of it, a few
// generated instances sent through, and what arrived — byte for byte.
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { loadConfig } from '../config/load.js';
import { buildRuntimeSnapshot } from '../runtime/snapshot.js';
import { ProxyServer } from '../relay/server.js';
import { createLogger, logEvents } from '../observe/log.js';
import { tuneRuntime } from '../util/gc.js';
import { writeDemoPki } from '../tls/pki.js';
import { writeSigningKey } from '../integrity/keys.js';
import { LedgerWriter } from '../integrity/writer.js';
import { InlineHasher } from '../integrity/hasher.js';
import { findRecords } from '../integrity/find.js';
import { Dataset, echo, startArchive, store, type DimseDataset } from '../dicom/dcmjs.js';
import { datasetOffset } from '../dicom/part10.js';
import { ProxyMetrics, metricBoundsFromConfig } from '../observe/metrics.js';
import { UpstreamReadiness } from '../observe/readiness.js';
import { AdminServer } from '../observe/admin.js';
import { explainQuery } from '../policy/explain.js';

export interface DemoOptions {
  configPath: string;
  once: boolean;
}

function uid(): string {
  return `2.25.${BigInt('0x' + randomBytes(16).toString('hex')).toString(10)}`;
}

function demoInstance(index: number, studyUid: string, seriesUid: string): DimseDataset {
  const rows = 256;
  const columns = 256;
  const pixels = new Uint8Array(rows * columns * 2);
  for (let i = 0; i < pixels.length; i++) pixels[i] = (i * 7 + index * 13) & 0xff;
  return new Dataset(
    {
      SOPClassUID: '1.2.840.10008.5.1.4.1.1.7', // Secondary Capture Image Storage
      SOPInstanceUID: uid(),
      StudyInstanceUID: studyUid,
      SeriesInstanceUID: seriesUid,
      PatientID: 'DEMO-0001',
      PatientName: 'DEMO^PATIENT',
      StudyDate: '20261124',
      Modality: 'OT',
      InstanceNumber: String(index + 1),
      SamplesPerPixel: 1,
      PhotometricInterpretation: 'MONOCHROME2',
      Rows: rows,
      Columns: columns,
      BitsAllocated: 16,
      BitsStored: 12,
      HighBit: 11,
      PixelRepresentation: 0,
      PixelData: [pixels.buffer],
      _vrMap: { PixelData: 'OW' },
    } as never,
    '1.2.840.10008.1.2.1',
  );
}

export async function runDemo(opts: DemoOptions): Promise<number> {
  tuneRuntime(); // the relay's GC settings, as `start` applies them (src/util/gc.ts)
  const out = (s = ''): void => void process.stdout.write(`${s}\n`);
  const root = resolve(dirname(opts.configPath), '..');
  const pki = await writeDemoPki(join(root, 'certs'));
  await writeSigningKey(join(root, 'certs'), { overwrite: false });
  const config = await loadConfig(opts.configPath);
  const snapshot = buildRuntimeSnapshot(config);
  const upstream = Object.values(config.upstreams)[0];
  const route = config.routes[0];
  if (!upstream || !route) throw new Error(`${opts.configPath} needs one upstream and one route`);

  const storageDir = join(root, 'var', 'demo-archive');
  const archive = await startArchive({
    host: upstream.host,
    port: upstream.port,
    aeTitle: upstream.aeTitle,
    storageDir,
    tls: {
      ca: readFileSync(pki.caCert),
      cert: readFileSync(pki.archiveCert),
      key: readFileSync(pki.archiveKey),
      requireClientCert: true,
    },
  });
  const log = createLogger({ level: config.logging.level, file: config.logging.file, stderr: true });
  const ledger = config.ledger.path
    ? await LedgerWriter.openConfigured(config.ledger.path, config.ledger, snapshot.ledgerSigningKeyPem)
    : null;
  const hasher = new InlineHasher();
  const proxy = new ProxyServer(snapshot, {
    ledger: ledger ? { sink: ledger, onFailure: config.ledger.onLedgerFailure, hasher } : null,
  });
  logEvents(proxy.events, log);
  const addr = await proxy.listen();
  // The admin endpoint, as the daemon runs it: metrics, health, readiness (a real C-ECHO to the demo
  // archive), live associations and explain.
  const metrics = new ProxyMetrics({ ...metricBoundsFromConfig(config), loadedAt: snapshot.loadedAt });
  metrics.subscribe(proxy.events);
  const readiness = config.admin?.readiness ? new UpstreamReadiness(snapshot, config.admin.readiness) : null;
  if (readiness) metrics.observeReadiness(() => readiness.status());
  const admin = config.admin
    ? new AdminServer({
        host: config.admin.host,
        port: config.admin.port,
        metrics,
        readiness,
        listenersBound: () => proxy.listenersBound(),
        associations: () => proxy.listAssociations(),
        explain: (query) => explainQuery(snapshot.policy, query),
      })
    : null;
  const adminAddr = admin ? await admin.listen() : null;
  readiness?.start();

  out('dimse-tls-proxy demo');
  out(
    `  demo archive  ${upstream.aeTitle} on ${upstream.host}:${archive.port}, mutual TLS (client certificate required)`,
  );
  out(`  proxy         ${route.calledAeTitle} on ${addr.address}:${addr.port}, plaintext in, mutual TLS out`);
  out(`  certificates  ${relative(process.cwd(), pki.dir) || '.'}/ (demo CA, proxy client, archive)`);
  if (adminAddr) {
    const base = `http://${adminAddr.address}:${adminAddr.port}`;
    out(`  admin         ${base}/metrics  ${base}/healthz  ${base}/readyz  ${base}/associations`);
  }
  out();

  const calling = 'DEMO_MODALITY';
  const e = await echo({
    host: addr.address,
    port: addr.port,
    callingAeTitle: calling,
    calledAeTitle: route.calledAeTitle,
  });
  out(`C-ECHO   ${calling} -> ${route.calledAeTitle}: ${e.ok ? 'success' : `FAILED (${e.error})`}`);

  const studyUid = uid();
  const seriesUid = uid();
  const instances = [0, 1, 2].map((i) => demoInstance(i, studyUid, seriesUid));
  const before = archive.received.length;
  const r = await store({
    host: addr.address,
    port: addr.port,
    callingAeTitle: calling,
    calledAeTitle: route.calledAeTitle,
    instances,
  });
  const arrived = archive.received.slice(before);
  await proxy.recordsSettled(); // every instance record of the transfer is written
  out(
    `C-STORE  ${calling} -> ${route.calledAeTitle}: ${instances.length} instances sent, statuses ${r.statuses.map((s) => (s === null ? 'none' : `0x${s.toString(16).padStart(4, '0')}`)).join(' ')}${r.error ? ` (${r.error})` : ''}`,
  );
  out();
  out('What arrived at the archive (through the proxy, over mutual TLS):');
  for (const a of arrived) {
    const file = readFileSync(a.file);
    const sha = createHash('sha256')
      .update(file.subarray(datasetOffset(file)))
      .digest('hex');
    const inLedger =
      ledger && config.ledger.path ? await findRecords(config.ledger.path, { sha256: sha }) : [];
    out(
      `  ${relative(process.cwd(), a.file)}  ${file.length} bytes  sha256(data set) ${sha.slice(0, 16)}…` +
        (ledger
          ? `  ledger: ${inLedger.length === 1 ? `record seq ${inLedger[0]?.record.seq}` : `${inLedger.length} records`}`
          : ''),
    );
  }
  const ok = e.ok && arrived.length === instances.length && r.statuses.every((s) => s === 0);
  out();
  out(ok ? 'Demo transfer OK.' : 'Demo transfer FAILED — see the log lines above.');
  out();
  out('Point a real modality at the proxy, e.g. with DCMTK:');
  out(`  echoscu  -aet ECHOSCU  -aec ${route.calledAeTitle} ${addr.address} ${addr.port}`);
  out(`  storescu -aet STORESCU -aec ${route.calledAeTitle} ${addr.address} ${addr.port} some-image.dcm`);
  out(
    `Received files land in ${relative(process.cwd(), storageDir)}/. Policy: ${relative(process.cwd(), opts.configPath)}`,
  );
  if (adminAddr) {
    const a = `${adminAddr.address}:${adminAddr.port}`;
    out('Ask the running proxy:');
    out(`  dimse-tls-proxy status --admin ${a} --associations`);
    out(
      `  dimse-tls-proxy explain --admin ${a} --calling ${calling} --from 127.0.0.1 --called ${route.calledAeTitle} --service store`,
    );
    out(`  curl -s http://${a}/metrics | grep dimse_proxy_instances_relayed_total`);
  }
  if (config.ledger.path) {
    const l = relative(process.cwd(), config.ledger.path);
    const c = relative(process.cwd(), opts.configPath);
    out(`Integrity ledger in ${l}/; check it with (the path and the public key come from the policy):`);
    out(`  dimse-tls-proxy ledger verify -c ${c}`);
    out(`  dimse-tls-proxy ledger find -c ${c} --file <a received file>`);
  }

  if (opts.once) {
    await readiness?.stop();
    await admin?.close();
    await proxy.close(0);
    await ledger?.close();
    await hasher.close();
    archive.close();
    return ok ? 0 : 1;
  }
  out('Running until Ctrl-C.');
  await new Promise<void>((resolveStop) => {
    process.once('SIGINT', () => resolveStop());
    process.once('SIGTERM', () => resolveStop());
  });
  await readiness?.stop();
  await admin?.close();
  await proxy.close(5000);
  await ledger?.close();
  await hasher.close();
  archive.close();
  return 0;
}
