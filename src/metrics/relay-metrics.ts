import type { MessageOutcome, Stage } from './outcome.js';

/**
 * What the pipeline reports about each message. The pipeline only calls these three methods;
 * whether anyone listens (Prometheus, or nobody when SMIME_RELAY_METRICS is unset) is decided in
 * src/app.ts.
 */
export interface RelayMetrics {
  outcome(outcome: MessageOutcome): void;
  stage(stage: Stage, seconds: number): void;
  /** Bytes of a message as received (before signing). */
  size(bytes: number): void;
  /** Recipients the upstream refused while accepting others (reported by DSN or LMTP reply). */
  refusedRecipients(count: number): void;
}

export const noMetrics: RelayMetrics = {
  outcome() {},
  stage() {},
  size() {},
  refusedRecipients() {},
};
