import { simpleParser, type ParsedMail } from 'mailparser';
import MailComposer from 'nodemailer/lib/mail-composer';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sendMessage } from './support/client.js';
import { createTestPki, type Leaf, type TestPki } from './support/pki.js';
import { startTestRelay, type TestRelay } from './support/relay.js';
import { startSink, type Sink } from './support/sink.js';
import { splitSigned, verifyOpenssl } from './support/verify.js';

const SENDER = 'alerts@example.test';

let pki: TestPki;
let leaf: Leaf;
let sink: Sink;
let relay: TestRelay;

beforeAll(async () => {
  pki = await createTestPki();
  leaf = await pki.issueLeaf('alerts', { emails: [SENDER] });
  sink = await startSink();
  relay = await startTestRelay({ SMIME_RELAY_CERT: leaf.bundlePath, SMIME_RELAY_UPSTREAM: sink.url });
});

afterAll(async () => {
  await relay?.close();
  await sink?.close();
  await pki?.cleanup();
});

/** Outer header lines (unfolded raw text) that are not Content-* or MIME-Version, in order. */
function outerHeaders(raw: Buffer): string[] {
  const text = raw.toString('latin1').replace(/\r\n/g, '\n');
  const end = text.indexOf('\n\n');
  const block = end < 0 ? text : text.slice(0, end);
  return block
    .split(/\n(?![ \t])/)
    .filter((l) => l && !/^(content-[^:]*|mime-version):/i.test(l));
}

interface LeafPart {
  contentType: string;
  filename?: string;
  content: Buffer;
}

function leaves(mail: ParsedMail): LeafPart[] {
  const parts: LeafPart[] = [];
  if (mail.text !== undefined) parts.push({ contentType: 'text', content: Buffer.from(mail.text.replace(/\r\n/g, '\n')) });
  if (typeof mail.html === 'string') parts.push({ contentType: 'html', content: Buffer.from(mail.html.replace(/\r\n/g, '\n')) });
  for (const a of mail.attachments) {
    if (a.contentType === 'application/pkcs7-signature') continue;
    parts.push({ contentType: a.contentType, filename: a.filename, content: a.content });
  }
  return parts;
}

async function relayOne(raw: Buffer, to = ['someone@example.org']) {
  const before = sink.received.length;
  const result = await sendMessage(relay.address.port, SENDER, to, raw);
  expect(result.final?.code, result.final?.text).toBe(250);
  const [received] = (await sink.waitFor(before + 1)).slice(before);
  return { result, received: received! };
}

async function compose(mail: ConstructorParameters<typeof MailComposer>[0]): Promise<Buffer> {
  return new MailComposer(mail).compile().build();
}

const corpus: [string, () => Promise<Buffer> | Buffer][] = [
  ['plain 7bit text', () => Buffer.from(`From: Alerts <${SENDER}>\r\nTo: a@example.org\r\nSubject: plain\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nHello.\r\nSecond line.\r\n`)],
  ['UTF-8 8bit text without Content-Transfer-Encoding', () => Buffer.from(`From: ${SENDER}\r\nTo: a@example.org\r\nSubject: =?UTF-8?Q?gr=C3=BC=C3=9Fe?=\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nGrüße aus Köln — 東京\r\n`)],
  ['text+html alternative', () => compose({ from: SENDER, to: 'a@example.org', subject: 'alt', text: 'Your code is 123456', html: '<p>Your code is <b>123456</b> — ünïcode</p>' })],
  ['attachments', () => compose({
    from: SENDER, to: 'a@example.org', subject: 'invoice', text: 'See attached.',
    attachments: [
      { filename: 'invoice.pdf', content: Buffer.from(Array.from({ length: 5000 }, (_, i) => (i * 37) % 256)), contentType: 'application/pdf' },
      { filename: 'Rechnung-März.txt', content: 'Betrag: 12 €\n', contentType: 'text/plain; charset=utf-8' },
    ],
  })],
  ['a message without MIME headers', () => Buffer.from(`From: ${SENDER}\r\nTo: a@example.org\r\nSubject: bare\r\n\r\nNo MIME here.\r\n`)],
  ['trailing blanks and lines starting with "From " and "."', () => Buffer.from(`From: ${SENDER}\r\nTo: a@example.org\r\nSubject: tricky\r\n\r\nline with trailing spaces   \r\nline with a tab\t\r\nFrom here on it gets tricky\r\n.single dot line\r\n..two dots\r\n.\r\nend\r\n`)],
];

