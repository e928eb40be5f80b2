import { execFileSync } from 'node:child_process';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { chmodSync, closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, renameSync, rmSync, statSync, unlinkSync, writeFileSync, writeSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { StartupError } from '../startup-error.js';
import { pemBlocks } from './bundle.js';

export const DEV_MAILBOX = 'notifications@localhost';

export interface DevCertificate {
  dir: string;
  bundlePath: string;
  caCertPath: string;
  created: boolean;
  /** Why an existing certs/dev was unusable and got replaced (a torn or foreign leftover). */
  replaced?: string;
}

export interface DevCertificateOptions {
  /** How long to wait for another process generating it; default 60 s. */
  waitMs?: number;
}

/** A lock this old is taken over even if its pid is alive: by then the pid belongs to someone else. */
const LOCK_STALE_MS = 10 * 60_000;

/**
 * The embedded default: a development CA and a certificate for notifications@localhost, made
 * with openssl on first start. No client trusts it; it exists so that `npm start` signs real mail
 * that verifies against certs/dev/ca.crt.
 *
 * Two relays may start at once in the same folder (a process manager starting several, a test
 * run). So it is generated under a lock (`certs/.dev.lock`), in a temporary folder that is renamed
 * into place: readers see either nothing or a complete certs/dev, never half of each run. A
 * leftover that does not hold together (a torn earlier run, files from two runs) is regenerated
 * rather than stopping every later start.
 */
export function ensureDevCertificate(dir = 'certs/dev', opts: DevCertificateOptions = {}): DevCertificate {
  const abs = resolve(dir);
  const result = (created: boolean, replaced?: string): DevCertificate => ({
    dir: abs,
    bundlePath: join(abs, `${DEV_MAILBOX}.pem`),
    caCertPath: join(abs, 'ca.crt'),
    created,
    ...(replaced ? { replaced } : {}),
  });
  if (problemWith(abs) === undefined) return result(false);

  const parent = dirname(abs);
  mkdirSync(parent, { recursive: true });
  return withLock(join(parent, `.${basename(abs)}.lock`), opts.waitMs ?? 60_000, () => {
    // Whoever held the lock before may have made it meanwhile.
    const problem = problemWith(abs);
    if (problem === undefined) return result(false);
    const tmp = mkdtempSync(join(parent, `.${basename(abs)}.tmp-`));
    try {
      generate(tmp);
      if (existsSync(abs)) rmSync(abs, { recursive: true, force: true });
      renameSync(tmp, abs);
    } catch (e) {
      rmSync(tmp, { recursive: true, force: true });
      throw e;
    }
    return result(true, problem === 'missing' ? undefined : problem);
  });
}

/**
 * What is wrong with an existing certs/dev: 'missing' when there is none, a reason when its
 * bundle does not hold together (no key, a key from another run, a certificate the CA did not
 * issue, no CA certificate in the bundle as older versions wrote it), undefined when it is usable.
 */
function problemWith(abs: string): string | undefined {
  const bundlePath = join(abs, `${DEV_MAILBOX}.pem`);
  const caPath = join(abs, 'ca.crt');
  if (!existsSync(abs)) return 'missing';
  try {
    const blocks = pemBlocks(readFileSync(bundlePath, 'latin1'));
    const keyBlock = blocks.find((b) => b.label.endsWith('PRIVATE KEY'));
    const certs = blocks.filter((b) => b.label === 'CERTIFICATE').map((b) => new X509Certificate(b.text));
    const ca = new X509Certificate(readFileSync(caPath));
    if (!keyBlock || certs.length === 0) return 'the bundle lacks its key or certificate';
    const key = createPrivateKey(keyBlock.text);
    const leaf = certs.find((c) => c.checkPrivateKey(key));
    if (!leaf) return 'the private key does not match the certificate';
    if (!leaf.verify(ca.publicKey)) return 'the certificate was not issued by ca.crt';
    if (!certs.some((c) => c.raw.equals(ca.raw))) return 'the bundle does not carry the CA certificate';
    return undefined;
  } catch (e) {
    return `it cannot be read: ${(e as Error).message}`;
  }
}

/** Writes ca.crt, ca.key and the bundle (key, leaf, CA) into `dir`, which nobody else reads yet. */
function generate(dir: string): void {
  chmodSync(dir, 0o700);
  const f = (name: string) => join(dir, name);
  const run = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  run('req', '-x509', '-newkey', 'rsa:2048', '-noenc', '-keyout', f('ca.key'), '-out', f('ca.crt'), '-days', '3650',
    '-subj', '/O=smime-relay development/CN=smime-relay development CA (not trusted)',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
  run('req', '-newkey', 'rsa:2048', '-noenc', '-keyout', f('leaf.key'), '-out', f('leaf.csr'),
    '-subj', `/O=smime-relay development/CN=${DEV_MAILBOX}/emailAddress=${DEV_MAILBOX}`);
  writeFileSync(f('leaf.ext'), [
    'basicConstraints=critical,CA:FALSE',
    'keyUsage=critical,digitalSignature,nonRepudiation,keyEncipherment',
    'extendedKeyUsage=emailProtection',
    `subjectAltName=email:${DEV_MAILBOX}`,
    'subjectKeyIdentifier=hash',
    'authorityKeyIdentifier=keyid',
  ].join('\n') + '\n');
  run('x509', '-req', '-in', f('leaf.csr'), '-CA', f('ca.crt'), '-CAkey', f('ca.key'), '-CAcreateserial',
    '-days', '825', '-sha256', '-extfile', f('leaf.ext'), '-out', f('leaf.crt'));
  // The CA goes into the bundle as its chain: the relay made both, so nothing is missing, and a
  // recipient who imports ca.crt gets the same certificate the signature carries.
  const bundle = [f('leaf.key'), f('leaf.crt'), f('ca.crt')].map((p) => readFileSync(p, 'latin1')).join('');
  writeFileSync(f(`${DEV_MAILBOX}.pem`), bundle, { mode: 0o600 });
  chmodSync(f('ca.key'), 0o600);
  for (const tmp of ['leaf.key', 'leaf.csr', 'leaf.ext', 'leaf.crt', 'ca.srl']) rmSync(f(tmp), { force: true });
}

const pause = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);

/**
 * Runs `fn` holding an exclusive lock file (O_EXCL create) that names its holder's pid. A lock
 * whose holder is gone (killed mid-generation), or older than ten minutes, is taken over. Start-up is
 * synchronous here, so waiting is a plain sleep.
 */
function withLock<T>(lockPath: string, waitMs: number, fn: () => T): T {
  const deadline = Date.now() + waitMs;
  for (;;) {
    let fd: number | undefined;
    try {
      fd = openSync(lockPath, 'wx', 0o600);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    if (fd !== undefined) {
      try {
        writeSync(fd, `${process.pid}\n`);
        closeSync(fd);
        return fn();
      } finally {
        rmSync(lockPath, { force: true });
      }
    }
    const holder = lockHolder(lockPath);
    if (holder.stale) {
      try {
        unlinkSync(lockPath);
      } catch {
        // another waiter took it over first
      }
      continue;
    }
    if (Date.now() > deadline) {
      throw new StartupError(
        `another process (pid ${holder.pid ?? 'unknown'}) has been generating the development certificate for ${Math.round(waitMs / 1000)} s ` +
          `and still holds ${lockPath}. If no smime-relay is starting in this folder, remove that file.`,
      );
    }
    pause(100);
  }
}

function lockHolder(lockPath: string): { pid?: number; stale: boolean } {
  try {
    const pid = Number(readFileSync(lockPath, 'utf8').trim());
    const age = Date.now() - statSync(lockPath).mtimeMs;
    if (age > LOCK_STALE_MS) return { pid, stale: true };
    // Written right after the create: an empty file is a holder that is still starting.
    if (!Number.isInteger(pid) || pid <= 0) return { stale: false };
    try {
      process.kill(pid, 0);
      return { pid, stale: false };
    } catch (e) {
      return { pid, stale: (e as NodeJS.ErrnoException).code === 'ESRCH' };
    }
  } catch {
    // gone between our create attempt and this read: try again
    return { stale: false };
  }
}
