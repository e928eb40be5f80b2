import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RawClient, dataPayload, type Reply } from './support/client.js';
import { createTestPki, type Leaf, type TestPki } from './support/pki.js';
import { startTestRelay, type TestRelay } from './support/relay.js';
import { startSink, type Sink } from './support/sink.js';

const SENDER = 'alerts@example.test';
const message = Buffer.from(`From: ${SENDER}\r\nTo: ops@example.org\r\nSubject: via a proxy\r\n\r\nHello.\r\n`);

let pki: TestPki;
let leaf: Leaf;
let sink: Sink;

beforeAll(async () => {
  pki = await createTestPki();
  leaf = await pki.issueLeaf('alerts', { emails: [SENDER] });
  sink = await startSink();
});

afterAll(async () => {
  await sink?.close();
  await pki?.cleanup();
});

/** MAIL, RCPT, DATA on an open session; returns the final reply. */
async function sendOn(c: RawClient): Promise<Reply> {
  expect((await c.command(`MAIL FROM:<${SENDER}>`)).code).toBe(250);
  expect((await c.command('RCPT TO:<ops@example.org>')).code).toBe(250);
  expect((await c.command('DATA')).code).toBe(354);
  c.write(dataPayload(message));
  return c.read();
}

function transactionLine(relay: TestRelay, reply: Reply): Record<string, unknown> {
  const tx = /\(tx ([\w-]+)\)/.exec(reply.text)?.[1];
  expect(tx, reply.text).toBeTruthy();
  const line = relay.logs.find((l) => l.msg === 'transaction' && l.tx === tx);
  expect(line, `no transaction log line for tx ${tx}`).toBeDefined();
  return line!;
}

describe('PROXY protocol (SMIME_RELAY_PROXY_PROTOCOL=true, behind HAProxy send-proxy)', () => {
  let relay: TestRelay;

  beforeAll(async () => {
    relay = await startTestRelay({ SMIME_RELAY_CERT: leaf.bundlePath, SMIME_RELAY_UPSTREAM: sink.url, SMIME_RELAY_PROXY_PROTOCOL: 'true' });
  });

  afterAll(async () => {
    await relay?.close();
  });

  it('logs the client address from the PROXY v1 header, not the balancer address', async () => {
    const c = await RawClient.open(relay.address.port);
    try {
      c.write(`PROXY TCP4 203.0.113.7 127.0.0.1 5555 ${relay.address.port}\r\n`);
      expect((await c.read()).code).toBe(220);
      expect((await c.command('EHLO balancer.test')).code).toBe(250);
      const final = await sendOn(c);
      expect(final.code, final.text).toBe(250);
      expect(transactionLine(relay, final)).toMatchObject({ client: '203.0.113.7', outcome: 'signed' });
    } finally {
      c.close();
    }
  });

  it('does not start an SMTP session for a connection without the header', async () => {
    const c = await RawClient.open(relay.address.port);
    try {
      c.write('EHLO direct.test\r\n');
      // Nothing SMTP comes back: the first line is not a PROXY header, so the connection is dropped.
      expect(await c.read(10_000)).toEqual({ code: 0, text: 'connection closed' });
    } finally {
      c.close();
    }
  });
});

describe('XFORWARD (Postfix smtp_send_xforward_command=yes)', () => {
  let relay: TestRelay;

  beforeAll(async () => {
    relay = await startTestRelay({ SMIME_RELAY_CERT: leaf.bundlePath, SMIME_RELAY_UPSTREAM: sink.url });
  });

  afterAll(async () => {
    await relay?.close();
  });

  it('is advertised, accepted before MAIL, and the log shows the original client next to the real peer', async () => {
    const c = await RawClient.open(relay.address.port);
    try {
      expect((await c.read()).code).toBe(220);
      const ehlo = await c.command('EHLO postfix.test');
      expect(ehlo.text).toMatch(/^XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE$/m);
      expect(await c.command('XFORWARD ADDR=198.51.100.9 NAME=app.example')).toMatchObject({ code: 250 });
      const final = await sendOn(c);
      expect(final.code, final.text).toBe(250);
      expect(transactionLine(relay, final)).toMatchObject({
        client: '198.51.100.9',
        clientName: 'app.example',
        peer: '127.0.0.1',
        mailFrom: SENDER,
        outcome: 'signed',
      });
    } finally {
      c.close();
    }
  });

  it('is refused in the middle of a transaction, as Postfix never sends it there', async () => {
    const c = await RawClient.open(relay.address.port);
    try {
      expect((await c.read()).code).toBe(220);
      await c.command('EHLO postfix.test');
      expect((await c.command(`MAIL FROM:<${SENDER}>`)).code).toBe(250);
      expect((await c.command('XFORWARD ADDR=198.51.100.10')).code).toBe(503);
    } finally {
      c.close();
    }
  });

  it('without XFORWARD, the log shows the connecting address and no peer field', async () => {
    const c = await RawClient.open(relay.address.port);
    try {
      expect((await c.read()).code).toBe(220);
      await c.command('EHLO direct.test');
      const final = await sendOn(c);
      expect(final.code, final.text).toBe(250);
      const line = transactionLine(relay, final);
      expect(line.client).toBe('127.0.0.1');
      expect(line).not.toHaveProperty('peer');
    } finally {
      c.close();
    }
  });
});
