/**
 * Pure builders for DICOM audit messages (PS3.15 A.5, the format IHE ATNA's Record Audit Event [ITI-20]
 * carries). Each function returns one XML document as a single line of text: every value is escaped, line
 * breaks included, so a message is one line in a file and one syslog MSG.
 *
 * Element order follows the A.5.1 schema (RELAX NG, ordered sequences): AuditMessage = EventIdentification,
 * ActiveParticipant+, AuditSourceIdentification, ParticipantObjectIdentification*. Coded values use the
 * A.5.1 CodedValueType attributes csd-code, codeSystemName and originalText ("Code Meaning").
 *
 * What the proxy can say. It relays DIMSE messages, decodes command sets, and reads a bounded prefix of each
 * C-STORE data set and C-FIND / C-MOVE / C-GET identifier (src/dicom/prefix.ts) for the Patient and Study
 * it names, never pixel data. Hence (the README's audit conformance section lists every message):
 *  - DICOM Instances Transferred / Begin Transferring (A.5.3.7 / A.5.3.3): one message per patient
 *    (A.5.3.7: "Patient 1"), with one Study participant object per study (ID type (110180, DCM, "Study
 *    Instance UID"), Accession and SOPClass with NumberOfInstances and the SOP Instance UIDs in
 *    ParticipantObjectDescription) and the Patient object (ID type (2, RFC-3881, "Patient Number"), the ID
 *    in HL7 CX form, the name unless a site leaves names out). Instances whose data set did not name its
 *    study are listed under SOP Class objects (110181) as before; a patient that was not read is "unknown".
 *  - Query (A.5.3.10): the SOP Class queried, with ParticipantObjectQuery (the identifier as relayed,
 *    bounded) and its TransferSyntax detail.
 *  - The schema's choice "ParticipantObjectName | ParticipantObjectQuery" is always satisfied: when neither
 *    a query nor a name is given, ParticipantObjectName repeats the ID.
 */
import { isIP } from 'node:net';
import type { Refusal } from '../../vocabulary/outcomes.js';

/** EventOutcomeIndicator (PS3.15 A.5.1): 0 success, 4 minor, 8 serious, 12 major failure. */
export type EventOutcome = 0 | 4 | 8 | 12;

/** EventActionCode (PS3.15 A.5.1): Create, Read, Update, Delete, Execute. */
export type EventActionCode = 'C' | 'R' | 'U' | 'D' | 'E';

/** A.5.1 CodedValueType. */
export interface CodedValue {
  code: string;
  codeSystemName: string;
  originalText: string;
}

function dcm(code: string, originalText: string): CodedValue {
  return Object.freeze({ code, codeSystemName: 'DCM', originalText });
}

/** Audit Event IDs used here (PS3.16 CID 400). */
export const EVENT_ID = Object.freeze({
  applicationActivity: dcm('110100', 'Application Activity'),
  beginTransferring: dcm('110102', 'Begin Transferring DICOM Instances'),
  instancesTransferred: dcm('110104', 'DICOM Instances Transferred'),
  query: dcm('110112', 'Query'),
  securityAlert: dcm('110113', 'Security Alert'),
});

/** Event Type Codes: Application Activity (A.5.3.1) and Security Alert types (PS3.16 CID 403). */
export const EVENT_TYPE = Object.freeze({
  applicationStart: dcm('110120', 'Application Start'),
  applicationStop: dcm('110121', 'Application Stop'),
  nodeAuthentication: dcm('110126', 'Node Authentication'),
  emergencyOverrideStarted: dcm('110127', 'Emergency Override Started'),
  networkConfiguration: dcm('110128', 'Network Configuration'),
  securityConfiguration: dcm('110129', 'Security Configuration'),
  hardwareConfiguration: dcm('110130', 'Hardware Configuration'),
  softwareConfiguration: dcm('110131', 'Software Configuration'),
  useOfRestrictedFunction: dcm('110132', 'Use of Restricted Function'),
  auditRecordingStopped: dcm('110133', 'Audit Recording Stopped'),
  auditRecordingStarted: dcm('110134', 'Audit Recording Started'),
  objectSecurityAttributesChanged: dcm('110135', 'Object Security Attributes Changed'),
  securityRolesChanged: dcm('110136', 'Security Roles Changed'),
  userSecurityAttributesChanged: dcm('110137', 'User Security Attributes Changed'),
});

/** Active participant Role ID Codes (PS3.16 CID 402). */
export const ROLE_ID = Object.freeze({
  application: dcm('110150', 'Application'),
  applicationLauncher: dcm('110151', 'Application Launcher'),
  destination: dcm('110152', 'Destination Role ID'),
  source: dcm('110153', 'Source Role ID'),
});

