/**
 * Fuzzing the prepare stage (issue 5): fast-check builds random MIME trees (nesting, encodings,
 * random bytes, LF or CRLF) whose decoded leaves are known, and mutates them into malformed
 * input. Invariants: only MimeError is ever thrown, and only for a reason (never a wrapped
 * internal fault); the entity is 7-bit, CRLF-only, no line over 998; and the entity decodes,
 * with a small independent decoder (or mailparser on a subset), to the same leaves.
 */
import fc from 'fast-check';
import { simpleParser, type ParsedMail } from 'mailparser';
import { describe, expect, it } from 'vitest';
import { MimeError, prepareMessage, type PreparedMessage } from '../src/mime/prepare.js';
import { base64Size, encodeBase64, encodeQuotedPrintable, quotedPrintableBound } from '../src/mime/transfer-encoding.js';

type Eol = '\r\n' | '\n';
type Cte = '' | '7bit' | '8bit' | 'binary' | 'quoted-printable' | 'base64';

interface Leaf {
  kind: 'leaf';
  type: string;
  omitType: boolean;
  cte: Cte;
  content: Uint8Array;
  /** Width of encoded lines in the input: 60 and 76 are safe, 200 and 1200 force re-encoding. */
  width: number;
  /** QP: blanks after soft breaks (transport padding); base64: padding left off. */
  pad: boolean;
  filename: string | null;
}
interface Multi {
  kind: 'multi';
  subtype: string;
  quoteBoundary: boolean;
  upperParam: boolean;
  cte: Cte;
  preamble: string | null;
  epilogue: string | null;
  parts: Node[];
}
interface Message {
  kind: 'message';
  cte: Cte;
  subject: string;
  inner: Node;
}
type Node = Leaf | Multi | Message;

const b = (s: string): Buffer => Buffer.from(s, 'latin1');
const utf8 = (s: string): string => Buffer.from(s, 'utf8').toString('latin1');

// pieces that hit every rule: blanks at line ends, "From ", dots, dashes, bare CR/LF, NUL,
// 8bit, long runs, and QP-looking text
const PIECES = ['a', 'word', ' ', '\t', 'From ', '.', '..', '--', '=', '=3D', '\r\n', '\n', '\r', '\0', utf8('ä'), utf8('€'), '\xff', 'x'.repeat(90), 'y'.repeat(1100)];
const textish = fc.array(fc.constantFrom(...PIECES), { maxLength: 30 }).map((a) => b(a.join('')));
const content = fc.oneof(textish, fc.uint8Array({ maxLength: 400 }));

const leafArb: fc.Arbitrary<Leaf> = fc
  .record({
    type: fc.constantFrom('text/plain', 'text/html', 'application/octet-stream', 'image/png', 'application/json'),
    omitType: fc.boolean(),
    cte: fc.constantFrom<Cte>('', '7bit', '8bit', 'binary', 'quoted-printable', 'base64'),
    content,
    width: fc.constantFrom(76, 60, 200, 1200),
    pad: fc.boolean(),
    filename: fc.option(fc.constantFrom('a.bin', utf8('Grüße.txt'), 'r e.pdf'), { nil: null }),
  })
  // without Content-Type, mailparser guesses the type from a filename, while the written default
  // (RFC 2045 §5.2) says text/plain: keep filenames on typed parts only
  .map((l) => ({ kind: 'leaf' as const, ...l, omitType: l.omitType && l.type === 'text/plain' && !l.filename }));

const junk = fc.option(fc.array(fc.constantFrom('This is MIME.', '\r\n', '\n', ' ', utf8('ü'), 'From x', 'z'.repeat(80)), { maxLength: 5 }).map((a) => a.join('')), { nil: null });

const { node } = fc.letrec<{ node: Node; multi: Multi; message: Message }>((tie) => ({
  node: fc.oneof({ depthSize: 'small', withCrossShrink: true }, leafArb, tie('multi'), tie('message')),
  multi: fc.record({
    kind: fc.constant('multi' as const),
    subtype: fc.constantFrom('mixed', 'alternative', 'related'),
    quoteBoundary: fc.boolean(),
    upperParam: fc.boolean(),
    cte: fc.constantFrom<Cte>('', '', '', '7bit', '8bit', 'base64', 'quoted-printable'),
    preamble: junk,
    epilogue: junk,
    parts: fc.array(tie('node'), { minLength: 1, maxLength: 4 }),
  }),
  message: fc.record({
    kind: fc.constant('message' as const),
    cte: fc.constantFrom<Cte>('', '7bit', '8bit', 'base64'),
    subject: fc.constantFrom('inner', utf8('Grüße innen')),
    inner: tie('node'),
  }),
}));

