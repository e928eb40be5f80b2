/**
 * Issue 10's attacks, replayed over SMTP against real relays (signing on, signing off, and
 * send-unsigned for an expired certificate), with a real SMTP peer as the upstream. Each one
 * is refused with the right reply and nothing reaches the upstream, or what the upstream receives
 * is read by mailparser and by Python (policy.default and getaddresses) as one From, the covered
 * mailbox, with one outer Content-Type, multipart/signed when signed.
 *
 * Issue 15 item 2: an uncovered From with SMIME_RELAY_SIGNING=off, and one on an already signed
 * message, are 550 5.7.1; without the From check in the header admission both were 250.
 *
 * Last, the disagreement property of test/header-disagreement.test.ts over the wire: generated
 * hostile messages go in over SMTP and out through nodemailer, which turns a bare CR or LF into
 * CRLF, so this is where a byte the relay read as "inside a field" would have become a header
 * line of its own.
 */
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Mailbox } from '../src/mime/mailbox.js';
import { sendMessage } from './support/client.js';
import { hostileMessage } from './support/hostile-headers.js';
import { createTestPki, type TestPki } from './support/pki.js';
import { PythonEmail, requirePython } from './support/python-email.js';
import { startTestRelay, type TestRelay } from './support/relay.js';
import { allViews, disagreements } from './support/sender-views.js';
import { startSink, type Received, type Sink } from './support/sink.js';

const HAVE_PYTHON = requirePython('the header admission tests read what the upstream received with Python email');
const SENDER = 'notify@example.test';
const RUNS = Number(process.env.HEADER_PROPERTY_SMTP_RUNS ?? 300);
const EVIL = 'evil@example.com';

let pki: TestPki;
let sink: Sink;
let python: PythonEmail;
const relays: Record<'on' | 'off' | 'unsigned', TestRelay> = {} as never;

beforeAll(async () => {
  pki = await createTestPki({ keyType: 'ec' });
  const leaf = await pki.issueLeaf('notify', { emails: [SENDER], keyType: 'ec' });
  const expired = await pki.issueLeaf('expired', {
    emails: [SENDER], keyType: 'ec', notBefore: new Date(Date.now() - 20 * 86_400_000), notAfter: new Date(Date.now() - 86_400_000),
  });
  sink = await startSink();
  relays.on = await startTestRelay({ SMIME_RELAY_CERT: leaf.bundlePath, SMIME_RELAY_UPSTREAM: sink.url });
  relays.off = await startTestRelay({ SMIME_RELAY_CERT: leaf.bundlePath, SMIME_RELAY_UPSTREAM: sink.url, SMIME_RELAY_SIGNING: 'off' });
  relays.unsigned = await startTestRelay({ SMIME_RELAY_CERT: expired.bundlePath, SMIME_RELAY_UPSTREAM: sink.url, SMIME_RELAY_ON_MISSING_CERT: 'send-unsigned' });
  if (HAVE_PYTHON) python = new PythonEmail();
});

afterAll(async () => {
  await python?.close();
  for (const r of Object.values(relays)) await r?.close();
  await sink?.close();
  await pki?.cleanup();
});

type Mode = keyof typeof relays;

/** Sends one message; returns the final reply and what the upstream got (undefined if nothing). */
async function relayOne(mode: Mode, raw: Buffer, opts: { smtputf8?: boolean } = {}): Promise<{ code: number; text: string; received?: Received }> {
  const before = sink.received.length;
  const r = await sendMessage(relays[mode].address.port, SENDER, ['someone@example.org'], raw, opts.smtputf8 ? { mailParams: 'SMTPUTF8' } : {});
  const reply = r.final ?? r.data ?? r.rcptTo[0] ?? r.mailFrom;
  if (reply.code !== 250) {
    // the relay refuses before it forwards anything, so the upstream has it by now or never
    expect(sink.received.length, 'a refused message reached the upstream').toBe(before);
    return reply;
  }
  const received = (await sink.waitFor(before + 1))[before]!;
  return { ...reply, received };
}

/** mailparser, Python twice and the relay itself read one From, the covered mailbox, and the expected outer type. */
async function expectReadAlike(received: Received, contentType: string | undefined, smtputf8 = false): Promise<void> {
  const raw = received.raw;
  expect(/\r(?!\n)|(?<!\r)\n/.test(raw.toString('latin1')), 'a bare CR or LF reached the upstream').toBe(false);
  const views = await allViews(raw, python, [SENDER as Mailbox], smtputf8);
  expect(disagreements(views, { mailbox: SENDER as Mailbox, contentType }), raw.toString('latin1').slice(0, 2000)).toEqual([]);
}

const lines = (...ls: string[]) => Buffer.from(ls.join('\r\n'), 'latin1');
const body = ['', 'Hello.', ''];

