import type { SMTPServerDataStream } from 'smtp-server';

/**
 * Reads the DATA stream exactly once into one Buffer. Past maxSize it keeps draining (the client
 * must reach the final dot to read our 552) but stops storing; so it does once `admit` (the
 * memory budget, src/smtp/memory-admission.ts) refuses the bytes received so far, and then the
 * result is 'no-memory' (452 4.3.1) unless the message was also too big.
 *
 * When the client declared SIZE= on MAIL FROM (RFC 1870; nodemailer, Postfix and smtp-source
 * do), each chunk is copied into a buffer of that size as it arrives and can be collected at
 * once, instead of keeping every chunk until the end and concatenating: a 25 MB message then
 * peaks at one copy in memory, not two. allocUnsafe leaves the pages untouched until written,
 * so a client that declares more than it sends costs no resident memory. A message that
 * outgrows its declaration falls back to collecting chunks.
 */
export function readData(
  stream: SMTPServerDataStream,
  maxSize: number,
  declaredSize?: number,
  admit?: (received: number) => boolean,
): Promise<Buffer | 'too-big' | 'no-memory'> {
  return new Promise((resolve, reject) => {
    let target = declaredSize && declaredSize > 0 && declaredSize <= maxSize ? Buffer.allocUnsafe(declaredSize) : undefined;
    const chunks: Buffer[] = [];
    let size = 0;
    let refused = false;
    stream.on('data', (chunk: Buffer) => {
      const at = size;
      size += chunk.length;
      if (size > maxSize || refused) return;
      if (admit && !admit(size)) {
        // what was stored goes, so the memory is free for the messages that did fit
        refused = true;
        target = undefined;
        chunks.length = 0;
        return;
      }
      if (target && size <= target.length) {
        chunk.copy(target, at);
        return;
      }
      if (target) {
        chunks.push(target.subarray(0, at));
        target = undefined;
      }
      chunks.push(chunk);
    });
    stream.on('error', reject);
    stream.on('end', () => {
      if (size > maxSize || stream.sizeExceeded) return resolve('too-big');
      if (refused) return resolve('no-memory');
      resolve(target ? target.subarray(0, size) : Buffer.concat(chunks, size));
    });
  });
}

/** The SIZE= value of MAIL FROM, if the client gave a usable one. */
export function declaredSize(args: unknown): number | undefined {
  const value = args && typeof args === 'object' ? (args as Record<string, unknown>).SIZE : undefined;
  const n = typeof value === 'string' && /^\d{1,12}$/.test(value) ? Number(value) : NaN;
  return Number.isSafeInteger(n) ? n : undefined;
}
