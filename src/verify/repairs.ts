import { parseContentType, fieldValue, type HeaderField } from '../mime/header.js';
import { decodeBase64, decodeQuotedPrintable, encodeBase64, encodeQuotedPrintable } from '../mime/transfer-encoding.js';
import { nodesOf, serialize, type Edits, type MimeNode, type MultipartBody } from './tree.js';

/**
 * The usual ways a hop changes a signed part in transit, each as the edit that would undo it.
 * Diagnose hashes every candidate and the first whose digest matches the signature names the
 * change. The undo uses the relay's own encoders (src/mime/transfer-encoding.ts) first, since a
 * relay-signed part was written by them, then the other styles common in mail software.
 */
export type DamageKind =
  | 'decoded'
  | 're-encoded'
  | 'base64-rewrapped'
  | 'line-endings'
  | 'trailing-whitespace-added'
  | 'trailing-whitespace-stripped'
  | 'header-refolded'
  | 'header-recased'
  | 'header-reordered'
  | 'preamble-added'
  | 'preamble-removed'
  | 'epilogue-added'
  | 'epilogue-removed'
  | 'boundary-changed';

export interface Repair {
  readonly kind: DamageKind;
  /** What the hop did, in one phrase without the place: "quoted-printable decoded to 8bit". */
  readonly change: string;
  readonly nodes: readonly MimeNode[];
  /** The signed part with the change undone. */
  readonly bytes: Buffer;
}

const CRLF = Buffer.from('\r\n', 'latin1');
const CR = 0x0d;
const LF = 0x0a;

// Maps, not objects: the names come from the message, and 'constructor' is no encoding or field.
const TE_NAME: ReadonlyMap<string, string> = new Map([['', 'no transfer encoding']]);
const teName = (cte: string) => TE_NAME.get(cte) ?? cte;

/** The candidates in the order diagnose tries them: whole-part changes first, then part by part. */
export function* repairsOf(root: MimeNode): Generator<Repair> {
  const content = serialize(root);
  const nodes = nodesOf(root);
  const leaves = nodes.filter((n) => n.body.kind === 'leaf');
  const multiparts = nodes.filter((n): n is MimeNode & { body: MultipartBody } => n.body.kind === 'multipart');

  yield* lineEndings(content, nodes);
  yield* trailingWhitespaceAdded(content, nodes, root);
  yield* perLeaf(root, leaves, encodingUndos);
  yield* perLeaf(root, leaves, base64Rewraps);
  for (const m of multiparts) yield* preambleEpilogue(root, m);
  for (const n of nodes) yield* boundaryMismatch(root, n);
  for (const n of nodes) yield* headerUndos(root, n);
  yield* trailingWhitespaceStripped(root, nodes);
}

// ---- line endings and trailing whitespace (anywhere in the signed part) ----

function hasBareLf(b: Buffer): boolean {
  for (let i = b.indexOf(LF); i !== -1; i = b.indexOf(LF, i + 1)) if (i === 0 || b[i - 1] !== CR) return true;
  return false;
}

/** Every line break as CRLF: bare LF, bare CR and CR CR LF alike (RFC 5322 §2.3 allows only CRLF). */
export function toCrlf(b: Buffer): Buffer {
  return Buffer.from(b.toString('latin1').replace(/\r*\n|\r(?!\n)/g, '\r\n'), 'latin1');
}

function* lineEndings(content: Buffer, nodes: MimeNode[]): Generator<Repair> {
  const fixed = toCrlf(content);
  if (fixed.equals(content)) return;
  const text = content.toString('latin1');
  const what = /\r\r+\n/.test(text) ? 'CRLF to CR CR LF' : /\r(?!\n)/.test(text) && !hasBareLf(content) ? 'CRLF to CR' : 'CRLF to LF';
  // OpenSSL re-canonicalizes line by line and still accepts such a copy; gpgsm and NSS, given
  // the bytes as they are, do not. RFC 8551 §3.1.1 signs the CRLF form, so the copy is damaged.
  const lenient = what === 'CRLF to LF' ? ' (OpenSSL, which turns every line ending back into CRLF, still accepts it; verifiers that hash the bytes as they are do not)' : '';
  yield { kind: 'line-endings', change: `line endings changed from ${what}${lenient}`, nodes: touched(nodes, (b) => !toCrlf(b).equals(b)), bytes: fixed };
}

