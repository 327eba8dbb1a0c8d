// The record before the success (onLedgerFailure: abort): the archive's success for a C-STORE reaches the
// modality only once the instance's ledger record has been handed to the OS; when it cannot be written,
// the modality gets an A-ABORT, never the success. With `continue` the success is relayed at once.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { encodePdu } from '../../src/pdu/codec.js';
import type { AssociatePdu, PDataPdu } from '../../src/pdu/types.js';
import { decodeCommand } from '../../src/dimse/command.js';
import { InlineHasher } from '../../src/integrity/hasher.js';
import type { InstanceEvidence, LedgerSink } from '../../src/integrity/types.js';
import {
  RawScu,
  associateRq,
  commandPdu,
  pdata,
  startRawServer,
  CT_IMAGE,
  type RawServer,
} from '../helpers/raw.js';
import { acceptAll } from '../helpers/scripted-archive.js';
import { removePki, standardPki, startProxy, type ProxyUnderTest } from '../helpers/proxy.js';
import { until } from '../helpers/within.js';

type Pki = Awaited<ReturnType<typeof standardPki>>;

/** A sink whose writes the test completes or fails by hand. */
class GatedSink implements LedgerSink {
  healthy = true;
  records: InstanceEvidence[] = [];
  private gates: Array<{ written?: () => void; resolve: () => void; reject: (e: Error) => void }> = [];
  append(e: InstanceEvidence, onWritten?: () => void): Promise<void> {
    this.records.push(e);
    return new Promise((resolve, reject) =>
      this.gates.push({ ...(onWritten ? { written: onWritten } : {}), resolve, reject }),
    );
  }
  get waiting(): number {
    return this.gates.length;
  }
  /** The OS took the write (the durable sync comes later). */
  written(): void {
    this.gates[0]?.written?.();
  }
  settle(): void {
    this.gates.shift()?.resolve();
  }
  fail(): void {
    this.healthy = false;
    this.gates.shift()?.reject(new Error('ENOSPC: no space left on device'));
  }
}

const STORE_RQ = commandPdu(1, {
  commandField: 0x0001,
  messageId: 1,
  affectedSopClassUid: CT_IMAGE,
  affectedSopInstanceUid: '1.2.3.10',
  priority: 0,
  commandDataSetType: 0x0000,
});
const STORE_RSP = commandPdu(1, {
  commandField: 0x8001,
  messageIdBeingRespondedTo: 1,
  affectedSopClassUid: CT_IMAGE,
  affectedSopInstanceUid: '1.2.3.10',
  commandDataSetType: 0x0101,
  status: 0x0000,
});

for (const onFailure of ['abort', 'continue'] as const) {
  describe(`the record before the success (onLedgerFailure: ${onFailure})`, { timeout: 60_000 }, () => {
    let pki: Pki;
    let archive: RawServer;
    let proxy: ProxyUnderTest;
    const sink = new GatedSink();
    const hasher = new InlineHasher();

    before(async () => {
      pki = await standardPki();
      archive = await startRawServer({
        ca: pki.ca.cert,
        cert: pki.archive.cert,
        key: pki.archive.key,
        requestCert: true,
        rejectUnauthorized: true,
      });
      proxy = await startProxy({
        archivePort: archive.port,
        pki,
        ledger: { sink, onFailure, hasher },
        peers: '  SCU: { addresses: [127.0.0.1], services: [store] }',
      });
    });
    after(async () => {
      await proxy?.close();
      archive?.close();
      await hasher.close();
      await removePki(pki);
    });

    async function storeOne(): Promise<{ modality: RawScu; up: RawScu }> {
      const modality = await RawScu.connect(proxy.port);
      modality.send(associateRq('SCU', 'DICOM_PROXY', [{ id: 1, abstractSyntax: CT_IMAGE }]));
      const up = await archive.accept();
      up.send(encodePdu(acceptAll((await up.next()) as AssociatePdu)));
      assert.equal((await modality.next())?.type, 0x02);
      modality.send(STORE_RQ);
      modality.send(pdata(1, false, true, Buffer.alloc(2000, 3)));
      await up.next();
      await up.next();
      up.send(STORE_RSP);
      await until(() => sink.waiting === 1, 'the record was handed to the ledger');
      return { modality, up };
    }

    const live = () => proxy.server.associations().at(-1);

    if (onFailure === 'abort') {
      test('the success waits for the record; it goes out once the OS has the record (not the later sync)', async () => {
        const { modality, up } = await storeOne();
        assert.equal(live()?.stats().heldResponses, 1, 'the success is held while the record is not written');
        sink.written(); // write() returned; the batched fsync is still to come
        const rsp = (await modality.next()) as PDataPdu;
        assert.equal(decodeCommand((rsp.pdvs[0] as { value: Buffer }).value).status, 0x0000);
        sink.settle();
        modality.destroy();
        up.destroy();
        await proxy.closed();
      });

      test('a record that cannot be written: the modality gets A-ABORT, never the success', async () => {
        const { modality, up } = await storeOne();
        sink.fail();
        assert.deepEqual(await modality.next(), { type: 0x07, source: 2, reason: 0 });
        assert.deepEqual(await up.next(), { type: 0x07, source: 2, reason: 0 });
        modality.destroy();
        up.destroy();
        const summary = await proxy.closed();
        assert.equal(summary.outcome, 'aborted-by-proxy');
        assert.equal(summary.reason, 'ledger write failed');
        sink.healthy = true;
      });
    } else {
      test('continue: the success is relayed at once, the record follows', async () => {
        const { modality, up } = await storeOne();
        const rsp = (await modality.next()) as PDataPdu;
        assert.equal(decodeCommand((rsp.pdvs[0] as { value: Buffer }).value).status, 0x0000);
        sink.settle();
        modality.destroy();
        up.destroy();
        await proxy.closed();
      });
    }
  });
}
