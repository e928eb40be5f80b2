import { X509Certificate } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CertificateBundle } from '../src/certs/bundle.js';
import { loadPath } from '../src/certs/load.js';
import { signMessage } from '../src/mime/multipart-signed.js';
import { prepareMessage } from '../src/mime/prepare.js';
import { NativeEngine } from '../src/signing/native.js';
import { childrenOf, contentsOf, DerError, oidHex, oidOf, readTlv, timeOf } from '../src/verify/der.js';
import { checkIntegrity } from '../src/verify/integrity.js';
import { selfVerificationFailure } from '../src/verify/self-verify.js';
import { NotSignedError, SignedStructureError, splitSignedMessage } from '../src/verify/split.js';
import { createTestPki, type TestPki } from './support/pki.js';

/*
 * Reading a signed message back (src/verify/), in process and byte by byte: the split into the
 * signed part and the signature, and the integrity checks, each failure with its kind and its
 * sentence (the reason goes into the self-verification log line and diagnose's output). The
 * same messages pass openssl, gpgsm and NSS in the end-to-end tests; here each fault is put
 * exactly where it is meant to be.
 */

const SENDER = 'alerts@example.test';
let pki: TestPki;
let bundle: CertificateBundle;
let other: X509Certificate;
const engine = new NativeEngine();
let signed: Buffer;

const raw = Buffer.from(`From: ${SENDER}\r\nTo: ops@example.org\r\nSubject: read back\r\n\r\nLine one.\r\nLine two.\r\n`, 'latin1');

async function sign(corrupt?: (der: Buffer) => Buffer): Promise<Buffer> {
  const out = await signMessage(prepareMessage(raw), async (content) => {
    const der = Buffer.from(await engine.sign(content, bundle));
    return corrupt ? corrupt(der) : der;
  });
  return Buffer.isBuffer(out) ? out : (out as { message: Buffer }).message;
}

beforeAll(async () => {
  pki = await createTestPki();
  const leaf = await pki.issueLeaf('alerts', { emails: [SENDER] });
  const otherLeaf = await pki.issueLeaf('other', { emails: ['other@example.test'] });
  bundle = loadPath(leaf.bundlePath).entries.find((e) => e.bundle)!.bundle!;
  other = loadPath(otherLeaf.bundlePath).entries.find((e) => e.bundle)!.bundle!.leaf;
  signed = await sign();
});

afterAll(async () => {
  await engine.close();
  await pki?.cleanup();
});

const text = (b: Buffer) => b.toString('latin1');
const edit = (message: Buffer, from: string | RegExp, to: string) => Buffer.from(text(message).replace(from, to), 'latin1');
const boundaryOf = (message: Buffer) => /boundary="([^"]+)"/.exec(text(message))![1]!;

