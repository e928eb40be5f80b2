/**
 * Content-Transfer-Encoding codecs (RFC 2045 §6.7, §6.8), on Buffers so a 25 MB attachment is
 * never held as a JS string longer than one conversion.
 *
 * The decoders follow the same lenient rules as mailparser (libqp, libbase64), because "the
 * decoded content is unchanged" is judged by what real parsers decode, not by a stricter reading.
 */

const CR = 0x0d;
const LF = 0x0a;
const SP = 0x20;
const TAB = 0x09;
const EQ = 0x3d;
const HEX = Buffer.from('0123456789ABCDEF', 'latin1');

/** Longest encoded line we write: RFC 2045 §6.7 (5) and §6.8. */
const MAX_LINE = 76;

function hexValue(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x41 && c <= 0x46) return c - 0x37;
  if (c >= 0x61 && c <= 0x66) return c - 0x57;
  return -1;
}

/**
 * Quoted-printable decoding as libqp does it: blanks in front of a line end (CR, LF or the end)
 * are transport padding and go (RFC 2045 §6.7 (3)); "=" before a line end is a soft break;
 * "=XX" is a byte; anything else, including a malformed "=", is kept literally. Hard line
 * breaks are kept as the bytes they are.
 */
export function decodeQuotedPrintable(src: Buffer): Buffer {
  const out = Buffer.allocUnsafe(src.length);
  let o = 0;
  const n = src.length;
  let i = 0;
  while (i < n) {
    const c = src[i]!;
    if (c === SP || c === TAB) {
      let j = i + 1;
      while (j < n && (src[j] === SP || src[j] === TAB)) j++;
      if (j === n || src[j] === CR || src[j] === LF) {
        i = j;
        continue;
      }
      while (i < j) out[o++] = src[i++]!;
      continue;
    }
    if (c === EQ) {
      // a soft break may itself be followed by padding: "=  \r\n"
      let j = i + 1;
      while (j < n && (src[j] === SP || src[j] === TAB)) j++;
      if (j === n) {
        i = n;
        continue;
      }
      if (src[j] === LF) {
        i = j + 1;
        continue;
      }
      if (src[j] === CR && j + 1 < n && src[j + 1] === LF) {
        i = j + 2;
        continue;
      }
      if (i + 2 < n) {
        const hi = hexValue(src[i + 1]!);
        const lo = hexValue(src[i + 2]!);
        if (hi >= 0 && lo >= 0) {
          out[o++] = hi * 16 + lo;
          i += 3;
          continue;
        }
      }
      out[o++] = c;
      i++;
      continue;
    }
    out[o++] = c;
    i++;
  }
  return out.subarray(0, o);
}

/** Value of each byte in the base64 alphabet; -1 skipped, -2 padding. */
const B64 = new Int8Array(256).fill(-1);
'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'.split('').forEach((ch, k) => {
  B64[ch.charCodeAt(0)] = k;
});
B64[EQ] = -2;

/**
 * Base64 decoding as libbase64 does it: every byte outside the alphabet is skipped, and the
 * text is decoded segment by segment between padding characters (some encoders pad every line);
 * a segment's incomplete last quartet yields the bytes it fully covers, as Node's decoder does.
 */
export function decodeBase64(src: Buffer): Buffer {
  const out = Buffer.allocUnsafe(Math.floor((src.length * 3) / 4) + 3);
  let o = 0;
  let acc = 0;
  let count = 0;
  for (let i = 0; i < src.length; i++) {
    const v = B64[src[i]!]!;
    if (v >= 0) {
      acc = (acc << 6) | v;
      if (++count === 4) {
        out[o++] = (acc >> 16) & 0xff;
        out[o++] = (acc >> 8) & 0xff;
        out[o++] = acc & 0xff;
        acc = 0;
        count = 0;
      }
    } else if (v === -2) {
      o = flushQuartet(out, o, acc, count);
      acc = 0;
      count = 0;
    }
  }
  o = flushQuartet(out, o, acc, count);
  return out.subarray(0, o);
}

function flushQuartet(out: Buffer, o: number, acc: number, count: number): number {
  if (count === 2) {
    out[o++] = (acc >> 4) & 0xff;
  } else if (count === 3) {
    out[o++] = (acc >> 10) & 0xff;
    out[o++] = (acc >> 2) & 0xff;
  }
  return o;
}

const B64_CHARS = Buffer.from('ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/', 'latin1');

/** Bytes encodeBase64 writes for `n` input bytes. */
export function base64Size(n: number): number {
  return n === 0 ? 0 : Math.ceil(n / 3) * 4 + (Math.ceil(n / 57) - 1) * 2;
}

/**
 * Base64 in 76-character lines joined by CRLF, without a line break after the last line.
 * Written straight into one Buffer: per-line copies or strings cost more than the encoding.
 */
export function encodeBase64(src: Buffer): Buffer {
  const out = Buffer.allocUnsafe(base64Size(src.length));
  return out.subarray(0, encodeBase64Into(src, out, 0));
}

