import type { Logger } from 'pino';
import { describeForLog, type CertificateBundle } from '../bundle.js';
import { checkRevocation, describeStatus, isoSeconds as when, type CheckOptions, type RevocationStatus } from './check.js';

/** What the certificate store asks before it lets a certificate sign (src/certs/store.ts). */
export interface RevocationGate {
  /** The certificates loaded now; new ones are checked at once, gone ones forgotten. */
  track(bundles: readonly CertificateBundle[]): void;
  /** Why this certificate must not sign now ("certificate revoked on …"), or undefined when it may. */
  refusal(bundle: CertificateBundle): string | undefined;
}

export interface RevocationMonitorOptions {
  /** SMIME_RELAY_REVOCATION; `off` means no monitor at all. */
  mode: 'soft' | 'hard';
  /** SMIME_RELAY_REVOCATION_INTERVAL */
  intervalMs: number;
  log: Logger;
  /** Counts smime_relay_revocation_check_failures_total. */
  onCheckFailure?: () => void;
  check?: CheckOptions;
}

interface Entry {
  readonly bundle: CertificateBundle;
  /** The latest outcome, whatever it was. */
  last?: RevocationStatus;
  /** The latest answer that said good or revoked: it holds until its nextUpdate even when a later check fails. */
  answer?: Extract<RevocationStatus, { state: 'good' | 'revoked' }>;
  first: Promise<void>;
  timer?: NodeJS.Timeout;
  gone: boolean;
}

/** How soon a failed check is tried again, at most. */
const RETRY_MS = 5 * 60_000;
/** Never closer together than this, whatever a responder's nextUpdate says. */
const MIN_DELAY_MS = 30_000;
const GRACE_MS = 5 * 60_000;

/**
 * Watches the revocation status of every signing certificate: at load, then every
 * SMIME_RELAY_REVOCATION_INTERVAL, or sooner when the responder's nextUpdate says its answer
 * expires earlier. A revoked certificate stops signing in every mode; a status that cannot be
 * established only warns under `soft` and stops signing under `hard`, unless an earlier answer is
 * still current.
 */
export class RevocationMonitor implements RevocationGate {
  private readonly entries = new Map<string, Entry>();
  private readonly log: Logger;
  private closed = false;

  constructor(private readonly opts: RevocationMonitorOptions) {
    this.log = opts.log.child({ component: 'revocation' });
  }

  track(bundles: readonly CertificateBundle[]): void {
    if (this.closed) return;
    const current = new Set<string>();
    for (const bundle of bundles) {
      const key = keyOf(bundle);
      current.add(key);
      if (this.entries.has(key)) continue;
      const entry: Entry = { bundle, first: Promise.resolve(), gone: false };
      this.entries.set(key, entry);
      entry.first = this.run(entry);
    }
    for (const [key, entry] of this.entries) {
      if (current.has(key)) continue;
      entry.gone = true;
      clearTimeout(entry.timer);
      this.entries.delete(key);
    }
  }

  refusal(bundle: CertificateBundle): string | undefined {
    const entry = this.entries.get(keyOf(bundle));
    if (!entry) return undefined;
    const { answer, last } = entry;
    if (answer?.state === 'revoked') return `certificate revoked on ${when(answer.revokedAt)}`;
    if (this.opts.mode === 'soft' || this.current(answer)) return undefined;
    if (!last) return 'its revocation status has not been checked yet (SMIME_RELAY_REVOCATION=hard)';
    if (last.state === 'uncheckable') return undefined;
    return `its revocation status cannot be checked (SMIME_RELAY_REVOCATION=hard): ${last.state === 'failed' ? last.problem : 'no current answer'}`;
  }

  /** Resolves once every certificate tracked now has had its first check (start-up waits for it). */
  async ready(): Promise<void> {
    await Promise.all([...this.entries.values()].map((e) => e.first));
  }

  /** The latest outcome for a certificate, for check-cert style output and the metrics. */
  status(bundle: CertificateBundle): RevocationStatus | undefined {
    const entry = this.entries.get(keyOf(bundle));
    return entry?.answer?.state === 'revoked' ? entry.answer : entry?.last;
  }

  close(): void {
    this.closed = true;
    for (const e of this.entries.values()) clearTimeout(e.timer);
    this.entries.clear();
  }

  /** An answer still holds until its nextUpdate; one without nextUpdate until the next scheduled check is overdue. */
  private current(answer: Entry['answer']): boolean {
    if (!answer) return false;
    const until = answer.nextUpdate?.getTime() ?? answer.checkedAt.getTime() + this.opts.intervalMs;
    return Date.now() <= until + GRACE_MS;
  }

  private async run(entry: Entry): Promise<void> {
    const status = await checkRevocation(entry.bundle, this.opts.check).catch(
      (e: unknown): RevocationStatus => ({ state: 'failed', problem: (e as Error).message, checkedAt: new Date() }),
    );
    if (entry.gone || this.closed) return;
    const before = entry.answer?.state;
    entry.last = status;
    if (status.state === 'good' || status.state === 'revoked') entry.answer = status;

    const b = entry.bundle;
    const delay = this.delayAfter(status);
    const next = new Date(Date.now() + delay);
    const fields = { ...describeForLog(b), revocation: describeStatus(status), nextCheck: next.toISOString() };
    const name = `certificate for ${b.mailboxes.join(', ')} (serial ${b.serial})`;
    switch (status.state) {
      case 'revoked':
        if (before !== 'revoked') {
          this.log.error(
            { ...fields, revokedAt: status.revokedAt.toISOString(), reason: status.reason },
            `${name} was REVOKED on ${when(status.revokedAt)} (${status.reason ? `${status.reason}, ` : ''}${status.source}): its mail gets 451 4.7.1 until a new certificate is installed`,
          );
        }
        break;
      case 'good':
        this.log[before === 'good' ? 'debug' : 'info'](fields, `${name}: revocation status ${describeStatus(status)}; next check at ${when(next)}`);
        break;
      case 'failed': {
        this.opts.onCheckFailure?.();
        const blocked = this.refusal(b) !== undefined;
        const effect = blocked
          ? 'its mail gets 451 4.7.1 until the status can be checked (SMIME_RELAY_REVOCATION=hard)'
          : `signing goes on (SMIME_RELAY_REVOCATION=${this.opts.mode}${this.opts.mode === 'hard' ? ', an earlier answer is still current' : ''})`;
        this.log[blocked ? 'error' : 'warn'](fields, `${name}: revocation status could not be checked (${status.problem}); ${effect}; next try at ${when(next)}`);
        break;
      }
      case 'uncheckable':
        this.log.info(fields, `${name}: revocation status not checked: ${status.problem}`);
        return; // nothing to ask later either, until the certificate changes
    }
    entry.timer = setTimeout(() => {
      entry.first = this.run(entry);
    }, delay);
    entry.timer.unref();
  }

  private delayAfter(status: RevocationStatus): number {
    const interval = this.opts.intervalMs;
    if (status.state === 'failed') return Math.min(interval, RETRY_MS);
    if (status.state === 'uncheckable') return interval;
    // The responder's own nextUpdate, when sooner than the interval (RFC 5019 §6: caches refresh by then).
    const untilNext = status.nextUpdate ? status.nextUpdate.getTime() - Date.now() : Infinity;
    return Math.min(interval, Math.max(untilNext, Math.min(MIN_DELAY_MS, interval)));
  }
}

/** One entry per certificate, whichever file it was loaded from. */
const keyOf = (b: CertificateBundle): string => b.leaf.fingerprint256;
