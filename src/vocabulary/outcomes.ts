// The proxy's names for how associations end and why: outcomes, refusals, upstream failures, protocol
// errors and abort reasons, TLS client rejections and DIMSE denials. Each list is written once, here, as an
// `as const` tuple with its type derived from it; events, policy, logs, metrics and audit use these types,
// so a name added here and not mapped by an observer (or emitted somewhere and not listed here) fails to
// compile. This folder is the bottom layer above util/: it imports nothing from the project.

/** Which listener an association came in on. */
export const LISTENERS = [
  'forward', // modalities -> the proxy -> an archive
  'return', // an archive -> the proxy -> a receiver (C-MOVE sub-operations, storage commitment reports)
] as const;
export type ListenerKind = (typeof LISTENERS)[number];

/**
 * Which way bytes or an instance travelled: forward listener (modality <-> archive) or return listener
 * (archive -> destination for C-MOVE sub-operations; destination -> archive for answers on it).
 */
export const DIRECTIONS = [
  'modality-to-archive', // forward listener, from the calling modality
  'archive-to-modality', // forward listener, toward the calling modality
  'archive-to-destination', // return listener, from the calling archive
  'destination-to-archive', // return listener, toward the calling archive
] as const;
export type Direction = (typeof DIRECTIONS)[number];

/** How an association ended (the `outcome` of its log line and of dimse_proxy_associations_total). */
export const ASSOCIATION_OUTCOMES = [
  'released', // A-RELEASE-RQ / A-RELEASE-RP completed (PS3.8 7.2)
  'rejected', // A-ASSOCIATE-RJ sent to the requestor: by the proxy or relayed from the far side (PS3.8 7.1.1.7)
  'aborted-by-modality', // the requestor sent A-ABORT or dropped the connection once established (PS3.8 7.3)
  'aborted-by-archive', // the far side sent A-ABORT or dropped the connection once established (PS3.8 7.3)
  'aborted-by-proxy', // the proxy sent A-ABORT source 2 to both sides (PS3.8 7.4, A-P-ABORT)
  'upstream-failed', // the far side could not be reached or did not answer: A-ASSOCIATE-RJ 2/3/1 to the requestor
  'closed', // the connection closed without release or abort (e.g. before any A-ASSOCIATE-RQ)
  'timeout', // a timer ran out (PS3.8 9.1.5 ARTIM, the idle timeout): the connection was closed or aborted
  'worker-exited', // the relay worker carrying it exited (workers: N > 1): both connections closed with it
] as const;
export type AssociationOutcome = (typeof ASSOCIATION_OUTCOMES)[number];

/** Association refusals of the compiled policy (policy.ts admit and admitReturn). */
export const POLICY_REFUSALS = [
  'unknown-calling-ae', // PS3.8 9.3.4 A-ASSOCIATE-RJ 1/1/3: the calling AE title is no configured peer / caller
  'address-not-allowed', // 1/1/3: the peer's `addresses` do not include the socket's remote address
  'unknown-called-ae', // 1/1/7: the called AE title has no route (forward listener)
  'too-many-associations', // 2/3/2: limits.maxAssociations reached
  'too-many-peer-associations', // 2/3/2: the peer's maxAssociations reached
  'no-client-certificate', // 1/1/3 (return listener): no certificate to bind the calling AE title to
  'certificate-identity-mismatch', // 1/1/3 (return listener): the certificate lacks the caller's identity
  'unknown-destination', // 1/1/7 (return listener): the called AE title is no peer with a receiver
] as const;
export type PolicyRefusal = (typeof POLICY_REFUSALS)[number];

/** The refusals policy.ts admit() (forward listener) can decide. */
export const ADMIT_REFUSALS = [
  'unknown-calling-ae',
  'address-not-allowed',
  'unknown-called-ae',
  'too-many-associations',
  'too-many-peer-associations',
] as const satisfies readonly PolicyRefusal[];
export type AdmitRefusal = (typeof ADMIT_REFUSALS)[number];