/** encodeBase64 into `out` from offset `at`, which has base64Size(src.length) bytes of room; returns the end. */
export function encodeBase64Into(src: Buffer, out: Buffer, at: number): number {
  const n = src.length;
  let o = at;
  let i = 0;
  // 57 input bytes make one full 76-character line
  const full = n - (n % 3);
  let onLine = 0;
  while (i < full) {
    if (onLine === 19) {
      out[o++] = CR;
      out[o++] = LF;
      onLine = 0;
    }
    const t = (src[i]! << 16) | (src[i + 1]! << 8) | src[i + 2]!;
    out[o++] = B64_CHARS[t >> 18]!;
    out[o++] = B64_CHARS[(t >> 12) & 63]!;
    out[o++] = B64_CHARS[(t >> 6) & 63]!;
    out[o++] = B64_CHARS[t & 63]!;
    i += 3;
    onLine++;
  }
  if (i < n) {
    if (onLine === 19) {
      out[o++] = CR;
      out[o++] = LF;
    }
    const t = (src[i]! << 16) | (i + 1 < n ? src[i + 1]! << 8 : 0);
    out[o++] = B64_CHARS[t >> 18]!;
    out[o++] = B64_CHARS[(t >> 12) & 63]!;
    out[o++] = i + 1 < n ? B64_CHARS[(t >> 6) & 63]! : EQ;
    out[o++] = EQ;
  }
  return o;
}

/**
 * Quoted-printable for text (RFC 2045 §6.7): CRLF and bare LF are line breaks and become CRLF
 * (the canonical form of text, RFC 2046 §4.1.1); a bare CR is data and becomes =0D. Besides the
 * RFC rules it protects each output line against transport:
 * - blanks at a line end become =20 / =09 (MTAs strip them);
 * - a line starting with "From " starts with =46 (mbox munging), one starting with "." with =2E
 *   (dot-stuffing bugs);
 * - a line starting with "--" starts with =2D, so no encoded line can ever look like a multipart
 *   delimiter, whatever boundary an enclosing part uses.
 */
export function encodeQuotedPrintable(src: Buffer): Buffer {
  const out = Buffer.allocUnsafe(quotedPrintableBound(src));
  return out.subarray(0, encodeQuotedPrintableInto(src, out, 0));
}

/**
 * At least as many bytes as encodeQuotedPrintable writes for `src`, and at most a few percent
 * more: one pass that prices every byte as the encoder will (3 when escaped, CRLF for a line
 * break), plus the soft breaks. A soft break comes only after at least 73 bytes of its line
 * and can make the first byte after it an escape (+2), so there are at most L/71 of them
 * (L the priced bytes), each costing at most 5 bytes. Cheap enough to decide between quoted-printable and base64 and
 * to size the buffer the encoder writes into.
 */
export function quotedPrintableBound(src: Buffer): number {
  const n = src.length;
  let size = 0;
  let lineStart = true;
  for (let i = 0; i < n; i++) {
    const c = src[i]!;
    // the common bytes first: printable ASCII inside a line, and 8-bit bytes (always escaped)
    if (c > SP && c < 0x7f && c !== EQ && !lineStart) {
      size++;
      continue;
    }
    if (c > 0x7e) {
      size += 3;
      lineStart = false;
      continue;
    }
    if (c === LF) {
      size += 2;
      lineStart = true;
      continue;
    }
    if (c === CR && i + 1 < n && src[i + 1] === LF) continue;
    const next = i + 1 < n ? src[i + 1]! : -1;
    const lastOnLine = next === -1 || next === LF || (next === CR && i + 2 < n && src[i + 2] === LF);
    size += needsEscape(c, lastOnLine) || (lineStart && startNeedsEscape(src, i)) ? 3 : 1;
    lineStart = false;
  }
  return size + 5 * Math.floor(size / 71);
}

/** encodeQuotedPrintable into `out` from offset `at`, which has quotedPrintableBound(src) bytes of room; returns the end. */
export function encodeQuotedPrintableInto(src: Buffer, out: Buffer, at: number): number {
  const n = src.length;
  let o = at;
  let lineLen = 0;
  let i = 0;
  while (i < n) {
    const c = src[i]!;
    if (c === LF || (c === CR && i + 1 < n && src[i + 1] === LF)) {
      out[o++] = CR;
      out[o++] = LF;
      lineLen = 0;
      i += c === CR ? 2 : 1;
      continue;
    }
    // the next byte ends the encoded line when it is a line break or the end of the data
    const next = i + 1 < n ? src[i + 1]! : -1;
    const lastOnLine = next === -1 || next === LF || (next === CR && i + 2 < n && src[i + 2] === LF);
    let escape = needsEscape(c, lastOnLine) || (lineLen === 0 && startNeedsEscape(src, i));
    let width = escape ? 3 : 1;
    // a soft-broken line is content plus "=", so at most 75 content characters; the last
    // segment before a hard break may use all 76
    if (lineLen + width > MAX_LINE - 1 && !(lastOnLine && lineLen + width <= MAX_LINE)) {
      out[o++] = EQ;
      out[o++] = CR;
      out[o++] = LF;
      lineLen = 0;
      escape = needsEscape(c, lastOnLine) || startNeedsEscape(src, i);
      width = escape ? 3 : 1;
    }
    if (escape) {
      out[o++] = EQ;
      out[o++] = HEX[c >> 4]!;
      out[o++] = HEX[c & 15]!;
    } else {
      out[o++] = c;
    }
    lineLen += width;
    i++;
  }
  return o;
}

function needsEscape(c: number, lastOnLine: boolean): boolean {
  if (c === SP || c === TAB) return lastOnLine;
  return c < 0x20 || c > 0x7e || c === EQ;
}

function startNeedsEscape(src: Buffer, i: number): boolean {
  const c = src[i];
  if (c === 0x2e) return true;
  if (c === 0x2d) return src[i + 1] === 0x2d;
  return c === 0x46 && src[i + 1] === 0x72 && src[i + 2] === 0x6f && src[i + 3] === 0x6d && src[i + 4] === SP;
}