describe('splitSignedMessage', () => {
  it('finds the signed part exactly where it travels, the signature, micalg, the preamble and the (empty) epilogue', () => {
    const parts = splitSignedMessage(signed);
    expect(parts.contentType.type).toBe('multipart');
    expect(parts.micalg).toBe('sha-256');
    expect(parts.boundary).toBe(boundaryOf(signed));
    expect(signed.subarray(parts.contentStart, parts.contentStart + parts.content.length).equals(parts.content)).toBe(true);
    expect(text(parts.content)).toMatch(/^Content-Type: text\/plain/);
    expect(text(parts.content)).toMatch(/Line two\.\r\n$/);
    expect([parts.preamble && text(parts.preamble), parts.epilogue && text(parts.epilogue)]).toEqual(['This is a cryptographically signed message in MIME format.\r\n', '']);
    expect(parts.signature[0]).toBe(0x30);
    expect(parts.signature.equals(Buffer.from(text(parts.signatureBody), 'base64'))).toBe(true);
    expect(parts.headers.map((f) => f.name)).toContain('from');
    expect(parts.signatureHeaders.map((f) => f.name)).toContain('content-transfer-encoding');
  });

  it('reads micalg case-insensitively and the protocol in either spelling', () => {
    const upper = edit(signed, 'micalg=sha-256', 'micalg=SHA-256');
    expect(splitSignedMessage(upper).micalg).toBe('sha-256');
    const x = edit(signed, 'protocol="application/pkcs7-signature"', 'protocol="Application/X-PKCS7-Signature"');
    expect(splitSignedMessage(x).boundary).toBe(boundaryOf(signed));
  });

  it.each<[string, (m: Buffer) => Buffer, string]>([
    ['an opaque signed message', (m) => edit(m, /Content-Type: multipart\/signed;[^\r]*/, 'Content-Type: application/pkcs7-mime; smime-type=signed-data'),
      'the message is application/pkcs7-mime (opaque signed or encrypted), not a clear-signed multipart/signed message'],
    ['the old opaque type', (m) => edit(m, /Content-Type: multipart\/signed;[^\r]*/, 'Content-Type: application/x-pkcs7-mime'),
      'the message is application/x-pkcs7-mime (opaque signed or encrypted), not a clear-signed multipart/signed message'],
    ['plain text', (m) => edit(m, /Content-Type: multipart\/signed;[^\r]*/, 'Content-Type: text/plain'),
      'the message is not clear-signed: its Content-Type is text/plain, not multipart/signed'],
    ['no Content-Type', (m) => edit(m, /Content-Type: multipart\/signed;[^\r]*\r\n(?:[ \t][^\r]*\r\n)*/, ''),
      'the message is not clear-signed: its Content-Type is missing (text/plain), not multipart/signed'],
    ['a protocol that is not S/MIME', (m) => edit(m, 'protocol="application/pkcs7-signature"', 'protocol="application/pgp-signature"'),
      'multipart/signed with protocol "application/pgp-signature" is not S/MIME (application/pkcs7-signature)'],
    ['no protocol', (m) => edit(m, /protocol="application\/pkcs7-signature";?/, ''),
      'multipart/signed with protocol "" is not S/MIME (application/pkcs7-signature)'],
  ])('not a clear-signed message: %s', (_name, damage, reason) => {
    const message = damage(signed);
    expect(() => splitSignedMessage(message)).toThrow(NotSignedError);
    expect(() => splitSignedMessage(message)).toThrow(reason);
    // self-verification says the same, rather than throwing
    expect(selfVerificationFailure(message, bundle.leaf)).toBe(reason);
  });

  it('a Content-Type it cannot read is named so', () => {
    const message = edit(signed, /Content-Type: multipart\/signed;[^\r]*/, 'Content-Type: @@@');
    expect(() => splitSignedMessage(message)).toThrow(/^the message is not clear-signed: its Content-Type is unreadable, not multipart\/signed$/);
  });

  it('errors carry their class names, which log lines print', () => {
    const name = (run: () => unknown) => {
      try {
        run();
      } catch (e) {
        return (e as Error).name;
      }
    };
    expect(name(() => splitSignedMessage(edit(signed, /Content-Type: multipart\/signed;[^\r]*/, 'Content-Type: text/plain')))).toBe('NotSignedError');
    expect(name(() => splitSignedMessage(edit(signed, /;?\s*boundary="[^"]+"/, '')))).toBe('SignedStructureError');
  });

  it('finds the signature part\'s fields in any order', () => {
    const t = text(signed);
    const at = t.lastIndexOf('Content-Type: application/pkcs7-signature');
    const end = t.indexOf('\r\n\r\n', at);
    const fields = t.slice(at, end).split(/\r\n(?![ \t])/);
    const reordered = Buffer.from(t.slice(0, at) + [...fields].reverse().join('\r\n') + t.slice(end), 'latin1');
    expect(fields[0]).toMatch(/^Content-Type:/);
    expect(splitSignedMessage(reordered).signature.equals(splitSignedMessage(signed).signature)).toBe(true);
    expect(checkIntegrity(reordered).ok).toBe(true);
  });

  it('gives the signed part\'s offset in the message even when the message is a view into a larger buffer', () => {
    const pool = Buffer.concat([Buffer.from('x'.repeat(100)), signed]);
    const message = pool.subarray(100);
    const parts = splitSignedMessage(message);
    expect(message.subarray(parts.contentStart, parts.contentStart + parts.content.length).equals(parts.content)).toBe(true);
    expect(parts.contentStart).toBe(splitSignedMessage(signed).contentStart);
  });

  it('a header block it cannot read is not a signed message', () => {
    const message = Buffer.concat([Buffer.from(`X-Long: ${'a'.repeat(300 * 1024)}\r\n`), signed]);
    expect(() => splitSignedMessage(message)).toThrow(/^the header block cannot be read: header block exceeds the limit of 262144 bytes$/);
    expect(() => splitSignedMessage(message)).toThrow(NotSignedError);
  });

  it.each<[string, (m: Buffer) => Buffer, string | RegExp]>([
    ['no boundary', (m) => edit(m, /;?\s*boundary="[^"]+"/, ''), 'the multipart/signed Content-Type has no boundary parameter'],
    ['a boundary that delimits nothing', (m) => edit(m, /boundary="[^"]+"/, 'boundary="elsewhere"'), 'the boundary "elsewhere" of the Content-Type does not delimit any part of the body'],
    ['a third part', (m) => {
      const b = boundaryOf(m);
      return edit(m, `--${b}--`, `--${b}\r\nContent-Type: text/plain\r\n\r\nmore\r\n--${b}--`);
    }, /^multipart\/signed has 3 part\(s\) delimited by "[^"]+"; RFC 1847 requires exactly two \(content, signature\)$/],
    ['a second part that is not a signature', (m) => edit(m, /Content-Type: application\/pkcs7-signature;[^\r]*/, 'Content-Type: text/plain'), 'the second part is text/plain, not application/pkcs7-signature'],
    ['a second part without Content-Type', (m) => edit(m, /Content-Type: application\/pkcs7-signature;[^\r]*\r\n/, ''), 'the second part is text/plain, not application/pkcs7-signature'],
    ['an empty signature', (m) => {
      const b = boundaryOf(m);
      const t = text(m);
      const sigBody = t.indexOf('\r\n\r\n', t.lastIndexOf('Content-Type: application/pkcs7-signature'));
      return Buffer.from(t.slice(0, sigBody + 4) + `\r\n--${b}--\r\n`, 'latin1');
    }, 'the signature part is empty'],
  ])('a broken structure: %s', (_name, damage, reason) => {
    const message = damage(signed);
    expect(() => splitSignedMessage(message)).toThrow(SignedStructureError);
    expect(() => splitSignedMessage(message)).toThrow(reason);
    expect(checkIntegrity(message)).toMatchObject({ ok: false, failure: 'structure', reason: expect.stringMatching(typeof reason === 'string' ? new RegExp(`^${reason.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`) : reason) });
  });

  it('a signature part without base64 is taken as DER as it stands', () => {
    const b = boundaryOf(signed);
    const parts = splitSignedMessage(signed);
    const t = text(signed);
    const at = t.lastIndexOf(`--${b}\r\n`);
    const binary = Buffer.concat([
      Buffer.from(t.slice(0, at) + `--${b}\r\nContent-Type: application/pkcs7-signature; name=smime.p7s\r\n\r\n`, 'latin1'),
      parts.signature,
      Buffer.from(`\r\n--${b}--\r\n`, 'latin1'),
    ]);
    const read = splitSignedMessage(binary);
    expect(read.signature.subarray(0, parts.signature.length).equals(parts.signature)).toBe(true);
    expect(read.signature.equals(read.signatureBody)).toBe(true);
  });
});

describe('checkIntegrity', () => {
  it('an intact message: the signer certificate, with or without the relay signer given', () => {
    const plain = checkIntegrity(signed);
    expect(plain.ok).toBe(true);
    expect(plain.ok && plain.certificate.serialNumber).toBe(bundle.leaf.serialNumber);
    const self = checkIntegrity(signed, { signer: bundle.leaf });
    expect(self.ok && self.certificate).toBe(bundle.leaf);
    expect(selfVerificationFailure(signed, bundle.leaf)).toBeUndefined();
  });

  it('another signer than the relay signed with', () => {
    const r = checkIntegrity(signed, { signer: other });
    expect(r).toMatchObject({ ok: false, failure: 'signer-mismatch' });
    expect(!r.ok && r.reason).toMatch(new RegExp(`^the signer certificate \\(.+\\) is not the one the relay signed with \\(serial ${other.serialNumber}\\)$`));
  });

  it('micalg naming another digest than the signature uses', () => {
    const r = checkIntegrity(edit(signed, 'micalg=sha-256', 'micalg=sha-512'));
    expect(r).toMatchObject({
      ok: false,
      failure: 'micalg-mismatch',
      reason: 'micalg=sha-512 in the Content-Type, but the signature uses sha-256; clients that hash with micalg (Thunderbird) reject it',
    });
    expect(checkIntegrity(edit(signed, /;\s*micalg=sha-256/, '')).ok).toBe(true);
  });

  it('a changed byte of the signed part', () => {
    const r = checkIntegrity(edit(signed, 'Line two.', 'Line tw0.'));
    expect(r).toMatchObject({ ok: false, failure: 'digest-mismatch', reason: "the signed part does not match the signature's sha-256 digest: its bytes changed after signing" });
    expect(!r.ok && r.certificate?.serialNumber).toBe(bundle.leaf.serialNumber);
  });

  it('a damaged signature value over intact attributes', async () => {
    const damaged = await sign((der) => {
      der[der.length - 1]! ^= 1;
      return der;
    });
    const r = checkIntegrity(damaged, { signer: bundle.leaf });
    expect(r).toMatchObject({ ok: false, failure: 'bad-signature' });
    expect(!r.ok && r.reason).toMatch(/^the signed part matches its digest, but the signature over the signed attributes does not verify with the signer's certificate \(.+\)$/);
    expect(selfVerificationFailure(damaged, bundle.leaf)).toBe(!r.ok && r.reason);
  });

  it('a signature part that is not CMS', () => {
    const b = boundaryOf(signed);
    const t = text(signed);
    const sigBody = t.indexOf('\r\n\r\n', t.lastIndexOf('Content-Type: application/pkcs7-signature')) + 4;
    const garbage = Buffer.from(t.slice(0, sigBody) + Buffer.from('not a signature at all').toString('base64') + `\r\n\r\n--${b}--\r\n`, 'latin1');
    const r = checkIntegrity(garbage);
    expect(r).toMatchObject({ ok: false, failure: 'signature-format', reason: expect.stringMatching(/^the signature is not/) });
  });
});

describe('readTlv (DER)', () => {
  const read = (bytes: number[], pos = 0, limit?: number) => readTlv(Buffer.from(bytes), pos, limit);

  it('short, long and indefinite lengths', () => {
    expect(read([0x04, 0x02, 0xaa, 0xbb])).toEqual({ tag: 0x04, start: 0, valueStart: 2, valueEnd: 4, end: 4 });
    expect(read([0x04, 0x81, 0x02, 0xaa, 0xbb])).toEqual({ tag: 0x04, start: 0, valueStart: 3, valueEnd: 5, end: 5 });
    expect(read([0x04, 0x82, 0x00, 0x01, 0xaa])).toEqual({ tag: 0x04, start: 0, valueStart: 4, valueEnd: 5, end: 5 });
    expect(read([0x30, 0x80, 0x04, 0x01, 0xaa, 0x00, 0x00])).toEqual({ tag: 0x30, start: 0, valueStart: 2, valueEnd: 5, end: 7 });
    expect(read([0xff, 0x04, 0x00], 1)).toEqual({ tag: 0x04, start: 1, valueStart: 3, valueEnd: 3, end: 3 });
    // a long-form length whose octets end exactly at the limit, with no contents
    expect(read([0x04, 0x81, 0x00])).toEqual({ tag: 0x04, start: 0, valueStart: 3, valueEnd: 3, end: 3 });
    // only 00 00 ends an indefinite length: an element that starts with 00 is read as one
    expect(read([0x30, 0x80, 0x00, 0x01, 0xaa, 0x00, 0x00])).toEqual({ tag: 0x30, start: 0, valueStart: 2, valueEnd: 5, end: 7 });
  });

  it.each<[string, number[], number, number | undefined, string]>([
    ['one byte', [0x04], 0, undefined, 'truncated element at offset 0'],
    ['a header past the limit', [0x30, 0x02, 0x04, 0x00], 2, 3, 'truncated element at offset 2'],
    ['a high tag number', [0x1f, 0x01, 0x00], 0, undefined, 'unsupported high tag number at offset 0'],
    ['indefinite length on a primitive', [0x04, 0x80, 0x00, 0x00], 0, undefined, 'indefinite length on a primitive element at offset 0'],
    ['no end-of-contents', [0x30, 0x80, 0x04, 0x00], 0, undefined, 'unterminated indefinite length at offset 0'],
    ['a five-octet length', [0x04, 0x85, 0, 0, 0, 0, 1, 0xaa], 0, undefined, 'unsupported length of 5 octets at offset 0'],
    ['length octets past the end', [0x04, 0x82, 0x00], 0, undefined, 'unsupported length of 2 octets at offset 0'],
    ['contents past the container', [0x04, 0x03, 0xaa, 0xbb], 0, undefined, 'element at offset 0 runs past its container'],
  ])('refuses %s', (_name, bytes, pos, limit, message) => {
    expect(() => read(bytes, pos, limit)).toThrow(DerError);
    expect(() => read(bytes, pos, limit)).toThrow(new RegExp(`^${message}$`));
  });

  it('a four-octet length is read whole', () => {
    const bytes = [0x04, 0x84, 0x00, 0x00, 0x00, 0x02, 0xaa, 0xbb];
    expect(read(bytes)).toEqual({ tag: 0x04, start: 0, valueStart: 6, valueEnd: 8, end: 8 });
  });
});

describe('DER values (der.ts)', () => {
  const tlv = (tag: number, content: string | number[]) => {
    const body = typeof content === 'string' ? Buffer.from(content, 'latin1') : Buffer.from(content);
    const buf = Buffer.concat([Buffer.from([tag, body.length]), body]);
    return { buf, t: readTlv(buf, 0) };
  };
  const time = (tag: number, s: string) => {
    const { buf, t } = tlv(tag, s);
    return timeOf(buf, t)?.toISOString();
  };

  it('reads UTCTime (two-digit years 50–99 are 19xx, 00–49 20xx) and GeneralizedTime, with or without seconds', () => {
    expect(time(0x17, '261130154312Z')).toBe('2026-11-30T15:43:12.000Z');
    expect(time(0x17, '2611301543Z')).toBe('2026-11-30T15:43:00.000Z');
    expect(time(0x17, '491231235959Z')).toBe('2049-12-31T23:59:59.000Z');
    expect(time(0x17, '500101000000Z')).toBe('1950-01-01T00:00:00.000Z');
    expect(time(0x18, '20261130154312Z')).toBe('2026-11-30T15:43:12.000Z');
    expect(time(0x18, '202611301543Z')).toBe('2026-11-30T15:43:00.000Z');
    expect(time(0x18, '20261130154312.250Z')).toBe('2026-11-30T15:43:12.000Z');
    expect(time(0x18, '19491231235959Z')).toBe('1949-12-31T23:59:59.000Z');
  });

  it.each<[number, string]>([
    [0x17, '261130154312'], // no Z
    [0x17, '261130154312+0100'],
    [0x17, 'x61130154312Z'],
    [0x17, '2611301543121Z'],
    [0x17, '26113015431Z'],
    [0x17, ' 261130154312Z'],
    [0x17, '20261130154312Z'], // a GeneralizedTime in a UTCTime
    [0x18, '261130154312Z'], // and the other way round (month 30 of the year 2611)
    [0x17, '261301000000Z'], // month 13
    [0x17, '260230000000Z'], // 30 February
    [0x18, '20261130246000Z'], // hour 24
    [0x18, '20261130236000Z'], // minute 60
    [0x18, '2026113015431xZ'],
    [0x18, '20261130154312.Z'],
    [0x18, '20261130154312Z '],
    [0x17, '261130154312Z0'],
    [0x18, 'x20261130154312Z'],
    [0x04, '261130154312Z'], // not a time at all
    [0x04, '20261130154312Z'],
  ])('no time: tag %i, %j', (tag, s) => {
    expect(time(tag, s)).toBeUndefined();
  });

  it('OIDs: dotted to content octets, and read back only from an OBJECT IDENTIFIER', () => {
    expect(oidHex('1.2.840.113549.1.7.2')).toBe('2a864886f70d010702');
    expect(oidHex('2.16.840.1.101.3.4.2.1')).toBe('608648016503040201');
    const oid = tlv(0x06, [0x2a, 0x86, 0x48]);
    expect(oidOf(oid.buf, oid.t)).toBe('2a8648');
    const octets = tlv(0x04, [0x2a, 0x86, 0x48]);
    expect(oidOf(octets.buf, octets.t)).toBe('');
  });

  it('children of a constructed element, and its tag checked first', () => {
    const seq = Buffer.from([0x30, 0x05, 0x04, 0x01, 0xaa, 0x05, 0x00]);
    const t = readTlv(seq, 0);
    expect(childrenOf(seq, t).map((c) => [c.tag, c.start, c.end])).toEqual([[0x04, 2, 5], [0x05, 5, 7]]);
    expect(contentsOf(seq, t, 0x30, 'the sequence')).toHaveLength(2);
    expect(() => contentsOf(seq, t, 0x31, 'the set')).toThrow(new DerError('the set: expected tag 0x31, found 0x30'));
    expect(() => contentsOf(seq, t, 0x31, 'the set')).toThrow(/^the set: expected tag 0x31, found 0x30$/);
    expect(new DerError('x').name).toBe('DerError');
  });
});
