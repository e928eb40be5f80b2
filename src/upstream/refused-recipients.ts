import { hostname } from 'node:os';
import type { Logger } from 'pino';
import { replies, withTransactionId, type SmtpReply } from '../replies.js';
import { buildDsn } from './dsn.js';
import type { Delivery, Envelope, Upstream } from './upstream.js';

export interface RefusedRecipientsOptions {
  upstream: Upstream;
  /** Reporting-MTA of the DSN; defaults to this machine's host name. */
  reportingMta?: string;
  /** Hook for the metrics: called once per message with the number of refused recipients. */
  onRefused?: (count: number) => void;
}

/** What the reporter needs of a transaction. */
export interface RefusedContext {
  id: string;
  envelope: Envelope;
  raw: Buffer;
  arrival: Date;
}

/**
 * No recipient is ever dropped silently. When the upstream accepted a message for some recipients
 * and refused others, the client has to get 250 (a 4xx would make it resend to the ones already
 * served), so over SMTP the refused ones are reported the way an MTA does: a DSN to the envelope
 * sender, sent through the same upstream with a null sender. Over LMTP each recipient simply gets
 * its own reply (RFC 2033 §4.2), see perRecipient().
 */
export class RefusedRecipients {
  private readonly reportingMta: string;

  constructor(private readonly opts: RefusedRecipientsOptions) {
    this.reportingMta = opts.reportingMta ?? hostname();
  }

  /** Logs at error, counts, and sends the DSN. Never throws: the message itself was delivered. */
  async report(tx: RefusedContext, delivery: Delivery, log: Logger): Promise<void> {
    const rejected = delivery.rejected;
    if (!rejected.length) return;
    this.opts.onRefused?.(rejected.length);
    const fields = { mailFrom: tx.envelope.from, delivered: delivery.accepted, rejected };
    if (tx.envelope.from === '') {
      // RFC 5321 §4.5.5 / RFC 3464 §1: a message with a null sender is itself a notification;
      // answering it could loop, so the log line is the only record.
      log.error(fields, 'upstream refused some recipients of a message with a null sender; no DSN is sent for a DSN');
      return;
    }
    log.error(fields, 'upstream refused some recipients; the others were delivered; sending a DSN to the sender');
    const dsn = buildDsn({
      reportingMta: this.reportingMta,
      to: tx.envelope.from,
      arrivalDate: tx.arrival,
      original: tx.raw,
      rejected,
      deliveredCount: delivery.accepted.length,
      txId: tx.id,
    });
    try {
      const sent = await this.opts.upstream.deliver({ from: '', to: [tx.envelope.from] }, dsn);
      log.info({ to: tx.envelope.from, upstream: sent.response }, 'DSN sent');
    } catch (e) {
      log.error(
        { ...fields, err: e instanceof Error ? e.message : String(e) },
        'the DSN for refused recipients could not be sent; this log line is the only record of them',
      );
    }
  }

  /**
   * LMTP: logs at error and counts like report(), then gives one reply per RCPT in the order the
   * client gave them. Refused recipients get the upstream's own code and text; the others get
   * `accepted`.
   */
  perRecipient(tx: RefusedContext, delivery: Delivery, log: Logger, accepted: SmtpReply): SmtpReply[] {
    if (delivery.rejected.length) {
      this.opts.onRefused?.(delivery.rejected.length);
      log.error({ mailFrom: tx.envelope.from, delivered: delivery.accepted, rejected: delivery.rejected }, 'upstream refused some recipients; each gets its own LMTP reply');
    }
    const refused = new Map(delivery.rejected.map((r) => [r.recipient.toLowerCase(), r]));
    return tx.envelope.to.map((rcpt) => {
      const r = refused.get(rcpt.toLowerCase());
      if (!r) return accepted;
      return withTransactionId(replies.recipientRefusedUpstream(rcpt, r.code, r.response), tx.id);
    });
  }
}
