import type { X509Certificate } from 'node:crypto';
import addressparser from 'nodemailer/lib/addressparser';
import { certificateMailboxes } from '../certs/bundle.js';
import { dn } from '../certs/validate.js';
import { fieldValue, parseContentType, type HeaderField } from '../mime/header.js';
import { toMailbox, type Mailbox } from '../mime/mailbox.js';
import { checkParts } from './integrity.js';
import { delimiterInUse, repairsOf, toCrlf, type DamageKind } from './repairs.js';
import { digestOf, readSignedData, SignatureFormatError, type SignerView } from './signed-data.js';
import { NotSignedError, SignedStructureError, splitSignedMessage, type SignedMessageParts } from './split.js';
import { describeNode, readTree } from './tree.js';
import { assessTrust, type Trust } from './trust.js';

/**
 * `smime-relay diagnose` and the canary: is a message as it arrived still intact, and if not,
 * which hop change broke it. Integrity and trust are separate answers; trust decides the exit
 * code only when the admin names the CAs to trust (--ca).
 */
export interface Diagnosis {
  readonly verdict: 'intact' | 'broken' | 'unreadable';
  /** 0 intact (and trusted, with --ca), 1 broken (or untrusted, with --ca), 2 not a signed message or unreadable. */
  readonly exitCode: 0 | 1 | 2;
  /** One sentence. */
  readonly summary: string;
  readonly signer?: SignerFacts;
  /** When broken and a transport change explains it: what the hop did, and where. */
  readonly change?: { readonly kind: DamageKind; readonly description: string; readonly parts: readonly PartLabel[] };
  /** Broken, and no transport change restores the digest: the content itself was altered. */
  readonly altered?: boolean;
  readonly trust?: Trust;
  /** Things that do not break the signature but an admin should know. */
  readonly notes: readonly string[];
  /** hp="clear" (RFC 9788): protected headers whose outer copy differs. */
  readonly protectedHeaders?: readonly { name: string; signed: string; outer: string }[];
}

export interface SignerFacts {
  readonly subject: string;
  readonly issuer: string;
  readonly serial: string;
  readonly mailboxes: readonly Mailbox[];
  readonly signingTime: Date | undefined;
}

export interface PartLabel {
  readonly position: string;
  readonly type: string;
  readonly filename?: string;
  readonly text: string;
}

export interface DiagnoseOptions {
  /** Trust anchors; with them, trust problems make the exit code 1. */
  readonly ca?: readonly X509Certificate[];
  readonly now?: Date;
  /** Bytes the search for a transport change may hash before it gives up (default 512 MiB). */
  readonly searchBytes?: number;
}

const PROTECTED = ['from', 'to', 'cc', 'subject', 'date', 'message-id', 'reply-to'];

export function diagnose(message: Buffer, opts: DiagnoseOptions = {}): Diagnosis {
  const notes: string[] = [];
  // A copy saved by a mail client or taken from a Maildir on Unix has LF line endings
  // throughout; clients read it back as CRLF, so it is still intact (RFC 5322 §2.3 is the wire form).
  let bytes = message;
  if (message.includes(0x0a) && !message.includes('\r\n')) {
    bytes = toCrlf(message);
    notes.push('the file has LF line endings throughout (a saved copy); it was read as CRLF, as mail clients do');
  }

  let parts: SignedMessageParts;
  try {
    parts = splitSignedMessage(bytes);
  } catch (e) {
    if (e instanceof NotSignedError) return unreadable(e.message, notes);
    if (e instanceof SignedStructureError) return structureBroken(bytes, e.message, notes, opts);
    throw e;
  }
  return judge(parts, notes, opts);
}

function judge(parts: SignedMessageParts, notes: string[], opts: DiagnoseOptions, structureChange?: NonNullable<Diagnosis['change']>): Diagnosis {
  let view: SignerView;
  try {
    view = readSignedData(parts.signature);
  } catch (e) {
    if (!(e instanceof SignatureFormatError)) throw e;
    if (e.unsupported) return unreadable(`the signature cannot be checked: ${e.message}`, notes);
    return broken(`the signature part is damaged: ${e.message}`, notes, { change: { kind: 're-encoded', description: 'the signature part (smime.p7s) was altered and no longer decodes', parts: [] } });
  }
  const result = checkParts(parts, view);
  const signer = result.certificate ? signerFacts(result.certificate, view) : undefined;
  const from = fromMailbox(parts.headers);
  const trust = result.certificate
    ? assessTrust({ signer: result.certificate, embedded: view.certificates, signingTime: view.signingTime, from, ca: opts.ca, now: opts.now })
    : undefined;

  if (result.ok) {
    if (structureChange) {
      return broken(`the signed content is intact, but ${structureChange.description}: clients cannot find the signed part`, notes, { signer, trust, change: structureChange });
    }
    const protectedHeaders = protectedDifferences(parts);
    if (protectedHeaders?.length) notes.push(`protected headers (hp="clear") differ from the outer ones: ${protectedHeaders.map((h) => h.name).join(', ')}`);
    const untrusted = opts.ca !== undefined && (trust?.problems.length ?? 0) > 0;
    return {
      verdict: 'intact',
      exitCode: untrusted ? 1 : 0,
      summary: untrusted ? 'intact: the signature verifies, but the signer is not trusted' : 'intact: the signature verifies',
      signer,
      trust,
      notes,
      ...(protectedHeaders ? { protectedHeaders } : {}),
    };
  }
  if (result.failure === 'signer-missing' || result.failure === 'unsupported') return unreadable(`the signature cannot be checked: ${result.reason}`, notes);
  if (result.failure !== 'digest-mismatch') return broken(result.reason, notes, { signer, trust });

  if (!view.messageDigest) {
    // RFC 5652 §5.4: without signed attributes only the key can check a candidate; not searched
    return broken('the signed part or the signature changed after signing (the signature has no signed attributes, so the change is not searched for)', notes, { signer, trust });
  }
  const found = findChange(parts, view, opts.searchBytes ?? 512 * 2 ** 20);
  if (found === 'budget') {
    return broken('the signed part changed after signing; the search for a transport change stopped at its limit before finding one (the message is large)', notes, { signer, trust });
  }
  if (found) {
    return broken(`the signed part was changed in transit: ${found.description}`, notes, { signer, trust, change: found });
  }
  return broken('the content was altered, not re-encoded in transport: no usual transport change restores the signed digest', notes, { signer, trust, altered: true });
}