/** Participant Object ID Type Codes (PS3.16 CID 404, and RFC 3881 value 12 as PS3.15 A.5.3.11 uses it). */
export const OBJECT_ID_TYPE = Object.freeze({
  studyInstanceUid: dcm('110180', 'Study Instance UID'),
  sopClassUid: dcm('110181', 'SOP Class UID'),
  nodeId: dcm('110182', 'Node ID'),
  patientNumber: Object.freeze({
    code: '2',
    codeSystemName: 'RFC-3881',
    originalText: 'Patient Number',
  }) as CodedValue,
  uri: Object.freeze({ code: '12', codeSystemName: 'RFC-3881', originalText: 'URI' }) as CodedValue,
});

/** NetworkAccessPointTypeCode (PS3.15 A.5.1): 1 machine name, 2 IP address, 5 URI. */
export type NetworkAccessPointType = 1 | 2 | 3 | 4 | 5;

export interface ActiveParticipant {
  /** A.5.2.1: for a process, an identifier of the internal logs; for a remote application, its AE title. */
  userId: string;
  /** A.5.2.2: for a DICOM application, "AETITLES=" followed by its AE titles separated by ";". */
  alternativeUserId?: string | null;
  userName?: string | null;
  userIsRequestor: boolean;
  networkAccessPointId?: string | null;
  networkAccessPointTypeCode?: NetworkAccessPointType | null;
  roleIdCodes?: readonly CodedValue[];
}

export interface AuditSourceInfo {
  /** AuditSourceID (mandatory). */
  sourceId: string;
  /** AuditEnterpriseSiteID (optional). */
  enterpriseSiteId?: string | null;
}

export interface ValuePair {
  type: string;
  /** Encoded as xs:base64Binary (A.5.1 ValuePair): strings as their UTF-8 bytes. */
  value: string | Uint8Array;
}

export interface SopClassEntry {
  uid: string;
  numberOfInstances: number;
  /** Instance UIDs listed (may be fewer than numberOfInstances). */
  instanceUids?: readonly string[];
}

export interface ParticipantObject {
  id: string;
  /** 1 person, 2 system object, 3 organization, 4 other. */
  typeCode?: 1 | 2 | 3 | 4;
  /** A.5.1.2.2 Participant Object Type Code Role (e.g. 3 report, 5 master file, 13 security resource). */
  typeCodeRole?: number;
  dataLifeCycle?: number;
  idTypeCode: CodedValue;
  name?: string | null;
  /** ParticipantObjectQuery (base64Binary); when given it replaces ParticipantObjectName (schema choice). */
  query?: Uint8Array | null;
  details?: readonly ValuePair[];
  /** Accession Numbers (ParticipantObjectDescription/Accession, before the SOP classes in the schema). */
  accessions?: readonly string[];
  sopClasses?: readonly SopClassEntry[];
}

export interface AuditMessageSpec {
  eventId: CodedValue;
  actionCode: EventActionCode;
  dateTime: Date;
  outcome: EventOutcome;
  eventTypeCodes?: readonly CodedValue[];
  outcomeDescription?: string | null;
  participants: readonly ActiveParticipant[];
  source: AuditSourceInfo;
  objects?: readonly ParticipantObject[];
}

// ------------------------------------------------------------------------------------------- XML

// XML 1.0 section 2.2 Char: C0 controls other than TAB, LF, CR, U+FFFE/U+FFFF and unpaired surrogates are
// not allowed, not even as character references: they are replaced by U+FFFD.
const INVALID_XML_CHARS =
  // eslint-disable-next-line no-control-regex -- the characters XML forbids are what this matches
  /[\u0000-\u0008\u000B\u000C\u000E-\u001F\uFFFE\uFFFF]|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;
