/**
 * The header admission (src/admit/), unit by unit: the canonical header block, the strict mailbox
 * reader, the check of what a client shows beside the address, and the stage that joins them.
 * Every case of issue 10's "What was seen" list is here; test/admit-header-smtp.test.ts replays
 * the attacks through a real relay, and test/header-disagreement.test.ts generates thousands more.
 */
import { describe, expect, it } from 'vitest';
import { NO_ENVELOPE_SENDERS, parseEnvelopeSenders } from '../src/admit/envelope-senders.js';
import { admitHeader, type HeaderPolicy } from '../src/admit/header.js';
import { admitEnvelopeSender } from '../src/admit/sender.js';
import { canonicalHeader, excerpt } from '../src/admit/header-block.js';
import { parseMailbox } from '../src/admit/mailbox-syntax.js';
import { shownTextProblem } from '../src/admit/shown-addresses.js';
import type { Mailbox } from '../src/mime/mailbox.js';
import { RelayError, type SmtpReply } from '../src/replies.js';

const N = 'notify@example.com' as Mailbox;
const EVIL = 'evil@example.com';
const policy: HeaderPolicy = { covered: [N, 'billing@example.com' as Mailbox], smtputf8: false };

const bin = (s: string) => Buffer.from(s, 'latin1');
const u8 = (s: string) => Buffer.from(s, 'utf8');

/** The reply a refusal carries, or undefined when admitted. */
function refusal(run: () => unknown): SmtpReply | undefined {
  try {
    run();
    return undefined;
  } catch (e) {
    if (e instanceof RelayError) return e.reply;
    throw e;
  }
}
const admit = (raw: Buffer, p: Partial<HeaderPolicy> = {}) => admitHeader(raw, { ...policy, ...p });
const refusedWith = (raw: Buffer, p: Partial<HeaderPolicy> = {}) => refusal(() => admit(raw, p));
const canonical = (raw: Buffer, smtputf8 = false) => canonicalHeader(raw, { smtputf8 });