/** The refusals policy.ts admitReturn() (return listener) can decide. */
export const RETURN_ADMIT_REFUSALS = [
  'unknown-calling-ae',
  'no-client-certificate',
  'certificate-identity-mismatch',
  'address-not-allowed',
  'unknown-destination',
  'too-many-associations',
  'too-many-peer-associations',
] as const satisfies readonly PolicyRefusal[];
export type ReturnAdmitRefusal = (typeof RETURN_ADMIT_REFUSALS)[number];

/** Refusals the relay decides from the A-ASSOCIATE-RQ itself, before or after the policy. */
export const NEGOTIATION_REFUSALS = [
  'protocol-version-not-supported', // PS3.8 9.3.4 A-ASSOCIATE-RJ 1/2/2: bit 0 of the protocol version not set (9.3.2)
  'application-context-not-supported', // 1/1/2: the application context is not the DICOM one (PS3.7 A.2.1)
  'no-valid-presentation-context', // 1/1/1: every proposed context had an invalid or duplicate ID (PS3.8 9.3.2.2)
  'no-permitted-presentation-context', // 1/1/1: no proposed abstract syntax is allowed for the peer
] as const;
export type NegotiationRefusal = (typeof NEGOTIATION_REFUSALS)[number];

/** A-ASSOCIATE-RJ from the association's far side, relayed to the requestor unchanged: not the proxy's decision. */
export const FAR_SIDE_REFUSALS = [
  'rejected-by-archive', // forward listener: the archive answered A-ASSOCIATE-RJ
  'rejected-by-receiver', // return listener: the receiver (C-MOVE destination) answered A-ASSOCIATE-RJ
] as const;
export type FarSideRefusal = (typeof FAR_SIDE_REFUSALS)[number];

/** Refusals the proxy decides (policy and negotiation): dimse_proxy_policy_denials_total counts them. */
export const PROXY_REFUSALS = [...POLICY_REFUSALS, ...NEGOTIATION_REFUSALS] as const;
export type ProxyRefusal = (typeof PROXY_REFUSALS)[number];

/** Every association refusal ('association-refused' event `refusal`). */
export const REFUSALS = [...PROXY_REFUSALS, ...FAR_SIDE_REFUSALS] as const;
export type Refusal = (typeof REFUSALS)[number];

/** Why the TCP connect or TLS handshake toward the far side failed (tls/upstream.ts UpstreamConnectError). */
export const UPSTREAM_CONNECT_FAILURES = [
  'refused', // ECONNREFUSED: nothing listens at host:port
  'timeout', // connectTimeout ran out (TCP connect, TLS handshake, or the wait for the A-ASSOCIATE-AC)
  'unreachable', // no route, or the host name did not resolve
  'certificate-expired', // the archive's certificate is expired
  'certificate-not-yet-valid', // the archive's certificate is not yet valid
  'certificate-wrong-key-usage', // the archive's certificate's extended key usage does not allow serverAuth
  'weak-key', // the archive's certificate key is below BCP 195 (RSA < 2048 bits, EC < 256 bits)
  'unknown-ca', // the archive's certificate does not chain to the configured CA bundle
  'hostname-mismatch', // the archive's certificate does not name serverName
  'client-certificate-rejected', // the archive refused the proxy's client certificate (TLS alert; TLS 1.3: closed before accepting the session)
  'handshake-failed', // any other TLS handshake failure
  'closed', // the connection closed before the A-ASSOCIATE-AC / A-ASSOCIATE-RJ
] as const;
export type UpstreamConnectFailure = (typeof UPSTREAM_CONNECT_FAILURES)[number];

/** 'upstream-failed' event `reason`: why the requestor got A-ASSOCIATE-RJ 2/3/1 (PS3.8 9.3.4, transient). */
export const UPSTREAM_FAILURES = [
  ...UPSTREAM_CONNECT_FAILURES,
  'protocol-error', // the far side answered the A-ASSOCIATE-RQ with something other than an AC or RJ
] as const;
export type UpstreamFailure = (typeof UPSTREAM_FAILURES)[number];

