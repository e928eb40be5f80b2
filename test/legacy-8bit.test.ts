/**
 * A legacy 8-bit body with no MIME headers (cron, `mail`, old scripts) keeps its text. RFC 2045
 * §5.2 would call it us-ascii; once quoted-printable-encoded under that label, readers decode
 * the UTF-8 bytes as replacement characters. Valid UTF-8 is labelled utf-8; anything else
 * unknown-8bit (RFC 1428), which claims no charset rather than a wrong one. Checked with two
 * independent readers: mailparser (Node) and Python's email package. The signatures over such
 * messages are checked by all three verifiers in test/interop.test.ts.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { simpleParser } from 'mailparser';
import { describe, expect, it } from 'vitest';
import { prepareMessage } from '../src/mime/prepare.js';

const HEAD = 'From: alerts@example.test\r\nTo: ops@example.org\r\nSubject: nightly\r\n\r\n';
const UTF8_TEXT = 'Grüße aus Köln — 東京\r\nZweite Zeile\r\n';
const LATIN1_BYTES = Buffer.from('Stra\xdfe, M\xfcnchen\r\n', 'latin1');

/** The signed entity with the outer headers in front: the message a client renders. */
function prepared(body: Buffer): Buffer {
  const p = prepareMessage(Buffer.concat([Buffer.from(HEAD, 'latin1'), body]));
  return Buffer.concat([p.outerHeaders, Buffer.from('MIME-Version: 1.0\r\n'), p.entity.toBuffer()]);
}

const PYTHON = String.raw`
import json, sys
from email import message_from_bytes, policy
m = message_from_bytes(sys.stdin.buffer.read(), policy=policy.default)
out = {'charset': m.get_content_charset(), 'payload': m.get_payload(decode=True).hex()}
try:
    out['text'] = m.get_content()
except LookupError as e:
    out['text'] = None
print(json.dumps(out))
`;

const HAVE_PYTHON = spawnSync('python3', ['--version']).status === 0;
if (!HAVE_PYTHON) {
  if (process.env.CI === 'true') throw new Error('python3 is missing under CI (apt-get install -y python3)');
  console.warn('\n!! WARNING: python3 not found; the Python email reader checks are SKIPPED.\n');
}

function python(message: Buffer): { charset: string; payload: string; text: string | null } {
  return JSON.parse(execFileSync('python3', ['-c', PYTHON], { input: message, encoding: 'utf8' }));
}

describe('a legacy 8-bit body without MIME headers', () => {
  it('valid UTF-8 is labelled charset=utf-8 and quoted-printable-encoded', () => {
    const entity = prepareMessage(Buffer.from(HEAD + UTF8_TEXT, 'utf8')).entity.toBuffer().toString('latin1');
    expect(entity).toMatch(/^Content-Type: text\/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nGr=C3=BC=C3=9Fe/);
  });

  it('other 8-bit bytes are labelled charset=unknown-8bit (RFC 1428), not a charset they may not be in', () => {
    const entity = prepareMessage(Buffer.concat([Buffer.from(HEAD), LATIN1_BYTES])).entity.toBuffer().toString('latin1');
    expect(entity).toMatch(/^Content-Type: text\/plain; charset=unknown-8bit\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nStra=DFe, M=FCnchen/);
  });

  it('7-bit text keeps the RFC 2045 default, us-ascii', () => {
    expect(prepareMessage(Buffer.from(HEAD + 'plain\r\n')).entity.toBuffer().toString('latin1')).toMatch(/^Content-Type: text\/plain; charset=us-ascii\r\n\r\n/);
  });

  it('mailparser reads the UTF-8 text back unchanged', async () => {
    const mail = await simpleParser(prepared(Buffer.from(UTF8_TEXT, 'utf8')));
    expect(mail.text).toBe(UTF8_TEXT.replace(/\r\n/g, '\n'));
  });

  it.skipIf(!HAVE_PYTHON)("Python's email reads the UTF-8 text back unchanged (under a us-ascii label it showed U+FFFD)", () => {
    const r = python(prepared(Buffer.from(UTF8_TEXT, 'utf8')));
    expect(r.charset).toBe('utf-8');
    expect(r.text?.replace(/\r\n/g, '\n')).toBe(UTF8_TEXT.replace(/\r\n/g, '\n'));
    expect(r.text).not.toContain('\ufffd');
  });

  it.skipIf(!HAVE_PYTHON)("Python's email gets the unknown-8bit bytes back exactly, and does not pretend to know their charset", () => {
    const r = python(prepared(LATIN1_BYTES));
    expect(r.charset).toBe('unknown-8bit');
    expect(Buffer.from(r.payload, 'hex').equals(LATIN1_BYTES)).toBe(true);
  });
});
