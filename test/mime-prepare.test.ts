/**
 * The prepare stage over the message shapes of issue 4. Every case is checked the way a receiving
 * client would see it: the output is parsed with mailparser and its decoded parts compared with
 * those of the input.
 */
import { randomBytes } from 'node:crypto';
import { simpleParser, type ParsedMail } from 'mailparser';
import { describe, expect, it } from 'vitest';
import { MimeError, prepareMessage, type PrepareOptions } from '../src/mime/prepare.js';

const b = (s: string): Buffer => Buffer.from(s, 'latin1');
const utf8 = (s: string): string => Buffer.from(s, 'utf8').toString('latin1');

/** The message as the builder will send it, minus the multipart/signed wrapper. */
function reassemble(outerHeaders: Buffer, entity: Buffer): Buffer {
  return Buffer.concat([outerHeaders, b('MIME-Version: 1.0\r\n'), entity]);
}

/** Outer headers computed independently: fields that are not Content-* or MIME-Version, LF→CRLF. */
function expectedOuterHeaders(raw: Buffer): string {
  const text = raw.toString('latin1');
  const m = /\r?\n\r?\n/.exec(text);
  const head = m ? text.slice(0, m.index) : text.replace(/\r?\n$/, '');
  const fields: string[][] = [];
  for (const line of head.split(/\r?\n/)) {
    if (/^[ \t]/.test(line) && fields.length) fields[fields.length - 1]!.push(line);
    else fields.push([line]);
  }
  return fields
    .filter((f) => !/^(content-[^:]*|mime-version)\s*:/i.test(f[0]!))
    .map((f) => f.map((l) => l + '\r\n').join(''))
    .join('');
}

function assertTransportSafe(entity: Buffer, input: Buffer): void {
  const inputLines = new Set(input.toString('latin1').split(/\r?\n/));
  const lines = entity.toString('latin1').split('\r\n');
  for (const [k, line] of lines.entries()) {
    expect(line.includes('\n'), `bare LF on line ${k}`).toBe(false);
    expect(line.includes('\r'), `bare CR on line ${k}`).toBe(false);
    expect(/[^\x01-\x7f]/.test(line), `8bit or NUL on line ${k}`).toBe(false);
    expect(line.length, `line ${k} over 998`).toBeLessThanOrEqual(998);
    // a line we wrote ourselves (re-encoded) stays within 78; a longer one must be the input's
    if (line.length > 78) expect(inputLines.has(line), `new long line ${k}: ${line.slice(0, 60)}`).toBe(true);
  }
}

const normaliseText = (s: string | false | undefined): string | undefined =>
  typeof s === 'string' ? s.replace(/\r\n/g, '\n') : undefined;

async function compareParsed(a: ParsedMail, z: ParsedMail, path = 'message'): Promise<void> {
  expect(normaliseText(z.text), `${path} text`).toBe(normaliseText(a.text));
  expect(normaliseText(z.html), `${path} html`).toBe(normaliseText(a.html));
  expect(z.attachments.length, `${path} attachment count`).toBe(a.attachments.length);
  for (const [k, att] of a.attachments.entries()) {
    const out = z.attachments[k]!;
    expect(out.contentType, `${path} attachment ${k} type`).toBe(att.contentType);
    expect(out.filename, `${path} attachment ${k} filename`).toBe(att.filename);
    expect(out.cid, `${path} attachment ${k} cid`).toBe(att.cid);
    if (att.contentType === 'message/rfc822') {
      // the inner message is rewritten too, so compare what it decodes to
      await compareParsed(await simpleParser(att.content), await simpleParser(out.content), `${path}/${k}`);
    } else if (att.contentType.startsWith('text/')) {
      // text may have its line breaks made CRLF (RFC 2046 §4.1.1), every other byte stays
      const crlf = (x: Buffer) => x.toString('latin1').replace(/\r?\n/g, '\r\n');
      expect(crlf(out.content), `${path} attachment ${k} text`).toBe(crlf(att.content));
    } else {
      expect(out.content.equals(att.content), `${path} attachment ${k} bytes`).toBe(true);
    }
  }
}

