import nodemailer, { type Transporter } from 'nodemailer';
import type { Logger } from 'pino';
import { isLoopback } from '../access/network.js';
import { RelayError, replies } from '../replies.js';
import type { UpstreamTarget } from '../config/settings.js';
import type { DkimSigning } from '../dkim/signing.js';
import type { Delivery, Envelope, RecipientRejection, Upstream } from './upstream.js';

type SmtpTarget = Extract<UpstreamTarget, { kind: 'smtp' }>;

/** Above this a message is large for the upstream pool: it may not take the pool's last free connection. */
const LARGE_MESSAGE = 1024 * 1024;

export interface SmtpUpstreamOptions {
  target: SmtpTarget;
  timeoutMs: number;
  poolSize: number;
  log: Logger;
  /** DKIM-sign every message in the transport, after S/MIME signing (src/dkim/signing.ts). */
  dkim?: DkimSigning;
  /** Certificate verification of the upstream; false only by explicit, logged choice. */
  rejectUnauthorized?: boolean;
  /** SMIME_RELAY_UPSTREAM_INSECURE_AUTH: send the password over smtp:// without STARTTLS too. */
  insecureAuth?: boolean;
}

interface NodemailerError extends Error {
  code?: string;
  /** The system error behind a connection failure (ECONNREFUSED, ETIMEDOUT, ...). */
  originalCode?: string;
  /** The SMTP command that failed. */
  command?: string;
  responseCode?: number;
  response?: string;
  permanent?: boolean;
  rejectedErrors?: NodemailerError[];
  recipient?: string;
}

/** "250 2.0.0 Ok: queued as 4Xyz" → "4Xyz"; otherwise the whole reply. */
export function queueIdOf(response: string): string {
  const m = /queued as\s+([^\s;,]+)/i.exec(response) ?? /\bid=([^\s;,]+)/i.exec(response);
  return m ? m[1]! : response.replace(/^\d{3}\s+/, '');
}

/**
 * Maps what nodemailer reports into the one reply the client gets. A 5xx that refused the message
 * (DATA) or every recipient is passed back as a 5xx; everything else that is not a success,
 * including a lost connection or a timeout, is a 451 so the client's queue keeps the message.
 * The upstream's own reply is passed on with its enhanced status; when it gave none, the reply
 * names what happened (error codes) but not where: nodemailer's text has the upstream's
 * address, which goes to the log line only (RelayError.detail).
 */
export function replyForUpstreamError(err: NodemailerError, upstream: string): RelayError {
  const detail = `${upstream}: ${err.message.replace(/\s+/g, ' ').trim()}`;
  const code = err.responseCode;
  const response = (err.response ?? '').replace(/\s+/g, ' ').trim();
  if (err.code === 'ETLS' && err.command === 'STARTTLS' && code) {
    // requireTLS (credentials over smtp://): nodemailer asks for STARTTLS whether or not it was
    // offered, and stops when it is refused, before any AUTH.
    return new RelayError(
      replies.upstreamNeedsTls(),
      `${detail}. The upstream was not asked to authenticate: its password is only sent over TLS. Fix it in one of three ways: ` +
        'enable STARTTLS on the upstream, use smtps:// if it offers implicit TLS, or, for an MTA on loopback only, set SMIME_RELAY_UPSTREAM_INSECURE_AUTH=true',
    );
  }
  if (code && response) {
    if (code >= 500 && code < 600 && err.permanent !== false && (err.code === 'EENVELOPE' || err.code === 'EMESSAGE')) {
      return new RelayError(replies.upstreamPermFail(code, response), detail);
    }
    return new RelayError(replies.upstreamTempFail(response, { code, response }), detail);
  }
  const what = [err.code, err.originalCode].filter((c, i, all) => c && all.indexOf(c) === i).join(' ') || 'connection error';
  return new RelayError(replies.upstreamTempFail(what), detail);
}

/** Sends raw bytes with the original envelope over a pooled nodemailer transport. */
export class SmtpUpstream implements Upstream {
  readonly description: string;
  private readonly transport: Transporter;
  private readonly timeoutMs: number;

