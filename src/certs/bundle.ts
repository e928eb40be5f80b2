import { X509Certificate, type KeyObject } from 'node:crypto';
import { toMailbox, type Mailbox } from '../mime/mailbox.js';
import { FileKey } from '../signing/file-key.js';
import type { SigningKey } from '../signing/key.js';

/** A signing identity: private key (in the file or on a token), leaf certificate and chain, as loaded from one file. */
export interface CertificateBundle {
  /** Path the bundle was loaded from (the symlink as configured, not its target). */
  readonly source: string;
  /** Mailboxes this certificate may sign for: SAN rfc822Name entries plus subject emailAddress. */
  readonly mailboxes: readonly Mailbox[];
  readonly key: SigningKey;
  readonly leaf: X509Certificate;
  /** Intermediates (and possibly the root) in the order given, leaf excluded. */
  readonly chain: readonly X509Certificate[];
  readonly serial: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
}

const PEM_BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----\r?\n[\s\S]*?-----END \1-----/g;

export interface PemBlock {
  label: string;
  text: string;
}

export function pemBlocks(text: string): PemBlock[] {
  return [...text.matchAll(PEM_BLOCK)].map((m) => ({ label: m[1]!, text: m[0] + '\n' }));
}

/** Mailboxes named by a certificate: SAN rfc822Name entries, then the subject emailAddress. */
export function certificateMailboxes(cert: X509Certificate): Mailbox[] {
  const out = new Set<Mailbox>();
  for (const entry of (cert.subjectAltName ?? '').split(/,\s*/)) {
    if (entry.startsWith('email:')) out.add(toMailbox(entry.slice('email:'.length)));
  }
  for (const line of cert.subject.split('\n')) {
    const m = /^emailAddress=(.+)$/i.exec(line.trim());
    if (m) out.add(toMailbox(m[1]!));
  }
  return [...out];
}

/** Builds a bundle from already-parsed parts; the leaf is the certificate that matches the key. */
export function assembleBundle(source: string, key: KeyObject, certs: X509Certificate[]): CertificateBundle {
  const leaf = certs.find((c) => c.checkPrivateKey(key));
  if (!leaf) {
    throw new Error(`${source}: the private key does not match any certificate in the bundle`);
  }
  return bundleOf(source, new FileKey(key), leaf, certs);
}

/** A bundle whose leaf is already known to belong to the key (a token key matched by its public key). */
export function bundleOf(source: string, key: SigningKey, leaf: X509Certificate, certs: readonly X509Certificate[]): CertificateBundle {
  return {
    source,
    mailboxes: certificateMailboxes(leaf),
    key,
    leaf,
    chain: certs.filter((c) => c !== leaf),
    serial: leaf.serialNumber,
    notBefore: new Date(leaf.validFrom),
    notAfter: new Date(leaf.validTo),
  };
}

/** What a log line may say about a bundle: never key material. */
export function describeForLog(b: CertificateBundle): { mailboxes: readonly Mailbox[]; serial: string; notAfter: string; source: string } {
  return { mailboxes: b.mailboxes, serial: b.serial, notAfter: b.notAfter.toISOString(), source: b.source };
}
