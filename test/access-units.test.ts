/**
 * The gates of src/access/ called directly, in the test process: who may connect, who may
 * authenticate and how often, what MAIL FROM and the milter demand, which listener settings are
 * refused at start, and what the users file and its hashes accept. No relay is started; the
 * end-to-end files (access, auth-guessing, tls, proxy-xforward) show the same rules through SMTP.
 * Every reply is checked as a client sees it: code, enhanced status and text.
 *
 * Password hashes here are made with node's own scrypt at a tiny cost, so the parser and the
 * check are tested against an independent writer, and a check takes a millisecond.
 */
import { randomBytes, scryptSync, X509Certificate } from 'node:crypto';
import { chmod, copyFile, mkdtemp, rm, unlink, writeFile } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { SMTPServer, type SMTPServerAuthentication, type SMTPServerSession } from 'smtp-server';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AUTH_LIMITS, AuthGuard, guardKey, type AuthLimits } from '../src/access/auth-guard.js';
import { checkExposure, UnsafeBindingError, type ExposureSettings } from '../src/access/binding.js';
import { ListenerTlsError, loadListenerTls, type ListenerTls } from '../src/access/listener-tls.js';
import { AllowList, cidrText, isLoopback, parseCidr, plainAddress } from '../src/access/network.js';
import { hashPasswordCommand } from '../src/access/hash-password.js';
import { openAccess, type AccessSettings } from '../src/access/open.js';
import { DEFAULT_SCRYPT, formatPasswordHash, hashPassword, parsePasswordHash, PasswordHashError, verifyPassword } from '../src/access/password.js';
import { AccessPolicy, type AccessOptions } from '../src/access/policy.js';
import { isValidUserName, parseUsersFile, Users, UsersFileError, type Principal } from '../src/access/users.js';
import { ConfigError } from '../src/config/load.js';
import { createLogger } from '../src/log.js';
import { openssl } from './support/pki.js';

// ---------------------------------------------------------------------------------------------
// Fixtures: a temp dir with users files and two listener certificates, made once.

let dir: string;
/** Two self-signed listener certificates with their keys (mode 0600). */
const tlsA = { cert: '', key: '' };
const tlsB = { cert: '', key: '' };
/** billing (limited to billing@), ops (every mailbox), and a user with a 100-character name. */
let usersPath: string;
const LONG_NAME = 'u'.repeat(100);
const PASSWORDS = { billing: 'b1ll!ng-Pa55', ops: 'ops pass ünïcode', long: 'long-pw' };

/** A users-file hash made with node's scrypt directly (cheap parameters), not with hashPassword. */
function scryptLine(password: string, { N = 16, r = 1, p = 1, saltBytes = 16, keyBytes = 32 } = {}): string {
  const salt = randomBytes(saltBytes);
  const hash = scryptSync(password, salt, keyBytes, { N, r, p });
  return `scrypt$${N}$${r}$${p}$${salt.toString('base64')}$${hash.toString('base64')}`;
}

async function selfSigned(name: string): Promise<{ cert: string; key: string }> {
  const cert = join(dir, `${name}.crt`);
  const key = join(dir, `${name}.key`);
  await openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-noenc', '-keyout', key, '-out', cert, '-subj', `/CN=${name}.test`, '-days', '2']);
  await chmod(key, 0o600);
  return { cert, key };
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'smr-access-units-'));
  Object.assign(tlsA, await selfSigned('a'));
  Object.assign(tlsB, await selfSigned('b'));
  usersPath = join(dir, 'users');
  await writeUsers(usersPath, [
    `billing:${scryptLine(PASSWORDS.billing)}:billing@example.test`,
    `ops:${scryptLine(PASSWORDS.ops)}`,
    `${LONG_NAME}:${scryptLine(PASSWORDS.long)}`,
  ]);
});

afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function writeUsers(path: string, lines: string[], mode = 0o600): Promise<void> {
  await writeFile(path, lines.join('\n') + '\n');
  await chmod(path, mode);
}

/** A logger whose lines land, parsed, in `lines`. */
function capture() {
  const lines: Record<string, unknown>[] = [];
  const log = createLogger('debug', { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) });
  const find = (msg: string) => lines.filter((l) => l.msg === msg);
  return { log, lines, find };
}

/** The parts of an smtp-server session the policy reads and writes. */
type Session = SMTPServerSession & { disabledCommands?: string[] };
const session = (remoteAddress: string, secure = false): Session => ({ remoteAddress, secure }) as unknown as Session;

const reply = (code: number, status: string, text: string) => ({ code, status, text });

/** The RelayError reply `f` throws, as code, status and text. */
function thrown(f: () => unknown) {
  try {
    f();
  } catch (e) {
    const r = (e as { reply?: { code: number; status: string; text: string } }).reply;
    if (!r) throw e;
    return reply(r.code, r.status, r.text);
  }
  throw new Error('nothing was thrown');
}

async function rejection(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (e) {
    return e as Error;
  }
  throw new Error('the promise resolved');
}

const settle = () => new Promise((r) => setImmediate(r));

// ---------------------------------------------------------------------------------------------

describe('client addresses and networks (network.ts)', () => {
  it('an IPv4 client of a dual-stack listener (::ffff:a.b.c.d) is that IPv4 address; case, blanks and brackets do not count', () => {
    expect(plainAddress('::ffff:192.0.2.7')).toBe('192.0.2.7');
    expect(plainAddress(' ::FFFF:192.0.2.7 ')).toBe('192.0.2.7');
    expect(plainAddress('[2001:DB8::1]')).toBe('2001:db8::1');
    expect(plainAddress('2001:db8::1')).toBe('2001:db8::1');
    expect(plainAddress('192.0.2.7')).toBe('192.0.2.7');
    // Only a whole dotted IPv4-mapped address is reduced, and only enclosing brackets go.
    for (const a of ['1::ffff:192.0.2.7', '::ffff:192.0.2.7777', '::ffff:1922.0.2.7', '::ffff:1.2345.3.4', '::ffff:1.2.3', '::ffff:c000:207', '::ffff:a.b.c.d', 'a[b]c']) {
      expect(plainAddress(a), a).toBe(a);
    }
  });

  it('loopback is 127.0.0.0/8 and ::1 (IPv4-mapped too), nothing next to it and no name', () => {
    for (const a of ['127.0.0.1', '127.0.0.0', '127.255.255.255', '::ffff:127.0.0.2', '::1', '[::1]', '0:0:0:0:0:0:0:1']) expect(isLoopback(a), a).toBe(true);
    for (const a of ['126.255.255.255', '128.0.0.0', '0.0.0.0', '192.0.2.1', '::', '::2', '::ffff:10.0.0.1', 'localhost', '']) expect(isLoopback(a), a).toBe(false);
  });

  it('parses CIDR networks: a bare address is one host; an IPv4-mapped network is its IPv4 network', () => {
    expect(parseCidr('192.0.2.0/24')).toEqual({ address: '192.0.2.0', prefix: 24, family: 'ipv4' });
    expect(parseCidr(' 10.0.0.1 ')).toEqual({ address: '10.0.0.1', prefix: 32, family: 'ipv4' });
    expect(parseCidr('2001:DB8::/32')).toEqual({ address: '2001:db8::', prefix: 32, family: 'ipv6' });
    expect(parseCidr('[2001:db8::]/48')).toEqual({ address: '2001:db8::', prefix: 48, family: 'ipv6' });
    expect(parseCidr('2001:db8::1')).toEqual({ address: '2001:db8::1', prefix: 128, family: 'ipv6' });
    expect(parseCidr('::ffff:10.0.0.0/104')).toEqual({ address: '10.0.0.0', prefix: 8, family: 'ipv4' });
    expect(parseCidr('::ffff:10.0.0.0/96')).toEqual({ address: '10.0.0.0', prefix: 0, family: 'ipv4' });
    expect(parseCidr('::ffff:10.0.0.1/128')).toEqual({ address: '10.0.0.1', prefix: 32, family: 'ipv4' });
    expect(parseCidr('::ffff:10.0.0.1')).toEqual({ address: '10.0.0.1', prefix: 32, family: 'ipv4' });
    expect(parseCidr('0.0.0.0/0')).toEqual({ address: '0.0.0.0', prefix: 0, family: 'ipv4' });
    expect(parseCidr('::/128')).toEqual({ address: '::', prefix: 128, family: 'ipv6' });
    expect(cidrText(parseCidr('::ffff:192.168.0.0/112'))).toBe('192.168.0.0/16');
  });

  it.each([
    ['example.com', "'example.com' is not an IP address or CIDR network"],
    [' 10.0.0.300/8 ', "'10.0.0.300/8' is not an IP address or CIDR network"],
    ['/8', "'/8' is not an IP address or CIDR network"],
    ['10.0.0.0/', "'10.0.0.0/': the prefix length after '/' must be a number"],
    ['10.0.0.0/8x', "'10.0.0.0/8x': the prefix length after '/' must be a number"],
    ['10.0.0.0/x8', "'10.0.0.0/x8': the prefix length after '/' must be a number"],
    ['10.0.0.0/+8', "'10.0.0.0/+8': the prefix length after '/' must be a number"],
    ['10.0.0.0/0008', "'10.0.0.0/0008': the prefix length after '/' must be a number"],
    ['10.0.0.0/33', "'10.0.0.0/33': prefix length must be 0-32 for IPv4"],
    ['2001:db8::/129', "'2001:db8::/129': prefix length must be 0-128 for IPv6"],
    ['::ffff:10.0.0.0/95', "'::ffff:10.0.0.0/95': prefix length must be 0-32 for IPv4"],
  ])('refuses %j: %s', (text, message) => {
    expect(() => parseCidr(text)).toThrow(new Error(message));
  });

  it('an allow-list matches its networks to the last address, IPv4 clients in either form, nothing else', () => {
    const networks = ['192.0.2.0/24', '2001:db8::/32', '::ffff:10.0.0.0/104'].map(parseCidr);
    const list = new AllowList(networks);
    expect(list.networks).toBe(networks);
    for (const a of ['192.0.2.0', '192.0.2.255', '::ffff:192.0.2.9', '2001:db8::', '2001:db8:ffff:ffff::1', '10.200.0.1', '::FFFF:10.0.0.1']) expect(list.allows(a), a).toBe(true);
    for (const a of ['192.0.1.255', '192.0.3.0', '2001:db9::', '2001:db7:ffff::', '11.0.0.0', 'not an address', '']) expect(list.allows(a), a).toBe(false);
    expect(new AllowList([]).allows('192.0.2.1')).toBe(false);
  });
});

