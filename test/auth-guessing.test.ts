import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AuthGuard, guardKey, type AuthLimits } from '../src/access/auth-guard.js';
import { hashPassword } from '../src/access/password.js';
import { RawClient, type Reply } from './support/client.js';
import { createTestPki, type Leaf, type TestPki } from './support/pki.js';
import { startTestRelay, type TestRelay } from './support/relay.js';
import { startSink, type Sink } from './support/sink.js';

/*
 * Password guessing (issue 10, item 5): at most 3 wrong passwords per connection, a failure
 * budget per client address after which no password is even checked, and password checks that
 * guessers cannot queue a good client behind. Real relay, real scrypt hashes, real sockets; the
 * clients come from different loopback addresses (127.0.0.x) to look like different hosts.
 */

const SENDER = 'billing@example.test';
const PASSWORD = 'c0rrect-h0rse';

let pki: TestPki;
let leaf: Leaf;
let sink: Sink;
let dir: string;
let usersPath: string;

beforeAll(async () => {
  pki = await createTestPki();
  leaf = await pki.issueLeaf('billing', { emails: [SENDER] });
  sink = await startSink();
  dir = await mkdtemp(join(tmpdir(), 'smr-auth-'));
  usersPath = join(dir, 'users');
  await writeFile(usersPath, `billing:${await hashPassword(PASSWORD)}:${SENDER}\n`, { mode: 0o600 });
});

