import { generateKeyPairSync } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dkimVerify } from 'mailauth/lib/dkim/verify.js';
import DKIM from 'nodemailer/lib/dkim';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError } from '../src/config/load.js';
import { sendMessage } from './support/client.js';
import { createTestPki, type Leaf, type TestPki } from './support/pki.js';
import { startTestRelay, type TestRelay } from './support/relay.js';
import { startSink, type Sink } from './support/sink.js';
import { assertAllVerify } from './support/verify.js';

/*
 * DKIM and S/MIME together. S/MIME signing rewrites the body, so DKIM must be applied by the
 * relay after it (SMIME_RELAY_DKIM_*), and a DKIM signature that arrives with the message is
 * broken by it (logged, kept or stripped). Signatures are checked with mailauth, a real DKIM
 * verifier, whose DNS lookups are answered from the test's own key.
 */

const SENDER = 'notifications@example.test';
const DOMAIN = 'example.test';
const SELECTOR = 'smime2026';

let pki: TestPki;
let leaf: Leaf;
let dir: string;
let dkimKeyPath: string;
let dkimTxt: string;
/** The app's own DKIM key, for signatures that exist before the relay sees the message. */
let appKeyPem: string;
let appTxt: string;

function rsaKey() {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return {
    pem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    txt: `v=DKIM1; k=rsa; p=${publicKey.export({ type: 'spki', format: 'der' }).toString('base64')}`,
  };
}

beforeAll(async () => {
  pki = await createTestPki();
  leaf = await pki.issueLeaf('dkim', { emails: [SENDER] });
  dir = await mkdtemp(join(tmpdir(), 'dkim-test-'));
  const relayKey = rsaKey();
  dkimKeyPath = join(dir, 'dkim.key');
  await writeFile(dkimKeyPath, relayKey.pem, { mode: 0o600 });
  dkimTxt = relayKey.txt;
  const appKey = rsaKey();
  appKeyPem = appKey.pem;
  appTxt = appKey.txt;
});

