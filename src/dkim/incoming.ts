import { fieldValue, topHeaderFields } from '../mime/header.js';

/**
 * DKIM-Signature fields that arrive with a message. S/MIME signing rewrites the body and the
 * Content-* fields, so a DKIM signature made before the relay can no longer verify
 * (shared/notes/smime.md, "What breaks signatures in transit"). Keeping it is harmless to DKIM
 * verifiers (a failing signature is treated as absent, RFC 6376 §6.1) but noisy in DMARC reports,
 * so the operator may strip it.
 */
export interface IncomingDkim {
  /** The d= domain of each DKIM-Signature field, in order ('?' when the field has none). */
  readonly domains: readonly string[];
  /** The message with every top-level DKIM-Signature field removed, all other bytes unchanged. */
  withoutSignatures(): Buffer;
}

export function incomingDkim(raw: Buffer): IncomingDkim {
  const fields = topHeaderFields(raw);
  if (!fields) return { domains: [], withoutSignatures: () => raw };
  // Byte ranges of each field, including its line terminators, found through the line buffers
  // (they are views into `raw`).
  const starts = fields.map((f) => f.lines[0]!.byteOffset - raw.byteOffset);
  const ranges: [number, number][] = [];
  const domains: string[] = [];
  fields.forEach((field, i) => {
    if (field.name !== 'dkim-signature') return;
    domains.push(tagValue(fieldValue(field), 'd') ?? '?');
    const end = i + 1 < starts.length ? starts[i + 1]! : endOfField(raw, field.lines[field.lines.length - 1]!, raw.byteOffset);
    ranges.push([starts[i]!, end]);
  });
  return {
    domains,
    withoutSignatures() {
      if (ranges.length === 0) return raw;
      const kept: Buffer[] = [];
      let at = 0;
      for (const [from, to] of ranges) {
        kept.push(raw.subarray(at, from));
        at = to;
      }
      kept.push(raw.subarray(at));
      return Buffer.concat(kept);
    },
  };
}

/** Offset just past the line terminator (LF or CRLF) that ends `lastLine`. */
function endOfField(raw: Buffer, lastLine: Buffer, base: number): number {
  const end = lastLine.byteOffset - base + lastLine.length;
  if (raw[end] === 0x0d && raw[end + 1] === 0x0a) return end + 2;
  if (raw[end] === 0x0a) return end + 1;
  return end;
}

/** A tag's value in a DKIM tag-list (RFC 6376 §3.2), whitespace removed. */
function tagValue(value: string, tag: string): string | undefined {
  for (const spec of value.split(';')) {
    const eq = spec.indexOf('=');
    if (eq < 0) continue;
    if (spec.slice(0, eq).replace(/\s+/g, '') === tag) return spec.slice(eq + 1).replace(/\s+/g, '').toLowerCase();
  }
  return undefined;
}
