import { copyFileSync, mkdirSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkCert } from '../src/certs/check-cert.js';
import { sendMessage } from './support/client.js';
import { createTestPki, makeTempDir, run, type Leaf, type TestPki } from './support/pki.js';
import { startTestRelay, type TestRelay } from './support/relay.js';
import { freePorts } from './support/postfix.js';
import { revocationAuthority, startCrlServer, type RevocationAuthority } from './support/revocation.js';
import { startSink, type Sink } from './support/sink.js';
import { verifyOpenssl } from './support/verify.js';

/*
 * Revocation of the relay's own certificates, against a real `openssl ocsp` responder and real
 * CRLs, both made from an `openssl ca` database in which the test revokes certificates.
 */

const GOOD = 'good@example.test';
const REVOKED = 'revoked@example.test';
const LATE = 'late@example.test';
const UNREACHABLE = 'unreachable@example.test';
const CRL_GOOD = 'crl-good@example.test';
const CRL_REVOKED = 'crl-revoked@example.test';

let dir: string;
let removeDir: () => Promise<void>;
let pki: TestPki;
let authority: RevocationAuthority;
let sink: Sink;
let ocsp: { pid: number; stop(): Promise<void> };
let crlServer: Awaited<ReturnType<typeof startCrlServer>>;
let ocspUrl: string;
let deadUrl: string;
const leaves: Record<string, Leaf> = {};

const msg = (from: string, n = 0) => Buffer.from(`From: ${from}\r\nTo: a@example.org\r\nSubject: r${n}\r\n\r\nrevocation ${n}\r\n`);
const REVOKED_ON = /certificate revoked on \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ/;

async function check(argv: string[]): Promise<{ code: number; text: string }> {
  const lines: string[] = [];
  const code = await checkCert(argv, (s) => lines.push(s));
  return { code, text: lines.join('\n') };
}

/** A directory holding the bundles of the given leaves, one file per mailbox. */
function certDir(name: string, ...which: string[]): string {
  const d = join(dir, name);
  mkdirSync(d, { mode: 0o700 });
  for (const w of which) copyFileSync(leaves[w]!.bundlePath, join(d, `${w}.pem`));
  return d;
}

async function metrics(relay: TestRelay): Promise<string> {
  const { host, port } = relay.metricsAddress!;
  return (await fetch(`http://${host}:${port}/metrics`)).text();
}

beforeAll(async () => {
  ({ dir, remove: removeDir } = await makeTempDir('smime-revocation-'));
  pki = await createTestPki();
  authority = revocationAuthority(pki, dir);
  // Nothing listens on `dead`: a port taken from the OS and given back.
  const [port, dead] = (await freePorts(2)) as [number, number];
  ocspUrl = `http://127.0.0.1:${port}/`;
  deadUrl = `http://127.0.0.1:${dead}/`;
  crlServer = await startCrlServer(() => authority.crl());
  const crlUrl = `http://127.0.0.1:${crlServer.port}/intermediate.crl`;
  const aia = (url: string) => [`authorityInfoAccess = OCSP;URI:${url}`];
  const cdp = [`crlDistributionPoints = URI:${crlUrl}`];
  const issue = async (mailbox: string, extensions: string[]) => {
    leaves[mailbox] = await pki.issueLeaf(mailbox, { emails: [mailbox], extensions });
  };
  await Promise.all([
    issue(GOOD, aia(ocspUrl)),
    issue(REVOKED, aia(ocspUrl)),
    issue(LATE, aia(ocspUrl)),
    issue(UNREACHABLE, aia(deadUrl)),
    issue(CRL_GOOD, cdp),
    issue(CRL_REVOKED, cdp),
  ]);
  // `openssl ca` holds one database: one change at a time.
  for (const m of [GOOD, LATE, CRL_GOOD]) await authority.valid(leaves[m]!.certPath);
  for (const m of [REVOKED, CRL_REVOKED]) await authority.revoke(leaves[m]!.certPath, 'keyCompromise');
  ocsp = await authority.startOcsp(port);
  sink = await startSink();
}, 120_000);

afterAll(async () => {
  await ocsp?.stop();
  await crlServer?.close();
  await sink?.close();
  await pki?.cleanup();
  await removeDir?.();
});

describe('the responder the tests run', () => {
  it('is a real openssl ocsp answering from the openssl ca database', async () => {
    const ask = (m: string) => run('openssl', ['ocsp', '-issuer', pki.intermediateCertPath, '-cert', leaves[m]!.certPath, '-url', ocspUrl, '-noverify']);
    expect((await ask(GOOD)).stdout.toString()).toMatch(/: good/);
    expect((await ask(REVOKED)).stdout.toString()).toMatch(/: revoked[\s\S]*Reason: keyCompromise/);
  });
});

