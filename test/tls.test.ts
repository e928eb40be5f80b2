import { X509Certificate } from 'node:crypto';
import { chmod, copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import nodemailer from 'nodemailer';
import { SMTPServer } from 'smtp-server';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashPassword } from '../src/access/password.js';
import { ConfigError } from '../src/config/load.js';
import { RawClient } from './support/client.js';
import { lanAddressForTests } from './support/lan-address.js';
import { createTestPki, openssl, type Leaf, type TestPki } from './support/pki.js';
import { startTestRelay, type TestRelay } from './support/relay.js';
import { startSink, type Sink } from './support/sink.js';
import { verifyOpenssl } from './support/verify.js';

const SENDER = 'billing@example.test';
const SERVER_NAME = 'relay.test';
const PASSWORD = 'tls-only-Pa55';

// A non-loopback address of this machine: its LAN address, or one added to lo when running as
// root; none is a failure under CI=true.
const lan = lanAddressForTests();
const lanAddress = lan?.address;
afterAll(() => lan?.release());

/** The newest log line matching `pick`. */
const lastLog = (relay: TestRelay, pick: (l: Record<string, unknown>) => boolean) => relay.logs.findLast(pick);

let pki: TestPki;
let leaf: Leaf;
let sink: Sink;
let dir: string;
let ca: Buffer;
let usersPath: string;
const tlsFiles = { cert: '', key: '' };

/** A server certificate (DNS relay.test, IP 127.0.0.1 and the LAN address) from a throwaway CA. */
async function issueServerCert(name: string): Promise<{ cert: string; key: string }> {
  const f = (n: string) => join(dir, `${name}.${n}`);
  const sans = [`DNS:${SERVER_NAME}`, 'IP:127.0.0.1', ...(lanAddress ? [`IP:${lanAddress}`] : [])].join(',');
  await writeFile(f('ext'), `basicConstraints=critical,CA:false\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=${sans}\n`);
  await openssl(['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-noenc', '-keyout', f('key'), '-subj', `/CN=${SERVER_NAME}`, '-out', f('csr')]);
  await openssl(['x509', '-req', '-in', f('csr'), '-CA', join(dir, 'ca.crt'), '-CAkey', join(dir, 'ca.key'), '-set_serial', String(Date.now()), '-days', '2', '-extfile', f('ext'), '-out', f('crt')]);
  await chmod(f('key'), 0o600);
  return { cert: f('crt'), key: f('key') };
}

beforeAll(async () => {
  pki = await createTestPki();
  leaf = await pki.issueLeaf('billing', { emails: [SENDER] });
  sink = await startSink();
  dir = await mkdtemp(join(tmpdir(), 'smr-tls-'));
  await openssl([
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-noenc', '-keyout', join(dir, 'ca.key'), '-out', join(dir, 'ca.crt'),
    '-subj', '/CN=smime-relay test TLS CA', '-days', '2', '-addext', 'basicConstraints=critical,CA:true', '-addext', 'keyUsage=critical,keyCertSign',
  ]);
  ca = await readFile(join(dir, 'ca.crt'));
  Object.assign(tlsFiles, await issueServerCert('server'));
  usersPath = join(dir, 'users');
  await writeFile(usersPath, `billing:${await hashPassword(PASSWORD)}:${SENDER}\n`, { mode: 0o600 });
});

