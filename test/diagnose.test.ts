import { spawnSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeBase64 } from '../src/mime/transfer-encoding.js';
import { diagnose as diagnoseMessage } from '../src/verify/diagnose.js';
import { sendMessage } from './support/client.js';
import { createTestPki, openssl, type Leaf, type TestPki } from './support/pki.js';
import { startTestRelay, type TestRelay } from './support/relay.js';
import { CLI } from './support/served.js';
import { startSink, type Sink } from './support/sink.js';
import { splitSigned, verifyOpenssl } from './support/verify.js';

/*
 * `smime-relay diagnose FILE [--ca FILE] [--json]` on real relay-signed messages, damaged the way
 * hops damage mail. Every case runs the command (the compiled dist/) and checks the exit code and
 * the answer: 0 intact, 1 broken with the change and the part named, 2 not a signed message.
 */

const SENDER = 'reports@example.test';
const ALT = 'alt-boundary-7Qz';
const MIX = 'mix-boundary-4Kd';

/** multipart/mixed with a preamble > (alternative without one > 8bit text + HTML) + a PDF. */
const original = Buffer.from(
  [
    `From: Reports <${SENDER}>`,
    'To: finance@example.org',
    'Subject: Quarterly report',
    'Date: Mon, 30 Nov 2026 08:00:00 +0000',
    'Message-ID: <q3-report@example.test>',
    'MIME-Version: 1.0',
    `Content-Type: multipart/mixed; boundary="${MIX}"`,
    '',
    'This is a multi-part message in MIME format.',
    `--${MIX}`,
    `Content-Type: multipart/alternative; boundary="${ALT}"`,
    '',
    `--${ALT}`,
    'Content-Type: text/plain; charset=utf-8',
    'Content-Transfer-Encoding: 8bit',
    '',
    'Grüße aus der Buchhaltung.   ',
    'The numbers are attached.',
    '',
    `--${ALT}`,
    'Content-Type: text/html; charset=utf-8',
    'Content-Transfer-Encoding: 8bit',
    '',
    '<p>Grüße aus der Buchhaltung.</p>',
    `--${ALT}--`,
    '',
    `--${MIX}`,
    'Content-Type: application/pdf; name="report.pdf"',
    'Content-Disposition: attachment; filename="report.pdf"',
    'Content-Description: Q3 figures ',
    'Content-Transfer-Encoding: base64',
    '',
    encodeBase64(Buffer.from(Array.from({ length: 900 }, (_, k) => (k * 7) % 256))).toString('latin1'),
    `--${MIX}--`,
    '',
  ].join('\r\n'),
);

let pki: TestPki;
let otherPki: TestPki;
let leaf: Leaf;
let sink: Sink;
let work: string;
/** The relay's output for `original`, and for the same message with header protection. */
let signed: Buffer;
let signedHp: Buffer;

async function relaySign(env: Record<string, string>, raw: Buffer): Promise<Buffer> {
  const relay: TestRelay = await startTestRelay({ SMIME_RELAY_CERT: leaf.bundlePath, SMIME_RELAY_UPSTREAM: sink.url, ...env });
  try {
    const before = sink.received.length;
    const r = await sendMessage(relay.address.port, SENDER, ['finance@example.org'], raw);
    expect(r.final?.code, r.final?.text).toBe(250);
    return (await sink.waitFor(before + 1))[before]!.raw;
  } finally {
    await relay.close();
  }
}

beforeAll(async () => {
  pki = await createTestPki();
  otherPki = await createTestPki();
  leaf = await pki.issueLeaf('reports', { emails: [SENDER] });
  sink = await startSink();
  work = mkdtempSync(join(tmpdir(), 'smr-diagnose-'));
  signed = await relaySign({}, original);
  signedHp = await relaySign({ SMIME_RELAY_HEADER_PROTECTION: 'clear' }, original);
  // The fixture is what it claims: verifies in openssl, and has the parts the damage below needs.
  expect((await verifyOpenssl(signed, pki.rootCertPath)).ok).toBe(true);
  expect(text(signed)).toContain('Content-Transfer-Encoding: quoted-printable\r\n\r\nGr=C3=BC=C3=9Fe aus der Buchhaltung.  =20\r\n');
}, 60_000);

afterAll(async () => {
  await sink?.close();
  await pki?.cleanup();
  await otherPki?.cleanup();
  if (work) rmSync(work, { recursive: true, force: true });
});

const text = (b: Buffer) => b.toString('latin1');
const bytes = (s: string) => Buffer.from(s, 'latin1');

