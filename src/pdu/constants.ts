// DICOM Upper Layer protocol constants, PS3.8 clause 9.3.

/** Every PDU starts with PDU-type (1), reserved (1) and PDU-length (4, big endian). PS3.8 9.3.1 */
export const PDU_HEADER_LENGTH = 6;

/** PDU types. PS3.8 9.3.1 table 9-11 */
export const PduType = {
  AssociateRq: 0x01,
  AssociateAc: 0x02,
  AssociateRj: 0x03,
  PDataTf: 0x04,
  ReleaseRq: 0x05,
  ReleaseRp: 0x06,
  Abort: 0x07,
} as const;

/** Item and sub-item types of A-ASSOCIATE-RQ/AC. PS3.8 9.3.2, 9.3.3 and PS3.7 annex D.3.3 */
export const ItemType = {
  ApplicationContext: 0x10,
  PresentationContextRq: 0x20,
  PresentationContextAc: 0x21,
  AbstractSyntax: 0x30,
  TransferSyntax: 0x40,
  UserInformation: 0x50,
  MaxLength: 0x51,
  ImplementationClassUid: 0x52,
  AsyncOperationsWindow: 0x53,
  RoleSelection: 0x54,
  ImplementationVersionName: 0x55,
  ExtendedNegotiation: 0x56,
  CommonExtendedNegotiation: 0x57,
  UserIdentityRq: 0x58,
  UserIdentityAc: 0x59,
} as const;

/** A-ABORT source. PS3.8 9.3.8 table 9-26 (1 is reserved) */
export const AbortSource = { ServiceUser: 0, ServiceProvider: 2 } as const;

/** A-ABORT reason/diag when the source is the service provider. PS3.8 9.3.8 table 9-26 (3 is reserved) */
export const AbortReason = {
  NotSpecified: 0,
  UnrecognizedPdu: 1,
  UnexpectedPdu: 2,
  UnrecognizedPduParameter: 4,
  UnexpectedPduParameter: 5,
  InvalidPduParameterValue: 6,
} as const;

/** A-ASSOCIATE-RJ result. PS3.8 9.3.4 table 9-21 */
export const RejectResult = { Permanent: 1, Transient: 2 } as const;

/** A-ASSOCIATE-RJ source. PS3.8 9.3.4 table 9-21 */
export const RejectSource = {
  ServiceUser: 1,
  ServiceProviderAcse: 2,
  ServiceProviderPresentation: 3,
} as const;

/**
 * A-ASSOCIATE-RJ reason/diag. The meaning depends on the source, see PS3.8 9.3.4 table 9-21:
 * source 1 (service user): 1 NoReasonGiven, 2 ApplicationContextNotSupported, 3 CallingAeNotRecognized,
 * 7 CalledAeNotRecognized; source 2 (ACSE): 1 NoReasonGiven, 2 ProtocolVersionNotSupported;
 * source 3 (presentation): 1 TemporaryCongestion, 2 LocalLimitExceeded.
 */
export const RejectReason = {
  NoReasonGiven: 1,
  ApplicationContextNotSupported: 2,
  CallingAeNotRecognized: 3,
  CalledAeNotRecognized: 7,
  ProtocolVersionNotSupported: 2,
  TemporaryCongestion: 1,
  LocalLimitExceeded: 2,
} as const;

/** Presentation context item (A-ASSOCIATE-AC) result/reason. PS3.8 9.3.3.2 table 9-18 */
export const PresentationContextResult = {
  Acceptance: 0,
  UserRejection: 1,
  NoReason: 2,
  AbstractSyntaxNotSupported: 3,
  TransferSyntaxesNotSupported: 4,
} as const;

/** The DICOM application context name. PS3.7 annex A.2.1 */
export const DICOM_APPLICATION_CONTEXT = '1.2.840.10008.3.1.1.1';

/**
 * A-ASSOCIATE-RJ result / source / reason in words (PS3.8 9.3.4, Table 9-21), e.g. for 1/1/3
 * "rejected-permanent, DICOM UL service-user: calling-AE-title-not-recognized".
 */
export function describeAssociateReject(result: number, source: number, reason: number): string {
  const results: Record<number, string> = { 1: 'rejected-permanent', 2: 'rejected-transient' };
  const sources: Record<number, string> = {
    1: 'DICOM UL service-user',
    2: 'DICOM UL service-provider (ACSE related function)',
    3: 'DICOM UL service-provider (presentation related function)',
  };
  const reasons: Record<number, Record<number, string>> = {
    1: {
      1: 'no-reason-given',
      2: 'application-context-name-not-supported',
      3: 'calling-AE-title-not-recognized',
      7: 'called-AE-title-not-recognized',
    },
    2: { 1: 'no-reason-given', 2: 'protocol-version-not-supported' },
    3: { 1: 'temporary-congestion', 2: 'local-limit-exceeded' },
  };
  return (
    `${results[result] ?? `result ${result}`}, ${sources[source] ?? `source ${source}`}: ` +
    `${reasons[source]?.[reason] ?? `reason ${reason} (reserved)`}`
  );
}
