/**
 * A mailbox (addr-spec) as used for matching senders against certificates.
 * Matching is case-insensitive (RFC 5321 §2.4 lets the local part be case-sensitive, but every
 * S/MIME client compares the signer's rfc822Name case-insensitively, so we do the same).
 */
export type Mailbox = string & { readonly __brand: 'Mailbox' };

export function toMailbox(address: string): Mailbox {
  return address.trim().toLowerCase() as Mailbox;
}
