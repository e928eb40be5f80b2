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
  constructor(
    readonly reply: SmtpReply,
    /** What only the log may say: local paths, the upstream's address, the raw error. */
    readonly detail?: string,
  ) {
    super(`${reply.code} ${reply.status} ${reply.text}`);
    this.name = 'RelayError';
  }
}

/** The transaction id at the end of a reply, so the log line for a bounce is one grep away. */
export const withTransactionId = (reply: SmtpReply, id: string): SmtpReply => ({ ...reply, text: `${reply.text} (tx ${id})` });

/**
 * The RFC 3463 status an SMTP reply line carries ("550 5.7.1 ..." → "5.7.1"), when its class
 * matches the reply code; otherwise the class's generic one (RFC 3463 §3.1: X.0.0).
 */
export function enhancedStatusOf(code: number, response: string): string {
  const cls = Math.floor(code / 100);
  const m = /^(?:\d{3}[ -])?([245])\.(\d{1,3})\.(\d{1,3})\b/.exec(response.trim());
  return m && Number(m[1]) === cls ? `${m[1]}.${m[2]}.${m[3]}` : `${cls}.0.0`;
}

/**
 * Error text that may reach a client: absolute paths and IP addresses (with a port) are the
 * operator's business, so they are cut here and the full text goes to the log line instead.
 */
