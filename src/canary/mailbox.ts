import { ImapFlow } from 'imapflow';
import type { ImapTarget } from '../config/settings.js';

/**
 * Reads the canary mailbox over IMAP (imapflow): TLS from the first byte for imaps://, STARTTLS
 * required for imap:// (never credentials in the clear), the server certificate verified.
 */
export interface CanaryMailbox {
  /** The message source, found by Message-ID before `deadline`, then deleted; undefined when it did not arrive. */
  takeByMessageId(messageId: string, deadline: number, signal?: AbortSignal): Promise<Buffer | undefined>;
}

export class ImapCanaryMailbox implements CanaryMailbox {
  constructor(
    private readonly target: ImapTarget,
    private readonly pollMs = 2_000,
  ) {}

  async takeByMessageId(messageId: string, deadline: number, signal?: AbortSignal): Promise<Buffer | undefined> {
    const client = new ImapFlow({
      host: this.target.host,
      port: this.target.port,
      secure: this.target.secure,
      doSTARTTLS: this.target.secure ? undefined : true,
      auth: { user: this.target.user, pass: this.target.pass },
      logger: false,
      disableAutoIdle: true,
      connectionTimeout: 30_000,
    });
    // imapflow reports a dropped connection as an 'error' event; the awaited call fails too.
    client.on('error', () => {});
    await client.connect();
    try {
      const lock = await client.getMailboxLock(this.target.mailbox);
      try {
        for (;;) {
          // SEARCH HEADER is a substring match (RFC 3501 §6.4.4); the id is random, and the
          // fetched Message-ID is compared exactly below.
          const uids = (await client.search({ header: { 'message-id': messageId } }, { uid: true })) || [];
          for (const uid of uids) {
            const msg = await client.fetchOne(String(uid), { source: true, envelope: true }, { uid: true });
            if (!msg || !msg.source || msg.envelope?.messageId !== messageId) continue;
            await client.messageDelete(String(uid), { uid: true });
            return msg.source;
          }
          if (Date.now() + this.pollMs > deadline || signal?.aborted) return undefined;
          await new Promise((r) => setTimeout(r, this.pollMs));
          // NOOP lets the server report new mail in the selected mailbox (RFC 3501 §6.1.2).
          await client.noop();
        }
      } finally {
        lock.release();
      }
    } finally {
      await client.logout().catch(() => client.close());
    }
  }
}
