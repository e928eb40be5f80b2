import type { Logger } from 'pino';
import type { SMTPServer, SMTPServerOptions, SMTPServerSession } from 'smtp-server';
import type { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';
import { replies, type SmtpReply } from '../replies.js';
import { announce, type Refusal } from './refusal.js';
import { StressMode } from './stress.js';

export interface SessionPolicyOptions {
  /** SMIME_RELAY_MAX_CLIENTS: smtp-server answers 421 past it. */
  maxClients: number;
  /** SMIME_RELAY_MAX_CLIENTS_PER_IP. */
  maxClientsPerIp: number;
  /** SMIME_RELAY_MAX_RECIPIENTS. */
  maxRecipients: number;
  /** SMIME_RELAY_IDLE_TIMEOUT_MS: smtp-server's socketTimeout. */
  idleTimeoutMs: number;
  /** SMIME_RELAY_TRANSACTION_TIMEOUT_MS. */
  transactionTimeoutMs: number;
  /** SMIME_RELAY_SHUTDOWN_TIMEOUT_MS. */
  shutdownTimeoutMs: number;
  log: Logger;
}

export type SessionPolicySettings = Omit<SessionPolicyOptions, 'log'>;

/** How often a draining relay looks for connections that have become idle. */
const DRAIN_SWEEP_MS = 200;
/** After the last 421 of a drain, how long sockets get to close before close() returns anyway. */
const DRAIN_GRACE_MS = 1_000;

/**
 * The life of each client session beyond what smtp-server enforces: a cap per client address,
 * a deadline on every transaction, and the graceful drain on shutdown.
 *
 * smtp-server's socketTimeout is an idle timer that every byte restarts, so a client trickling
 * one byte a second would hold its slot for ever. The deadline here runs from the moment the
 * client is greeted (or its previous message was answered) to the end of DATA, and nothing the
 * client sends extends it. Signing and forwarding are not counted: they have their own timeouts.
 *
 * When the relay is nearly full, stress mode (src/smtp/stress.ts) also closes clients that send
 * too little for too long.
 *
 * Of smtp-server, `server.connections` and each connection's `id`, `session`, `remoteAddress` and
 * `send()` (a 421 closes the connection) are used; stress mode also reads `_socket` and
 * `_handlerPending`.
 */
export class SessionPolicy {
  private server: SMTPServer | undefined;
  private readonly clocks = new Map<string, NodeJS.Timeout>();
  /**
   * The address each connection came from, recorded at connect. XFORWARD later overwrites
   * session.remoteAddress, and counting by that would let a client dodge the per-IP cap by
   * claiming a different address on each connection.
   */
  private readonly peers = new Map<string, string>();
  /** Sessions whose message has been received and is being signed and forwarded. */
  private readonly busy = new Set<string>();
  private draining = false;
  private drained: Promise<void> | undefined;
  private readonly log: Logger;
  private readonly stress: StressMode;

  constructor(private readonly opts: SessionPolicyOptions) {
    this.log = opts.log;
    this.stress = new StressMode({
      maxClients: opts.maxClients,
      log: opts.log,
      host: {
        connections: () => this.connections(),
        busy: (id) => this.busy.has(id),
        hangUp: (c, refusal) => this.hangUp(c, refusal),
      },
    });
  }

  /** Stress mode is on (the smime_relay_stress gauge). */
  get stressed(): boolean {
    return this.stress.on;
  }

  /** The limits smtp-server enforces itself. */
  serverOptions(): Pick<SMTPServerOptions, 'maxClients' | 'socketTimeout' | 'closeTimeout'> {
    return {
      maxClients: this.opts.maxClients,
      socketTimeout: this.opts.idleTimeoutMs,
      // Only a backstop: drain() answers everyone before smtp-server's own close timer would.
      closeTimeout: this.opts.shutdownTimeoutMs + 5 * DRAIN_GRACE_MS,
    };
  }

  attach(server: SMTPServer): void {
    this.server = server;
  }

  /** onConnect: the refusal of this connection, if any; otherwise its clock starts. */
  admitConnection(session: SMTPServerSession): Refusal | undefined {
    if (this.draining) return { reply: replies.shuttingDown(), why: 'connection refused: shutting down', fields: { client: session.remoteAddress } };
    const { maxClientsPerIp } = this.opts;
    this.peers.set(session.id, session.remoteAddress);
    let fromSameAddress = 0;
    for (const peer of this.peers.values()) if (peer === session.remoteAddress) fromSameAddress++;
    // This connection is already recorded, so it is counted too.
    if (fromSameAddress > maxClientsPerIp) {
      this.peers.delete(session.id);
      return {
        reply: replies.tooManyConnectionsFromAddress(session.remoteAddress, maxClientsPerIp),
        why: 'refused a connection: too many from one address',
        fields: { client: session.remoteAddress, limit: maxClientsPerIp },
      };
    }
    this.startClock(session);
    this.stress.check();
    return undefined;
  }

  /** onMailFrom: a draining relay starts no new transaction. */
  admitTransaction(): Refusal | undefined {
    return this.draining ? { reply: replies.shuttingDown(), why: 'MAIL FROM refused: shutting down' } : undefined;
  }

  /**
   * onRcptTo. Counted here rather than by smtp-server's maxRecipients so the reply carries 4.5.3
   * and says what to do; a repeated address does not count, as in smtp-server.
   */
  admitRecipient(session: SMTPServerSession, address: string): Refusal | undefined {
    const rcpts = session.envelope.rcptTo;
    if (rcpts.length < this.opts.maxRecipients) return undefined;
    const key = address.toLowerCase();
    if (rcpts.some((r) => r.address.toLowerCase() === key)) return undefined;
    return {
      reply: replies.tooManyRecipients(this.opts.maxRecipients),
      why: 'RCPT TO refused: too many recipients',
      fields: { client: session.remoteAddress, rcptTo: address, limit: this.opts.maxRecipients },
    };
  }

  /** The whole message has arrived: the client is now waiting on us, not the other way round. */
  received(session: SMTPServerSession): void {
    this.stopClock(session.id);
    this.busy.add(session.id);
  }

  /** The DATA reply has been sent. Call after smtp-server's callback, which writes it. */
  answered(session: SMTPServerSession): void {
    this.busy.delete(session.id);
    if (this.draining) {
      const c = this.connection(session.id);
      if (c) setImmediate(() => this.say(c, replies.shuttingDown()));
      return;
    }
    this.startClock(session);
  }

  /** onClose. */
  closed(session: SMTPServerSession): void {
    this.stress.forget(session.id);
    this.peers.delete(session.id);
    this.stopClock(session.id);
    this.busy.delete(session.id);
  }

  /**
   * Stops accepting, tells idle clients 421 now, lets every transaction in progress finish (its
   * message signed, forwarded and answered), and after `timeoutMs` gives 421 to whatever is left.
   * Resolves once every connection is gone, at the latest shortly after the deadline.
   */
  drain(timeoutMs = this.opts.shutdownTimeoutMs): Promise<void> {
    this.drained ??= this.runDrain(timeoutMs);
    return this.drained;
  }

  private async runDrain(timeoutMs: number): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.draining = true;
    this.stress.stop();
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    const sweep = () => {
      for (const c of this.connections()) if (!this.inTransaction(c)) this.say(c, replies.shuttingDown());
    };
    sweep();
    const sweeper = setInterval(sweep, DRAIN_SWEEP_MS);
    let deadline: NodeJS.Timeout | undefined;
    const timedOut = new Promise<void>((resolve) => {
      deadline = setTimeout(() => {
        const left = this.connections();
        if (left.length) {
          this.log.warn(
            { connections: left.length, busy: left.filter((c) => this.busy.has(c.id)).length, timeoutMs },
            'shutdown deadline reached: closing the connections that are left',
          );
        }
        for (const c of left) this.say(c, replies.shuttingDown());
        setTimeout(resolve, DRAIN_GRACE_MS).unref();
      }, timeoutMs);
    });
    try {
      await Promise.race([closed, timedOut]);
    } finally {
      clearInterval(sweeper);
      clearTimeout(deadline);
      for (const t of this.clocks.values()) clearTimeout(t);
      this.clocks.clear();
    }
  }

  private inTransaction(c: SMTPConnection): boolean {
    return this.busy.has(c.id) || Boolean(c.session.envelope?.mailFrom);
  }

  private startClock(session: SMTPServerSession): void {
    this.stopClock(session.id);
    const { transactionTimeoutMs } = this.opts;
    const timer = setTimeout(() => {
      this.clocks.delete(session.id);
      if (this.busy.has(session.id)) return;
      const c = this.connection(session.id);
      if (!c) return;
      this.hangUp(c, {
        reply: replies.transactionTimedOut(transactionTimeoutMs),
        why: 'closed a connection that did not finish its message in time',
        fields: { client: session.remoteAddress, limitMs: transactionTimeoutMs, inData: Boolean(session.envelope?.rcptTo?.length) },
      });
    }, transactionTimeoutMs);
    timer.unref();
    this.clocks.set(session.id, timer);
  }

  private stopClock(id: string): void {
    const t = this.clocks.get(id);
    if (t) clearTimeout(t);
    this.clocks.delete(id);
  }

  /** smtp-server closes the connection after any 421 it sends; a DATA stream in flight is aborted, never forwarded. */
  private say(c: SMTPConnection, reply: SmtpReply): void {
    this.stopClock(c.id);
    c.send(reply.code, `${reply.status} ${reply.text}`);
  }

  /** Ends a connection the client was holding too long: logged, with a tx id in the 421. */
  private hangUp(c: SMTPConnection, refusal: Refusal): void {
    this.say(c, announce(this.log, refusal));
  }

  private connection(id: string): SMTPConnection | undefined {
    for (const c of this.connections()) if (c.id === id) return c;
    return undefined;
  }

  private connections(): SMTPConnection[] {
    return this.server ? [...this.server.connections] : [];
  }
}
