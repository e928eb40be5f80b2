import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RawClient, dataPayload, type Reply } from './support/client.js';
import { createTestPki, type Leaf, type TestPki } from './support/pki.js';
import { loadConfig } from '../src/config/load.js';
import { linesFor, startTestRelay, type TestRelay } from './support/relay.js';
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

/** A refusal carries a tx id, and the relay logged one line with that id. */
function refusalLine(relay: TestRelay, reply: Reply): Record<string, unknown> {
  const lines = linesFor(relay, reply);
  expect(lines, `no log line for the tx id of "${reply.text}"`).toHaveLength(1);
  return lines[0]!;
}

function transactionLine(relay: TestRelay, reply: Reply): Record<string, unknown> {
  const tx = /\(tx ([\w-]+)\)/.exec(reply.text)?.[1];
  expect(tx, reply.text).toBeTruthy();
  const line = relay.logs.find((l) => l.msg === 'transaction' && l.tx === tx);
  expect(line, `no transaction log line for tx ${tx}`).toBeDefined();
  return line!;
}

describe('SMIME_RELAY_PROXY_PROTOCOL takes the networks of the load balancers', () => {
  const parse = (value: string) => loadConfig({ env: { SMIME_RELAY_PROXY_PROTOCOL: value } }).config.proxyProtocol;

  it('parses CIDR lists; off and false (the old default) mean no PROXY headers', () => {
    expect(parse('10.0.0.5/32, 2001:db8::/64')).toEqual(['10.0.0.5/32', '2001:db8::/64']);
    expect(parse('false')).toEqual([]);
    expect(parse('off')).toEqual([]);
    expect(loadConfig({ env: {} }).config.proxyProtocol).toBeUndefined();
  });

  it('refuses the old value true at start, showing the new form', () => {
    expect(() => parse('true')).toThrow(/SMIME_RELAY_PROXY_PROTOCOL .*would trust a PROXY header from any client.*SMIME_RELAY_PROXY_PROTOCOL=10\.0\.0\.5\/32/);
    expect(() => parse('10.0.0.300/32')).toThrow(/SMIME_RELAY_PROXY_PROTOCOL .*'10\.0\.0\.300\/32' is not an IP address/);
  });
});

describe('PROXY protocol from a listed balancer (127.0.0.1/32), behind HAProxy send-proxy', () => {
  let relay: TestRelay;

  beforeAll(async () => {
    relay = await startTestRelay({
      SMIME_RELAY_CERT: leaf.bundlePath,
      SMIME_RELAY_UPSTREAM: sink.url,
      SMIME_RELAY_PROXY_PROTOCOL: '127.0.0.1/32',
      // Judged on the address in the header: 203.0.113.0/24 behind the balancer, and other
      // loopback hosts that connect directly.
      SMIME_RELAY_ALLOW: '203.0.113.0/24,127.0.0.2/32',
      SMIME_RELAY_MAX_CLIENTS_PER_IP: '2',
    });
  });

  afterAll(async () => {
    await relay?.close();
  });

  /** A connection through the balancer on behalf of `client`; returns it and its first reply. */
  async function via(client: string): Promise<[RawClient, Reply]> {
    const c = await RawClient.open(relay.address.port);
    c.write(`PROXY TCP4 ${client} 127.0.0.1 5555 ${relay.address.port}\r\n`);
    return [c, await c.read()];
  }

  it('logs the client address from the PROXY v1 header, not the balancer address', async () => {
    const [c, greeting] = await via('203.0.113.7');
    try {
      expect(greeting.code).toBe(220);
      expect((await c.command('EHLO balancer.test')).code).toBe(250);
      const final = await sendOn(c);
      expect(final.code, final.text).toBe(250);
      expect(transactionLine(relay, final)).toMatchObject({ client: '203.0.113.7', outcome: 'signed' });
    } finally {
      c.close();
    }
  });

  it('SMIME_RELAY_ALLOW applies to the address in the header: 554 5.7.1 with a tx id, and a log line with it', async () => {
    const [c, refused] = await via('198.51.100.9');
    c.close();
    expect(refused.code).toBe(554);
    expect(refused.text).toMatch(/^5\.7\.1 Client address 198\.51\.100\.9 is not in SMIME_RELAY_ALLOW.* \(tx [\w-]+\)$/);
    expect(refusalLine(relay, refused)).toMatchObject({ client: '198.51.100.9', msg: 'connection refused: client address is not in SMIME_RELAY_ALLOW' });
  });

  it('the per-address cap counts the clients in the headers, not the balancer they all come through', async () => {
    const open: RawClient[] = [];
    try {
      for (const client of ['203.0.113.1', '203.0.113.2', '203.0.113.3', '203.0.113.1']) {
        const [c, greeting] = await via(client);
        open.push(c);
        expect(greeting.code, `${client}: ${greeting.text}`).toBe(220);
      }
      const [c, third] = await via('203.0.113.1');
      open.push(c);
      expect(third.code).toBe(421);
      expect(third.text).toMatch(/^4\.7\.0 Too many connections from 203\.0\.113\.1 \(at most 2\)/);
      expect(refusalLine(relay, third)).toMatchObject({ client: '203.0.113.1' });
    } finally {
      for (const c of open) c.close();
    }
  });

  it('does not start an SMTP session for a connection from the balancer without the header', async () => {
    const c = await RawClient.open(relay.address.port);
    try {
      c.write('EHLO direct.test\r\n');
      // Nothing SMTP comes back: the first line is not a PROXY header, so the connection is dropped.
      expect(await c.read(10_000)).toEqual({ code: 0, text: 'connection closed' });
    } finally {
      c.close();
    }
  });

  it('anyone else who sends a PROXY header is disconnected with 421 4.7.0, and the log names the real peer', async () => {
    const c = await RawClient.open(relay.address.port, '127.0.0.1', { localAddress: '127.0.0.2' });
    expect((await c.read()).code).toBe(220);
    // A direct client claiming an allow-listed address (and loopback, for AUTH in clear).
    c.write(`PROXY TCP4 127.0.0.1 127.0.0.1 5555 ${relay.address.port}\r\n`);
    const replies = await c.untilClosed(10_000);
    expect(replies).toHaveLength(1);
    expect(replies[0]!.code).toBe(421);
    expect(replies[0]!.text).toMatch(/^4\.7\.0 PROXY header not accepted from 127\.0\.0\.2: it is not a load balancer listed in SMIME_RELAY_PROXY_PROTOCOL/);
    expect(refusalLine(relay, replies[0]!)).toMatchObject({ client: '127.0.0.2', level: 40 });
  });

  it('... also when it sends the header at once, before the greeting, as HAProxy does', async () => {
    const c = await RawClient.open(relay.address.port, '127.0.0.1', { localAddress: '127.0.0.2' });
    c.write(`PROXY TCP4 203.0.113.7 127.0.0.1 5555 ${relay.address.port}\r\nEHLO spoof.test\r\n`);
    const replies = await c.untilClosed(10_000);
    const refused = replies.find((r) => r.code === 421);
    expect(refused?.text, JSON.stringify(replies)).toMatch(/^4\.7\.0 PROXY header not accepted from 127\.0\.0\.2/);
    expect(replies.some((r) => r.code === 250), 'EHLO after the header must not be answered').toBe(false);
    expect(refusalLine(relay, refused!)).toMatchObject({ client: '127.0.0.2' });
  });

  it('a client outside the balancer networks that speaks plain SMTP is served as itself', async () => {
    const c = await RawClient.open(relay.address.port, '127.0.0.1', { localAddress: '127.0.0.2' });
    try {
      expect((await c.read()).code).toBe(220);
      await c.command('EHLO direct.test');
      const final = await sendOn(c);
      expect(final.code, final.text).toBe(250);
      expect(transactionLine(relay, final)).toMatchObject({ client: '127.0.0.2', outcome: 'signed' });
    } finally {
      c.close();
    }
  });
});