/** Replaces exactly one occurrence, so a damage that silently did nothing fails the test. */
function once(message: Buffer, from: string | RegExp, to: string | ((m: string) => string)): Buffer {
  const s = text(message);
  const matches = typeof from === 'string' ? s.split(from).length - 1 : (s.match(new RegExp(from.source, from.flags.replace('g', '') + 'g')) ?? []).length;
  if (matches !== 1) throw new Error(`damage fixture: ${String(from)} occurs ${matches} times`);
  return bytes(typeof to === 'string' ? s.replace(from, () => to) : s.replace(from, to));
}

/** The signed part's byte range in the message, so a damage can be confined to it. */
function inSignedPart(message: Buffer, change: (part: string) => string): Buffer {
  const { content } = splitSigned(message);
  const start = message.indexOf(content);
  return Buffer.concat([message.subarray(0, start), bytes(change(text(content))), message.subarray(start + content.length)]);
}

let seq = 0;
/**
 * Runs the command on `message` for the exit code and the printed answer; the structured answer
 * (what --json prints, checked to be the same below) comes from the same function in-process.
 */
function diagnose(message: Buffer, ...args: string[]) {
  const file = join(work, `m${++seq}.eml`);
  writeFileSync(file, message);
  const human = spawnSync(process.execPath, [CLI, 'diagnose', file, ...args], { encoding: 'utf8' });
  const ca = args[0] === '--ca' ? [new X509Certificate(readFileSync(args[1]!))] : undefined;
  const json = JSON.parse(JSON.stringify(diagnoseMessage(message, { ca }))) as Record<string, any>;
  expect(json.exitCode, human.stdout).toBe(human.status);
  return { code: human.status, out: human.stdout, err: human.stderr, json, file };
}

describe('intact: exit 0 with the signer, the mailbox and the signing time', () => {
  it('the message as the relay sent it', () => {
    const d = diagnose(signed);
    expect(d.code, d.out).toBe(0);
    expect(d.out).toMatch(/^intact: the signature verifies\n/);
    expect(d.out).toMatch(/signer: +O=smime-relay tests, CN=reports@example\.test \(issued by O=smime-relay tests, CN=Test Intermediate CA, serial [0-9A-F]+\)/);
    expect(d.out).toMatch(/mailbox: +reports@example\.test\n/);
    expect(d.out).toMatch(/signed: +20\d\d-\d\d-\d\d \d\d:\d\d:\d\d UTC\n/);
    expect(d.json).toMatchObject({ verdict: 'intact', exitCode: 0, signer: { mailboxes: [SENDER] } });
  });

  it('a copy saved with LF line endings throughout', () => {
    const d = diagnose(bytes(text(signed).replace(/\r\n/g, '\n')));
    expect(d.code, d.out).toBe(0);
    expect(d.out).toMatch(/note: +the file has LF line endings throughout/);
  });

  it('outer headers changed and added: Received, a tagged Subject', () => {
    let m = once(signed, 'Subject: Quarterly report\r\n', 'Subject: [EXTERNAL] Quarterly report\r\n');
    m = Buffer.concat([bytes('Received: from mx.example.org by mail.example.org; Mon, 30 Nov 2026 08:00:01 +0000\r\n'), m]);
    expect(diagnose(m).code).toBe(0);
  });

  it('the outer preamble and epilogue changed, and the multipart/signed boundary renamed everywhere: none of it is signed', () => {
    const boundary = /boundary="([^"]+)"/.exec(text(signed))![1]!;
    let m = once(signed, 'This is a cryptographically signed message in MIME format.', 'Scanned by MailGuard.');
    m = bytes(text(m).split(boundary).join('renamed-by-a-hop-1234') + 'An epilogue a list server added.\r\n');
    const d = diagnose(m);
    expect(d.code, d.out).toBe(0);
  });

  it('with header protection, lists the protected headers whose outer copy differs', () => {
    const m = once(signedHp, /\r\nSubject: Quarterly report\r\n(?=(?:[^\r]|\r(?!\n\r\n))*?Content-Type: multipart\/signed)/, '\r\nSubject: [EXTERNAL] Quarterly report\r\n');
    const d = diagnose(m);
    expect(d.code, d.out).toBe(0);
    expect(d.out).toMatch(/header: +Subject: signed "Quarterly report", outer "\[EXTERNAL\] Quarterly report"/);
    expect(d.json.protectedHeaders).toEqual([{ name: 'Subject', signed: 'Quarterly report', outer: '[EXTERNAL] Quarterly report' }]);
  });
});

