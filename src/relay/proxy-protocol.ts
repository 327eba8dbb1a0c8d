// PROXY protocol header (HAProxy's "PROXY protocol" specification, versions 1 and 2), read at the start
// of a connection from a configured load balancer: it names the client the balancer accepted, which is
// then the address the AE binding, limits, logs, metrics, ledger and audit use.
//
// Version 1: one line of US-ASCII, "PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\r\n" or "PROXY UNKNOWN…\r\n",
// at most 107 bytes (spec 2.1). Version 2: a 12-byte signature, version/command, family/protocol, a
// 16-bit length, then the addresses and optional TLVs (spec 2.2). LOCAL (v2 command 0) and UNKNOWN (v1)
// are the balancer's own connections, e.g. health checks: the socket's own address stands.
//
// The header is parsed from a bounded prefix only: nothing past it is consumed, and a byte that cannot
// start a header is reported at once, so a plain DICOM or TLS client is told apart by its first byte.
import type { Socket } from 'node:net';
import ipaddr from 'ipaddr.js';
import type { Clock } from '../util/clock.js';
import type { ConnectionRefusal } from '../vocabulary/outcomes.js';

/** v2 signature, spec 2.2: \r\n\r\n\0\r\nQUIT\n. */
export const PROXY_V2_SIGNATURE = Buffer.from([
  0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
]);
const V1_PREFIX = Buffer.from('PROXY ', 'latin1');
/** Spec 2.1: the longest v1 line, CRLF included. */
export const PROXY_V1_MAX = 107;
/**
 * Largest v2 header accepted (16 bytes + addresses + TLVs). The spec allows a 16-bit length; balancers
 * send far less (HAProxy: addresses and a few TLVs). Bounds what a connection may make the proxy hold.
 */
export const PROXY_V2_MAX = 16 + 1024;

export interface ProxiedEndpoint {
  address: string;
  port: number;
}

export type ProxyHeaderResult =
  /** More bytes are needed (none of what was seen contradicts a header). */
  | { kind: 'incomplete' }
  /** Not a PROXY header at all (its first bytes are another protocol's). */
  | { kind: 'absent' }
  /** Starts like a header but breaks the specification. */
  | { kind: 'invalid'; message: string }
  /**
   * A whole header of `length` bytes. `source` is the client, or null for the balancer's own connection
   * (v2 LOCAL, v1 UNKNOWN, or an address family the proxy does not relay: UNSPEC, UNIX).
   */
  | { kind: 'header'; version: 1 | 2; length: number; source: ProxiedEndpoint | null };

/** Read a PROXY header at the start of `buf` (the bytes received so far). */
export function parseProxyHeader(buf: Buffer): ProxyHeaderResult {
  if (buf.length === 0) return { kind: 'incomplete' };
  const first = buf[0];
  if (first === PROXY_V2_SIGNATURE[0]) return parseV2(buf);
  if (first === V1_PREFIX[0]) return parseV1(buf);
  return { kind: 'absent' };
}

function prefixMatches(buf: Buffer, expected: Buffer): boolean {
  const n = Math.min(buf.length, expected.length);
  return buf.subarray(0, n).equals(expected.subarray(0, n));
}