describe('the canonical header block (554 5.6.0 naming the line, or canonical bytes)', () => {
  it.each<[string, string, number, string, RegExp]>([
    ['a bare CR inside a field (it becomes a second From at the next hop)', `From: ${N}\r\nX-A: a\rFrom: ${EVIL}\r\n\r\nhi\r\n`, 2, `X-A: a\\rFrom: ${EVIL}`, /contains a bare CR, which the next hop turns into a line break/],
    ['a bare CR that injects an outer Content-Type', `From: ${N}\r\nX-A: a\rContent-Type: multipart/mixed; boundary=x\r\n\r\nhi\r\n`, 2, 'X-A: a\\rContent-Type: multipart/mixed; boundary=x', /bare CR/],
    ['CR CR LF, which ends the header early at the next hop', `From: ${N}\r\nX-A: a\r\r\nContent-Type: text/html\r\n\r\nhi\r\n`, 2, 'X-A: a\\r', /bare CR/],
    ['a bare CR at the very end of the input', `From: ${N}\r\nSubject: s\r`, 2, 'Subject: s\\r', /bare CR/],
    ['a NUL in a value', `From: ${N}\r\nSubject: a\0b\r\n\r\nhi\r\n`, 2, 'Subject: a\\x00b', /contains a NUL byte/],
    ['a NUL in a field name', `From: ${N}\r\nX\0A: b\r\n\r\nhi\r\n`, 2, 'X\\x00A: b', /contains a NUL byte/],
    ['a form feed', `From: ${N}\r\nSubject: a\x0cb\r\n\r\n`, 2, 'Subject: a\\x0cb', /control character 0x0c/],
    ['DEL', `Subject: a\x7fb\r\nFrom: ${N}\r\n\r\n`, 1, 'Subject: a\\x7fb', /control character 0x7f/],
    ['a line without a colon', `From: ${N}\r\nnot a field\r\nX-A: b\r\n\r\n`, 2, 'not a field', /has no colon/],
    ['a continuation line first in the block', ` X-A: b\r\nFrom: ${N}\r\n\r\n`, 1, ' X-A: b', /no header field before it to continue/],
    ['a line of whitespace only', `From: ${N}\r\n \t \r\nX-A: b\r\n\r\n`, 2, ' \\x09 ', /only whitespace/],
    ['whitespace before the colon (obs-optional)', `From : ${EVIL}\r\nX: y\r\n\r\n`, 1, `From : ${EVIL}`, /whitespace before the colon/],
    ['a tab before the colon', `From\t: ${N}\r\n\r\n`, 1, `From\\x09: ${N}`, /whitespace before the colon/],
    ['an empty field name', `From: ${N}\r\n: x\r\n\r\n`, 2, ': x', /empty field name/],
    ['an 8-bit byte in a field name', `From: ${N}\r\nX-\xe4: x\r\n\r\n`, 2, 'X-\\xe4: x', /not allowed in a field name/],
    ['an mbox "From " line', `From ${EVIL} Mon Mar  2 10:00:00 2026\r\nFrom: ${N}\r\n\r\n`, 1, `From ${EVIL} Mon Mar  2 10:00:00 2026`, /mbox "From " separator/],
    ['a second Content-Type', `From: ${N}\r\nContent-Type: text/plain\r\nX: y\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n`, 4, 'Content-Type: multipart/mixed; boundary=b', /repeats a field that may appear only once/],
    ['a second MIME-Version', `MIME-Version: 1.0\r\nFrom: ${N}\r\nMime-Version: 1.0\r\n\r\n`, 3, 'Mime-Version: 1.0', /repeats a field/],
    ['a second Content-Transfer-Encoding', `From: ${N}\r\nContent-Transfer-Encoding: 7bit\r\nContent-Transfer-Encoding: base64\r\n\r\n`, 3, 'Content-Transfer-Encoding: base64', /repeats a field/],
    ['a line over 998 octets with no whitespace', `From: ${N}\r\nX-Long: ${'a'.repeat(2000)}\r\n\r\n`, 2, `X-Long: ${'a'.repeat(52)}...`, /longer than 998 octets and has no whitespace/],
    ['8-bit bytes in From without SMTPUTF8', `From: J\xc3\xb6rg <${N}>\r\n\r\n`, 1, `From: J\\xc3\\xb6rg <${N}>`, /did not use SMTPUTF8/],
    ['8-bit bytes that are not UTF-8 in Subject, without SMTPUTF8', `From: ${N}\r\nSubject: caf\xe9\r\n\r\n`, 2, 'Subject: caf\\xe9', /did not use SMTPUTF8/],
  ])('refuses %s', (_name, raw, line, shown, problem) => {
    const reply = refusedWith(bin(raw));
    expect(reply).toMatchObject({ code: 554, status: '5.6.0', outcome: 'sign_error' });
    expect(reply!.text).toContain(`Header line ${line} ("${shown}") `);
    expect(reply!.text).toMatch(problem);
    expect(reply!.text).toMatch(/correct the message header \(RFC 5322\) and send it again$/);
    expect(/^[\x20-\x7e]*$/.test(reply!.text), 'reply text is printable ASCII').toBe(true);
  });

  it('refuses a header block past the size limit, to the byte', () => {
    const raw = bin(`From: ${N}\r\nSubject: x\r\n\r\nbody`);
    const size = raw.indexOf('\r\n\r\n') + 4; // the header block with its blank line
    expect(canonicalHeader(raw, { smtputf8: false, maxBytes: size }).message).toBe(raw);
    expect(refusal(() => canonicalHeader(raw, { smtputf8: false, maxBytes: size - 1 }))?.text).toMatch(/^Header line 3 \(""\) goes past the 39-byte limit/);
  });

  it('refuses the bytes around the edges of the allowed ranges, and keeps a tab', () => {
    expect(refusedWith(bin(`From: ${N}\r\nSubject: a\x1fb\r\n\r\n`))?.text).toMatch(/control character 0x1f/);
    expect(refusedWith(bin(`From: ${N}\r\nSubject: a\x80b\r\n\r\n`))?.text).toMatch(/^Header line 2 \("Subject: a\\x80b"\) has 8-bit bytes, but the client did not use SMTPUTF8/);
    const tab = bin(`From: ${N}\r\nSubject: a\tb ~\r\n\r\n`);
    expect(admit(tab).message).toBe(tab);
  });

  it('refuses a header block past the size limit, naming the line where it went over', () => {
    const raw = bin(`From: ${N}\r\n` + 'X-Pad: 0123456789\r\n'.repeat(20) + '\r\nbody');
    expect(refusal(() => canonicalHeader(raw, { smtputf8: false, maxBytes: 200 }))?.text).toMatch(/^Header line 11 \("X-Pad: 0123456789"\) goes past the 200-byte limit/);
    expect(canonicalHeader(raw, { smtputf8: false, maxBytes: 1000 }).fields).toHaveLength(21);
  });

  it('keeps the received buffer itself when the header is canonical already (no copy)', () => {
    const raw = bin(`From: ${N}\r\nSubject: x\r\n folded\r\n\r\nbody\r\n`);
    const c = canonical(raw);
    expect(c.message).toBe(raw);
    expect(c.fields.map((f) => [f.name, f.line, f.lines.map(String)])).toEqual([
      ['from', 1, [`From: ${N}`]],
      ['subject', 2, ['Subject: x', ' folded']],
    ]);
  });

  it('writes LF line ends as CRLF in the header and leaves the body as received', () => {
    const raw = bin(`From: ${N}\nSubject: unix\n\nline\nline\n`);
    expect(canonical(raw).message.toString('latin1')).toBe(`From: ${N}\r\nSubject: unix\r\n\r\nline\nline\n`);
  });

  it('reads CRLF then LF as the end of the header, and a message that is only a header gets its blank line', () => {
    expect(canonical(bin(`From: ${N}\r\n\nbody`)).message.toString('latin1')).toBe(`From: ${N}\r\n\r\nbody`);
    expect(canonical(bin(`From: ${N}\r\nSubject: s`)).message.toString('latin1')).toBe(`From: ${N}\r\nSubject: s\r\n\r\n`);
    expect(canonical(bin('')).message.toString('latin1')).toBe('\r\n');
  });

  it('folds a 200 KB line at whitespace into lines of at most 998 octets, unfolding to the same value', () => {
    const value = 'word '.repeat(40_000).trim();
    const c = canonical(bin(`From: ${N}\r\nX-Long: ${value}\r\n\r\nbody\r\n`));
    const lines = c.message.toString('latin1').split('\r\n\r\n')[0]!.split('\r\n');
    expect(lines.length).toBeGreaterThan(200);
    expect(Math.max(...lines.map((l) => l.length))).toBeLessThanOrEqual(998);
    expect(lines.slice(1).join('').replace(/^X-Long: /, '')).toBe(value);
    // no fold leaves a line of whitespace only (some MTAs end the header there)
    expect(lines.every((l) => /\S/.test(l))).toBe(true);
    expect(c.message.toString('latin1').endsWith('\r\n\r\nbody\r\n')).toBe(true);
  });

  it('does not fold where only whitespace would follow', () => {
    const raw = bin(`From: ${N}\r\nX-T: ${'a'.repeat(990)}${' '.repeat(100)}\r\n\r\n`);
    expect(refusedWith(raw)?.text).toMatch(/^Header line 2 .* longer than 998 octets/);
  });


  describe('8-bit bytes', () => {
    it('without SMTPUTF8: UTF-8 in an unstructured field becomes an RFC 2047 encoded-word', () => {
      const c = canonical(u8(`From: ${N}\r\nSubject: Grüße\r\n\r\nbody\r\n`));
      expect(c.message.toString('latin1')).toBe(`From: ${N}\r\nSubject: =?utf-8?B?R3LDvMOfZQ==?=\r\n\r\nbody\r\n`);
    });

    it('without SMTPUTF8: a UTF-8 Content-Type parameter becomes RFC 2231', () => {
      const c = canonical(u8(`From: ${N}\r\nContent-Type: text/plain; name="Grüße.txt"\r\n\r\n`));
      expect(c.message.toString('latin1')).toContain(`Content-Type: text/plain;\r\n name*=utf-8''Gr%C3%BC%C3%9Fe.txt\r\n`);
    });

    it('without SMTPUTF8: a UTF-8 address field is refused', () => {
      expect(refusedWith(u8(`From: ${N}\r\nTo: Jörg <jörg@example.org>\r\n\r\n`))?.text).toMatch(/^Header line 2 \("To: J\\xc3\\xb6rg .*did not use SMTPUTF8/);
    });

    it('with SMTPUTF8: UTF-8 stays as it is (RFC 6532)', () => {
      const raw = u8(`From: Jörg <${N}>\r\nTo: Jörg <jörg@bücher.example>\r\nSubject: Grüße\r\n\r\nbody\r\n`);
      const admitted = admit(raw, { smtputf8: true });
      expect(admitted.message).toBe(raw);
      expect(admitted.from).toBe(N);
    });

    it('with SMTPUTF8: bytes that are not UTF-8, C1 controls and line separators are refused', () => {
      expect(refusedWith(bin(`From: ${N}\r\nSubject: caf\xe9\r\n\r\n`), { smtputf8: true })?.text).toMatch(/^Header line 2 .*not UTF-8 \(RFC 6532/);
      expect(refusedWith(u8(`From: ${N}\r\nSubject: a\u0085b\r\n\r\n`), { smtputf8: true })?.text).toMatch(/^Header line 2 .*C1 control or Unicode line separator/);
      expect(refusedWith(u8(`From: ${N}\r\nX-A: a\u2028From: ${EVIL}\r\n\r\n`), { smtputf8: true })?.text).toMatch(/^Header line 2 .*line separator/);
      expect(refusedWith(u8(`From: ${N}\r\nX-A: a\u2029b\r\n\r\n`), { smtputf8: true })?.text).toMatch(/line separator/);
    });

    it('8-bit bytes only on a continuation line are checked like those on the first line', () => {
      const folded = bin(`From: ${N}\r\nSubject: a\r\n caf\xe9\r\n\r\n`);
      expect(refusedWith(folded, { smtputf8: true })?.text).toMatch(/^Header line 2 .*not UTF-8 \(RFC 6532/);
      expect(refusedWith(folded)?.text).toMatch(/^Header line 2 .*did not use SMTPUTF8/);
    });
  });

  it('makes the excerpt printable and short', () => {
    expect(excerpt(bin('a"b\\c\r\0\xff'))).toBe('a\\"b\\\\c\\r\\x00\\xff');
    expect(excerpt(bin('x'.repeat(100)))).toBe('x'.repeat(60) + '...');
    expect(excerpt(bin('x'.repeat(60)))).toBe('x'.repeat(60));
  });
});

describe('the strict mailbox reader', () => {
  it.each<[string, string, string[]]>([
    [N, N, ['', '']],
    [` ${N} `, N, [' ', ' ']],
    [`<${N}>`, N, ['<', '>']],
    [`Notify <${N}>`, N, ['Notify <', '>']],
    [`Notify<${N}>`, N, ['Notify<', '>']],
    [`"Smith, John" <${N}>`, N, ['"Smith, John" <', '>']],
    [`John Q. Public <${N}>`, N, ['John Q. Public <', '>']],
    [`"x" . <${N}>`, N, ['"x" . <', '>']],
    [`John Q. <${N}>`, N, ['John Q. <', '>']],
    [`"Q."<${N}>`, N, ['"Q."<', '>']],
    [`${N} (Notifications)`, N, ['', ' (Notifications)']],
    [`(Notify) <${N}> (automated)`, N, ['(Notify) <', '> (automated)']],
    [`=?utf-8?Q?J=C3=BCrgen?= <${N}>`, N, ['=?utf-8?Q?J=C3=BCrgen?= <', '>']],
    ['Jörg <a.b+c@sub.example.com>', 'a.b+c@sub.example.com', ['Jörg <', '>']],
    ['x@localhost', 'x@localhost', ['', '']],
    // a fold between words is whitespace; the shown text comes unfolded
    [`=?utf-8?B?QmVu?=\r\n  <${N}>\r\n (automated)`, N, ['=?utf-8?B?QmVu?=  <', '> (automated)']],
    [`\r\n ${N}`, N, [' ', '']],
  ])('reads %j as %s', (value, address, shown) => {
    expect(parseMailbox(value)).toEqual({ ok: true, mailbox: { address, shown } });
  });

  it.each<[string, string]>([
    ['', 'has no address'],
    ['  (just a comment) ', 'has no address'],
    ['Notify', 'has no address'],
    ['<>', 'has no address'],
    [`${N}, ${EVIL}`, 'names 2 addresses'],
    [`a@x.example, Name <b@y.example>, c@z.example`, 'names 3 addresses'],
    [`${N},`, 'has a stray comma'],
    [`${EVIL} <${N}>`, 'names 2 addresses (an address followed by another)'],
    [`<${EVIL}> <${N}>`, 'names 2 addresses (an address followed by another)'],
    [`Evil <${EVIL}> ${N}`, 'names 2 addresses (an address followed by another)'],
    [`${N} ${EVIL}`, 'has more than one @'],
    ['a@b@c', 'has more than one @'],
    [`group: ${N};`, 'is a group (name: addresses;), not one mailbox'],
    ['undisclosed-recipients:;', 'is a group (name: addresses;), not one mailbox'],
    [`"unbalanced <${N}>`, 'has an unbalanced quote'],
    [`${N} (unbalanced`, 'has an unbalanced comment'],
    [`Notify) <${N}>`, 'has an unbalanced comment'],
    [`Notify <${N}`, 'has an unbalanced angle bracket'],
    [`Notify ${N}>`, 'has an unbalanced angle bracket'],
    [`"a\\" <${EVIL}>" <${N}>`, 'has a backslash or an angle bracket inside a quoted string'],
    [`"<${EVIL}>" <${N}>`, 'has a backslash or an angle bracket inside a quoted string'],
    [`a\\@b <${N}>`, 'has a backslash (quoted-pair) outside a quoted string'],
    [`${N} (a (nested) comment)`, 'has a nested comment'],
    [`${N} (say "hi")`, 'has a backslash, quote or angle bracket inside a comment'],
    [`${N} (<${EVIL}>)`, 'has a backslash, quote or angle bracket inside a comment'],
    [`${N} (a\\) b)`, 'has a backslash, quote or angle bracket inside a comment'],
    ['x@[127.0.0.1]', 'has a domain literal or square brackets'],
    [`"notify"@example.com`, 'has a quoted local part, which the relay does not accept'],
    ['notify@"example.com"', 'has a quoted domain'],
    ['@example.com', 'has nothing before the @ of its address'],
    ['notify @example.com', 'has nothing before the @ of its address'],
    ['<@example.com>', 'has nothing before the @ of its address'],
    ['notify@', 'has nothing after the @ of its address'],
    ['notify@ example.com', 'has nothing after the @ of its address'],
    ['<notify@>', 'has nothing after the @ of its address'],
    ['notify.@example.com', 'has an address with a misplaced dot'],
    ['.notify@example.com', 'has an address with a misplaced dot'],
    ['notify@example..com', 'has an address with a misplaced dot'],
    [`< ${N}>`, 'has something other than one address inside < >'],
    [`<${N} >`, 'has something other than one address inside < >'],
    [`<x ${N}>`, 'has something other than one address inside < >'],
    // the word right before the address is not "<", though it touches it, and "<" comes after "> "
    [`"x"${N}> <`, 'has something other than one address inside < >'],
    [`<${N}> trailing`, 'has text after the address in < >'],
    [`${N} trailing`, 'has text after the address'],
    [`Notify ${N}`, 'has words before an address that is not in < >'],
    [`"Notify" ${N}`, 'has words before an address that is not in < >'],
    [`${N} "e"`, 'has text after the address'],
    ['a\x01b@example.com', 'has an unexpected character (U+0001)'],
    [`. <${N}>`, "has a dot at the start of its display name or right before <, which Python's parser cannot read"],
    [`(c) .a b <${N}>`, "has a dot at the start of its display name or right before <, which Python's parser cannot read"],
    [`Notify .<${N}>`, "has a dot at the start of its display name or right before <, which Python's parser cannot read"],
    [`John Q.<${N}>`, "has a dot at the start of its display name or right before <, which Python's parser cannot read"],
    // Python's getaddresses does not unfold: it reads the first as the address "Notify"
    [`"Notify\r\n Team" <${N}>`, "has a quoted string or comment folded over two lines, which Python's getaddresses misreads; keep it on one line"],
    [`${N} (auto\r\n mated)`, "has a quoted string or comment folded over two lines, which Python's getaddresses misreads; keep it on one line"],
  ])('refuses %j: %s', (value, problem) => {
    expect(parseMailbox(value)).toEqual({ ok: false, problem });
  });
});

describe('what a client shows beside the address', () => {
  it.each<[string, string]>([
    ['plain name', 'Notify <'],
    ['the signed mailbox itself, any case', `"NOTIFY@example.com" <`],
    ['the signed mailbox in a comment', ` (${N})`],
    ['the signed mailbox as an encoded-word', '=?utf-8?Q?notify=40example.com?= <'],
    ['UTF-8, latin1, latin2, windows-1252 and koi8-r names', '=?utf-8?Q?J=C3=BCrgen?= =?iso-8859-1?Q?J=FCrgen?= =?iso-8859-2?Q?Pawe=B3?= =?windows-1252?Q?Caf=E9?= =?koi8-r?B?6dfBzg==?= <'],
    ['an RFC 2231 language suffix', '=?utf-8*de?Q?J=C3=BCrgen?= <'],
    ['a Q encoded-word whose underscore is a space after the mailbox', '=?utf-8?Q?notify=40example.com_desk?= <'],
    ['a word between encoded-words, kept apart from them', '=?utf-8?Q?Support?= at =?utf-8?Q?=40?= desk <'],
    ['a lone @', 'Support @ Example <'],
    ['no text at all', ''],
  ])('accepts %s', (_name, text) => {
    expect(shownTextProblem([text, '>'], N)).toBeUndefined();
  });

  it.each<[string, string, RegExp]>([
    ['an address in the display name', `${EVIL} <`, /^shows the address evil@example\.com in its display name or a comment, not only <notify@example\.com>$/],
    ['an address in a quoted string', `"security@bank.example" <`, /shows the address security@bank\.example/],
    ['an address in a comment', ` (${EVIL})`, /shows the address evil@example\.com/],
    ['the mailbox with more after it', `"${N}.evil.example" <`, /shows the address notify@example\.com\.evil\.example/],
    ['a Q encoded-word', '=?utf-8?Q?evil=40example.com?= <', /shows the address evil@example\.com/],
    ['a B encoded-word', `=?UTF-8?B?${Buffer.from(EVIL).toString('base64')}?= <`, /shows the address evil@example\.com/],
    ['a latin1 encoded-word', '=?ISO-8859-1?Q?evil=40example.com?= <', /shows the address evil@example\.com/],
    ['a windows-1252 encoded-word', `=?windows-1252?B?${Buffer.from(EVIL).toString('base64')}?= <`, /shows the address evil@example\.com/],
    ['two encoded-words joined (RFC 2047 §6.2)', '=?utf-8?Q?evil?= =?utf-8?Q?=40example.com?= <', /shows the address evil@example\.com/],
    ['an encoded-word run into a quoted string', `=?koi8-r?B?6dfBzg==?="${N}" <`, /^shows the address \S+notify@example\.com in/],
    ['a fullwidth commercial at (NFKC)', 'evil\uff20example.com <', /shows the address evil\\uff20example\.com|shows the address evil@example\.com/],
    ['an encoded fullwidth commercial at', '=?utf-8?Q?evil=EF=BC=A0example.com?= <', /shows the address/],
    ['a small commercial at', 'evil\ufe6bexample.com <', /shows the address/],
    ['the mailbox, an invisible U+FEFF, more domain', `"${N}\ufeff.evil.example" <`, /^shows the address notify@example\.com\\ufeff\.evil\.example in/],
    ['the same, encoded', '=?utf-8?Q?notify=40example.com=EF=BB=BF.evil.example?= <', /^shows the address notify@example\.com\\ufeff\.evil\.example in/],
    ['a zero-width space', '=?utf-8?Q?notify=40example.com=E2=80=8B.evil.example?= <', /^shows the address notify@example\.com\\u200b\.evil\.example in/],
    ['a no-break space', `"${N}\u00a0.evil.example" <`, /^shows the address notify@example\.com\\u00a0\.evil\.example in/],
    ['an encoded-word with a space inside (mailparser decodes it)', `=?utf-8?b?ZXZp bEBleGFtcGxlLmNvbQ==?= <`, /^has a malformed encoded-word \(=\?utf-8\?b\?ZXZp bEBleGFtcGxlLmNvbQ==\?= <\)$/],
    ['an unterminated encoded-word', '=?utf-8?Q?evil=40example.com <', /has a malformed encoded-word/],
    ['bad base64', '=?utf-8?B?ZXZpbE*=?= <', /has a malformed encoded-word \(=\?utf-8\?B\?ZXZpbE\*=\?=\)/],
    ['base64 of impossible length', '=?utf-8?B?ZXZpb?= <', /has a malformed encoded-word/],
    ['a bad Q escape', '=?utf-8?Q?evil=4?= <', /has a malformed encoded-word/],
    ['EBCDIC, where @ is 0x7C', '=?cp500?Q?=85=A5=89=93=7C=A7?= <', /^has an encoded-word in cp500 that the relay cannot decode reliably \(use UTF-8\)$/],
    ['UTF-7', '=?utf-7?Q?evil+AEA-example.com?= <', /encoded-word in utf-7 that the relay cannot decode/],
    ['UTF-16', '=?utf-16?B?//5lAHYAaQBsAEAAeAA=?= <', /encoded-word in utf-16/],
    ['invalid UTF-8', '=?utf-8?Q?=C3?= <', /encoded-word in utf-8 that the relay cannot decode/],
    ['8-bit in us-ascii', '=?us-ascii?Q?=E9?= <', /encoded-word in us-ascii/],
    ['8-bit among ASCII in us-ascii', '=?us-ascii?Q?caf=E9?= <', /encoded-word in us-ascii/],
    ['the first 8-bit byte in us-ascii', '=?us-ascii?Q?=80?= <', /encoded-word in us-ascii/],
    ['a malformed encoded-word after a long display name (the reply quotes from the word on)', 'A display name long enough to push the word out =?utf-8?b?ZXZp bEB4?= <', /^has a malformed encoded-word \(=\?utf-8\?b\?ZXZp bEB4\?= <\)$/],
    ['an address longer than a reply should quote', `"${'a'.repeat(100)}@example.com" <`, /^shows the address a{80} in its display name/],
    ['a NUL that a client may drop', `=?utf-8?Q?${N.replace('@', '=40')}=00.evil.example?= <`, /^has a display name or comment that decodes to a control character$/],
    ['a decoded line break', '=?utf-8?Q?a=0Ab?= <', /control character/],
    ['a decoded C1 control', '=?iso-8859-1?Q?a=85b?= <', /control character/],
  ])('refuses %s', (_name, text, problem) => {
    expect(shownTextProblem([text, '>'], N)).toMatch(problem);
  });

  it('decodes every charset it names, and only those', () => {
    const charsets = [
      'us-ascii', 'utf-8', 'iso-8859-1', ...[2, 3, 4, 5, 6, 7, 8, 10, 13, 14, 15].map((n) => `iso-8859-${n}`),
      ...[0, 1, 2, 3, 4, 5, 6, 7, 8].map((n) => `windows-125${n}`), 'koi8-r', 'koi8-u',
    ];
    for (const cs of charsets) {
      expect(shownTextProblem([`=?${cs}?Q?evil=40example.com?= <`], N), cs).toMatch(/shows the address evil@example\.com/);
      expect(shownTextProblem([`=?${cs}?Q?Name?= <`], N), cs).toBeUndefined();
    }
    for (const cs of ['iso8859-15', 'x-latin1', 'latin1x', 'iso-8859-9', 'iso-8859-11', 'iso-8859-16', 'windows-1259', 'koi8', 'shift_jis', 'gb2312', 'big5', 'utf-16le', 'utf-32']) {
      expect(shownTextProblem([`=?${cs}?Q?Name?= <`], N), cs).toMatch(/that the relay cannot decode reliably/);
    }
  });

  it('reads adjacent encoded-words both joined and with their space, as parsers differ', () => {
    // Python's policy.default keeps the space: "notify@exa mple.com"
    expect(shownTextProblem(['=?utf-8?Q?notify=40exa?= =?utf-8?Q?mple.com?= <'], N)).toMatch(/shows the address notify@exa in/);
    // and joined, they may form another address
    expect(shownTextProblem(['=?utf-8?Q?evil?=  =?utf-8?Q?=40example.com?= <'], N)).toMatch(/shows the address evil@example\.com in/);
    // a word between them is not joined
    expect(shownTextProblem(['=?utf-8?Q?notify?= x =?utf-8?Q?=40example.com?= <'], N)).toMatch(/shows the address @example\.com in/);
  });

  it('reads charset names case-insensitively and knows the common aliases', () => {
    for (const cs of ['UTF-8', 'utf8', 'Latin1', 'latin-1', 'iso8859-1', 'ascii', 'US-ASCII', 'ISO-8859-15', 'Windows-1250']) {
      expect(shownTextProblem([`=?${cs}?Q?evil=40example.com?= <`], N), cs).toMatch(/shows the address evil@example\.com/);
      expect(shownTextProblem([`=?${cs}?Q?Name?= <`], N), cs).toBeUndefined();
    }
  });

  it('checks the text after the address too', () => {
    expect(shownTextProblem(['Notify <', `> (${EVIL})`], N)).toMatch(/evil@example\.com/);
  });
});

describe('one unambiguous sender (550 5.7.1)', () => {
  const msg = (header: string) => bin(`${header}\r\nTo: a@example.org\r\nSubject: s\r\n\r\nbody\r\n`);

  it('admits a covered From and returns its mailbox, lower-cased', () => {
    expect(admit(msg(`From: Notify <Notify@Example.COM>`)).from).toBe(N);
    expect(admit(msg(`From: billing@example.com`)).from).toBe('billing@example.com');
  });

  it.each<[string, string, RegExp]>([
    ['no From', 'Subject: none', /^From header is missing; it must be exactly one mailbox covered by a loaded certificate$/],
    ['two From fields', `From: ${N}\r\nFrom: ${N}`, /^From header appears 2 times;/],
    ['two mailboxes', `From: ${N}, billing@example.com`, /^From header names 2 addresses;/],
    ['an address followed by another (Python reads one, getaddresses the other)', `From: ${EVIL} <${N}>`, /^From header names 2 addresses \(an address followed by another\);/],
    ['<a> <b>', `From: <${EVIL}> <${N}>`, /^From header names 2 addresses \(an address followed by another\);/],
    ['a group', `From: Team: ${N};`, /^From header is a group/],
    ['a From that is not covered', `From: ${EVIL}`, /^From <evil@example\.com> is not a mailbox this relay signs for; it signs for: notify@example\.com, billing@example\.com$/],
    ['a display name that is another address', `From: "security@bank.example" <${N}>`, /^From header shows the address security@bank\.example in its display name or a comment, not only <notify@example\.com>; mail clients show that text next to the signature, so the relay will not sign it\. Leave other addresses out of the display name and comments$/],
    ['a comment with another address', `From: ${N} (${EVIL})`, /^From header shows the address evil@example\.com/],
    ['an encoded-word display name that decodes to another address', `From: =?utf-8?B?${Buffer.from('security@bank.example').toString('base64')}?= <${N}>`, /^From header shows the address security@bank\.example/],
    ['a Sender naming another address', `From: ${N}\r\nSender: ${EVIL}`, /^Sender <evil@example\.com> is not a mailbox this relay signs for/],
    ['a Resent-From naming another address', `From: ${N}\r\nResent-From: ${EVIL}`, /^Resent-From <evil@example\.com> is not a mailbox/],
    ['a Resent-Sender naming another address', `From: ${N}\r\nResent-Sender: ${EVIL}`, /^Resent-Sender <evil@example\.com> is not a mailbox/],
    ['a Resent-From with a second address', `From: ${N}\r\nResent-From: ${N}, ${EVIL}`, /^Resent-From header names 2 addresses/],
    ['a Sender whose display name is another address', `From: ${N}\r\nSender: "${EVIL}" <${N}>`, /^Sender header shows the address evil@example\.com/],
    ['two Sender fields', `From: ${N}\r\nSender: ${N}\r\nSender: ${N}`, /^Sender header appears 2 times;/],
    ['a second Resent block with another address', `Resent-From: ${N}\r\nFrom: ${N}\r\nResent-From: ${EVIL}`, /^Resent-From <evil@example\.com>/],
  ])('refuses %s', (_name, header, text) => {
    const reply = refusedWith(msg(header));
    expect(reply).toMatchObject({ code: 550, status: '5.7.1', outcome: 'rejected_sender' });
    expect(reply!.text).toMatch(text);
  });

  it('admits Sender, Resent-From and Resent-Sender that name a covered mailbox, and leaves Reply-To free', () => {
    const raw = msg(`Resent-From: billing@example.com\r\nResent-Sender: <${N}>\r\nFrom: ${N}\r\nSender: Billing <billing@example.com>\r\nReply-To: ${EVIL}, other@example.net`);
    const admitted = admit(raw);
    expect(admitted).toEqual({ message: raw, from: N });
  });

  it('a field named like a property of every object (Constructor, __proto__, toString) is no sender field', () => {
    // an object literal looked up by field name read Constructor as a sender field: 550 "function Object() ..."
    const raw = msg(`From: ${N}\r\nConstructor: a build tool\r\n__proto__: x\r\ntoString: y\r\nhasOwnProperty: z`);
    expect(admit(raw)).toEqual({ message: raw, from: N });
  });

  it('checks the From against the authenticated user’s mailboxes first, naming only those', () => {
    const principal = { user: 'billing', mailboxes: ['billing@example.com' as Mailbox] };
    expect(refusedWith(msg(`From: ${N}`), { principal })).toMatchObject({
      code: 550, status: '5.7.1', text: 'User billing may not send as From <notify@example.com>; it may send as: billing@example.com',
    });
    expect(refusedWith(msg(`From: billing@example.com\r\nSender: ${N}`), { principal })?.text).toBe(
      'User billing may not send as Sender <notify@example.com>; it may send as: billing@example.com',
    );
    expect(admit(msg('From: billing@example.com'), { principal }).from).toBe('billing@example.com');
    // a user without a list may send as every covered mailbox
    expect(admit(msg(`From: ${N}`), { principal: { user: 'ops' } }).from).toBe(N);
  });

  it('keeps a folded From as received, and refuses a fold inside its quoted string (Python getaddresses misreads it)', () => {
    const folded = msg(`From: =?utf-8?Q?J=C3=BCrgen?=\r\n <${N}>`);
    expect(admit(folded)).toEqual({ message: folded, from: N });
    expect(refusedWith(msg(`From: "Notify\r\n Team" <${N}>`))).toMatchObject({ code: 550, text: expect.stringMatching(/^From header has a quoted string or comment folded over two lines/) });
    // a From over 998 octets is folded at whitespace like any field, then read as it leaves
    const long = msg(`From: ${'Notify '.repeat(200)}<${N}>`);
    const admitted = admit(long);
    expect(admitted.message.toString('latin1').split('\r\n').every((l) => l.length <= 998)).toBe(true);
    expect(admitted.from).toBe(N);
    expect(refusedWith(msg(`From: "${'Notify '.repeat(200)}" <${N}>`))?.text).toMatch(/^From header has a quoted string or comment folded over two lines/);
  });

  it('decides on the canonical bytes: a bare LF in the From starts a new line, so the second From is seen', () => {
    expect(refusedWith(bin(`From: ${N}\nFrom: ${EVIL}\r\n\r\n`))?.text).toMatch(/^From header appears 2 times/);
    expect(refusedWith(bin(`Subject: x\nFrom: ${EVIL}\r\nFrom: ${N}\r\n\r\n`))?.text).toMatch(/^From header appears 2 times/);
  });

  it('refuses a malformed header before it looks at the sender (one reply per message)', () => {
    expect(refusedWith(bin(`From: ${EVIL}\r\nX: a\0\r\n\r\n`))).toMatchObject({ code: 554, status: '5.6.0' });
  });

  it('uses the parser it is given (the seam the disagreement test weakens)', () => {
    const lenient = () => ({ ok: true as const, mailbox: { address: N, shown: [] } });
    expect(admitHeader(msg(`From: ${EVIL}, <${N}>`), policy, lenient).from).toBe(N);
  });
});

describe('the envelope sender (MAIL FROM, 550 5.7.1)', () => {
  const covered = policy.covered;
  it('a covered mailbox is admitted, in any case, as its lower-case mailbox', () => {
    expect(admitEnvelopeSender(N, covered)).toBe(N);
    expect(admitEnvelopeSender('Notify@Example.COM', covered)).toBe(N);
  });

  it('an uncovered one is refused, naming what the relay signs for', () => {
    expect(refusal(() => admitEnvelopeSender(EVIL, covered))).toMatchObject({
      code: 550,
      status: '5.7.1',
      text: `Sender <${EVIL}> is not a mailbox this relay signs for; it signs for: ${N}, billing@example.com (a bounce address may be allowed with SMIME_RELAY_ENVELOPE_SENDERS)`,
    });
  });

  it('a user limited to some mailboxes may use only those, though the relay covers more', () => {
    const ops = { user: 'ops', mailboxes: [N] };
    expect(admitEnvelopeSender(N, covered, ops)).toBe(N);
    expect(refusal(() => admitEnvelopeSender('billing@example.com', covered, ops))).toMatchObject({
      code: 550,
      status: '5.7.1',
      text: `User ops may not send as <billing@example.com>; it may send as: ${N}`,
    });
    // the user's list is checked first: the reply names only its mailboxes, not the relay's
    expect(refusal(() => admitEnvelopeSender(EVIL, covered, ops))?.text).toBe(`User ops may not send as <${EVIL}>; it may send as: ${N}`);
    // a mailbox on the user's list that no certificate covers is still refused
    expect(refusal(() => admitEnvelopeSender(EVIL, covered, { user: 'odd', mailboxes: [EVIL as Mailbox] }))?.text).toMatch(/^Sender <evil@example.com> is not a mailbox this relay signs for/);
    // a user without a list may use every covered mailbox, and no other
    expect(admitEnvelopeSender('billing@example.com', covered, { user: 'all' })).toBe('billing@example.com');
    expect(refusal(() => admitEnvelopeSender(EVIL, covered, { user: 'all' }))?.text).toMatch(/^Sender <evil@example.com> is not/);
  });

  const senders = (text: string) => {
    const parsed = parseEnvelopeSenders(text);
    if (typeof parsed === 'string') throw new Error(parsed);
    return parsed;
  };

  it('SMIME_RELAY_ENVELOPE_SENDERS: patterns with * for any run but @, <> for the null sender, case-insensitive', () => {
    const s = senders(' bounces+*@Example.com ,, root@*,<> ');
    expect([s.patterns, s.toString()]).toEqual([['bounces+*@Example.com', 'root@*', '<>'], 'bounces+*@Example.com,root@*,<>']);
    expect(['bounces+ops=example.org@example.com', 'BOUNCES+@EXAMPLE.COM', 'root@host1', 'root@a.b', ''].map((a) => s.matches(a))).toEqual([true, true, true, true, true]);
    // * never crosses the @, and the rest of the pattern is literal (. + ? are not regex here)
    expect(['bounces+x@example.com.evil', 'bounces+x@exampleXcom', 'xbounces+x@example.com', 'root@a@b', 'rot@host', 'notify@example.com'].map((a) => s.matches(a))).toEqual([false, false, false, false, false, false]);
    const noNull = senders('root@*');
    expect([noNull.matches(''), noNull.matches('root@x')]).toEqual([false, true]);
    expect([NO_ENVELOPE_SENDERS.patterns, NO_ENVELOPE_SENDERS.toString(), NO_ENVELOPE_SENDERS.matches(''), NO_ENVELOPE_SENDERS.matches('root@x')]).toEqual([[], '', false, false]);
  });

  it.each([
    ['', 'expected patterns such as bounces+*@example.com,root@*,<>'],
    [' , ,', 'expected patterns such as bounces+*@example.com,root@*,<>'],
    ['root', "'root' is not an address pattern: write local@domain with * as a wildcard (bounces+*@example.com, root@*), or <> for the null sender"],
    ['root@*, <root@host>', "'<root@host>' is not an address pattern: write local@domain with * as a wildcard (bounces+*@example.com, root@*), or <> for the null sender"],
    ['a@b@c', "'a@b@c' is not an address pattern: write local@domain with * as a wildcard (bounces+*@example.com, root@*), or <> for the null sender"],
    ['x a@b', "'x a@b' is not an address pattern: write local@domain with * as a wildcard (bounces+*@example.com, root@*), or <> for the null sender"],
    ['a@b x', "'a@b x' is not an address pattern: write local@domain with * as a wildcard (bounces+*@example.com, root@*), or <> for the null sender"],
  ])('SMIME_RELAY_ENVELOPE_SENDERS=%j is refused: %s', (text, message) => {
    expect(parseEnvelopeSenders(text)).toBe(message);
  });

  it('SMIME_RELAY_ENVELOPE_SENDERS admits a bounce address before any other check, for any user', () => {
    const legacy = senders('bounces+*@example.com, <>');
    expect(admitEnvelopeSender('bounces+ops=example.org@example.com', covered, { user: 'ops', mailboxes: [N] }, legacy)).toBe('bounces+ops=example.org@example.com');
    expect(admitEnvelopeSender('', covered, undefined, legacy)).toBe('');
    expect(refusal(() => admitEnvelopeSender('', covered))?.text).toMatch(/^Sender <> is not a mailbox this relay signs for/);
  });
});
