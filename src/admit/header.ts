/**
 * admit (header): the one place that decides whether a message's header may leave the relay, and
 * the bytes it leaves with. It runs without an SMTP session (the pipeline, `smime-relay sign`, a
 * milter front end), and it is all-or-nothing: the caller forwards `message` or nothing.
 *
 * 1. The header block is made canonical or refused (header-block.ts, 554 5.6.0 naming the line).
 * 2. On exactly those bytes, one unambiguous sender: exactly one From, holding exactly one
 *    mailbox in strict syntax (mailbox-syntax.ts), covered by a certificate and by the
 *    authenticated user's list, with no other address in what a client shows beside it
 *    (shown-addresses.ts). Sender, Resent-From and Resent-Sender are absent or meet the same
 *    rules (Outlook shows Sender as "X on behalf of Y"). Reply-To stays free. Each failure is
 *    550 5.7.1 with the reason.
 */
import type { Principal } from '../access/users.js';
import type { HeaderField } from '../mime/header.js';
import { toMailbox, type Mailbox } from '../mime/mailbox.js';
import { RelayError, replies } from '../replies.js';
import { canonicalHeader, type CanonicalField } from './header-block.js';
import { parseMailbox, type MailboxParser } from './mailbox-syntax.js';
import { shownTextProblem } from './shown-addresses.js';

export interface HeaderPolicy {
  /** Every mailbox a loaded certificate covers. */
  covered: readonly Mailbox[];
  /** The authenticated user; its mailbox list (SMIME_RELAY_USERS) narrows `covered`. */
  principal?: Principal;
  /** The client used SMTPUTF8 on MAIL FROM (RFC 6531), so UTF-8 may stay in the header. */
  smtputf8: boolean;
}

export interface AdmittedMessage {
  /** What every later stage reads and forwards: the canonical header, a blank line, the body as received. */
  message: Buffer;
  /** The From mailbox, the one the signature may vouch for. */
  from: Mailbox;
}

/**
 * Fields besides From that name who sent the message; clients show each of them as the sender.
 * A Map, not an object: a field named Constructor or __proto__ is no sender field.
 */
const OTHER_SENDER_FIELDS: ReadonlyMap<string, string> = new Map([
  ['sender', 'Sender'],
  ['resent-from', 'Resent-From'],
  ['resent-sender', 'Resent-Sender'],
]);

/** Throws RelayError with the one reply for the first problem found. */
export function admitHeader(raw: Buffer, policy: HeaderPolicy, parse: MailboxParser = parseMailbox): AdmittedMessage {
  const { fields, message } = canonicalHeader(raw, { smtputf8: policy.smtputf8 });
  const froms = fields.filter((f) => f.name === 'from');
  if (froms.length === 0) throw new RelayError(replies.fromHeaderInvalid('is missing'));
  if (froms.length > 1) throw new RelayError(replies.fromHeaderInvalid(`appears ${froms.length} times`));
  const senders = fields.filter((f) => f.name === 'sender').length;
  if (senders > 1) throw new RelayError(replies.fromHeaderInvalid(`appears ${senders} times`, 'Sender'));
  const from = admitMailboxField(froms[0]!, 'From', policy, parse);
  for (const field of fields) {
    const label = OTHER_SENDER_FIELDS.get(field.name);
    if (label) admitMailboxField(field, label, policy, parse);
  }
  return { message, from };
}

function admitMailboxField(field: CanonicalField, label: string, policy: HeaderPolicy, parse: MailboxParser): Mailbox {
  const parsed = parse(foldedValue(field));
  if (!parsed.ok) throw new RelayError(replies.fromHeaderInvalid(parsed.problem, label));
  const { address, shown } = parsed.mailbox;
  const mailbox = toMailbox(address);
  const { principal, covered } = policy;
  // the user's own list first, so the reply names only the mailboxes this user may use
  if (principal?.mailboxes && !principal.mailboxes.includes(mailbox)) {
    throw new RelayError(replies.fromHeaderNotPermitted(principal.user, address, principal.mailboxes, label));
  }
  if (!covered.includes(mailbox)) throw new RelayError(replies.fromHeaderNotCovered(address, covered, label));
  const problem = shownTextProblem(shown, mailbox);
  if (problem) throw new RelayError(replies.fromHeaderMisleading(problem, label));
  return mailbox;
}

/**
 * The value after the colon with its folding CRLFs, as it leaves (the reader refuses folds that a
 * parser would misread). Canonical fields hold 8-bit bytes only as UTF-8 (SMTPUTF8).
 */
export function foldedValue(field: HeaderField): string {
  const text = field.lines.map((l) => l.toString('utf8')).join('\r\n');
  return text.slice(text.indexOf(':') + 1);
}