function parseV1(buf: Buffer): ProxyHeaderResult {
  if (!prefixMatches(buf, V1_PREFIX)) return { kind: 'absent' };
  const end = buf.indexOf('\r\n', 0, 'latin1');
  if (end === -1) {
    return buf.length >= PROXY_V1_MAX
      ? { kind: 'invalid', message: `PROXY v1 line longer than ${PROXY_V1_MAX} bytes` }
      : { kind: 'incomplete' };
  }
  const length = end + 2;
  if (length > PROXY_V1_MAX) {
    return { kind: 'invalid', message: `PROXY v1 line longer than ${PROXY_V1_MAX} bytes` };
  }
  const line = buf.toString('latin1', 0, end);
  if (!/^[\x20-\x7e]*$/.test(line))
    return { kind: 'invalid', message: 'PROXY v1 line is not printable US-ASCII' };
  const parts = line.split(' ');
  if (parts[1] === 'UNKNOWN') return { kind: 'header', version: 1, length, source: null };
  if (parts.length !== 6 || (parts[1] !== 'TCP4' && parts[1] !== 'TCP6')) {
    return { kind: 'invalid', message: `PROXY v1 line malformed: ${JSON.stringify(line.slice(0, 60))}` };
  }
  const [, family, src, dst, sport, dport] = parts as [string, string, string, string, string, string];
  const v4 = family === 'TCP4';
  for (const a of [src, dst]) {
    const ok = v4 ? ipaddr.IPv4.isValidFourPartDecimal(a) : ipaddr.IPv6.isValid(a) && !a.includes('%');
    if (!ok)
      return { kind: 'invalid', message: `PROXY v1 ${family} address ${JSON.stringify(a)} is not valid` };
  }
  for (const p of [sport, dport]) {
    if (!/^(0|[1-9][0-9]{0,4})$/.test(p) || Number(p) > 65535) {
      return { kind: 'invalid', message: `PROXY v1 port ${JSON.stringify(p)} is not valid` };
    }
  }
  return {
    kind: 'header',
    version: 1,
    length,
    source: { address: v4 ? src : v6Text(ipaddr.IPv6.parse(src)), port: Number(sport) },
  };
}

function parseV2(buf: Buffer): ProxyHeaderResult {
  if (!prefixMatches(buf, PROXY_V2_SIGNATURE)) return { kind: 'absent' };
  if (buf.length < 16) return { kind: 'incomplete' };
  const verCmd = buf[12] as number;
  if (verCmd >> 4 !== 2) return { kind: 'invalid', message: `PROXY v2 version ${verCmd >> 4} is not 2` };
  const command = verCmd & 0x0f;
  if (command > 1)
    return { kind: 'invalid', message: `PROXY v2 command ${command} is neither LOCAL nor PROXY` };
  const famProto = buf[13] as number;
  const addrLen = buf.readUInt16BE(14);
  const length = 16 + addrLen;
  if (length > PROXY_V2_MAX) {
    return {
      kind: 'invalid',
      message: `PROXY v2 header of ${length} bytes exceeds the ${PROXY_V2_MAX} accepted`,
    };
  }
  if (buf.length < length) return { kind: 'incomplete' };
  if (command === 0) return { kind: 'header', version: 2, length, source: null }; // LOCAL
  const family = famProto >> 4;
  const transport = famProto & 0x0f;
  if (family === 0 || family === 3) return { kind: 'header', version: 2, length, source: null }; // UNSPEC, UNIX
  if (family > 3 || transport > 2) {
    return {
      kind: 'invalid',
      message: `PROXY v2 address family/protocol 0x${famProto.toString(16)} is not defined`,
    };
  }
  if (transport !== 1) {
    return { kind: 'invalid', message: 'PROXY v2 header names a transport other than TCP (STREAM)' };
  }
  const need = family === 1 ? 12 : 36;
  if (addrLen < need) {
    return { kind: 'invalid', message: `PROXY v2 address block of ${addrLen} bytes is shorter than ${need}` };
  }
  const ipLen = family === 1 ? 4 : 16;
  const src = ipaddr.fromByteArray([...buf.subarray(16, 16 + ipLen)]);
  const port = buf.readUInt16BE(16 + 2 * ipLen);
  const address = src.kind() === 'ipv4' ? src.toString() : v6Text(src as ipaddr.IPv6);
  return { kind: 'header', version: 2, length, source: { address, port } };
}

