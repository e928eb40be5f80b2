/**
 * deploy/postfix/ proved with a real Postfix: a private instance (its own config, queue and data
 * directories under a temp dir, its own loopback ports) runs the snippets as shipped, with only
 * the ports substituted and a few settings this test environment needs. Mail goes
 *   nodemailer → Postfix smtpd → (queue →) relay → Postfix reinjection smtpd → queue → capture sink
 * and must arrive multipart/signed and verify with openssl.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import nodemailer from 'nodemailer';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sendMessage } from './support/client.js';
import { createTestPki, type Leaf, type TestPki } from './support/pki.js';
import { freePorts, requirePostfix, startPostfix, until, type PostfixInstance, type QueuedMessage } from './support/postfix.js';
import { startTestRelay, type TestRelay } from './support/relay.js';
import { startSink, type Received, type Sink } from './support/sink.js';
import { splitSigned, verifyOpenssl } from './support/verify.js';

const snippet = (...p: string[]) => readFileSync(fileURLToPath(new URL(`../deploy/postfix/${p.join('/')}`, import.meta.url)), 'utf8');

/** The snippets' fixed ports, replaced by free ones so the test never collides with a real MTA. */
function withPorts(text: string, relayPort: number, reinjectPort: number): string {
  // `[127.0.0.1]:10025` in content_filter, `127.0.0.1:10025` in smtpd_proxy_filter.
  return text.replace(/(127\.0\.0\.1\]?):10025\b/g, `$1:${relayPort}`).replace(/127\.0\.0\.1:10026\b/g, `127.0.0.1:${reinjectPort}`);
}

const SENDER = 'alerts@example.test';
const RECIPIENT = 'ops@example.org';
// A client address other than the Postfix host's own, so the relay's log can show XFORWARD at work.
const CLIENT_ADDRESS = '127.0.0.2';

/** Settings this environment needs and a production host would not: offline, and nothing ever leaves. */
const testEnvironment = (sinkPort: number) => ({
  relayhost: `[127.0.0.1]:${sinkPort}`,
  default_transport: 'smtp',
  smtp_host_lookup: 'native',
  smtp_dns_support_level: 'disabled',
  smtpd_peername_lookup: 'no',
  // The first delivery attempt is immediate; a long backoff makes sure only `postqueue -f`
  // delivers a deferred message, so the test proves the flush rather than a timer.
  minimal_backoff_time: '300s',
  maximal_backoff_time: '600s',
  queue_run_delay: '300s',
});

function message(subject: string): Buffer {
  return Buffer.from(`From: Alerts <${SENDER}>\r\nTo: ${RECIPIENT}\r\nSubject: ${subject}\r\n\r\nHello from the Postfix end-to-end test.\r\n`);
}

async function submit(port: number, subject: string): Promise<string> {
  const transport = nodemailer.createTransport({ host: '127.0.0.1', port, secure: false, ignoreTLS: true, localAddress: CLIENT_ADDRESS, name: 'app.example.test' });
  try {
    const info = await transport.sendMail({ envelope: { from: SENDER, to: [RECIPIENT] }, raw: message(subject) });
    return info.response;
  } finally {
    transport.close();
  }
}

const subjectOf = (m: Received) => /^Subject: (.*)$/m.exec(m.raw.toString('latin1'))?.[1]?.trim();

async function expectSignedAndVerified(m: Received, pki: TestPki) {
  expect(m.from).toBe(SENDER);
  expect(m.to).toEqual([RECIPIENT]);
  const { topHeaders } = splitSigned(m.raw);
  expect(topHeaders).toMatch(/^Content-Type: multipart\/signed;/im);
  // Postfix prepends its Received headers outside the signed part, which must not matter.
  expect(topHeaders).toMatch(/^Received: from /m);
  const v = await verifyOpenssl(m.raw, pki.rootCertPath);
  expect(v.ok, v.detail).toBe(true);
}

/** Postfix logs through postlogd, a moment after the event; wait for the line rather than race it. */
async function logged(postfix: PostfixInstance, line: RegExp): Promise<void> {
  await until(`Postfix to log ${line}`, () => (line.test(postfix.log()) ? true : undefined), 10_000).catch((e: Error) => {
    throw new Error(`${e.message}\n--- maillog ---\n${postfix.log()}`);
  });
}