const TRAILING = /[ \t]+(?=\r?\n)/g;

function* trailingWhitespaceAdded(content: Buffer, nodes: MimeNode[], root: MimeNode): Generator<Repair> {
  const count = (b: Buffer) => b.toString('latin1').match(TRAILING)?.length ?? 0;
  const strip = (b: Buffer) => Buffer.from(b.toString('latin1').replace(TRAILING, ''), 'latin1');
  const total = count(content);
  if (!total) return;
  const change = (n: number) => `trailing whitespace added at the end of ${n} line(s)`;
  yield { kind: 'trailing-whitespace-added', change: change(total), nodes: touched(nodes, (b) => count(b) > 0), bytes: strip(content) };
  // Where some lines had trailing blanks when signed (a header), only the others were added to.
  for (const node of nodes) {
    if (node.body.kind === 'leaf' && count(node.body.bytes)) {
      yield { kind: 'trailing-whitespace-added', change: change(count(node.body.bytes)), nodes: [node], bytes: serialize(root, { leaf: new Map([[node, strip(node.body.bytes)]]) }) };
    }
    if (count(node.header)) {
      yield { kind: 'trailing-whitespace-added', change: change(count(node.header)), nodes: [node], bytes: serialize(root, { header: new Map([[node, strip(node.header)]]) }) };
    }
  }
}

/**
 * Stripped whitespace cannot be known from what is left. The relay's bodies never end a line in
 * a blank (quoted-printable writes =20, base64 has none), so only header lines can have lost one:
 * each header line is tried with one blank, then one tab, put back.
 */
function* trailingWhitespaceStripped(root: MimeNode, nodes: MimeNode[]): Generator<Repair> {
  for (const node of nodes) {
    for (let f = 0; f < node.fields.length; f++) {
      const field = node.fields[f]!;
      for (let l = 0; l < field.lines.length; l++) {
        for (const blank of [' ', '\t']) {
          const lines = field.lines.slice();
          lines[l] = Buffer.concat([lines[l]!, Buffer.from(blank, 'latin1')]);
          const fields = node.fields.slice();
          fields[f] = { name: field.name, lines };
          yield { kind: 'trailing-whitespace-stripped', change: `trailing whitespace stripped from the ${fieldName(field)} header`, nodes: [node], bytes: withHeader(root, node, fields) };
        }
      }
    }
  }
}

/** The nodes whose own bytes (header, or body of a leaf) satisfy `changed`. */
function touched(nodes: MimeNode[], changed: (b: Buffer) => boolean): MimeNode[] {
  return nodes.filter((n) => changed(n.header) || (n.body.kind === 'leaf' && changed(n.body.bytes)));
}

// ---- transfer encodings of leaves ----

interface LeafUndo {
  kind: DamageKind;
  change: string;
  header: Buffer | undefined;
  body: Buffer;
}

function* perLeaf(root: MimeNode, leaves: MimeNode[], undos: (n: MimeNode) => LeafUndo[]): Generator<Repair> {
  const all = leaves.map((n) => ({ node: n, undos: undos(n) })).filter((x) => x.undos.length > 0);
  // A hop that re-encodes usually does it to every part alike: undo it everywhere at once first.
  if (all.length > 1) {
    const edits: Edits = { header: new Map(), leaf: new Map() };
    for (const { node, undos } of all) {
      const u = undos[0]!;
      if (u.header) edits.header!.set(node, u.header);
      edits.leaf!.set(node, u.body);
    }
    const first = all[0]!.undos[0]!;
    yield { kind: first.kind, change: first.change, nodes: all.map((x) => x.node), bytes: serialize(root, edits) };
  }
  for (const { node, undos } of all) {
    for (const u of undos) {
      const edits: Edits = { leaf: new Map([[node, u.body]]) };
      if (u.header) edits.header = new Map([[node, u.header]]);
      yield { kind: u.kind, change: u.change, nodes: [node], bytes: serialize(root, edits) };
    }
  }
}

