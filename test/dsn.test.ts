import { simpleParser } from 'mailparser';
import { pino } from 'pino';
import { Writable } from 'node:stream';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { RawClient, dataPayload, sendMessage } from './support/client.js';
import { createTestPki, type Leaf, type TestPki } from './support/pki.js';
import { startTestRelay, type TestRelay } from './support/relay.js';
import { startSink, type Received, type Sink } from './support/sink.js';
import { verifyOpenssl } from './support/verify.js';
import { RefusedRecipients } from '../src/upstream/refused-recipients.js';
import { SmtpUpstream } from '../src/upstream/smtp.js';
import { loadConfig } from '../src/config/load.js';

/*
 * Partial recipient rejection: the upstream takes the message for some recipients and refuses
 * others. The client gets 250 (the accepted copies are delivered; a 4xx would make it send them
 * again), and the refused recipients come back to the sender as an RFC 3464 DSN sent through the
 * upstream with a null envelope sender. Over LMTP each recipient gets its own reply instead.
 */

const SENDER = 'alerts@example.test';
const UNKNOWN = 'nobody@example.org';
const FULL = 'full@example.org';
const UNKNOWN_REPLY = `5.1.1 <${UNKNOWN}>: Recipient address rejected: User unknown in virtual mailbox table`;

let pki: TestPki;
let leaf: Leaf;
let sink: Sink;
let relay: TestRelay;

const refusing = () => {
  sink.script = {
    rcptTo: (a) =>
      a === UNKNOWN ? { reply: 550, text: UNKNOWN_REPLY } : a === FULL ? { reply: 452, text: '4.2.2 Mailbox full' } : 'accept',
  };
};

beforeAll(async () => {
  pki = await createTestPki();
  leaf = await pki.issueLeaf('alerts', { emails: [SENDER] });
  sink = await startSink();
  relay = await startTestRelay({ SMIME_RELAY_CERT: leaf.bundlePath, SMIME_RELAY_UPSTREAM: sink.url });
});

afterEach(() => {
  sink.script = {};
});

afterAll(async () => {
  await relay?.close();
  await sink?.close();
  await pki?.cleanup();
});

const original = (subject: string) =>
  Buffer.from(`From: Alerts <${SENDER}>\r\nTo: team@example.org\r\nSubject: ${subject}\r\nMessage-ID: <${subject.replace(/\W/g, '')}@example.test>\r\n\r\nThe body.\r\n`);

/** The part of a multipart/report whose Content-Type starts with `type`, as text. */
function part(raw: Buffer, type: string): string {
  const text = raw.toString('latin1');
  const boundary = /boundary="([^"]+)"/.exec(text)![1]!;
  const found = text.split(`--${boundary}`).find((p) => new RegExp(`^\\r\\n(?:[^\\r\\n]+\\r\\n)*Content-Type: ${type}`, 'i').test(p));
  expect(found, `no ${type} part`).toBeDefined();
  return found!;
}

