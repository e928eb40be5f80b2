import type { X509Certificate } from 'node:crypto';

/**
 * A private key the native engine signs with, wherever it lives: in memory, read from the bundle
 * file (src/signing/file-key.ts), or on a PKCS#11 token (src/signing/pkcs11/), where it never
 * leaves the token. The engine builds the CMS structure; the key only turns the signed
 * attributes into a signature.
 */
export interface SigningKey {
  /** Node's asymmetricKeyType of the public key: 'rsa' and 'ec' are the ones the engines sign with. */
  readonly type: string;
  /** Where the key is, as check-cert and the logs say it; never key material. */
  readonly location: KeyLocation;
  /**
   * SHA-256 over `data`, signed: RSA PKCS#1 v1.5 (gpgsm rejects RSA-PSS), or ECDSA as the DER
   * ECDSA-Sig-Value CMS wants (RFC 5753 §2.1.1). Rejects with a SigningError.
   */
  sign(data: Buffer): Promise<Buffer>;
}

export type KeyLocation =
  | { readonly kind: 'file' }
  /** `object` names the key object on the token (its label and id) for check-cert. */
  | { readonly kind: 'token'; readonly token: string; readonly object: string };

/**
 * Where a certificate whose file holds no private key finds its key: a PKCS#11 token
 * (src/signing/pkcs11/token.ts). The certificate loader asks; it never sees how.
 */
export interface KeySource {
  /** "token relay", as check-cert and the logs name it. */
  readonly description: string;
  /**
   * The key whose public key is the certificate's, with warnings worth showing next to it (a PIN
   * file readable by others). Throws a TokenError (src/signing/pkcs11/token-error.ts) saying why
   * there is none: no such key, wrong PIN, locked token, a module that does not load.
   */
  keyFor(certificate: X509Certificate): { key: SigningKey; warnings: string[] };
}
