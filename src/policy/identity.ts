// Certificate identities as the policy compares them (pure: the TLS layer reads them off the socket).
import ipaddr from 'ipaddr.js';
import type { CertificateIdentity } from '../config/types.js';

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

/** True when the certificate carries the configured identity (exact match; DNS names case-insensitively). */
export function identityMatches(ids: CertificateIdentities, wanted: CertificateIdentity): boolean {
  switch (wanted.kind) {
    case 'dns':
      return ids.dns.includes(wanted.value.toLowerCase());
    case 'ip': {
      const n = normaliseIp(wanted.value);
      return n !== null && ids.ip.includes(n);
    }
    case 'uri':
      return ids.uri.includes(wanted.value);
    case 'cn':
      return ids.cn.includes(wanted.value);
  }
}
