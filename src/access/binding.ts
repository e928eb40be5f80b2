import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import type { MilterAddress } from '../config/settings.js';
import { isLoopback } from './network.js';

export class UnsafeBindingError extends Error {
  override name = 'UnsafeBindingError';
}

export interface ExposureSettings {
  listen: { host: string; port: number } | 'off';
  milter?: MilterAddress;
  allowConfigured: boolean;
  usersConfigured: boolean;
  tlsConfigured: boolean;
}

/** Every address the listener could end up on; a name counts as loopback only if all its addresses are. */
async function addressesOf(host: string, setting = 'SMIME_RELAY_LISTEN'): Promise<string[]> {
  if (host === '' || isIP(host)) return [host];
  try {
    return (await lookup(host, { all: true })).map((a) => a.address);
  } catch (e) {
    throw new UnsafeBindingError(`${setting}: cannot resolve '${host}' (${(e as Error).message})`);
  }
}

const describe = (host: string, addresses: string[]) => {
  if (host === '' || host === '0.0.0.0' || host === '::') return `${host || '(empty)'}, every interface`;
  return isIP(host) ? host : `${host} → ${addresses.join(', ')}`;
};

/**
 * The relay signs as the company; reachable by anyone it is a signing oracle. So a listener off
 * loopback must have a network gate (SMIME_RELAY_ALLOW) or an identity gate (SMIME_RELAY_USERS),
 * and an identity gate off loopback needs TLS, since AUTH is only accepted over TLS there.
 * Checked at start, the way OpenSMTPD refuses an unsafe configuration before it serves anyone.
 */
export async function checkExposure(s: ExposureSettings): Promise<void> {
  if (s.milter?.kind === 'inet') await checkMilterExposure(s.milter, s.allowConfigured);
  if (s.listen === 'off') return;
  const { host, port } = s.listen;
  const addresses = await addressesOf(host);
  if (addresses.every((a) => isLoopback(a))) return;
  const where = `SMIME_RELAY_LISTEN=${host.includes(':') ? `[${host}]` : host}:${port} (${describe(host, addresses)})`;
  if (!s.allowConfigured && !s.usersConfigured) {
    throw new UnsafeBindingError(
      `${where} is not a loopback address, and neither SMIME_RELAY_ALLOW nor SMIME_RELAY_USERS is set: ` +
        `anyone who can reach the port could have mail signed with your certificates. Fix it in one of two ways: ` +
        `set SMIME_RELAY_ALLOW to the networks of your clients (e.g. SMIME_RELAY_ALLOW=192.0.2.10/32,2001:db8::/64), ` +
        `or set SMIME_RELAY_USERS to a users file so clients must authenticate (create entries with 'smime-relay hash-password'). ` +
        `Or listen on loopback only (SMIME_RELAY_LISTEN=127.0.0.1:${port}).`,
    );
  }
  if (s.usersConfigured && !s.tlsConfigured) {
    throw new UnsafeBindingError(
      `${where} is not a loopback address and SMIME_RELAY_USERS is set, but the listener has no TLS: ` +
        `SMTP AUTH is only accepted over TLS except from loopback, so remote clients could never authenticate. ` +
        `Set SMIME_RELAY_TLS_CERT and SMIME_RELAY_TLS_KEY.`,
    );
  }
}

/**
 * The milter believes the SASL login and client address its MTA names, so whoever reaches the
 * port can claim any login: off loopback only the MTA's own address may connect, which needs
 * SMIME_RELAY_ALLOW (a users file cannot help, an MTA does not authenticate).
 */
async function checkMilterExposure(milter: { host: string; port: number }, allowConfigured: boolean): Promise<void> {
  const addresses = await addressesOf(milter.host, 'SMIME_RELAY_MILTER');
  if (addresses.every((a) => isLoopback(a)) || allowConfigured) return;
  const host = milter.host.includes(':') ? `[${milter.host}]` : milter.host;
  throw new UnsafeBindingError(
    `SMIME_RELAY_MILTER=${host}:${milter.port} (${describe(milter.host, addresses)}) is not a loopback address, and SMIME_RELAY_ALLOW is not set: ` +
      `anyone who can reach the port could speak the milter protocol, claim any SASL login and have mail signed with your certificates. ` +
      `Set SMIME_RELAY_ALLOW to the address of your MTA (e.g. SMIME_RELAY_ALLOW=192.0.2.25/32), ` +
      `or use a loopback address (SMIME_RELAY_MILTER=127.0.0.1:${milter.port}) or a unix socket (SMIME_RELAY_MILTER=unix:/var/spool/postfix/smime-relay/milter.sock).`,
  );
}
