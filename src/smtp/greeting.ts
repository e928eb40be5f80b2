import { isIPv4 } from 'node:net';

export interface GreetingPolicy {
  /** Delay for clients that are neither loopback nor trusted (SMIME_RELAY_GREETING_DELAY_MS). */
  delayMs: number;
  /** The allow-list, when one is configured: its clients are greeted at once like loopback. */
  isTrusted?: (remoteAddress: string) => boolean;
}

/** 127.0.0.0/8, ::1 and their IPv4-mapped IPv6 form (::ffff:127.x.y.z). */
export function isLoopback(address: string): boolean {
  const a = address.toLowerCase();
  if (a === '::1' || a === '0:0:0:0:0:0:0:1') return true;
  const v4 = a.startsWith('::ffff:') ? a.slice(7) : a;
  return isIPv4(v4) && v4.startsWith('127.');
}

/**
 * How long a new connection waits for its 220 (the server option of smtp-server-patches.ts).
 * The early-talker delay only filters spamware on untrusted networks; a local or allow-listed
 * client is ours and would only pay it on every connection.
 */
export function greetingDelay(policy: GreetingPolicy): (remoteAddress: string) => number {
  return (remoteAddress) =>
    isLoopback(remoteAddress) || policy.isTrusted?.(remoteAddress) ? 0 : policy.delayMs;
}
