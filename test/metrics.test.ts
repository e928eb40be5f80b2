import { X509Certificate } from 'node:crypto';
import { copyFile, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRelay, type RelayInternals, type RunningRelay } from '../src/app.js';
import { loadConfig } from '../src/config/load.js';
import { createLogger } from '../src/log.js';
import { OUTCOMES } from '../src/metrics/outcome.js';
import { replies } from '../src/replies.js';
import { RawClient, sendMessage } from './support/client.js';
import { createTestPki, type Leaf, type TestPki } from './support/pki.js';
import { startSink, type Sink } from './support/sink.js';

const SENDER = 'alerts@example.test';
const MAX_SIZE = 64 * 1024;

interface Relay extends RunningRelay {
  logs: Record<string, unknown>[];
}

/** Like test/support/relay.ts, plus the internal knobs (a short upstream probe interval). */
async function startObservedRelay(env: Record<string, string>, internals: RelayInternals = {}): Promise<Relay> {
  const { config } = loadConfig({ env: { SMIME_RELAY_LISTEN: '127.0.0.1:0', LOG_LEVEL: 'debug', ...env } });
  const logs: Record<string, unknown>[] = [];
  const out = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString('utf8').split('\n')) if (line) logs.push(JSON.parse(line));
      cb();
    },
  });
  const relay = await startRelay(config, createLogger(config.logLevel, out), internals);
  return Object.assign(relay, { logs });
}

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Prometheus text exposition format, the subset prom-client writes. */
function parseExposition(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`unparseable exposition line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!;
    samples.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return samples;
}

function valueOf(samples: Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  const found = samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  if (found.length > 1) throw new Error(`${name} ${JSON.stringify(labels)} matches ${found.length} samples`);
  return found[0]?.value;
}

const base = (r: RunningRelay) => `http://${r.metricsAddress!.host}:${r.metricsAddress!.port}`;

async function scrape(r: RunningRelay): Promise<Sample[]> {
  const res = await fetch(`${base(r)}/metrics`);
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toMatch(/^text\/plain/);
  return parseExposition(await res.text());
}

async function get(r: RunningRelay, path: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(`${base(r)}${path}`);
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

/** Polls until `check` holds; the probe runs in the background, so its answer arrives later. */
async function eventually<T>(what: string, read: () => Promise<T>, check: (v: T) => boolean, timeoutMs = 15_000): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = await read();
    if (check(v)) return v;
    if (Date.now() > until) throw new Error(`${what}: still ${JSON.stringify(v)} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const message = (body = 'The nightly job finished.') =>
  Buffer.from(`From: Alerts <${SENDER}>\r\nTo: ops@example.org\r\nSubject: report\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n${body}\r\n`);

/** Half again the size limit, in ordinary 78-byte lines. */
const oversizedMessage = () => message(('y'.repeat(76) + '\r\n').repeat(Math.ceil((MAX_SIZE * 1.5) / 78)));

let pki: TestPki;
let leaf: Leaf;

beforeAll(async () => {
  pki = await createTestPki();
  leaf = await pki.issueLeaf('alerts', { emails: [SENDER] });
});

afterAll(async () => {
  await pki?.cleanup();
});

describe('metrics and health endpoints (SMIME_RELAY_METRICS)', () => {
  let sink: Sink;
  let relay: Relay;

  beforeAll(async () => {
    sink = await startSink();
    relay = await startObservedRelay({
      SMIME_RELAY_CERT: leaf.bundlePath,
      SMIME_RELAY_UPSTREAM: sink.url,
      SMIME_RELAY_MAX_SIZE: String(MAX_SIZE),
      SMIME_RELAY_METRICS: '127.0.0.1:0',
    });
  });

  afterAll(async () => {
    await relay?.close();
    await sink?.close();
  });

  it('listens on its own port, reported on the running relay', () => {
    expect(relay.metricsAddress?.host).toBe('127.0.0.1');
    expect(relay.metricsAddress?.port).toBeGreaterThan(0);
    expect(relay.metricsAddress?.port).not.toBe(relay.address.port);
  });

  it('has every outcome at 0 before the first message, so rates and alerts work from the start', async () => {
    const samples = await scrape(relay);
    for (const outcome of OUTCOMES) expect(valueOf(samples, 'smime_relay_messages_total', { outcome }), outcome).toBe(0);
    for (const stage of ['prepare', 'sign', 'self_verify', 'upstream']) {
      expect(valueOf(samples, 'smime_relay_stage_duration_seconds_count', { stage }), stage).toBe(0);
    }
    expect(valueOf(samples, 'smime_relay_certificate_reload_failures_total')).toBe(0);
    expect(valueOf(samples, 'smime_relay_message_size_bytes_count')).toBe(0);
  });

  it('/healthz answers 200 while the relay serves', async () => {
    expect(await get(relay, '/healthz')).toEqual({ status: 200, body: { status: 'ok' } });
  });

  it('/readyz answers 200 once the upstream answered its probe and a certificate is valid', async () => {
    const ready = await eventually('/readyz', () => get(relay, '/readyz'), (r) => r.status === 200);
    expect(ready.body).toMatchObject({ status: 'ready', reasons: [], certificates: 1, upstream: { ok: true } });
  });

  it('moves the counters and histograms as a signed, a wrong-sender and an oversized message flow', async () => {
    const before = await scrape(relay);

    const signed = await sendMessage(relay.address.port, SENDER, ['ops@example.org'], message());
    expect(signed.final?.code, signed.final?.text).toBe(250);
    await sink.waitFor(1);

    const wrongSender = await sendMessage(relay.address.port, 'intruder@example.test', ['ops@example.org'], message());
    expect(wrongSender.mailFrom.code).toBe(550);

    const oversized = await sendMessage(relay.address.port, SENDER, ['ops@example.org'], oversizedMessage());
    expect(oversized.final?.code).toBe(552);

    const after = await scrape(relay);
    const delta = (name: string, labels: Record<string, string> = {}) => (valueOf(after, name, labels) ?? NaN) - (valueOf(before, name, labels) ?? NaN);
    const moved = Object.fromEntries(OUTCOMES.map((outcome) => [outcome, delta('smime_relay_messages_total', { outcome })]));
    const expected: Record<string, number> = { signed: 1, rejected_sender: 1, rejected_size: 1 };
    expect(moved).toEqual(Object.fromEntries(OUTCOMES.map((o) => [o, expected[o] ?? 0])));
    for (const stage of ['prepare', 'sign', 'self_verify', 'upstream']) {
      expect(delta('smime_relay_stage_duration_seconds_count', { stage }), stage).toBe(1);
      expect(delta('smime_relay_stage_duration_seconds_sum', { stage }), stage).toBeGreaterThan(0);
      // The +Inf bucket holds every observation.
      expect(delta('smime_relay_stage_duration_seconds_bucket', { stage, le: '+Inf' }), stage).toBe(1);
    }
    // Only the message that was received whole is measured; the oversized one was never stored.
    expect(delta('smime_relay_message_size_bytes_count')).toBe(1);
    expect(delta('smime_relay_message_size_bytes_sum')).toBe(message().length);
  });

  it('counts recipients the upstream refused while it accepted others', async () => {
    const before = await scrape(relay);
    sink.script = { rcptTo: (to) => (to.startsWith('gone') ? { reply: 550, text: '5.1.1 no such user' } : 'accept') };
    try {
      const r = await sendMessage(relay.address.port, SENDER, ['ops@example.org', 'gone1@example.org', 'gone2@example.org'], message());
      expect(r.final?.code).toBe(250);
    } finally {
      sink.script = {};
    }
    const after = await scrape(relay);
    expect((valueOf(after, 'smime_relay_refused_recipients_total', {}) ?? NaN) - (valueOf(before, 'smime_relay_refused_recipients_total', {}) ?? NaN)).toBe(2);
  });

  it('reports seconds until expiry per certificate, labelled with mailbox and serial', async () => {
    const samples = await scrape(relay);
    const expiry = samples.filter((s) => s.name === 'smime_relay_certificate_expiry_seconds');
    expect(expiry.map((s) => s.labels)).toEqual([{ mailbox: SENDER, serial: leaf.serial }]);
    const notAfter = new Date(new X509Certificate(await readFile(leaf.certPath)).validTo).getTime();
    // Computed at scrape time from the certificate's notAfter; a minute covers the test's own run time.
    expect(Math.abs(expiry[0]!.value - (notAfter - Date.now()) / 1000)).toBeLessThan(60);
  });

  it('counts open client connections', async () => {
    const idle = await eventually('open connections', async () => valueOf(await scrape(relay), 'smime_relay_open_connections'), (v) => v === 0);
    expect(idle).toBe(0);
    const client = await RawClient.open(relay.address.port);
    try {
      expect((await client.read()).code).toBe(220);
      expect(valueOf(await scrape(relay), 'smime_relay_open_connections')).toBe(1);
    } finally {
      client.close();
    }
    await eventually('open connections', async () => valueOf(await scrape(relay), 'smime_relay_open_connections'), (v) => v === 0);
  });

  it('writes one transaction log line per message with everything an admin greps for', async () => {
    const result = await sendMessage(relay.address.port, SENDER, ['ops@example.org', 'audit@example.org'], message());
    expect(result.final?.code).toBe(250);
    const tx = /\(tx ([\w-]+)\)/.exec(result.final!.text)?.[1];
    expect(tx, result.final!.text).toBeTruthy();
    const lines = relay.logs.filter((l) => l.msg === 'transaction' && l.tx === tx);
    expect(lines).toHaveLength(1);
    const line = lines[0]!;
    expect(line).toMatchObject({
      level: 30,
      tx,
      client: '127.0.0.1',
      mailFrom: SENDER,
      rcptCount: 2,
      from: SENDER,
      serial: leaf.serial,
      size: message().length,
      outcome: 'signed',
      upstream: expect.stringMatching(/^250 .*queued as SINK\d+/),
      reply: expect.stringMatching(/^250 2\.0\.0 Ok: queued as SINK\d+$/),
    });
    const durations = line.durations as Record<string, number>;
    expect(Object.keys(durations).sort()).toEqual(['prepare', 'self_verify', 'sign', 'upstream']);
    for (const ms of Object.values(durations)) expect(ms).toBeGreaterThanOrEqual(0);
    expect(typeof line.ms).toBe('number');
  });

  it('gives an oversized message a transaction line and a tx id too', async () => {
    const result = await sendMessage(relay.address.port, SENDER, ['ops@example.org'], oversizedMessage());
    expect(result.final?.code).toBe(552);
    const tx = /\(tx ([\w-]+)\)/.exec(result.final!.text)?.[1];
    expect(tx, result.final!.text).toBeTruthy();
    const line = relay.logs.find((l) => l.msg === 'transaction' && l.tx === tx);
    expect(line).toMatchObject({ outcome: 'rejected_size', client: '127.0.0.1', mailFrom: SENDER, reply: expect.stringMatching(/^552 5\.3\.4 /) });
  });

  it('answers 404 with the endpoint list elsewhere, and 405 to anything but GET and HEAD', async () => {
    const missing = await fetch(`${base(relay)}/nope`);
    expect(missing.status).toBe(404);
    expect(await missing.text()).toMatch(/\/metrics/);
    expect((await fetch(`${base(relay)}/metrics`, { method: 'POST' })).status).toBe(405);
  });
});

describe('/readyz follows the upstream', () => {
  let sink: Sink;
  let relay: Relay;

  beforeAll(async () => {
    sink = await startSink();
    relay = await startObservedRelay(
      { SMIME_RELAY_CERT: leaf.bundlePath, SMIME_RELAY_UPSTREAM: sink.url, SMIME_RELAY_METRICS: '127.0.0.1:0' },
      { probeIntervalMs: 100 },
    );
  });

  afterAll(async () => {
    await relay?.close();
    await sink?.close();
  });

  it('answers 503 with the reason once the upstream stops answering its probe, while /healthz stays 200', async () => {
    await eventually('/readyz', () => get(relay, '/readyz'), (r) => r.status === 200);
    await sink.close();
    const down = await eventually('/readyz', () => get(relay, '/readyz'), (r) => r.status === 503);
    expect(down.body).toMatchObject({ status: 'not ready', upstream: { ok: false }, certificates: 1 });
    expect((down.body.reasons as string[]).join('\n')).toMatch(/upstream .*127\.0\.0\.1.* did not answer the probe/);
    expect((await get(relay, '/healthz')).status).toBe(200);
    expect(relay.logs.some((l) => l.msg === 'upstream did not answer its probe: not ready')).toBe(true);
  });
});

describe('certificate problems show in the metrics and in /readyz', () => {
  it('counts a reload that found a broken file, while the previous certificate stays in service', async () => {
    const dir = await mkdtemp(join(pki.dir, 'reload-'));
    const path = join(dir, 'bundle.pem');
    await copyFile(leaf.bundlePath, path);
    const relay = await startObservedRelay({ SMIME_RELAY_CERT: path, SMIME_RELAY_UPSTREAM: `file:${dir}/outbox`, SMIME_RELAY_METRICS: '127.0.0.1:0' });
    try {
      expect(valueOf(await scrape(relay), 'smime_relay_certificate_reload_failures_total')).toBe(0);
      await writeFile(path, '-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n');
      relay.reload();
      const samples = await scrape(relay);
      // The file watcher may report the same broken file once more after it settles.
      expect(valueOf(samples, 'smime_relay_certificate_reload_failures_total')).toBeGreaterThanOrEqual(1);
      expect(samples.filter((s) => s.name === 'smime_relay_certificate_expiry_seconds').map((s) => s.labels.serial)).toEqual([leaf.serial]);
    } finally {
      await relay.close();
    }
  });

  it('is not ready with only an expired certificate, whose expiry gauge has gone negative', async () => {
    const day = 86_400_000;
    const expired = await pki.issueLeaf('expired', { emails: [SENDER], notBefore: new Date(Date.now() - 30 * day), notAfter: new Date(Date.now() - day) });
    const relay = await startObservedRelay({ SMIME_RELAY_CERT: expired.bundlePath, SMIME_RELAY_UPSTREAM: `file:${pki.dir}/outbox-expired`, SMIME_RELAY_METRICS: '127.0.0.1:0' });
    try {
      // The file: upstream answers its probe at once; the certificate is what keeps it unready.
      const r = await eventually('/readyz', () => get(relay, '/readyz'), (x) => (x.body.upstream as { ok: unknown }).ok === true);
      expect(r.status).toBe(503);
      expect(r.body.reasons).toEqual([`no certificate is valid now (configured for ${SENDER})`]);
      const series = (await scrape(relay)).filter((s) => s.name === 'smime_relay_certificate_expiry_seconds');
      expect(series).toHaveLength(1);
      expect(series[0]!.labels).toMatchObject({ mailbox: SENDER });
      // notAfter was a day ago: about -86,400 s, so an alert on "< 14 days" keeps firing.
      expect(series[0]!.value).toBeLessThan(-80_000);
      expect(series[0]!.value).toBeGreaterThan(-90_000);
    } finally {
      await relay.close();
    }
  });
});

describe('metrics off (the default)', () => {
  it('opens no metrics listener', async () => {
    const relay = await startObservedRelay({ SMIME_RELAY_CERT: leaf.bundlePath, SMIME_RELAY_UPSTREAM: 'file:' + pki.dir + '/outbox' });
    try {
      expect(relay.metricsAddress).toBeUndefined();
    } finally {
      await relay.close();
    }
  });
});

describe('each refusal of a message is counted under the outcome an admin expects', () => {
  // Connection-level refusals (not allowed, AUTH, limits) are not messages and carry no outcome.
  const cases: [string, () => { code: number; outcome?: string }, string][] = [
    ['envelope sender not covered', () => replies.senderNotCovered('a@example.test', []), 'rejected_sender'],
    ['envelope sender not permitted for the user', () => replies.senderNotPermitted('app', 'a@example.test', []), 'rejected_sender'],
    ['From header invalid', () => replies.fromHeaderInvalid('is missing'), 'rejected_sender'],
    ['From header not covered', () => replies.fromHeaderNotCovered('a@example.test', []), 'rejected_sender'],
    ['From header not permitted for the user', () => replies.fromHeaderNotPermitted('app', 'a@example.test', []), 'rejected_sender'],
    ['From header shows another address', () => replies.fromHeaderMisleading('shows the address b@example.test'), 'rejected_sender'],
    ['header line refused', () => replies.headerLineRefused(2, 'X-A: a\\r', 'contains a bare CR'), 'sign_error'],
    ['message too big', () => replies.messageTooBig(10), 'rejected_size'],
    ['certificate unavailable', () => replies.certificateUnavailable('a@example.test', 'expired'), 'sign_error'],
    ['message cannot be prepared', () => replies.malformedMessage('bare CR'), 'sign_error'],
    ['signing failed', () => replies.signingFailed('openssl exited 1'), 'sign_error'],
    ['internal error', () => replies.internalError('bug'), 'sign_error'],
    ['signed bytes failed self-verification', () => replies.selfVerifyFailed('digest mismatch'), 'self_verify_failed'],
    ['upstream 4xx or unreachable', () => replies.upstreamTempFail('ECONNREFUSED'), 'upstream_tempfail'],
    ['upstream 5xx', () => replies.upstreamPermFail(554, 'no'), 'upstream_permfail'],
    ['upstream refused one recipient for now (LMTP)', () => replies.recipientRefusedUpstream('a@example.org', 450, '450 4.2.0 busy'), 'upstream_tempfail'],
    ['upstream refused one recipient (LMTP)', () => replies.recipientRefusedUpstream('a@example.org', 550, '550 5.1.1 unknown'), 'upstream_permfail'],
  ];
  it.each(cases)('%s', (_name, make, outcome) => {
    expect(make().outcome).toBe(outcome);
  });
});
