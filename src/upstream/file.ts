import { randomBytes } from 'node:crypto';
import { mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { crlfOnly } from '../mime/line-endings.js';
import { RelayError, replies } from '../replies.js';
import type { Delivery, Envelope, Upstream } from './upstream.js';

/**
 * `file:DIR`: writes each message as DIR/<time>-<id>.eml, the embedded default. The .eml holds
 * exactly the bytes that would travel, with CRLF line endings as on the wire (mail passed through
 * unsigned included); the envelope is in the transaction log line. Writes go to a temp name first
 * and are renamed, so a reader never sees half a message, and a failed write leaves nothing.
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
    const tmp = join(this.dir, `.${id}.tmp`);
    try {
      writeFileSync(tmp, crlfOnly(message), { mode: 0o640 });
      renameSync(tmp, eml);
    } catch (e) {
      rmSync(tmp, { force: true });
      // The client learns that the write failed, not where: the path is for the log line.
      const why = (e as NodeJS.ErrnoException).code ?? 'write error';
      throw new RelayError(replies.outboxWriteFailed(why), `${this.description}: ${(e as Error).message}`);
    }
    // The id names the file for the client; the log line has the whole path.
    return { queueId: id, response: `written to ${eml}`, accepted: [...envelope.to], rejected: [] };
  }

  async probe(): Promise<boolean> {
    return true;
  }

  async close(): Promise<void> {}
}
