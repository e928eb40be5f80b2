import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, readdirSync, readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { createTransport } from 'nodemailer';
import { SMTPServer } from 'smtp-server';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { requireDovecot, startDovecot, type DovecotInstance } from './support/dovecot.js';
import { createTestPki, makeTempDir, run, type Leaf, type TestPki } from './support/pki.js';
import { freePorts, requirePostfix, startPostfix, until, type PostfixInstance } from './support/postfix.js';
import { CLI, sample, serveRelay, type ServedRelay } from './support/served.js';

/*
 * The canary end to end, with real parts: the relay signs a canary and sends it through a private
 * Postfix, which delivers it with local(8) into a Maildir that a private Dovecot serves over IMAP;
 * the relay reads it back with imapflow, diagnoses it and deletes it. Once straight through
 * (intact), once with a hop between the relay and Postfix that decodes quoted-printable to 8bit,
 * as some filters and Exchange do (altered, with the change named).
 */

const CANARY_FROM = 'canary@example.test';
const MAILBOX = 'testuser';
const DOMAIN = 'mailpath.test';
const CANARY_TO = `${MAILBOX}@${DOMAIN}`;

const enabled = requirePostfix() && requireDovecot();

let pki: TestPki;
let leaf: Leaf;
let maildirTemp: { dir: string; remove: () => Promise<void> };
let maildir: string;
let postfix: PostfixInstance;
let postfixPort: number;
let dovecot: DovecotInstance;
let hop: { port: number; close: () => Promise<void> };
const relays: ServedRelay[] = [];

/**
 * A hop written here: receives over SMTP, decodes every quoted-printable body to 8bit (labelled
 * so), and passes the message on to Postfix. The content stays the same for a reader; the bytes
 * under the signature do not.
 */
async function startDecodingHop(nextPort: number): Promise<{ port: number; close: () => Promise<void> }> {
  const next = createTransport({ host: '127.0.0.1', port: nextPort, secure: false, ignoreTLS: true });
  const server = new SMTPServer({
    authOptional: true,
    disabledCommands: ['AUTH', 'STARTTLS'],
    disableReverseLookup: true,
    logger: false,
    onData(stream, session, cb) {
      const chunks: Buffer[] = [];
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('end', () => {
        const decoded = Buffer.concat(chunks)
          .toString('latin1')
          .replace(/Content-Transfer-Encoding: quoted-printable\r\n((?:[^\r\n]+\r\n)*)\r\n([\s\S]*?)(?=\r\n--)/gi, (_m, rest: string, body: string) =>
            `Content-Transfer-Encoding: 8bit\r\n${rest}\r\n${body.replace(/=\r\n/g, '').replace(/=([0-9A-F]{2})/g, (_e, h: string) => String.fromCharCode(parseInt(h, 16)))}`,
          );
        next
          .sendMail({ envelope: { from: session.envelope.mailFrom ? session.envelope.mailFrom.address : '', to: session.envelope.rcptTo.map((r) => r.address) }, raw: Buffer.from(decoded, 'latin1') })
          .then(() => cb(), (e: Error) => cb(Object.assign(new Error(`4.4.0 next hop: ${e.message}`), { responseCode: 451 })));
      });
    },
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.server.address() as AddressInfo).port,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

beforeAll(async () => {
  if (!enabled) return;
  pki = await createTestPki();
  leaf = await pki.issueLeaf('canary', { emails: [CANARY_FROM] });
  // local(8) delivers as nobody: the Maildir is nobody's, and its parent traversable.
  maildirTemp = await makeTempDir('smime-relay-maildir-');
  chmodSync(maildirTemp.dir, 0o755);
  maildir = join(maildirTemp.dir, 'Maildir');
  const made = await run('install', ['-d', '-o', 'nobody', '-g', 'nogroup', '-m', '700', maildir]);
  expect(made.code, made.stderr).toBe(0);
  [postfixPort] = (await freePorts(1)) as [number];
  postfix = await startPostfix({
    maildir: { user: MAILBOX, domain: DOMAIN, dir: maildir },
    masterCf: `127.0.0.1:${postfixPort} inet n - n - - smtpd`,
  });
  dovecot = await startDovecot({ maildir });
  hop = await startDecodingHop(postfixPort);
}, 120_000);

afterAll(async () => {
  for (const r of relays) await r.stop();
  await hop?.close();
  await dovecot?.stop();
  await postfix?.stop();
  await maildirTemp?.remove();
  await pki?.cleanup();
}, 60_000);

function relayEnv(upstreamPort: number, imap: 'imaps' | 'imap'): Record<string, string> {
  const port = imap === 'imaps' ? dovecot.imapsPort : dovecot.imapPort;
  return {
    SMIME_RELAY_CERT: leaf.bundlePath,
    SMIME_RELAY_UPSTREAM: `smtp://127.0.0.1:${upstreamPort}`,
    SMIME_RELAY_CANARY_TO: CANARY_TO,
    SMIME_RELAY_CANARY_IMAP: `${imap}://${dovecot.user}:${dovecot.password}@127.0.0.1:${port}/INBOX`,
    SMIME_RELAY_CANARY_INTERVAL: '2m',
    // How an admin trusts a private CA for IMAP: Node's standard variable.
    NODE_EXTRA_CA_CERTS: dovecot.certPath,
  };
}

function canaryOnce(env: Record<string, string>): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, 'canary', '--once'], { env: { PATH: process.env.PATH!, LOG_LEVEL: 'warn', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    const killer = setTimeout(() => child.kill('SIGKILL'), 90_000);
    child.on('close', (code) => {
      clearTimeout(killer);
      resolve({ code, out, err });
    });
  });
}

