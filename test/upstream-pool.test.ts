import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sendMessage } from './support/client.js';
import { createTestPki, type TestPki } from './support/pki.js';
import { startTestRelay, type TestRelay } from './support/relay.js';
import { startSink, type Action, type Sink } from './support/sink.js';

const SENDER = 'alerts@example.test';

function message(subject: string, bodyBytes: number): Buffer {
  const line = 'Quarterly figures per region, as attached to the report of the finance team.\r\n';
  return Buffer.from(
    `From: <${SENDER}>\r\nTo: <ops@example.org>\r\nSubject: ${subject}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n` +
      line.repeat(Math.ceil(bodyBytes / line.length)),
    'latin1',
  );
}

const subjectOf = (raw: Buffer) => /^Subject: (\S+)/m.exec(raw.toString('latin1'))?.[1];

describe('the upstream pool keeps a connection for small messages', () => {
  let pki: TestPki;
  let sink: Sink;
  let relay: TestRelay;
  let release: () => void = () => {};
  const arrived: string[] = [];

  beforeAll(async () => {
    pki = await createTestPki();
    const leaf = await pki.issueLeaf('alerts', { emails: [SENDER] });
    const gate = new Promise<Action>((r) => (release = () => r('accept')));
    // The upstream takes its time over large messages (a slow link, a busy content scanner).
    sink = await startSink({
      data: (msg) => {
        arrived.push(subjectOf(msg.raw) ?? '?');
        return msg.raw.length > 1024 * 1024 ? gate : 'accept';
      },
    });
    relay = await startTestRelay({ SMIME_RELAY_CERT: leaf.bundlePath, SMIME_RELAY_UPSTREAM: sink.url, SMIME_RELAY_UPSTREAM_POOL_SIZE: '2' });
  });

  afterAll(async () => {
    release();
    await relay?.close();
    await sink?.close();
    await pki?.cleanup();
  });

  it('while large messages hold the upstream, a small one still gets its connection and its 250', async () => {
    const large = (name: string) => sendMessage(relay.address.port, SENDER, ['ops@example.org'], message(name, 1_500_000));
    const first = large('first');
    for (let i = 0; i < 400 && !arrived.includes('first'); i++) await new Promise((r) => setTimeout(r, 25));
    expect(arrived).toEqual(['first']);
    // a second large message may not take the pool's last free connection: it waits for the first
    const second = large('second');
    const signing = () => relay.logs.filter((l) => /^Signing email notification/.test(String(l.msg))).length;
    for (let i = 0; i < 400 && signing() < 2; i++) await new Promise((r) => setTimeout(r, 25));
    expect(signing()).toBe(2);
    // signed by now, or about to be: from there it only waits for a connection
    await new Promise((r) => setTimeout(r, 300));

    const small = await sendMessage(relay.address.port, SENDER, ['ops@example.org'], message('small', 2000));
    expect(small.final?.code, small.final?.text).toBe(250);
    expect(arrived).toEqual(['first', 'small']);

    release();
    expect((await first).final?.code).toBe(250);
    expect((await second).final?.code).toBe(250);
    expect(arrived).toEqual(['first', 'small', 'second']);
  });
});
