/**
 * Why a PKCS#11 token cannot provide a key. Each code is also the finding check-cert prints and
 * the certificate store logs, so an admin reads the same words in both places.
 */
export type TokenErrorCode =
  /** pkcs11js is not installed or not built. */
  | 'token-binding'
  /** SMIME_RELAY_PKCS11_MODULE does not load or does not initialise. */
  | 'token-module'
  /** No token with the label SMIME_RELAY_PKCS11_TOKEN. */
  | 'token-not-found'
  /** The PIN file is missing or unreadable, or the PIN is wrong. */
  | 'token-pin'
  /** The token's user PIN is locked (too many wrong PINs). */
  | 'token-locked'
  /** The token is fine but holds no usable key for this certificate. */
  | 'token-no-key'
  /** Anything else the token answered. */
  | 'token-error';

export class TokenError extends Error {
  override name = 'TokenError';
  constructor(
    readonly code: TokenErrorCode,
    message: string,
  ) {
    super(message);
  }
}

/** The CKR_* name of a pkcs11js error ("CKR_PIN_INCORRECT"), or undefined for other errors. */
export function ckr(e: unknown): string | undefined {
  const message = e instanceof Error ? e.message : '';
  return /^CKR_[A-Z_]+$/.test(message) ? message : undefined;
}
