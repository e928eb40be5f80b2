/**
 * The recursive rewrite of one MIME entity into its 7-bit, CRLF, transport-safe form
 * (shared/notes/smime.md "Make it survive transport before you sign"). Output is appended to
 * EntityPieces: mostly slices of the input, and bodies to encode when the message is written.
 */
import { EntityPieces } from './entity-pieces.js';
import { MimeError } from './error.js';
import {
  CRLF,
  type ContentType,
  type HeaderField,
  fieldValue,
  makeField,
  parseContentType,
  parseTransferEncoding,
  readHeaderBlock,
  sanitizeField,
  serializeField,
} from './header.js';
import { F_BARE_LF, UNSAFE, bareLineFeeds, lfToCrlf, scan } from './scan.js';
import { base64Size, decodeBase64, decodeQuotedPrintable, quotedPrintableBound } from './transfer-encoding.js';

const LF = 0x0a;
const CR = 0x0d;
const DASHES = Buffer.from('--', 'latin1');

export interface Limits {
  maxHeaderBytes: number;
  maxParts: number;
  maxDepth: number;
}

export interface Walk {
  limits: Limits;
  parts: number;
  out: EntityPieces;
}

interface Place {
  depth: number;
  /** The top-level entity: its epilogue is dropped (Outlook rejects signatures that cover one). */
  top: boolean;
  /** RFC 2046 §5.1.5: inside multipart/digest a part without Content-Type is message/rfc822. */
  defaultType: 'text/plain' | 'message/rfc822';
  /** Boundaries of the enclosing multiparts; decoded content must not contain their delimiters. */
  ancestors: string[];
  /** The header block is a whole message (inside message/rfc822), not just a part header. */
  message: boolean;
}

const IDENTITY = new Set(['', '7bit', '8bit', 'binary']);

export function rewriteEntity(rawFields: HeaderField[], body: Buffer, walk: Walk, place: Place): void {
  walk.parts++;
  if (walk.parts > walk.limits.maxParts) {
    throw new MimeError(`message has more than ${walk.limits.maxParts} MIME parts`);
  }
  if (place.depth > walk.limits.maxDepth) {
    throw new MimeError(`MIME nesting deeper than ${walk.limits.maxDepth} levels`);
  }
  const fields = rawFields.map(sanitizeField);
  const ctField = fields.find((f) => f.name === 'content-type');
  const ct: ContentType | null = ctField
    ? parseContentType(fieldValue(ctField))
    : parseContentType(place.defaultType);
  const cteField = fields.find((f) => f.name === 'content-transfer-encoding');
  const cte = cteField ? parseTransferEncoding(fieldValue(cteField)) : '';

  if (ct?.type === 'multipart') return rewriteMultipart(fields, ct, cte, body, walk, place);
  if (ct?.type === 'message' && ct.subtype === 'rfc822') return rewriteMessage(fields, cte, body, walk, place);
  if (ct?.type === 'message' && (ct.subtype === 'partial' || ct.subtype === 'external-body')) {
    // RFC 2046 §5.2.2.1 / §5.2.3.1: these may only be 7bit, so they cannot be re-encoded
    return passOrThrow(fields, cte, body, walk, place, `message/${ct.subtype} part is not 7-bit clean`);
  }
  rewriteLeaf(fields, ct, cte, body, walk, place);
}

/** Writes the header block with the Content-Transfer-Encoding set to `cte` (null: unchanged). */
function emitHeaders(fields: HeaderField[], cte: string | null, walk: Walk, place: Place): void {
  let list = fields;
  if (cte !== null) {
    const field = makeField('Content-Transfer-Encoding', cte);
    const at = fields.findIndex((f) => f.name === 'content-transfer-encoding');
    if (at !== -1) {
      list = fields.slice();
      list[at] = field;
    } else {
      let last = -1;
      fields.forEach((f, k) => {
        if (f.name.startsWith('content-')) last = k;
      });
      list = fields.slice();
      list.splice(last + 1 || fields.length, 0, field);
      // RFC 2045 §4: a message needs MIME-Version for its transfer encoding to mean anything
      if (place.message && !fields.some((f) => f.name === 'mime-version')) {
        list.push(makeField('MIME-Version', '1.0'));
      }
    }
  }
  for (const f of list) walk.out.push(...serializeField(f));
  walk.out.push(CRLF);
}

function decodeComposite(cte: string, body: Buffer, walk: Walk, place: Place): Buffer {
  // RFC 2045 §6.4 forbids base64/QP on composites, but such mail exists; decode it so its
  // parts can be checked and labelled 7bit. Decoded content was never seen by the enclosing
  // parser, so it must not contain an enclosing delimiter or the tree would change shape.
  const decoded = cte === 'base64' ? decodeBase64(body) : decodeQuotedPrintable(body);
  walk.out.hold(decoded);
  for (const boundary of place.ancestors) {
    const delim = Buffer.from('--' + boundary, 'latin1');
    for (let i = decoded.indexOf(delim); i !== -1; i = decoded.indexOf(delim, i + 1)) {
      if (i === 0 || decoded[i - 1] === LF || decoded[i - 1] === CR) {
        throw new MimeError(`encoded composite part contains the delimiter of an enclosing multipart`);
      }
    }
  }
  return decoded;
}

