/**
 * deploy/postfix/milter.cf proved with a real Postfix: a private instance (own config, queue and
 * loopback ports, see test/support/postfix.ts) has smtpd_milters and non_smtpd_milters pointing at
 * the relay's milter listener, and delivers locally into a Maildir. Mail goes
 *   client / sendmail → Postfix ⇄ relay (milter) → queue → local(8) → Maildir
 * and must arrive signed, verify in OpenSSL, gpgsm and NSS, and look like what the relay's own
 * SMTP path forwards for the same message.
 */
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RawClient, sendMessage } from './support/client.js';
import { hashPassword } from '../src/access/password.js';
import { requireDovecot, startDovecot, type DovecotInstance } from './support/dovecot.js';
import { createTestPki, makeTempDir, run, type TestPki } from './support/pki.js';
import { freePorts, requirePostfix, startPostfix, until, type PostfixInstance } from './support/postfix.js';
import { startTestRelay, type TestRelay } from './support/relay.js';
import { startSink, type Sink } from './support/sink.js';
import { assertAllVerify, splitSigned, verifyOpenssl } from './support/verify.js';

const SENDER = 'alerts@example.test';
const STRANGER = 'someone@example.org';
const DOMAIN = 'mail.example.test';
const RECIPIENT = `ops@${DOMAIN}`;

const snippet = readFileSync(fileURLToPath(new URL('../deploy/postfix/milter.cf', import.meta.url)), 'utf8');
const withPort = (text: string, port: number) => text.replace(/127\.0\.0\.1:8891\b/g, `127.0.0.1:${port}`);

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

/** Local delivery writes LF; a mail client (and IMAP) sees CRLF, which is what was signed. */
const crlf = (b: Buffer) => Buffer.from(b.toString('latin1').replace(/\r?\n/g, '\r\n'), 'latin1');
/** The header block of a message, as text. */
const headerOf = (m: Buffer) => m.toString('latin1').slice(0, m.toString('latin1').indexOf('\r\n\r\n') + 2);
const field = (m: Buffer, name: string) => new RegExp(`^${name}:[ \\t]*(.*(?:\\r\\n[ \\t].*)*)`, 'im').exec(headerOf(m))?.[1];
/** Header fields Postfix and local(8) add on the way: outside the signature, like any hop's. */
const HOP_FIELDS = new Set(['received', 'return-path', 'delivered-to', 'x-original-to']);
const fieldNames = (m: Buffer) =>
  headerOf(m)
    .split('\r\n')
    .filter((l) => /^[^ \t].*:/.test(l))
    .map((l) => l.slice(0, l.indexOf(':')).toLowerCase())
    .filter((n) => !HOP_FIELDS.has(n));

function message(subject: string, from = `Alerts <${SENDER}>`, body = 'Hello through the milter.\r\nGrüße, Zoë\r\n'): Buffer {
  return Buffer.from(
    `From: ${from}\r\nTo: ${RECIPIENT}\r\nSubject: ${subject}\r\nMessage-ID: <${subject.replace(/\W/g, '')}@example.test>\r\n` +
      `Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n${body}`,
    'utf8',
  );
}

const canRun = requirePostfix();
/** A private Dovecot answers Postfix's SASL (smtpd_sasl_type = dovecot) for the SMIME_RELAY_USERS tests. */
const canSasl = canRun && requireDovecot();
const SASL_USER = 'billing';
const SASL_PASSWORD = 'b1ll!ng-Pa55';

let pki: TestPki;
let bundle: string;
let sink: Sink;
let relay: TestRelay | undefined;
let postfix: PostfixInstance;
let maildirTemp: { dir: string; remove: () => Promise<void> } | undefined;
let maildir: string;
let smtpPort: number;
let milterPort: number;
/** A second submission listener with SASL, whose milter is a second relay with SMIME_RELAY_USERS. */
let saslPort: number;
let usersRelay: TestRelay | undefined;
let dovecot: DovecotInstance | undefined;

