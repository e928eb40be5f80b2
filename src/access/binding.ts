import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { isLoopback } from './network.js';

export class UnsafeBindingError extends Error {
  override name = 'UnsafeBindingError';
}

export interface ExposureSettings {
  listen: { host: string; port: number };
  allowConfigured: boolean;
  usersConfigured: boolean;
  tlsConfigured: boolean;
}

/** Every address the listener could end up on; a name counts as loopback only if all its addresses are. */
async function addressesOf(host: string): Promise<string[]> {
  if (host === '' || isIP(host)) return [host];
  try {
    return (await lookup(host, { all: true })).map((a) => a.address);
  } catch (e) {
    throw new UnsafeBindingError(`SMIME_RELAY_LISTEN: cannot resolve '${host}' (${(e as Error).message})`);
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
