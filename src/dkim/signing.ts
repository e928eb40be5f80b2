import { createPrivateKey, sign as cryptoSign, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import DKIM from 'nodemailer/lib/dkim';
import { ConfigError } from '../config/load.js';
import type { Config } from '../config/settings.js';
import type { Upstream } from '../upstream/upstream.js';

/**
 * DKIM after S/MIME. The S/MIME wrapper rewrites the body and the Content-* fields, so a DKIM
 * signature is only valid when it is made over the finished multipart/signed message, right before
 * it leaves (shared/notes/smime.md). nodemailer's signer does the work: relaxed/relaxed,
 * rsa-sha256, its default list of signed fields.
 */
export interface DkimSigning {
  domainName: string;
  keySelector: string;
  /** PEM text; nodemailer hands it to crypto.createSign. */
  privateKey: string;
}

type DkimSettings = Pick<Config, 'dkimDomain' | 'dkimSelector' | 'dkimKey'>;

const NAMES = {
  dkimDomain: 'SMIME_RELAY_DKIM_DOMAIN',
  dkimSelector: 'SMIME_RELAY_DKIM_SELECTOR',
  dkimKey: 'SMIME_RELAY_DKIM_KEY',
} as const;

/**
 * The DKIM signing identity, or undefined when DKIM is off. All three settings or none: half a
 * configuration is refused at start-up rather than sending mail that silently lacks DKIM.
 */
export function dkimSigningFrom(config: DkimSettings): DkimSigning | undefined {
  const keys = Object.keys(NAMES) as (keyof typeof NAMES)[];
  const set = keys.filter((k) => config[k] !== undefined && config[k] !== '');
  if (set.length === 0) return undefined;
  if (set.length < keys.length) {
    const missing = keys.filter((k) => !set.includes(k)).map((k) => NAMES[k]);
    throw new ConfigError(
      `DKIM signing needs ${Object.values(NAMES).join(', ')} together; ${set.map((k) => NAMES[k]).join(', ')} ` +
        `${set.length === 1 ? 'is' : 'are'} set but ${missing.join(', ')} ${missing.length === 1 ? 'is' : 'are'} not. ` +
        'Set the missing one(s), or unset all three to send without DKIM.',
    );
  }
  const path = config.dkimKey!;
  let pem: string;
  try {
    pem = readFileSync(path, 'utf8');
  } catch (e) {
    throw new ConfigError(`SMIME_RELAY_DKIM_KEY: cannot read '${path}' (${(e as Error).message})`);
  }
  let key: KeyObject;
  try {
    key = createPrivateKey(pem);
  } catch (e) {
    throw new ConfigError(`SMIME_RELAY_DKIM_KEY: '${path}' is not an unencrypted PEM private key (${(e as Error).message})`);
  }
  // nodemailer writes a=rsa-sha256 and, when the key cannot make that signature, silently sends
  // the message without DKIM; so anything but a working RSA key is refused here.
  if (key.asymmetricKeyType !== 'rsa') {
    throw new ConfigError(`SMIME_RELAY_DKIM_KEY: '${path}' is a ${key.asymmetricKeyType} key; DKIM signing here needs an RSA key (2048 bits recommended, RFC 8301)`);
  }
  const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
  if (bits < 1024) {
    throw new ConfigError(`SMIME_RELAY_DKIM_KEY: '${path}' is a ${bits}-bit RSA key; verifiers ignore keys under 1024 bits (RFC 8301 §3.2). Use 2048.`);
  }
  cryptoSign('sha256', Buffer.from('probe'), key);
  return { domainName: config.dkimDomain!, keySelector: config.dkimSelector!, privateKey: key.export({ type: 'pkcs8', format: 'pem' }).toString() };
}

/** Signs one finished message (for upstreams that do not sign in their transport, such as file:). */
export async function dkimSign(message: Buffer, dkim: DkimSigning): Promise<Buffer> {
  const stream = new DKIM({ ...dkim }).sign(message);
  const chunks: Buffer[] = [];
  await new Promise<void>((resolve, reject) => {
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.once('end', resolve);
    stream.once('error', reject);
  });
  const signed = Buffer.concat(chunks);
  if (!signed.subarray(0, 16).toString('latin1').startsWith('DKIM-Signature:')) {
    throw new Error('DKIM signing produced no signature');
  }
  return signed;
}

/** Wraps an upstream whose transport cannot sign (file:) so every message is DKIM-signed on the way in. */
export function withDkimSigning(upstream: Upstream, dkim: DkimSigning): Upstream {
  return {
    description: `${upstream.description} (DKIM d=${dkim.domainName} s=${dkim.keySelector})`,
    deliver: async (envelope, message) => upstream.deliver(envelope, await dkimSign(message, dkim)),
    probe: () => upstream.probe(),
    close: () => upstream.close(),
  };
}
