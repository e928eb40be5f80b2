import { connect, type Socket } from 'node:net';

export interface Reply {
  code: number;
  text: string;
}

class ProtocolError extends Error {}

/**
 * A minimal SMTP client for load: no parsing beyond reply codes, one pending reply at a time,
 * so the client costs little next to the relay it measures. Every read has a deadline, so a
 * stuck relay fails the run instead of hanging it.
 */
export class Connection {
  private buffer = '';
  private waiter: ((r: Reply | Error) => void) | undefined;
  private readonly queued: (Reply | Error)[] = [];
  private multiline = '';

  private constructor(private readonly socket: Socket) {
    socket.setNoDelay(true);
    socket.setEncoding('latin1');
    socket.on('data', (d: string) => this.onData(d));
    socket.on('error', (e) => this.deliver(e));
    socket.on('close', () => this.deliver(new ProtocolError('connection closed')));
  }

  static open(port: number, host = '127.0.0.1'): Promise<Connection> {
    return new Promise((resolve, reject) => {
      const socket = connect(port, host);
      socket.once('connect', () => {
        socket.off('error', reject);
        resolve(new Connection(socket));
      });
      socket.once('error', reject);
    });
  }

  private onData(d: string): void {
    this.buffer += d;
    let nl: number;
    while ((nl = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, nl).replace(/\r$/, '');
      this.buffer = this.buffer.slice(nl + 1);
      if (line[3] === '-') {
        this.multiline += line.slice(4) + '\n';
        continue;
      }
      this.deliver({ code: Number(line.slice(0, 3)), text: this.multiline + line.slice(4) });
      this.multiline = '';
    }
  }

  private deliver(r: Reply | Error): void {
    const w = this.waiter;
    this.waiter = undefined;
    if (w) w(r);
    else this.queued.push(r);
  }

