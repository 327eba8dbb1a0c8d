// `certs inspect FILE`: what an admin needs to know of a certificate (or a chain, or a CSR) before it goes
// into the policy: subject, names, issuer, validity, key type and size, fingerprint, extended key usage,
// and what the proxy would object to (expired, not yet valid, weak key, no EKU for the role).
import { X509Certificate } from 'node:crypto';
import { Pkcs10CertificateRequest } from '@peculiar/x509';
import { describeKey, keyStrengthProblem } from './keys.js';

/** Extended key usage OIDs (RFC 5280 4.2.1.12) by name. */
const EKU_NAMES: Readonly<Record<string, string>> = {
  '1.3.6.1.5.5.7.3.1': 'serverAuth',
  '1.3.6.1.5.5.7.3.2': 'clientAuth',
  '1.3.6.1.5.5.7.3.3': 'codeSigning',
  '1.3.6.1.5.5.7.3.4': 'emailProtection',
  '1.3.6.1.5.5.7.3.8': 'timeStamping',
  '1.3.6.1.5.5.7.3.9': 'OCSPSigning',
  '2.5.29.37.0': 'anyExtendedKeyUsage',
};

export interface InspectedCertificate {
  kind: 'certificate' | 'certificate request';
  subject: string;
  /** Issuer (null for a CSR). */
  issuer: string | null;
  subjectAltName: string | null;
  validFrom: string | null;
  validTo: string | null;
  key: string;
  /** SHA-256 fingerprint of the DER (of the certificate; of the request for a CSR). */
  fingerprint256: string;
  serialNumber: string | null;
  /** Extended key usage by name (OIDs not known by name as such); null when the extension is absent. */
  extendedKeyUsage: string[] | null;
  ca: boolean;
  /** What the proxy would object to, each as a sentence. */
  problems: string[];
}

const PEM_BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----[\s\S]*?-----END \1-----/g;

function ekuNames(oids: readonly string[] | undefined): string[] | null {
  return oids === undefined ? null : Array.from(oids, (o) => EKU_NAMES[o] ?? o);
}

function certificateInfo(cert: X509Certificate, now: Date): InspectedCertificate {
  const problems: string[] = [];
  if (cert.validToDate.getTime() < now.getTime())
    problems.push(`expired on ${cert.validToDate.toISOString()}`);
  if (cert.validFromDate.getTime() > now.getTime()) {
    problems.push(`not valid before ${cert.validFromDate.toISOString()}`);
  }
  const weak = keyStrengthProblem(cert.publicKey);
  if (weak) problems.push(weak);
  const eku = ekuNames(cert.keyUsage);
  if (
    !cert.ca &&
    eku !== null &&
    !eku.some((u) => ['serverAuth', 'clientAuth', 'anyExtendedKeyUsage'].includes(u))
  ) {
    problems.push('neither serverAuth nor clientAuth: usable for no TLS role of the proxy');
  }
  return {
    kind: 'certificate',
    subject: cert.subject.replace(/\n/g, ', '),
    issuer: cert.issuer.replace(/\n/g, ', '),
    subjectAltName: cert.subjectAltName ?? null,
    validFrom: cert.validFromDate.toISOString(),
    validTo: cert.validToDate.toISOString(),
    key: describeKey(cert.publicKey),
    fingerprint256: cert.fingerprint256,
    serialNumber: cert.serialNumber,
    extendedKeyUsage: eku,
    ca: cert.ca,
    problems,
  };
}

/** SANs written as Node's X509Certificate writes them ("DNS:a, IP Address:10.0.0.5"). */
function sanText(ext: { names: { items: Array<{ type: string; value: string }> } }): string {
  const label: Record<string, string> = { dns: 'DNS', ip: 'IP Address', url: 'URI', email: 'email' };
  return ext.names.items.map((n) => `${label[n.type] ?? n.type}:${n.value}`).join(', ');
}

