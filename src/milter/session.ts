/**
 * One MTA connection speaking the milter protocol: negotiation, macros, the envelope, headers,
 * the body, and the replies. Postfix opens one such connection per SMTP client (and one per
 * message picked up from sendmail) and sends one message after another on it.
 *
 * What to do with a message is the filter's business (src/milter/relay-filter.ts); this class
 * only keeps the protocol: what the MTA offered, which events expect an answer, and the bytes.
 */
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import { DEFAULT_MAX_HEADER_BYTES } from '../mime/header.js';
import type { SmtpReply } from '../replies.js';
import type { Envelope } from '../upstream/upstream.js';
import {
  addHeader,
  changeHeader,
  MilterProtocolError,
  negotiationReply,
  PacketReader,
  parseConnect,
  parseHeader,
  parseMacros,
  parseNegotiation,
  readStrings,
  replaceBody,
  replyCode,
  simpleResponse,
  type ConnectInfo,
  type Negotiation,
  type Packet,
} from './codec.js';
import { headerBlock, type MessageEdits, type MilterHeader } from './edits.js';
import { Action, Command, MacroStage, PROTOCOL_VERSION, Response, Step } from './protocol.js';

/** What the MTA told us about a message, at the end of its header. */
export interface MilterMessage {
  /** The connecting MTA: 'unix' for a unix socket, else its IP address. */
  readonly peer: string;
  readonly connect?: ConnectInfo;
  /** A macro the MTA defined for this connection or message (name without braces); later ones arrive as the message goes on. */
  macro(name: string): string | undefined;
  readonly envelope: Envelope;
  /** SIZE= on MAIL (RFC 1870), when the client declared it. */
  readonly declaredSize?: number;
  readonly headers: readonly MilterHeader[];
  /** The header block was larger than the session keeps; `headers` holds its beginning. */
  readonly headersTruncated: boolean;
}

/** The filter's answer at the end of the header. */
export type HeaderVerdict =
  /** Accept the message unchanged; the MTA sends nothing more of it. */
  | { kind: 'accept' }
  | { kind: 'refuse'; reply: SmtpReply }
  | { kind: 'read-body'; transaction: FilterTransaction };

/** Applies the edits to the message the MTA holds (header changes, then the body). */
export type Editor = (edits: MessageEdits) => Promise<void>;

export interface FilterTransaction {
  /** A body chunk arrived (the total so far is `received` bytes); a reply refuses the message. */
  chunk(received: number): SmtpReply | undefined;
  /** The whole message (header block + body): edit it through `edit`, then answer. */
  finish(raw: Buffer, bodyStart: number, edit: Editor): Promise<SmtpReply>;
  /** The MTA aborted, the connection closed, or the message was refused: release what it holds. */
  abandon(): void;
}

export interface MessageFilter {
  /** May wait (for room in the memory budget, say); the MTA waits for the answer. */
  endOfHeaders(message: MilterMessage): HeaderVerdict | Promise<HeaderVerdict>;
}

/** While signing a large message, Postfix is told every so often that work goes on (SMFIR_PROGRESS). */
const PROGRESS_EVERY_MS = 10_000;

/** What the relay needs: change and add header fields, replace the body, name its macros. */
const WANTED_ACTIONS = Action.addHeaders | Action.changeHeaders | Action.changeBody | Action.setMacroList;
const REQUIRED_ACTIONS = Action.addHeaders | Action.changeHeaders | Action.changeBody;
/**
 * Header values keep their leading space, so the header the relay reads is byte for byte the
 * one in the message. No event is skipped (SMFIP_NO*) and every one is answered (no SMFIP_NR_*),
 * although the relay only ever decides at the end of the header and of the message: Postfix does
 * not set TCP_NODELAY on its milter socket, so a packet that gets no answer (an event sent without
 * reply, or the macros of a skipped event) leaves Nagle's algorithm holding Postfix's next packet
 * until this side's delayed ACK, 40 ms on Linux. Measured here: 45-60 ms per message that way,
 * against a few ms when every packet is answered.
 */