/** Undoes the usual transport changes one by one (then after fixing line endings) until the digest matches. */
function findChange(parts: SignedMessageParts, view: SignerView, budget: number): NonNullable<Diagnosis['change']> | 'budget' | undefined {
  let spent = 0;
  const rounds: { content: Buffer; prefix?: { kind: DamageKind; description: string } }[] = [{ content: parts.content }];
  const crlf = toCrlf(parts.content);
  if (!crlf.equals(parts.content)) rounds.push({ content: crlf, prefix: { kind: 'line-endings', description: 'line endings changed' } });
  for (const round of rounds) {
    const tree = readTree(round.content);
    for (const repair of repairsOf(tree)) {
      spent += repair.bytes.length;
      if (spent > budget) return 'budget';
      if (!digestOf(view, repair.bytes).equals(view.messageDigest!)) continue;
      const labels = repair.nodes.map(label);
      const where = labels.length ? ` in ${labels.map((l) => l.text).join(', ')}` : '';
      const description = round.prefix && repair.kind !== 'line-endings' ? `${round.prefix.description}, and ${repair.change}` : repair.change;
      return { kind: repair.kind, description: description + where, parts: labels };
    }
  }
  return undefined;
}

function label(node: Parameters<typeof describeNode>[0]): PartLabel {
  return { position: node.position, type: node.type, ...(node.filename ? { filename: node.filename } : {}), text: describeNode(node) };
}

/** The top-level boundary parameter no longer matches the delimiters: read it with the one in use. */
function structureBroken(bytes: Buffer, reason: string, notes: string[], opts: DiagnoseOptions): Diagnosis {
  const headerEnd = bytes.indexOf('\r\n\r\n');
  const used = headerEnd === -1 ? undefined : delimiterInUse(bytes.subarray(headerEnd + 4));
  if (used) {
    const head = bytes.subarray(0, headerEnd + 4).toString('latin1');
    const declared = /boundary\s*=\s*"?([^";\r\n]+)"?/i.exec(head)?.[1];
    if (declared && declared !== used) {
      const patched = Buffer.concat([Buffer.from(head.replace(declared, used), 'latin1'), bytes.subarray(headerEnd + 4)]);
      try {
        const parts = splitSignedMessage(patched);
        const description = `the boundary changed: the Content-Type names "${declared}" but the parts are delimited by "${used}"`;
        return judge(parts, notes, opts, { kind: 'boundary-changed', description, parts: [] });
      } catch {
        // not that either
      }
    }
  }
  return broken(`the multipart/signed structure is damaged: ${reason}`, notes, {});
}

function broken(summary: string, notes: string[], extra: Partial<Diagnosis>): Diagnosis {
  return { verdict: 'broken', exitCode: 1, summary: `broken: ${summary}`, notes, ...extra };
}

function unreadable(summary: string, notes: string[]): Diagnosis {
  return { verdict: 'unreadable', exitCode: 2, summary: `not checked: ${summary}`, notes };
}

function signerFacts(cert: X509Certificate, view: SignerView): SignerFacts {
  return { subject: dn(cert.subject), issuer: dn(cert.issuer), serial: cert.serialNumber, mailboxes: certificateMailboxes(cert), signingTime: view.signingTime };
}

/** The first address of the outer From header. */
function fromMailbox(headers: HeaderField[]): Mailbox | undefined {
  const field = headers.find((f) => f.name === 'from');
  if (!field) return undefined;
  const address = addressparser(Buffer.from(fieldValue(field), 'latin1').toString('utf8'), { flatten: true }).find((a) => a.address)?.address;
  return address ? toMailbox(address) : undefined;
}

const normalized = (f: HeaderField) => fieldValue(f).replace(/\s+/g, ' ').trim();

/** RFC 9788 §4.3: a reader shows the protected copy; the admin should know when the outer one was changed on the way. */
function protectedDifferences(parts: SignedMessageParts): Diagnosis['protectedHeaders'] {
  const inner = readTree(parts.content).fields;
  const ct = inner.find((f) => f.name === 'content-type');
  if (!ct || parseContentType(fieldValue(ct))?.params.get('hp')?.value.toLowerCase() !== 'clear') return undefined;
  const out: { name: string; signed: string; outer: string }[] = [];
  for (const name of PROTECTED) {
    const signed = inner.filter((f) => f.name === name).map(normalized).join(', ');
    const outer = parts.headers.filter((f) => f.name === name).map(normalized).join(', ');
    if (signed !== outer) out.push({ name: name.replace(/(^|-)([a-z])/g, (_m, d: string, c: string) => d + c.toUpperCase()).replace('Message-Id', 'Message-ID'), signed, outer });
  }
  return out;
}