// ---------------------------------------------------------------------------------------------

describe('password guessing (auth-guard.ts)', () => {
  const limits = (l: Partial<AuthLimits> = {}): AuthLimits => ({ perConnection: 3, budget: 3, windowMs: 60_000, concurrency: 1, perAddress: 1, maxAddresses: 100, ...l });
  const fail = async () => undefined;

  /** Checks that run until `finish` is called; `started` lists them in the order they began. */
  function checks() {
    const started: string[] = [];
    const finishers = new Map<string, (ok: boolean) => void>();
    const check = (name: string) => () =>
      new Promise<string | undefined>((resolve) => {
        started.push(name);
        finishers.set(name, (ok) => resolve(ok ? name : undefined));
      });
    const finish = async (name: string, ok: boolean) => {
      finishers.get(name)!(ok);
      await settle();
    };
    return { started, check, finish };
  }

  it('the limits: 3 failures per connection, 10 per address in 5 minutes, one check per address, at most 4 at once', () => {
    expect(AUTH_LIMITS).toEqual({
      perConnection: 3,
      budget: 10,
      windowMs: 5 * 60_000,
      concurrency: Math.min(4, availableParallelism()),
      perAddress: 1,
      maxAddresses: 10_000,
    });
  });

  it('counts an IPv6 client per /64, an IPv4 client per address', () => {
    expect(guardKey('192.0.2.1')).toBe('192.0.2.1');
    expect(guardKey('::ffff:192.0.2.1')).toBe('192.0.2.1');
    expect(guardKey('2001:db8:1:2:aaaa::1')).toBe('2001:db8:1:2::/64');
    expect(guardKey('2001:DB8:1:2:bbbb:cccc:dddd:eeee')).toBe('2001:db8:1:2::/64');
    expect(guardKey('2001:0db8:0001:0002:0003:0004:0005:0006')).toBe('2001:db8:1:2::/64');
    expect(guardKey('[2001:db8:1:3::1]')).toBe('2001:db8:1:3::/64');
    expect(guardKey('::1')).toBe('0:0:0:0::/64');
    expect(guardKey('2001:db8::')).toBe('2001:db8:0:0::/64');
    // The groups left out at '::' are placed where they belong.
    expect(guardKey('1::2:3:4:5:6')).toBe('1:0:0:2::/64');
    expect(guardKey('::1:2:3:4:5:6')).toBe('0:0:1:2::/64');
    expect(guardKey('1:2:3::4')).toBe('1:2:3:0::/64');
  });

  it('counts failed checks per address over a sliding window; a failure exactly windowMs old no longer counts', async () => {
    let now = 1_000;
    const guard = new AuthGuard(limits({ budget: 5, windowMs: 1_000 }), () => now);
    expect(await guard.run('192.0.2.1', fail)).toEqual({ checked: true, result: undefined });
    now = 1_500;
    expect(await guard.run('::ffff:192.0.2.1', fail)).toEqual({ checked: true, result: undefined });
    // A check that succeeds is not a failure.
    expect(await guard.run('192.0.2.1', async () => 'billing')).toEqual({ checked: true, result: 'billing' });
    expect(guard.recentFailures('192.0.2.1')).toBe(2);
    expect(guard.recentFailures('192.0.2.2')).toBe(0);
    now = 1_999;
    expect(guard.recentFailures('192.0.2.1')).toBe(2);
    now = 2_000;
    expect(guard.recentFailures('192.0.2.1')).toBe(1);
    now = 2_499;
    expect(guard.recentFailures('192.0.2.1')).toBe(1);
    now = 2_500;
    expect(guard.recentFailures('192.0.2.1')).toBe(0);
  });

  it('an address at its budget is answered without a check, the right password too; others and later are not affected', async () => {
    let now = 0;
    const guard = new AuthGuard(limits({ budget: 3, windowMs: 10_000 }), () => now);
    let ran = 0;
    const counted = (result: string | undefined) => async () => (ran++, result);
    for (let n = 0; n < 2; n++) expect(await guard.run('198.51.100.1', counted(undefined))).toEqual({ checked: true, result: undefined });
    // Two failures: the third attempt is still checked.
    expect(await guard.run('198.51.100.1', counted(undefined))).toEqual({ checked: true, result: undefined });
    expect(ran).toBe(3);
    expect(await guard.run('198.51.100.1', counted('ok'))).toEqual({ checked: false, failures: 3 });
    expect(await guard.run('::ffff:198.51.100.1', counted('ok'))).toEqual({ checked: false, failures: 3 });
    expect(ran).toBe(3);
    // Refusals are not failures, and another address is checked as usual.
    expect(guard.recentFailures('198.51.100.1')).toBe(3);
    expect(await guard.run('198.51.100.2', counted('ok'))).toEqual({ checked: true, result: 'ok' });
    now = 10_000;
    expect(await guard.run('198.51.100.1', counted('ok'))).toEqual({ checked: true, result: 'ok' });
    expect(ran).toBe(5);
  });

  it('runs at most `concurrency` checks at once, one per address, and a free slot goes to the fewest failures, then the first come', async () => {
    const guard = new AuthGuard(limits({ concurrency: 2, budget: 10 }), () => 0);
    const c = checks();
    await guard.run('10.0.0.1', fail); // 10.0.0.1 has failed once
    const runs = [
      guard.run('10.0.0.8', c.check('x')),
      guard.run('10.0.0.8', c.check('x2')), // the same address: waits although a slot is free
      guard.run('10.0.0.9', c.check('y')),
      guard.run('10.0.0.1', c.check('a')),
      guard.run('10.0.0.2', c.check('b')),
      guard.run('10.0.0.3', c.check('c')),
    ];
    await settle();
    expect(c.started).toEqual(['x', 'y']);
    await c.finish('x', true);
    // x2 has no failures and came first among the addresses without any.
    expect(c.started).toEqual(['x', 'y', 'x2']);
    await c.finish('y', true);
    expect(c.started).toEqual(['x', 'y', 'x2', 'b']);
    await c.finish('x2', true);
    expect(c.started).toEqual(['x', 'y', 'x2', 'b', 'c']);
    await c.finish('b', false);
    // 10.0.0.1 came before 10.0.0.2 and 10.0.0.3 but had a failure: it went last.
    expect(c.started).toEqual(['x', 'y', 'x2', 'b', 'c', 'a']);
    await c.finish('c', true);
    await c.finish('a', true);
    expect(await Promise.all(runs)).toEqual([
      { checked: true, result: 'x' },
      { checked: true, result: 'x2' },
      { checked: true, result: 'y' },
      { checked: true, result: 'a' },
      { checked: true, result: undefined },
      { checked: true, result: 'c' },
    ]);
  });

  it('with perAddress 2, an address runs two checks at once and no more', async () => {
    const guard = new AuthGuard(limits({ concurrency: 4, perAddress: 2 }), () => 0);
    const c = checks();
    const runs = ['p', 'q', 'r', 's'].map((n) => guard.run('192.0.2.5', c.check(n)));
    await settle();
    expect(c.started).toEqual(['p', 'q']);
    await c.finish('p', true);
    expect(c.started).toEqual(['p', 'q', 'r']);
    await c.finish('q', true);
    expect(c.started).toEqual(['p', 'q', 'r', 's']);
    await c.finish('r', true);
    await c.finish('s', true);
    expect((await Promise.all(runs)).map((r) => r.checked)).toEqual([true, true, true, true]);
  });

  it('an attempt waiting in line is refused when failures that came in meanwhile reach the budget', async () => {
    const guard = new AuthGuard(limits({ concurrency: 1, budget: 2 }), () => 0);
    const c = checks();
    const first = guard.run('203.0.113.1', c.check('a1'));
    const other = guard.run('203.0.113.2', c.check('b1'));
    const second = guard.run('203.0.113.1', c.check('a2'));
    const third = guard.run('203.0.113.1', c.check('a3'));
    await settle();
    await c.finish('a1', false);
    expect(c.started).toEqual(['a1', 'b1']);
    await c.finish('b1', true);
    expect(c.started).toEqual(['a1', 'b1', 'a2']);
    // a2 fails: 203.0.113.1 reaches its budget of 2 while a3 waits.
    await c.finish('a2', false);
    expect(await third).toEqual({ checked: false, failures: 2 });
    expect(c.started).toEqual(['a1', 'b1', 'a2']);
    expect(await first).toEqual({ checked: true, result: undefined });
    expect(await second).toEqual({ checked: true, result: undefined });
    expect(await other).toEqual({ checked: true, result: 'b1' });
  });

  it('a check that throws counts as a failure, frees its slot and passes the error on', async () => {
    const guard = new AuthGuard(limits({ concurrency: 1 }), () => 0);
    const error = new Error('scrypt failed');
    expect(await rejection(guard.run('192.0.2.9', () => Promise.reject(error)))).toBe(error);
    expect(guard.recentFailures('192.0.2.9')).toBe(1);
    expect(await guard.run('192.0.2.9', async () => 'next')).toEqual({ checked: true, result: 'next' });
  });

  it('remembers at most maxAddresses failing addresses, forgetting the least recently failing first', async () => {
    const guard = new AuthGuard(limits({ budget: 10, maxAddresses: 2 }), () => 0);
    await guard.run('10.0.0.1', fail);
    await guard.run('10.0.0.2', fail);
    expect([guard.recentFailures('10.0.0.1'), guard.recentFailures('10.0.0.2')]).toEqual([1, 1]);
    await guard.run('10.0.0.1', fail); // 10.0.0.2 is now the least recently failing
    await guard.run('10.0.0.3', fail);
    expect([guard.recentFailures('10.0.0.1'), guard.recentFailures('10.0.0.2'), guard.recentFailures('10.0.0.3')]).toEqual([2, 0, 1]);
  });

  it('keeps nothing for an address once its checks are done and its failures have expired', async () => {
    let now = 0;
    const guard = new AuthGuard(limits({ concurrency: 2, perAddress: 2, windowMs: 1_000 }), () => now);
    const c = checks();
    const runs = [guard.run('10.0.0.1', c.check('a')), guard.run('10.0.0.1', c.check('b')), guard.run('10.0.0.2', fail)];
    await settle();
    await c.finish('a', true);
    await c.finish('b', true);
    await Promise.all(runs);
    // Private state, looked at on purpose: a map that grows by one entry per client address is a leak.
    expect(guard['running'].size).toBe(0);
    expect(guard['failures'].size).toBe(1);
    now = 1_000;
    expect(guard.recentFailures('10.0.0.2')).toBe(0);
    expect(guard['failures'].size).toBe(0);
  });
});