export function withoutLocalDetails(text: string): string {
  return text
    .replace(/(^|[\s'"(=:,])\/[^\s'"(),;:]*/g, '$1[path]')
    .replace(/\[[0-9a-f:.]+\](?::\d+)?|\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b|(?<![\w:])(?:[0-9a-f]{0,4}:){2,7}[0-9a-f]{0,4}(?:\.\d{1,3}){0,3}(?::\d+)?(?![\w:])/gi, (m) =>
      // "12:30:45" is a time, not an address
      /^\d{1,2}:\d{2}(?::\d{2})?$/.test(m) ? m : '[address]',
    );
}

const list = (xs: readonly string[]): string => (xs.length ? xs.join(', ') : '(none)');

export const replies = {
  accepted: (queueInfo: string): SmtpReply => ({ code: 250, status: '2.0.0', text: `Ok: ${queueInfo}` }),

  senderNotCovered: (address: string, mailboxes: readonly string[]): SmtpReply => ({
    code: 550,
    status: '5.7.1',
    text: `Sender <${address}> is not a mailbox this relay signs for; it signs for: ${list(mailboxes)} (a bounce address may be allowed with SMIME_RELAY_ENVELOPE_SENDERS)`,
    outcome: 'rejected_sender',
  }),
  /**
   * A sender field (From, and Sender/Resent-From/Resent-Sender when present) that is not exactly
   * one mailbox in syntax every mail client reads the same way (src/admit/mailbox-syntax.ts).
   */
  fromHeaderInvalid: (problem: string, field = 'From'): SmtpReply => ({
    code: 550,
    status: '5.7.1',
    text: `${field} header ${problem}; it must be exactly one mailbox covered by a loaded certificate`,
    outcome: 'rejected_sender',
  }),
  fromHeaderNotCovered: (address: string, mailboxes: readonly string[], field = 'From'): SmtpReply => ({
    code: 550,
    status: '5.7.1',
    text: `${field} <${address}> is not a mailbox this relay signs for; it signs for: ${list(mailboxes)}`,
    outcome: 'rejected_sender',
  }),
  /** The display name, a quoted string or a comment shows an address other than the signed mailbox (src/admit/shown-addresses.ts). */
  fromHeaderMisleading: (problem: string, field = 'From'): SmtpReply => ({
    code: 550,
    status: '5.7.1',
    text:
      `${field} header ${problem}; mail clients show that text next to the signature, so the relay will not sign it. ` +
      'Leave other addresses out of the display name and comments',
    outcome: 'rejected_sender',
  }),
  /**
   * An outer header line that the next hop or a mail client could read differently from the relay
   * (src/admit/header-block.ts): refused rather than guessed at. `excerpt` is printable ASCII.
   */
  headerLineRefused: (line: number, excerpt: string, problem: string): SmtpReply => ({
    code: 554,
    status: '5.6.0',
    text: `Header line ${line} ("${excerpt}") ${problem}; correct the message header (RFC 5322) and send it again`,
    outcome: 'sign_error',
  }),

  // Who may use the relay (src/access/). Not messages: a refused client never got to send one.
  clientNotAllowed: (address: string): SmtpReply => ({
    code: 554,
    status: '5.7.1',
    text: `Client address ${address} is not in SMIME_RELAY_ALLOW; this relay does not accept mail from it`,
  }),
  /** A PROXY header from a peer not listed in SMIME_RELAY_PROXY_PROTOCOL: the connection is closed. */
  proxyHeaderNotTrusted: (address: string): SmtpReply => ({
    code: 421,
    status: '4.7.0',
    text: `PROXY header not accepted from ${address}: it is not a load balancer listed in SMIME_RELAY_PROXY_PROTOCOL; closing connection`,
  }),
  xforwardNotAllowed: (address: string): SmtpReply => ({
    code: 550,
    status: '5.7.0',
    text: `XFORWARD is not accepted from ${address}; only from SMIME_RELAY_XFORWARD_HOSTS`,
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
  /** Postfix-like hard limit: a connection that keeps guessing is closed. */
  authTooManyFailures: (limit: number): SmtpReply => ({
    code: 421,
    status: '4.7.0',
    text: `${limit} failed authentication attempts on this connection; closing connection`,
  }),
  /** RFC 4954 §6: 454 4.7.0 "Temporary authentication failure". No password was checked. */
  authBlocked: (failures: number, minutes: number): SmtpReply => ({
    code: 454,
    status: '4.7.0',
    text: `Temporary authentication failure: ${failures} failed attempts from your address in the last ${minutes} minutes; try again later`,
  }),
  senderNotPermitted: (user: string, address: string, mailboxes: readonly string[]): SmtpReply => ({
    code: 550,
    status: '5.7.1',
    text: `User ${user} may not send as <${address}>; it may send as: ${list(mailboxes)}`,
    outcome: 'rejected_sender',
  }),
  fromHeaderNotPermitted: (user: string, address: string, mailboxes: readonly string[], field = 'From'): SmtpReply => ({
    code: 550,
    status: '5.7.1',
    text: `User ${user} may not send as ${field} <${address}>; it may send as: ${list(mailboxes)}`,
    outcome: 'rejected_sender',
  }),
  // The milter (src/milter/): the MTA authenticated the client and names it in macros; these
  // refuse mail from a covered mailbox that this client may not have signed.
  relayedAuthRequired: (): SmtpReply => ({
    code: 550,
    status: '5.7.1',
    text: 'Authentication required: mail from a covered mailbox is signed only for senders who logged in (SASL) as a user of SMIME_RELAY_USERS',
    outcome: 'rejected_sender',
  }),
  relayedLoginUnknown: (login: string): SmtpReply => ({
    code: 550,
    status: '5.7.1',
    text: `SASL login ${login} is not a user of SMIME_RELAY_USERS; mail from a covered mailbox is signed only for those users`,
    outcome: 'rejected_sender',
  }),
  relayedClientNotAllowed: (address: string): SmtpReply => ({
    code: 550,
    status: '5.7.1',
    text: `Client address ${address} is neither loopback nor in SMIME_RELAY_ALLOW; mail from a covered mailbox is signed only for those clients, or after SASL login`,
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
  /** SMIME_RELAY_MEMORY_BUDGET (src/memory/budget.ts): temporary, the client's queue retries. */
  insufficientMemory: (reason: string): SmtpReply => ({
    code: 452,
    status: '4.3.1',
    text: `Mail system full: too much mail in progress (${reason}); try again later`,
    outcome: 'rejected_memory',
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
    text: `Signing failed temporarily (${withoutLocalDetails(reason)}); try again later`,
    outcome: 'sign_error',
  }),
  /** SMIME_RELAY_SELF_VERIFY: the signed bytes did not verify, so they were not forwarded; the client retries. */
  selfVerifyFailed: (reason: string): SmtpReply => ({
    code: 451,
    status: '4.7.0',
    text: `Signature self-check failed (${reason}); the message was not forwarded, try again later`,
    outcome: 'self_verify_failed',
  }),
  /**
   * `detail` names no host or port (the log line has them). When the upstream answered, its own
   * 4.x.x status is passed on; 4.4.1 ("no answer from host") is for when it did not.
   */
  upstreamTempFail: (detail: string, upstream?: { code: number; response: string }): SmtpReply => ({
    code: 451,
    status: upstream && upstream.code >= 400 && upstream.code < 500 ? enhancedStatusOf(upstream.code, upstream.response) : '4.4.1',
    text: `Upstream did not accept the message (${detail}); try again later`,
    outcome: 'upstream_tempfail',
  }),
  /** The upstream's 5xx and its enhanced status come back unchanged (RFC 3463: the status says why). */
  upstreamPermFail: (code: number, response: string): SmtpReply => {
    const basic = code >= 500 && code < 600 ? code : 554;
    return {
      code: basic,
      status: enhancedStatusOf(basic, response),
      text: `Upstream rejected the message: ${response}`,
      outcome: 'upstream_permfail',
    };
  },
  /** RFC 3207 §4 / RFC 4954 §4: no credentials over a connection that is not encrypted. */
  upstreamNeedsTls: (): SmtpReply => ({
    code: 451,
    status: '4.7.0',
    text: 'Upstream offers no STARTTLS, and the relay does not send its upstream password in clear; try again later (the relay\'s log says how to fix it)',
    outcome: 'upstream_tempfail',
  }),
  /** The file: upstream could not store the message; `why` is an error code, the path is in the log. */
  outboxWriteFailed: (why: string): SmtpReply => ({
    code: 451,
    status: '4.3.0',
    text: `The message could not be written to the outbox (${why}); try again later`,
    outcome: 'upstream_tempfail',
  }),
  internalError: (reason: string): SmtpReply => ({
    code: 451,
    status: '4.3.0',
    text: `Local error in processing (${withoutLocalDetails(reason)}); try again later`,
    outcome: 'sign_error',
  }),

  // Session limits (src/smtp/sessions.ts): the connection, not one message, is refused.
  tooManyRecipients: (limit: number): SmtpReply => ({
    code: 452,
    status: '4.5.3',
    text: `Too many recipients: at most ${limit} per message; send the others in another transaction`,
  }),
  /** Postfix says "421 4.3.2 All server ports are busy" here. */
  tooManyClients: (limit: number): SmtpReply => ({
    code: 421,
    status: '4.3.2',
    text: `Too many connected clients (at most ${limit}); try again in a moment`,
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
  /** Stress mode (src/smtp/stress.ts): the relay is nearly full, so idle and slow clients give way. */
  idleUnderStress: (seconds: number): SmtpReply => ({
    code: 421,
    status: '4.4.2',
    text: `Nothing received for ${seconds} s while the relay is busy; closing connection, try again`,
  }),
  tooSlowUnderStress: (bytesPerSecond: number, seconds: number): SmtpReply => ({
    code: 421,
    status: '4.4.2',
    text: `Less than ${bytesPerSecond} bytes/s received over ${seconds} s while the relay is busy; closing connection, try again`,
  }),
  shuttingDown: (): SmtpReply => ({
    code: 421,
    status: '4.3.2',
    text: 'smime-relay is shutting down; try again later',
  }),
  /** LMTP only: the upstream's own answer for one recipient, passed through with its class and status. */
  recipientRefusedUpstream: (recipient: string, code: number, response: string): SmtpReply => {
    const basic = code >= 400 && code < 600 ? code : 550;
    return {
      code: basic,
      status: enhancedStatusOf(basic, response),
      text: `Upstream refused <${recipient}>: ${response.replace(/\s+/g, ' ').trim()}`,
      outcome: basic < 500 ? 'upstream_tempfail' : 'upstream_permfail',
    };
  },
} as const;
