import { createHash, createPrivateKey, generateKeyPairSync, sign as cryptoSign, X509Certificate, type KeyObject } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as pkijs from 'pkijs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkIntegrity } from '../src/verify/integrity.js';
import { selfVerificationFailure } from '../src/verify/self-verify.js';
import { readSignedData, SignatureFormatError, signatureValid, type SignerView } from '../src/verify/signed-data.js';
import { createTestPki, openssl, type Leaf, type TestPki } from './support/pki.js';

/*
 * Reading a CMS SignedData (src/verify/signed-data.ts) and checking it (integrity.ts), in process.
 * Two sources of signatures: `openssl cms -sign` with the options that change what it writes
 * (signer identified by subject key identifier, no signed attributes, no certificates, an EC
 * key, other digests), and SignedData assembled here field by field with an encoder of its own
 * (not src/verify/der.ts, which is under test) and signed with node:crypto, so that each
 * algorithm, each signer identifier form and each malformation is exactly where it is meant to be.
 */

const SENDER = 'alerts@example.test';
const CONTENT = Buffer.from('Content-Type: text/plain; charset=us-ascii\r\n\r\nHello, read back.\r\n', 'latin1');

// ---- a DER encoder of the test's own ----

function tlv(tag: number, ...parts: Buffer[]): Buffer {
  const body = Buffer.concat(parts);
  const n = body.length;
  const len = n < 0x80 ? [n] : n < 0x100 ? [0x81, n] : [0x82, n >> 8, n & 0xff];
  return Buffer.concat([Buffer.from([tag, ...len]), body]);
}
const seq = (...p: Buffer[]) => tlv(0x30, ...p);
const set = (...p: Buffer[]) => tlv(0x31, ...p);
const int = (n: number) => tlv(0x02, Buffer.from([n]));
const octets = (b: Buffer) => tlv(0x04, b);
const NULL = Buffer.from([0x05, 0x00]);
function oid(dotted: string): Buffer {
  const arcs = dotted.split('.').map(Number);
  const out: number[] = [];
  for (const a of [arcs[0]! * 40 + arcs[1]!, ...arcs.slice(2)]) {
    const groups = [a % 128];
    for (let v = Math.floor(a / 128); v > 0; v = Math.floor(v / 128)) groups.unshift((v % 128) | 0x80);
    out.push(...groups);
  }
  return tlv(0x06, Buffer.from(out));
}
const utcTime = (s: string) => tlv(0x17, Buffer.from(s, 'latin1'));
const generalizedTime = (s: string) => tlv(0x18, Buffer.from(s, 'latin1'));
/** The same element with another tag (IMPLICIT tagging, or a damaged tag). */
const retag = (der: Buffer, tag: number) => Buffer.concat([Buffer.from([tag]), der.subarray(1)]);

const O = {
  data: '1.2.840.113549.1.7.1',
  signedData: '1.2.840.113549.1.7.2',
  contentType: '1.2.840.113549.1.9.3',
  messageDigest: '1.2.840.113549.1.9.4',
  signingTime: '1.2.840.113549.1.9.5',
  rsaEncryption: '1.2.840.113549.1.1.1',
  ecdsaWithSha256: '1.2.840.10045.4.3.2',
};

const DIGESTS: [oid: string, name: 'sha1' | 'sha224' | 'sha256' | 'sha384' | 'sha512', micalg: string][] = [
  ['1.3.14.3.2.26', 'sha1', 'sha-1'],
  ['2.16.840.1.101.3.4.2.4', 'sha224', 'sha-224'],
  ['2.16.840.1.101.3.4.2.1', 'sha256', 'sha-256'],
  ['2.16.840.1.101.3.4.2.2', 'sha384', 'sha-384'],
  ['2.16.840.1.101.3.4.2.3', 'sha512', 'sha-512'],
];

