/**
 * The milter listener driven by OpenDKIM's miltertest, an MTA side written by others: option
 * negotiation, macros ({client_addr}, {auth_authen}), and every answer short of a body
 * replacement (see test/support/miltertest.ts for why not those; Postfix checks them in
 * milter-postfix.test.ts). Also the settings around it: SMIME_RELAY_LISTEN=off, the unix socket,
 * and the binding rule.
 */
import { chmodSync, chownSync, copyFileSync, mkdirSync, statSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { networkInterfaces, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashPassword } from '../src/access/password.js';
import { ConfigError } from '../src/config/load.js';
import { encodePacket } from '../src/milter/codec.js';
import { lua, miltertest, requireMiltertest } from './support/miltertest.js';
import { createTestPki, type TestPki } from './support/pki.js';
import { startTestRelay, type TestRelay } from './support/relay.js';

const SENDER = 'alerts@example.test';
const EXPIRED = 'expired@example.test';
const OTHER = 'billing@example.test';

const canRun = requireMiltertest();
/** Signed mail goes back to the MTA; the upstream is never used, but must not be ./outbox. */
const base = () => ({ SMIME_RELAY_CERT: certDir, SMIME_RELAY_UPSTREAM: `file:${join(dir, 'outbox')}` });

let pki: TestPki;
let dir: string;
let certDir: string;
let usersPath: string;
/** LISTEN=off, a unix socket, a 4 KiB size limit, root@* as an envelope sender. */
let alone: TestRelay;
let socket: string;

beforeAll(async () => {
  pki = await createTestPki();
  dir = await mkdtemp(join(tmpdir(), 'smr-milter-'));
  certDir = join(dir, 'certs');
  mkdirSync(certDir);
  const leaves = await Promise.all([
    pki.issueLeaf('alerts', { emails: [SENDER, OTHER] }),
    pki.issueLeaf('expired', { emails: [EXPIRED], notBefore: new Date(Date.now() - 20 * 86400_000), notAfter: new Date(Date.now() - 86400_000) }),
  ]);
  leaves.forEach((l, i) => copyFileSync(l.bundlePath, join(certDir, `${i}.pem`)));
  usersPath = join(dir, 'users');
  await writeFile(usersPath, `billing:${await hashPassword('x')}:${OTHER}\nops:${await hashPassword('y')}\n`, { mode: 0o600 });
  socket = join(dir, 'milter.sock');
  alone = await startTestRelay({ ...base(), SMIME_RELAY_LISTEN: 'off', SMIME_RELAY_MILTER: `unix:${socket}`, SMIME_RELAY_MAX_SIZE: '4KiB', SMIME_RELAY_ENVELOPE_SENDERS: 'root@*' });
});

afterAll(async () => {
  await alone?.close();
  await pki?.cleanup();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const headers = (from: string, extra: [string, string][] = []) =>
  `{ {"From", ${lua(` Alerts <${from}>`)}}, {"To", " rcpt@example.org"}, {"Subject", " test"}, ${extra.map(([n, v]) => `{${lua(n)}, ${lua(v)}}`).join(', ')} }`;

interface Case {
  socket: string;
  from?: string;
  mailFrom?: string;
  client?: string;
  login?: string;
  extra?: [string, string][];
  body?: string;
  stopBeforeEom?: boolean;
}

/** One message through miltertest; returns the lines it echoed: the reply letter per stage (EOH c, BODY c, EOM y). */
async function send(c: Case): Promise<string[]> {
  const from = c.from ?? SENDER;
  const o = [
    `socket = ${lua(c.socket)}`,
    `from = ${lua(c.mailFrom ?? from)}`,
    `headers = ${headers(from, c.extra)}`,
    c.client ? `client = ${lua(c.client)}` : '',
    c.login ? `login = ${lua(c.login)}` : '',
    c.body ? `body = ${lua(c.body)}` : '',
    c.stopBeforeEom ? 'stopBeforeEom = true' : '',
  ].filter(Boolean);
  const r = await miltertest(`message({ ${o.join(', ')} })\n`);
  expect(r.code, `miltertest failed:\n${r.stderr}\n${r.lines.join('\n')}`).toBe(0);
  return r.lines;
}

const lastTransaction = (relay: TestRelay) => relay.logs.findLast((l) => l.msg === 'transaction');

describe.skipIf(!canRun)('the milter protocol, driven by miltertest', () => {
  const unix = () => `unix:${socket}`;

  it('SMIME_RELAY_LISTEN=off runs the milter alone, on a unix socket of mode 0660', () => {
    expect(statSync(socket).isSocket()).toBe(true);
    expect(statSync(socket).mode & 0o777).toBe(0o660);
    expect(() => alone.address).toThrow(/SMIME_RELAY_LISTEN=off/);
    expect(alone.logs.find((l) => l.msg === 'smime-relay listening')).toMatchObject({ listen: 'off', milter: `unix:${socket}` });
  });

  it('mail from a sender it does not sign for is accepted unchanged at the end of its header', async () => {
    const lines = await send({ socket: unix(), from: 'someone@example.org', client: '192.0.2.7' });
    expect(lines).toEqual(['EOH a']);
    expect(alone.logs.findLast((l) => String(l.msg).startsWith('milter: message passed unchanged'))).toMatchObject({ mailFrom: 'someone@example.org', queueId: 'QUEUE1' });
  });

  it('a covered From from a client outside the allowed networks gets 550 5.7.1 before the body is read', async () => {
    expect(await send({ socket: unix(), client: '192.0.2.7' })).toEqual(['EOH y']);
    expect(lastTransaction(alone)).toMatchObject({ outcome: 'rejected_sender', client: '192.0.2.7', mailFrom: SENDER });
    expect(String(lastTransaction(alone)!.reply)).toMatch(/^550 5\.7\.1 Client address 192\.0\.2\.7 is neither loopback nor in SMIME_RELAY_ALLOW/);
  });

  it('an envelope sender the relay does not sign for gets 550 5.7.1, as at MAIL FROM on the SMTP listener', async () => {
    expect(await send({ socket: unix(), mailFrom: 'bounces@example.org' })).toEqual(['EOH y']);
    expect(String(lastTransaction(alone)!.reply)).toMatch(/^550 5\.7\.1 Sender <bounces@example\.org> is not a mailbox this relay signs for/);
  });

  it('SMIME_RELAY_ENVELOPE_SENDERS applies as at MAIL FROM: a legacy sendmail envelope (root@host) is admitted for a covered From', async () => {
    expect(await send({ socket: unix(), mailFrom: 'root@mta.example.test', stopBeforeEom: true })).toEqual(['EOH c', 'BODY c']);
  });

  it('a message over SMIME_RELAY_MAX_SIZE gets 552 5.3.4 as soon as its body passes the limit', async () => {
    expect(await send({ socket: unix(), body: 'x'.repeat(5000) + '\r\n' })).toEqual(['EOH c', 'BODY y']);
    expect(lastTransaction(alone)).toMatchObject({ outcome: 'rejected_size' });
  });

  it('a From whose certificate expired gets 451 4.7.1 (temporary; never passed unsigned)', async () => {
    expect(await send({ socket: unix(), from: EXPIRED })).toEqual(['EOH c', 'BODY c', 'EOM y']);
    expect(lastTransaction(alone)).toMatchObject({ outcome: 'sign_error', from: EXPIRED });
    expect(String(lastTransaction(alone)!.reply)).toMatch(/^451 4\.7\.1 Certificate for <expired@example\.test> is not usable/);
  });

  it('the refusals of the header rules come back as the reply code', async () => {
    expect(await send({ socket: unix(), extra: [['From', ' someone@example.org']] })).toEqual(['EOH c', 'BODY c', 'EOM y']);
    expect(String(lastTransaction(alone)!.reply)).toMatch(/^550 5\.7\.1 From header appears 2 times/);
  });

  it('a message already signed passes unchanged', async () => {
    const lines = await send({ socket: unix(), extra: [['MIME-Version', ' 1.0'], ['Content-Type', ' multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256; boundary="b"']], body: '--b\r\n\r\nx\r\n--b--\r\n' });
    expect(lines).toEqual(['EOH c', 'BODY c', 'EOM a']);
    expect(lastTransaction(alone)).toMatchObject({ outcome: 'passed_protected' });
  });

  it('self-verification applies: a signature that does not verify answers 451 4.7.0, and nothing is edited', async () => {
    const flip = (der: Buffer) => Buffer.concat([der.subarray(0, -1), Buffer.from([der[der.length - 1]! ^ 0x01])]);
    const relay = await startTestRelay(
      { ...base(), SMIME_RELAY_LISTEN: 'off', SMIME_RELAY_MILTER: '127.0.0.1:0', SMIME_RELAY_ENGINE: 'native' },
      { wrapEngine: (engine) => ({ name: engine.name, sign: async (content, bundle) => flip(await engine.sign(content, bundle)), close: () => engine.close() }) },
    );
    try {
      const port = relay.milter!.address.kind === 'inet' ? relay.milter!.address.port : 0;
      // No HDRADD, no BODYCHANGE: the damaged message never reached Postfix.
      expect(await send({ socket: `inet:${port}@127.0.0.1` })).toEqual(['EOH c', 'BODY c', 'EOM y']);
      expect(lastTransaction(relay)).toMatchObject({ outcome: 'self_verify_failed' });
      expect(String(lastTransaction(relay)!.reply)).toMatch(/^451 4\.7\.0 Signature self-check failed/);
    } finally {
      await relay.close();
    }
  });

  it('SMIME_RELAY_MEMORY_BUDGET applies: a body that outgrows the room left gets 452 4.3.1, and a closed connection gives its share back', async () => {
    // 150 KiB holds one message of 30 KiB while it is signed (C's start check), with little to spare.
    const relay = await startTestRelay({ ...base(), SMIME_RELAY_LISTEN: 'off', SMIME_RELAY_MILTER: '127.0.0.1:0', SMIME_RELAY_MAX_SIZE: '30KiB', SMIME_RELAY_MEMORY_BUDGET: '150KiB' });
    try {
      const port = relay.milter!.address.kind === 'inet' ? relay.milter!.address.port : 0;
      const r = await miltertest(`
        local S = "inet:${port}@127.0.0.1"
        local function start(name, size)
          local conn = mt.connect(S, 20, 0.1)
          ok(mt.conninfo(conn, "client.example.net", "127.0.0.1"))
          if size then ok(mt.mailfrom(conn, "<${SENDER}>", "SIZE=" .. size)) else ok(mt.mailfrom(conn, "<${SENDER}>")) end
          ok(mt.rcptto(conn, "<rcpt@example.org>"))
          ok(mt.header(conn, "From", " ${SENDER}"))
          ok(mt.eoh(conn))
          mt.echo(name .. " EOH " .. letter(conn))
          return conn
        end
        local b = start("B")          -- holds room for its header and a signed copy
        local a = start("A", 9000)    -- holds room for its declared 9000 bytes: little is left
        ok(mt.bodystring(b, string.rep("x", 3000) .. "\\r\\n"))
        mt.echo("B BODY " .. letter(b))
        mt.disconnect(a)
        mt.disconnect(b)
        local c = start("C", 9000)    -- fits again only if A and B gave their share back
        mt.disconnect(c)
      `);
      expect(r.code, `${r.stderr}\n${r.lines.join('\n')}`).toBe(0);
      expect(r.lines).toEqual(['B EOH c', 'A EOH c', 'B BODY y', 'C EOH c']);
      expect(relay.logs.find((l) => l.msg === 'transaction' && l.outcome === 'rejected_memory')).toMatchObject({ mailFrom: SENDER });
      expect(String(relay.logs.find((l) => l.outcome === 'rejected_memory')!.reply)).toMatch(/^452 4\.3\.1 Mail system full/);
    } finally {
      await relay.close();
    }
  }, 60_000);

  it('a declared SIZE= over SMIME_RELAY_MAX_SIZE gets 552 5.3.4 at the end of the header', async () => {
    const r = await miltertest(`
      local conn = mt.connect(${lua(`unix:${socket}`)}, 20, 0.1)
      ok(mt.conninfo(conn, "client.example.net", "127.0.0.1"))
      ok(mt.mailfrom(conn, "<${SENDER}>", "SIZE=999999"))
      ok(mt.rcptto(conn, "<rcpt@example.org>"))
      ok(mt.header(conn, "From", " ${SENDER}"))
      ok(mt.eoh(conn))
      mt.echo("EOH " .. letter(conn))
      mt.disconnect(conn)
    `);
    expect(r.lines).toEqual(['EOH y']);
    expect(lastTransaction(alone)).toMatchObject({ outcome: 'rejected_size' });
  });

  describe('with SMIME_RELAY_USERS: the SASL login the MTA names ({auth_authen})', () => {
    let relay: TestRelay;
    const inet = () => `inet:${relay.milter!.address.kind === 'inet' ? relay.milter!.address.port : 0}@127.0.0.1`;
    beforeAll(async () => {
      relay = await startTestRelay({ ...base(), SMIME_RELAY_MILTER: '127.0.0.1:0', SMIME_RELAY_USERS: usersPath });
    });
    afterAll(() => relay?.close());

    it('no login: 550 5.7.1, even from loopback', async () => {
      expect(await send({ socket: inet(), client: '127.0.0.1' })).toEqual(['EOH y']);
      expect(String(lastTransaction(relay)!.reply)).toMatch(/^550 5\.7\.1 Authentication required/);
    });

    it('a login that is not a user: 550 5.7.1', async () => {
      expect(await send({ socket: inet(), login: 'mallory' })).toEqual(['EOH y']);
      expect(String(lastTransaction(relay)!.reply)).toMatch(/^550 5\.7\.1 SASL login mallory is not a user of SMIME_RELAY_USERS/);
    });

    it('a user limited to other mailboxes: 550 5.7.1 for this From', async () => {
      expect(await send({ socket: inet(), login: 'billing', mailFrom: OTHER })).toEqual(['EOH c', 'BODY c', 'EOM y']);
      expect(lastTransaction(relay)).toMatchObject({ user: 'billing', outcome: 'rejected_sender' });
      expect(String(lastTransaction(relay)!.reply)).toMatch(/^550 5\.7\.1 User billing may not send as From <alerts@example\.test>/);
    });

    it('a user who may send as the From, from anywhere (the login is the gate): the body is read for signing', async () => {
      // The end of message is left out: signing answers with a body replacement, which
      // miltertest cannot take (see its support file). Postfix checks the signed result.
      const before = relay.logs.length;
      expect(await send({ socket: inet(), client: '203.0.113.9', login: 'ops', stopBeforeEom: true })).toEqual(['EOH c', 'BODY c']);
      expect(relay.logs.slice(before).filter((l) => l.msg === 'transaction')).toEqual([]);
    });
  });
});

describe('settings and the binding rule', () => {
  it('SMIME_RELAY_LISTEN=off without SMIME_RELAY_MILTER refuses to start', async () => {
    await expect(startTestRelay({ SMIME_RELAY_LISTEN: 'off' })).rejects.toThrow(/SMIME_RELAY_LISTEN=off .*SMIME_RELAY_MILTER must be set/);
  });

  it('SMIME_RELAY_MILTER must be host:port or unix:/absolute/path', async () => {
    await expect(startTestRelay({ SMIME_RELAY_MILTER: 'inet:127.0.0.1:8891' })).rejects.toThrow(/write '127\.0\.0\.1:8891' without 'inet:'/);
    await expect(startTestRelay({ SMIME_RELAY_MILTER: 'unix:milter.sock' })).rejects.toThrow(/unix: needs an absolute path/);
  });

  it('a milter address off loopback without SMIME_RELAY_ALLOW refuses to start; users do not count', async () => {
    const users = join(tmpdir(), `smr-users-${process.pid}`);
    await writeFile(users, `ops:${await hashPassword('y')}\n`, { mode: 0o600 });
    try {
      const cases: Record<string, string>[] = [{ SMIME_RELAY_MILTER: '0.0.0.0:0' }, { SMIME_RELAY_MILTER: '0.0.0.0:0', SMIME_RELAY_USERS: users }];
      for (const env of cases) {
        const e = await startTestRelay({ ...base(), ...env }).then(
          async (r) => (await r.close(), undefined),
          (err: Error) => err,
        );
        expect(e).toBeInstanceOf(ConfigError);
        expect(e!.message).toMatch(/SMIME_RELAY_MILTER=0\.0\.0\.0:0 \(0\.0\.0\.0, every interface\) is not a loopback address, and SMIME_RELAY_ALLOW is not set/);
      }
    } finally {
      await rm(users, { force: true });
    }
  });

  const lan = Object.values(networkInterfaces()).flat().find((i) => i && !i.internal && i.family === 'IPv4')?.address;

  it.skipIf(!lan)('off loopback with an allow-list, it closes connections from peers outside it', async () => {
    const relay = await startTestRelay({ ...base(), SMIME_RELAY_MILTER: '0.0.0.0:0', SMIME_RELAY_ALLOW: '198.51.100.0/24' });
    try {
      const port = relay.milter!.address.kind === 'inet' ? relay.milter!.address.port : 0;
      const closed = await new Promise<boolean>((resolve) => {
        const s = connect({ host: lan!, port });
        s.on('data', () => resolve(false));
        s.on('close', () => resolve(true));
        s.on('error', () => resolve(true));
      });
      expect(closed).toBe(true);
      expect(relay.logs.find((l) => String(l.msg).startsWith('milter connection refused'))).toMatchObject({ peer: lan });
    } finally {
      await relay.close();
    }
  });

  it('on shutdown, an idle MTA connection is closed at once (the MTA reconnects to whoever listens next)', async () => {
    const relay = await startTestRelay({ ...base(), SMIME_RELAY_LISTEN: 'off', SMIME_RELAY_MILTER: '127.0.0.1:0' });
    const port = relay.milter!.address.kind === 'inet' ? relay.milter!.address.port : 0;
    const socket = connect({ host: '127.0.0.1', port });
    const closed = new Promise<void>((resolve) => socket.on('close', () => resolve()));
    socket.on('error', () => undefined);
    // version 6, every action, every step offered: the relay answers with its own choice
    const offer = Buffer.alloc(12);
    offer.writeUInt32BE(6, 0);
    offer.writeUInt32BE(0x1ff, 4);
    offer.writeUInt32BE(0x1fffff, 8);
    socket.write(encodePacket('O', offer));
    const reply = await new Promise<Buffer>((resolve) => socket.once('data', resolve));
    expect(String.fromCharCode(reply[4]!)).toBe('O');
    expect(relay.milter!.connections).toBe(1);
    const t0 = Date.now();
    await relay.close();
    await closed;
    // SMIME_RELAY_SHUTDOWN_TIMEOUT_MS (30 s) is for messages being signed, not for idle connections.
    expect(Date.now() - t0).toBeLessThan(10_000);
  });

  it.skipIf(process.getuid?.() !== 0)('a unix socket takes the group of a setgid directory, so the directory decides who may connect', async () => {
    const d = await mkdtemp(join(tmpdir(), 'smr-sgid-'));
    try {
      chownSync(d, 0, 65534);
      // setgid bit: new files here belong to the directory's group
      chmodSync(d, 0o2750);
      const relay = await startTestRelay({ ...base(), SMIME_RELAY_LISTEN: 'off', SMIME_RELAY_MILTER: `unix:${join(d, 'm.sock')}` });
      try {
        expect(statSync(join(d, 'm.sock')).gid).toBe(65534);
      } finally {
        await relay.close();
      }
    } finally {
      await rm(d, { recursive: true, force: true });
    }
  });
});
