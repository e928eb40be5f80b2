/**
 * prepare: turns a received message into (outer headers, entity to sign), 7-bit clean and CRLF.
 *
 * The rules are the tested ones from shared/notes/smime.md: every leaf part that an MTA could
 * rewrite is re-encoded (text to quoted-printable, anything else to base64), composites are
 * relabelled 7bit, the top-level epilogue goes, and no decoded leaf changes.
 *
 * 8bit header bytes (RFC 6532):
 * - outer headers are not signed, so they stay exactly as received (SMTPUTF8 is the next hop's
 *   business, not the signature's);
 * - header fields inside the signed entity (Content-* of the top level, part headers, the
 *   headers of an attached message/rfc822) must be 7-bit: parameters are rewritten per RFC 2231,
 *   unstructured fields (Subject, Content-Description, X-*) per RFC 2047, and anything else
 *   with 8bit bytes (say a UTF-8 address inside an attached message) is a MimeError;
 * - with header protection, a copied field that cannot be made 7-bit (a UTF-8 address in To) is
 *   not copied: it stays outside, where RFC 9788 readers treat it as unprotected.
 */
import { isAscii, isUtf8 } from 'node:buffer';
import { rewriteEntity, type Walk } from './entity.js';
import { EntityPieces } from './entity-pieces.js';
import { MimeError } from './error.js';
import {
  type HeaderField,
  fieldValue,
  makeField,
  parseContentType,
  readHeaderBlock,
  sanitizeField,
  serializeField,
  serializeParams,
  DEFAULT_MAX_HEADER_BYTES,
} from './header.js';

export { MimeError };

export interface PrepareOptions {
  /** RFC 9788 header protection: copy From, To, Cc, Subject, Date, Message-ID, Reply-To into the entity. */
  headerProtection?: 'off' | 'clear';
  /** Caps; exceeding one throws MimeError. */
  maxHeaderBytes?: number;
  maxParts?: number;
  maxDepth?: number;
}

export interface PreparedMessage {
  /**
   * Every outer header field except Content-* and MIME-Version, byte-for-byte as received
   * (folding kept), in order, each line CRLF-terminated. Does not include the blank line.
   */
  outerHeaders: Buffer;
  /**
   * The entity to sign: the original Content-* header fields (Content-Type defaulting to
   * text/plain; charset=us-ascii, or utf-8 / unknown-8bit for an 8-bit body), a blank line, then the body, 7-bit clean, CRLF only,
   * no line over 998 octets, top-level epilogue dropped. A multipart entity ends with its
   * close delimiter and one CRLF; the builder adds "CRLF--boundary" after the entity.
   * Still in pieces: it is written once, into the outgoing message (src/mime/multipart-signed.ts).
   */
  entity: EntityPieces;
}

export const DEFAULT_MAX_PARTS = 1000;
export const DEFAULT_MAX_DEPTH = 20;

/** The fields RFC 9788 §2.2 (and shared/notes/smime.md) copies for signed-only mail. */
const PROTECTED = new Set(['from', 'to', 'cc', 'subject', 'date', 'message-id', 'reply-to']);

/**
 * Throws only MimeError. An unexpected fault inside is wrapped too, with the original error as
 * `cause`, so callers can tell a malformed message (no cause) from a bug (cause set).
 */
export function prepareMessage(raw: Buffer, opts: PrepareOptions = {}): PreparedMessage {
  try {
    return prepare(raw, opts);
  } catch (err) {
    if (err instanceof MimeError) throw err;
    const message = err instanceof Error ? err.message : String(err);
    throw new MimeError(`internal error while preparing the message: ${message}`, { cause: err });
  }
}

function prepare(raw: Buffer, opts: PrepareOptions): PreparedMessage {
  const limits = {
    maxHeaderBytes: positive(opts.maxHeaderBytes, DEFAULT_MAX_HEADER_BYTES),
    maxParts: positive(opts.maxParts, DEFAULT_MAX_PARTS),
    maxDepth: positive(opts.maxDepth, DEFAULT_MAX_DEPTH),
  };
  const block = readHeaderBlock(raw, 0, raw.length, limits.maxHeaderBytes);

  const outer: Buffer[] = [];
  let content: HeaderField[] = [];
  for (const field of block.fields) {
    if (field.name.startsWith('content-')) content.push(field);
    else if (field.name !== 'mime-version') outer.push(...serializeField(field));
  }
  const body = raw.subarray(block.bodyStart);
  if (!content.some((f) => f.name === 'content-type')) {
    // Written out because the entity is read on its own, and then quoted-printable-encoded.
    content.unshift(makeField('Content-Type', `text/plain; charset=${legacyCharset(body)}`));
  }
  if (opts.headerProtection === 'clear') {
    content = content.map((f) => (f.name === 'content-type' ? withHpClear(f) : f));
    for (const field of block.fields) {
      if (!PROTECTED.has(field.name)) continue;
      try {
        content.push(sanitizeField(field));
      } catch (err) {
        if (!(err instanceof MimeError)) throw err;
      }
    }
  }

  const walk: Walk = { limits, parts: 0, out: new EntityPieces() };
  rewriteEntity(content, body, walk, {
    depth: 0,
    top: true,
    defaultType: 'text/plain',
    ancestors: [],
    message: false,
  });
  return { outerHeaders: Buffer.concat(outer), entity: walk.out };
}

/**
 * The charset of a body that came without MIME headers. RFC 2045 §5.2 says us-ascii, which is
 * true of 7-bit text; but legacy senders (cron, `mail`, old scripts) put 8-bit text there, and
 * once it is quoted-printable-encoded under a us-ascii label every client shows replacement
 * characters. UTF-8 is what such bytes almost always are and can be recognised reliably; anything
 * else is labelled unknown-8bit (RFC 1428), which claims no charset at all, rather than a wrong one.
 */
function legacyCharset(body: Buffer): 'us-ascii' | 'utf-8' | 'unknown-8bit' {
  if (isAscii(body)) return 'us-ascii';
  return isUtf8(body) ? 'utf-8' : 'unknown-8bit';
}

function positive(value: number | undefined, fallback: number): number {
  return value !== undefined && Number.isFinite(value) && value > 0 ? value : fallback;
}

/** Adds hp="clear" (RFC 9788 §2.1.1) on a folded line of its own, keeping the rest as written. */
function withHpClear(field: HeaderField): HeaderField {
  const ct = parseContentType(fieldValue(field));
  if (ct?.params.has('hp')) {
    ct.params.set('hp', { value: 'clear' });
    return makeField('Content-Type', serializeParams(`${ct.type}/${ct.subtype}`, ct.params));
  }
  const lines = field.lines.slice();
  const last = lines.length - 1;
  const text = lines[last]!.toString('latin1').replace(/[ \t;]+$/, '');
  lines[last] = Buffer.from(text + ';', 'latin1');
  lines.push(Buffer.from(' hp="clear"', 'latin1'));
  return { name: field.name, lines };
}