/** [name, damage, kind, the change as printed, the part named] */
const damages: [string, () => Buffer, string, RegExp, string | undefined][] = [
  [
    'quoted-printable decoded to 8bit',
    () => once(signed, 'Content-Transfer-Encoding: quoted-printable\r\n\r\nGr=C3=BC=C3=9Fe aus der Buchhaltung.  =20\r\n', 'Content-Transfer-Encoding: 8bit\r\n\r\nGr\xc3\xbc\xc3\x9fe aus der Buchhaltung.   \r\n'),
    'decoded', /quoted-printable decoded to 8bit/, '1.1.1',
  ],
  [
    'quoted-printable re-encoded as base64',
    () => once(signed, /Content-Transfer-Encoding: quoted-printable\r\n\r\n(Gr=C3=BC=C3=9Fe aus der Buchhaltung\.  =20\r\nThe numbers are attached\.\r\n)/, () =>
      `Content-Transfer-Encoding: base64\r\n\r\n${Buffer.from('Grüße aus der Buchhaltung.   \r\nThe numbers are attached.\r\n').toString('base64')}\r\n`),
    're-encoded', /quoted-printable re-encoded as base64/, '1.1.1',
  ],
  [
    'quoted-printable re-encoded with other line breaks',
    () => once(signed, 'Gr=C3=BC=C3=9Fe aus der Buchhaltung.  =20\r\n', 'Gr=C3=BC=C3=9Fe aus der =\r\nBuchhaltung.  =20\r\n'),
    're-encoded', /quoted-printable re-encoded \(other line breaks or escapes\)/, '1.1.1',
  ],
  [
    'base64 re-wrapped to 64 characters',
    () => {
      const b64 = /Content-Transfer-Encoding: base64\r\n\r\n([A-Za-z0-9+/=\r\n]+?)\r\n--mix/.exec(text(signed))![1]!;
      return once(signed, b64, b64.replace(/\r\n/g, '').replace(/(.{64})(?=.)/g, '$1\r\n'));
    },
    'base64-rewrapped', /base64 re-wrapped from 76 to 64 characters per line/, '1.2',
  ],
  ['CRLF turned into LF in the signed part only', () => inSignedPart(signed, (p) => p.replace(/\r\n/g, '\n')), 'line-endings', /line endings changed from CRLF to LF/, '1'],
  ['trailing whitespace added', () => once(signed, 'The numbers are attached.\r\n', 'The numbers are attached.  \r\n'), 'trailing-whitespace-added', /trailing whitespace added at the end of 1 line/, '1.1.1'],
  ['trailing whitespace stripped', () => once(signed, 'Content-Description: Q3 figures \r\n', 'Content-Description: Q3 figures\r\n'), 'trailing-whitespace-stripped', /trailing whitespace stripped from the Content-Description header/, '1.2'],
  [
    'a part header refolded',
    () => once(signed, 'Content-Type: application/pdf; name="report.pdf"\r\n', 'Content-Type: application/pdf;\r\n\tname="report.pdf"\r\n'),
    'header-refolded', /header Content-Type refolded/, '1.2',
  ],
  [
    'a part header re-cased',
    () => once(signed, 'Content-Disposition: attachment; filename="report.pdf"', 'content-disposition: attachment; filename="report.pdf"'),
    'header-recased', /re-cased/, '1.2',
  ],
  [
    'part headers reordered',
    () => once(signed, 'Content-Type: application/pdf; name="report.pdf"\r\nContent-Disposition: attachment; filename="report.pdf"\r\n', 'Content-Disposition: attachment; filename="report.pdf"\r\nContent-Type: application/pdf; name="report.pdf"\r\n'),
    'header-reordered', /header fields reordered/, '1.2',
  ],
  ['the preamble removed', () => once(signed, '\r\nThis is a multi-part message in MIME format.\r\n', '\r\n'), 'preamble-removed', /preamble removed/, '1'],
  ['a preamble added', () => once(signed, `boundary="${ALT}"\r\n\r\n--${ALT}`, `boundary="${ALT}"\r\n\r\nThis message is in MIME format.\r\n--${ALT}`), 'preamble-added', /preamble added/, '1.1'],
  ['an epilogue added', () => once(signed, `--${MIX}--\r\n`, `--${MIX}--\r\nScanned for viruses by GateKeeper.\r\n`), 'epilogue-added', /epilogue added/, '1'],
  ['the epilogue removed', () => once(signed, `--${MIX}--\r\n`, `--${MIX}--`), 'epilogue-removed', /epilogue .* removed/, '1'],
  ['a part boundary changed in its Content-Type only', () => once(signed, `boundary="${ALT}"`, 'boundary="rewritten-by-hop"'), 'boundary-changed', /boundary changed \(the Content-Type names "rewritten-by-hop" but the delimiters use "alt-boundary-7Qz"\)/, '1.1'],
];

