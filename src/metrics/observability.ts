import type { Logger } from 'pino';
import type { CanaryResult } from '../canary/canary.js';
import type { CertificateBundle } from '../certs/bundle.js';
import type { CertificateStore } from '../certs/store.js';
import type { MemoryBudget } from '../memory/budget.js';
import type { Upstream } from '../upstream/upstream.js';
import { listenFailure } from '../startup-error.js';
import { startObservabilityServer, type ObservabilityServer } from './http.js';
import { createPrometheusMetrics, type PrometheusMetrics } from './prometheus.js';
import { Readiness } from './readiness.js';
import { noMetrics, type RelayMetrics } from './relay-metrics.js';

export interface ServeDeps {
  certs: CertificateStore;
  upstream: Upstream;
  log: Logger;
  /** True while the SMTP listener accepts connections. */
  live: () => boolean;
  connections: () => number;
  /** Stress mode is on (src/smtp/stress.ts). */
  stress: () => boolean;
  /** SMIME_RELAY_MEMORY_BUDGET, read at every scrape. */
  memory?: MemoryBudget;
  /** Upstream probe interval; tests shorten it. */
  probeIntervalMs?: number;
  /** How the user named SMIME_RELAY_METRICS, for the error when it cannot listen. */
  setting?: string;
}

/**
 * Metrics and health endpoints for one relay. Created before the pieces it watches (the
 * certificate store needs its reload-failure hook at construction) and started once they exist.
 * With SMIME_RELAY_METRICS unset every hook is a no-op and nothing listens.
 */
export class Observability {
  readonly metrics: RelayMetrics;
  private readonly prometheus: PrometheusMetrics | undefined;
  private deps: ServeDeps | undefined;
  private server: ObservabilityServer | undefined;
  private readiness: Readiness | undefined;

  constructor(
    private readonly listen: { host: string; port: number } | undefined,
    opts: {
      /** SMIME_RELAY_CANARY_TO is set: the canary metrics exist. */
      canary?: boolean;
      /** Feeds smime_relay_certificate_revoked; left out when revocation checks are off. */
      revoked?: (bundle: CertificateBundle) => boolean;
    } = {},
  ) {
    this.prometheus = listen
      ? createPrometheusMetrics({
          certificates: () => this.deps?.certs.bundles() ?? [],
          connections: () => this.deps?.connections() ?? 0,
          canary: opts.canary,
          stress: () => this.deps?.stress() ?? false,
          revoked: opts.revoked,
          memory: () => this.deps?.memory,
        })
      : undefined;
    this.metrics = this.prometheus ?? noMetrics;
  }

  /** For the canary's results. */
  readonly canary = (result: CanaryResult, at: Date): void => this.prometheus?.canary(result, at);

  /** For the certificate store's onReloadFailure. */
  readonly reloadFailure = (): void => this.prometheus?.reloadFailure();
  /** For the revocation monitor's onCheckFailure. */
  readonly revocationCheckFailure = (): void => this.prometheus?.revocationCheckFailure();

  /** The bound address of the metrics listener, once serving. */
  get address(): { host: string; port: number } | undefined {
    return this.server?.address;
  }

  async serve(deps: ServeDeps): Promise<void> {
    if (!this.listen || !this.prometheus) return;
    this.deps = deps;
    this.readiness = new Readiness({ certs: deps.certs, upstream: deps.upstream, log: deps.log, intervalMs: deps.probeIntervalMs });
    try {
      this.server = await startObservabilityServer({
        ...this.listen,
        registry: this.prometheus.registry,
        readiness: this.readiness,
        live: deps.live,
        log: deps.log,
      });
    } catch (e) {
      throw listenFailure(deps.setting ?? 'SMIME_RELAY_METRICS', this.listen, e);
    }
    this.readiness.start();
    const { host, port } = this.server.address;
    deps.log.info({ metrics: `http://${host.includes(':') ? `[${host}]` : host}:${port}/metrics` }, 'metrics and health endpoints listening');
  }

  async close(): Promise<void> {
    this.readiness?.close();
    await this.server?.close();
  }
}