/** Every signatureAlgorithm OID the reader takes: RSA PKCS#1 v1.5 and ECDSA, as producers write them. */
const SIGNATURE_ALGORITHMS: [oid: string, name: string, key: 'rsa' | 'ec'][] = [
  ['1.2.840.113549.1.1.1', 'rsaEncryption (openssl, NSS)', 'rsa'],
  ['1.2.840.113549.1.1.5', 'sha1WithRSAEncryption', 'rsa'],
  ['1.2.840.113549.1.1.14', 'sha224WithRSAEncryption', 'rsa'],
  ['1.2.840.113549.1.1.11', 'sha256WithRSAEncryption (Outlook)', 'rsa'],
  ['1.2.840.113549.1.1.12', 'sha384WithRSAEncryption', 'rsa'],
  ['1.2.840.113549.1.1.13', 'sha512WithRSAEncryption', 'rsa'],
  ['1.2.840.10045.2.1', 'id-ecPublicKey', 'ec'],
  ['1.2.840.10045.4.1', 'ecdsa-with-SHA1', 'ec'],
  ['1.2.840.10045.4.3.1', 'ecdsa-with-SHA224', 'ec'],
  ['1.2.840.10045.4.3.2', 'ecdsa-with-SHA256', 'ec'],
  ['1.2.840.10045.4.3.3', 'ecdsa-with-SHA384', 'ec'],
  ['1.2.840.10045.4.3.4', 'ecdsa-with-SHA512', 'ec'],
];

interface Signer {
  leaf: Leaf;
  cert: X509Certificate;
  key: KeyObject;
  /** issuer Name and serialNumber INTEGER of the certificate, as DER, read with PKI.js. */
  issuer: Buffer;
  serial: Buffer;
  /** The subjectKeyIdentifier extension's value. */
  ski: Buffer;
}

interface Build {
  signer?: Signer;
  digest?: (typeof DIGESTS)[number];
  sigOid?: string;
  /** Signed attributes besides contentType and messageDigest; null: no signed attributes at all. */
  attrs?: Buffer[] | null;
  /** Replaces the contentType and messageDigest attributes. */
  required?: Buffer[];
  sid?: Buffer;
  certs?: Buffer[] | null;
  content?: Buffer;
  /** Edits of the SignerInfo's and the SignedData's field lists, and of the ContentInfo's. */
  signerInfo?: (fields: Buffer[]) => Buffer[];
  signedData?: (fields: Buffer[]) => Buffer[];
  contentInfo?: (fields: Buffer[]) => Buffer[];
}

const attr = (type: string, ...values: Buffer[]) => seq(oid(type), set(...values));

/** A detached SignedData over `content`, signed with the signer's key, as RFC 5652 lays it out. */
function build(o: Build = {}): Buffer {
  const signer = o.signer ?? rsa;
  const [digestOid, digest] = o.digest ?? DIGESTS[2]!;
  const content = o.content ?? CONTENT;
  const digestAlg = seq(oid(digestOid));
  const sigOid = o.sigOid ?? (signer.key.asymmetricKeyType === 'ec' ? O.ecdsaWithSha256 : O.rsaEncryption);
  let attrs: Buffer | undefined;
  let signature: Buffer;
  if (o.attrs === null) {
    signature = cryptoSign(digest, content, signer.key);
  } else {
    const required = o.required ?? [attr(O.contentType, oid(O.data)), attr(O.messageDigest, octets(createHash(digest).update(content).digest()))];
    const sorted = [...required, ...(o.attrs ?? [])].sort(Buffer.compare);
    attrs = tlv(0xa0, ...sorted);
    signature = cryptoSign(digest, retag(attrs, 0x31), signer.key);
  }
  const sid = o.sid ?? seq(signer.issuer, signer.serial);
  const sigAlg = sigOid.startsWith('1.2.840.113549') ? seq(oid(sigOid), NULL) : seq(oid(sigOid));
  const infoFields = [int(1), sid, digestAlg, ...(attrs ? [attrs] : []), sigAlg, octets(signature)];
  const signerInfo = seq(...(o.signerInfo ? o.signerInfo(infoFields) : infoFields));
  const certs = o.certs === null ? [] : [tlv(0xa0, ...(o.certs ?? [signer.cert.raw, intermediate]))];
  const sdFields = [int(1), set(digestAlg), seq(oid(O.data)), ...certs, set(signerInfo)];
  const signedData = seq(...(o.signedData ? o.signedData(sdFields) : sdFields));
  const ciFields = [oid(O.signedData), tlv(0xa0, signedData)];
  return seq(...(o.contentInfo ? o.contentInfo(ciFields) : ciFields));
}