const startRelay = async () =>
  startTestRelay({
    SMIME_RELAY_CERT: bundle,
    SMIME_RELAY_UPSTREAM: sink.url,
    SMIME_RELAY_MILTER: `127.0.0.1:${milterPort}`,
    SMIME_RELAY_MAX_SIZE: '60MiB',
  });

/** The messages delivered so far, in CRLF form. */
const delivered = () => postfix.delivered().map(crlf);

async function nextDelivery(before: number): Promise<Buffer> {
  const all = await until('a delivery into the Maildir', () => (delivered().length > before ? delivered() : undefined), 20_000).catch((e: Error) => {
    throw new Error(`${e.message}\n--- maillog ---\n${postfix.log()}`);
  });
  return all[before]!;
}

/** The relay's latest transaction log line for a From mailbox, or the one whose tx id a reply names. */
const transaction = (from = SENDER) => relay!.logs.filter((l) => l.msg === 'transaction' && l.from === from).at(-1);
const transactionOf = (reply: string) => relay!.logs.find((l) => l.msg === 'transaction' && l.tx === /\(tx ([\w-]+)\)/.exec(reply)?.[1]);

beforeAll(async () => {
  if (!canRun) return;
  pki = await createTestPki();
  bundle = (await pki.issueLeaf('alerts', { emails: [SENDER] })).bundlePath;
  sink = await startSink();
  [smtpPort, milterPort, saslPort] = (await freePorts(3)) as [number, number, number];
  relay = await startRelay();
  // local(8) delivers as nobody; the postfix user must be able to traverse the parents.
  maildirTemp = await makeTempDir('smime-relay-maildir-');
  chmodSync(maildirTemp.dir, 0o755);
  maildir = join(maildirTemp.dir, 'Maildir');
  const made = await run('install', ['-d', '-o', 'nobody', '-g', 'nogroup', '-m', '700', maildir]);
  if (made.code !== 0) throw new Error(`install -d ${maildir}: ${made.stderr}`);
  const sasl: string[] = [];
  let saslListener = '';
  if (canSasl) {
    dovecot = await startDovecot({ maildir, user: SASL_USER, password: SASL_PASSWORD, sasl: true });
    const users = join(maildirTemp.dir, 'users');
    writeFileSync(users, `${SASL_USER}:${await hashPassword('the relay never sees this one')}:${SENDER}\n`, { mode: 0o600 });
    usersRelay = await startTestRelay({ SMIME_RELAY_CERT: bundle, SMIME_RELAY_UPSTREAM: sink.url, SMIME_RELAY_MILTER: '127.0.0.1:0', SMIME_RELAY_USERS: users });
    const usersMilter = usersRelay.milter!.address;
    saslListener = `127.0.0.1:${saslPort} inet n - n - - smtpd\n`;
    const service = `127.0.0.1:${saslPort}/inet`;
    sasl.push(
      `${service}/smtpd_sasl_auth_enable=yes`,
      `${service}/smtpd_sasl_type=dovecot`,
      `${service}/smtpd_sasl_path=${dovecot.saslPath}`,
      `${service}/smtpd_milters=inet:127.0.0.1:${usersMilter.kind === 'inet' ? usersMilter.port : 0}`,
    );
  }
  postfix = await startPostfix({
    mainCf: withPort(snippet, milterPort),
    masterCf: `127.0.0.1:${smtpPort} inet n - n - - smtpd\n` + saslListener,
    serviceOverrides: sasl,
    maildir: { user: 'ops', domain: DOMAIN, dir: maildir },
    main: {
      // This test environment only: the test may play a remote client (XCLIENT from loopback,
      // as Postfix's own test tools do), and messages are large.
      smtpd_authorized_xclient_hosts: '127.0.0.0/8',
      message_size_limit: '60000000',
      mailbox_size_limit: '0',
    },
  });
});

