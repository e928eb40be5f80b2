import type { X509Certificate } from 'node:crypto';

/** What identifies a certificate's key on a token: the RSA modulus or the EC point (PKCS#11 v2.40 §2.1, §2.3). */
export type PublicKeyMatch =
  | { readonly type: 'rsa'; readonly modulus: Buffer; readonly bytes: number }
  | { readonly type: 'ec'; readonly point: Buffer; readonly curve: string; readonly bytes: number };

const CURVE_BYTES: Record<string, number> = { 'P-256': 32, 'P-384': 48, 'P-521': 66 };

/** The certificate's public key in the form a token stores it, or undefined for key types the relay does not sign with. */
export function publicKeyOf(cert: X509Certificate): PublicKeyMatch | undefined {
  const key = cert.publicKey;
  const jwk = key.export({ format: 'jwk' });
  if (key.asymmetricKeyType === 'rsa' && jwk.n) {
    const modulus = stripZeros(Buffer.from(jwk.n, 'base64url'));
    return { type: 'rsa', modulus, bytes: modulus.length };
  }
  if (key.asymmetricKeyType === 'ec' && jwk.x && jwk.y && jwk.crv && CURVE_BYTES[jwk.crv]) {
    // The uncompressed point, as an X9.62 ECPoint: 04 || X || Y.
    const point = Buffer.concat([Buffer.from([4]), Buffer.from(jwk.x, 'base64url'), Buffer.from(jwk.y, 'base64url')]);
    return { type: 'ec', point, curve: jwk.crv, bytes: 2 * CURVE_BYTES[jwk.crv]! };
  }
  return undefined;
}

/** CKA_MODULUS is a big-endian integer; some tokens keep a leading zero byte, some do not. */
export function sameModulus(tokenModulus: Buffer, match: Extract<PublicKeyMatch, { type: 'rsa' }>): boolean {
  return stripZeros(tokenModulus).equals(match.modulus);
}

/**
 * CKA_EC_POINT is the DER encoding of an OCTET STRING holding the point (PKCS#11 v2.40 §2.3.3),
 * but some tokens return the bare point. Both begin with 0x04, so both readings are tried.
 */
export function samePoint(tokenPoint: Buffer, match: Extract<PublicKeyMatch, { type: 'ec' }>): boolean {
  if (tokenPoint.equals(match.point)) return true;
  const len = tokenPoint[1] ?? 0;
  const header = len < 0x80 ? 2 : 2 + (len & 0x7f);
  return tokenPoint[0] === 0x04 && tokenPoint.subarray(header).equals(match.point);
}

function stripZeros(b: Buffer): Buffer {
  let i = 0;
  while (i < b.length - 1 && b[i] === 0) i++;
  return b.subarray(i);
}