/** A clear-signed message carrying `content` and the signature, as the relay writes one. */
function wrap(der: Buffer, micalg = 'sha-256', content = CONTENT): Buffer {
  const b = 'b0undary-b0undary';
  const sig = der.toString('base64').replace(/.{76}/g, '$&\r\n');
  return Buffer.concat([
    Buffer.from(`From: ${SENDER}\r\nMIME-Version: 1.0\r\nContent-Type: multipart/signed; protocol="application/pkcs7-signature"; micalg=${micalg}; boundary="${b}"\r\n\r\n--${b}\r\n`, 'latin1'),
    content,
    Buffer.from(`\r\n--${b}\r\nContent-Type: application/pkcs7-signature; name="smime.p7s"\r\nContent-Transfer-Encoding: base64\r\n\r\n${sig}\r\n--${b}--\r\n`, 'latin1'),
  ]);
}

function formatError(der: Buffer): SignatureFormatError {
  try {
    readSignedData(der);
  } catch (e) {
    if (e instanceof SignatureFormatError) return e;
    throw e;
  }
  throw new Error('readSignedData accepted it');
}

let pki: TestPki;
let rsa: Signer;
let ec: Signer;
let other: Signer;
let intermediate: Buffer;
const byOpenssl = new Map<string, Buffer>();

async function signerOf(leaf: Leaf): Promise<Signer> {
  const cert = new X509Certificate(await readFile(leaf.certPath));
  const parsed = pkijs.Certificate.fromBER(cert.raw);
  return {
    leaf,
    cert,
    key: createPrivateKey(await readFile(leaf.keyPath)),
    issuer: Buffer.from(parsed.issuer.toSchema().toBER(false)),
    serial: Buffer.from(parsed.serialNumber.toBER(false)),
    ski: Buffer.from((parsed.extensions!.find((e) => e.extnID === '2.5.29.14')!.parsedValue as { valueBlock: { valueHexView: Uint8Array } }).valueBlock.valueHexView),
  };
}

beforeAll(async () => {
  pki = await createTestPki();
  [rsa, ec, other] = await Promise.all([
    pki.issueLeaf('rsa', { emails: [SENDER] }).then(signerOf),
    pki.issueLeaf('ec', { emails: [SENDER], keyType: 'ec' }).then(signerOf),
    pki.issueLeaf('other', { emails: ['other@example.test'] }).then(signerOf),
  ]);
  intermediate = new X509Certificate(await readFile(pki.intermediateCertPath)).raw;
  const contentPath = join(pki.dir, 'content');
  await writeFile(contentPath, CONTENT);
  const cms = (s: Signer, ...extra: string[]) =>
    openssl(['cms', '-sign', '-binary', '-in', contentPath, '-signer', s.leaf.certPath, '-inkey', s.leaf.keyPath, '-certfile', pki.intermediateCertPath, '-outform', 'DER', ...extra]);
  const made = await Promise.all([
    cms(rsa).then((d) => ['default', d] as const),
    cms(rsa, '-keyid').then((d) => ['keyid', d] as const),
    cms(rsa, '-noattr').then((d) => ['noattr', d] as const),
    cms(rsa, '-nocerts').then((d) => ['nocerts', d] as const),
    cms(rsa, '-md', 'sha512').then((d) => ['sha512', d] as const),
    cms(ec).then((d) => ['ec', d] as const),
  ]);
  for (const [name, der] of made) byOpenssl.set(name, der);
});

afterAll(async () => {
  await pki?.cleanup();
});

