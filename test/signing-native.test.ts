import { spawnSync } from 'node:child_process';
import { X509Certificate, generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { assembleBundle, type CertificateBundle } from '../src/certs/bundle.js';
import { loadPath } from '../src/certs/load.js';
import { NativeEngine, encodeTime } from '../src/signing/native.js';
import { OpensslEngine } from '../src/signing/openssl.js';

// A self-contained PKI (root → intermediate → leaves) made with the openssl CLI, so that nothing
// the engine parses was produced by the code under test.

let dir: string;
let rootCrt: string;
let intCrt: string;
const bundles: Record<'rsa' | 'ec', CertificateBundle> = {} as never;
const native = new NativeEngine();
const openssl = new OpensslEngine();

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): { code: number; out: string } {
  // stdin from /dev/null: certutil and gpgsm otherwise wait for a passphrase that never comes.
  const r = spawnSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env, timeout: 30_000 });
  if (r.error) throw r.error;
  return { code: r.status ?? -1, out: r.stdout.toString('latin1') + r.stderr.toString('latin1') };
}

function mustRun(cmd: string, args: string[], env?: NodeJS.ProcessEnv): string {
  const r = run(cmd, args, env);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed:\n${r.out}`);
  return r.out;
}

function issue(name: string, subject: string, keyArgs: string[], signer: string, ext: string): void {
  const p = (s: string) => join(dir, `${name}.${s}`);
  writeFileSync(p('ext'), ext);
  mustRun('openssl', ['req', '-new', '-newkey', ...keyArgs, '-nodes', '-keyout', p('key'), '-out', p('csr'), '-subj', subject]);
  mustRun('openssl', [
    'x509', '-req', '-in', p('csr'), '-CA', join(dir, `${signer}.crt`), '-CAkey', join(dir, `${signer}.key`),
    '-set_serial', `0x${randomBytes(12).toString('hex')}`, '-days', '2', '-extfile', p('ext'), '-out', p('crt'),
  ]);
}

const LEAF_EXT = (email: string) =>
  'basicConstraints=CA:false\nkeyUsage=critical,digitalSignature,keyEncipherment\n' +
  `extendedKeyUsage=emailProtection\nsubjectAltName=email:${email}\n`;

/** Independent verifier 1: OpenSSL, the way `openssl cms -verify` would check a mail. */
function verifyOpenssl(sig: string, content: string): { ok: boolean; out: string } {
  const r = run('openssl', [
    'cms', '-verify', '-binary', '-inform', 'DER', '-in', sig, '-content', content,
    '-CAfile', rootCrt, '-purpose', 'smimesign', '-out', join(dir, 'verified.out'),
  ]);
  return { ok: r.code === 0 && /Verification successful/.test(r.out), out: r.out };
}

/** Independent verifier 2: gpgsm (KMail, Evolution), with its own fresh home and the root trusted. */
let gnupgHome: string;
function verifyGpgsm(sig: string, content: string): { ok: boolean; out: string } {
  const r = run('gpgsm', ['--batch', '--status-fd', '1', '--verify', sig, content], { ...process.env, GNUPGHOME: gnupgHome });
  return { ok: /\[GNUPG:\] GOODSIG/.test(r.out) && /\[GNUPG:\] TRUST_FULLY/.test(r.out), out: r.out };
}

/** Independent verifier 3: NSS cmsutil (Thunderbird), usage 4 = email signer. */
let nssDb: string;
function verifyNss(sig: string, content: string): { ok: boolean; out: string } {
  // With -h the exit code is 0 even on failure; the status line is the verdict.
  const r = run('cmsutil', ['-D', '-i', sig, '-c', content, '-d', `sql:${nssDb}`, '-u', '4', '-h', '1']);
  return { ok: /signer0\.status=GoodSignature/.test(r.out), out: r.out };
}

function write(name: string, data: Buffer): string {
  const path = join(dir, name);
  writeFileSync(path, data);
  return path;
}

function cmsPrint(sig: string): string {
  return mustRun('openssl', ['cms', '-cmsout', '-print', '-inform', 'DER', '-in', sig]);
}

/** Attribute types (OIDs) inside signedAttrs of `openssl cms -cmsout -print` output. */
function signedAttributeTypes(print: string): string[] {
  const start = print.indexOf('signedAttrs:');
  const end = print.indexOf('signatureAlgorithm:', start);
  expect(start).toBeGreaterThan(0);
  return [...print.slice(start, end).matchAll(/^\s*object: .*\(([\d.]+)\)\s*$/gm)].map((m) => m[1]!).sort();
}

function embeddedCertificates(sig: string): X509Certificate[] {
  const pem = mustRun('openssl', ['pkcs7', '-inform', 'DER', '-in', sig, '-print_certs']);
  return [...pem.matchAll(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g)].map((m) => new X509Certificate(m[0]));
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'native-signing-'));
  rootCrt = join(dir, 'root.crt');
  intCrt = join(dir, 'int.crt');
  mustRun('openssl', [
    'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', join(dir, 'root.key'), '-out', rootCrt,
    '-subj', '/CN=Native Test Root', '-days', '2',
    '-addext', 'basicConstraints=critical,CA:true', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
  ]);
  issue('int', '/CN=Native Test Intermediate', ['rsa:2048'], 'root',
    'basicConstraints=critical,CA:true,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n');
  issue('rsa', '/CN=RSA Sender/emailAddress=rsa@example.test', ['rsa:2048'], 'int', LEAF_EXT('rsa@example.test'));
  issue('ec', '/CN=EC Sender/emailAddress=ec@example.test', ['ec', '-pkeyopt', 'ec_paramgen_curve:P-256'], 'int', LEAF_EXT('ec@example.test'));
  for (const kind of ['rsa', 'ec'] as const) {
    const path = join(dir, `${kind}.bundle.pem`);
    writeFileSync(path, [`${kind}.key`, `${kind}.crt`, 'int.crt'].map((f) => readFileSync(join(dir, f), 'latin1')).join(''));
    bundles[kind] = loadPath(path).entries[0]!.bundle!;
  }

  gnupgHome = join(dir, 'gnupg');
  mkdirSync(gnupgHome, { mode: 0o700 });
  const gpgEnv = { ...process.env, GNUPGHOME: gnupgHome };
  writeFileSync(join(gnupgHome, 'gpgsm.conf'), 'disable-crl-checks\n');
  writeFileSync(join(gnupgHome, 'trustlist.txt'), `${new X509Certificate(readFileSync(rootCrt)).fingerprint} S\n`);
  mustRun('gpgsm', ['--batch', '--import', rootCrt], gpgEnv);

  nssDb = join(dir, 'nss');
  mkdirSync(nssDb);
  mustRun('certutil', ['-N', '-d', `sql:${nssDb}`, '--empty-password']);
  mustRun('certutil', ['-A', '-d', `sql:${nssDb}`, '-n', 'root', '-t', 'C,C,C', '-i', rootCrt]);
});

afterAll(async () => {
  await native.close();
  await openssl.close();
  // gpgsm may have started an agent in this home; ask it to go before the directory does.
  if (gnupgHome) run('gpgconf', ['--kill', 'all'], { ...process.env, GNUPGHOME: gnupgHome });
  if (dir) rmSync(dir, { recursive: true, force: true });
});

// CRLF MIME text as the relay hands it over, plus a line with a trailing blank that must survive.
const CONTENT = Buffer.from(
  'Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n\r\n' +
    'Quarterly numbers attached.\r\nSecond line =20\r\n',
);

describe.each(['rsa', 'ec'] as const)('native engine with an %s leaf and an intermediate', (kind) => {
  let sigPath: string;
  let contentPath: string;
  let print: string;

  beforeAll(async () => {
    const sig = await native.sign(CONTENT, bundles[kind]);
    sigPath = write(`${kind}.native.p7s`, sig);
    contentPath = write(`${kind}.content`, CONTENT);
    print = cmsPrint(sigPath);
  });

  it('verifies in OpenSSL against the root with purpose smimesign, over the exact content bytes', () => {
    const r = verifyOpenssl(sigPath, contentPath);
    expect(r.ok, r.out).toBe(true);
    expect(readFileSync(join(dir, 'verified.out')).equals(CONTENT)).toBe(true);
  });

  it('verifies in gpgsm with a good signature from a fully trusted chain', () => {
    const r = verifyGpgsm(sigPath, contentPath);
    expect(r.ok, r.out).toBe(true);
  });

  it('verifies in NSS cmsutil as an email signer', () => {
    const r = verifyNss(sigPath, contentPath);
    expect(r.ok, r.out).toBe(true);
  });

  it('fails in all three verifiers when one byte of the content changes', () => {
    const tampered = Buffer.from(CONTENT);
    const at = tampered.length - 5;
    tampered[at] = tampered[at]! ^ 0x01;
    const bad = write(`${kind}.tampered`, tampered);
    expect(verifyOpenssl(sigPath, bad).ok).toBe(false);
    expect(verifyGpgsm(sigPath, bad).ok).toBe(false);
    expect(verifyNss(sigPath, bad).ok).toBe(false);
  });

  it('carries the same signed attribute types as the openssl engine', async () => {
    const reference = cmsPrint(write(`${kind}.openssl.p7s`, await openssl.sign(CONTENT, bundles[kind])));
    const types = signedAttributeTypes(print);
    expect(types).toEqual(signedAttributeTypes(reference));
    expect(types).toEqual(
      [
        '1.2.840.113549.1.9.3', // contentType
        '1.2.840.113549.1.9.4', // messageDigest
        '1.2.840.113549.1.9.5', // signingTime
        '1.2.840.113549.1.9.15', // smimeCapabilities
      ].sort(),
    );
  });

  it('is detached SHA-256 with the expected signature algorithm, signer by issuer and serial', () => {
    expect(print).toMatch(/eContentType: pkcs7-data \(1\.2\.840\.113549\.1\.7\.1\)\s+eContent: <ABSENT>/);
    expect(print).toMatch(/digestAlgorithms:\s+algorithm: sha256 /);
    // openssl prints serials that fit its integer type in decimal, longer ones in hex.
    const serial = BigInt(`0x${bundles[kind].serial}`);
    const sid = /d\.issuerAndSerialNumber:\s+issuer: (.*)\s+serialNumber: (\S+)/.exec(print);
    expect(sid).not.toBeNull();
    expect(sid![1]).toBe('CN=Native Test Intermediate');
    expect(BigInt(sid![2]!)).toBe(serial);
    expect(print).toContain(kind === 'rsa' ? 'algorithm: rsaEncryption (1.2.840.113549.1.1.1)' : 'algorithm: ecdsa-with-SHA256');
    expect(print).toContain('OBJECT:pkcs7-data');
    const time = /UTCTIME:(\w{3} +\d+ [\d:]+ \d{4}) GMT/.exec(print);
    expect(time).not.toBeNull();
    expect(Math.abs(Date.parse(`${time![1]} UTC`) - Date.now())).toBeLessThan(5 * 60_000);
  });

  it('embeds the leaf and the intermediate certificate', () => {
    const fingerprints = embeddedCertificates(sigPath).map((c) => c.fingerprint256).sort();
    expect(fingerprints).toEqual([bundles[kind].leaf.fingerprint256, new X509Certificate(readFileSync(intCrt)).fingerprint256].sort());
  });
});

describe('native engine, other content and concurrency', () => {
  it('signs a 1 MB binary body and many concurrent messages that each verify on their own', async () => {
    const contents = [randomBytes(1 << 20), ...Array.from({ length: 24 }, (_, i) => Buffer.from(`message ${i}\r\n`))];
    const sigs = await Promise.all(contents.map((c, i) => native.sign(c, bundles[i % 2 ? 'ec' : 'rsa'])));
    for (const i of [0, 1, 2, 23]) {
      const r = verifyOpenssl(write(`many-${i}.p7s`, sigs[i]!), write(`many-${i}.content`, contents[i]!));
      expect(r.ok, r.out).toBe(true);
    }
  });

  it('refuses a key type that the verifiers do not accept, with a SigningError', async () => {
    const { privateKey } = generateKeyPairSync('ed25519');
    // assembleBundle insists on a matching certificate, so pair the key with its own self-signed one.
    const keyPath = write('ed.key', Buffer.from(privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()));
    const crt = join(dir, 'ed.crt');
    mustRun('openssl', ['req', '-x509', '-key', keyPath, '-out', crt, '-subj', '/CN=Ed', '-days', '1']);
    const bundle = assembleBundle('ed-bundle', privateKey, [new X509Certificate(readFileSync(crt))]);
    await expect(native.sign(CONTENT, bundle)).rejects.toMatchObject({ name: 'SigningError', message: /ed25519/ });
  });

  it('writes UTCTime until 2049 and GeneralizedTime from 2050 (RFC 5652 §11.3)', () => {
    expect(encodeTime(new Date(Date.UTC(2049, 11, 31, 23, 59, 59))).toString('latin1')).toBe('\x17\x0d491231235959Z');
    expect(encodeTime(new Date(Date.UTC(2050, 0, 1, 0, 0, 0))).toString('latin1')).toBe('\x18\x0f20500101000000Z');
  });

  it('reports a rough per-signature time for native and openssl (printed, not asserted)', async () => {
    // Fewer openssl runs: each is a process start, and the figure settles quickly.
    const time = async (engine: NativeEngine | OpensslEngine, kind: 'rsa' | 'ec', n: number, concurrent: boolean) => {
      await engine.sign(CONTENT, bundles[kind]); // warm the per-bundle cache
      const t0 = performance.now();
      if (concurrent) await Promise.all(Array.from({ length: n }, () => engine.sign(CONTENT, bundles[kind])));
      else for (let i = 0; i < n; i++) await engine.sign(CONTENT, bundles[kind]);
      return `${((performance.now() - t0) / n).toFixed(3)} ms`;
    };
    for (const kind of ['rsa', 'ec'] as const) {
      console.log(
        `[signing ${kind}] native x200: ${await time(native, kind, 200, false)} sequential, ` +
          `${await time(native, kind, 200, true)} each concurrent; openssl x50: ${await time(openssl, kind, 50, false)} sequential, ` +
          `${await time(openssl, kind, 50, true)} each concurrent`,
      );
    }
  }, 120_000);
});
