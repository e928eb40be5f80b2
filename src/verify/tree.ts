import { splitMultipart } from '../mime/entity.js';
import { fieldValue, parseContentType, parseTransferEncoding, readHeaderBlock, DEFAULT_MAX_HEADER_BYTES, type HeaderField } from '../mime/header.js';

/**
 * The signed part as a lossless tree of byte ranges, so diagnose can replace one piece (a part's
 * header, a body, a preamble) and hash the result: concatenating every piece gives back the
 * input byte for byte. Positions are numbered as IMAP and mail clients do: the signed part is
 * "1", its children "1.1", "1.2", theirs "1.2.1".
 */
export interface MimeNode {
  readonly position: string;
  /** The header block including the empty line that ends it (empty when the part has no header). */
  readonly header: Buffer;
  readonly fields: HeaderField[];
  /** "type/subtype" as declared (or the RFC 2045 default). */
  readonly type: string;
  readonly filename: string | undefined;
  /** Content-Transfer-Encoding, lower-cased; "" when absent. */
  readonly cte: string;
  readonly body: LeafBody | MultipartBody;
}

export interface LeafBody {
  readonly kind: 'leaf';
  readonly bytes: Buffer;
}

export interface MultipartBody {
  readonly kind: 'multipart';
  readonly boundary: string;
  /** Text before the first delimiter ("" when the delimiter opens the body). */
  readonly preamble: Buffer;
  /** Each delimiter line as written (with the line break in front of it, which belongs to it) and the part after it. */
  readonly parts: { readonly delimiter: Buffer; readonly node: MimeNode }[];
  /** The close delimiter as written, with the line breaks around it. */
  readonly close: Buffer;
  /** Everything after the close delimiter line. */
  readonly epilogue: Buffer;
}

const MAX_PARTS = 1000;
const MAX_DEPTH = 20;

/** Reads `bytes` as one MIME entity at `position`. A multipart whose boundary delimits nothing stays a leaf. */
export function readTree(bytes: Buffer, position = '1'): MimeNode {
  const count = { parts: 0 };
  return readNode(bytes, position, 'text/plain', 0, count);
}

function readNode(bytes: Buffer, position: string, defaultType: string, depth: number, count: { parts: number }): MimeNode {
  count.parts++;
  const block = readHeaderBlock(bytes, 0, bytes.length, DEFAULT_MAX_HEADER_BYTES);
  const fields = block.fields;
  const header = bytes.subarray(0, block.bodyStart);
  const body = bytes.subarray(block.bodyStart);
  const ctField = fields.find((f) => f.name === 'content-type');
  const ct = parseContentType(ctField ? fieldValue(ctField) : defaultType) ?? parseContentType(defaultType)!;
  const type = `${ct.type}/${ct.subtype}`;
  const cteField = fields.find((f) => f.name === 'content-transfer-encoding');
  const cte = cteField ? parseTransferEncoding(fieldValue(cteField)) : '';
  const disposition = fields.find((f) => f.name === 'content-disposition');
  const filename = (disposition ? parseContentType(fieldValue(disposition), false)?.params.get('filename')?.value : undefined) ?? ct.params.get('name')?.value;
  const node = { position, header, fields, type, filename: filename === undefined ? undefined : Buffer.from(filename, 'latin1').toString('utf8'), cte };

  const boundary = ct.params.get('boundary')?.value;
  const split = ct.type === 'multipart' && boundary && depth < MAX_DEPTH ? splitMultipart(body, boundary) : null;
  if (!split || count.parts + split.parts.length > MAX_PARTS) return { ...node, body: { kind: 'leaf', bytes: body } };

  // Every piece is a view of `body`; the gaps between them are the delimiters as written.
  const at = (b: Buffer) => b.byteOffset - body.byteOffset;
  const parts: { delimiter: Buffer; node: MimeNode }[] = [];
  let pos = split.preamble ? split.preamble.length : 0;
  const childType = ct.subtype === 'digest' ? 'message/rfc822' : 'text/plain';
  split.parts.forEach((part, k) => {
    parts.push({ delimiter: body.subarray(pos, at(part)), node: readNode(part, `${position}.${k + 1}`, childType, depth + 1, count) });
    pos = at(part) + part.length;
  });
  const epilogueStart = split.epilogue ? at(split.epilogue) : body.length;
  return {
    ...node,
    body: {
      kind: 'multipart',
      boundary: boundary!,
      preamble: body.subarray(0, split.preamble ? split.preamble.length : 0),
      parts,
      close: body.subarray(pos, epilogueStart),
      epilogue: body.subarray(epilogueStart),
    },
  };
}

/** Replacement pieces for a serialization; anything not named is written as it was read. */
export interface Edits {
  header?: Map<MimeNode, Buffer>;
  leaf?: Map<MimeNode, Buffer>;
  preamble?: Map<MimeNode, Buffer>;
  /** Replaces the first delimiter of a multipart (its line break depends on the preamble). */
  firstDelimiter?: Map<MimeNode, Buffer>;
  close?: Map<MimeNode, Buffer>;
  epilogue?: Map<MimeNode, Buffer>;
  /** A whole multipart body written anew (a boundary restored in every delimiter). */
  body?: Map<MimeNode, Buffer>;
}

export function serialize(node: MimeNode, edits: Edits = {}): Buffer {
  const out: Buffer[] = [];
  write(node, edits, out);
  return Buffer.concat(out);
}

function write(node: MimeNode, edits: Edits, out: Buffer[]): void {
  out.push(edits.header?.get(node) ?? node.header);
  const whole = edits.body?.get(node);
  if (whole) {
    out.push(whole);
    return;
  }
  const body = node.body;
  if (body.kind === 'leaf') {
    out.push(edits.leaf?.get(node) ?? body.bytes);
    return;
  }
  out.push(edits.preamble?.get(node) ?? body.preamble);
  body.parts.forEach((p, k) => {
    out.push(k === 0 ? (edits.firstDelimiter?.get(node) ?? p.delimiter) : p.delimiter);
    write(p.node, edits, out);
  });
  out.push(edits.close?.get(node) ?? body.close, edits.epilogue?.get(node) ?? body.epilogue);
}

/** Every node, depth first, the root included. */
export function nodesOf(root: MimeNode): MimeNode[] {
  const out: MimeNode[] = [];
  const visit = (n: MimeNode) => {
    out.push(n);
    if (n.body.kind === 'multipart') for (const p of n.body.parts) visit(p.node);
  };
  visit(root);
  return out;
}

/** "part 1.2 (application/pdf, "report.pdf")": how diagnose names a part. */
export function describeNode(node: MimeNode): string {
  return `part ${node.position} (${node.type}${node.filename ? `, "${node.filename}"` : ''})`;
}
