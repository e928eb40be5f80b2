import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import type { Principal } from './access/users.js';
import { admitHeader, type AdmittedMessage, type HeaderPolicy } from './admit/header.js';
import type { EnvelopeSenders } from './admit/envelope-senders.js';
import { admitEnvelopeSender } from './admit/sender.js';
import type { CertificateStore } from './certs/store.js';
import type { CertificateBundle } from './certs/bundle.js';
import { incomingDkim } from './dkim/incoming.js';
import type { Mailbox } from './mime/mailbox.js';
import type { Reservation } from './memory/budget.js';
import { alreadyProtected } from './mime/already-protected.js';
import { draftSignedMessage, draftSize } from './mime/multipart-signed.js';
import { MimeError, prepareMessage } from './mime/prepare.js';
import { SigningError, type SigningEngine } from './signing/engine.js';
import { outcomeOf } from './metrics/outcome.js';
import { selfVerificationFailure } from './verify/self-verify.js';
import { noMetrics, type RelayMetrics } from './metrics/relay-metrics.js';
import { StageTimer } from './metrics/stage-timer.js';
import { RelayError, replies, withTransactionId, type SmtpReply } from './replies.js';
import { RefusedRecipients } from './upstream/refused-recipients.js';
import type { Delivery, Envelope, Upstream } from './upstream/upstream.js';

/** A message as received: the envelope, the bytes, and who sent it. */
export interface Transaction {
  readonly id: string;
  readonly envelope: Envelope;
  readonly raw: Buffer;
  /** address: the client (as named by PROXY or XFORWARD when used); peer: the connection's own address when XFORWARD named another. */
  readonly client: { address: string; hostname?: string; peer?: string };
  /** Who authenticated (SMIME_RELAY_USERS); undefined when the relay has no users file. */
  readonly principal?: Principal;
  /**
   * This message's share of SMIME_RELAY_MEMORY_BUDGET, reserved by the receiver for the bytes
   * received and an estimate of the signed copy; every stage that makes a large copy holds it
   * here first (hold()). Undefined where nothing is budgeted.
   */
  readonly memory?: Reservation;
}

export interface PipelineOptions {
  signing: 'on' | 'off';
  headerProtection: 'off' | 'clear';
  /** SMIME_RELAY_ON_MISSING_CERT: mail from a mailbox whose certificate is expired or broken. */
  onMissingCert?: 'reject' | 'send-unsigned';
  /** Remove incoming DKIM-Signature fields, which S/MIME signing invalidates (SMIME_RELAY_STRIP_DKIM). */
  stripDkim?: boolean;
  /** SMIME_RELAY_LMTP: refused recipients get their own reply instead of a DSN. */
  lmtp?: boolean;
  /** SMIME_RELAY_SELF_VERIFY: verify the outgoing bytes before forwarding them (default on). */
  selfVerify?: 'on' | 'off';
  /** SMIME_RELAY_ENVELOPE_SENDERS: MAIL FROM addresses allowed besides the certificates' mailboxes. */
  envelopeSenders?: EnvelopeSenders;
}

/** The reply to a message; over LMTP also one reply per recipient, in RCPT order. */
export interface TransactionReply extends SmtpReply {
  recipients?: SmtpReply[];
}

export interface PipelineDeps {
  certs: CertificateStore;
  engine: SigningEngine;
  upstream: Upstream;
  log: Logger;
  options: PipelineOptions;
  metrics?: RelayMetrics;
  /** What happens to recipients the upstream refused while accepting others (DSN or LMTP replies). */
  refused?: RefusedRecipients;
  /**
   * The header admission (src/admit/header.ts, the default). Replaceable only so a test can show
   * that a weakened one is caught by the disagreement test.
   */
  admitHeader?: (raw: Buffer, policy: HeaderPolicy) => AdmittedMessage;
}

type AcceptedOutcome = Parameters<typeof outcomeOf>[1];

/**
 * forward: hands the finished message on. The SMTP listener's transactions go to the upstream;
 * the milter (src/milter/) hands the message back to the MTA that asked, which delivers it.
 */
export type Forward = (envelope: Envelope, message: Buffer) => Promise<Delivery>;

export const newTransactionId = (): string => randomBytes(6).toString('base64url');

/**
 * The relay, top to bottom: receive → admit → prepare → sign → self-verify → forward.
 * Receiving is src/smtp/server.ts; it calls admitSender() at MAIL FROM and process() after DATA.
 * The milter (src/milter/) receives from an MTA instead and runs the same stages.
 * Every failure is a RelayError whose reply goes to the client unchanged; 250 is only ever
 * answered after the upstream accepted.
 */
export class Pipeline {
  private readonly metrics: RelayMetrics;
  private readonly refused: RefusedRecipients;
  private readonly admitHeader: NonNullable<PipelineDeps['admitHeader']>;

  constructor(private readonly deps: PipelineDeps) {
    this.metrics = deps.metrics ?? noMetrics;
    this.admitHeader = deps.admitHeader ?? admitHeader;
    this.refused = deps.refused ?? new RefusedRecipients({ upstream: deps.upstream, onRefused: (n) => this.metrics.refusedRecipients(n) });
  }

