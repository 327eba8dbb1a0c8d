// Reading the identities a peer certificate carries, and the server-side secure context of the return listener.
import { clientEndpoint } from '../util/endpoint.js';
import { readFileSync } from 'node:fs';
import * as tls from 'node:tls';
import ipaddr from 'ipaddr.js';
import { TLS_PROFILES, type TlsProfileName } from './profiles.js';
import { TlsMaterialError } from './upstream.js';
import { peerKeyProblem, presentedCertificate, type PresentedCertificate } from './keys.js';
import type { TlsClientRejection } from '../vocabulary/outcomes.js';

/** What a verified peer certificate says about who the peer is (RFC 5280 4.2.1.6 subjectAltName, subject CN). */
export interface CertificateIdentities {
  dns: string[];
  ip: string[];
  uri: string[];
  cn: string[];
  /** SHA-256 fingerprint, colon-separated upper-case hex as Node reports it. */
  fingerprint256: string;
  subject: string;
}

/** Canonical text of an IP address (IPv4-mapped IPv6 as IPv4), or null when it is not one. */
export function normaliseIp(text: string): string | null {
  try {
    const addr = ipaddr.parse(text);
    if (addr.kind() === 'ipv6' && (addr as ipaddr.IPv6).isIPv4MappedAddress()) {
      return (addr as ipaddr.IPv6).toIPv4Address().toString();
    }
    return addr.toNormalizedString();
  } catch {
    return null;
  }
}

/** Reads the identities of the certificate a TLS peer presented; null when it presented none. */
export function peerIdentities(socket: tls.TLSSocket): CertificateIdentities | null {
  const cert = socket.getPeerCertificate();
  if (!cert || Object.keys(cert).length === 0) return null;
  const cnField = cert.subject?.CN;
  const cn = cnField === undefined ? [] : Array.isArray(cnField) ? cnField : [cnField];
  const out: CertificateIdentities = {
    dns: [],
    ip: [],
    uri: [],
    cn,
    fingerprint256: cert.fingerprint256,
    subject: Object.entries(cert.subject ?? {})
      .map(([k, v]) => `${k}=${Array.isArray(v) ? v.join('+') : String(v)}`)
      .join(', '),
  };
  // Node renders subjectaltname as "DNS:a, IP Address:1.2.3.4, URI:urn:x" (values with a comma are quoted).
  for (const entry of splitAltNames(cert.subjectaltname ?? '')) {
    const colon = entry.indexOf(':');
    if (colon < 0) continue;
    const kind = entry.slice(0, colon);
    const value = unquote(entry.slice(colon + 1));
    if (kind === 'DNS') out.dns.push(value.toLowerCase());
    else if (kind === 'IP Address') out.ip.push(normaliseIp(value) ?? value);
    else if (kind === 'URI') out.uri.push(value);
  }
  return out;
}

function splitAltNames(text: string): string[] {
  const parts: string[] = [];
  let current = '';
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i] as string;
    if (c === '"') quoted = !quoted;
    if (c === ',' && !quoted && text[i + 1] === ' ') {
      parts.push(current);
      current = '';
      i++;
      continue;
    }
    current += c;
  }
  if (current.length > 0) parts.push(current);
  return parts;
}

function unquote(value: string): string {
  if (value.startsWith('"') && value.endsWith('"')) {
    try {
      return JSON.parse(value) as string;
    } catch {
      return value.slice(1, -1);
    }
  }
  return value;
}

export interface ServerTlsSettings {
  ca: string;
  cert: string;
  key: string;
  profile: TlsProfileName;
}

/** Secure context of a mutual-TLS listener (the return listener); reload swaps it with setSecureContext. */
export interface ServerTlsContext {
  settings: ServerTlsSettings;
  options: tls.SecureContextOptions;
}