const WANTED_STEPS = Step.headerLeadingSpace;
/** Macros asked for, by stage (version 6): who the client is, who logged in, the queue id. */
const MACRO_LISTS: ReadonlyArray<[number, string]> = [
  [MacroStage.connect, '{client_addr} {client_name}'],
  [MacroStage.mail, '{auth_authen} {auth_type}'],
  [MacroStage.endOfMessage, 'i'],
];

/** Macro stages that belong to one message; they are forgotten when it ends. */
const MESSAGE_STAGES = new Set<string>([Command.mail, Command.recipient, Command.data, Command.header, Command.endOfHeaders, Command.body, Command.endOfBody]);

interface MessageState {
  envelope: Envelope;
  declaredSize?: number;
  headers: MilterHeader[];
  headerBytes: number;
  headersTruncated: boolean;
  /** After the header: reading the body for a transaction... */
  transaction?: FilterTransaction;
  /** ...or decided (accepted or refused): the answer, repeated should the MTA go on anyway. */
  final?: Buffer;
  body: Buffer[];
  bodyBytes: number;
}

/** MAIL's arguments: the sender, then ESMTP parameters (SMTPUTF8 lets the header carry UTF-8, RFC 6532). */
const newMessage = (args: string[] = []): MessageState => ({
  envelope: { from: args[0] ?? '', to: [], ...(args.slice(1).some((p) => p.toUpperCase() === 'SMTPUTF8') ? { smtputf8: true } : {}) },
  declaredSize: args.slice(1).map((p) => /^SIZE=(\d{1,12})$/i.exec(p)?.[1]).filter((n) => n !== undefined).map(Number)[0],
  headers: [],
  headerBytes: 0,
  headersTruncated: false,
  body: [],
  bodyBytes: 0,
});

export class MilterSession {
  private readonly reader = new PacketReader();
  private negotiated: Negotiation | undefined;
  private connect: ConnectInfo | undefined;
  private readonly connectionMacros = new Map<string, string>();
  private readonly messageMacros = new Map<string, string>();
  private message: MessageState = newMessage();
  /** Packets are handled one at a time, in order; the end of a message waits for signing. */
  private queue: Promise<void> = Promise.resolve();
  private closed = false;
  /** True while the end of a message is being handled; shutdown waits for it. */
  busy = false;

  constructor(
    private readonly socket: Socket,
    private readonly peer: string,
    private readonly filter: MessageFilter,
    private readonly log: Logger,
  ) {
    socket.on('data', (chunk: Buffer) => this.receive(chunk));
    socket.on('close', () => this.end());
    socket.on('error', (err) => log.debug({ err: err.message, peer }, 'milter connection error'));
  }

  /** Resolves when the packets received so far are handled. */
  idle(): Promise<void> {
    return this.queue;
  }

  private receive(chunk: Buffer): void {
    let packets: Packet[];
    try {
      packets = this.reader.push(chunk);
    } catch (e) {
      return this.fail(e as Error);
    }
    for (const p of packets) {
      this.queue = this.queue.then(() => (this.closed ? undefined : this.handle(p))).catch((e: Error) => this.fail(e));
    }
  }

  private fail(e: Error): void {
    // The MTA applies milter_default_action (tempfail in the recommended setup): nothing passes unsigned.
    if (e instanceof MilterProtocolError) this.log.warn({ peer: this.peer, err: e.message }, 'milter protocol error; closing the connection');
    else this.log.error({ peer: this.peer, err: e }, 'milter session failed; closing the connection');
    this.socket.destroy();
    this.end();
  }

  private end(): void {
    if (this.closed) return;
    this.closed = true;
    this.message.transaction?.abandon();
  }