afterAll(async () => {
  await sink?.close();
  await pki?.cleanup();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const env = (extra: Record<string, string>) => ({
  SMIME_RELAY_CERT: leaf.bundlePath,
  SMIME_RELAY_UPSTREAM: sink.url,
  SMIME_RELAY_TLS_CERT: tlsFiles.cert,
  SMIME_RELAY_TLS_KEY: tlsFiles.key,
  ...extra,
});

async function startFails(e: Record<string, string>): Promise<string> {
  try {
    const relay = await startTestRelay(e);
    await relay.close();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as Error).message;
  }
  throw new Error('the relay started');
}

/** Sends one message with nodemailer, as an app would; returns the sink's copy. */
async function sendWithNodemailer(port: number, options: Record<string, unknown>, host = '127.0.0.1') {
  const transport = nodemailer.createTransport({ host, port, tls: { ca, servername: SERVER_NAME }, ...options });
  try {
    const before = sink.received.length;
    const info = await transport.sendMail({ envelope: { from: SENDER, to: ['someone@example.org'] }, raw: `From: ${SENDER}\r\nSubject: tls\r\n\r\nhello\r\n` });
    expect(info.response).toMatch(/^250 2\.0\.0 Ok/);
    return (await sink.waitFor(before + 1))[before]!;
  } finally {
    transport.close();
  }
}

describe('listener TLS settings are checked at start', () => {
  it('a mode without a certificate, a certificate without a key, and a key of another certificate are refused', async () => {
    expect(await startFails({ SMIME_RELAY_CERT: leaf.bundlePath, SMIME_RELAY_TLS_MODE: 'required' })).toContain(
      'SMIME_RELAY_TLS_MODE=required needs a server certificate: set SMIME_RELAY_TLS_CERT and SMIME_RELAY_TLS_KEY',
    );
    expect(await startFails({ SMIME_RELAY_CERT: leaf.bundlePath, SMIME_RELAY_TLS_CERT: tlsFiles.cert })).toContain('SMIME_RELAY_TLS_KEY is not set');
    const other = await issueServerCert('other');
    const why = await startFails(env({ SMIME_RELAY_TLS_KEY: other.key }));
    expect(why).toContain('cannot be used together');
    expect(why).not.toContain('PRIVATE KEY');
    expect(await startFails(env({ SMIME_RELAY_TLS_MODE: 'sometimes' }))).toContain('SMIME_RELAY_TLS_MODE');
  });

  it('warns about a key file that others can read', async () => {
    const loose = join(dir, 'loose.key');
    await copyFile(tlsFiles.key, loose);
    await chmod(loose, 0o644);
    const relay = await startTestRelay(env({ SMIME_RELAY_TLS_KEY: loose }));
    await relay.close();
    expect(relay.logs.some((l) => l.level === 40 && String(l.msg).includes('is readable by group or others (mode 644); chmod 600 it'))).toBe(true);
  });

  it('without a certificate STARTTLS is not offered (smtp-server would use its built-in, publicly known key)', async () => {
    const relay = await startTestRelay({ SMIME_RELAY_CERT: leaf.bundlePath, SMIME_RELAY_UPSTREAM: sink.url });
    try {
      const c = await RawClient.open(relay.address.port);
      const ehlo = await c.hello();
      expect(ehlo.text).not.toContain('STARTTLS');
      expect(ehlo.text).not.toContain('AUTH');
      c.close();
    } finally {
      await relay.close();
    }
  });
});

describe('TLS_MODE=starttls (the default with a certificate)', () => {
  let relay: TestRelay;
  beforeAll(async () => {
    relay = await startTestRelay(env({ SMIME_RELAY_USERS: usersPath }));
  });
  afterAll(() => relay?.close());

  it('offers STARTTLS; a client that requires TLS and verifies the certificate authenticates and sends', async () => {
    const received = await sendWithNodemailer(relay.address.port, { requireTLS: true, auth: { user: 'billing', pass: PASSWORD } });
    expect((await verifyOpenssl(received.raw, pki.rootCertPath)).ok).toBe(true);
    expect(lastLog(relay, (l) => l.msg === 'authenticated')).toMatchObject({ user: 'billing', tls: true });
  });

  it('a loopback client may still authenticate without TLS (the loopback exception)', async () => {
    const c = await RawClient.open(relay.address.port);
    const ehlo = await c.hello();
    expect(ehlo.text).toContain('STARTTLS');
    expect(ehlo.text).toContain('AUTH PLAIN LOGIN');
    expect((await c.authPlain('billing', PASSWORD)).code).toBe(235);
    expect((await c.send(SENDER)).code).toBe(250);
    c.close();
  });
});

describe.skipIf(!lanAddress)(`AUTH from a non-loopback client (the LAN address ${lanAddress})`, () => {
  let relay: TestRelay;
  beforeAll(async () => {
    relay = await startTestRelay(env({ SMIME_RELAY_LISTEN: `${lanAddress}:0`, SMIME_RELAY_USERS: usersPath }));
  });
  afterAll(() => relay?.close());

  it('is not offered before STARTTLS, and AUTH sent anyway is not accepted', async () => {
    const c = await RawClient.open(relay.address.port, lanAddress);
    const ehlo = await c.hello();
    expect(ehlo.text).toContain('STARTTLS');
    expect(ehlo.text).not.toContain('AUTH');
    const auth = await c.authPlain('billing', PASSWORD);
    expect(auth.code).toBe(500);
    expect((await c.command(`MAIL FROM:<${SENDER}>`)).code).toBe(530);
    c.close();
    expect(relay.logs.some((l) => l.msg === 'authenticated')).toBe(false);
  });

  it('cannot claim to be loopback with XFORWARD: it is not offered off loopback (550 5.7.0), and AUTH stays hidden', async () => {
    const c = await RawClient.open(relay.address.port, lanAddress);
    expect((await c.hello()).text).not.toContain('XFORWARD');
    expect((await c.command('XFORWARD ADDR=127.0.0.1')).code).toBe(550);
    expect((await c.command('EHLO client.test')).text).not.toContain('AUTH');
    expect((await c.authPlain('billing', PASSWORD)).code).toBe(500);
    c.close();
  });

  it('is offered after STARTTLS and works', async () => {
    const plain = await RawClient.open(relay.address.port, lanAddress);
    await plain.hello();
    const c = await plain.starttls(ca, SERVER_NAME);
    const ehlo = await c.command('EHLO client.test');
    expect(ehlo.text).toContain('AUTH PLAIN LOGIN');
    expect(ehlo.text).not.toContain('STARTTLS');
    expect((await c.authPlain('billing', PASSWORD)).code).toBe(235);
    expect((await c.send(SENDER)).code).toBe(250);
    c.close();
    expect(lastLog(relay, (l) => l.msg === 'authenticated')).toMatchObject({ user: 'billing', client: lanAddress, tls: true });
  });

  it('nodemailer with requireTLS and the CA sends through it', async () => {
    await sendWithNodemailer(relay.address.port, { requireTLS: true, auth: { user: 'billing', pass: PASSWORD } }, lanAddress);
  });
});

describe.skipIf(!lanAddress)(`behind a PROXY balancer on a non-loopback address (${lanAddress})`, () => {
  let relay: TestRelay;
  beforeAll(async () => {
    relay = await startTestRelay(env({ SMIME_RELAY_LISTEN: `${lanAddress}:0`, SMIME_RELAY_USERS: usersPath, SMIME_RELAY_PROXY_PROTOCOL: `${lanAddress}/32` }));
  });
  afterAll(() => relay?.close());

  it('a client the header names as 127.0.0.1 gets no AUTH in clear: the balancer hop is not loopback', async () => {
    const c = await RawClient.open(relay.address.port, lanAddress);
    c.write(`PROXY TCP4 127.0.0.1 ${lanAddress} 5555 ${relay.address.port}\r\n`);
    const ehlo = await c.hello();
    expect(ehlo.text).toContain('STARTTLS');
    expect(ehlo.text).not.toContain('AUTH');
    expect((await c.authPlain('billing', PASSWORD)).code).toBe(500);
    c.close();
  });
});

describe('TLS_MODE=required', () => {
  let relay: TestRelay;
  beforeAll(async () => {
    relay = await startTestRelay(env({ SMIME_RELAY_TLS_MODE: 'required', SMIME_RELAY_USERS: usersPath }));
  });
  afterAll(() => relay?.close());

  it('refuses MAIL before STARTTLS with 530 5.7.0, and offers no AUTH before it, loopback included', async () => {
    const c = await RawClient.open(relay.address.port);
    const ehlo = await c.hello();
    expect(ehlo.text).toContain('STARTTLS');
    expect(ehlo.text).not.toContain('AUTH');
    const mail = await c.command(`MAIL FROM:<${SENDER}>`);
    expect(mail.code).toBe(530);
    expect(mail.text).toMatch(/^5\.7\.0 Must issue a STARTTLS command first \(tx [\w-]+\)$/);
    expect((await c.authPlain('billing', PASSWORD)).code).toBe(500);

    const secure = await c.starttls(ca, SERVER_NAME);
    expect((await secure.command('EHLO client.test')).text).toContain('AUTH PLAIN LOGIN');
    expect((await secure.authPlain('billing', PASSWORD)).code).toBe(235);
    expect((await secure.send(SENDER)).code).toBe(250);
    secure.close();
  });

  it('nodemailer with requireTLS and a test CA sends', async () => {
    const received = await sendWithNodemailer(relay.address.port, { requireTLS: true, auth: { user: 'billing', pass: PASSWORD } });
    expect((await verifyOpenssl(received.raw, pki.rootCertPath)).ok).toBe(true);
  });

  it('without users, too: MAIL needs STARTTLS first', async () => {
    const open = await startTestRelay(env({ SMIME_RELAY_TLS_MODE: 'required' }));
    try {
      const c = await RawClient.open(open.address.port);
      await c.hello();
      expect((await c.command(`MAIL FROM:<${SENDER}>`)).code).toBe(530);
      const secure = await c.starttls(ca, SERVER_NAME);
      await secure.command('EHLO client.test');
      expect((await secure.send(SENDER)).code).toBe(250);
      secure.close();
    } finally {
      await open.close();
    }
  });
});

describe('TLS_MODE=implicit', () => {
  let relay: TestRelay;
  beforeAll(async () => {
    relay = await startTestRelay(env({ SMIME_RELAY_TLS_MODE: 'implicit' }));
  });
  afterAll(() => relay?.close());

  it('speaks TLS from the first byte: nodemailer with secure: true sends', async () => {
    const received = await sendWithNodemailer(relay.address.port, { secure: true });
    expect((await verifyOpenssl(received.raw, pki.rootCertPath)).ok).toBe(true);
  });

  it('reload() puts a renewed certificate in service for new connections', async () => {
    const fingerprint = () =>
      new Promise<string>((resolve, reject) => {
        const s = tlsConnect({ port: relay.address.port, host: '127.0.0.1', ca, servername: SERVER_NAME }, () => {
          resolve(new X509Certificate(s.getPeerCertificate(true).raw).fingerprint256);
          s.destroy();
        });
        s.once('error', reject);
      });
    const before = await fingerprint();
    const renewed = await issueServerCert('renewed');
    const original = { cert: await readFile(tlsFiles.cert), key: await readFile(tlsFiles.key) };
    try {
      await copyFile(renewed.cert, tlsFiles.cert);
      await copyFile(renewed.key, tlsFiles.key);
      relay.reload();
      const after = await fingerprint();
      expect(after).not.toBe(before);
      expect(after).toBe(new X509Certificate(await readFile(renewed.cert)).fingerprint256);
    } finally {
      await writeFile(tlsFiles.cert, original.cert);
      await writeFile(tlsFiles.key, original.key, { mode: 0o600 });
    }
  });
});

describe('TLS to the upstream', () => {
  let upstream: SMTPServer;
  let port: number;
  let delivered = 0;

  beforeAll(async () => {
    // An upstream that offers STARTTLS with a certificate from a CA the relay does not trust.
    upstream = new SMTPServer({
      key: await readFile(tlsFiles.key),
      cert: await readFile(tlsFiles.cert),
      authOptional: true,
      disabledCommands: ['AUTH'],
      logger: false,
      disableReverseLookup: true,
      onData(stream, _s, cb) {
        stream.resume();
        stream.on('end', () => {
          delivered++;
          cb(null, 'Ok: queued as TLSUP');
        });
      },
    });
    await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', () => r()));
    port = (upstream.server.address() as AddressInfo).port;
  });
  afterAll(() => new Promise<void>((r) => upstream.close(() => r())));

  it('verifies the certificate by default: an untrusted upstream gets nothing and the client 451', async () => {
    const relay = await startTestRelay({ SMIME_RELAY_CERT: leaf.bundlePath, SMIME_RELAY_UPSTREAM: `smtp://127.0.0.1:${port}`, SMIME_RELAY_UPSTREAM_TIMEOUT_MS: '10000' });
    try {
      const c = await RawClient.open(relay.address.port);
      await c.hello();
      const final = await c.send(SENDER);
      expect(final.code).toBe(451);
      expect(final.text).toMatch(/^4\.4\.1 /);
      c.close();
      expect(delivered).toBe(0);
      expect(relay.logs.some((l) => String(l.msg).includes('verification is DISABLED'))).toBe(false);
    } finally {
      await relay.close();
    }
  });

  it('SMIME_RELAY_UPSTREAM_TLS_VERIFY=false is an explicit choice, logged as a warning at start', async () => {
    const relay = await startTestRelay({
      SMIME_RELAY_CERT: leaf.bundlePath,
      SMIME_RELAY_UPSTREAM: `smtp://127.0.0.1:${port}`,
      SMIME_RELAY_UPSTREAM_TLS_VERIFY: 'false',
    });
    try {
      expect(relay.logs.some((l) => l.level === 40 && l.msg === 'upstream TLS certificate verification is DISABLED by configuration')).toBe(true);
      const c = await RawClient.open(relay.address.port);
      await c.hello();
      expect((await c.send(SENDER)).code).toBe(250);
      c.close();
      expect(delivered).toBe(1);
    } finally {
      await relay.close();
    }
  });
});