describe('check-cert shows the revocation status', () => {
  it('good by OCSP, with the next update the responder gave', async () => {
    const r = await check([leaves[GOOD]!.bundlePath]);
    expect(r.code, r.text).toBe(0);
    expect(r.text).toMatch(new RegExp(`revocation: {3}good \\(OCSP ${ocspUrl.replace(/[.]/g, '\\.')}, next update \\d{4}-`));
  });

  it('revoked by OCSP: an error, the bundle cannot sign', async () => {
    const r = await check([leaves[REVOKED]!.bundlePath]);
    expect(r.code).toBe(1);
    expect(r.text).toMatch(/revocation: {3}REVOKED on \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(keyCompromise, OCSP http/);
    expect(r.text).toContain('ERROR (revoked)');
  });

  it('by CRL when the certificate names no responder', async () => {
    const good = await check([leaves[CRL_GOOD]!.bundlePath]);
    expect(good.code, good.text).toBe(0);
    expect(good.text).toMatch(/revocation: {3}good \(CRL http:\/\/127\.0\.0\.1:\d+\/intermediate\.crl, next update /);
    const revoked = await check([leaves[CRL_REVOKED]!.bundlePath, '--json']);
    expect(revoked.code).toBe(1);
    const entry = JSON.parse(revoked.text).certificates[0];
    expect(entry.revocation).toMatchObject({ state: 'revoked', reason: 'keyCompromise' });
    expect(entry.errors.map((e: { code: string }) => e.code)).toContain('revoked');
  });

  it('an unreachable responder: a warning under soft, an error under hard, nothing under off', async () => {
    const soft = await check([leaves[UNREACHABLE]!.bundlePath]);
    expect(soft.code, soft.text).toBe(0);
    expect(soft.text).toContain('revocation:   could not be checked: ');
    expect(soft.text).toContain('connection refused');
    expect(soft.text).toContain('warning (revocation)');
    const hard = await check([leaves[UNREACHABLE]!.bundlePath, '--revocation', 'hard']);
    expect(hard.code).toBe(1);
    expect(hard.text).toContain('ERROR (revocation)');
    const off = await check([leaves[REVOKED]!.bundlePath, '--revocation=off']);
    expect(off.code, off.text).toBe(0);
    expect(off.text).not.toContain('revocation:');
  });

  it('a certificate without responder or CRL is shown as not checked', async () => {
    const plain = await pki.issueLeaf('plain', { emails: ['plain@example.test'] });
    const r = await check([plain.bundlePath]);
    expect(r.code).toBe(0);
    expect(r.text).toContain('revocation:   not checked: the certificate names no OCSP responder and no CRL distribution point');
  });
});

describe('the relay and a revoked certificate', () => {
  let relay: TestRelay;

  beforeAll(async () => {
    relay = await startTestRelay({
      SMIME_RELAY_CERT: certDir('mixed', GOOD, REVOKED, CRL_GOOD, CRL_REVOKED),
      SMIME_RELAY_UPSTREAM: sink.url,
      SMIME_RELAY_METRICS: '127.0.0.1:0',
    });
  });
  afterAll(async () => {
    await relay?.close();
  });

  it('refuses mail from the revoked mailbox with 451 4.7.1 … certificate revoked on <date>, never 250; signs for the others', async () => {
    const before = sink.received.length;
    for (const m of [REVOKED, CRL_REVOKED]) {
      const r = await sendMessage(relay.address.port, m, ['a@example.org'], msg(m));
      expect(r.final?.code, r.final?.text).toBe(451);
      expect(r.final?.text).toMatch(/^4\.7\.1 /);
      expect(r.final?.text).toMatch(REVOKED_ON);
      expect(r.final?.text).toMatch(/\(tx [\w-]+\)$/);
    }
    for (const m of [GOOD, CRL_GOOD]) expect((await sendMessage(relay.address.port, m, ['a@example.org'], msg(m))).final?.code).toBe(250);
    const got = await sink.waitFor(before + 2);
    expect(got).toHaveLength(before + 2);
    expect((await verifyOpenssl(got[before]!.raw, pki.rootCertPath)).ok).toBe(true);
  });

  it('logs an error line for each revoked certificate and sets smime_relay_certificate_revoked', async () => {
    for (const m of [REVOKED, CRL_REVOKED]) {
      expect(relay.logs.some((l) => l.level === 50 && String(l.msg).includes(`certificate for ${m} (serial ${leaves[m]!.serial}) was REVOKED on`))).toBe(true);
    }
    const text = await metrics(relay);
    expect(text).toContain(`smime_relay_certificate_revoked{mailbox="${REVOKED}",serial="${leaves[REVOKED]!.serial}"} 1`);
    expect(text).toContain(`smime_relay_certificate_revoked{mailbox="${CRL_REVOKED}",serial="${leaves[CRL_REVOKED]!.serial}"} 1`);
    expect(text).toContain(`smime_relay_certificate_revoked{mailbox="${GOOD}",serial="${leaves[GOOD]!.serial}"} 0`);
    expect(text).toMatch(/smime_relay_revocation_check_failures_total 0/);
  });

  it("honours the responder's next update: the next check is due in 5 minutes, not in 6 hours", () => {
    const line = relay.logs.find((l) => String(l.msg).startsWith(`certificate for ${GOOD} `) && String(l.msg).includes('revocation status good'));
    expect(line).toBeDefined();
    const due = Date.parse(String(line!.nextCheck)) - Number(line!.time);
    expect(due).toBeGreaterThan(4 * 60_000);
    expect(due).toBeLessThanOrEqual(5 * 60_000 + 5_000);
  });

  it('signs again once a new certificate is installed: hot reload, no restart', async () => {
    const renewed = await pki.issueLeaf('revoked-renewed', { emails: [REVOKED], extensions: [`authorityInfoAccess = OCSP;URI:${ocspUrl}`] });
    await authority.valid(renewed.certPath);
    const path = join(dir, 'mixed', `${REVOKED}.pem`);
    copyFileSync(renewed.bundlePath, `${path}.tmp`);
    renameSync(`${path}.tmp`, path);
    let code = 0;
    for (let i = 0; i < 40 && code !== 250; i++) {
      await new Promise((r) => setTimeout(r, 250));
      code = (await sendMessage(relay.address.port, REVOKED, ['a@example.org'], msg(REVOKED, i))).final?.code ?? 0;
    }
    expect(code).toBe(250);
  });
});

describe('checks at every interval', () => {
  it('a certificate revoked while the relay runs stops signing at the next check', async () => {
    const relay = await startTestRelay({ SMIME_RELAY_CERT: certDir('late', LATE), SMIME_RELAY_UPSTREAM: sink.url, SMIME_RELAY_REVOCATION_INTERVAL: '1s' });
    try {
      expect((await sendMessage(relay.address.port, LATE, ['a@example.org'], msg(LATE, 1))).final?.code).toBe(250);
      await authority.revoke(leaves[LATE]!.certPath, 'superseded');
      let last = { code: 250, text: '' };
      for (let i = 0; i < 40 && last.code === 250; i++) {
        await new Promise((r) => setTimeout(r, 250));
        last = (await sendMessage(relay.address.port, LATE, ['a@example.org'], msg(LATE, 2 + i))).final ?? { code: 0, text: '' };
      }
      expect(last.code, last.text).toBe(451);
      expect(last.text).toMatch(REVOKED_ON);
    } finally {
      await relay.close();
    }
  }, 30_000);
});

describe('a responder that cannot be reached', () => {
  it('soft (the default): signing goes on, a warning, and smime_relay_revocation_check_failures_total counts it', async () => {
    const relay = await startTestRelay({ SMIME_RELAY_CERT: certDir('soft', UNREACHABLE), SMIME_RELAY_UPSTREAM: sink.url, SMIME_RELAY_METRICS: '127.0.0.1:0' });
    try {
      const r = await sendMessage(relay.address.port, UNREACHABLE, ['a@example.org'], msg(UNREACHABLE));
      expect(r.final?.code, r.final?.text).toBe(250);
      expect(relay.logs.some((l) => l.level === 40 && /revocation status could not be checked \(.*connection refused.*\); signing goes on \(SMIME_RELAY_REVOCATION=soft\)/.test(String(l.msg)))).toBe(true);
      expect(await metrics(relay)).toMatch(/smime_relay_revocation_check_failures_total [1-9]/);
    } finally {
      await relay.close();
    }
  });

  it('hard: treated like revoked, 451 4.7.1', async () => {
    const relay = await startTestRelay({ SMIME_RELAY_CERT: certDir('hard', UNREACHABLE, GOOD), SMIME_RELAY_UPSTREAM: sink.url, SMIME_RELAY_REVOCATION: 'hard' });
    try {
      const r = await sendMessage(relay.address.port, UNREACHABLE, ['a@example.org'], msg(UNREACHABLE));
      expect(r.final?.code, r.final?.text).toBe(451);
      expect(r.final?.text).toMatch(/^4\.7\.1 .*its revocation status cannot be checked \(SMIME_RELAY_REVOCATION=hard\): .*connection refused/);
      // A certificate whose responder answers is not affected.
      expect((await sendMessage(relay.address.port, GOOD, ['a@example.org'], msg(GOOD))).final?.code).toBe(250);
    } finally {
      await relay.close();
    }
  });

  it('off: no checks at all, even a revoked certificate signs', async () => {
    const relay = await startTestRelay({ SMIME_RELAY_CERT: certDir('off', CRL_REVOKED), SMIME_RELAY_UPSTREAM: sink.url, SMIME_RELAY_REVOCATION: 'off' });
    try {
      const requests = crlServer.requests;
      expect((await sendMessage(relay.address.port, CRL_REVOKED, ['a@example.org'], msg(CRL_REVOKED))).final?.code).toBe(250);
      expect(crlServer.requests).toBe(requests);
    } finally {
      await relay.close();
    }
  });
});
