/**
 * How a milter turns the message the MTA holds into the message the relay would forward: header
 * changes (SMFIR_CHGHEADER, SMFIR_ADDHEADER) and a body replacement (SMFIR_REPLBODY).
 *
 * The MTA keeps header fields the filter does not touch exactly where they are, so only the
 * difference is sent: fields that stay the same are left alone, a field rewritten in place is
 * changed in place, removed fields are deleted, and new fields are appended. ADDHEADER can only
 * append, so when a new field belongs before a kept one, everything from that point on is
 * deleted and appended again in order; the resulting header block is the outgoing one either way.
 */
import { readHeaderBlock } from '../mime/header.js';

/**
 * One header field as the milter protocol carries it: the name as written, and the value as the
 * exact text after the colon (leading space included), folded lines joined by "\n".
 */
export interface MilterHeader {
  name: string;
  value: string;
}

export type HeaderEdit =
  /** SMFIR_CHGHEADER: `index` counts fields of this name from 1, as received; an empty value deletes. */
  | { kind: 'change'; index: number; name: string; value: string }
  /** SMFIR_ADDHEADER: appended after the last header field. */
  | { kind: 'add'; name: string; value: string };

export interface MessageEdits {
  headers: HeaderEdit[];
  /** The new body, when it differs from the one received. */
  body?: Buffer;
}

/** The header fields of a raw message (CRLF or LF), and where its body starts. */
export function splitMessage(message: Buffer, maxHeaderBytes: number): { headers: MilterHeader[]; body: Buffer } {
  const block = readHeaderBlock(message, 0, message.length, maxHeaderBytes);
  const headers = block.fields.map((f) => {
    const first = f.lines[0]!.toString('latin1');
    const colon = first.indexOf(':');
    const rest = f.lines.slice(1).map((l) => '\n' + l.toString('latin1')).join('');
    return { name: first.slice(0, colon), value: first.slice(colon + 1) + rest };
  });
  return { headers, body: message.subarray(block.bodyStart) };
}

/** The header block as bytes: what the pipeline reads, CRLF line ends, the blank line included. */
export function headerBlock(headers: readonly MilterHeader[]): Buffer {
  const text = headers.map((h) => `${h.name}:${h.value.replace(/\r?\n/g, '\r\n')}\r\n`).join('') + '\r\n';
  return Buffer.from(text, 'latin1');
}

/** Beyond this many comparisons the edit script is "delete everything, append everything". */
const MAX_DIFF_CELLS = 250_000;

type Step = { op: 'keep' | 'change'; from: number; to: number } | { op: 'delete'; from: number } | { op: 'insert'; to: number };

/** The edits that turn the received message into `outgoing`, the relay's own output (no size limit: it was built from a bounded input). */
export function editsFor(received: readonly MilterHeader[], receivedBody: Buffer, outgoing: Buffer): MessageEdits {
  const out = splitMessage(outgoing, outgoing.length);
  // A change to an empty value would read as a deletion, so such a field is deleted and added.
  const steps = appendOnly(script(received, out.headers).flatMap((s): Step[] => (s.op === 'change' && out.headers[s.to]!.value === '' ? [{ op: 'delete', from: s.from }, { op: 'insert', to: s.to }] : [s])));
  const occurrence = occurrences(received);
  const changes: { at: number; edit: HeaderEdit }[] = [];
  const adds: HeaderEdit[] = [];
  for (const s of steps) {
    if (s.op === 'delete') changes.push({ at: s.from, edit: { kind: 'change', index: occurrence[s.from]!, name: received[s.from]!.name, value: '' } });
    else if (s.op === 'change') changes.push({ at: s.from, edit: { kind: 'change', index: occurrence[s.from]!, name: out.headers[s.to]!.name, value: out.headers[s.to]!.value } });
    else if (s.op === 'insert') adds.push({ kind: 'add', ...out.headers[s.to]! });
  }
  // Last field first: deleting a field renumbers the later fields of its name, never earlier ones.
  changes.sort((a, b) => b.at - a.at);
  return {
    headers: [...changes.map((c) => c.edit), ...adds],
    ...(out.body.equals(receivedBody) ? {} : { body: out.body }),
  };
}

const key = (h: MilterHeader): string => `${h.name.toLowerCase()}:${h.value.replace(/\r\n/g, '\n')}`;
const sameName = (a: MilterHeader, b: MilterHeader): boolean => a.name.toLowerCase() === b.name.toLowerCase();

/** For each received field, its number among the fields of the same name (1-based). */
function occurrences(headers: readonly MilterHeader[]): number[] {
  const seen = new Map<string, number>();
  return headers.map((h) => {
    const n = (seen.get(h.name.toLowerCase()) ?? 0) + 1;
    seen.set(h.name.toLowerCase(), n);
    return n;
  });
}

/** The shortest edit script from `a` to `b` (edit distance; a change keeps a field's place). */
function script(a: readonly MilterHeader[], b: readonly MilterHeader[]): Step[] {
  const n = a.length;
  const m = b.length;
  if (n * m > MAX_DIFF_CELLS) {
    return [...a.map((_, from) => ({ op: 'delete' as const, from })), ...b.map((_, to) => ({ op: 'insert' as const, to }))];
  }
  const ka = a.map(key);
  const kb = b.map(key);
  // cost[i][j]: edits to turn a[i..] into b[j..]
  const cost: Uint32Array[] = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n; i >= 0; i--) {
    for (let j = m; j >= 0; j--) {
      if (i === n) cost[i]![j] = m - j;
      else if (j === m) cost[i]![j] = n - i;
      else {
        const pair = ka[i] === kb[j] ? 0 : sameName(a[i]!, b[j]!) ? 1 : Infinity;
        cost[i]![j] = Math.min(pair + cost[i + 1]![j + 1]!, 1 + cost[i + 1]![j]!, 1 + cost[i]![j + 1]!);
      }
    }
  }
  const steps: Step[] = [];
  let i = 0;
  let j = 0;
  while (i < n || j < m) {
    const here = cost[i]![j]!;
    if (i < n && j < m && ka[i] === kb[j] && here === cost[i + 1]![j + 1]!) steps.push({ op: 'keep', from: i++, to: j++ });
    else if (i < n && j < m && sameName(a[i]!, b[j]!) && here === 1 + cost[i + 1]![j + 1]!) steps.push({ op: 'change', from: i++, to: j++ });
    else if (i < n && here === 1 + cost[i + 1]![j]!) steps.push({ op: 'delete', from: i++ });
    else steps.push({ op: 'insert', to: j++ });
  }
  return steps;
}

/**
 * ADDHEADER appends, so an insert may not come before a kept field. From the first such insert
 * on, every kept or changed field is deleted and appended again, which keeps the outgoing order.
 */
function appendOnly(steps: Step[]): Step[] {
  const lastKept = steps.findLastIndex((s) => s.op === 'keep' || s.op === 'change');
  const firstEarlyInsert = steps.findIndex((s, i) => s.op === 'insert' && i < lastKept);
  if (firstEarlyInsert < 0) return steps;
  return steps.flatMap((s, i): Step[] => {
    if (i < firstEarlyInsert || s.op === 'insert' || s.op === 'delete') return [s];
    return [{ op: 'delete', from: s.from }, { op: 'insert', to: s.to }];
  });
}