describe('the relay signs and forwards what apps send', () => {
  it.each(corpus)('%s: upstream gets a message that verifies, headers and parts unchanged', async (_name, make) => {
    const input = await make();
    const { result, received } = await relayOne(input);

    expect(result.final!.text).toMatch(/^2\.0\.0 Ok: queued as SINK\d+ \(tx [\w-]+\)$/);
    const verdict = await verifyOpenssl(received.raw, pki.rootCertPath);
    expect(verdict.ok, verdict.detail).toBe(true);

    const out = received.raw.toString('latin1');
    expect(out).toMatch(/^Content-Type: multipart\/signed; protocol="application\/pkcs7-signature"; micalg=sha-256;/m);
    expect(out.match(/^MIME-Version:/gim)).toHaveLength(1);
    expect(/[^\x00-\x7f]/.test(out)).toBe(false);
    expect(/(^|[^\r])\n/.test(out)).toBe(false);
    expect(outerHeaders(received.raw)).toEqual(outerHeaders(input));

    const [before, after] = await Promise.all([simpleParser(input), simpleParser(received.raw)]);
    expect(leaves(after)).toEqual(leaves(before));
    expect(after.subject).toBe(before.subject);
  });

  it('keeps the envelope as received, not as the headers say', async () => {
    const input = Buffer.from(`From: ${SENDER}\r\nTo: header-only@example.org\r\nSubject: bcc\r\n\r\nhi\r\n`);
    const { received } = await relayOne(input, ['first@example.org', 'bcc@example.net']);
    expect(received.from).toBe(SENDER);
    expect(received.to).toEqual(['first@example.org', 'bcc@example.net']);
  });

  it('logs "Signing email notification from ADDR" at info', async () => {
    await relayOne(Buffer.from(`From: ${SENDER}\r\nSubject: log\r\n\r\nhi\r\n`));
    expect(relay.logs.some((l) => l.level === 30 && l.msg === `Signing email notification from ${SENDER}`)).toBe(true);
  });

  it('accepts the From address in any letter case', async () => {
    const { received } = await relayOne(Buffer.from(`From: ALERTS@Example.TEST\r\nSubject: case\r\n\r\nhi\r\n`));
    expect((await verifyOpenssl(received.raw, pki.rootCertPath)).ok).toBe(true);
    expect(splitSigned(received.raw).content.toString()).toContain('hi');
  });
});

