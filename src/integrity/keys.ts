// Ed25519 keys for signing ledger checkpoints.
import { type KeyObject, createPrivateKey, createPublicKey, generateKeyPairSync } from 'node:crypto';
import { chmod, mkdir, open, readFile, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { LedgerError } from './errors.js';
import { sha256Hex } from './format.js';

export const SIGNING_KEY_FILE = 'ledger-signing.key';
export const PUBLIC_KEY_FILE = 'ledger-signing.pub.pem';

export function generateSigningKey(): { privateKeyPem: string; publicKeyPem: string } {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519', {
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
    publicKeyEncoding: { type: 'spki', format: 'pem' },
  });
  return { privateKeyPem: privateKey, publicKeyPem: publicKey };
}

function requireEd25519(key: KeyObject, what: string): void {
  if (key.asymmetricKeyType !== 'ed25519') {
    throw new LedgerError(
      'LEDGER_KEY_INVALID',
      `${what} is a ${String(key.asymmetricKeyType)} key, not Ed25519`,
    );
  }
}

/** The Ed25519 private key of a PKCS#8 PEM; LEDGER_KEY_INVALID otherwise. */
export function loadSigningKey(privateKeyPem: string): KeyObject {
  let key: KeyObject;
  try {
    key = createPrivateKey(privateKeyPem);
  } catch (err) {
    throw new LedgerError(
      'LEDGER_KEY_INVALID',
      `the ledger signing key cannot be read: ${(err as Error).message}`,
      {
        cause: err,
      },
    );
  }
  requireEd25519(key, 'the ledger signing key');
  return key;
}

/** The Ed25519 public key of a PEM (an SPKI public key, or a private key it is derived from). */
export function loadPublicKey(pem: string): KeyObject {
  let key: KeyObject;
  try {
    key = createPublicKey(pem);
  } catch (err) {
    throw new LedgerError('LEDGER_KEY_INVALID', `the public key cannot be read: ${(err as Error).message}`, {
      cause: err,
    });
  }
  requireEd25519(key, 'the public key');
  return key;
}

/** Lower-case hex SHA-256 of the public key's DER SubjectPublicKeyInfo. */
export function keyIdOf(key: KeyObject): string {
  const pub = key.type === 'private' ? createPublicKey(key) : key;
  return sha256Hex(pub.export({ type: 'spki', format: 'der' }));
}

/** keyId of a public key PEM (a private key PEM works too). */
export function keyId(publicKeyPem: string): string {
  return keyIdOf(loadPublicKey(publicKeyPem));
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

async function writeNew(path: string, text: string, mode: number, overwrite: boolean): Promise<void> {
  const fh = await open(path, overwrite ? 'w' : 'wx', mode);
  try {
    await fh.writeFile(text);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await chmod(path, mode);
}

/**
 * Write `ledger-signing.key` (PKCS#8 PEM, mode 0600) and `ledger-signing.pub.pem` (SPKI PEM) to `dir`.
 * Existing files are kept unless `overwrite`; a missing public key is derived from an existing private
 * key. `created` tells whether a new key pair was generated.
 */
export async function writeSigningKey(
  dir: string,
  opts: { overwrite: boolean },
): Promise<{ privateKey: string; publicKey: string; keyId: string; created: boolean }> {
  const root = resolve(dir);
  await mkdir(root, { recursive: true, mode: 0o700 });
  const privateKey = join(root, SIGNING_KEY_FILE);
  const publicKey = join(root, PUBLIC_KEY_FILE);
  if (!opts.overwrite && (await exists(privateKey))) {
    const key = loadSigningKey(await readFile(privateKey, 'utf8'));
    const publicPem = createPublicKey(key).export({ type: 'spki', format: 'pem' }).toString();
    if (!(await exists(publicKey))) await writeNew(publicKey, publicPem, 0o644, false);
    else if (keyId(await readFile(publicKey, 'utf8')) !== keyIdOf(key)) {
      throw new LedgerError(
        'LEDGER_KEY_INVALID',
        `${publicKey} is not the public key of ${privateKey}; remove it or use --force for a new pair`,
      );
    }
    return { privateKey, publicKey, keyId: keyIdOf(key), created: false };
  }
  if (!opts.overwrite && (await exists(publicKey))) {
    throw new LedgerError(
      'LEDGER_KEY_INVALID',
      `${publicKey} exists without its private key ${privateKey}; remove it or use --force for a new pair`,
    );
  }
  const pair = generateSigningKey();
  await writeNew(privateKey, pair.privateKeyPem, 0o600, opts.overwrite);
  await writeNew(publicKey, pair.publicKeyPem, 0o644, opts.overwrite);
  return { privateKey, publicKey, keyId: keyId(pair.publicKeyPem), created: true };
}
