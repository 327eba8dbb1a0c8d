import assert from 'node:assert/strict';
import { resolve } from 'node:path';
import { describe, it } from 'node:test';
import { ConfigError, DEFAULTS, parseConfig, type ConfigIssue } from '../../src/config/index.js';

/** A minimal valid configuration without a ledger section (10 lines); tests append the section at line 11. */
const BASE = [
  /* 1 */ 'upstreams:',
  /* 2 */ '  archive:',
  /* 3 */ '    host: pacs.example.org',
  /* 4 */ '    port: 2762',
  /* 5 */ '    aeTitle: PACS',
  /* 6 */ '    tls: { ca: certs/ca.pem, cert: certs/client.pem, key: certs/client.key }',
  /* 7 */ 'routes:',
  /* 8 */ '  - { calledAeTitle: DICOM_PROXY, upstream: archive }',
  /* 9 */ 'peers:',
  /* 10 */ '  CT_ROOM1: { addresses: [10.20.0.15], services: [echo, store] }',
];

function yaml(ledger: string[] = []): string {
  return [...BASE, ...ledger].join('\n') + '\n';
}

function issuesOf(text: string): ConfigIssue[] {
  try {
    parseConfig(text, 'test.yaml');
  } catch (error) {
    assert.ok(error instanceof ConfigError, `expected ConfigError, got ${String(error)}`);
    return error.issues;
  }
  assert.fail('expected parseConfig to throw ConfigError');
}

function assertSingleIssue(text: string, path: string, line: number, message?: RegExp): void {
  const issues = issuesOf(text);
  assert.equal(issues.length, 1, `expected one issue, got:\n${JSON.stringify(issues, null, 2)}`);
  assert.equal(issues[0]?.path, path);
  assert.equal(issues[0]?.line, line);
  if (message) assert.match(issues[0]?.message ?? '', message);
}

const DEFAULT_LEDGER = {
  path: null,
  fsync: 'batch',
  fsyncIntervalMs: 200,
  rotateMaxBytes: 67_108_864,
  rotateDaily: true,
  checkpointIntervalMs: 300_000,
  signingKey: null,
  onLedgerFailure: 'abort',
  witness: { file: null, syslog: true },
};

describe('ledger section: defaults', () => {
  it('applies defaults when the section is absent: ledger off, unsigned', () => {
    const config = parseConfig(yaml(), '/etc/dimse/proxy.yaml');
    assert.deepEqual(config.ledger, DEFAULT_LEDGER);
    assert.ok(Object.isFrozen(config.ledger));
  });

  it('applies defaults for an empty or null section and an empty rotate', () => {
    for (const section of [['ledger:'], ['ledger: {}'], ['ledger: null'], ['ledger: { rotate: {} }']]) {
      assert.deepEqual(parseConfig(yaml(section), null).ledger, DEFAULT_LEDGER, section.join('\n'));
    }
  });

  it('keeps DEFAULTS as the single source of the values', () => {
    assert.equal(DEFAULTS.ledger.path, null);
    assert.equal(DEFAULTS.ledger.fsync, 'batch');
    assert.equal(DEFAULTS.ledger.fsyncInterval, '200ms');
    assert.equal(DEFAULTS.ledger.rotate.maxBytes, 64 * 1024 * 1024);
    assert.equal(DEFAULTS.ledger.rotate.daily, true);
    assert.equal(DEFAULTS.ledger.checkpointEvery, '5m');
    assert.equal(DEFAULTS.ledger.signingKey, null);
    assert.equal(DEFAULTS.ledger.onLedgerFailure, 'abort');
    assert.ok(Object.isFrozen(DEFAULTS.ledger.rotate));
  });
});

describe('ledger section: values', () => {
  it('parses every key', () => {
    const config = parseConfig(
      yaml([
        'ledger:',
        '  path: /var/lib/dimse/ledger',
        '  fsync: always',
        '  fsyncInterval: 1s',
        '  rotate:',
        '    maxBytes: 1048576',
        '    daily: false',
        '  checkpointEvery: 1h',
        '  signingKey: /etc/dimse/ledger-signing.key',
        '  onLedgerFailure: continue',
        '  witness: { file: /mnt/witness/gw1.checkpoints, syslog: false }',
      ]),
      null,
    );
    assert.deepEqual(config.ledger, {
      path: '/var/lib/dimse/ledger',
      fsync: 'always',
      fsyncIntervalMs: 1000,
      rotateMaxBytes: 1_048_576,
      rotateDaily: false,
      checkpointIntervalMs: 3_600_000,
      signingKey: '/etc/dimse/ledger-signing.key',
      onLedgerFailure: 'continue',
      witness: { file: '/mnt/witness/gw1.checkpoints', syslog: false },
    });
  });

  it('keeps defaults for keys left out', () => {
    const config = parseConfig(yaml(['ledger:', '  path: ledger', '  rotate: { daily: false }']), null);
    assert.deepEqual(config.ledger, {
      ...DEFAULT_LEDGER,
      path: resolve(process.cwd(), 'ledger'),
      rotateDaily: false,
    });
  });

  it('resolves relative paths against the config file directory', () => {
    const config = parseConfig(
      yaml(['ledger:', '  path: ../var/ledger', '  signingKey: ../certs/ledger-signing.key']),
      '/etc/dimse/config/proxy.yaml',
    );
    assert.equal(config.ledger.path, '/etc/dimse/var/ledger');
    assert.equal(config.ledger.signingKey, '/etc/dimse/certs/ledger-signing.key');
    const w = parseConfig(
      yaml(['ledger:', '  witness: { file: ../witness/cp.log }']),
      '/etc/dimse/config/proxy.yaml',
    );
    assert.deepEqual(w.ledger.witness, { file: '/etc/dimse/witness/cp.log', syslog: true });
    assertSingleIssue(yaml(['ledger:', '  witness: { syslog: sometimes }']), 'ledger.witness.syslog', 12);
    assertSingleIssue(yaml(['ledger:', '  witness: { url: x }']), 'ledger.witness.url', 12);
  });

  it('accepts explicit nulls for path and signingKey', () => {
    const config = parseConfig(yaml(['ledger: { path: null, signingKey: null }']), '/etc/dimse/proxy.yaml');
    assert.equal(config.ledger.path, null);
    assert.equal(config.ledger.signingKey, null);
  });

  it('accepts the bounds: fsyncInterval 1ms and 10s, maxBytes 1 MiB and 16 GiB', () => {
    const low = parseConfig(yaml(['ledger: { fsyncInterval: 1ms, rotate: { maxBytes: 1048576 } }']), null);
    assert.equal(low.ledger.fsyncIntervalMs, 1);
    assert.equal(low.ledger.rotateMaxBytes, 1_048_576);
    const high = parseConfig(
      yaml(['ledger: { fsyncInterval: 10s, rotate: { maxBytes: 17179869184 } }']),
      null,
    );
    assert.equal(high.ledger.fsyncIntervalMs, 10_000);
    assert.equal(high.ledger.rotateMaxBytes, 17_179_869_184);
  });
});

