import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdir, readFile, stat, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestPki, openssl, type Leaf, type TestPki } from './support/pki.js';
import {
  assertAllVerify,
  availableVerifiers,
  requireVerifiers,
  splitSigned,
  verifyGpgsm,
  verifyNss,
  verifyOpenssl,
  type Verifier,
  type VerifyResult,
} from './support/verify.js';

// These tests check the checkers: every message here is signed by openssl and wrapped by hand,
// so a verifier that accepts too much (or too little) shows up without any relay code involved.

const CRLF = '\r\n';
const BOUNDARY = '----test-boundary-7f3a9c';

const PLAIN_ENTITY = Buffer.from(
  ['Content-Type: text/plain; charset=us-ascii', 'Content-Transfer-Encoding: 7bit', '', 'Hello from the verifier tests.', 'Second line.', ''].join(CRLF),
  'latin1',
);
const QP_BODY = 'Gr=C3=BC=C3=9Fe aus K=C3=B6ln, trailing blank=20';
const QP_ENTITY = Buffer.from(
  ['Content-Type: text/plain; charset=utf-8', 'Content-Transfer-Encoding: quoted-printable', '', QP_BODY, ''].join(CRLF),
  'latin1',
);
// The same part as a transport that "helpfully" decodes QP to 8bit would deliver it.
const EIGHTBIT_ENTITY = Buffer.from(
  ['Content-Type: text/plain; charset=utf-8', 'Content-Transfer-Encoding: 8bit', '', 'Grüße aus Köln, trailing blank ', ''].join(CRLF),
  'utf8',
);

/** Detached signature exactly as notes/smime.md prescribes: -binary over CRLF bytes, chain included. */
async function sign(entity: Buffer, leaf: Leaf, chainPath: string, dir: string, tag: string, extra: string[] = []): Promise<Buffer> {
  const inPath = join(dir, `${tag}.mime`);
  await writeFile(inPath, entity);
  return openssl(['cms', '-sign', '-binary', '-md', 'sha256', '-in', inPath, '-signer', leaf.certPath, '-inkey', leaf.keyPath, '-certfile', chainPath, '-outform', 'DER', ...extra]);
}

/** RFC 1847 multipart/signed around `entity`; the CRLF before each delimiter is the delimiter's. */
function wrap(entity: Buffer, signatureDer: Buffer, from = 'notifications@example.test'): Buffer {
  const b64 = signatureDer.toString('base64').match(/.{1,76}/g)!.join(CRLF);
  const head = [
    `From: <${from}>`,
    'To: <someone@example.test>',
    'Subject: verifier self-test',
    'Date: Mon, 02 Mar 2026 10:00:00 +0000',
    'Message-ID: <verifier-self-test@example.test>',
    'MIME-Version: 1.0',
    'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256;',
    `\tboundary="${BOUNDARY}"`,
    '',
    'This is a cryptographically signed message in MIME format.',
    '',
    `--${BOUNDARY}`,
    '',
  ].join(CRLF);
  const tail = [
    '',
    `--${BOUNDARY}`,
    'Content-Type: application/pkcs7-signature; name="smime.p7s"',
    'Content-Transfer-Encoding: base64',
    'Content-Disposition: attachment; filename="smime.p7s"',
    '',
    b64,
    '',
    `--${BOUNDARY}--`,
    '',
  ].join(CRLF);
  return Buffer.concat([Buffer.from(head, 'latin1'), entity, Buffer.from(tail, 'latin1')]);
}

/** Replaces the signed entity inside a wrapped message, keeping the original signature. */
function swapEntity(message: Buffer, from: Buffer, to: Buffer): Buffer {
  const at = message.indexOf(from);
  if (at < 0) throw new Error('entity not found in message');
  return Buffer.concat([message.subarray(0, at), to, message.subarray(at + from.length)]);
}

const VERIFIERS: Record<Verifier, (m: Buffer, root: string) => Promise<VerifyResult>> = {
  openssl: verifyOpenssl,
  gpgsm: verifyGpgsm,
  nss: verifyNss,
};
const available = availableVerifiers();
requireVerifiers();

let pki: TestPki;
let foreign: TestPki;
const msg = {} as Record<'rsa' | 'ec' | 'tampered' | 'untrusted' | 'eightBit' | 'qp' | 'expired' | 'notYetValid' | 'serverAuthOnly' | 'pssKey' | 'pssPadding', Buffer>;
const DAY = 86_400_000;

