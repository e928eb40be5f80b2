import type { AddressInfo } from 'node:net';
import { SMTPServer } from 'smtp-server';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RawClient } from './support/client.js';
import { createTestPki, type Leaf, type TestPki } from './support/pki.js';
import { linesFor, startTestRelay } from './support/relay.js';

/*
 * No upstream password in clear (issue 10, item 6), as Postfix's smtp_sasl_security_options =
 * noplaintext: with credentials in an smtp:// upstream the relay authenticates only after
 * STARTTLS. The upstream here is a real SMTP server that offers AUTH PLAIN LOGIN but no
 * STARTTLS, and records every byte the relay sends it.
 */

const SENDER = 'alerts@example.test';
const USER = 'relay-user';
const PASS = 'Upstream-S3cret!';

let pki: TestPki;
let leaf: Leaf;
let upstream: SMTPServer;
let port: number;
/** Everything the relay wrote to the upstream, on every connection. */
let wire = '';
const logins: string[] = [];
let delivered = 0;

beforeAll(async () => {
  pki = await createTestPki();
  leaf = await pki.issueLeaf('alerts', { emails: [SENDER] });
  upstream = new SMTPServer({
    disabledCommands: ['STARTTLS'],
    allowInsecureAuth: true,
    authMethods: ['PLAIN', 'LOGIN'],
    authOptional: true,
    disableReverseLookup: true,
    logger: false,
    onAuth(auth, _session, cb) {
      logins.push(`${auth.username}:${auth.password}`);
      cb(null, { user: auth.username });
    },
    onData(stream, _session, cb) {
      stream.resume();
      stream.on('end', () => {
        delivered++;
        cb(null, 'Ok: queued as PLAIN1');
      });
    },
  });
  upstream.server.on('connection', (socket) => socket.on('data', (d: Buffer) => (wire += d.toString('latin1'))));
  await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', () => r()));
  port = (upstream.server.address() as AddressInfo).port;
});

afterAll(async () => {
  await new Promise<void>((r) => upstream?.close(() => r()));
  await pki?.cleanup();
});

const base64 = (s: string) => Buffer.from(s).toString('base64');

describe('an smtp:// upstream with a user and password that offers no STARTTLS', () => {
  it('gets no AUTH and never sees the password; the client gets 451 4.7.0, and the log says how to fix it', async () => {
    wire = '';
    const relay = await startTestRelay({
      SMIME_RELAY_CERT: leaf.bundlePath,
      SMIME_RELAY_UPSTREAM: `smtp://${USER}:${encodeURIComponent(PASS)}@127.0.0.1:${port}`,
    });
    try {
      const c = await RawClient.open(relay.address.port);
      await c.hello();
      const final = await c.send(SENDER);
      c.close();
      expect(final.code).toBe(451);
      expect(final.text).toMatch(/^4\.7\.0 Upstream offers no STARTTLS, and the relay does not send its upstream password in clear; .* \(tx [\w-]+\)$/);
      expect(final.text).not.toContain(String(port));

      expect(wire).toMatch(/^EHLO /m);
      expect(wire).toMatch(/^STARTTLS\r$/m);
      expect(wire).not.toMatch(/AUTH/i);
      for (const secret of [PASS, base64(PASS), base64(`\0${USER}\0${PASS}`)]) expect(wire).not.toContain(secret);
      expect(logins).toEqual([]);
      expect(delivered).toBe(0);

      const line = linesFor(relay, final).find((l) => l.msg === 'transaction');
      expect(line).toMatchObject({ msg: 'transaction', outcome: 'upstream_tempfail' });
      expect(String(line!.error)).toContain(`127.0.0.1:${port}`);
      expect(String(line!.error)).toMatch(/enable STARTTLS on the upstream, use smtps:\/\/ .*SMIME_RELAY_UPSTREAM_INSECURE_AUTH=true/);
      expect(JSON.stringify(relay.logs)).not.toContain(PASS);
    } finally {
      await relay.close();
    }
  });

  it('SMIME_RELAY_UPSTREAM_INSECURE_AUTH=true is the explicit opt-out for an MTA on loopback: AUTH, then the message', async () => {
    const relay = await startTestRelay({
      SMIME_RELAY_CERT: leaf.bundlePath,
      SMIME_RELAY_UPSTREAM: `smtp://${USER}:${encodeURIComponent(PASS)}@127.0.0.1:${port}`,
      SMIME_RELAY_UPSTREAM_INSECURE_AUTH: 'true',
    });
    try {
      expect(relay.logs.some((l) => String(l.msg).startsWith('SMIME_RELAY_UPSTREAM_INSECURE_AUTH=true: the upstream password is sent without TLS'))).toBe(true);
      const c = await RawClient.open(relay.address.port);
      await c.hello();
      const final = await c.send(SENDER);
      c.close();
      expect(final.code, final.text).toBe(250);
      expect(logins).toEqual([`${USER}:${PASS}`]);
      expect(delivered).toBe(1);
    } finally {
      await relay.close();
    }
  });

  it('without credentials the same upstream is used as before: no STARTTLS demanded', async () => {
    const relay = await startTestRelay({ SMIME_RELAY_CERT: leaf.bundlePath, SMIME_RELAY_UPSTREAM: `smtp://127.0.0.1:${port}` });
    try {
      const c = await RawClient.open(relay.address.port);
      await c.hello();
      expect((await c.send(SENDER)).code).toBe(250);
      c.close();
    } finally {
      await relay.close();
    }
  });
});
