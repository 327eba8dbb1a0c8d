// Certificate identities as the policy compares them (pure: the TLS layer, tls/identity.ts, reads them off
// the socket and owns their type).
import type { CertificateIdentity } from '../config/types.js';
import { normaliseIp, type CertificateIdentities } from '../tls/identity.js';

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