function transactionLine(relay: TestRelay, reply: string): Record<string, unknown> {
  const tx = /\(tx ([\w-]+)\)/.exec(reply)?.[1];
  expect(tx, reply).toBeTruthy();
  const line = relay.logs.find((l) => l.msg === 'transaction' && l.tx === tx);
  expect(line, `no transaction log line for tx ${tx}`).toBeDefined();
  return line!;
}

const canRun = requirePostfix();

let pki: TestPki;
let leaf: Leaf;

const relayEnv = (relayPort: number, reinjectPort: number) => ({
  SMIME_RELAY_LISTEN: `127.0.0.1:${relayPort}`,
  SMIME_RELAY_CERT: leaf.bundlePath,
  SMIME_RELAY_UPSTREAM: `smtp://127.0.0.1:${reinjectPort}`,
});

/** One Postfix instance with the relay as its filter and a capture sink as the final destination. */
interface Setup {
  sink: Sink;
  relay: TestRelay | undefined;
  postfix: PostfixInstance | undefined;
  submissionPort: number;
  relayPort: number;
  reinjectPort: number;
}

async function tearDown(s: Setup | undefined): Promise<void> {
  if (!s) return;
  // Postfix first, so it does not retry against a relay that is going away.
  await s.postfix?.stop();
  await s.relay?.close();
  await s.sink.close();
}

async function setUp(configure: (s: Setup) => Promise<PostfixInstance>): Promise<Setup> {
  const [submissionPort, relayPort, reinjectPort] = (await freePorts(3)) as [number, number, number];
  const s: Setup = { sink: await startSink(), relay: undefined, postfix: undefined, submissionPort, relayPort, reinjectPort };
  try {
    s.relay = await startTestRelay(relayEnv(relayPort, reinjectPort));
    s.postfix = await configure(s);
    return s;
  } catch (e) {
    await tearDown(s);
    throw e;
  }
}

/** deploy/postfix/main.cf + master.cf; a plain smtpd listener stands in for the host's `smtp inet` on :25. */
const afterQueue = (s: Setup) =>
  startPostfix({
    mainCf: withPorts(snippet('main.cf'), s.relayPort, s.reinjectPort),
    masterCf: `127.0.0.1:${s.submissionPort} inet n - n - - smtpd\n` + withPorts(snippet('master.cf'), s.relayPort, s.reinjectPort),
    main: testEnvironment(s.sink.port),
  });

/** deploy/postfix/before-queue/master.cf, its `submission` entry on a free port instead of 587. */
const beforeQueue = (s: Setup) => {
  const service = `127.0.0.1:${s.submissionPort}/inet`;
  return startPostfix({
    masterCf: withPorts(snippet('before-queue', 'master.cf'), s.relayPort, s.reinjectPort).replace(/^submission(?=\s+inet\s)/m, `127.0.0.1:${s.submissionPort}`),
    main: testEnvironment(s.sink.port),
    // TLS and SASL are the admin's own (no certificate or SASL server here); the proxy filter
    // lines, which this test is about, stay as shipped.
    serviceOverrides: [
      `${service}/smtpd_tls_security_level=none`,
      `${service}/smtpd_sasl_auth_enable=no`,
      `${service}/smtpd_client_restrictions=permit_mynetworks,reject`,
    ],
  });
};

let after: Setup | undefined;
let before: Setup | undefined;

// Both instances start at once: `postfix start` runs a shell script of some 180 commands, seconds
// of wall time that need not be paid twice in a row.
beforeAll(async () => {
  if (!canRun) return;
  pki = await createTestPki();
  leaf = await pki.issueLeaf('alerts', { emails: [SENDER] });
  const [a, b] = await Promise.allSettled([setUp(afterQueue), setUp(beforeQueue)]);
  if (a.status === 'fulfilled') after = a.value;
  if (b.status === 'fulfilled') before = b.value;
  for (const r of [a, b]) if (r.status === 'rejected') throw r.reason;
});

afterAll(async () => {
  await Promise.all([tearDown(after), tearDown(before)]);
  await pki?.cleanup();
});

