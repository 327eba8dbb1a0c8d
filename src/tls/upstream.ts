// Secure contexts for the upstream (archive) leg and the classification of connect/handshake failures.
import { readFileSync } from 'node:fs';
import { X509Certificate } from 'node:crypto';
import * as net from 'node:net';
import * as tls from 'node:tls';
import { TLS_PROFILES, type TlsProfileName } from './profiles.js';
import type { UpstreamConnectFailure } from '../vocabulary/outcomes.js';
import { peerKeyProblem, presentedCertificate, type PresentedCertificate } from './keys.js';

export interface UpstreamTlsSettings {
  ca: string;
  cert: string;
  key: string;
  serverName: string;
  verifyHostname: boolean;
  profile: TlsProfileName;
}

export class TlsMaterialError extends Error {
  readonly code = 'TLS_MATERIAL_INVALID';
  constructor(
    readonly file: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'TlsMaterialError';
  }
}

function readPem(file: string, what: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    throw new TlsMaterialError(file, `cannot read ${what} ${file}: ${(err as Error).message}`, {
      cause: err,
    });
  }
}

/** Everything needed to open one upstream connection; built at config load, immutable afterwards. */
export interface UpstreamTlsContext {
  settings: UpstreamTlsSettings;
  secureContext: tls.SecureContext;
  /** Not-after of the client certificate, for logs and (later) metrics. */
  clientCertNotAfter: Date;
  clientCertSubject: string;
}

export function buildUpstreamTlsContext(settings: UpstreamTlsSettings): UpstreamTlsContext {
  const profile = TLS_PROFILES[settings.profile];
  const ca = readPem(settings.ca, 'CA bundle');
  const cert = readPem(settings.cert, 'client certificate');
  const key = readPem(settings.key, 'client key');
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(cert);
  } catch (err) {
    throw new TlsMaterialError(
      settings.cert,
      `${settings.cert} is not a PEM certificate: ${(err as Error).message}`,
      {
        cause: err,
      },
    );
  }
  let secureContext: tls.SecureContext;
  try {
    secureContext = tls.createSecureContext({
      ca,
      cert,
      key,
      minVersion: profile.minVersion,
      maxVersion: profile.maxVersion,
      ciphers: profile.ciphers,
    });
  } catch (err) {
    throw new TlsMaterialError(
      settings.key,
      `TLS material for ${settings.cert} / ${settings.key} rejected: ${(err as Error).message}`,
      { cause: err },
    );
  }
  return {
    settings,
    secureContext,
    clientCertNotAfter: new Date(x509.validTo),
    clientCertSubject: x509.subject,
  };
}

/** vocabulary/outcomes.ts UPSTREAM_CONNECT_FAILURES. */
export type UpstreamFailureReason = UpstreamConnectFailure;

/**
 * The TLS alerts (RFC 8446 section 6.2, as OpenSSL's error codes name them) a server sends about the
 * client's certificate: bad_certificate, unsupported_certificate, certificate_revoked, certificate_expired,
 * certificate_unknown, unknown_ca, access_denied, certificate_required.
 */
const CLIENT_CERTIFICATE_ALERT =
  /^ERR_SSL_(SSLV3|TLSV1|TLSV13)_ALERT_(BAD_CERTIFICATE|UNSUPPORTED_CERTIFICATE|CERTIFICATE_REVOKED|CERTIFICATE_EXPIRED|CERTIFICATE_UNKNOWN|UNKNOWN_CA|ACCESS_DENIED|CERTIFICATE_REQUIRED)$/;

/**
 * For an error on an upstream socket after connectUpstream resolved (before the A-ASSOCIATE-AC): the
 * reason when it is the archive refusing the proxy's client certificate (a TLS alert naming it), else
 * null (the caller keeps its own classification, e.g. 'closed').
 */
export function classifyUpstreamSocketError(err: unknown): 'client-certificate-rejected' | null {
  const e = err as { code?: unknown; message?: unknown } | null;
  const code = typeof e?.code === 'string' ? e.code : '';
  const msg = typeof e?.message === 'string' ? e.message : '';
  if (CLIENT_CERTIFICATE_ALERT.test(code)) return 'client-certificate-rejected';
  if (
    /alert (bad certificate|certificate required|unknown ca|certificate unknown|certificate expired|certificate revoked|unsupported certificate|access denied)/i.test(
      msg,
    )
  )
    return 'client-certificate-rejected';
  return null;
}

/**
 * TLS 1.3 (RFC 8446 section 4.4.2): the client's handshake completes before the server has checked the
 * client certificate; a server that refuses it sends an alert (or just closes) after that. connectUpstream
 * resolves only once the server has shown it accepted the session (its NewSessionTicket, Node's 'session'
 * event) or after this long, so a refusal is classified as such and not as a later 'closed'.
 */