  read(timeoutMs = 120_000): Promise<Reply> {
    const queued = this.queued.shift();
    if (queued) return queued instanceof Error ? Promise.reject(queued) : Promise.resolve(queued);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = undefined;
        reject(new ProtocolError(`no reply within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiter = (r) => {
        clearTimeout(timer);
        if (r instanceof Error) reject(r);
        else resolve(r);
      };
    });
  }

  /** Sends a command and insists on the expected reply code. */
  async expect(line: string | Buffer, code: number, timeoutMs?: number): Promise<Reply> {
    this.socket.write(typeof line === 'string' ? line + '\r\n' : line);
    const r = await this.read(timeoutMs);
    if (r.code !== code) throw new ProtocolError(`${typeof line === 'string' ? line : 'DATA payload'}: expected ${code}, got ${r.code} ${r.text}`);
    return r;
  }

  quit(): void {
    this.socket.end('QUIT\r\n');
    // the 221 is not awaited: a real connect-per-message client moves on too
    this.socket.destroySoon();
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/** Dot-stuffed DATA payload ending in CRLF.CRLF (RFC 5321 §4.5.2); the input must be CRLF text. */
export function dataPayload(raw: Buffer): Buffer {
  let text = raw.toString('latin1');
  if (!text.endsWith('\r\n')) text += '\r\n';
  text = text.replace(/(^|\n)\./g, '$1..');
  return Buffer.from(text + '.\r\n', 'latin1');
}

export interface Envelope {
  from: string;
  to: string;
  /** Send SIZE= on MAIL FROM, as Python smtplib, nodemailer and Postfix do when it is offered. */
  declareSize?: boolean;
}

/** Opens a connection and waits for the 220; returns it with the connect→220 time. */
export async function openGreeted(port: number): Promise<{ conn: Connection; greetingMs: number }> {
  const t0 = performance.now();
  const conn = await Connection.open(port);
  try {
    const greeting = await conn.read(10_000);
    if (greeting.code !== 220) throw new ProtocolError(`greeting: ${greeting.code} ${greeting.text}`);
    return { conn, greetingMs: performance.now() - t0 };
  } catch (e) {
    conn.destroy();
    throw e;
  }
}

/** One transaction on an open, greeted connection that has sent EHLO. */
export async function transaction(conn: Connection, env: Envelope, payload: Buffer, timeoutMs?: number): Promise<void> {
  // the payload is dot-stuffed and ends in CRLF.CRLF: within a few bytes of the message size
  await conn.expect(`MAIL FROM:<${env.from}>${env.declareSize === false ? '' : ` SIZE=${payload.length}`}`, 250);
  await conn.expect(`RCPT TO:<${env.to}>`, 250);
  await conn.expect('DATA', 354);
  await conn.expect(payload, 250, timeoutMs);
}

export interface LoadOptions {
  port: number;
  sessions: number;
  /** true: each session keeps its connection; false: one new connection per message. */
  reuse: boolean;
  warmupMs: number;
  measureMs: number;
  envelope: Envelope;
  payload: Buffer;
  /** Called when the measured window opens and closes (to sample the relay's CPU counters). */
  onWindow?: (edge: 'start' | 'end') => void;
}

export interface LoadResult {
  /** Transactions that completed inside the measured window. */
  messages: number;
  seconds: number;
  /** Per message, ms: MAIL FROM→250 with reuse; connect→250 after DATA without. */
  latencies: number[];
  /** connect→220 per new connection inside the window, ms. */
  greetings: number[];
  errors: number;
  firstError?: string;
}

/**
 * Closed-loop load: each session sends its next message as soon as the previous one is
 * answered, for warmup + measure milliseconds; only transactions that start and end inside
 * the measured window count, so warm-up and the tail do not blur the figures.
 */
export async function runLoad(o: LoadOptions): Promise<LoadResult> {
  const t0 = performance.now();
  const windowStart = t0 + o.warmupMs;
  const windowEnd = windowStart + o.measureMs;
  const result: LoadResult = { messages: 0, seconds: o.measureMs / 1000, latencies: [], greetings: [], errors: 0 };
  const startTimer = setTimeout(() => o.onWindow?.('start'), o.warmupMs);
  const endTimer = setTimeout(() => o.onWindow?.('end'), o.warmupMs + o.measureMs);

  const session = async () => {
    let conn: Connection | undefined;
    while (performance.now() < windowEnd) {
      const started = performance.now();
      try {
        if (!conn) {
          const opened = await openGreeted(o.port);
          conn = opened.conn;
          if (started >= windowStart) result.greetings.push(opened.greetingMs);
          await conn.expect('EHLO bench.test', 250);
        }
        const txStart = o.reuse ? performance.now() : started;
        await transaction(conn, o.envelope, o.payload);
        const done = performance.now();
        if (txStart >= windowStart && done <= windowEnd) {
          result.messages++;
          result.latencies.push(done - txStart);
        }
        if (!o.reuse) {
          conn.quit();
          conn = undefined;
        }
      } catch (e) {
        result.errors++;
        result.firstError ??= (e as Error).message;
        conn?.destroy();
        conn = undefined;
        await new Promise((r) => setTimeout(r, 20));
      }
    }
    conn?.quit();
  };
  await Promise.all(Array.from({ length: o.sessions }, session));
  clearTimeout(startTimer);
  clearTimeout(endTimer);
  return result;
}

/** n connections at once, one message each; latency per message from connect to the final 250. */
export async function sendConcurrently(port: number, n: number, env: Envelope, payload: Buffer): Promise<{ latencies: number[]; errors: string[] }> {
  const latencies: number[] = [];
  const errors: string[] = [];
  await Promise.all(
    Array.from({ length: n }, async () => {
      const t0 = performance.now();
      let conn: Connection | undefined;
      try {
        conn = (await openGreeted(port)).conn;
        await conn.expect('EHLO bench.test', 250);
        await transaction(conn, env, payload, 300_000);
        latencies.push(performance.now() - t0);
        conn.quit();
      } catch (e) {
        errors.push((e as Error).message);
        conn?.destroy();
      }
    }),
  );
  return { latencies, errors };
}

/** Sequential connects to an idle server: the connect→220 time a connect-per-message client sees. */
export async function measureGreetings(port: number, count: number): Promise<number[]> {
  const times: number[] = [];
  for (let i = 0; i < count; i++) {
    const { conn, greetingMs } = await openGreeted(port);
    times.push(greetingMs);
    conn.quit();
  }
  return times;
}