function rewriteMultipart(
  fields: HeaderField[],
  ct: ContentType,
  cte: string,
  body: Buffer,
  walk: Walk,
  place: Place,
): void {
  const label = `${ct.type}/${ct.subtype}`;
  let content = body;
  let newCte: string | null = cte === '' || cte === '7bit' ? null : '7bit';
  if (cte === 'base64' || cte === 'quoted-printable') {
    content = decodeComposite(cte, body, walk, place);
  } else if (!IDENTITY.has(cte)) {
    return passOrThrow(fields, cte, body, walk, place, `${label} with unknown Content-Transfer-Encoding "${cte}"`);
  }
  const boundary = ct.params.get('boundary')?.value ?? '';
  const split = boundary ? splitMultipart(content, boundary) : null;
  if (!split) {
    // without delimiters there are no parts to re-encode: only an already clean body can pass
    const flags = scan(content);
    if (flags & UNSAFE) throw new MimeError(`${label} without a usable boundary is not 7-bit clean`);
    emitHeaders(fields, newCte, walk, place);
    walk.out.crlf(content);
    return;
  }
  emitHeaders(fields, newCte, walk, place);
  const delim = Buffer.from('--' + boundary, 'latin1');
  const out = walk.out;
  // the preamble and epilogue are not content (RFC 2046 §5.1.1: to be ignored); one that is not
  // transport-safe is dropped rather than rewritten
  if (split.preamble !== null && !(scan(split.preamble) & UNSAFE)) {
    out.crlf(split.preamble);
    out.push(CRLF);
  }
  const child: Place = {
    depth: place.depth + 1,
    top: false,
    defaultType: ct.subtype === 'digest' ? 'message/rfc822' : 'text/plain',
    ancestors: [...place.ancestors, boundary],
    message: false,
  };
  for (const part of split.parts) {
    out.push(delim, CRLF);
    const block = readHeaderBlock(part, 0, part.length, walk.limits.maxHeaderBytes);
    rewriteEntity(block.fields, part.subarray(block.bodyStart), walk, child);
    out.push(CRLF);
  }
  out.push(delim, DASHES);
  if (place.top) {
    out.push(CRLF);
  } else if (split.epilogue !== null) {
    if (!(scan(split.epilogue) & UNSAFE)) {
      out.push(CRLF);
      out.crlf(split.epilogue);
    }
  }
}

function rewriteMessage(fields: HeaderField[], cte: string, body: Buffer, walk: Walk, place: Place): void {
  let content = body;
  if (cte === 'base64' || cte === 'quoted-printable') {
    content = decodeComposite(cte, body, walk, place);
  } else if (!IDENTITY.has(cte)) {
    return passOrThrow(fields, cte, body, walk, place, `message/rfc822 with unknown Content-Transfer-Encoding "${cte}"`);
  }
  // RFC 2046 §5.2.1: message/rfc822 is 7bit, 8bit or binary only; we make the inner message
  // 7-bit clean instead and label it 7bit
  emitHeaders(fields, cte === '' || cte === '7bit' ? null : '7bit', walk, place);
  const block = readHeaderBlock(content, 0, content.length, walk.limits.maxHeaderBytes);
  rewriteEntity(block.fields, content.subarray(block.bodyStart), walk, {
    depth: place.depth + 1,
    top: false,
    defaultType: 'text/plain',
    ancestors: place.ancestors,
    message: true,
  });
}

function passOrThrow(
  fields: HeaderField[],
  cte: string,
  body: Buffer,
  walk: Walk,
  place: Place,
  reason: string,
): void {
  if (scan(body) & UNSAFE) throw new MimeError(reason);
  emitHeaders(fields, cte === '8bit' || cte === 'binary' ? '7bit' : null, walk, place);
  walk.out.crlf(body);
}

/** Text whose bytes are not ASCII-compatible: LF there is half a character, not a line end. */
function isWideCharset(ct: ContentType): boolean {
  const cs = ct.params.get('charset')?.value.toLowerCase() ?? '';
  return /^(utf-?16|utf-?32|ucs-?2|ucs-?4)/.test(cs);
}

