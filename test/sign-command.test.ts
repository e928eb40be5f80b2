import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestPki, type Leaf, type TestPki } from './support/pki.js';
import { assertAllVerify, splitSigned, verifyOpenssl } from './support/verify.js';

/*
 * `smime-relay sign` as a user runs it: a real process, real files and pipes, real openssl.
 * It runs the source through tsx so it never races another test file that rebuilds dist/.
 */

const root = new URL('..', import.meta.url).pathname;
const SENDER = 'billing@example.test';

let pki: TestPki;
let leaf: Leaf;
let dir: string;

beforeAll(async () => {
  pki = await createTestPki();
  leaf = await pki.issueLeaf('billing', { emails: [SENDER] });
  dir = await mkdtemp(join(tmpdir(), 'sign-cmd-'));
});

afterAll(async () => {
  await pki?.cleanup();
  if (dir) await rm(dir, { recursive: true, force: true });
});

interface Run {
  code: number | null;
  stdout: Buffer;
  stderr: string;
}

function sign(args: string[], stdin?: Buffer): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'sign', ...args], {
      cwd: root,
      env: { PATH: process.env.PATH! },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    let err = '';
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout: Buffer.concat(out), stderr: err }));
    child.stdin.end(stdin ?? '');
  });
}

const message = (from = SENDER) =>
  Buffer.from(
    `Received: from app.internal by relay; Mon, 02 Mar 2026 10:00:00 +0000\r\nFrom: Billing <${from}>\r\nTo: customer@example.org\r\n` +
      `Subject: =?UTF-8?Q?Ihre_Rechnung?=\r\nDate: Mon, 02 Mar 2026 10:00:00 +0000\r\nMessage-ID: <inv-42@example.test>\r\n` +
      `MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nBetrag: 12 €   \r\nFrom now on, pay by card.\r\n.\r\n`,
  );

describe('smime-relay sign', () => {
  it('--help explains the command', async () => {
    const r = await sign(['--help']);
    expect(r.code).toBe(0);
    expect(r.stdout.toString()).toMatch(/^Usage: smime-relay sign --cert PATH \[--in FILE\] \[--out FILE\]/);
  });

  it('--in/--out: the signed file verifies in OpenSSL, gpgsm and NSS, is 7-bit, and keeps the outer headers', async () => {
    const input = join(dir, 'in.eml');
    const output = join(dir, 'out.eml');
    await writeFile(input, message());
    const r = await sign(['--cert', leaf.bundlePath, '--in', input, '--out', output]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.length).toBe(0);
    const out = await readFile(output);
    await assertAllVerify(out, pki.rootCertPath);
    const text = out.toString('latin1');
    expect(/[^\x00-\x7f]/.test(text)).toBe(false);
    expect(text).toMatch(/^Received: from app\.internal by relay; Mon, 02 Mar 2026 10:00:00 \+0000\r\nFrom: Billing <billing@example\.test>\r\nTo: customer@example\.org\r\n/);
    expect(text).toMatch(/^Content-Type: multipart\/signed; protocol="application\/pkcs7-signature"; micalg=sha-256;/m);
    // The same 7-bit preparation as the relay: QP, the last trailing blank and a leading "From " escaped.
    expect(splitSigned(out).content.toString('latin1')).toContain('Betrag: 12 =E2=82=AC  =20\r\n=46rom now on');
  });

  it('reads standard input and writes standard output by default', async () => {
    const r = await sign(['--cert', leaf.bundlePath], message());
    expect(r.code, r.stderr).toBe(0);
    const verdict = await verifyOpenssl(r.stdout, pki.rootCertPath);
    expect(verdict.ok, verdict.detail).toBe(true);
  });

  it('refuses, with exit 1 and a clear reason, a message whose From the certificate does not cover; nothing is written', async () => {
    const input = join(dir, 'foreign.eml');
    const output = join(dir, 'foreign.out.eml');
    await writeFile(input, message('ceo@example.test'));
    const r = await sign(['--cert', leaf.bundlePath, '--in', input, '--out', output]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^smime-relay sign: refused: From <ceo@example\.test> is not a mailbox this relay signs for; it signs for: billing@example\.test/);
    expect(existsSync(output)).toBe(false);
  });

  it('refuses a certificate that has expired', async () => {
    const old = await pki.issueLeaf('expired', { emails: [SENDER], notBefore: new Date(Date.now() - 40 * 86400_000), notAfter: new Date(Date.now() - 86400_000) });
    const r = await sign(['--cert', old.bundlePath], message());
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/refused: .*the certificate expired on/);
    expect(r.stdout.length).toBe(0);
  });

  it('--header-protection clear copies the headers into the signed part (hp="clear"), and it still verifies', async () => {
    const r = await sign(['--cert', leaf.bundlePath, '--header-protection', 'clear'], message());
    expect(r.code, r.stderr).toBe(0);
    const entity = splitSigned(r.stdout).content.toString('latin1');
    const head = entity.slice(0, entity.indexOf('\r\n\r\n'));
    expect(head).toMatch(/hp="clear"/);
    expect(head).toMatch(/^From: Billing <billing@example\.test>$/m);
    expect(head).toMatch(/^Message-ID: <inv-42@example\.test>$/m);
    expect(head).not.toMatch(/^Received:/m);
    await assertAllVerify(r.stdout, pki.rootCertPath);
  });

  it('--engine native signs in-process, and the result verifies in all three', async () => {
    const r = await sign(['--cert', leaf.bundlePath, '--engine', 'native'], message());
    expect(r.code, r.stderr).toBe(0);
    await assertAllVerify(r.stdout, pki.rootCertPath);
  });

  it('--cert DIR picks the bundle that covers the From address', async () => {
    const other = await pki.issueLeaf('other', { emails: ['other@example.test'] });
    const certs = join(dir, 'certs');
    await mkdir(certs, { recursive: true });
    await copyFile(other.bundlePath, join(certs, 'a-other.pem'));
    await copyFile(leaf.bundlePath, join(certs, 'b-billing.pem'));
    const r = await sign(['--cert', certs], message());
    expect(r.code, r.stderr).toBe(0);
    const verdict = await verifyOpenssl(r.stdout, pki.rootCertPath);
    expect(verdict.ok, verdict.detail).toBe(true);
  });

  it('copies an already signed message unchanged instead of signing it twice', async () => {
    const once = await sign(['--cert', leaf.bundlePath], message());
    expect(once.code).toBe(0);
    const twice = await sign(['--cert', leaf.bundlePath], once.stdout);
    expect(twice.code).toBe(0);
    expect(twice.stdout.equals(once.stdout)).toBe(true);
    expect(twice.stderr).toMatch(/already multipart\/signed; copied unchanged/);
  });

  it('usage errors exit 2: no certificate, an unknown engine', async () => {
    const none = await sign([], message());
    expect(none.code).toBe(2);
    expect(none.stderr).toMatch(/--cert PATH is required/);
    const bad = await sign(['--cert', leaf.bundlePath, '--engine', 'gpg'], message());
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/SMIME_RELAY_ENGINE \(--engine/);
  });
});