  private async handle(p: Packet): Promise<void> {
    switch (p.command) {
      case Command.optionNegotiation:
        return this.negotiate(parseNegotiation(p.data));
      case Command.macro: {
        const { stage, macros } = parseMacros(p.data);
        const into = MESSAGE_STAGES.has(stage) ? this.messageMacros : this.connectionMacros;
        for (const [k, v] of macros) into.set(k, v);
        return;
      }
      case Command.connect:
        this.connect = parseConnect(p.data);
        return this.answer();
      case Command.helo:
      case Command.data:
      case Command.unknown:
        return this.answer();
      case Command.mail:
        this.abandonMessage();
        this.message = newMessage(readStrings(p.data, 'MAIL'));
        return this.answer();
      case Command.recipient:
        this.message.envelope.to.push(readStrings(p.data, 'RCPT')[0] ?? '');
        return this.answer();
      case Command.header:
        this.header(p.data);
        return this.answer();
      case Command.endOfHeaders:
        return this.endOfHeaders();
      case Command.body:
        return this.body(p.data);
      case Command.endOfBody:
        // Sendmail may send the last chunk with the end of body; Postfix sends it separately.
        if (p.data.length) this.collect(p.data);
        return this.endOfBody();
      case Command.abort:
        this.abandonMessage();
        this.message = newMessage();
        this.messageMacros.clear();
        return;
      case Command.quitNewConnection:
        this.abandonMessage();
        this.message = newMessage();
        this.connect = undefined;
        this.connectionMacros.clear();
        return;
      case Command.quit:
        this.socket.end();
        this.end();
        return;
      default:
        throw new MilterProtocolError(`unknown command '${p.command}'`);
    }
  }

  private negotiate(offer: Negotiation): Promise<void> {
    if (offer.version < 2) throw new MilterProtocolError(`the MTA speaks milter protocol version ${offer.version}; at least 2 is needed`);
    const version = Math.min(offer.version, PROTOCOL_VERSION);
    this.negotiated = { version, actions: WANTED_ACTIONS & offer.actions, steps: WANTED_STEPS & offer.steps };
    if ((offer.actions & REQUIRED_ACTIONS) !== REQUIRED_ACTIONS) {
      this.log.error({ peer: this.peer, offered: offer.actions }, 'the MTA does not let milters change headers and replace the body; mail from covered mailboxes will get 451');
    }
    // Macro lists after the reply exist from version 6 on; an older MTA sends its default macros.
    const lists = version >= 6 && (offer.actions & Action.setMacroList) !== 0 ? MACRO_LISTS : [];
    return this.write(negotiationReply(this.negotiated, lists));
  }

  /** Continue: every event is answered (see WANTED_STEPS). */
  private answer(): Promise<void> {
    return this.write(simpleResponse(Response.continue));
  }

  private header(data: Buffer): void {
    const m = this.message;
    if (m.headersTruncated) return;
    // Kept up to what the relay's own header reader takes; the filter refuses the rest.
    if (m.headerBytes + data.length > DEFAULT_MAX_HEADER_BYTES) {
      m.headersTruncated = true;
      return;
    }
    const h = parseHeader(data);
    m.headerBytes += data.length;
    // Without SMFIP_HDR_LEADSPC the MTA ate the one space after the colon (Sendmail's habit).
    const leading = this.negotiated && (this.negotiated.steps & Step.headerLeadingSpace) !== 0;
    m.headers.push({ name: h.name, value: leading ? h.value : ' ' + h.value });
  }