afterAll(async () => {
  await postfix?.stop();
  await dovecot?.stop();
  await maildirTemp?.remove();
  await usersRelay?.close();
  await relay?.close();
  await sink?.close();
  await pki?.cleanup();
});

describe.skipIf(!canRun)('behind Postfix as a milter (deploy/postfix/milter.cf)', () => {
  it('runs the snippet as shipped: the three main.cf lines, and nothing in master.cf', async () => {
    expect((await postfix.postconf('-h', 'smtpd_milters')).trim()).toBe(`inet:127.0.0.1:${milterPort}`);
    expect((await postfix.postconf('-hx', 'non_smtpd_milters')).trim()).toBe(`inet:127.0.0.1:${milterPort}`);
    expect((await postfix.postconf('-h', 'milter_default_action')).trim()).toBe('tempfail');
    expect((await postfix.postconf('-h', 'milter_protocol')).trim()).toBe('6');
  });

  it('mail submitted over SMTP arrives signed, verifies in OpenSSL, gpgsm and NSS, with the outer headers kept', async () => {
    const before = delivered().length;
    const sent = message('over smtp');
    const r = await sendMessage(smtpPort, SENDER, [RECIPIENT], sent);
    expect(r.final?.code, JSON.stringify(r)).toBe(250);
    const got = await nextDelivery(before);
    expect(field(got, 'content-type')).toMatch(/^multipart\/signed;/);
    await assertAllVerify(got, pki.rootCertPath);
    for (const name of ['From', 'To', 'Subject', 'Message-ID', 'Date']) expect(field(got, name), name).toBe(field(sent, name));
    expect(field(got, 'received')).toMatch(/by mta\.example\.test \(Postfix\)/);
    expect(transaction()).toMatchObject({ outcome: 'signed', client: '127.0.0.1', mailFrom: SENDER, rcptCount: 1 });
  });

  it('is exactly what the relay forwards over SMTP: the same signed entity and the same outer fields, and both verify', async () => {
    const before = delivered().length;
    const sent = message('compare', `Alerts <${SENDER}>`, 'Line one\r\nA long line: ' + 'x'.repeat(1200) + '\r\nünïcödé\r\n');
    expect((await sendMessage(smtpPort, SENDER, [RECIPIENT], sent)).final?.code).toBe(250);
    const viaMilter = await nextDelivery(before);
    const viaRelay = (await sendMessage(relay!.address.port, SENDER, [RECIPIENT], sent)).final;
    expect(viaRelay?.code).toBe(250);
    const forwarded = (await sink.waitFor(1)).at(-1)!.raw;

    expect(splitSigned(viaMilter).content.equals(splitSigned(forwarded).content)).toBe(true);
    expect(fieldNames(viaMilter)).toEqual(fieldNames(forwarded));
    await assertAllVerify(viaMilter, pki.rootCertPath);
    await assertAllVerify(forwarded, pki.rootCertPath);
  });

  it('mail from sendmail(1) (non_smtpd_milters) arrives signed and verifies', async () => {
    const before = delivered().length;
    const r = await postfix.sendmail(['-f', SENDER, '-i', RECIPIENT], message('from sendmail'));
    expect(r.code, r.stderr).toBe(0);
    const got = await nextDelivery(before);
    expect(field(got, 'subject')).toBe('from sendmail');
    expect((await verifyOpenssl(got, pki.rootCertPath)).ok).toBe(true);
    await assertAllVerify(got, pki.rootCertPath);
    // Postfix presents a local submission as localhost/127.0.0.1.
    expect(transaction()).toMatchObject({ outcome: 'signed', client: '127.0.0.1', clientName: 'localhost' });
  });

  it('mail from a sender it does not sign for arrives unchanged', async () => {
    const before = delivered().length;
    const sent = message('not covered', `Someone <${STRANGER}>`);
    expect((await sendMessage(smtpPort, STRANGER, [RECIPIENT], sent)).final?.code).toBe(250);
    const got = await nextDelivery(before);
    const body = (m: Buffer) => m.subarray(m.indexOf('\r\n\r\n') + 4);
    expect(body(got).equals(body(sent))).toBe(true);
    expect(fieldNames(got)).toEqual(fieldNames(sent));
    expect(field(got, 'content-type')).toBe('text/plain; charset=utf-8');
    expect(relay!.logs.some((l) => l.msg === 'transaction' && l.mailFrom === STRANGER)).toBe(false);
    expect(relay!.logs.some((l) => String(l.msg).startsWith('milter: message passed unchanged') && l.mailFrom === STRANGER)).toBe(true);
  });

  it('an already signed message passes unchanged', async () => {
    const signed = (await sink.waitFor(1)).at(-1)!.raw;
    const before = delivered().length;
    expect((await sendMessage(smtpPort, SENDER, [RECIPIENT], signed)).final?.code).toBe(250);
    const got = await nextDelivery(before);
    expect(splitSigned(got).content.equals(splitSigned(signed).content)).toBe(true);
    expect(splitSigned(got).signature.equals(splitSigned(signed).signature)).toBe(true);
    expect(transaction()).toMatchObject({ outcome: 'passed_protected' });
  });

  it('a client outside the allowed networks without SASL gets 550 5.7.1 for a covered From, and nothing is delivered', async () => {
    const before = delivered().length;
    const c = await RawClient.open(smtpPort);
    let refusal = '';
    try {
      await c.hello();
      // XCLIENT (from loopback, authorized for this test): the session now comes from 192.0.2.7.
      expect((await c.command('XCLIENT ADDR=192.0.2.7 NAME=client.example.net')).code).toBe(220);
      expect((await c.command('EHLO client.example.net')).code).toBe(250);
      const r = await c.send(SENDER, message('from outside'), RECIPIENT);
      expect(r.code).toBe(550);
      expect(r.text).toMatch(/^5\.7\.1 Client address 192\.0\.2\.7 is neither loopback nor in SMIME_RELAY_ALLOW.*\(tx [\w-]+\)$/);
      refusal = r.text;
      // The same client may still send mail the relay does not sign: the milter is no gate for that.
      expect((await c.send(STRANGER, message('outside, not covered', `Someone <${STRANGER}>`), RECIPIENT)).code).toBe(250);
    } finally {
      c.close();
    }
    await nextDelivery(before);
    expect(delivered().map((m) => field(m, 'subject'))).not.toContain('from outside');
    expect(transactionOf(refusal)).toMatchObject({ outcome: 'rejected_sender', client: '192.0.2.7', mailFrom: SENDER });
  });

  /** Issue 10's header attacks (test/admit-header-smtp.test.ts), from the covered sender. */
  const EVIL = 'evil@example.com';
  const lines = (...ls: string[]) => Buffer.from([...ls, `To: ${RECIPIENT}`, '', 'Hello.', ''].join('\r\n'), 'latin1');
  const attacks: [string, Buffer][] = [
    ['a bare CR that would become a second From', lines(`From: ${SENDER}`, `X-A: a\rFrom: ${EVIL}`)],
    ['a bare CR that would inject an outer Content-Type', lines(`From: ${SENDER}`, 'X-A: a\rContent-Type: multipart/mixed; boundary="x"')],
    ['CR CR LF, which would end the header early', lines(`From: ${SENDER}`, 'X-A: a\r', `From: ${EVIL}`)],
    ['two From fields', lines(`From: ${SENDER}`, `From: ${STRANGER}`)],
    ['a From naming two mailboxes', lines(`From: ${SENDER}, ${STRANGER}`)],
    ['an address followed by another in From', lines(`From: ${EVIL} <${SENDER}>`)],
    ['a display name that is another address', lines(`From: "security@bank.example" <${SENDER}>`)],
    ['a comment holding another address', lines(`From: ${SENDER} (${EVIL})`)],
    ['an encoded-word display name that decodes to another address', lines(`From: =?utf-8?Q?security=40bank=2Eexample?= <${SENDER}>`)],
    ['a Sender naming another address', lines(`From: ${SENDER}`, `Sender: ${EVIL}`)],
    ['a Resent-From naming another address', lines(`From: ${SENDER}`, `Resent-From: ${EVIL}`)],
    ['a group in From', lines(`From: Team: ${SENDER};`)],
    ['whitespace before the colon', lines(`From : ${EVIL}`, `From: ${SENDER}`)],
    ['a duplicate Content-Type', lines(`From: ${SENDER}`, 'Content-Type: text/plain', 'Content-Type: multipart/mixed; boundary=b')],
  ];

  it('the header attacks of issue 10: refused as the relay refuses them, or disarmed by Postfix before the milter reads them', async () => {
    let asRelay = 0;
    const outcomes: string[] = [];
    for (const [what, raw] of attacks) {
      const viaRelay = (await sendMessage(relay!.address.port, SENDER, [RECIPIENT], raw)).final!;
      expect(viaRelay.code, `${what}: ${viaRelay.text}`).toBeGreaterThanOrEqual(550);
      const before = delivered().length;
      const viaMilter = (await sendMessage(smtpPort, SENDER, [RECIPIENT], raw)).final!;
      const status = (r: { code: number; text: string }) => `${r.code} ${r.text.split(' ')[0]}`;
      if (viaMilter.code === 250) {
        // Postfix rewrote the header first (a bare CR becomes a space; "From :" becomes
        // X-Mailbox-Line): what was signed and delivered must then be harmless, one From naming
        // the covered mailbox.
        const got = await nextDelivery(before);
        const head = headerOf(got);
        expect(head.match(/^from[ \t]*:/gim), `${what}: ${head}`).toHaveLength(1);
        expect(field(got, 'from'), what).toBe(SENDER);
        expect(/\r(?!\n)/.test(head), what).toBe(false);
        expect((await verifyOpenssl(got, pki.rootCertPath)).ok, what).toBe(true);
        outcomes.push(`${what}: Postfix disarmed it, signed as ${JSON.stringify(head.split('\r\n').find((l) => /^x-a:/i.test(l)) ?? 'From: ' + field(got, 'from'))}`);
        continue;
      }
      // Where Postfix rewrote the header first, the reason can differ (CR CR LF leaves two From
      // fields, say), never the refusal: the same rules and replies as the relay's own.
      expect(status(viaMilter), `${what}: relay said ${viaRelay.code} ${viaRelay.text}, milter ${viaMilter.code} ${viaMilter.text}`).toMatch(/^(550 5\.7\.1|554 5\.6\.0)$/);
      const text = (r: { text: string }) => r.text.replace(/ \(tx [\w-]+\)$/, '');
      if (text(viaMilter) === text(viaRelay)) asRelay++;
      outcomes.push(`${what}: ${viaMilter.code} ${text(viaMilter) === text(viaRelay) ? 'as the relay' : `(relay: ${text(viaRelay)}; milter: ${text(viaMilter)})`}`);
      expect(delivered().length, what).toBe(before);
    }
    console.info(`issue 10 attacks through Postfix + milter:\n  ${outcomes.join('\n  ')}`);
    // Most reach the milter as sent and get the relay's very reply.
    expect(asRelay, outcomes.join('\n')).toBeGreaterThanOrEqual(attacks.length - 4);
  });

  it('a message with a 20 MB attachment arrives signed and verifies', async () => {
    const before = delivered().length;
    const attachment = Buffer.alloc(20 * 1024 * 1024);
    for (let i = 0; i < attachment.length; i++) attachment[i] = (i * 7919) & 0xff;
    const raw = Buffer.concat([
      Buffer.from(
        `From: ${SENDER}\r\nTo: ${RECIPIENT}\r\nSubject: large\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n` +
          `--b\r\nContent-Type: text/plain\r\n\r\nSee attachment.\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n` +
          `Content-Disposition: attachment; filename="data.bin"\r\n\r\n`,
      ),
      Buffer.from(attachment.toString('base64').replace(/.{76}/g, '$&\r\n') + '\r\n--b--\r\n'),
    ]);
    const t0 = Date.now();
    expect((await sendMessage(smtpPort, SENDER, [RECIPIENT], raw)).final?.code).toBe(250);
    const got = await nextDelivery(before);
    console.info(`postfix milter: 20 MB attachment submitted → signed in the Maildir in ${Date.now() - t0} ms`);
    expect(field(got, 'subject')).toBe('large');
    const v = await verifyOpenssl(got, pki.rootCertPath);
    expect(v.ok, v.detail).toBe(true);
  }, 120_000);

  it('with the relay stopped, Postfix answers 451 and delivers nothing; signed again once it is back', async () => {
    await relay!.close();
    relay = undefined;
    const before = delivered().length;
    const r = await sendMessage(smtpPort, SENDER, [RECIPIENT], message('relay down'));
    // milter_default_action = tempfail: Postfix refuses the session's commands with 451 4.7.1.
    const refusal = [r.mailFrom, ...r.rcptTo, r.data, r.final].find((x) => x && x.code !== 250 && x.code !== 354);
    expect(refusal?.code, JSON.stringify(r)).toBe(451);
    expect(refusal?.text).toMatch(/^4\.7\.1 /);
    expect(await postfix.queue()).toEqual([]);

    relay = await startRelay();
    expect((await sendMessage(smtpPort, SENDER, [RECIPIENT], message('relay back'))).final?.code).toBe(250);
    const got = await nextDelivery(before);
    expect(field(got, 'subject')).toBe('relay back');
    expect(delivered().map((m) => field(m, 'subject'))).not.toContain('relay down');
  });

  describe.skipIf(!canSasl)('with SMIME_RELAY_USERS: the SASL login Postfix names ({auth_authen}, Dovecot SASL)', () => {
    const lastOf = (r: TestRelay) => r.logs.findLast((l) => l.msg === 'transaction');

    it('a user logged in over SASL gets mail from its mailbox signed', async () => {
      const before = delivered().length;
      const c = await RawClient.open(saslPort);
      try {
        await c.hello();
        expect((await c.authPlain(SASL_USER, SASL_PASSWORD)).code).toBe(235);
        const r = await c.send(SENDER, message('sasl user'), RECIPIENT);
        expect(r.code, r.text).toBe(250);
      } finally {
        c.close();
      }
      const got = await nextDelivery(before);
      expect(field(got, 'subject')).toBe('sasl user');
      expect((await verifyOpenssl(got, pki.rootCertPath)).ok).toBe(true);
      expect(lastOf(usersRelay!)).toMatchObject({ user: SASL_USER, outcome: 'signed', client: '127.0.0.1' });
    });

    it('without a login, the same listener gets 550 5.7.1 for a covered From, even from loopback', async () => {
      const r = await sendMessage(saslPort, SENDER, [RECIPIENT], message('no login'));
      expect(r.final?.code, JSON.stringify(r)).toBe(550);
      expect(r.final?.text).toMatch(/^5\.7\.1 Authentication required: mail from a covered mailbox is signed only for senders who logged in/);
      expect(lastOf(usersRelay!)).toMatchObject({ outcome: 'rejected_sender' });
    });
  });

  it('every Postfix (and Dovecot) process is gone after stop', async () => {
    expect(postfix.processes().length).toBeGreaterThan(0);
    await postfix.stop();
    expect(postfix.processes()).toEqual([]);
    if (dovecot) {
      expect(dovecot.processes().length).toBeGreaterThan(0);
      const pids = dovecot.processes();
      await dovecot.stop();
      expect(pids.filter(alive)).toEqual([]);
    }
  });
});
