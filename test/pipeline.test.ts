import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { admitHeader } from '../src/admit/header.js';
import { openCertificateStore, type CertificateStore } from '../src/certs/store.js';
import { incomingDkim } from '../src/dkim/incoming.js';
import { Reservation } from '../src/memory/budget.js';
import type { MessageOutcome } from '../src/metrics/outcome.js';
import type { RelayMetrics } from '../src/metrics/relay-metrics.js';
import { draftSize } from '../src/mime/multipart-signed.js';
import { prepareMessage } from '../src/mime/prepare.js';
import { Pipeline, type PipelineOptions, type Transaction } from '../src/pipeline.js';
import { SigningError, type SigningEngine } from '../src/signing/engine.js';
import { NativeEngine } from '../src/signing/native.js';
import { checkIntegrity } from '../src/verify/integrity.js';
import { KeepingUpstream } from './support/keeping-upstream.js';
import { createTestPki, type Leaf, type TestPki } from './support/pki.js';

/*
 * The pipeline's own bookkeeping, in process with the real parts (certificate store, native
 * engine, admission, preparation, self-verification): what each message holds of
 * SMIME_RELAY_MEMORY_BUDGET at each step, its outcome, its one transaction log line and the
 * other log lines the README names. The SMTP path around it is tested over sockets elsewhere
 * (relay, memory, refusals); here a fault can be put exactly where it is meant to be.
 */

const SENDER = 'alerts@example.test';
const RCPT = 'ops@example.org';

let pki: TestPki;
let leaf: Leaf;
let certs: CertificateStore;
let expired: CertificateStore;
let native: NativeEngine;

beforeAll(async () => {
  pki = await createTestPki({ keyType: 'ec' });
  leaf = await pki.issueLeaf('alerts', { emails: [SENDER], keyType: 'ec' });
  const quiet = pino({ level: 'silent' });
  certs = openCertificateStore({ path: leaf.bundlePath, log: quiet });
  // The same certificate on a clock two years on: loaded, but expired.
  expired = openCertificateStore({ path: leaf.bundlePath, log: quiet, now: () => new Date(Date.now() + 2 * 365 * 86_400_000) });
  native = new NativeEngine();
});

afterAll(async () => {
  certs?.close();
  expired?.close();
  await native?.close();
  await pki?.cleanup();
});

class Recorded implements RelayMetrics {
  readonly outcomes: MessageOutcome[] = [];
  readonly refused: number[] = [];
  outcome(o: MessageOutcome) {
    this.outcomes.push(o);
  }
  stage() {}
  size() {}
  refusedRecipients(n: number) {
    this.refused.push(n);
  }
}

interface LogLine {
  level: number;
  msg: string;
  [field: string]: unknown;
}

function harness(options: Partial<PipelineOptions> = {}, more: { engine?: SigningEngine; upstream?: KeepingUpstream; store?: CertificateStore } = {}) {
  const lines: LogLine[] = [];
  const log = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s) as LogLine) });
  const upstream = more.upstream ?? new KeepingUpstream();
  const metrics = new Recorded();
  const pipeline = new Pipeline({
    certs: more.store ?? certs,
    engine: more.engine ?? native,
    upstream,
    log,
    metrics,
    options: { signing: 'on', headerProtection: 'off', ...options },
  });
  return { pipeline, upstream, metrics, lines, transaction: () => lines.filter((l) => l.msg === 'transaction') };
}

const message = (from = SENDER, extra = '', eol = '\r\n') =>
  Buffer.from([`From: ${from}`, `To: ${RCPT}`, 'Subject: pipeline', ...(extra ? [extra] : []), '', 'Body line one.', 'Body line two.', ''].join(eol), 'latin1');

const tx = (raw: Buffer, more: Partial<Transaction> = {}): Transaction => ({
  id: 'TX1',
  envelope: { from: SENDER, to: [RCPT] },
  raw,
  client: { address: '127.0.0.1' },
  ...more,
});

/** A reservation that records every size it is set to (the real class; its budget never runs out unless `limit` says so). */
function recordingReservation(initial: number, limit = Infinity) {
  let total = initial;
  const sizes: number[] = [];
  const memory = new Reservation(initial, (delta) => {
    if (total + delta > limit) return false;
    total += delta;
    sizes.push(total);
    return true;
  });
  return { memory, sizes };
}

