/**
 * Certificate generation for the demo PKI (`certs init`) and for tests.
 *
 * Keys are ECDSA P-256 (fast handshakes), signatures ECDSA with SHA-256. Certificates follow RFC 5280
 * closely enough for OpenSSL's strict mode (`-x509_strict`): v3, positive random serials, Subject and
 * Authority Key Identifiers, critical basicConstraints and keyUsage. They are accepted by Node's tls,
 * OpenSSL-based DCMTK and stunnel, and Orthanc.
 *
 * Built directly on @peculiar/x509 (the library underneath `selfsigned`): `selfsigned` cannot add the
 * key identifier extensions that strict verifiers require.
 */
import {
  X509Certificate as NodeX509Certificate,
  createPrivateKey,
  randomBytes,
  webcrypto,
} from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import { access, chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { join } from 'node:path';
import {
  AuthorityKeyIdentifierExtension,
  BasicConstraintsExtension,
  ExtendedKeyUsage,
  ExtendedKeyUsageExtension,
  type Extension,
  KeyUsageFlags,
  KeyUsagesExtension,
  type JsonGeneralName,
  Name,
  SubjectAlternativeNameExtension,
  Pkcs10CertificateRequestGenerator,
  SubjectKeyIdentifierExtension,
  X509Certificate,
  X509CertificateGenerator,
} from '@peculiar/x509';

export interface PemPair {
  cert: string;
  key: string;
}

export type CertificateUsage = 'server' | 'client' | 'both';

export interface LeafOptions {
  commonName: string;
  dnsNames?: string[];
  ipAddresses?: string[];
  uris?: string[];
  usage: CertificateUsage;
  notBefore?: Date;
  notAfter?: Date;
  /**
   * The leaf's key: ECDSA P-256 (default), or RSA of 2048 bits; 'rsa-1024' is below BCP 195 and exists only
   * so that tests can show such a certificate refused.
   */
  keyType?: LeafKeyType;
}

export type LeafKeyType = 'ec-p256' | 'rsa-2048' | 'rsa-1024';

export interface DemoPkiPaths {
  dir: string;
  caCert: string;
  caKey: string;
  proxyClientCert: string;
  proxyClientKey: string;
  proxyServerCert: string;
  proxyServerKey: string;
  archiveCert: string;
  archiveKey: string;
}

/** The WebCrypto provider, passed explicitly so nothing depends on @peculiar/x509's global provider. */
const cryptoImpl = webcrypto;
const subtle = webcrypto.subtle;
type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;
type SigningAlgorithm = webcrypto.Algorithm | webcrypto.EcdsaParams;

const DAY_MS = 24 * 60 * 60 * 1000;
/** Backdate notBefore a little so that small clock differences between hosts do not matter. */
const BACKDATE_MS = 60 * 60 * 1000;
const CA_LIFETIME_MS = 10 * 365 * DAY_MS;
const LEAF_LIFETIME_MS = 2 * 365 * DAY_MS;

const KEY_ALGORITHM: webcrypto.EcKeyGenParams = { name: 'ECDSA', namedCurve: 'P-256' };

function validity(notBefore: Date | undefined, notAfter: Date | undefined, lifetimeMs: number) {
  const nb = notBefore ?? new Date(Date.now() - BACKDATE_MS);
  const na = notAfter ?? new Date(nb.getTime() + lifetimeMs);
  if (Number.isNaN(nb.getTime()) || Number.isNaN(na.getTime()) || na.getTime() <= nb.getTime()) {
    throw new RangeError(`certificate notAfter (${String(na)}) must be after notBefore (${String(nb)})`);
  }
  return { notBefore: nb, notAfter: na };
}

/** 16 random bytes, top bit cleared so the DER INTEGER stays positive (RFC 5280 4.1.2.2). */
function serialNumber(): string {
  const bytes = randomBytes(16);
  bytes[0] = ((bytes[0] ?? 0) & 0x7f) | 0x01;
  return bytes.toString('hex');
}

function subjectName(commonName: string): Name {
  if (commonName.length === 0 || commonName.length > 64) {
    throw new RangeError(`certificate common name must be 1..64 characters: ${JSON.stringify(commonName)}`);
  }
  return new Name([{ '2.5.4.3': [commonName] }]);
}

function toPem(label: string, der: ArrayBuffer): string {
  const b64 = Buffer.from(der).toString('base64');
  return `-----BEGIN ${label}-----\n${(b64.match(/.{1,64}/g) ?? []).join('\n')}\n-----END ${label}-----\n`;
}

async function generateKeyPair(type: LeafKeyType = 'ec-p256'): Promise<CryptoKeyPair> {
  if (type === 'ec-p256') return subtle.generateKey(KEY_ALGORITHM, true, ['sign', 'verify']);
  const rsa: webcrypto.RsaHashedKeyGenParams = {
    name: 'RSASSA-PKCS1-v1_5',
    modulusLength: type === 'rsa-1024' ? 1024 : 2048,
    publicExponent: new Uint8Array([1, 0, 1]),
    hash: 'SHA-256',
  };
  return subtle.generateKey(rsa, true, ['sign', 'verify']);
}

async function exportPrivateKey(key: CryptoKey): Promise<string> {
  return toPem('PRIVATE KEY', await subtle.exportKey('pkcs8', key));
}

/** Import a CA private key (EC P-256/384/521 or RSA, any PEM form Node reads) for signing. */
async function importSigningKey(pem: string): Promise<{ key: CryptoKey; algorithm: SigningAlgorithm }> {
  const keyObject = createPrivateKey(pem);
  const der = keyObject.export({ type: 'pkcs8', format: 'der' });
  if (keyObject.asymmetricKeyType === 'ec') {
    const curves: Record<string, string> = { prime256v1: 'P-256', secp384r1: 'P-384', secp521r1: 'P-521' };
    const curve = curves[keyObject.asymmetricKeyDetails?.namedCurve ?? ''];
    if (curve === undefined) {
      throw new RangeError(`unsupported CA key curve ${String(keyObject.asymmetricKeyDetails?.namedCurve)}`);
    }
    const hash = curve === 'P-256' ? 'SHA-256' : curve === 'P-384' ? 'SHA-384' : 'SHA-512';
    const key = await subtle.importKey('pkcs8', der, { name: 'ECDSA', namedCurve: curve }, false, ['sign']);
    return { key, algorithm: { name: 'ECDSA', hash } as webcrypto.EcdsaParams };
  }
  if (keyObject.asymmetricKeyType === 'rsa') {
    const algorithm = { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' };
    const key = await subtle.importKey('pkcs8', der, algorithm, false, ['sign']);
    return { key, algorithm };
  }
  throw new RangeError(`unsupported CA key type ${String(keyObject.asymmetricKeyType)}`);
}

/** Create a self-signed CA (ECDSA P-256, basicConstraints CA:true critical, keyCertSign + cRLSign). */
export async function createCa(
  commonName: string,
  opts: { notBefore?: Date; notAfter?: Date } = {},
): Promise<PemPair> {
  const keys = await generateKeyPair();
  const cert = await X509CertificateGenerator.createSelfSigned(
    {
      serialNumber: serialNumber(),
      name: subjectName(commonName),
      ...validity(opts.notBefore, opts.notAfter, CA_LIFETIME_MS),
      signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' } as webcrypto.EcdsaParams,
      keys,
      extensions: [
        new BasicConstraintsExtension(true, undefined, true),
        new KeyUsagesExtension(
          KeyUsageFlags.keyCertSign | KeyUsageFlags.cRLSign | KeyUsageFlags.digitalSignature,
          true,
        ),
        await SubjectKeyIdentifierExtension.create(keys.publicKey, false, cryptoImpl),
      ],
    },
    cryptoImpl,
  );
  return { cert: cert.toString('pem') + '\n', key: await exportPrivateKey(keys.privateKey) };
}

function altNames(opts: Pick<LeafOptions, 'dnsNames' | 'ipAddresses' | 'uris'>): JsonGeneralName[] {
  const names: JsonGeneralName[] = [];
  for (const dns of opts.dnsNames ?? []) {
    if (
      !/^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$/.test(dns)
    ) {
      throw new RangeError(`invalid DNS SAN ${JSON.stringify(dns)}`);
    }
    names.push({ type: 'dns', value: dns });
  }
  for (const ip of opts.ipAddresses ?? []) {
    if (isIP(ip) === 0) throw new RangeError(`invalid IP SAN ${JSON.stringify(ip)}`);
    names.push({ type: 'ip', value: ip });
  }
  for (const uri of opts.uris ?? []) {
    if (!/^[A-Za-z][A-Za-z0-9+.-]*:\S+$/.test(uri))
      throw new RangeError(`invalid URI SAN ${JSON.stringify(uri)}`);
    names.push({ type: 'url', value: uri });
  }
  return names;
}

/** Issue a leaf certificate signed by `ca`, with the requested extended key usage and SANs. */
export async function issueCertificate(ca: PemPair, opts: LeafOptions): Promise<PemPair> {
  const caCert = new X509Certificate(ca.cert);
  const signer = await importSigningKey(ca.key);
  const keys = await generateKeyPair(opts.keyType);

  const usages: ExtendedKeyUsage[] = [];
  if (opts.usage !== 'client') usages.push(ExtendedKeyUsage.serverAuth);
  if (opts.usage !== 'server') usages.push(ExtendedKeyUsage.clientAuth);
  const caSki = caCert.getExtension(SubjectKeyIdentifierExtension);
  const extensions: Extension[] = [
    new BasicConstraintsExtension(false, undefined, true),
    new KeyUsagesExtension(KeyUsageFlags.digitalSignature, true),
    new ExtendedKeyUsageExtension(usages, false),
    await SubjectKeyIdentifierExtension.create(keys.publicKey, false, cryptoImpl),
    caSki !== null
      ? new AuthorityKeyIdentifierExtension(caSki.keyId, false)
      : await AuthorityKeyIdentifierExtension.create(caCert.publicKey, false, cryptoImpl),
  ];
  const names = altNames(opts);
  if (names.length > 0) extensions.push(new SubjectAlternativeNameExtension(names, false));

  const cert = await X509CertificateGenerator.create(
    {
      serialNumber: serialNumber(),
      subject: subjectName(opts.commonName),
      issuer: caCert.subjectName,
      ...validity(opts.notBefore, opts.notAfter, LEAF_LIFETIME_MS),
      signingAlgorithm: signer.algorithm,
      publicKey: keys.publicKey,
      signingKey: signer.key,
      extensions,
    },
    cryptoImpl,
  );
  const pem = cert.toString('pem') + '\n';
  if (!new NodeX509Certificate(pem).checkIssued(new NodeX509Certificate(ca.cert))) {
    throw new Error(`issued certificate for ${opts.commonName} does not chain to the CA`);
  }
  return { cert: pem, key: await exportPrivateKey(keys.privateKey) };
}

export interface CsrOptions {
  commonName: string;
  dnsNames?: string[];
  ipAddresses?: string[];
  uris?: string[];
  /** The extended key usage asked for: server (return listener), client (toward archives), both. */
  usage: CertificateUsage;
  keyType?: LeafKeyType;
}

/**
 * A PKCS#10 certificate signing request (RFC 2986) for one of the proxy's certificates, with a new key:
 * the subject CN, the SANs and the extended key usage requested as extensions (the CA decides what it
 * issues). Returns the CSR and the private key, both PEM.
 */
export async function createCsr(opts: CsrOptions): Promise<{ csr: string; key: string }> {
  if (opts.keyType === 'rsa-1024') throw new RangeError('RSA 1024 is too weak for BCP 195');
  const keys = await generateKeyPair(opts.keyType);
  const usages: ExtendedKeyUsage[] = [];
  if (opts.usage !== 'client') usages.push(ExtendedKeyUsage.serverAuth);
  if (opts.usage !== 'server') usages.push(ExtendedKeyUsage.clientAuth);
  const extensions: Extension[] = [
    new KeyUsagesExtension(KeyUsageFlags.digitalSignature, true),
    new ExtendedKeyUsageExtension(usages, false),
  ];
  const names = altNames(opts);
  if (names.length > 0) extensions.push(new SubjectAlternativeNameExtension(names, false));
  const csr = await Pkcs10CertificateRequestGenerator.create(
    {
      name: subjectName(opts.commonName),
      keys,
      signingAlgorithm:
        opts.keyType === 'rsa-2048'
          ? { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' }
          : ({ name: 'ECDSA', hash: 'SHA-256' } as webcrypto.EcdsaParams),
      extensions,
    },
    cryptoImpl,
  );
  return { csr: csr.toString('pem') + '\n', key: await exportPrivateKey(keys.privateKey) };
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path, fsConstants.F_OK);
    return true;
  } catch {
    return false;
  }
}

async function writePair(certPath: string, keyPath: string, pair: PemPair): Promise<void> {
  await writeFile(certPath, pair.cert, { mode: 0o644 });
  await writeFile(keyPath, pair.key, { mode: 0o600 });
  // writeFile's mode applies only when the file is created; enforce it for overwrites too.
  await chmod(keyPath, 0o600);
}

/**
 * Write a demo PKI into `dir`: a CA, the proxy's client and server certificates and the demo archive's
 * certificate. Without `overwrite`, existing files are kept and their paths returned; if some are
 * missing, the missing leaves are issued by the existing CA (a new CA, if the CA itself is missing,
 * re-issues every leaf so the set stays consistent).
 */
export async function writeDemoPki(dir: string, opts: { overwrite?: boolean } = {}): Promise<DemoPkiPaths> {
  const paths: DemoPkiPaths = {
    dir,
    caCert: join(dir, 'ca.pem'),
    caKey: join(dir, 'ca.key'),
    proxyClientCert: join(dir, 'proxy-client.pem'),
    proxyClientKey: join(dir, 'proxy-client.key'),
    proxyServerCert: join(dir, 'proxy-server.pem'),
    proxyServerKey: join(dir, 'proxy-server.key'),
    archiveCert: join(dir, 'archive.pem'),
    archiveKey: join(dir, 'archive.key'),
  };
  await mkdir(dir, { recursive: true });
  const overwrite = opts.overwrite === true;

  let ca: PemPair;
  const keepCa = !overwrite && (await exists(paths.caCert)) && (await exists(paths.caKey));
  if (keepCa) {
    ca = { cert: await readFile(paths.caCert, 'utf8'), key: await readFile(paths.caKey, 'utf8') };
  } else {
    ca = await createCa('dimse-tls-proxy demo CA');
    await writePair(paths.caCert, paths.caKey, ca);
  }

  const leaves: { cert: string; key: string; opts: LeafOptions }[] = [
    {
      cert: paths.proxyClientCert,
      key: paths.proxyClientKey,
      opts: { commonName: 'dimse-tls-proxy', usage: 'client' },
    },
    {
      cert: paths.proxyServerCert,
      key: paths.proxyServerKey,
      opts: {
        commonName: 'dimse-tls-proxy',
        dnsNames: ['localhost'],
        ipAddresses: ['127.0.0.1'],
        usage: 'both',
      },
    },
    {
      cert: paths.archiveCert,
      key: paths.archiveKey,
      opts: {
        commonName: 'archive.local',
        dnsNames: ['archive.local', 'localhost'],
        ipAddresses: ['127.0.0.1', '::1'],
        usage: 'both',
      },
    },
  ];
  for (const leaf of leaves) {
    if (keepCa && (await exists(leaf.cert)) && (await exists(leaf.key))) continue;
    await writePair(leaf.cert, leaf.key, await issueCertificate(ca, leaf.opts));
  }
  return paths;
}