describe('what openssl cms -sign writes', () => {
  it('default: signer by issuer and serial, signed attributes with the signing time, the certificates it was given', () => {
    const der = byOpenssl.get('default')!;
    const view = readSignedData(der);
    expect(view).toMatchObject({ digest: 'sha256', keyType: 'rsa', sid: `serial ${rsa.cert.serialNumber}` });
    expect(view.signerCertificate?.equals(rsa.cert.raw)).toBe(true);
    expect(view.certificates.map((c) => new X509Certificate(c).serialNumber).sort()).toEqual([rsa.cert.serialNumber, new X509Certificate(intermediate).serialNumber].sort());
    expect(view.messageDigest?.equals(createHash('sha256').update(CONTENT).digest())).toBe(true);
    expect(Math.abs(view.signingTime!.getTime() - Date.now())).toBeLessThan(5 * 60_000);
    expect(view.signedAttributes?.[0]).toBe(0x31);
    const r = checkIntegrity(wrap(der));
    expect(r.ok && r.certificate.serialNumber).toBe(rsa.cert.serialNumber);
  });

  it('-keyid: the signer named by its subject key identifier, found among the certificates', () => {
    const der = byOpenssl.get('keyid')!;
    const view = readSignedData(der);
    expect(rsa.ski.length).toBe(20);
    expect(view.sid).toBe(`subject key identifier ${rsa.ski.toString('hex').toUpperCase()}`);
    expect(view.signerCertificate?.equals(rsa.cert.raw)).toBe(true);
    expect(checkIntegrity(wrap(der), { signer: rsa.cert }).ok).toBe(true);
  });

  it('-noattr: no signed attributes, so the signature covers the content itself', () => {
    const der = byOpenssl.get('noattr')!;
    const view = readSignedData(der);
    expect(view).toMatchObject({ signedAttributes: undefined, messageDigest: undefined, signingTime: undefined });
    expect(checkIntegrity(wrap(der)).ok).toBe(true);
    const changed = Buffer.from(CONTENT.toString('latin1').replace('Hello', 'Hellp'), 'latin1');
    expect(checkIntegrity(wrap(der, 'sha-256', changed))).toMatchObject({ ok: false, failure: 'digest-mismatch' });
  });

  it('-nocerts: the signer certificate is missing, named by its serial', () => {
    const der = byOpenssl.get('nocerts')!;
    const view = readSignedData(der);
    expect(view.signerCertificate).toBeUndefined();
    expect(view.certificates.map((c) => new X509Certificate(c).serialNumber)).toEqual([new X509Certificate(intermediate).serialNumber]);
    expect(checkIntegrity(wrap(der))).toMatchObject({
      ok: false,
      failure: 'signer-missing',
      reason: `the signature does not carry the signer's certificate (serial ${rsa.cert.serialNumber})`,
    });
  });

  it('-md sha512 with micalg=sha-512, and an EC key', () => {
    expect(readSignedData(byOpenssl.get('sha512')!).digest).toBe('sha512');
    expect(checkIntegrity(wrap(byOpenssl.get('sha512')!, 'sha-512')).ok).toBe(true);
    expect(readSignedData(byOpenssl.get('ec')!).keyType).toBe('ec');
    expect(checkIntegrity(wrap(byOpenssl.get('ec')!), { signer: ec.cert }).ok).toBe(true);
  });
});

