import type { TokenErrorCode } from '../signing/pkcs11/token-error.js';

/**
 * What loading and validating a certificate bundle found. An error means the relay cannot sign
 * with it (or must not); a warning means it can sign but something will bite later.
 */
export type FindingCode =
  | 'not-found'
  | 'unreadable'
  | 'binary'
  | 'pkcs12'
  | 'truncated'
  | 'no-key'
  | 'no-cert'
  | 'several-keys'
  | 'encrypted-key'
  | 'wrong-password'
  | 'bad-key'
  | 'bad-cert'
  | 'key-mismatch'
  | 'eku'
  | 'key-usage'
  | 'no-mailbox'
  | 'not-yet-valid'
  | 'expired'
  | 'chain'
  | 'weak-key'
  | 'key-type'
  | 'sha1'
  | 'pss'
  | 'permissions'
  /** The issuer says the certificate is revoked. */
  | 'revoked'
  /** Its revocation status could not be established (an error under SMIME_RELAY_REVOCATION=hard). */
  | 'revocation'
  /** The key is on a PKCS#11 token that cannot provide it (src/signing/pkcs11/token-error.ts). */
  | TokenErrorCode;

export interface Finding {
  readonly severity: 'error' | 'warning';
  readonly code: FindingCode;
  readonly message: string;
}

export const error = (code: FindingCode, message: string): Finding => ({ severity: 'error', code, message });
export const warning = (code: FindingCode, message: string): Finding => ({ severity: 'warning', code, message });

/** Thrown by the store when nothing it was given can sign; the message lists every reason. */
export class CertificateError extends Error {
  override name = 'CertificateError';
  constructor(
    message: string,
    readonly findings: readonly Finding[] = [],
  ) {
    super(message);
  }
}
