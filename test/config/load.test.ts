import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { readFileSync } from 'node:fs';
import { ConfigError, DEFAULTS, loadConfig, parseConfig, type ConfigIssue } from '../../src/config/index.js';
import { adminReadinessSchema, adminSchema } from '../../src/config/admin.js';
import { auditSchema, auditSyslogSchema, auditSyslogTlsSchema } from '../../src/config/audit.js';
import { MAX_DURATION_MS, parseDuration } from '../../src/config/duration.js';
import {
  identitySchema,
  ledgerRotateSchema,
  ledgerSchema,
  limitsSchema,
  listenSchema,
  proxyProtocolSchema,
  loggingSchema,
  peerSchema,
  receiverSchema,
  reloadSchema,
  returnCallerSchema,
  returnListenerSchema,
  routeSchema,
  serverTlsSchema,
  upstreamSchema,
  upstreamTlsSchema,
} from '../../src/config/schema.js';

const here = dirname(fileURLToPath(import.meta.url));
const EXAMPLE = resolve(here, '../../config/example.yaml');

/** A minimal valid configuration; tests replace single lines (1-based) to provoke one problem at a known line. */
const BASE = [
  /* 1 */ 'upstreams:',
  /* 2 */ '  archive:',
  /* 3 */ '    host: pacs.example.org',
  /* 4 */ '    port: 2762',
  /* 5 */ '    aeTitle: PACS',
  /* 6 */ '    tls: { ca: certs/ca.pem, cert: certs/client.pem, key: /abs/client.key }',
  /* 7 */ 'routes:',
  /* 8 */ '  - { calledAeTitle: DICOM_PROXY, upstream: archive }',
  /* 9 */ 'peers:',
  /* 10 */ '  CT_ROOM1: { addresses: [10.20.0.15], services: [echo, store] }',
];

function yaml(replace: Record<number, string> = {}, append: string[] = []): string {
  const lines = BASE.map((line, i) => replace[i + 1] ?? line);
  return [...lines, ...append].join('\n') + '\n';
}

function parseDurationMs(value: string): number {
  const result = parseDuration(value);
  assert.ok(result.ok, `bad duration ${value}`);
  return result.ms;
}

function issuesOf(text: string, file: string | null = 'test.yaml'): ConfigIssue[] {
  try {
    parseConfig(text, file);
  } catch (error) {
    assert.ok(error instanceof ConfigError, `expected ConfigError, got ${String(error)}`);
    assert.equal(error.code, 'CONFIG_INVALID');
    return error.issues;
  }
  assert.fail('expected parseConfig to throw ConfigError');
}

function assertSingleIssue(text: string, path: string, line: number, message?: RegExp): ConfigIssue {
  const issues = issuesOf(text);
  assert.equal(issues.length, 1, `expected one issue, got:\n${JSON.stringify(issues, null, 2)}`);
  const [issue] = issues;
  assert.ok(issue);
  assert.equal(issue.path, path);
  assert.equal(issue.line, line);
  if (message) assert.match(issue.message, message);
  return issue;
}

