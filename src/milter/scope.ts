/**
 * Which messages the milter takes on. On a general MTA most mail is not from a covered mailbox
 * (inbound mail, other users), and a milter that refused what it cannot sign would stop the
 * mail server. So the milter only looks at mail that claims a covered sender: a covered mailbox
 * named in From, Sender, Resent-From or Resent-Sender. Such mail gets the relay's full rules
 * (src/admit/): signed exactly as the relay would forward it, or refused. Everything else is
 * accepted unchanged, unread past its header, and costs nothing.
 *
 * A field smuggled inside another one (a bare CR or LF, or NUL, before "From:") counts too, so a
 * covered sender hidden that way meets the header rules rather than passing unseen.
 */
import type { Mailbox } from '../mime/mailbox.js';
import type { MilterHeader } from './edits.js';

const SENDER_FIELDS = /^(?:resent-)?(?:from|sender)$/i;
const SMUGGLED_SENDER = /[\r\n\0][ \t]*(?:resent-)?(?:from|sender)[ \t]*:([^\r\n\0]*)/gi;

/** Characters that may sit right next to an address in an addr-spec; a neighbour like these means a longer address. */
const ATEXT = /[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]/;
const DOMAIN_CHAR = /[A-Za-z0-9.-]/;

export function claimsCoveredSender(headers: readonly MilterHeader[], covered: readonly Mailbox[]): boolean {
  const names = (text: string) => covered.some((mailbox) => mentions(text.toLowerCase(), mailbox));
  for (const h of headers) {
    if (SENDER_FIELDS.test(h.name.trim()) && names(h.value)) return true;
    for (const m of h.value.matchAll(SMUGGLED_SENDER)) if (names(m[1]!)) return true;
  }
  return false;
}

/** The mailbox appears as a whole address: `notify@example.com`, not `xnotify@example.com.evil`. */
function mentions(text: string, mailbox: Mailbox): boolean {
  // padded, every occurrence has a neighbour on each side
  const padded = ` ${text} `;
  for (let at = padded.indexOf(mailbox); at !== -1; at = padded.indexOf(mailbox, at + 1)) {
    if (!ATEXT.test(padded[at - 1]!) && !DOMAIN_CHAR.test(padded[at + mailbox.length]!)) return true;
  }
  return false;
}
