import type { ServiceName } from '../config/types.js';
import { stripWirePadding } from '../config/syntax.js';

/**
 * Which abstract syntaxes (SOP Class UIDs) each configurable service covers, and which DIMSE request
 * commands a peer granted that service may send on them.
 *
 * UIDs are from DICOM PS3.6 Annex A (Table A-1, Registry of DICOM Unique Identifiers); the service classes
 * and their SOP classes from PS3.4. Retired SOP classes are kept where old modalities still send them.
 */

/** Command Field (0000,0100) values of the request commands, PS3.7 Annex E (Table E.1-1). */
export const DimseRequest = {
  CStore: 0x0001,
  CGet: 0x0010,
  CFind: 0x0020,
  CMove: 0x0021,
  CEcho: 0x0030,
  NEventReport: 0x0100,
  NGet: 0x0110,
  NSet: 0x0120,
  NAction: 0x0130,
  NCreate: 0x0140,
  NDelete: 0x0150,
  CCancel: 0x0fff,
} as const;

/** Responses have bit 15 of the Command Field set (e.g. C-STORE-RSP 0x8001), PS3.7 E.1. */
export function isResponseCommand(commandField: number): boolean {
  return (commandField & 0x8000) !== 0;
}

/** Verification SOP Class, PS3.4 Annex A. */
export const VERIFICATION_SOP_CLASS = '1.2.840.10008.1.1';

/**
 * The Storage SOP Classes of PS3.4 Annex B (Table B.5-1) are, with the exceptions below, allocated under
 * this arc (PS3.6 Table A-1: CT Image Storage 1.2.840.10008.5.1.4.1.1.2, ...).
 */
export const STORAGE_SOP_CLASS_ARC = '1.2.840.10008.5.1.4.1.1.';

/** SOP classes under the storage arc that are NOT storage (they are query/retrieve or management classes). */
const NON_STORAGE_UNDER_STORAGE_ARC: ReadonlySet<string> = new Set([
  '1.2.840.10008.5.1.4.1.1.200.4', // Protocol Approval Information Model - FIND
  '1.2.840.10008.5.1.4.1.1.200.5', // Protocol Approval Information Model - MOVE
  '1.2.840.10008.5.1.4.1.1.200.6', // Protocol Approval Information Model - GET
  '1.2.840.10008.5.1.4.1.1.201.2', // Inventory - FIND
  '1.2.840.10008.5.1.4.1.1.201.3', // Inventory - MOVE
  '1.2.840.10008.5.1.4.1.1.201.4', // Inventory - GET
  '1.2.840.10008.5.1.4.1.1.201.5', // Inventory Creation (Storage Management, N-ACTION based)
  '1.2.840.10008.5.1.4.1.1.201.6', // Repository Query
  '1.2.840.10008.5.1.4.1.1.201.1.1', // Storage Management SOP Instance (a well-known instance, not a class)
]);

/**
 * Storage SOP classes allocated outside the storage arc (PS3.6 Table A-1). The non-patient objects belong to the
 * Non-Patient Object Storage Service Class (PS3.4 Annex GG), also transferred with C-STORE.
 */
const STORAGE_OUTSIDE_ARC: ReadonlySet<string> = new Set([
  '1.2.840.10008.5.1.4.38.1', // Hanging Protocol Storage (Annex GG)
  '1.2.840.10008.5.1.4.39.1', // Color Palette Storage (Annex GG)
  '1.2.840.10008.5.1.4.43.1', // Generic Implant Template Storage (Annex GG)
  '1.2.840.10008.5.1.4.44.1', // Implant Assembly Template Storage (Annex GG)
  '1.2.840.10008.5.1.4.45.1', // Implant Template Group Storage (Annex GG)
  '1.2.840.10008.5.1.4.34.7', // RT Beams Delivery Instruction Storage (Annex B)
  '1.2.840.10008.5.1.4.34.10', // RT Brachy Application Setup Delivery Instruction Storage (Annex B)
  '1.2.840.10008.5.1.4.34.1', // RT Beams Delivery Instruction Storage - Trial (retired)
  '1.2.840.10008.5.1.1.27', // Stored Print Storage (retired)
  '1.2.840.10008.5.1.1.29', // Hardcopy Grayscale Image Storage (retired)
  '1.2.840.10008.5.1.1.30', // Hardcopy Color Image Storage (retired)
]);

