import type { Logger } from 'pino';
import type { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';
import { replies } from '../replies.js';
import type { Refusal } from './refusal.js';

/**
 * Postfix's stress mode (its `${stress?{10}:{300}}s` smtpd_timeout, smtpd_per_request_deadline and
 * smtpd_min_data_rate), for the same reason: a nearly full relay must not let clients that send
 * nothing, or a byte every few seconds, keep the slots that well-behaved clients need.
 */
export interface StressLimits {
  /** Stress starts when more than this share of SMIME_RELAY_MAX_CLIENTS is in use. */
  threshold: number;
  /** The window every connection that owes us data is judged over (the idle timeout under stress). */
  windowMs: number;
  /** What it must send in that window, on average. */
  minBytesPerSecond: number;
  /** How often connections are looked at while stress lasts; also how soon it ends once the load has gone. */
  sweepMs: number;
}

export const STRESS_LIMITS: StressLimits = { threshold: 0.8, windowMs: 10_000, minBytesPerSecond: 1024, sweepMs: 1_000 };

/** What stress mode needs of the session policy. */
export interface StressHost {
  connections(): SMTPConnection[];
  /** The client is waiting for us (its message is being signed and forwarded), not the other way round. */
  busy(id: string): boolean;
  /** Closes the connection with the refusal's 421. */
  hangUp(c: SMTPConnection, refusal: Refusal): void;
}

interface Sample {
  at: number;
  bytes: number;
}

/**
 * While more than 80% of the client slots are taken, every connection that owes the relay data
 * must send at least minBytesPerSecond × windowMs in every window: one that sent nothing is idle
 * and one that sent less is too slow, and both get 421 4.4.2. A client that sends its commands
 * and message at any ordinary speed never notices: only one that takes a whole window over a few
 * bytes does. The time a client waits on the relay (a password check, its message being signed
 * and forwarded) is not counted against it.
 *
 * Bytes are read from each connection's socket (`_socket.bytesRead`, typed in smtp-server's
 * declarations); the library offers no other measure of what a client sent.
 */
export class StressMode {
  private sweeper: NodeJS.Timeout | undefined;
  private readonly samples = new Map<string, { socket: object; list: Sample[] }>();

  private readonly limits = STRESS_LIMITS;

  constructor(private readonly opts: { maxClients: number; log: Logger; host: StressHost }) {}

  get on(): boolean {
    return this.sweeper !== undefined;
  }

  /** After a connection was let in: starts stress mode when the relay has become nearly full. */
  check(): void {
    if (this.on) return;
    const inUse = this.opts.host.connections().length;
    if (inUse <= this.opts.maxClients * this.limits.threshold) return;
    const { windowMs, minBytesPerSecond } = this.limits;
    this.opts.log.warn(
      { inUse, maxClients: this.opts.maxClients, windowMs, minBytesPerSecond },
      `stress mode on: ${inUse} of ${this.opts.maxClients} client slots in use; a client that sends less than ${minBytesPerSecond} bytes/s over ${windowMs / 1000} s is disconnected`,
    );
    this.sweeper = setInterval(() => this.sweep(), this.limits.sweepMs);
    this.sweeper.unref();
    this.sweep();
  }

  /** The connection is gone. */
  forget(id: string): void {
    this.samples.delete(id);
  }

  stop(): void {
    clearInterval(this.sweeper);
    this.sweeper = undefined;
    this.samples.clear();
  }

  private sweep(): void {
    const { host, maxClients, log } = this.opts;
    const { threshold, windowMs, minBytesPerSecond } = this.limits;
    const open = host.connections();
    if (open.length <= maxClients * threshold) {
      this.stop();
      log.info({ inUse: open.length, maxClients }, 'stress mode off');
      return;
    }
    const now = performance.now();
    for (const c of open) {
      const socket = c._socket;
      const bytes = socket.bytesRead;
      let entry = this.samples.get(c.id);
      // A fresh window: new to us, waiting on us, or its socket was swapped for TLS (another count).
      if (!entry || entry.socket !== socket || host.busy(c.id) || c._handlerPending) {
        this.samples.set(c.id, { socket, list: [{ at: now, bytes }] });
        continue;
      }
      const list = entry.list;
      list.push({ at: now, bytes });
      while (list.length > 1 && now - list[1]!.at >= windowMs) list.shift();
      const first = list[0]!;
      const span = now - first.at;
      if (span < windowMs) continue;
      const got = bytes - first.bytes;
      if (got >= (minBytesPerSecond * span) / 1000) continue;
      this.samples.delete(c.id);
      const seconds = Math.round(span / 1000);
      host.hangUp(c, {
        reply: got === 0 ? replies.idleUnderStress(seconds) : replies.tooSlowUnderStress(minBytesPerSecond, seconds),
        why: got === 0 ? 'stress mode: closed an idle connection' : 'stress mode: closed a connection that sent too slowly',
        fields: { client: c.remoteAddress, bytes: got, seconds: Math.round(span / 100) / 10 },
      });
    }
    const ids = new Set(open.map((c) => c.id));
    for (const id of this.samples.keys()) if (!ids.has(id)) this.samples.delete(id);
  }
}
