/**
 * Header blocks (RFC 5322 §2.2) and the structured Content-* values we need (RFC 2045 §5.1,
 * RFC 2231). Values are handled as latin1 strings so each char is exactly one byte and 8bit
 * bytes survive a round trip.
 */
import { MimeError } from './error.js';

const CR = 0x0d;
const LF = 0x0a;

export interface HeaderField {
  /** Lower-cased field name, trimmed ("" for a line without a colon). */
  name: string;
  /** The physical lines of the field, without their line terminators. */
  lines: Buffer[];
}

export interface HeaderBlock {
  fields: HeaderField[];
  /** Offset where the body starts (just after the blank line, or the end of input). */
  bodyStart: number;
}

/**
 * Splits the header block off `buf[start, end)`. A line is terminated by LF or CRLF; the block
 * ends at the first empty line or at the end of the input (a message that is only headers).
 */
export function readHeaderBlock(buf: Buffer, start: number, end: number, maxBytes: number): HeaderBlock {
  const fields: HeaderField[] = [];
  let pos = start;
  // At pos === end a further pass would find the line empty and return end as well.
  // Stryker disable next-line EqualityOperator: equivalent, see above
  while (pos < end) {
    const found = buf.indexOf(LF, pos);
    const lf = found === -1 ? end : Math.min(found, end);
    if (lf - start > maxBytes) {
      throw new MimeError(`header block exceeds the limit of ${maxBytes} bytes`);
    }
    let lineEnd = lf;
    if (lf < end && lineEnd > pos && buf[lineEnd - 1] === CR) lineEnd--;
    // lf === end means no LF inside the range: the line is not empty (pos < end), so next only ends
    // the loop, which returns end either way.
    // Stryker disable next-line EqualityOperator,ConditionalExpression: equivalent, see above
    const next = lf < end ? lf + 1 : end;
    if (lineEnd === pos) return { fields, bodyStart: next };
    const line = buf.subarray(pos, lineEnd);
    const first = line[0];
    const last = fields[fields.length - 1];
    if ((first === 0x20 || first === 0x09) && last) {
      last.lines.push(line);
    } else {
      const colon = line.indexOf(0x3a);
      // Stryker disable next-line ConditionalExpression: toString(…, 0, -1) is '' too; this says it
      const name = colon === -1 ? '' : line.toString('latin1', 0, colon).trim().toLowerCase();
      fields.push({ name, lines: [line] });
    }
    pos = next;
  }
  return { fields, bodyStart: end };
}

/** Largest top-level header block the relay reads (prepare's default limit too). */
export const DEFAULT_MAX_HEADER_BYTES = 256 * 1024;

/**
 * The top-level header fields of a raw message, or undefined when the block is larger than
 * DEFAULT_MAX_HEADER_BYTES (prepare then refuses the message with a reason).
 */
export function topHeaderFields(raw: Buffer): HeaderField[] | undefined {
  // readHeaderBlock throws only MimeError (a big header), so an empty catch, or one that returns
  // for every error, is equivalent; the rethrow keeps a future bug from looking like a big header.
  // (The try block's own BlockStatement mutant is disabled with it: a comment cannot reach the
  // catch block alone.)
  // Stryker disable BlockStatement,ConditionalExpression: equivalent, see above
  try {
    return readHeaderBlock(raw, 0, raw.length, DEFAULT_MAX_HEADER_BYTES).fields;
  } catch (e) {
    if (e instanceof MimeError) return undefined;
    throw e;
  }
  // Stryker restore BlockStatement,ConditionalExpression
}

/** The field as CRLF-terminated lines. */
export function serializeField(field: HeaderField): Buffer[] {
  const out: Buffer[] = [];
  for (const line of field.lines) out.push(line, CRLF);
  return out;
}

export const CRLF = Buffer.from('\r\n', 'latin1');

/** The unfolded value after the colon, as a latin1 string. */
export function fieldValue(field: HeaderField): string {
  const joined = field.lines.map((l) => l.toString('latin1')).join('');
  const colon = joined.indexOf(':');
  return colon === -1 ? '' : joined.slice(colon + 1);
}

export function makeField(name: string, value: string): HeaderField {
  const lines = `${name}: ${value}`.split('\r\n').map((l) => Buffer.from(l, 'latin1'));
  return { name: name.toLowerCase(), lines };
}

