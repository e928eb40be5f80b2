import { toMailbox, type Mailbox } from '../mime/mailbox.js';

/**
 * SMIME_RELAY_ENVELOPE_SENDERS: envelope senders (MAIL FROM) allowed besides the certificates'
 * mailboxes. The envelope sender is where bounces go, not who the mail is from: legacy `sendmail`
 * without -f uses root@host, VERP uses bounces+user=domain@example.com, and a bounce itself uses
 * the null sender <>. No client compares it with the signer (they compare the From header, which
 * is still checked), so allowing such addresses signs nothing new.
 */
export interface EnvelopeSenders {
  /** The patterns as written, for messages. */
  readonly patterns: readonly string[];
  matches(address: string): boolean;
  /** The patterns as written, comma-separated (`config --print`). */
  toString(): string;
}

export const NO_ENVELOPE_SENDERS: EnvelopeSenders = { patterns: [], matches: () => false, toString: () => '' };

/** The null reverse-path of RFC 5321 §4.5.5, as written in the setting. */
const NULL_SENDER = '<>';

/**
 * Parses a comma-separated list. Each entry is `<>` or an address pattern local@domain in which
 * `*` stands for any run of characters except `@` (so `*@*` is any address, and
 * `bounces+*@example.com` is a VERP range). Matching is case-insensitive, as for mailboxes.
 * Returns an error text instead when an entry is not such a pattern.
 */
export function parseEnvelopeSenders(text: string): EnvelopeSenders | string {
  const patterns = text.split(',').map((p) => p.trim()).filter(Boolean);
  if (!patterns.length) return 'expected patterns such as bounces+*@example.com,root@*,<>';
  const tests: ((a: Mailbox) => boolean)[] = [];
  for (const p of patterns) {
    if (p === NULL_SENDER) {
      tests.push((a) => a === '');
      continue;
    }
    if (!/^[^@\s<>,]+@[^@\s<>,]+$/.test(p)) {
      return `'${p}' is not an address pattern: write local@domain with * as a wildcard (bounces+*@example.com, root@*), or <> for the null sender`;
    }
    const source = toMailbox(p).split('*').map((s) => s.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('[^@]*');
    const re = new RegExp(`^${source}$`);
    tests.push((a) => re.test(a));
  }
  return {
    patterns,
    matches: (address) => tests.some((t) => t(toMailbox(address))),
    toString: () => patterns.join(','),
  };
}
