import { connect, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';

export interface Reply {
  code: number;
  text: string;
}

/** A line-level SMTP client over a raw socket, so tests see every reply exactly as sent. */
export class RawClient {
  private buffer = '';
  private readonly pending: ((r: Reply) => void)[] = [];
  private readonly replies: Reply[] = [];
  closed = false;

  private readonly listener = (d: string) => this.onData(d);

  private constructor(readonly socket: Socket) {
    socket.setEncoding('latin1');
    socket.on('data', this.listener);
    socket.on('close', () => {
      this.closed = true;
      this.pending.splice(0).forEach((p) => p({ code: 0, text: 'connection closed' }));
    });
    socket.on('error', () => {});
  }

  /** localAddress: connect from another loopback address (127.0.0.2, ...) to look like a second client host. */
  static async open(port: number, host = '127.0.0.1', opts: { localAddress?: string } = {}): Promise<RawClient> {
    const socket = connect({ port, host, ...opts });
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    return new RawClient(socket);
  }

  private onData(d: string) {
    this.buffer += d;
    let m: RegExpExecArray | null;
    // A complete reply ends with a line "NNN text" (no hyphen).
    while ((m = /^((?:\d{3}-[^\n]*\n)*)(\d{3})(?: ([^\n]*))?\r?\n/.exec(this.buffer))) {
      this.buffer = this.buffer.slice(m[0].length);
      const reply = { code: Number(m[2]), text: ((m[1] ?? '') + (m[3] ?? '')).replace(/\r/g, '').trim() };
      const waiter = this.pending.shift();
      if (waiter) waiter(reply);
      else this.replies.push(reply);
    }
  }

  read(timeoutMs = 30_000): Promise<Reply> {
    const queued = this.replies.shift();
    if (queued) return Promise.resolve(queued);
    if (this.closed) return Promise.resolve({ code: 0, text: 'connection closed' });
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('no SMTP reply in time')), timeoutMs);
      this.pending.push((r) => {
        clearTimeout(t);
        resolve(r);
      });
    });
  }

  /** Every reply until the server closes the connection; the last one is the one that closed it. */
  async untilClosed(timeoutMs = 30_000): Promise<Reply[]> {
    const out: Reply[] = [];
    for (let r = await this.read(timeoutMs); r.code !== 0; r = await this.read(timeoutMs)) out.push(r);
    return out;
  }

  write(data: string | Buffer): void {
    this.socket.write(data);
  }

  async command(line: string): Promise<Reply> {
    this.write(line + '\r\n');
    return this.read();
  }

  /** Reads the 220 greeting and says EHLO; returns the EHLO reply (its text lists the extensions). */
  async hello(): Promise<Reply> {
    const greeting = await this.read();
    if (greeting.code !== 220) throw new Error(`expected a 220 greeting, got ${greeting.code} ${greeting.text}`);
    return this.command('EHLO client.test');
  }

  /** STARTTLS, verifying the server against `ca` for `servername`; returns the client on the TLS session. */
  async starttls(ca: Buffer, servername: string): Promise<RawClient> {
    const r = await this.command('STARTTLS');
    if (r.code !== 220) throw new Error(`STARTTLS refused: ${r.code} ${r.text}`);
    this.socket.off('data', this.listener);
    const secure = tlsConnect({ socket: this.socket, ca, servername });
    await new Promise<void>((resolve, reject) => secure.once('secureConnect', resolve).once('error', reject));
    return new RawClient(secure);
  }

  authPlain(user: string, password: string): Promise<Reply> {
    return this.command(`AUTH PLAIN ${Buffer.from(`\0${user}\0${password}`).toString('base64')}`);
  }

  async authLogin(user: string, password: string): Promise<Reply> {
    const first = await this.command('AUTH LOGIN');
    if (first.code !== 334) return first;
    const second = await this.command(Buffer.from(user).toString('base64'));
    if (second.code !== 334) return second;
    return this.command(Buffer.from(password).toString('base64'));
  }

  /** MAIL, RCPT, DATA on this connection; returns the first refusal or the final reply. */
  async send(from: string, raw: string | Buffer = `From: ${from}\r\nSubject: test\r\n\r\nhello\r\n`, to = 'someone@example.org'): Promise<Reply> {
    const mail = await this.command(`MAIL FROM:<${from}>`);
    if (mail.code !== 250) return mail;
    const rcpt = await this.command(`RCPT TO:<${to}>`);
    if (rcpt.code !== 250) return rcpt;
    const data = await this.command('DATA');
    if (data.code !== 354) return data;
    this.write(dataPayload(Buffer.isBuffer(raw) ? raw : Buffer.from(raw)));
    return this.read();
  }

  close(): void {
    this.socket.destroy();
  }
}

/** Dot-stuffs and terminates a message for DATA (RFC 5321 §4.5.2); line endings are sent as given. */
export function dataPayload(raw: Buffer): Buffer {
  let text = raw.toString('latin1');
  // The end of data is CRLF.CRLF only; a message ending in a bare LF needs a CRLF before the dot.
  if (!text.endsWith('\r\n')) text += '\r\n';
  text = text.replace(/(^|\n)\./g, '$1..');
  return Buffer.concat([Buffer.from(text, 'latin1'), Buffer.from('.\r\n')]);
}

export interface SendResult {
  greeting: Reply;
  mailFrom: Reply;
  rcptTo: Reply[];
  data?: Reply;
  final?: Reply;
}

/** One complete SMTP transaction; stops at the first refusal the way a real client would. */
export async function sendMessage(port: number, from: string, to: string[], raw: Buffer, opts: { mailParams?: string } = {}): Promise<SendResult> {
  const c = await RawClient.open(port);
  try {
    const greeting = await c.read();
    await c.command('EHLO client.test');
    const mailFrom = await c.command(`MAIL FROM:<${from}>${opts.mailParams ? ' ' + opts.mailParams : ''}`);
    const result: SendResult = { greeting, mailFrom, rcptTo: [] };
    if (mailFrom.code !== 250) return result;
    for (const r of to) result.rcptTo.push(await c.command(`RCPT TO:<${r}>`));
    if (!result.rcptTo.some((r) => r.code === 250)) return result;
    result.data = await c.command('DATA');
    if (result.data.code !== 354) return result;
    c.write(dataPayload(raw));
    result.final = await c.read(60_000);
    await c.command('QUIT').catch(() => undefined);
    return result;
  } finally {
    c.close();
  }
}
