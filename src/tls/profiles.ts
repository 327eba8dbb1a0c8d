// DICOM PS3.15 Annex B secure transport connection profiles, as OpenSSL settings for Node's tls module.
import type { SecureVersion } from 'node:tls';

export type TlsProfileName = 'bcp195' | 'modified-bcp195';

export interface TlsProfile {
  name: TlsProfileName;
  clause: string;
  minVersion: SecureVersion;
  maxVersion: SecureVersion;
  /** OpenSSL cipher string: TLS 1.3 suites first, then the TLS 1.2 AEAD suites. */
  ciphers: string;
}

// TLS 1.3 suites (RFC 8446) are all AEAD; every profile allows them and prefers TLS 1.3.
const TLS13 = ['TLS_AES_128_GCM_SHA256', 'TLS_AES_256_GCM_SHA384', 'TLS_CHACHA20_POLY1305_SHA256'];

// PS3.15 B.12 "BCP 195 RFC 8996, 9325 TLS Secure Transport Connection Profile": TLS 1.2 minimum,
// ECDHE key exchange with AES-GCM only for TLS 1.2. Never CBC, never RSA key transport.
const B12_TLS12 = [
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-RSA-AES256-GCM-SHA384',
];

// PS3.15 B.13 "Modified BCP 195 RFC 8996, 9325": B.12 plus ChaCha20-Poly1305 and DHE-RSA AES-GCM.
// B.13 also lists Camellia-GCM suites, which the OpenSSL build inside Node does not provide; they are
// left out (see README, "TLS profiles").
const B13_EXTRA = [
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-RSA-CHACHA20-POLY1305',
  'DHE-RSA-AES128-GCM-SHA256',
  'DHE-RSA-AES256-GCM-SHA384',
];

export const TLS_PROFILES: Record<TlsProfileName, TlsProfile> = {
  bcp195: {
    name: 'bcp195',
    clause: 'PS3.15 B.12',
    minVersion: 'TLSv1.2',
    maxVersion: 'TLSv1.3',
    ciphers: [...TLS13, ...B12_TLS12].join(':'),
  },
  'modified-bcp195': {
    name: 'modified-bcp195',
    clause: 'PS3.15 B.13',
    minVersion: 'TLSv1.2',
    maxVersion: 'TLSv1.3',
    ciphers: [...TLS13, ...B12_TLS12, ...B13_EXTRA].join(':'),
  },
};
