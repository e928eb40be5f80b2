/**
 * A strict reader for a header field that must hold exactly one mailbox (RFC 5322 §3.4):
 *
 *     [CFWS] ( addr-spec | [phrase] "<" addr-spec ">" ) [CFWS]
 *
 * It is deliberately narrower than the RFC. Everything outside this subset is syntax that common
 * parsers read differently (shared/notes/real-parts.md): nodemailer's addressparser and Python's
 * getaddresses find the second address of `a@x <b@y>`, Python's policy.default the first; groups,
 * lists, quoted-pairs, nested comments and unbalanced quotes each have parsers that disagree. A
 * trust decision cannot rest on a guess, so all of them are refused with the reason:
 * - no groups (`name: ...;`), lists (`,`), domain literals or obsolete routes;
 * - no backslash (quoted-pair), nested comment, or `<` `>` `"` inside a comment, no `<` `>`
 *   inside a quoted string, and no fold inside either;
 * - the addr-spec is a dot-atom on both sides of one `@`, with nothing between `<` and `>` but
 *   the addr-spec, and no word before it unless it is in angle brackets.
 * Non-ASCII characters are atext (RFC 6532 §3.2): the header block lets them through only as
 * UTF-8 under SMTPUTF8.
 *
 * What it returns besides the address is every piece of text a reader may show with it (display
 * name, quoted strings, comments): src/admit/shown-addresses.ts checks those.
 */

export interface ParsedMailbox {
  /** The addr-spec as written. */
  address: string;
  /** The field's text before and after the addr-spec: what a mail client may show next to it. */
  shown: string[];
}

export type MailboxParse = { ok: true; mailbox: ParsedMailbox } | { ok: false; problem: string };

/**
 * Reads one field value: everything after the colon, folding CRLFs kept (a fold inside a quoted
 * string or comment is refused). Replaceable so tests can prove a lenient one is caught.
 */
export type MailboxParser = (value: string) => MailboxParse;

type Token =
  | { kind: 'word'; text: string; start: number; end: number; quoted: boolean }
  | { kind: 'special'; text: string; start: number; end: number };

const ATEXT_ASCII = /^[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.]$/;
const isAtext = (ch: string): boolean => ATEXT_ASCII.test(ch) || ch.charCodeAt(0) >= 0x80;
const DOT_ATOM = /^[^.]+(?:\.[^.]+)*$/;

/** Python's getaddresses reads `"Notify<CRLF> Team" <a@x>` as the address "Notify": it does not unfold. */
const FOLDED = "has a quoted string or comment folded over two lines, which Python's getaddresses misreads; keep it on one line";

class Refusal {
  constructor(readonly problem: string) {}
}

export const parseMailbox: MailboxParser = (value) => {
  try {
    return { ok: true, mailbox: read(tokenize(value), value) };
  } catch (e) {
    if (e instanceof Refusal) return { ok: false, problem: e.problem };
    throw e;
  }
};

/** Words (atoms, quoted strings) and specials; whitespace and comments are dropped after checking. */
function tokenize(s: string): Token[] {
  const tokens: Token[] = [];
  let i = 0;
  while (i < s.length) {
    const ch = s[i]!;
    if (ch === ' ' || ch === '\t' || ch === '\r' || ch === '\n') {
      // folding whitespace: the value comes with its CRLFs, as it leaves
      i++;
    } else if (ch === '(') {
      i = skipComment(s, i);
    } else if (ch === '"') {
      const end = s.indexOf('"', i + 1);
      if (end === -1) throw new Refusal('has an unbalanced quote');
      const text = s.slice(i + 1, end);
      if (/[\r\n]/.test(text)) throw new Refusal(FOLDED);
      if (/[\\<>]/.test(text)) throw new Refusal('has a backslash or an angle bracket inside a quoted string');
      tokens.push({ kind: 'word', text, start: i, end: end + 1, quoted: true });
      i = end + 1;
    } else if (isAtext(ch)) {
      const start = i;
      while (i < s.length && isAtext(s[i]!)) i++;
      tokens.push({ kind: 'word', text: s.slice(start, i), start, end: i, quoted: false });
    } else if (ch === '\\') {
      throw new Refusal('has a backslash (quoted-pair) outside a quoted string');
    } else if (ch === ')') {
      throw new Refusal('has an unbalanced comment');
    } else {
      tokens.push({ kind: 'special', text: ch, start: i, end: i + 1 });
      i++;
    }
  }
  return tokens;
}

