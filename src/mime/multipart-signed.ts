import { randomBytes } from 'node:crypto';
import type { PreparedMessage } from './prepare.js';

/** The message as it goes upstream: outer headers + multipart/signed (RFC 8551 §3.5, RFC 1847). */
export type SignedMessage = Buffer & { readonly __brand?: 'SignedMessage' };

const CRLF = '\r\n';
const BOUNDARY_PREFIX = '----smime-relay-';
/** 18 random bytes in base64url: 24 characters, so every boundary has the same length. */
const BOUNDARY_LENGTH = BOUNDARY_PREFIX.length + 24;
/**
 * Room kept after the entity for the signature part: the detached SignedData carries the signer
 * and its chain, about 2 KiB each in base64, so 16 KiB holds a signer with a chain of several
 * intermediates. A larger signature still works, at the cost of one more copy of the message.
 */
const SIGNATURE_ROOM = 16 * 1024;

function base64Lines(der: Buffer): string {
  const b64 = der.toString('base64');
  const lines: string[] = [];
  for (let i = 0; i < b64.length; i += 76) lines.push(b64.slice(i, i + 76));
  return lines.join(CRLF);
}

/** A boundary that is checked not to occur anywhere in the signed entity (RFC 2046 §5.1.1). */
export function chooseBoundary(entity: Buffer): string {
  for (;;) {
    const boundary = `${BOUNDARY_PREFIX}${randomBytes(18).toString('base64url')}`;
    if (!entity.includes(boundary, 0, 'latin1')) return boundary;
  }
}

function headOf(boundary: string): string {
  return (
    'MIME-Version: 1.0' + CRLF +
    'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256;' + CRLF +
    `\tboundary="${boundary}"` + CRLF +
    CRLF +
    'This is a cryptographically signed message in MIME format.' + CRLF +
    CRLF +
    `--${boundary}` + CRLF
  );
}

function tailOf(boundary: string, signatureDer: Buffer): string {
  return (
    CRLF + `--${boundary}` + CRLF +
    'Content-Type: application/pkcs7-signature; name="smime.p7s"' + CRLF +
    'Content-Transfer-Encoding: base64' + CRLF +
    'Content-Disposition: attachment; filename="smime.p7s"' + CRLF +
    CRLF +
    base64Lines(signatureDer) + CRLF +
    CRLF + `--${boundary}--` + CRLF
  );
}

const HEAD_LENGTH = headOf('x'.repeat(BOUNDARY_LENGTH)).length;

/** Bytes draftSignedMessage allocates for `prepared`: the most the outgoing message can hold. */
export function draftSize(prepared: PreparedMessage): number {
  return prepared.outerHeaders.length + HEAD_LENGTH + prepared.entity.size + SIGNATURE_ROOM;
}

/** The outgoing message before its signature: the bytes to sign are already where they will be sent from. */
export interface SignedMessageDraft {
  /** The signed entity, a view into the outgoing message: what is signed is exactly what is sent. */
  readonly content: Buffer;
  /** Adds the signature part after the entity; returns the message to forward. */
  complete(signatureDer: Buffer): SignedMessage;
}

/**
 * Lays out the message once, in one buffer: outer headers, the multipart/signed head, the entity
 * (written straight from its pieces, encoding included), and room for the signature part. The
 * signed bytes are the entity exactly; the CRLF before each delimiter belongs to the delimiter,
 * not to the content.
 */
export function draftSignedMessage(prepared: PreparedMessage): SignedMessageDraft {
  const { outerHeaders, entity } = prepared;
  const entityAt = outerHeaders.length + HEAD_LENGTH;
  // allocUnsafe: the pages are touched only as they are written, so the part of the bounds that
  // is not used (quoted-printable is sized by a bound, the signature room) costs no memory.
  const out = Buffer.allocUnsafe(draftSize(prepared));
  outerHeaders.copy(out, 0);
  const entityEnd = entity.writeTo(out, entityAt);
  const content = out.subarray(entityAt, entityEnd);
  const boundary = chooseBoundary(content);
  out.write(headOf(boundary), outerHeaders.length, 'latin1');
  return {
    content,
    complete(signatureDer) {
      const tail = Buffer.from(tailOf(boundary, signatureDer), 'latin1');
      if (tail.length > out.length - entityEnd) return Buffer.concat([out.subarray(0, entityEnd), tail]);
      tail.copy(out, entityEnd);
      return out.subarray(0, entityEnd + tail.length);
    },
  };
}

/** The whole message in one step, for the offline `sign` command and tests. */
export async function signMessage(prepared: PreparedMessage, sign: (content: Buffer) => Promise<Buffer>): Promise<SignedMessage> {
  const draft = draftSignedMessage(prepared);
  return draft.complete(await sign(draft.content));
}