describe('refusals name the problem, forward nothing, and the relay keeps serving', () => {
  const good = Buffer.from(`From: ${SENDER}\r\nTo: a@example.org\r\nSubject: next\r\n\r\nstill works\r\n`);

  async function expectNothingForwardedThenRecovery(run: () => Promise<void>) {
    const before = sink.received.length;
    await run();
    await new Promise((r) => setTimeout(r, 200));
    expect(sink.received.length).toBe(before);
    sink.script = {};
    const next = await sendMessage(relay.address.port, SENDER, ['a@example.org'], good);
    expect(next.final?.code).toBe(250);
  }

  it('a wrong envelope sender gets 550 5.7.1 at MAIL FROM, naming the address and the covered mailboxes', async () => {
    await expectNothingForwardedThenRecovery(async () => {
      const r = await sendMessage(relay.address.port, 'mallory@evil.test', ['a@example.org'], good);
      expect(r.mailFrom.code).toBe(550);
      expect(r.mailFrom.text).toMatch(/^5\.7\.1 .*<mallory@evil\.test>.*signs for: alerts@example\.test/);
    });
  });

  it('a From header that is not covered gets 550 5.7.1 after DATA', async () => {
    await expectNothingForwardedThenRecovery(async () => {
      const raw = Buffer.from(`From: ceo@example.test\r\nTo: a@example.org\r\nSubject: x\r\n\r\nhi\r\n`);
      const r = await sendMessage(relay.address.port, SENDER, ['a@example.org'], raw);
      expect(r.final?.code).toBe(550);
      expect(r.final?.text).toMatch(/^5\.7\.1 From <ceo@example\.test> is not a mailbox this relay signs for/);
    });
  });

  it('a From header with two mailboxes gets 550 5.7.1', async () => {
    await expectNothingForwardedThenRecovery(async () => {
      const raw = Buffer.from(`From: ${SENDER}, other@example.test\r\nSubject: x\r\n\r\nhi\r\n`);
      const r = await sendMessage(relay.address.port, SENDER, ['a@example.org'], raw);
      expect(r.final?.code).toBe(550);
      expect(r.final?.text).toMatch(/^5\.7\.1 From header names 2 addresses/);
    });
  });

  it('upstream answering 451 4.3.0 at DATA gives the client 451 with the upstream\'s 4.3.0', async () => {
    await expectNothingForwardedThenRecovery(async () => {
      sink.script = { data: () => ({ reply: 451, text: '4.3.0 try later' }) };
      const r = await sendMessage(relay.address.port, SENDER, ['a@example.org'], good);
      expect(r.final?.code).toBe(451);
      expect(r.final?.text).toMatch(/^4\.3\.0 /);
    });
  });

  it('upstream answering 550 at DATA gives the client a 5xx', async () => {
    await expectNothingForwardedThenRecovery(async () => {
      sink.script = { data: () => ({ reply: 550, text: '5.7.1 content rejected' }) };
      const r = await sendMessage(relay.address.port, SENDER, ['a@example.org'], good);
      expect(r.final?.code).toBe(550);
      expect(r.final?.text).toMatch(/^5\.7\.1 .*content rejected/);
    });
  });

  it('upstream refusing every recipient with 550 gives the client a 5xx', async () => {
    await expectNothingForwardedThenRecovery(async () => {
      sink.script = { rcptTo: () => ({ reply: 550, text: '5.1.1 no such user' }) };
      const r = await sendMessage(relay.address.port, SENDER, ['a@example.org', 'b@example.org'], good);
      expect(r.final?.code).toBe(550);
      expect(r.final?.text).toMatch(/^5\.1\.1 .*no such user/);
    });
  });

  it('an upstream that is down gives 451 4.4.x and never 250', async () => {
    const down = await startSink();
    const url = down.url;
    await down.close();
    const lonely = await startTestRelay({ SMIME_RELAY_CERT: leaf.bundlePath, SMIME_RELAY_UPSTREAM: url, SMIME_RELAY_UPSTREAM_TIMEOUT_MS: '5000' });
    try {
      const r = await sendMessage(lonely.address.port, SENDER, ['a@example.org'], good);
      expect(r.final?.code).toBe(451);
      expect(r.final?.text).toMatch(/^4\.4\.\d /);
      const again = await sendMessage(lonely.address.port, SENDER, ['a@example.org'], good);
      expect(again.final?.code).toBe(451);
    } finally {
      await lonely.close();
    }
  });

  it('a message over SMIME_RELAY_MAX_SIZE gets 552 5.3.4, by SIZE= and by bytes received', async () => {
    const small = await startTestRelay({ SMIME_RELAY_CERT: leaf.bundlePath, SMIME_RELAY_UPSTREAM: sink.url, SMIME_RELAY_MAX_SIZE: '10000' });
    try {
      const before = sink.received.length;
      const big = Buffer.from(`From: ${SENDER}\r\nSubject: big\r\n\r\n${'x'.repeat(70)}\r\n`.repeat(200));
      const bySize = await sendMessage(small.address.port, SENDER, ['a@example.org'], big, { mailParams: `SIZE=${big.length}` });
      expect(bySize.mailFrom.code).toBe(552);
      expect(bySize.mailFrom.text).toMatch(/^5\.3\.4 /);
      const byBytes = await sendMessage(small.address.port, SENDER, ['a@example.org'], big);
      expect(byBytes.final?.code).toBe(552);
      expect(byBytes.final?.text).toMatch(/^5\.3\.4 /);
      expect(sink.received.length).toBe(before);
      const ok = await sendMessage(small.address.port, SENDER, ['a@example.org'], good);
      expect(ok.final?.code).toBe(250);
    } finally {
      await small.close();
    }
  });
});