/** What the pipeline must hold while signing `raw` (received copies, the input to prepare, the entity and the draft). */
function expectedHolds(raw: Buffer, opts: { stripDkim?: boolean } = {}) {
  const { message: admitted } = admitHeader(raw, { covered: certs.mailboxes(), smtputf8: false });
  const received = raw.length + (admitted === raw ? 0 : admitted.length);
  const input = opts.stripDkim ? incomingDkim(admitted).withoutSignatures() : admitted;
  const prepared = prepareMessage(input, { headerProtection: 'off' });
  return { admitted, received, whileSigning: received + (input === admitted ? 0 : input.length) + prepared.entity.held + draftSize(prepared) };
}

describe('what a message holds of SMIME_RELAY_MEMORY_BUDGET', () => {
  it('holds the received bytes, the prepared entity and the draft while signing, then only what it still keeps', async () => {
    const raw = message();
    const { admitted, received, whileSigning } = expectedHolds(raw);
    expect(admitted).toBe(raw); // a canonical message is not copied
    const { pipeline, upstream } = harness();
    const { memory, sizes } = recordingReservation(raw.length);
    const reply = await pipeline.process(tx(raw, { memory }));
    expect(reply.code).toBe(250);
    const out = upstream.delivered[0]!.message;
    expect(sizes).toEqual([whileSigning, received + out.length]);
  });

  it('counts the canonical copy admission makes (bare LF line ends) on top of the bytes received', async () => {
    const raw = message(SENDER, '', '\n');
    const { admitted, received, whileSigning } = expectedHolds(raw);
    expect(admitted).not.toBe(raw);
    expect(received).toBe(raw.length + admitted.length);
    const { pipeline, upstream } = harness();
    const { memory, sizes } = recordingReservation(raw.length);
    expect((await pipeline.process(tx(raw, { memory }))).code).toBe(250);
    expect(sizes).toEqual([whileSigning, received + upstream.delivered[0]!.message.length]);
  });

  it('counts the copy without DKIM-Signature fields (SMIME_RELAY_STRIP_DKIM=true) while signing', async () => {
    const raw = message(SENDER, 'DKIM-Signature: v=1; a=rsa-sha256; d=example.test; s=sel; h=from; bh=AAAA; b=BBBB');
    const holds = expectedHolds(raw, { stripDkim: true });
    expect(holds.whileSigning).toBeGreaterThan(expectedHolds(raw).whileSigning);
    const { pipeline, upstream } = harness({ stripDkim: true });
    const { memory, sizes } = recordingReservation(raw.length);
    expect((await pipeline.process(tx(raw, { memory }))).code).toBe(250);
    expect(sizes).toEqual([holds.whileSigning, holds.received + upstream.delivered[0]!.message.length]);
  });

  it('counts the copy preparation decodes to re-encode (an 8-bit quoted-printable part)', async () => {
    const raw = Buffer.concat([message(SENDER, 'Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable'), Buffer.from('caf\xe9 au lait =E9t=E9\r\n', 'latin1')]);
    expect(prepareMessage(raw, { headerProtection: 'off' }).entity.held).toBeGreaterThan(0);
    const { received, whileSigning } = expectedHolds(raw);
    const { pipeline, upstream } = harness();
    const { memory, sizes } = recordingReservation(raw.length);
    expect((await pipeline.process(tx(raw, { memory }))).code).toBe(250);
    expect(sizes).toEqual([whileSigning, received + upstream.delivered[0]!.message.length]);
  });

  it('gives back the estimate of a signed copy when nothing is signed (SMIME_RELAY_SIGNING=off, already signed)', async () => {
    for (const [options, raw] of [
      [{ signing: 'off' }, message()],
      [{}, message(SENDER, 'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256; boundary="b"')],
    ] as const) {
      const { pipeline, upstream } = harness(options);
      const { memory, sizes } = recordingReservation(raw.length * 20);
      expect((await pipeline.process(tx(raw, { memory }))).code).toBe(250);
      expect(upstream.delivered[0]!.message).toBe(raw);
      expect(sizes).toEqual([raw.length]);
    }
  });

  it('answers 452 4.3.1 and forwards nothing when the budget has no room for the signed copy', async () => {
    const raw = message();
    const { pipeline, upstream, metrics } = harness();
    const { memory, sizes } = recordingReservation(raw.length, raw.length * 2);
    const reply = await pipeline.process(tx(raw, { memory }));
    expect(`${reply.code} ${reply.status} ${reply.text}`).toMatch(/^452 4\.3\.1 .*no room to sign this message now.*\(tx TX1\)$/);
    expect(upstream.delivered).toEqual([]);
    expect(sizes).toEqual([]);
    expect(metrics.outcomes).toEqual(['rejected_memory']);
  });
});

