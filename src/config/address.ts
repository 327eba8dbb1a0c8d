import ipaddr from 'ipaddr.js';

export type IpAddress = ipaddr.IPv4 | ipaddr.IPv6;

/** A compiled allowlist entry: an address and its prefix length (a single address is /32 or /128). */
export interface AddressRange {
  address: IpAddress;
  prefix: number;
}

export type AddressRangeResult = ({ ok: true } & AddressRange) | { ok: false; message: string };

/**
 * Parses an allowlist entry: an IPv4 address in dotted-quad decimal (no octal/hex/short forms), an IPv6
 * address, or either with a /prefix. An IPv4-mapped IPv6 entry (::ffff:a.b.c.d[/96+n]) is turned into the
 * IPv4 equivalent so it matches clients the same way a dual-stack socket reports them. Host bits set below
 * the prefix are refused, because the intended network is ambiguous.
 */
export function parseAddressRange(text: string): AddressRangeResult {
  const slash = text.indexOf('/');
  const addrText = slash === -1 ? text : text.slice(0, slash);
  const prefixText = slash === -1 ? null : text.slice(slash + 1);
  let address: IpAddress;
  if (ipaddr.IPv4.isValidFourPartDecimal(addrText)) {
    address = ipaddr.IPv4.parse(addrText);
  } else if (ipaddr.IPv6.isValid(addrText) && !addrText.includes('%')) {
    address = ipaddr.IPv6.parse(addrText);
  } else {
    return { ok: false, message: `"${text}" is not an IPv4/IPv6 address or CIDR` };
  }
  const maxPrefix = address.kind() === 'ipv4' ? 32 : 128;
  let prefix = maxPrefix;
  if (prefixText !== null) {
    if (!/^(0|[1-9][0-9]{0,2})$/.test(prefixText) || Number(prefixText) > maxPrefix) {
      return { ok: false, message: `"${text}" has an invalid prefix length (0-${maxPrefix})` };
    }
    prefix = Number(prefixText);
  }
  const network = networkOf(address, prefix);
  if (network.toNormalizedString() !== address.toNormalizedString()) {
    return {
      ok: false,
      message: `"${text}" has host bits set below /${prefix}; did you mean ${network.toString()}/${prefix}?`,
    };
  }
  if (address.kind() === 'ipv6' && (address as ipaddr.IPv6).isIPv4MappedAddress() && prefix >= 96) {
    return { ok: true, address: (address as ipaddr.IPv6).toIPv4Address(), prefix: prefix - 96 };
  }
  return { ok: true, address, prefix };
}

function networkOf(address: IpAddress, prefix: number): IpAddress {
  const bytes = address.toByteArray();
  for (let i = 0; i < bytes.length; i++) {
    const keep = Math.max(0, Math.min(8, prefix - i * 8));
    bytes[i] = (bytes[i] ?? 0) & ((0xff << (8 - keep)) & 0xff);
  }
  return ipaddr.fromByteArray(bytes);
}

/**
 * Parses a socket's remote address, folding IPv4-mapped IPv6 (`::ffff:10.20.0.15`) into IPv4 and dropping any
 * IPv6 zone id. Returns null when the text is not an address.
 */
export function parseRemoteAddress(text: string): IpAddress | null {
  const bare = text.includes('%') ? text.slice(0, text.indexOf('%')) : text;
  try {
    if (ipaddr.IPv4.isValidFourPartDecimal(bare)) return ipaddr.IPv4.parse(bare);
    if (!ipaddr.IPv6.isValid(bare)) return null;
    const v6 = ipaddr.IPv6.parse(bare);
    return v6.isIPv4MappedAddress() ? v6.toIPv4Address() : v6;
  } catch {
    return null;
  }
}

/** True when `address` lies inside `range`. */
export function rangeContains(range: AddressRange, address: IpAddress): boolean {
  if (range.address.kind() !== address.kind()) return false;
  return address.match(range.address, range.prefix);
}
