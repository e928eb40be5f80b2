/**
 * Framing and payloads of the milter protocol (src/milter/protocol.ts): packets in, packets out.
 * Strings travel as latin1 so every byte of a header survives unchanged, 8-bit included.
 */
import { CHUNK_SIZE, Response } from './protocol.js';

export class MilterProtocolError extends Error {
  override name = 'MilterProtocolError';
}

export interface Packet {
  command: string;
  data: Buffer;
}

/**
 * A packet larger than this is refused. Postfix's largest is a header (header_size_limit,
 * 102400 bytes by default) or a 64 KiB body chunk; 1 MiB leaves room for a larger header limit
 * without letting a confused peer make the relay buffer gigabytes.
 */
export const MAX_PACKET = 1024 * 1024;

/** Splits a byte stream into packets; bytes may arrive in any chunking. */
export class PacketReader {
  private chunks: Buffer[] = [];
  private buffered = 0;

  constructor(private readonly maxPacket = MAX_PACKET) {}

  push(chunk: Buffer): Packet[] {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    const packets: Packet[] = [];
    for (;;) {
      if (this.buffered < 4) return packets;
      const length = this.peekLength();
      if (length < 1) throw new MilterProtocolError(`packet length ${length}: a packet holds at least its command byte`);
      if (length > this.maxPacket) throw new MilterProtocolError(`packet length ${length} exceeds the limit of ${this.maxPacket} bytes`);
      if (this.buffered < 4 + length) return packets;
      const bytes = this.take(4 + length);
      packets.push({ command: String.fromCharCode(bytes[4]!), data: bytes.subarray(5) });
    }
  }

  /** Joins only the first chunks, until the length field is whole: bytes that trickle in one by one cost no more. */
  private peekLength(): number {
    while (this.chunks[0]!.length < 4) {
      const [a, b] = this.chunks;
      this.chunks.splice(0, 2, Buffer.concat([a!, b!]));
    }
    return this.chunks[0]!.readUInt32BE(0);
  }

  private take(n: number): Buffer {
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
    const out = all.subarray(0, n);
    const rest = all.subarray(n);
    this.chunks = rest.length ? [rest] : [];
    this.buffered = rest.length;
    return out;
  }
}

export function encodePacket(command: string, ...parts: Buffer[]): Buffer {
  const length = 1 + parts.reduce((n, p) => n + p.length, 0);
  const head = Buffer.alloc(5);
  head.writeUInt32BE(length, 0);
  head[4] = command.charCodeAt(0);
  return Buffer.concat([head, ...parts]);
}

const uint32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0, 0);
  return b;
};

/** A NUL-terminated string; a NUL inside would end it early, so it is refused. */
const cstring = (s: string): Buffer => {
  if (s.includes('\0')) throw new MilterProtocolError('a milter string cannot hold a NUL byte');
  return Buffer.from(s + '\0', 'latin1');
};

/** Reads NUL-terminated strings from `data`, in order; a missing terminator is a protocol error. */
export function readStrings(data: Buffer, what: string): string[] {
  const out: string[] = [];
  let pos = 0;
  while (pos < data.length) {
    const nul = data.indexOf(0, pos);
    if (nul < 0) throw new MilterProtocolError(`${what}: string without its NUL terminator`);
    out.push(data.toString('latin1', pos, nul));
    pos = nul + 1;
  }
  return out;
}

export interface Negotiation {
  version: number;
  actions: number;
  steps: number;
}

export function parseNegotiation(data: Buffer): Negotiation {
  if (data.length < 12) throw new MilterProtocolError(`option negotiation: ${data.length} bytes, expected 12`);
  return { version: data.readUInt32BE(0), actions: data.readUInt32BE(4), steps: data.readUInt32BE(8) };
}

