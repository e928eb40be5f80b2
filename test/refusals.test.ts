import { createServer, type AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RawClient, sendMessage, type Reply } from './support/client.js';
import { createTestPki, type Leaf, type TestPki } from './support/pki.js';
import { linesFor, startTestRelay, type TestRelay } from './support/relay.js';
import { startSink, type Sink } from './support/sink.js';

/*
 * Every refusal a client sees — at connect, MAIL FROM, RCPT TO and DATA — ends with a transaction
 * id, and the relay's log has a line with the same id that says why (issue 11, item 6). What the
 * upstream said comes back with its own enhanced status (item 7), and replies never name the
 * upstream's address, which the log line has (issue 10, item 9).
 */

const SENDER = 'alerts@example.test';
const message = Buffer.from(`From: ${SENDER}\r\nTo: ops@example.org\r\nSubject: refusals\r\n\r\nhello\r\n`);

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
    SMIME_RELAY_ALLOW: '127.0.0.1/32',
    SMIME_RELAY_MAX_RECIPIENTS: '1',
  });
});

afterAll(async () => {
  await relay?.close();
  await sink?.close();
  await pki?.cleanup();
});

/** The one log line (or the transaction line) with the reply's tx id. */
function lineFor(r: TestRelay, reply: Reply, msg?: string): Record<string, unknown> {
  expect(reply.text).toMatch(/ \(tx [\w-]+\)$/);
  const lines = linesFor(r, reply).filter((l) => msg === undefined || l.msg === msg);
  expect(lines, `log lines for "${reply.text}"`).toHaveLength(1);
  return lines[0]!;
}

describe('every refusal has a tx id and a log line with it', () => {
  it('at connect: a client outside SMIME_RELAY_ALLOW', async () => {
    const c = await RawClient.open(relay.address.port, '127.0.0.1', { localAddress: '127.0.0.2' });
    const refused = await c.read();
    c.close();
    expect(refused.code).toBe(554);
    expect(lineFor(relay, refused)).toMatchObject({ level: 40, client: '127.0.0.2', msg: 'connection refused: client address is not in SMIME_RELAY_ALLOW' });
  });

  it('at MAIL FROM: an envelope sender the relay does not sign for', async () => {
    const result = await sendMessage(relay.address.port, 'legacy-app@example.test', ['ops@example.org'], message);
    expect(result.mailFrom.code).toBe(550);
    expect(result.mailFrom.text).toMatch(/^5\.7\.1 Sender <legacy-app@example\.test> is not a mailbox this relay signs for/);
    expect(lineFor(relay, result.mailFrom)).toMatchObject({
      level: 40,
      msg: 'MAIL FROM refused',
      client: '127.0.0.1',
      mailFrom: 'legacy-app@example.test',
      reply: expect.stringMatching(/^550 5\.7\.1 Sender <legacy-app@example\.test>/),
    });
  });

  it('at RCPT TO: one recipient over SMIME_RELAY_MAX_RECIPIENTS', async () => {
    const result = await sendMessage(relay.address.port, SENDER, ['one@example.org', 'two@example.org'], message);
    expect(result.rcptTo[1]!.code).toBe(452);
    expect(lineFor(relay, result.rcptTo[1]!)).toMatchObject({ level: 40, msg: 'RCPT TO refused: too many recipients', rcptTo: 'two@example.org', limit: 1 });
    expect(result.final?.code).toBe(250);
  });

  it('at DATA: the upstream refused it with 550 5.7.1, which the client gets unchanged', async () => {
    sink.script = { data: () => ({ reply: 550, text: '5.7.1 Message rejected by policy' }) };
    try {
      const result = await sendMessage(relay.address.port, SENDER, ['ops@example.org'], message);
      expect(result.final?.code).toBe(550);
      expect(result.final?.text).toMatch(/^5\.7\.1 Upstream rejected the message: 550 5\.7\.1 Message rejected by policy \(tx [\w-]+\)$/);
      expect(lineFor(relay, result.final!, 'transaction')).toMatchObject({ level: 40, outcome: 'upstream_permfail' });
    } finally {
      sink.script = {};
    }
  });

  it('at DATA: an upstream 4xx keeps its status too', async () => {
    sink.script = { data: () => ({ reply: 452, text: '4.2.2 Mailbox full' }) };
    try {
      const result = await sendMessage(relay.address.port, SENDER, ['ops@example.org'], message);
      expect(result.final?.code).toBe(451);
      expect(result.final?.text).toMatch(/^4\.2\.2 Upstream did not accept the message \(452 4\.2\.2 Mailbox full\)/);
    } finally {
      sink.script = {};
    }
  });
});

describe('an unreachable upstream', () => {
  let down: TestRelay;
  let port: number;

  beforeAll(async () => {
    // A port that was free a moment ago: nothing listens there.
    const probe = createServer();
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', () => r()));
    port = (probe.address() as AddressInfo).port;
    await new Promise<void>((r) => probe.close(() => r()));
    down = await startTestRelay({ SMIME_RELAY_CERT: leaf.bundlePath, SMIME_RELAY_UPSTREAM: `smtp://127.0.0.1:${port}` });
  });

  afterAll(() => down?.close());

  it('gets 451 4.4.1 that names what happened but not where; the log line with the same tx id has the address', async () => {
    const result = await sendMessage(down.address.port, SENDER, ['ops@example.org'], message);
    expect(result.final?.code).toBe(451);
    expect(result.final?.text).toMatch(/^4\.4\.1 Upstream did not accept the message \(ESOCKET ECONNREFUSED\); try again later \(tx [\w-]+\)$/);
    expect(result.final?.text).not.toContain(String(port));
    const line = lineFor(down, result.final!, 'transaction');
    expect(line).toMatchObject({ outcome: 'upstream_tempfail' });
    expect(String(line.error)).toContain(`127.0.0.1:${port}`);
  });
});
