import addressparser from 'nodemailer/lib/addressparser';
import { DEFAULT_MAX_HEADER_BYTES, fieldValue, topHeaderFields } from '../mime/header.js';
import { toMailbox, type Mailbox } from '../mime/mailbox.js';
import type { Principal } from '../access/users.js';
import { RelayError, replies } from '../replies.js';
import { NO_ENVELOPE_SENDERS, type EnvelopeSenders } from './envelope-senders.js';

/**
 * admit: the relay signs only as a mailbox one of its certificates names. Both the envelope
 * sender (checked at MAIL FROM, before any data moves) and the From header (what clients check
 * against the signer) must be such a mailbox. An authenticated user limited to some mailboxes
 * (SMIME_RELAY_USERS, like signing-milter's auth-signing-table) must also be sending as one of
 * them; that is checked first, so the reply names only the mailboxes this user may use.
 */
export function admitEnvelopeSender(
  address: string, covered: readonly Mailbox[], principal?: Principal, alsoAllowed: EnvelopeSenders = NO_ENVELOPE_SENDERS,
): Mailbox {
  const mailbox = toMailbox(address);
  // A bounce address or a legacy sendmail's root@host (SMIME_RELAY_ENVELOPE_SENDERS): only the
  // From header is compared with the signer, and admitFromHeader still checks it, per user too.
  if (alsoAllowed.matches(mailbox)) return mailbox;
  if (principal?.mailboxes && !principal.mailboxes.includes(mailbox)) {
    throw new RelayError(replies.senderNotPermitted(principal.user, address, principal.mailboxes));
  }
  if (!covered.includes(mailbox)) throw new RelayError(replies.senderNotCovered(address, covered));
  return mailbox;
}

/** The From header must be exactly one mailbox (RFC 5322 §3.6.2 allows several; we cannot sign for several). */
export function admitFromHeader(raw: Buffer, covered: readonly Mailbox[], principal?: Principal): Mailbox {
  const fields = topHeaderFields(raw);
  if (!fields) throw new RelayError(replies.malformedMessage(`header block exceeds the limit of ${DEFAULT_MAX_HEADER_BYTES} bytes`));
  // Header values are raw bytes; SMTPUTF8 (RFC 6532) puts UTF-8 in them.
  const values = fields.filter((f) => f.name === 'from').map((f) => Buffer.from(fieldValue(f), 'latin1').toString('utf8').trim());
  if (values.length === 0) throw new RelayError(replies.fromHeaderInvalid('is missing'));
  if (values.length > 1) throw new RelayError(replies.fromHeaderInvalid(`appears ${values.length} times`));
  const parsed = addressparser(values[0]!, { flatten: true });
  const addresses = parsed.map((a) => a.address).filter((a): a is string => !!a);
  if (addresses.length !== 1) {
    throw new RelayError(replies.fromHeaderInvalid(addresses.length === 0 ? 'has no address' : `names ${addresses.length} addresses`));
  }
  const address = addresses[0]!;
  const mailbox = toMailbox(address);
  if (principal?.mailboxes && !principal.mailboxes.includes(mailbox)) {
    throw new RelayError(replies.fromHeaderNotPermitted(principal.user, address, principal.mailboxes));
  }
  if (!covered.includes(mailbox)) throw new RelayError(replies.fromHeaderNotCovered(address, covered));
  return mailbox;
}