async function check(raw: Buffer, opts: PrepareOptions = {}) {
  const result = prepareMessage(raw, opts);
  const entity = result.entity.toBuffer();
  expect(entity.length).toBeLessThanOrEqual(result.entity.size);
  expect(result.outerHeaders.toString('latin1')).toBe(expectedOuterHeaders(raw));
  assertTransportSafe(entity, raw);
  const out = reassemble(result.outerHeaders, entity);
  await compareParsed(await simpleParser(raw), await simpleParser(out));
  return { ...result, entity, out, entityText: entity.toString('latin1') };
}

/** The entity's body: everything after its header block. */
function entityBody(entity: Buffer): Buffer {
  return entity.subarray(entity.indexOf('\r\n\r\n') + 4);
}

const HEAD = 'From: Tattler <notifications@example.com>\r\nTo: user@example.org\r\nSubject: Test\r\nDate: Mon, 1 Sep 2025 10:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n';

function pythonStyleMixed(image: Buffer, pdf: Buffer): Buffer {
  // the shape Python's email package writes for text+html with an inline image and an attachment
  const b64 = (x: Buffer) => x.toString('base64').replace(/.{76}/g, '$&\n');
  return b(
    [
      HEAD.replace(/\r\n/g, '\n') + 'Content-Type: multipart/mixed; boundary="===============0123456789=="',
      'MIME-Version: 1.0',
      '',
      '--===============0123456789==',
      'Content-Type: multipart/related; boundary="===============1111111111=="',
      'MIME-Version: 1.0',
      '',
      '--===============1111111111==',
      'Content-Type: multipart/alternative; boundary="===============2222222222=="',
      'MIME-Version: 1.0',
      '',
      '--===============2222222222==',
      'Content-Type: text/plain; charset="utf-8"',
      'Content-Transfer-Encoding: 8bit',
      '',
      utf8('Grüße aus Köln — your report is ready.'),
      'From the team.',
      '',
      '--===============2222222222==',
      'Content-Type: text/html; charset="utf-8"',
      'Content-Transfer-Encoding: 8bit',
      '',
      utf8('<html><body><p>Grüße aus Köln</p><img src="cid:logo@tattler"></body></html>'),
      '',
      '--===============2222222222==--',
      '',
      '--===============1111111111==',
      'Content-Type: image/png',
      'MIME-Version: 1.0',
      'Content-Transfer-Encoding: base64',
      'Content-ID: <logo@tattler>',
      'Content-Disposition: inline; filename="logo.png"',
      '',
      b64(image),
      '',
      '--===============1111111111==--',
      '',
      '--===============0123456789==',
      'Content-Type: application/pdf',
      'MIME-Version: 1.0',
      'Content-Transfer-Encoding: base64',
      'Content-Disposition: attachment; filename="report.pdf"',
      '',
      b64(pdf),
      '',
      '--===============0123456789==--',
      '',
    ].join('\n'),
  );
}

