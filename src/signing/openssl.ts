import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import type { CertificateBundle } from '../certs/bundle.js';
import { SigningError, type SigningEngine } from './engine.js';
import { FileKey } from './file-key.js';
import { Semaphore } from './semaphore.js';

export interface OpensslEngineOptions {
  /** Path or name of the openssl binary. */
  binary?: string;
  /** Kill openssl after this long. */
  timeoutMs?: number;
  /** Concurrent openssl processes; more than the cores only adds context switches. */
  concurrency?: number;
}

/**
 * Signs with `openssl cms -sign` as a child process: the content goes to stdin, the DER signature
 * comes from stdout. `-binary` signs the CRLF bytes as given; `-stream` is never combined with DER
 * because it silently embeds the content (shared/notes/smime.md).
 *
 * openssl only reads signer, key and chain from paths. Node's extra stdio "pipes" are socketpairs,
 * which /dev/fd/N cannot open, so each bundle is written once (not per message) into a private
 * 0700 directory on tmpfs when available, and removed on close.
 */
export class OpensslEngine implements SigningEngine {
  readonly name = 'openssl' as const;
  private readonly binary: string;
  private readonly timeoutMs: number;
  private readonly slots: Semaphore;
  private workDir: string | undefined;
  private readonly materials = new WeakMap<CertificateBundle, { signer: string; key: string; chain?: string }>();

  constructor(opts: OpensslEngineOptions = {}) {
    this.binary = opts.binary ?? 'openssl';
    this.timeoutMs = opts.timeoutMs ?? 30_000;
    this.slots = new Semaphore(opts.concurrency ?? availableParallelism());
  }

  sign(content: Buffer, bundle: CertificateBundle): Promise<Buffer> {
    return this.slots.run(() => this.spawnSign(content, bundle));
  }

  private spawnSign(content: Buffer, bundle: CertificateBundle): Promise<Buffer> {
    const files = this.materialFor(bundle);
    // -cades adds ESS signingCertificateV2 (RFC 5035). openssl's command line has no way to add
    // SMIMEEncryptionKeyPreference, so only the native engine sends that one.
    const args = ['cms', '-sign', '-binary', '-cades', '-md', 'sha256', '-outform', 'DER', '-signer', files.signer, '-inkey', files.key];
    if (files.chain) args.push('-certfile', files.chain);
    return new Promise((resolve, reject) => {
      const child = spawn(this.binary, args, { stdio: ['pipe', 'pipe', 'pipe'] });
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      let settled = false;
      const finish = (e: Error | null, value?: Buffer) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (e) reject(e);
        else resolve(value!);
      };
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        finish(new SigningError(`openssl did not finish within ${this.timeoutMs} ms and was killed`));
      }, this.timeoutMs);
      child.on('error', (e: NodeJS.ErrnoException) =>
        finish(new SigningError(e.code === 'ENOENT' ? `openssl not found (${this.binary})` : `openssl failed to start: ${e.message}`)),
      );
      child.stdout!.on('data', (d: Buffer) => out.push(d));
      child.stderr!.on('data', (d: Buffer) => err.push(d));
      child.on('close', (code, signal) => {
        if (code === 0) return finish(null, Buffer.concat(out));
        const why = Buffer.concat(err).toString('utf8').trim().split('\n')[0] ?? '';
        finish(new SigningError(`openssl exited with ${signal ?? `code ${code}`}${why ? `: ${why}` : ''}`));
      });
      child.stdin.on('error', () => {}); // EPIPE when openssl dies early; reported via 'close'
      child.stdin.end(content);
    });
  }

  private materialFor(bundle: CertificateBundle): { signer: string; key: string; chain?: string } {
    const known = this.materials.get(bundle);
    if (known) return known;
    this.workDir ??= mkdtempSync(join(existsDir('/dev/shm') ? '/dev/shm' : tmpdir(), 'smime-relay-'));
    const base = join(this.workDir, `${bundle.serial}-${Date.now()}-${Math.random().toString(36).slice(2)}`);
    const write = (suffix: string, text: string) => {
      writeFileSync(base + suffix, text, { mode: 0o600 });
      return base + suffix;
    };
    // app.ts refuses SMIME_RELAY_PKCS11_MODULE with this engine at start-up; this is the backstop.
    if (!(bundle.key instanceof FileKey)) throw new SigningError(`${bundle.source}: the openssl engine signs only with keys from the bundle file, not with a key on a PKCS#11 token`);
    const keyPem = bundle.key.pem;
    const chainPem = bundle.chain.map((c) => c.toString()).join('');
    const files = {
      signer: write('.crt', bundle.leaf.toString()),
      key: write('.key', keyPem),
      ...(chainPem ? { chain: write('.chain', chainPem) } : {}),
    };
    this.materials.set(bundle, files);
    return files;
  }

  async close(): Promise<void> {
    if (this.workDir) rmSync(this.workDir, { recursive: true, force: true });
    this.workDir = undefined;
  }
}

function existsDir(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}
