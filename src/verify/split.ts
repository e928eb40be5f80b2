import { splitMultipart } from '../mime/entity.js';
import { MimeError } from '../mime/error.js';
import { DEFAULT_MAX_HEADER_BYTES, fieldValue, parseContentType, parseTransferEncoding, readHeaderBlock, type ContentType, type HeaderField } from '../mime/header.js';

/**
 * A clear-signed message (RFC 1847 §2.1, RFC 8551 §3.5.3) as read back from its bytes: the
 * signed content exactly as it travels, and the detached signature.
 *
 * This is a reading of the final bytes with the relay's input parsers (the header reader and the
 * multipart splitter prepare uses on incoming mail), never the entity buffer the signer was given:
 * whatever the wrapper, the signer or a later step did to the bytes shows up here.
 */
export interface SignedMessageParts {
  /** Top-level header fields (outside the signature). */
  readonly headers: HeaderField[];
  readonly contentType: ContentType;
  readonly boundary: string;
  readonly micalg: string | undefined;
  /** The signed bytes: from after the first delimiter line to before the line break of the second (RFC 2046 §5.1.1). */
  readonly content: Buffer;
  /** Offset of `content` in the message. */
  readonly contentStart: number;
  readonly signatureHeaders: HeaderField[];
  /** The signature part's body as it travels (base64 text, normally). */
  readonly signatureBody: Buffer;
  /** DER of the CMS SignedData. */
  readonly signature: Buffer;
  readonly preamble: Buffer | null;
  readonly epilogue: Buffer | null;
}

/** Not a clear-signed message at all (diagnose exit 2): the admin saved the wrong file, or a hop unwrapped it. */
export class NotSignedError extends Error {
  override name = 'NotSignedError';
}

/** A multipart/signed whose structure is broken: the parts cannot be found as RFC 1847 lays them out. */
export class SignedStructureError extends Error {
  override name = 'SignedStructureError';
}

const SIGNATURE_TYPES = new Set(['application/pkcs7-signature', 'application/x-pkcs7-signature']);

export function splitSignedMessage(message: Buffer): SignedMessageParts {
  let block;
  try {
    block = readHeaderBlock(message, 0, message.length, DEFAULT_MAX_HEADER_BYTES);
  } catch (e) {
    if (e instanceof MimeError) throw new NotSignedError(`the header block cannot be read: ${e.message}`);
    throw e;
  }
  const headers = block.fields;
  const ctField = headers.find((f) => f.name === 'content-type');
  const contentType = ctField ? parseContentType(fieldValue(ctField)) : null;
  const type = contentType ? `${contentType.type}/${contentType.subtype}` : undefined;
  if (!contentType || type !== 'multipart/signed') {
    if (type === 'application/pkcs7-mime' || type === 'application/x-pkcs7-mime') {
      throw new NotSignedError(`the message is ${type} (opaque signed or encrypted), not a clear-signed multipart/signed message`);
    }
    throw new NotSignedError(`the message is not clear-signed: its Content-Type is ${type ?? (ctField ? 'unreadable' : 'missing (text/plain)')}, not multipart/signed`);
  }
  const protocol = contentType.params.get('protocol')?.value.toLowerCase();
  if (!protocol || !SIGNATURE_TYPES.has(protocol)) {
    throw new NotSignedError(`multipart/signed with protocol "${protocol ?? ''}" is not S/MIME (application/pkcs7-signature)`);
  }
  const boundary = contentType.params.get('boundary')?.value ?? '';
  if (!boundary) throw new SignedStructureError('the multipart/signed Content-Type has no boundary parameter');
  const body = message.subarray(block.bodyStart);
  const split = splitMultipart(body, boundary);
  if (!split) throw new SignedStructureError(`the boundary "${boundary}" of the Content-Type does not delimit any part of the body`);
  if (split.parts.length !== 2) {
    throw new SignedStructureError(`multipart/signed has ${split.parts.length} part(s) delimited by "${boundary}"; RFC 1847 requires exactly two (content, signature)`);
  }
  const [content, sigPart] = split.parts as [Buffer, Buffer];
  const sig = readHeaderBlock(sigPart, 0, sigPart.length, DEFAULT_MAX_HEADER_BYTES);
  const sigCtField = sig.fields.find((f) => f.name === 'content-type');
  const sigCt = sigCtField ? parseContentType(fieldValue(sigCtField)) : null;
  const sigType = sigCt ? `${sigCt.type}/${sigCt.subtype}` : 'text/plain';
  if (!SIGNATURE_TYPES.has(sigType)) throw new SignedStructureError(`the second part is ${sigType}, not application/pkcs7-signature`);
  const cteField = sig.fields.find((f) => f.name === 'content-transfer-encoding');
  const base64 = cteField !== undefined && parseTransferEncoding(fieldValue(cteField)) === 'base64';
  const signatureBody = sigPart.subarray(sig.bodyStart);
  // Node's decoder skips line breaks and runs natively: five times faster than the lenient
  // decoder prepare uses, which matters on every signed message; DER has no use for leniency.
  const signature = base64 ? Buffer.from(signatureBody.toString('latin1'), 'base64') : signatureBody;
  if (signature.length === 0) throw new SignedStructureError('the signature part is empty');
  return {
    headers,
    contentType,
    boundary,
    micalg: contentType.params.get('micalg')?.value.toLowerCase(),
    content,
    contentStart: content.byteOffset - message.byteOffset,
    signatureHeaders: sig.fields,
    signatureBody,
    signature,
    preamble: split.preamble,
    epilogue: split.epilogue,
  };
}