/** True when `uid` (wire padding allowed) is a Storage SOP Class (PS3.4 Annex B or GG, sent with C-STORE). */
export function isStorageSopClass(uid: string): boolean {
  const bare = stripWirePadding(uid);
  if (STORAGE_OUTSIDE_ARC.has(bare)) return true;
  return (
    bare.startsWith(STORAGE_SOP_CLASS_ARC) &&
    bare.length > STORAGE_SOP_CLASS_ARC.length &&
    !NON_STORAGE_UNDER_STORAGE_ARC.has(bare)
  );
}

/** Abstract syntaxes of each service other than 'store' (which is the isStorageSopClass() predicate). */
const SERVICE_SOP_CLASSES: Readonly<Record<Exclude<ServiceName, 'store'>, ReadonlySet<string>>> = {
  // PS3.4 Annex A, Verification Service Class.
  echo: new Set([VERIFICATION_SOP_CLASS]),

  // PS3.4 Annex C (Query/Retrieve) and the C-FIND information models of the non-patient object query/retrieve
  // service classes. Composite Instance Root Retrieve and Composite Instance Retrieve Without Bulk Data have
  // no FIND model (MOVE/GET only).
  find: new Set([
    '1.2.840.10008.5.1.4.1.2.1.1', // Patient Root Query/Retrieve Information Model - FIND
    '1.2.840.10008.5.1.4.1.2.2.1', // Study Root Query/Retrieve Information Model - FIND
    '1.2.840.10008.5.1.4.1.2.3.1', // Patient/Study Only Query/Retrieve Information Model - FIND (retired)
    '1.2.840.10008.5.1.4.38.2', // Hanging Protocol Information Model - FIND
    '1.2.840.10008.5.1.4.39.2', // Color Palette Query/Retrieve Information Model - FIND
    '1.2.840.10008.5.1.4.43.2', // Generic Implant Template Information Model - FIND
    '1.2.840.10008.5.1.4.44.2', // Implant Assembly Template Information Model - FIND
    '1.2.840.10008.5.1.4.45.2', // Implant Template Group Information Model - FIND
    '1.2.840.10008.5.1.4.20.1', // Defined Procedure Protocol Information Model - FIND
    '1.2.840.10008.5.1.4.1.1.200.4', // Protocol Approval Information Model - FIND
    '1.2.840.10008.5.1.4.1.1.201.2', // Inventory - FIND
  ]),

  // C-MOVE information models (PS3.4 Annex C and the non-patient object query/retrieve service classes).
  move: new Set([
    '1.2.840.10008.5.1.4.1.2.1.2', // Patient Root Query/Retrieve Information Model - MOVE
    '1.2.840.10008.5.1.4.1.2.2.2', // Study Root Query/Retrieve Information Model - MOVE
    '1.2.840.10008.5.1.4.1.2.3.2', // Patient/Study Only Query/Retrieve Information Model - MOVE (retired)
    '1.2.840.10008.5.1.4.1.2.4.2', // Composite Instance Root Retrieve - MOVE
    '1.2.840.10008.5.1.4.38.3', // Hanging Protocol Information Model - MOVE
    '1.2.840.10008.5.1.4.39.3', // Color Palette Query/Retrieve Information Model - MOVE
    '1.2.840.10008.5.1.4.43.3', // Generic Implant Template Information Model - MOVE
    '1.2.840.10008.5.1.4.44.3', // Implant Assembly Template Information Model - MOVE
    '1.2.840.10008.5.1.4.45.3', // Implant Template Group Information Model - MOVE
    '1.2.840.10008.5.1.4.20.2', // Defined Procedure Protocol Information Model - MOVE
    '1.2.840.10008.5.1.4.1.1.200.5', // Protocol Approval Information Model - MOVE
    '1.2.840.10008.5.1.4.1.1.201.3', // Inventory - MOVE
  ]),

  // C-GET information models. The instances come back as C-STORE sub-operations on storage contexts the peer
  // proposed with the SCP role by SCP/SCU Role Selection (PS3.4 C.4.3, PS3.7 D.3.3.4).
  get: new Set([
    '1.2.840.10008.5.1.4.1.2.1.3', // Patient Root Query/Retrieve Information Model - GET
    '1.2.840.10008.5.1.4.1.2.2.3', // Study Root Query/Retrieve Information Model - GET
    '1.2.840.10008.5.1.4.1.2.3.3', // Patient/Study Only Query/Retrieve Information Model - GET (retired)
    '1.2.840.10008.5.1.4.1.2.4.3', // Composite Instance Root Retrieve - GET
    '1.2.840.10008.5.1.4.1.2.5.3', // Composite Instance Retrieve Without Bulk Data - GET
    '1.2.840.10008.5.1.4.38.4', // Hanging Protocol Information Model - GET
    '1.2.840.10008.5.1.4.39.4', // Color Palette Query/Retrieve Information Model - GET
    '1.2.840.10008.5.1.4.43.4', // Generic Implant Template Information Model - GET
    '1.2.840.10008.5.1.4.44.4', // Implant Assembly Template Information Model - GET
    '1.2.840.10008.5.1.4.45.4', // Implant Template Group Information Model - GET
    '1.2.840.10008.5.1.4.20.3', // Defined Procedure Protocol Information Model - GET
    '1.2.840.10008.5.1.4.1.1.200.6', // Protocol Approval Information Model - GET
    '1.2.840.10008.5.1.4.1.1.201.4', // Inventory - GET
  ]),

  // PS3.4 Annex K, Basic Worklist Management Service.
  worklist: new Set([
    '1.2.840.10008.5.1.4.31', // Modality Worklist Information Model - FIND
  ]),

  // PS3.4 Annex F, Modality Performed Procedure Step SOP Class (N-CREATE / N-SET).
  mpps: new Set([
    '1.2.840.10008.3.1.2.3.3', // Modality Performed Procedure Step SOP Class
  ]),

  // PS3.4 Annex J, Storage Commitment Push Model (N-ACTION, answered by N-EVENT-REPORT).
  commitment: new Set([
    '1.2.840.10008.1.20.1', // Storage Commitment Push Model SOP Class
  ]),
};

