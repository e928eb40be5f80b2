/**
 * The outer header block exactly as it will leave the relay. Every trust decision about the header
 * is made on these bytes, and every path out of the relay (signed, signing off, already signed,
 * send-unsigned) forwards them, so what the relay checked is what the next hop reads.
 *
 * Received bytes that parsers read differently are made canonical when that cannot change what
 * the header says, and refused (554 5.6.0, naming the line) when it could:
 * - a line ends at LF or CRLF; both become CRLF. A bare CR is refused: the relay's reader would
 *   keep it inside a field, but nodemailer turns it into CRLF on the wire, where it starts a new
 *   header line (or, as CR CR LF, ends the header early);
 * - NUL and every other control character but HTAB are refused (RFC 5322 §3.2.3, §3.5); Python
 *   joins around some of them (str.splitlines) where other parsers keep them;
 * - a line without a colon, a continuation line with nothing to continue, a line of whitespace
 *   only, a field name with whitespace before the colon (obs-optional, RFC 5322 §4.5) or with
 *   bytes outside ftext: each one is where parsers disagree about where a field, or the header,
 *   ends;
 * - a line over 998 octets (RFC 5322 §2.1.1) is folded at whitespace, or refused without any;
 * - 8-bit bytes: UTF-8 is allowed when the client used SMTPUTF8 (RFC 6531, RFC 6532). Without it
 *   an unstructured field (Subject, X-*) becomes RFC 2047 encoded-words and a Content-Type or
 *   Content-Disposition parameter RFC 2231; any other field is refused;
 * - a second Content-Type, Content-Transfer-Encoding or MIME-Version: parsers pick different ones.
 */
import { MimeError } from '../mime/error.js';
import { CRLF, DEFAULT_MAX_HEADER_BYTES, foldLongLines, sanitizeField, type HeaderField } from '../mime/header.js';
import { RelayError, replies } from '../replies.js';

const CR = 0x0d;
const LF = 0x0a;
const HTAB = 0x09;
const SP = 0x20;

export interface CanonicalField extends HeaderField {
  /** Line of the received message (1-based) where the field starts, for reply texts. */
  line: number;
}

export interface CanonicalMessage {
  /** The outer header fields in order: CRLF-free lines of at most 998 octets, no control bytes. */
  fields: CanonicalField[];
  /** The canonical header block, a blank line, then the body as received; `raw` itself when nothing changed. */
  message: Buffer;
}

export interface CanonicalOptions {
  /** The client used SMTPUTF8 on MAIL FROM, so the header may carry UTF-8 (RFC 6532). */
  smtputf8: boolean;
  maxBytes?: number;
}

/** Fields of which a second copy makes parsers disagree about the message's type or encoding. */
const SINGLE = new Set(['content-type', 'content-transfer-encoding', 'mime-version']);

export function canonicalHeader(raw: Buffer, opts: CanonicalOptions): CanonicalMessage {
  const maxBytes = opts.maxBytes ?? DEFAULT_MAX_HEADER_BYTES;
  const fields: CanonicalField[] = [];
  const eightBit = new Set<CanonicalField>();
  let pos = 0;
  let lineNo = 0;
  let bodyStart = raw.length;
  while (pos < raw.length) {
    lineNo++;
    const lf = raw.indexOf(LF, pos);
    const next = lf === -1 ? raw.length : lf + 1;
    let end = lf === -1 ? raw.length : lf;
    if (lf !== -1 && end > pos && raw[end - 1] === CR) end--;
    const line = raw.subarray(pos, end);
    if (next > maxBytes) refuse(lineNo, line, `goes past the ${maxBytes}-byte limit of the header block`);
    if (line.length === 0) {
      bodyStart = next;
      break;
    }
    const has8bit = scanBytes(line, lineNo);
    const last = fields[fields.length - 1];
    if (line[0] === SP || line[0] === HTAB) {
      if (!last) refuse(lineNo, line, 'starts with whitespace, but there is no header field before it to continue');
      if (isBlank(line)) refuse(lineNo, line, 'holds only whitespace, which some MTAs read as the end of the header');
      last.lines.push(line);
      if (has8bit) eightBit.add(last);
    } else {
      const field: CanonicalField = { name: fieldName(line, lineNo), lines: [line], line: lineNo };
      fields.push(field);
      if (has8bit) eightBit.add(field);
    }
    pos = next;
  }

  const seen = new Set<string>();
  const canonical = fields.map((field) => {
    if (SINGLE.has(field.name)) {
      if (seen.has(field.name)) refuse(field.line, field.lines[0]!, 'repeats a field that may appear only once; mail clients would pick different ones');
      seen.add(field.name);
    }
    return { ...canonicalBytes(field, eightBit.has(field), opts.smtputf8), line: field.line };
  });
  return { fields: canonical, message: assemble(raw, canonical, bodyStart) };
}