  /** admit (envelope): runs at MAIL FROM, before any data is transferred. */
  admitSender(address: string, principal?: Principal): Mailbox {
    try {
      return this.admitEnvelope(address, principal);
    } catch (e) {
      if (e instanceof RelayError) this.metrics.outcome(outcomeOf(e.reply, 'signed'));
      throw e;
    }
  }

  /** The envelope rule alone, not counted: the milter refuses with a whole transaction (refuse()). */
  admitEnvelope(address: string, principal?: Principal): Mailbox {
    return admitEnvelopeSender(address, this.deps.certs.mailboxes(), principal, this.deps.options.envelopeSenders);
  }

  /** A message refused before process() could run (too big): counted and logged like the others. */
  refuse(tx: Omit<Transaction, 'raw'>, reply: SmtpReply): SmtpReply {
    return this.finish(tx, this.deps.log.child({ tx: tx.id }), this.fieldsOf(tx), reply, new StageTimer(this.metrics), performance.now());
  }

  async process(tx: Transaction, forward: Forward = (envelope, message) => this.deps.upstream.deliver(envelope, message)): Promise<TransactionReply> {
    const { certs, options } = this.deps;
    const log = this.deps.log.child({ tx: tx.id });
    const started = performance.now();
    const arrival = new Date();
    const timer = new StageTimer(this.metrics);
    const fields: Record<string, unknown> = { ...this.fieldsOf(tx), size: tx.raw.length };
    this.metrics.size(tx.raw.length);
    try {
      // admit (header): one canonical header block, and one unambiguous sender decided on exactly
      // those bytes; every path below forwards them (clients compare From with the signer).
      const policy = { covered: certs.mailboxes(), principal: tx.principal, smtputf8: tx.envelope.smtputf8 === true };
      const { message, from } = this.admitHeader(tx.raw, policy);
      fields.from = from;

      // What the message holds of SMIME_RELAY_MEMORY_BUDGET so far: the bytes received, and the
      // canonical copy when admit had to make one; signing adds the outgoing message (hold()).
      const received = tx.raw.length + (message === tx.raw ? 0 : message.length);

      // prepare + sign (or pass through, where the configuration or the message says so)
      const { message: outgoing, accepted, signer } = await this.sign(message, from, fields, timer, log, (copies) => hold(tx.memory, received + copies));
      tx.memory?.shrink(received + (outgoing === message ? 0 : outgoing.length));

      // self-verify: the exact bytes about to leave, read back as a recipient would (no copy:
      // it reads views of them)
      if (signer && options.selfVerify !== 'off') await timer.time('self_verify', () => this.selfVerify(outgoing, signer, log));

      // forward
      const delivery = await timer.time('upstream', () => forward(tx.envelope, outgoing));
      fields.upstream = delivery.response;
      const reply = this.finish(tx, log, fields, replies.accepted(`queued as ${delivery.queueId}`), timer, started, accepted);
      // Some recipients refused, others served: still 250, or the client would resend to the
      // served ones; the refused ones are reported, never dropped silently.
      const refused = { id: tx.id, envelope: tx.envelope, raw: tx.raw, arrival };
      if (options.lmtp) return { ...reply, recipients: this.refused.perRecipient(refused, delivery, log, reply) };
      await this.refused.report(refused, delivery, log);
      return reply;
    } catch (e) {
      const refused = asRelayError(e);
      // What the reply must not say (paths, the upstream's address) is in the log line (a field
      // that is undefined is left out of it).
      fields.error = refused.detail;
      return this.finish(tx, log, fields, refused.reply, timer, started);
    }
  }

  /**
   * The signed message, or the original bytes when signing is off, when the sender already
   * signed or encrypted it, or when SMIME_RELAY_ON_MISSING_CERT=send-unsigned applies. Only the
   * outgoing bytes leave this method, so the prepared entity is garbage before the upstream wait.
   */
  private async sign(
    raw: Buffer, from: Mailbox, fields: Record<string, unknown>, timer: StageTimer, log: Logger,
    holdAlso: (bytes: number) => void,
  ): Promise<{ message: Buffer; accepted: AcceptedOutcome; signer?: CertificateBundle }> {
    const { engine, options } = this.deps;
    if (options.signing === 'off') return { message: raw, accepted: 'passed_unsigned' };
    const protectedAs = alreadyProtected(raw);
    if (protectedAs) {
      // Signing again would bury the sender's own signature (or ciphertext) inside ours.
      fields.alreadyProtected = protectedAs;
      log.info({ from, contentType: protectedAs }, `forwarding ${protectedAs} message from ${from} unchanged: already signed or encrypted`);
      return { message: raw, accepted: 'passed_protected' };
    }
    const bundle = this.certificateFor(from, log);
    if (!bundle) return { message: raw, accepted: 'passed_unsigned' };
    fields.serial = bundle.serial;
    // The entity is written once, into the message that is sent, and signed there.
    const draft = await timer.time('prepare', () => {
      const input = this.handleIncomingDkim(raw, log);
      const prepared = prepare(input, options);
      // The one large allocation of signing, so the budget is checked before it is made.
      holdAlso((input === raw ? 0 : input.length) + prepared.entity.held + draftSize(prepared));
      return draftSignedMessage(prepared);
    });
    log.info({ from }, `Signing email notification from ${from}`);
    const message = await timer.time('sign', async () => draft.complete(await engine.sign(draft.content, bundle)));
    return { message, accepted: 'signed', signer: bundle };
  }