/** Index just past the comment at `open`; only flat comments of plain text are accepted. */
function skipComment(s: string, open: number): number {
  for (let i = open + 1; i < s.length; i++) {
    const ch = s[i]!;
    if (ch === ')') return i + 1;
    if (ch === '(') throw new Refusal('has a nested comment');
    if (ch === '\r' || ch === '\n') throw new Refusal(FOLDED);
    if (ch === '\\' || ch === '"' || ch === '<' || ch === '>') {
      throw new Refusal('has a backslash, quote or angle bracket inside a comment');
    }
  }
  throw new Refusal('has an unbalanced comment');
}

function read(tokens: Token[], s: string): ParsedMailbox {
  if (tokens.length === 0) throw new Refusal('has no address');
  const specials = tokens.filter((t) => t.kind === 'special').map((t) => t.text);
  if (specials.includes(',')) {
    const names = listElements(tokens);
    throw new Refusal(names > 1 ? `names ${names} addresses` : 'has a stray comma');
  }
  if (specials.includes(':') || specials.includes(';')) throw new Refusal('is a group (name: addresses;), not one mailbox');
  if (specials.includes('[') || specials.includes(']')) throw new Refusal('has a domain literal or square brackets');
  const opens = specials.filter((c) => c === '<').length;
  const closes = specials.filter((c) => c === '>').length;
  if (opens > 1) throw new Refusal('names 2 addresses (an address followed by another)');
  if (opens !== closes) throw new Refusal('has an unbalanced angle bracket');
  const ats = specials.filter((c) => c === '@').length;
  if (ats === 0) throw new Refusal('has no address');
  if (ats > 1) throw new Refusal(opens ? 'names 2 addresses (an address followed by another)' : 'has more than one @');
  // left: control characters, which the header block refuses before this reader sees them
  const unexpected = specials.find((c) => !'<>@'.includes(c));
  if (unexpected) throw new Refusal(`has an unexpected character (U+${unexpected.charCodeAt(0).toString(16).padStart(4, '0')})`);

  const at = tokens.findIndex((t) => t.kind === 'special' && t.text === '@');
  const local = tokens[at - 1];
  const domain = tokens[at + 1];
  if (!local || local.kind !== 'word' || local.end !== tokens[at]!.start) throw new Refusal('has nothing before the @ of its address');
  if (!domain || domain.kind !== 'word' || domain.start !== tokens[at]!.end) throw new Refusal('has nothing after the @ of its address');
  if (local.quoted) throw new Refusal('has a quoted local part, which the relay does not accept');
  if (domain.quoted) throw new Refusal('has a quoted domain');
  if (!DOT_ATOM.test(local.text) || !DOT_ATOM.test(domain.text)) throw new Refusal('has an address with a misplaced dot');

  const address = { start: local.start, end: domain.end };
  if (opens === 1) {
    const open = tokens[at - 2];
    const close = tokens[at + 2];
    if (!open || open.text !== '<' || open.end !== local.start || !close || close.text !== '>' || close.start !== domain.end) {
      throw new Refusal('has something other than one address inside < >');
    }
    if (at + 3 < tokens.length) throw new Refusal('has text after the address in < >');
    // before "<": the display name, words only (the specials were ruled out above). An obs-phrase
    // may not start with "." (RFC 5322 §4.1); Python's policy.default also fails on a "." right
    // before "<" (`. <a@x>`, `a.<a@x>`: AttributeError, no From at all).
    const first = tokens[0]!;
    const last = tokens[at - 3];
    if (
      (at > 2 && first.kind === 'word' && !first.quoted && first.text.startsWith('.')) ||
      (last?.kind === 'word' && !last.quoted && last.end === open.start && last.text.endsWith('.'))
    ) {
      throw new Refusal("has a dot at the start of its display name or right before <, which Python's parser cannot read");
    }
  } else if (tokens.length !== 3) {
    throw new Refusal(at > 1 ? 'has words before an address that is not in < >' : 'has text after the address');
  }
  const unfold = (text: string) => text.replace(/\r\n/g, '');
  return { address: s.slice(address.start, address.end), shown: [unfold(s.slice(0, address.start)), unfold(s.slice(address.end))] };
}

/** How many non-empty elements a comma-separated list has. */
function listElements(tokens: Token[]): number {
  let elements = 0;
  let empty = true;
  for (const t of [...tokens, null]) {
    if (t && !(t.kind === 'special' && t.text === ',')) {
      empty = false;
      continue;
    }
    if (!empty) elements++;
    empty = true;
  }
  return elements;
}
