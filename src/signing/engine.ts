import type { CertificateBundle } from '../certs/bundle.js';

/**
 * Produces a detached CMS SignedData (DER) over exactly the given bytes, with SHA-256,
 * signed attributes contentType, signingTime, messageDigest, smimeCapabilities and ESS
 * signingCertificateV2 (the native engine also SMIMEEncryptionKeyPreference), and the leaf plus
 * chain certificates embedded (RFC 8551 §2.5, §3.5).
 */
export interface SigningEngine {
  readonly name: 'openssl' | 'native';
  sign(content: Buffer, bundle: CertificateBundle): Promise<Buffer>;
  close(): Promise<void>;
}

/** A signing failure that is not the message's fault (crash, timeout, missing binary): 451 4.7.0. */
export class SigningError extends Error {
  override name = 'SigningError';
}
