/**
 * What a mail client shows next to the sender's address: the display name, quoted strings and
 * comments. Clients show that text in the sender line and the signed badge then seems to vouch for
 * it, so it may name no address other than the signed mailbox. It is checked in every form a
 * reader may produce:
 * - as written, and with RFC 2047 encoded-words decoded (mailparser and Python's policy.default
 *   decode them even inside quoted strings and comments), with the whitespace between adjacent
 *   encoded-words dropped (RFC 2047 §6.2) and kept;
 * - each of those also after NFKC, so a fullwidth `＠` (U+FF20) or small `﹫` (U+FE6B) counts as `@`,
 *   and also without quote marks and parentheses, which a client does not show.
 * An encoded-word the relay cannot read exactly as every parser does is refused outright: a
 * malformed one (mailparser decodes `=?utf-8?b?ZXZp bEB4?=`, spaces and all, to `evil@x`) and one
 * in a charset outside a small ASCII-compatible list (Python decodes cp500 (EBCDIC) and UTF-7,
 * where `@` is not byte 0x40).
 */
import type { Mailbox } from '../mime/mailbox.js';

/** One well-formed encoded-word at a "=?" (RFC 2047 §2, RFC 2231 §5 language suffix). */
const ENCODED_WORD = /=\?([A-Za-z0-9!#$%&'+^_`{}~-]+)(?:\*[A-Za-z0-9-]*)?\?([BbQq])\?([^?\s]*)\?=/y;

/**
 * Characters that end an address-like token in displayed text; everything else is part of one.
 * ASCII only, on purpose: `\s` would also split at U+FEFF, which a client does not show, so
 * `a@x<U+FEFF>.evil.example` would pass as `a@x`. Unicode spaces are boundaries only in the NFKC
 * form (where they become U+0020); in the other form they keep the token whole, and strict.
 */
const TOKEN_BOUNDARY = /[ \t()<>[\]",;:\\]/;

/** C0/C1 controls and line separators: a client may drop them and join what they separate. */
const CONTROL = /[\u0000-\u0008\u000a-\u001f\u007f-\u009f\u2028\u2029]/;

/**
 * Why the shown text is unacceptable for a message signed as `mailbox`, or undefined when it
 * names no address but `mailbox` in any of the forms a reader may show.
 */
export function shownTextProblem(shown: readonly string[], mailbox: Mailbox): string | undefined {
  for (const text of shown) {
    const decoded = decodeWords(text);
    if (typeof decoded === 'string') return decoded;
    for (const form of [text, decoded.joined, decoded.spaced]) {
      const nfkc = form.normalize('NFKC');
      for (const variant of [form, nfkc, unquoted(form), unquoted(nfkc)]) {
        if (CONTROL.test(variant)) return 'has a display name or comment that decodes to a control character';
        const other = otherAddress(variant, mailbox);
        if (other !== undefined) return `shows the address ${printable(other)} in its display name or a comment, not only <${mailbox}>`;
      }
    }
  }
  return undefined;
}

/**
 * The text as a client shows a display name: quote marks and comment parentheses are syntax and
 * go, so what they separated runs together (Python shows `=?koi8-r?B?6dfBzg==?="a@x"` as `Иванa@x`).
 */
const unquoted = (text: string): string => text.replace(/["()]/g, '');

/** The first token holding an "@" that is not exactly `mailbox` (case-insensitive). */
function otherAddress(text: string, mailbox: Mailbox): string | undefined {
  for (const token of text.split(TOKEN_BOUNDARY)) {
    if (token.includes('@') && /[^@]/.test(token) && token.toLowerCase() !== mailbox) return token;
  }
  return undefined;
}

/** The text with encoded-words decoded, two ways; or a problem string when one cannot be read. */
function decodeWords(text: string): { joined: string; spaced: string } | string {
  let joined = '';
  let spaced = '';
  let at = 0;
  for (let start = text.indexOf('=?'); start !== -1; start = text.indexOf('=?', at)) {
    ENCODED_WORD.lastIndex = start;
    const m = ENCODED_WORD.exec(text);
    if (!m) return `has a malformed encoded-word (${printable(text.slice(start, start + 40))})`;
    const charset = m[1]!.toLowerCase();
    const bytes = m[2]!.toLowerCase() === 'b' ? decodeB(m[3]!) : decodeQ(m[3]!);
    if (!bytes) return `has a malformed encoded-word (${printable(m[0])})`;
    const word = decodeCharset(charset, bytes);
    if (word === undefined) return `has an encoded-word in ${printable(m[1]!)} that the relay cannot decode reliably (use UTF-8)`;
    const between = text.slice(at, start);
    spaced += between + word;
    // Only whitespace between two encoded-words goes (before the first one it is at the start,
    // where it separates nothing).
    joined += (/^[ \t]*$/.test(between) ? '' : between) + word;
    at = start + m[0].length;
  }
  return { joined: joined + text.slice(at), spaced: spaced + text.slice(at) };
}

function decodeB(text: string): Buffer | undefined {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4 === 1) return undefined;
  return Buffer.from(text, 'base64');
}

function decodeQ(text: string): Buffer | undefined {
  if (/=(?![0-9A-Fa-f]{2})/.test(text)) return undefined;
  return Buffer.from(
    text.replace(/_/g, ' ').replace(/=([0-9A-Fa-f]{2})/g, (_, h: string) => String.fromCharCode(parseInt(h, 16))),
    'latin1',
  );
}

const SINGLE_BYTE = new Set([
  ...[2, 3, 4, 5, 6, 7, 8, 10, 13, 14, 15].map((n) => `iso-8859-${n}`),
  ...[0, 1, 2, 3, 4, 5, 6, 7, 8].map((n) => `windows-125${n}`),
  'koi8-r',
  'koi8-u',
]);

/** Other names senders write for the charsets decodeCharset() reads. */
const ALIASES = new Map([
  ['latin1', 'iso-8859-1'],
  ['latin-1', 'iso-8859-1'],
  ['iso8859-1', 'iso-8859-1'],
  ['utf8', 'utf-8'],
  ['ascii', 'us-ascii'],
]);

/**
 * Decodes in charsets that are ASCII-compatible, so "@" is byte 0x40 in every reader; undefined
 * for any other charset, and for bytes that are not valid in the named one.
 */
function decodeCharset(charset: string, bytes: Buffer): string | undefined {
  const name = ALIASES.get(charset) ?? charset;
  // RFC 2046 names; "iso-8859-1" is latin1 proper here (WHATWG's label would give windows-1252)
  if (name === 'us-ascii') return bytes.every((b) => b < 0x80) ? bytes.toString('latin1') : undefined;
  if (name === 'iso-8859-1') return bytes.toString('latin1');
  if (name !== 'utf-8' && !SINGLE_BYTE.has(name)) return undefined;
  try {
    return new TextDecoder(name, { fatal: true }).decode(bytes);
  } catch {
    // not valid in that charset: undefined, as for a charset it does not name
  }
  return undefined;
}

/** Printable ASCII for a reply text. */
function printable(s: string): string {
  return s.replace(/[^\x20-\x7e]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`).slice(0, 80);
}
