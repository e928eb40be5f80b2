/** The DigestInfo prefix of SHA-256 (RFC 8017 §9.2 note 1), for tokens that only offer CKM_RSA_PKCS. */
const SHA256_DIGEST_INFO = Buffer.from('3031300d060960864801650304020105000420', 'hex');

export function digestInfoSha256(digest: Buffer): Buffer {
  return Buffer.concat([SHA256_DIGEST_INFO, digest]);
}

/**
 * CKM_ECDSA returns r || s, each as long as the curve order (PKCS#11 v2.40 §2.3.1); CMS wants the
 * DER ECDSA-Sig-Value SEQUENCE { r INTEGER, s INTEGER } (RFC 5753 §2.1.1, RFC 3279 §2.2.3).
 */
export function ecdsaDer(raw: Buffer): Buffer {
  if (raw.length === 0 || raw.length % 2 !== 0) throw new Error(`CKM_ECDSA returned ${raw.length} bytes, not r || s`);
  const half = raw.length / 2;
  const body = Buffer.concat([derInteger(raw.subarray(0, half)), derInteger(raw.subarray(half))]);
  return Buffer.concat([derHeader(0x30, body.length), body]);
}

/** An unsigned big-endian number as a DER INTEGER: no leading zeros, one 0x00 when the top bit is set. */
function derInteger(value: Buffer): Buffer {
  let i = 0;
  while (i < value.length - 1 && value[i] === 0) i++;
  const digits = value[i]! & 0x80 ? Buffer.concat([Buffer.from([0]), value.subarray(i)]) : value.subarray(i);
  return Buffer.concat([derHeader(0x02, digits.length), digits]);
}

function derHeader(tag: number, length: number): Buffer {
  // P-521 signatures reach 139 bytes, so one length octet after 0x81 is always enough here.
  return length < 0x80 ? Buffer.from([tag, length]) : Buffer.from([tag, 0x81, length]);
}
