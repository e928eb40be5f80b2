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
}

export class RelayError extends Error {
  constructor(readonly reply: SmtpReply) {
    super(`${reply.code} ${reply.status} ${reply.text}`);
    this.name = 'RelayError';
  }
}

export const isTransient = (r: SmtpReply): boolean => r.code >= 400 && r.code < 500;

const list = (xs: readonly string[]): string => (xs.length ? xs.join(', ') : '(none)');

export const replies = {
  accepted: (queueInfo: string): SmtpReply => ({ code: 250, status: '2.0.0', text: `Ok: ${queueInfo}` }),

  senderNotCovered: (address: string, mailboxes: readonly string[]): SmtpReply => ({
    code: 550,
    status: '5.7.1',
    text: `Sender <${address}> is not a mailbox this relay signs for; it signs for: ${list(mailboxes)}`,
  }),
  fromHeaderInvalid: (problem: string): SmtpReply => ({
    code: 550,
    status: '5.7.1',
    text: `From header ${problem}; it must be exactly one mailbox covered by a loaded certificate`,
  }),
  fromHeaderNotCovered: (address: string, mailboxes: readonly string[]): SmtpReply => ({
    code: 550,
    status: '5.7.1',
    text: `From <${address}> is not a mailbox this relay signs for; it signs for: ${list(mailboxes)}`,
  }),
  certificateUnavailable: (mailbox: string, reason: string): SmtpReply => ({
    code: 451,
    status: '4.7.1',
    text: `Certificate for <${mailbox}> is not usable (${reason}); try again after it is renewed`,
  }),
  messageTooBig: (limit: number): SmtpReply => ({
    code: 552,
    status: '5.3.4',
    text: `Message exceeds the fixed maximum message size of ${limit} bytes`,
  }),
  malformedMessage: (reason: string): SmtpReply => ({
    code: 554,
    status: '5.6.0',
    text: `Message cannot be made 7-bit safe for signing: ${reason}`,
  }),
  signingFailed: (reason: string): SmtpReply => ({
    code: 451,
    status: '4.7.0',
    text: `Signing failed temporarily (${reason}); try again later`,
  }),
  upstreamTempFail: (detail: string): SmtpReply => ({
    code: 451,
    status: '4.4.1',
    text: `Upstream did not accept the message (${detail}); try again later`,
  }),
  upstreamPermFail: (code: number, detail: string): SmtpReply => ({
    code: code >= 500 && code < 600 ? code : 554,
    status: '5.0.0',
    text: `Upstream rejected the message: ${detail}`,
  }),
  internalError: (reason: string): SmtpReply => ({
    code: 451,
    status: '4.3.0',
    text: `Local error in processing (${reason}); try again later`,
  }),
} as const;