describe('XFORWARD from loopback, the default SMIME_RELAY_XFORWARD_HOSTS (Postfix smtp_send_xforward_command=yes)', () => {
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

describe('XFORWARD from a client outside SMIME_RELAY_XFORWARD_HOSTS', () => {
  let relay: TestRelay;

  beforeAll(async () => {
    relay = await startTestRelay({ SMIME_RELAY_CERT: leaf.bundlePath, SMIME_RELAY_UPSTREAM: sink.url, SMIME_RELAY_XFORWARD_HOSTS: '127.0.0.1/32' });
  });

  afterAll(async () => {
    await relay?.close();
  });

  it('is not offered, gets 550 5.7.0 with a tx id, and cannot change what the log says', async () => {
    const c = await RawClient.open(relay.address.port, '127.0.0.1', { localAddress: '127.0.0.2' });
    try {
      expect((await c.read()).code).toBe(220);
      const ehlo = await c.command('EHLO forger.test');
      expect(ehlo.code).toBe(250);
      expect(ehlo.text).not.toContain('XFORWARD');
      const refused = await c.command('XFORWARD ADDR=198.51.100.9 NAME=trusted.example');
      expect(refused.code).toBe(550);
      expect(refused.text).toMatch(/^5\.7\.0 XFORWARD is not accepted from 127\.0\.0\.2; only from SMIME_RELAY_XFORWARD_HOSTS \(tx [\w-]+\)$/);
      expect(refusalLine(relay, refused)).toMatchObject({ client: '127.0.0.2', msg: 'refused XFORWARD from a client not listed in SMIME_RELAY_XFORWARD_HOSTS' });
      const final = await sendOn(c);
      expect(final.code, final.text).toBe(250);
      const line = transactionLine(relay, final);
      expect(line.client).toBe('127.0.0.2');
      expect(line).not.toHaveProperty('peer');
      expect(line.clientName).not.toBe('trusted.example');
    } finally {
      c.close();
    }
  });

  it('a listed host still has it', async () => {
    const c = await RawClient.open(relay.address.port);
    try {
      expect((await c.read()).code).toBe(220);
      expect((await c.command('EHLO postfix.test')).text).toMatch(/^XFORWARD /m);
      expect((await c.command('XFORWARD ADDR=198.51.100.9')).code).toBe(250);
    } finally {
      c.close();
    }
  });

  it('none offers it to nobody', () => {
    expect(loadConfig({ env: { SMIME_RELAY_XFORWARD_HOSTS: 'none' } }).config.xforwardHosts).toEqual([]);
    expect(loadConfig({ env: {} }).config.xforwardHosts).toEqual(['127.0.0.0/8', '::1/128']);
  });
});