afterAll(async () => {
  await sink?.close();
  await pki?.cleanup();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const startRelay = () => startTestRelay({ SMIME_RELAY_CERT: leaf.bundlePath, SMIME_RELAY_UPSTREAM: sink.url, SMIME_RELAY_USERS: usersPath });

async function connect(relay: TestRelay, from: string): Promise<RawClient> {
  const c = await RawClient.open(relay.address.port, '127.0.0.1', { localAddress: from });
  await c.hello();
  return c;
}

const failedChecks = (relay: TestRelay) => relay.logs.filter((l) => l.msg === 'authentication failed').length;

describe('a connection that keeps guessing', () => {
  let relay: TestRelay;
  beforeAll(async () => {
    relay = await startRelay();
  });
  afterAll(() => relay?.close());

  it('gets 535 twice, then 421 4.7.0 for the third wrong password, and is closed', async () => {
    const c = await connect(relay, '127.0.0.2');
    expect(await c.authPlain('billing', 'guess-1')).toEqual({ code: 535, text: '5.7.8 Authentication credentials invalid' });
    expect((await c.authLogin('billing', 'guess-2')).code).toBe(535);
    const third = await c.authPlain('billing', 'guess-3');
    expect(third).toEqual({ code: 421, text: '4.7.0 3 failed authentication attempts on this connection; closing connection' });
    expect(await c.read(10_000)).toEqual({ code: 0, text: 'connection closed' });
    expect(relay.logs.some((l) => l.msg === 'closed a connection after too many failed authentication attempts' && l.client === '127.0.0.2')).toBe(true);
  });

  it('a new connection may try again, and the right password works', async () => {
    const c = await connect(relay, '127.0.0.2');
    expect((await c.authPlain('billing', PASSWORD)).code).toBe(235);
    expect((await c.send(SENDER)).code).toBe(250);
    c.close();
  });
});

describe('an address over its failure budget (10 per 5 minutes)', () => {
  let relay: TestRelay;
  beforeAll(async () => {
    relay = await startRelay();
  });
  afterAll(() => relay?.close());

  it('gets 454 4.7.0 without any password check, even for the right password; other addresses are not affected', async () => {
    let wrong = 0;
    while (wrong < 10) {
      const c = await connect(relay, '127.0.0.3');
      for (let i = 0; i < 3 && wrong < 10; i++, wrong++) expect((await c.authPlain('billing', `guess-${wrong}`)).code).not.toBe(235);
      c.close();
    }
    expect(failedChecks(relay)).toBe(10);

    const c = await connect(relay, '127.0.0.3');
    const blocked = await c.authPlain('billing', PASSWORD);
    expect(blocked.code).toBe(454);
    expect(blocked.text).toBe('4.7.0 Temporary authentication failure: 10 failed attempts from your address in the last 5 minutes; try again later');
    c.close();
    // No check ran: a checked right password would have been 235, a wrong one logged as failed.
    expect(failedChecks(relay)).toBe(10);
    expect(relay.logs.some((l) => l.msg === 'authentication refused without a check: too many failed attempts from this address' && l.client === '127.0.0.3')).toBe(true);

    const other = await connect(relay, '127.0.0.4');
    expect((await other.authPlain('billing', PASSWORD)).code).toBe(235);
    other.close();
  });
});

describe('16 connections guessing passwords', () => {
  let relay: TestRelay;
  beforeAll(async () => {
    relay = await startRelay();
  });
  afterAll(() => relay?.close());

  it('do not hold up a good client from another address: AUTH and a send complete well under 3 s', { timeout: 60_000 }, async () => {
    let stop = false;
    const answers: Reply[] = [];
    const open = new Set<RawClient>();
    // Each guesser reconnects whenever it is closed, as a brute-force tool does.
    const guesser = async (from: string) => {
      for (let n = 0; !stop; ) {
        const c = await connect(relay, from).catch(() => undefined);
        if (!c) continue;
        open.add(c);
        try {
          for (let r = await c.authPlain('billing', `guess-${from}-${n++}`); !stop; r = await c.authPlain('billing', `guess-${from}-${n++}`)) {
            answers.push(r);
            if (r.code === 0 || r.code === 421) break;
          }
        } finally {
          open.delete(c);
          c.close();
        }
      }
    };
    const guessers = Array.from({ length: 16 }, (_, i) => guesser(`127.0.0.${10 + i}`));
    try {
      // Let the attack get going: every guesser has had passwords checked.
      while (failedChecks(relay) < 16) await new Promise((r) => setTimeout(r, 50));

      const t0 = performance.now();
      const c = await connect(relay, '127.0.0.2');
      const auth = await c.authPlain('billing', PASSWORD);
      const sent = await c.send(SENDER);
      const ms = performance.now() - t0;
      c.close();
      console.log(`good client: connect + AUTH + send in ${ms.toFixed(0)} ms while 16 connections guessed (${failedChecks(relay)} wrong passwords checked so far)`);
      expect(auth.code).toBe(235);
      expect(sent.code, sent.text).toBe(250);
      expect(ms).toBeLessThan(3_000);
    } finally {
      stop = true;
      for (const c of open) c.close();
      await Promise.all(guessers);
    }
    expect(answers.length).toBeGreaterThanOrEqual(16);
    expect(answers.every((r) => r.code === 535)).toBe(true);
  });
});

describe('AuthGuard: the scheduling of password checks', () => {
  const limits: AuthLimits = { perConnection: 3, budget: 3, windowMs: 60_000, concurrency: 2, perAddress: 1, maxAddresses: 100 };

  /** A check that runs until released; records when it started. */
  function gate() {
    const started: string[] = [];
    const releases: (() => void)[] = [];
    const check = (name: string, ok: boolean) => () =>
      new Promise<string | undefined>((resolve) => {
        started.push(name);
        releases.push(() => resolve(ok ? name : undefined));
      });
    const releaseNext = async () => {
      releases.shift()!();
      await new Promise((r) => setImmediate(r));
    };
    return { started, check, releaseNext };
  }

  it('runs at most `concurrency` checks, one per address, and gives a free slot to the address with the fewest failures', async () => {
    let now = 0;
    const guard = new AuthGuard(limits, () => now);
    const g = gate();
    // 10.0.0.1 has failed twice already.
    for (let n = 0; n < 2; n++) await guard.run('10.0.0.1', async () => undefined);
    // Both slots taken...
    const busy = [guard.run('10.0.0.8', g.check('x', true)), guard.run('10.0.0.9', g.check('y', true))];
    // ... while these queue up, 10.0.0.1 first.
    const pending = [
      guard.run('10.0.0.1', g.check('a1', false)),
      guard.run('10.0.0.1', g.check('a2', false)),
      guard.run('10.0.0.2', g.check('b1', false)),
      guard.run('10.0.0.3', g.check('c1', true)),
    ];
    await new Promise((r) => setImmediate(r));
    expect(g.started).toEqual(['x', 'y']);
    await g.releaseNext();
    await g.releaseNext();
    // The addresses without failures go first, although 10.0.0.1 came first.
    expect(g.started).toEqual(['x', 'y', 'b1', 'c1']);
    await g.releaseNext(); // b1 fails
    expect(g.started).toEqual(['x', 'y', 'b1', 'c1', 'a1']);
    await g.releaseNext(); // c1 succeeds
    // One check at a time per address: a2 waits for a1 although a slot is free.
    expect(g.started).toHaveLength(5);
    await g.releaseNext(); // a1 fails: 10.0.0.1 reaches its budget of 3 ...
    // ... so a2 is answered without a check.
    expect(await pending[1]).toEqual({ checked: false, failures: 3 });
    expect(g.started).toHaveLength(5);
    await Promise.all(busy);
    expect(await pending[0]).toEqual({ checked: true, result: undefined });
    expect(await pending[2]).toEqual({ checked: true, result: undefined });
    expect(await pending[3]).toEqual({ checked: true, result: 'c1' });
    expect(guard.recentFailures('10.0.0.2')).toBe(1);
    // The window slides: past it the address may try again.
    now += limits.windowMs + 1;
    expect(guard.recentFailures('10.0.0.1')).toBe(0);
    expect(await guard.run('10.0.0.1', async () => 'ok')).toEqual({ checked: true, result: 'ok' });
  });

  it('counts an IPv6 client per /64, an IPv4 client per address', () => {
    expect(guardKey('2001:db8:1:2:aaaa::1')).toBe(guardKey('2001:db8:1:2:bbbb:cccc:dddd:eeee'));
    expect(guardKey('2001:db8:1:2::1')).not.toBe(guardKey('2001:db8:1:3::1'));
    expect(guardKey('::ffff:192.0.2.1')).toBe('192.0.2.1');
    expect(guardKey('192.0.2.1')).not.toBe(guardKey('192.0.2.2'));
  });
});
