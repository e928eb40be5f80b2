import { spawn, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import nodemailer from 'nodemailer';
import { SMTPServer } from 'smtp-server';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { AllowList, isLoopback, parseCidr } from '../src/access/network.js';
import { hashPassword, parsePasswordHash, verifyPassword } from '../src/access/password.js';
import { parseUsersFile } from '../src/access/users.js';
import { ConfigError } from '../src/config/load.js';
import { required } from './support/ci.js';
import { RawClient } from './support/client.js';
import { lanAddressForTests } from './support/lan-address.js';
import { createTestPki, type Leaf, type TestPki } from './support/pki.js';
import { startTestRelay, type TestRelay } from './support/relay.js';
import { startSink, type Sink } from './support/sink.js';
import { verifyOpenssl } from './support/verify.js';

const root = new URL('..', import.meta.url).pathname;
const BILLING = 'billing@example.test';
const SECURITY = 'security@example.test';

/** The newest log line matching `pick`. */
const lastLog = (relay: TestRelay, pick: (l: Record<string, unknown>) => boolean) => relay.logs.findLast(pick);

/** A raw SMTP client from `localAddress` (127.0.0.2 looks like a second host) or to `host`. */
const open = (port: number, o: { host?: string; localAddress?: string } = {}) => RawClient.open(port, o.host, { localAddress: o.localAddress });

const message = (from: string) => `From: ${from}\r\nTo: someone@example.org\r\nSubject: access\r\n\r\nhello\r\n`;

let pki: TestPki;
let leaf: Leaf;
let sink: Sink;
let dir: string;
let usersPath: string;
const passwords = { billing: 'b1ll!ng-Pa55', ops: 'ops pass with spaces ünïcode' };

async function writeUsers(lines: string[]) {
  await writeFile(usersPath, lines.join('\n') + '\n', { mode: 0o600 });
}

beforeAll(async () => {
  pki = await createTestPki();
  leaf = await pki.issueLeaf('company', { emails: [BILLING, SECURITY] });
  sink = await startSink();
  dir = await mkdtemp(join(tmpdir(), 'smr-access-'));
  usersPath = join(dir, 'users');
  await writeUsers([
    '# users of the relay',
    `billing:${await hashPassword(passwords.billing)}:${BILLING}`,
    '',
    `ops:${await hashPassword(passwords.ops)}`,
  ]);
});

afterAll(async () => {
  await sink?.close();
  await pki?.cleanup();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const baseEnv = () => ({ SMIME_RELAY_CERT: leaf.bundlePath, SMIME_RELAY_UPSTREAM: sink.url });

async function expectRefusal(env: Record<string, string>): Promise<string> {
  let relay: TestRelay | undefined;
  try {
    relay = await startTestRelay({ ...baseEnv(), ...env });
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    return (e as Error).message;
  }
  await relay.close();
  throw new Error(`the relay started with ${JSON.stringify(env)}`);
}

const hasScript = spawnSync('script', ['--version']).status === 0;

// A non-loopback address of this machine: its LAN address, or one added to lo when running as
// root; none is a failure under CI=true.
const lan = lanAddressForTests();
const lanAddress = lan?.address;
afterAll(() => lan?.release());

describe('binding: off loopback only with an allow-list or users', () => {
  it.each([['0.0.0.0:0'], ['[::]:0']])('refuses to start on %s without SMIME_RELAY_ALLOW or SMIME_RELAY_USERS, naming both fixes', async (listen) => {
    const why = await expectRefusal({ SMIME_RELAY_LISTEN: listen });
    expect(why).toContain('not a loopback address');
    expect(why).toContain('set SMIME_RELAY_ALLOW');
    expect(why).toContain('set SMIME_RELAY_USERS');
    expect(why).toContain('every interface');
  });

  it.skipIf(!lanAddress)('refuses a LAN address of this machine (%s) the same way', async () => {
    const why = await expectRefusal({ SMIME_RELAY_LISTEN: `${lanAddress}:0` });
    expect(why).toContain(`SMIME_RELAY_LISTEN=${lanAddress}:0`);
  });

  it('starts on 0.0.0.0 with an allow-list, and on localhost (a name that resolves to loopback) without one', async () => {
    // Each relay ends with this test, also on failure or timeout (startTestRelay registers it).
    const everywhere = await startTestRelay({ ...baseEnv(), SMIME_RELAY_LISTEN: '0.0.0.0:0', SMIME_RELAY_ALLOW: '127.0.0.1/32' });
    expect(everywhere.address.host).toBe('0.0.0.0');
    const listed = await open(everywhere.address.port, { localAddress: '127.0.0.1' });
    expect((await listed.hello()).code).toBe(250);
    listed.close();
    // The allow-list is what made 0.0.0.0 acceptable, and it is in force.
    const unlisted = await open(everywhere.address.port, { localAddress: '127.0.0.2' });
    expect((await unlisted.read()).code).toBe(554);
    unlisted.close();
    await everywhere.close();

    const local = await startTestRelay({ ...baseEnv(), SMIME_RELAY_LISTEN: 'localhost:0' });
    expect(isLoopback(local.address.host)).toBe(true);
    const c = await open(local.address.port, { host: local.address.host });
    expect((await c.hello()).code).toBe(250);
    c.close();
    await local.close();
  });

  it('refuses users without TLS off loopback: remote clients could never authenticate', async () => {
    const why = await expectRefusal({ SMIME_RELAY_LISTEN: '0.0.0.0:0', SMIME_RELAY_USERS: usersPath });
    expect(why).toContain('Set SMIME_RELAY_TLS_CERT and SMIME_RELAY_TLS_KEY');
  });

  it('the CLI exits 2 with the reason on stderr', async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', join(root, 'src/cli.ts'), 'serve', '--listen', '0.0.0.0:0'], {
      cwd: root,
      env: { PATH: process.env.PATH!, ...baseEnv() },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    // Should the relay start after all, it listens on every interface: it ends with the test,
    // also when the test times out waiting for the exit.
    onTestFinished(() => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    expect(code, stderr).toBe(2);
    expect(stderr).toContain('neither SMIME_RELAY_ALLOW nor SMIME_RELAY_USERS is set');
  });
});

describe('SMIME_RELAY_ALLOW: a network gate at connect', () => {
  it('parses IPv4, IPv6 and IPv4-mapped networks, and matches IPv4-mapped clients against IPv4 rules', () => {
    const list = new AllowList(['10.0.0.0/8', '2001:db8::/32', '::ffff:192.168.0.0/112', '198.51.100.7'].map(parseCidr));
    expect(list.allows('10.1.2.3')).toBe(true);
    expect(list.allows('::ffff:10.1.2.3')).toBe(true);
    expect(list.allows('::FFFF:10.1.2.3')).toBe(true);
    expect(list.allows('11.1.2.3')).toBe(false);
    expect(list.allows('2001:db8::25')).toBe(true);
    expect(list.allows('2001:db9::25')).toBe(false);
    expect(list.allows('192.168.4.5')).toBe(true);
    expect(list.allows('198.51.100.7')).toBe(true);
    expect(list.allows('198.51.100.8')).toBe(false);
    expect(list.allows('not an address')).toBe(false);
    expect(() => parseCidr('10.0.0.0/33')).toThrow(/prefix length must be 0-32/);
    expect(() => parseCidr('example.com')).toThrow(/not an IP address/);
    expect(isLoopback('127.0.0.2')).toBe(true);
    expect(isLoopback('::ffff:127.0.0.1')).toBe(true);
    expect(isLoopback('::1')).toBe(true);
    expect(isLoopback('192.0.2.2')).toBe(false);
  });

  it('a bad network in SMIME_RELAY_ALLOW stops the relay with the entry and an example', async () => {
    const why = await expectRefusal({ SMIME_RELAY_ALLOW: '127.0.0.1/32, 10.0.0.300/8' });
    expect(why).toContain('SMIME_RELAY_ALLOW');
    expect(why).toContain("'10.0.0.300/8' is not an IP address");
  });

  describe('with SMIME_RELAY_ALLOW=127.0.0.1/32 on a dual-stack listener', () => {
    let relay: TestRelay;
    beforeAll(async () => {
      relay = await startTestRelay({ ...baseEnv(), SMIME_RELAY_LISTEN: '[::]:0', SMIME_RELAY_ALLOW: '127.0.0.1/32' });
    });
    afterAll(() => relay?.close());

    it('a client from 127.0.0.2 gets 554 5.7.1 at connect, naming its address and SMIME_RELAY_ALLOW', async () => {
      const c = await open(relay.address.port, { localAddress: '127.0.0.2' });
      const greeting = await c.read();
      expect(greeting.code).toBe(554);
      expect(greeting.text).toMatch(/^5\.7\.1 Client address 127\.0\.0\.2 is not in SMIME_RELAY_ALLOW/);
      expect((await c.read()).code).toBe(0); // and the connection is closed
      c.close();
      expect(relay.logs.some((l) => l.msg === 'connection refused: client address is not in SMIME_RELAY_ALLOW' && l.client === '127.0.0.2')).toBe(true);
    });

    it('loopback is not implicitly allowed: ::1 is refused when only 127.0.0.1/32 is listed', async () => {
      const c = await open(relay.address.port, { host: '::1' });
      const greeting = await c.read();
      expect(greeting.code).toBe(554);
      expect(greeting.text).toContain('Client address ::1 is not in SMIME_RELAY_ALLOW');
      c.close();
    });

    it('a client from 127.0.0.1 (seen as ::ffff:127.0.0.1 by the socket) is greeted and can send', async () => {
      const c = await open(relay.address.port, { localAddress: '127.0.0.1' });
      await c.hello();
      const before = sink.received.length;
      const final = await c.send(BILLING, message(BILLING));
      expect(final.code, final.text).toBe(250);
      await sink.waitFor(before + 1);
      c.close();
    });
  });
});

describe('SMIME_RELAY_USERS: SMTP AUTH and per-user sender mailboxes', () => {
  let relay: TestRelay;
  beforeAll(async () => {
    relay = await startTestRelay({ ...baseEnv(), SMIME_RELAY_USERS: usersPath });
  });
  afterAll(() => relay?.close());

  it('offers AUTH PLAIN LOGIN on loopback without TLS, and demands it at MAIL FROM with 530 5.7.0', async () => {
    const c = await open(relay.address.port);
    const ehlo = await c.hello();
    expect(ehlo.text).toMatch(/AUTH PLAIN LOGIN/);
    const mail = await c.command(`MAIL FROM:<${BILLING}>`);
    expect(mail.code).toBe(530);
    expect(mail.text).toMatch(/^5\.7\.0 Authentication required/);
    c.close();
  });

  it.each([
    ['PLAIN', 'authPlain'],
    ['LOGIN', 'authLogin'],
  ] as const)('AUTH %s: the right password gives 235, a wrong one 535 5.7.8', async (_m, how) => {
    const bad = await open(relay.address.port);
    await bad.hello();
    const refused = await bad[how]('billing', 'wrong-password');
    expect(refused.code).toBe(535);
    expect(refused.text).toBe('5.7.8 Authentication credentials invalid');
    bad.close();

    const good = await open(relay.address.port);
    await good.hello();
    expect((await good[how]('billing', passwords.billing)).code).toBe(235);
    good.close();
  });

  it('an unknown user gets the same 535 5.7.8, and its name is not logged (it may be a mistyped password)', async () => {
    const c = await open(relay.address.port);
    await c.hello();
    const r = await c.authPlain('Tr0ub4dor-typed-into-the-user-field', 'x');
    expect(r.code).toBe(535);
    c.close();
    const line = lastLog(relay, (l) => l.msg === 'authentication failed');
    expect(line).toMatchObject({ userKnown: false, client: '127.0.0.1' });
    expect(JSON.stringify(relay.logs)).not.toContain('Tr0ub4dor');
  });

  it('billing cannot send as security@ (550 5.7.1 at MAIL FROM), but can as billing@, signed', async () => {
    const c = await open(relay.address.port);
    await c.hello();
    expect((await c.authPlain('billing', passwords.billing)).code).toBe(235);
    const refused = await c.command(`MAIL FROM:<${SECURITY}>`);
    expect(refused.code).toBe(550);
    expect(refused.text).toMatch(new RegExp(`^5\\.7\\.1 User billing may not send as <${SECURITY}>; it may send as: ${BILLING} \\(tx [\\w-]+\\)$`));

    const before = sink.received.length;
    const final = await c.send(BILLING, message(`Billing <${BILLING}>`));
    expect(final.code, final.text).toBe(250);
    const [received] = (await sink.waitFor(before + 1)).slice(before);
    expect((await verifyOpenssl(received!.raw, pki.rootCertPath)).ok).toBe(true);
    c.close();
    expect(lastLog(relay, (l) => l.msg === 'transaction')).toMatchObject({ user: 'billing', outcome: 'signed' });
  });

  it('billing with MAIL FROM billing@ but From: security@ is refused after DATA with 550 5.7.1', async () => {
    const c = await open(relay.address.port);
    await c.hello();
    await c.authLogin('billing', passwords.billing);
    const before = sink.received.length;
    const final = await c.send(BILLING, message(SECURITY));
    expect(final.code).toBe(550);
    expect(final.text).toMatch(new RegExp(`^5\\.7\\.1 User billing may not send as From <${SECURITY}>; it may send as: ${BILLING}`));
    expect(sink.received.length).toBe(before);
    c.close();
  });

  it('a user without a mailbox list may send as every mailbox of the certificate (nodemailer as the client)', async () => {
    const transport = nodemailer.createTransport({ host: '127.0.0.1', port: relay.address.port, auth: { user: 'ops', pass: passwords.ops } });
    const before = sink.received.length;
    const info = await transport.sendMail({ envelope: { from: SECURITY, to: ['someone@example.org'] }, raw: message(SECURITY) });
    expect(info.response).toMatch(/^250 2\.0\.0 Ok/);
    await sink.waitFor(before + 1);
    transport.close();
  });

  it('reload() re-reads the users file: a narrowed or removed user applies at once; a broken file keeps the old users', async () => {
    const original = readFileSync(usersPath, 'utf8');
    try {
      // A session that authenticated before the reload is judged by the new file at its next MAIL FROM.
      const c = await open(relay.address.port);
      await c.hello();
      expect((await c.authPlain('ops', passwords.ops)).code).toBe(235);
      await writeUsers([original.split('\n').find((l) => l.startsWith('billing:'))!]);
      relay.reload();
      const revoked = await c.command(`MAIL FROM:<${SECURITY}>`);
      expect(revoked.code).toBe(530);
      c.close();
      expect(relay.logs.some((l) => l.msg === 'users file reloaded' && l.users === 1)).toBe(true);

      await writeUsers(['billing:not-a-hash-but-a-pasted-password']);
      relay.reload();
      const err = lastLog(relay, (l) => l.msg === 'users file NOT reloaded; the previous users stay in service');
      expect(err).toBeDefined();
      expect(JSON.stringify(err)).not.toContain('pasted-password');
      const still = await open(relay.address.port);
      await still.hello();
      expect((await still.authPlain('billing', passwords.billing)).code).toBe(235);
      still.close();
    } finally {
      await writeFile(usersPath, original);
      relay.reload();
    }
  });
});

describe('SMIME_RELAY_ALLOW and SMIME_RELAY_USERS together: network gate AND authentication', () => {
  let relay: TestRelay;
  beforeAll(async () => {
    relay = await startTestRelay({ ...baseEnv(), SMIME_RELAY_ALLOW: '127.0.0.1/32', SMIME_RELAY_USERS: usersPath });
  });
  afterAll(() => relay?.close());

  it('the right password does not help from outside the allow-list; inside it AUTH is still required', async () => {
    const outside = await open(relay.address.port, { localAddress: '127.0.0.2' });
    expect((await outside.read()).code).toBe(554);
    outside.close();

    const inside = await open(relay.address.port, { localAddress: '127.0.0.1' });
    await inside.hello();
    expect((await inside.command(`MAIL FROM:<${BILLING}>`)).code).toBe(530);
    expect((await inside.authPlain('billing', passwords.billing)).code).toBe(235);
    expect((await inside.command(`MAIL FROM:<${BILLING}>`)).code).toBe(250);
    inside.close();
  });
});

describe('the users file and its hashes', () => {
  it('hashes are self-describing scrypt, salted, and verify only the right password', async () => {
    const a = await hashPassword('correct horse');
    const b = await hashPassword('correct horse');
    expect(a).toMatch(/^scrypt\$32768\$8\$1\$[A-Za-z0-9+/]+=*\$[A-Za-z0-9+/]+=*$/);
    expect(a).not.toBe(b);
    expect(await verifyPassword('correct horse', parsePasswordHash(a))).toBe(true);
    expect(await verifyPassword('correct horsf', parsePasswordHash(a))).toBe(false);
    // A cheaper cost is a different, still valid hash line.
    const cheap = await hashPassword('x', { N: 1024, r: 8, p: 1 });
    expect(await verifyPassword('x', parsePasswordHash(cheap))).toBe(true);
  });

  it('reports every broken line with its number and never echoes a hash field', () => {
    const text = ['# comment', 'ok:scrypt$1024$8$1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2g=', 'bad line', 'pw:hunter2', 'big:scrypt$3$8$1$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==', 'ok:scrypt$1024$8$1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2g=:'].join('\n');
    let message = '';
    try {
      parseUsersFile(text, 'users');
    } catch (e) {
      message = (e as Error).message;
    }
    expect(message).toContain('users line 3: expected username:hash');
    expect(message).toContain("users line 4: the password hash of 'pw' is invalid");
    expect(message).toContain('users line 5');
    expect(message).toContain('power of two');
    expect(message).toContain("users line 6: user 'ok' appears twice");
    expect(message).not.toContain('hunter2');
  });

  it('parses mailbox lists case-insensitively', () => {
    const users = parseUsersFile('a:scrypt$1024$8$1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2g=:Billing@Example.TEST, x@example.test\n', 'users');
    expect(users.get('a')?.mailboxes).toEqual(['billing@example.test', 'x@example.test']);
  });

  it('smime-relay hash-password reads a piped password and prints a users-file line that the relay accepts', async () => {
    const run = (args: string[], input?: string) =>
      new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
        const child = spawn(process.execPath, ['--import', 'tsx', join(root, 'src/cli.ts'), 'hash-password', ...args], { cwd: root, stdio: ['pipe', 'pipe', 'pipe'] });
        let stdout = '';
        let stderr = '';
        child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
        child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
        child.on('close', (code) => resolve({ code, stdout, stderr }));
        child.stdin.end(input ?? '');
      });
    const help = await run(['--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/^Usage: smime-relay hash-password/);

    const line = await run(['--user', 'billing', '--mailboxes', BILLING], 's3cret pass\nignored second line\n');
    expect(line.code, line.stderr).toBe(0);
    expect(line.stdout).not.toContain('s3cret');
    const users = parseUsersFile(line.stdout, 'stdout');
    const entry = users.get('billing')!;
    expect(entry.mailboxes).toEqual([BILLING]);
    expect(await verifyPassword('s3cret pass', entry.hash)).toBe(true);

    const bare = await run([], 'other\n');
    expect(bare.stdout.trim()).toMatch(/^scrypt\$/);
    expect((await run([], '')).code).toBe(1);
  }, 60_000);

  it('on a terminal it asks twice and never echoes the password (a real pty via script(1))', async (ctx) => {
    required(ctx, hasScript, 'script(1) is not installed, so the terminal prompt is not tested (apt-get install -y bsdutils)');
    const child = spawn('script', ['-qec', `${process.execPath} --import tsx src/cli.ts hash-password --user tty`, '/dev/null'], { cwd: root, stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    const waitFor = (text: string, from: number) =>
      new Promise<number>((resolve) => {
        const check = () => {
          const at = out.indexOf(text, from);
          if (at >= 0) {
            child.stdout.off('data', check);
            resolve(at + text.length);
          }
        };
        child.stdout.on('data', check);
        check();
      });
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const closed = new Promise((resolve) => child.on('close', resolve));
    try {
      const afterFirst = await waitFor('Password: ', 0);
      child.stdin.write('Tty-Secr3t\r');
      await waitFor('Repeat password: ', afterFirst);
      child.stdin.write('Tty-Secr3t\r');
      await waitFor('\n', await waitFor('tty:scrypt$', afterFirst));
      child.stdin.end();
      await closed;
    } finally {
      child.kill();
    }
    expect(out).not.toContain('Tty-Secr3t');
    const line = out.slice(out.indexOf('tty:scrypt$')).split(/\r?\n/)[0]!;
    expect(await verifyPassword('Tty-Secr3t', parseUsersFile(line, 'pty').get('tty')!.hash)).toBe(true);
  }, 60_000);
});

describe('secrets never reach the logs', () => {
  it('no password, AUTH payload or key material in any log line of a full session', async () => {
    const upstreamPassword = 'Upstr3am-S3cret-pw';
    // An upstream that insists on AUTH, so the relay really uses the password from the URL.
    const received: Buffer[] = [];
    const upstream = new SMTPServer({
      authOptional: false,
      allowInsecureAuth: true,
      disabledCommands: ['STARTTLS'],
      logger: false,
      disableReverseLookup: true,
      onAuth(auth, _s, cb) {
        cb(auth.username === 'relay' && auth.password === upstreamPassword ? null : new Error('bad'), { user: 'relay' });
      },
      onData(stream, _s, cb) {
        const chunks: Buffer[] = [];
        stream.on('data', (c: Buffer) => chunks.push(c));
        stream.on('end', () => {
          received.push(Buffer.concat(chunks));
          cb(null, 'Ok: queued as UP1');
        });
      },
    });
    await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', () => r()));
    const upstreamPort = (upstream.server.address() as AddressInfo).port;
    const relay = await startTestRelay({
      SMIME_RELAY_CERT: leaf.bundlePath,
      SMIME_RELAY_UPSTREAM: `smtp://relay:${encodeURIComponent(upstreamPassword)}@127.0.0.1:${upstreamPort}`,
      SMIME_RELAY_USERS: usersPath,
      // A loopback MTA without STARTTLS: the password in clear is allowed only by this choice.
      SMIME_RELAY_UPSTREAM_INSECURE_AUTH: 'true',
      LOG_LEVEL: 'trace',
    });
    try {
      const wrong = 'Wr0ng-but-secret-guess';
      const c = await open(relay.address.port);
      await c.hello();
      expect((await c.authLogin('billing', wrong)).code).toBe(535);
      expect((await c.authPlain('billing', passwords.billing)).code).toBe(235);
      const final = await c.send(BILLING, message(BILLING));
      expect(final.code, final.text).toBe(250);
      c.close();
      expect(received).toHaveLength(1);
    } finally {
      await relay.close();
      await new Promise<void>((r) => upstream.close(() => r()));
    }

    const logs = relay.logs.map((l) => JSON.stringify(l)).join('\n');
    expect(relay.logs.length).toBeGreaterThan(3);
    const keyPem = readFileSync(leaf.keyPath, 'latin1');
    const keyBody = keyPem.split('\n').filter((l) => l && !l.startsWith('-----'));
    const forbidden = [
      upstreamPassword,
      encodeURIComponent(upstreamPassword),
      passwords.billing,
      'Wr0ng-but-secret-guess',
      Buffer.from(passwords.billing).toString('base64'),
      Buffer.from('Wr0ng-but-secret-guess').toString('base64'),
      Buffer.from(`\0billing\0${passwords.billing}`).toString('base64'),
      'PRIVATE KEY',
      '-----BEGIN',
      ...keyBody.slice(1, 4),
    ];
    for (const secret of forbidden) expect(logs, `log contains ${secret}`).not.toContain(secret);
    // The upstream is still named, with the password masked.
    expect(logs).toContain(`smtp://relay:****@127.0.0.1:`);
  }, 60_000);
});
