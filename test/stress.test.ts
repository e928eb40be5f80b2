import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RawClient, dataPayload, type Reply } from './support/client.js';
import { createTestPki, type Leaf, type TestPki } from './support/pki.js';
import { linesFor, startTestRelay, type TestRelay } from './support/relay.js';
import { startSink, type Sink } from './support/sink.js';
import { verifyOpenssl } from './support/verify.js';

/*
 * Stress mode (issue 10, item 8), with Postfix's defaults: once more than 80% of
 * SMIME_RELAY_MAX_CLIENTS are in use, a client must send 1 KiB/s over 10 s or be disconnected.
 * The relay is filled with connections that say nothing or drip a byte every two seconds, from
 * several addresses (127.0.0.x), as in a slowloris attack; a well-behaved client must be served
 * within 30 s, and one sending a message at an ordinary pace must not be cut off.
 */

const SENDER = 'alerts@example.test';
const MAX_CLIENTS = 20;

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
    SMIME_RELAY_MAX_CLIENTS: String(MAX_CLIENTS),
    SMIME_RELAY_MAX_CLIENTS_PER_IP: '5',
    SMIME_RELAY_METRICS: '127.0.0.1:0',
  });
});

afterAll(async () => {
  await relay?.close();
  await sink?.close();
  await pki?.cleanup();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function stressGauge(): Promise<number> {
  const { host, port } = relay.metricsAddress!;
  const text = await (await fetch(`http://${host}:${port}/metrics`)).text();
  return Number(/^smime_relay_stress (\d+)$/m.exec(text)?.[1]);
}

async function greeted(from: string): Promise<RawClient | undefined> {
  const c = await RawClient.open(relay.address.port, '127.0.0.1', { localAddress: from });
  const greeting = await c.read();
  if (greeting.code === 220) return c;
  c.close();
  return undefined;
}

describe('stress mode: more than 80% of SMIME_RELAY_MAX_CLIENTS in use', () => {
  it('slow and silent clients are disconnected with 421 4.4.2; a well-behaved client is served within 30 s', { timeout: 90_000 }, async () => {
    const timers: NodeJS.Timeout[] = [];
    const clients: RawClient[] = [];
    try {
      expect(await stressGauge()).toBe(0);

      // A client sending a 42 KiB message at about 3 KiB/s: slow, but well above the minimum.
      const steady = (await greeted('127.0.0.3'))!;
      clients.push(steady);
      await steady.command('EHLO steady.test');
      expect((await steady.command(`MAIL FROM:<${SENDER}>`)).code).toBe(250);
      expect((await steady.command('RCPT TO:<ops@example.org>')).code).toBe(250);
      expect((await steady.command('DATA')).code).toBe(354);
      const line = `${'x'.repeat(98)}\r\n`;
      const payload = dataPayload(Buffer.from(`From: ${SENDER}\r\nTo: ops@example.org\r\nSubject: at 3 KiB/s\r\n\r\n${line.repeat(420)}`));
      let sentBytes = 0;
      const steadyDone = new Promise<void>((resolve) => {
        const t = setInterval(() => {
          const chunk = payload.subarray(sentBytes, sentBytes + 300);
          sentBytes += chunk.length;
          steady.write(chunk);
          if (sentBytes >= payload.length) {
            clearInterval(t);
            resolve();
          }
        }, 100);
        timers.push(t);
      });

      // The rest of the slots, from four addresses: half say nothing after EHLO, half drip a
      // byte of their message every 2 s (each byte restarts smtp-server's idle timer).
      const attackers: RawClient[] = [];
      for (let i = 0; attackers.length < MAX_CLIENTS - 1; i++) {
        const c = await greeted(`127.0.0.${10 + (i % 4)}`);
        expect(c, 'an attacker connection was refused before the relay was full').toBeDefined();
        attackers.push(c!);
        clients.push(c!);
        await c!.command('EHLO slow.test');
        if (i % 2 === 0) continue;
        await c!.command(`MAIL FROM:<${SENDER}>`);
        await c!.command('RCPT TO:<ops@example.org>');
        await c!.command('DATA');
        let n = 0;
        timers.push(setInterval(() => !c!.closed && c!.write(Buffer.from('drip'.charAt(n++ % 4))), 2_000));
      }
      const cutOff = attackers.map((c) => c.untilClosed(60_000));

      expect(await stressGauge()).toBe(1);
      const on = relay.logs.find((l) => typeof l.msg === 'string' && l.msg.startsWith('stress mode on'));
      expect(on).toMatchObject({ level: 40, maxClients: MAX_CLIENTS, windowMs: 10_000, minBytesPerSecond: 1024 });
      expect(on!.inUse).toBeGreaterThan(MAX_CLIENTS * 0.8);

      // The well-behaved client, from another address, retries like an MTA's queue (faster).
      const t0 = performance.now();
      let refusedFirst: Reply | undefined;
      let good: RawClient | undefined;
      while (!good) {
        const c = await RawClient.open(relay.address.port, '127.0.0.1', { localAddress: '127.0.0.2' });
        const greeting = await c.read();
        if (greeting.code === 220) good = c;
        else {
          refusedFirst ??= greeting;
          c.close();
          expect(performance.now() - t0, 'the good client was never let in').toBeLessThan(30_000);
          await sleep(500);
        }
      }
      clients.push(good);
      await good.command('EHLO good.test');
      const before = sink.received.length;
      const final = await good.send(SENDER, `From: ${SENDER}\r\nTo: ops@example.org\r\nSubject: served under stress\r\n\r\nhello\r\n`, 'ops@example.org');
      const servedMs = performance.now() - t0;
      console.log(`stress mode: the good client was served ${(servedMs / 1000).toFixed(1)} s after its first attempt`);
      expect(final.code, final.text).toBe(250);
      expect(servedMs).toBeLessThan(30_000);
      const [got] = (await sink.waitFor(before + 1)).slice(before);
      expect((await verifyOpenssl(got!.raw, pki.rootCertPath)).ok).toBe(true);

      // It had found the relay full: the refusal has a tx id and a log line.
      expect(refusedFirst?.code).toBe(421);
      expect(refusedFirst?.text).toMatch(/^4\.3\.2 Too many connected clients \(at most 20\)/);
      expect(linesFor(relay, refusedFirst!)).toHaveLength(1);

      // Stress mode lasts while the relay is more than 80% full: the attackers judged in that time
      // got 421 4.4.2, silent ones for being idle, drippers for being slow. It then ends, and the
      // ones that connected last (their window had not run out yet) are left to the normal limits.
      for (let i = 0; i < 50 && (await stressGauge()) === 1; i++) await sleep(200);
      expect(await stressGauge()).toBe(0);
      expect(relay.logs.some((l) => l.msg === 'stress mode off' && l.level === 30)).toBe(true);
      for (const c of attackers) c.close();
      const last = (await Promise.all(cutOff)).map((replies) => replies.at(-1));
      const cut = [...last.entries()].filter(([, r]) => r?.code === 421);
      expect(cut.length).toBeGreaterThanOrEqual(MAX_CLIENTS - MAX_CLIENTS * 0.8);
      for (const [i, r] of cut) {
        expect(r!.text).toMatch(i % 2 === 0 ? /^4\.4\.2 Nothing received for 1\d s while the relay is busy/ : /^4\.4\.2 Less than 1024 bytes\/s received over 1\d s while the relay is busy/);
        expect(linesFor(relay, r!)[0]).toMatchObject({ level: 40, msg: i % 2 === 0 ? 'stress mode: closed an idle connection' : 'stress mode: closed a connection that sent too slowly' });
      }
      console.log(`stress mode: ${cut.length} of ${attackers.length} slow or silent connections were closed before the relay had room again`);

      // The steady sender was not cut off, and its message is delivered.
      await steadyDone;
      const steadyReply = await steady.read(60_000);
      expect(steadyReply.code, steadyReply.text).toBe(250);
    } finally {
      for (const t of timers) clearInterval(t);
      for (const c of clients) c.close();
    }
  });
});
