/**
 * A minimal reader of BER/DER tag-length-value structures (X.690 §8.1), by offsets into one
 * Buffer. The verifier walks a CMS SignedData with it instead of building asn1js/PKI.js object
 * trees: self-verification runs on every signed message, and the whole check has to stay within a
 * few per cent of what signing costs (PKI.js spends milliseconds where the RSA operation takes
 * tens of microseconds; see src/signing/native.ts). Every slice stays a view of the input, so the
 * exact bytes a signature covers are available as they were sent.
 */

export interface Tlv {
  /** First byte of the identifier octet. */
  readonly tag: number;
  /** Offset of the identifier octet. */
  readonly start: number;
  /** Offset of the first content octet. */
  readonly valueStart: number;
  /** Offset just past the last content octet (before the end-of-contents octets of an indefinite length). */
  readonly valueEnd: number;
  /** Offset just past the whole element. */
  readonly end: number;
}

export class DerError extends Error {
  override name = 'DerError';
}

const CONSTRUCTED = 0x20;

/** Reads the element at `pos`, which must end at or before `limit`. */
export function readTlv(buf: Buffer, pos: number, limit = buf.length): Tlv {
  if (pos + 2 > limit) throw new DerError(`truncated element at offset ${pos}`);
  const tag = buf[pos]!;
  // High tag numbers (X.690 §8.1.2.4) do not occur in CMS SignedData.
  if ((tag & 0x1f) === 0x1f) throw new DerError(`unsupported high tag number at offset ${pos}`);
  const first = buf[pos + 1]!;
  let p = pos + 2;
  if (first === 0x80) {
    // Indefinite length (BER; some producers stream the outer layers): children until 00 00.
    if (!(tag & CONSTRUCTED)) throw new DerError(`indefinite length on a primitive element at offset ${pos}`);
    let q = p;
    for (;;) {
      if (q + 2 > limit) throw new DerError(`unterminated indefinite length at offset ${pos}`);
      if (buf[q] === 0 && buf[q + 1] === 0) return { tag, start: pos, valueStart: p, valueEnd: q, end: q + 2 };
      q = readTlv(buf, q, limit).end;
    }
  }
  let len = first;
  if (first & 0x80) {
    const n = first & 0x7f;
    if (n > 4 || p + n > limit) throw new DerError(`unsupported length of ${n} octets at offset ${pos}`);
    len = 0;
    for (let k = 0; k < n; k++) len = len * 256 + buf[p++]!;
  }
  const end = p + len;
  if (end > limit) throw new DerError(`element at offset ${pos} runs past its container`);
  return { tag, start: pos, valueStart: p, valueEnd: end, end };
}

/** The elements inside a constructed element. */
export function childrenOf(buf: Buffer, parent: Tlv): Tlv[] {
  const out: Tlv[] = [];
  for (let p = parent.valueStart; p < parent.valueEnd; ) {
    const t = readTlv(buf, p, parent.valueEnd);
    out.push(t);
    p = t.end;
  }
  return out;
}

/** The children of `parent`, checking the parent's tag first. */
export function contentsOf(buf: Buffer, t: Tlv, tag: number, what: string): Tlv[] {
  if (t.tag !== tag) throw new DerError(`${what}: expected tag 0x${tag.toString(16)}, found 0x${t.tag.toString(16)}`);
  return childrenOf(buf, t);
}

export const value = (buf: Buffer, t: Tlv): Buffer => buf.subarray(t.valueStart, t.valueEnd);
export const whole = (buf: Buffer, t: Tlv): Buffer => buf.subarray(t.start, t.end);

/** Content octets of an OBJECT IDENTIFIER, in hex, for comparison with oidHex(). */
export const oidOf = (buf: Buffer, t: Tlv): string => (t.tag === 0x06 ? value(buf, t).toString('hex') : '');

/** The content octets of a dotted OID (X.690 §8.19), in hex. */
export function oidHex(dotted: string): string {
  const arcs = dotted.split('.').map(Number);
  const bytes: number[] = [];
  const push = (n: number) => {
    const groups = [n & 0x7f];
    for (n = Math.floor(n / 128); n > 0; n = Math.floor(n / 128)) groups.unshift((n & 0x7f) | 0x80);
    bytes.push(...groups);
  };
  push(arcs[0]! * 40 + arcs[1]!);
  for (const a of arcs.slice(2)) push(a);
  return Buffer.from(bytes).toString('hex');
}

/** UTCTime / GeneralizedTime (RFC 5280 §4.1.2.5 profile: seconds, Z), or undefined. */
export function timeOf(buf: Buffer, t: Tlv): Date | undefined {
  const s = value(buf, t).toString('latin1');
  const m = t.tag === 0x17 ? /^(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})?Z$/.exec(s) : t.tag === 0x18 ? /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})?(?:\.\d+)?Z$/.exec(s) : null;
  if (!m) return undefined;
  let year = Number(m[1]);
  if (t.tag === 0x17) year += year >= 50 ? 1900 : 2000;
  // Stryker disable next-line StringLiteral: Number('') is 0 as well
  const written = [m[2], m[3], m[4], m[5], m[6] ?? '0'].map(Number);
  const [month, day, hour, minute, second] = written as [number, number, number, number, number];
  const date = new Date(Date.UTC(year, month - 1, day, hour, minute, second));
  // Date.UTC carries a field out of range into the next (month 30 becomes two and a half years):
  // such a value is no time at all.
  const read = [date.getUTCMonth() + 1, date.getUTCDate(), date.getUTCHours(), date.getUTCMinutes(), date.getUTCSeconds()];
  return read.every((v, i) => v === written[i]) ? date : undefined;
}