describe('config/example.yaml', () => {
  it('parses with the documented values', async () => {
    const config = await loadConfig(EXAMPLE);
    assert.equal(config.sourcePath, EXAMPLE);
    assert.deepEqual(config.listen, { host: '0.0.0.0', port: 11112, proxyProtocol: null });
    const archive = config.upstreams['archive'];
    assert.ok(archive);
    assert.equal(archive.aeTitle, 'PACS');
    assert.equal(archive.tls.ca, resolve(dirname(EXAMPLE), '../certs/ca.pem'));
    assert.equal(config.routes[0]?.upstream, 'archive');
    assert.deepEqual(config.peers['WS_READ3']?.sopClasses, ['1.3.12.2.1107.5.9.1']);
    assert.equal(config.limits.idleTimeoutMs, 5 * 60_000);
    // The example enables the ledger, as an administrator copying it would want.
    assert.deepEqual(config.ledger, {
      path: resolve(dirname(EXAMPLE), '../var/ledger'),
      fsync: 'batch',
      fsyncIntervalMs: 200,
      rotateMaxBytes: 64 * 1024 * 1024,
      rotateDaily: true,
      checkpointIntervalMs: 5 * 60_000,
      signingKey: resolve(dirname(EXAMPLE), '../certs/ledger-signing.key'),
      onLedgerFailure: 'abort',
      witness: { file: '/mnt/witness/proxy-host.checkpoints', syslog: true },
    });
  });

  it('shows every configuration key, each with a comment', () => {
    const text = readFileSync(EXAMPLE, 'utf8');
    const shapes = [
      listenSchema,
      proxyProtocolSchema,
      upstreamSchema,
      upstreamTlsSchema,
      routeSchema,
      peerSchema,
      limitsSchema,
      loggingSchema,
      ledgerSchema,
      ledgerRotateSchema,
      receiverSchema,
      returnListenerSchema,
      serverTlsSchema,
      returnCallerSchema,
      reloadSchema,
      adminSchema,
      adminReadinessSchema,
      auditSchema,
      auditSyslogSchema,
      auditSyslogTlsSchema,
    ];
    const keys = new Set([
      'listen',
      'upstreams',
      'routes',
      'peers',
      'limits',
      'logging',
      'ledger',
      'returnListener',
    ]);
    for (const schema of shapes) for (const key of Object.keys(schema.shape)) keys.add(key);
    for (const key of keys) {
      const documented =
        new RegExp(`^\\s*(#\\s*)?(- )?${key}:.*#`, 'm').test(text) ||
        new RegExp(`#.*\\n\\s*${key}:`).test(text);
      assert.ok(documented, `example.yaml does not show "${key}" with a comment`);
    }
    // A caller's identity has exactly one key: the example shows one and names the others in its comment.
    const identityLine = text.split('\n').find((l) => /^\s*identity:/.test(l)) ?? '';
    for (const key of Object.keys(identitySchema.shape)) {
      assert.match(identityLine, new RegExp(`\\b${key}\\b`), `the identity comment does not name "${key}"`);
    }
  });

  it('uses the same defaults as DEFAULTS', async () => {
    const config = await loadConfig(EXAMPLE);
    assert.equal(config.limits.maxAssociations, DEFAULTS.limits.maxAssociations);
    assert.equal(config.limits.maxAssociationsPerPeer, DEFAULTS.limits.maxAssociationsPerPeer);
    assert.equal(config.limits.maxPduLength, DEFAULTS.limits.maxPduLength);
    assert.equal(config.limits.relayBuffer, DEFAULTS.limits.relayBuffer);
    assert.equal(config.logging.level, DEFAULTS.logging.level);
    assert.equal(config.listen.port, DEFAULTS.listen.port);
    assert.equal(config.ledger.fsync, DEFAULTS.ledger.fsync);
    assert.equal(config.ledger.fsyncIntervalMs, parseDurationMs(DEFAULTS.ledger.fsyncInterval));
    assert.equal(config.ledger.rotateMaxBytes, DEFAULTS.ledger.rotate.maxBytes);
    assert.equal(config.ledger.rotateDaily, DEFAULTS.ledger.rotate.daily);
    assert.equal(config.ledger.checkpointIntervalMs, parseDurationMs(DEFAULTS.ledger.checkpointEvery));
    assert.equal(config.ledger.onLedgerFailure, DEFAULTS.ledger.onLedgerFailure);
  });
});