let boundaryCounter = 0;

/** A naive but independent quoted-printable encoder: escapes all but letters and digits. */
function qp(data: Uint8Array, width: number, pad: boolean, eol: Eol): string {
  let line = '';
  const lines: string[] = [];
  for (const byte of data) {
    const ch = String.fromCharCode(byte);
    const enc = /[A-Za-z0-9]/.test(ch) ? ch : '=' + byte.toString(16).toUpperCase().padStart(2, '0');
    if (line.length + enc.length > width - 1) {
      lines.push(line + '=' + (pad ? ' \t' : ''));
      line = '';
    }
    line += enc;
  }
  lines.push(line);
  return lines.join(eol);
}

function b64(data: Uint8Array, width: number, eol: Eol): string {
  const s = Buffer.from(data).toString('base64');
  const out: string[] = [];
  for (let i = 0; i < s.length; i += width) out.push(s.slice(i, i + width));
  return out.join(eol);
}

function encodeBody(cte: Cte, data: Buffer, eol: Eol): Buffer {
  if (cte === 'base64') return b(b64(data, 76, eol));
  if (cte === 'quoted-printable') return b(qp(data, 76, false, eol));
  return data;
}

/** Raw leaf bytes never end in CR: "CR" + an LF delimiter would read as CRLF, which is ambiguous input. */
function rawLeaf(content: Uint8Array): Buffer {
  const data = Buffer.from(content);
  return data.length && data[data.length - 1] === 0x0d ? Buffer.concat([data, b('x')]) : data;
}

/** Serialises a node as header lines plus body. */
function serialize(n: Node, eol: Eol): { headers: string[]; body: Buffer } {
  if (n.kind === 'leaf') {
    const headers: string[] = [];
    if (!n.omitType) headers.push(`Content-Type: ${n.type}${n.type.startsWith('text/') ? '; charset=utf-8' : ''}`);
    if (n.filename) headers.push(`Content-Disposition: attachment; filename="${n.filename}"`);
    if (n.cte) headers.push(`Content-Transfer-Encoding: ${n.cte}`);
    let body: Buffer;
    // `pad` on base64 leaves the padding off, as some encoders do
    if (n.cte === 'base64') body = b(b64(n.content, n.width, eol).replace(n.pad ? /=+$/ : /$^/, ''));
    else if (n.cte === 'quoted-printable') body = b(qp(n.content, n.width, n.pad, eol));
    else body = rawLeaf(n.content);
    return { headers, body };
  }
  if (n.kind === 'message') {
    const inner = serialize(n.inner, eol);
    const text = Buffer.concat([b(['From: inner@example.com', `Subject: ${n.subject}`, 'MIME-Version: 1.0', ...inner.headers].join(eol) + eol + eol), inner.body]);
    const headers = ['Content-Type: message/rfc822'];
    if (n.cte) headers.push(`Content-Transfer-Encoding: ${n.cte}`);
    return { headers, body: encodeBody(n.cte, text, eol) };
  }
  // a quoted boundary may hold tspecials and spaces (RFC 2046 §5.1.1), an unquoted one only token chars
  const boundary = n.quoteBoundary ? `=_b${boundaryCounter++} Zq9` : `b${boundaryCounter++}_Zq9`;
  const param = (n.upperParam ? 'BOUNDARY' : 'boundary') + '=' + (n.quoteBoundary ? `"${boundary}"` : boundary);
  const headers = [`Content-Type: multipart/${n.subtype};${eol} ${n.upperParam ? 'X-Extra=1; ' : ''}${param}`];
  if (n.cte) headers.push(`Content-Transfer-Encoding: ${n.cte}`);
  const chunks: Buffer[] = [];
  if (n.preamble !== null) chunks.push(b(n.preamble + eol));
  for (const part of n.parts) {
    const s = serialize(part, eol);
    chunks.push(b(`--${boundary}${eol}`), b(s.headers.map((h) => h + eol).join('') + eol), s.body, b(eol));
  }
  chunks.push(b(`--${boundary}--`));
  if (n.epilogue !== null) chunks.push(b(eol + n.epilogue));
  return { headers, body: encodeBody(n.cte, Buffer.concat(chunks), eol) };
}