export const UPSTREAM_TLS13_SETTLE_MS = 250;

/** Map a socket/TLS error to a stable reason an admin can act on (log field, later a metric label). */
export function classifyUpstreamError(err: unknown): UpstreamFailureReason {
  const e = err as NodeJS.ErrnoException & { reason?: string };
  const code = e?.code ?? '';
  const msg = String(e?.message ?? '');
  switch (code) {
    case 'ECONNREFUSED':
      return 'refused';
    case 'ETIMEDOUT':
    case 'UPSTREAM_TIMEOUT':
      return 'timeout';
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return 'unreachable';
    case 'CERT_HAS_EXPIRED':
      return 'certificate-expired';
    case 'CERT_NOT_YET_VALID':
      return 'certificate-not-yet-valid';
    case 'UNABLE_TO_VERIFY_LEAF_SIGNATURE':
    case 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY':
    case 'UNABLE_TO_GET_ISSUER_CERT':
    case 'SELF_SIGNED_CERT_IN_CHAIN':
    case 'DEPTH_ZERO_SELF_SIGNED_CERT':
    case 'CERT_SIGNATURE_FAILURE':
      return 'unknown-ca';
    case 'ERR_TLS_CERT_ALTNAME_INVALID':
      return 'hostname-mismatch';
    case 'INVALID_PURPOSE':
      return 'certificate-wrong-key-usage';
    case 'EE_KEY_TOO_SMALL':
    case 'CA_KEY_TOO_SMALL':
    case 'UPSTREAM_WEAK_KEY':
      return 'weak-key';
    case 'UPSTREAM_SESSION_REFUSED':
      return 'client-certificate-rejected';
    default:
      break;
  }
  if (CLIENT_CERTIFICATE_ALERT.test(code)) return 'client-certificate-rejected';
  // OpenSSL's security level refused the archive's key ("EE certificate key too weak", "ee key too small").
  if (/key too (weak|small)/i.test(msg)) return 'weak-key';
  if (/certificate required|bad certificate|unknown ca|certificate unknown|alert number 4[0-9]/i.test(msg)) {
    return /handshake failure/i.test(msg) ? 'handshake-failed' : 'client-certificate-rejected';
  }
  if (code === 'ECONNRESET' || code === 'EPIPE' || /socket hang up|disconnected before/i.test(msg))
    return 'closed';
  return 'handshake-failed';
}

export interface UpstreamConnectOptions {
  host: string;
  port: number;
  timeoutMs: number;
  tls: UpstreamTlsContext;
}

export class UpstreamConnectError extends Error {
  readonly code = 'UPSTREAM_CONNECT_FAILED';
  /** The certificate the archive presented, when the handshake got that far (for the Security Alert). */
  readonly certificate: PresentedCertificate | null;
  constructor(
    readonly reason: UpstreamFailureReason,
    message: string,
    options?: { cause?: unknown; certificate?: PresentedCertificate | null },
  ) {
    super(message, options);
    this.name = 'UpstreamConnectError';
    this.certificate = options?.certificate ?? null;
  }
}

/** How long the TCP connect and the TLS handshake of an upstream connection took (for metrics). */
export interface ConnectTimings {
  connectMs: number;
  handshakeMs: number;
}

const timings = new WeakMap<object, ConnectTimings>();

/** The timings of a socket made by connectUpstream / connectPlain, if known. */
export function connectTimings(socket: object): ConnectTimings | undefined {
  return timings.get(socket);
}

/**
 * Open a mutual-TLS connection to the archive. Resolves once the handshake is complete and the server
 * certificate (chain, validity and, unless disabled, host name) is verified.
 */