describe('parseConfig: defaults and normalisation', () => {
  it('applies defaults to a minimal file', () => {
    const config = parseConfig(yaml(), '/etc/dimse/proxy.yaml');
    assert.deepEqual(config.listen, { host: '0.0.0.0', port: 11112, proxyProtocol: null });
    assert.deepEqual(config.limits, {
      maxAssociations: 200,
      maxAssociationsPerPeer: 16,
      associationRequestTimeoutMs: 10_000,
      idleTimeoutMs: 300_000,
      maxPduLength: 1_048_576,
      drainTimeoutMs: 30_000,
      relayBuffer: 1_048_576,
      relayBufferTotal: 16_777_216,
      pendingPerAddress: 8,
      pendingTotal: 64,
      pendingReservedForPeers: 16,
    });
    assert.deepEqual(config.logging, { level: 'info', file: null });
    const archive = config.upstreams['archive'];
    assert.ok(archive);
    assert.equal(archive.name, 'archive');
    assert.equal(archive.callingAeTitle, null);
    assert.equal(archive.connectTimeoutMs, 10_000);
    assert.equal(archive.tls.serverName, 'pacs.example.org');
    assert.equal(archive.tls.verifyHostname, true);
    assert.equal(archive.tls.profile, 'bcp195');
    assert.deepEqual(config.peers['CT_ROOM1'], {
      aeTitle: 'CT_ROOM1',
      addresses: ['10.20.0.15'],
      services: ['echo', 'store'],
      moveDestinations: ['CT_ROOM1'],
      maxAssociations: null,
      sopClasses: [],
      receiver: null,
    });
  });

  it('keeps explicit values over defaults', () => {
    const config = parseConfig(
      yaml(
        {
          6: '    tls: { ca: a, cert: b, key: c, serverName: pacs-tls.example.org, verifyHostname: false, profile: modified-bcp195 }',
        },
        [
          'listen: { host: 127.0.0.1, port: 0 }',
          'limits: { maxAssociations: 3, maxAssociationsPerPeer: 1, maxPduLength: 4096 }',
          'logging: { level: debug }',
        ],
      ),
      null,
    );
    assert.deepEqual(config.listen, { host: '127.0.0.1', port: 0, proxyProtocol: null });
    assert.equal(config.limits.maxAssociations, 3);
    assert.equal(config.limits.maxPduLength, 4096);
    assert.equal(config.logging.level, 'debug');
    assert.equal(config.upstreams['archive']?.tls.serverName, 'pacs-tls.example.org');
    assert.equal(config.upstreams['archive']?.tls.verifyHostname, false);
    assert.equal(config.upstreams['archive']?.tls.profile, 'modified-bcp195');
  });

  it('converts durations to milliseconds; a bare number is seconds', () => {
    const config = parseConfig(
      yaml({ 5: '    aeTitle: PACS\n    connectTimeout: 500ms' }, [
        'limits: { associationRequestTimeout: 30, idleTimeout: 1h }',
      ]),
      null,
    );
    assert.equal(config.upstreams['archive']?.connectTimeoutMs, 500);
    assert.equal(config.limits.associationRequestTimeoutMs, 30_000);
    assert.equal(config.limits.idleTimeoutMs, 3_600_000);
  });

  it('resolves relative file paths against the config file directory', () => {
    const config = parseConfig(yaml({}, ['logging: { file: ../log/proxy.log }']), '/etc/dimse/proxy.yaml');
    const tls = config.upstreams['archive']?.tls;
    assert.equal(tls?.ca, '/etc/dimse/certs/ca.pem');
    assert.equal(tls?.cert, '/etc/dimse/certs/client.pem');
    assert.equal(tls?.key, '/abs/client.key');
    assert.equal(config.logging.file, '/etc/log/proxy.log');
    assert.equal(config.sourcePath, '/etc/dimse/proxy.yaml');
  });

  it('resolves relative paths against the working directory without a source file', () => {
    const config = parseConfig(yaml(), null);
    assert.equal(config.upstreams['archive']?.tls.ca, resolve(process.cwd(), 'certs/ca.pem'));
    assert.equal(config.sourcePath, null);
  });

  it('stores AE titles without their insignificant spaces', () => {
    const config = parseConfig(
      yaml({
        5: "    aeTitle: ' PACS '",
        8: "  - { calledAeTitle: 'DICOM_PROXY   ', upstream: archive }",
        10: "  ' CT_ROOM1 ': { addresses: [10.20.0.15], services: [echo], moveDestinations: ['  WS1 '] }",
      }),
      null,
    );
    assert.equal(config.upstreams['archive']?.aeTitle, 'PACS');
    assert.equal(config.routes[0]?.calledAeTitle, 'DICOM_PROXY');
    assert.deepEqual(Object.keys(config.peers), ['CT_ROOM1']);
    assert.equal(config.peers['CT_ROOM1']?.aeTitle, 'CT_ROOM1');
    assert.deepEqual(config.peers['CT_ROOM1']?.moveDestinations, ['WS1']);
  });

  it('accepts IPv6 addresses and CIDRs', () => {
    const config = parseConfig(
      yaml({
        10: "  CT_ROOM1: { addresses: ['fd00:20::/64', '2001:db8::5', 10.20.0.0/16], services: [echo] }",
      }),
      null,
    );
    assert.deepEqual(config.peers['CT_ROOM1']?.addresses, ['fd00:20::/64', '2001:db8::5', '10.20.0.0/16']);
  });

  it('returns a deep-frozen snapshot', () => {
    const config = parseConfig(yaml(), null);
    assert.ok(Object.isFrozen(config));
    assert.ok(Object.isFrozen(config.listen));
    assert.ok(Object.isFrozen(config.upstreams));
    assert.ok(Object.isFrozen(config.upstreams['archive']?.tls));
    assert.ok(Object.isFrozen(config.routes));
    assert.ok(Object.isFrozen(config.peers['CT_ROOM1']?.addresses));
    assert.throws(() => {
      (config.listen as { port: number }).port = 1;
    }, TypeError);
    assert.throws(() => {
      config.peers['CT_ROOM1']?.services.push('find');
    }, TypeError);
    assert.ok(Object.isFrozen(DEFAULTS.limits));
  });

  it('does not let AE titles reach Object.prototype', () => {
    const config = parseConfig(yaml(), null);
    assert.equal(config.peers['toString'], undefined);
    assert.equal(config.upstreams['constructor'], undefined);
  });

  it('keeps an oddly named but valid AE title such as "__proto__"', () => {
    const config = parseConfig(
      yaml({ 10: '  __proto__: { addresses: [10.20.0.15], services: [echo] }' }),
      null,
    );
    assert.deepEqual(Object.keys(config.peers), ['__proto__']);
    assert.equal(config.peers['__proto__']?.aeTitle, '__proto__');
  });
});

