const CR = 0x0d;
const LF = 0x0a;

/** The earlier of the next CR and the next LF; -1 when there is neither. */
const nextBreak = (cr: number, lf: number): number => (cr === -1 ? lf : lf === -1 ? cr : Math.min(cr, lf));

/**
 * The bytes with CRLF as the only line ending (RFC 5322 §2.1): a bare LF or a bare CR becomes
 * CRLF, as nodemailer's SMTP transport does on the wire, so a message written to a file reads
 * the same as one sent. Returns the input itself when it is already clean (no copy), which is
 * the case for everything the relay signed: only the search for a bare one is paid then.
 */
export function crlfOnly(buf: Buffer): Buffer {
  let bare = 0;
  for (let i = buf.indexOf(LF); i !== -1; i = buf.indexOf(LF, i + 1)) if (i === 0 || buf[i - 1] !== CR) bare++;
  for (let i = buf.indexOf(CR); i !== -1; i = buf.indexOf(CR, i + 1)) if (buf[i + 1] !== LF) bare++;
  if (bare === 0) return buf;
  const out = Buffer.allocUnsafe(buf.length + bare);
  let o = 0;
  let from = 0;
  let cr = buf.indexOf(CR);
  let lf = buf.indexOf(LF);
  for (let at = nextBreak(cr, lf); at !== -1; at = nextBreak(cr, lf)) {
    o += buf.copy(out, o, from, at);
    out[o++] = CR;
    out[o++] = LF;
    // CRLF, bare CR and bare LF are each one line break.
    from = buf[at] === CR && buf[at + 1] === LF ? at + 2 : at + 1;
    if (cr !== -1 && cr < from) cr = buf.indexOf(CR, from);
    if (lf !== -1 && lf < from) lf = buf.indexOf(LF, from);
  }
  o += buf.copy(out, o, from);
  return out;
}