describe('some recipients refused over SMTP: 250, and a DSN to the sender', () => {
  it('delivers to the accepted recipients and sends one RFC 3464 report naming each refused one with the upstream reply', async () => {
    refusing();
    const before = sink.received.length;
    const result = await sendMessage(relay.address.port, SENDER, ['ok@example.org', UNKNOWN, 'ok2@example.org', FULL], original('partial'));
    expect(result.rcptTo.map((r) => r.code)).toEqual([250, 250, 250, 250]);
    expect(result.final?.code, result.final?.text).toBe(250);

    const [delivered, dsn] = (await sink.waitFor(before + 2)).slice(before) as [Received, Received];
    expect(delivered.to).toEqual(['ok@example.org', 'ok2@example.org']);
    expect((await verifyOpenssl(delivered.raw, pki.rootCertPath)).ok).toBe(true);

    // RFC 5321 §4.5.5: a notification goes out with the null reverse-path, to the envelope sender.
    expect(dsn.from).toBe('');
    expect(dsn.to).toEqual([SENDER]);
    const raw = dsn.raw.toString('latin1');
    expect(raw).toMatch(/^Content-Type: multipart\/report; report-type=delivery-status; boundary="[^"]+"\r$/m);
    expect(raw).toMatch(/^Auto-Submitted: auto-replied\r$/m);
    expect(/(^|[^\r])\n/.test(raw)).toBe(false);

    const status = part(dsn.raw, 'message/delivery-status');
    expect(status).toMatch(/^Reporting-MTA: dns; \S+\r$/m);
    expect(status).toMatch(/^Arrival-Date: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d \+0000\r$/m);
    const blocks = status.split(/\r\n\r\n/).filter((b) => b.includes('Final-Recipient'));
    expect(blocks).toHaveLength(2);
    expect(blocks[0]).toContain(`Final-Recipient: rfc822; ${UNKNOWN}\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 ${UNKNOWN_REPLY}`);
    // A temporary refusal is reported too: the relay keeps no queue, so it does not retry.
    expect(blocks[1]).toContain(`Final-Recipient: rfc822; ${FULL}\r\nAction: failed\r\nStatus: 4.2.2\r\nDiagnostic-Code: smtp; 452 4.2.2 Mailbox full`);
    expect(status).not.toContain('ok@example.org');

    const human = part(dsn.raw, 'text/plain');
    expect(human).toContain(`<${UNKNOWN}>: 550 ${UNKNOWN_REPLY}`);
    expect(human).toContain('delivered to 2 recipient(s)');

    const headers = part(dsn.raw, 'text/rfc822-headers');
    expect(headers).toContain('Subject: partial');
    expect(headers).toContain('Message-ID: <partial@example.test>');
    expect(headers).not.toContain('The body.');

    // mailparser (what a mail client sees) reads it as a delivery report
    const parsed = await simpleParser(dsn.raw);
    expect(parsed.headers.get('content-type')).toMatchObject({ value: 'multipart/report', params: { 'report-type': 'delivery-status' } });

    const error = relay.logs.find((l) => l.level === 50 && /refused some recipients/.test(String(l.msg)));
    expect(error).toMatchObject({ mailFrom: SENDER, rejected: [{ recipient: UNKNOWN, code: 550 }, { recipient: FULL, code: 452 }] });
    expect(relay.logs.some((l) => l.msg === 'DSN sent')).toBe(true);
  });

  it('original headers with 8-bit bytes come back quoted-printable, so a 7-bit upstream takes the report', async () => {
    refusing();
    const before = sink.received.length;
    const raw = Buffer.from(`From: ${SENDER}\r\nSubject: Grüße\r\n\r\nbody\r\n`, 'utf8');
    expect((await sendMessage(relay.address.port, SENDER, ['ok@example.org', UNKNOWN], raw)).final?.code).toBe(250);
    const [, dsn] = (await sink.waitFor(before + 2)).slice(before) as [Received, Received];
    expect(/[^\x00-\x7f]/.test(dsn.raw.toString('latin1'))).toBe(false);
    const headers = part(dsn.raw, 'text/rfc822-headers');
    expect(headers).toContain('Content-Transfer-Encoding: quoted-printable');
    expect(headers).toContain('Subject: Gr=C3=BC=C3=9Fe');
  });

  it('when the DSN itself is refused the client still gets 250 and the refused recipients are in an error log line', async () => {
    sink.script = {
      mailFrom: (a) => (a === '' ? { reply: 550, text: '5.7.1 No bounces here' } : 'accept'),
      rcptTo: (a) => (a === UNKNOWN ? { reply: 550, text: UNKNOWN_REPLY } : 'accept'),
    };
    const before = sink.received.length;
    const result = await sendMessage(relay.address.port, SENDER, ['ok@example.org', UNKNOWN], original('dsn refused'));
    expect(result.final?.code).toBe(250);
    expect((await sink.waitFor(before + 1)).slice(before).map((m) => m.from)).toEqual([SENDER]);
    const line = relay.logs.find((l) => l.level === 50 && /only record/.test(String(l.msg)));
    expect(line).toMatchObject({ rejected: [{ recipient: UNKNOWN }] });
  });

  it('every recipient refused is still a 5xx to the client and no DSN (the client bounces it itself)', async () => {
    sink.script = { rcptTo: () => ({ reply: 550, text: UNKNOWN_REPLY }) };
    const before = sink.received.length;
    const result = await sendMessage(relay.address.port, SENDER, [UNKNOWN], original('all refused'));
    expect(result.final?.code).toBe(550);
    expect(sink.received.length).toBe(before);
  });
});

