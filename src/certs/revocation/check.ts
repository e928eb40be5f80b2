import type { X509Certificate } from 'node:crypto';
import type { CertificateBundle } from '../bundle.js';
import type { Answer } from './answer.js';
import { consultCrl } from './crl.js';
import { queryOcsp } from './ocsp.js';
import { revocationSources } from './sources.js';

/** What is known about one signing certificate's revocation. */
export type RevocationStatus =
  | (Answer & { readonly state: 'good'; readonly source: string; readonly checkedAt: Date })
  | (Answer & { readonly state: 'revoked'; readonly revokedAt: Date; readonly source: string; readonly checkedAt: Date })
  /** Every responder and CRL server failed, or answered "unknown". */
  | { readonly state: 'failed'; readonly problem: string; readonly checkedAt: Date }
  /** Nothing to ask: the certificate names no OCSP responder and no CRL. */
  | { readonly state: 'uncheckable'; readonly problem: string };

export interface CheckOptions {
  /** Per request. */
  readonly timeoutMs?: number;
  readonly now?: () => Date;
}

const TIMEOUT_MS = 10_000;

/**
 * Asks about the bundle's leaf: each OCSP responder its AIA names, else each CRL distribution
 * point (RFC 5280 §4.2.2.1, §4.2.1.13), in the certificate's order. The first answer that checks
 * out wins; a responder that cannot be reached, or says "unknown", lets the next one speak.
 */
export async function checkRevocation(bundle: CertificateBundle, opts: CheckOptions = {}): Promise<RevocationStatus> {
  const now = opts.now ?? (() => new Date());
  const timeoutMs = opts.timeoutMs ?? TIMEOUT_MS;
  const sources = revocationSources(bundle.leaf);
  if (sources.ocsp.length === 0 && sources.crl.length === 0) {
    return { state: 'uncheckable', problem: 'the certificate names no OCSP responder and no CRL distribution point' };
  }
  const issuer = issuerOf(bundle.leaf, bundle.chain);
  if (!issuer) {
    // A status answer is checked with the issuer's key: without it, nothing the responder says counts.
    return { state: 'failed', problem: `its issuer certificate (${bundle.leaf.issuer.replace(/\n/g, ', ')}) is not in the bundle, so no status answer can be checked; add the intermediate`, checkedAt: now() };
  }
  const problems: string[] = [];
  const attempts = [
    ...sources.ocsp.map((url) => ({ source: `OCSP ${url}`, ask: () => queryOcsp(bundle.leaf, issuer, url, timeoutMs, now()) })),
    ...sources.crl.map((url) => ({ source: `CRL ${url}`, ask: () => consultCrl(bundle.leaf, issuer, url, timeoutMs, now()) })),
  ];
  for (const { source, ask } of attempts) {
    try {
      const answer = await ask();
      return answer.state === 'revoked' ? { ...answer, state: 'revoked', revokedAt: answer.revokedAt!, source, checkedAt: now() } : { ...answer, state: 'good', source, checkedAt: now() };
    } catch (e) {
      problems.push((e as Error).message);
    }
  }
  return { state: 'failed', problem: problems.join('; '), checkedAt: now() };
}

function issuerOf(leaf: X509Certificate, chain: readonly X509Certificate[]): X509Certificate | undefined {
  return chain.find((c) => {
    try {
      return leaf.checkIssued(c) && leaf.verify(c.publicKey);
    } catch {
      return false;
    }
  });
}

/** A moment as the replies and logs give it: ISO 8601 to the second, UTC. */
export const isoSeconds = (d: Date): string => d.toISOString().replace(/\.\d{3}Z$/, 'Z');

/** "good (OCSP http://…, next update …)", "revoked on … (keyCompromise, OCSP http://…)", as check-cert and the logs say it. */
export function describeStatus(status: RevocationStatus): string {
  switch (status.state) {
    case 'good':
      return `good (${status.source}, ${status.nextUpdate ? `next update ${isoSeconds(status.nextUpdate)}` : 'no next update given'})`;
    case 'revoked':
      return `REVOKED on ${isoSeconds(status.revokedAt)} (${status.reason ? `${status.reason}, ` : ''}${status.source})`;
    case 'failed':
      return `could not be checked: ${status.problem}`;
    case 'uncheckable':
      return `not checked: ${status.problem}`;
  }
}
