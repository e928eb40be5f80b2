/**
 * Byte-level checks for "will this body survive transport unchanged" (shared/notes/smime.md):
 * MTAs rewrite 8bit, long lines, trailing blanks and mbox-sensitive line starts, and any rewrite
 * breaks the signature.
 */

export const F_8BIT = 1;
export const F_NUL = 2;
/** A CR that is not followed by LF. */
export const F_BARE_CR = 4;
/** An LF that is not preceded by CR. */
export const F_BARE_LF = 8;
/** A line over 76 octets (RFC 2045 limit for encoded lines, the limit we keep for signed parts). */
export const F_LONG = 16;
/** A line over 998 octets (RFC 5322 §2.1.1 hard limit). */
export const F_OVER_998 = 32;
/** A line ending in SP or HTAB: MTAs and mailing lists strip those. */
export const F_TRAILING_BLANK = 64;
/** A line starting with "From ": mbox writers turn it into ">From ". */
export const F_FROM = 128;
/** A line starting with ".": a broken dot-stuffer drops or doubles it. */
export const F_DOT = 256;

/** Everything that forces a body to be re-encoded, except bare LF (judged per content type). */
export const UNSAFE = F_8BIT | F_NUL | F_BARE_CR | F_LONG | F_OVER_998 | F_TRAILING_BLANK | F_FROM | F_DOT;

const CR = 0x0d;
const LF = 0x0a;

/**
 * One pass over the bytes; a line ends at LF (with an optional preceding CR). The last line,
 * without a terminator, is judged like the others because the delimiter's CRLF follows it.
 * Stops as soon as an UNSAFE flag is set: the caller then re-encodes whatever else the body
 * holds, so a binary attachment is recognised within its first bytes.
 */
export function scan(buf: Buffer, start = 0, end = buf.length): number {
  let flags = 0;
  let lineStart = start;
  for (let i = start; i < end; i++) {
    if (flags & UNSAFE) return flags;
    const c = buf[i]!;
    if (c >= 0x80) {
      flags |= F_8BIT;
    } else if (c === 0) {
      flags |= F_NUL;
    } else if (c === CR) {
      if (i + 1 >= end || buf[i + 1] !== LF) flags |= F_BARE_CR;
    } else if (c === LF) {
      let contentEnd = i;
      if (i > lineStart && buf[i - 1] === CR) contentEnd = i - 1;
      else flags |= F_BARE_LF;
      flags |= judgeLine(buf, lineStart, contentEnd);
      lineStart = i + 1;
    }
  }
  if (lineStart < end) flags |= judgeLine(buf, lineStart, end);
  return flags;
}

function judgeLine(buf: Buffer, start: number, end: number): number {
  const len = end - start;
  if (len === 0) return 0;
  let flags = 0;
  if (len > 76) flags |= len > 998 ? F_LONG | F_OVER_998 : F_LONG;
  const last = buf[end - 1];
  if (last === 0x20 || last === 0x09) flags |= F_TRAILING_BLANK;
  const first = buf[start];
  if (first === 0x2e) flags |= F_DOT;
  else if (
    first === 0x46 &&
    len >= 5 &&
    buf[start + 1] === 0x72 &&
    buf[start + 2] === 0x6f &&
    buf[start + 3] === 0x6d &&
    buf[start + 4] === 0x20
  ) {
    flags |= F_FROM;
  }
  return flags;
}

/** How many LFs in `buf` are not preceded by CR: lfToCrlf makes the data this much longer. */
export function bareLineFeeds(buf: Buffer): number {
  let bare = 0;
  for (let i = buf.indexOf(LF); i !== -1; i = buf.indexOf(LF, i + 1)) {
    if (i === 0 || buf[i - 1] !== CR) bare++;
  }
  return bare;
}

/**
 * Turns every bare LF into CRLF. Only called on bodies without bare CR, so CRLF stays CRLF.
 * Returns the input itself when there is nothing to do (no copy).
 */
export function lfToCrlf(buf: Buffer): Buffer {
  const bare = bareLineFeeds(buf);
  if (bare === 0) return buf;
  const out = Buffer.allocUnsafe(buf.length + bare);
  lfToCrlfInto(buf, out, 0);
  return out;
}

/** lfToCrlf into `out` from offset `at`, which has buf.length + bareLineFeeds(buf) bytes of room; returns the end. */
export function lfToCrlfInto(buf: Buffer, out: Buffer, at: number): number {
  let o = at;
  let from = 0;
  for (let i = buf.indexOf(LF); i !== -1; i = buf.indexOf(LF, i + 1)) {
    if (i === 0 || buf[i - 1] !== CR) {
      o += buf.copy(out, o, from, i);
      out[o++] = CR;
      from = i;
    }
  }
  return o + buf.copy(out, o, from, buf.length);
}