describe('outcomes and log lines', () => {
  it('one transaction line per message, at info when accepted, with who sent what and how long it took', async () => {
    const upstream = new KeepingUpstream({ delayMs: 60 });
    const { pipeline, lines, transaction, metrics } = harness({}, { upstream });
    const before = performance.now();
    const reply = await pipeline.process(
      tx(message(), {
        envelope: { from: SENDER, to: [RCPT, 'two@example.org'] },
        client: { address: '192.0.2.7', hostname: 'app.example.test', peer: '127.0.0.1' },
        principal: { user: 'app' },
      }),
    );
    const took = performance.now() - before;
    expect(reply.code).toBe(250);
    expect(metrics.outcomes).toEqual(['signed']);
    const [line, ...others] = transaction();
    expect(others).toEqual([]);
    expect(line).toMatchObject({
      level: 30,
      tx: 'TX1',
      outcome: 'signed',
      client: '192.0.2.7',
      clientName: 'app.example.test',
      peer: '127.0.0.1',
      user: 'app',
      mailFrom: SENDER,
      rcptCount: 2,
      size: message().length,
      from: SENDER,
      serial: leaf.serial,
      upstream: '250 2.0.0 Ok: queued as Q1',
      reply: '250 2.0.0 Ok: queued as Q1',
    });
    expect(line).not.toHaveProperty('error');
    // ms: the whole transaction, upstream wait included, to a tenth of a millisecond
    const ms = line!.ms as number;
    expect(ms).toBeGreaterThanOrEqual(55);
    expect(ms).toBeLessThanOrEqual(took + 0.1);
    expect(Math.round(ms * 10)).toBeCloseTo(ms * 10, 6);
    // The line Tattler users grep for, with the sender as a field too.
    expect(lines.filter((l) => l.msg === `Signing email notification from ${SENDER}`)).toEqual([expect.objectContaining({ level: 30, tx: 'TX1', from: SENDER })]);
  });

  it('a refusal is logged at warn with the reason the reply leaves out, and no other transaction fields go missing', async () => {
    const { pipeline, transaction, metrics } = harness({}, { engine: { name: 'native', sign: async () => { throw new SigningError('key file /srv/keys/a.pem unreadable'); }, close: async () => {} } });
    const reply = await pipeline.process(tx(message()));
    expect(`${reply.code} ${reply.status}`).toBe('451 4.7.0');
    expect(reply.text).toMatch(/^Signing failed temporarily/);
    expect(reply.text).not.toContain('/srv/keys');
    expect(transaction()).toEqual([expect.objectContaining({ level: 40, outcome: 'sign_error', client: '127.0.0.1', mailFrom: SENDER, rcptCount: 1, from: SENDER, error: 'key file /srv/keys/a.pem unreadable' })]);
    expect(metrics.outcomes).toEqual(['sign_error']);
  });

  it('an engine that fails with a bug (not a SigningError) is a local error, not a signing failure', async () => {
    const { pipeline, transaction } = harness({}, { engine: { name: 'native', sign: async () => { throw new TypeError('cannot read properties of undefined'); }, close: async () => {} } });
    const reply = await pipeline.process(tx(message()));
    expect(`${reply.code} ${reply.status}`).toBe('451 4.3.0');
    expect(reply.text).toMatch(/^Local error in processing/);
    expect(transaction()[0]).toMatchObject({ level: 40, error: 'cannot read properties of undefined' });
  });

  it('a message refused before processing (too big) is counted and logged with the transaction fields', () => {
    const { pipeline, transaction, metrics } = harness({ signing: 'off' });
    const reply = pipeline.refuse(
      { id: 'TX2', envelope: { from: SENDER, to: [RCPT] }, client: { address: '192.0.2.9', hostname: 'big.example.test' } },
      { code: 552, status: '5.3.4', text: 'Message too big', outcome: 'rejected_size' },
    );
    expect(reply.text).toContain('(tx TX2)');
    expect(transaction()).toEqual([expect.objectContaining({ level: 40, tx: 'TX2', outcome: 'rejected_size', client: '192.0.2.9', clientName: 'big.example.test', mailFrom: SENDER, rcptCount: 1, reply: '552 5.3.4 Message too big' })]);
    expect(transaction()[0]).not.toHaveProperty('user');
    expect(transaction()[0]).not.toHaveProperty('peer');
    expect(metrics.outcomes).toEqual(['rejected_size']);
  });

  it('SMIME_RELAY_SIGNING=off forwards the bytes as received and counts passed_unsigned', async () => {
    const raw = message();
    const { pipeline, upstream, transaction, metrics, lines } = harness({ signing: 'off' });
    expect((await pipeline.process(tx(raw))).code).toBe(250);
    expect(upstream.delivered[0]!.message).toBe(raw);
    expect(metrics.outcomes).toEqual(['passed_unsigned']);
    expect(transaction()[0]).toMatchObject({ level: 30, outcome: 'passed_unsigned' });
    expect(lines.some((l) => l.msg.startsWith('Signing email notification'))).toBe(false);
  });

  it('an already signed message is forwarded unchanged, with a line that says so', async () => {
    const raw = message(SENDER, 'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256; boundary="b"');
    const { pipeline, upstream, lines, metrics } = harness();
    expect((await pipeline.process(tx(raw))).code).toBe(250);
    expect(upstream.delivered[0]!.message).toBe(raw);
    expect(metrics.outcomes).toEqual(['passed_protected']);
    expect(lines.filter((l) => l.msg.includes('unchanged'))).toEqual([
      expect.objectContaining({ level: 30, from: SENDER, contentType: 'multipart/signed', msg: `forwarding multipart/signed message from ${SENDER} unchanged: already signed or encrypted` }),
    ]);
  });

  it('SMIME_RELAY_ON_MISSING_CERT=send-unsigned: an expired certificate lets mail through unsigned, with a warning that names the setting', async () => {
    const raw = message();
    const { pipeline, upstream, lines, metrics } = harness({ onMissingCert: 'send-unsigned' }, { store: expired });
    expect((await pipeline.process(tx(raw))).code).toBe(250);
    expect(upstream.delivered[0]!.message).toBe(raw);
    expect(metrics.outcomes).toEqual(['passed_unsigned']);
    const warning = lines.find((l) => l.msg.includes('UNSIGNED'));
    expect(warning).toMatchObject({ level: 40, from: SENDER, reason: expect.stringMatching(/expired/) });
    expect(warning!.msg).toMatch(new RegExp(`^forwarding mail from ${SENDER} UNSIGNED: its certificate is not usable \\(.*expired.*\\); SMIME_RELAY_ON_MISSING_CERT=send-unsigned$`));
    // and without the setting, the same mail is refused, not sent unsigned
    const strict = harness({}, { store: expired });
    expect((await strict.pipeline.process(tx(raw))).code).toBeGreaterThanOrEqual(400);
    expect(strict.upstream.delivered).toEqual([]);
  });

  it('an incoming DKIM signature gets one warning naming its domain and the setting; a message without one gets none', async () => {
    const dkim = 'DKIM-Signature: v=1; a=rsa-sha256; d=example.test; s=sel; h=from; bh=AAAA; b=BBBB';
    for (const strip of [false, true]) {
      const { pipeline, upstream, lines } = harness({ stripDkim: strip });
      expect((await pipeline.process(tx(message(SENDER, dkim)))).code).toBe(250);
      expect(lines.filter((l) => l.msg.includes('DKIM'))).toEqual([
        expect.objectContaining({
          level: 40,
          dkimDomains: ['example.test'],
          stripped: strip,
          msg:
            'incoming DKIM-Signature (d=example.test) will not verify after S/MIME signing; ' +
            (strip ? 'removed (SMIME_RELAY_STRIP_DKIM=true)' : 'kept; set SMIME_RELAY_STRIP_DKIM=true to remove it'),
        }),
      ]);
      expect(upstream.delivered[0]!.message.includes('DKIM-Signature:')).toBe(!strip);
    }
    const two = harness();
    expect((await two.pipeline.process(tx(message(SENDER, `${dkim}\r\n${dkim.replace('d=example.test', 'd=esp.example')}`)))).code).toBe(250);
    expect(two.lines.find((l) => l.msg.includes('DKIM'))!.msg).toMatch(/^incoming DKIM-Signature \(d=example\.test, d=esp\.example\) will not verify/);
    const { pipeline, lines } = harness();
    expect((await pipeline.process(tx(message()))).code).toBe(250);
    expect(lines.filter((l) => l.msg.includes('DKIM'))).toEqual([]);
  });
});