describe('algorithms', () => {
  it('the SignedData built here reads and verifies like openssl\'s', () => {
    const der = build();
    expect(readSignedData(der)).toMatchObject({ digest: 'sha256', keyType: 'rsa', sid: `serial ${rsa.cert.serialNumber}`, signingTime: undefined });
    expect(checkIntegrity(wrap(der), { signer: rsa.cert }).ok).toBe(true);
  });

  it.each(DIGESTS)('digest %s is %s, micalg=%s', (digestOid, name, micalg) => {
    const der = build({ digest: [digestOid, name, micalg] });
    expect(readSignedData(der).digest).toBe(name);
    expect(checkIntegrity(wrap(der, micalg)).ok).toBe(true);
    const wrong = micalg === 'sha-256' ? 'sha-512' : 'sha-256';
    expect(checkIntegrity(wrap(der, wrong))).toMatchObject({ ok: false, failure: 'micalg-mismatch', reason: expect.stringContaining(`but the signature uses ${micalg};`) });
  });

  it.each(SIGNATURE_ALGORITHMS)('signature algorithm %s (%s) is %s', (sigOid, _name, keyType) => {
    const der = build({ signer: keyType === 'ec' ? ec : rsa, sigOid });
    expect(readSignedData(der).keyType).toBe(keyType);
    expect(checkIntegrity(wrap(der)).ok).toBe(true);
  });

  it.each<[string, Build, string]>([
    ['MD5', { digest: ['1.2.840.113549.2.5', 'sha256', 'md5'] }, 'the digest algorithm (OID 1.2.840.113549.2.5) is not supported'],
    ['SHA3-256', { digest: ['2.16.840.1.101.3.4.2.8', 'sha256', 'sha3-256'] }, 'the digest algorithm (OID 2.16.840.1.101.3.4.2.8) is not supported'],
    ['RSASSA-PSS', { sigOid: '1.2.840.113549.1.1.10' }, 'the signature algorithm (OID 1.2.840.113549.1.1.10) is not supported; RSA PKCS#1 v1.5 and ECDSA are'],
    ['Ed25519', { sigOid: '1.3.101.112' }, 'the signature algorithm (OID 1.3.101.112) is not supported; RSA PKCS#1 v1.5 and ECDSA are'],
    ['an arc of three octets', { sigOid: '2.999.2097151' }, 'the signature algorithm (OID 2.999.2097151) is not supported; RSA PKCS#1 v1.5 and ECDSA are'],
  ])('an algorithm it does not implement: %s, named by its dotted OID', (_name, o, message) => {
    const der = build(o);
    const e = formatError(der);
    expect([e.name, e.message, e.unsupported]).toEqual(['SignatureFormatError', message, true]);
    expect(checkIntegrity(wrap(der))).toMatchObject({ ok: false, failure: 'unsupported', reason: message });
  });

  it('an empty algorithm OID is named ?', () => {
    const der = build({ signerInfo: (f) => [f[0]!, f[1]!, seq(tlv(0x06, Buffer.alloc(0))), ...f.slice(3)] });
    expect(formatError(der).message).toBe('the digest algorithm (OID ?) is not supported');
  });

  it('the key must be of the kind the signature algorithm names', () => {
    const r = checkIntegrity(wrap(build({ signer: ec, sigOid: O.rsaEncryption })));
    expect(r).toMatchObject({ ok: false, failure: 'unsupported', reason: "the signature algorithm is RSA but the signer's key is ec" });
    expect(!r.ok && [r.certificate?.serialNumber, r.key?.asymmetricKeyType]).toEqual([ec.cert.serialNumber, 'ec']);
    const r2 = checkIntegrity(wrap(build({ signer: rsa, sigOid: O.ecdsaWithSha256 })));
    expect(r2).toMatchObject({ ok: false, failure: 'unsupported', reason: "the signature algorithm is EC but the signer's key is rsa" });
  });

  it('a key node:crypto cannot name (SM2) is "unknown"', async () => {
    const key = join(pki.dir, 'sm2.key');
    await openssl(['genpkey', '-algorithm', 'SM2', '-out', key]);
    const raw = new X509Certificate(await openssl(['req', '-new', '-x509', '-key', key, '-subj', '/CN=sm2 signer', '-days', '1'])).raw;
    const parsed = pkijs.Certificate.fromBER(raw);
    const sid = seq(Buffer.from(parsed.issuer.toSchema().toBER(false)), Buffer.from(parsed.serialNumber.toBER(false)));
    const r = checkIntegrity(wrap(build({ sid, certs: [raw] })));
    expect(r).toMatchObject({ ok: false, failure: 'unsupported', reason: "the signature algorithm is RSA but the signer's key is unknown" });
  });

  it('a failure after the signer is known carries its certificate and key', () => {
    const micalg = checkIntegrity(wrap(build(), 'sha-1'));
    expect(!micalg.ok && [micalg.failure, micalg.certificate?.serialNumber, micalg.key?.asymmetricKeyType]).toEqual(['micalg-mismatch', rsa.cert.serialNumber, 'rsa']);
    const der = build();
    der[der.length - 1]! ^= 1;
    const bad = checkIntegrity(wrap(der));
    expect(!bad.ok && [bad.failure, bad.certificate?.serialNumber, bad.key?.asymmetricKeyType]).toEqual(['bad-signature', rsa.cert.serialNumber, 'rsa']);
    expect(!bad.ok && bad.reason).toBe(
      `the signed part matches its digest, but the signature over the signed attributes does not verify with the signer's certificate (serial ${rsa.cert.serialNumber})`,
    );
  });

  it('a key that cannot check this kind of signature answers false, not an exception', () => {
    const view: SignerView = readSignedData(build());
    const ed = generateKeyPairSync('ed25519').publicKey;
    expect(signatureValid(view, ed)).toBe(false);
    expect(signatureValid(view, rsa.cert.publicKey)).toBe(true);
  });
});

