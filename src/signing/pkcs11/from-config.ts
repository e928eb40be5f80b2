import type { Logger } from 'pino';
import { ConfigError } from '../../config/load.js';
import type { Config } from '../../config/settings.js';
import { loadBinding } from './binding.js';
import { Pkcs11Token } from './token.js';
import { TokenError } from './token-error.js';

const NAMES = {
  pkcs11Module: 'SMIME_RELAY_PKCS11_MODULE',
  pkcs11Token: 'SMIME_RELAY_PKCS11_TOKEN',
  pkcs11PinFile: 'SMIME_RELAY_PKCS11_PIN_FILE',
} as const;

type TokenSettings = Pick<Config, keyof typeof NAMES> & Partial<Pick<Config, 'engine'>>;

/**
 * The token SMIME_RELAY_PKCS11_* describe, or undefined when they are unset. Refused at start-up,
 * not with 451 on every message: half of the three settings, the openssl engine (Debian 12 ships
 * no pkcs11-provider for `openssl cms` to reach a token through), and a missing binding.
 * Nothing is opened yet: the certificate store asks the token for keys when it loads.
 */
export function tokenFromConfig(config: TokenSettings, log?: Logger): Pkcs11Token | undefined {
  const keys = Object.keys(NAMES) as (keyof typeof NAMES)[];
  const set = keys.filter((k) => config[k]);
  if (set.length === 0) return undefined;
  if (set.length < keys.length) {
    const missing = keys.filter((k) => !set.includes(k)).map((k) => NAMES[k]);
    throw new ConfigError(
      `keys on a PKCS#11 token need ${Object.values(NAMES).join(', ')} together; ${missing.join(' and ')} ${missing.length === 1 ? 'is' : 'are'} not set. ` +
        'Set the missing one(s), or unset all three to use keys from the certificate files.',
    );
  }
  if (config.engine === 'openssl') {
    throw new ConfigError(
      'SMIME_RELAY_PKCS11_MODULE is set, but SMIME_RELAY_ENGINE=openssl cannot sign with a key on a PKCS#11 token: `openssl cms` reaches tokens only through ' +
        'an OpenSSL provider, and this system has none (Debian 12 ships no pkcs11-provider). Use SMIME_RELAY_ENGINE=native (the default), which signs on the token itself.',
    );
  }
  try {
    loadBinding();
  } catch (e) {
    if (e instanceof TokenError) throw new ConfigError(e.message);
    throw e;
  }
  return new Pkcs11Token({ module: config.pkcs11Module!, token: config.pkcs11Token!, pinFile: config.pkcs11PinFile!, log });
}