/** Throws on bytes no parser may be trusted to read alike; tells whether the line has 8-bit bytes. */
function scanBytes(line: Buffer, lineNo: number): boolean {
  let has8bit = false;
  for (let i = 0; i < line.length; i++) {
    const c = line[i]!;
    if (c >= 0x80) has8bit = true;
    else if (c === CR) refuse(lineNo, line, 'contains a bare CR, which the next hop turns into a line break');
    else if (c === 0) refuse(lineNo, line, 'contains a NUL byte');
    else if ((c < SP && c !== HTAB) || c === 0x7f) refuse(lineNo, line, `contains the control character 0x${c.toString(16).padStart(2, '0')}`);
  }
  return has8bit;
}

/** The lower-cased name of a field's first line; throws unless it is ftext followed by the colon (RFC 5322 §3.6.8). */
function fieldName(line: Buffer, lineNo: number): string {
  const colon = line.indexOf(0x3a);
  if (line[0] === 0x46 && /^From +[^ :]/.test(line.toString('latin1', 0, 64))) {
    // Python's parser takes it as the envelope line (unixfrom); others as a broken field
    refuse(lineNo, line, 'is an mbox "From " separator line, not a header field');
  }
  if (colon === -1) refuse(lineNo, line, 'has no colon, so it is not a header field (parsers disagree about where the header ends)');
  if (colon === 0) refuse(lineNo, line, 'has an empty field name');
  for (let i = 0; i < colon; i++) {
    const c = line[i]!;
    if (c === SP || c === HTAB) refuse(lineNo, line, 'has whitespace before the colon (obsolete syntax that parsers read differently)');
    // controls are refused already; what is left outside ftext is 8-bit
    if (c > 126) refuse(lineNo, line, 'has a byte that is not allowed in a field name');
  }
  return line.toString('latin1', 0, colon).toLowerCase();
}

/** The field with 8-bit bytes validated or encoded, and lines over 998 octets folded. */
function canonicalBytes(field: CanonicalField, has8bit: boolean, smtputf8: boolean): HeaderField {
  try {
    if (!has8bit) return foldLongLines(field);
    if (!smtputf8) return sanitizeField(field);
    checkUtf8(field);
    return foldLongLines(field);
  } catch (e) {
    if (!(e instanceof MimeError)) throw e;
    const problem = !has8bit
      ? 'is longer than 998 octets and has no whitespace to fold it at'
      : `has 8-bit bytes, but the client did not use SMTPUTF8 (RFC 6531) and they cannot be encoded here (${e.message}); ` +
        'send it with SMTPUTF8 or encode the text as RFC 2047 encoded-words';
    return refuse(field.line, field.lines[0]!, problem);
  }
}

const UTF8 = new TextDecoder('utf-8', { fatal: true });

/** RFC 6532 §3.2: UTF-8 only; C1 controls and the Unicode line separators are line breaks to some readers. */
function checkUtf8(field: CanonicalField): void {
  let text: string;
  try {
    text = UTF8.decode(Buffer.concat(field.lines));
  } catch {
    return refuse(field.line, field.lines[0]!, 'has 8-bit bytes that are not UTF-8 (RFC 6532 allows UTF-8 only)');
  }
  if (/[\u0080-\u009f\u2028\u2029]/.test(text)) {
    refuse(field.line, field.lines[0]!, 'contains a C1 control or Unicode line separator, which some readers take as a line break');
  }
}

function isBlank(line: Buffer): boolean {
  for (const c of line) if (c !== SP && c !== HTAB) return false;
  return true;
}

/** Header, blank line, body. The received buffer is reused when the header was canonical already. */
function assemble(raw: Buffer, fields: readonly HeaderField[], bodyStart: number): Buffer {
  const parts: Buffer[] = [];
  for (const field of fields) for (const line of field.lines) parts.push(line, CRLF);
  parts.push(CRLF);
  const header = Buffer.concat(parts);
  if (header.equals(raw.subarray(0, bodyStart))) return raw;
  return Buffer.concat([header, raw.subarray(bodyStart)]);
}

/** Printable ASCII, at most 60 characters: safe in an SMTP reply and a log line. */
export function excerpt(line: Buffer): string {
  let out = '';
  for (const c of line) {
    if (out.length >= 60) return out + '...';
    if (c === CR) out += '\\r';
    else if (c === 0x22 || c === 0x5c) out += '\\' + String.fromCharCode(c);
    else if (c >= SP && c < 0x7f) out += String.fromCharCode(c);
    else out += `\\x${c.toString(16).padStart(2, '0')}`;
  }
  return out;
}

function refuse(line: number, bytes: Buffer, problem: string): never {
  throw new RelayError(replies.headerLineRefused(line, excerpt(bytes), problem));
}