describe('signed attributes', () => {
  const md = (content = CONTENT) => attr(O.messageDigest, octets(createHash('sha256').update(content).digest()));
  const ct = attr(O.contentType, oid(O.data));

  it('the signing time, as UTCTime or GeneralizedTime, and other attributes left alone', () => {
    const utc = readSignedData(build({ attrs: [attr(O.signingTime, utcTime('261130154312Z')), attr('1.2.840.113549.1.9.15', seq())] }));
    expect(utc.signingTime?.toISOString()).toBe('2026-11-30T15:43:12.000Z');
    const gen = readSignedData(build({ attrs: [attr(O.signingTime, generalizedTime('20500102030405Z'))] }));
    expect(gen.signingTime?.toISOString()).toBe('2050-01-02T03:04:05.000Z');
    expect(readSignedData(build({ attrs: [attr(O.signingTime)] })).signingTime).toBeUndefined();
    expect(checkIntegrity(wrap(build({ attrs: [attr(O.signingTime, utcTime('261130154312Z'))] }))).ok).toBe(true);
  });

  it('the signed attributes as the signature covers them: the SET OF tag in place of [0]', () => {
    const der = build();
    const view = readSignedData(der);
    const at = der.indexOf(view.signedAttributes!.subarray(1));
    expect(der[at - 1]).toBe(0xa0);
    expect(view.signedAttributes![0]).toBe(0x31);
    // the view is a copy: the message it was read from keeps its [0]
    expect(signatureValid(view, rsa.cert.publicKey)).toBe(true);
  });

  it.each<[string, Buffer[]]>([
    ['no messageDigest', [ct]],
    ['no contentType', [md()]],
    ['no contentType, but another attribute', [md(), attr('1.2.840.113549.1.9.15', seq())]],
    ['a messageDigest that is not an OCTET STRING', [ct, attr(O.messageDigest, int(7))]],
    ['a messageDigest with no value', [ct, attr(O.messageDigest)]],
  ])('%s: refused, as RFC 5652 §5.3 requires both', (_name, required) => {
    const e = formatError(build({ required }));
    expect([e.message, e.unsupported]).toEqual(['the signed attributes lack messageDigest or contentType (RFC 5652 §5.3 requires both)', false]);
  });

  it('an attribute without values is passed over', () => {
    const view = readSignedData(build({ attrs: [seq(oid('1.2.840.113549.1.9.52'))] }));
    expect(view.messageDigest?.equals(createHash('sha256').update(CONTENT).digest())).toBe(true);
  });

  it('an indefinite length on the signed attributes, which DER forbids, is refused as unsupported', () => {
    const der = build({
      signerInfo: (f) => {
        const attrs = f[3]!;
        const inner = attrs.subarray(attrs[1]! & 0x80 ? 2 + (attrs[1]! & 0x7f) : 2);
        return [...f.slice(0, 3), Buffer.concat([Buffer.from([0xa0, 0x80]), inner, Buffer.from([0, 0])]), ...f.slice(4)];
      },
    });
    const e = formatError(der);
    expect([e.message, e.unsupported]).toEqual(['the signed attributes use an indefinite length, which DER forbids', true]);
  });
});

