import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { CertificateBundle } from '../certs/bundle.js';
import { CANARY_RESULTS, type CanaryReporter } from '../canary/canary.js';
import { OUTCOMES, STAGES } from './outcome.js';
import type { RelayMetrics } from './relay-metrics.js';

export interface PrometheusMetricsOptions {
  /** Every loaded certificate, expired ones included (their gauge goes negative); read at every scrape. */
  certificates: () => readonly CertificateBundle[];
  /** Open client connections, read at every scrape. */
  connections: () => number;
  /** SMIME_RELAY_CANARY_TO is set: the canary metrics exist. */
  canary?: boolean;
  /** Stress mode is on, read at every scrape. */
  stress: () => boolean;
  /** Whether a certificate is known to be revoked; undefined when revocation checks are off. Read at every scrape. */
  revoked?: (bundle: CertificateBundle) => boolean;
  /** SMIME_RELAY_MEMORY_BUDGET and what messages in progress hold of it, read at every scrape. */
  memory?: () => { limit: number; reserved: number; waiting: number } | undefined;
  now?: () => Date;
}

export interface PrometheusMetrics extends RelayMetrics, CanaryReporter {
  /** One registry per relay, so several relays in one process (tests) keep separate counts. */
  readonly registry: Registry;
  reloadFailure(): void;
  revocationCheckFailure(): void;
}

export function createPrometheusMetrics(opts: PrometheusMetricsOptions): PrometheusMetrics {
  const registry = new Registry();
  const registers = [registry];
  const now = opts.now ?? (() => new Date());

  const messages = new Counter({
    name: 'smime_relay_messages_total',
    help: 'Messages by what became of them.',
    labelNames: ['outcome'] as const,
    registers,
  });
  // Every outcome exists from the start, so rate() and alerts work before the first failure.
  for (const outcome of OUTCOMES) messages.inc({ outcome }, 0);

  const stages = new Histogram({
    name: 'smime_relay_stage_duration_seconds',
    help: 'Time spent per pipeline stage: prepare (7-bit, CRLF), sign, upstream (until its reply).',
    labelNames: ['stage'] as const,
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    registers,
  });
  for (const stage of STAGES) stages.zero({ stage });

  const sizes = new Histogram({
    name: 'smime_relay_message_size_bytes',
    help: 'Size of messages as received, before signing.',
    buckets: [1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864],
    registers,
  });

  new Gauge({
    name: 'smime_relay_certificate_expiry_seconds',
    help: 'Seconds until the notAfter of each certificate in service (negative once expired).',
    labelNames: ['mailbox', 'serial'] as const,
    registers,
    collect() {
      // Rebuilt per scrape: a certificate replaced by a reload must not linger as a stale series.
      this.reset();
      const t = now().getTime();
      for (const b of opts.certificates()) {
        for (const mailbox of b.mailboxes) this.set({ mailbox, serial: b.serial }, Math.round((b.notAfter.getTime() - t) / 1000));
      }
    },
  });

  const reloadFailures = new Counter({
    name: 'smime_relay_certificate_reload_failures_total',
    help: 'Changed certificate files that could not be used (the previous certificate stayed in service).',
    registers,
  });

  if (opts.revoked) {
    const revoked = opts.revoked;
    new Gauge({
      name: 'smime_relay_certificate_revoked',
      help: 'Per loaded certificate and mailbox: 1 when its issuer says it is revoked (it no longer signs), else 0.',
      labelNames: ['mailbox', 'serial'] as const,
      registers,
      collect() {
        this.reset();
        for (const b of opts.certificates()) {
          for (const mailbox of b.mailboxes) this.set({ mailbox, serial: b.serial }, revoked(b) ? 1 : 0);
        }
      },
    });
  }

  const revocationCheckFailures = new Counter({
    name: 'smime_relay_revocation_check_failures_total',
    help: 'Revocation checks that got no usable answer (responder unreachable, invalid or unknown answer).',
    registers,
  });

  const refusedRecipients = new Counter({
    name: 'smime_relay_refused_recipients_total',
    help: 'Recipients the upstream refused while it accepted others; each is reported to the sender by DSN (or by its own LMTP reply).',
    registers,
  });

  new Gauge({
    name: 'smime_relay_open_connections',
    help: 'Open SMTP client connections.',
    registers,
    collect() {
      this.set(opts.connections());
    },
  });

  let canary: CanaryReporter['canary'] = () => {};
  if (opts.canary) {
    const lastSuccess = new Gauge({
      name: 'smime_relay_canary_last_success_timestamp_seconds',
      help: 'When the canary last came back intact (Unix time); 0 until it first does, so an alert on its age fires.',
      registers,
    });
    const result = new Gauge({
      name: 'smime_relay_canary_result',
      help: 'What the last canary found: 1 for its result (intact, altered, missing), 0 for the others.',
      labelNames: ['result'] as const,
      registers,
    });
    for (const r of CANARY_RESULTS) result.set({ result: r }, 0);
    canary = (r, at) => {
      for (const other of CANARY_RESULTS) result.set({ result: other }, other === r ? 1 : 0);
      if (r === 'intact') lastSuccess.set(Math.floor(at.getTime() / 1000));
    };
  }
  new Gauge({
    name: 'smime_relay_stress',
    help: 'Stress mode: 1 while more than 80% of SMIME_RELAY_MAX_CLIENTS are in use and idle or slow clients are disconnected, else 0.',
    registers,
    collect() {
      this.set(opts.stress() ? 1 : 0);
    },
  });
  const memoryGauge = (name: string, help: string, read: (m: { limit: number; reserved: number; waiting: number }) => number) =>
    new Gauge({
      name,
      help,
      registers,
      collect() {
        const m = opts.memory?.();
        if (m) this.set(read(m));
      },
    });
  memoryGauge('smime_relay_memory_budget_bytes', 'SMIME_RELAY_MEMORY_BUDGET: bytes the messages in progress may hold together.', (m) => m.limit);
  memoryGauge('smime_relay_memory_reserved_bytes', 'Bytes of the memory budget reserved by messages in progress (received, prepared and signed copies).', (m) => m.reserved);
  memoryGauge('smime_relay_memory_waiting_transactions', 'Transactions waiting at MAIL FROM for room in the memory budget.', (m) => m.waiting);

  return {
    registry,
    canary: (r, at) => canary(r, at),
    outcome: (outcome) => messages.inc({ outcome }),
    stage: (stage, seconds) => stages.observe({ stage }, seconds),
    size: (bytes) => sizes.observe(bytes),
    refusedRecipients: (count) => refusedRecipients.inc(count),
    reloadFailure: () => reloadFailures.inc(),
    revocationCheckFailure: () => revocationCheckFailures.inc(),
  };
}