/** 'protocol-error' event `code`: what was wrong (or what the proxy noticed) on one side's stream. */
export const PROTOCOL_ERROR_CODES = [
  'UNRECOGNIZED_PDU', // PS3.8 9.3.1: a PDU type that does not exist
  'PDU_TOO_LARGE', // a PDU longer than the maximum the receiving side advertised or the proxy's ceiling (PS3.8 D.1)
  'INVALID_LENGTH', // a PDU or item length field inconsistent with its content
  'INVALID_VALUE', // a PDU parameter value PS3.8 9.3 does not allow
  'MISSING_ITEM', // a mandatory item is absent (e.g. no application context item)
  'TRUNCATED', // the PDU ended inside an item
  'INVALID_PDU', // a PDU that failed to decode and carried no finer code
  'UNEXPECTED_PDU', // a PDU type PS3.8 Table 9-10 does not allow in the leg's state
  'MESSAGE_SEQUENCE', // PDVs out of order: data before command, fragments of another message (PS3.8 E.2)
  'INVALID_COMMAND_SET', // a DIMSE command set that cannot be read (PS3.7 6.3, E.1)
  'UNMATCHED_RESPONSE', // a response answering no outstanding request (PS3.7 9.3: Message ID Being Responded To)
  'EARLY_RESPONSE', // a success C-STORE-RSP before the data set was relayed completely: held, not relayed early
  'INVALID_PRESENTATION_CONTEXT', // presentation contexts dropped (PS3.8 9.3.2.2) or AC answers not relayed (9.3.3.2)
  'INVALID_TRANSITION', // the relay issued a primitive its state does not allow: a defect of the proxy
  'INTERNAL', // any other defect of the proxy while relaying
] as const;
export type ProtocolErrorCode = (typeof PROTOCOL_ERROR_CODES)[number];

/** Why the proxy aborted an association (A-ABORT source 2 to the side at fault, PS3.8 9.3.8): end reasons. */
export const ABORT_REASONS = [
  'unrecognized-pdu', // PS3.8 9.3.8 A-ABORT 2/1: unrecognized PDU
  'unexpected-pdu', // A-ABORT 2/2: unexpected PDU (PS3.8 Table 9-10 AA-1 / AA-8)
  'invalid-pdu-parameter', // A-ABORT 2/6 (or 2/4, 2/5): an invalid, unrecognized or unexpected PDU parameter
  'pdu-too-long', // A-ABORT 2/6: a P-DATA-TF longer than the receiving side's maximum length (PS3.8 D.1)
  'invalid-message', // A-ABORT 2/6: a DIMSE message that breaks PS3.7 / PS3.8 Annex E (fragments, command set)
  'unmatched-response', // A-ABORT 2/6: a DIMSE response that answers no outstanding request
  'internal-error', // A-ABORT 2/0: a defect of the proxy (both sides aborted, the daemon carries on)
  'ledger-failed', // the integrity ledger could not record (ledger.onFailure: abort), or failed while the association lived
] as const;
export type AbortReason = (typeof ABORT_REASONS)[number];

/**
 * The abort reason of each protocol error code; null for findings that do not end the association (they are
 * logged and counted, and the association goes on). Exhaustive: a new code needs its reason here.
 */
export const PROTOCOL_ERROR_ABORT_REASONS = {
  UNRECOGNIZED_PDU: 'unrecognized-pdu',
  PDU_TOO_LARGE: 'pdu-too-long',
  INVALID_LENGTH: 'invalid-pdu-parameter',
  INVALID_VALUE: 'invalid-pdu-parameter',
  MISSING_ITEM: 'invalid-pdu-parameter',
  TRUNCATED: 'invalid-pdu-parameter',
  INVALID_PDU: 'invalid-pdu-parameter',
  UNEXPECTED_PDU: 'unexpected-pdu',
  MESSAGE_SEQUENCE: 'invalid-message',
  INVALID_COMMAND_SET: 'invalid-message',
  UNMATCHED_RESPONSE: 'unmatched-response',
  EARLY_RESPONSE: null,
  INVALID_PRESENTATION_CONTEXT: null,
  INVALID_TRANSITION: 'internal-error',
  INTERNAL: 'internal-error',
} as const satisfies Record<ProtocolErrorCode, AbortReason | null>;

