import { fieldValue, parseContentType, topHeaderFields } from './header.js';

/**
 * Top-level types that mean the sender already signed or encrypted the message (RFC 8551 §3.5,
 * §3.3; RFC 1847). Wrapping such a message again would hide the sender's own signature inside
 * ours, or sign ciphertext nobody can read; it is forwarded unchanged instead.
 */
const PROTECTED_TYPES = new Set([
  'multipart/signed',
  'multipart/encrypted',
  'application/pkcs7-mime',
  'application/x-pkcs7-mime',
]);

/** The top-level Content-Type (lower case, no parameters) when it is already S/MIME or PGP/MIME protected. */
export function alreadyProtected(raw: Buffer): string | undefined {
  const field = topHeaderFields(raw)?.find((f) => f.name === 'content-type');
  if (!field) return undefined;
  const ct = parseContentType(fieldValue(field));
  if (!ct) return undefined;
  const type = `${ct.type}/${ct.subtype}`.toLowerCase();
  return PROTECTED_TYPES.has(type) ? type : undefined;
}