/** The decoded leaves the tree stands for, in document order. */
function leavesOf(n: Node, out: { text: boolean; data: Buffer }[] = []): { text: boolean; data: Buffer }[] {
  if (n.kind === 'leaf') {
    const raw = n.cte !== 'base64' && n.cte !== 'quoted-printable';
    const data = raw ? rawLeaf(n.content) : Buffer.from(n.content);
    out.push({ text: n.omitType || n.type.startsWith('text/'), data });
  } else if (n.kind === 'multi') {
    n.parts.forEach((p) => leavesOf(p, out));
  } else {
    leavesOf(n.inner, out);
  }
  return out;
}

function buildMessage(tree: Node, eol: Eol): Buffer {
  const s = serialize(tree, eol);
  const top = ['From: Sender <sender@example.com>', 'To: ' + utf8('ü@example.org'), 'Subject: fuzz', 'X-Folded: a,', '\tb', 'MIME-Version: 1.0', ...s.headers];
  return Buffer.concat([b(top.join(eol) + eol + eol), s.body]);
}

/** Independent decoder for the canonical output: CRLF lines, delimiters without padding. */
function decodeEntity(buf: Buffer, out: Buffer[]): void {
  const text = buf.toString('latin1');
  const split = text.startsWith('\r\n') ? 0 : text.indexOf('\r\n\r\n');
  const head = split === -1 ? text : text.slice(0, split);
  const body = split === -1 ? '' : text.slice(split + (split === 0 ? 2 : 4));
  const fields = new Map<string, string>();
  for (const f of head.replace(/\r\n(?=[ \t])/g, '').split('\r\n')) {
    const c = f.indexOf(':');
    if (c > 0 && !fields.has(f.slice(0, c).trim().toLowerCase())) fields.set(f.slice(0, c).trim().toLowerCase(), f.slice(c + 1).trim());
  }
  const ct = (fields.get('content-type') ?? 'text/plain').toLowerCase();
  const cte = (fields.get('content-transfer-encoding') ?? '').toLowerCase();
  if (ct.startsWith('multipart/')) {
    const m = /boundary=(?:"([^"]+)"|([^;\s]+))/i.exec(fields.get('content-type')!)!;
    const boundary = m[1] ?? m[2]!;
    const delim = '--' + boundary;
    const lines = body.split('\r\n');
    let current: string[] | null = null;
    for (const line of lines) {
      if (line === delim || line === delim + '--') {
        if (current) decodeEntity(b(current.join('\r\n')), out);
        if (line !== delim) break;
        current = [];
      } else if (current) {
        current.push(line);
      }
    }
    return;
  }
  if (ct.startsWith('message/rfc822')) return decodeEntity(b(body), out);
  if (cte === 'base64') out.push(Buffer.from(body, 'base64'));
  else if (cte === 'quoted-printable')
    out.push(b(body.replace(/=\r\n/g, '').replace(/=([0-9A-F]{2})/g, (_, h: string) => String.fromCharCode(parseInt(h, 16)))));
  else out.push(b(body));
}

const canonicalText = (x: Buffer): string => x.toString('latin1').replace(/\r?\n/g, '\r\n');

/**
 * `strictWidth`: every line longer than 78 must be one of the input's own lines (passed through),
 * never one we wrote. Mutated input can expose long header lines from decoded composites, so
 * there only the 998 limit applies.
 */
