import { simpleParser } from 'mailparser';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { messageFootprint } from '../src/memory/footprint.js';
import { draftSize } from '../src/mime/multipart-signed.js';
import { prepareMessage } from '../src/mime/prepare.js';
import { splitSigned, verifyOpenssl } from './support/verify.js';
import { RawClient, dataPayload, sendMessage, type Reply } from './support/client.js';
import { createTestPki, type Leaf, type TestPki } from './support/pki.js';
import { startTestRelay, type TestRelay } from './support/relay.js';
import { startSink, type Sink } from './support/sink.js';

const SENDER = 'alerts@example.test';
const KiB = 1024;

/** About `size` bytes of plain 7-bit text in ordinary lines. */
function message(size: number, subject = 'memory test'): Buffer {
  const head = `From: <${SENDER}>\r\nTo: <ops@example.org>\r\nSubject: ${subject}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n`;
  const line = 'The nightly export finished; the figures are below and in the attached report.\r\n';
  return Buffer.from(head + line.repeat(Math.max(1, Math.ceil((size - head.length) / line.length))), 'latin1');
}

/** One value from /metrics (a gauge or a labelled counter), as Prometheus reads it. */
async function metric(relay: TestRelay, name: string, labels = ''): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${relay.metricsAddress!.port}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name}${labels ? `{${labels}}` : ''} `));
  if (!line) throw new Error(`no ${name}{${labels}} in /metrics`);
  return Number(line.slice(line.lastIndexOf(' ') + 1));
}

async function until(what: string, check: () => Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`still not ${what} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** A client that has reserved room for a message of `size` (MAIL FROM SIZE=) and stopped at DATA. */
async function holdRoom(relay: TestRelay, size: number): Promise<RawClient> {
  const c = await RawClient.open(relay.address.port);
  await c.hello();
  expect((await c.command(`MAIL FROM:<${SENDER}> SIZE=${size}`)).code).toBe(250);
  expect((await c.command('RCPT TO:<ops@example.org>')).code).toBe(250);
  expect((await c.command('DATA')).code).toBe(354);
  return c;
}

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

// 256 KiB messages at most, and room for one of them being signed plus a little: a second large
// message does not fit while the first is in progress, a small notification does.
const MAX_SIZE = 256 * KiB;
const BUDGET = 1024 * KiB;
const LARGE = 200_000;

const startSmallBudgetRelay = (env: Record<string, string> = {}) =>
  startTestRelay({
    SMIME_RELAY_CERT: leaf.bundlePath,
    SMIME_RELAY_UPSTREAM: sink.url,
    SMIME_RELAY_MAX_SIZE: String(MAX_SIZE),
    SMIME_RELAY_MEMORY_BUDGET: String(BUDGET),
    SMIME_RELAY_METRICS: '127.0.0.1:0',
    ...env,
  });

