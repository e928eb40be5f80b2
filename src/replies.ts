import type { MessageOutcome } from './metrics/outcome.js';

/**
 * Every SMTP answer the relay gives, in one place. A failure anywhere in the pipeline is a
 * RelayError carrying exactly one of these replies; nothing else decides a reply code.
 */
export interface SmtpReply {
  /** Basic reply code (RFC 5321 §4.2). */
  code: number;
  /** Enhanced status code (RFC 3463), e.g. "5.7.1". */
  status: string;
  /** Human text that says what happened and what to fix. */
  text: string;
  /** What a refusal means for the message, for the transaction log and smime_relay_messages_total. */
  outcome?: MessageOutcome;
}

export class RelayError extends Error {
  constructor(readonly reply: SmtpReply) {
    super(`${reply.code} ${reply.status} ${reply.text}`);
    this.name = 'RelayError';
  }
}

const list = (xs: readonly string[]): string => (xs.length ? xs.join(', ') : '(none)');

export const replies = {
  accepted: (queueInfo: string): SmtpReply => ({ code: 250, status: '2.0.0', text: `Ok: ${queueInfo}` }),

  senderNotCovered: (address: string, mailboxes: readonly string[]): SmtpReply => ({
    code: 550,
    status: '5.7.1',
    text: `Sender <${address}> is not a mailbox this relay signs for; it signs for: ${list(mailboxes)}`,
    outcome: 'rejected_sender',
  }),
  fromHeaderInvalid: (problem: string): SmtpReply => ({
    code: 550,
    status: '5.7.1',
    text: `From header ${problem}; it must be exactly one mailbox covered by a loaded certificate`,
    outcome: 'rejected_sender',
  }),
  fromHeaderNotCovered: (address: string, mailboxes: readonly string[]): SmtpReply => ({
    code: 550,
    status: '5.7.1',
    text: `From <${address}> is not a mailbox this relay signs for; it signs for: ${list(mailboxes)}`,
    outcome: 'rejected_sender',
  }),

  // Who may use the relay (src/access/). Not messages: a refused client never got to send one.
  clientNotAllowed: (address: string): SmtpReply => ({
    code: 554,
    status: '5.7.1',
    text: `Client address ${address} is not in SMIME_RELAY_ALLOW; this relay does not accept mail from it`,
  }),
  tlsRequired: (): SmtpReply => ({ code: 530, status: '5.7.0', text: 'Must issue a STARTTLS command first' }),
  authRequired: (): SmtpReply => ({
    code: 530,
    status: '5.7.0',
    text: 'Authentication required: this relay signs only for authenticated users (AUTH PLAIN or LOGIN)',
  }),
  /** RFC 4954 §6: 538 5.7.11 "Encryption required for requested authentication mechanism". */
  authNeedsTls: (): SmtpReply => ({ code: 538, status: '5.7.11', text: 'Encryption required: AUTH is only accepted over TLS (use STARTTLS)' }),
  authFailed: (): SmtpReply => ({ code: 535, status: '5.7.8', text: 'Authentication credentials invalid' }),
  senderNotPermitted: (user: string, address: string, mailboxes: readonly string[]): SmtpReply => ({
    code: 550,
    status: '5.7.1',
    text: `User ${user} may not send as <${address}>; it may send as: ${list(mailboxes)}`,
    outcome: 'rejected_sender',
  }),
  fromHeaderNotPermitted: (user: string, address: string, mailboxes: readonly string[]): SmtpReply => ({
    code: 550,
    status: '5.7.1',
    text: `User ${user} may not send as From <${address}>; it may send as: ${list(mailboxes)}`,
    outcome: 'rejected_sender',
  }),
  certificateUnavailable: (mailbox: string, reason: string): SmtpReply => ({
    code: 451,
    status: '4.7.1',
    text: `Certificate for <${mailbox}> is not usable (${reason}); try again after it is renewed or fixed`,
    outcome: 'sign_error',
  }),
  messageTooBig: (limit: number): SmtpReply => ({
    code: 552,
    status: '5.3.4',
    text: `Message exceeds the fixed maximum message size of ${limit} bytes`,
    outcome: 'rejected_size',
  }),
  malformedMessage: (reason: string): SmtpReply => ({
    code: 554,
    status: '5.6.0',
    text: `Message cannot be made 7-bit safe for signing: ${reason}`,
    outcome: 'sign_error',
  }),
  signingFailed: (reason: string): SmtpReply => ({
    code: 451,
    status: '4.7.0',
    text: `Signing failed temporarily (${reason}); try again later`,
    outcome: 'sign_error',
  }),
  upstreamTempFail: (detail: string): SmtpReply => ({
    code: 451,
    status: '4.4.1',
    text: `Upstream did not accept the message (${detail}); try again later`,
    outcome: 'upstream_tempfail',
  }),
  upstreamPermFail: (code: number, detail: string): SmtpReply => ({
    code: code >= 500 && code < 600 ? code : 554,
    status: '5.0.0',
    text: `Upstream rejected the message: ${detail}`,
    outcome: 'upstream_permfail',
  }),
  internalError: (reason: string): SmtpReply => ({
    code: 451,
    status: '4.3.0',
    text: `Local error in processing (${reason}); try again later`,
    outcome: 'sign_error',
  }),

  // Session limits (src/smtp/sessions.ts): the connection, not one message, is refused.
  tooManyRecipients: (limit: number): SmtpReply => ({
    code: 452,
    status: '4.5.3',
    text: `Too many recipients: at most ${limit} per message; send the others in another transaction`,
  }),
  tooManyConnectionsFromAddress: (address: string, limit: number): SmtpReply => ({
    code: 421,
    status: '4.7.0',
    text: `Too many connections from ${address} (at most ${limit}); try again later`,
  }),
  transactionTimedOut: (limitMs: number): SmtpReply => ({
    code: 421,
    status: '4.4.2',
    text: `Message not received within ${limitMs} ms; closing connection, try again`,
  }),
  shuttingDown: (): SmtpReply => ({
    code: 421,
    status: '4.3.2',
    text: 'smime-relay is shutting down; try again later',
  }),
  /** LMTP only: the upstream's own answer for one recipient, passed through with its class and status. */
  recipientRefusedUpstream: (recipient: string, code: number, response: string): SmtpReply => {
    const basic = code >= 400 && code < 600 ? code : 550;
    const status = /^\d{3}[ -]([45]\.\d{1,3}\.\d{1,3})\b/.exec(response.trim())?.[1] ?? `${Math.floor(basic / 100)}.0.0`;
    return {
      code: basic,
      status,
      text: `Upstream refused <${recipient}>: ${response.replace(/\s+/g, ' ').trim()}`,
      outcome: basic < 500 ? 'upstream_tempfail' : 'upstream_permfail',
    };
  },
} as const;
