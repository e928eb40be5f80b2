import { randomBytes, scrypt, timingSafeEqual } from 'node:crypto';

/**
 * Password hashes of the users file: `scrypt$N$r$p$salt$hash`, salt and hash in base64.
 * Self-describing, so the cost can be raised later without invalidating existing lines.
 */
export interface ScryptParams {
  N: number;
  r: number;
  p: number;
}

/** About 250 ms and 32 MiB per check on a small server: slow for a guesser, fine for an AUTH. */
export const DEFAULT_SCRYPT: ScryptParams = { N: 32768, r: 8, p: 1 };

const SALT_BYTES = 16;
const KEY_BYTES = 32;

// Bounds keep a hand-edited users file from making every AUTH take minutes or gigabytes.
const MAX_N = 2 ** 20;
const MAX_R = 32;
const MAX_P = 16;

export interface PasswordHash extends ScryptParams {
  salt: Buffer;
  hash: Buffer;
}

export class PasswordHashError extends Error {
  override name = 'PasswordHashError';
}

const b64 = /^[A-Za-z0-9+/]+={0,2}$/;

export function parsePasswordHash(text: string): PasswordHash {
  const parts = text.split('$');
  if (parts.length !== 6 || parts[0] !== 'scrypt') {
    throw new PasswordHashError('expected scrypt$N$r$p$salt$hash (make one with `smime-relay hash-password`)');
  }
  const [, nText, rText, pText, saltText, hashText] = parts as [string, string, string, string, string, string];
  const [N, r, p] = [nText, rText, pText].map((x) => (/^\d{1,8}$/.test(x) ? Number(x) : NaN)) as [number, number, number];
  if (!(N >= 2 && N <= MAX_N && (N & (N - 1)) === 0)) throw new PasswordHashError(`scrypt N must be a power of two from 2 to ${MAX_N}, got '${nText}'`);
  if (!(r >= 1 && r <= MAX_R)) throw new PasswordHashError(`scrypt r must be 1-${MAX_R}, got '${rText}'`);
  if (!(p >= 1 && p <= MAX_P)) throw new PasswordHashError(`scrypt p must be 1-${MAX_P}, got '${pText}'`);
  if (!b64.test(saltText) || !b64.test(hashText)) throw new PasswordHashError('salt and hash must be base64');
  const salt = Buffer.from(saltText, 'base64');
  const hash = Buffer.from(hashText, 'base64');
  if (salt.length < 8) throw new PasswordHashError('salt must be at least 8 bytes');
  if (hash.length < 16) throw new PasswordHashError('hash must be at least 16 bytes');
  return { N, r, p, salt, hash };
}

export const formatPasswordHash = (h: PasswordHash): string =>
  `scrypt$${h.N}$${h.r}$${h.p}$${h.salt.toString('base64')}$${h.hash.toString('base64')}`;

function derive(password: string | Buffer, salt: Buffer, length: number, params: ScryptParams): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    // Node refuses more than 32 MiB by default; scrypt needs 128·N·r bytes.
    const maxmem = 256 * params.N * params.r + 1024 * 1024;
    scrypt(password, salt, length, { ...params, maxmem }, (err, key) => (err ? reject(err) : resolve(key)));
  });
}

export async function hashPassword(password: string, params: ScryptParams = DEFAULT_SCRYPT): Promise<string> {
  const salt = randomBytes(SALT_BYTES);
  const hash = await derive(password, salt, KEY_BYTES, params);
  return formatPasswordHash({ ...params, salt, hash });
}

export async function verifyPassword(password: string, stored: PasswordHash): Promise<boolean> {
  const candidate = await derive(password, stored.salt, stored.hash.length, stored);
  return timingSafeEqual(candidate, stored.hash);
}