export interface ParamValue {
  /** The value as raw bytes in a latin1 string (RFC 2231 percent-escapes decoded). */
  value: string;
  /** RFC 2231 charset, when the value was extended. */
  charset?: string;
}

export interface ContentType {
  type: string;
  subtype: string;
  /** Parameters by lower-cased name, in first-seen order, RFC 2231 sections joined. */
  params: Map<string, ParamValue>;
}

const TSPECIALS = '()<>@,;:\\"/[]?=';

function isTokenChar(ch: string): boolean {
  const c = ch.charCodeAt(0);
  return c > 0x20 && c < 0x7f && !TSPECIALS.includes(ch);
}

class Cursor {
  i = 0;
  constructor(readonly s: string) {}
  /** Skips whitespace and (nested) comments. */
  cfws(): void {
    const s = this.s;
    while (this.i < s.length) {
      const ch = s[this.i]!;
      if (ch === ' ' || ch === '\t' || ch === '\r' || ch === '\n') {
        this.i++;
      } else if (ch === '(') {
        let depth = 0;
        while (this.i < s.length) {
          const c = s[this.i++]!;
          if (c === '\\') this.i++;
          else if (c === '(') depth++;
          else if (c === ')' && --depth === 0) break;
        }
      } else {
        return;
      }
    }
  }
  token(): string {
    const start = this.i;
    while (this.i < this.s.length && isTokenChar(this.s[this.i]!)) this.i++;
    return this.s.slice(start, this.i);
  }
  /** A parameter value: a quoted-string, or (leniently, as mailparser does) anything up to ";". */
  value(): string {
    const s = this.s;
    if (s[this.i] === '"') {
      let out = '';
      this.i++;
      while (this.i < s.length) {
        const c = s[this.i++]!;
        if (c === '\\' && this.i < s.length) out += s[this.i++]!;
        else if (c === '"') return out;
        else out += c;
      }
      return out;
    }
    const start = this.i;
    while (this.i < s.length && s[this.i] !== ';') this.i++;
    return s.slice(start, this.i).trim();
  }
}

/** Parses a Content-Type (or Content-Disposition, with subtype "") value; null if malformed. */
export function parseContentType(value: string, hasSubtype = true): ContentType | null {
  const c = new Cursor(value);
  c.cfws();
  const type = c.token().toLowerCase();
  if (!type) return null;
  let subtype = '';
  if (hasSubtype) {
    c.cfws();
    if (c.s[c.i] !== '/') return null;
    c.i++;
    c.cfws();
    subtype = c.token().toLowerCase();
    if (!subtype) return null;
  }
  const raw: { name: string; value: string }[] = [];
  for (;;) {
    c.cfws();
    if (c.i >= c.s.length) break;
    if (c.s[c.i] !== ';') {
      // junk between parameters: skip to the next ";" like lenient parsers do
      const semi = c.s.indexOf(';', c.i);
      if (semi === -1) break;
      c.i = semi;
    }
    c.i++;
    c.cfws();
    const name = c.token().toLowerCase();
    c.cfws();
    if (!name || c.s[c.i] !== '=') continue;
    c.i++;
    c.cfws();
    raw.push({ name, value: c.value() });
  }
  return { type, subtype, params: joinRfc2231(raw) };
}