export function connectUpstream(opts: UpstreamConnectOptions): Promise<tls.TLSSocket> {
  const { settings, secureContext } = opts.tls;
  return new Promise((resolve, reject) => {
    let settled = false;
    const started = performance.now();
    let tcpMs = -1;
    const socket = tls.connect({
      host: opts.host,
      port: opts.port,
      servername: isIp(settings.serverName) ? undefined : settings.serverName,
      secureContext,
      rejectUnauthorized: true,
      checkServerIdentity: settings.verifyHostname
        ? (_host, cert) => tls.checkServerIdentity(settings.serverName, cert)
        : () => undefined,
    });
    socket.setNoDelay(true); // applied as soon as the TCP connection exists (DESIGN: Nagle costs ~50 ms a message)
    socket.once('connect', () => (tcpMs = performance.now() - started));
    // What the archive presented, read while the handshake's handle is still alive: Node destroys the
    // socket before its 'error' when verification fails (an expired or weak certificate), and the refusal's
    // log line and Security Alert name the certificate (subject, issuer, fingerprint).
    let presented: PresentedCertificate | null = null;
    socket.prependListener('secure', () => (presented = presentedCertificate(socket)));
    const fail = (err: unknown): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      clearTimeout(settle);
      const classified = classifyUpstreamError(err);
      // A reset while waiting for the TLS 1.3 session to be accepted is the archive refusing it.
      const reason =
        settle !== undefined && classified === 'closed' ? 'client-certificate-rejected' : classified;
      let detail = (err as Error)?.message ?? String(err);
      if (reason === 'weak-key' && (err as { code?: string })?.code !== 'UPSTREAM_WEAK_KEY') {
        const weak = peerKeyProblem(socket); // OpenSSL's security level refused it: say which key
        if (weak) detail = `${detail}: the archive's certificate: ${weak}`;
      }
      const certificate = presentedCertificate(socket) ?? presented;
      socket.destroy();
      reject(
        new UpstreamConnectError(
          reason,
          `${opts.host}:${opts.port} (${settings.serverName}): ${reason}: ${detail}`,
          { cause: err, certificate },
        ),
      );
    };
    const timer = setTimeout(() => {
      const err = Object.assign(new Error(`no TLS session within ${opts.timeoutMs} ms`), {
        code: 'UPSTREAM_TIMEOUT',
      });
      fail(err);
    }, opts.timeoutMs);
    socket.once('error', fail);
    socket.once('close', () =>
      fail(Object.assign(new Error('closed during TLS handshake'), { code: 'ECONNRESET' })),
    );
    const established = (): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      clearTimeout(settle);
      socket.removeListener('error', fail);
      socket.removeAllListeners('close');
      socket.removeListener('session', established);
      socket.setNoDelay(true);
      const total = performance.now() - started;
      timings.set(socket, { connectMs: Math.max(tcpMs, 0), handshakeMs: total - Math.max(tcpMs, 0) });
      resolve(socket);
    };
    let settle: NodeJS.Timeout | undefined;
    socket.once('secureConnect', () => {
      if (settled) return;
      // BCP 195 / RFC 9325 section 4.5: the archive's key must be strong enough, whatever OpenSSL's
      // security level allowed.
      const weak = peerKeyProblem(socket);
      if (weak) {
        fail(Object.assign(new Error(`the archive's certificate: ${weak}`), { code: 'UPSTREAM_WEAK_KEY' }));
        return;
      }
      if (socket.getProtocol() !== 'TLSv1.3') {
        established();
        return;
      }
      // A close now (without an alert of its own) is the archive refusing the session after reading the
      // proxy's certificate: the only thing it has not accepted yet.
      socket.removeAllListeners('close');
      socket.once('close', () =>
        fail(
          Object.assign(
            new Error(
              'the archive closed the connection after the TLS 1.3 handshake without accepting the session: it refused the client certificate',
            ),
            { code: 'UPSTREAM_SESSION_REFUSED' },
          ),
        ),
      );
      socket.once('session', established);
      settle = setTimeout(established, UPSTREAM_TLS13_SETTLE_MS);
    });
  });
}

function isIp(name: string): boolean {
  return /^[0-9.]+$/.test(name) || name.includes(':');
}

/** Short identity of a peer certificate for logs: subject CN and SHA-256 fingerprint. */
export function peerCertificateSummary(
  socket: tls.TLSSocket,
): { subject: string; fingerprint256: string } | null {
  const cert = socket.getPeerCertificate();
  if (!cert || Object.keys(cert).length === 0) return null;
  const cn = cert.subject?.CN;
  return { subject: Array.isArray(cn) ? cn.join(',') : (cn ?? ''), fingerprint256: cert.fingerprint256 };
}

/**
 * Open a plaintext TCP connection (the return path's leg to a receiver on the modality segment), with the
 * same timeout and failure classification as connectUpstream.
 */
export function connectPlain(opts: { host: string; port: number; timeoutMs: number }): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    let settled = false;
    const started = performance.now();
    const socket = net.connect({ host: opts.host, port: opts.port, noDelay: true });
    const fail = (err: unknown): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      const reason = classifyUpstreamError(err);
      const detail = (err as Error)?.message ?? String(err);
      reject(
        new UpstreamConnectError(reason, `${opts.host}:${opts.port}: ${reason}: ${detail}`, { cause: err }),
      );
    };
    const timer = setTimeout(
      () =>
        fail(
          Object.assign(new Error(`no connection within ${opts.timeoutMs} ms`), { code: 'UPSTREAM_TIMEOUT' }),
        ),
      opts.timeoutMs,
    );
    socket.once('error', fail);
    socket.once('connect', () => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.removeListener('error', fail);
      timings.set(socket, { connectMs: performance.now() - started, handshakeMs: 0 });
      resolve(socket);
    });
  });
}