// Markup characters, and every line break a line-oriented reader might split on (LF, CR, NEL, LS, PS), as
// references: a message stays on one line and attribute values keep their whitespace.
const ESCAPED = /[&<>"'\t\n\r\u0085\u2028\u2029]/g;
const ENTITY: Record<string, string> = {
  '&': '&amp;',
  '<': '&lt;',
  '>': '&gt;',
  '"': '&quot;',
  "'": '&apos;',
};

/** Escapes text for XML content or a double-quoted attribute value. */
export function escapeXml(value: string): string {
  return value
    .replace(INVALID_XML_CHARS, '\uFFFD')
    .replace(ESCAPED, (c) => ENTITY[c] ?? `&#x${(c.codePointAt(0) ?? 0).toString(16).toUpperCase()};`);
}

function attrs(pairs: readonly (readonly [string, string | number | boolean | null | undefined])[]): string {
  let out = '';
  for (const [name, value] of pairs) {
    if (value === null || value === undefined) continue;
    out += ` ${name}="${escapeXml(String(value))}"`;
  }
  return out;
}

function coded(element: string, c: CodedValue): string {
  return `<${element}${attrs([
    ['csd-code', c.code],
    ['codeSystemName', c.codeSystemName],
    ['originalText', c.originalText],
  ])}/>`;
}

function base64(value: string | Uint8Array): string {
  return (typeof value === 'string' ? Buffer.from(value, 'utf8') : Buffer.from(value)).toString('base64');
}

/** Builds one AuditMessage (PS3.15 A.5.1) from its parts. */
export function buildAuditMessage(spec: AuditMessageSpec): string {
  if (spec.participants.length === 0) throw new RangeError('an audit message needs an ActiveParticipant');
  let xml = '<AuditMessage>';
  xml += `<EventIdentification${attrs([
    ['EventActionCode', spec.actionCode],
    ['EventDateTime', spec.dateTime.toISOString()],
    ['EventOutcomeIndicator', spec.outcome],
  ])}>`;
  xml += coded('EventID', spec.eventId);
  for (const t of spec.eventTypeCodes ?? []) xml += coded('EventTypeCode', t);
  if (spec.outcomeDescription) {
    xml += `<EventOutcomeDescription>${escapeXml(spec.outcomeDescription)}</EventOutcomeDescription>`;
  }
  xml += '</EventIdentification>';

  for (const p of spec.participants) {
    const hasNap = p.networkAccessPointId !== null && p.networkAccessPointId !== undefined;
    xml += `<ActiveParticipant${attrs([
      ['UserID', p.userId],
      ['AlternativeUserID', p.alternativeUserId],
      ['UserName', p.userName],
      ['UserIsRequestor', p.userIsRequestor ? 'true' : 'false'],
      ['NetworkAccessPointID', p.networkAccessPointId],
      ['NetworkAccessPointTypeCode', hasNap ? p.networkAccessPointTypeCode : null],
    ])}`;
    const roles = p.roleIdCodes ?? [];
    if (roles.length === 0) xml += '/>';
    else xml += `>${roles.map((r) => coded('RoleIDCode', r)).join('')}</ActiveParticipant>`;
  }

  // AuditSourceTypeCode "4" = application server process tier (A.5.1.2.1): the schema accepts the isolated
  // enumerated digit, which is the form defined for it.
  xml += `<AuditSourceIdentification${attrs([
    ['AuditEnterpriseSiteID', spec.source.enterpriseSiteId],
    ['AuditSourceID', spec.source.sourceId],
  ])}><AuditSourceTypeCode csd-code="4"/></AuditSourceIdentification>`;

  for (const o of spec.objects ?? []) {
    xml += `<ParticipantObjectIdentification${attrs([
      ['ParticipantObjectID', o.id],
      ['ParticipantObjectTypeCode', o.typeCode],
      ['ParticipantObjectTypeCodeRole', o.typeCodeRole],
      ['ParticipantObjectDataLifeCycle', o.dataLifeCycle],
    ])}>`;
    xml += coded('ParticipantObjectIDTypeCode', o.idTypeCode);
    if (o.query) xml += `<ParticipantObjectQuery>${base64(o.query)}</ParticipantObjectQuery>`;
    else xml += `<ParticipantObjectName>${escapeXml(o.name ?? o.id)}</ParticipantObjectName>`;
    for (const d of o.details ?? []) {
      xml += `<ParticipantObjectDetail${attrs([
        ['type', d.type],
        ['value', base64(d.value)],
      ])}/>`;
    }
    const sopClasses = o.sopClasses ?? [];
    const accessions = o.accessions ?? [];
    if (sopClasses.length > 0 || accessions.length > 0) {
      xml += '<ParticipantObjectDescription>';
      for (const a of accessions) xml += `<Accession${attrs([['Number', a]])}/>`;
      for (const s of sopClasses) {
        const uids = s.instanceUids ?? [];
        const open = `<SOPClass${attrs([
          ['UID', s.uid],
          ['NumberOfInstances', s.numberOfInstances],
        ])}`;
        xml +=
          uids.length === 0
            ? `${open}/>`
            : `${open}>${uids.map((u) => `<Instance${attrs([['UID', u]])}/>`).join('')}</SOPClass>`;
      }
      xml += '</ParticipantObjectDescription>';
    }
    xml += '</ParticipantObjectIdentification>';
  }
  xml += '</AuditMessage>';
  return xml;
}

// ------------------------------------------------------------------------------------- participants

/** The certificate a TLS peer presented, as far as it is known. */
export interface CertificateIdentity {
  subject?: string | null;
  /** Subject alternative names, e.g. "DNS:archive.local", "IP Address:10.0.0.5". */
  san?: readonly string[] | null;
  /** SHA-256 fingerprint (hex, with or without colons). */
  fingerprint256?: string | null;
}

/** "subject; SAN=...; SHA-256=..." */
export function describeCertificate(cert: CertificateIdentity | null | undefined): string | null {
  if (!cert) return null;
  const parts: string[] = [];
  if (cert.subject) parts.push(cert.subject);
  if (cert.san && cert.san.length > 0) parts.push(`SAN=${cert.san.join(',')}`);
  if (cert.fingerprint256) parts.push(`SHA-256=${cert.fingerprint256}`);
  return parts.length > 0 ? parts.join('; ') : null;
}

/** A.5.2.2: "AETITLES=" followed by the AE titles, separated by ";". Null when there are none. */
export function aeTitlesAlternativeUserId(aeTitles: readonly (string | null | undefined)[]): string | null {
  const titles = aeTitles.filter((t): t is string => typeof t === 'string' && t.length > 0);
  return titles.length === 0 ? null : `AETITLES=${[...new Set(titles)].join(';')}`;
}

/** IPv4-mapped IPv6 addresses from dual-stack sockets are reported in their IPv4 form. */
export function normaliseAddress(address: string): string {
  const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  return m?.[1] ?? address;
}

/** NetworkAccessPointID / TypeCode for an address or host name (A.5.1: 2 = IP address, 1 = machine name). */
export function networkAccessPoint(
  address: string | null | undefined,
): Pick<ActiveParticipant, 'networkAccessPointId' | 'networkAccessPointTypeCode'> {
  if (!address) return {};
  const a = normaliseAddress(address);
  return { networkAccessPointId: a, networkAccessPointTypeCode: isIP(a) !== 0 ? 2 : 1 };
}

/** A remote DICOM application (modality, archive) as seen on an association. */
export interface NodeParticipant {
  aeTitle?: string | null;
  /** IP address (or host name) of the node. */
  address?: string | null;
  requestor: boolean;
  certificate?: CertificateIdentity | null;
}

/** The proxy process itself. */
export interface ProxyIdentity {
  /** A.5.2.1: the process identifier used in the local logs (the process ID). */
  processId: string;
  /** A.5.2.3: the process name. */
  name: string;
  /** Host name or address of the proxy (A.5.2.4: one, the same in every message). */
  host: string;
  /** AE titles the proxy answers to. */
  aeTitles: readonly string[];
}

/** Common context of the builders: when, who reports, and the proxy's identity. */
export interface MessageContext {
  time: Date;
  source: AuditSourceInfo;
  proxy: ProxyIdentity;
}

export function nodeParticipant(node: NodeParticipant, roles: readonly CodedValue[] = []): ActiveParticipant {
  const nap = networkAccessPoint(node.address);
  return {
    // UserID: the AE title when known (the identity DICOM nodes are configured by), else the address.
    userId: node.aeTitle || nap.networkAccessPointId || 'unknown',
    alternativeUserId: aeTitlesAlternativeUserId([node.aeTitle]),
    userName: describeCertificate(node.certificate),
    userIsRequestor: node.requestor,
    ...nap,
    roleIdCodes: roles,
  };
}

export function proxyParticipant(
  proxy: ProxyIdentity,
  opts: {
    requestor?: boolean;
    aeTitles?: readonly (string | null | undefined)[];
    roles?: readonly CodedValue[];
  } = {},
): ActiveParticipant {
  return {
    userId: proxy.processId,
    alternativeUserId: aeTitlesAlternativeUserId(opts.aeTitles ?? proxy.aeTitles),
    userName: proxy.name,
    userIsRequestor: opts.requestor ?? false,
    ...networkAccessPoint(proxy.host),
    roleIdCodes: opts.roles ?? [],
  };
}

// ------------------------------------------------------------------------- A.5.3.1 Application Activity

export interface ApplicationActivityInput extends MessageContext {
  kind: 'start' | 'stop';
  outcome?: EventOutcome;
  /** Person or process that started / stopped the application (0..N, role 110151). */
  launchers?: readonly { userId: string; userName?: string | null; requestor?: boolean }[];
}

/** PS3.15 A.5.3.1: EventID 110100, EventActionCode E, EventTypeCode 110120 / 110121, no participant objects. */
export function applicationActivityMessage(input: ApplicationActivityInput): string {
  const participants: ActiveParticipant[] = [
    proxyParticipant(input.proxy, { requestor: false, roles: [ROLE_ID.application] }),
  ];
  for (const l of input.launchers ?? []) {
    participants.push({
      userId: l.userId,
      userName: l.userName ?? null,
      userIsRequestor: l.requestor ?? true,
      roleIdCodes: [ROLE_ID.applicationLauncher],
    });
  }
  return buildAuditMessage({
    eventId: EVENT_ID.applicationActivity,
    actionCode: 'E',
    dateTime: input.time,
    outcome: input.outcome ?? 0,
    eventTypeCodes: [input.kind === 'start' ? EVENT_TYPE.applicationStart : EVENT_TYPE.applicationStop],
    participants,
    source: input.source,
  });
}

// ------------------------------------------------- A.5.3.3 Begin Transferring, A.5.3.7 Instances Transferred

/** A study the instances of a message belong to (A.5.3.7 Study participant object). */
export interface StudyEntry {
  studyInstanceUid: string;
  accessionNumbers?: readonly string[];
  sopClasses: readonly SopClassEntry[];
}

/** The patient of a message (A.5.3.7 Patient participant object); null fields were not read. */
export interface PatientEntry {
  id: string | null;
  issuer?: string | null;
  /** Patient's Name; left out (null) where the site's policy says so. */
  name?: string | null;
}

export interface TransferInput extends MessageContext {
  sender: NodeParticipant;
  receiver: NodeParticipant;
  /** AE titles the proxy used on this association (the called AE title the modality addressed). */
  proxyAeTitles?: readonly (string | null | undefined)[];
  /** Instances whose study is not known, by SOP Class (110181 participant objects). */
  sopClasses: readonly SopClassEntry[];
  /** The studies (110180 participant objects). */
  studies?: readonly StudyEntry[];
  /** The patient; absent: no Patient participant object (a message built without data set knowledge). */
  patient?: PatientEntry | null;
  outcome?: EventOutcome;
  outcomeDescription?: string | null;
}

function transferParticipants(input: TransferInput): ActiveParticipant[] {
  return [
    nodeParticipant(input.sender, [ROLE_ID.source]),
    nodeParticipant(input.receiver, [ROLE_ID.destination]),
    // "Other participants" (0..N): the relay the instances passed through.
    proxyParticipant(input.proxy, {
      requestor: false,
      aeTitles: input.proxyAeTitles ?? input.proxy.aeTitles,
      roles: [ROLE_ID.application],
    }),
  ];
}

/** One participant object per SOP Class: ID type (110181, DCM, "SOP Class UID"), 2 = system, 3 = report. */
export function sopClassObjects(sopClasses: readonly SopClassEntry[]): ParticipantObject[] {
  return sopClasses.map((s) => ({
    id: s.uid,
    typeCode: 2,
    typeCodeRole: 3,
    idTypeCode: OBJECT_ID_TYPE.sopClassUid,
    name: s.uid,
    sopClasses: [s],
  }));
}

/** Study participant objects: 2 system, 3 report, (110180, DCM, "Study Instance UID"). */
export function studyObjects(studies: readonly StudyEntry[]): ParticipantObject[] {
  return studies.map((s) => ({
    id: s.studyInstanceUid,
    typeCode: 2,
    typeCodeRole: 3,
    idTypeCode: OBJECT_ID_TYPE.studyInstanceUid,
    name: s.studyInstanceUid,
    accessions: s.accessionNumbers ?? [],
    sopClasses: s.sopClasses,
  }));
}

/** The patient ID in HL7 v2 CX form (ID^^^assigning authority: the Issuer of Patient ID); "unknown" if not read. */
export function patientObjectId(p: PatientEntry): string {
  const id = p.id ?? 'unknown';
  return p.issuer ? `${id}^^^${p.issuer}` : id;
}

/** The Patient participant object: 1 person, 1 patient, (2, RFC-3881, "Patient Number"). */
export function patientObject(p: PatientEntry): ParticipantObject {
  return {
    id: patientObjectId(p),
    typeCode: 1,
    typeCodeRole: 1,
    idTypeCode: OBJECT_ID_TYPE.patientNumber,
    name: p.name ?? null,
  };
}

/** Participant objects of a transfer message: studies, instances of unknown study, then the patient. */
function transferObjects(input: TransferInput): ParticipantObject[] {
  return [
    ...studyObjects(input.studies ?? []),
    ...sopClassObjects(input.sopClasses),
    ...(input.patient ? [patientObject(input.patient)] : []),
  ];
}

/** The two transfer messages differ only in EventID and EventActionCode. */
function transferMessage(eventId: CodedValue, actionCode: EventActionCode, input: TransferInput): string {
  return buildAuditMessage({
    eventId,
    actionCode,
    dateTime: input.time,
    outcome: input.outcome ?? 0,
    outcomeDescription: input.outcomeDescription ?? null,
    participants: transferParticipants(input),
    source: input.source,
    objects: transferObjects(input),
  });
}

/** PS3.15 A.5.3.3: EventID 110102, EventActionCode E. */
export function beginTransferringMessage(input: TransferInput): string {
  return transferMessage(EVENT_ID.beginTransferring, 'E', input);
}

/**
 * PS3.15 A.5.3.7: EventID 110104. EventActionCode is "R": "If the Audit Source is either not the receiver,
 * or otherwise does not know whether or not the instances previously were held by the receiving node, then
 * use R" — the proxy relays, it is neither sender nor receiver. EventDateTime: when the transfer completed.
 */
export function instancesTransferredMessage(input: TransferInput): string {
  return transferMessage(EVENT_ID.instancesTransferred, 'R', input);
}

// ------------------------------------------------------------------------------------ A.5.3.10 Query

export interface QueryInput extends MessageContext {
  requestor: NodeParticipant;
  responder: NodeParticipant;
  proxyAeTitles?: readonly (string | null | undefined)[];
  /** The SOP Class queried (C-FIND Affected SOP Class UID). */
  sopClassUid: string;
  /** The query data set (the C-FIND identifier as relayed, bounded). */
  queryDataset?: Uint8Array | null;
  /** Transfer syntax of the query data set. */
  transferSyntaxUid?: string | null;
  /** The identifier was longer than what is kept: ParticipantObjectQuery holds its first bytes. */
  queryTruncated?: boolean;
  outcome?: EventOutcome;
  outcomeDescription?: string | null;
}

/**
 * PS3.15 A.5.3.10: EventID 110112, EventActionCode E; issuing process role 110153 (Source), responding
 * process 110152 (Destination); participant object: SOP Class queried (2 system, 3 report,
 * (110181, DCM, "SOP Class UID")). ParticipantObjectQuery and its TransferSyntax detail only when supplied.
 */
export function queryMessage(input: QueryInput): string {
  const details: ValuePair[] = [];
  if (input.queryDataset && input.transferSyntaxUid) {
    details.push({ type: 'TransferSyntax', value: input.transferSyntaxUid });
  }
  if (input.queryDataset && input.queryTruncated) details.push({ type: 'QueryTruncated', value: 'true' });
  return buildAuditMessage({
    eventId: EVENT_ID.query,
    actionCode: 'E',
    dateTime: input.time,
    outcome: input.outcome ?? 0,
    outcomeDescription: input.outcomeDescription ?? null,
    participants: [
      nodeParticipant(input.requestor, [ROLE_ID.source]),
      nodeParticipant(input.responder, [ROLE_ID.destination]),
      proxyParticipant(input.proxy, {
        requestor: false,
        aeTitles: input.proxyAeTitles ?? input.proxy.aeTitles,
        roles: [ROLE_ID.application],
      }),
    ],
    source: input.source,
    objects: [
      {
        id: input.sopClassUid,
        typeCode: 2,
        typeCodeRole: 3,
        idTypeCode: OBJECT_ID_TYPE.sopClassUid,
        name: input.sopClassUid,
        query: input.queryDataset ?? null,
        details,
      },
    ],
  });
}

// ----------------------------------------------------------------------------- A.5.3.11 Security Alert

/** The subject of a Security Alert (participant object, 0..N). */
export interface AlertSubject {
  /** A node (IP address or node_name@domain_name) or a URI (of a file or other resource). */
  kind: 'node' | 'uri';
  id: string;
  name?: string | null;
  /** 5 = master file, 13 = security resource (A.5.3.11 defined terms). */
  typeCodeRole?: 5 | 13;
  /** Further details, after the mandatory "Alert Description". */
  details?: readonly ValuePair[];
}

export interface SecurityAlertInput extends MessageContext {
  types: readonly CodedValue[];
  outcome: EventOutcome;
  /** Free text "Alert Description" (A.5.3.11), also written as EventOutcomeDescription. */
  description: string;
  /** Performing persons or processes (0..N); UserIsRequestor is forced to false as A.5.3.11 requires. */
  performers?: readonly ActiveParticipant[];
  subjects: readonly AlertSubject[];
}

/**
 * PS3.15 A.5.3.11: EventID 110113, EventActionCode E, EventTypeCode from CID 403. The reporting process is
 * the proxy; each Alert Subject carries ParticipantObjectDetail type "Alert Description". Outcome: 0 = an
 * informative alert; 4 / 8 = a failure that mitigation handled (the proxy refused); 12 = mitigation may
 * not have been effective.
 */
export function securityAlertMessage(input: SecurityAlertInput): string {
  return buildAuditMessage({
    eventId: EVENT_ID.securityAlert,
    actionCode: 'E',
    dateTime: input.time,
    outcome: input.outcome,
    eventTypeCodes: input.types,
    outcomeDescription: input.description,
    participants: [
      proxyParticipant(input.proxy, { requestor: true, roles: [ROLE_ID.application] }),
      ...(input.performers ?? []).map((p) => ({ ...p, userIsRequestor: false })),
    ],
    source: input.source,
    objects: input.subjects.map((s) => ({
      id: s.kind === 'node' ? normaliseAddress(s.id) : s.id,
      typeCode: 2,
      typeCodeRole: s.typeCodeRole ?? 13,
      idTypeCode: s.kind === 'node' ? OBJECT_ID_TYPE.nodeId : OBJECT_ID_TYPE.uri,
      name: s.name ?? null,
      details: [{ type: 'Alert Description', value: input.description }, ...(s.details ?? [])],
    })),
  });
}

/**
 * The Security Alert type of each association refusal: a failed node authentication (the caller is not who
 * or where it must be, or the far side refused the proxy's own identity) or a use of a restricted function
 * (a known node asking for what it may not have). Exhaustive: a new refusal needs its alert type here.
 */
const REFUSAL_ALERT_TYPES = {
  'unknown-calling-ae': 'node-authentication',
  'address-not-allowed': 'node-authentication',
  'unknown-called-ae': 'restricted-function',
  'too-many-associations': 'restricted-function',
  'too-many-peer-associations': 'restricted-function',
  'no-client-certificate': 'node-authentication',
  'certificate-identity-mismatch': 'node-authentication',
  'unknown-destination': 'restricted-function',
  'protocol-version-not-supported': 'restricted-function',
  'application-context-not-supported': 'restricted-function',
  'no-valid-presentation-context': 'restricted-function',
  'no-permitted-presentation-context': 'restricted-function',
  'rejected-by-archive': 'node-authentication',
  'rejected-by-receiver': 'restricted-function',
} as const satisfies Record<Refusal, 'node-authentication' | 'restricted-function'>;

/** The Security Alert type for an association refusal ('association-refused' event `refusal`). */
export function alertTypeForRefusal(refusal: Refusal): CodedValue {
  return REFUSAL_ALERT_TYPES[refusal] === 'node-authentication'
    ? EVENT_TYPE.nodeAuthentication
    : EVENT_TYPE.useOfRestrictedFunction;
}

export interface AssociationRejectedInput extends MessageContext {
  remoteAddress: string;
  callingAeTitle: string;
  calledAeTitle: string;
  refusal: Refusal;
  reject: { result: number; source: number; reason: number };
  message: string;
  /** Which listener refused ("forward", "return"). */
  listener?: string | null;
  /** Subject of the certificate the caller presented (TLS listener). */
  certificateSubject?: string | null;
}

/** An A-ASSOCIATE-RJ sent to a node: Security Alert, outcome 4 (refused: mitigation effective). */
export function associationRejectedMessage(input: AssociationRejectedInput): string {
  const r = input.reject;
  const on = input.listener ? ` on the ${input.listener} listener` : '';
  const description =
    `association from ${input.callingAeTitle} to ${input.calledAeTitle}${on} rejected ` +
    `(${r.result}/${r.source}/${r.reason}, ${input.refusal}): ${input.message}`;
  const details: ValuePair[] = [
    { type: 'Refusal', value: input.refusal },
    { type: 'CalledAETitle', value: input.calledAeTitle },
  ];
  if (input.certificateSubject) details.push({ type: 'CertificateSubject', value: input.certificateSubject });
  return securityAlertMessage({
    ...input,
    types: [alertTypeForRefusal(input.refusal)],
    outcome: 4,
    description,
    performers: [
      nodeParticipant({
        aeTitle: input.callingAeTitle,
        address: input.remoteAddress,
        requestor: true,
        certificate: input.certificateSubject ? { subject: input.certificateSubject } : null,
      }),
    ],
    subjects: [{ kind: 'node', id: input.remoteAddress, name: input.callingAeTitle || null, details }],
  });
}

export interface DimseRefusedInput extends MessageContext {
  remoteAddress?: string | null;
  callingAeTitle: string;
  calledAeTitle?: string | null;
  /** DIMSE command, e.g. "C-MOVE-RQ". */
  command: string;
  reason: string;
  status: number;
  moveDestination?: string | null;
}

/**
 * A DIMSE request refused by policy (disallowed service, SOP class or move destination): Security Alert
 * (110132, "Use of Restricted Function"), outcome 4. The move destination is named in the description and
 * as a "MoveDestination" detail.
 */
export function dimseRefusedMessage(input: DimseRefusedInput): string {
  const status = `0x${input.status.toString(16).toUpperCase().padStart(4, '0')}`;
  const moveDest = input.moveDestination ? ` (move destination ${input.moveDestination})` : '';
  const description = `${input.command} from ${input.callingAeTitle}${moveDest} refused with status ${status}: ${input.reason}`;
  const details: ValuePair[] = [{ type: 'Command', value: input.command }];
  if (input.moveDestination) details.push({ type: 'MoveDestination', value: input.moveDestination });
  return securityAlertMessage({
    ...input,
    types: [EVENT_TYPE.useOfRestrictedFunction],
    outcome: 4,
    description,
    performers: [
      nodeParticipant({ aeTitle: input.callingAeTitle, address: input.remoteAddress, requestor: true }),
    ],
    subjects: [
      {
        kind: 'node',
        id: input.remoteAddress || input.callingAeTitle,
        name: input.callingAeTitle,
        details,
      },
    ],
  });
}

export interface CertificateAeMismatchInput extends MessageContext {
  remoteAddress: string;
  callingAeTitle: string;
  certificateIdentity: CertificateIdentity;
}

/** A calling AE title not bound to the certificate presented: Security Alert 110126, outcome 8. */
export function certificateAeMismatchMessage(input: CertificateAeMismatchInput): string {
  const cert = describeCertificate(input.certificateIdentity) ?? 'certificate without identity';
  const details: ValuePair[] = [{ type: 'CallingAETitle', value: input.callingAeTitle }];
  if (input.certificateIdentity.subject) {
    details.push({ type: 'CertificateSubject', value: input.certificateIdentity.subject });
  }
  if (input.certificateIdentity.san && input.certificateIdentity.san.length > 0) {
    details.push({ type: 'CertificateSubjectAltName', value: input.certificateIdentity.san.join(',') });
  }
  if (input.certificateIdentity.fingerprint256) {
    details.push({ type: 'CertificateSHA256', value: input.certificateIdentity.fingerprint256 });
  }
  return securityAlertMessage({
    ...input,
    types: [EVENT_TYPE.nodeAuthentication],
    outcome: 8,
    description: `calling AE title ${input.callingAeTitle} is not bound to the certificate presented (${cert})`,
    performers: [
      nodeParticipant({
        aeTitle: input.callingAeTitle,
        address: input.remoteAddress,
        requestor: true,
        certificate: input.certificateIdentity,
      }),
    ],
    subjects: [{ kind: 'node', id: input.remoteAddress, name: input.callingAeTitle, details }],
  });
}

/** The certificate a refused TLS peer presented. */
export interface PresentedCertificateIdentity {
  subject: string;
  issuer: string;
  fingerprint256: string;
}

export interface TlsAuthenticationFailureInput extends MessageContext {
  remoteAddress: string;
  /** The peer's source port, when known. */
  remotePort?: number | null;
  reason: string;
  /** The certificate the peer presented, when it presented one. */
  certificate?: PresentedCertificateIdentity | null;
  /** Which endpoint saw the failure, e.g. "return listener" or "upstream archive". */
  listener: string;
  /** When the failing party was the proxy's own outbound connection (upstream archive). */
  outbound?: boolean;
}

/**
 * A failed TLS node authentication — the A.5.3.11 example "a node authentication failure when establishing a
 * secure communications channel": Security Alert 110126, outcome 8.
 */
export function tlsAuthenticationFailureMessage(input: TlsAuthenticationFailureInput): string {
  const address = normaliseAddress(input.remoteAddress);
  const port = input.remotePort ? input.remotePort : null;
  // address:port, an IPv6 address in brackets (RFC 3986 authority form).
  const endpoint = port === null ? address : `${address.includes(':') ? `[${address}]` : address}:${port}`;
  const description = `TLS node authentication failed (${input.listener}) with ${endpoint || 'an unknown peer'}: ${input.reason}`;
  const cert = input.certificate ?? null;
  const details: ValuePair[] = [
    { type: 'Endpoint', value: input.listener },
    { type: 'Reason', value: input.reason },
  ];
  if (port !== null) details.push({ type: 'SourcePort', value: String(port) });
  if (cert) {
    details.push({ type: 'CertificateSubject', value: cert.subject });
    details.push({ type: 'CertificateIssuer', value: cert.issuer });
    details.push({ type: 'CertificateSHA256', value: cert.fingerprint256 });
  }
  const performer: ActiveParticipant = {
    ...nodeParticipant({ address: input.remoteAddress, requestor: true }),
    // The peer is known by its network endpoint (it has no AE title yet) and the certificate it presented.
    ...(endpoint ? { userId: endpoint } : {}),
    userName: cert ? `${cert.subject}; issuer=${cert.issuer}; SHA-256=${cert.fingerprint256}` : null,
  };
  return securityAlertMessage({
    ...input,
    types: [EVENT_TYPE.nodeAuthentication],
    outcome: 8,
    description,
    performers: input.outbound ? [] : [performer],
    subjects: [{ kind: 'node', id: input.remoteAddress || 'unknown', details }],
  });
}

export type ConfigurationChangeKind = 'network' | 'security' | 'software';

export interface ConfigurationChangeInput extends MessageContext {
  kind?: ConfigurationChangeKind;
  description: string;
  /** The configuration file (written as a file: URI subject); absent: the proxy node is the subject. */
  file?: string | null;
  /** Who changed it (person or process), when known. */
  changedBy?: string | null;
  /**
   * 0 (default): the change was made. A change that failed: 4 when it was refused before anything changed
   * (the running configuration stays in force), 8 when it could not be installed.
   */
  outcome?: 0 | 4 | 8;
}

const CONFIG_TYPES: Record<ConfigurationChangeKind, CodedValue> = {
  network: EVENT_TYPE.networkConfiguration,
  security: EVENT_TYPE.securityConfiguration,
  software: EVENT_TYPE.softwareConfiguration,
};

/**
 * A configuration change: Security Alert 110128 / 110129 / 110131, outcome 0 (informative), or 4 / 8 for a
 * change that failed (A.5.3.11: a failure the mitigation handled).
 */
export function configurationChangeMessage(input: ConfigurationChangeInput): string {
  const subject: AlertSubject = input.file
    ? { kind: 'uri', id: fileUri(input.file), typeCodeRole: 5, name: input.file }
    : { kind: 'node', id: input.proxy.host, typeCodeRole: 5 };
  return securityAlertMessage({
    ...input,
    types: [CONFIG_TYPES[input.kind ?? 'security']],
    outcome: input.outcome ?? 0,
    description: input.description,
    performers: input.changedBy ? [{ userId: input.changedBy, userIsRequestor: false }] : [],
    subjects: [subject],
  });
}

export interface AuditRecordingGapInput extends MessageContext {
  refused: number;
  since: Date;
  until: Date;
  reason: string;
}

/**
 * Audit messages were refused (spool full): Security Alert 110133 "Audit Recording Stopped", outcome 8,
 * sent once recording works again, so that the hole in the trail is itself on record.
 */
export function auditRecordingGapMessage(input: AuditRecordingGapInput): string {
  return securityAlertMessage({
    ...input,
    types: [EVENT_TYPE.auditRecordingStopped],
    outcome: 8,
    description:
      `${input.refused} audit message(s) refused between ${input.since.toISOString()} and ` +
      `${input.until.toISOString()}: ${input.reason}`,
    subjects: [{ kind: 'node', id: input.proxy.host }],
  });
}

function fileUri(path: string): string {
  return 'file://' + encodeURI(path.replace(/\\/g, '/')).replace(/[?#]/g, encodeURIComponent);
}
