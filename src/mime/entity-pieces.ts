import { bareLineFeeds, lfToCrlfInto } from './scan.js';
import { base64Size, encodeBase64Into, encodeQuotedPrintableInto, quotedPrintableBound } from './transfer-encoding.js';

/** Bytes to copy as they are, or a body to write encoded. */
type Piece = Buffer | { write(out: Buffer, at: number): number };

/**
 * A prepared MIME entity, not yet written: header lines, delimiters and bodies that pass
 * unchanged (views into the received message), and bodies still to be encoded. Nothing is
 * concatenated or encoded until writeTo() puts every piece, once, straight into the buffer the
 * message is sent from. A 24 MiB text part then costs its received copy and its place in the
 * outgoing message, instead of also an encoded copy and a concatenated entity on the way.
 */
export class EntityPieces {
  private readonly pieces: Piece[] = [];
  /** Most bytes writeTo() writes: exact, except that quoted-printable is sized by its bound. */
  size = 0;
  /** Copies made while preparing that pieces refer to (bodies decoded to be re-encoded), in bytes. */
  held = 0;

  push(...bytes: Buffer[]): void {
    for (const b of bytes) {
      this.pieces.push(b);
      this.size += b.length;
    }
  }

  /** `body` with every bare LF written as CRLF (a view of it when there is none). */
  crlf(body: Buffer): void {
    const bare = bareLineFeeds(body);
    if (bare === 0) return this.push(body);
    this.encoded(body.length + bare, (out, at) => lfToCrlfInto(body, out, at));
  }

  quotedPrintable(body: Buffer, bound = quotedPrintableBound(body)): void {
    this.encoded(bound, (out, at) => encodeQuotedPrintableInto(body, out, at));
  }

  base64(body: Buffer): void {
    this.encoded(base64Size(body.length), (out, at) => encodeBase64Into(body, out, at));
  }

  /** Records a copy made while preparing (a decoded body); returns it. */
  hold(copy: Buffer): Buffer {
    this.held += copy.length;
    return copy;
  }

  /** Writes the entity into `out` from `at`, which needs `size` bytes of room; returns the end. */
  writeTo(out: Buffer, at: number): number {
    let o = at;
    for (const p of this.pieces) o = Buffer.isBuffer(p) ? o + p.copy(out, o) : p.write(out, o);
    return o;
  }

  /** The entity as one Buffer (the offline `sign` command and tests; the relay writes it in place). */
  toBuffer(): Buffer {
    const out = Buffer.allocUnsafe(this.size);
    return out.subarray(0, this.writeTo(out, 0));
  }

  private encoded(size: number, write: (out: Buffer, at: number) => number): void {
    this.pieces.push({ write });
    this.size += size;
  }
}