describe('stages', () => {
  it('SMIME_RELAY_HEADER_PROTECTION=clear reaches preparation: the signed part carries hp="clear"', async () => {
    for (const hp of ['off', 'clear'] as const) {
      const { pipeline, upstream } = harness({ headerProtection: hp });
      expect((await pipeline.process(tx(message()))).code).toBe(250);
      expect(upstream.delivered[0]!.message.toString('latin1').includes('hp="clear"')).toBe(hp === 'clear');
    }
  });

  it('the envelope SMTPUTF8 flag decides whether a UTF-8 header is forwarded as it is or encoded first', async () => {
    const raw = Buffer.from(`From: ${SENDER}\r\nTo: ${RCPT}\r\nSubject: caf\u00e9 \u2713\r\n\r\nbody\r\n`, 'utf8');
    for (const smtputf8 of [true, false]) {
      const { pipeline, upstream } = harness();
      expect((await pipeline.process(tx(raw, { envelope: { from: SENDER, to: [RCPT], smtputf8 } }))).code).toBe(250);
      const out = upstream.delivered[0]!.message;
      expect(out.includes(Buffer.from('caf\u00e9 \u2713', 'utf8'))).toBe(smtputf8);
      expect(out.every((b) => b < 0x80)).toBe(!smtputf8);
    }
  });

  it('a message preparation refuses is a permanent 554 5.6.0 that says why, not a retry', async () => {
    const raw = Buffer.concat([message(SENDER, 'Content-Transfer-Encoding: x-private').subarray(0, -2), Buffer.from('caf\xe9\r\n', 'latin1')]);
    const { pipeline, upstream } = harness();
    const reply = await pipeline.process(tx(raw));
    expect(`${reply.code} ${reply.status}`).toBe('554 5.6.0');
    expect(reply.text).toContain('unknown Content-Transfer-Encoding "x-private"');
    expect(upstream.delivered).toEqual([]);
  });

  it('self-verification stops a damaged signature; SMIME_RELAY_SELF_VERIFY=off is the only way such bytes leave', async () => {
    const damaging: SigningEngine = {
      name: 'native',
      async sign(content, bundle) {
        const der = Buffer.from(await native.sign(content, bundle));
        der[der.length - 1]! ^= 0x01;
        return der;
      },
      close: async () => {},
    };
    const on = harness({}, { engine: damaging });
    const reply = await on.pipeline.process(tx(message()));
    expect(`${reply.code} ${reply.status}`).toBe('451 4.7.0');
    expect(on.upstream.delivered).toEqual([]);
    expect(on.metrics.outcomes).toEqual(['self_verify_failed']);
    const error = on.lines.find((l) => l.level === 50);
    expect(error).toMatchObject({ tx: 'TX1', engine: 'native', serial: leaf.serial, reason: expect.stringMatching(/signature/) });
    expect(error!.msg).toBe(`self-verification failed, message not forwarded: ${error!.reason as string}`);

    const off = harness({ selfVerify: 'off' }, { engine: damaging });
    expect((await off.pipeline.process(tx(message()))).code).toBe(250);
    expect(checkIntegrity(off.upstream.delivered[0]!.message).ok).toBe(false);
  });

  it('recipients the upstream refused while taking others: 250, counted, and reported to the sender', async () => {
    const upstream = new KeepingUpstream({ refuse: ['gone@example.org'] });
    const { pipeline, metrics } = harness({}, { upstream });
    const reply = await pipeline.process(tx(message(), { envelope: { from: SENDER, to: [RCPT, 'gone@example.org'] } }));
    expect(reply.code).toBe(250);
    expect(metrics.refused).toEqual([1]);
    // the message, then the delivery status notification to the envelope sender
    expect(upstream.delivered.map((d) => d.envelope.to)).toEqual([[RCPT, 'gone@example.org'], [SENDER]]);
  });

  it('over LMTP, a refused recipient gets its own reply and no DSN is sent', async () => {
    const upstream = new KeepingUpstream({ refuse: ['gone@example.org'] });
    const { pipeline, metrics } = harness({ lmtp: true }, { upstream });
    const reply = await pipeline.process(tx(message(), { envelope: { from: SENDER, to: [RCPT, 'gone@example.org'] } }));
    expect(reply.code).toBe(250);
    expect(reply.recipients?.map((r) => r.code)).toEqual([250, 550]);
    expect(metrics.refused).toEqual([1]);
    expect(upstream.delivered).toHaveLength(1);
  });

  it('a message every recipient took is sent once, and nothing is reported', async () => {
    const { pipeline, upstream, metrics } = harness({ lmtp: true });
    const reply = await pipeline.process(tx(message(), { envelope: { from: SENDER, to: [RCPT, 'two@example.org'] } }));
    expect(reply.code).toBe(250);
    expect(upstream.delivered).toHaveLength(1);
    expect(metrics.refused).toEqual([]);
  });
});