export function buildServerTlsContext(settings: ServerTlsSettings): ServerTlsContext {
  const profile = TLS_PROFILES[settings.profile];
  const read = (file: string, what: string): Buffer => {
    try {
      return readFileSync(file);
    } catch (err) {
      throw new TlsMaterialError(file, `cannot read ${what} ${file}: ${(err as Error).message}`, {
        cause: err,
      });
    }
  };
  const options: tls.SecureContextOptions = {
    ca: read(settings.ca, 'CA bundle'),
    cert: read(settings.cert, 'server certificate'),
    key: read(settings.key, 'server key'),
    minVersion: profile.minVersion,
    maxVersion: profile.maxVersion,
    ciphers: profile.ciphers,
  };
  try {
    tls.createSecureContext(options);
  } catch (err) {
    throw new TlsMaterialError(
      settings.key,
      `TLS material for ${settings.cert} / ${settings.key} rejected: ${(err as Error).message}`,
      { cause: err },
    );
  }
  return { settings, options };
}

/** vocabulary/outcomes.ts TLS_CLIENT_REJECTIONS. */
export type ClientHandshakeFailure = TlsClientRejection;

/** OpenSSL verification results (X509_V_ERR_*, as Node names them) that have a reason of their own. */
const VERIFY_REASONS: Record<string, ClientHandshakeFailure> = {
  CERT_HAS_EXPIRED: 'client-certificate-expired',
  CERT_NOT_YET_VALID: 'client-certificate-not-yet-valid',
  INVALID_PURPOSE: 'client-certificate-wrong-key-usage',
  EE_KEY_TOO_SMALL: 'client-certificate-weak-key',
  CA_KEY_TOO_SMALL: 'client-certificate-weak-key',
};

/**
 * Map a listener-side TLS handshake error to a stable reason (log field, audit, metric label).
 * `authorizationError` is the socket's verification result: Node ends the handshake of a client whose
 * certificate fails verification without an error of its own, the reason is only there.
 */
export function classifyClientHandshakeError(
  err: unknown,
  authorizationError?: string | Error | null,
): ClientHandshakeFailure {
  const verify = authorizationError
    ? String((authorizationError as { code?: string }).code ?? authorizationError)
    : '';
  if (verify !== '') return VERIFY_REASONS[verify] ?? 'client-certificate-untrusted';
  const e = err as NodeJS.ErrnoException;
  const code = e?.code ?? '';
  const msg = String(e?.message ?? '');
  if (code === 'ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE' || /did not return a certificate/i.test(msg))
    return 'no-client-certificate';
  if (code === 'ERR_SSL_CERTIFICATE_VERIFY_FAILED' || /certificate verify failed/i.test(msg))
    return 'client-certificate-untrusted';
  if (code === 'ERR_TLS_HANDSHAKE_TIMEOUT') return 'handshake-timeout';
  if (/no shared cipher|unsupported protocol|version too low|wrong version number/i.test(msg))
    return 'protocol-or-cipher-mismatch';
  return 'handshake-failed';
}

/** The remote address and port of a (possibly already destroyed) socket of a TLS server. */
export function remoteEndpoint(socket: tls.TLSSocket): { remoteAddress: string; remotePort: number } {
  return clientEndpoint(socket); // util/endpoint.ts: the PROXY header's client when a balancer sent one
}

/** Why a TLS client that completed the handshake is refused, with the certificate it presented. */
export interface ClientRefusal {
  reason: TlsClientRejection;
  message: string;
  certificate: PresentedCertificate | null;
}

/**
 * The return listener's verdict on a client once the handshake is complete (the listener verifies the
 * chain but lets the handshake finish, so that a refused certificate can be named): no certificate, a
 * certificate that failed verification (expired, not yet valid, wrong extended key usage, untrusted) or a
 * key below BCP 195 strength is a refusal; null when the client may go on.
 */
export function refuseClient(socket: tls.TLSSocket): ClientRefusal | null {
  const certificate = presentedCertificate(socket);
  if (!certificate) {
    return { reason: 'no-client-certificate', message: 'the client presented no certificate', certificate };
  }
  // Before the verification verdict: OpenSSL's security level reports a weak key only as UNSPECIFIED.
  const weak = peerKeyProblem(socket);
  if (weak) return { reason: 'client-certificate-weak-key', message: weak, certificate };
  if (!socket.authorized) {
    const verify = socket.authorizationError;
    return {
      reason: classifyClientHandshakeError(null, verify ?? 'UNABLE_TO_VERIFY_LEAF_SIGNATURE'),
      message: `certificate verification failed: ${String((verify as { code?: string } | null)?.code ?? verify)}`,
      certificate,
    };
  }
  return null;
}
