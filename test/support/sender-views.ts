import { simpleParser, type AddressObject, type EmailAddress } from 'mailparser';
import { admitHeader, foldedValue } from '../../src/admit/header.js';
import { canonicalHeader } from '../../src/admit/header-block.js';
import { parseMailbox } from '../../src/admit/mailbox-syntax.js';
import { parseContentType, fieldValue } from '../../src/mime/header.js';
import type { Mailbox } from '../../src/mime/mailbox.js';
import type { PythonEmail, PythonField } from './python-email.js';

/**
 * Who sent a forwarded message, as several independent parsers read it, and whether they all read
 * it as the relay promised: one From, exactly the signed mailbox, no other address anywhere in
 * From/Sender/Resent-From/Resent-Sender (display names and comments decoded as each parser does),
 * and one outer Content-Type of the expected type.
 */

export const SENDER_FIELDS = ['from', 'sender', 'resent-from', 'resent-sender'] as const;
type SenderField = (typeof SENDER_FIELDS)[number];

interface FieldView {
  addresses: { name: string; address: string }[];
  /** The field holds a group, or the parser could not read it. */
  broken?: string;
}

export interface SenderView {
  parser: string;
  fields: Record<SenderField, FieldView[]>;
  contentTypes: number;
  contentType: string;
}

export interface Expectation {
  mailbox: Mailbox;
  /** 'multipart/signed' for signed mail; undefined for mail passed through (at most one Content-Type). */
  contentType?: string;
}

/** Every way the message disagrees with the expectation, per parser; empty when all agree. */
export function disagreements(views: readonly SenderView[], expect: Expectation): string[] {
  const problems: string[] = [];
  for (const view of views) {
    const say = (p: string) => problems.push(`${view.parser}: ${p}`);
    if (view.fields.from.length !== 1) say(`${view.fields.from.length} From fields`);
    for (const field of SENDER_FIELDS) {
      for (const f of view.fields[field]) {
        if (f.broken) say(`${field}: ${f.broken}`);
        if (f.addresses.length !== 1) say(`${field} holds ${f.addresses.length} addresses: ${JSON.stringify(f.addresses)}`);
        for (const { name, address } of f.addresses) {
          if (address.toLowerCase() !== expect.mailbox) say(`${field} address ${JSON.stringify(address)}`);
          const other = otherAddressIn(name, expect.mailbox);
          if (other) say(`${field} display name ${JSON.stringify(name)} shows ${JSON.stringify(other)}`);
        }
      }
    }
    if (expect.contentType) {
      if (view.contentTypes !== 1) say(`${view.contentTypes} outer Content-Type fields`);
      if (view.contentType !== expect.contentType) say(`outer type ${view.contentType}`);
    } else if (view.contentTypes > 1) {
      say(`${view.contentTypes} outer Content-Type fields`);
    }
  }
  return problems;
}

/**
 * An address-like word other than `mailbox` in displayed text. Written for the test, on purpose
 * independently of src/admit/shown-addresses.ts: any run of characters around an "@" (fullwidth
 * forms folded by NFKC) that is not the mailbox itself.
 */
export function otherAddressIn(text: string, mailbox: string): string | undefined {
  for (const form of [text, text.normalize('NFKC')]) {
    // ASCII blanks only: a client does not show U+FEFF, so it must not end a word here either
    for (const m of form.matchAll(/[^ \t<>()[\]",;:]*@[^ \t<>()[\]",;:]*/g)) {
      if (m[0] !== '@' && m[0].toLowerCase() !== mailbox) return m[0];
    }
  }
  return undefined;
}

const MAILPARSER_OPTIONS = { skipHtmlToText: true, skipTextToHtml: true, skipImageLinks: true, skipTextLinks: true } as const;

