// The DICOM audit trail: PS3.15 A.5 message structure, RFC 5424 / 5425 framing, the TLS syslog sender and
// its durable spool against an in-test collector (loopback, port 0, per-run CA), and the event mapping.
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as tls from 'node:tls';
import { ConfigError } from '../../src/config/errors.js';
import { parseAuditConfig, type AuditConfig } from '../../src/config/audit.js';
import { ProxyEvents, type AssociationSummary } from '../../src/observe/events.js';
import {
  AuditTrail,
  FileAuditSink,
  SyslogTlsSender,
  applicationActivityMessage,
  associationRejectedMessage,
  beginTransferringMessage,
  certificateAeMismatchMessage,
  configurationChangeMessage,
  dimseRefusedMessage,
  escapeXml,
  formatSyslogMessage,
  frameOctetCounting,
  instancesTransferredMessage,
  openAuditTrail,
  queryMessage,
  severityForOutcome,
  tlsAuthenticationFailureMessage,
  type AuditRecord,
  type AuditSink,
  type MessageContext,
  type SpoolAlarm,
} from '../../src/observe/audit/index.js';
import { scanFrames, TLS13_SETTLE_MS } from '../../src/observe/audit/syslog.js';
import { createCa, issueCertificate, type PemPair } from '../../src/tls/pki.js';
import { ManualClock } from '../helpers/clock.js';
import { LedgerWriter } from '../../src/integrity/writer.js';
import { checkWitnessed } from '../../src/integrity/witness.js';
import { generateSigningKey, keyId, loadPublicKey } from '../../src/integrity/keys.js';
import { evidence as ledgerEvidence, options as ledgerOptions } from '../integrity/helpers.js';
import {
  b64,
  checkAuditMessage,
  code,
  kid,
  kids,
  patientsOf,
  roles,
  sopClassObjectsOf,
  studiesOf,
  type XNode,
} from '../helpers/audit-xml.js';
import { UNKNOWN_SUMMARY } from '../../src/dicom/prefix.js';

const CTX: MessageContext = {
  time: new Date('2024-05-06T07:08:09.123Z'),
  source: { sourceId: 'dimse-tls-proxy@gw1', enterpriseSiteId: 'HOSPITAL' },
  proxy: { processId: '4242', name: 'dimse-tls-proxy', host: 'gw1.example.org', aeTitles: ['DICOM_PROXY'] },
};
const CT = '1.2.840.10008.5.1.4.1.1.2';
const MR = '1.2.840.10008.5.1.4.1.1.4';
const FIND_STUDY = '1.2.840.10008.5.1.4.1.2.2.1';