const delivered = () => ['new', 'cur'].flatMap((d) => {
  try {
    return readdirSync(join(maildir, d));
  } catch {
    return [];
  }
});

describe.runIf(enabled)('canary through a private Postfix into a Maildir served by a private Dovecot', () => {
  it('smime-relay canary --once, straight to Postfix, read over IMAP with STARTTLS: intact, exit 0, and deleted', async () => {
    const r = await canaryOnce(relayEnv(postfixPort, 'imap'));
    expect(r.code, `${r.out}\n${r.err}\n${postfix.log()}\n${dovecot.log()}`).toBe(0);
    expect(r.out).toMatch(/^canary intact \(<smime-relay-canary\.[\w-]+@example\.test>\)\nintact: the signature verifies\n/);
    expect(r.out).toMatch(/mailbox: +canary@example\.test/);
    // Postfix really delivered it (local(8) into the Maildir), and the canary deleted it.
    expect(postfix.log()).toMatch(/status=sent \(delivered to maildir\)/);
    expect(delivered()).toEqual([]);
  }, 120_000);

  it('serve: the canary runs at start, comes back intact, and the metrics say so', async () => {
    const relay = await serveRelay({ ...relayEnv(postfixPort, 'imaps'), SMIME_RELAY_METRICS: '127.0.0.1:0' });
    relays.push(relay);
    const line = await relay.logged(/^canary /, 90_000);
    expect(line, JSON.stringify(relay.logs.slice(-5))).toMatchObject({ level: 30, canary: 'intact', to: CANARY_TO });
    const metrics = await relay.metrics();
    expect(sample(metrics, 'smime_relay_canary_result', { result: 'intact' })).toBe(1);
    expect(sample(metrics, 'smime_relay_canary_result', { result: 'altered' })).toBe(0);
    expect(sample(metrics, 'smime_relay_canary_result', { result: 'missing' })).toBe(0);
    const last = sample(metrics, 'smime_relay_canary_last_success_timestamp_seconds')!;
    expect(Math.abs(last - Date.now() / 1000)).toBeLessThan(120);
    await relay.stop();
  }, 120_000);

  it('with the re-encoding hop in front of Postfix: altered, the change named, an error log line, and /readyz unchanged', async () => {
    const relay = await serveRelay({ ...relayEnv(hop.port, 'imaps'), SMIME_RELAY_METRICS: '127.0.0.1:0' });
    relays.push(relay);
    const line = await relay.logged(/^canary /, 90_000);
    expect(line, JSON.stringify(relay.logs.slice(-5))).toMatchObject({ level: 50, canary: 'altered' });
    expect(String(line.change)).toMatch(/^quoted-printable decoded to 8bit in part 1\.1 \(text\/plain\)/);
    expect(String(line.msg)).toMatch(/^canary altered: broken: the signed part was changed in transit/);
    const metrics = await relay.metrics();
    expect(sample(metrics, 'smime_relay_canary_result', { result: 'altered' })).toBe(1);
    expect(sample(metrics, 'smime_relay_canary_result', { result: 'intact' })).toBe(0);
    // never came back intact: 0, so the alert on its age fires
    expect(sample(metrics, 'smime_relay_canary_last_success_timestamp_seconds')).toBe(0);
    // an alert, not unreadiness
    const ready = await fetch(`http://127.0.0.1:${relay.metricsPort}/readyz`);
    expect(ready.status).toBe(200);
    expect(delivered()).toEqual([]);
    await relay.stop();
  }, 120_000);

  it('smime-relay canary --once through the hop: exit 1, and it says which part changed and how', async () => {
    const r = await canaryOnce(relayEnv(hop.port, 'imaps'));
    expect(r.code, `${r.out}\n${r.err}`).toBe(1);
    expect(r.out).toMatch(/^canary altered /);
    expect(r.out).toMatch(/change: +quoted-printable decoded to 8bit in part 1\.1 \(text\/plain\)/);
  }, 120_000);

  it('every Postfix and Dovecot process is gone afterwards', async () => {
    const postfixPids = postfix.processes();
    const dovecotPids = dovecot.processes();
    expect(postfixPids.length).toBeGreaterThan(0);
    expect(dovecotPids.length).toBeGreaterThan(0);
    await dovecot.stop();
    await postfix.stop();
    expect(postfix.processes()).toEqual([]);
    expect(dovecot.processes()).toEqual([]);
    // Not even an exiting one: every PID is gone or a zombie waiting to be reaped, within 10 s.
    const running = () => [...postfixPids, ...dovecotPids].filter((pid) => {
      try {
        const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
        return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
      } catch {
        return false;
      }
    });
    await until('every Postfix and Dovecot process to exit', () => (running().length ? undefined : true), 10_000, 100).catch(() => undefined);
    expect(running()).toEqual([]);
  }, 60_000);
});