describe('no DSN for a DSN', () => {
  it('a message with a null envelope sender gets no report, only the error log line, and the hook still counts it', async () => {
    const { config } = loadConfig({ env: { SMIME_RELAY_UPSTREAM: sink.url } });
    const lines: Record<string, unknown>[] = [];
    const log = pino({ level: 'debug' }, new Writable({ write: (c: Buffer, _e, cb) => (lines.push(JSON.parse(c.toString())), cb()) }));
    const upstream = new SmtpUpstream({ target: config.upstream as never, timeoutMs: 5000, poolSize: 1, log });
    const counted: number[] = [];
    const refused = new RefusedRecipients({ upstream, onRefused: (n) => counted.push(n) });
    const before = sink.received.length;
    try {
      await refused.report(
        { id: 'tx1', envelope: { from: '', to: ['a@example.org', UNKNOWN] }, raw: original('bounce'), arrival: new Date() },
        { queueId: 'Q1', response: '250 ok', accepted: ['a@example.org'], rejected: [{ recipient: UNKNOWN, code: 550, response: `550 ${UNKNOWN_REPLY}` }] },
        log,
      );
    } finally {
      await upstream.close();
    }
    expect(sink.received.length).toBe(before);
    expect(counted).toEqual([1]);
    expect(lines.find((l) => l.level === 50)?.msg).toMatch(/null sender; no DSN is sent for a DSN/);
  });
});

describe('LMTP listener (SMIME_RELAY_LMTP=true): one reply per recipient', () => {
  let lmtp: TestRelay;
  beforeAll(async () => {
    lmtp = await startTestRelay({ SMIME_RELAY_CERT: leaf.bundlePath, SMIME_RELAY_UPSTREAM: sink.url, SMIME_RELAY_LMTP: 'true' });
  });
  afterAll(async () => {
    await lmtp?.close();
  });

  async function lmtpSend(rcpts: string[], raw: Buffer) {
    const c = await RawClient.open(lmtp.address.port);
    try {
      const greeting = await c.read();
      expect(greeting.text).toContain('LMTP');
      expect((await c.command('LHLO client.test')).code).toBe(250);
      expect((await c.command(`MAIL FROM:<${SENDER}>`)).code).toBe(250);
      for (const r of rcpts) expect((await c.command(`RCPT TO:<${r}>`)).code).toBe(250);
      expect((await c.command('DATA')).code).toBe(354);
      c.write(dataPayload(raw));
      const replies = [];
      for (const _ of rcpts) replies.push(await c.read());
      await c.command('QUIT');
      return replies;
    } finally {
      c.close();
    }
  }

  it("each recipient gets the upstream's answer for it, in RCPT order, and no DSN is sent", async () => {
    refusing();
    const before = sink.received.length;
    const replies = await lmtpSend(['ok@example.org', UNKNOWN, FULL, 'ok2@example.org'], original('lmtp'));
    expect(replies.map((r) => r.code)).toEqual([250, 550, 452, 250]);
    expect(replies[1]!.text).toMatch(new RegExp(`^5\\.1\\.1 Upstream refused <${UNKNOWN}>: 550 5\\.1\\.1 `));
    expect(replies[2]!.text).toMatch(/^4\.2\.2 Upstream refused <full@example\.org>: 452 4\.2\.2 Mailbox full/);
    const [delivered] = (await sink.waitFor(before + 1)).slice(before);
    expect(delivered!.to).toEqual(['ok@example.org', 'ok2@example.org']);
    expect((await verifyOpenssl(delivered!.raw, pki.rootCertPath)).ok).toBe(true);
    expect(sink.received.length).toBe(before + 1);
    expect(lmtp.logs.some((l) => l.level === 50 && /each gets its own LMTP reply/.test(String(l.msg)))).toBe(true);
  });

  it('a failure of the whole message is repeated for every recipient', async () => {
    sink.script = { data: () => ({ reply: 451, text: '4.3.0 Try later' }) };
    const replies = await lmtpSend(['a@example.org', 'b@example.org'], original('lmtp fail'));
    expect(replies.map((r) => r.code)).toEqual([451, 451]);
  });
});
