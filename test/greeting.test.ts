import { mkdtemp, rm } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SMTPServer, type SMTPServerOptions } from 'smtp-server';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config/load.js';
import { greetingDelay, isLoopback } from '../src/smtp/greeting.js';
import { greetingStats, patchesApply, type GreetingDelayOption } from '../src/smtp/smtp-server-patches.js';
import { RawClient } from './support/client.js';
import { createTestPki, type TestPki } from './support/pki.js';
import { startTestRelay, type TestRelay } from './support/relay.js';

const SENDER = 'alerts@example.test';

/** A bare smtp-server with the same connection options as the relay, and the given greeting option. */
async function startServer(extra: GreetingDelayOption): Promise<{ port: number; close(): Promise<void> }> {
  const server = new SMTPServer({
    disableReverseLookup: true,
    hideSTARTTLS: true,
    authOptional: true,
    logger: false,
    ...extra,
  } as SMTPServerOptions);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.server.address() as AddressInfo;
  return { port, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
}

const snapshot = () => ({ ...greetingStats });

describe('greeting delay policy', () => {
  it('greets loopback clients at once, in every notation Node reports them', () => {
    for (const a of ['127.0.0.1', '127.10.20.30', '::1', '::ffff:127.0.0.1']) expect(isLoopback(a), a).toBe(true);
    for (const a of ['10.0.0.1', '192.0.2.7', '::ffff:10.0.0.1', '2001:db8::1', '128.0.0.1']) expect(isLoopback(a), a).toBe(false);
    const delay = greetingDelay({ delayMs: 100 });
    expect(delay('127.0.0.1')).toBe(0);
    expect(delay('::1')).toBe(0);
    expect(delay('192.0.2.7')).toBe(100);
  });

  it('greets allow-listed clients at once and keeps the configured delay for the rest', () => {
    const delay = greetingDelay({ delayMs: 250, isTrusted: (a) => a.startsWith('10.') });
    expect(delay('10.1.2.3')).toBe(0);
    expect(delay('192.0.2.7')).toBe(250);
    expect(greetingDelay({ delayMs: 0 })('192.0.2.7')).toBe(0);
  });

  it('reads SMIME_RELAY_GREETING_DELAY_MS, defaulting to the library\'s 100 ms', () => {
    expect(loadConfig({ env: {} }).config.greetingDelayMs).toBe(100);
    expect(loadConfig({ env: { SMIME_RELAY_GREETING_DELAY_MS: '0' } }).config.greetingDelayMs).toBe(0);
    expect(() => loadConfig({ env: { SMIME_RELAY_GREETING_DELAY_MS: '-5' } })).toThrow(/SMIME_RELAY_GREETING_DELAY_MS/);
  });
});

describe('the relay greets a loopback client without the early-talker delay', () => {
  let pki: TestPki;
  let outbox: string;
  let relay: TestRelay;

  beforeAll(async () => {
    pki = await createTestPki();
    const leaf = await pki.issueLeaf('alerts', { emails: [SENDER] });
    outbox = await mkdtemp(join(tmpdir(), 'greeting-outbox-'));
    relay = await startTestRelay({ SMIME_RELAY_CERT: leaf.bundlePath, SMIME_RELAY_UPSTREAM: `file:${outbox}` });
  });

  afterAll(async () => {
    await relay?.close();
    await pki?.cleanup();
    if (outbox) await rm(outbox, { recursive: true, force: true });
  });

  it('takes the immediate path for 50 of 50 connections (connect→220 median is printed)', async () => {
    expect(patchesApply).toBe(true);
    const before = snapshot();
    const times: number[] = [];
    for (let i = 0; i < 50; i++) {
      const t0 = performance.now();
      const c = await RawClient.open(relay.address.port);
      const greeting = await c.read(5_000);
      times.push(performance.now() - t0);
      expect(greeting.code).toBe(220);
      c.close();
    }
    const after = snapshot();
    // Structural, not timed: every one of these connections went through connectionReady()
    // synchronously, none through the timer.
    expect(after.immediate - before.immediate).toBe(50);
    expect(after.delayed - before.delayed).toBe(0);
    times.sort((a, b) => a - b);
    const median = (times[24]! + times[25]!) / 2;
    console.log(`connect→220 on loopback over 50 connections: median ${median.toFixed(2)} ms, max ${times[49]!.toFixed(2)} ms (smtp-server alone: ≥ 100 ms)`);
  });
});

describe('an untrusted (delayed) connection keeps the early-talker check', () => {
  it('refuses a client that speaks before the greeting with 421', async () => {
    const server = await startServer({ greetingDelay: () => 100 });
    try {
      const before = snapshot();
      const c = await RawClient.open(server.port);
      c.write('EHLO early.test\r\n');
      const reply = await c.read(5_000);
      expect(reply.code).toBe(421);
      expect(reply.text).toMatch(/talk too soon/i);
      c.close();
      expect(greetingStats.delayed - before.delayed).toBe(1);
    } finally {
      await server.close();
    }
  });

  it('greets a patient client on a delayed connection normally', async () => {
    const server = await startServer({ greetingDelay: () => 100 });
    try {
      const c = await RawClient.open(server.port);
      expect((await c.read(5_000)).code).toBe(220);
      expect((await c.command('EHLO patient.test')).code).toBe(250);
      c.close();
    } finally {
      await server.close();
    }
  });

  it('leaves smtp-server\'s own start untouched when the option is not given', async () => {
    const server = await startServer({});
    try {
      const before = snapshot();
      const c = await RawClient.open(server.port);
      c.write('EHLO early.test\r\n');
      expect((await c.read(5_000)).code).toBe(421);
      c.close();
      const c2 = await RawClient.open(server.port);
      expect((await c2.read(5_000)).code).toBe(220);
      c2.close();
      expect(snapshot()).toEqual(before);
    } finally {
      await server.close();
    }
  });
});