describe('PS3.15 A.5 message builders', () => {
  test('Application Activity (A.5.3.1): 110100, E, 110120 / 110121, Application role, AE titles', () => {
    for (const [kind, type] of [
      ['start', '110120'],
      ['stop', '110121'],
    ] as const) {
      const root = checkAuditMessage(
        applicationActivityMessage({ ...CTX, kind, launchers: [{ userId: 'svc-dimse' }] }),
      );
      const ev = kid(root, 'EventIdentification');
      assert.equal(code(kid(ev, 'EventID')), '110100');
      assert.equal(kid(ev, 'EventID').attrs['codeSystemName'], 'DCM');
      assert.equal(ev.attrs['EventActionCode'], 'E');
      assert.equal(ev.attrs['EventDateTime'], '2024-05-06T07:08:09.123Z');
      assert.deepEqual(kids(ev, 'EventTypeCode').map(code), [type]);
      assert.deepEqual(roles(root), [['110150'], ['110151']]);
      const app = kids(root, 'ActiveParticipant')[0] as XNode;
      assert.equal(app.attrs['UserID'], '4242');
      assert.equal(app.attrs['AlternativeUserID'], 'AETITLES=DICOM_PROXY');
      assert.equal(app.attrs['UserIsRequestor'], 'false');
      assert.equal(app.attrs['NetworkAccessPointTypeCode'], '1');
      const src = kid(root, 'AuditSourceIdentification');
      assert.equal(src.attrs['AuditSourceID'], 'dimse-tls-proxy@gw1');
      assert.equal(src.attrs['AuditEnterpriseSiteID'], 'HOSPITAL');
      assert.equal(kids(root, 'ParticipantObjectIdentification').length, 0, 'no participant objects');
    }
  });

  const transfer = {
    ...CTX,
    sender: { aeTitle: 'CT_ROOM1', address: '::ffff:10.20.0.15', requestor: true },
    receiver: {
      aeTitle: 'PACS',
      address: 'pacs.example.org',
      requestor: false,
      certificate: { subject: 'CN=pacs', fingerprint256: 'AB:CD' },
    },
    proxyAeTitles: ['DICOM_PROXY'],
    sopClasses: [
      { uid: CT, numberOfInstances: 2, instanceUids: ['1.2.3.1', '1.2.3.2'] },
      { uid: MR, numberOfInstances: 1, instanceUids: ['1.2.3.3'] },
    ],
  };

  test('DICOM Instances Transferred (A.5.3.7): 110104, action R (the proxy relays), SOP classes and UIDs', () => {
    const root = checkAuditMessage(instancesTransferredMessage(transfer));
    const ev = kid(root, 'EventIdentification');
    assert.equal(code(kid(ev, 'EventID')), '110104');
    assert.equal(ev.attrs['EventActionCode'], 'R');
    assert.equal(ev.attrs['EventOutcomeIndicator'], '0');
    assert.deepEqual(roles(root), [['110153'], ['110152'], ['110150']]);
    const [src, dst] = kids(root, 'ActiveParticipant') as [XNode, XNode];
    assert.equal(src.attrs['UserID'], 'CT_ROOM1');
    assert.equal(src.attrs['AlternativeUserID'], 'AETITLES=CT_ROOM1');
    assert.equal(src.attrs['NetworkAccessPointID'], '10.20.0.15', 'IPv4-mapped address in IPv4 form');
    assert.equal(src.attrs['NetworkAccessPointTypeCode'], '2');
    assert.equal(src.attrs['UserIsRequestor'], 'true');
    assert.equal(dst.attrs['NetworkAccessPointTypeCode'], '1');
    assert.equal(dst.attrs['UserName'], 'CN=pacs; SHA-256=AB:CD');
    const objects = kids(root, 'ParticipantObjectIdentification');
    assert.deepEqual(
      objects.map((o) => [
        o.attrs['ParticipantObjectID'],
        o.attrs['ParticipantObjectTypeCode'],
        o.attrs['ParticipantObjectTypeCodeRole'],
      ]),
      [
        [CT, '2', '3'],
        [MR, '2', '3'],
      ],
    );
    for (const o of objects) assert.equal(code(kid(o, 'ParticipantObjectIDTypeCode')), '110181');
    const sop = kid(kid(objects[0] as XNode, 'ParticipantObjectDescription'), 'SOPClass');
    assert.equal(sop.attrs['UID'], CT);
    assert.equal(sop.attrs['NumberOfInstances'], '2');
    assert.deepEqual(
      kids(sop, 'Instance').map((i) => i.attrs['UID']),
      ['1.2.3.1', '1.2.3.2'],
    );
    assert.ok(!/Patient|110180/.test(instancesTransferredMessage(transfer)), 'no patient, no study UID');
  });

  test('Begin Transferring DICOM Instances (A.5.3.3): 110102, action E', () => {
    const root = checkAuditMessage(beginTransferringMessage(transfer));
    assert.equal(code(kid(kid(root, 'EventIdentification'), 'EventID')), '110102');
    assert.equal(kid(root, 'EventIdentification').attrs['EventActionCode'], 'E');
    assert.deepEqual(roles(root), [['110153'], ['110152'], ['110150']]);
  });

  test('Query (A.5.3.10): 110112, E, the SOP class queried; the data set only when supplied', () => {
    const base = {
      ...CTX,
      requestor: { aeTitle: 'WS1', address: '10.0.0.9', requestor: true },
      responder: { aeTitle: 'PACS', address: '10.0.0.2', requestor: false },
      sopClassUid: FIND_STUDY,
    };
    let root = checkAuditMessage(queryMessage(base));
    const ev = kid(root, 'EventIdentification');
    assert.equal(code(kid(ev, 'EventID')), '110112');
    assert.equal(ev.attrs['EventActionCode'], 'E');
    assert.deepEqual(roles(root), [['110153'], ['110152'], ['110150']]);
    let po = kid(root, 'ParticipantObjectIdentification');
    assert.equal(po.attrs['ParticipantObjectID'], FIND_STUDY);
    assert.equal(po.attrs['ParticipantObjectTypeCode'], '2');
    assert.equal(po.attrs['ParticipantObjectTypeCodeRole'], '3');
    assert.equal(code(kid(po, 'ParticipantObjectIDTypeCode')), '110181');
    assert.equal(kids(po, 'ParticipantObjectQuery').length, 0, 'no data set: the proxy does not parse it');

    root = checkAuditMessage(
      queryMessage({
        ...base,
        queryDataset: Buffer.from([1, 2, 3]),
        transferSyntaxUid: '1.2.840.10008.1.2.1',
      }),
    );
    po = kid(root, 'ParticipantObjectIdentification');
    assert.equal(kid(po, 'ParticipantObjectQuery').text, 'AQID');
    const detail = kid(po, 'ParticipantObjectDetail');
    assert.equal(detail.attrs['type'], 'TransferSyntax');
    assert.equal(b64(detail.attrs['value']), '1.2.840.10008.1.2.1');
  });

  function alert(xml: string, type: string, outcome: string): { root: XNode; description: string } {
    const root = checkAuditMessage(xml);
    const ev = kid(root, 'EventIdentification');
    assert.equal(code(kid(ev, 'EventID')), '110113');
    assert.equal(ev.attrs['EventActionCode'], 'E');
    assert.deepEqual(kids(ev, 'EventTypeCode').map(code), [type]);
    assert.equal(ev.attrs['EventOutcomeIndicator'], outcome);
    const reporter = kids(root, 'ActiveParticipant')[0] as XNode;
    assert.equal(reporter.attrs['UserID'], '4242', 'the proxy reports');
    for (const performer of kids(root, 'ActiveParticipant').slice(1)) {
      assert.equal(performer.attrs['UserIsRequestor'], 'false', 'A.5.3.11: performers are not requestors');
    }
    const subject = kids(root, 'ParticipantObjectIdentification')[0] as XNode;
    assert.equal(subject.attrs['ParticipantObjectTypeCode'], '2');
    const first = kids(subject, 'ParticipantObjectDetail')[0] as XNode;
    assert.equal(first.attrs['type'], 'Alert Description');
    const description = b64(first.attrs['value']);
    assert.equal(kid(ev, 'EventOutcomeDescription').text, description);
    return { root, description };
  }

  test('Security Alert (A.5.3.11) for a rejected association: Node Authentication or Restricted Function', () => {
    const e = {
      ...CTX,
      remoteAddress: '10.9.9.9',
      callingAeTitle: 'INTRUDER',
      calledAeTitle: 'DICOM_PROXY',
      reject: { result: 1, source: 1, reason: 3 },
      message: 'calling AE title INTRUDER is not configured',
    };
    const { root, description } = alert(
      associationRejectedMessage({ ...e, refusal: 'unknown-calling-ae' }),
      '110126',
      '4',
    );
    assert.match(description, /INTRUDER.*rejected \(1\/1\/3, unknown-calling-ae\)/);
    const subject = kid(root, 'ParticipantObjectIdentification');
    assert.equal(subject.attrs['ParticipantObjectID'], '10.9.9.9');
    assert.equal(code(kid(subject, 'ParticipantObjectIDTypeCode')), '110182', 'Node ID');
    alert(associationRejectedMessage({ ...e, refusal: 'unknown-called-ae' }), '110132', '4');
  });

  test('Security Alert for a disallowed service / move destination names the command and destination', () => {
    const { root, description } = alert(
      dimseRefusedMessage({
        ...CTX,
        remoteAddress: '10.0.0.9',
        callingAeTitle: 'WS1',
        command: 'C-MOVE-RQ',
        reason: 'move destination EVIL is not allowed for WS1',
        status: 0xa801,
        moveDestination: 'EVIL',
      }),
      '110132',
      '4',
    );
    assert.match(description, /C-MOVE-RQ from WS1 \(move destination EVIL\) refused with status 0xA801/);
    const details = kids(kid(root, 'ParticipantObjectIdentification'), 'ParticipantObjectDetail');
    assert.deepEqual(details.map((d) => [d.attrs['type'], b64(d.attrs['value'])]).slice(1), [
      ['Command', 'C-MOVE-RQ'],
      ['MoveDestination', 'EVIL'],
    ]);
  });

  test('Security Alerts: certificate / AE mismatch, TLS failure, configuration change', () => {
    const { root } = alert(
      certificateAeMismatchMessage({
        ...CTX,
        remoteAddress: '10.0.0.7',
        callingAeTitle: 'CT_ROOM1',
        certificateIdentity: { subject: 'CN=mr-room', san: ['DNS:mr.local'], fingerprint256: 'AA:BB' },
      }),
      '110126',
      '8',
    );
    const types = kids(kid(root, 'ParticipantObjectIdentification'), 'ParticipantObjectDetail').map(
      (d) => d.attrs['type'],
    );
    assert.deepEqual(types, [
      'Alert Description',
      'CallingAETitle',
      'CertificateSubject',
      'CertificateSubjectAltName',
      'CertificateSHA256',
    ]);
    alert(
      tlsAuthenticationFailureMessage({
        ...CTX,
        remoteAddress: '10.0.0.8',
        reason: 'unknown ca',
        listener: 'return',
      }),
      '110126',
      '8',
    );
    // A refused certificate: the source address and port, and the certificate it presented.
    const refused = alert(
      tlsAuthenticationFailureMessage({
        ...CTX,
        remoteAddress: '10.0.0.9',
        remotePort: 51234,
        reason: 'client-certificate-not-yet-valid: certificate verification failed: CERT_NOT_YET_VALID',
        listener: 'return listener',
        certificate: { subject: 'CN=archive.local', issuer: 'CN=Test CA', fingerprint256: 'AA:BB:CC' },
      }),
      '110126',
      '8',
    ).root;
    const performer = (kids(refused, 'ActiveParticipant') as XNode[])[1] as XNode;
    assert.deepEqual(
      [performer.attrs['UserID'], performer.attrs['NetworkAccessPointID'], performer.attrs['UserName']],
      ['10.0.0.9:51234', '10.0.0.9', 'CN=archive.local; issuer=CN=Test CA; SHA-256=AA:BB:CC'],
    );
    const refusedDetails = Object.fromEntries(
      kids(kid(refused, 'ParticipantObjectIdentification'), 'ParticipantObjectDetail').map((d) => [
        d.attrs['type'],
        b64(d.attrs['value']),
      ]),
    );
    assert.equal(refusedDetails['SourcePort'], '51234');
    assert.equal(refusedDetails['CertificateSubject'], 'CN=archive.local');
    assert.equal(refusedDetails['CertificateIssuer'], 'CN=Test CA');
    assert.equal(refusedDetails['CertificateSHA256'], 'AA:BB:CC');
    assert.match(
      kid(kid(refused, 'EventIdentification'), 'EventOutcomeDescription').text,
      /10\.0\.0\.9:51234.*client-certificate-not-yet-valid/,
    );
    const cfg = alert(
      configurationChangeMessage({ ...CTX, description: 'policy reloaded', file: '/etc/dimse/proxy.yaml' }),
      '110129',
      '0',
    ).root;
    const subject = kid(cfg, 'ParticipantObjectIdentification');
    assert.equal(subject.attrs['ParticipantObjectID'], 'file:///etc/dimse/proxy.yaml');
    assert.equal(subject.attrs['ParticipantObjectTypeCodeRole'], '5');
    const idType = kid(subject, 'ParticipantObjectIDTypeCode');
    assert.deepEqual([idType.attrs['csd-code'], idType.attrs['codeSystemName']], ['12', 'RFC-3881']);
    alert(configurationChangeMessage({ ...CTX, kind: 'network', description: 'listen port' }), '110128', '0');
  });

  test('Security Alert for a failed configuration change: 110129, outcome 4 (refused) or 8 (not applied)', () => {
    const description =
      'configuration reload failed (build); the running configuration stays in force:\n' +
      '/etc/dimse/proxy.yaml:12:7 upstreams.archive.tls.cert: certificate expired';
    const refused = alert(
      configurationChangeMessage({ ...CTX, description, file: '/etc/dimse/proxy.yaml', outcome: 4 }),
      '110129',
      '4',
    ).root;
    assert.equal(kid(kid(refused, 'EventIdentification'), 'EventOutcomeDescription').text, description);
    assert.equal(
      kid(refused, 'ParticipantObjectIdentification').attrs['ParticipantObjectID'],
      'file:///etc/dimse/proxy.yaml',
    );
    alert(configurationChangeMessage({ ...CTX, description: 'apply failed', outcome: 8 }), '110129', '8');
  });

  test('everything is escaped: hostile AE titles stay data, on one line, as valid XML characters', () => {
    const hostile = `A"<&>'\n\r\t\u0001\u2028\uD800B`;
    assert.equal(escapeXml('<a & "b">'), '&lt;a &amp; &quot;b&quot;&gt;');
    const xml = associationRejectedMessage({
      ...CTX,
      remoteAddress: '10.9.9.9',
      callingAeTitle: hostile,
      calledAeTitle: 'X</AuditMessage>',
      refusal: 'unknown-calling-ae',
      reject: { result: 1, source: 1, reason: 3 },
      message: 'm',
    });
    const root = checkAuditMessage(xml);
    const performer = kids(root, 'ActiveParticipant')[1] as XNode;
    assert.equal(performer.attrs['UserID'], `A"<&>'\n\r\t\uFFFD\u2028\uFFFDB`);
    assert.equal(root.children.at(-1)?.name, 'ParticipantObjectIdentification');
  });
});