describe('prepareMessage: corpus of real-world shapes', () => {
  it('passes plain 7bit text through byte-identical, with the default Content-Type', async () => {
    const raw = b(HEAD + '\r\nHello,\r\nyour password was reset.\r\n');
    const r = await check(raw);
    expect(r.entityText).toBe('Content-Type: text/plain; charset=us-ascii\r\n\r\nHello,\r\nyour password was reset.\r\n');
  });

  it('re-encodes UTF-8 8bit text without a Content-Transfer-Encoding to quoted-printable', async () => {
    const raw = b(HEAD + 'MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n' + utf8('Grüße, ✓ done\r\n'));
    const r = await check(raw);
    expect(r.entityText).toBe(
      'Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nGr=C3=BC=C3=9Fe, =E2=9C=93 done\r\n',
    );
  });

  it('handles the Python email shape: mixed > related > alternative, inline image and attachment, LF endings', async () => {
    const raw = pythonStyleMixed(randomBytes(3000), randomBytes(20000));
    const r = await check(raw);
    expect(r.entityText).toContain('Content-Transfer-Encoding: quoted-printable\r\n\r\nGr=C3=BC=C3=9Fe');
    expect(r.entityText).toContain('=46rom the team.');
    expect(r.entityText).toMatch(/--===============0123456789==--\r\n$/);
  });

  it('base64-encodes a raw binary attachment and keeps every byte', async () => {
    const pdf = Buffer.concat([b('%PDF-1.7\n'), randomBytes(50_000), b('\r\r\n\0\n%%EOF')]);
    const raw = Buffer.concat([
      b(HEAD + 'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b1\r\n'),
      b('Content-Type: application/pdf; name="x.pdf"\r\nContent-Transfer-Encoding: binary\r\nContent-Disposition: attachment; filename="x.pdf"\r\n\r\n'),
      pdf,
      b('\r\n--b1--\r\n'),
    ]);
    const r = await check(raw);
    expect(r.entityText).toContain('Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename="x.pdf"');
  });

  it('keeps an RFC 2231 filename and encodes a raw UTF-8 one per RFC 2231', async () => {
    const raw = b(
      HEAD +
        'Content-Type: multipart/mixed; boundary="b2"\r\n\r\n--b2\r\nContent-Type: text/plain\r\n\r\nhi\r\n' +
        "--b2\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment;\r\n filename*=utf-8''Re%CC%81sume%CC%81%20%E2%82%AC.bin\r\nContent-Transfer-Encoding: base64\r\n\r\nAAECAw==\r\n" +
        '--b2\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="' + utf8('Übersicht März.txt') + '"\r\nContent-Description: ' + utf8('Übersicht') + '\r\nContent-Transfer-Encoding: base64\r\n\r\nAAECAw==\r\n--b2--\r\n',
    );
    const r = await check(raw);
    expect(r.entityText).toContain("filename*=utf-8''Re%CC%81sume%CC%81%20%E2%82%AC.bin");
    expect(r.entityText).toContain("filename*=utf-8''%C3%9Cbersicht%20M%C3%A4rz.txt");
    expect(r.entityText).toContain('Content-Description: =?utf-8?B?w5xiZXJzaWNodA==?=');
  });

  it('recurses into message/rfc822 with an 8bit inner body and never base64s the message part', async () => {
    const inner = 'From: x@example.net\r\nSubject: inner\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n' + utf8('Inhalt: äöü\r\n');
    const raw = b(HEAD + 'Content-Type: multipart/mixed; boundary=b3\r\n\r\n--b3\r\nContent-Type: text/plain\r\n\r\nforwarded:\r\n--b3\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n\r\n' + inner + '--b3--\r\n');
    const r = await check(raw);
    expect(r.entityText).toContain('Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 7bit\r\n\r\nFrom: x@example.net\r\n');
    expect(r.entityText).toContain('Content-Transfer-Encoding: quoted-printable\r\n\r\nInhalt: =C3=A4');
  });

  it('re-encodes lines over 998 octets, trailing blanks and "From " / "." / ".." line starts', async () => {
    const body = 'x'.repeat(2500) + '\r\ntrailing space \r\ntrailing tab\t\r\nFrom the desk\r\n.\r\n..two\r\n.one\r\n';
    const raw = b(HEAD + 'Content-Type: text/plain; charset=us-ascii\r\n\r\n' + body);
    const r = await check(raw);
    expect(r.entityText).toContain('trailing space=20\r\ntrailing tab=09\r\n=46rom the desk\r\n=2E\r\n=2E.two\r\n=2Eone\r\n');
  });

  it('canonicalises bare LF in text to CRLF and keeps a bare CR as =0D', async () => {
    const raw = b('From: a@example.com\nSubject: lf\n\nline one\nline two\rstill two\n');
    const r = await check(raw);
    expect(r.outerHeaders.toString()).toBe('From: a@example.com\r\nSubject: lf\r\n');
    expect(r.entityText).toContain('\r\n\r\nline one\r\nline two=0Dstill two\r\n');
  });

  it('base64-encodes a non-text 7bit part with bare LF, so its bytes stay identical', async () => {
    const raw = b(HEAD + 'Content-Type: multipart/mixed; boundary=b4\r\n\r\n--b4\r\nContent-Type: application/json\r\nContent-Disposition: attachment; filename=a.json\r\n\r\n{"a":\n1}\n\r\n--b4--\r\n');
    const r = await check(raw);
    expect(r.entityText).toContain('Content-Transfer-Encoding: base64\r\n\r\neyJhIjoKMX0K\r\n');
  });

  it('keeps a safe preamble and drops the top-level epilogue, keeping a nested epilogue', async () => {
    const raw = b(
      HEAD +
        'Content-Type: multipart/mixed; boundary=outer\r\n\r\nThis is a multi-part message in MIME format.\r\n' +
        '--outer\r\nContent-Type: multipart/alternative; boundary=inner\r\n\r\ninner preamble\r\n--inner\r\nContent-Type: text/plain\r\n\r\nplain\r\n--inner\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n--inner--\r\ninner epilogue\r\n' +
        '--outer--\r\nouter epilogue that Outlook would count\r\n',
    );
    const r = await check(raw);
    expect(r.entityText).toContain('\r\n\r\nThis is a multi-part message in MIME format.\r\n--outer\r\n');
    expect(r.entityText).toContain('--inner--\r\ninner epilogue\r\n--outer--\r\n');
    expect(r.entityText.endsWith('--outer--\r\n')).toBe(true);
    expect(r.entityText).not.toContain('Outlook');
  });

  it('handles an empty body and a message that is only headers', async () => {
    const empty = await check(b(HEAD + '\r\n'));
    expect(empty.entityText).toBe('Content-Type: text/plain; charset=us-ascii\r\n\r\n');
    const headersOnly = await check(b(HEAD));
    expect(headersOnly.entityText).toBe('Content-Type: text/plain; charset=us-ascii\r\n\r\n');
  });

  it('keeps folded and RFC 2047 outer headers byte-for-byte and folded Content-Type as written', async () => {
    const raw = b(
      'From: =?utf-8?Q?J=C3=BCrgen?=\r\n <j@example.com>\r\nSubject: =?utf-8?B?R3LDvMOfZQ==?=\r\n\t=?utf-8?B?IGF1cyBLw7Zsbg==?=\r\nX-Long: a\r\n  b\r\n' +
        'Content-Type: text/plain;\r\n\tcharset="utf-8";\r\n format=flowed\r\nContent-Transfer-Encoding: 7bit\r\n\r\nhello\r\n',
    );
    const r = await check(raw);
    expect(r.entityText).toBe('Content-Type: text/plain;\r\n\tcharset="utf-8";\r\n format=flowed\r\nContent-Transfer-Encoding: 7bit\r\n\r\nhello\r\n');
  });

  it('parses Content-Type parameters in unusual order and case, with a case-sensitive boundary', async () => {
    const raw = b(
      HEAD +
        'content-type: MULTIPART/Mixed; X-Foo=bar;\r\n BOUNDARY="Ab Cd(x)";\r\n charset=us-ascii\r\n\r\n--ab cd(x)\r\nnot a delimiter: case differs\r\n--Ab Cd(x)\r\nContent-type: TEXT/Plain; Charset="UTF-8"\r\n\r\n' +
        utf8('ü ok\r\n--Ab Cd(x)  \r\n') +
        'Content-Type: text/plain\r\n\r\nsecond\r\n--Ab Cd(x)--\r\n',
    );
    const r = await check(raw);
    expect(r.entityText).toContain('--Ab Cd(x)\r\nContent-type: TEXT/Plain; Charset="UTF-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n=C3=BC ok\r\n--Ab Cd(x)\r\n');
  });

  it('re-wraps a 6 MB base64 attachment with over-long lines and keeps every byte', async () => {
    const big = randomBytes(6 * 1024 * 1024);
    const raw = Buffer.concat([
      b(HEAD + 'Content-Type: multipart/mixed; boundary=big\r\n\r\n--big\r\nContent-Type: text/plain\r\n\r\nbig one\r\n--big\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=big.bin\r\nContent-Transfer-Encoding: base64\r\n\r\n'),
      // one line per 300 characters: valid base64, but not transport-safe
      b(big.toString('base64').replace(/.{300}/g, '$&\r\n')),
      b('\r\n--big--\r\n'),
    ]);
    await check(raw);
  }, 60_000);

  it('keeps the raw UTF-8 address of an SMTPUTF8 message outside and leaves it out of protected headers', async () => {
    const raw = b('From: sender@example.com\r\nTo: ' + utf8('用户@例子.广告') + '\r\nSubject: ' + utf8('Grüße') + '\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n' + utf8('Hallo\r\n'));
    const r = await check(raw, { headerProtection: 'clear' });
    expect(r.outerHeaders.toString('latin1')).toContain('To: ' + utf8('用户@例子.广告') + '\r\n');
    expect(r.entityText).toBe(
      'Content-Type: text/plain; charset=utf-8;\r\n hp="clear"\r\nFrom: sender@example.com\r\nSubject: =?utf-8?B?R3LDvMOfZQ==?=\r\n\r\nHallo\r\n',
    );
  });

  it('copies the RFC 9788 protected headers as they are and adds hp="clear"', async () => {
    const raw = b('Received: from x\r\nFrom: a@example.com\r\nReply-To: r@example.com\r\nTo: b@example.com,\r\n c@example.com\r\nCc: d@example.com\r\nSubject: s\r\nDate: Mon, 1 Sep 2025 10:00:00 +0000\r\nMessage-ID: <m@x>\r\nX-Other: o\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nbody\r\n');
    const r = await check(raw, { headerProtection: 'clear' });
    expect(r.entityText).toBe(
      'Content-Type: text/plain;\r\n hp="clear"\r\nFrom: a@example.com\r\nReply-To: r@example.com\r\nTo: b@example.com,\r\n c@example.com\r\nCc: d@example.com\r\nSubject: s\r\nDate: Mon, 1 Sep 2025 10:00:00 +0000\r\nMessage-ID: <m@x>\r\n\r\nbody\r\n',
    );
  });

  it('passes an already safe multipart through with the entity body byte-identical', async () => {
    const body =
      'This is a multi-part message in MIME format.\r\n--s\r\nContent-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n\r\nHello\r\n' +
      '--s\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n<p>Gr=C3=BC=C3=9Fe</p>\r\n' +
      '--s\r\nContent-Type: image/gif\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=a.gif\r\n\r\n' +
      randomBytes(600).toString('base64').replace(/.{76}/g, '$&\r\n') +
      '\r\n--s--\r\n';
    const raw = b(HEAD + 'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="s"\r\n\r\n' + body);
    const r = await check(raw);
    expect(entityBody(r.entity).toString('latin1')).toBe(body);
  });

  it('decodes and rewraps a quoted-printable part with trailing blanks, keeping the decoded text', async () => {
    const raw = b(HEAD + 'Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nsoft=\r\nbreak with padding  \r\nGr=C3=BCn' + 'y'.repeat(100) + '\r\n');
    const r = await check(raw);
    expect(r.entityText).toContain('\r\n\r\nsoftbreak with padding\r\n');
  });
});

