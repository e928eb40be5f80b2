import type { Logger } from 'pino';
import { newTransactionId } from '../pipeline.js';
import { withTransactionId, type SmtpReply } from '../replies.js';

/**
 * A refusal that happens outside a message's own transaction line: at connect, MAIL FROM,
 * RCPT TO, or when a session limit ends a connection. What a policy decided, and why.
 */
export interface Refusal {
  reply: SmtpReply;
  /** The log message: what was refused and why, in words an admin greps for. */
  why: string;
  /** The facts of the log line: the client, the command's argument, the limit. */
  fields?: Record<string, unknown>;
}

/**
 * Gives the refusal a transaction id, writes its one log line with that id, and returns the reply
 * with the id at its end. Messages that reach DATA get theirs from the pipeline's transaction
 * line instead; together every refusal a client sees can be found in the log by its id.
 */
export function announce(log: Logger, refusal: Refusal, level: 'warn' | 'error' = 'warn'): SmtpReply {
  const tx = newTransactionId();
  const { reply } = refusal;
  log[level]({ tx, ...refusal.fields, reply: `${reply.code} ${reply.status} ${reply.text}` }, refusal.why);
  return withTransactionId(reply, tx);
}