beforeAll(async () => {
  [pki, foreign] = await Promise.all([createTestPki(), createTestPki({ keyType: 'ec' })]);
  const now = Date.now();
  const [rsa, ec, stranger, expired, notYetValid, serverAuthOnly, pss] = await Promise.all([
    pki.issueLeaf('rsa'),
    pki.issueLeaf('ec', { keyType: 'ec' }),
    foreign.issueLeaf('stranger'),
    pki.issueLeaf('expired', { keyType: 'ec', notBefore: new Date(now - 400 * DAY), notAfter: new Date(now - DAY) }),
    pki.issueLeaf('not-yet-valid', { keyType: 'ec', notBefore: new Date(now + DAY) }),
    pki.issueLeaf('server-auth-only', { keyType: 'ec', eku: 'serverAuth' }),
    pki.issueLeaf('pss', { pss: true }),
  ]);
  const signPlain = async (leaf: Leaf, tag: string, extra?: string[]) =>
    wrap(PLAIN_ENTITY, await sign(PLAIN_ENTITY, leaf, pki.chainPath, pki.dir, tag, extra));
  [msg.expired, msg.notYetValid, msg.serverAuthOnly, msg.pssKey, msg.pssPadding] = await Promise.all([
    signPlain(expired, 'expired'), signPlain(notYetValid, 'nyv'), signPlain(serverAuthOnly, 'sa'), signPlain(pss, 'pss-key'),
    signPlain(rsa, 'pss-padding', ['-keyopt', 'rsa_padding_mode:pss']),
  ]);
  const [rsaSig, ecSig, strangerSig, qpSig] = await Promise.all([
    sign(PLAIN_ENTITY, rsa, pki.chainPath, pki.dir, 'rsa'),
    sign(PLAIN_ENTITY, ec, pki.chainPath, pki.dir, 'ec'),
    // The foreign chain carries its own root, so the only defect is that nobody trusts that root.
    sign(PLAIN_ENTITY, stranger, foreign.chainPath, foreign.dir, 'stranger'),
    sign(QP_ENTITY, rsa, pki.chainPath, pki.dir, 'qp'),
  ]);
  msg.rsa = wrap(PLAIN_ENTITY, rsaSig);
  msg.ec = wrap(PLAIN_ENTITY, ecSig);
  msg.untrusted = wrap(PLAIN_ENTITY, strangerSig);
  msg.qp = wrap(QP_ENTITY, qpSig);
  // One byte of the body: "Hello" becomes "Jello".
  const tamperedEntity = Buffer.from(PLAIN_ENTITY);
  tamperedEntity[tamperedEntity.indexOf('Hello')] = 'J'.charCodeAt(0);
  msg.tampered = swapEntity(msg.rsa, PLAIN_ENTITY, tamperedEntity);
  msg.eightBit = swapEntity(msg.qp, QP_ENTITY, EIGHTBIT_ENTITY);
});

afterAll(async () => {
  await Promise.all([pki?.cleanup(), foreign?.cleanup()]);
});

describe('splitSigned', () => {
  it('returns exactly the signed entity, without the CRLF that belongs to the next delimiter', () => {
    const parts = splitSigned(msg.rsa);
    expect(parts.content.equals(PLAIN_ENTITY)).toBe(true);
    expect(parts.boundary).toBe(BOUNDARY);
    expect(parts.topHeaders).toMatch(/^From: <notifications@example\.test>\r\n/);
    expect(parts.topHeaders.endsWith('\r\n')).toBe(true);
    expect(parts.signature[0]).toBe(0x30); // DER SEQUENCE, i.e. the base64 was decoded
  });

  it('finds a first delimiter with no preamble and an unquoted boundary', () => {
    const noPreamble = Buffer.from(
      ['Content-Type: multipart/signed; boundary=abc; protocol="application/pkcs7-signature"', '', '--abc', 'X: y', '', 'body', '--abc',
        'Content-Type: application/pkcs7-signature', 'Content-Transfer-Encoding: base64', '', 'MAA=', '--abc--', ''].join(CRLF),
      'latin1',
    );
    const parts = splitSigned(noPreamble);
    expect(parts.content.toString('latin1')).toBe('X: y\r\n\r\nbody');
    expect(parts.signature.equals(Buffer.from([0x30, 0x00]))).toBe(true);
  });

  it('refuses a message that is not multipart/signed', () => {
    expect(() => splitSigned(Buffer.from('Content-Type: text/plain\r\n\r\nhi\r\n'))).toThrow(/not multipart\/signed/);
  });
});