function rewriteLeaf(
  fields: HeaderField[],
  ct: ContentType | null,
  cte: string,
  body: Buffer,
  walk: Walk,
  place: Place,
): void {
  // text may have its line breaks canonicalised to CRLF (RFC 2046 §4.1.1); anything else must
  // keep every byte, so a bare LF there is a reason to base64 it
  const isText = ct?.type === 'text' && !isWideCharset(ct);
  const flags = scan(body);
  const unsafe = cte === 'base64' ? flags & UNSAFE : flags & UNSAFE || (!isText && flags & F_BARE_LF);
  if (!unsafe) {
    emitHeaders(fields, cte === '8bit' || cte === 'binary' ? '7bit' : null, walk, place);
    if (cte === 'base64' || isText) walk.out.crlf(body);
    else walk.out.push(body);
    return;
  }
  let content: Buffer;
  if (IDENTITY.has(cte)) content = body;
  else if (cte === 'quoted-printable') content = walk.out.hold(decodeQuotedPrintable(body));
  else if (cte === 'base64') content = walk.out.hold(decodeBase64(body));
  else throw new MimeError(`cannot re-encode a part with unknown Content-Transfer-Encoding "${cte}"`);
  // base64 stays base64 even for text: it keeps the exact bytes and is already safe once rewrapped
  if (isText && cte !== 'base64') return rewriteText(fields, content, walk, place);
  emitHeaders(fields, 'base64', walk, place);
  walk.out.base64(content);
}

/** Enough of a text part to see that it is mostly 8-bit without pricing all of it. */
const TEXT_SAMPLE = 64 * 1024;

/**
 * Quoted-printable keeps text readable in the source, and costs little for text that is mostly
 * ASCII. Text that is mostly 8-bit (Cyrillic, Greek, CJK in UTF-8) would nearly triple in it, and
 * the relay holds that copy of every message in flight, so such text goes to base64 once
 * quoted-printable would be over half again as long (Python's email package also picks by
 * length). base64 then carries the text's canonical form, CRLF line breaks (RFC 2045 §6.8), so
 * both decode to the same bytes.
 */
function rewriteText(fields: HeaderField[], content: Buffer, walk: Walk, place: Place): void {
  // Pricing takes a pass over the whole part, so when its start already calls for base64 that decides.
  const sample = content.subarray(0, TEXT_SAMPLE);
  if (sample.length === content.length || quotedPrintableFits(sample)) {
    const qp = quotedPrintableBound(content);
    if (quotedPrintableFits(content, qp)) {
      emitHeaders(fields, 'quoted-printable', walk, place);
      walk.out.quotedPrintable(content, qp);
      return;
    }
  }
  emitHeaders(fields, 'base64', walk, place);
  walk.out.base64(bareLineFeeds(content) ? walk.out.hold(lfToCrlf(content)) : content);
}

/** Quoted-printable of `text` is at most half again as long as base64 of its canonical form. */
function quotedPrintableFits(text: Buffer, qp = quotedPrintableBound(text)): boolean {
  return qp <= 1.5 * base64Size(text.length + bareLineFeeds(text));
}

interface Split {
  preamble: Buffer | null;
  parts: Buffer[];
  epilogue: Buffer | null;
}

interface Delimiter {
  /** Where the line break in front of the delimiter starts (it belongs to the delimiter). */
  before: number;
  /** Just after the delimiter line's terminator. */
  after: number;
  close: boolean;
  atStart: boolean;
}

/**
 * RFC 2046 §5.1.1: a delimiter is a line "--" boundary, optionally "--" for the last one,
 * then blanks (transport padding). The line break in front of it belongs to it. Like
 * mailparser, CRs before the LF are tolerated and only a close delimiter may end the input
 * without a line break. Returns null when no delimiter opens a part.
 */
export function splitMultipart(content: Buffer, boundary: string): Split | null {
  const delim = Buffer.from('--' + boundary, 'latin1');
  const found: Delimiter[] = [];
  let from = 0;
  while (from <= content.length) {
    const d = nextDelimiter(content, delim, from);
    if (!d) break;
    found.push(d);
    if (d.close) break;
    from = d.after;
  }
  const first = found[0];
  if (!first || first.close) return null;
  const preamble = first.atStart ? null : content.subarray(0, first.before);
  const parts: Buffer[] = [];
  let epilogue: Buffer | null = null;
  for (let k = 0; k < found.length; k++) {
    const d = found[k]!;
    if (d.close) {
      epilogue = d.after < content.length || content[d.after - 1] === LF ? content.subarray(d.after) : null;
      break;
    }
    const next = found[k + 1];
    const end = next ? Math.max(next.before, d.after) : content.length;
    parts.push(content.subarray(d.after, end));
  }
  return { preamble, parts, epilogue };
}

function nextDelimiter(content: Buffer, delim: Buffer, from: number): Delimiter | null {
  const n = content.length;
  for (let i = content.indexOf(delim, from); i !== -1; i = content.indexOf(delim, i + 1)) {
    if (i > 0 && content[i - 1] !== LF) continue;
    let k = i + delim.length;
    let close = false;
    if (content[k] === 0x2d && content[k + 1] === 0x2d) {
      close = true;
      k += 2;
    }
    while (k < n && (content[k] === 0x20 || content[k] === 0x09)) k++;
    while (k < n && content[k] === CR) k++;
    let after: number;
    if (k < n && content[k] === LF) after = k + 1;
    else if (k === n && close) after = n;
    else continue;
    let before = i;
    if (i > 0) before = i >= 2 && content[i - 2] === CR ? i - 2 : i - 1;
    return { before, after, close, atStart: i === 0 };
  }
  return null;
}