// ------------------------------------------------------------------------------- RFC 5424 / RFC 5425

describe('RFC 5424 message and RFC 5425 octet counting', () => {
  test('header fields are exact: PRI, VERSION, TIMESTAMP, HOSTNAME, APP-NAME, PROCID, MSGID, SD, BOM', () => {
    const xml = '<AuditMessage>é</AuditMessage>';
    const msg = formatSyslogMessage({
      severity: severityForOutcome(0),
      time: new Date('2024-05-06T07:08:09.123Z'),
      hostname: 'gw1.example.org',
      appName: 'dimse-tls-proxy',
      procId: '4242',
      message: xml,
    });
    const expected = Buffer.concat([
      Buffer.from('<85>1 2024-05-06T07:08:09.123Z gw1.example.org dimse-tls-proxy 4242 IHE+RFC-3881 - '),
      Buffer.from([0xef, 0xbb, 0xbf]),
      Buffer.from(xml, 'utf8'),
    ]);
    assert.deepEqual(msg, expected);
    // Failure outcomes: severity 4 (warning), facility 10 -> PRI 84 (ITI-20).
    for (const outcome of [4, 8, 12] as const) assert.equal(severityForOutcome(outcome), 4);
    const warn = formatSyslogMessage({
      severity: 4,
      time: new Date(0),
      hostname: '',
      appName: 'a b',
      message: 'x',
    });
    assert.equal(
      warn.subarray(0, warn.indexOf(0xef)).toString(),
      '<84>1 1970-01-01T00:00:00.000Z - ab - IHE+RFC-3881 - ',
    );
    // Octet counting: MSG-LEN is the byte length of SYSLOG-MSG (BOM and the two-byte é included).
    const frame = frameOctetCounting(msg);
    const header = `${msg.length} `;
    assert.equal(Buffer.byteLength(xml), 31, 'é is two octets');
    assert.equal(msg.length, 83 + 3 + 31, 'header (83) + BOM (3) + MSG (31)');
    assert.equal(frame.subarray(0, 4).toString(), '117 ');
    assert.equal(frame.subarray(0, header.length).toString(), header);
    assert.deepEqual(frame.subarray(header.length), msg);
  });

  test('frame scanning: complete, partial and malformed frames', () => {
    const a = frameOctetCounting(Buffer.from('hello'));
    const b = frameOctetCounting(Buffer.from('world!'));
    assert.equal(a.toString(), '5 hello');
    const both = Buffer.concat([a, b]);
    assert.deepEqual(scanFrames(both), { ok: true, frames: 2, end: both.length });
    assert.deepEqual(scanFrames(both.subarray(0, both.length - 2)), { ok: true, frames: 1, end: a.length });
    assert.equal(scanFrames(Buffer.from('05 hello')).ok, false, 'MSG-LEN starts with NONZERO-DIGIT');
    assert.equal(scanFrames(Buffer.from('x hello')).ok, false);
  });
});

// ---------------------------------------------------------------------------- TLS syslog collector

interface Pki {
  ca: PemPair;
  collector: PemPair;
  client: PemPair;
  otherCa: PemPair;
  otherCollector: PemPair;
  otherClient: PemPair;
}

/** An RFC 5425 collector: mutual TLS, octet-counted frames. */
class Collector {
  readonly frames: Buffer[] = [];
  readonly peers: string[] = [];
  readonly protocols: string[] = [];
  private readonly sockets = new Set<tls.TLSSocket>();
  private waiters: (() => void)[] = [];

  private constructor(readonly server: tls.Server) {}