describe('SMIME_RELAY_MEMORY_BUDGET: a message that does not fit waits, or gets 452 4.3.1; none is lost', () => {
  let relay: TestRelay;
  const clients: RawClient[] = [];

  beforeAll(async () => {
    expect(messageFootprint(MAX_SIZE, true)).toBeLessThanOrEqual(BUDGET);
    expect(2 * messageFootprint(LARGE, true)).toBeGreaterThan(BUDGET);
    relay = await startSmallBudgetRelay();
  });

  afterAll(async () => {
    for (const c of clients) c.close();
    await relay?.close();
  });

  it('a MAIL FROM whose SIZE= does not fit waits, holding nothing, while a small message goes ahead; then both are delivered', async () => {
    const before = sink.received.length;
    const first = await holdRoom(relay, LARGE);
    clients.push(first);
    expect(await metric(relay, 'smime_relay_memory_reserved_bytes')).toBe(messageFootprint(LARGE, true));

    const second = await RawClient.open(relay.address.port);
    clients.push(second);
    await second.hello();
    let mailFrom: Reply | undefined;
    const answered = second.command(`MAIL FROM:<${SENDER}> SIZE=${LARGE}`).then((r) => (mailFrom = r));
    await until('waiting', async () => (await metric(relay, 'smime_relay_memory_waiting_transactions')) === 1);
    // the waiting transaction holds nothing
    expect(await metric(relay, 'smime_relay_memory_reserved_bytes')).toBe(messageFootprint(LARGE, true));

    // a notification still fits, and does not queue behind the large message
    const small = await sendMessage(relay.address.port, SENDER, ['ops@example.org'], message(2 * KiB, 'small'), { mailParams: 'SIZE=2048' });
    expect(small.final?.code, small.final?.text).toBe(250);
    expect(mailFrom).toBeUndefined();

    first.write(dataPayload(message(LARGE, 'first')));
    expect((await first.read()).code).toBe(250);
    await answered;
    expect(mailFrom?.code, mailFrom?.text).toBe(250);
    expect((await second.command('RCPT TO:<ops@example.org>')).code).toBe(250);
    expect((await second.command('DATA')).code).toBe(354);
    second.write(dataPayload(message(LARGE, 'second')));
    expect((await second.read()).code).toBe(250);

    const got = (await sink.waitFor(before + 3)).slice(before);
    expect(got.map((m) => /^Subject: (\w+)/m.exec(m.raw.toString('latin1'))?.[1])).toEqual(['small', 'first', 'second']);
    await until('released', async () => (await metric(relay, 'smime_relay_memory_reserved_bytes')) === 0);
  });

  it('without SIZE=, a message that outgrows the room left gets 452 4.3.1 at the end of DATA and is not forwarded', async () => {
    const before = sink.received.length;
    const rejectedBefore = await metric(relay, 'smime_relay_messages_total', 'outcome="rejected_memory"');
    const first = await holdRoom(relay, LARGE);
    clients.push(first);

    const refused = await sendMessage(relay.address.port, SENDER, ['ops@example.org'], message(LARGE, 'unsized'));
    expect(refused.final?.code, refused.final?.text).toBe(452);
    expect(refused.final?.text).toMatch(/^4\.3\.1 Mail system full: .*try again later \(tx \S+\)$/);
    expect(await metric(relay, 'smime_relay_messages_total', 'outcome="rejected_memory"')).toBe(rejectedBefore + 1);
    const line = relay.logs.find((l) => l.msg === 'transaction' && l.outcome === 'rejected_memory');
    expect(line?.reply).toMatch(/^452 4\.3\.1/);

    first.write(dataPayload(message(LARGE, 'first')));
    expect((await first.read()).code).toBe(250);
    const got = (await sink.waitFor(before + 1)).slice(before);
    expect(got).toHaveLength(1);
    await new Promise((r) => setTimeout(r, 200));
    expect(sink.received.length).toBe(before + 1);
    await until('released', async () => (await metric(relay, 'smime_relay_memory_reserved_bytes')) === 0);
  });

  it('a message whose signed copy needs more than was estimated gets 452 4.3.1 if the room is gone, and is not forwarded', async () => {
    // German with many umlauts stays quoted-printable, which makes it nearly twice its size: more
    // than the estimate reserved while it arrived (base64's 1.4 x)
    const line = 'Ärger über Öl: Füße, Bäume, Größe, Mühe.\r\n';
    const raw = Buffer.concat([
      Buffer.from(`From: <${SENDER}>\r\nTo: <ops@example.org>\r\nSubject: umlauts\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n`),
      Buffer.from(line.repeat(Math.ceil(200_000 / line.length)), 'utf8'),
    ]);
    const prepared = prepareMessage(raw);
    const estimate = messageFootprint(raw.length, true);
    const exact = raw.length + prepared.entity.held + draftSize(prepared);
    expect(exact).toBeGreaterThan(estimate + 16 * KiB);
    // another client holds just enough that the estimate fits and the exact size does not
    let declared = 0;
    while (messageFootprint(declared + 1000, true) <= BUDGET - (estimate + exact) / 2) declared += 1000;
    const before = sink.received.length;
    const other = await holdRoom(relay, declared);
    clients.push(other);
    const r = await sendMessage(relay.address.port, SENDER, ['ops@example.org'], raw);
    expect(r.final?.code, r.final?.text).toBe(452);
    expect(r.final?.text).toMatch(/^4\.3\.1 Mail system full: .*no room to sign this message now/);
    other.close();
    await until('released', async () => (await metric(relay, 'smime_relay_memory_reserved_bytes')) === 0);
    expect(sink.received.length).toBe(before);
  });

  it('a client that hangs up, holding room or waiting for it, leaves nothing reserved', async () => {
    const first = await holdRoom(relay, LARGE);
    const waiter = await RawClient.open(relay.address.port);
    await waiter.hello();
    waiter.write(`MAIL FROM:<${SENDER}> SIZE=${LARGE}\r\n`);
    await until('waiting', async () => (await metric(relay, 'smime_relay_memory_waiting_transactions')) === 1);
    waiter.close();
    await until('no longer waiting', async () => (await metric(relay, 'smime_relay_memory_waiting_transactions')) === 0);
    expect(await metric(relay, 'smime_relay_memory_reserved_bytes')).toBe(messageFootprint(LARGE, true));
    first.close();
    await until('released', async () => (await metric(relay, 'smime_relay_memory_reserved_bytes')) === 0);
  });
});