  constructor(private readonly opts: SmtpUpstreamOptions) {
    const { target } = opts;
    this.description = target.display;
    this.timeoutMs = opts.timeoutMs;
    const rejectUnauthorized = opts.rejectUnauthorized ?? true;
    if (!rejectUnauthorized) {
      opts.log.warn({ upstream: target.display }, 'upstream TLS certificate verification is DISABLED by configuration');
    }
    // Postfix's smtp_sasl_security_options = noplaintext: a password goes over TLS only.
    const requireTLS = Boolean(target.user) && !target.secure && !opts.insecureAuth;
    if (target.user && !target.secure && opts.insecureAuth) {
      const loopback = isLoopback(target.host) || target.host.toLowerCase() === 'localhost';
      const where = loopback ? 'the MTA on loopback' : `${target.host}, which is NOT a loopback address,`;
      (loopback ? opts.log.info : opts.log.warn).call(opts.log, { upstream: target.display }, `SMIME_RELAY_UPSTREAM_INSECURE_AUTH=true: the upstream password is sent without TLS when ${where} offers no STARTTLS`);
    }
    this.transport = nodemailer.createTransport({
      pool: true,
      host: target.host,
      port: target.port,
      secure: target.secure,
      requireTLS,
      auth: target.user ? { user: target.user, pass: target.pass ?? '' } : undefined,
      maxConnections: opts.poolSize,
      maxMessages: 1000,
      // A pooled connection that the upstream closed while idle is retried on a fresh one; more
      // retries than this would only delay the answer the client is waiting for.
      maxRequeues: 2,
      connectionTimeout: opts.timeoutMs,
      greetingTimeout: opts.timeoutMs,
      socketTimeout: opts.timeoutMs,
      tls: { rejectUnauthorized, servername: isIp(target.host) ? undefined : target.host },
      // nodemailer signs raw messages too, as the last step before the bytes leave.
      ...(opts.dkim ? { dkim: { ...opts.dkim } } : {}),
      logger: false,
    });
  }

  /**
   * Messages wait for a pool connection here, never in nodemailer's queue: a message nodemailer
   * has queued cannot be taken back, so a deadline that expired while it waited would let it go
   * out later anyway, after the client was told 451 (a duplicate; bench/load-faults.ts found
   * this). The deadline therefore starts when the message goes out, and one that cannot go out
   * within it is refused without ever being sent.
   *
   * A large message leaves one connection to the others: eight 30 MB messages going out at once
   * would otherwise hold every connection for seconds while a password-reset mail waits behind
   * them (bench/memory.ts measures it).
   */
  private active = 0;
  private readonly waiting = new Set<{ large: boolean; wake: () => void }>();

  private mayStart(large: boolean): boolean {
    const { poolSize } = this.opts;
    return this.active < (large && poolSize > 1 ? poolSize - 1 : poolSize);
  }

  private connectionSlot(size: number): Promise<() => void> {
    const large = size > LARGE_MESSAGE;
    return new Promise((resolve, reject) => {
      const grant = () => {
        this.active++;
        let released = false;
        resolve(() => {
          if (released) return;
          released = true;
          this.active--;
          for (const w of this.waiting) {
            if (!this.mayStart(w.large)) continue;
            this.waiting.delete(w);
            w.wake();
            break;
          }
        });
      };
      if (this.mayStart(large)) return grant();
      const waiter = {
        large,
        wake: () => {
          clearTimeout(timer);
          grant();
        },
      };
      const timer = setTimeout(() => {
        this.waiting.delete(waiter);
        reject(new RelayError(replies.upstreamTempFail(`all ${this.opts.poolSize} upstream connections stayed busy for ${this.timeoutMs} ms; nothing was sent`)));
      }, this.timeoutMs);
      this.waiting.add(waiter);
    });
  }

  async deliver(envelope: Envelope, message: Buffer): Promise<Delivery> {
    const release = await this.connectionSlot(message.length);
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new RelayError(replies.upstreamTempFail(`no answer within ${this.timeoutMs} ms`))),
        this.timeoutMs,
      );
    });
    const sending = this.transport.sendMail({
      envelope: { from: envelope.from, to: envelope.to },
      raw: message,
    });
    // The slot is held until nodemailer is done with the message, even past our deadline.
    sending.then(release, release);
    try {
      const info = await Promise.race([sending, deadline]);
      const rejectedErrors = ((info as { rejectedErrors?: NodemailerError[] }).rejectedErrors ?? []);
      const rejected: RecipientRejection[] = rejectedErrors.map((e) => ({
        recipient: e.recipient ?? '',
        code: e.responseCode ?? 0,
        response: (e.response ?? e.message).trim(),
      }));
      const response = String(info.response ?? '');
      return {
        queueId: queueIdOf(response),
        response,
        accepted: (info.accepted ?? []).map(String),
        rejected,
      };
    } catch (e) {
      if (e instanceof RelayError) throw e;
      throw replyForUpstreamError(e as NodemailerError, this.description);
    } finally {
      clearTimeout(timer);
    }
  }

  async probe(): Promise<boolean> {
    try {
      await this.transport.verify();
      return true;
    } catch {
      return false;
    }
  }

  async close(): Promise<void> {
    this.transport.close();
  }
}

function isIp(host: string): boolean {
  return /^[\d.]+$/.test(host) || host.includes(':');
}
