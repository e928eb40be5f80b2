import { randomBytes } from 'node:crypto';
import type { PreparedMessage } from './prepare.js';

/** The message as it goes upstream: outer headers + multipart/signed (RFC 8551 §3.5, RFC 1847). */
export type SignedMessage = Buffer & { readonly __brand?: 'SignedMessage' };

const CRLF = '\r\n';

function base64Lines(der: Buffer): string {
  const b64 = der.toString('base64');
  const lines: string[] = [];
  for (let i = 0; i < b64.length; i += 76) lines.push(b64.slice(i, i + 76));
  return lines.join(CRLF);
}

/** A boundary that is checked not to occur anywhere in the signed entity (RFC 2046 §5.1.1). */
export function chooseBoundary(entity: Buffer): string {
  for (;;) {
    const boundary = `----smime-relay-${randomBytes(18).toString('base64url')}`;
    if (!entity.includes(boundary, 0, 'latin1')) return boundary;
  }
}

/**
 * Wraps the signed entity and its detached signature. The signed bytes are the entity exactly;
 * the CRLF before each delimiter belongs to the delimiter, not to the content.
 */
export function buildSignedMessage(prepared: PreparedMessage, signatureDer: Buffer): SignedMessage {
  const boundary = chooseBoundary(prepared.entity);
  const head =
    'MIME-Version: 1.0' + CRLF +
    'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256;' + CRLF +
    `\tboundary="${boundary}"` + CRLF +
    CRLF +
    'This is a cryptographically signed message in MIME format.' + CRLF +
    CRLF +
    `--${boundary}` + CRLF;
  const tail =
    CRLF + `--${boundary}` + CRLF +
    'Content-Type: application/pkcs7-signature; name="smime.p7s"' + CRLF +
    'Content-Transfer-Encoding: base64' + CRLF +
    'Content-Disposition: attachment; filename="smime.p7s"' + CRLF +
    CRLF +
    base64Lines(signatureDer) + CRLF +
    CRLF + `--${boundary}--` + CRLF;
  return Buffer.concat([prepared.outerHeaders, Buffer.from(head, 'latin1'), prepared.entity, Buffer.from(tail, 'latin1')]);
}