// ---------------------------------------------------------------------------------------------

describe('password hashes (password.ts)', () => {
  const salt = Buffer.alloc(16, 1).toString('base64');
  const hash = Buffer.alloc(32, 2).toString('base64');
  const line = (N: string | number, r: string | number, p: string | number, s = salt, h = hash) => `scrypt$${N}$${r}$${p}$${s}$${h}`;

  it('reads scrypt$N$r$p$salt$hash, within bounds that keep a check cheap', () => {
    expect(parsePasswordHash(line(16384, 8, 1))).toEqual({ N: 16384, r: 8, p: 1, salt: Buffer.alloc(16, 1), hash: Buffer.alloc(32, 2) });
    // The bounds themselves are accepted.
    expect(parsePasswordHash(line(2, 1, 1))).toMatchObject({ N: 2, r: 1, p: 1 });
    expect(parsePasswordHash(line(2 ** 20, 32, 16))).toMatchObject({ N: 2 ** 20, r: 32, p: 16 });
    // The shortest salt (8 bytes) and hash (16 bytes), unpadded base64.
    const short = parsePasswordHash(line(16, 1, 1, Buffer.alloc(8, 3).toString('base64'), Buffer.alloc(16, 4).toString('base64').replace(/=+$/, '')));
    expect([short.salt.length, short.hash.length]).toEqual([8, 16]);
  });

  it.each([
    ['scrypt$16$1$1$' + salt, 'expected scrypt$N$r$p$salt$hash (make one with `smime-relay hash-password`)'],
    [line(16, 1, 1) + '$x', 'expected scrypt$N$r$p$salt$hash (make one with `smime-relay hash-password`)'],
    [line(16, 1, 1).replace('scrypt', 'SCRYPT'), 'expected scrypt$N$r$p$salt$hash (make one with `smime-relay hash-password`)'],
    ['hunter2', 'expected scrypt$N$r$p$salt$hash (make one with `smime-relay hash-password`)'],
    [line(1, 1, 1), "scrypt N must be a power of two from 2 to 1048576, got '1'"],
    [line(0, 1, 1), "scrypt N must be a power of two from 2 to 1048576, got '0'"],
    [line(12, 1, 1), "scrypt N must be a power of two from 2 to 1048576, got '12'"],
    [line(2 ** 21, 1, 1), "scrypt N must be a power of two from 2 to 1048576, got '2097152'"],
    [line('016x', 1, 1), "scrypt N must be a power of two from 2 to 1048576, got '016x'"],
    [line('x16', 1, 1), "scrypt N must be a power of two from 2 to 1048576, got 'x16'"],
    [line('000000016', 1, 1), "scrypt N must be a power of two from 2 to 1048576, got '000000016'"],
    [line('', 1, 1), "scrypt N must be a power of two from 2 to 1048576, got ''"],
    [line(16, 0, 1), "scrypt r must be 1-32, got '0'"],
    [line(16, 33, 1), "scrypt r must be 1-32, got '33'"],
    [line(16, '8.0', 1), "scrypt r must be 1-32, got '8.0'"],
    [line(16, 1, 0), "scrypt p must be 1-16, got '0'"],
    [line(16, 1, 17), "scrypt p must be 1-16, got '17'"],
    [line(16, 1, '1e1'), "scrypt p must be 1-16, got '1e1'"],
    [line(16, 1, 1, 'c2FsdHNhbHQ=x'), 'salt and hash must be base64'],
    [line(16, 1, 1, '=' + salt), 'salt and hash must be base64'],
    [line(16, 1, 1, 'c2FsdHNh bHQ='), 'salt and hash must be base64'],
    [line(16, 1, 1, 'c2FsdHNhbHQ_'), 'salt and hash must be base64'],
    [line(16, 1, 1, salt, hash + '=='), 'salt and hash must be base64'],
    [line(16, 1, 1, salt, '=='), 'salt and hash must be base64'],
    [line(16, 1, 1, salt, ''), 'salt and hash must be base64'],
    [line(16, 1, 1, Buffer.alloc(7).toString('base64')), 'salt must be at least 8 bytes'],
    [line(16, 1, 1, salt, Buffer.alloc(15).toString('base64')), 'hash must be at least 16 bytes'],
  ])('refuses %j: %s', (text, message) => {
    expect(() => parsePasswordHash(text)).toThrow(new PasswordHashError(message));
    let name = '';
    try {
      parsePasswordHash(text);
    } catch (e) {
      name = (e as Error).name;
    }
    expect(name).toBe('PasswordHashError');
  });

  it('formats a hash as it reads it', () => {
    const text = line(1024, 8, 2);
    expect(formatPasswordHash(parsePasswordHash(text))).toBe(text);
  });

  it('hashPassword makes a salted hash of the default cost (N=32768 r=8 p=1) that verifies only the right password', async () => {
    expect(DEFAULT_SCRYPT).toEqual({ N: 32768, r: 8, p: 1 });
    const a = await hashPassword('correct horse');
    expect(a).toMatch(/^scrypt\$32768\$8\$1\$[A-Za-z0-9+/]{22}==\$[A-Za-z0-9+/]{43}=$/);
    const parsed = parsePasswordHash(a);
    expect([parsed.salt.length, parsed.hash.length]).toEqual([16, 32]);
    // node's scrypt, given the same salt and cost, computes the same hash.
    expect(scryptSync('correct horse', parsed.salt, 32, { N: 32768, r: 8, p: 1, maxmem: 64 * 1024 * 1024 })).toEqual(parsed.hash);
    expect(await verifyPassword('correct horse', parsed)).toBe(true);
    expect(await verifyPassword('correct horsf', parsed)).toBe(false);
  });

  it('a cheaper cost, even the smallest, gives a valid hash of that cost', async () => {
    for (const params of [{ N: 2, r: 1, p: 1 }, { N: 1024, r: 4, p: 2 }]) {
      const text = await hashPassword('x', params);
      expect(text.startsWith(`scrypt$${params.N}$${params.r}$${params.p}$`)).toBe(true);
      const parsed = parsePasswordHash(text);
      expect(parsed.salt).not.toEqual(parsePasswordHash(await hashPassword('x', params)).salt);
      expect(await verifyPassword('x', parsed)).toBe(true);
      expect(await verifyPassword('y', parsed)).toBe(false);
    }
  });

  it('verifies a hash of any length written by another tool, at its own cost', async () => {
    const text = scryptLine('pw', { N: 64, r: 2, p: 3, saltBytes: 8, keyBytes: 16 });
    expect(await verifyPassword('pw', parsePasswordHash(text))).toBe(true);
    expect(await verifyPassword('pw ', parsePasswordHash(text))).toBe(false);
    expect(await rejection(hashPassword('x', { N: 3, r: 1, p: 1 }))).toMatchObject({ code: 'ERR_CRYPTO_INVALID_SCRYPT_PARAMS' });
  });
});

// ---------------------------------------------------------------------------------------------

