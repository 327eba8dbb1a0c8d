// Options the issue names that change behaviour: calling-AE override toward the archive, the PS3.15 B.13
// profile, the idle timeout.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Dataset, echo, startArchive, store, type ArchiveHandle } from '../../src/dicom/dcmjs.js';
import { aeTitleText } from '../../src/pdu/codec.js';
import { RawScu, associateRq, VERIFICATION } from '../helpers/raw.js';
import { removePki, standardPki, startProxy } from '../helpers/proxy.js';

type Pki = Awaited<ReturnType<typeof standardPki>>;

function tinyInstance(): InstanceType<typeof Dataset> {
  return new Dataset(
    {
      SOPClassUID: '1.2.840.10008.5.1.4.1.1.7',
      SOPInstanceUID: `1.2.826.0.1.3680043.10.1461.98.${process.pid}.${Date.now()}`,
      PatientID: 'OPT',
      Modality: 'OT',
    } as never,
    '1.2.840.10008.1.2.1',
  );
}

describe('relay options', () => {
  let pki: Pki;
  let storage: string;
  let archive: ArchiveHandle;

  before(async () => {
    pki = await standardPki();
    storage = await mkdtemp(join(tmpdir(), 'dimse-archive-'));
    archive = await startArchive({
      port: 0,
      aeTitle: 'ARCHIVE',
      storageDir: storage,
      tls: { ca: pki.ca.cert, cert: pki.archive.cert, key: pki.archive.key, requireClientCert: true },
    });
  });
  after(async () => {
    archive?.close();
    await rm(storage, { recursive: true, force: true });
    await removePki(pki);
  });

  test('callingAeTitle replaces the calling AE toward the archive; the modality still sees its own', async () => {
    const proxy = await startProxy({
      archivePort: archive.port,
      pki,
      upstreamExtra: '    callingAeTitle: PROXY_AE',
    });
    try {
      const r = await store({
        host: '127.0.0.1',
        port: proxy.port,
        callingAeTitle: 'SCU',
        calledAeTitle: 'DICOM_PROXY',
        instances: [tinyInstance()],
      });
      assert.deepEqual(r.statuses, [0]);
      assert.equal(archive.received.at(-1)?.callingAeTitle, 'PROXY_AE', 'the archive saw the configured AE');
      await proxy.closed();
      // Toward the modality the A-ASSOCIATE-AC still echoes the calling AE it sent (PS3.8 9.3.3).
      const scu = await RawScu.connect(proxy.port);
      scu.send(associateRq('SCU', 'DICOM_PROXY', [{ id: 1, abstractSyntax: VERIFICATION }]));
      const ac = await scu.next();
      assert.equal(ac?.type, 0x02);
      if (ac?.type === 0x02)
        assert.equal(aeTitleText(ac.callingAeTitle), 'SCU', 'the A-ASSOCIATE-AC echoes the RQ');
      scu.destroy();
      await proxy.closed();
    } finally {
      await proxy.close();
    }
    const plain = await startProxy({ archivePort: archive.port, pki });
    try {
      const r = await store({
        host: '127.0.0.1',
        port: plain.port,
        callingAeTitle: 'SCU',
        calledAeTitle: 'DICOM_PROXY',
        instances: [tinyInstance()],
      });
      assert.deepEqual(r.statuses, [0]);
      assert.equal(archive.received.at(-1)?.callingAeTitle, 'SCU');
      await plain.closed();
    } finally {
      await plain.close();
    }
  });

  test('profile modified-bcp195 (PS3.15 B.13) negotiates TLS with the archive', async () => {
    const proxy = await startProxy({
      archivePort: archive.port,
      pki,
      tlsExtra: '      profile: modified-bcp195',
    });
    try {
      const r = await echo({
        host: '127.0.0.1',
        port: proxy.port,
        callingAeTitle: 'SCU',
        calledAeTitle: 'DICOM_PROXY',
      });
      assert.equal(r.ok, true, r.error ?? '');
      const summary = await proxy.closed();
      assert.match(summary.tls?.protocol ?? '', /^TLSv1\.[23]$/);
    } finally {
      await proxy.close();
    }
  });

  test('an idle association is aborted after idleTimeout (A-ABORT to the modality)', async () => {
    const proxy = await startProxy({ archivePort: archive.port, pki, limits: '{ idleTimeout: 700ms }' });
    try {
      const scu = await RawScu.connect(proxy.port);
      scu.send(associateRq('SCU', 'DICOM_PROXY', [{ id: 1, abstractSyntax: VERIFICATION }]));
      assert.equal((await scu.next())?.type, 0x02);
      const started = Date.now();
      const abort = await scu.next(5000);
      assert.deepEqual(abort, { type: 0x07, source: 2, reason: 0 });
      assert.ok(Date.now() - started >= 600, 'not before the idle timeout');
      await scu.waitClosed();
      const summary = await proxy.closed();
      assert.equal(summary.outcome, 'timeout');
    } finally {
      await proxy.close();
    }
  });
});
