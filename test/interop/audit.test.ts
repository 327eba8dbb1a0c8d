// The audit trail's Patient and Study participant objects end to end, with the real proxy process and
// DCMTK: storescu -> proxy -> storescp (+tls, bit-preserving) in Explicit VR Big Endian, Deflated Explicit
// VR Little Endian and Implicit VR Little Endian (files converted by dcmconv, each sent in its own
// syntax), two patients and three studies. Every Instances
// Transferred message names its patient and studies and passes the A.5.1 structure check; every file the
// archive received is in the ledger with the digest of the bytes the modality sent (the reading of the
// data set prefix changed none of them).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { writeDemoPki, type DemoPkiPaths } from '../../src/tls/pki.js';
import { writeInstances, metaString } from '../helpers/dicom.js';
import { checkAuditMessage, patientsOf, studiesOf, type XNode } from '../helpers/audit-xml.js';
import { eventually } from '../helpers/interop.js';
import { CLI, assertBuilt, runCli } from '../helpers/daemon.js';
import {
  Procs,
  freePort,
  listFiles,
  makeTempDir,
  removeTempDir,
  runStorescu,
  skipUnlessPeer,
  startStorescp,
  waitForListen,
} from '../helpers/peers.js';

const BIG_ENDIAN = '1.2.840.10008.1.2.2';
const DEFLATED = '1.2.840.10008.1.2.1.99';
const IMPLICIT = '1.2.840.10008.1.2';

