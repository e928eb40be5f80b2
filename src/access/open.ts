import type { Logger } from 'pino';
import { ConfigError } from '../config/load.js';
import type { MilterAddress } from '../config/settings.js';
import { checkExposure, UnsafeBindingError } from './binding.js';
import { ListenerTlsError, loadListenerTls, type TlsMode } from './listener-tls.js';
import { AllowList, parseCidr } from './network.js';
import { AccessPolicy } from './policy.js';
import { Users, UsersFileError } from './users.js';

export interface AccessSettings {
  listen: { host: string; port: number } | 'off';
  milter?: MilterAddress;
  /** Normalized CIDRs, as settings.ts parses SMIME_RELAY_ALLOW. */
  allow?: readonly string[];
  users?: string;
  tlsCert?: string;
  tlsKey?: string;
  tlsMode?: TlsMode;
  /** Normalized CIDRs of SMIME_RELAY_PROXY_PROTOCOL; empty or unset: no PROXY headers. */
  proxyProtocol?: readonly string[];
  /** Normalized CIDRs of SMIME_RELAY_XFORWARD_HOSTS. */
  xforwardHosts?: readonly string[];
}

const networks = (cidrs: readonly string[] | undefined) => (cidrs?.length ? new AllowList(cidrs.map(parseCidr)) : undefined);

/**
 * Builds the access policy from the settings and refuses, with the setting and the fix, any
 * configuration that would expose the relay: checked before the listener binds.
 */
export async function openAccess(s: AccessSettings, log: Logger): Promise<AccessPolicy> {
  const tlsSettings = { tlsCert: s.tlsCert, tlsKey: s.tlsKey, tlsMode: s.tlsMode };
  let users: Users | undefined;
  try {
    const tls = loadListenerTls(tlsSettings);
    if (s.users) users = new Users(s.users);
    await checkExposure({
      listen: s.listen,
      milter: s.milter,
      allowConfigured: !!s.allow?.length,
      usersConfigured: !!users,
      tlsConfigured: !!tls,
    });
    for (const w of tls?.warnings ?? []) log.warn(w);
    if (users) {
      const status = users.status();
      if (status.users === 0) log.warn({ path: users.path }, 'SMIME_RELAY_USERS has no users: nobody can send until one is added');
      if (status.worldReadable) log.warn({ path: users.path }, 'SMIME_RELAY_USERS is readable by every local user; chmod 640 it');
    }
    log.info(
      {
        allow: s.allow ?? 'any client that can reach the listener',
        users: users ? users.status().users : 'none (no AUTH)',
        tls: tls?.mode ?? 'off',
        proxyProtocol: s.proxyProtocol?.length ? s.proxyProtocol : 'off',
        xforwardHosts: s.xforwardHosts?.length ? s.xforwardHosts : 'none',
      },
      'access policy',
    );
    return new AccessPolicy({
      allow: networks(s.allow),
      users,
      tls,
      tlsSettings,
      proxies: networks(s.proxyProtocol),
      xforwardHosts: networks(s.xforwardHosts),
      log,
    });
  } catch (e) {
    if (e instanceof UsersFileError) throw new ConfigError(`SMIME_RELAY_USERS (--users): ${e.message}`);
    if (e instanceof ListenerTlsError || e instanceof UnsafeBindingError) throw new ConfigError(e.message);
    throw e;
  }
}
