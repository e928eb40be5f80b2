import { spawnSync } from 'node:child_process';
import { X509Certificate, createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as asn1js from 'asn1js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { assembleBundle, type CertificateBundle } from '../src/certs/bundle.js';
import { loadPath } from '../src/certs/load.js';
import { NativeEngine, encodeTime, tlv } from '../src/signing/native.js';
import { readSignedData } from '../src/verify/signed-data.js';
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

const OIDS = {
  contentType: '1.2.840.113549.1.9.3',
  messageDigest: '1.2.840.113549.1.9.4',
  signingTime: '1.2.840.113549.1.9.5',
  smimeCapabilities: '1.2.840.113549.1.9.15',
  signingCertificateV2: '1.2.840.113549.1.9.16.2.47',
  encryptionKeyPreference: '1.2.840.113549.1.9.16.2.11',
} as const;

const raw = (node: asn1js.BaseBlock): string => Buffer.from(node.valueBeforeDecodeView).toString('hex');
const children = (node: asn1js.BaseBlock): asn1js.BaseBlock[] => (node as asn1js.Constructed).valueBlock.value;

function decode(der: Uint8Array): asn1js.BaseBlock {
  const parsed = asn1js.fromBER(der);
  if (parsed.offset === -1) throw new Error(`not DER: ${parsed.result.error}`);
  return parsed.result;
}

/** The signed attributes of the (only) SignerInfo, each as its DER bytes, in the order on the wire. */
function signedAttributes(contentInfo: Buffer): Buffer[] {
  // ContentInfo → [0] → SignedData { version, digestAlgorithms, encapContentInfo, [0] certificates, signerInfos }
  const signedData = children(children(children(decode(contentInfo))[1]!)[0]!);
  const signerInfos = signedData[signedData.length - 1]!;
  // SignerInfo { version, sid, digestAlgorithm, [0] IMPLICIT signedAttrs, ... }
  const signedAttrs = children(children(signerInfos)[0]!)[3]!;
  expect(signedAttrs.idBlock.tagClass).toBe(3);
  expect(signedAttrs.idBlock.tagNumber).toBe(0);
  return children(signedAttrs).map((a) => Buffer.from(a.valueBeforeDecodeView));
}

const attributeType = (attribute: Buffer): string => (children(decode(attribute))[0] as asn1js.ObjectIdentifier).valueBlock.toString();
const attributeValues = (attribute: Buffer): asn1js.BaseBlock[] => children(children(decode(attribute))[1]!);
const attributeValue = (attribute: Buffer): asn1js.BaseBlock => attributeValues(attribute)[0]!;

/** The issuer Name and serial INTEGER of a certificate, as DER hex, read from its TBSCertificate. */
function issuerAndSerial(certificate: Buffer): { issuer: string; serial: string } {
  // TBSCertificate { [0] version, serialNumber, signature, issuer, ... }
  const tbs = children(children(decode(certificate))[0]!);
  return { serial: raw(tbs[1]!), issuer: raw(tbs[3]!) };
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

  it('writes each common signed attribute byte for byte as `openssl cms -sign -cades` does, in DER SET OF order', async () => {
    // openssl's own signature over the same content, without its legacy capability list; its
    // signingTime is then given to the native engine, so every common attribute must match exactly.
    const reference = join(dir, `${kind}.reference.p7s`);
    mustRun('openssl', [
      'cms', '-sign', '-cades', '-nosmimecap', '-binary', '-md', 'sha256', '-in', contentPath,
      '-signer', join(dir, `${kind}.crt`), '-inkey', join(dir, `${kind}.key`), '-certfile', intCrt, '-outform', 'DER', '-out', reference,
    ]);
    const expected = signedAttributes(readFileSync(reference));
    const time = attributeValue(expected.find((a) => attributeType(a) === OIDS.signingTime)!);
    const pinned = new NativeEngine({ now: () => (time as asn1js.UTCTime).toDate() });
    const ours = write(`${kind}.pinned.p7s`, await pinned.sign(CONTENT, bundles[kind]));
    const written = signedAttributes(readFileSync(ours));

    expect(expected.map(attributeType)).toEqual([OIDS.contentType, OIDS.signingTime, OIDS.messageDigest, OIDS.signingCertificateV2]);
    for (const attribute of expected) {
      expect(written.find((a) => attributeType(a) === attributeType(attribute))?.toString('hex'), attributeType(attribute)).toBe(attribute.toString('hex'));
    }
    // The order is the one openssl writes when it encodes this very set: it sorts a DER SET OF by
    // encoding on output, so an unsorted set comes back in another order.
    const reencoded = join(dir, `${kind}.reencoded.p7s`);
    mustRun('openssl', ['cms', '-cmsout', '-inform', 'DER', '-outform', 'DER', '-in', ours, '-out', reencoded]);
    expect(Buffer.concat(written).toString('hex')).toBe(Buffer.concat(signedAttributes(readFileSync(reencoded))).toString('hex'));
    // The pinned signature is a real one too.
    expect(verifyOpenssl(ours, contentPath).ok).toBe(true);
  });

  it('carries the RFC 8551 §2.5 signed attributes, each once, each with the right value', () => {
    const attributes = signedAttributes(readFileSync(sigPath));
    const byType = new Map(attributes.map((a) => [attributeType(a), a]));
    expect(attributes.map(attributeType).sort()).toEqual(
      [OIDS.contentType, OIDS.messageDigest, OIDS.signingTime, OIDS.smimeCapabilities, OIDS.signingCertificateV2, OIDS.encryptionKeyPreference].sort(),
    );
    for (const a of attributes) expect(attributeValues(a), attributeType(a)).toHaveLength(1);
    const value = (type: string) => attributeValue(byType.get(type)!);

    // contentType: id-data, the type of the detached content (RFC 5652 §11.1).
    expect((value(OIDS.contentType) as asn1js.ObjectIdentifier).valueBlock.toString()).toBe('1.2.840.113549.1.7.1');
    // messageDigest: SHA-256 of exactly the signed bytes (RFC 5652 §11.2).
    expect(Buffer.from((value(OIDS.messageDigest) as asn1js.OctetString).valueBlock.valueHexView).toString('hex')).toBe(createHash('sha256').update(CONTENT).digest('hex'));
    // signingTime: now, as UTCTime (RFC 5652 §11.3); Thunderbird compares it with Date:.
    const signingTime = value(OIDS.signingTime);
    expect(signingTime).toBeInstanceOf(asn1js.UTCTime);
    expect(Math.abs((signingTime as asn1js.UTCTime).toDate().getTime() - Date.now())).toBeLessThan(5 * 60_000);
    // smimeCapabilities: AES-256, -192 and -128 CBC, strongest first, no parameters (RFC 8551 §2.5.2).
    const capabilities = (value(OIDS.smimeCapabilities) as asn1js.Sequence).valueBlock.value.map((c) => {
      const parts = (c as asn1js.Sequence).valueBlock.value;
      expect(parts).toHaveLength(1);
      return (parts[0] as asn1js.ObjectIdentifier).valueBlock.toString();
    });
    expect(capabilities).toEqual(['2.16.840.1.101.3.4.1.42', '2.16.840.1.101.3.4.1.22', '2.16.840.1.101.3.4.1.2']);

    const leaf = bundles[kind].leaf;
    const { issuer, serial } = issuerAndSerial(leaf.raw);
    // signingCertificateV2 (RFC 5035 §3): one ESSCertIDv2 for the signer certificate, hashAlgorithm
    // absent (DEFAULT sha256), certHash = SHA-256 of the certificate, issuerSerial = its issuer as a
    // directoryName and its serial; no policies.
    const signingCertificate = value(OIDS.signingCertificateV2) as asn1js.Sequence;
    expect(signingCertificate.valueBlock.value).toHaveLength(1);
    const certIds = signingCertificate.valueBlock.value[0] as asn1js.Sequence;
    expect(certIds.valueBlock.value).toHaveLength(1);
    const [certHash, issuerSerial, ...more] = (certIds.valueBlock.value[0] as asn1js.Sequence).valueBlock.value;
    expect(more).toHaveLength(0);
    expect(certHash).toBeInstanceOf(asn1js.OctetString);
    expect(Buffer.from((certHash as asn1js.OctetString).valueBlock.valueHexView).toString('hex')).toBe(createHash('sha256').update(leaf.raw).digest('hex'));
    const [generalNames, issuerSerialNumber] = (issuerSerial as asn1js.Sequence).valueBlock.value;
    const directoryName = (generalNames as asn1js.Sequence).valueBlock.value;
    expect(directoryName).toHaveLength(1);
    expect(directoryName[0]!.idBlock.tagClass).toBe(3); // context-specific
    expect(directoryName[0]!.idBlock.tagNumber).toBe(4); // [4] directoryName
    expect(raw((directoryName[0] as asn1js.Constructed).valueBlock.value[0]!)).toBe(issuer);
    expect(raw(issuerSerialNumber!)).toBe(serial);
    // SMIMEEncryptionKeyPreference (RFC 8551 §2.5.3): the signer's own certificate, as
    // issuerAndSerialNumber [0] IMPLICIT.
    const preference = value(OIDS.encryptionKeyPreference) as asn1js.Constructed;
    expect(preference.idBlock.tagClass).toBe(3);
    expect(preference.idBlock.tagNumber).toBe(0);
    expect(preference.valueBlock.value.map(raw)).toEqual([issuer, serial]);
  });

  it('matches the openssl engine (-cades) in signingCertificateV2; only the native engine adds SMIMEEncryptionKeyPreference', async () => {
    const theirs = signedAttributes(await openssl.sign(CONTENT, bundles[kind]));
    const ours = signedAttributes(readFileSync(sigPath));
    const pick = (list: Buffer[], type: string) => list.find((a) => attributeType(a) === type)?.toString('hex');
    expect(pick(theirs, OIDS.signingCertificateV2)).toBeDefined();
    expect(pick(theirs, OIDS.signingCertificateV2)).toBe(pick(ours, OIDS.signingCertificateV2));
    expect(pick(theirs, OIDS.encryptionKeyPreference)).toBeUndefined();
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
    expect(encodeTime(new Date(Date.UTC(1950, 0, 1, 0, 0, 0))).toString('latin1')).toBe('\x17\x0d500101000000Z');
    expect(encodeTime(new Date(Date.UTC(1949, 11, 31, 23, 59, 59))).toString('latin1')).toBe('\x18\x0f19491231235959Z');
    const early = new Date(Date.UTC(2000, 0, 2, 3, 4, 5));
    early.setUTCFullYear(999);
    expect(encodeTime(early).toString('latin1')).toBe('\x18\x0f09990102030405Z');
  });

  it('writes each DER length in its shortest form (X.690 §8.1.3), 0x80 and up in the long form', () => {
    const header = (n: number) => tlv(0x04, Buffer.alloc(n)).subarray(0, 6).toString('hex');
    expect(header(0x7f).slice(0, 4)).toBe('047f');
    expect(header(0x80).slice(0, 6)).toBe('048180');
    expect(header(0xff).slice(0, 6)).toBe('0481ff');
    expect(header(0x100).slice(0, 8)).toBe('04820100');
    expect(header(0xffff).slice(0, 8)).toBe('0482ffff');
    expect(header(0x10000).slice(0, 10)).toBe('0483010000');
    expect(header(0xffffff).slice(0, 10)).toBe('0483ffffff');
    expect(header(0x1000000)).toBe('048401000000');
    // The parts are concatenated after the header, whole.
    expect(tlv(0x30, Buffer.from([1, 2]), Buffer.from([3])).toString('hex')).toBe('3003010203');
  });

  it('embeds each certificate once, in DER SET OF order, when the PEM file repeats them', async () => {
    const path = join(dir, 'repeated.bundle.pem');
    writeFileSync(path, ['rsa.key', 'rsa.crt', 'int.crt', 'int.crt', 'rsa.crt'].map((f) => readFileSync(join(dir, f), 'latin1')).join(''));
    const bundle = loadPath(path).entries[0]!.bundle!;
    const certificates = readSignedData(await native.sign(CONTENT, bundle)).certificates.map((c) => Buffer.from(c));
    expect(certificates).toHaveLength(2);
    expect([...certificates].sort(Buffer.compare)).toEqual(certificates);
    // The engine collects the leaf first; this RSA leaf's DER is longer than the intermediate's,
    // so DER order differs from that, and an unsorted set would show here.
    expect(new X509Certificate(certificates[0]!).subject).toContain('Intermediate');
    expect(certificates.map((c) => new X509Certificate(c).fingerprint256).sort()).toEqual(
      [bundles.rsa.leaf.fingerprint256, new X509Certificate(readFileSync(intCrt)).fingerprint256].sort(),
    );
  });
});