describe.each(['openssl', 'gpgsm', 'nss'] as const)('%s verifier', (name) => {
  const verify = VERIFIERS[name];
  const skip = !available.includes(name);

  it.skipIf(skip)('accepts a message signed by an RSA leaf', async () => {
    const r = await verify(msg.rsa, pki.rootCertPath);
    expect(r.ok, r.detail).toBe(true);
  });

  it.skipIf(skip)('accepts a message signed by an EC P-256 leaf', async () => {
    const r = await verify(msg.ec, pki.rootCertPath);
    expect(r.ok, r.detail).toBe(true);
  });

  it.skipIf(skip)('accepts a signed quoted-printable part as sent', async () => {
    const r = await verify(msg.qp, pki.rootCertPath);
    expect(r.ok, r.detail).toBe(true);
  });

  it.skipIf(skip)('rejects the message after one body byte changed', async () => {
    const r = await verify(msg.tampered, pki.rootCertPath);
    expect(r.ok, r.detail).toBe(false);
    expect(r.detail).not.toMatch(/could not run/);
  });

  it.skipIf(skip)('rejects a valid signature whose chain ends at a root it was not told to trust', async () => {
    const r = await verify(msg.untrusted, pki.rootCertPath);
    expect(r.ok, r.detail).toBe(false);
    expect(r.detail).not.toMatch(/could not run/);
    // ...and the same message is fine once its own root is the trust anchor, so the failure above is about trust alone.
    const trusted = await verify(msg.untrusted, foreign.rootCertPath);
    expect(trusted.ok, trusted.detail).toBe(true);
  });

  it.skipIf(skip)('rejects the signed part after a transport decoded its quoted-printable to 8bit', async () => {
    const r = await verify(msg.eightBit, pki.rootCertPath);
    expect(r.ok, r.detail).toBe(false);
    expect(r.detail).not.toMatch(/could not run/);
  });
});

// What the verifiers check beyond the signature differs. These pin the differences down, so a test
// elsewhere knows which verifier can catch a certificate defect (and does not expect the others to).
describe('certificate checks the verifiers disagree on', () => {
  const rejectedBy = async (m: Buffer) => (await Promise.all(available.map((v) => VERIFIERS[v](m, pki.rootCertPath))))
    .filter((r) => !r.ok).map((r) => r.verifier);

  it('an expired signer certificate is rejected by all (gpgsm says EXPKEYSIG instead of GOODSIG)', async () => {
    expect(await rejectedBy(msg.expired)).toEqual(available);
  });

  it('a signer whose key is RSA-PSS (the pss fixture) is rejected by all: OpenSSL 3.0 labels its signature rsaEncryption', async () => {
    expect(await rejectedBy(msg.pssKey)).toEqual(available);
  });

  it('a well-formed RSASSA-PSS signature from a plain RSA key is rejected by gpgsm only (2.2 aborts on it)', async () => {
    expect(await rejectedBy(msg.pssPadding)).toEqual(available.filter((v) => v === 'gpgsm'));
  });

  it('a not-yet-valid signer certificate is rejected by openssl and gpgsm; NSS 3.87 accepts it', async () => {
    expect(await rejectedBy(msg.notYetValid)).toEqual(available.filter((v) => v !== 'nss'));
  });

  it('a signer certificate with only serverAuth EKU is rejected by openssl and NSS; gpgsm 2.2 ignores EKU', async () => {
    expect(await rejectedBy(msg.serverAuthOnly)).toEqual(available.filter((v) => v !== 'gpgsm'));
  });
});

describe('assertAllVerify', () => {
  it('passes when every available verifier accepts, and says which ones ran', async () => {
    const results = await assertAllVerify(msg.rsa, pki.rootCertPath);
    expect(results.map((r) => r.verifier).sort()).toEqual([...available].sort());
  });

  it('fails naming every verifier that rejected, with each one\'s output', async () => {
    const err = await assertAllVerify(msg.tampered, pki.rootCertPath).then(() => undefined, (e: Error) => e);
    expect(err).toBeInstanceOf(Error);
    for (const v of available) expect(err!.message).toContain(`--- ${v}: FAILED`);
  });
});

describe('verifier availability', () => {
  it('treats a missing gpgsm or cmsutil as a failure under CI, naming the packages to install', async () => {
    // A PATH holding only openssl stands in for a machine without gpgsm and the NSS tools.
    const dir = join(pki.dir, 'only-openssl');
    await mkdir(dir);
    await symlink(execFileSync('sh', ['-c', 'command -v openssl'], { encoding: 'utf8' }).trim(), join(dir, 'openssl'));
    const env = { PATH: dir, CI: 'true' };
    expect(availableVerifiers(env)).toEqual(['openssl']);
    expect(() => requireVerifiers(env)).toThrow(/apt-get install -y gpgsm gpg-agent libnss3-tools/);
  });
});