  /** A signed message that does not verify is never forwarded: 451 4.7.0, and the client retries. */
  private selfVerify(message: Buffer, signer: CertificateBundle, log: Logger): void {
    const failure = selfVerificationFailure(message, signer.leaf);
    if (failure === undefined) return;
    log.error({ reason: failure, engine: this.deps.engine.name, serial: signer.serial }, `self-verification failed, message not forwarded: ${failure}`);
    throw new RelayError(replies.selfVerifyFailed(failure));
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
   * `accepted` names what a 2xx reply means; a refusal's reply carries its own outcome.
   */
  private finish(
    tx: { id: string }, log: Logger, fields: Record<string, unknown>, reply: SmtpReply, timer: StageTimer, started: number,
    accepted: AcceptedOutcome = 'signed',
  ): SmtpReply {
    const outcome = outcomeOf(reply, accepted);
    this.metrics.outcome(outcome);
    const line = { ...fields, outcome, reply: `${reply.code} ${reply.status} ${reply.text}`, durations: timer.ms, ms: ms(started) };
    // Stryker disable next-line EqualityOperator: no SMTP reply has the code 400 itself, so < and <= cannot differ
    if (reply.code < 400) log.info(line, 'transaction');
    else log.warn(line, 'transaction');
    return withTransactionId(reply, tx.id);
  }

  /**
   * An incoming DKIM signature cannot survive S/MIME signing (the body changes). One warning per
   * message names its domain(s); the field is kept unless SMIME_RELAY_STRIP_DKIM says otherwise.
   */
  private handleIncomingDkim(raw: Buffer, log: Logger): Buffer {
    const dkim = incomingDkim(raw);
    if (dkim.domains.length === 0) return raw;
    const strip = this.deps.options.stripDkim === true;
    log.warn(
      { dkimDomains: dkim.domains, stripped: strip },
      `incoming DKIM-Signature (d=${dkim.domains.join(', d=')}) will not verify after S/MIME signing; ` +
        (strip ? 'removed (SMIME_RELAY_STRIP_DKIM=true)' : 'kept; set SMIME_RELAY_STRIP_DKIM=true to remove it'),
    );
    return strip ? dkim.withoutSignatures() : raw;
  }

  /**
   * The certificate to sign with, or undefined when SMIME_RELAY_ON_MISSING_CERT=send-unsigned lets
   * mail from a mailbox with an expired or broken certificate through unsigned.
   */
  private certificateFor(from: Mailbox, log: Logger): CertificateBundle | undefined {
    const found = this.deps.certs.lookup(from);
    if (found.kind === 'ok') return found.bundle;
    if (found.kind === 'unknown') throw new RelayError(replies.fromHeaderNotCovered(from, this.deps.certs.mailboxes()));
    if (this.deps.options.onMissingCert === 'send-unsigned') {
      log.warn({ from, reason: found.reason }, `forwarding mail from ${from} UNSIGNED: its certificate is not usable (${found.reason}); SMIME_RELAY_ON_MISSING_CERT=send-unsigned`);
      return undefined;
    }
    throw new RelayError(replies.certificateUnavailable(from, found.reason));
  }
}

function prepare(raw: Buffer, options: PipelineOptions) {
  try {
    return prepareMessage(raw, { headerProtection: options.headerProtection });
  } catch (e) {
    // A MimeError with a cause is prepare's own fault, not the message's: retry rather than bounce.
    if (e instanceof MimeError) {
      throw e.cause ? new RelayError(replies.internalError(e.message), e.message) : new RelayError(replies.malformedMessage(e.message));
    }
    throw e;
  }
}

/**
 * Sets what a message holds in SMIME_RELAY_MEMORY_BUDGET before a stage makes its copy. Growth
 * never waits (the message already holds memory, and waiting while holding could deadlock): it
 * fits now, or the client gets 452 4.3.1 and retries.
 */
function hold(memory: Reservation | undefined, bytes: number): void {
  if (memory && !memory.resize(bytes)) {
    throw new RelayError(replies.insufficientMemory('no room to sign this message now'));
  }
}

function asRelayError(e: unknown): RelayError {
  if (e instanceof RelayError) return e;
  const message = e instanceof Error ? e.message : String(e);
  if (e instanceof SigningError) return new RelayError(replies.signingFailed(message), message);
  // An unexpected bug must never turn into 250 or a permanent bounce: the client keeps the mail.
  return new RelayError(replies.internalError(message), message);
}

const ms = (since: number): number => Math.round((performance.now() - since) * 10) / 10;