/** RFC 2231 §3 and §4: name*0, name*1*, name*=charset'lang'%XX. An extended value wins. */
function joinRfc2231(raw: { name: string; value: string }[]): Map<string, ParamValue> {
  const params = new Map<string, ParamValue>();
  const sections = new Map<string, { index: number; extended: boolean; value: string }[]>();
  for (const { name, value } of raw) {
    const m = /^([^*]+)\*(?:(\d+)\*?|)$/.exec(name);
    if (!m) {
      if (!params.has(name)) params.set(name, { value });
      continue;
    }
    const base = m[1]!;
    const extended = name.endsWith('*');
    const index = m[2] === undefined ? 0 : Number(m[2]);
    let list = sections.get(base);
    if (!list) sections.set(base, (list = []));
    list.push({ index, extended, value });
  }
  for (const [base, list] of sections) {
    list.sort((a, b) => a.index - b.index);
    let charset: string | undefined;
    let value = '';
    list.forEach((sec, k) => {
      let v = sec.value;
      if (sec.extended) {
        if (k === 0) {
          const m = /^([^']*)'[^']*'(.*)$/s.exec(v);
          if (m) {
            charset = m[1] || undefined;
            v = m[2]!;
          }
        }
        v = v.replace(/%([0-9a-fA-F]{2})/g, (_, h: string) => String.fromCharCode(parseInt(h, 16)));
      }
      value += v;
    });
    params.set(base, charset === undefined ? { value } : { value, charset });
  }
  return params;
}

/** The Content-Transfer-Encoding mechanism, lower-cased without comments; "" when absent. */
export function parseTransferEncoding(value: string): string {
  const c = new Cursor(value);
  c.cfws();
  return c.token().toLowerCase();
}

export function has8bit(s: string): boolean {
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) > 0x7f) return true;
  return false;
}

function isUtf8(bytes: Buffer): boolean {
  try {
    new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    return true;
  } catch {
    return false;
  }
}

/** Fields whose value is unstructured text, so RFC 2047 encoded-words may stand for it. */
function isUnstructured(name: string): boolean {
  return (
    name === 'subject' ||
    name === 'comments' ||
    name === 'content-description' ||
    name === 'thread-topic' ||
    name.startsWith('x-')
  );
}

/**
 * Makes one field of the signed entity 7-bit clean and within 998 octets per line, or throws.
 * The signed entity has to survive an MTA that does not speak 8BITMIME/SMTPUTF8, so raw UTF-8
 * (RFC 6532) cannot stay in it:
 * - Content-Type / Content-Disposition parameters become RFC 2231 `name*=utf-8''...`;
 * - unstructured fields (Subject, Content-Description, X-*) become RFC 2047 encoded-words;
 * - anything else (an address with a UTF-8 local part, an 8bit Content-ID) cannot be written in
 *   7 bits without changing it, so it is a MimeError.
 * Bare CR and NUL in a field are MimeErrors too: no encoding represents them in a header.
 */
export function sanitizeField(field: HeaderField): HeaderField {
  let eightBit = false;
  for (const line of field.lines) {
    for (let i = 0; i < line.length; i++) {
      const c = line[i]!;
      if (c === 0 || c === CR) {
        throw new MimeError(`header field "${displayName(field)}" contains a ${c === 0 ? 'NUL' : 'bare CR'}`);
      }
      if (c > 0x7f) eightBit = true;
    }
  }
  if (eightBit) field = encode8bitField(field);
  return foldLongLines(field);
}

function displayName(field: HeaderField): string {
  const n = field.lines[0]?.toString('latin1') ?? '';
  const colon = n.indexOf(':');
  return (colon === -1 ? n.slice(0, 40) : n.slice(0, colon)).replace(/[^\x20-\x7e]/g, '?');
}

function originalName(field: HeaderField): string {
  const first = field.lines[0]?.toString('latin1') ?? '';
  return first.slice(0, first.indexOf(':')).trim();
}

function encode8bitField(field: HeaderField): HeaderField {
  const label = displayName(field);
  if (field.name === '' || has8bit(originalName(field))) {
    throw new MimeError(`header line "${label}" has 8bit bytes and no field name`);
  }
  const value = fieldValue(field);
  if (field.name === 'content-type' || field.name === 'content-disposition') {
    const isType = field.name === 'content-type';
    const ct = parseContentType(value, isType);
    if (!ct) throw new MimeError(`8bit bytes in a malformed ${label} field`);
    if (has8bit(ct.type) || has8bit(ct.subtype)) throw new MimeError(`8bit bytes in the ${label} type`);
    for (const [name, p] of ct.params) {
      if (has8bit(name)) throw new MimeError(`8bit parameter name in ${label}`);
      if (has8bit(p.value) && !p.charset && !isUtf8(Buffer.from(p.value, 'latin1'))) {
        throw new MimeError(`parameter ${name} of ${label} has 8bit bytes that are not UTF-8`);
      }
    }
    return makeField(originalName(field), serializeParams(isType ? `${ct.type}/${ct.subtype}` : ct.type, ct.params));
  }
  if (isUnstructured(field.name)) {
    const bytes = Buffer.from(value.replace(/^[ \t]+/, ''), 'latin1');
    if (!isUtf8(bytes)) throw new MimeError(`header field "${label}" has 8bit bytes that are not UTF-8`);
    return makeField(originalName(field), encodeWords(bytes));
  }
  throw new MimeError(`header field "${label}" has 8bit bytes that cannot be encoded in 7 bits`);
}

/**
 * Writes parameters one per folded line, each line within 78 octets: a value with 8bit bytes
 * as an RFC 2231 extended value, a value too long for one line as RFC 2231 continuations.
 */
export function serializeParams(head: string, params: Map<string, ParamValue>): string {
  let out = head;
  for (const [name, p] of params) {
    // " name*NN*=" is the most a continuation line spends before the value
    const room = Math.max(16, 78 - name.length - 6);
    if (!has8bit(p.value) && !p.charset) {
      const quoted = quoteValue(p.value);
      if (quoted.length <= room) {
        out += `;\r\n ${name}=${quoted}`;
        continue;
      }
      const pieces = p.value.match(new RegExp(`[^]{1,${Math.floor((room - 2) / 2)}}`, 'g')) ?? [];
      pieces.forEach((piece, k) => {
        out += `;\r\n ${name}*${k}=${quoteValue(piece)}`;
      });
      continue;
    }
    const pct = percentEncode(p.value);
    const prefix = `${p.charset ?? 'utf-8'}''`;
    if (prefix.length + pct.length <= room) {
      out += `;\r\n ${name}*=${prefix}${pct}`;
      continue;
    }
    splitPercent(pct, Math.max(12, room - prefix.length)).forEach((chunk, k) => {
      out += `;\r\n ${name}*${k}*=${k === 0 ? prefix : ''}${chunk}`;
    });
  }
  return out;
}

function quoteValue(v: string): string {
  if (v.length > 0 && [...v].every(isTokenChar)) return v;
  return `"${v.replace(/(["\\])/g, '\\$1')}"`;
}

/** RFC 2231 attribute-char: token chars except "*", "'" and "%". */
function percentEncode(v: string): string {
  let out = '';
  for (let i = 0; i < v.length; i++) {
    const ch = v[i]!;
    if (isTokenChar(ch) && ch !== '*' && ch !== "'" && ch !== '%') out += ch;
    else out += '%' + v.charCodeAt(i).toString(16).toUpperCase().padStart(2, '0');
  }
  return out;
}

function splitPercent(s: string, max: number): string[] {
  const out: string[] = [];
  let i = 0;
  while (i < s.length) {
    let end = Math.min(i + max, s.length);
    // never cut a %XX escape in two
    if (end < s.length && s[end - 1] === '%') end -= 1;
    else if (end < s.length && s[end - 2] === '%') end -= 2;
    out.push(s.slice(i, end));
    i = end;
  }
  return out;
}

/** RFC 2047 B encoded-words of at most 75 chars, split on UTF-8 character boundaries (§5). */
export function encodeWords(bytes: Buffer): string {
  const words: string[] = [];
  let i = 0;
  while (i < bytes.length) {
    let end = Math.min(i + 45, bytes.length);
    // step back over continuation bytes so no character is split between words
    while (end < bytes.length && end > i + 1 && (bytes[end]! & 0xc0) === 0x80) end--;
    words.push(`=?utf-8?B?${bytes.toString('base64', i, end)}?=`);
    i = end;
  }
  return words.join('\r\n ');
}

/**
 * Folds lines over 998 octets (RFC 5322 §2.1.1) by inserting CRLF in front of a blank, which
 * unfolding removes again. Never where either side would be only blanks: a line of whitespace
 * alone is the end of the header to some MTAs. A line with no blank to fold at cannot be sent:
 * MimeError.
 */
export function foldLongLines(field: HeaderField): HeaderField {
  if (field.lines.every((l) => l.length <= 998)) return field;
  const lines: Buffer[] = [];
  for (let line of field.lines) {
    let lastNonBlank = line.length - 1;
    while (lastNonBlank >= 0 && isBlankByte(line[lastNonBlank]!)) lastNonBlank--;
    while (line.length > 998) {
      let cut = -1;
      for (let k = Math.min(998, lastNonBlank - 1); k > 0; k--) {
        if (isBlankByte(line[k]!) && hasNonBlank(line, k)) {
          cut = k;
          break;
        }
      }
      if (cut === -1) throw new MimeError(`header field "${displayName(field)}" has a line over 998 octets`);
      lines.push(line.subarray(0, cut));
      line = line.subarray(cut);
      lastNonBlank -= cut;
    }
    lines.push(line);
  }
  return { name: field.name, lines };
}

const isBlankByte = (c: number): boolean => c === 0x20 || c === 0x09;

function hasNonBlank(line: Buffer, end: number): boolean {
  for (let i = 0; i < end; i++) if (!isBlankByte(line[i]!)) return true;
  return false;
}