describe('test PKI fixtures', () => {
  const text = async (certPath: string) => (await openssl(['x509', '-in', certPath, '-noout', '-text'])).toString('utf8');

  it('issues root -> intermediate -> leaf with the key usage Apple Mail and the emailProtection EKU clients require', async () => {
    const leaf = await pki.issueLeaf('fixture-defaults');
    const [root, intermediate, cert] = await Promise.all([pki.rootCertPath, pki.intermediateCertPath, leaf.certPath].map(async (p) => new X509Certificate(await readFile(p))));
    expect(root!.ca && intermediate!.ca && !cert!.ca).toBe(true);
    expect(root!.checkIssued(root!) && intermediate!.checkIssued(root!) && cert!.checkIssued(intermediate!)).toBe(true);
    expect(cert!.serialNumber).toBe(leaf.serial);
    expect(cert!.subjectAltName).toBe('email:notifications@example.test');
    const t = await text(leaf.certPath);
    expect(t).toMatch(/Key Usage: critical\s+Digital Signature, Non Repudiation, Key Encipherment/);
    expect(t).toMatch(/Extended Key Usage:\s+E-mail Protection/);
    expect(t).toMatch(/Signature Algorithm: sha256WithRSAEncryption/);
  });

  it('honours exact notBefore/notAfter, emails, subject email and a null EKU/key usage', async () => {
    const notBefore = new Date('2020-01-02T03:04:05Z');
    const notAfter = new Date('2051-06-07T08:09:10Z'); // past 2049, so GeneralizedTime
    const leaf = await pki.issueLeaf('fixture-custom', {
      keyType: 'ec', emails: ['a@example.test', 'b@example.test'], subjectEmail: 'dn@example.test', cn: 'Custom Signer',
      eku: null, keyUsage: null, notBefore, notAfter, md: 'sha1',
    });
    const cert = new X509Certificate(await readFile(leaf.certPath));
    expect(new Date(cert.validFrom).toISOString()).toBe(notBefore.toISOString());
    expect(new Date(cert.validTo).toISOString()).toBe(notAfter.toISOString());
    expect(cert.subjectAltName).toBe('email:a@example.test, email:b@example.test');
    expect(cert.subject).toContain('emailAddress=dn@example.test');
    expect(cert.subject).toContain('CN=Custom Signer');
    const t = await text(leaf.certPath);
    expect(t).not.toMatch(/Key Usage/);
    expect(t).toMatch(/Signature Algorithm: sha1WithRSAEncryption/); // the intermediate is RSA
  });

  it('writes the bundle as key, leaf, intermediate with mode 0600, and keys in the requested form', async () => {
    const [plain, encrypted, traditional] = await Promise.all([
      pki.issueLeaf('fixture-plain'),
      pki.issueLeaf('fixture-encrypted', { encryptKeyWithPassword: 'correct horse' }),
      pki.issueLeaf('fixture-traditional', { keyType: 'ec', traditionalKey: true }),
    ]);
    const labels = (pem: string) => [...pem.matchAll(/-----BEGIN ([A-Z ]+)-----/g)].map((m) => m[1]);
    expect(labels(await readFile(plain.bundlePath, 'latin1'))).toEqual(['PRIVATE KEY', 'CERTIFICATE', 'CERTIFICATE']);
    expect(labels(await readFile(encrypted.bundlePath, 'latin1'))[0]).toBe('ENCRYPTED PRIVATE KEY');
    expect(labels(await readFile(traditional.bundlePath, 'latin1'))[0]).toBe('EC PRIVATE KEY');
    expect(labels(await readFile(traditional.keyPath, 'latin1'))).toEqual(['EC PRIVATE KEY']);
    expect((await stat(plain.bundlePath)).mode & 0o777).toBe(0o600);
    const bundleCerts = (await readFile(plain.bundlePath, 'latin1')).split('-----BEGIN CERTIFICATE-----');
    expect(bundleCerts[1]).toBe((await readFile(plain.certPath, 'latin1')).split('-----BEGIN CERTIFICATE-----')[1]);
    await openssl(['pkey', '-in', encrypted.keyPath, '-passin', 'pass:correct horse', '-noout']);
  });

  it('exports a PKCS#12 with key, leaf and chain that opens with its password only', async () => {
    const leaf = await pki.issueLeaf('fixture-p12', { keyType: 'ec' });
    const p12 = await leaf.p12Path('s3cret');
    expect(await leaf.p12Path('s3cret')).toBe(p12);
    const pem = (await openssl(['pkcs12', '-in', p12, '-passin', 'pass:s3cret', '-noenc'])).toString('latin1');
    expect(pem.match(/BEGIN PRIVATE KEY/g)).toHaveLength(1);
    expect(pem.match(/BEGIN CERTIFICATE/g)).toHaveLength(3);
    await expect(openssl(['pkcs12', '-in', p12, '-passin', 'pass:wrong', '-noenc'])).rejects.toThrow(/mac verify|invalid password/i);
  });
});