describe('the signer identifier', () => {
  it('issuer and serial must both match: the same serial under another issuer names nobody', () => {
    const rootName = Buffer.from(pkijs.Certificate.fromBER(new Uint8Array(intermediate)).issuer.toSchema().toBER(false));
    expect(rootName.equals(rsa.issuer)).toBe(false);
    const wrongIssuer = readSignedData(build({ sid: seq(rootName, rsa.serial) }));
    expect(wrongIssuer.signerCertificate).toBeUndefined();
    const wrongSerial = readSignedData(build({ sid: seq(rsa.issuer, other.serial) }));
    expect(wrongSerial.signerCertificate).toBeUndefined();
    expect(wrongSerial.sid).toBe(`serial ${other.cert.serialNumber}`);
    const right = readSignedData(build({ sid: seq(rsa.issuer, rsa.serial), certs: [intermediate, other.cert.raw, rsa.cert.raw] }));
    expect(right.signerCertificate?.equals(rsa.cert.raw)).toBe(true);
  });

  it('a serial is printed in upper-case hex', () => {
    const view = readSignedData(build({ sid: seq(rsa.issuer, tlv(0x02, Buffer.from([0x7a, 0xbc, 0xde]))) }));
    expect(view.sid).toBe('serial 7ABCDE');
  });

  it('a serial is printed as openssl and X509Certificate print it: without the zero octet before a high first octet', async () => {
    const sidText = (octets: number[]) => readSignedData(build({ sid: seq(rsa.issuer, tlv(0x02, Buffer.from(octets))) })).sid;
    expect(sidText([0x00, 0xcb, 0xc8])).toBe('serial CBC8');
    expect(sidText([0x00])).toBe('serial 00');
    expect(sidText([0x05])).toBe('serial 05');
    // the certificates of a test PKI have random serials, so half of them start with such an octet
    const high = new X509Certificate(await openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', '/dev/null', '-subj', '/CN=serial', '-set_serial', '0x80CB']));
    expect(high.serialNumber).toBe('80CB');
    expect(sidText([0x00, 0x80, 0xcb])).toBe(`serial ${high.serialNumber}`);
  });

  it('a subject key identifier is matched against each certificate\'s extension, and printed in upper-case hex', () => {
    const view = readSignedData(build({ sid: tlv(0x80, rsa.ski), certs: [intermediate, other.cert.raw, rsa.cert.raw] }));
    expect(view.signerCertificate?.equals(rsa.cert.raw)).toBe(true);
    expect(view.sid).toBe(`subject key identifier ${rsa.ski.toString('hex').toUpperCase()}`);
    expect(view.sid).toMatch(/[A-F]/);
    const nobody = readSignedData(build({ sid: tlv(0x80, Buffer.from('abcdef', 'hex')) }));
    expect([nobody.signerCertificate, nobody.sid]).toEqual([undefined, 'subject key identifier ABCDEF']);
  });

  it('certificates of other shapes are passed over: an attribute certificate, a v1 certificate, a broken extension list', () => {
    // tbsCertificate without the [0] version: serial first (X.509 v1)
    const v1 = seq(seq(tlv(0x02, Buffer.from([0x42])), seq(oid(O.rsaEncryption)), rsa.issuer), seq(oid(O.rsaEncryption)), tlv(0x03, Buffer.from([0])));
    const viaV1 = readSignedData(build({ sid: seq(rsa.issuer, tlv(0x02, Buffer.from([0x42]))), certs: [tlv(0xa1, seq()), v1] }));
    expect(viaV1.certificates).toEqual([v1]);
    expect(viaV1.signerCertificate?.equals(v1)).toBe(true);
    // it is found, but is no certificate node:crypto can read
    expect(checkIntegrity(wrap(build({ sid: seq(rsa.issuer, tlv(0x02, Buffer.from([0x42]))), certs: [v1] })))).toMatchObject({
      ok: false,
      failure: 'signature-format',
      reason: 'the signer certificate (serial 42) cannot be parsed',
    });
    // extensions [3] holding something that is not a list of extensions, and a certificate that is an empty SEQUENCE
    const v3 = seq(seq(tlv(0xa0, int(2)), tlv(0x02, Buffer.from([0x43])), seq(), rsa.issuer, seq(), seq(), seq(), tlv(0xa3, octets(Buffer.from('junk')))));
    const bySki = readSignedData(build({ sid: tlv(0x80, Buffer.from('junk')), certs: [seq(), v3] }));
    expect(bySki.signerCertificate).toBeUndefined();
    expect(readSignedData(build({ sid: seq(rsa.issuer, tlv(0x02, Buffer.from([0x43]))), certs: [seq(), v3] })).signerCertificate?.equals(v3)).toBe(true);
  });

  it.each<[string, Buffer, string]>([
    ['an incomplete issuer and serial', seq(seq()), 'the signer identifier is incomplete'],
    ['an unknown form', octets(Buffer.from('who')), 'the signer identifier has an unknown form'],
  ])('%s is refused', (_name, sid, message) => {
    const e = formatError(build({ sid }));
    expect([e.message, e.unsupported]).toEqual([message, false]);
  });
});

describe('a SignedData that cannot be read', () => {
  const withSignedData = (edit: (f: Buffer[]) => Buffer[]): Build => ({ signedData: edit });
  it.each<[string, Build, string]>([
    ['another content type', { contentInfo: (f) => [oid(O.data), ...f.slice(1)] }, 'the signature is not a CMS SignedData'],
    ['no content', { contentInfo: (f) => [f[0]!] }, 'the SignedData has no content'],
    ['content under another tag', { contentInfo: (f) => [f[0]!, retag(f[1]!, 0xa1)] }, 'the SignedData has no content'],
    ['no signerInfos', withSignedData((f) => f.slice(0, -1)), 'the SignedData has no signerInfos'],
    ['no signerInfos, but CRLs', withSignedData((f) => [...f.slice(0, -1), tlv(0xa1, seq())]), 'the SignedData has no signerInfos'],
    ['an empty signerInfos', withSignedData((f) => [...f.slice(0, -1), set()]), 'the SignedData has no signer'],
    ['a SignerInfo without sid and digest algorithm', { signerInfo: (f) => [f[0]!] }, 'the SignerInfo is incomplete'],
    ['a SignerInfo without a digest algorithm', { signerInfo: (f) => [f[0]!, f[1]!] }, 'the SignerInfo is incomplete'],
    ['a SignerInfo without a signature', { signerInfo: (f) => f.slice(0, -1) }, 'the SignerInfo has no signature'],
    ['a SignerInfo with neither', { signerInfo: (f) => f.slice(0, 3) }, 'the SignerInfo has no signature'],
    ['a signature that is not an OCTET STRING', { signerInfo: (f) => [...f.slice(0, -1), retag(f.at(-1)!, 0x03)] }, 'the SignerInfo has no signature'],
  ])('%s', (_name, o, message) => {
    const der = build(o);
    const e = formatError(der);
    expect([e.name, e.message, e.unsupported]).toEqual(['SignatureFormatError', message, false]);
    expect(checkIntegrity(wrap(der))).toMatchObject({ ok: false, failure: 'signature-format', reason: message });
  });

  it.each<[string, Build | (() => Buffer), string]>([
    ['a SET for the ContentInfo', () => retag(build(), 0x31), 'ContentInfo: expected tag 0x30, found 0x31'],
    ['an empty ContentInfo', () => seq(), 'ContentInfo is empty'],
    ['an empty [0]', { contentInfo: (f) => [f[0]!, tlv(0xa0)] }, 'SignedData is empty'],
    ['a SET for the SignedData', { contentInfo: (f) => [f[0]!, tlv(0xa0, set())] }, 'SignedData: expected tag 0x30, found 0x31'],
    ['a SignerInfo that is an INTEGER', withSignedData((f) => [...f.slice(0, -1), set(int(1))]), 'SignerInfo: expected tag 0x30, found 0x2'],
    ['a digest algorithm that is a bare OID', { signerInfo: (f) => [f[0]!, f[1]!, oid('2.16.840.1.101.3.4.2.1'), ...f.slice(3)] }, 'digestAlgorithm: expected tag 0x30, found 0x6'],
    ['an empty digest algorithm', { signerInfo: (f) => [f[0]!, f[1]!, seq(), ...f.slice(3)] }, 'digestAlgorithm is empty'],
    ['a signature algorithm that is a bare OID', { signerInfo: (f) => [...f.slice(0, -2), oid(O.rsaEncryption), f.at(-1)!] }, 'signatureAlgorithm: expected tag 0x30, found 0x6'],
    ['an empty signature algorithm', { signerInfo: (f) => [...f.slice(0, -2), seq(), f.at(-1)!] }, 'signatureAlgorithm is empty'],
    ['an attribute that is not a SEQUENCE', { attrs: [set()] }, 'Attribute: expected tag 0x30, found 0x31'],
    ['a length past the end', () => build().subarray(0, 40), 'element at offset 0 runs past its container'],
  ])('not DER as a SignedData has it: %s', (_name, o, detail) => {
    const der = typeof o === 'function' ? o() : build(o);
    const e = formatError(der);
    expect([e.message, e.unsupported]).toEqual([`the signature is not valid DER: ${detail}`, false]);
  });
});

describe('self-verification', () => {
  it('names the relay\'s certificate as the one expected: another signer is a failure', () => {
    const message = wrap(build({ signer: other }));
    expect(checkIntegrity(message).ok).toBe(true);
    expect(selfVerificationFailure(message, other.cert)).toBeUndefined();
    expect(selfVerificationFailure(message, rsa.cert)).toBe(
      `the signer certificate (serial ${other.cert.serialNumber}) is not the one the relay signed with (serial ${rsa.cert.serialNumber})`,
    );
  });
});
