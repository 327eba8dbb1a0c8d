// Options the issue names that change behaviour: calling-AE override toward the archive, the PS3.15 B.13
// profile, the idle timeout.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { echo, store, type ArchiveHandle } from '../../src/dicom/dcmjs.js';
import { aeTitleText } from '../../src/pdu/codec.js';
import { RawScu, associateRq, VERIFICATION } from '../helpers/raw.js';
import { startTestArchive, testInstance, type TestArchive } from '../helpers/instances.js';
import { removePki, standardPki, startProxy } from '../helpers/proxy.js';

type Pki = Awaited<ReturnType<typeof standardPki>>;

describe('relay options', () => {
  let pki: Pki;
  let testArchive: TestArchive;
  let archive: ArchiveHandle;

  before(async () => {
    pki = await standardPki();
    testArchive = await startTestArchive(pki);
    archive = testArchive.archive;
  });
  after(async () => {
    await testArchive?.close();
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
        instances: [testInstance(0, 16)],
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
        instances: [testInstance(0, 16)],
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
    // After its A-ABORT the proxy waits ARTIM for the modality to close (PS3.8 Sta13), then closes.
    const proxy = await startProxy({
      archivePort: archive.port,
      pki,
      limits: '{ idleTimeout: 700ms, associationRequestTimeout: 1s }',
    });
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
