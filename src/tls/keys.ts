// Key strength (BCP 195 / RFC 9325 section 4.5, PS3.15 B.12: RSA of at least 2048 bits, EC of at least
// 256 bits) and the checks of the proxy's own certificates and keys (validity, key pair, extended key
// usage, strength), applied whenever a configuration is loaded: check-config, start and reload.
import { X509Certificate, createPrivateKey, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type * as tls from 'node:tls';

export const MIN_RSA_BITS = 2048;
export const MIN_EC_BITS = 256;

/** Field sizes of the named curves OpenSSL reports whose name does not carry it. */
const CURVE_BITS: Record<string, number> = {
  prime192v1: 192,
  prime239v1: 239,
  prime256v1: 256,
};

function curveBits(curve: string): number | null {
  const known = CURVE_BITS[curve];
  if (known !== undefined) return known;
  const m = /(\d{3})/.exec(curve); // secp224r1, secp384r1, brainpoolP256r1, sect571k1…
  return m ? Number(m[1]) : null;
}

/** "RSA 2048-bit", "EC prime256v1 (256-bit)", "ED25519". */
export function describeKey(key: KeyObject): string {
  const type = key.asymmetricKeyType ?? 'unknown';
  const d = key.asymmetricKeyDetails ?? {};
  if (type === 'rsa' || type === 'rsa-pss' || type === 'dsa') {
    return `${type.toUpperCase()} ${d.modulusLength ?? '?'}-bit`;
  }
  if (type === 'ec') {
    const bits = curveBits(d.namedCurve ?? '');
    return `EC ${d.namedCurve ?? 'unknown curve'}${bits !== null ? ` (${bits}-bit)` : ''}`;
  }
  return type.toUpperCase();
}

/** Why a public (or private) key is too weak for BCP 195, or null when it is strong enough. */
export function keyStrengthProblem(key: KeyObject): string | null {
  const type = key.asymmetricKeyType;
  const d = key.asymmetricKeyDetails ?? {};
  const rule = `BCP 195 / RFC 9325 and PS3.15 B.12 require RSA of at least ${MIN_RSA_BITS} bits or EC of at least ${MIN_EC_BITS} bits`;
  if (type === 'rsa' || type === 'rsa-pss' || type === 'dsa') {
    if ((d.modulusLength ?? 0) < MIN_RSA_BITS) return `${describeKey(key)} key is too weak: ${rule}`;
    return null;
  }
  if (type === 'ec') {
    const bits = curveBits(d.namedCurve ?? '');
    if (bits === null || bits < MIN_EC_BITS) return `${describeKey(key)} key is too weak: ${rule}`;
    return null;
  }
  if (type === 'ed25519' || type === 'ed448') return null;
  return `${describeKey(key)} key is not usable for TLS authentication: ${rule}`;
}

/** The key strength problem of a certificate's public key, or null. */
export function certificateKeyProblem(cert: X509Certificate): string | null {
  return keyStrengthProblem(cert.publicKey);
}

/** The certificate a TLS peer presented, as logged and audited. */
export interface PresentedCertificate {
  subject: string;
  issuer: string;
  /** SHA-256 fingerprint, colon-separated upper-case hex as Node reports it. */
  fingerprint256: string;
}

/** One line "CN=a, O=b" out of Node's multi-line distinguished name text. */
function oneLine(dn: string): string {
  return dn.split('\n').filter(Boolean).join(', ');
}

export function presentedCertificateOf(cert: X509Certificate): PresentedCertificate {
  return {
    subject: oneLine(cert.subject),
    issuer: oneLine(cert.issuer),
    fingerprint256: cert.fingerprint256,
  };
}

/** The certificate the peer of `socket` presented, or null (none, or no longer available). */
export function presentedCertificate(socket: tls.TLSSocket): PresentedCertificate | null {
  const cert = peerX509(socket);
  return cert ? presentedCertificateOf(cert) : null;
}

function peerX509(socket: tls.TLSSocket): X509Certificate | null {
  try {
    return socket.getPeerX509Certificate() ?? null;
  } catch {
    return null;
  }
}

/** The key strength problem of the certificate the peer of `socket` presented; null if none or strong. */
export function peerKeyProblem(socket: tls.TLSSocket): string | null {
  const cert = peerX509(socket);
  return cert ? certificateKeyProblem(cert) : null;
}

// ------------------------------------------------------------------------------ own certificates

/** One of the proxy's own certificate/key pairs, and the configuration keys that name them. */
export interface OwnCertificateSpec {
  cert: string;
  key: string;
  /** Key path of the certificate file, e.g. ['upstreams', 'archive', 'tls', 'cert']. */
  certPath: string[];
  keyPath: string[];
  /** The extended key usage the pair is used for: a TLS client (clientAuth) or server (serverAuth). */
  role: 'client' | 'server';
}

export interface MaterialFinding {
  /** Key path, dotted: "upstreams.archive.tls.cert". */
  path: string;
  /** Key path as a list (to place the finding in the file). */
  keyPath: string[];
  file: string;
  message: string;
}

export interface OwnCertificateReport {
  errors: MaterialFinding[];
  warnings: (MaterialFinding & { notAfter: Date })[];
}

const EKU = {
  client: { oid: '1.3.6.1.5.5.7.3.2', name: 'clientAuth' },
  server: { oid: '1.3.6.1.5.5.7.3.1', name: 'serverAuth' },
} as const;
const ANY_EKU = '2.5.29.37.0';
const DAY_MS = 86_400_000;

/** A duration in the form the configuration uses: 30d, 12h, 90m, 45s. */
export function formatWindow(ms: number): string {
  for (const [unit, size] of [
    ['d', DAY_MS],
    ['h', 3_600_000],
    ['m', 60_000],
    ['s', 1000],
  ] as const) {
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}

/**
 * Check one of the proxy's own certificates and its key: readable, valid now (notBefore ≤ now ≤ notAfter),
 * the key belongs to the certificate, the extended key usage allows the role, the key is strong enough.
 * A certificate that expires within `warningMs` is a warning.
 */
export function checkOwnCertificate(
  spec: OwnCertificateSpec,
  opts: { now?: Date; warningMs: number },
): OwnCertificateReport {
  const now = opts.now ?? new Date();
  const report: OwnCertificateReport = { errors: [], warnings: [] };
  const certFinding = (message: string): MaterialFinding => ({
    path: spec.certPath.join('.'),
    keyPath: spec.certPath,
    file: spec.cert,
    message: `${spec.cert}: ${message}`,
  });
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(readFileSync(spec.cert));
  } catch (err) {
    report.errors.push({
      ...certFinding(''),
      message: `cannot read ${spec.role} certificate ${spec.cert}: ${(err as Error).message}`,
    });
    return report;
  }
  const notBefore = cert.validFromDate;
  const notAfter = cert.validToDate;
  if (notBefore.getTime() > now.getTime()) {
    report.errors.push(certFinding(`certificate is not valid before ${notBefore.toISOString()}`));
  }
  if (notAfter.getTime() < now.getTime()) {
    report.errors.push(certFinding(`certificate expired on ${notAfter.toISOString()}`));
  }
  const eku = cert.keyUsage; // Node: the extended key usage OIDs; undefined without the extension
  const wanted = EKU[spec.role];
  if (eku && eku.length > 0 && !eku.includes(wanted.oid) && !eku.includes(ANY_EKU)) {
    report.errors.push(
      certFinding(
        `certificate's extended key usage does not include ${wanted.name} (${wanted.oid}), which a TLS ${spec.role} certificate needs (has ${eku.join(', ')})`,
      ),
    );
  }
  const weak = certificateKeyProblem(cert);
  if (weak) report.errors.push(certFinding(weak));
  try {
    const key = createPrivateKey(readFileSync(spec.key));
    if (!cert.checkPrivateKey(key)) {
      report.errors.push({
        path: spec.keyPath.join('.'),
        keyPath: spec.keyPath,
        file: spec.key,
        message: `${spec.key}: the private key does not match the certificate ${spec.cert}`,
      });
    }
  } catch (err) {
    report.errors.push({
      path: spec.keyPath.join('.'),
      keyPath: spec.keyPath,
      file: spec.key,
      message: `cannot read ${spec.role} key ${spec.key}: ${(err as Error).message}`,
    });
  }
  if (report.errors.length === 0 && notAfter.getTime() - now.getTime() < opts.warningMs) {
    const days = Math.floor((notAfter.getTime() - now.getTime()) / DAY_MS);
    report.warnings.push({
      ...certFinding(
        `certificate expires on ${notAfter.toISOString()} (in ${days} day${days === 1 ? '' : 's'}; tls.expiryWarning is ${formatWindow(opts.warningMs)})`,
      ),
      notAfter,
    });
  }
  return report;
}
