import type { SMTPServerSession } from 'smtp-server';
import type { MemoryBudget, Reservation, Shortfall } from '../memory/budget.js';
import { messageFootprint } from '../memory/footprint.js';
import type { RelayMetrics } from '../metrics/relay-metrics.js';
import { replies } from '../replies.js';
import type { Refusal } from './refusal.js';

export interface MemoryAdmissionOptions {
  budget: MemoryBudget;
  /** SMIME_RELAY_SIGNING is on: a message also needs room for its signed copy. */
  signing: boolean;
  /** SMIME_RELAY_IDLE_TIMEOUT_MS: a client waiting for its MAIL FROM reply is idle on that clock. */
  idleTimeoutMs: number;
  metrics: RelayMetrics;
}

/** The longest a MAIL FROM waits for room before 452 4.3.1. */
export const MAX_MEMORY_WAIT_MS = 30_000;

/**
 * The SMTP receiver's side of SMIME_RELAY_MEMORY_BUDGET: which session holds which reservation.
 *
 * When the client declares SIZE= (RFC 1870; nodemailer, Python smtplib and Postfix do), the
 * message's whole footprint is reserved at MAIL FROM, before any data moves. A MAIL FROM that
 * does not fit waits for room, holding nothing; at most MAX_MEMORY_WAIT_MS and at most half the
 * idle timeout (so the client hears our 452 4.3.1, not an idle-timeout 421), then 452 4.3.1 and
 * the client's queue retries. A message larger than the whole budget is refused at once.
 *
 * Without SIZE= the reservation grows as the bytes arrive and never waits: a transaction that
 * waited mid-DATA would hold what it already has while waiting for others, and enough of them
 * could hold the whole budget waiting for each other. Once the room runs out the rest of the
 * data is read and dropped and the client gets 452 4.3.1 at the end of DATA. Either way nothing
 * is answered 250 that was not delivered, and nothing is lost: a 4xx leaves the message in the
 * client's queue.
 */
export class MemoryAdmission {
  /** Reserved at MAIL FROM, not yet taken by DATA. */
  private readonly pending = new Map<string, Reservation>();
  private readonly waits = new Map<string, AbortController>();
  private readonly waitMs: number;

  constructor(private readonly opts: MemoryAdmissionOptions) {
    this.waitMs = Math.min(MAX_MEMORY_WAIT_MS, Math.floor(opts.idleTimeoutMs / 2));
  }

  /** MAIL FROM: the refusal, or undefined once the declared size (if any) is reserved. */
  async admit(session: SMTPServerSession, declaredSize: number | undefined): Promise<Refusal | undefined> {
    this.drop(session);
    if (declaredSize === undefined) return undefined;
    const bytes = messageFootprint(declaredSize, this.opts.signing);
    const now = this.opts.budget.tryReserve(bytes);
    if (now) {
      this.pending.set(session.id, now);
      return undefined;
    }
    const wait = new AbortController();
    this.waits.set(session.id, wait);
    const started = performance.now();
    const result = await this.opts.budget.reserve(bytes, { waitMs: this.waitMs, signal: wait.signal });
    this.waits.delete(session.id);
    if (typeof result === 'string') return this.refuse(session, result, declaredSize, performance.now() - started);
    // granted just as the connection closed: closed() has run already, so nobody else gives it back
    if (wait.signal.aborted) {
      result.release();
      return this.refuse(session, 'cancelled', declaredSize, performance.now() - started);
    }
    this.pending.set(session.id, result);
    return undefined;
  }

  /**
   * DATA: the reservation that the received bytes count against (the one from MAIL FROM, or an
   * empty one that grows), and the check readData() calls as bytes arrive.
   */
  receiving(session: SMTPServerSession): { reservation: Reservation; admit: (received: number) => boolean } {
    const reservation = this.pending.get(session.id) ?? this.opts.budget.tryReserve(0)!;
    this.pending.delete(session.id);
    return {
      reservation,
      admit: (received) => {
        if (reservation.ensure(messageFootprint(received, this.opts.signing))) return true;
        reservation.resize(0);
        return false;
      },
    };
  }

  /** The connection closed: a wait ends, a reservation that DATA never took is given back. */
  closed(session: SMTPServerSession): void {
    this.waits.get(session.id)?.abort();
    this.drop(session);
  }

  private drop(session: SMTPServerSession): void {
    this.pending.get(session.id)?.release();
    this.pending.delete(session.id);
  }

  private refuse(session: SMTPServerSession, why: Shortfall, declaredSize: number, waitedMs: number): Refusal {
    const fields = { client: session.remoteAddress, size: declaredSize, reason: why, waitedMs: Math.round(waitedMs), reserved: this.opts.budget.reserved, budget: this.opts.budget.limit };
    // the client hung up while it waited: nobody reads this reply, and no message was refused
    if (why === 'cancelled') {
      return { reply: replies.insufficientMemory('the connection closed while waiting'), why: 'MAIL FROM abandoned: the client closed the connection while waiting for room in SMIME_RELAY_MEMORY_BUDGET', fields };
    }
    this.opts.metrics.outcome('rejected_memory');
    const reply =
      why === 'larger-than-budget'
        ? replies.insufficientMemory(`a message of ${declaredSize} bytes needs more than the whole memory budget`)
        : replies.insufficientMemory(`no room within ${this.waitMs} ms`);
    return { reply, why: `MAIL FROM with SIZE=${declaredSize} did not fit into SMIME_RELAY_MEMORY_BUDGET; answered 452 4.3.1`, fields };
  }
}