const isText = (n: MimeNode) => n.type.startsWith('text/');

/** Any byte outside 7-bit ASCII, or NUL (scan() stops at the first unsafe line, so it cannot say). */
function has8bitBytes(b: Buffer): boolean {
  for (let i = 0; i < b.length; i++) if (b[i]! >= 0x80 || b[i] === 0) return true;
  return false;
}

/** The header with Content-Transfer-Encoding set to `cte` (null: removed), spelled as found and as the relay writes it. */
function headersWithCte(node: MimeNode, cte: string | null): Buffer[] {
  const at = node.fields.findIndex((f) => f.name === 'content-transfer-encoding');
  const variants: Buffer[] = [];
  const make = (name: string) => ({ name: 'content-transfer-encoding', lines: [Buffer.from(`${name}: ${cte}`, 'latin1')] });
  if (cte === null) {
    if (at !== -1) variants.push(headerBytes(node.fields.filter((_, k) => k !== at)));
    return variants;
  }
  if (at !== -1) {
    const spelled = fieldName(node.fields[at]!);
    for (const name of new Set([spelled, 'Content-Transfer-Encoding'])) {
      const fields = node.fields.slice();
      fields[at] = make(name);
      variants.push(headerBytes(fields));
    }
  } else {
    // where the relay's prepare puts it: after the last Content-* field
    let last = -1;
    node.fields.forEach((f, k) => f.name.startsWith('content-') && (last = k));
    const fields = node.fields.slice();
    fields.splice(last + 1, 0, make('Content-Transfer-Encoding'));
    variants.push(headerBytes(fields));
  }
  return variants;
}

function encodingUndos(node: MimeNode): LeafUndo[] {
  const body = (node.body as { bytes: Buffer }).bytes;
  const out: LeafUndo[] = [];
  const add = (kind: DamageKind, change: string, cte: string | null, encoded: Buffer) => {
    for (const header of headersWithCte(node, cte)) out.push({ kind, change, header, body: encoded });
  };
  const now = node.cte;
  if (now === '' || now === '7bit' || now === '8bit' || now === 'binary') {
    // decoded in transit: put the encoding back
    const to = has8bitBytes(body) ? '8bit' : '7bit';
    if (isText(node)) add('decoded', `quoted-printable decoded to ${to}`, 'quoted-printable', encodeQuotedPrintable(body));
    add('decoded', `base64 decoded to ${to}`, 'base64', encodeBase64(body));
    if (!isText(node)) add('decoded', `base64 decoded to ${to}`, 'base64', Buffer.concat([encodeBase64(body), CRLF]));
    return out;
  }
  let decoded: Buffer;
  if (now === 'quoted-printable') decoded = decodeQuotedPrintable(body);
  else if (now === 'base64') decoded = decodeBase64(body);
  else return out;
  const plain = !has8bitBytes(decoded);
  // re-encoded in the same encoding (quoted-printable with other line breaks or escapes)
  if (now === 'quoted-printable') {
    const again = encodeQuotedPrintable(decoded);
    if (!again.equals(body)) out.push({ kind: 're-encoded', change: 'quoted-printable re-encoded (other line breaks or escapes)', header: undefined, body: again });
  }
  // re-encoded into the other encoding
  if (now === 'base64' && isText(node)) add('re-encoded', 'quoted-printable re-encoded as base64', 'quoted-printable', encodeQuotedPrintable(decoded));
  if (now === 'quoted-printable') {
    add('re-encoded', 'base64 re-encoded as quoted-printable', 'base64', encodeBase64(decoded));
    add('re-encoded', 'base64 re-encoded as quoted-printable', 'base64', Buffer.concat([encodeBase64(decoded), CRLF]));
  }
  // a 7bit part given an encoding it did not need
  if (plain) {
    const change = `${now} added to a 7bit part`;
    add('re-encoded', change, null, decoded);
    add('re-encoded', change, '7bit', decoded);
  }
  return out;
}