describe('ledger section: errors name the key path and line', () => {
  it('refuses an unknown fsync mode', () => {
    assertSingleIssue(
      yaml(['ledger:', '  path: ledger', '  fsync: sometimes']),
      'ledger.fsync',
      13,
      /must be one of always, batch; got the string "sometimes"/,
    );
  });

  it('refuses an unknown onLedgerFailure mode', () => {
    assertSingleIssue(
      yaml(['ledger:', '  onLedgerFailure: ignore']),
      'ledger.onLedgerFailure',
      12,
      /must be one of abort, continue/,
    );
  });

  it('refuses a bad duration', () => {
    assertSingleIssue(
      yaml(['ledger:', '  fsyncInterval: 200ms', '  checkpointEvery: 5 minutes']),
      'ledger.checkpointEvery',
      13,
      /invalid duration "5 minutes"/,
    );
    assertSingleIssue(
      yaml(['ledger:', '  fsyncInterval: fast']),
      'ledger.fsyncInterval',
      12,
      /invalid duration/,
    );
    assertSingleIssue(yaml(['ledger:', '  fsyncInterval: 0ms']), 'ledger.fsyncInterval', 12, /at least 1ms/);
  });

  it('refuses an fsyncInterval beyond 10s', () => {
    assertSingleIssue(
      yaml(['ledger:', '  fsyncInterval: 10001ms']),
      'ledger.fsyncInterval',
      12,
      /at most 10s/,
    );
    assertSingleIssue(yaml(['ledger:', '  fsyncInterval: 1m']), 'ledger.fsyncInterval', 12, /at most 10s/);
  });

  it('refuses rotate.maxBytes out of range', () => {
    assertSingleIssue(
      yaml(['ledger:', '  rotate:', '    maxBytes: 1048575']),
      'ledger.rotate.maxBytes',
      13,
      /must be at least 1048576 \(1 MiB\), got number 1048575/,
    );
    assertSingleIssue(
      yaml(['ledger:', '  rotate:', '    maxBytes: 17179869185']),
      'ledger.rotate.maxBytes',
      13,
      /must be at most 17179869184 \(16 GiB\)/,
    );
    assertSingleIssue(
      yaml(['ledger:', '  rotate:', '    maxBytes: 64MiB']),
      'ledger.rotate.maxBytes',
      13,
      /expected a number/,
    );
    assertSingleIssue(
      yaml(['ledger:', '  rotate:', '    maxBytes: 2097152.5']),
      'ledger.rotate.maxBytes',
      13,
      /integer/,
    );
  });

  it('reports an unknown key under ledger.rotate at the key', () => {
    assertSingleIssue(
      yaml(['ledger:', '  rotate:', '    maxBytes: 1048576', '    hourly: true']),
      'ledger.rotate.hourly',
      14,
      /unknown key "hourly"/,
    );
  });

  it('reports an unknown key under ledger at the key', () => {
    assertSingleIssue(
      yaml(['ledger:', '  path: ledger', '  fsyncIntervall: 1s']),
      'ledger.fsyncIntervall',
      13,
      /unknown key "fsyncIntervall"/,
    );
  });

  it('refuses wrong types for the section, rotate, daily and the paths', () => {
    assertSingleIssue(yaml(['ledger: ../var/ledger']), 'ledger', 11, /expected a mapping/);
    assertSingleIssue(yaml(['ledger:', '  rotate: daily']), 'ledger.rotate', 12, /expected a mapping/);
    assertSingleIssue(
      yaml(['ledger:', '  rotate: { daily: yes }']),
      'ledger.rotate.daily',
      12,
      /expected true or false/,
    );
    assertSingleIssue(yaml(['ledger:', "  path: ''"]), 'ledger.path', 12, /must not be empty/);
    assertSingleIssue(yaml(['ledger:', '  signingKey: 42']), 'ledger.signingKey', 12, /expected a string/);
  });

  it('reports several ledger problems at once, in file order', () => {
    const issues = issuesOf(
      yaml(['ledger:', '  fsync: never', '  rotate: { maxBytes: 1, colour: red }', '  checkpointEvery: -1s']),
    );
    assert.deepEqual(
      issues.map((i) => [i.path, i.line]),
      [
        ['ledger.fsync', 12],
        ['ledger.rotate.maxBytes', 13],
        ['ledger.rotate.colour', 13],
        ['ledger.checkpointEvery', 14],
      ],
    );
  });
});