describe('broken: exit 1, naming the change and the part', () => {
  it.each(damages)('%s', async (_name, damage, kind, change, position) => {
    const damaged = damage();
    // Really broken: openssl rejects it; except LF line endings, which openssl turns back into
    // CRLF line by line before hashing (verifiers that hash the bytes as sent do not).
    expect((await verifyOpenssl(damaged, pki.rootCertPath)).ok).toBe(kind === 'line-endings');
    const d = diagnose(damaged);
    expect(d.code, d.out).toBe(1);
    expect(d.json.verdict).toBe('broken');
    expect(d.json.change?.kind, d.out).toBe(kind);
    expect(d.json.change.description).toMatch(change);
    expect(d.out).toMatch(/^broken: the signed part was changed in transit: /);
    expect(d.out).toMatch(new RegExp(`change: +.*${change.source}`));
    if (position) expect(d.json.change.parts.map((p: { position: string }) => p.position)).toContain(position);
    // the signer is still named: the admin learns whose mail it was
    expect(d.out).toMatch(/mailbox: +reports@example\.test/);
  });

  it('names the part by content type, filename and position', () => {
    const d = diagnose(damages.find(([n]) => n.startsWith('base64 re-wrapped'))![1]());
    expect(d.out).toMatch(/part: +part 1\.2 \(application\/pdf, "report\.pdf"\)/);
  });

  it('the top-level boundary parameter changed but not the delimiters: the signed bytes are intact, the message is not', () => {
    const boundary = /boundary="([^"]+)"/.exec(text(signed))![1]!;
    const d = diagnose(once(signed, `boundary="${boundary}"`, 'boundary="a-new-boundary"'));
    expect(d.code, d.out).toBe(1);
    expect(d.json.change.kind).toBe('boundary-changed');
    expect(d.out).toMatch(/the Content-Type names "a-new-boundary" but the parts are delimited by/);
  });

  it('content altered: nothing restores the digest, so it says altered, not re-encoded', () => {
    const d = diagnose(once(signed, 'The numbers are attached.', 'The numbers are attacked.'));
    expect(d.code, d.out).toBe(1);
    expect(d.json).toMatchObject({ verdict: 'broken', altered: true });
    expect(d.out).toMatch(/^broken: the content was altered, not re-encoded in transport/);
  });

  it('--json prints the same diagnosis as a document', () => {
    const d = diagnose(damages[0]![1]());
    const r = spawnSync(process.execPath, [CLI, 'diagnose', d.file, '--json'], { encoding: 'utf8' });
    expect(r.status).toBe(1);
    expect(JSON.parse(r.stdout)).toEqual(d.json);
  });

  it('the signature value itself altered', () => {
    // 100 base64 characters before the end of smime.p7s: inside the signature value (the last 344)
    const end = text(signed).lastIndexOf('\r\n\r\n------smime-relay-');
    let at = end - 100;
    while (!/[A-Za-z0-9+/]/.test(text(signed)[at]!)) at--;
    const m = Buffer.from(signed);
    m[at] = m[at] === 0x41 ? 0x42 : 0x41;
    const d = diagnose(m);
    expect(d.code, d.out).toBe(1);
    expect(d.out).toMatch(/^broken: the signed part matches its digest, but the signature over the signed attributes does not verify/);
  });
});

describe('not a signed message, or unreadable: exit 2', () => {
  it.each([
    ['a plain message', original, /not clear-signed: its Content-Type is multipart\/mixed/],
    ['not mail at all', bytes('\x00\x01\x02 binary junk'), /not clear-signed/],
  ])('%s', (_name, m, why) => {
    const d = diagnose(m);
    expect(d.code, d.out).toBe(2);
    expect(d.out).toMatch(why);
  });

  it('a missing file, or no FILE', () => {
    const r = spawnSync(process.execPath, [CLI, 'diagnose', join(work, 'nope.eml')], { encoding: 'utf8' });
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/ENOENT|no such file/);
    expect(spawnSync(process.execPath, [CLI, 'diagnose'], { encoding: 'utf8' }).status).toBe(2);
  });

  it('--help', () => {
    const r = spawnSync(process.execPath, [CLI, 'diagnose', '--help'], { encoding: 'utf8' });
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^Usage: smime-relay diagnose FILE \[--ca FILE\] \[--json\]/);
  });
});