/** SMFIC_MACRO: the command the macros belong to, then name/value pairs ("{auth_authen}", "alice"). */
export function parseMacros(data: Buffer): { stage: string; macros: Map<string, string> } {
  if (data.length < 1) throw new MilterProtocolError('macro packet without its command byte');
  const stage = String.fromCharCode(data[0]!);
  const strings = readStrings(data.subarray(1), 'macro');
  const macros = new Map<string, string>();
  for (let i = 0; i + 1 < strings.length; i += 2) macros.set(macroName(strings[i]!), strings[i + 1]!);
  return { stage, macros };
}

/** `{client_addr}` and `client_addr` name the same macro; single-letter ones (`i`, `j`) have no braces. */
export const macroName = (name: string): string => name.replace(/^\{(.*)\}$/, '$1');

export interface ConnectInfo {
  hostname: string;
  /** SMFIA_*: '4' inet, '6' inet6, 'L' unix, 'U' unknown. */
  family: string;
  address?: string;
}

export function parseConnect(data: Buffer): ConnectInfo {
  const nul = data.indexOf(0);
  if (nul < 0) throw new MilterProtocolError('connect: host name without its NUL terminator');
  const hostname = data.toString('latin1', 0, nul);
  const family = nul + 1 < data.length ? String.fromCharCode(data[nul + 1]!) : 'U';
  if (family === 'U' || nul + 4 >= data.length) return { hostname, family };
  // family, 2-byte port, then the address as a string
  const [address] = readStrings(data.subarray(nul + 4), 'connect');
  return { hostname, family, address };
}

export interface HeaderPacket {
  name: string;
  value: string;
}

export function parseHeader(data: Buffer): HeaderPacket {
  const [name, value] = readStrings(data, 'header');
  if (name === undefined || value === undefined) throw new MilterProtocolError('header: expected a name and a value');
  return { name, value };
}

// --- responses ---

/** Version, actions and steps, then the macro lists wanted per stage (version 6). */
export function negotiationReply(n: Negotiation, macroLists: ReadonlyArray<[stage: number, names: string]> = []): Buffer {
  const lists = macroLists.flatMap(([stage, names]) => [uint32(stage), cstring(names)]);
  return encodePacket('O', uint32(n.version), uint32(n.actions), uint32(n.steps), ...lists);
}

export const simpleResponse = (code: (typeof Response)['accept' | 'continue' | 'progress']): Buffer => encodePacket(code);

export function addHeader(name: string, value: string): Buffer {
  return encodePacket(Response.addHeader, cstring(name), cstring(value));
}

/** Index 1 is the first field of that name; an empty value deletes the field. */
export function changeHeader(index: number, name: string, value: string): Buffer {
  return encodePacket(Response.changeHeader, uint32(index), cstring(name), cstring(value));
}

/** The new body in packets of at most CHUNK_SIZE bytes; an empty body is one empty chunk. */
export function replaceBody(body: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let at = 0; at < body.length || out.length === 0; at += CHUNK_SIZE) out.push(encodePacket(Response.replaceBody, body.subarray(at, at + CHUNK_SIZE)));
  return out;
}

/** The longest reply text sent; an SMTP reply line is at most 512 octets (RFC 5321 §4.5.3.1.5). */
const MAX_REPLY_TEXT = 400;

/**
 * SMFIR_REPLYCODE: "550 5.7.1 text". Sendmail uses the text as a format string and Postfix
 * follows it, so every '%' is doubled; a line break would end the SMTP reply, so control
 * characters become spaces, and anything outside ASCII becomes '?'.
 */
export function replyCode(code: number, status: string, text: string): Buffer {
  let clean = text.replace(/[\x00-\x1f\x7f]+/g, ' ').replace(/[^\x20-\x7e]/g, '?');
  if (clean.length > MAX_REPLY_TEXT) clean = clean.slice(0, MAX_REPLY_TEXT - 3) + '...';
  return encodePacket(Response.replyCode, cstring(`${code} ${status} ${clean.replace(/%/g, '%%')}`));
}
