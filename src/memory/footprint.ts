/**
 * What a message may come to hold while it is in progress, estimated from its size before it
 * has been read: reserved at MAIL FROM from SIZE=, or as its bytes arrive. Once the message is
 * prepared the pipeline knows the exact figure and adjusts the reservation to it.
 */

/**
 * The outgoing message per received byte, for signed mail. It is written once
 * (src/mime/multipart-signed.ts) and re-encoding for 7-bit transport is what makes it larger:
 * base64 writes 4/3 of its input plus a CRLF every 76 characters (1.37), and text that would grow
 * more in quoted-printable goes to base64. Quoted-printable text that is mostly 8-bit, or a body
 * of bare LFs, can still exceed this; the exact check after prepare catches those.
 */
const OUTGOING_PER_BYTE = 1.4;
/** The multipart/signed head and the room kept for the signature part (16 KiB), with margin. */
const OUTGOING_FIXED = 64 * 1024;

/**
 * Bytes to reserve for a message of `size` bytes: the received copy, and with signing on the
 * outgoing message too (pass-through sends the received bytes themselves).
 */
export function messageFootprint(size: number, signing: boolean): number {
  return signing ? size + Math.ceil(size * OUTGOING_PER_BYTE) + OUTGOING_FIXED : size;
}