describe('audit trail with real peers: Patient and Study participant objects', () => {
  let work: string;
  let pki: DemoPkiPaths;
  const procs = new Procs();

  before(() => assertBuilt());
  after(async () => {
    await procs.stopAll();
    await removeTempDir(work);
  });

  test('two patients, three studies, Big Endian, Deflated and Implicit VR: each message names its patient and studies', async (t) => {
    if (!skipUnlessPeer(t, 'dcmtk')) return;
    work = await makeTempDir('dimse-audit-e2e');
    pki = await writeDemoPki(join(work, 'certs'));
    const tls = { key: pki.archiveKey, cert: pki.archiveCert, ca: pki.caCert };
    // Two archives (one of them accepting Deflated): an association each, so three messages.
    const big = await startStorescp(procs, { outDir: join(work, 'received-be'), aeTitle: 'ARCHIVE', tls });
    const deflated = await startStorescp(procs, {
      outDir: join(work, 'received-df'),
      aeTitle: 'ARCHIVE',
      tls,
      extraArgs: ['+xd'],
    });
    const port = await freePort();
    const ledgerDir = join(work, 'ledger');
    const auditFile = join(work, 'audit.log');
    const witnessFile = join(work, 'witness', 'checkpoints.log');
    mkdirSync(dirname(witnessFile));
    const upstream = (name: string, p: number): string[] => [
      `  ${name}:`,
      '    host: 127.0.0.1',
      `    port: ${p}`,
      '    aeTitle: ARCHIVE',
      `    tls: { ca: ${pki.caCert}, cert: ${pki.proxyClientCert}, key: ${pki.proxyClientKey}, serverName: archive.local }`,
    ];
    const cfg = join(work, 'proxy.yaml');
    writeFileSync(
      cfg,
      [
        `listen: { host: 127.0.0.1, port: ${port} }`,
        'upstreams:',
        ...upstream('big', big.port),
        ...upstream('deflated', deflated.port),
        'routes:',
        '  - { calledAeTitle: ARCH_BE, upstream: big }',
        '  - { calledAeTitle: ARCH_DF, upstream: deflated }',
        'peers:',
        '  STORESCU: { addresses: [127.0.0.1], services: [echo, store] }',
        `ledger: { path: ${ledgerDir}, witness: { file: ${witnessFile} } }`,
        `audit: { sourceId: audit-e2e, file: ${auditFile} }`,
        'logging: { level: info }',
        '',
      ].join('\n'),
    );
    const proxy: ChildProcess = procs.spawn(process.execPath, [CLI, 'start', '-c', cfg], { name: 'proxy' });
    await waitForListen(port, { procs, child: proxy, timeoutMs: 15_000 });

    const S1 = '1.2.826.0.1.3680043.2.1125.77.1';
    const S2 = '1.2.826.0.1.3680043.2.1125.77.2';
    const S3 = '1.2.826.0.1.3680043.2.1125.77.3';
    const sends = [
      {
        dir: 'a1',
        count: 2,
        patientId: 'PAT-A',
        patientName: 'Alpha^Anna',
        study: S1,
        ae: 'ARCH_BE',
        to: '+tb',
      },
      {
        dir: 'b2',
        count: 2,
        patientId: 'PAT-B',
        patientName: 'Beta^Bert',
        study: S2,
        ae: 'ARCH_DF',
        to: '+td',
      },
      {
        dir: 'a3',
        count: 1,
        patientId: 'PAT-A',
        patientName: 'Alpha^Anna',
        study: S3,
        ae: 'ARCH_BE',
        to: '+ti',
      },
    ];
    for (const s of sends) {
      const written = await writeInstances(join(work, 'send', s.dir), s.count, {
        pixelBytes: 20_000,
        patientId: s.patientId,
        patientName: s.patientName,
        studyInstanceUid: s.study,
      });
      const files = written.map((f) => {
        const converted = `${f}${s.to}.dcm`;
        const c = spawnSync('dcmconv', [s.to, f, converted], { encoding: 'utf8', timeout: 30_000 });
        assert.equal(c.status, 0, `dcmconv ${s.to} ${f}: ${c.stderr}`);
        return converted;
      });
      const r = await runStorescu({
        host: '127.0.0.1',
        port,
        callingAe: 'STORESCU',
        calledAe: s.ae,
        files,
        proposeFileTransferSyntax: true,
        timeoutMs: 60_000,
      });
      assert.equal(r.code, 0, r.stderr);
    }

    // The transfer syntaxes the archives received (so each encoding was really exercised).
    const received = [...(await listFiles(big.outDir)), ...(await listFiles(deflated.outDir))];
    assert.equal(received.length, 5);
    const syntaxes = received.map((f) => metaString(readFileSync(f), 0x0010)).sort();
    assert.deepEqual(syntaxes, [DEFLATED, DEFLATED, IMPLICIT, BIG_ENDIAN, BIG_ENDIAN].sort());

    // Every received file is in the ledger: the digest of what the modality sent is what the archive has.
    for (const f of received) {
      const found = runCli(['ledger', 'find', '--ledger', ledgerDir, '--file', f]);
      assert.equal(found.code, 0, `${f}: ${found.stdout}${found.stderr}`);
    }

    // Three associations, three Instances Transferred messages (after the trail's close grace period).
    const messages = (): XNode[] =>
      existsSync(auditFile)
        ? readFileSync(auditFile, 'utf8')
            .split('\n')
            .filter((l) => l.includes('csd-code="110104"'))
            .map((l) => checkAuditMessage(l))
        : [];
    assert.ok(await eventually(() => messages().length >= 3, 20_000), 'three Instances Transferred messages');
    const got = messages()
      .map((m) => ({
        patients: patientsOf(m),
        studies: studiesOf(m).map((s) => [s.uid, s.sopClasses.reduce((n, c) => n + c[1], 0)]),
      }))
      .sort((a, b) => JSON.stringify(a).localeCompare(JSON.stringify(b)));
    assert.deepEqual(got, [
      { patients: [['PAT-A', 'Alpha^Anna']], studies: [[S1, 2]] },
      { patients: [['PAT-A', 'Alpha^Anna']], studies: [[S3, 1]] },
      { patients: [['PAT-B', 'Beta^Bert']], studies: [[S2, 2]] },
    ]);
    const stopped = new Promise((r) => proxy.once('exit', r));
    proxy.kill('SIGTERM');
    await stopped;
    // The daemon's last checkpoint (at shutdown) went to the witness file, and the ledger matches it.
    const verify = runCli(['ledger', 'verify', '--ledger', ledgerDir, '--checkpoints', witnessFile]);
    assert.equal(verify.code, 0, verify.stdout + verify.stderr);
    assert.match(verify.stdout, /witnessed checkpoints: [1-9]\d* in .*identical in the ledger\nINTACT/);
  });
});
