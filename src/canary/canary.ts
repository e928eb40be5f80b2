import type { Logger } from 'pino';
import type { Mailbox } from '../mime/mailbox.js';
import type { Transaction, TransactionReply } from '../pipeline.js';
import { diagnose, type Diagnosis } from '../verify/diagnose.js';
import type { CanaryMailbox } from './mailbox.js';
import { canaryMessage } from './message.js';

/** What the last canary found: `smime_relay_canary_result{result}`. */
export const CANARY_RESULTS = ['intact', 'altered', 'missing'] as const;
export type CanaryResult = (typeof CANARY_RESULTS)[number];

export interface CanaryOutcome {
  readonly result: CanaryResult;
  /** diagnose's exit codes: 0 intact, 1 altered, 2 missing (nothing to diagnose). */
  readonly exitCode: 0 | 1 | 2;
  readonly summary: string;
  readonly messageId: string;
  readonly diagnosis?: Diagnosis;
}

export interface CanaryReporter {
  canary(result: CanaryResult, at: Date): void;
}

export interface CanaryOptions {
  /** admit → prepare → sign → self-verify → forward, as for any message. */
  readonly pipeline: { process(tx: Transaction): Promise<TransactionReply> };
  readonly mailbox: CanaryMailbox;
  readonly from: Mailbox;
  readonly to: string;
  readonly intervalMs: number;
  readonly log: Logger;
  readonly reporter?: CanaryReporter;
}

/** A canary that has not arrived after this long is missing, even with a longer interval. */
const MAX_WAIT_MS = 10 * 60_000;

/**
 * The canary: every interval, one signed message through the relay's own pipeline and the real
 * upstream, read back from the destination mailbox over IMAP, diagnosed, and deleted. Its result
 * is an alert (metrics and a log line), never unreadiness: /readyz does not look at it, because
 * a mail path that alters signatures is no reason to stop relaying.
 */
export class Canary {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<CanaryOutcome> | undefined;
  private readonly abort = new AbortController();
  private seq = 0;

  constructor(private readonly opts: CanaryOptions) {}

  /** The first round now, then one per interval; rounds never overlap. */
  start(): void {
    const tick = async () => {
      if (this.abort.signal.aborted) return;
      try {
        await this.runOnce();
      } catch (e) {
        this.opts.log.error({ err: e }, 'canary round failed unexpectedly');
      }
      if (!this.abort.signal.aborted) this.timer = setTimeout(tick, this.opts.intervalMs).unref();
    };
    this.timer = setTimeout(tick, 0).unref();
  }

  async close(): Promise<void> {
    this.abort.abort();
    clearTimeout(this.timer);
    await this.running?.catch(() => undefined);
  }

  runOnce(): Promise<CanaryOutcome> {
    this.running = this.round();
    return this.running;
  }

  private async round(): Promise<CanaryOutcome> {
    const { from, to, log } = this.opts;
    const started = new Date();
    const { raw, messageId } = canaryMessage(from, to, started);
    const deadline = Date.now() + Math.min(this.opts.intervalMs, MAX_WAIT_MS);
    const tx: Transaction = {
      id: `canary-${++this.seq}-${messageId.slice(21, 29)}`,
      envelope: { from, to: [to] },
      raw,
      client: { address: '127.0.0.1', hostname: 'smime-relay canary' },
    };
    const reply = await this.opts.pipeline.process(tx);
    let outcome: CanaryOutcome;
    if (reply.code !== 250) {
      outcome = { result: 'missing', exitCode: 2, messageId, summary: `missing: the canary was not sent: ${reply.code} ${reply.status} ${reply.text}` };
    } else {
      let source: Buffer | undefined;
      let why = `it did not arrive in ${to} within ${Math.round((deadline - Date.now()) / 1000 + (Date.now() - started.getTime()) / 1000)} s`;
      try {
        source = await this.opts.mailbox.takeByMessageId(messageId, deadline, this.abort.signal);
      } catch (e) {
        why = `the mailbox could not be read: ${(e as Error).message}`;
      }
      if (!source) outcome = { result: 'missing', exitCode: 2, messageId, summary: `missing: ${why}` };
      else {
        const diagnosis = diagnose(source);
        const result = diagnosis.verdict === 'intact' ? 'intact' : 'altered';
        outcome = { result, exitCode: result === 'intact' ? 0 : 1, messageId, summary: diagnosis.summary, diagnosis };
      }
    }
    this.opts.reporter?.canary(outcome.result, new Date());
    const fields = { canary: outcome.result, messageId, to, ms: Date.now() - started.getTime(), ...(outcome.diagnosis?.change ? { change: outcome.diagnosis.change.description } : {}) };
    if (outcome.result === 'intact') log.info(fields, `canary ${outcome.summary}`);
    else log.error(fields, `canary ${outcome.result}: ${outcome.summary}`);
    return outcome;
  }
}
