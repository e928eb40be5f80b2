import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { declaredSize } from '../src/smtp/read-data.js';
import { sendMessage } from './support/client.js';
import { createTestPki, type TestPki } from './support/pki.js';
import { startTestRelay, type TestRelay } from './support/relay.js';
import { startSink, type Sink } from './support/sink.js';

const SENDER = 'alerts@example.test';

/** About `size` bytes of CRLF text in many lines, so it arrives in many socket chunks. */
function message(size: number): Buffer {
  const head = `From: <${SENDER}>\r\nTo: <a@example.org>\r\nSubject: size test\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n`;
  const lines: string[] = [];
  let n = head.length;
  while (n < size) {
    const line = randomBytes(36).toString('base64');
    lines.push(line);
    n += line.length + 2;
  }
  return Buffer.from(head + lines.join('\r\n') + '\r\n', 'latin1');
}

describe('receiving DATA with and without a SIZE= declaration', () => {
  let pki: TestPki;
  let sink: Sink;
  let relay: TestRelay;

  beforeAll(async () => {
    pki = await createTestPki();
    const leaf = await pki.issueLeaf('alerts', { emails: [SENDER] });
    sink = await startSink();
    // pass-through, so what the sink gets must be exactly what was received
    relay = await startTestRelay({
      SMIME_RELAY_CERT: leaf.bundlePath,
      SMIME_RELAY_UPSTREAM: sink.url,
      SMIME_RELAY_SIGNING: 'off',
      SMIME_RELAY_MAX_SIZE: '1MiB',
    });
  });

  afterAll(async () => {
    await relay?.close();
    await sink?.close();
    await pki?.cleanup();
  });

  const raw = message(300_000);
  for (const [name, params] of [
    ['no SIZE', undefined],
    ['SIZE exact', `SIZE=${raw.length}`],
    ['SIZE larger than the message', `SIZE=${raw.length + 50_000}`],
    ['SIZE smaller than the message (the buffer is outgrown)', 'SIZE=1000'],
  ] as const) {
    it(`relays the bytes unchanged: ${name}`, async () => {
      const before = sink.received.length;
      const r = await sendMessage(relay.address.port, SENDER, ['a@example.org'], raw, params ? { mailParams: params } : {});
      expect(r.final?.code, r.final?.text).toBe(250);
      const [got] = (await sink.waitFor(before + 1)).slice(before);
      expect(got!.raw.equals(raw)).toBe(true);
    });
  }

  it('still answers 552 when the data outgrows both SIZE= and the limit', async () => {
    const r = await sendMessage(relay.address.port, SENDER, ['a@example.org'], message(1_200_000), { mailParams: 'SIZE=1000' });
    expect(r.final?.code).toBe(552);
  });

  it('reads only a plain decimal SIZE= value', () => {
    expect(declaredSize({ SIZE: '12345' })).toBe(12345);
    expect(declaredSize({ SIZE: '-1' })).toBeUndefined();
    expect(declaredSize({ SIZE: '1e9' })).toBeUndefined();
    expect(declaredSize({ SIZE: true })).toBeUndefined();
    expect(declaredSize(false)).toBeUndefined();
  });
});