/** Request commands a peer granted the service may send (PS3.7 Chapters 9 and 10). */
export const SERVICE_REQUESTS: Readonly<Record<ServiceName, ReadonlySet<number>>> = {
  echo: new Set([DimseRequest.CEcho]),
  store: new Set([DimseRequest.CStore]),
  find: new Set([DimseRequest.CFind, DimseRequest.CCancel]),
  move: new Set([DimseRequest.CMove, DimseRequest.CCancel]),
  get: new Set([DimseRequest.CGet, DimseRequest.CCancel]),
  worklist: new Set([DimseRequest.CFind, DimseRequest.CCancel]),
  mpps: new Set([DimseRequest.NCreate, DimseRequest.NSet]),
  commitment: new Set([DimseRequest.NAction]),
};

/**
 * The same services seen from the archive calling back through the return listener: there the archive is
 * the requestor of what it sends back. Storage commitment comes back as N-EVENT-REPORT (PS3.4 J.3.3),
 * never N-ACTION; C-STOREs are C-MOVE sub-operations.
 */
export const CALLER_SERVICE_REQUESTS: Readonly<Record<ServiceName, ReadonlySet<number>>> = {
  ...SERVICE_REQUESTS,
  commitment: new Set([DimseRequest.NEventReport]),
};

/** Services whose SOP classes include `uid` (wire padding allowed); [] for unknown or private classes. */
export function servicesForAbstractSyntax(uid: string): ServiceName[] {
  const bare = stripWirePadding(uid);
  const services: ServiceName[] = [];
  if (isStorageSopClass(bare)) services.push('store');
  for (const [service, uids] of Object.entries(SERVICE_SOP_CLASSES) as [ServiceName, ReadonlySet<string>][]) {
    if (uids.has(bare)) services.push(service);
  }
  return services;
}

/** The non-storage SOP classes a service covers (storage is the isStorageSopClass() predicate). */
export function sopClassesForService(service: Exclude<ServiceName, 'store'>): ReadonlySet<string> {
  return SERVICE_SOP_CLASSES[service];
}
