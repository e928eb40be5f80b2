import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RawClient } from './support/client.js';
import { createTestPki, type Leaf, type TestPki } from './support/pki.js';
import { startTestRelay, type TestRelay } from './support/relay.js';
import { startSink, type Sink } from './support/sink.js';

/*
 * SMTP smuggling (SEC Consult, December 2023): an end-of-data sequence that one server accepts
 * and the next does not lets a client hide a second transaction inside a message. Only
 * CRLF.CRLF ends DATA (RFC 5321 §4.1.1.4). Each payload below tries to end the message early and
 * start a second one from a spoofed sender; the proof is that the upstream receives exactly one
 * message, from the real envelope, with only CRLF line endings (so nothing downstream can be
 * fooled either), and that the client sees exactly one reply to its one DATA.
 */

const SENDER = 'alerts@example.test';
const SPOOFED = 'ceo@example.test';
const VICTIM = 'victim@example.org';

const payloads: [string, string][] = [
  ['LF.LF', '\n.\n'],
  ['LF.CRLF', '\n.\r\n'],
  ['CR.CRLF', '\r.\r\n'],
  ['CRLF.CR', '\r\n.\r'],
  ['CRLF.LF', '\r\n.\n'],
  ['CR.CR', '\r.\r'],
];

let pki: TestPki;
let leaf: Leaf;
let sink: Sink;
const relays: Record<'on' | 'off', TestRelay> = {} as never;

beforeAll(async () => {
  pki = await createTestPki();
  leaf = await pki.issueLeaf('alerts', { emails: [SENDER, SPOOFED] });
  sink = await startSink();
  for (const signing of ['on', 'off'] as const) {
    relays[signing] = await startTestRelay({ SMIME_RELAY_CERT: leaf.bundlePath, SMIME_RELAY_UPSTREAM: sink.url, SMIME_RELAY_SIGNING: signing });
  }
});

afterAll(async () => {
  for (const r of Object.values(relays)) await r?.close();
  await sink?.close();
  await pki?.cleanup();
});

describe.each(['on', 'off'] as const)('signing %s', (signing) => {
  it.each(payloads)('%s inside DATA does not end the message or start a second one', async (_name, eod) => {
    const before = sink.received.length;
    const smuggled =
      `MAIL FROM:<${SPOOFED}>\r\nRCPT TO:<${VICTIM}>\r\nDATA\r\n` +
      `From: ${SPOOFED}\r\nTo: ${VICTIM}\r\nSubject: smuggled\r\n\r\nwire the money\r\n`;
    const data =
      `From: ${SENDER}\r\nTo: a@example.org\r\nSubject: smuggling ${JSON.stringify(eod)}\r\n\r\nfirst line\r\n` +
      `just text${eod}${smuggled}.\r\n`;

    const c = await RawClient.open(relays[signing].address.port);
    try {
      expect((await c.read()).code).toBe(220);
      expect((await c.command('EHLO client.test')).code).toBe(250);
      expect((await c.command(`MAIL FROM:<${SENDER}>`)).code).toBe(250);
      expect((await c.command('RCPT TO:<a@example.org>')).code).toBe(250);
      expect((await c.command('DATA')).code).toBe(354);
      c.write(data);
      const final = await c.read();
      expect(final.code, final.text).toBe(250);
      // Had the payload ended DATA, the smuggled MAIL/RCPT/DATA would have been answered before
      // this QUIT: the next reply would be 250, not 221.
      expect(await c.command('QUIT')).toMatchObject({ code: 221 });
    } finally {
      c.close();
    }

    const got = (await sink.waitFor(before + 1)).slice(before);
    expect(got).toHaveLength(1);
    expect(got[0]!.from).toBe(SENDER);
    expect(got[0]!.to).toEqual(['a@example.org']);
    const raw = got[0]!.raw.toString('latin1');
    expect(/\r(?!\n)|(?<!\r)\n/.test(raw), 'bare CR or LF reached the upstream').toBe(false);
    // The would-be second message is still inside the first one, as text.
    expect(raw).toContain(`MAIL FROM:<${SPOOFED}>`);
    expect(sink.received.some((m) => m.to.includes(VICTIM))).toBe(false);
  });
});