describe('parseConfig: errors name the key path and line', () => {
  it('reports an unknown key at its line', () => {
    assertSingleIssue(
      yaml({ 4: '    port: 2762\n    portt: 104' }),
      'upstreams.archive.portt',
      5,
      /unknown key "portt"/,
    );
  });

  it('reports an unknown top-level key', () => {
    assertSingleIssue(yaml({}, ['listen: { host: 0.0.0.0 }', 'limit: { maxAssociations: 3 }']), 'limit', 12);
  });

  it('reports a bad CIDR, accepting the valid one next to it', () => {
    assertSingleIssue(
      yaml({ 10: '  CT_ROOM1: { addresses: [10.20.0.0/16, 10.20.0.0/33], services: [echo] }' }),
      'peers.CT_ROOM1.addresses[1]',
      10,
      /prefix/,
    );
    assertSingleIssue(
      yaml({ 10: '  CT_ROOM1: { addresses: [10.20.0.300], services: [echo] }' }),
      'peers.CT_ROOM1.addresses[0]',
      10,
    );
    assertSingleIssue(
      yaml({ 10: '  CT_ROOM1: { addresses: [10.20.0.7/24], services: [echo] }' }),
      'peers.CT_ROOM1.addresses[0]',
      10,
      /host bits.*10\.20\.0\.0\/24/,
    );
    // Octal-looking and short forms are refused rather than silently read as other addresses.
    assertSingleIssue(
      yaml({ 10: '  CT_ROOM1: { addresses: [010.20.0.15], services: [echo] }' }),
      'peers.CT_ROOM1.addresses[0]',
      10,
    );
  });

  it('requires a non-empty address list', () => {
    assertSingleIssue(
      yaml({ 10: '  CT_ROOM1: { addresses: [], services: [echo] }' }),
      'peers.CT_ROOM1.addresses',
      10,
    );
    assertSingleIssue(
      yaml({ 10: '  CT_ROOM1: { services: [echo] }' }),
      'peers.CT_ROOM1.addresses',
      10,
      /required/,
    );
  });

  it('requires services from the list', () => {
    assertSingleIssue(
      yaml({ 10: '  CT_ROOM1: { addresses: [10.20.0.15], services: [echo, stor] }' }),
      'peers.CT_ROOM1.services[1]',
      10,
      /one of echo, store/,
    );
    assertSingleIssue(
      yaml({ 10: '  CT_ROOM1: { addresses: [10.20.0.15], services: [] }' }),
      'peers.CT_ROOM1.services',
      10,
    );
  });

  it('checks AE titles: 16 characters pass, 17 fail', () => {
    const ok = parseConfig(yaml({ 5: '    aeTitle: ABCDEFGHIJKLMNOP' }), null);
    assert.equal(ok.upstreams['archive']?.aeTitle, 'ABCDEFGHIJKLMNOP');
    assertSingleIssue(
      yaml({ 5: '    aeTitle: ABCDEFGHIJKLMNOPQ' }),
      'upstreams.archive.aeTitle',
      5,
      /at most 16/,
    );
  });

  it('refuses AE titles with a backslash, control characters, or only spaces', () => {
    assertSingleIssue(yaml({ 5: "    aeTitle: 'PA\\CS'" }), 'upstreams.archive.aeTitle', 5, /backslash/);
    assertSingleIssue(yaml({ 5: '    aeTitle: "PA\\tCS"' }), 'upstreams.archive.aeTitle', 5, /control/);
    assertSingleIssue(
      yaml({ 5: "    aeTitle: '    '" }),
      'upstreams.archive.aeTitle',
      5,
      /empty or only spaces/,
    );
    assertSingleIssue(
      yaml({ 8: "  - { calledAeTitle: 'A\\B', upstream: archive }" }),
      'routes[0].calledAeTitle',
      8,
      /backslash/,
    );
    assertSingleIssue(
      yaml({
        10: '  CT_ROOM1: { addresses: [10.20.0.15], services: [move], moveDestinations: [WAY_TOO_LONG_DESTINATION] }',
      }),
      'peers.CT_ROOM1.moveDestinations[0]',
      10,
    );
  });

  it('reports a bad peer AE title at the key', () => {
    assertSingleIssue(
      yaml({ 10: '  CT_ROOM1_AND_MORE_CHARS:\n    addresses: [10.20.0.15]\n    services: [echo]' }),
      'peers.CT_ROOM1_AND_MORE_CHARS',
      10,
      /at most 16/,
    );
  });

  it('reports peer keys that are equal once trimmed', () => {
    assertSingleIssue(
      yaml({}, ["  'CT_ROOM1 ': { addresses: [10.20.0.16], services: [echo] }"]),
      'peers["CT_ROOM1 "]',
      11,
      /listed twice/,
    );
  });

  it('reports a route to a missing upstream', () => {
    assertSingleIssue(
      yaml({ 8: '  - { calledAeTitle: DICOM_PROXY, upstream: archiv }' }),
      'routes[0].upstream',
      8,
      /unknown upstream "archiv" \(defined: archive\)/,
    );
  });

  it('reports a duplicate route at the second one, also when they differ only by padding', () => {
    assertSingleIssue(
      yaml({
        8: [
          '  - { calledAeTitle: DICOM_PROXY, upstream: archive }',
          '  - { calledAeTitle: OTHER, upstream: archive }',
          "  - { calledAeTitle: 'DICOM_PROXY ', upstream: archive }",
        ].join('\n'),
      }),
      'routes[2].calledAeTitle',
      10,
      /duplicate/,
    );
  });

  it('requires at least one upstream and one route', () => {
    const issues = issuesOf('upstreams: {}\nroutes: []\npeers: {}\n');
    assert.deepEqual(
      issues.map((i) => [i.path, i.line]),
      [
        ['upstreams', 1],
        ['routes', 2],
      ],
    );
  });

  it('reports missing required keys at the mapping that lacks them', () => {
    assertSingleIssue(yaml({ 6: '    tls: { ca: a, cert: b }' }), 'upstreams.archive.tls.key', 6, /required/);
    const issues = issuesOf('routes:\n  - { calledAeTitle: X, upstream: archive }\npeers: {}\n');
    assert.deepEqual(issues.map((i) => i.path).sort(), ['upstreams']);
    assert.equal(issues[0]?.line, 1);
  });

  it('refuses a bad upstream name', () => {
    assertSingleIssue(
      yaml({ 2: '  arch ive:', 8: "  - { calledAeTitle: DICOM_PROXY, upstream: 'arch ive' }" }),
      'upstreams["arch ive"]',
      2,
      /must match/,
    );
  });

  it('reports a bad duration, accepting a good one next to it', () => {
    assertSingleIssue(
      yaml({}, ['limits:', '  idleTimeout: 5m', '  associationRequestTimeout: 10 seconds']),
      'limits.associationRequestTimeout',
      13,
      /invalid duration/,
    );
  });

  it('checks ports: listen.port may be 0, an upstream port may not', () => {
    assert.equal(parseConfig(yaml({}, ['listen: { port: 0 }']), null).listen.port, 0);
    assertSingleIssue(yaml({}, ['listen: { port: 65536 }']), 'listen.port', 11, /at most 65535/);
    assertSingleIssue(yaml({ 4: '    port: 0' }), 'upstreams.archive.port', 4, /at least 1/);
    assertSingleIssue(yaml({ 4: '    port: 104.5' }), 'upstreams.archive.port', 4, /integer/);
    assertSingleIssue(
      yaml({ 4: "    port: '2762'" }),
      'upstreams.archive.port',
      4,
      /expected a number, got the string/,
    );
  });

  it('checks maxPduLength bounds 4096..16777216', () => {
    assert.equal(
      parseConfig(yaml({}, ['limits: { maxPduLength: 16777216 }']), null).limits.maxPduLength,
      16_777_216,
    );
    assertSingleIssue(
      yaml({}, ['limits: { maxPduLength: 4095 }']),
      'limits.maxPduLength',
      11,
      /at least 4096/,
    );
    assertSingleIssue(yaml({}, ['limits: { maxPduLength: 16777217 }']), 'limits.maxPduLength', 11);
  });

  it('checks relayBuffer bounds 65536..67108864', () => {
    assert.equal(parseConfig(yaml({}, ['limits: { relayBuffer: 65536 }']), null).limits.relayBuffer, 65_536);
    assertSingleIssue(
      yaml({}, ['limits: { relayBuffer: 65535 }']),
      'limits.relayBuffer',
      11,
      /at least 65536/,
    );
    assertSingleIssue(yaml({}, ['limits: { relayBuffer: 67108865 }']), 'limits.relayBuffer', 11);
  });

  it('checks relayBufferTotal bounds 1048576..4294967296', () => {
    assert.equal(
      parseConfig(yaml({}, ['limits: { relayBufferTotal: 1048576 }']), null).limits.relayBufferTotal,
      1_048_576,
    );
    assertSingleIssue(
      yaml({}, ['limits: { relayBufferTotal: 1048575 }']),
      'limits.relayBufferTotal',
      11,
      /at least 1048576/,
    );
    assertSingleIssue(yaml({}, ['limits: { relayBufferTotal: 4294967297 }']), 'limits.relayBufferTotal', 11);
  });

  it('checks the limits on connections not admitted yet against each other', () => {
    const limits = parseConfig(
      yaml({}, ['limits: { pendingPerAddress: 2, pendingTotal: 4, pendingReservedForPeers: 3 }']),
      null,
    ).limits;
    assert.deepEqual(
      [limits.pendingPerAddress, limits.pendingTotal, limits.pendingReservedForPeers],
      [2, 4, 3],
    );
    assertSingleIssue(yaml({}, ['limits: { pendingPerAddress: 0 }']), 'limits.pendingPerAddress', 11);
    // The default reserve (16) leaves nothing for addresses no peer lists under a pendingTotal of 16.
    assertSingleIssue(
      yaml({}, ['limits: { pendingTotal: 16 }']),
      'limits.pendingTotal',
      11,
      /pendingReservedForPeers \(16\) must be less than pendingTotal \(16\)/,
    );
    assertSingleIssue(
      yaml({}, ['limits: { pendingTotal: 32, pendingPerAddress: 33 }']),
      'limits.pendingPerAddress',
      11,
      /must not exceed pendingTotal/,
    );
  });

  it('requires positive limits; a peer limit may be null', () => {
    assertSingleIssue(yaml({}, ['limits: { maxAssociations: 0 }']), 'limits.maxAssociations', 11);
    assertSingleIssue(
      yaml({ 10: '  CT_ROOM1: { addresses: [10.20.0.15], services: [echo], maxAssociations: 0 }' }),
      'peers.CT_ROOM1.maxAssociations',
      10,
    );
    const config = parseConfig(
      yaml({ 10: '  CT_ROOM1: { addresses: [10.20.0.15], services: [echo], maxAssociations: null }' }),
      null,
    );
    assert.equal(config.peers['CT_ROOM1']?.maxAssociations, null);
  });

  it('checks sopClasses are UIDs', () => {
    assertSingleIssue(
      yaml({
        10: "  CT_ROOM1: { addresses: [10.20.0.15], services: [echo], sopClasses: [1.2.3, '1.2..3'] }",
      }),
      'peers.CT_ROOM1.sopClasses[1]',
      10,
      /not a UID/,
    );
    const long = '1.' + '2'.repeat(63);
    assertSingleIssue(
      yaml({ 10: `  CT_ROOM1: { addresses: [10.20.0.15], services: [echo], sopClasses: ['${long}'] }` }),
      'peers.CT_ROOM1.sopClasses[0]',
      10,
      /at most 64/,
    );
  });

  it('reports a YAML syntax error with its line', () => {
    const issues = issuesOf(yaml({ 10: '  CT_ROOM1: { addresses: [10.20.0.15, services: [echo] }' }));
    assert.ok(issues.length >= 1);
    assert.equal(issues[0]?.line, 10);
    assert.match(issues[0]?.message ?? '', /YAML syntax error/);
  });

  it('reports duplicate YAML keys with their line', () => {
    const issues = issuesOf(yaml({ 4: '    port: 2762\n    port: 104' }));
    assert.equal(issues[0]?.line, 5);
    assert.match(issues[0]?.message ?? '', /unique/);
  });

  it('refuses a document whose aliases expand without bound', () => {
    const lines = ['a: &a [x, x, x, x, x, x, x, x, x, x]'];
    for (let i = 0; i < 8; i++) {
      const prev = String.fromCharCode(97 + i);
      const next = String.fromCharCode(98 + i);
      lines.push(
        `${next}: &${next} [*${prev}, *${prev}, *${prev}, *${prev}, *${prev}, *${prev}, *${prev}, *${prev}, *${prev}, *${prev}]`,
      );
    }
    assert.match(issuesOf(lines.join('\n'))[0]?.message ?? '', /YAML error/);
  });

  it('reports a document that is not a mapping', () => {
    assert.equal(issuesOf('')[0]?.path, '');
    assert.equal(issuesOf('- a\n- b\n')[0]?.path, '');
  });

  it('reports every problem at once, in file order, in the error message', () => {
    const text = yaml({ 4: '    port: 99999', 10: '  CT_ROOM1: { addresses: [bogus], services: [echo] }' }, [
      'logging: { level: loud }',
    ]);
    try {
      parseConfig(text, 'conf/proxy.yaml');
      assert.fail('expected ConfigError');
    } catch (error) {
      assert.ok(error instanceof ConfigError);
      assert.equal(error.file, 'conf/proxy.yaml');
      assert.deepEqual(
        error.issues.map((i) => i.line),
        [4, 10, 11],
      );
      const lines = error.message.split('\n');
      assert.equal(lines.length, 3);
      assert.match(lines[0] ?? '', /^conf\/proxy\.yaml:4:11 upstreams\.archive\.port: must be at most 65535/);
      assert.match(lines[1] ?? '', /^conf\/proxy\.yaml:10:\d+ peers\.CT_ROOM1\.addresses\[0\]: /);
      assert.match(
        lines[2] ?? '',
        /^conf\/proxy\.yaml:11:\d+ logging\.level: must be one of error, warn, info, debug/,
      );
    }
  });
});

