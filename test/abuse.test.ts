import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { RawClient, dataPayload, sendMessage, type Reply } from './support/client.js';
import { createTestPki, type Leaf, type TestPki } from './support/pki.js';
import { startTestRelay, type TestRelay } from './support/relay.js';
import { startSink, type Sink } from './support/sink.js';
import { verifyOpenssl } from './support/verify.js';

/*
 * Bad input gets a clear answer and the relay stays up. Every case ends by showing that a normal
 * client is still served: signed, forwarded, verifiable.
 */

const SENDER = 'alerts@example.test';

let pki: TestPki;
let leaf: Leaf;
let sink: Sink;
let relay: TestRelay;

beforeAll(async () => {
  pki = await createTestPki();
  leaf = await pki.issueLeaf('alerts', { emails: [SENDER] });
  sink = await startSink();
  relay = await startTestRelay({
    SMIME_RELAY_CERT: leaf.bundlePath,
    SMIME_RELAY_UPSTREAM: sink.url,
    SMIME_RELAY_MAX_RECIPIENTS: '3',
    SMIME_RELAY_TRANSACTION_TIMEOUT_MS: '1500',
  });
});

afterAll(async () => {
  await relay?.close();
  await sink?.close();
  await pki?.cleanup();
});

const message = (subject: string) => Buffer.from(`From: ${SENDER}\r\nTo: a@example.org\r\nSubject: ${subject}\r\n\r\nhello\r\n`);

async function expectServed(r: TestRelay = relay) {
  const before = sink.received.length;
  const result = await sendMessage(r.address.port, SENDER, ['next@example.org'], message('a normal client afterwards'));
  expect(result.final?.code, result.final?.text).toBe(250);
  const [got] = (await sink.waitFor(before + 1)).slice(before);
  expect((await verifyOpenssl(got!.raw, pki.rootCertPath)).ok).toBe(true);
}

/** Reads replies until the connection closes or `n` replies arrived. */
async function repliesUntilClosed(c: RawClient, n: number): Promise<Reply[]> {
  const out: Reply[] = [];
  while (out.length < n) {
    const r = await c.read(10_000);
    if (r.code === 0) break;
    out.push(r);
  }
  return out;
}

/** Waits until the relay has seen the closed connections go and greets again. */
async function untilGreeted(r: TestRelay) {
  for (let attempt = 0; attempt < 50; attempt++) {
    const c = await RawClient.open(r.address.port);
    const greeting = await c.read();
    c.close();
    await closed(c);
    if (greeting.code === 220) return;
    await new Promise((done) => setTimeout(done, 100));
  }
  throw new Error('the relay never greeted again');
}

const closed = (c: RawClient) => (c.closed ? Promise.resolve() : new Promise<void>((r) => c.socket.once('close', () => r())));

describe('abusive input: an error reply or a closed connection, and the relay stays up', () => {
  afterEach(async () => {
    await expectServed();
  });

  it('binary garbage instead of commands: only error replies, then the connection is closed', async () => {
    const c = await RawClient.open(relay.address.port);
    expect((await c.read()).code).toBe(220);
    const garbage = Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7919 + 13) % 256));
    const lines = garbage.toString('latin1').split(/\r?\n/).length + 12;
    c.write(garbage);
    c.write('\r\n'.repeat(12));
    const replies = await repliesUntilClosed(c, lines);
    expect(replies.length).toBeGreaterThan(0);
    for (const r of replies) expect(r.code, r.text).toBeGreaterThanOrEqual(400);
    await closed(c);
  });

  it('NUL bytes in commands and addresses are refused', async () => {
    const c = await RawClient.open(relay.address.port);
    try {
      await c.read();
      expect((await c.command('EHLO client.test')).code).toBe(250);
      expect((await c.command(`MAIL FROM:<ale\0rts@example.test>`)).code).toBeGreaterThanOrEqual(500);
      expect((await c.command('NO\0OP')).code).toBeGreaterThanOrEqual(500);
    } finally {
      c.close();
    }
  });

  it('a 100 KB command line gets an error and the connection is closed', async () => {
    const c = await RawClient.open(relay.address.port);
    await c.read();
    c.write(`EHLO ${'a'.repeat(100 * 1024)}\r\n`);
    const replies = await repliesUntilClosed(c, 2);
    expect(replies.length).toBeGreaterThan(0);
    for (const r of replies) expect(r.code, r.text).toBeGreaterThanOrEqual(400);
    await closed(c);
  });

  it('commands out of order get 503: DATA or RCPT before MAIL, MAIL twice', async () => {
    const c = await RawClient.open(relay.address.port);
    try {
      await c.read();
      expect((await c.command('EHLO client.test')).code).toBe(250);
      expect((await c.command('DATA')).code).toBe(503);
      expect((await c.command('RCPT TO:<a@example.org>')).code).toBe(503);
      expect((await c.command(`MAIL FROM:<${SENDER}>`)).code).toBe(250);
      expect((await c.command(`MAIL FROM:<${SENDER}>`)).code).toBe(503);
      expect((await c.command('DATA')).code).toBe(503);
    } finally {
      c.close();
    }
  });
});