/** Base64 of `data` in lines of `width` characters (0: one line), CRLF between lines. */
function base64Lines(data: Buffer, width: number, trailingCrlf: boolean): Buffer {
  const b64 = data.toString('base64');
  const lines: string[] = [];
  if (width === 0) lines.push(b64);
  else for (let i = 0; i < b64.length; i += width) lines.push(b64.slice(i, i + width));
  return Buffer.from(lines.join('\r\n') + (trailingCrlf ? '\r\n' : ''), 'latin1');
}

function base64Rewraps(node: MimeNode): LeafUndo[] {
  if (node.cte !== 'base64') return [];
  const body = (node.body as { bytes: Buffer }).bytes;
  const text = body.toString('latin1');
  const width = text.split(/\r?\n/)[0]?.length ?? 0;
  const decoded = decodeBase64(body);
  const out: LeafUndo[] = [];
  for (const w of [76, 64, 72, 60, 0]) {
    for (const trailing of [false, true]) {
      const again = base64Lines(decoded, w, trailing);
      if (again.equals(body)) continue;
      out.push({ kind: 'base64-rewrapped', change: `base64 re-wrapped from ${w || 'unbroken'} to ${width} characters per line`, header: undefined, body: again });
    }
  }
  return out;
}

// ---- preamble, epilogue and boundaries of multiparts ----

/** Preambles that mail libraries write (Python email, Thunderbird, Outlook, JavaMail, Perl MIME-tools). */
const KNOWN_PREAMBLES = [
  'This is a multi-part message in MIME format.',
  'This is a multipart message in MIME format.',
  'This is a MIME-encapsulated message',
  'This is a message with multiple parts in MIME format.',
  'This is a multi-part message in MIME format...',
];

function dropLeadingLineBreak(b: Buffer): Buffer {
  if (b[0] === CR && b[1] === LF) return b.subarray(2);
  if (b[0] === LF) return b.subarray(1);
  return b;
}

function* preambleEpilogue(root: MimeNode, node: MimeNode & { body: MultipartBody }): Generator<Repair> {
  const body = node.body;
  const first = body.parts[0]!.delimiter;
  if (body.preamble.length > 0) {
    yield {
      kind: 'preamble-added',
      change: 'preamble added',
      nodes: [node],
      bytes: serialize(root, { preamble: new Map([[node, Buffer.alloc(0)]]), firstDelimiter: new Map([[node, dropLeadingLineBreak(first)]]) }),
    };
  } else {
    for (const text of KNOWN_PREAMBLES) {
      for (const tail of ['', '\r\n']) {
        const startsAtTop = first[0] !== CR && first[0] !== LF;
        yield {
          kind: 'preamble-removed',
          change: 'preamble removed',
          nodes: [node],
          bytes: serialize(root, {
            preamble: new Map([[node, Buffer.from(text + tail, 'latin1')]]),
            firstDelimiter: new Map([[node, startsAtTop ? Buffer.concat([CRLF, first]) : first]]),
          }),
        };
      }
    }
  }
  const closeEndsLine = body.close[body.close.length - 1] === LF;
  if (body.epilogue.length > 0) {
    for (const close of closeEndsLine ? [body.close, body.close.subarray(0, body.close.length - (body.close[body.close.length - 2] === CR ? 2 : 1))] : [body.close]) {
      yield { kind: 'epilogue-added', change: 'epilogue added', nodes: [node], bytes: serialize(root, { epilogue: new Map([[node, Buffer.alloc(0)]]), close: new Map([[node, close]]) }) };
    }
  } else if (!closeEndsLine) {
    yield { kind: 'epilogue-removed', change: 'epilogue (the line break after the close delimiter) removed', nodes: [node], bytes: serialize(root, { close: new Map([[node, Buffer.concat([body.close, CRLF])]]) }) };
  }
}

