import type { Delivery, Envelope, Upstream } from '../../src/upstream/upstream.js';

/**
 * An upstream in the test process that keeps what it is given and accepts it, for tests of the
 * pipeline in process (the SMTP upstream is tested over sockets against a real peer elsewhere).
 * It may refuse some recipients of the first message, or take its time.
 */
export class KeepingUpstream implements Upstream {
  readonly description = 'memory';
  readonly delivered: { envelope: Envelope; message: Buffer }[] = [];
  constructor(private readonly opts: { refuse?: string[]; delayMs?: number } = {}) {}

  /** The last message given, if any. */
  get last(): Buffer | undefined {
    return this.delivered.at(-1)?.message;
  }

  async deliver(envelope: Envelope, message: Buffer): Promise<Delivery> {
    if (this.opts.delayMs) await new Promise((r) => setTimeout(r, this.opts.delayMs));
    this.delivered.push({ envelope, message });
    const n = this.delivered.length;
    const refused = new Set(n === 1 ? (this.opts.refuse ?? []) : []);
    return {
      queueId: `Q${n}`,
      response: `250 2.0.0 Ok: queued as Q${n}`,
      accepted: envelope.to.filter((r) => !refused.has(r)),
      rejected: envelope.to.filter((r) => refused.has(r)).map((recipient) => ({ recipient, code: 550, response: '550 5.1.1 no such user' })),
    };
  }

  async probe() {
    return true;
  }

  async close() {}
}
