import { X509Certificate } from 'node:crypto';
import { certificateMailboxes } from '../certs/bundle.js';
import { dn } from '../certs/validate.js';
import type { Mailbox } from '../mime/mailbox.js';

/**
 * Whether the signer deserves trust, judged apart from integrity (an intact message can still
 * be untrusted): the chain to a CA the admin names, the validity of every certificate on it at
 * signing time (RFC 5652 §11.3 signingTime; a signature made while the certificate was valid
 * stays good after it expires), and the From mailbox against the certificate (Thunderbird
 * checks the first From address against the signer, shared/notes/smime.md).
 */
export interface Trust {
  /** Subjects from the signer upwards, as far as the embedded certificates and the CA file lead. */
  readonly path: readonly string[];
  /** True: anchored in a --ca certificate; false: not; undefined: no CA given, not judged. */
  readonly chainTrusted: boolean | undefined;
  readonly problems: readonly TrustProblem[];
}

export interface TrustProblem {
  readonly code: 'untrusted-chain' | 'expired-at-signing' | 'not-yet-valid-at-signing' | 'from-not-in-certificate' | 'no-from';
  readonly message: string;
}

export interface TrustInputs {
  readonly signer: X509Certificate;
  /** The other certificates the signature carries. */
  readonly embedded: readonly Buffer[];
  /** signingTime, or undefined (then validity is judged now). */
  readonly signingTime: Date | undefined;
  readonly from: Mailbox | undefined;
  /** Trust anchors (diagnose --ca); undefined: the chain is not judged. */
  readonly ca?: readonly X509Certificate[];
  readonly now?: Date;
}

const isoSecond = (d: Date) => d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC');

export function assessTrust(inputs: TrustInputs): Trust {
  const { signer, ca } = inputs;
  const problems: TrustProblem[] = [];
  const others = inputs.embedded.flatMap((der) => {
    try {
      const c = new X509Certificate(der);
      return c.raw.equals(signer.raw) ? [] : [c];
    } catch {
      return [];
    }
  });
  const anchors = ca ?? [];
  const path = [signer];
  let anchored = anchors.some((a) => a.raw.equals(signer.raw));
  for (let top = signer; !anchored && path.length < 10; ) {
    const anchor = anchors.find((a) => issued(top, a));
    if (anchor) {
      if (!anchor.raw.equals(top.raw)) path.push(anchor);
      anchored = true;
      break;
    }
    const issuer = others.find((c) => !path.includes(c) && issued(top, c));
    if (!issuer) break;
    path.push(issuer);
    top = issuer;
  }
  if (ca && !anchored) {
    const top = path[path.length - 1]!;
    problems.push({ code: 'untrusted-chain', message: `the chain ${path.map((c) => dn(c.subject)).join(' → ')} does not lead to a certificate in --ca (it ends at one issued by ${dn(top.issuer)})` });
  }

  const when = inputs.signingTime ?? inputs.now ?? new Date();
  const at = inputs.signingTime ? `at signing time (${isoSecond(when)})` : 'now (the signature has no signingTime)';
  for (const c of path) {
    const from = new Date(c.validFrom);
    const to = new Date(c.validTo);
    if (when > to) problems.push({ code: 'expired-at-signing', message: `${dn(c.subject)} had expired ${at}: valid until ${isoSecond(to)}` });
    else if (when < from) problems.push({ code: 'not-yet-valid-at-signing', message: `${dn(c.subject)} was not yet valid ${at}: valid from ${isoSecond(from)}` });
  }

  const mailboxes = certificateMailboxes(signer);
  if (!inputs.from) problems.push({ code: 'no-from', message: 'the message has no From address to compare with the certificate' });
  else if (!mailboxes.includes(inputs.from)) {
    problems.push({ code: 'from-not-in-certificate', message: `From <${inputs.from}> is not in the signer certificate (it names ${mailboxes.join(', ') || 'no mailbox'}); clients such as Thunderbird warn` });
  }
  return { path: path.map((c) => dn(c.subject)), chainTrusted: ca ? anchored : undefined, problems };
}

function issued(cert: X509Certificate, issuer: X509Certificate): boolean {
  try {
    return cert.checkIssued(issuer) && cert.verify(issuer.publicKey);
  } catch {
    return false;
  }
}
