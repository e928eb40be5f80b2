import addressparser from 'nodemailer/lib/addressparser';
import { toMailbox, type Mailbox } from '../mime/mailbox.js';
import type { Principal } from '../access/users.js';
import { RelayError, replies } from '../smtp/reply.js';

/**
 * admit: the relay signs only as a mailbox one of its certificates names. Both the envelope
 * sender (checked at MAIL FROM, before any data moves) and the From header (what clients check
 * against the signer) must be such a mailbox. An authenticated user limited to some mailboxes
 * (SMIME_RELAY_USERS, like signing-milter's auth-signing-table) must also be sending as one of
 * them; that is checked first, so the reply names only the mailboxes this user may use.
 */
export function admitEnvelopeSender(address: string, covered: readonly Mailbox[], principal?: Principal): Mailbox {
  const mailbox = toMailbox(address);
  if (principal?.mailboxes && !principal.mailboxes.includes(mailbox)) {
    throw new RelayError(replies.senderNotPermitted(principal.user, address, principal.mailboxes));
  }
  if (!covered.includes(mailbox)) throw new RelayError(replies.senderNotCovered(address, covered));
  return mailbox;
}

/** Returns the unfolded value of the single header `name` in a raw header block, or the count found. */
export function headerValues(headerBlock: string, name: string): string[] {
  const unfolded = headerBlock.replace(/\r?\n(?=[ \t])/g, '');
  const prefix = name.toLowerCase() + ':';
  return unfolded
    .split(/\r?\n/)
    .filter((line) => line.toLowerCase().startsWith(prefix))
    .map((line) => line.slice(prefix.length).trim());
}

/** The header block of a raw message: everything before the first empty line. */
export function headerBlockOf(raw: Buffer): string {
  let end = raw.indexOf('\r\n\r\n');
  const lf = raw.indexOf('\n\n');
  if (end < 0 || (lf >= 0 && lf < end)) end = lf;
  return raw.subarray(0, end < 0 ? raw.length : end).toString('utf8');
}

/** The From header must be exactly one mailbox (RFC 5322 §3.6.2 allows several; we cannot sign for several). */
export function admitFromHeader(raw: Buffer, covered: readonly Mailbox[], principal?: Principal): Mailbox {
  const values = headerValues(headerBlockOf(raw), 'from');
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
