// The relay's side of the integrity ledger: every C-STORE is hashed as it streams and its evidence is
// handed to the ledger when the response arrives; a ledger that cannot record stops the relaying.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { store, type ArchiveHandle } from '../../src/dicom/dcmjs.js';
import { datasetOffset } from '../../src/dicom/part10.js';
import type { InstanceEvidence, LedgerSink } from '../../src/integrity/types.js';
import { InlineHasher } from '../../src/integrity/hasher.js';
import { startTestArchive, testInstance, type TestArchive } from '../helpers/instances.js';
import { removePki, standardPki, startProxy } from '../helpers/proxy.js';

type Pki = Awaited<ReturnType<typeof standardPki>>;

class MemorySink implements LedgerSink {
  records: InstanceEvidence[] = [];
  healthy = true;
  failWrites = false;
  async append(e: InstanceEvidence): Promise<void> {
    if (this.failWrites) {
      this.healthy = false;
      throw Object.assign(new Error('ENOSPC: no space left on device'), { code: 'LEDGER_WRITE_FAILED' });
    }
    this.records.push(e);
  }
}

describe('instance evidence for the ledger', () => {
  const hasher = new InlineHasher();
  let pki: Pki;
  let testArchive: TestArchive;
  let archive: ArchiveHandle;

  before(async () => {
    pki = await standardPki();
    testArchive = await startTestArchive(pki);
    archive = testArchive.archive;
  });
  after(async () => {
    await hasher.close();
    await testArchive?.close();
    await removePki(pki);
  });

  test('each stored instance has one record whose SHA-256 equals the data set the archive stored', async () => {
    const sink = new MemorySink();
    const proxy = await startProxy({
      archivePort: archive.port,
      pki,
      ledger: { sink, onFailure: 'abort', hasher },
    });
    try {
      const before = archive.received.length;
      const r = await store({
        host: '127.0.0.1',
        port: proxy.port,
        callingAeTitle: 'SCU',
        calledAeTitle: 'DICOM_PROXY',
        // 24 MB: more than the 1 MiB the relay lets wait for the check phase, so part is hashed at once.
        instances: [
          testInstance(1),
          testInstance(2, 3_000_000),
          testInstance(3, 10),
          testInstance(4, 24_000_000),
        ],
      });
      assert.deepEqual(r.statuses, [0, 0, 0, 0]);
      await proxy.closed();
      const arrived = archive.received.slice(before);
      assert.equal(sink.records.length, 4);
      const fingerprint = new X509Certificate(pki.archive.cert).fingerprint256
        .replace(/:/g, '')
        .toLowerCase();
      for (const a of arrived) {
        const file = await readFile(a.file);
        const data = file.subarray(datasetOffset(file));
        const rec = sink.records.find((x) => x.sopInstanceUid === a.sopInstanceUid);
        assert.ok(rec, `a record for ${a.sopInstanceUid}`);
        assert.equal(rec.sha256, createHash('sha256').update(data).digest('hex'));
        assert.equal(rec.bytes, data.length);
        assert.equal(rec.status, 0);
        assert.equal(rec.outcome, 'success');
        assert.equal(rec.direction, 'modality-to-archive');
        assert.equal(rec.callingAeTitle, 'SCU');
        assert.equal(rec.calledAeTitle, 'DICOM_PROXY');
        assert.equal(rec.upstreamAeTitle, 'ARCHIVE');
        assert.equal(rec.peerAddress, '127.0.0.1');
        assert.equal(rec.archiveCertSha256, fingerprint);
        assert.equal(rec.transferSyntaxUid, a.transferSyntaxUid, 'the negotiated transfer syntax');
      }
    } finally {
      await proxy.close();
    }
  });

  test('an unhealthy ledger (policy abort): the C-STORE is not relayed and the association is aborted', async () => {
    const sink = new MemorySink();
    sink.healthy = false;
    const proxy = await startProxy({
      archivePort: archive.port,
      pki,
      ledger: { sink, onFailure: 'abort', hasher },
    });
    try {
      const requestsBefore = archive.requests.length;
      const r = await store({
        host: '127.0.0.1',
        port: proxy.port,
        callingAeTitle: 'SCU',
        calledAeTitle: 'DICOM_PROXY',
        instances: [testInstance(4)],
      });
      assert.deepEqual(r.statuses, [null], 'no success reaches the modality');
      const summary = await proxy.closed();
      assert.equal(summary.outcome, 'aborted-by-proxy');
      assert.deepEqual(archive.requests.slice(requestsBefore), [], 'nothing reached the archive');
      assert.ok((proxy.events['ledger-failed'] ?? []).length >= 1);
    } finally {
      await proxy.close();
    }
  });

  test('a failing ledger write (policy abort) aborts the association; with continue it keeps relaying', async () => {
    const sink = new MemorySink();
    sink.failWrites = true;
    const proxy = await startProxy({
      archivePort: archive.port,
      pki,
      ledger: { sink, onFailure: 'abort', hasher },
    });
    try {
      const r = await store({
        host: '127.0.0.1',
        port: proxy.port,
        callingAeTitle: 'SCU',
        calledAeTitle: 'DICOM_PROXY',
        instances: [testInstance(5), testInstance(6), testInstance(7)],
      });
      assert.ok(r.statuses.includes(null), `the association must stop: ${JSON.stringify(r.statuses)}`);
      const summary = await proxy.closed();
      assert.equal(summary.outcome, 'aborted-by-proxy');
    } finally {
      await proxy.close();
    }
    const tolerant = new MemorySink();
    tolerant.failWrites = true;
    const proxy2 = await startProxy({
      archivePort: archive.port,
      pki,
      ledger: { sink: tolerant, onFailure: 'continue', hasher },
    });
    try {
      const r = await store({
        host: '127.0.0.1',
        port: proxy2.port,
        callingAeTitle: 'SCU',
        calledAeTitle: 'DICOM_PROXY',
        instances: [testInstance(8), testInstance(9)],
      });
      assert.deepEqual(r.statuses, [0, 0]);
      await proxy2.closed();
      assert.equal((proxy2.events['ledger-failed'] ?? []).length, 2, 'each unrecorded instance is an alarm');
    } finally {
      await proxy2.close();
    }
  });
});