describe('trust is reported apart from integrity, and decides the exit code only with --ca', () => {
  it('--ca with the issuing root: trusted, exit 0', () => {
    const d = diagnose(signed, '--ca', pki.rootCertPath);
    expect(d.code, d.out).toBe(0);
    expect(d.out).toMatch(/chain: +.*→.*\(trusted\)/);
  });

  it('another root: reported without --ca (exit 0), NOT trusted with it (exit 1)', () => {
    const without = diagnose(signed);
    expect(without.code).toBe(0);
    expect(without.out).toMatch(/not judged: give --ca FILE/);
    const withCa = diagnose(signed, '--ca', otherPki.rootCertPath);
    expect(withCa.code, withCa.out).toBe(1);
    expect(withCa.out).toMatch(/^intact: the signature verifies, but the signer is not trusted/);
    expect(withCa.out).toMatch(/trust: +the chain .* does not lead to a certificate in --ca/);
  });

  it('From not in the certificate (the outer From is not signed): a warning, exit 1 only with --ca', () => {
    const m = once(signed, `From: Reports <${SENDER}>`, 'From: Reports <ceo@example.test>');
    const without = diagnose(m);
    expect(without.code).toBe(0);
    expect(without.out).toMatch(/warning: +From <ceo@example\.test> is not in the signer certificate/);
    expect(diagnose(m, '--ca', pki.rootCertPath).code).toBe(1);
  });

  it('a certificate expired at signing time (signed by openssl smime, not the relay, which refuses expired certificates)', async () => {
    const expired = await pki.issueLeaf('expired', { emails: [SENDER], notBefore: new Date(Date.now() - 400 * 86_400_000), notAfter: new Date(Date.now() - 30 * 86_400_000) });
    const inner = join(work, 'inner.eml');
    writeFileSync(inner, 'Content-Type: text/plain\r\n\r\nold mail\r\n');
    const out = await openssl(['smime', '-sign', '-in', inner, '-signer', expired.certPath, '-inkey', expired.keyPath, '-certfile', pki.chainPath, '-md', 'sha256']);
    const m = Buffer.concat([bytes(`From: ${SENDER}\r\nTo: a@example.org\r\nSubject: old\r\n`), out]);
    const without = diagnose(m);
    expect(without.code, without.out).toBe(0);
    expect(without.out).toMatch(/warning: +O=smime-relay tests, CN=reports@example\.test had expired at signing time/);
    expect(diagnose(m, '--ca', pki.rootCertPath).code).toBe(1);
  });
});

describe('signatures the relay did not make are read too', () => {
  it.each(['rsa', 'ec'] as const)('openssl smime -sign (x-pkcs7-signature, its own attributes), %s signer', async (keyType) => {
    const l = await pki.issueLeaf(`foreign-${keyType}`, { emails: [SENDER], keyType });
    const inner = join(work, `foreign-${keyType}.eml`);
    writeFileSync(inner, 'Content-Type: text/plain; charset=us-ascii\r\n\r\nsigned elsewhere\r\n');
    const out = await openssl(['smime', '-sign', '-in', inner, '-signer', l.certPath, '-inkey', l.keyPath, '-certfile', pki.chainPath, '-md', 'sha256']);
    const m = Buffer.concat([bytes(`From: ${SENDER}\r\nTo: a@example.org\r\nSubject: foreign\r\n`), out]);
    const d = diagnose(m, '--ca', pki.rootCertPath);
    expect(d.code, d.out).toBe(0);
    const broken = diagnose(once(m, 'signed elsewhere', 'signed elsewhere!'));
    expect(broken.code).toBe(1);
  });

  it('an EC P-256 signer through the relay', async () => {
    const ecLeaf = await pki.issueLeaf('reports-ec', { emails: [SENDER], keyType: 'ec' });
    const relay = await startTestRelay({ SMIME_RELAY_CERT: ecLeaf.bundlePath, SMIME_RELAY_UPSTREAM: sink.url });
    try {
      const before = sink.received.length;
      expect((await sendMessage(relay.address.port, SENDER, ['a@example.org'], original)).final?.code).toBe(250);
      const m = (await sink.waitFor(before + 1))[before]!.raw;
      expect(diagnose(m, '--ca', pki.rootCertPath).code).toBe(0);
      expect(diagnose(once(m, 'The numbers are attached.\r\n', 'The numbers are attached.  \r\n')).json.change.kind).toBe('trailing-whitespace-added');
    } finally {
      await relay.close();
    }
  });
});