afterAll(async () => {
  await pki?.cleanup();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** DNS as the verifier sees it: the relay's key under example.test, the app's under app.example. */
async function resolver(name: string, rrtype: string): Promise<string[][]> {
  if (rrtype === 'TXT' && name === `${SELECTOR}._domainkey.${DOMAIN}`) return [[dkimTxt]];
  if (rrtype === 'TXT' && name === `app._domainkey.app.example`) return [[appTxt]];
  throw Object.assign(new Error(`no ${rrtype} record for ${name}`), { code: 'ENOTFOUND' });
}

async function dkimResults(message: Buffer) {
  const { results } = await dkimVerify(message, { resolver });
  return results.map((r) => ({ domain: r.signingDomain, selector: r.selector, result: r.status.result }));
}

const dkimEnv = { SMIME_RELAY_DKIM_DOMAIN: DOMAIN, SMIME_RELAY_DKIM_SELECTOR: SELECTOR };

const message = (extraHeaders = '') =>
  Buffer.from(
    `${extraHeaders}From: Notifications <${SENDER}>\r\nTo: someone@example.org\r\nSubject: Your code\r\n` +
      `Date: Mon, 02 Mar 2026 10:00:00 +0000\r\nMessage-ID: <dkim-${Math.random().toString(36).slice(2)}@example.test>\r\n` +
      `MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nIhr Code: 123456 — grüße   \r\n`,
  );

/** The message as the app would send it when it DKIM-signs itself (d=app.example). */
async function signedByApp(raw: Buffer): Promise<Buffer> {
  const stream = new DKIM({ domainName: 'app.example', keySelector: 'app', privateKey: appKeyPem }).sign(raw);
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

async function through(relay: TestRelay, sink: Sink, raw: Buffer): Promise<Buffer> {
  const before = sink.received.length;
  const r = await sendMessage(relay.address.port, SENDER, ['someone@example.org'], raw);
  expect(r.final?.code, r.final?.text).toBe(250);
  return sink.received[before]!.raw;
}

describe('DKIM after S/MIME (SMIME_RELAY_DKIM_DOMAIN, _SELECTOR, _KEY)', () => {
  let sink: Sink;
  let relay: TestRelay;

  beforeAll(async () => {
    sink = await startSink();
    relay = await startTestRelay({ SMIME_RELAY_CERT: leaf.bundlePath, SMIME_RELAY_UPSTREAM: sink.url, ...dkimEnv, SMIME_RELAY_DKIM_KEY: dkimKeyPath });
  });
  afterAll(async () => {
    await relay?.close();
    await sink?.close();
  });

  it('an smtp upstream gets a message whose DKIM signature passes and whose S/MIME signature verifies in all three', async () => {
    const out = await through(relay, sink, message());
    expect(out.toString('latin1')).toMatch(/^DKIM-Signature: v=1; a=rsa-sha256; c=relaxed\/relaxed; d=example\.test;/);
    expect(await dkimResults(out)).toEqual([{ domain: DOMAIN, selector: SELECTOR, result: 'pass' }]);
    await assertAllVerify(out, pki.rootCertPath);
  });

  it('the DKIM signature covers the S/MIME body: changing one byte of it makes DKIM fail', async () => {
    const out = await through(relay, sink, message());
    const text = out.toString('latin1');
    const at = text.indexOf('Ihr Code');
    expect(at).toBeGreaterThan(0);
    const tampered = Buffer.from(text.slice(0, at) + 'ihr Code' + text.slice(at + 8), 'latin1');
    expect(['fail', 'neutral']).toContain((await dkimResults(tampered))[0]!.result);
  });

  it('a file: upstream writes messages that are DKIM-signed the same way', async () => {
    const outbox = join(dir, 'outbox');
    const fileRelay = await startTestRelay({ SMIME_RELAY_CERT: leaf.bundlePath, SMIME_RELAY_UPSTREAM: `file:${outbox}`, ...dkimEnv, SMIME_RELAY_DKIM_KEY: dkimKeyPath });
    try {
      const r = await sendMessage(fileRelay.address.port, SENDER, ['someone@example.org'], message());
      expect(r.final?.code, r.final?.text).toBe(250);
      const [name] = (await readdir(outbox)).filter((n) => n.endsWith('.eml'));
      const out = await readFile(join(outbox, name!));
      expect(await dkimResults(out)).toEqual([{ domain: DOMAIN, selector: SELECTOR, result: 'pass' }]);
      await assertAllVerify(out, pki.rootCertPath);
    } finally {
      await fileRelay.close();
    }
  });
});

describe('DKIM settings are all three or none, checked at start-up', () => {
  it.each([
    ['domain only', { SMIME_RELAY_DKIM_DOMAIN: DOMAIN }, /SMIME_RELAY_DKIM_SELECTOR, SMIME_RELAY_DKIM_KEY are not/],
    ['domain and selector, no key', dkimEnv, /SMIME_RELAY_DKIM_KEY is not/],
    ['key only', { SMIME_RELAY_DKIM_KEY: '/nonexistent' }, /SMIME_RELAY_DKIM_DOMAIN, SMIME_RELAY_DKIM_SELECTOR are not/],
  ])('%s: ConfigError naming what is missing', async (_name, env, message) => {
    const err = await startTestRelay({ SMIME_RELAY_CERT: leaf.bundlePath, SMIME_RELAY_UPSTREAM: `file:${join(dir, 'never')}`, ...env }).then(
      async (r) => {
        await r.close();
        return undefined;
      },
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as Error).message).toMatch(message);
  });

  it('a key file that is not an RSA private key is refused with the reason', async () => {
    const ecPath = join(dir, 'ec.key');
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    await writeFile(ecPath, privateKey.export({ type: 'pkcs8', format: 'pem' }));
    await expect(startTestRelay({ SMIME_RELAY_CERT: leaf.bundlePath, ...dkimEnv, SMIME_RELAY_DKIM_KEY: ecPath })).rejects.toThrow(/is a ec key; DKIM signing here needs an RSA key/);
    const missing = join(dir, 'missing.key');
    await expect(startTestRelay({ SMIME_RELAY_CERT: leaf.bundlePath, ...dkimEnv, SMIME_RELAY_DKIM_KEY: missing })).rejects.toThrow(/SMIME_RELAY_DKIM_KEY: cannot read/);
  });
});

describe('a DKIM-Signature that arrives with the message', () => {
  let sink: Sink;
  beforeAll(async () => {
    sink = await startSink();
  });
  afterAll(async () => {
    await sink?.close();
  });

  const warnings = (relay: TestRelay) => relay.logs.filter((l) => l.level === 40 && typeof l.msg === 'string' && l.msg.startsWith('incoming DKIM-Signature'));

  it('is kept by default, with one warning naming its domain; it no longer verifies, the S/MIME signature does', async () => {
    const relay = await startTestRelay({ SMIME_RELAY_CERT: leaf.bundlePath, SMIME_RELAY_UPSTREAM: sink.url });
    try {
      const input = await signedByApp(message());
      expect(await dkimResults(input)).toEqual([{ domain: 'app.example', selector: 'app', result: 'pass' }]);
      const out = await through(relay, sink, input);

      expect(out.toString('latin1')).toMatch(/^DKIM-Signature: .*d=app\.example;/m);
      // mailauth reports a body hash mismatch as "neutral" (RFC 6376 §6.1.3: the signature is ignored).
      const [stale] = await dkimResults(out);
      expect(stale).toMatchObject({ domain: 'app.example' });
      expect(['fail', 'neutral']).toContain(stale!.result);
      await assertAllVerify(out, pki.rootCertPath);
      const w = warnings(relay);
      expect(w).toHaveLength(1);
      expect(w[0]).toMatchObject({ dkimDomains: ['app.example'], stripped: false });
      expect(w[0]!.msg).toMatch(/d=app\.example.*kept; set SMIME_RELAY_STRIP_DKIM=true/);
    } finally {
      await relay.close();
    }
  });

  it('is removed with SMIME_RELAY_STRIP_DKIM=true (every one of them), still with one warning', async () => {
    const relay = await startTestRelay({ SMIME_RELAY_CERT: leaf.bundlePath, SMIME_RELAY_UPSTREAM: sink.url, SMIME_RELAY_STRIP_DKIM: 'true' });
    try {
      // Two signatures, one folded over several lines, as a message relayed through two signers has.
      const input = await signedByApp(await signedByApp(message('X-Before: kept\r\n')));
      expect((input.toString('latin1').match(/^DKIM-Signature:/gm) ?? []).length).toBe(2);
      const out = await through(relay, sink, input);

      expect(out.toString('latin1')).not.toMatch(/^DKIM-Signature:/im);
      expect(out.toString('latin1')).toMatch(/^X-Before: kept\r\nFrom: Notifications/m);
      await assertAllVerify(out, pki.rootCertPath);
      const w = warnings(relay);
      expect(w).toHaveLength(1);
      expect(w[0]).toMatchObject({ dkimDomains: ['app.example', 'app.example'], stripped: true });
    } finally {
      await relay.close();
    }
  });

  it('with DKIM signing on and stripping on, only the relay\'s own signature remains, and it passes', async () => {
    const relay = await startTestRelay({
      SMIME_RELAY_CERT: leaf.bundlePath, SMIME_RELAY_UPSTREAM: sink.url, SMIME_RELAY_STRIP_DKIM: 'true', ...dkimEnv, SMIME_RELAY_DKIM_KEY: dkimKeyPath,
    });
    try {
      const out = await through(relay, sink, await signedByApp(message()));
      expect(await dkimResults(out)).toEqual([{ domain: DOMAIN, selector: SELECTOR, result: 'pass' }]);
      await assertAllVerify(out, pki.rootCertPath);
    } finally {
      await relay.close();
    }
  });
});