  static async start(opts: {
    cert: PemPair;
    ca: string;
    port?: number;
    ciphers?: string;
  }): Promise<Collector> {
    const server = tls.createServer({
      cert: opts.cert.cert,
      key: opts.cert.key,
      ca: opts.ca,
      requestCert: true,
      rejectUnauthorized: true,
      minVersion: 'TLSv1.2',
      ...(opts.ciphers ? { ciphers: opts.ciphers } : {}),
    });
    const c = new Collector(server);
    server.on('secureConnection', (socket) => {
      c.sockets.add(socket);
      c.peers.push(String(socket.getPeerCertificate().subject?.CN));
      c.protocols.push(String(socket.getProtocol()));
      let buf = Buffer.alloc(0);
      socket.on('data', (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        for (;;) {
          const sp = buf.indexOf(0x20);
          if (sp < 0) break;
          const len = Number(buf.subarray(0, sp).toString());
          if (buf.length < sp + 1 + len) break;
          c.frames.push(buf.subarray(sp + 1, sp + 1 + len));
          buf = buf.subarray(sp + 1 + len);
        }
        for (const w of c.waiters.splice(0)) w();
      });
      socket.on('error', () => undefined);
      socket.on('close', () => c.sockets.delete(socket));
    });
    server.on('tlsClientError', () => undefined);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(opts.port ?? 0, '127.0.0.1', () => resolve());
    });
    return c;
  }

  get port(): number {
    return (this.server.address() as net.AddressInfo).port;
  }

  /** The XML messages received, in order. */
  messages(): string[] {
    return this.frames.map((f) =>
      f.subarray(f.indexOf(Buffer.from([0xef, 0xbb, 0xbf])) + 3).toString('utf8'),
    );
  }

  async waitFor(count: number, timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.frames.length < count) {
      const left = deadline - Date.now();
      assert.ok(left > 0, `collector got ${this.frames.length} of ${count} messages in ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.min(left, 200));
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** Resolves once `cond()` holds (checked every 10 ms); fails after timeoutMs with what `state()` says. */
async function until(cond: () => boolean, state: () => string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    assert.ok(Date.now() < deadline, `condition not met within ${timeoutMs} ms: ${state()}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** The sender's next 'transport-error' (a failed connection attempt), or a rejection after timeoutMs. */
function nextTransportError(s: SyslogTlsSender, timeoutMs = 10_000): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no transport error within ${timeoutMs} ms`)), timeoutMs);
    s.once('transport-error', (e) => {
      clearTimeout(timer);
      resolve(e.error.message);
    });
  });
}

async function spoolFrames(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const name of (await readdir(dir)).filter((n) => n.endsWith('.spool')).sort()) {
    let buf = await readFile(join(dir, name));
    while (buf.length > 0) {
      const sp = buf.indexOf(0x20);
      const len = Number(buf.subarray(0, sp).toString());
      const frame = buf.subarray(sp + 1, sp + 1 + len);
      out.push(frame.subarray(frame.indexOf(Buffer.from([0xef, 0xbb, 0xbf])) + 3).toString('utf8'));
      buf = buf.subarray(sp + 1 + len);
    }
  }
  return out;
}

function xmlNo(i: number, pad = 0): string {
  return `<AuditMessage n="${i}">${'x'.repeat(pad)}</AuditMessage>`;
}

describe('syslog over TLS with a durable spool', { timeout: 120_000 }, () => {
  let pki: Pki;
  let work: string;
  const cleanup: (() => Promise<unknown>)[] = [];

  before(async () => {
    const ca = await createCa('audit test CA');
    const otherCa = await createCa('another CA');
    const server = {
      commonName: 'audit.local',
      dnsNames: ['localhost'],
      ipAddresses: ['127.0.0.1'],
    };
    pki = {
      ca,
      otherCa,
      collector: await issueCertificate(ca, { ...server, usage: 'server' }),
      client: await issueCertificate(ca, { commonName: 'dimse-tls-proxy', usage: 'client' }),
      otherCollector: await issueCertificate(otherCa, { ...server, usage: 'server' }),
      otherClient: await issueCertificate(otherCa, { commonName: 'intruder', usage: 'client' }),
    };
    work = await mkdtemp(join(tmpdir(), 'audit-test-'));
  });

  after(async () => {
    for (const c of cleanup.reverse()) await c().catch(() => undefined);
    await rm(work, { recursive: true, force: true });
  });

  let spoolNo = 0;
  function sender(
    port: number,
    opts: { spoolDir?: string; spoolMaxBytes?: number; clock?: ManualClock } = {},
  ): SyslogTlsSender {
    const s = new SyslogTlsSender({
      host: '127.0.0.1',
      port,
      tls: { ca: pki.ca.cert, cert: pki.client.cert, key: pki.client.key, serverName: '127.0.0.1' },
      spoolDir: opts.spoolDir ?? join(work, `spool-${++spoolNo}`),
      spoolMaxBytes: opts.spoolMaxBytes ?? 1024 * 1024,
      appName: 'dimse-tls-proxy',
      hostname: 'gw1',
      procId: '4242',
      connectTimeoutMs: 3_000,
      reconnectMinMs: 50,
      reconnectMaxMs: 200,
      cursorSyncIntervalMs: 20,
      ...(opts.clock ? { clock: opts.clock } : {}),
    });
    cleanup.push(() => s.close(0));
    return s;
  }

  async function collector(cert: PemPair, ca: string, port?: number): Promise<Collector> {
    const c = await Collector.start({ cert, ca, ...(port !== undefined ? { port } : {}) });
    cleanup.push(() => c.close());
    return c;
  }

  test('(c) a collector requiring client certificates receives RFC 5424 audit messages over TLS', async () => {
    const c = await collector(pki.collector, pki.ca.cert);
    const s = sender(c.port);
    await s.start();
    const xml = checkAuditMessageXml();
    assert.equal(s.send(xml, { outcome: 0, time: new Date('2024-05-06T07:08:09.123Z') }), true);
    assert.equal(s.send(xml, { outcome: 8, time: new Date('2024-05-06T07:08:10.000Z') }), true);
    await c.waitFor(2);
    assert.deepEqual(c.peers, ['dimse-tls-proxy'], 'the collector authenticated the sender');
    assert.match(c.protocols[0] ?? '', /^TLSv1\.[23]$/);
    const first = c.frames[0] as Buffer;
    assert.equal(
      first.subarray(0, first.indexOf(0xef)).toString(),
      '<85>1 2024-05-06T07:08:09.123Z gw1 dimse-tls-proxy 4242 IHE+RFC-3881 - ',
    );
    assert.ok((c.frames[1] as Buffer).toString().startsWith('<84>1 '));
    checkAuditMessage(c.messages()[0] as string);
    assert.equal(await s.drained(5_000), true);
    assert.equal(s.stats().spoolBytes, 0);
    assert.equal(s.stats().delivered, 2);
    assert.equal(await s.close(1_000), true);
  });

  test('(c2) ledger checkpoints go to the collector as LEDGER_CHECKPOINT messages; verify --checkpoints reads them back', async () => {
    const c = await collector(pki.collector, pki.ca.cert);
    const s = sender(c.port);
    await s.start();
    const trail = new AuditTrail(config(), [s], { hostname: 'gw1', processId: '4242' });
    // A ledger whose checkpoints are witnessed through the trail, as the daemon wires it.
    const dir = join(work, 'witnessed-ledger');
    const keys = generateSigningKey();
    const w = await LedgerWriter.open(
      ledgerOptions(dir, {
        signingKeyPem: keys.privateKeyPem,
        onCheckpoint: (line) => assert.equal(trail.witnessCheckpoint(line), true),
      }),
    );
    for (let i = 0; i < 3; i++) {
      await w.append(ledgerEvidence(i));
      await w.checkpoint();
    }
    await w.close(); // the last record is a checkpoint: no second one
    await c.waitFor(3);
    const first = c.frames[0] as Buffer;
    assert.match(
      first.subarray(0, first.indexOf(0xef)).toString(),
      /^<85>1 \S+ gw1 dimse-tls-proxy 4242 LEDGER_CHECKPOINT - $/,
    );
    // The collector's store, one frame per line, is what `ledger verify --checkpoints` reads.
    const store = join(work, 'collected-checkpoints.log');
    await writeFile(store, c.frames.map((f) => `${f.toString('utf8')}\n`).join(''));
    const key = { key: loadPublicKey(keys.publicKeyPem), keyId: keyId(keys.publicKeyPem) };
    const report = await checkWitnessed(dir, store, { key });
    assert.deepEqual(
      [report.ok, report.witnessed, report.matched],
      [true, 3, 3],
      JSON.stringify(report.errors),
    );
    assert.equal(new AuditTrail(config(), [], {}).witnessCheckpoint('{}'), false, 'no syslog: not sent');
    assert.equal(await s.close(1_000), true);
  });

  test('(d) collector down: messages spool to disk, arrive in order when it comes back, and survive a restart', async () => {
    const port = await freePort();
    const dir = join(work, 'spool-restart');
    const s1 = sender(port, { spoolDir: dir });
    await s1.start();
    for (let i = 0; i < 5; i++) assert.equal(s1.send(xmlNo(i)), true);
    await s1.flush();
    assert.deepEqual(
      await spoolFrames(dir),
      [0, 1, 2, 3, 4].map((i) => xmlNo(i)),
      'on disk, in order',
    );
    assert.equal(s1.stats().delivered, 0);

    const c1 = await collector(pki.collector, pki.ca.cert, port);
    await c1.waitFor(5);
    assert.deepEqual(
      c1.messages(),
      [0, 1, 2, 3, 4].map((i) => xmlNo(i)),
    );
    assert.equal(await s1.drained(5_000), true);

    // The collector goes away; what is sent meanwhile stays in the spool across a restart of the sender.
    const gone = new Promise<void>((resolve) => s1.once('disconnected', () => resolve()));
    await c1.close();
    await gone;
    for (let i = 5; i < 8; i++) assert.equal(s1.send(xmlNo(i)), true);
    assert.equal(await s1.close(300), false, 'not delivered: the collector is down');
    assert.deepEqual(
      await spoolFrames(dir),
      [5, 6, 7].map((i) => xmlNo(i)),
    );

    const s2 = sender(port, { spoolDir: dir });
    await s2.start();
    assert.ok(s2.stats().spoolBytes > 0, 'the spool left by the previous run is pending');
    s2.send(xmlNo(8));
    const c2 = await collector(pki.collector, pki.ca.cert, port);
    await c2.waitFor(4);
    assert.deepEqual(
      c2.messages(),
      [5, 6, 7, 8].map((i) => xmlNo(i)),
      'old spool first, in order',
    );
    assert.equal(await s2.drained(5_000), true);
    assert.equal(await s2.close(1_000), true);
    assert.deepEqual(await spoolFrames(dir), []);
  });

  test('(d) a torn tail left by a crash is cut at the last whole message, with an alarm; the rest is sent', async () => {
    const dir = join(work, 'spool-torn');
    await mkdir(dir, { recursive: true });
    const frame = (xml: string) =>
      frameOctetCounting(
        formatSyslogMessage({ severity: 5, time: new Date(), hostname: 'gw1', appName: 'a', message: xml }),
      );
    const torn = frame(xmlNo(2)).subarray(0, 40);
    await writeFile(join(dir, '000000000001.spool'), Buffer.concat([frame(xmlNo(0)), frame(xmlNo(1)), torn]));
    const c = await collector(pki.collector, pki.ca.cert);
    const s = sender(c.port, { spoolDir: dir });
    const alarms: SpoolAlarm[] = [];
    s.on('alarm', (a) => alarms.push(a));
    await s.start();
    assert.deepEqual(
      alarms.map((a) => a.code),
      ['spool-repaired'],
    );
    assert.match(alarms[0]?.message ?? '', /40 trailing byte\(s\) removed/);
    await c.waitFor(2);
    assert.deepEqual(c.messages(), [xmlNo(0), xmlNo(1)]);
    assert.equal(await s.close(1_000), true);
  });

  test('(e) spool bound reached: the new message is refused with an alarm carrying it, nothing is dropped', async () => {
    const port = await freePort();
    const s = sender(port, { spoolMaxBytes: 4096 });
    const trail = new AuditTrail(config(), [s], { hostname: 'gw1', processId: '4242' });
    const alarms: SpoolAlarm[] = [];
    const trailAlarms: string[][] = [];
    s.on('alarm', (a) => alarms.push(a));
    trail.on('alarm', (a) => trailAlarms.push(a.refused));
    await s.start();
    let accepted = 0;
    for (let i = 0; i < 20; i++) {
      if (!s.send(xmlNo(i, 900))) break;
      accepted++;
    }
    assert.ok(accepted >= 3 && accepted < 20, `accepted ${accepted}`);
    assert.equal(alarms.length, 1);
    assert.equal(alarms[0]?.code, 'spool-full');
    assert.equal(alarms[0]?.refused, xmlNo(accepted, 900), 'the refused message is in the alarm');
    assert.deepEqual(trailAlarms, [[xmlNo(accepted, 900)]], 'and reaches the trail');
    assert.equal(s.stats().refused, 1);
    assert.equal(s.stats().full, true);
    assert.equal(trail.syslogSender, s, 'metrics reach the sender through the trail');
    await s.flush();
    const spooled = await spoolFrames((s as unknown as { opts: { spoolDir: string } }).opts.spoolDir);
    assert.deepEqual(
      spooled,
      Array.from({ length: accepted }, (_, i) => xmlNo(i, 900)),
      'the oldest messages are all kept',
    );

    const c = await collector(pki.collector, pki.ca.cert, port);
    await c.waitFor(accepted);
    assert.equal(await s.drained(5_000), true);
    const records: AuditRecord[] = [];
    trail.on('record', (r) => records.push(r));
    assert.equal(s.send(xmlNo(99)), true, 'accepted again once there is room');
    // The hole is put on record: Security Alert, Audit Recording Stopped (110133).
    const gap = records.find((r) => r.xml.includes('csd-code="110133"'));
    assert.ok(gap, 'an Audit Recording Stopped alert');
    const root = checkAuditMessage(gap.xml);
    assert.match(
      kid(kid(root, 'EventIdentification'), 'EventOutcomeDescription').text,
      /^1 audit message\(s\) refused/,
    );
    await c.waitFor(accepted + 2);
    assert.deepEqual(c.messages().slice(accepted), [gap.xml, xmlNo(99)], 'the gap alert first');
    await trail.close(1_000);
  });

  test('(f) a collector with a certificate from another CA gets nothing; the sender keeps spooling', async () => {
    const bad = await collector(pki.otherCollector, pki.ca.cert);
    const clock = new ManualClock();
    const s = sender(bad.port, { clock });
    const errors: string[] = [];
    const first = nextTransportError(s);
    await s.start();
    for (let i = 0; i < 3; i++) assert.equal(s.send(xmlNo(i)), true);
    await s.flush();
    errors.push(await first);
    // The next attempt waits for the reconnect backoff (reconnectMinMs 50 ms, jitter up to +20 %).
    const [backoff, ...others] = clock.dueIn();
    assert.ok(backoff !== undefined && backoff >= 40 && backoff <= 60, `timers due in ${clock.dueIn()} ms`);
    assert.deepEqual(others, [], 'the only timer armed is the reconnect');
    const second = nextTransportError(s);
    clock.advance(60);
    errors.push(await second);
    assert.ok(s.stats().failedConnects >= 2, 'repeated, failing attempts');
    assert.ok(
      errors.some((m) => /certificate|verify|issuer/i.test(m)),
      errors.join('; '),
    );
    assert.equal(bad.frames.length, 0);
    assert.equal(s.stats().delivered, 0);
    assert.equal(s.stats().connected, false);
    assert.equal(s.send(xmlNo(3)), true, 'still accepting');
    await s.flush();
    const dir = (s as unknown as { opts: { spoolDir: string } }).opts.spoolDir;
    assert.deepEqual(
      await spoolFrames(dir),
      [0, 1, 2, 3].map((i) => xmlNo(i)),
    );
  });

  test('(f) a collector with an RSA-1024 certificate gets nothing (weak key); RSA-2048 receives', async () => {
    const server = { commonName: 'audit.local', ipAddresses: ['127.0.0.1'], usage: 'server' as const };
    const weakCert = await issueCertificate(pki.ca, { ...server, keyType: 'rsa-1024' });
    // Only below OpenSSL's default security level can the collector serve a 1024-bit key.
    const weak = await Collector.start({ cert: weakCert, ca: pki.ca.cert, ciphers: 'DEFAULT:@SECLEVEL=0' });
    cleanup.push(() => weak.close());
    const s = sender(weak.port, { clock: new ManualClock() });
    const error = nextTransportError(s);
    await s.start();
    s.send(xmlNo(0));
    assert.match(await error, /key too weak|RSA 1024-bit/);
    assert.equal(weak.frames.length, 0);
    assert.equal(s.stats().delivered, 0);

    const strong = await collector(
      await issueCertificate(pki.ca, { ...server, keyType: 'rsa-2048' }),
      pki.ca.cert,
    );
    const twin = sender(strong.port);
    await twin.start();
    twin.send(xmlNo(1));
    await until(
      () => strong.frames.length === 1,
      () => JSON.stringify(twin.stats()),
    );
  });

  test('(f) twin: a collector that does not trust the client certificate gets nothing either', async () => {
    const strict = await collector(pki.collector, pki.otherCa.cert); // trusts only the other CA's clients
    const clock = new ManualClock();
    const s = sender(strict.port, { clock });
    let disconnected = false;
    s.on('disconnected', () => (disconnected = true));
    await s.start();
    for (let i = 0; i < 3; i++) s.send(xmlNo(i));
    await s.flush();
    // The collector's refusal ends the attempt while the settling time has not run out (the clock stands
    // still), so delivery never started on that session.
    await until(
      () => s.stats().failedConnects >= 1 || disconnected,
      () => JSON.stringify(s.stats()),
    );
    assert.equal(disconnected, false, 'the session was never taken as established');
    assert.equal(strict.frames.length, 0);
    assert.equal(s.stats().delivered, 0, 'nothing counted as delivered (TLS 1.3 settles before sending)');
    assert.equal(s.stats().connected, false);
    const dir = (s as unknown as { opts: { spoolDir: string } }).opts.spoolDir;
    assert.deepEqual(
      await spoolFrames(dir),
      [0, 1, 2].map((i) => xmlNo(i)),
    );
    // What is left armed is the reconnect alone: the settle timer went with the session.
    await until(
      () => clock.pending === 1,
      () => String(clock.dueIn()),
    );
    assert.ok((clock.dueIn()[0] ?? Infinity) < TLS13_SETTLE_MS, String(clock.dueIn()));
  });
});

function checkAuditMessageXml(): string {
  return applicationActivityMessage({ ...CTX, kind: 'start' });
}

// ----------------------------------------------------------------------------------------- config

function config(over: Partial<AuditConfig> = {}): AuditConfig {
  return {
    sourceId: 'dimse-tls-proxy@gw1',
    enterpriseSiteId: null,
    file: null,
    maxInstancesPerMessage: 500,
    patientNames: true,
    syslog: null,
    ...over,
  };
}

describe('audit configuration', () => {
  test('defaults, absolute paths, durations in ms', () => {
    assert.deepEqual(parseAuditConfig(undefined, '/etc/dimse', { hostname: 'gw1' }), config());
    const c = parseAuditConfig(
      {
        file: 'audit/audit.log',
        syslog: { host: 'audit.example.org', tls: { ca: 'ca.pem', cert: '/pki/c.pem', key: 'c.key' } },
      },
      '/etc/dimse',
      { hostname: 'gw1' },
    );
    assert.equal(c.file, '/etc/dimse/audit/audit.log');
    assert.deepEqual(c.syslog, {
      host: 'audit.example.org',
      port: 6514,
      tls: {
        ca: '/etc/dimse/ca.pem',
        cert: '/pki/c.pem',
        key: '/etc/dimse/c.key',
        serverName: 'audit.example.org',
        verifyHostname: true,
        profile: 'bcp195',
      },
      spoolDir: '/etc/dimse/var/audit-spool',
      spoolMaxBytes: 104_857_600,
      appName: 'dimse-tls-proxy',
      hostname: 'gw1',
      connectTimeoutMs: 10_000,
      reconnectMinMs: 1_000,
      reconnectMaxMs: 60_000,
      closeTimeoutMs: 5_000,
    });
  });

  test('strict: unknown keys, bad values and inconsistent backoff are errors with their paths', () => {
    const issues = (raw: unknown): string[] => {
      try {
        parseAuditConfig(raw, '/etc');
      } catch (err) {
        assert.ok(err instanceof ConfigError);
        return err.issues.map((i) => `${i.path}: ${i.message}`);
      }
      return assert.fail('expected a ConfigError');
    };
    assert.match(issues({ sourceID: 'x' }).join('\n'), /^audit: .*sourceID/);
    const tlsOk = { ca: 'a', cert: 'b', key: 'c' };
    assert.match(
      issues({ syslog: { host: 'h', tls: tlsOk, spoolMaxBytes: 10 } }).join(),
      /audit\.syslog\.spoolMaxBytes/,
    );
    assert.match(issues({ syslog: { host: 'h', tls: { ...tlsOk, pin: 1 } } }).join(), /audit\.syslog\.tls/);
    assert.match(issues({ syslog: { host: 'h', tls: tlsOk, appName: 'two words' } }).join(), /appName/);
    assert.match(
      issues({ syslog: { host: 'h', tls: tlsOk, reconnectMin: '10s', reconnectMax: '1s' } }).join(),
      /audit\.syslog\.reconnectMax: must be at least reconnectMin/,
    );
  });
});

// ----------------------------------------------------------------------------- (g) event mapping

class MemorySink implements AuditSink {
  readonly name = 'memory';
  readonly records: AuditRecord[] = [];
  write(record: AuditRecord): boolean {
    this.records.push(record);
    return true;
  }
  async close(): Promise<void> {}
}

function summary(id: string, instances: number, over: Partial<AssociationSummary> = {}): AssociationSummary {
  return {
    id,
    listener: 'forward',
    remoteAddress: '10.20.0.15',
    remotePort: 40000,
    callingAeTitle: 'CT_ROOM1',
    calledAeTitle: 'DICOM_PROXY',
    peer: 'CT_ROOM1',
    upstream: 'archive',
    upstreamAeTitle: 'PACS',
    outcome: 'released',
    reason: null,
    reject: null,
    startedAt: new Date().toISOString(),
    durationMs: 10,
    bytesFromModality: 1000,
    bytesFromArchive: 100,
    instances,
    operations: {},
    tls: { protocol: 'TLSv1.3', cipher: 'x', peerSubject: 'CN=pacs', peerFingerprint256: 'AA:BB' },
    ...over,
  };
}

describe('(g) AuditTrail.subscribe maps the core events end to end', { timeout: 30_000 }, () => {
  test('refusals, queries and transfers become PS3.15 messages; unsubscribe stops it', async (t) => {
    // The close grace period is a plain setTimeout in the trail: mocked timers move it here.
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const events = new ProxyEvents();
    const sink = new MemorySink();
    const trail = new AuditTrail(config({ maxInstancesPerMessage: 3 }), [sink], {
      hostname: 'gw1',
      processId: '4242',
      aeTitles: ['DICOM_PROXY'],
      target: (name, listener) =>
        listener === 'forward' && name === 'archive'
          ? { address: 'pacs.example.org', aeTitle: 'PACS' }
          : listener === 'return' && name === 'WS1'
            ? { address: '10.0.0.9', aeTitle: 'WS1' }
            : null,
      closeGraceMs: 50,
    });
    const off = trail.subscribe(events);
    const instance = (id: string, sop: string, uid: string, status: number | null) =>
      events.emit('instance', {
        id,
        direction: 'modality-to-archive',
        messageId: 1,
        sopClassUid: sop,
        sopInstanceUid: uid,
        transferSyntaxUid: '1.2.840.10008.1.2.1',
        bytes: 100,
        sha256: null,
        status,
        dataset: UNKNOWN_SUMMARY,
      });

    events.emit('association-refused', {
      id: 'r1',
      remoteAddress: '10.9.9.9',
      callingAeTitle: 'INTRUDER',
      calledAeTitle: 'DICOM_PROXY',
      refusal: 'unknown-calling-ae',
      reject: { result: 1, source: 1, reason: 3 },
      message: 'not configured',
      listener: 'forward',
    });
    events.emit('association-accepted', {
      id: 'a1',
      remoteAddress: '10.20.0.15',
      callingAeTitle: 'CT_ROOM1',
      calledAeTitle: 'DICOM_PROXY',
      upstream: 'archive',
      listener: 'forward',
      acceptedContexts: 2,
      refusedContexts: 0,
      tls: { protocol: 'TLSv1.3', cipher: 'x', peerSubject: 'CN=pacs', peerFingerprint256: 'AA:BB' },
    });
    events.emit('dimse-refused', {
      id: 'a1',
      callingAeTitle: 'CT_ROOM1',
      command: 'C-MOVE-RQ',
      reason: 'move destination EVIL is not allowed for CT_ROOM1',
      status: 0xa801,
      moveDestination: 'EVIL',
    });
    events.emit('dimse-completed', {
      id: 'a1',
      direction: 'modality-to-archive',
      command: 'C-FIND-RQ',
      sopClassUid: '1.2.840.10008.5.1.4.1.2.2.1',
      status: 0,
      statusClass: 'success',
      durationMs: 5,
    });
    events.emit('dimse-completed', {
      id: 'a1',
      direction: 'modality-to-archive',
      command: 'C-ECHO-RQ',
      sopClassUid: '1.2.840.10008.1.1',
      status: 0,
      statusClass: 'success',
      durationMs: 1,
    });
    instance('a1', CT, '1.2.3.1', 0);
    instance('a1', CT, '1.2.3.2', 0xb000);
    instance('a1', MR, '1.2.3.3', 0); // third success: maxInstancesPerMessage reached, emitted at once
    instance('a1', CT, '1.2.3.4', 0);
    instance('a1', MR, '1.2.3.5', 0xa700);
    events.emit('association-closed', summary('a1', 6));
    instance('a1', CT, '1.2.3.6', null); // trails the close (ledger digest): still counted
    events.emit('association-closed', summary('empty', 0));

    // The return listener: the archive calls in with its certificate, the proxy relays to WS1.
    events.emit('tls-client-rejected', {
      listener: 'return',
      remoteAddress: '10.6.6.6',
      remotePort: 40000,
      reason: 'client-certificate-untrusted',
      message: 'certificate verification failed: UNABLE_TO_GET_ISSUER_CERT',
      certificate: { subject: 'CN=rogue-pacs', issuer: 'CN=Rogue CA', fingerprint256: 'DE:AD' },
    });
    events.emit('association-refused', {
      id: 'r3',
      remoteAddress: '10.0.0.3',
      callingAeTitle: 'PACS',
      calledAeTitle: 'WS1',
      refusal: 'certificate-identity-mismatch',
      reject: { result: 1, source: 1, reason: 3 },
      message: 'certificate CN=rogue is not bound to PACS',
      listener: 'return',
      certificateSubject: 'CN=rogue',
    });
    const archiveTls = {
      protocol: 'TLSv1.3',
      cipher: 'x',
      peerSubject: 'CN=pacs',
      peerFingerprint256: 'AA:BB',
    };
    events.emit('association-accepted', {
      id: 'ret1',
      remoteAddress: '10.0.0.2',
      callingAeTitle: 'PACS',
      calledAeTitle: 'WS1',
      upstream: 'WS1',
      listener: 'return',
      acceptedContexts: 1,
      refusedContexts: 0,
      tls: archiveTls,
    });
    events.emit('instance', {
      id: 'ret1',
      direction: 'archive-to-destination',
      messageId: 7,
      sopClassUid: CT,
      sopInstanceUid: '1.2.3.9',
      transferSyntaxUid: '1.2.840.10008.1.2.1',
      bytes: 10,
      sha256: null,
      status: 0,
      dataset: UNKNOWN_SUMMARY,
    });
    events.emit(
      'association-closed',
      summary('ret1', 1, {
        listener: 'return',
        remoteAddress: '10.0.0.2',
        callingAeTitle: 'PACS',
        calledAeTitle: 'WS1',
        upstream: 'WS1',
        upstreamAeTitle: 'WS1',
        tls: archiveTls,
      }),
    );

    const byEvent = (id: string) => sink.records.filter((r) => r.eventId === id);
    assert.equal(byEvent('110104').length, 1, 'only the full message; the rest waits for the grace period');
    t.mock.timers.tick(49);
    assert.equal(byEvent('110104').length, 1, 'still within the grace period');
    t.mock.timers.tick(1);
    const alerts = byEvent('110113').map((r) => checkAuditMessage(r.xml));
    assert.equal(alerts.length, 4);
    assert.deepEqual(
      alerts.map((a) => [
        kids(kid(a, 'EventIdentification'), 'EventTypeCode').map(code)[0],
        kid(a, 'EventIdentification').attrs['EventOutcomeIndicator'],
      ]),
      [
        ['110126', '4'], // unknown calling AE title
        ['110132', '4'], // disallowed move destination
        ['110126', '8'], // TLS handshake refused on the return listener
        ['110126', '8'], // certificate not bound to the calling AE title
      ],
    );
    assert.match(
      kid(kid(alerts[2] as XNode, 'EventIdentification'), 'EventOutcomeDescription').text,
      /return listener.*10\.6\.6\.6:40000.*client-certificate-untrusted/,
    );
    const tlsPerformer = (kids(alerts[2] as XNode, 'ActiveParticipant') as XNode[])[1] as XNode;
    assert.equal(tlsPerformer.attrs['UserID'], '10.6.6.6:40000', 'not "unknown"');
    assert.match(tlsPerformer.attrs['UserName'] ?? '', /CN=rogue-pacs; issuer=CN=Rogue CA; SHA-256=DE:AD/);
    const mismatch = kid(alerts[3] as XNode, 'ParticipantObjectIdentification');
    assert.equal(mismatch.attrs['ParticipantObjectID'], '10.0.0.3');
    assert.ok(
      kids(mismatch, 'ParticipantObjectDetail').some(
        (d) => d.attrs['type'] === 'CertificateSubject' && b64(d.attrs['value']) === 'CN=rogue',
      ),
    );
    const moveAlert = alerts[1] as XNode;
    assert.match(
      kid(kid(moveAlert, 'EventIdentification'), 'EventOutcomeDescription').text,
      /C-MOVE-RQ.*EVIL/,
    );
    assert.equal(
      kid(moveAlert, 'ParticipantObjectIdentification').attrs['ParticipantObjectID'],
      '10.20.0.15',
      'the address is known from association-accepted',
    );

    const queries = byEvent('110112').map((r) => checkAuditMessage(r.xml));
    assert.equal(queries.length, 1, 'C-FIND only');
    const [issuer, responder] = kids(queries[0] as XNode, 'ActiveParticipant') as [XNode, XNode];
    assert.deepEqual(
      [issuer.attrs['UserID'], issuer.attrs['NetworkAccessPointID']],
      ['CT_ROOM1', '10.20.0.15'],
    );
    assert.deepEqual(
      [responder.attrs['UserID'], responder.attrs['NetworkAccessPointID']],
      ['PACS', 'pacs.example.org'],
    );
    // The query's SOP class (the information model) is the participant object (PS3.15 A.5.3.10).
    assert.match(queries[0] ? JSON.stringify(queries[0]) : '', /1\.2\.840\.10008\.5\.1\.4\.1\.2\.2\.1/);

    const transfers = byEvent('110104').map((r) => ({ record: r, root: checkAuditMessage(r.xml) }));
    const summaryOf = (root: XNode) =>
      sopClassObjectsOf(root).map((o) => {
        const sop = kid(kid(o, 'ParticipantObjectDescription'), 'SOPClass');
        return [
          sop.attrs['UID'],
          sop.attrs['NumberOfInstances'],
          kids(sop, 'Instance').map((i) => i.attrs['UID']),
        ];
      });
    assert.equal(transfers.length, 4);
    const returned = transfers.find((t) => t.record.xml.includes('1.2.3.9'));
    assert.ok(returned, 'the return-listener transfer');
    transfers.splice(transfers.indexOf(returned), 1);
    const [pacs, ws1] = kids(returned.root, 'ActiveParticipant') as [XNode, XNode];
    assert.deepEqual(
      [
        pacs.attrs['UserID'],
        pacs.attrs['NetworkAccessPointID'],
        pacs.attrs['UserIsRequestor'],
        pacs.attrs['UserName'],
      ],
      ['PACS', '10.0.0.2', 'true', 'CN=pacs; SHA-256=AA:BB'],
      'the archive sent, over its TLS session',
    );
    assert.deepEqual(kids(pacs, 'RoleIDCode').map(code), ['110153']);
    assert.deepEqual([ws1.attrs['UserID'], ws1.attrs['NetworkAccessPointID']], ['WS1', '10.0.0.9']);
    assert.deepEqual(kids(ws1, 'RoleIDCode').map(code), ['110152']);
    for (const t of [...transfers, returned]) {
      assert.equal(kid(t.root, 'EventIdentification').attrs['EventActionCode'], 'R');
      assert.deepEqual(roles(t.root), [['110153'], ['110152'], ['110150']]);
    }
    // 1: the first three successes (bound reached); 2: the remaining success; 3: the failures, apart.
    assert.deepEqual(summaryOf(transfers[0]!.root), [
      [CT, '2', ['1.2.3.1', '1.2.3.2']],
      [MR, '1', ['1.2.3.3']],
    ]);
    const rest = transfers.slice(1).sort((a, b) => a.record.outcome - b.record.outcome);
    assert.deepEqual(summaryOf(rest[0]!.root), [[CT, '1', ['1.2.3.4']]]);
    assert.equal(rest[1]!.record.outcome, 4);
    assert.deepEqual(summaryOf(rest[1]!.root), [
      [MR, '1', ['1.2.3.5']],
      [CT, '1', ['1.2.3.6']],
    ]);
    assert.match(
      kid(kid(rest[1]!.root, 'EventIdentification'), 'EventOutcomeDescription').text,
      /2 instance\(s\) not stored \(status 0xA700, no response\)/,
    );
    // The data sets named no patient (events without data set knowledge): the Patient object says unknown.
    for (const t of [...transfers, returned]) {
      assert.deepEqual(patientsOf(t.root), [['unknown', 'unknown']]);
    }
    const archive = kids(transfers[0]!.root, 'ActiveParticipant')[1] as XNode;
    assert.deepEqual(
      [archive.attrs['UserID'], archive.attrs['NetworkAccessPointID'], archive.attrs['UserName']],
      ['PACS', 'pacs.example.org', 'CN=pacs; SHA-256=AA:BB'],
    );

    off();
    const before = sink.records.length;
    events.emit('association-refused', {
      id: 'r2',
      remoteAddress: '10.9.9.9',
      callingAeTitle: 'X',
      calledAeTitle: 'Y',
      refusal: 'unknown-called-ae',
      reject: { result: 1, source: 1, reason: 7 },
      message: 'm',
      listener: 'forward',
    });
    assert.equal(sink.records.length, before, 'unsubscribed');

    trail.applicationStop();
    trail.certificateAeMismatch({
      remoteAddress: '10.0.0.7',
      callingAeTitle: 'CT_ROOM1',
      certificateIdentity: { subject: 'CN=other', fingerprint256: 'CC' },
    });
    trail.tlsAuthenticationFailure({
      remoteAddress: '10.0.0.8',
      reason: 'no certificate',
      listener: 'return',
    });
    trail.configurationChanged('peers changed');
    trail.beginTransferring({
      source: { aeTitle: 'PACS', address: '10.0.0.2', requestor: false },
      destination: { aeTitle: 'WS1', address: '10.0.0.9', requestor: true },
    });
    assert.deepEqual(
      sink.records.slice(before).map((r) => [r.eventId, r.outcome]),
      [
        ['110100', 0],
        ['110113', 8],
        ['110113', 8],
        ['110113', 0],
        ['110102', 0],
      ],
    );
    for (const r of sink.records) checkAuditMessage(r.xml);
    await trail.close(100);
  });

  test('an archive refused for its certificate: the Security Alert carries the certificate; a refusal that is not TLS authentication is not audited', async () => {
    const events = new ProxyEvents();
    const sink = new MemorySink();
    const trail = new AuditTrail(config(), [sink], {
      hostname: 'gw1',
      processId: '4242',
      aeTitles: ['DICOM_PROXY'],
      target: (name) => (name === 'archive' ? { address: 'pacs.example.org', aeTitle: 'PACS' } : null),
    });
    const off = trail.subscribe(events);
    events.emit('upstream-failed', {
      id: 'u1',
      upstream: 'archive',
      reason: 'weak-key',
      message: 'pacs.example.org:2762 (pacs.example.org): weak-key: RSA 1024-bit key',
      certificate: { subject: 'CN=pacs.example.org', issuer: 'CN=Hospital CA', fingerprint256: '01:02' },
    });
    events.emit('upstream-failed', {
      id: 'u2',
      upstream: 'archive',
      reason: 'refused',
      message: 'ECONNREFUSED',
    });
    off();
    const alerts = sink.records.filter((r) => r.eventId === '110113');
    assert.equal(alerts.length, 1, 'the refused connection is not a security event');
    const root = checkAuditMessage((alerts[0] as { xml: string }).xml);
    const object = kid(root, 'ParticipantObjectIdentification');
    assert.equal(object.attrs['ParticipantObjectID'], 'pacs.example.org');
    const details = Object.fromEntries(
      kids(object, 'ParticipantObjectDetail').map((d) => [d.attrs['type'], b64(d.attrs['value'])]),
    );
    assert.equal(details['CertificateSubject'], 'CN=pacs.example.org');
    assert.equal(details['CertificateIssuer'], 'CN=Hospital CA');
    assert.equal(details['CertificateSHA256'], '01:02');
    assert.match(details['Reason'] ?? '', /^weak-key: .*RSA 1024-bit/);
    await trail.close(100);
  });

  test('openAuditTrail with a file: one well-formed message per line', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'audit-file-'));
    try {
      const file = join(dir, 'sub', 'audit.log');
      const trail = await openAuditTrail(config({ file }), { hostname: 'gw1', processId: '4242' });
      trail.applicationStart();
      trail.configurationChanged({ description: 'line\nbreak', kind: 'software' });
      trail.applicationStop();
      await trail.close(1_000);
      const lines = (await readFile(file, 'utf8')).split('\n');
      assert.equal(lines.pop(), '', 'ends with a newline');
      assert.equal(lines.length, 3);
      for (const line of lines) checkAuditMessage(line);
      const sink = new FileAuditSink(file);
      await sink.start();
      assert.equal(sink.write({ xml: '<x>a\nb</x>' }), true);
      await sink.close();
      const all = (await readFile(file, 'utf8')).split('\n');
      assert.equal(all[3], '<x>a b</x>', 'a raw line break never splits a message');
      assert.equal(sink.write({ xml: '<late/>' }), false, 'refused once closed');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

// ---------------------------------------------------------------- Patient, Study and Query (A.5.3.3/7/10)

describe('(h) Patient and Study participant objects, ParticipantObjectQuery', { timeout: 30_000 }, () => {
  const STUDY_A = '1.2.826.0.1.3680043.2.1125.7.1';
  const STUDY_B = '1.2.826.0.1.3680043.2.1125.7.2';
  const STUDY_C = '1.2.826.0.1.3680043.2.1125.7.3';
  const patient = (id: string, name: string, study: string, accession: string | null = null) => ({
    ...UNKNOWN_SUMMARY,
    patientId: id,
    patientName: name,
    issuerOfPatientId: id === 'P1' ? 'HOSP' : null,
    studyInstanceUid: study,
    accessionNumber: accession,
  });

  function harness(over: Partial<AuditConfig> = {}) {
    const events = new ProxyEvents();
    const sink = new MemorySink();
    const trail = new AuditTrail(config(over), [sink], {
      hostname: 'gw1',
      processId: '4242',
      aeTitles: ['DICOM_PROXY'],
      target: () => ({ address: 'pacs.example.org', aeTitle: 'PACS' }),
      closeGraceMs: 0,
    });
    trail.subscribe(events);
    events.emit('association-accepted', {
      id: 'a1',
      remoteAddress: '10.20.0.15',
      callingAeTitle: 'CT_ROOM1',
      calledAeTitle: 'DICOM_PROXY',
      upstream: 'archive',
      listener: 'forward',
      acceptedContexts: 1,
      refusedContexts: 0,
      tls: { protocol: 'TLSv1.3', cipher: 'x', peerSubject: 'CN=pacs', peerFingerprint256: 'AA:BB' },
    });
    let n = 0;
    const store = (sop: string, dataset: typeof UNKNOWN_SUMMARY, status: number | null = 0) =>
      events.emit('instance', {
        id: 'a1',
        direction: 'modality-to-archive',
        messageId: ++n,
        sopClassUid: sop,
        sopInstanceUid: `1.2.3.${n}`,
        transferSyntaxUid: '1.2.840.10008.1.2.1',
        bytes: 100,
        sha256: null,
        status,
        dataset,
      });
    return { events, sink, trail, store };
  }

  test('Instances Transferred: one message per patient, a Study object per study with accessions and SOP classes', async () => {
    const { events, sink, trail, store } = harness();
    store(CT, patient('P1', 'Doe^Jane', STUDY_A, 'ACC1'));
    store(CT, patient('P2', 'Roe^Rick', STUDY_C));
    store(MR, patient('P1', 'Doe^Jane', STUDY_A, 'ACC1'));
    store(CT, patient('P1', 'Doe^Jane', STUDY_B, 'ACC2'));
    store(CT, { ...patient('P1', 'Doe^Jane', STUDY_A), studyInstanceUid: null }); // study not read
    events.emit('association-closed', summary('a1', 5));
    await trail.close();
    const messages = sink.records.filter((r) => r.eventId === '110104').map((r) => checkAuditMessage(r.xml));
    assert.equal(messages.length, 2, 'one message per patient (A.5.3.7: Patient 1)');
    const [p1, p2] = messages as [XNode, XNode];
    assert.deepEqual(patientsOf(p1), [['P1^^^HOSP', 'Doe^Jane']], 'ID in HL7 CX form with its issuer');
    assert.deepEqual(studiesOf(p1), [
      {
        uid: STUDY_A,
        accessions: ['ACC1'],
        sopClasses: [
          [CT, 1, ['1.2.3.1']],
          [MR, 1, ['1.2.3.3']],
        ],
      },
      { uid: STUDY_B, accessions: ['ACC2'], sopClasses: [[CT, 1, ['1.2.3.4']]] },
    ]);
    assert.deepEqual(
      sopClassObjectsOf(p1).map((o) => o.attrs['ParticipantObjectID']),
      [CT],
      'the instance whose study was not read is listed by SOP class',
    );
    // Element order: studies, then SOP classes, then the patient.
    assert.deepEqual(
      kids(p1, 'ParticipantObjectIdentification').map((o) => code(kid(o, 'ParticipantObjectIDTypeCode'))),
      ['110180', '110180', '110181', '2'],
    );
    assert.deepEqual(patientsOf(p2), [['P2', 'Roe^Rick']]);
    assert.deepEqual(
      studiesOf(p2).map((s) => s.uid),
      [STUDY_C],
    );
  });

  test('patientNames: false leaves the names out (the ID stands in the name element the schema asks for)', async () => {
    const { events, sink, trail, store } = harness({ patientNames: false });
    store(CT, patient('P2', 'Roe^Rick', STUDY_C));
    events.emit('association-closed', summary('a1', 1));
    await trail.close();
    const xml = sink.records.find((r) => r.eventId === '110104')?.xml ?? '';
    assert.deepEqual(patientsOf(checkAuditMessage(xml)), [['P2', 'P2']]);
    assert.ok(!xml.includes('Roe'), 'no name anywhere in the message');
  });

  test('failures and successes of one patient stay apart (A.5.2)', async () => {
    const { events, sink, trail, store } = harness();
    store(CT, patient('P1', 'Doe^Jane', STUDY_A));
    store(CT, patient('P1', 'Doe^Jane', STUDY_A), 0xa700);
    events.emit('association-closed', summary('a1', 2));
    await trail.close();
    const outcomes = sink.records.filter((r) => r.eventId === '110104').map((r) => r.outcome);
    assert.deepEqual(outcomes.sort(), [0, 4]);
  });

  test('Query carries the C-FIND identifier as ParticipantObjectQuery, with its transfer syntax', async () => {
    const { events, sink, trail } = harness();
    const identifier = Buffer.from('identifier bytes as relayed \u00e9', 'latin1');
    events.emit('dimse-completed', {
      id: 'a1',
      direction: 'modality-to-archive',
      command: 'C-FIND-RQ',
      sopClassUid: FIND_STUDY,
      status: 0,
      statusClass: 'success',
      durationMs: 3,
      query: {
        identifier: identifier.toString('base64'),
        transferSyntaxUid: '1.2.840.10008.1.2',
        truncated: true,
      },
    });
    await trail.close();
    const root = checkAuditMessage(sink.records.find((r) => r.eventId === '110112')?.xml ?? '');
    const object = kid(root, 'ParticipantObjectIdentification');
    assert.equal(object.attrs['ParticipantObjectID'], FIND_STUDY);
    assert.deepEqual(Buffer.from(kid(object, 'ParticipantObjectQuery').text, 'base64'), identifier);
    const details = Object.fromEntries(
      kids(object, 'ParticipantObjectDetail').map((d) => [d.attrs['type'], b64(d.attrs['value'])]),
    );
    assert.deepEqual(details, { TransferSyntax: '1.2.840.10008.1.2', QueryTruncated: 'true' });
  });

  test('Begin Transferring for a C-MOVE: archive to the move destination, with the Patient and Study it names', async () => {
    const { events, sink, trail } = harness();
    events.emit('retrieve-started', {
      id: 'a1',
      direction: 'modality-to-archive',
      command: 'C-MOVE',
      sopClassUid: '1.2.840.10008.5.1.4.1.2.2.2',
      moveDestination: 'WS1',
      dataset: patient('P1', 'Doe^Jane', STUDY_A, 'ACC1'),
    });
    events.emit('retrieve-started', {
      id: 'a1',
      direction: 'modality-to-archive',
      command: 'C-GET',
      sopClassUid: '1.2.840.10008.5.1.4.1.2.1.3',
      moveDestination: null,
      dataset: { ...UNKNOWN_SUMMARY, patientId: 'P2' }, // a patient-level retrieve: no study
    });
    await trail.close();
    const [move, get] = sink.records
      .filter((r) => r.eventId === '110102')
      .map((r) => checkAuditMessage(r.xml)) as [XNode, XNode];
    assert.equal(kid(move, 'EventIdentification').attrs['EventActionCode'], 'E');
    const [source, destination] = kids(move, 'ActiveParticipant') as [XNode, XNode];
    assert.equal(source.attrs['UserID'], 'PACS');
    assert.equal(destination.attrs['UserID'], 'WS1');
    assert.deepEqual(roles(move).slice(0, 2), [['110153'], ['110152']]);
    assert.deepEqual(studiesOf(move), [{ uid: STUDY_A, accessions: ['ACC1'], sopClasses: [] }]);
    assert.deepEqual(patientsOf(move), [['P1^^^HOSP', 'Doe^Jane']]);
    const [, getDestination] = kids(get, 'ActiveParticipant') as [XNode, XNode];
    assert.equal(getDestination.attrs['UserID'], 'CT_ROOM1', 'C-GET: the requestor receives');
    assert.deepEqual(studiesOf(get), []);
    assert.deepEqual(patientsOf(get), [['P2', 'P2']]);
  });
});
