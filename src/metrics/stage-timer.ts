import type { Stage } from './outcome.js';
import type { RelayMetrics } from './relay-metrics.js';

/**
 * Times the stages of one transaction, for the metrics and for its log line. A stage that fails
 * is timed too: an upstream that takes 60 s to time out is exactly what the histogram is for.
 */
export class StageTimer {
  /** Milliseconds per stage that ran, for the transaction log line. */
  readonly ms: Partial<Record<Stage, number>> = {};

  constructor(private readonly metrics: RelayMetrics) {}

  async time<T>(stage: Stage, run: () => T | Promise<T>): Promise<T> {
    const started = performance.now();
    try {
      return await run();
    } finally {
      const seconds = (performance.now() - started) / 1000;
      this.ms[stage] = Math.round(seconds * 10_000) / 10;
      this.metrics.stage(stage, seconds);
    }
  }
}
