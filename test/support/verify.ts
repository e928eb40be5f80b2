import { X509Certificate } from 'node:crypto';
import { accessSync, constants } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { delimiter, join } from 'node:path';
import { makeTempDir, run, type RunResult } from './pki.js';

/**
 * Three independent S/MIME verifiers, the engines behind real clients: OpenSSL, gpgsm (KMail,
 * Evolution) and NSS cmsutil (Thunderbird). Each call starts from a fresh trust store holding only
 * the given root, so nothing one test imported can make another test pass.
 */

export type Verifier = 'openssl' | 'gpgsm' | 'nss';
export interface VerifyResult {
  verifier: Verifier;
  ok: boolean;
  detail: string;
}

const TIMEOUT_MS = 30_000;
const CRLF = '\r\n';

/**
 * Splits a multipart/signed message into the exact signed bytes and the DER signature. The content
 * runs from just after "--boundary CRLF" to just before "CRLF--boundary": the CRLF in front of a
 * delimiter belongs to the delimiter (RFC 2046 §5.1.1), not to the signed entity.
 */
export function splitSigned(message: Buffer): { content: Buffer; signature: Buffer; boundary: string; topHeaders: string } {
  const headerEnd = message.indexOf(CRLF + CRLF);
  if (headerEnd < 0) throw new Error('splitSigned: no CRLF CRLF after the top-level header block');
  const topHeaders = message.subarray(0, headerEnd + 2).toString('latin1');
  const contentType = headerValue(topHeaders, 'content-type');
  if (!contentType || !/^\s*multipart\/signed\s*;/i.test(contentType)) {
    throw new Error(`splitSigned: top-level Content-Type is not multipart/signed: ${JSON.stringify(contentType)}`);
  }
  const m = /;\s*boundary\s*=\s*(?:"([^"]+)"|([^\s;"]+))/i.exec(contentType);
  const boundary = m?.[1] ?? m?.[2];
  if (!boundary) throw new Error(`splitSigned: no boundary parameter in ${JSON.stringify(contentType)}`);

  const bodyStart = headerEnd + 4;
  const delim = Buffer.from(`--${boundary}`, 'latin1');
  const lineDelim = Buffer.from(`${CRLF}--${boundary}`, 'latin1');
  // The first delimiter may open the body directly or follow a preamble.
  let first: number;
  if (message.subarray(bodyStart, bodyStart + delim.length).equals(delim)) first = bodyStart;
  else {
    const at = message.indexOf(lineDelim, bodyStart);
    if (at < 0) throw new Error(`splitSigned: boundary '${boundary}' never occurs in the body`);
    first = at + 2;
  }
  const contentStart = endOfLine(message, first + delim.length);
  const second = message.indexOf(lineDelim, contentStart);
  if (second < 0) throw new Error('splitSigned: no delimiter after the signed part');
  const content = message.subarray(contentStart, second);

  const sigPartStart = endOfLine(message, second + lineDelim.length);
  const close = message.indexOf(lineDelim, sigPartStart);
  if (close < 0) throw new Error('splitSigned: no delimiter after the signature part');
  const sigPart = message.subarray(sigPartStart, close).toString('latin1');
  const sigHeaderEnd = sigPart.indexOf(CRLF + CRLF);
  if (sigHeaderEnd < 0) throw new Error('splitSigned: signature part has no header/body separator');
  const sigHeaders = sigPart.slice(0, sigHeaderEnd + 2);
  const sigType = headerValue(sigHeaders, 'content-type') ?? '';
  if (!/^\s*application\/(x-)?pkcs7-signature\b/i.test(sigType)) {
    throw new Error(`splitSigned: second part is not application/pkcs7-signature: ${JSON.stringify(sigType)}`);
  }
  const cte = (headerValue(sigHeaders, 'content-transfer-encoding') ?? '').trim().toLowerCase();
  const sigBody = sigPart.slice(sigHeaderEnd + 4);
  const signature = cte === 'base64' ? Buffer.from(sigBody.replace(/\s+/g, ''), 'base64') : Buffer.from(sigBody, 'latin1');
  return { content, signature, boundary, topHeaders };
}

/** The offset just past the CRLF ending the delimiter line (RFC 2046 allows transport padding before it). */
function endOfLine(buf: Buffer, from: number): number {
  const eol = buf.indexOf(CRLF, from);
  if (eol < 0) throw new Error('splitSigned: delimiter line has no CRLF');
  const rest = buf.subarray(from, eol).toString('latin1');
  if (!/^[ \t]*$/.test(rest)) throw new Error(`splitSigned: unexpected text after a delimiter: ${JSON.stringify(rest)}`);
  return eol + 2;
}