describe('SMIME_RELAY_MEMORY_BUDGET: the wait is bounded', () => {
  let relay: TestRelay;

  beforeAll(async () => {
    // the wait ends at half the idle timeout: the client hears 452, not an idle-timeout 421
    relay = await startSmallBudgetRelay({ SMIME_RELAY_IDLE_TIMEOUT_MS: '3000' });
  });

  afterAll(async () => {
    await relay?.close();
  });

  it('a MAIL FROM that found no room in its wait gets 452 4.3.1, counted as rejected_memory', async () => {
    const first = await holdRoom(relay, LARGE);
    try {
      const second = await sendMessage(relay.address.port, SENDER, ['ops@example.org'], message(LARGE), { mailParams: `SIZE=${LARGE}` });
      expect(second.mailFrom.code, second.mailFrom.text).toBe(452);
      expect(second.mailFrom.text).toMatch(/^4\.3\.1 Mail system full: .*no room within 1500 ms.*try again later/);
      expect(await metric(relay, 'smime_relay_messages_total', 'outcome="rejected_memory"')).toBe(1);
      expect(relay.logs.some((l) => l.level === 40 && /did not fit into SMIME_RELAY_MEMORY_BUDGET/.test(String(l.msg)) && l.reason === 'timed-out')).toBe(true);
    } finally {
      first.close();
    }
  });
});

describe('SMIME_RELAY_MEMORY_BUDGET at start', () => {
  it('refuses to start when the budget cannot hold one message of SMIME_RELAY_MAX_SIZE being signed', async () => {
    await expect(
      startTestRelay({ SMIME_RELAY_CERT: leaf.bundlePath, SMIME_RELAY_UPSTREAM: sink.url, SMIME_RELAY_MAX_SIZE: '25MiB', SMIME_RELAY_MEMORY_BUDGET: '32MiB' }),
    ).rejects.toThrow(/SMIME_RELAY_MEMORY_BUDGET \(32 MiB\) cannot hold one message of SMIME_RELAY_MAX_SIZE \(25 MiB\).*at least 61 MiB/);
  });
});

describe('8-bit text that is mostly non-ASCII', () => {
  for (const engine of ['native', 'openssl'] as const) {
    it(`is signed as base64 of its CRLF text, decodes to the same text and verifies (${engine} engine)`, async () => {
      const relay = await startTestRelay({ SMIME_RELAY_CERT: leaf.bundlePath, SMIME_RELAY_UPSTREAM: sink.url, SMIME_RELAY_ENGINE: engine });
      try {
        const text = 'Съешь же ещё этих мягких французских булок, да выпей чаю.\n'.repeat(3000);
        const raw = Buffer.concat([
          Buffer.from(`From: <${SENDER}>\r\nTo: <ops@example.org>\r\nSubject: report\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n`),
          Buffer.from(text, 'utf8'),
        ]);
        const before = sink.received.length;
        const r = await sendMessage(relay.address.port, SENDER, ['ops@example.org'], raw, { mailParams: `SIZE=${raw.length}` });
        expect(r.final?.code, r.final?.text).toBe(250);
        const [signed] = (await sink.waitFor(before + 1)).slice(before);
        const { content } = splitSigned(signed!.raw);
        expect(content.toString('latin1')).toMatch(/^Content-Type: text\/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n/);
        // quoted-printable would have been nearly three times the text; base64 is 4/3 and a little
        expect(content.length).toBeLessThan(1.4 * Buffer.byteLength(text));
        expect((await verifyOpenssl(signed!.raw, pki.rootCertPath)).ok).toBe(true);
        const parsed = await simpleParser(signed!.raw);
        expect(parsed.text?.replace(/\r\n/g, '\n').trim()).toBe(text.trim());
      } finally {
        await relay.close();
      }
    });
  }
});
