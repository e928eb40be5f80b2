import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { admitEnvelopeSender, admitFromHeader } from './admit/sender.js';
import type { CertificateStore } from './certs/store.js';
import type { CertificateBundle } from './certs/bundle.js';
import type { Mailbox } from './mime/mailbox.js';
import { buildSignedMessage } from './mime/multipart-signed.js';
import { MimeError, prepareMessage } from './mime/prepare.js';
import { SigningError, type SigningEngine } from './signing/engine.js';
import { RelayError, replies, type SmtpReply } from './smtp/reply.js';
import type { Envelope, Upstream } from './upstream/upstream.js';

/** A message as received: the envelope, the bytes, and who sent it. */
export interface Transaction {
  readonly id: string;
  readonly envelope: Envelope;
  readonly raw: Buffer;
  readonly client: { address: string; hostname?: string };
}

export interface PipelineOptions {
  signing: 'on' | 'off';
  headerProtection: 'off' | 'clear';
}

export interface PipelineDeps {
  certs: CertificateStore;
  engine: SigningEngine;
  upstream: Upstream;
  log: Logger;
  options: PipelineOptions;
}

export const newTransactionId = (): string => randomBytes(6).toString('base64url');

/**
 * The relay, top to bottom: receive → admit → prepare → sign → forward.
 * Receiving is src/smtp/server.ts; it calls admitSender() at MAIL FROM and process() after DATA.
 * Every failure is a RelayError whose reply goes to the client unchanged; 250 is only ever
 * answered after the upstream accepted.
 */
export class Pipeline {
  constructor(private readonly deps: PipelineDeps) {}

  /** admit (envelope): runs at MAIL FROM, before any data is transferred. */
  admitSender(address: string): Mailbox {
    return admitEnvelopeSender(address, this.deps.certs.mailboxes());
  }

  async process(tx: Transaction): Promise<SmtpReply> {
    const { certs, engine, upstream, options } = this.deps;
    const log = this.deps.log.child({ tx: tx.id });
    const started = performance.now();
    const fields: Record<string, unknown> = {
      client: tx.client.address,
      mailFrom: tx.envelope.from,
      rcptCount: tx.envelope.to.length,
      size: tx.raw.length,
    };
    try {
      // admit (header): clients compare From with the signer certificate.
      const from = admitFromHeader(tx.raw, certs.mailboxes());
      fields.from = from;

      let outgoing: Buffer;
      if (options.signing === 'off') {
        outgoing = tx.raw;
      } else {
        const bundle = this.certificateFor(from);
        fields.serial = bundle.serial;
        const prepared = prepare(tx.raw, options);
        log.info({ from }, `Signing email notification from ${from}`);
        const signature = await engine.sign(prepared.entity, bundle);
        outgoing = buildSignedMessage(prepared, signature);
      }

      // forward
      const delivery = await upstream.deliver(tx.envelope, outgoing);
      if (delivery.rejected.length) {
        log.error({ rejected: delivery.rejected }, 'upstream refused some recipients; the others were delivered');
      }
      const reply = replies.accepted(`queued as ${delivery.queueId} (tx ${tx.id})`);
      log.info({ ...fields, outcome: options.signing === 'off' ? 'passed_unsigned' : 'signed', upstream: delivery.response, ms: ms(started) }, 'transaction');
      return reply;
    } catch (e) {
      const err = asRelayError(e);
      log.warn({ ...fields, outcome: 'failed', reply: err.reply, ms: ms(started) }, 'transaction');
      return { ...err.reply, text: `${err.reply.text} (tx ${tx.id})` };
    }
  }

  private certificateFor(from: Mailbox): CertificateBundle {
    const found = this.deps.certs.lookup(from);
    if (found.kind === 'ok') return found.bundle;
    if (found.kind === 'unavailable') throw new RelayError(replies.certificateUnavailable(from, found.reason));
    throw new RelayError(replies.fromHeaderNotCovered(from, this.deps.certs.mailboxes()));
  }
}

function prepare(raw: Buffer, options: PipelineOptions) {
  try {
    return prepareMessage(raw, { headerProtection: options.headerProtection });
  } catch (e) {
    if (e instanceof MimeError) throw new RelayError(replies.malformedMessage(e.message));
    throw e;
  }
}

function asRelayError(e: unknown): RelayError {
  if (e instanceof RelayError) return e;
  const message = e instanceof Error ? e.message : String(e);
  if (e instanceof SigningError) return new RelayError(replies.signingFailed(message));
  // An unexpected bug must never turn into 250 or a permanent bounce: the client keeps the mail.
  return new RelayError(replies.internalError(message));
}

const ms = (since: number): number => Math.round((performance.now() - since) * 10) / 10;