/** The unfolded value of the first header named `name` in a CRLF header block. */
function headerValue(block: string, name: string): string | undefined {
  const unfolded = block.replace(/\r\n(?=[ \t])/g, '');
  for (const line of unfolded.split(CRLF)) {
    const colon = line.indexOf(':');
    if (colon > 0 && line.slice(0, colon).trim().toLowerCase() === name) return line.slice(colon + 1).trim();
  }
  return undefined;
}

function outcome(r: RunResult, extra = ''): string {
  const how = r.timedOut ? `killed after ${TIMEOUT_MS / 1000} s` : `exit ${r.code ?? r.signal}`;
  return [how, extra, r.stdout.toString('utf8').trim(), r.stderr.trim()].filter(Boolean).join('\n');
}

async function withTempDir<T>(prefix: string, fn: (dir: string) => Promise<T>): Promise<T> {
  const { dir, remove } = await makeTempDir(prefix);
  try {
    return await fn(dir);
  } finally {
    await remove();
  }
}

async function guard(verifier: Verifier, fn: () => Promise<VerifyResult>): Promise<VerifyResult> {
  try {
    return await fn();
  } catch (e) {
    return { verifier, ok: false, detail: `could not run: ${(e as Error).message}` };
  }
}

/** `openssl cms -verify` on the whole message as S/MIME input, as a client would receive it. */
export function verifyOpenssl(message: Buffer, rootCertPath: string): Promise<VerifyResult> {
  return guard('openssl', () => withTempDir('verify-openssl-', async (dir) => {
    const msg = join(dir, 'message.eml');
    await writeFile(msg, message);
    const r = await run('openssl', ['cms', '-verify', '-in', msg, '-CAfile', rootCertPath, '-purpose', 'smimesign', '-out', join(dir, 'content.out')], { timeoutMs: TIMEOUT_MS });
    return { verifier: 'openssl', ok: r.code === 0 && /Verification successful/.test(r.stderr), detail: outcome(r) };
  }));
}

/**
 * gpgsm with a fresh GNUPGHOME: it caches every certificate it sees, and a cached intermediate
 * would hide a message that forgot to carry its chain. The root is trusted through gpg-agent's
 * trustlist.txt (SHA-1 fingerprint, colon-separated, flag S).
 */
export function verifyGpgsm(message: Buffer, rootCertPath: string): Promise<VerifyResult> {
  return guard('gpgsm', () => withTempDir('verify-gpgsm-', async (home) => {
    const env = { ...process.env, GNUPGHOME: home };
    try {
      const { content, signature } = splitSigned(message);
      const contentPath = join(home, 'content.bin');
      const sigPath = join(home, 'smime.p7s');
      const root = new X509Certificate(await readFile(rootCertPath));
      await Promise.all([
        writeFile(contentPath, content),
        writeFile(sigPath, signature),
        writeFile(join(home, 'trustlist.txt'), `${root.fingerprint} S\n`),
        // No CRL or OCSP server exists for the test PKI; dirmngr would only add latency and a process to leak.
        writeFile(join(home, 'gpgsm.conf'), 'disable-crl-checks\ndisable-dirmngr\n'),
      ]);
      const imp = await run('gpgsm', ['--homedir', home, '--batch', '--import', rootCertPath], { env, timeoutMs: TIMEOUT_MS });
      if (imp.code !== 0) return { verifier: 'gpgsm', ok: false, detail: `import of the root failed: ${outcome(imp)}` };
      const r = await run('gpgsm', ['--homedir', home, '--batch', '--status-fd', '1', '--verify', sigPath, contentPath], { env, timeoutMs: TIMEOUT_MS });
      const status = r.stdout.toString('utf8');
      const ok = r.code === 0 && /^\[GNUPG:\] GOODSIG /m.test(status) && /^\[GNUPG:\] TRUST_FULLY\b/m.test(status);
      return { verifier: 'gpgsm', ok, detail: outcome(r) };
    } finally {
      // gpgsm autostarts a gpg-agent bound to this home; it must not outlive the directory.
      await run('gpgconf', ['--homedir', home, '--kill', 'all'], { env, timeoutMs: 10_000 }).catch(() => undefined);
    }
  }));
}

/**
 * NSS cmsutil (Thunderbird's engine) with a fresh database. `certutil -N` prompts forever on an
 * existing database, so the directory is always new and stdin is always /dev/null. With `-h` the
 * exit code is 0 even for a bad signature, so the verdict is read from signer0.status.
 */
