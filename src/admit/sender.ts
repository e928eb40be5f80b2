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
