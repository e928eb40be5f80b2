/** What one OCSP responder or one CRL said about a certificate, after its signature and dates were checked. */
export interface Answer {
  readonly state: 'good' | 'revoked';
  readonly revokedAt?: Date;
  /** CRLReason name, when the answer gives one. */
  readonly reason?: string;
  readonly thisUpdate: Date;
  /** After this the answer is stale; absent means "ask again whenever you like" (RFC 6960 §4.2.2.1). */
  readonly nextUpdate?: Date;
}

/** Clock skew tolerated between this machine and the responder. */
const SKEW_MS = 5 * 60_000;

/** An answer made in the future or already past its nextUpdate is not an answer (RFC 6960 §3.2, RFC 5280 §6.3.3). */
export function checkFreshness(what: string, thisUpdate: Date, nextUpdate: Date | undefined, now: Date): void {
  if (thisUpdate.getTime() > now.getTime() + SKEW_MS) {
    throw new Error(`${what} is dated ${thisUpdate.toISOString()}, in the future (check this machine's clock)`);
  }
  if (nextUpdate && nextUpdate.getTime() + SKEW_MS < now.getTime()) {
    throw new Error(`${what} is stale: its next update was due ${nextUpdate.toISOString()}`);
  }
}
