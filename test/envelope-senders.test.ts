/**
 * SMIME_RELAY_ENVELOPE_SENDERS: legacy senders whose envelope sender (MAIL FROM) is not the From
 * address. Bounce handling and VERP use bounces+user=domain@example.com, `sendmail` without -f
 * uses root@host, a bounce itself uses <>. They may be allowed at MAIL FROM; the From header must
 * still be a certificate's mailbox, and a user's own mailbox list still applies to it.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashPassword } from '../src/access/password.js';
import { NO_ENVELOPE_SENDERS, parseEnvelopeSenders } from '../src/admit/envelope-senders.js';
import { ConfigError, loadConfig } from '../src/config/load.js';
import { RawClient, sendMessage } from './support/client.js';
import { createTestPki, type Leaf, type TestPki } from './support/pki.js';
import { freePorts, requirePostfix, startPostfix, type PostfixInstance } from './support/postfix.js';
import { startTestRelay, type TestRelay } from './support/relay.js';
import { startSink, type Sink } from './support/sink.js';
import { assertAllVerify, verifyOpenssl } from './support/verify.js';

const ALERTS = 'alerts@example.test';
const BILLING = 'billing@example.test';
const VERP = 'bounces+ops=example.org@example.test';
const PATTERNS = 'bounces+*@example.test, root@*, <>';

const message = (from: string, subject = 'legacy') =>
  Buffer.from(`From: ${from}\r\nTo: ops@example.org\r\nSubject: ${subject}\r\n\r\nSent by a legacy app.\r\n`);

let pki: TestPki;
let alerts: Leaf;
let billing: Leaf;
let sink: Sink;

beforeAll(async () => {
  pki = await createTestPki();
  [alerts, billing] = await Promise.all([pki.issueLeaf('alerts', { emails: [ALERTS] }), pki.issueLeaf('billing', { emails: [BILLING] })]);
  // One directory, two certificates: the relay signs for both mailboxes.
  mkdirSync(join(pki.dir, 'both'), { mode: 0o700 });
  copyFileSync(alerts.bundlePath, join(pki.dir, 'both', 'alerts.pem'));
  copyFileSync(billing.bundlePath, join(pki.dir, 'both', 'billing.pem'));
  sink = await startSink();
});

afterAll(async () => {
  await sink?.close();
  await pki?.cleanup();
});

describe('the patterns', () => {
  // Parsed inside each test, not while the file loads: a parse that fails must fail a test.
  const parsed = () => {
    const p = parseEnvelopeSenders(PATTERNS);
    if (typeof p === 'string') throw new Error(p);
    return p;
  };

  it('* matches within the local part or the domain, never across @; matching ignores case', () => {
    const p = parsed();
    expect(p.matches(VERP)).toBe(true);
    expect(p.matches('Bounces+X@Example.TEST')).toBe(true);
    expect(p.matches('bounces@example.test')).toBe(false);
    expect(p.matches('bounces+x@example.test.evil.example')).toBe(false);
    expect(p.matches('bounces+x@evil.example')).toBe(false);
    expect(p.matches('root@build-host.example.net')).toBe(true);
    expect(p.matches('rooted@example.test')).toBe(false);
  });

  it('<> is the null sender, and only <> allows it', () => {
    const p = parsed();
    expect(p.matches('')).toBe(true);
    const withoutNull = parseEnvelopeSenders('root@*');
    expect(typeof withoutNull !== 'string' && withoutNull.matches('')).toBe(false);
  });

  it('reads a comma-separated list, trimming each entry and skipping empty ones', () => {
    const q = parseEnvelopeSenders(' root@* ,, <> ,');
    if (typeof q === 'string') throw new Error(q);
    expect(q.patterns).toEqual(['root@*', '<>']);
    expect(String(q)).toBe('root@*,<>');
    expect(q.matches('root@host.example')).toBe(true);
    expect(q.matches('')).toBe(true);
    expect(q.matches('other@host.example')).toBe(false);
  });

  it('refuses a list without any pattern, and each entry that is not local@domain or <>', () => {
    for (const empty of ['', ' ', ',', ' , ']) expect(parseEnvelopeSenders(empty)).toBe('expected patterns such as bounces+*@example.com,root@*,<>');
    for (const bad of ['bounces', '@example.com', 'root@', 'a@b@c', '<root@example.com>', 'x<@example.com', 'root@exa mple.com', 'ro ot@example.com', '<>x', 'x<>', '<root@example.com', 'root@example.com>']) {
      expect(parseEnvelopeSenders(bad), bad).toBe(
        `'${bad}' is not an address pattern: write local@domain with * as a wildcard (bounces+*@example.com, root@*), or <> for the null sender`,
      );
    }
    for (const good of ['a@b', 'root@*', 'bounces+*@example.com', '*@*']) expect(typeof parseEnvelopeSenders(good), good).toBe('object');
  });

  it('takes the characters of a pattern literally, except *', () => {
    const q = parseEnvelopeSenders('a.b+c@ex.ample');
    if (typeof q === 'string') throw new Error(q);
    expect(q.matches('a.b+c@ex.ample')).toBe(true);
    expect(q.matches('aXb+c@ex.ample')).toBe(false);
    expect(q.matches('a.bbc@ex.ample')).toBe(false);
    expect(q.matches('a.b+c@exXample')).toBe(false);
  });

  it('without the setting, no envelope sender is allowed besides the mailboxes', () => {
    expect(NO_ENVELOPE_SENDERS.patterns).toEqual([]);
    expect(NO_ENVELOPE_SENDERS.matches('')).toBe(false);
    expect(NO_ENVELOPE_SENDERS.matches('root@host.example')).toBe(false);
    expect(String(NO_ENVELOPE_SENDERS)).toBe('');
  });

  it('config --print shows the patterns as written', () => {
    const { config } = loadConfig({ env: { SMIME_RELAY_ENVELOPE_SENDERS: PATTERNS } });
    expect(String(config.envelopeSenders)).toBe('bounces+*@example.test,root@*,<>');
  });

  it('a value that is not a list of patterns stops the relay, naming the setting', () => {
    let error: unknown;
    try {
      loadConfig({ env: { SMIME_RELAY_ENVELOPE_SENDERS: 'bounces, root@*' } });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as Error).message).toContain("SMIME_RELAY_ENVELOPE_SENDERS (--envelope-senders, from SMIME_RELAY_ENVELOPE_SENDERS): 'bounces' is not an address pattern");
  });
});

describe('through the relay over SMTP', () => {
  let strict: TestRelay;
  let legacy: TestRelay;
  let withUsers: TestRelay;
  const password = 'billing-secret';

  beforeAll(async () => {
    const usersFile = join(pki.dir, 'users');
    writeFileSync(usersFile, `billing:${await hashPassword(password, { N: 1024, r: 8, p: 1 })}:${BILLING}\n`, { mode: 0o600 });
    const certs = { SMIME_RELAY_CERT: alerts.bundlePath, SMIME_RELAY_UPSTREAM: sink.url };
    [strict, legacy] = await Promise.all([
      startTestRelay(certs),
      startTestRelay({ ...certs, SMIME_RELAY_ENVELOPE_SENDERS: PATTERNS }),
    ]);
    withUsers = await startTestRelay({
      SMIME_RELAY_CERT: join(pki.dir, 'both'),
      SMIME_RELAY_UPSTREAM: sink.url,
      SMIME_RELAY_ENVELOPE_SENDERS: PATTERNS,
      SMIME_RELAY_USERS: usersFile,
    });
  });

  afterAll(async () => {
    await Promise.all([strict?.close(), legacy?.close(), withUsers?.close()]);
  });

  it('by default MAIL FROM must be a certificate\'s mailbox: a VERP address gets 550 5.7.1 naming the setting', async () => {
    const r = await sendMessage(strict.address.port, VERP, ['ops@example.org'], message(ALERTS));
    expect(r.mailFrom.code).toBe(550);
    expect(r.mailFrom.text).toMatch(/^5\.7\.1 Sender <bounces\+ops=example\.org@example\.test> is not a mailbox this relay signs for/);
    expect(r.mailFrom.text).toContain('SMIME_RELAY_ENVELOPE_SENDERS');
  });

  it.each([
    ['a VERP bounce address', VERP],
    ['legacy sendmail without -f (root@host)', 'root@build-host.example.net'],
    ['the null sender <>', ''],
  ])('%s is accepted at MAIL FROM; the message is signed as the From header, with the envelope unchanged', async (_what, envelope) => {
    const before = sink.received.length;
    const r = await sendMessage(legacy.address.port, envelope, ['ops@example.org'], message(ALERTS, `envelope ${envelope || '<>'}`));
    expect(r.mailFrom.code, r.mailFrom.text).toBe(250);
    expect(r.final?.code, r.final?.text).toBe(250);
    const got = sink.received[before]!;
    expect(got.from).toBe(envelope);
    expect(got.raw.toString('latin1')).toMatch(/^Content-Type: multipart\/signed;/m);
    await assertAllVerify(got.raw, pki.rootCertPath);
  });

  it('the From header must still be a certificate\'s mailbox', async () => {
    const r = await sendMessage(legacy.address.port, VERP, ['ops@example.org'], message('stranger@example.test'));
    expect(r.mailFrom.code).toBe(250);
    expect(r.final?.code).toBe(550);
    expect(r.final?.text).toMatch(/^5\.7\.1 From.*stranger@example\.test/);
  });

  it('an address no pattern matches is still refused', async () => {
    const r = await sendMessage(legacy.address.port, 'bounces+x@evil.example', ['ops@example.org'], message(ALERTS));
    expect(r.mailFrom.code).toBe(550);
  });

  it("a user limited to billing@ may use a bounce address at MAIL FROM, but From must still be one of the user's mailboxes", async () => {
    const send = async (from: string) => {
      const c = await RawClient.open(withUsers.address.port);
      try {
        await c.hello();
        expect((await c.authPlain('billing', password)).code).toBe(235);
        return await c.send(VERP, message(from));
      } finally {
        c.close();
      }
    };
    const own = await send(BILLING);
    expect(own.code, own.text).toBe(250);
    const other = await send(ALERTS);
    expect(other.code).toBe(550);
    expect(other.text).toMatch(/^5\.7\.1 .*billing/);
  });
});

describe.skipIf(!requirePostfix())('legacy `sendmail` through Postfix (deploy/postfix/ after-queue filter)', () => {
  let postfix: PostfixInstance | undefined;
  let relay: TestRelay | undefined;
  let mailSink: Sink;

  const snippet = (name: string) => readFileSync(fileURLToPath(new URL(`../deploy/postfix/${name}`, import.meta.url)), 'utf8');

  beforeAll(async () => {
    const [relayPort, reinjectPort] = (await freePorts(2)) as [number, number];
    const ports = (text: string) => text.replace(/(127\.0\.0\.1\]?):10025\b/g, `$1:${relayPort}`).replace(/127\.0\.0\.1:10026\b/g, `127.0.0.1:${reinjectPort}`);
    mailSink = await startSink();
    relay = await startTestRelay({
      SMIME_RELAY_LISTEN: `127.0.0.1:${relayPort}`,
      SMIME_RELAY_CERT: alerts.bundlePath,
      SMIME_RELAY_UPSTREAM: `smtp://127.0.0.1:${reinjectPort}`,
      // The README's legacy-sendmail and VERP examples.
      SMIME_RELAY_ENVELOPE_SENDERS: 'root@example.test, bounces+*@example.test',
    });
    postfix = await startPostfix({
      mainCf: ports(snippet('main.cf')),
      masterCf: ports(snippet('master.cf')),
      main: { relayhost: `[127.0.0.1]:${mailSink.port}`, default_transport: 'smtp', smtp_host_lookup: 'native', smtp_dns_support_level: 'disabled' },
    });
  }, 120_000);

  afterAll(async () => {
    await postfix?.stop();
    await relay?.close();
    await mailSink?.close();
  });

  /** Postfix's own sendmail(1), as cron and old scripts call it, run as root. */
  function sendmail(args: string[], subject: string) {
    const r = spawnSync('/usr/sbin/sendmail', ['-C', postfix!.configDir, ...args, '-t', '-i'], {
      input: `From: ${ALERTS}\nTo: ops@example.org\nSubject: ${subject}\n\nNightly report.\n`,
      encoding: 'utf8',
      timeout: 30_000,
    });
    expect(r.status, r.stderr).toBe(0);
  }

  it('without -f (envelope root@example.test) and with a VERP -f: both arrive signed and verify', async () => {
    sendmail([], 'cron');
    sendmail(['-f', VERP], 'verp');
    const got = await mailSink.waitFor(2, 30_000);
    const bySubject = new Map(got.map((m) => [/^Subject: (.*)$/m.exec(m.raw.toString('latin1'))![1]!.trim(), m]));
    expect(bySubject.get('cron')!.from).toBe('root@example.test');
    expect(bySubject.get('verp')!.from).toBe(VERP);
    for (const m of got) {
      expect(m.raw.toString('latin1')).toMatch(/^Content-Type: multipart\/signed;/m);
      const v = await verifyOpenssl(m.raw, pki.rootCertPath);
      expect(v.ok, v.detail).toBe(true);
    }
    expect(relay!.logs.filter((l) => l.msg === 'transaction').map((l) => l.outcome)).toEqual(['signed', 'signed']);
  }, 60_000);
});
