import { sign as cryptoSign, type KeyObject } from 'node:crypto';
import { SigningError } from './engine.js';
import type { KeyLocation, SigningKey } from './key.js';

/** A private key read from the bundle file and held in memory. */
export class FileKey implements SigningKey {
  readonly location: KeyLocation = { kind: 'file' };
  private pemText: string | undefined;

  constructor(readonly object: KeyObject) {}

  get type(): string {
    return this.object.asymmetricKeyType ?? 'unknown';
  }

  /** Unencrypted PKCS#8 PEM, for the openssl engine, which reads keys from files only. */
  get pem(): string {
    this.pemText ??= this.object.export({ type: 'pkcs8', format: 'pem' }).toString();
    return this.pemText;
  }

  sign(data: Buffer): Promise<Buffer> {
    // With a callback crypto.sign runs on the libuv thread pool and leaves the event loop free.
    // For EC keys Node's default dsaEncoding is 'der', the ECDSA-Sig-Value CMS wants.
    return new Promise((resolve, reject) =>
      cryptoSign('sha256', data, this.object, (err, sig) => (err ? reject(new SigningError(`signature failed: ${err.message}`)) : resolve(sig))),
    );
  }
}