describe('canary settings are checked at start', () => {
  const serveEnv = (env: Record<string, string>) =>
    spawnSync(process.execPath, [CLI, 'serve'], { env: { PATH: process.env.PATH!, SMIME_RELAY_LISTEN: '127.0.0.1:0', ...env }, encoding: 'utf8', timeout: 30_000 });

  it('canary --help explains the command; without --once it is a usage error', () => {
    const help = spawnSync(process.execPath, [CLI, 'canary', '--help'], { encoding: 'utf8' });
    expect(help.status).toBe(0);
    expect(help.stdout).toMatch(/^Usage: smime-relay canary --once/);
    expect(spawnSync(process.execPath, [CLI, 'canary'], { encoding: 'utf8' }).status).toBe(2);
  });

  it('one of SMIME_RELAY_CANARY_TO and SMIME_RELAY_CANARY_IMAP without the other stops the relay', () => {
    const r = serveEnv({ SMIME_RELAY_CANARY_TO: CANARY_TO });
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/SMIME_RELAY_CANARY_IMAP is not set: the canary needs both/);
  });

  it('an IMAP URL without STARTTLS or TLS, or without credentials, is refused', () => {
    expect(serveEnv({ SMIME_RELAY_CANARY_IMAP: 'pop3://u:p@host/INBOX' }).stderr).toMatch(/scheme must be imaps: or imap:/);
    expect(serveEnv({ SMIME_RELAY_CANARY_IMAP: 'imaps://host/INBOX' }).stderr).toMatch(/needs user:pass@/);
  });

  it('SMIME_RELAY_CANARY_INTERVAL takes durations; the IMAP password is masked', () => {
    const r = spawnSync(process.execPath, [CLI, 'config', '--print'], {
      env: { PATH: process.env.PATH!, SMIME_RELAY_CANARY_INTERVAL: '1h30m', SMIME_RELAY_CANARY_IMAP: 'imaps://u:hunter2@imap.example.org/INBOX' },
      encoding: 'utf8',
    });
    expect(r.stdout).toContain('SMIME_RELAY_CANARY_INTERVAL=5400000');
    expect(r.stdout).toContain('SMIME_RELAY_CANARY_IMAP=imaps://u:****@imap.example.org/INBOX');
    expect(r.stdout).not.toContain('hunter2');
    expect(serveEnv({ SMIME_RELAY_CANARY_INTERVAL: 'hourly' }).stderr).toMatch(/expected a duration such as 90s, 30m or 1h/);
  });

  it('the canary must be sent as a covered mailbox', async () => {
    const p = await createTestPki();
    try {
      const l = await p.issueLeaf('x', { emails: ['x@example.test'] });
      const r = serveEnv({ SMIME_RELAY_CERT: l.bundlePath, SMIME_RELAY_UPSTREAM: 'smtp://127.0.0.1:9', SMIME_RELAY_CANARY_TO: CANARY_TO, SMIME_RELAY_CANARY_IMAP: 'imaps://u:p@127.0.0.1/INBOX', SMIME_RELAY_CANARY_FROM: 'other@example.test' });
      expect(r.status).toBe(2);
      expect(r.stderr).toMatch(/SMIME_RELAY_CANARY_FROM other@example\.test is not a mailbox this relay signs for; it signs for: x@example\.test/);
    } finally {
      await p.cleanup();
    }
  });
});
