// Decoded PDUs, PS3.8 9.3. Buffers in decoded PDUs are views into the decoded raw PDU (no copy).
//
// Round trip design (encodePdu(decodePdu(x)) is byte-identical to x):
// - UIDs and other text fields are kept exactly as on the wire (latin1), so a trailing NUL or space pad
//   stays in the string; compare UIDs with uidText() and AE titles with aeTitleText().
// - Items and user-information sub-items are kept in wire order; unrecognized ones as { kind: 'unknown' }.
// - The 32 reserved bytes of A-ASSOCIATE-RQ/AC are kept in `reserved`. The other, one or two byte
//   reserved fields ("sent as 00H, not tested when received") are accepted with any value and encoded
//   as 00H, so the law holds for PDUs whose small reserved fields are zero, as every sender must send them.

export interface PresentationContextRq {
  id: number;
  abstractSyntax: string;
  transferSyntaxes: string[];
}

export interface PresentationContextAc {
  id: number;
  result: number;
  /** '' when the transfer syntax sub-item is absent (some SCPs omit it in rejected contexts). */
  transferSyntax: string;
  /**
   * Set (only) when a rejected context carried a transfer syntax sub-item with a zero-length value,
   * which other SCPs send; it tells encodePdu to write that empty sub-item instead of omitting it.
   */
  emptyTransferSyntaxItem?: true;
}

export type UserInfoSubItem =
  | { kind: 'max-length'; maxLength: number }
  | { kind: 'implementation-class-uid'; uid: string }
  | { kind: 'async-operations-window'; invoked: number; performed: number }
  | { kind: 'role-selection'; sopClassUid: string; scuRole: number; scpRole: number }
  | { kind: 'implementation-version-name'; name: string }
  | { kind: 'extended-negotiation'; sopClassUid: string; info: Buffer }
  | {
      kind: 'common-extended-negotiation';
      sopClassUid: string;
      serviceClassUid: string;
      relatedGeneralSopClassUids: string[];
    }
  | {
      kind: 'user-identity-rq';
      identityType: number;
      positiveResponseRequested: number;
      primaryField: Buffer;
      secondaryField: Buffer;
    }
  | { kind: 'user-identity-ac'; serverResponse: Buffer }
  | { kind: 'unknown'; type: number; value: Buffer };

export type AssociateItem =
  | { kind: 'application-context'; name: string }
  | { kind: 'presentation-context-rq'; context: PresentationContextRq }
  | { kind: 'presentation-context-ac'; context: PresentationContextAc }
  | { kind: 'user-information'; subItems: UserInfoSubItem[] }
  | { kind: 'unknown'; type: number; value: Buffer };

export interface AssociatePdu {
  type: 0x01 | 0x02;
  protocolVersion: number;
  /** The raw 16-byte field as latin1 text, padding included (use aeTitleText() to trim). */
  calledAeTitle: string;
  /** The raw 16-byte field as latin1 text, padding included (use aeTitleText() to trim). */
  callingAeTitle: string;
  /** The 32 reserved bytes, kept for byte-exact round trip. */
  reserved: Buffer;
  /** In wire order. */
  items: AssociateItem[];
}

export interface AssociateRjPdu {
  type: 0x03;
  result: number;
  source: number;
  reason: number;
}

export interface Pdv {
  contextId: number;
  command: boolean;
  last: boolean;
  value: Buffer;
}

export interface PDataPdu {
  type: 0x04;
  pdvs: Pdv[];
}

export interface ReleasePdu {
  type: 0x05 | 0x06;
}

export interface AbortPdu {
  type: 0x07;
  source: number;
  reason: number;
}

export type Pdu = AssociatePdu | AssociateRjPdu | PDataPdu | ReleasePdu | AbortPdu;