describe.skipIf(!canRun)('behind Postfix as an after-queue content filter (deploy/postfix/main.cf + master.cf)', () => {
  let sink: Sink;
  let postfix: PostfixInstance;
  let submissionPort: number;
  let relayPort: number;
  let reinjectPort: number;
  // The tests stop and restart the relay; the setup keeps the current one so teardown closes it.
  const relay = () => after!.relay!;
  const restartRelay = async (upstreamPort: number | undefined) => {
    await after!.relay?.close();
    after!.relay = undefined;
    if (upstreamPort !== undefined) after!.relay = await startTestRelay(relayEnv(relayPort, upstreamPort));
  };

  beforeAll(() => {
    ({ sink, submissionPort, relayPort, reinjectPort } = after!);
    postfix = after!.postfix!;
  });

  it('runs the snippets as shipped: all queued mail goes to the smime transport, the reinjection listener clears the filter', async () => {
    expect((await postfix.postconf('-h', 'content_filter')).trim()).toBe(`smime:[127.0.0.1]:${relayPort}`);
    const services = (await postfix.postconf('-P')).split('\n');
    expect(services).toContain('smime/unix/smtp_send_xforward_command = yes');
    expect(services).toContain(`127.0.0.1:${reinjectPort}/inet/content_filter =`);
    expect(postfix.processes().length).toBeGreaterThan(0);
  });

  it('mail submitted to Postfix reaches the sink signed, verifies with openssl, and the relay logs the original client (XFORWARD)', async () => {
    const t0 = Date.now();
    const reply = await submit(submissionPort, 'after-queue');
    expect(reply).toMatch(/^250 2\.0\.0 Ok: queued as \w+/);
    const [received] = await sink.waitFor(1, 20_000);
    const elapsed = Date.now() - t0;
    expect(subjectOf(received!)).toBe('after-queue');
    await expectSignedAndVerified(received!, pki);

    const tx = relay().logs.find((l) => l.msg === 'transaction');
    expect(tx, JSON.stringify(relay().logs)).toMatchObject({ outcome: 'signed', mailFrom: SENDER, rcptCount: 1 });
    // smtp_send_xforward_command=yes: the client is the submitter at 127.0.0.2, not Postfix's smime transport.
    expect(tx).toMatchObject({ client: CLIENT_ADDRESS, peer: '127.0.0.1' });
    await logged(postfix, new RegExp(`relay=127\\.0\\.0\\.1\\[127\\.0\\.0\\.1\\]:${relayPort}, .*status=sent`));
    console.info(`postfix after-queue: submit → signed at the sink in ${elapsed} ms`);
  });

  it('defers (never bounces or loses) while the relay is down, and delivers signed after the relay is back and the queue is flushed', async () => {
    const before = sink.received.length;
    await restartRelay(undefined);

    const reply = await submit(submissionPort, 'deferred');
    const queueId = /queued as (\w+)/.exec(reply)?.[1];
    expect(queueId, reply).toBeTruthy();

    const deferred = await until('the message in the deferred queue', async () =>
      (await postfix.queue()).find((m): m is QueuedMessage => m.queue_id === queueId && m.queue_name === 'deferred'));
    expect(deferred.sender).toBe(SENDER);
    expect(deferred.recipients).toHaveLength(1);
    expect(deferred.recipients[0]!.address).toBe(RECIPIENT);
    expect(deferred.recipients[0]!.delay_reason).toMatch(new RegExp(`127\\.0\\.0\\.1\\]:${relayPort}: Connection refused`));
    // Postfix's own account: deferred, nothing bounced, nothing delivered, one message queued.
    await logged(postfix, new RegExp(`${queueId}: to=<${RECIPIENT}>, relay=none, .*status=deferred`));
    expect(postfix.log()).not.toMatch(/status=bounced|sender non-delivery notification/);
    expect(await postfix.queue()).toHaveLength(1);
    expect(sink.received.length).toBe(before);

    await restartRelay(reinjectPort);
    const t0 = Date.now();
    await postfix.flush();
    const all = await sink.waitFor(before + 1, 20_000);
    const elapsed = Date.now() - t0;
    const received = all[before]!;
    expect(subjectOf(received)).toBe('deferred');
    await expectSignedAndVerified(received, pki);
    expect(relay().logs.find((l) => l.msg === 'transaction')).toMatchObject({ outcome: 'signed', client: CLIENT_ADDRESS });
    await until('an empty queue', async () => ((await postfix.queue()).length === 0 ? true : undefined));
    // No DSN went anywhere: the sink holds our two messages and nothing from <>.
    expect(sink.received.map((m) => m.from)).toEqual([SENDER, SENDER]);
    console.info(`postfix after-queue: relay back + postqueue -f → signed at the sink in ${elapsed} ms`);
  });

  it('defers when the relay answers 4xx (its upstream is unreachable), and delivers signed after a flush once it accepts', async () => {
    const before = sink.received.length;
    // Nothing listens on this port: the relay answers Postfix with a temporary failure.
    const [closed] = (await freePorts(1)) as [number];
    await restartRelay(closed);

    const reply = await submit(submissionPort, 'tempfailed');
    const queueId = /queued as (\w+)/.exec(reply)?.[1];
    expect(queueId, reply).toBeTruthy();
    const deferred = await until('the message in the deferred queue', async () =>
      (await postfix.queue()).find((m): m is QueuedMessage => m.queue_id === queueId && m.queue_name === 'deferred'));
    // The relay's own 4xx, as Postfix recorded it.
    expect(deferred.recipients[0]!.delay_reason).toMatch(/said: 4\d\d 4\.\d+\.\d+ /);
    expect(relay().logs.find((l) => l.msg === 'transaction')).toMatchObject({ outcome: 'upstream_tempfail' });
    await logged(postfix, new RegExp(`${queueId}: to=<${RECIPIENT}>, relay=127\\.0\\.0\\.1\\[127\\.0\\.0\\.1\\]:${relayPort}, .*status=deferred`));
    expect(postfix.log()).not.toMatch(/status=bounced|sender non-delivery notification/);
    expect(sink.received.length).toBe(before);

    await restartRelay(reinjectPort);
    await postfix.flush();
    const all = await sink.waitFor(before + 1, 20_000);
    expect(subjectOf(all[before]!)).toBe('tempfailed');
    await expectSignedAndVerified(all[before]!, pki);
    await until('an empty queue', async () => ((await postfix.queue()).length === 0 ? true : undefined));
    expect(sink.received.every((m) => m.from === SENDER)).toBe(true);
  });
});