describe('smime-relay hash-password (hash-password.ts)', () => {
  it('takes no positional argument: a name without --user is an error, not a password or a user', async () => {
    let out = '';
    const io = { stdin: Readable.from([Buffer.from('pw\n')]), stdout: { write: (t: string) => (out += t) }, stderr: { write: (t: string) => (out += t) } };
    expect(await rejection(hashPasswordCommand(['billing'], io))).toMatchObject({ code: 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL' });
    expect(out).toBe('');
  });
});

// ---------------------------------------------------------------------------------------------

describe('the users file (users.ts)', () => {
  const h = scryptLine('x');

  it('user names: no blank or colon anywhere, no # first, at most 256 characters', () => {
    for (const n of ['billing', 'a', 'x#y', 'ops.team-1', 'ünïcode', 'a'.repeat(256), 'a@b']) expect(isValidUserName(n), n).toBe(true);
    for (const n of ['', '#a', ' a', 'a ', 'a b', 'a\tb', 'a:b', ':a', 'a'.repeat(257), 'a\nb']) expect(isValidUserName(n), n).toBe(false);
  });

  it('reads users with and without a mailbox list; comments, blank lines and CRLF are fine', () => {
    const text = ['# the users', '', `  billing:${h}:Billing@Example.TEST, ops@example.test ,  `, `\tops:${h}`, '   # indented comment', `x#y:${h}:a@b`].join('\r\n');
    const users = parseUsersFile(text, 'users');
    expect([...users.keys()]).toEqual(['billing', 'ops', 'x#y']);
    expect(users.get('billing')).toEqual({ user: 'billing', hash: parsePasswordHash(h), mailboxes: ['billing@example.test', 'ops@example.test'] });
    expect(users.get('ops')).toEqual({ user: 'ops', hash: parsePasswordHash(h), mailboxes: undefined });
    expect(users.get('x#y')?.mailboxes).toEqual(['a@b']);
    expect(parseUsersFile('', 'users').size).toBe(0);
  });

  it('names every broken line by number, one problem per line, and never echoes a hash field', () => {
    const text = [
      'bad line',
      'a:b:c:d',
      `two words:${h}`,
      'pw:hunter2',
      `dup:${h}`,
      `dup:${h}`,
      `empty:${h}:`,
      `blank:${h}: , `,
      `bad:${h}:a@b,nobody,x@y@z,<c@d>,e f@g,@h,i@,j@k>`,
      `fine:${h}:a@b`,
    ].join('\n');
    let error: unknown;
    try {
      parseUsersFile(text, '/etc/users');
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(UsersFileError);
    expect((error as Error).name).toBe('UsersFileError');
    expect((error as Error).message).toBe(
      [
        '/etc/users line 1: expected username:hash or username:hash:mailbox,mailbox',
        '/etc/users line 2: expected username:hash or username:hash:mailbox,mailbox',
        "/etc/users line 3: 'two words' is not a valid user name (no spaces or ':')",
        "/etc/users line 4: the password hash of 'pw' is invalid: expected scrypt$N$r$p$salt$hash (make one with `smime-relay hash-password`)",
        "/etc/users line 6: user 'dup' appears twice",
        "/etc/users line 7: the mailbox list of 'empty' is empty; leave out the last ':' to allow every mailbox",
        "/etc/users line 8: the mailbox list of 'blank' is empty; leave out the last ':' to allow every mailbox",
        '/etc/users line 9: not a mailbox: nobody, x@y@z, <c@d>, e f@g, @h, i@, j@k>',
      ].join('\n  '),
    );
    expect((error as Error).message).not.toContain('hunter2');
  });

  it('Users reads the file, reports its size and whether every local user can read it', async () => {
    const path = join(dir, 'users-status');
    await writeUsers(path, [`a:${h}`, `b:${h}`], 0o640);
    const users = new Users(path);
    expect(users.path).toBe(path);
    expect(users.status()).toEqual({ users: 2, worldReadable: false });
    await chmod(path, 0o604);
    expect(users.status()).toEqual({ users: 2, worldReadable: true });
    // A file that went away since: the users stay, and nothing says it is readable.
    await unlink(path);
    expect(users.status()).toEqual({ users: 2, worldReadable: false });
    expect(users.has('a')).toBe(true);
  });

  it('a missing file is a UsersFileError naming it', () => {
    const path = join(dir, 'no-such-users');
    expect(() => new Users(path)).toThrow(new UsersFileError(`cannot read ${path}: ENOENT: no such file or directory, open '${path}'`));
  });

  it('reload() takes a changed file, and keeps the current users when the new one is broken', async () => {
    const path = join(dir, 'users-reload');
    await writeUsers(path, [`a:${h}:a@example.test`, `b:${h}`]);
    const users = new Users(path);
    await writeUsers(path, [`a:${h}:other@example.test`, `c:${h}`], 0o644);
    expect(users.reload()).toEqual({ users: 2, worldReadable: true });
    expect([users.has('a'), users.has('b'), users.has('c')]).toEqual([true, false, true]);
    expect(users.principal('a')).toEqual({ user: 'a', mailboxes: ['other@example.test'] });
    await writeFile(path, 'broken\n');
    expect(() => users.reload()).toThrow(UsersFileError);
    expect(users.principal('a')).toEqual({ user: 'a', mailboxes: ['other@example.test'] });
    expect(users.principal('c')).toEqual({ user: 'c', mailboxes: undefined });
    expect(users.principal('nobody')).toBeUndefined();
  });

  it('authenticate: the right password gives the principal; a wrong one or an unknown name gives nothing', async () => {
    const users = new Users(usersPath);
    expect(await users.authenticate('billing', PASSWORDS.billing)).toEqual({ user: 'billing', mailboxes: ['billing@example.test'] });
    expect(await users.authenticate('ops', PASSWORDS.ops)).toEqual({ user: 'ops', mailboxes: undefined });
    expect(await users.authenticate('billing', PASSWORDS.ops)).toBeUndefined();
    expect(await users.authenticate('billing', '')).toBeUndefined();
    // An unknown name is checked against a decoy hash, so it costs as much as a known one.
    expect(await users.authenticate('nobody', PASSWORDS.billing)).toBeUndefined();
    expect(await users.authenticate('', '')).toBeUndefined();
  });
});

// ---------------------------------------------------------------------------------------------

describe('the listener certificate (listener-tls.ts)', () => {
  it('without a certificate, key or mode there is no TLS', () => {
    expect(loadListenerTls({})).toBeUndefined();
  });

  it('reads the certificate and key; the mode defaults to starttls', async () => {
    const tls = loadListenerTls({ tlsCert: tlsA.cert, tlsKey: tlsA.key })!;
    expect(tls.mode).toBe('starttls');
    expect(tls.cert.toString()).toContain('-----BEGIN CERTIFICATE-----');
    expect(tls.key.toString()).toContain('PRIVATE KEY-----');
    expect(tls.warnings).toEqual([]);
    expect(loadListenerTls({ tlsCert: tlsA.cert, tlsKey: tlsA.key, tlsMode: 'implicit' })!.mode).toBe('implicit');
  });

  it.each([
    [{ tlsMode: 'required' as const }, 'SMIME_RELAY_TLS_MODE=required needs a server certificate: set SMIME_RELAY_TLS_CERT and SMIME_RELAY_TLS_KEY (PEM files), or unset SMIME_RELAY_TLS_MODE'],
    [{ tlsCert: 'CERT' }, 'SMIME_RELAY_TLS_CERT and SMIME_RELAY_TLS_KEY go together: SMIME_RELAY_TLS_KEY is not set'],
    [{ tlsKey: 'KEY', tlsMode: 'starttls' as const }, 'SMIME_RELAY_TLS_CERT and SMIME_RELAY_TLS_KEY go together: SMIME_RELAY_TLS_CERT is not set'],
  ])('refuses %j', (settings, message) => {
    const s = { ...settings, ...('tlsCert' in settings ? { tlsCert: tlsA.cert } : {}), ...('tlsKey' in settings ? { tlsKey: tlsA.key } : {}) };
    expect(() => loadListenerTls(s)).toThrow(new ListenerTlsError(message));
  });

  it('an unreadable file names the setting and the path', () => {
    const missing = join(dir, 'missing.pem');
    const error = (s: { tlsCert: string; tlsKey: string }) => {
      try {
        loadListenerTls(s);
      } catch (e) {
        return e as Error;
      }
      throw new Error('loaded');
    };
    const noCert = error({ tlsCert: missing, tlsKey: tlsA.key });
    expect(noCert).toBeInstanceOf(ListenerTlsError);
    expect(noCert.name).toBe('ListenerTlsError');
    expect(noCert.message).toBe(`SMIME_RELAY_TLS_CERT: cannot read ${missing} (ENOENT: no such file or directory, open '${missing}')`);
    expect(error({ tlsCert: tlsA.cert, tlsKey: missing }).message).toBe(`SMIME_RELAY_TLS_KEY: cannot read ${missing} (ENOENT: no such file or directory, open '${missing}')`);
  });

  it("a key of another certificate is refused with OpenSSL's reason, never the key", () => {
    let message = '';
    try {
      loadListenerTls({ tlsCert: tlsA.cert, tlsKey: tlsB.key });
    } catch (e) {
      expect(e).toBeInstanceOf(ListenerTlsError);
      message = (e as Error).message;
    }
    expect(message).toMatch(new RegExp(`^SMIME_RELAY_TLS_CERT ${tlsA.cert} and SMIME_RELAY_TLS_KEY ${tlsB.key} cannot be used together: .*key values mismatch`));
    expect(message).not.toContain('PRIVATE KEY');
  });

  it('warns, without refusing, about a key others can read and a certificate that has expired', async () => {
    const loose = join(dir, 'loose.key');
    await copyFile(tlsA.key, loose);
    for (const [mode, shown] of [
      [0o640, '640'],
      [0o604, '604'],
    ] as const) {
      await chmod(loose, mode);
      expect(loadListenerTls({ tlsCert: tlsA.cert, tlsKey: loose })!.warnings).toEqual([`SMIME_RELAY_TLS_KEY ${loose} is readable by group or others (mode ${shown}); chmod 600 it`]);
    }
    const validTo = new X509Certificate(await import('node:fs').then((fs) => fs.readFileSync(tlsA.cert))).validTo;
    const end = new Date(validTo);
    expect(loadListenerTls({ tlsCert: tlsA.cert, tlsKey: tlsA.key }, end)!.warnings).toEqual([]);
    expect(loadListenerTls({ tlsCert: tlsA.cert, tlsKey: tlsA.key }, new Date(end.getTime() + 1000))!.warnings).toEqual([
      `SMIME_RELAY_TLS_CERT ${tlsA.cert} expired on ${validTo}; clients that verify will refuse STARTTLS`,
    ]);
  });
});

// ---------------------------------------------------------------------------------------------

describe('refusing an exposed listener at start (binding.ts)', () => {
  const exposure = (host: string, s: Partial<ExposureSettings> = {}): ExposureSettings => ({
    listen: { host, port: 2525 },
    allowConfigured: false,
    usersConfigured: false,
    tlsConfigured: false,
    ...s,
  });
  const refusal = async (s: ExposureSettings) => {
    const e = await rejection(checkExposure(s));
    expect(e).toBeInstanceOf(UnsafeBindingError);
    expect(e.name).toBe('UnsafeBindingError');
    return e.message;
  };

  it('loopback addresses, and names that resolve only to loopback, need no gate', async () => {
    for (const host of ['127.0.0.1', '127.8.9.10', '::1', 'localhost', '127.1']) await expect(checkExposure(exposure(host)), host).resolves.toBeUndefined();
    await expect(checkExposure({ ...exposure('0.0.0.0'), listen: 'off' })).resolves.toBeUndefined();
  });

  it('any other address without SMIME_RELAY_ALLOW or SMIME_RELAY_USERS is refused, naming both fixes', async () => {
    expect(await refusal(exposure('0.0.0.0'))).toBe(
      'SMIME_RELAY_LISTEN=0.0.0.0:2525 (0.0.0.0, every interface) is not a loopback address, and neither SMIME_RELAY_ALLOW nor SMIME_RELAY_USERS is set: ' +
        'anyone who can reach the port could have mail signed with your certificates. Fix it in one of two ways: ' +
        'set SMIME_RELAY_ALLOW to the networks of your clients (e.g. SMIME_RELAY_ALLOW=192.0.2.10/32,2001:db8::/64), ' +
        "or set SMIME_RELAY_USERS to a users file so clients must authenticate (create entries with 'smime-relay hash-password'). " +
        'Or listen on loopback only (SMIME_RELAY_LISTEN=127.0.0.1:2525).',
    );
    const where = async (host: string) => (await refusal(exposure(host))).split(' is not a loopback address')[0];
    expect(await where('::')).toBe('SMIME_RELAY_LISTEN=[::]:2525 (::, every interface)');
    expect(await where('')).toBe('SMIME_RELAY_LISTEN=:2525 ((empty), every interface)');
    expect(await where('192.0.2.1')).toBe('SMIME_RELAY_LISTEN=192.0.2.1:2525 (192.0.2.1)');
    expect(await where('2001:db8::1')).toBe('SMIME_RELAY_LISTEN=[2001:db8::1]:2525 (2001:db8::1)');
    expect(await where('::ffff:10.0.0.1')).toBe('SMIME_RELAY_LISTEN=[::ffff:10.0.0.1]:2525 (::ffff:10.0.0.1)');
    // A name is shown with what it resolves to ("10.1" is 10.0.0.1 to getaddrinfo).
    expect(await where('10.1')).toBe('SMIME_RELAY_LISTEN=10.1:2525 (10.1 → 10.0.0.1)');
  });

  it('an allow-list is enough; users need TLS as well, since AUTH is only accepted over TLS off loopback', async () => {
    await expect(checkExposure(exposure('0.0.0.0', { allowConfigured: true }))).resolves.toBeUndefined();
    await expect(checkExposure(exposure('0.0.0.0', { usersConfigured: true, tlsConfigured: true }))).resolves.toBeUndefined();
    await expect(checkExposure(exposure('0.0.0.0', { tlsConfigured: true, allowConfigured: true }))).resolves.toBeUndefined();
    const noTls =
      'SMIME_RELAY_LISTEN=0.0.0.0:2525 (0.0.0.0, every interface) is not a loopback address and SMIME_RELAY_USERS is set, but the listener has no TLS: ' +
      'SMTP AUTH is only accepted over TLS except from loopback, so remote clients could never authenticate. ' +
      'Set SMIME_RELAY_TLS_CERT and SMIME_RELAY_TLS_KEY.';
    expect(await refusal(exposure('0.0.0.0', { usersConfigured: true }))).toBe(noTls);
    expect(await refusal(exposure('0.0.0.0', { usersConfigured: true, allowConfigured: true }))).toBe(noTls);
    // Users on loopback need no TLS: AUTH in clear never leaves the host.
    await expect(checkExposure(exposure('127.0.0.1', { usersConfigured: true }))).resolves.toBeUndefined();
  });

  it('a name that does not resolve is refused, naming the setting', async () => {
    expect(await refusal(exposure('no-such-host.invalid'))).toBe("SMIME_RELAY_LISTEN: cannot resolve 'no-such-host.invalid' (getaddrinfo ENOTFOUND no-such-host.invalid)");
    expect(await refusal({ ...exposure('127.0.0.1'), milter: { kind: 'inet', host: 'no-such-host.invalid', port: 8891 } })).toBe(
      "SMIME_RELAY_MILTER: cannot resolve 'no-such-host.invalid' (getaddrinfo ENOTFOUND no-such-host.invalid)",
    );
  });

  it('a milter port off loopback needs SMIME_RELAY_ALLOW (an MTA does not authenticate), even with the listener off', async () => {
    const milter = (host: string) => ({ kind: 'inet' as const, host, port: 8891 });
    expect(await refusal({ ...exposure('127.0.0.1'), listen: 'off', milter: milter('0.0.0.0'), usersConfigured: true, tlsConfigured: true })).toBe(
      'SMIME_RELAY_MILTER=0.0.0.0:8891 (0.0.0.0, every interface) is not a loopback address, and SMIME_RELAY_ALLOW is not set: ' +
        'anyone who can reach the port could speak the milter protocol, claim any SASL login and have mail signed with your certificates. ' +
        'Set SMIME_RELAY_ALLOW to the address of your MTA (e.g. SMIME_RELAY_ALLOW=192.0.2.25/32), ' +
        'or use a loopback address (SMIME_RELAY_MILTER=127.0.0.1:8891) or a unix socket (SMIME_RELAY_MILTER=unix:/var/spool/postfix/smime-relay/milter.sock).',
    );
    expect((await refusal({ ...exposure('127.0.0.1'), milter: milter('2001:db8::25') })).split(' is not')[0]).toBe('SMIME_RELAY_MILTER=[2001:db8::25]:8891 (2001:db8::25)');
    expect((await refusal({ ...exposure('127.0.0.1'), milter: milter('10.1') })).split(' is not')[0]).toBe('SMIME_RELAY_MILTER=10.1:8891 (10.1 → 10.0.0.1)');
    await expect(checkExposure({ ...exposure('127.0.0.1'), milter: milter('0.0.0.0'), allowConfigured: true })).resolves.toBeUndefined();
    await expect(checkExposure({ ...exposure('127.0.0.1'), milter: milter('::1') })).resolves.toBeUndefined();
    await expect(checkExposure({ ...exposure('127.0.0.1'), milter: milter('localhost') })).resolves.toBeUndefined();
    await expect(checkExposure({ ...exposure('127.0.0.1'), milter: { kind: 'unix', path: '/run/milter.sock' } })).resolves.toBeUndefined();
    // The listener is still checked after a safe milter.
    expect(await refusal({ ...exposure('0.0.0.0'), milter: milter('127.0.0.1') })).toContain('SMIME_RELAY_LISTEN=0.0.0.0:2525');
  });
});

// ---------------------------------------------------------------------------------------------

describe('the access policy per session (policy.ts)', () => {
  const users = () => new Users(usersPath);
  const tls = (mode: ListenerTls['mode']) => loadListenerTls({ tlsCert: tlsA.cert, tlsKey: tlsA.key, tlsMode: mode })!;
  const policyWith = (o: Partial<AccessOptions> = {}) => {
    const c = capture();
    return { ...c, policy: new AccessPolicy({ log: c.log, ...o }) };
  };
  const connected = (policy: AccessPolicy, remote: string, o: { socket?: string; secure?: boolean } = {}) => {
    const s = session(remote, o.secure);
    expect(policy.admitConnection(s, o.socket ?? remote)).toBeUndefined();
    return s;
  };

  /** AUTH through the onAuth handler smtp-server calls: the principal, or the error it gets. */
  function auth(policy: AccessPolicy, s: Session, username: string | undefined, password: string | undefined) {
    const { onAuth } = policy.serverOptions();
    const a = { method: 'PLAIN', username, password } as SMTPServerAuthentication;
    return new Promise<{ user?: unknown; error?: Error & { responseCode?: number } }>((resolve) =>
      onAuth!(a, s, (error, response) => resolve(error ? { error: error as Error & { responseCode?: number } } : { user: response?.user })),
    );
  }
  const authError = (code: number, message: string) => ({ error: expect.objectContaining({ message, responseCode: code }) as unknown });

  it('without gates nothing is listed, AUTH and STARTTLS are off and MAIL FROM needs nothing', () => {
    const { log } = capture();
    const policy = AccessPolicy.open(log);
    expect([policy.allowListed('127.0.0.1'), policy.isProxy('127.0.0.1'), policy.mayXforward('127.0.0.1')]).toEqual([false, false, false]);
    const o = policy.serverOptions();
    expect(o).toMatchObject({ secure: false, hideSTARTTLS: true, disabledCommands: ['STARTTLS', 'AUTH'], authMethods: ['PLAIN', 'LOGIN'], allowInsecureAuth: true, authOptional: true });
    expect('key' in o || 'cert' in o).toBe(false);
    const s = connected(policy, '203.0.113.9');
    expect(s.disabledCommands).toEqual(['STARTTLS', 'AUTH']);
    expect(policy.admitSession(s)).toBeUndefined();
    expect(policy.principalOf(s)).toBeUndefined();
    expect(policy.admitRelayedClient({ login: 'anyone', address: '127.0.0.1' })).toBeUndefined();
  });

  it('SMIME_RELAY_ALLOW refuses a client outside it at connect with 554 5.7.1, naming the plain address', () => {
    const { policy } = policyWith({ allow: new AllowList([parseCidr('192.0.2.0/24')]) });
    const outside = session('::ffff:198.51.100.7');
    expect(policy.admitConnection(outside, '::ffff:198.51.100.7')).toEqual({
      reply: reply(554, '5.7.1', 'Client address 198.51.100.7 is not in SMIME_RELAY_ALLOW; this relay does not accept mail from it'),
      why: 'connection refused: client address is not in SMIME_RELAY_ALLOW',
      fields: { client: '198.51.100.7' },
    });
    expect(outside.disabledCommands).toBeUndefined();
    expect(connected(policy, '::ffff:192.0.2.7').disabledCommands).toEqual(['STARTTLS', 'AUTH']);
    expect([policy.allowListed('192.0.2.7'), policy.allowListed('::ffff:192.0.2.7'), policy.allowListed('192.0.3.7')]).toEqual([true, true, false]);
  });

  it('PROXY headers and XFORWARD are trusted from their own networks only; anyone else gets 421 4.7.0 or 550 5.7.0', () => {
    const { policy } = policyWith({ proxies: new AllowList([parseCidr('10.0.0.0/8')]), xforwardHosts: new AllowList([parseCidr('127.0.0.1')]) });
    expect([policy.isProxy('10.9.9.9'), policy.isProxy('::ffff:10.0.0.1'), policy.isProxy('127.0.0.1')]).toEqual([true, true, false]);
    expect([policy.mayXforward('127.0.0.1'), policy.mayXforward('::ffff:127.0.0.1'), policy.mayXforward('10.0.0.1')]).toEqual([true, true, false]);
    expect(policy.untrustedCommand('PROXY', '::ffff:192.0.2.7')).toEqual({
      reply: reply(421, '4.7.0', 'PROXY header not accepted from 192.0.2.7: it is not a load balancer listed in SMIME_RELAY_PROXY_PROTOCOL; closing connection'),
      why: 'closed a connection that sent a PROXY header but is not listed in SMIME_RELAY_PROXY_PROTOCOL',
      fields: { client: '192.0.2.7' },
    });
    expect(policy.untrustedCommand('XFORWARD', '::ffff:192.0.2.7')).toEqual({
      reply: reply(550, '5.7.0', 'XFORWARD is not accepted from 192.0.2.7; only from SMIME_RELAY_XFORWARD_HOSTS'),
      why: 'refused XFORWARD from a client not listed in SMIME_RELAY_XFORWARD_HOSTS',
      fields: { client: '192.0.2.7' },
    });
  });

  it('the smtp-server options follow the TLS mode; STARTTLS is never offered without our own certificate', () => {
    const none = policyWith({ users: users() }).policy.serverOptions();
    expect(none).toMatchObject({ secure: false, hideSTARTTLS: true, disabledCommands: ['STARTTLS'] });
    expect('key' in none).toBe(false);
    const starttls = policyWith({ users: users(), tls: tls('starttls') }).policy.serverOptions();
    expect(starttls).toMatchObject({ secure: false, hideSTARTTLS: false, disabledCommands: [] });
    expect([starttls.key, starttls.cert]).toEqual([tls('starttls').key, tls('starttls').cert]);
    expect(policyWith({ users: users(), tls: tls('required') }).policy.serverOptions()).toMatchObject({ secure: false, hideSTARTTLS: false, disabledCommands: [] });
    expect(policyWith({ users: users(), tls: tls('implicit') }).policy.serverOptions()).toMatchObject({ secure: true, hideSTARTTLS: true, disabledCommands: ['STARTTLS'] });
    expect(policyWith({ tls: tls('starttls') }).policy.serverOptions()).toMatchObject({ disabledCommands: ['AUTH'] });
  });

  it.each([
    // mode, client, socket it reached us on, TLS, commands off
    ['none', '127.0.0.1', '127.0.0.1', false, ['STARTTLS']],
    ['none', '::1', '::1', false, ['STARTTLS']],
    ['none', '::ffff:127.0.0.5', '::ffff:127.0.0.5', false, ['STARTTLS']],
    ['none', '192.0.2.1', '192.0.2.1', false, ['STARTTLS', 'AUTH']],
    // A PROXY header naming a loopback client through a balancer elsewhere: the password would cross a network.
    ['none', '127.0.0.1', '10.0.0.5', false, ['STARTTLS', 'AUTH']],
    ['none', '10.0.0.5', '127.0.0.1', false, ['STARTTLS', 'AUTH']],
    ['starttls', '192.0.2.1', '192.0.2.1', false, ['AUTH']],
    ['starttls', '127.0.0.1', '127.0.0.1', false, []],
    ['starttls', '192.0.2.1', '192.0.2.1', true, []],
    ['required', '127.0.0.1', '127.0.0.1', false, ['AUTH']],
    ['required', '192.0.2.1', '192.0.2.1', true, []],
    ['implicit', '192.0.2.1', '192.0.2.1', true, ['STARTTLS']],
  ] as const)('TLS %s, client %s via %s, secure %s: %j off', (mode, client, socket, secure, off) => {
    const { policy } = policyWith({ users: users(), tls: mode === 'none' ? undefined : tls(mode) });
    expect(connected(policy, client, { socket, secure }).disabledCommands).toEqual(off);
  });

  it('after STARTTLS (onSecure) AUTH is offered to a remote client', () => {
    const { policy } = policyWith({ users: users(), tls: tls('starttls') });
    const s = connected(policy, '192.0.2.1');
    expect(s.disabledCommands).toEqual(['AUTH']);
    s.secure = true;
    let called = 0;
    policy.serverOptions().onSecure!(undefined as never, s, () => called++);
    expect([s.disabledCommands, called]).toEqual([[], 1]);
    // A session smtp-server never announced through onConnect is not taken for loopback.
    const unknown = session('127.0.0.1');
    policy.serverOptions().onSecure!(undefined as never, unknown, () => called++);
    expect(unknown.disabledCommands).toEqual(['AUTH']);
  });

  it('AUTH with the right password gives the principal and logs it; a wrong one or an unknown name gets 535 5.7.8', async () => {
    const { policy, find } = policyWith({ users: users() });
    const s = connected(policy, '::ffff:127.0.0.1');
    expect(await auth(policy, s, 'billing', PASSWORDS.billing)).toEqual({ user: { user: 'billing', mailboxes: ['billing@example.test'] } });
    expect(find('authenticated')).toEqual([expect.objectContaining({ level: 30, client: '127.0.0.1', user: 'billing', method: 'PLAIN', tls: false })]);
    const t = connected(policy, '127.0.0.1');
    expect(await auth(policy, t, 'billing', PASSWORDS.ops)).toEqual(authError(535, '5.7.8 Authentication credentials invalid'));
    expect(await auth(policy, t, 'nobody', PASSWORDS.billing)).toEqual(authError(535, '5.7.8 Authentication credentials invalid'));
    const failed = find('authentication failed');
    expect(failed).toEqual([
      expect.objectContaining({ level: 40, client: '127.0.0.1', method: 'PLAIN', user: 'billing', failuresFromAddress: 1 }),
      // An unknown name may be a password typed into the name field: it is not logged.
      expect.objectContaining({ level: 40, client: '127.0.0.1', method: 'PLAIN', userKnown: false, failuresFromAddress: 2 }),
    ]);
    expect(failed[0]).not.toHaveProperty('userKnown');
    expect(failed[1]).not.toHaveProperty('user');
    expect(JSON.stringify(failed)).not.toContain('nobody');
  });

  it('a logged user name is cut to 64 characters; AUTH without a name or password is a failed attempt', async () => {
    const { policy, find } = policyWith({ users: users() });
    const s = connected(policy, '127.0.0.1');
    expect(await auth(policy, s, LONG_NAME, 'wrong')).toEqual(authError(535, '5.7.8 Authentication credentials invalid'));
    expect(find('authentication failed')[0]).toMatchObject({ user: 'u'.repeat(64) });
    expect(await auth(policy, s, LONG_NAME, PASSWORDS.long)).toMatchObject({ user: { user: LONG_NAME } });
    const t = connected(policy, '127.0.0.1');
    expect(await auth(policy, t, undefined, undefined)).toEqual(authError(535, '5.7.8 Authentication credentials invalid'));
    expect(await auth(policy, t, 'ops', undefined)).toEqual(authError(535, '5.7.8 Authentication credentials invalid'));
  });

  it('the third failed AUTH on a connection gets 421 4.7.0 and is logged; the next connection starts again', async () => {
    const { policy, find } = policyWith({ users: users() });
    const s = connected(policy, '127.0.0.1');
    expect(await auth(policy, s, 'billing', 'x')).toEqual(authError(535, '5.7.8 Authentication credentials invalid'));
    expect(await auth(policy, s, 'billing', 'y')).toEqual(authError(535, '5.7.8 Authentication credentials invalid'));
    expect(find('closed a connection after too many failed authentication attempts')).toEqual([]);
    expect(await auth(policy, s, 'billing', 'z')).toEqual(authError(421, '4.7.0 3 failed authentication attempts on this connection; closing connection'));
    expect(find('closed a connection after too many failed authentication attempts')).toEqual([expect.objectContaining({ level: 40, client: '127.0.0.1', limit: 3 })]);
    const next = connected(policy, '127.0.0.1');
    expect(await auth(policy, next, 'billing', 'x')).toEqual(authError(535, '5.7.8 Authentication credentials invalid'));
    expect(await auth(policy, next, 'billing', PASSWORDS.billing)).toMatchObject({ user: { user: 'billing' } });
  });

  it('an address over its budget gets 454 4.7.0 without a check, naming its failures and the window in minutes', async () => {
    const guard = new AuthGuard({ ...AUTH_LIMITS, budget: 2, windowMs: 120_000, perConnection: 5 }, () => 0);
    const { policy, find } = policyWith({ users: users(), authGuard: guard });
    const s = connected(policy, '127.0.0.1');
    await auth(policy, s, 'billing', 'x');
    await auth(policy, s, 'billing', 'y');
    const blocked = authError(454, '4.7.0 Temporary authentication failure: 2 failed attempts from your address in the last 2 minutes; try again later');
    expect(await auth(policy, s, 'billing', PASSWORDS.billing)).toEqual(blocked);
    expect(find('authentication refused without a check: too many failed attempts from this address')).toEqual([
      expect.objectContaining({ level: 40, client: '127.0.0.1', failures: 2, limit: 2 }),
    ]);
    expect(find('authentication failed')).toHaveLength(2);
    // A refusal counts on the connection like a wrong password.
    await auth(policy, s, 'billing', PASSWORDS.billing);
    expect(await auth(policy, s, 'billing', PASSWORDS.billing)).toEqual(authError(421, '4.7.0 5 failed authentication attempts on this connection; closing connection'));
  });

  it('AUTH in clear off loopback gets 538 5.7.11 before any check; without users AUTH gets 535', async () => {
    const guard = new AuthGuard(AUTH_LIMITS, () => 0);
    const { policy } = policyWith({ users: users(), tls: tls('starttls'), authGuard: guard });
    const s = connected(policy, '192.0.2.1');
    expect(await auth(policy, s, 'billing', PASSWORDS.billing)).toEqual(authError(538, '5.7.11 Encryption required: AUTH is only accepted over TLS (use STARTTLS)'));
    expect(guard.recentFailures('192.0.2.1')).toBe(0);
    const required = policyWith({ users: users(), tls: tls('required') }).policy;
    expect(await auth(required, connected(required, '127.0.0.1'), 'billing', PASSWORDS.billing)).toEqual(
      authError(538, '5.7.11 Encryption required: AUTH is only accepted over TLS (use STARTTLS)'),
    );
    // Over TLS the client is named by its plain address.
    const { policy: p2, find } = policyWith({ users: users(), tls: tls('starttls') });
    expect(await auth(p2, connected(p2, '::ffff:192.0.2.1', { secure: true }), 'ops', PASSWORDS.ops)).toMatchObject({ user: { user: 'ops' } });
    expect(find('authenticated')).toEqual([expect.objectContaining({ client: '192.0.2.1', tls: true })]);
    const open = policyWith().policy;
    expect(await auth(open, connected(open, '127.0.0.1'), 'billing', PASSWORDS.billing)).toEqual(authError(535, '5.7.8 Authentication credentials invalid'));
  });

  it('MAIL FROM needs AUTH with users (530 5.7.0), and the user is looked up afresh each time', async () => {
    const path = join(dir, 'users-session');
    await writeUsers(path, [`billing:${scryptLine('pw')}:billing@example.test`, `ops:${scryptLine('pw')}`]);
    const { policy } = policyWith({ users: new Users(path) });
    const s = connected(policy, '127.0.0.1');
    const authRequired = reply(530, '5.7.0', 'Authentication required: this relay signs only for authenticated users (AUTH PLAIN or LOGIN)');
    expect(thrown(() => policy.admitSession(s))).toEqual(authRequired);
    expect(thrown(() => policy.principalOf(s))).toEqual(authRequired);
    const { user } = await auth(policy, s, 'billing', 'pw');
    s.user = user as Principal;
    expect(policy.admitSession(s)).toEqual({ user: 'billing', mailboxes: ['billing@example.test'] });
    expect(policy.principalOf(s)).toEqual({ user: 'billing', mailboxes: ['billing@example.test'] });
    // A reload narrows billing, then removes it: the next MAIL FROM sees it, and so does the transaction after it.
    await writeUsers(path, [`billing:${scryptLine('pw')}:other@example.test`, `ops:${scryptLine('pw')}`]);
    policy.reload();
    expect(policy.admitSession(s)).toEqual({ user: 'billing', mailboxes: ['other@example.test'] });
    await writeUsers(path, [`ops:${scryptLine('pw')}`]);
    policy.reload();
    expect(thrown(() => policy.admitSession(s))).toEqual(authRequired);
    expect(thrown(() => policy.principalOf(s))).toEqual(authRequired);
    // A session with a user name the file never had.
    const t = connected(policy, '127.0.0.1');
    t.user = { user: 'nobody' } as Principal;
    expect(thrown(() => policy.admitSession(t))).toEqual(authRequired);
  });

  it('with TLS required MAIL FROM before STARTTLS gets 530 5.7.0, with or without users', () => {
    const tlsRequired = reply(530, '5.7.0', 'Must issue a STARTTLS command first');
    for (const u of [undefined, users()]) {
      const { policy } = policyWith({ users: u, tls: tls('required') });
      expect(thrown(() => policy.admitSession(connected(policy, '127.0.0.1')))).toEqual(tlsRequired);
    }
    const { policy } = policyWith({ tls: tls('required') });
    expect(policy.admitSession(connected(policy, '192.0.2.1', { secure: true }))).toBeUndefined();
    const starttls = policyWith({ tls: tls('starttls') }).policy;
    expect(starttls.admitSession(connected(starttls, '192.0.2.1'))).toBeUndefined();
  });

  describe('the milter gate (admitRelayedClient)', () => {
    const notAllowed = (a: string) =>
      reply(550, '5.7.1', `Client address ${a} is neither loopback nor in SMIME_RELAY_ALLOW; mail from a covered mailbox is signed only for those clients, or after SASL login`);

    it('without users: loopback, allow-listed or local (no address) clients only', () => {
      const { policy } = policyWith({ allow: new AllowList([parseCidr('192.0.2.0/24')]) });
      for (const address of [undefined, '', '127.0.0.1', '::1', 'IPv6:::1', 'ipv6:::1', '192.0.2.25', '::ffff:192.0.2.25']) {
        expect(policy.admitRelayedClient({ address }), address).toBeUndefined();
      }
      expect(thrown(() => policy.admitRelayedClient({ address: '198.51.100.1' }))).toEqual(notAllowed('198.51.100.1'));
      expect(thrown(() => policy.admitRelayedClient({ address: 'IPv6:2001:DB8::25' }))).toEqual(notAllowed('2001:db8::25'));
      // Only a leading IPv6: tag is Sendmail's; elsewhere it is part of a (bad) address.
      expect(thrown(() => policy.admitRelayedClient({ address: '192.0.2.25IPv6:' }))).toEqual(notAllowed('192.0.2.25ipv6:'));
      expect(thrown(() => policy.admitRelayedClient({ address: '2'.repeat(80) }))).toEqual(notAllowed('2'.repeat(64)));
      const open = policyWith().policy;
      expect(open.admitRelayedClient({ address: '127.0.0.1' })).toBeUndefined();
      expect(thrown(() => open.admitRelayedClient({ address: '192.0.2.25' }))).toEqual(notAllowed('192.0.2.25'));
    });

    it('with users: a login that is a user, from anywhere; with an allow-list as well, from there only', () => {
      const { policy } = policyWith({ users: users() });
      expect(policy.admitRelayedClient({ login: 'billing', address: '198.51.100.1' })).toEqual({ user: 'billing', mailboxes: ['billing@example.test'] });
      expect(thrown(() => policy.admitRelayedClient({ address: '127.0.0.1' }))).toEqual(
        reply(550, '5.7.1', 'Authentication required: mail from a covered mailbox is signed only for senders who logged in (SASL) as a user of SMIME_RELAY_USERS'),
      );
      expect(thrown(() => policy.admitRelayedClient({ login: '', address: '127.0.0.1' }))).toEqual(thrown(() => policy.admitRelayedClient({ address: '127.0.0.1' })));
      expect(thrown(() => policy.admitRelayedClient({ login: 'x'.repeat(80) }))).toEqual(
        reply(550, '5.7.1', `SASL login ${'x'.repeat(64)} is not a user of SMIME_RELAY_USERS; mail from a covered mailbox is signed only for those users`),
      );
      const both = policyWith({ users: users(), allow: new AllowList([parseCidr('192.0.2.0/24')]) }).policy;
      expect(both.admitRelayedClient({ login: 'ops', address: '192.0.2.9' })).toEqual({ user: 'ops', mailboxes: undefined });
      expect(both.admitRelayedClient({ login: 'ops', address: '127.0.0.1' })).toEqual({ user: 'ops', mailboxes: undefined });
      expect(thrown(() => both.admitRelayedClient({ login: 'ops', address: '198.51.100.1' }))).toEqual(notAllowed('198.51.100.1'));
    });
  });

  it('reload() re-reads the users file and logs it; a broken file is logged and the old users stay', async () => {
    const path = join(dir, 'users-policy-reload');
    await writeUsers(path, [`a:${scryptLine('pw')}`]);
    const { policy, find } = policyWith({ users: new Users(path) });
    await writeUsers(path, [`a:${scryptLine('pw')}`, `b:${scryptLine('pw')}`], 0o644);
    policy.reload();
    expect(find('users file reloaded')).toEqual([expect.objectContaining({ level: 30, users: 2, path })]);
    expect(find('SMIME_RELAY_USERS is readable by every local user; chmod 640 it')).toEqual([expect.objectContaining({ level: 40, path })]);
    await writeFile(path, 'broken\n');
    policy.reload();
    expect(find('users file NOT reloaded; the previous users stay in service')).toEqual([
      expect.objectContaining({ level: 50, path, err: `${path} line 1: expected username:hash or username:hash:mailbox,mailbox` }),
    ]);
    expect(policy.admitRelayedClient({ login: 'b' })).toEqual({ user: 'b', mailboxes: undefined });
    await chmod(path, 0o600);
    await writeUsers(path, [`a:${scryptLine('pw')}`]);
    policy.reload();
    expect(find('users file reloaded')).toHaveLength(2);
    expect(find('SMIME_RELAY_USERS is readable by every local user; chmod 640 it')).toHaveLength(1);
  });

  it('reload() puts a renewed listener certificate in service, in the same mode; a broken one is logged and the old one stays', async () => {
    const cert = join(dir, 'reload.crt');
    const key = join(dir, 'reload.key');
    await copyFile(tlsA.cert, cert);
    await copyFile(tlsA.key, key);
    const settings = { tlsCert: cert, tlsKey: key, tlsMode: 'implicit' as const };
    const { policy, find, lines } = policyWith({ tls: loadListenerTls(settings)!, tlsSettings: { tlsCert: cert, tlsKey: key } });
    const server = new SMTPServer({ ...policy.serverOptions() });
    const b = loadListenerTls({ tlsCert: tlsB.cert, tlsKey: tlsB.key })!;
    await copyFile(tlsB.cert, cert);
    await copyFile(tlsB.key, key);
    await chmod(key, 0o640);
    policy.reload(server);
    expect(find('listener TLS certificate reloaded')).toEqual([expect.objectContaining({ level: 30, cert })]);
    expect(lines.filter((l) => l.level === 40).map((l) => l.msg)).toEqual([`SMIME_RELAY_TLS_KEY ${key} is readable by group or others (mode 640); chmod 600 it`]);
    expect(policy.serverOptions()).toMatchObject({ secure: true, cert: b.cert, key: b.key });
    expect((server as unknown as { options: { cert: Buffer } }).options.cert).toEqual(b.cert);
    // Without a server to update (the milter alone), the policy still takes it.
    await copyFile(tlsA.cert, cert);
    await copyFile(tlsA.key, key);
    policy.reload();
    expect(policy.serverOptions().cert).toEqual(tls('starttls').cert);
    await copyFile(tlsB.key, key);
    policy.reload(server);
    expect(find('listener TLS certificate NOT reloaded; the previous one stays in service')).toEqual([
      expect.objectContaining({ level: 50, err: expect.stringMatching(/cannot be used together: .*key values mismatch/) as unknown }),
    ]);
    expect(policy.serverOptions().cert).toEqual(tls('starttls').cert);
    expect(find('listener TLS certificate reloaded')).toHaveLength(2);
  });

  it('reload() without users or TLS does nothing', () => {
    const { policy, lines } = policyWith({ tlsSettings: { tlsCert: tlsA.cert, tlsKey: tlsA.key } });
    policy.reload();
    expect(lines).toEqual([]);
    expect(policy.serverOptions().hideSTARTTLS).toBe(true);
  });
});

// ---------------------------------------------------------------------------------------------

describe('building the policy from the settings (open.ts)', () => {
  const loopback = { host: '127.0.0.1', port: 2525 };
  const open = async (s: Partial<AccessSettings>) => {
    const c = capture();
    const policy = await openAccess({ listen: loopback, ...s }, c.log);
    return { ...c, policy };
  };
  const refused = async (s: Partial<AccessSettings>) => {
    const e = await rejection(openAccess({ listen: loopback, ...s }, capture().log));
    expect(e).toBeInstanceOf(ConfigError);
    return e.message;
  };

  it('without settings: no gates, and one log line that says so', async () => {
    const { policy, lines } = await open({});
    expect(lines).toEqual([
      expect.objectContaining({
        level: 30,
        msg: 'access policy',
        allow: 'any client that can reach the listener',
        users: 'none (no AUTH)',
        tls: 'off',
        proxyProtocol: 'off',
        xforwardHosts: 'none',
      }),
    ]);
    expect(policy.serverOptions()).toMatchObject({ disabledCommands: ['STARTTLS', 'AUTH'], hideSTARTTLS: true });
    expect(policy.admitSession(connectedTo(policy, '192.0.2.1'))).toBeUndefined();
  });

  it('every gate from its setting, logged in one line', async () => {
    const { policy, lines } = await open({
      listen: { host: '0.0.0.0', port: 2525 },
      allow: ['192.0.2.0/24'],
      users: usersPath,
      tlsCert: tlsA.cert,
      tlsKey: tlsA.key,
      tlsMode: 'required',
      proxyProtocol: ['10.0.0.0/8'],
      xforwardHosts: ['127.0.0.1/32'],
    });
    expect(lines).toEqual([
      expect.objectContaining({ level: 30, msg: 'access policy', allow: ['192.0.2.0/24'], users: 3, tls: 'required', proxyProtocol: ['10.0.0.0/8'], xforwardHosts: ['127.0.0.1/32'] }),
    ]);
    expect([policy.allowListed('192.0.2.1'), policy.allowListed('192.0.3.1')]).toEqual([true, false]);
    expect([policy.isProxy('10.1.1.1'), policy.isProxy('192.0.2.1')]).toEqual([true, false]);
    expect([policy.mayXforward('127.0.0.1'), policy.mayXforward('127.0.0.2')]).toEqual([true, false]);
    expect(policy.serverOptions()).toMatchObject({ secure: false, hideSTARTTLS: false, disabledCommands: [] });
    const s = connectedTo(policy, '192.0.2.1');
    expect(thrown(() => policy.admitSession(s))).toEqual(reply(530, '5.7.0', 'Must issue a STARTTLS command first'));
    s.secure = true;
    expect(thrown(() => policy.admitSession(s))).toEqual(reply(530, '5.7.0', 'Authentication required: this relay signs only for authenticated users (AUTH PLAIN or LOGIN)'));
  });

  it('empty lists are no gates', async () => {
    const { policy, lines } = await open({ allow: [], proxyProtocol: [], xforwardHosts: [] });
    expect(lines[0]).toMatchObject({ allow: [], proxyProtocol: 'off', xforwardHosts: 'none' });
    expect([policy.allowListed('127.0.0.1'), policy.isProxy('127.0.0.1'), policy.mayXforward('127.0.0.1')]).toEqual([false, false, false]);
    expect(connectedTo(policy, '198.51.100.1').disabledCommands).toEqual(['STARTTLS', 'AUTH']);
    expect(await refused({ listen: { host: '0.0.0.0', port: 25 }, allow: [] })).toContain('neither SMIME_RELAY_ALLOW nor SMIME_RELAY_USERS is set');
  });

  it('warns about a readable key, a users file without users and a users file every local user can read', async () => {
    const key = join(dir, 'open-loose.key');
    await copyFile(tlsA.key, key);
    await chmod(key, 0o644);
    const empty = join(dir, 'users-empty');
    await writeUsers(empty, ['# nobody yet'], 0o644);
    const { lines } = await open({ users: empty, tlsCert: tlsA.cert, tlsKey: key });
    expect(lines.map((l) => [l.level, l.msg, l.path])).toEqual([
      [40, `SMIME_RELAY_TLS_KEY ${key} is readable by group or others (mode 644); chmod 600 it`, undefined],
      [40, 'SMIME_RELAY_USERS has no users: nobody can send until one is added', empty],
      [40, 'SMIME_RELAY_USERS is readable by every local user; chmod 640 it', empty],
      [30, 'access policy', undefined],
    ]);
    expect(lines[3]).toMatchObject({ users: 0, tls: 'starttls' });
    expect((await open({ users: usersPath })).lines.map((l) => l.msg)).toEqual(['access policy']);
  });

  it('users off loopback need TLS; with it they are enough', async () => {
    const listen = { host: '0.0.0.0', port: 25 };
    expect(await refused({ listen, users: usersPath })).toContain('SMIME_RELAY_USERS is set, but the listener has no TLS');
    await expect(open({ listen, users: usersPath, tlsCert: tlsA.cert, tlsKey: tlsA.key })).resolves.toBeDefined();
    await expect(open({ listen, allow: ['192.0.2.0/24'] })).resolves.toBeDefined();
    expect(await refused({ listen: 'off', milter: { kind: 'inet', host: '0.0.0.0', port: 8891 } })).toContain('SMIME_RELAY_MILTER=0.0.0.0:8891');
    await expect(open({ listen: 'off', milter: { kind: 'inet', host: '0.0.0.0', port: 8891 }, allow: ['192.0.2.25/32'] })).resolves.toBeDefined();
  });

  it('a broken setting stops the start with a ConfigError that names it', async () => {
    const missing = join(dir, 'no-users');
    expect(await refused({ users: missing })).toBe(`SMIME_RELAY_USERS (--users): cannot read ${missing}: ENOENT: no such file or directory, open '${missing}'`);
    expect(await refused({ tlsMode: 'implicit' })).toBe(
      'SMIME_RELAY_TLS_MODE=implicit needs a server certificate: set SMIME_RELAY_TLS_CERT and SMIME_RELAY_TLS_KEY (PEM files), or unset SMIME_RELAY_TLS_MODE',
    );
    expect(await refused({ listen: { host: '192.0.2.1', port: 25 } })).toMatch(/^SMIME_RELAY_LISTEN=192\.0\.2\.1:25 \(192\.0\.2\.1\) is not a loopback address, and neither/);
    // Anything else is not a configuration problem of ours and passes unchanged.
    const e = await rejection(openAccess({ listen: loopback, allow: ['not-a-network'] }, capture().log));
    expect(e).not.toBeInstanceOf(ConfigError);
    expect(e.message).toBe("'not-a-network' is not an IP address or CIDR network");
  });

  it('the policy keeps the TLS settings, so reload() can renew the certificate', async () => {
    const cert = join(dir, 'open-reload.crt');
    const key = join(dir, 'open-reload.key');
    await copyFile(tlsA.cert, cert);
    await copyFile(tlsA.key, key);
    const { policy, find } = await open({ tlsCert: cert, tlsKey: key });
    await copyFile(tlsB.cert, cert);
    await copyFile(tlsB.key, key);
    policy.reload();
    expect(find('listener TLS certificate reloaded')).toHaveLength(1);
    expect(policy.serverOptions().cert).toEqual(loadListenerTls({ tlsCert: tlsB.cert, tlsKey: tlsB.key })!.cert);
  });
});

function connectedTo(policy: AccessPolicy, remote: string): Session {
  const s = session(remote);
  expect(policy.admitConnection(s, remote)).toBeUndefined();
  return s;
}