/** The side of an association a protocol error is attributed to. */
export const PROTOCOL_ERROR_SIDES = [
  'modality', // the requestor: a modality (forward listener) or the calling archive (return listener)
  'archive', // the far side: the archive (forward listener) or the receiver (return listener)
] as const;
export type ProtocolErrorSide = (typeof PROTOCOL_ERROR_SIDES)[number];

/** 'tls-client-rejected' event `reason`: why a TLS client of the return listener failed the handshake. */
export const TLS_CLIENT_REJECTIONS = [
  'client-certificate-expired', // the client's certificate is expired (verification CERT_HAS_EXPIRED)
  'client-certificate-not-yet-valid', // the client's certificate is not valid yet (CERT_NOT_YET_VALID)
  'client-certificate-wrong-key-usage', // its extended key usage does not allow clientAuth (INVALID_PURPOSE)
  'client-certificate-weak-key', // its key is below BCP 195 (RSA < 2048 bits, EC < 256 bits)
  'client-certificate-untrusted', // the client's certificate does not chain to the return listener's CA bundle
  'no-client-certificate', // the client presented no certificate (the return listener requires one)
  'handshake-timeout', // returnListener.tls.handshakeTimeout ran out
  'protocol-or-cipher-mismatch', // no TLS version or cipher suite in common with the profile
  'handshake-failed', // any other handshake failure
] as const;
export type TlsClientRejection = (typeof TLS_CLIENT_REJECTIONS)[number];

/**
 * 'connection-refused' event `reason`: why the proxy closed a connection before any association, without
 * reading from it (the limits on connections that have not been admitted yet, README "Connection limits").
 */
export const CONNECTION_REFUSALS = [
  'per-address-limit', // limits.pendingPerAddress connections from this source address are not yet admitted
  'pending-limit', // limits.pendingTotal reached (for an address no peer lists: pendingTotal - pendingReservedForPeers)
  'shutting-down', // the proxy is draining: no new connections
  'handshake-timeout', // return listener: the TLS handshake did not finish within returnListener.tls.handshakeTimeout
  'proxy-header-missing', // a configured load balancer's connection did not begin with a PROXY header
  'proxy-header-invalid', // a load balancer's PROXY header breaks the specification (or is over the size bound)
  'proxy-header-timeout', // a load balancer's connection sent no whole PROXY header within proxyProtocol.headerTimeout
  'proxy-header-untrusted', // a PROXY header from an address that is not a configured load balancer
] as const;
export type ConnectionRefusal = (typeof CONNECTION_REFUSALS)[number];

/** DIMSE requests the proxy's policy answered itself with a failure status (never forwarded). */
export const DIMSE_DENIALS = [
  'service-not-allowed', // status 0124 Refused: Not Authorized (PS3.7 C.5.x): the peer may not invoke it
  'move-destination-not-allowed', // status A801 Refused: Move Destination unknown (PS3.4 C.4.2.1.4)
] as const;
export type DimseDenial = (typeof DIMSE_DENIALS)[number];

/** The DIMSE denial of each status the proxy answers with. */
export const DIMSE_DENIAL_STATUSES = {
  'service-not-allowed': 0x0124,
  'move-destination-not-allowed': 0xa801,
} as const satisfies Record<DimseDenial, number>;

/**
 * State of the connection to the audit record repository (syslog over TLS), as the sender's 'state' event,
 * the `audit-<state>` log lines and dimse_proxy_audit_connection_state_changes_total{state} name it.
 */
export const AUDIT_CONNECTION_STATES = [
  'connected', // a TLS session with the repository is up: spooled messages are being delivered
  'disconnected', // a session that was up ended (the reason says how); the next attempt is scheduled
  'retrying', // a connection attempt failed (the reason says why); the next attempt is scheduled
] as const;
export type AuditConnectionState = (typeof AUDIT_CONNECTION_STATES)[number];
