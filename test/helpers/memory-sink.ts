// An in-memory ledger sink for relay tests: keeps every instance record it is given.
import type { InstanceEvidence, LedgerSink } from '../../src/integrity/types.js';

export class MemorySink implements LedgerSink {
  records: InstanceEvidence[] = [];
  healthy = true;
  async append(e: InstanceEvidence): Promise<void> {
    this.records.push(e);
  }
}