/** Encode a v2 PROXY header (tests, and the bench's balancer stand-in). */
export function encodeProxyV2(source: ProxiedEndpoint | null, destination?: ProxiedEndpoint): Buffer {
  if (source === null) {
    return Buffer.concat([PROXY_V2_SIGNATURE, Buffer.from([0x20, 0x00, 0x00, 0x00])]);
  }
  const src = ipaddr.parse(source.address);
  const dst = ipaddr.parse(destination?.address ?? (src.kind() === 'ipv4' ? '0.0.0.0' : '::'));
  const v4 = src.kind() === 'ipv4';
  const body = Buffer.concat([
    Buffer.from(src.toByteArray()),
    Buffer.from(dst.toByteArray()),
    Buffer.from([
      source.port >> 8,
      source.port & 0xff,
      (destination?.port ?? 0) >> 8,
      (destination?.port ?? 0) & 0xff,
    ]),
  ]);
  const head = Buffer.from([0x21, v4 ? 0x11 : 0x21, body.length >> 8, body.length & 0xff]);
  return Buffer.concat([PROXY_V2_SIGNATURE, head, body]);
}

/** An IPv6 address as Node reports a socket's: an IPv4-mapped one as ::ffff:a.b.c.d. */
function v6Text(a: ipaddr.IPv6): string {
  return a.isIPv4MappedAddress() ? `::ffff:${a.toIPv4Address().toString()}` : a.toString();
}

export type PreambleResult =
  /** From a balancer: the client its header names (null: the balancer's own connection). */
  | { kind: 'proxied'; source: ProxiedEndpoint | null; version: 1 | 2 }
  /** Not from a balancer, and no header: served as it is. */
  | { kind: 'direct' }
  | { kind: 'refused'; reason: ConnectionRefusal; message: string };

/**
 * Read what a connection sends first on a listener with PROXY protocol enabled. From a balancer
 * (`fromBalancer`), a whole header is required within `timeoutMs`; from anyone else, a header is refused
 * (a client cannot name its own address). Only the header is consumed: whatever followed it in the same
 * read is put back (socket.unshift) for the association. The socket is paused when this resolves.
 */
export function readPreamble(
  socket: Socket,
  fromBalancer: boolean,
  timeoutMs: number,
  clock: Clock,
): Promise<PreambleResult> {
  return new Promise((resolve) => {
    let seen: Buffer = Buffer.alloc(0);
    let done = false;
    const finish = (r: PreambleResult, rest: Buffer | null): void => {
      if (done) return;
      done = true;
      clock.clearTimeout(timer);
      socket.removeListener('data', onData);
      socket.removeListener('close', onClose);
      socket.pause();
      if (rest && rest.length > 0) socket.unshift(rest);
      resolve(r);
    };
    const onClose = (): void =>
      finish(
        fromBalancer
          ? { kind: 'refused', reason: 'proxy-header-missing', message: 'closed before a PROXY header' }
          : { kind: 'direct' },
        null,
      );
    const onData = (chunk: Buffer): void => {
      seen = seen.length === 0 ? chunk : Buffer.concat([seen, chunk]);
      const r = parseProxyHeader(seen);
      if (r.kind === 'incomplete') {
        // Nothing to wait for from a direct client past the few bytes that tell a header apart.
        if (!fromBalancer && seen.length >= PROXY_V2_SIGNATURE.length) finish({ kind: 'direct' }, seen);
        return;
      }
      if (r.kind === 'absent') {
        finish(
          fromBalancer
            ? {
                kind: 'refused',
                reason: 'proxy-header-missing',
                message: 'a connection from a configured load balancer must begin with a PROXY header',
              }
            : { kind: 'direct' },
          seen,
        );
        return;
      }
      if (!fromBalancer) {
        finish(
          {
            kind: 'refused',
            reason: 'proxy-header-untrusted',
            message: 'a PROXY header from an address that is not a configured load balancer',
          },
          null,
        );
        return;
      }
      if (r.kind === 'invalid') {
        finish({ kind: 'refused', reason: 'proxy-header-invalid', message: r.message }, null);
        return;
      }
      finish({ kind: 'proxied', source: r.source, version: r.version }, seen.subarray(r.length));
    };
    const timer = clock.setTimeout(
      () =>
        finish(
          fromBalancer
            ? {
                kind: 'refused',
                reason: 'proxy-header-timeout',
                message: `no whole PROXY header within ${timeoutMs} ms`,
              }
            : { kind: 'direct' },
          seen,
        ),
      timeoutMs,
    );
    socket.on('data', onData);
    socket.once('close', onClose);
  });
}