async function requestInfo(pem: string): Promise<InspectedCertificate> {
  const csr = new Pkcs10CertificateRequest(pem);
  const { createHash, createPublicKey } = await import('node:crypto');
  const key = createPublicKey({ key: Buffer.from(csr.publicKey.rawData), format: 'der', type: 'spki' });
  const san = csr.extensions.find((e) => e.type === '2.5.29.17');
  const eku = csr.extensions.find((e) => e.type === '2.5.29.37') as { usages?: string[] } | undefined;
  const weak = keyStrengthProblem(key);
  const fp = createHash('sha256').update(Buffer.from(csr.rawData)).digest('hex').toUpperCase();
  return {
    kind: 'certificate request',
    subject: csr.subject,
    issuer: null,
    subjectAltName: san
      ? sanText(san as unknown as { names: { items: Array<{ type: string; value: string }> } })
      : null,
    validFrom: null,
    validTo: null,
    key: describeKey(key),
    fingerprint256: (fp.match(/.{2}/g) ?? []).join(':'),
    serialNumber: null,
    extendedKeyUsage: eku?.usages ? ekuNames(eku.usages.map(String)) : null,
    ca: false,
    problems: [
      ...(weak ? [weak] : []),
      ...((await csr.verify()) ? [] : ['the request signature does not verify']),
    ],
  };
}

/** Every certificate (and certificate request) in a PEM file, or the one DER certificate it is. */
export async function inspectCertificates(data: Buffer, now = new Date()): Promise<InspectedCertificate[]> {
  const text = data.toString('latin1');
  const blocks = [...text.matchAll(PEM_BLOCK)];
  if (blocks.length === 0) {
    try {
      return [certificateInfo(new X509Certificate(data), now)];
    } catch (err) {
      throw new Error(`neither PEM nor a DER certificate: ${(err as Error).message}`, { cause: err });
    }
  }
  const out: InspectedCertificate[] = [];
  for (const [block, label] of blocks) {
    if (label === 'CERTIFICATE') out.push(certificateInfo(new X509Certificate(block), now));
    else if (label === 'CERTIFICATE REQUEST' || label === 'NEW CERTIFICATE REQUEST')
      out.push(await requestInfo(block));
    else if (/PRIVATE KEY/.test(label ?? '')) {
      throw new Error(
        'this file holds a private key: inspect the certificate, and keep the key file private',
      );
    }
  }
  if (out.length === 0)
    throw new Error(`no certificate in it (PEM blocks: ${blocks.map((b) => b[1]).join(', ')})`);
  return out;
}

/** The text `certs inspect` prints for each certificate. */
export function formatInspected(list: readonly InspectedCertificate[]): string {
  const lines: string[] = [];
  list.forEach((c, i) => {
    if (list.length > 1) lines.push(`[${i + 1}/${list.length}] ${c.kind}${c.ca ? ' (CA)' : ''}`);
    else lines.push(`${c.kind}${c.ca ? ' (CA)' : ''}`);
    lines.push(`  subject:      ${c.subject}`);
    if (c.subjectAltName !== null) lines.push(`  names:        ${c.subjectAltName}`);
    if (c.issuer !== null) lines.push(`  issuer:       ${c.issuer}`);
    if (c.validFrom !== null) lines.push(`  valid:        ${c.validFrom} to ${c.validTo ?? '?'}`);
    lines.push(`  key:          ${c.key}`);
    lines.push(
      `  key usage:    ${c.extendedKeyUsage === null ? '(no extended key usage extension)' : c.extendedKeyUsage.join(', ')}`,
    );
    if (c.serialNumber !== null) lines.push(`  serial:       ${c.serialNumber}`);
    lines.push(`  SHA-256:      ${c.fingerprint256}`);
    for (const p of c.problems) lines.push(`  PROBLEM:      ${p}`);
  });
  return `${lines.join('\n')}\n`;
}