function assertSafe(r: PreparedMessage, input: Buffer, strictWidth = true): void {
  const e = r.entity.toBuffer();
  for (let i = 0; i < e.length; i++) {
    const c = e[i]!;
    if (c >= 0x80 || c === 0) throw new Error(`8bit or NUL byte at ${i}`);
    if (c === 0x0d && e[i + 1] !== 0x0a) throw new Error(`bare CR at ${i}`);
    if (c === 0x0a && e[i - 1] !== 0x0d) throw new Error(`bare LF at ${i}`);
  }
  const inputLines = new Set(input.toString('latin1').split(/\r?\n/));
  for (const line of e.toString('latin1').split('\r\n')) {
    if (line.length > 998) throw new Error('line over 998');
    if (strictWidth && line.length > 78 && !inputLines.has(line)) throw new Error(`re-encoded line over 78: ${line.slice(0, 40)}`);
  }
}

function prepareOrMimeError(raw: Buffer, hp: boolean): PreparedMessage | null {
  try {
    return prepareMessage(raw, { headerProtection: hp ? 'clear' : 'off' });
  } catch (err) {
    if (!(err instanceof MimeError)) throw err;
    // a MimeError with a cause is an internal fault in disguise
    if (err.cause !== undefined) throw err.cause;
    return null;
  }
}

/**
 * RFC 2045 §6.4 forbids base64/QP on multipart and message parts. We decode them; mailparser
 * shows such a part as nothing, so the two cannot be compared there.
 */
function hasEncodedComposite(n: Node): boolean {
  if (n.kind === 'leaf') return false;
  if (n.cte === 'base64' || n.cte === 'quoted-printable') return true;
  return n.kind === 'multi' ? n.parts.some(hasEncodedComposite) : hasEncodedComposite(n.inner);
}

/** Of the well-formed generated messages, at most this share may be refused (issue 15). */
const MAX_REFUSED = 0.05;

const stats = { cases: 0, mimeErrors: 0, leaves: 0, mutated: 0, mutatedErrors: 0, parsed: 0 };

