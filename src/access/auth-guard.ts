import { isIPv6 } from 'node:net';
import { availableParallelism } from 'node:os';
import { plainAddress } from './network.js';

/**
 * How much password guessing the relay tolerates. Postfix's anchors: smtpd_hard_error_limit
 * closes a connection that keeps failing, smtpd_client_auth_rate_limit (anvil) counts AUTH
 * attempts per client over a time unit.
 */
export interface AuthLimits {
  /** Wrong passwords on one connection; the last one is answered 421 4.7.0 and the connection closed. */
  perConnection: number;
  /** Failed attempts one client address may make per window; after that, 454 4.7.0 without a check. */
  budget: number;
  windowMs: number;
  /** Password checks (scrypt, about 32 MiB and a core for a fraction of a second each) running at once. */
  concurrency: number;
  /** ... and at once for one client address. */
  perAddress: number;
  /** Client addresses whose failures are remembered; the least recently failing are forgotten first. */
  maxAddresses: number;
}

export const AUTH_LIMITS: AuthLimits = {
  perConnection: 3,
  budget: 10,
  windowMs: 5 * 60_000,
  // More checks at once than cores only lengthens each; libuv's pool has 4 threads in all.
  concurrency: Math.max(1, Math.min(4, availableParallelism())),
  perAddress: 1,
  maxAddresses: 10_000,
};

/**
 * The key a client's failures are counted under. An IPv6 host is normally given a whole /64 and
 * can pick any address in it, so IPv6 clients are counted per /64; IPv4 clients per address.
 */
export function guardKey(address: string): string {
  const a = plainAddress(address);
  if (!isIPv6(a)) return a;
  // Stryker disable next-line StringLiteral: split() always returns a first element, so the default is never used.
  const [head = '', tail] = a.split('::') as [string, string | undefined];
  const front = head ? head.split(':') : [];
  // With tail '' (an address ending in '::') or none, an element in place of [] only takes the place of the last of the
  // 8 groups, and the key keeps the first 4.
  // Stryker disable next-line ArrayDeclaration: equivalent, see the line above
  const back = tail ? tail.split(':') : [];
  const groups = tail === undefined ? front : [...front, ...Array<string>(Math.max(0, 8 - front.length - back.length)).fill('0'), ...back];
  return `${groups.slice(0, 4).map((g) => parseInt(g, 16).toString(16)).join(':')}::/64`;
}

interface Waiter {
  key: string;
  /** true: run the check now (a slot is held); false: refused, the address is over its budget. */
  resolve(run: boolean): void;
}

/** A check that ran (its result undefined when it failed), or a refusal without one. */
export type Guarded<T> = { checked: true; result: T | undefined } | { checked: false; failures: number };

/**
 * Password checks cost real CPU and memory, so guessing must not be able to starve a good
 * client. Failures are counted per client address over a sliding window; an address over its
 * budget is refused without any check. Checks run in bounded slots, at most `perAddress` at a
 * time for one address, and a free slot goes to the waiting address with the fewest recent
 * failures: a client that has not been failing goes ahead of one that has.
 */
export class AuthGuard {
  private readonly failures = new Map<string, number[]>();
  private readonly running = new Map<string, number>();
  private readonly waiting: Waiter[] = [];
  private active = 0;

  constructor(
    readonly limits: AuthLimits = AUTH_LIMITS,
    private readonly now: () => number = Date.now,
  ) {}

  /** Failed attempts from this client's key within the window. */
  recentFailures(address: string): number {
    return this.failuresOf(guardKey(address));
  }

  /**
   * Runs `check` in a slot, or refuses at once (no check) when the address is over its budget.
   * A check that resolves undefined failed, and counts against the address before the slot goes
   * to the next attempt.
   */
  async run<T>(address: string, check: () => Promise<T | undefined>): Promise<Guarded<T>> {
    const key = guardKey(address);
    const go = await new Promise<boolean>((resolve) => {
      this.waiting.push({ key, resolve });
      this.grant();
    });
    if (!go) return { checked: false, failures: this.failuresOf(key) };
    let result: T | undefined;
    try {
      result = await check();
    } finally {
      if (result === undefined) this.failed(key);
      this.active--;
      const n = (this.running.get(key) ?? 1) - 1;
      if (n > 0) this.running.set(key, n);
      else this.running.delete(key);
      this.grant();
    }
    return { checked: true, result };
  }

  private failed(key: string): void {
    const times = this.failures.get(key) ?? [];
    // Re-inserted, so the Map's order is least recently failing first.
    this.failures.delete(key);
    times.push(this.now());
    this.failures.set(key, times);
    if (this.failures.size > this.limits.maxAddresses) this.failures.delete(this.failures.keys().next().value!);
  }

  private failuresOf(key: string): number {
    const times = this.failures.get(key);
    if (!times) return 0;
    const since = this.now() - this.limits.windowMs;
    while (times.length && times[0]! <= since) times.shift();
    if (!times.length) this.failures.delete(key);
    return times.length;
  }

  private grant(): void {
    for (;;) {
      // Over budget: answered now, without a slot. Decided again here, not only on arrival:
      // failures may have come in while the attempt waited.
      const refused = this.waiting.findIndex((w) => this.failuresOf(w.key) >= this.limits.budget);
      if (refused >= 0) {
        this.waiting.splice(refused, 1)[0]!.resolve(false);
        continue;
      }
      if (this.active >= this.limits.concurrency) return;
      let best = -1;
      let bestFailures = Infinity;
      for (let i = 0; i < this.waiting.length; i++) {
        const w = this.waiting[i]!;
        if ((this.running.get(w.key) ?? 0) >= this.limits.perAddress) continue;
        const f = this.failuresOf(w.key);
        // Fewest failures first; among equals, first come (the list is in arrival order).
        if (f < bestFailures) [best, bestFailures] = [i, f];
      }
      if (best < 0) return;
      const w = this.waiting.splice(best, 1)[0]!;
      this.active++;
      this.running.set(w.key, (this.running.get(w.key) ?? 0) + 1);
      w.resolve(true);
    }
  }
}
