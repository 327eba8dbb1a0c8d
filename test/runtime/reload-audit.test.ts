// Reloads are audited: a reload that changes something is a Security Alert 110129 (Security Configuration)
// with outcome 0 and the list of changes; a reload that fails is one too, with outcome 4 when the new
// configuration was refused before anything changed (unreadable, invalid, its certificates or keys refused)
// and 8 when a valid configuration could not be installed.
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, beforeEach, describe, it } from 'node:test';
import { loadConfig } from '../../src/config/load.js';
import { AuditTrail, type AuditRecord, type AuditSink } from '../../src/observe/audit/index.js';
import { Reloader } from '../../src/runtime/reload.js';
import { auditReloads } from '../../src/runtime/reload-audit.js';
import { buildRuntimeSnapshot } from '../../src/runtime/snapshot.js';
import { proxyYaml, removePki, standardPki, type TestPki } from '../helpers/proxy.js';

const T = { timeout: 10_000 };
const PEERS_BEFORE = '  SCU: { addresses: [127.0.0.1], services: [echo, store] }';
const PEERS_AFTER = '  SCU: { addresses: [127.0.0.1], services: [echo, find] }';

let pki: TestPki;
let configPath: string;

before(async () => {
  pki = await standardPki();
  configPath = join(pki.dir, 'proxy.yaml');
});
after(() => removePki(pki));
beforeEach(async () => {
  await writeFile(configPath, proxyYaml({ archivePort: 2762, pki, peers: PEERS_BEFORE }));
});

class MemoryAuditSink implements AuditSink {
  readonly name = 'memory';
  records: AuditRecord[] = [];
  write(record: AuditRecord): boolean {
    this.records.push(record);
    return true;
  }
  async close(): Promise<void> {}
}

async function harness(apply: () => void = () => undefined) {
  const sink = new MemoryAuditSink();
  const trail = new AuditTrail(
    {
      sourceId: 'dimse-tls-proxy@gw1',
      enterpriseSiteId: null,
      file: null,
      maxInstancesPerMessage: 500,
      patientNames: true,
      syslog: null,
    },
    [sink],
    { hostname: 'gw1', processId: '4242' },
  );
  const reloader = new Reloader({
    configPath,
    initial: buildRuntimeSnapshot(await loadConfig(configPath)),
    apply,
  });
  const off = auditReloads(reloader, trail);
  return { sink, reloader, off };
}

const outcomeOf = (xml: string): string => /EventOutcomeIndicator="(\d+)"/.exec(xml)?.[1] ?? '';
const typesOf = (xml: string): string[] =>
  [...xml.matchAll(/<EventTypeCode csd-code="(\d+)"/g)].map((m) => m[1] as string);
const descriptionOf = (xml: string): string => /<EventOutcomeDescription>([^<]*)</.exec(xml)?.[1] ?? '';

describe('reloads are audited', () => {
  it(
    'a failed reload (invalid file) is a Security Alert 110129, outcome 4; a successful one still has outcome 0',
    T,
    async () => {
      const h = await harness();
      await writeFile(
        configPath,
        proxyYaml({ archivePort: 2762, pki, peers: PEERS_AFTER }).replace(
          'logging: { level: error }',
          'logging: { level: error',
        ),
      );
      const failed = await h.reloader.reload();
      assert.equal(failed.ok, false);
      assert.equal(h.sink.records.length, 1, 'the failed reload is on record');
      const [rec] = h.sink.records as [AuditRecord];
      assert.equal(rec.eventId, '110113', 'Security Alert');
      assert.deepEqual(typesOf(rec.xml), ['110129']);
      assert.equal(rec.outcome, 4);
      assert.equal(outcomeOf(rec.xml), '4');
      assert.match(descriptionOf(rec.xml), /reload failed \(load\)/);
      assert.match(descriptionOf(rec.xml), /YAML/);
      assert.ok(rec.xml.includes(`file://${configPath}`), 'the configuration file is the subject');

      await writeFile(configPath, proxyYaml({ archivePort: 2762, pki, peers: PEERS_AFTER }));
      const ok = await h.reloader.reload();
      assert.equal(ok.ok, true);
      assert.equal(h.sink.records.length, 2);
      const success = h.sink.records[1] as AuditRecord;
      assert.deepEqual(typesOf(success.xml), ['110129']);
      assert.equal(success.outcome, 0);
      assert.match(descriptionOf(success.xml), /peer SCU: services \+find -store/);

      // Nothing changed: nothing to put on record.
      assert.equal((await h.reloader.reload()).ok, true);
      assert.equal(h.sink.records.length, 2);
      h.off();
    },
  );

  it('a certificate refused at build time is outcome 4; an apply failure outcome 8', T, async () => {
    let failApply = false;
    const h = await harness(() => {
      if (failApply) throw new Error('listener could not be moved');
    });
    await writeFile(
      configPath,
      proxyYaml({ archivePort: 2762, pki, peers: PEERS_AFTER, clientCert: join(pki.dir, 'missing.pem') }),
    );
    assert.equal((await h.reloader.reload()).ok, false);
    const build = h.sink.records[0] as AuditRecord;
    assert.equal(build.outcome, 4);
    assert.match(descriptionOf(build.xml), /reload failed \(build\)/);

    failApply = true;
    await writeFile(configPath, proxyYaml({ archivePort: 2762, pki, peers: PEERS_AFTER }));
    assert.equal((await h.reloader.reload()).ok, false);
    const apply = h.sink.records[1] as AuditRecord;
    assert.equal(apply.outcome, 8);
    assert.equal(outcomeOf(apply.xml), '8');
    assert.match(descriptionOf(apply.xml), /reload failed \(apply\).*listener could not be moved/);
    assert.equal(h.sink.records.length, 2);

    // A dry run is not a change: never audited.
    failApply = false;
    await h.reloader.dryRun();
    assert.equal(h.sink.records.length, 2);
    h.off();
  });
});