describe('prepareMessage fuzz', () => {
  it('random MIME trees: only MimeError, 7-bit CRLF output, decoded leaves unchanged (20,000 cases)', () => {
    fc.assert(
      fc.property(node, fc.constantFrom<Eol>('\r\n', '\n'), fc.boolean(), (tree, eol, hp) => {
        const raw = buildMessage(tree, eol);
        const r = prepareOrMimeError(raw, hp);
        stats.cases++;
        if (!r) {
          stats.mimeErrors++;
          return;
        }
        assertSafe(r, raw);
        const decoded: Buffer[] = [];
        decodeEntity(r.entity.toBuffer(), decoded);
        const expected = leavesOf(tree);
        expect(decoded.length).toBe(expected.length);
        expected.forEach((leaf, k) => {
          stats.leaves++;
          if (leaf.text) expect(canonicalText(decoded[k]!)).toBe(canonicalText(leaf.data));
          else expect(decoded[k]!.equals(leaf.data)).toBe(true);
        });
      }),
      { numRuns: 20_000 },
    );
    // Generated trees are well-formed, so a MimeError is the exception, not the rule: a prepare
    // that refused everything would otherwise pass every invariant above.
    expect(stats.mimeErrors).toBeLessThanOrEqual(stats.cases * MAX_REFUSED);
  }, 120_000);

  it('mutated messages (bytes inserted, deleted, replaced): only MimeError, and any output is 7-bit CRLF (5,000 cases)', () => {
    const mutation = fc.record({ pos: fc.nat(), op: fc.constantFrom('insert', 'delete', 'replace'), byte: fc.constantFrom(0x0d, 0x0a, 0x00, 0x2d, 0x3d, 0x22, 0x3b, 0x20, 0xc3, 0xff, 0x3a, 0x2e) });
    fc.assert(
      fc.property(node, fc.constantFrom<Eol>('\r\n', '\n'), fc.array(mutation, { minLength: 1, maxLength: 8 }), fc.boolean(), (tree, eol, muts, hp) => {
        let raw = buildMessage(tree, eol);
        for (const m of muts) {
          const pos = raw.length ? m.pos % raw.length : 0;
          const at = Buffer.from([m.byte]);
          if (m.op === 'insert') raw = Buffer.concat([raw.subarray(0, pos), at, raw.subarray(pos)]);
          else if (m.op === 'delete') raw = Buffer.concat([raw.subarray(0, pos), raw.subarray(pos + 1)]);
          else raw = Buffer.concat([raw.subarray(0, pos), at, raw.subarray(pos + 1)]);
        }
        stats.mutated++;
        const r = prepareOrMimeError(raw, hp);
        if (!r) {
          stats.mutatedErrors++;
          return;
        }
        assertSafe(r, raw, false);
      }),
      { numRuns: 5_000 },
    );
  }, 120_000);

  it('random bytes of any shape: only MimeError (3,000 cases)', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 2000 }), (bytes) => {
        const raw = Buffer.from(bytes);
        const r = prepareOrMimeError(raw, false);
        if (r) assertSafe(r, raw);
      }),
      { numRuns: 3_000 },
    );
  });

  it('mailparser sees the same text, html and attachments before and after (1,000 cases)', async () => {
    const norm = (s: string | false | undefined) => (typeof s === 'string' ? s.replace(/\r\n/g, '\n') : undefined);
    const same = async (a: ParsedMail, z: ParsedMail): Promise<void> => {
      expect(norm(z.text)).toBe(norm(a.text));
      expect(norm(z.html)).toBe(norm(a.html));
      expect(z.attachments.length).toBe(a.attachments.length);
      for (const [k, att] of a.attachments.entries()) {
        const out = z.attachments[k]!;
        expect(out.contentType).toBe(att.contentType);
        expect(out.filename).toBe(att.filename);
        if (att.contentType === 'message/rfc822') await same(await simpleParser(att.content), await simpleParser(out.content));
        // text may have its line breaks made CRLF (RFC 2046 §4.1.1), every other byte stays
        else if (att.contentType.startsWith('text/')) expect(canonicalText(out.content)).toBe(canonicalText(att.content));
        else expect(lineBreakOnly(out.content).equals(lineBreakOnly(att.content))).toBe(true);
      }
    };
    let tried = 0;
    // mailparser reports an empty body that directly follows the blank line as the line break
    // itself ("\n" in, "\r\n" out), so a body that is only a line break counts as empty
    const lineBreakOnly = (x: Buffer): Buffer => (x.toString('latin1') === '\n' || x.toString('latin1') === '\r\n' ? Buffer.alloc(0) : x);
    await fc.assert(
      fc.asyncProperty(node.filter((t) => !hasEncodedComposite(t)), fc.constantFrom<Eol>('\r\n', '\n'), async (tree, eol) => {
        const raw = buildMessage(tree, eol);
        tried++;
        const r = prepareOrMimeError(raw, false);
        if (!r) return;
        stats.parsed++;
        const out = Buffer.concat([r.outerHeaders, b('MIME-Version: 1.0\r\n'), r.entity.toBuffer()]);
        await same(await simpleParser(raw), await simpleParser(out));
      }),
      { numRuns: 1_000 },
    );
    console.log('prepare fuzz stats', stats);
    expect(tried - stats.parsed).toBeLessThanOrEqual(tried * MAX_REFUSED);
  }, 120_000);
});

describe('encoders write at most what prepare sized them for', () => {
  // Bytes that decide quoted-printable's width: line breaks, blanks, dots, dashes, "From ", "=", 8-bit.
  const tricky = fc.array(fc.constantFrom(0x0a, 0x0d, 0x20, 0x09, 0x2e, 0x2d, 0x46, 0x72, 0x6f, 0x6d, 0x3d, 0x00, 0xc3, 0xbc, 0x41), { maxLength: 400 });
  const bytes = fc.oneof(fc.uint8Array({ maxLength: 400 }), tricky.map((a) => Uint8Array.from(a)));

  it('quoted-printable stays within quotedPrintableBound, and near it; base64 is exactly base64Size (5,000 cases)', () => {
    fc.assert(
      fc.property(bytes, fc.integer({ min: 0, max: 200 }), (content, repeat) => {
        // a long run of one line makes soft breaks, which the bound prices separately
        const src = Buffer.concat([Buffer.from(content), Buffer.alloc(repeat, 0x41), Buffer.from(content)]);
        const qp = encodeQuotedPrintable(src).length;
        const bound = quotedPrintableBound(src);
        expect(qp).toBeLessThanOrEqual(bound);
        expect(bound).toBeLessThanOrEqual(Math.ceil(qp * 1.08) + 8);
        expect(encodeBase64(src).length).toBe(base64Size(src.length));
      }),
      { numRuns: 5_000 },
    );
  });
});
