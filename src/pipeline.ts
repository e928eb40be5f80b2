import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import type { Principal } from './access/users.js';
import { admitEnvelopeSender, admitFromHeader } from './admit/sender.js';
import type { CertificateStore } from './certs/store.js';
import type { CertificateBundle } from './certs/bundle.js';
import type { Mailbox } from './mime/mailbox.js';
import { buildSignedMessage } from './mime/multipart-signed.js';
import { MimeError, prepareMessage } from './mime/prepare.js';
import { SigningError, type SigningEngine } from './signing/engine.js';
import { outcomeOf } from './metrics/outcome.js';
import { noMetrics, type RelayMetrics } from './metrics/relay-metrics.js';
import { StageTimer } from './metrics/stage-timer.js';
import { RelayError, replies, type SmtpReply } from './smtp/reply.js';
import type { Envelope, Upstream } from './upstream/upstream.js';

/** A message as received: the envelope, the bytes, and who sent it. */
export interface Transaction {
  readonly id: string;
  readonly envelope: Envelope;
  readonly raw: Buffer;
  /** address: the client (as named by PROXY or XFORWARD when used); peer: the connection's own address when XFORWARD named another. */
  readonly client: { address: string; hostname?: string; peer?: string };
  /** Who authenticated (SMIME_RELAY_USERS); undefined when the relay has no users file. */
  readonly principal?: Principal;
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
  metrics?: RelayMetrics;
}

export const newTransactionId = (): string => randomBytes(6).toString('base64url');

/**
 * The relay, top to bottom: receive → admit → prepare → sign → forward.
 * Receiving is src/smtp/server.ts; it calls admitSender() at MAIL FROM and process() after DATA.
 * Every failure is a RelayError whose reply goes to the client unchanged; 250 is only ever
 * answered after the upstream accepted.
 */
export class Pipeline {
  private readonly metrics: RelayMetrics;

  constructor(private readonly deps: PipelineDeps) {
    this.metrics = deps.metrics ?? noMetrics;
  }

  /** admit (envelope): runs at MAIL FROM, before any data is transferred. */
  admitSender(address: string, principal?: Principal): Mailbox {
    try {
      return admitEnvelopeSender(address, this.deps.certs.mailboxes(), principal);
    } catch (e) {
      if (e instanceof RelayError) this.metrics.outcome(outcomeOf(e.reply, 'signed'));
      throw e;
    }
  }

  /** A message refused before process() could run (too big): counted and logged like the others. */
  refuse(tx: Omit<Transaction, 'raw'>, reply: SmtpReply): SmtpReply {
    return this.finish(tx, this.deps.log.child({ tx: tx.id }), this.fieldsOf(tx), reply, new StageTimer(this.metrics), performance.now());
  }

  async process(tx: Transaction): Promise<SmtpReply> {
    const { certs, engine, upstream, options } = this.deps;
    const log = this.deps.log.child({ tx: tx.id });
    const started = performance.now();
    const timer = new StageTimer(this.metrics);
    const fields: Record<string, unknown> = { ...this.fieldsOf(tx), size: tx.raw.length };
    this.metrics.size(tx.raw.length);
    try {
      // admit (header): clients compare From with the signer certificate.
      const from = admitFromHeader(tx.raw, certs.mailboxes(), tx.principal);
      fields.from = from;

      let outgoing: Buffer;
      if (options.signing === 'off') {
        outgoing = tx.raw;
      } else {
        const bundle = this.certificateFor(from);
        fields.serial = bundle.serial;
        const prepared = await timer.time('prepare', () => prepare(tx.raw, options));
        log.info({ from }, `Signing email notification from ${from}`);
        outgoing = await timer.time('sign', async () => buildSignedMessage(prepared, await engine.sign(prepared.entity, bundle)));
      }

      // forward
      const delivery = await timer.time('upstream', () => upstream.deliver(tx.envelope, outgoing));
      if (delivery.rejected.length) {
        log.error({ rejected: delivery.rejected }, 'upstream refused some recipients; the others were delivered');
      }
      fields.upstream = delivery.response;
      return this.finish(tx, log, fields, replies.accepted(`queued as ${delivery.queueId}`), timer, started);
    } catch (e) {
      return this.finish(tx, log, fields, asRelayError(e).reply, timer, started);
    }
  }

  private fieldsOf(tx: Omit<Transaction, 'raw'>): Record<string, unknown> {
    return {
      client: tx.client.address,
      ...(tx.principal ? { user: tx.principal.user } : {}),
      ...(tx.client.hostname ? { clientName: tx.client.hostname } : {}),
      ...(tx.client.peer ? { peer: tx.client.peer } : {}),
      mailFrom: tx.envelope.from,
      rcptCount: tx.envelope.to.length,
    };
  }

  /**
   * The one place a message's outcome is decided (from its reply), counted, and logged as the
   * transaction's single log line. The tx id goes into the reply so an admin can grep for it.
   */
  private finish(tx: { id: string }, log: Logger, fields: Record<string, unknown>, reply: SmtpReply, timer: StageTimer, started: number): SmtpReply {
    const outcome = outcomeOf(reply, this.deps.options.signing === 'off' ? 'passed_unsigned' : 'signed');
    this.metrics.outcome(outcome);
    const line = { ...fields, outcome, reply: `${reply.code} ${reply.status} ${reply.text}`, durations: timer.ms, ms: ms(started) };
    if (reply.code < 400) log.info(line, 'transaction');
    else log.warn(line, 'transaction');
    return { ...reply, text: `${reply.text} (tx ${tx.id})` };
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
    // A MimeError with a cause is prepare's own fault, not the message's: retry rather than bounce.
    if (e instanceof MimeError) {
      throw new RelayError(e.cause ? replies.internalError(e.message) : replies.malformedMessage(e.message));
    }
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