describe.skipIf(!canRun)('behind Postfix as a before-queue proxy filter (deploy/postfix/before-queue/master.cf)', () => {
  let sink: Sink;
  let relay: TestRelay;
  let postfix: PostfixInstance;
  let submissionPort: number;

  beforeAll(async () => {
    ({ sink, submissionPort } = before!);
    relay = before!.relay!;
    postfix = before!.postfix!;
  });

  it('runs the snippet as shipped: the submission listener proxies to the relay, and nothing sets content_filter', async () => {
    const services = (await postfix.postconf('-P')).split('\n');
    expect(services).toContain(`127.0.0.1:${submissionPort}/inet/smtpd_proxy_filter = 127.0.0.1:${before!.relayPort}`);
    expect(services).toContain(`127.0.0.1:${before!.reinjectPort}/inet/content_filter =`);
    expect((await postfix.postconf('-h', 'content_filter')).trim()).toBe('');
  });

  it("the client's 250 is the relay's own, given after it signed and forwarded; the sink gets the message signed", async () => {
    const t0 = Date.now();
    const reply = await submit(submissionPort, 'before-queue');
    const elapsed = Date.now() - t0;
    // The relay's reply text (with its tx id) reaches the client through Postfix unchanged.
    expect(reply).toMatch(/^250 /);
    const line = transactionLine(relay, reply);
    // Logged before its reply was sent: signing and forwarding to the reinjection smtpd were done.
    expect(line).toMatchObject({ outcome: 'signed', mailFrom: SENDER, client: CLIENT_ADDRESS });
    expect(String(line.reply)).toMatch(/^250 /);
    const [received] = await sink.waitFor(1, 20_000);
    expect(subjectOf(received!)).toBe('before-queue');
    await expectSignedAndVerified(received!, pki);
    console.info(`postfix before-queue: submit → client's 250 in ${elapsed} ms`);
  });

  it("a sender the relay does not sign for gets the relay's 550 5.7.1 at the client, and nothing is queued", async () => {
    const before = sink.received.length;
    const r = await sendMessage(submissionPort, 'stranger@example.test', [RECIPIENT], message('refused'));
    // speed_adjust: Postfix takes the whole message before it opens the relay connection, so the
    // relay's MAIL FROM refusal reaches the client as the answer to the end of DATA.
    expect(r.mailFrom.code, JSON.stringify(r)).toBe(250);
    const refusal = r.final;
    expect(refusal, JSON.stringify(r)).toBeDefined();
    expect(refusal!.code).toBe(550);
    expect(refusal!.text).toMatch(/^5\.7\.1 Sender <stranger@example\.test> is not a mailbox this relay signs for/);
    expect(await postfix.queue()).toEqual([]);
    expect(sink.received.length).toBe(before);
  });
});