describe('limits on a message', () => {
  it('one recipient over SMIME_RELAY_MAX_RECIPIENTS gets 452 4.5.3; the message goes to the ones accepted', async () => {
    const before = sink.received.length;
    const rcpts = ['r1@example.org', 'r2@example.org', 'R1@example.org', 'r3@example.org', 'r4@example.org'];
    const result = await sendMessage(relay.address.port, SENDER, rcpts, message('many recipients'));
    // A repeated address does not count against the limit.
    expect(result.rcptTo.map((r) => r.code)).toEqual([250, 250, 250, 250, 452]);
    expect(result.rcptTo[4]!.text).toMatch(/^4\.5\.3 Too many recipients: at most 3 per message; send the others in another transaction \(tx [\w-]+\)$/);
    expect(result.final?.code).toBe(250);
    const [got] = (await sink.waitFor(before + 1)).slice(before);
    expect(got!.to.map((a) => a.toLowerCase())).toEqual(['r1@example.org', 'r2@example.org', 'r3@example.org']);
  });

  it('a MIME bomb (multipart nested 100 deep) gets 554 5.6.0 and the next message is served', async () => {
    let body = 'innermost\r\n';
    for (let d = 100; d > 0; d--) {
      body = `Content-Type: multipart/mixed; boundary="b${d}"\r\n\r\n--b${d}\r\n${body}\r\n--b${d}--\r\n`;
    }
    const bomb = Buffer.from(`From: ${SENDER}\r\nSubject: bomb\r\nMIME-Version: 1.0\r\n${body}`);
    const before = sink.received.length;
    const result = await sendMessage(relay.address.port, SENDER, ['a@example.org'], bomb);
    expect(result.final?.code, result.final?.text).toBe(554);
    expect(result.final?.text).toMatch(/^5\.6\.0 /);
    expect(sink.received.length).toBe(before);
    await expectServed();
  });
});

describe('slow clients hit the transaction deadline (SMIME_RELAY_TRANSACTION_TIMEOUT_MS)', () => {
  it('slowloris: one byte at a time during DATA gets 421 4.4.2, the connection is closed, nothing is forwarded', async () => {
    const before = sink.received.length;
    const c = await RawClient.open(relay.address.port);
    await c.read();
    await c.command('EHLO slow.test');
    expect((await c.command(`MAIL FROM:<${SENDER}>`)).code).toBe(250);
    expect((await c.command('RCPT TO:<a@example.org>')).code).toBe(250);
    expect((await c.command('DATA')).code).toBe(354);
    const payload = dataPayload(message('slowloris'));
    let i = 0;
    // Each byte restarts smtp-server's idle timer; only the transaction deadline ends this.
    const drip = setInterval(() => {
      if (!c.closed && i < payload.length - 5) c.write(payload.subarray(i, ++i));
    }, 100);
    try {
      const reply = await c.read(20_000);
      expect(reply.code).toBe(421);
      expect(reply.text).toMatch(/^4\.4\.2 Message not received within 1500 ms; closing connection, try again \(tx [\w-]+\)$/);
      await closed(c);
    } finally {
      clearInterval(drip);
      c.close();
    }
    expect(i).toBeLessThan(payload.length - 5);
    expect(sink.received.length).toBe(before);
    expect(relay.logs.some((l) => l.level === 40 && /did not finish its message in time/.test(String(l.msg)))).toBe(true);
    await expectServed();
  });

  it('a client that keeps a connection busy with NOOPs but never sends a message is closed too', async () => {
    const c = await RawClient.open(relay.address.port);
    try {
      await c.read();
      await c.command('EHLO noop.test');
      let last: Reply = { code: 250, text: '' };
      for (let n = 0; n < 200 && last.code === 250; n++) {
        await new Promise((r) => setTimeout(r, 50));
        last = await c.command('NOOP');
      }
      expect(last.code).toBe(421);
      expect(last.text).toMatch(/^4\.4\.2 /);
      await closed(c);
    } finally {
      c.close();
    }
  });
});

describe('connection caps and idle connections', () => {
  let capped: TestRelay;
  beforeAll(async () => {
    capped = await startTestRelay({
      SMIME_RELAY_CERT: leaf.bundlePath,
      SMIME_RELAY_UPSTREAM: sink.url,
      SMIME_RELAY_MAX_CLIENTS: '4',
      SMIME_RELAY_MAX_CLIENTS_PER_IP: '2',
      SMIME_RELAY_IDLE_TIMEOUT_MS: '3000',
    });
  });
  afterAll(async () => {
    await capped?.close();
  });

  it('SMIME_RELAY_MAX_CLIENTS_PER_IP: 421 4.7.0 for one connection too many from an address; SMIME_RELAY_MAX_CLIENTS: 421 past the total', async () => {
    const open: RawClient[] = [];
    const greet = async (localAddress: string) => {
      const c = await RawClient.open(capped.address.port, '127.0.0.1', { localAddress });
      open.push(c);
      return c.read();
    };
    try {
      expect((await greet('127.0.0.1')).code).toBe(220);
      expect((await greet('127.0.0.1')).code).toBe(220);
      const third = await greet('127.0.0.1');
      expect(third.code).toBe(421);
      expect(third.text).toMatch(/^4\.7\.0 Too many connections from 127\.0\.0\.1 \(at most 2\); try again later \(tx [\w-]+\)$/);
      expect((await greet('127.0.0.2')).code).toBe(220);
      expect((await greet('127.0.0.2')).code).toBe(220);
      // Four are open now: the fifth, from a third address, is over the total.
      expect((await greet('127.0.0.3')).code).toBe(421);
    } finally {
      for (const c of open) c.close();
    }
    await Promise.all(open.map(closed));
    await untilGreeted(capped);
    await expectServed(capped);
  });

  it('SMIME_RELAY_IDLE_TIMEOUT_MS: a connection that says nothing is closed with 421', async () => {
    const c = await RawClient.open(capped.address.port);
    try {
      expect((await c.read()).code).toBe(220);
      const idle = await c.read(20_000);
      expect(idle.code).toBe(421);
      await closed(c);
    } finally {
      c.close();
    }
    await expectServed(capped);
  });
});