describe('prepareMessage: text that is mostly 8-bit goes to base64, the rest stays quoted-printable', () => {
  const textPart = (body: string, eol: string) =>
    b(HEAD + `MIME-Version: 1.0${eol}Content-Type: text/plain; charset=utf-8${eol}Content-Transfer-Encoding: 8bit${eol}${eol}` + utf8(body));

  it('keeps quoted-printable for German text, where it costs little', async () => {
    const r = await check(textPart('Grüße aus Köln: die Änderungen für Düsseldorf kommen später.\r\n'.repeat(40), '\r\n'));
    expect(r.entityText).toContain('Content-Transfer-Encoding: quoted-printable\r\n\r\nGr=C3=BC=C3=9Fe aus K=C3=B6ln');
  });

  for (const [name, eol] of [['CRLF', '\r\n'], ['LF', '\n']] as const) {
    it(`writes Russian text as base64 of its CRLF form, a third of its quoted-printable size (${name} line ends)`, async () => {
      const line = 'Съешь же ещё этих мягких французских булок, да выпей чаю.';
      const r = await check(textPart((line + eol).repeat(40), eol));
      const [head, body] = r.entityText.split('\r\n\r\n');
      expect(head).toBe('Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64');
      expect(Buffer.from(body!, 'base64').toString('utf8')).toBe((line + '\r\n').repeat(40));
      expect(r.entity.length).toBeLessThan(1.45 * Buffer.byteLength((line + '\r\n').repeat(40)));
    });
  }

  it('decides on the start of a large part, and on the whole part when the start is mostly ASCII', async () => {
    const ascii = 'The figures for the quarter are in the table below, per region.\r\n'.repeat(1100); // over 64 KiB
    const cyrillic = 'Широкая электрификация южных губерний даст мощный толчок.\r\n'.repeat(2000);
    expect((await check(textPart(cyrillic + ascii, '\r\n'))).entityText).toContain('Content-Transfer-Encoding: base64');
    expect((await check(textPart(ascii + cyrillic, '\r\n'))).entityText).toContain('Content-Transfer-Encoding: base64');
    expect((await check(textPart(ascii + 'Grüße\r\n', '\r\n'))).entityText).toContain('Content-Transfer-Encoding: quoted-printable');
  });
});

