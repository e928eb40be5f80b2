/**
 * SMIME_RELAY_MEMORY_BUDGET: the bytes that messages in progress may hold at once (the received
 * copy, the prepared and signed message), so a burst of large mail slows the relay down instead
 * of taking more memory than the machine has.
 *
 * It knows nothing of SMTP: a front end reserves bytes before it stores them (the SMTP receiver
 * at MAIL FROM from SIZE=, or as DATA arrives; a milter as body chunks arrive), and every stage
 * that makes another copy grows the reservation first.
 *
 * Nobody waits while holding a reservation: the only wait is for a first reservation, and a
 * reservation only grows if the room is there now. So reservations cannot wait on each other,
 * and whatever is reserved is released when its message is answered.
 */

/** Why a reservation was not made. */
export type Shortfall =
  /** More than the whole budget: it could never fit, so waiting is pointless. */
  | 'larger-than-budget'
  /** No room within the time the caller would wait. */
  | 'timed-out'
  /** The caller gave up (its connection closed). */
  | 'cancelled';

interface Waiter {
  bytes: number;
  grant(): void;
}

export class MemoryBudget {
  private used = 0;
  /** In arrival order; served first-fit whenever room is given back. */
  private readonly waiters: Waiter[] = [];

  constructor(readonly limit: number) {
    if (!(limit > 0)) throw new RangeError(`memory budget must be positive, got ${limit}`);
  }

  /** Bytes reserved by messages in progress. */
  get reserved(): number {
    return this.used;
  }

  /** Reservations waiting for room. */
  get waiting(): number {
    return this.waiters.length;
  }

  /** A reservation of `bytes` if they fit now, else undefined. 0 always fits (a reservation to grow). */
  tryReserve(bytes: number): Reservation | undefined {
    if (!this.fits(bytes)) return undefined;
    this.used += bytes;
    return this.reservation(bytes);
  }

  /**
   * A reservation of `bytes`, waiting up to `waitMs` for room. Whoever fits goes first: a small
   * message does not queue behind a large one that is waiting, and a large one that keeps
   * missing its chance gets 'timed-out', so its sender retries later rather than holding a
   * connection. More than the whole budget is refused at once.
   */
  reserve(bytes: number, opts: { waitMs: number; signal?: AbortSignal }): Promise<Reservation | Shortfall> {
    if (bytes > this.limit) return Promise.resolve('larger-than-budget');
    const now = this.tryReserve(bytes);
    if (now) return Promise.resolve(now);
    if (opts.signal?.aborted) return Promise.resolve('cancelled');
    return new Promise((resolve) => {
      const done = (result: Reservation | Shortfall) => {
        clearTimeout(timer);
        opts.signal?.removeEventListener('abort', onAbort);
        const at = this.waiters.indexOf(waiter);
        if (at !== -1) this.waiters.splice(at, 1);
        resolve(result);
      };
      const waiter: Waiter = {
        bytes,
        grant: () => {
          this.used += bytes;
          done(this.reservation(bytes));
        },
      };
      const onAbort = () => done('cancelled');
      const timer = setTimeout(() => done('timed-out'), opts.waitMs);
      opts.signal?.addEventListener('abort', onAbort, { once: true });
      this.waiters.push(waiter);
    });
  }

  private reservation(bytes: number): Reservation {
    return new Reservation(bytes, (delta) => this.change(delta));
  }

  /** A reservation's change of size; growth only when it fits. */
  private change(delta: number): boolean {
    if (delta > 0 && !this.fits(delta)) return false;
    this.used += delta;
    if (delta < 0) this.wake();
    return true;
  }

  private fits(bytes: number): boolean {
    return this.used + bytes <= this.limit;
  }

  private wake(): void {
    for (const w of [...this.waiters]) if (this.fits(w.bytes)) w.grant();
  }
}

/** Bytes held by one message in progress. */
export class Reservation {
  private released = false;

  constructor(
    private held: number,
    private readonly change: (delta: number) => boolean,
  ) {}

  get bytes(): number {
    return this.held;
  }

  /** Holds at least `bytes`: true when it already did or the growth fits now (it never waits). */
  ensure(bytes: number): boolean {
    return bytes <= this.held || this.resize(bytes);
  }

  /** Holds exactly `bytes`. Shrinking always succeeds; growing only when it fits now. */
  resize(bytes: number): boolean {
    if (this.released) return bytes === 0;
    if (!this.change(bytes - this.held)) return false;
    this.held = bytes;
    return true;
  }

  /** Gives back whatever is held above `bytes`. */
  shrink(bytes: number): void {
    if (bytes < this.held) this.resize(bytes);
  }

  /** Gives everything back; later calls do nothing. */
  release(): void {
    if (this.released) return;
    this.resize(0);
    this.released = true;
  }
}