describe.skipIf(!HAVE_PYTHON)('issue 10 attacks over SMTP', () => {
  describe.each<Mode>(['on', 'off', 'unsigned'])('SMIME_RELAY_SIGNING=%s', (mode) => {
    it.each<[string, Buffer, RegExp]>([
      ['a bare CR that would become a second From', lines(`From: ${SENDER}`, `X-A: a\rFrom: ${EVIL}`, 'To: a@example.org', ...body), /^554 5\.6\.0 Header line 2 \("X-A: a\\rFrom: evil@example\.com"\) contains a bare CR/],
      ['a bare CR that would inject an outer Content-Type', lines(`From: ${SENDER}`, 'X-A: a\rContent-Type: multipart/mixed; boundary="x"', ...body), /^554 5\.6\.0 Header line 2 .*bare CR/],
      ['CR CR LF, which would end the header early', lines(`From: ${SENDER}`, 'X-A: a\r', `From: ${EVIL}`, ...body), /^554 5\.6\.0 Header line 2 \("X-A: a\\r"\) contains a bare CR/],
      ['a NUL in a field name', lines(`From: ${SENDER}`, 'X\0A: b', ...body), /^554 5\.6\.0 Header line 2 \("X\\x00A: b"\) contains a NUL byte/],
      ['a NUL in a value', lines(`From: ${SENDER}`, 'Subject: a\0b', ...body), /^554 5\.6\.0 Header line 2 .*NUL/],
      ['an address followed by another in From', lines(`From: ${EVIL} <${SENDER}>`, ...body), /^550 5\.7\.1 From header names 2 addresses \(an address followed by another\)/],
      ['a display name that is another address', lines(`From: "security@bank.example" <${SENDER}>`, ...body), /^550 5\.7\.1 From header shows the address security@bank\.example in its display name/],
      ['a comment holding another address', lines(`From: ${SENDER} (${EVIL})`, ...body), /^550 5\.7\.1 From header shows the address evil@example\.com/],
      ['an encoded-word display name that decodes to another address', lines(`From: =?utf-8?Q?security=40bank=2Eexample?= <${SENDER}>`, ...body), /^550 5\.7\.1 From header shows the address security@bank\.example/],
      ['an encoded-word in a charset where @ is another byte', lines(`From: =?cp500?Q?=85=A5=89=93=7C=A7?= <${SENDER}>`, ...body), /^550 5\.7\.1 From header has an encoded-word in cp500/],
      ['a Sender naming another address', lines(`From: ${SENDER}`, `Sender: ${EVIL}`, ...body), /^550 5\.7\.1 Sender <evil@example\.com> is not a mailbox this relay signs for/],
      ['a Resent-From naming another address', lines(`From: ${SENDER}`, `Resent-From: ${EVIL}`, ...body), /^550 5\.7\.1 Resent-From <evil@example\.com>/],
      ['a Resent-Sender naming another address', lines(`From: ${SENDER}`, `Resent-Sender: Evil <${EVIL}>`, ...body), /^550 5\.7\.1 Resent-Sender <evil@example\.com>/],
      ['a group in From', lines(`From: Team: ${SENDER};`, ...body), /^550 5\.7\.1 From header is a group/],
      ['a quoted display name folded over two lines (getaddresses reads "Notify" as the address)', lines(`From: "Notify`, ` Team" <${SENDER}>`, ...body), /^550 5\.7\.1 From header has a quoted string or comment folded over two lines/],
      ['a 200 KB line without whitespace', lines(`From: ${SENDER}`, `X-Long: ${'a'.repeat(200_000)}`, ...body), /^554 5\.6\.0 Header line 2 .*longer than 998 octets/],
      ['whitespace before the colon', lines(`From : ${EVIL}`, `From: ${SENDER}`, ...body), /^554 5\.6\.0 Header line 1 \("From : evil@example\.com"\) has whitespace before the colon/],
      ['a duplicate Content-Type', lines(`From: ${SENDER}`, 'Content-Type: text/plain', 'Content-Type: multipart/mixed; boundary=b', ...body), /^554 5\.6\.0 Header line 3 .*repeats a field/],
    ])('refuses %s and forwards nothing', async (_name, raw, reply) => {
      const r = await relayOne(mode, raw);
      expect(`${r.code} ${r.text}`).toMatch(reply);
      expect(r.text).toMatch(/\(tx [\w-]+\)$/);
    });

    it.each<[string, Buffer, boolean]>([
      ['LF line ends', Buffer.from(`From: Notify <${SENDER}>\nTo: a@example.org\nSubject: unix\n\nHello.\n`), false],
      ['a folded display name', lines(`From: =?utf-8?Q?J=C3=BCrgen?=`, ` Notify <${SENDER}>`, 'To: a@example.org', ...body), false],
      ['a 200 KB line with whitespace', lines(`From: ${SENDER}`, `X-Long: ${'word '.repeat(40_000)}end`, ...body), false],
      ['raw UTF-8 in Subject without SMTPUTF8', Buffer.from(`From: ${SENDER}\r\nSubject: Grüße\r\n\r\nHello.\r\n`, 'utf8'), false],
      ['a UTF-8 display name with SMTPUTF8', Buffer.from(`From: Jörg <${SENDER}>\r\nSubject: Grüße\r\n\r\nHello.\r\n`, 'utf8'), true],
      ['Sender and Resent-From naming the covered mailbox, Reply-To another', lines(`From: =?utf-8?Q?J=C3=BCrgen?= <${SENDER}>`, `Sender: ${SENDER}`, `Resent-From: <${SENDER}>`, `Reply-To: ${EVIL}`, ...body), false],
    ])('forwards %s with a header every parser reads alike', async (_name, raw, smtputf8) => {
      const r = await relayOne(mode, raw, { smtputf8 });
      expect(r.code, r.text).toBe(250);
      await expectReadAlike(r.received!, mode === 'on' ? 'multipart/signed' : undefined, smtputf8);
    });

    it('refuses a UTF-8 display name without SMTPUTF8 (554 5.6.0), and takes it with SMTPUTF8', async () => {
      const raw = Buffer.from(`From: Jörg <${SENDER}>\r\n\r\nHello.\r\n`, 'utf8');
      expect(await relayOne(mode, raw)).toMatchObject({ code: 554, text: expect.stringMatching(/^5\.6\.0 Header line 1 .*did not use SMTPUTF8/) });
      expect((await relayOne(mode, raw, { smtputf8: true })).code).toBe(250);
    });
  });

  describe('issue 15: the From check holds where no certificate lookup follows it', () => {
    const signedAlready = (from: string) =>
      lines(`From: ${from}`, 'To: a@example.org', 'Subject: signed by the sender', 'MIME-Version: 1.0',
        'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256; boundary="s1"', '',
        '--s1', 'Content-Type: text/plain', '', 'signed text', '--s1', 'Content-Type: application/pkcs7-signature', '', 'AAAA', '--s1--', '');

    it('SMIME_RELAY_SIGNING=off: an uncovered From is 550 5.7.1, a covered one is forwarded', async () => {
      const refused = await relayOne('off', lines(`From: ${EVIL}`, 'To: a@example.org', ...body));
      expect(refused).toMatchObject({ code: 550, text: expect.stringMatching(/^5\.7\.1 From <evil@example\.com> is not a mailbox this relay signs for; it signs for: notify@example\.test/) });
      const line = relays.off.logs.find((l) => l.msg === 'transaction' && String(l.reply).includes('<evil@example.com>'));
      expect(line).toMatchObject({ outcome: 'rejected_sender' });
      const ok = await relayOne('off', lines(`From: ${SENDER}`, 'To: a@example.org', ...body));
      expect(ok.code).toBe(250);
      await expectReadAlike(ok.received!, undefined);
    });

    it('an already signed message with an uncovered From is 550 5.7.1, not passed through', async () => {
      const refused = await relayOne('on', signedAlready(EVIL));
      expect(refused).toMatchObject({ code: 550, text: expect.stringMatching(/^5\.7\.1 From <evil@example\.com> is not a mailbox this relay signs for/) });
      // the same message from the covered mailbox passes, unchanged in its type
      const ok = await relayOne('on', signedAlready(SENDER));
      expect(ok.code).toBe(250);
      await expectReadAlike(ok.received!, 'multipart/signed');
      expect(relays.on.logs.some((l) => l.msg === 'transaction' && l.outcome === 'passed_protected')).toBe(true);
    });

    it('an already signed message with a display name naming another address is 550 5.7.1', async () => {
      const r = await relayOne('on', signedAlready(`"${EVIL}" <${SENDER}>`));
      expect(r).toMatchObject({ code: 550, text: expect.stringMatching(/^5\.7\.1 From header shows the address evil@example\.com/) });
    });

    it('an already signed message gets the canonical header too: LF line ends leave as CRLF', async () => {
      const raw = Buffer.from(signedAlready(SENDER).toString('latin1').replace(/\r\n/g, '\n'), 'latin1');
      const r = await relayOne('on', raw);
      expect(r.code).toBe(250);
      await expectReadAlike(r.received!, 'multipart/signed');
    });
  });

  it(`hostile header blocks over SMTP are refused, or read alike by every parser (${RUNS} generated messages)`, { timeout: 300_000 }, async () => {
    const tally = { forwarded: 0, refused: 0 };
    await fc.assert(
      fc.asyncProperty(hostileMessage, async (msg) => {
        const r = await relayOne(msg.signing, msg.raw, { smtputf8: msg.smtputf8 });
        if (!r.received) {
          tally.refused++;
          expect(`${r.code} ${r.text}`).toMatch(/^(550 5\.7\.1|554 5\.6\.0) /);
          expect(msg.benign, `a legitimate message was refused: ${r.text}`).toBe(false);
          return;
        }
        tally.forwarded++;
        await expectReadAlike(r.received, msg.signing === 'on' ? 'multipart/signed' : undefined, msg.smtputf8);
      }),
      { numRuns: RUNS },
    );
    expect(tally.forwarded, JSON.stringify(tally)).toBeGreaterThan(RUNS * 0.15);
    expect(tally.refused, JSON.stringify(tally)).toBeGreaterThan(RUNS * 0.4);
  });
});