/**
 * The boundary a body's own delimiter lines use: of the "--X" lines that also have a "--X--"
 * line, the one that comes first (a nested multipart's delimiters come after the first one of
 * its parent).
 */
export function delimiterInUse(body: Buffer): string | undefined {
  const lines = body.toString('latin1').split(/\r?\n/).map((l) => l.replace(/[ \t\r]+$/, ''));
  for (const line of lines) {
    if (!line.startsWith('--') || line.length < 3 || line.length > 72) continue;
    const b = line.endsWith('--') ? line.slice(2, -2) : line.slice(2);
    if (b && lines.includes(`--${b}--`) && lines.includes(`--${b}`)) return b;
  }
  return undefined;
}

function* boundaryMismatch(root: MimeNode, node: MimeNode): Generator<Repair> {
  if (!node.type.startsWith('multipart/') || node.body.kind !== 'leaf') return;
  const ctField = node.fields.find((f) => f.name === 'content-type');
  const declared = ctField ? parseContentType(fieldValue(ctField))?.params.get('boundary')?.value : undefined;
  const used = delimiterInUse(node.body.bytes);
  if (!declared || !used || used === declared) return;
  const change = `boundary changed (the Content-Type names "${declared}" but the delimiters use "${used}")`;
  // either the parameter or the delimiter lines were rewritten
  const header = Buffer.from(node.header.toString('latin1').split(declared).join(used), 'latin1');
  yield { kind: 'boundary-changed', change, nodes: [node], bytes: serialize(root, { header: new Map([[node, header]]) }) };
  const text = node.body.bytes.toString('latin1');
  const restored = text.replace(new RegExp(`(^|\\n)--${escapeRegExp(used)}(--)?(?=[ \\t]*\\r?(\\n|$))`, 'g'), (_m, pre: string, close: string | undefined) => `${pre}--${declared}${close ?? ''}`);
  yield { kind: 'boundary-changed', change, nodes: [node], bytes: serialize(root, { leaf: new Map([[node, Buffer.from(restored, 'latin1')]]) }) };
}

const escapeRegExp = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

// ---- header blocks of parts ----

function fieldName(field: HeaderField): string {
  const first = field.lines[0]?.toString('latin1') ?? '';
  const colon = first.indexOf(':');
  return colon === -1 ? first : first.slice(0, colon).trimEnd();
}

function headerBytes(fields: HeaderField[]): Buffer {
  const out: Buffer[] = [];
  for (const f of fields) for (const l of f.lines) out.push(l, CRLF);
  out.push(CRLF);
  return Buffer.concat(out);
}

function withHeader(root: MimeNode, node: MimeNode, fields: HeaderField[]): Buffer {
  return serialize(root, { header: new Map([[node, headerBytes(fields)]]) });
}

function renamed(field: HeaderField, name: string): HeaderField {
  const first = field.lines[0]!.toString('latin1');
  const lines = field.lines.slice();
  lines[0] = Buffer.from(name + first.slice(fieldName(field).length), 'latin1');
  return { name: field.name, lines };
}

const CANONICAL: ReadonlyMap<string, string> = new Map([
  ['mime-version', 'MIME-Version'],
  ['content-id', 'Content-ID'],
  ['message-id', 'Message-ID'],
]);
const titleCase = (n: string) => CANONICAL.get(n) ?? n.replace(/(^|-)([a-z])/g, (_m, d: string, c: string) => d + c.toUpperCase());
const firstUpper = (n: string) => n.charAt(0).toUpperCase() + n.slice(1);