describe('loadConfig', () => {
  it('reads a file and resolves paths next to it', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'dimse-config-'));
    try {
      const file = join(dir, 'proxy.yaml');
      await writeFile(file, yaml());
      const config = await loadConfig(file);
      assert.equal(config.sourcePath, file);
      assert.equal(config.upstreams['archive']?.tls.ca, join(dir, 'certs/ca.pem'));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('names the file when it cannot be read', async () => {
    const missing = join(tmpdir(), 'dimse-config-does-not-exist.yaml');
    await assert.rejects(loadConfig(missing), (error: unknown) => {
      assert.ok(error instanceof ConfigError);
      assert.equal(error.file, missing);
      assert.ok(error.message.includes(missing));
      assert.match(error.message, /ENOENT/);
      return true;
    });
  });

  it('names the file in validation errors', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'dimse-config-'));
    try {
      const file = join(dir, 'proxy.yaml');
      await writeFile(file, yaml({ 5: '    aeTitle: "BAD\\\\AE"' }));
      await assert.rejects(loadConfig(file), (error: unknown) => {
        assert.ok(error instanceof ConfigError);
        assert.ok(error.message.startsWith(`${file}:5:`), error.message);
        return true;
      });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('parseDuration', () => {
  it('accepts the documented forms', () => {
    assert.deepEqual(parseDuration('500ms'), { ok: true, ms: 500 });
    assert.deepEqual(parseDuration('10s'), { ok: true, ms: 10_000 });
    assert.deepEqual(parseDuration('5m'), { ok: true, ms: 300_000 });
    assert.deepEqual(parseDuration('1h'), { ok: true, ms: 3_600_000 });
    assert.deepEqual(parseDuration(30), { ok: true, ms: 30_000 });
    assert.deepEqual(parseDuration('30'), { ok: true, ms: 30_000 });
    assert.deepEqual(parseDuration('1.5s'), { ok: true, ms: 1500 });
  });

  it('refuses other forms, zero, and values Node timers cannot hold', () => {
    for (const bad of ['10x', '10 s', '-1s', '', 's', '1e3', '0s', 0, -5, true, null, '597h']) {
      assert.equal(parseDuration(bad).ok, false, `accepted ${String(bad)}`);
    }
    assert.deepEqual(parseDuration(`${MAX_DURATION_MS}ms`), { ok: true, ms: MAX_DURATION_MS });
    assert.equal(parseDuration(`${MAX_DURATION_MS + 1}ms`).ok, false);
  });
});
