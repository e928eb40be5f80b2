import type { CertificateBundle } from './bundle.js';

/** Days before notAfter at which an admin hears about it, once each. */
export const EXPIRY_THRESHOLDS = [30, 14, 7, 1] as const;

export interface ExpiryWarning {
  readonly bundle: CertificateBundle;
  readonly daysLeft: number;
  readonly threshold: number;
  readonly message: string;
}

const DAY = 86_400_000;

/**
 * Certificates that crossed a threshold since the last call. `warned` remembers what was already
 * said, so a daily timer logs one line per certificate at 30, 14, 7 and 1 days, not thirty lines.
 * A certificate already superseded for all its mailboxes by a later one is not worth a warning.
 */
export function expiryWarnings(bundles: readonly CertificateBundle[], now: Date, warned: Set<string>): ExpiryWarning[] {
  const out: ExpiryWarning[] = [];
  const t = now.getTime();
  const usable = bundles.filter((b) => b.notBefore.getTime() <= t && t <= b.notAfter.getTime());
  for (const b of usable) {
    const daysLeft = Math.floor((b.notAfter.getTime() - t) / DAY);
    const threshold = [...EXPIRY_THRESHOLDS].reverse().find((th) => daysLeft <= th);
    if (threshold === undefined) continue;
    const superseded = b.mailboxes.every((m) => usable.some((o) => o !== b && o.notAfter > b.notAfter && o.mailboxes.includes(m)));
    if (superseded) continue;
    const key = `${b.serial}:${threshold}`;
    if (warned.has(key)) continue;
    // Crossing several thresholds at once (a relay started late) is one warning, not four.
    for (const th of EXPIRY_THRESHOLDS) if (th >= threshold) warned.add(`${b.serial}:${th}`);
    out.push({
      bundle: b,
      daysLeft,
      threshold,
      message: `certificate for ${b.mailboxes.join(', ')} (serial ${b.serial}) expires in ${daysLeft} day(s), on ${b.notAfter.toISOString()}: renew it now; the relay picks up the new file without a restart`,
    });
  }
  return out;
}
