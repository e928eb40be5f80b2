import { verify, type KeyObject } from 'node:crypto';

/** Signature algorithms an OCSP responder or a CRL issuer uses, by OID, with their digest (RFC 4055, RFC 5758). */
const DIGEST: Record<string, string> = {
  '1.2.840.113549.1.1.5': 'sha1',
  '1.2.840.113549.1.1.11': 'sha256',
  '1.2.840.113549.1.1.12': 'sha384',
  '1.2.840.113549.1.1.13': 'sha512',
  '1.2.840.10045.4.1': 'sha1',
  '1.2.840.10045.4.3.2': 'sha256',
  '1.2.840.10045.4.3.3': 'sha384',
  '1.2.840.10045.4.3.4': 'sha512',
};

/**
 * Whether `signature` over `tbs` verifies with `key`: PKCS#1 v1.5 for RSA keys, DER ECDSA for EC
 * keys, Node's defaults. An algorithm it does not know never verifies.
 */
export function verifiesWith(tbs: Uint8Array, algorithm: string, signature: Uint8Array, key: KeyObject): boolean {
  const digest = DIGEST[algorithm];
  if (!digest) return false;
  try {
    return verify(digest, tbs, key, signature);
  } catch {
    return false;
  }
}

/** CRLReason (RFC 5280 §5.3.1), for log lines and check-cert. */
export const REVOCATION_REASONS: Record<number, string> = {
  0: 'unspecified',
  1: 'keyCompromise',
  2: 'cACompromise',
  3: 'affiliationChanged',
  4: 'superseded',
  5: 'cessationOfOperation',
  6: 'certificateHold',
  8: 'removeFromCRL',
  9: 'privilegeWithdrawn',
  10: 'aACompromise',
};
