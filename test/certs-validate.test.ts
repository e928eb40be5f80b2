import { chmodSync, chownSync, copyFileSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { checkCert } from '../src/certs/check-cert.js';
import type { FindingCode } from '../src/certs/findings.js';
import { loadPath, type LoadedBundle } from '../src/certs/load.js';
import type { FileKey } from '../src/signing/file-key.js';
import { createTestPki, openssl, type Leaf, type TestPki } from './support/pki.js';

// Every case an admin can get wrong, made with real openssl files, and checked the two ways an
// admin meets it: the loader the relay uses, and `smime-relay check-cert`.

const DAY = 86_400_000;
// Fixtures are dozens of openssl runs; on a busy machine they outlast vitest's 5 s/10 s defaults.
vi.setConfig({ testTimeout: 30_000, hookTimeout: 120_000 });

let pki: TestPki;
let work: string;
const leaves: Record<string, Leaf> = {};

beforeAll(async () => {
  pki = await createTestPki();
  work = join(pki.dir, 'cases');
  mkdirSync(work);
  const now = Date.now();
  const specs: [string, Parameters<TestPki['issueLeaf']>[1]][] = [
    ['good', { emails: ['billing@example.test'] }],
    ['ec', { emails: ['security@example.test'], keyType: 'ec' }],
    ['other', { emails: ['other@example.test'] }],
    ['encrypted', { encryptKeyWithPassword: 'correct horse' }],
    ['trad-rsa', { traditionalKey: true }],
    ['trad-ec', { traditionalKey: true, keyType: 'ec' }],
    ['trad-encrypted', { traditionalKey: true, encryptKeyWithPassword: 'correct horse' }],
    ['expired', { notBefore: new Date(now - 400 * DAY), notAfter: new Date(now - 3 * DAY) }],
    ['future', { notBefore: new Date(now + 5 * DAY), notAfter: new Date(now + 400 * DAY) }],
    ['no-eku', { eku: null }],
    ['tls-eku', { eku: 'serverAuth' }],
    ['no-ku', { keyUsage: null }],
    ['ku-no-sign', { keyUsage: 'critical,keyEncipherment' }],
    ['no-mailbox', { emails: [], cn: 'nobody' }],
    ['subject-email', { emails: [], subjectEmail: 'Legacy@Example.test' }],
    ['rsa1024', { rsaBits: 1024 }],
    ['sha1', { md: 'sha1' }],
    ['pss', { pss: true }],
  ];
  const issued = await Promise.all(specs.map(([name, o]) => pki.issueLeaf(name, o)));
  specs.forEach(([name], i) => (leaves[name] = issued[i]!));
});

afterAll(async () => {
  await pki?.cleanup();
});

/** Writes a case file with mode 0600, as an admin who followed the README would. */
function file(name: string, content: string | Buffer, mode = 0o600): string {
  const p = join(work, name);
  writeFileSync(p, content, { mode });
  chmodSync(p, mode);
  return p;
}
const text = (p: string) => readFileSync(p, 'latin1');

function loadOne(path: string, passwordFile?: string): LoadedBundle {
  const r = loadPath(path, { passwordFile });
  expect(r.entries).toHaveLength(1);
  return r.entries[0]!;
}
const codes = (e: LoadedBundle, severity: 'error' | 'warning') => e.findings.filter((f) => f.severity === severity).map((f) => f.code);
const messages = (e: LoadedBundle) => e.findings.map((f) => f.message).join('\n');

async function check(...argv: string[]): Promise<{ code: number; out: string }> {
  let out = '';
  const code = await checkCert(argv, (s) => (out += s + '\n'));
  return { code, out };
}

function expectRefused(e: LoadedBundle, code: FindingCode) {
  expect(e.bundle).toBeUndefined();
  expect(codes(e, 'error')).toContain(code);
}

describe('loading the three PEM key forms', () => {
  it('loads a PKCS#8 RSA bundle with no findings beyond a clean bill', () => {
    const e = loadOne(leaves.good!.bundlePath);
    expect(e.bundle?.serial).toBe(leaves.good!.serial);
    expect(e.bundle?.mailboxes).toEqual(['billing@example.test']);
    expect(e.bundle?.chain).toHaveLength(1);
    expect(codes(e, 'error')).toEqual([]);
    expect(codes(e, 'warning')).toEqual([]);
    expect(e.details?.key.text).toBe('RSA 2048 bits');
    expect(e.details?.chain.status).toBe('root-omitted');
    expect(e.permissions.ok).toBe(true);
  });

  it('loads an EC P-256 bundle', () => {
    const e = loadOne(leaves.ec!.bundlePath);
    expect(e.bundle?.key.type).toBe('ec');
    expect(e.details?.key.curve).toBe('prime256v1');
    expect(codes(e, 'error')).toEqual([]);
  });

  it.each([
    ['trad-rsa', 'BEGIN RSA PRIVATE KEY'],
    ['trad-ec', 'BEGIN EC PRIVATE KEY'],
  ])('loads a traditional key (%s: %s)', (name, label) => {
    expect(text(leaves[name]!.bundlePath)).toContain(label);
    const e = loadOne(leaves[name]!.bundlePath);
    expect(e.bundle?.serial).toBe(leaves[name]!.serial);
    // Engines get PKCS#8 whatever the file held.
    expect((e.bundle?.key as FileKey).pem).toContain('BEGIN PRIVATE KEY');
  });

  it('accepts the key, leaf and chain in any order', () => {
    const l = leaves.good!;
    const p = file('reordered.pem', text(pki.intermediateCertPath) + text(l.certPath) + text(l.keyPath));
    const e = loadOne(p);
    expect(e.bundle?.serial).toBe(l.serial);
    expect(e.details?.chain.status).toBe('root-omitted');
  });
});

describe('encrypted keys', () => {
  it.each(['encrypted', 'trad-encrypted'])('decrypts %s with the password file (first line, newline ignored)', (name) => {
    const pw = file(`${name}.pw`, 'correct horse\n');
    const e = loadOne(leaves[name]!.bundlePath, pw);
    expect(e.bundle?.serial).toBe(leaves[name]!.serial);
    expect(codes(e, 'error')).toEqual([]);
  });

  it('without a password file, explains both ways out', () => {
    const e = loadOne(leaves.encrypted!.bundlePath);
    expectRefused(e, 'encrypted-key');
    expect(messages(e)).toContain('SMIME_RELAY_CERT_PASSWORD_FILE');
    expect(messages(e)).toContain('-noenc');
    expect(messages(e)).toContain(leaves.encrypted!.bundlePath);
  });

  it('with the wrong password, says the password file does not open it', () => {
    const pw = file('wrong.pw', 'battery staple\n');
    const e = loadOne(leaves.encrypted!.bundlePath, pw);
    expectRefused(e, 'wrong-password');
    expect(messages(e)).toContain(pw);
  });

  it('warns about a password file readable by others', () => {
    const pw = file('open.pw', 'correct horse\n', 0o644);
    const e = loadOne(leaves.encrypted!.bundlePath, pw);
    expect(e.bundle).toBeDefined();
    expect(e.findings.some((f) => f.code === 'permissions' && f.message.includes(pw) && f.message.includes('0644'))).toBe(true);
  });
});

describe('PKCS#12', () => {
  it('loads a .p12 with the password from the password file, chain included', async () => {
    const p12 = await leaves.good!.p12Path('vendor-pass');
    const e = loadOne(p12, file('p12.pw', 'vendor-pass\n'));
    expect(e.format).toBe('pkcs12');
    expect(e.bundle?.serial).toBe(leaves.good!.serial);
    expect(e.details?.chain.status).toBe('complete');
    expect(codes(e, 'error')).toEqual([]);
  });

  it('loads an old-style RC2/3DES .pfx, which OpenSSL 3 only reads with -legacy', async () => {
    const l = leaves.ec!;
    const pfx = join(work, 'legacy.pfx');
    await openssl(['pkcs12', '-export', '-legacy', '-inkey', l.keyPath, '-in', l.certPath, '-certfile', pki.chainPath, '-passout', 'pass:old', '-out', pfx]);
    chmodSync(pfx, 0o600);
    const e = loadOne(pfx, file('legacy.pw', 'old'));
    expect(e.bundle?.serial).toBe(l.serial);
  });

  it('without a password file, says to set SMIME_RELAY_CERT_PASSWORD_FILE', async () => {
    const e = loadOne(await leaves.good!.p12Path('vendor-pass'));
    expectRefused(e, 'pkcs12');
    expect(messages(e)).toContain('SMIME_RELAY_CERT_PASSWORD_FILE');
  });

  it('with the wrong password, names the password file', async () => {
    const pw = file('p12-wrong.pw', 'nope\n');
    const e = loadOne(await leaves.good!.p12Path('vendor-pass'), pw);
    expectRefused(e, 'wrong-password');
    expect(messages(e)).toContain(pw);
  });

  it('a PKCS#12 file named .pem is called binary, and the message says how to use it directly', async () => {
    const p = file('vendor.pem', readFileSync(await leaves.good!.p12Path('vendor-pass')));
    const e = loadOne(p);
    expectRefused(e, 'binary');
    expect(messages(e)).toContain(`path '${p}' appears to be binary. I need a PEM file that includes 'BEGIN PRIVATE KEY' and 'BEGIN CERTIFICATE' sections.`);
    expect(messages(e)).toContain('PKCS#12');
    expect(messages(e)).toContain('SMIME_RELAY_CERT_PASSWORD_FILE');
  });
});

describe('refusals, each with its own message', () => {
  it('a DER certificate is binary, with the conversion command', async () => {
    const der = join(work, 'leaf.der');
    await openssl(['x509', '-in', leaves.good!.certPath, '-outform', 'DER', '-out', der]);
    const e = loadOne(der);
    expectRefused(e, 'binary');
    expect(messages(e)).toContain(`path '${der}' appears to be binary. I need a PEM file that includes 'BEGIN PRIVATE KEY' and 'BEGIN CERTIFICATE' sections.`);
    expect(messages(e)).toContain('openssl x509 -inform DER');
  });

  it('a certificate without its key', () => {
    const e = loadOne(file('cert-only.pem', text(leaves.good!.certPath) + text(pki.intermediateCertPath)));
    expectRefused(e, 'no-key');
    expect(messages(e)).toContain("'BEGIN PRIVATE KEY'");
    // The mailbox is still known, so the store can answer "unavailable" rather than "unknown".
    expect(e.mailboxes).toEqual(['billing@example.test']);
  });

  it('a key without its certificate', () => {
    const e = loadOne(file('key-only.pem', text(leaves.good!.keyPath)));
    expectRefused(e, 'no-cert');
    expect(messages(e)).toContain("'BEGIN CERTIFICATE'");
  });

  it('a key that belongs to another certificate: "does not match"', () => {
    const e = loadOne(file('mismatch.pem', text(leaves.other!.keyPath) + text(leaves.good!.certPath) + text(pki.intermediateCertPath)));
    expectRefused(e, 'key-mismatch');
    expect(messages(e)).toContain('does not match');
    expect(messages(e)).toContain(leaves.good!.serial);
  });

  it('a TLS certificate (EKU serverAuth, no emailProtection)', () => {
    const e = loadOne(leaves['tls-eku']!.bundlePath);
    expectRefused(e, 'eku');
    expect(messages(e)).toContain('emailProtection');
  });

  it('key usage present without digitalSignature', () => {
    const e = loadOne(leaves['ku-no-sign']!.bundlePath);
    expectRefused(e, 'key-usage');
    expect(messages(e)).toContain('digitalSignature');
  });

  it('no mailbox in SAN or subject', () => {
    const e = loadOne(leaves['no-mailbox']!.bundlePath);
    expectRefused(e, 'no-mailbox');
  });

  it('RSA under 2048 bits', () => {
    const e = loadOne(leaves.rsa1024!.bundlePath);
    expectRefused(e, 'weak-key');
    expect(messages(e)).toContain('1024 bits');
  });

  it('a SHA-1 signed certificate, because Thunderbird rejects it', () => {
    const e = loadOne(leaves.sha1!.bundlePath);
    expectRefused(e, 'sha1');
    expect(messages(e)).toContain('Thunderbird');
  });

  it('an RSA-PSS key and certificate, because gpgsm rejects PSS', () => {
    const e = loadOne(leaves.pss!.bundlePath);
    expectRefused(e, 'pss');
    expect(messages(e)).toContain('gpgsm');
  });

  it('a file cut off in the middle (still being written) is never used', () => {
    const full = text(leaves.good!.bundlePath);
    const e = loadOne(file('half.pem', full.slice(0, full.length - 200)));
    expectRefused(e, 'truncated');
    expect(e.bundle).toBeUndefined();
  });

  it('an empty file and a plain text file', () => {
    expectRefused(loadOne(file('empty.pem', '')), 'no-key');
    expectRefused(loadOne(file('notes.pem', 'the cert is in the other folder\n')), 'no-key');
  });

  it('a path that does not exist', () => {
    expectRefused(loadOne(join(work, 'nope.pem')), 'not-found');
  });
});

describe('warnings: it can sign, but someone should know', () => {
  it('no extended key usage at all', () => {
    const e = loadOne(leaves['no-eku']!.bundlePath);
    expect(e.bundle).toBeDefined();
    expect(codes(e, 'warning')).toContain('eku');
  });

  it('no key usage extension (Apple Mail)', () => {
    const e = loadOne(leaves['no-ku']!.bundlePath);
    expect(e.bundle).toBeDefined();
    expect(e.findings.find((f) => f.code === 'key-usage')?.message).toContain('Apple Mail');
  });

  it('the mailbox may come from the subject emailAddress alone, lower-cased', () => {
    const e = loadOne(leaves['subject-email']!.bundlePath);
    expect(e.bundle?.mailboxes).toEqual(['legacy@example.test']);
  });

  it('a bundle readable by others', () => {
    const p = file('world.pem', text(leaves.good!.bundlePath), 0o644);
    const e = loadOne(p);
    expect(e.bundle).toBeDefined();
    expect(e.permissions.ok).toBe(false);
    expect(e.findings.find((f) => f.code === 'permissions')?.message).toContain(`chmod 600 '${p}'`);
  });

  it.skipIf(process.getuid?.() !== 0)('a bundle owned by another user (needs root to chown)', () => {
    const p = file('foreign.pem', text(leaves.good!.bundlePath));
    chownSync(p, 65534, 65534);
    const e = loadOne(p);
    expect(e.bundle).toBeDefined();
    expect(e.permissions.ok).toBe(false);
    expect(e.findings.find((f) => f.code === 'permissions')?.message).toContain('owned by uid 65534');
  });

  it('a leaf without its intermediate', () => {
    const l = leaves.good!;
    const e = loadOne(file('leaf-only.pem', text(l.keyPath) + text(l.certPath)));
    expect(e.bundle).toBeDefined();
    expect(e.details?.chain.status).toBe('leaf-only');
    expect(e.findings.find((f) => f.code === 'chain')?.message).toContain('Outlook');
  });

  it('a chain that does not lead from the leaf (the root instead of the intermediate)', () => {
    const l = leaves.good!;
    const e = loadOne(file('wrong-chain.pem', text(l.keyPath) + text(l.certPath) + text(pki.rootCertPath)));
    expect(e.bundle).toBeDefined();
    expect(e.details?.chain.status).toBe('broken');
    expect(codes(e, 'warning')).toContain('chain');
  });

  it('expired and not-yet-valid bundles load (the clock decides at use) and check-cert refuses them', async () => {
    expect(loadOne(leaves.expired!.bundlePath).bundle).toBeDefined();
    const expired = await check(leaves.expired!.bundlePath);
    expect(expired.code).toBe(1);
    expect(expired.out).toContain('expired');
    const future = await check(leaves.future!.bundlePath);
    expect(future.code).toBe(1);
    expect(future.out).toContain('not yet valid');
  });
});

describe('directories', () => {
  it('loads every bundle, skips dotfiles and non-certificate files with a note', () => {
    const dir = join(work, 'dir');
    mkdirSync(dir);
    copyFileSync(leaves.good!.bundlePath, join(dir, 'billing.pem'));
    copyFileSync(leaves.ec!.bundlePath, join(dir, 'security.pem'));
    copyFileSync(leaves.good!.bundlePath, join(dir, '.hidden.pem'));
    writeFileSync(join(dir, 'README'), 'billing and security certificates\n');
    symlinkSync(join(dir, 'security.pem'), join(dir, 'security-link.pem'));
    for (const n of ['billing.pem', 'security.pem']) chmodSync(join(dir, n), 0o600);
    const r = loadPath(dir);
    expect(r.mode).toBe('directory');
    expect(r.entries.map((e) => e.source.slice(dir.length + 1))).toEqual(['billing.pem', 'security-link.pem', 'security.pem']);
    expect(r.entries.every((e) => e.bundle)).toBe(true);
    expect(r.skipped.map((s) => s.source)).toEqual([join(dir, 'README')]);
  });
});

describe('smime-relay check-cert', () => {
  it('prints what the admin needs and exits 0 for a good bundle', async () => {
    const { code, out } = await check(leaves.good!.bundlePath);
    expect(code).toBe(0);
    for (const s of ['billing@example.test', leaves.good!.serial, 'CN=Test Intermediate CA', 'RSA 2048 bits', 'day(s) left', 'root-omitted', 'permissions:  ok', 'can sign']) {
      expect(out).toContain(s);
    }
  });

  it('exits non-zero and says "binary" for a DER file', async () => {
    const der = join(work, 'check.der');
    await openssl(['x509', '-in', leaves.good!.certPath, '-outform', 'DER', '-out', der]);
    const { code, out } = await check(der);
    expect(code).toBe(1);
    expect(out).toContain('binary');
  });

  it('exits non-zero and says "does not match" for a mismatched key', async () => {
    const p = file('check-mismatch.pem', text(leaves.other!.keyPath) + text(leaves.good!.certPath));
    const { code, out } = await check(p);
    expect(code).toBe(1);
    expect(out).toContain('does not match');
  });

  it('reads PKCS#12 with --password-file', async () => {
    const pw = file('check.pw', 'vendor-pass\n');
    const p12 = await leaves.good!.p12Path('vendor-pass');
    expect((await check(p12, '--password-file', pw)).code).toBe(0);
    expect((await check(p12, `--password-file=${pw}`)).code).toBe(0);
    expect((await check(p12)).code).toBe(1);
  });

  it('--json gives machine output with the same verdicts', async () => {
    const { code, out } = await check('--json', leaves.expired!.bundlePath);
    expect(code).toBe(1);
    const j = JSON.parse(out);
    expect(j.ok).toBe(false);
    expect(j.certificates).toHaveLength(1);
    const c = j.certificates[0];
    expect(c).toMatchObject({ canSign: false, serial: leaves.expired!.serial, mailboxes: ['notifications@example.test'], key: { type: 'RSA', bits: 2048 } });
    expect(c.errors.map((e: { code: string }) => e.code)).toEqual(['expired']);
    expect(c.daysLeft).toBeLessThan(0);
    expect(new Date(c.notAfter).getTime()).toBeLessThan(Date.now());
  });

  it('in a directory, an expired certificate beside its valid renewal is only a warning', async () => {
    const dir = join(work, 'renewal');
    mkdirSync(dir);
    copyFileSync(leaves.expired!.bundlePath, join(dir, '2024.pem'));
    copyFileSync(leaves['trad-rsa']!.bundlePath, join(dir, '2025.pem'));
    const { code, out } = await check(dir, '--json');
    const j = JSON.parse(out);
    expect(code).toBe(0);
    expect(j.ok).toBe(true);
    expect(j.certificates.map((c: { canSign: boolean }) => c.canSign)).toEqual([false, true]);
    expect(j.certificates[0].superseded).toBe(true);
    expect(j.certificates[0].warnings.map((w: { code: string }) => w.code)).toContain('expired');
  });

  it('--help exits 0, a usage error exits 2', async () => {
    expect((await check('--help')).out).toContain('Usage: smime-relay check-cert PATH');
    expect((await check()).code).toBe(2);
    expect((await check('--bogus', 'x')).code).toBe(2);
  });
});