describe('prepareMessage: limits and malformed input give MimeError', () => {
  const nested = (depth: number): string => {
    let s = 'Content-Type: text/plain\r\n\r\nleaf\r\n';
    for (let k = 0; k < depth; k++) s = `Content-Type: multipart/mixed; boundary=d${k}\r\n\r\n--d${k}\r\n${s}--d${k}--\r\n`;
    return s;
  };

  it('rejects nesting deeper than maxDepth and accepts it at the limit', () => {
    expect(() => prepareMessage(b(HEAD + nested(21)))).toThrow(/nesting deeper than 20/);
    expect(() => prepareMessage(b(HEAD + nested(20)))).not.toThrow();
    expect(() => prepareMessage(b(HEAD + nested(3)), { maxDepth: 2 })).toThrow(MimeError);
  });

  it('rejects more parts than maxParts', () => {
    const parts = Array.from({ length: 10 }, () => '--p\r\nContent-Type: text/plain\r\n\r\nx\r\n').join('');
    const raw = b(HEAD + 'Content-Type: multipart/mixed; boundary=p\r\n\r\n' + parts + '--p--\r\n');
    expect(() => prepareMessage(raw, { maxParts: 10 })).toThrow(/more than 10 MIME parts/);
    expect(() => prepareMessage(raw, { maxParts: 11 })).not.toThrow();
  });

  it('rejects a header block over maxHeaderBytes', () => {
    const raw = b('X-Big: ' + 'a'.repeat(300) + '\r\n'.repeat(1) + 'X-More: ' + 'b '.repeat(200_000) + '\r\n\r\nbody\r\n');
    expect(() => prepareMessage(raw)).toThrow(/header block exceeds the limit of 262144 bytes/);
    expect(() => prepareMessage(b(HEAD + '\r\nbody\r\n'), { maxHeaderBytes: 50 })).toThrow(MimeError);
  });

  it('rejects a multipart without a boundary whose body is not 7-bit clean', () => {
    const raw = b(HEAD + 'Content-Type: multipart/mixed\r\n\r\n' + utf8('ä\r\n'));
    expect(() => prepareMessage(raw)).toThrow(/without a usable boundary/);
  });

  it('rejects an attached message whose address is UTF-8 (it cannot be written in 7 bits)', () => {
    const raw = b(HEAD + 'Content-Type: message/rfc822\r\n\r\nFrom: ' + utf8('jörg@example.de') + '\r\n\r\nhi\r\n');
    expect(() => prepareMessage(raw)).toThrow(/cannot be encoded in 7 bits/);
  });

  it('rejects an encoded composite that hides a delimiter of its parent', () => {
    const inner = Buffer.from('--x\r\nContent-Type: text/plain\r\n\r\nhi\r\n--outer\r\n--x--\r\n').toString('base64');
    const raw = b(HEAD + 'Content-Type: multipart/mixed; boundary=outer\r\n\r\n--outer\r\nContent-Type: multipart/mixed; boundary=x\r\nContent-Transfer-Encoding: base64\r\n\r\n' + inner + '\r\n--outer--\r\n');
    expect(() => prepareMessage(raw)).toThrow(/delimiter of an enclosing multipart/);
  });

  it('rejects a part with an unknown transfer encoding that is not 7-bit clean', () => {
    const raw = b(HEAD + 'Content-Type: text/plain\r\nContent-Transfer-Encoding: x-weird\r\n\r\n' + utf8('ä\r\n'));
    expect(() => prepareMessage(raw)).toThrow(/unknown Content-Transfer-Encoding "x-weird"/);
  });
});
