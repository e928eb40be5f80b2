import type { Logger } from 'pino';
import type { CertificateStore } from '../certs/store.js';
import type { Upstream } from '../upstream/upstream.js';
import { certificatesInService } from './in-service.js';

export interface ReadinessOptions {
  certs: CertificateStore;
  upstream: Upstream;
  log: Logger;
  /** How often the upstream is probed. 30 s by default: cheap for the upstream, quick enough for a load balancer. */
  intervalMs?: number;
}

export interface ReadinessReport {
  ready: boolean;
  /** Why not ready, one entry per failing check; empty when ready. */
  reasons: string[];
  certificates: number;
  upstream: { ok: boolean | null; checkedAt: string | null };
}

/**
 * Ready means this replica can sign and forward a message now: at least one certificate is
 * valid and the upstream answered its last EHLO/QUIT probe. The probe runs on a timer in the
 * background and its answer is cached, so a probe storm from a load balancer never reaches the
 * upstream.
 */
export class Readiness {
  private last: { ok: boolean; at: Date } | undefined;
  private running: Promise<void> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private readonly intervalMs: number;

  constructor(private readonly opts: ReadinessOptions) {
    this.intervalMs = opts.intervalMs ?? 30_000;
  }

  start(): void {
    void this.probe();
    this.timer = setInterval(() => void this.probe(), this.intervalMs);
    this.timer.unref();
  }

  /** Probes the upstream now unless a probe is already under way; resolves when it has answered. */
  probe(): Promise<void> {
    this.running ??= this.opts.upstream
      .probe()
      .catch(() => false)
      .then((ok) => {
        if (this.last && this.last.ok !== ok) {
          if (ok) this.opts.log.info({ upstream: this.opts.upstream.description }, 'upstream answers its probe again: ready');
          else this.opts.log.warn({ upstream: this.opts.upstream.description }, 'upstream did not answer its probe: not ready');
        } else if (!this.last && !ok) {
          this.opts.log.warn({ upstream: this.opts.upstream.description }, 'upstream did not answer its first probe: not ready');
        }
        this.last = { ok, at: new Date() };
      })
      .finally(() => {
        this.running = undefined;
      });
    return this.running;
  }

  report(): ReadinessReport {
    const reasons: string[] = [];
    const mailboxes = this.opts.certs.mailboxes();
    const certificates = certificatesInService(this.opts.certs).length;
    if (mailboxes.length === 0) reasons.push('no certificate is loaded');
    else if (certificates === 0) reasons.push(`no certificate is valid now (configured for ${mailboxes.join(', ')})`);
    if (!this.last) reasons.push('the upstream has not been probed yet');
    else if (!this.last.ok) reasons.push(`the upstream ${this.opts.upstream.description} did not answer the probe at ${this.last.at.toISOString()}`);
    return {
      ready: reasons.length === 0,
      reasons,
      certificates,
      upstream: { ok: this.last?.ok ?? null, checkedAt: this.last?.at.toISOString() ?? null },
    };
  }

  close(): void {
    clearInterval(this.timer);
  }
}