  private async endOfHeaders(): Promise<void> {
    const m = this.message;
    const verdict = await this.filter.endOfHeaders({
      peer: this.peer,
      connect: this.connect,
      macro: (name) => this.messageMacros.get(name) ?? this.connectionMacros.get(name),
      envelope: m.envelope,
      declaredSize: m.declaredSize,
      headers: m.headers,
      headersTruncated: m.headersTruncated,
    });
    if (verdict.kind === 'read-body') {
      // The MTA may have gone while the filter waited.
      if (this.closed) return verdict.transaction.abandon();
      m.transaction = verdict.transaction;
      return this.write(simpleResponse(Response.continue));
    }
    m.final = verdict.kind === 'accept' ? simpleResponse(Response.accept) : replyCode(verdict.reply.code, verdict.reply.status, verdict.reply.text);
    return this.write(m.final);
  }

  private body(data: Buffer): Promise<void> {
    const m = this.message;
    // After accept or a refusal the MTA stops sending; a confused one is ignored, not buffered.
    if (!m.transaction) return this.answer();
    this.collect(data);
    const refused = m.transaction.chunk(m.bodyBytes);
    if (!refused) return this.answer();
    this.abandonMessage();
    m.final = replyCode(refused.code, refused.status, refused.text);
    return this.write(m.final);
  }

  private collect(data: Buffer): void {
    const m = this.message;
    if (!m.transaction) return;
    m.body.push(data);
    m.bodyBytes += data.length;
  }

  private async endOfBody(): Promise<void> {
    const m = this.message;
    const transaction = m.transaction;
    this.message = newMessage();
    if (!transaction) {
      this.messageMacros.clear();
      // Decided at the end of the header; without that decision nothing may pass unread.
      if (!m.final) throw new MilterProtocolError('end of message before the end of its header');
      return this.write(m.final);
    }
    const head = headerBlock(m.headers);
    const raw = Buffer.concat([head, ...m.body]);
    m.body = [];
    // Keep Postfix waiting patiently (milter_content_timeout) until the edits start: after the
    // first body replacement chunk, any other packet ends the replacement.
    const progress = setInterval(() => void this.write(simpleResponse(Response.progress)).catch(() => undefined), PROGRESS_EVERY_MS);
    this.busy = true;
    let reply: SmtpReply;
    try {
      reply = await transaction.finish(raw, head.length, (edits) => {
        clearInterval(progress);
        return this.applyEdits(edits);
      });
    } finally {
      clearInterval(progress);
      this.busy = false;
      this.messageMacros.clear();
      transaction.abandon();
    }
    return this.write(reply.code < 400 ? simpleResponse(Response.accept) : replyCode(reply.code, reply.status, reply.text));
  }

  private async applyEdits(edits: MessageEdits): Promise<void> {
    const granted = this.negotiated?.actions ?? 0;
    if ((granted & REQUIRED_ACTIONS) !== REQUIRED_ACTIONS) {
      throw new Error('the MTA did not allow this milter to change headers and replace the body (SMFIF_ADDHDRS, SMFIF_CHGHDRS, SMFIF_CHGBODY)');
    }
    // Postfix adds the space after the colon itself unless header values keep their leading space.
    const leading = ((this.negotiated?.steps ?? 0) & Step.headerLeadingSpace) !== 0;
    const value = (v: string) => (leading ? v : v.replace(/^ /, '')).replace(/\r\n/g, '\n');
    for (const e of edits.headers) {
      await this.write(e.kind === 'change' ? changeHeader(e.index, e.name, value(e.value)) : addHeader(e.name, value(e.value)));
    }
    if (edits.body) for (const packet of replaceBody(edits.body)) await this.write(packet);
  }

  private abandonMessage(): void {
    this.message.transaction?.abandon();
    this.message.transaction = undefined;
    this.message.body = [];
  }

  /**
   * Resolves once the packet is handed to the kernel, so a 20 MB body replacement is never
   * queued in memory all at once; a closed connection is an error for whoever waits on it.
   */
  private write(packet: Buffer): Promise<void> {
    if (this.closed || this.socket.destroyed) return Promise.reject(new Error('the MTA closed the milter connection'));
    return new Promise((resolve, reject) => {
      this.socket.write(packet, (err) => (err ? reject(err) : resolve()));
    });
  }
}
