import type { AddressInfo } from 'node:net';
import { SMTPServer } from 'smtp-server';

/** One message as the upstream peer received it. */
export interface Received {
  from: string;
  to: string[];
  raw: Buffer;
}

/** What the peer does at each step; any step can answer any code, stall, or drop the connection. */
export type Action = { reply: number; text?: string } | { drop: true } | { stall: true } | 'accept';

/** A script step may decide later: a promise makes the peer wait (a slow reply) or hold until released. */
export type Decision = Action | Promise<Action>;

export interface SinkScript {
  mailFrom?: (address: string) => Decision;
  rcptTo?: (address: string) => Decision;
  /** Decides after the whole message arrived; an accepted message is stored before the reply, as an MTA queues it. */
  data?: (msg: Received) => Decision;
  /** Hang up in the middle of DATA, once this many bytes of it have arrived. */
  dropAfterDataBytes?: number;
}

export interface Sink {
  port: number;
  url: string;
  received: Received[];
  script: SinkScript;
  /** Resolves once `n` messages have arrived. */
  waitFor(n: number, timeoutMs?: number): Promise<Received[]>;
  close(): Promise<void>;
}

type SmtpErr = Error & { responseCode?: number };

/**
 * A real SMTP peer on loopback (smtp-server), standing in for the upstream MTA. Its behaviour is
 * scripted per step so fault tests can make it refuse, stall or hang up exactly where they need.
 */
export async function startSink(script: SinkScript = {}): Promise<Sink> {
  const received: Received[] = [];
  const waiters: (() => void)[] = [];
  let counter = 0;
  const sink: Partial<Sink> = { received, script };
  const act = (decision: Decision, socketClose: () => void, cb: (err?: SmtpErr | null, msg?: string) => void, ok?: string): void => {
    if (decision instanceof Promise) {
      void decision.then((a) => act(a, socketClose, cb, ok));
      return;
    }
    const action = decision;
    if (action === 'accept') return cb(null, ok);
    if ('drop' in action) return socketClose();
    if ('stall' in action) return; // never answer
    if (action.reply < 400) return cb(null, action.text ?? ok);
    const err: SmtpErr = new Error(action.text ?? `${action.reply === 550 ? '5.1.1' : action.reply >= 500 ? '5.0.0' : '4.0.0'} scripted failure`);
    err.responseCode = action.reply;
    cb(err);
  };
  const server = new SMTPServer({
    authOptional: true,
    disabledCommands: ['AUTH', 'STARTTLS'],
    disableReverseLookup: true,
    logger: false,
    onMailFrom(address, session, cb) {
      const s = (sink as Sink).script;
      act(s.mailFrom?.(address.address) ?? 'accept', () => closeSession(session.remotePort), cb);
    },
    onRcptTo(address, session, cb) {
      const s = (sink as Sink).script;
      act(s.rcptTo?.(address.address) ?? 'accept', () => closeSession(session.remotePort), cb);
    },
    onData(stream, session, cb) {
      const chunks: Buffer[] = [];
      let bytes = 0;
      let dropped = false;
      const dropAt = (sink as Sink).script.dropAfterDataBytes;
      stream.on('error', () => {});
      stream.on('data', (c: Buffer) => {
        chunks.push(c);
        bytes += c.length;
        if (dropAt !== undefined && bytes >= dropAt && !dropped) {
          dropped = true;
          closeSession(session.remotePort);
        }
      });
      stream.on('end', () => {
        // The rest may already have been buffered when we hung up: an MTA that hung up never queues.
        if (dropped) return;
        const msg: Received = {
          from: session.envelope.mailFrom ? session.envelope.mailFrom.address : '',
          to: session.envelope.rcptTo.map((r) => r.address),
          raw: Buffer.concat(chunks),
        };
        const s = (sink as Sink).script;
        void Promise.resolve(s.data?.(msg) ?? 'accept').then((action) => {
          if (action === 'accept' || ('reply' in action && action.reply < 400)) {
            received.push(msg);
            waiters.splice(0).forEach((w) => w());
          }
          act(action, () => closeSession(session.remotePort), cb, `2.0.0 Ok: queued as SINK${++counter}`);
        });
      });
    },
  });
  const sockets = new Map<number, import('node:net').Socket>();
  server.on('connect' as never, () => {});
  // smtp-server does not expose sockets by session id; track them through the raw server.
  server.server.on('connection', (socket) => {
    // Every peer is on loopback, so the client port names the connection.
    const key = socket.remotePort!;
    sockets.set(key, socket);
    socket.on('close', () => sockets.delete(key));
  });
  /** Hangs up on the session's own connection; on every connection if it cannot be told apart. */
  const closeSession = (remotePort: number) => {
    const own = sockets.get(remotePort);
    if (own) return void own.destroy();
    for (const s of sockets.values()) s.destroy();
  };
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.server.address() as AddressInfo).port;
  Object.assign(sink, {
    port,
    url: `smtp://127.0.0.1:${port}`,
    async waitFor(n: number, timeoutMs = 10_000) {
      const until = Date.now() + timeoutMs;
      while (received.length < n) {
        if (Date.now() > until) throw new Error(`sink: expected ${n} messages, have ${received.length}`);
        await new Promise<void>((r) => {
          waiters.push(r);
          setTimeout(r, 100);
        });
      }
      return received;
    },
    async close() {
      for (const s of sockets.values()) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  });
  return sink as Sink;
}
