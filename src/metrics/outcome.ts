/**
 * What became of one message, as counted by `smime_relay_messages_total{outcome}` and written to
 * the transaction log line. Each refusal reply in src/replies.ts carries its outcome, so the
 * reply code and the outcome cannot drift apart.
 */
export const OUTCOMES = [
  'signed',
  'passed_unsigned',
  /** Already signed or encrypted by the sender: forwarded unchanged, never wrapped twice. */
  'passed_protected',
  'rejected_sender',
  'rejected_size',
  /** 452 4.3.1: SMIME_RELAY_MEMORY_BUDGET was full; the client retries later. */
  'rejected_memory',
  'upstream_tempfail',
  'upstream_permfail',
  'sign_error',
  /** Signed, but the outgoing bytes failed self-verification (SMIME_RELAY_SELF_VERIFY): not forwarded. */
  'self_verify_failed',
] as const;

export type MessageOutcome = (typeof OUTCOMES)[number];

/** The pipeline stages that are timed (`smime_relay_stage_duration_seconds{stage}`). */
export const STAGES = ['prepare', 'sign', 'self_verify', 'upstream'] as const;

export type Stage = (typeof STAGES)[number];

/**
 * The outcome of a message that got the reply `reply`. A reply without a tag (a constructor added
 * later that forgot one) is classed by its code: a temporary failure as sign_error, where an admin
 * looks first, a permanent one as upstream_permfail.
 */
export function outcomeOf(
  reply: { code: number; outcome?: MessageOutcome },
  accepted: 'signed' | 'passed_unsigned' | 'passed_protected',
): MessageOutcome {
  if (reply.code >= 200 && reply.code < 300) return accepted;
  return reply.outcome ?? (reply.code < 500 ? 'sign_error' : 'upstream_permfail');
}
