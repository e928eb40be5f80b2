import { BlockList, isIP } from 'node:net';

/**
 * Client addresses and networks. An IPv4 client of a dual-stack listener shows up as
 * `::ffff:a.b.c.d`; it is the same client as `a.b.c.d` and must meet the same rules.
 */
export function plainAddress(address: string): string {
  const a = address.trim().toLowerCase();
  const mapped = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/.exec(a);
  return mapped ? mapped[1]! : a.replace(/^\[|\]$/g, '');
}

const LOOPBACK = new BlockList();
LOOPBACK.addSubnet('127.0.0.0', 8, 'ipv4');
LOOPBACK.addAddress('::1', 'ipv6');

/** The loopback range itself (127.0.0.0/8, ::1), not "this host": a LAN address of this machine is not loopback. */
export function isLoopback(address: string): boolean {
  const a = plainAddress(address);
  const family = isIP(a);
  return family !== 0 && LOOPBACK.check(a, family === 4 ? 'ipv4' : 'ipv6');
}

/** A network in CIDR notation, e.g. `192.0.2.0/24` or `2001:db8::/32`; a bare address is one host. */
export interface Cidr {
  readonly address: string;
  readonly prefix: number;
  readonly family: 'ipv4' | 'ipv6';
}

export function parseCidr(text: string): Cidr {
  const t = text.trim();
  const slash = t.indexOf('/');
  const address = plainAddress(slash < 0 ? t : t.slice(0, slash));
  const version = isIP(address);
  if (version === 0) throw new Error(`'${t}' is not an IP address or CIDR network`);
  const family = version === 4 ? 'ipv4' : 'ipv6';
  const max = version === 4 ? 32 : 128;
  // An IPv4-mapped rule (::ffff:10.0.0.0/104) was already reduced to its IPv4 address above.
  const mappedShift = slash >= 0 && version === 4 && isIP(t.slice(0, slash)) === 6 ? 96 : 0;
  const prefixText = slash < 0 ? String(max + mappedShift) : t.slice(slash + 1);
  if (!/^\d{1,3}$/.test(prefixText)) throw new Error(`'${t}': the prefix length after '/' must be a number`);
  const prefix = Number(prefixText) - mappedShift;
  if (prefix < 0 || prefix > max) throw new Error(`'${t}': prefix length must be 0-${max} for ${family === 'ipv4' ? 'IPv4' : 'IPv6'}`);
  return { address, prefix, family };
}

export const cidrText = (c: Cidr): string => `${c.address}/${c.prefix}`;

/** The networks of SMIME_RELAY_ALLOW. */
export class AllowList {
  private readonly list = new BlockList();

  constructor(readonly networks: readonly Cidr[]) {
    for (const n of networks) this.list.addSubnet(n.address, n.prefix, n.family);
  }

  allows(address: string): boolean {
    const a = plainAddress(address);
    const version = isIP(a);
    // BlockList matches an IPv4 rule against an IPv4-mapped IPv6 address and the reverse.
    return version !== 0 && this.list.check(a, version === 4 ? 'ipv4' : 'ipv6');
  }
}