export function verifyNss(message: Buffer, rootCertPath: string): Promise<VerifyResult> {
  return guard('nss', () => withTempDir('verify-nss-', async (dir) => {
    const { content, signature } = splitSigned(message);
    const db = `sql:${join(dir, 'db')}`;
    const contentPath = join(dir, 'content.bin');
    const sigPath = join(dir, 'smime.p7s');
    await Promise.all([writeFile(contentPath, content), writeFile(sigPath, signature), mkdir(join(dir, 'db'))]);
    const init = await run('certutil', ['-N', '-d', db, '--empty-password'], { timeoutMs: TIMEOUT_MS });
    if (init.code !== 0) return { verifier: 'nss', ok: false, detail: `certutil -N failed: ${outcome(init)}` };
    const add = await run('certutil', ['-A', '-d', db, '-n', 'root', '-t', 'C,C,C', '-i', rootCertPath], { timeoutMs: TIMEOUT_MS });
    if (add.code !== 0) return { verifier: 'nss', ok: false, detail: `certutil -A failed: ${outcome(add)}` };
    const r = await run('cmsutil', ['-D', '-i', sigPath, '-c', contentPath, '-d', db, '-u', '4', '-h', '1', '-n'], { timeoutMs: TIMEOUT_MS });
    const out = r.stdout.toString('utf8');
    const ok = !r.timedOut && /\bsigner0\.status=GoodSignature;/.test(out);
    return { verifier: 'nss', ok, detail: outcome(r) };
  }));
}

const BINARIES: Record<Verifier, string[]> = {
  openssl: ['openssl'],
  // gpgsm asks gpg-agent whether the root is trusted (trustlist.txt); without the agent every
  // signature fails as untrusted, which would look like a relay bug.
  gpgsm: ['gpgsm', 'gpgconf', 'gpg-agent'],
  nss: ['certutil', 'cmsutil'],
};

function onPath(bin: string, env: NodeJS.ProcessEnv): boolean {
  for (const d of (env.PATH ?? '').split(delimiter)) {
    if (!d) continue;
    try {
      accessSync(join(d, bin), constants.X_OK);
      return true;
    } catch {
      // not in this directory
    }
  }
  return false;
}

/** The verifiers whose binaries are installed (openssl is required regardless, see requireVerifiers). */
export function availableVerifiers(env: NodeJS.ProcessEnv = process.env): Verifier[] {
  return (Object.keys(BINARIES) as Verifier[]).filter((v) => BINARIES[v].every((b) => onPath(b, env)));
}

const INSTALL_HINT = 'apt-get install -y gpgsm gpg-agent libnss3-tools';
let warned = false;

/**
 * Locally a missing gpgsm/cmsutil is a loud warning and the tests that need it skip; under CI=true
 * it is a failure, because a green CI run must mean all three verifiers accepted the mail.
 */
export function requireVerifiers(env: NodeJS.ProcessEnv = process.env): void {
  const have = availableVerifiers(env);
  if (!have.includes('openssl')) throw new Error('openssl is not on PATH; the tests need it (apt-get install -y openssl)');
  const missing = (['gpgsm', 'nss'] as const).filter((v) => !have.includes(v));
  if (missing.length === 0) return;
  const what = missing.map((v) => `${v} (${BINARIES[v].join(', ')})`).join(' and ');
  if (env.CI === 'true') throw new Error(`S/MIME verifier missing under CI: ${what}. Install with: ${INSTALL_HINT}`);
  if (!warned) {
    warned = true;
    console.warn(
      `\n${'!'.repeat(78)}\n!! WARNING: S/MIME verifier missing: ${what}.\n` +
      `!! Tests that need it are SKIPPED, so signatures are NOT checked the way those clients check them.\n` +
      `!! Install with: ${INSTALL_HINT}\n${'!'.repeat(78)}\n`,
    );
  }
}

const VERIFY: Record<Verifier, (message: Buffer, rootCertPath: string) => Promise<VerifyResult>> = {
  openssl: verifyOpenssl,
  gpgsm: verifyGpgsm,
  nss: verifyNss,
};

/** Runs every installed verifier on the message, in parallel. */
export function verifyAll(message: Buffer, rootCertPath: string): Promise<VerifyResult[]> {
  return Promise.all(availableVerifiers().map((v) => VERIFY[v](message, rootCertPath)));
}

/** Expects every available verifier to accept the message; the error carries every verifier's output. */
export async function assertAllVerify(message: Buffer, rootCertPath: string): Promise<VerifyResult[]> {
  requireVerifiers();
  const results = await verifyAll(message, rootCertPath);
  const failed = results.filter((r) => !r.ok);
  if (failed.length > 0) {
    const report = results.map((r) => `--- ${r.verifier}: ${r.ok ? 'OK' : 'FAILED'}\n${r.detail}`).join('\n');
    throw new Error(`S/MIME signature rejected by ${failed.map((r) => r.verifier).join(', ')}\n${report}`);
  }
  return results;
}