export async function mailparserView(raw: Buffer): Promise<SenderView> {
  const parsed = await simpleParser(raw, MAILPARSER_OPTIONS);
  const fields = emptyFields();
  for (const line of parsed.headerLines) {
    if (!(SENDER_FIELDS as readonly string[]).includes(line.key)) continue;
    // mailparser reads From and Sender as addresses; Resent-* it keeps as text, so they are read
    // through the same code path as a From of their own.
    const value = line.line.slice(line.line.indexOf(':') + 1).replace(/\r?\n/g, '');
    const alone = await simpleParser(Buffer.from(`From:${value}\r\n\r\n`, 'utf8'), MAILPARSER_OPTIONS);
    fields[line.key as SenderField].push(fromAddressObject(alone.from));
  }
  const ct = parsed.headers.get('content-type') as { value?: string } | undefined;
  return {
    parser: 'mailparser',
    fields,
    contentTypes: parsed.headerLines.filter((l) => l.key === 'content-type').length,
    contentType: ct?.value ?? '',
  };
}

function fromAddressObject(obj: AddressObject | undefined): FieldView {
  const out: FieldView = { addresses: [] };
  const walk = (list: EmailAddress[]) => {
    for (const a of list) {
      if (a.group) {
        out.broken = `a group ${JSON.stringify(a.name)}`;
        walk(a.group);
      } else {
        out.addresses.push({ name: a.name ?? '', address: a.address ?? '' });
      }
    }
  };
  walk(obj?.value ?? []);
  return out;
}

/** policy.default and getaddresses, as two views. */
export async function pythonViews(raw: Buffer, python: PythonEmail): Promise<SenderView[]> {
  const view = await python.parse(raw);
  if (view.error) throw new Error(`python3 could not read the message: ${view.error}`);
  const convert = (fields: Record<SenderField, PythonField[]>): Record<SenderField, FieldView[]> => {
    const out = emptyFields();
    for (const f of SENDER_FIELDS) {
      out[f] = fields[f].map((p) => ({
        addresses: (p.addresses ?? []).map(([name, address]) => ({ name, address })),
        ...(p.error ? { broken: p.error } : p.groups?.length ? { broken: `a group ${JSON.stringify(p.groups)}` } : {}),
      }));
    }
    return out;
  };
  const contentTypes = view.contentTypes.length;
  return [
    { parser: 'python policy.default', fields: convert(view.default), contentTypes, contentType: view.contentType },
    { parser: 'python getaddresses', fields: convert(view.getaddresses), contentTypes, contentType: view.contentType },
  ];
}

/** The relay's own reading: the output admitted again (unchanged, same mailbox), and its fields by the strict parser. */
export function relayView(raw: Buffer, covered: readonly Mailbox[], smtputf8: boolean): SenderView {
  const fields = emptyFields();
  let refusal: string | undefined;
  try {
    const again = admitHeader(raw, { covered, smtputf8 });
    if (again.message !== raw) refusal = 'admitting the forwarded message again changed it';
  } catch (e) {
    refusal = `the relay refuses its own output: ${(e as Error).message}`;
  }
  let header: ReturnType<typeof canonicalHeader>;
  try {
    header = canonicalHeader(raw, { smtputf8 });
  } catch (e) {
    fields.from.push({ addresses: [], broken: `the relay cannot read its own output: ${(e as Error).message}` });
    return { parser: 'relay', fields, contentTypes: 0, contentType: '' };
  }
  for (const f of header.fields) {
    if (!(SENDER_FIELDS as readonly string[]).includes(f.name)) continue;
    const parsed = parseMailbox(foldedValue(f));
    fields[f.name as SenderField].push(
      parsed.ok
        ? { addresses: [{ name: parsed.mailbox.shown.join(' '), address: parsed.mailbox.address }], ...(refusal ? { broken: refusal } : {}) }
        : { addresses: [], broken: parsed.problem },
    );
  }
  if (refusal && fields.from.length === 0) fields.from.push({ addresses: [], broken: refusal });
  const types = header.fields.filter((f) => f.name === 'content-type');
  const ct = types[0] && parseContentType(fieldValue(types[0]));
  return { parser: 'relay', fields, contentTypes: types.length, contentType: ct ? `${ct.type}/${ct.subtype}` : 'text/plain' };
}

function emptyFields(): Record<SenderField, FieldView[]> {
  return { from: [], sender: [], 'resent-from': [], 'resent-sender': [] };
}

/** Every view of one forwarded message. */
export async function allViews(raw: Buffer, python: PythonEmail, covered: readonly Mailbox[], smtputf8: boolean): Promise<SenderView[]> {
  return [relayView(raw, covered, smtputf8), await mailparserView(raw), ...(await pythonViews(raw, python))];
}
