import { randomBytes } from 'node:crypto';
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Delivery, Envelope, Upstream } from './upstream.js';

/**
 * `file:DIR`: writes each message as DIR/<time>-<id>.eml, the embedded default. The .eml holds
 * exactly the bytes that would travel; the envelope is in the transaction log line. Writes go to
 * a temp name first and are renamed, so a reader never sees half a message.
 */
export class FileUpstream implements Upstream {
  readonly description: string;
  private readonly dir: string;

  constructor(dir: string) {
    this.dir = resolve(dir);
    this.description = `file:${this.dir}`;
    mkdirSync(this.dir, { recursive: true });
  }

  async deliver(envelope: Envelope, message: Buffer): Promise<Delivery> {
    const id = `${new Date().toISOString().replace(/[:.]/g, '-')}-${randomBytes(4).toString('hex')}`;
    const eml = join(this.dir, `${id}.eml`);
    writeFileSync(join(this.dir, `.${id}.tmp`), message, { mode: 0o640 });
    renameSync(join(this.dir, `.${id}.tmp`), eml);
    return { queueId: eml, response: `written to ${eml}`, accepted: [...envelope.to], rejected: [] };
  }

  async probe(): Promise<boolean> {
    return true;
  }

  async close(): Promise<void> {}
}