function* headerUndos(root: MimeNode, node: MimeNode): Generator<Repair> {
  const fields = node.fields;
  if (fields.length === 0 || fields.some((f) => f.name === '')) return;

  // re-cased: every name in one style, then one field at a time
  for (const style of [titleCase, firstUpper, (n: string) => n, (n: string) => n.toUpperCase()]) {
    const recased = fields.map((f) => renamed(f, style(f.name)));
    if (recased.every((f, k) => fieldName(f) === fieldName(fields[k]!))) continue;
    yield { kind: 'header-recased', change: `header field names re-cased (now ${fields.map(fieldName).join(', ')})`, nodes: [node], bytes: withHeader(root, node, recased) };
  }
  for (let k = 0; k < fields.length; k++) {
    for (const style of [titleCase, firstUpper, (n: string) => n]) {
      const name = style(fields[k]!.name);
      if (name === fieldName(fields[k]!)) continue;
      const one = fields.slice();
      one[k] = renamed(fields[k]!, name);
      yield { kind: 'header-recased', change: `header field name re-cased: ${fieldName(fields[k]!)} (signed as ${name})`, nodes: [node], bytes: withHeader(root, node, one) };
    }
  }

  // refolded: unfolded where it was folded, or folded where it was one line
  for (let k = 0; k < fields.length; k++) {
    const f = fields[k]!;
    const name = fieldName(f);
    for (const lines of refoldings(f)) {
      const one = fields.slice();
      one[k] = { name: f.name, lines };
      yield { kind: 'header-refolded', change: `header ${name} refolded`, nodes: [node], bytes: withHeader(root, node, one) };
    }
  }

  // reordered: every other order of a short header block
  if (fields.length >= 2 && fields.length <= 6) {
    for (const order of permutations(fields.length)) {
      if (order.every((v, k) => v === k)) continue;
      // order[k]: where the field now at k stood when it was signed
      const signed: HeaderField[] = new Array(fields.length);
      order.forEach((was, now) => (signed[was] = fields[now]!));
      yield {
        kind: 'header-reordered',
        change: `header fields reordered (now ${fields.map(fieldName).join(', ')}; signed as ${signed.map(fieldName).join(', ')})`,
        nodes: [node],
        bytes: withHeader(root, node, signed),
      };
    }
  }
}

/** Other foldings of one field: unfolded, and folded before each parameter with the usual whitespace. */
function refoldings(field: HeaderField): Buffer[][] {
  const out: Buffer[][] = [];
  const joined = field.lines.map((l) => l.toString('latin1')).join('\r\n');
  const unfolded = joined.replace(/\r\n/g, '');
  const spaced = joined.replace(/\r\n[ \t]+/g, ' ');
  const toLines = (s: string) => s.split('\r\n').map((l) => Buffer.from(l, 'latin1'));
  if (field.lines.length > 1) {
    out.push(toLines(unfolded));
    if (spaced !== unfolded) out.push(toLines(spaced));
  }
  const base = field.lines.length > 1 ? spaced : joined;
  const cuts = [...base.matchAll(/;[ \t]*/g)].map((m) => ({ at: m.index!, len: m[0].length }));
  if (cuts.length === 0 || cuts.length > 12) return out;
  for (const sep of ['\r\n\t', '\r\n ', '\r\n  ', '\r\n    ']) {
    const fold = (which: (k: number) => boolean) => {
      let s = '';
      let from = 0;
      cuts.forEach((c, k) => {
        s += base.slice(from, c.at + 1) + (which(k) ? sep : base.slice(c.at + 1, c.at + c.len));
        from = c.at + c.len;
      });
      return s + base.slice(from);
    };
    out.push(toLines(fold(() => true)));
    if (cuts.length > 1) for (let k = 0; k < cuts.length; k++) out.push(toLines(fold((j) => j === k)));
  }
  return out.filter((lines) => lines.map((l) => l.toString('latin1')).join('\r\n') !== joined);
}

function* permutations(n: number): Generator<number[]> {
  const a = Array.from({ length: n }, (_, k) => k);
  const c = new Array<number>(n).fill(0);
  yield a.slice();
  let i = 0;
  while (i < n) {
    if (c[i]! < i) {
      const j = i % 2 === 0 ? 0 : c[i]!;
      [a[j], a[i]] = [a[i]!, a[j]!];
      yield a.slice();
      c[i]!++;
      i = 0;
    } else {
      c[i] = 0;
      i++;
    }
  }
}
