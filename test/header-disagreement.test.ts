/**
 * Issue 10, item 3: proved by disagreement. fast-check generates hostile header blocks
 * (test/support/hostile-headers.ts). Each one is either refused (550 5.7.1 or 554 5.6.0, never
 * anything else), or forwarded with an outer header that four readers read the same way:
 * mailparser, Python's policy.default, Python's getaddresses, and the relay's own admission: one
 * From, exactly the covered mailbox, no other address in From/Sender/Resent-*, and (signed mail)
 * one outer Content-Type, multipart/signed.
 *
 * The outgoing bytes come from the real Pipeline (real certificate store, native engine), with
 * only the upstream replaced by one that keeps what it is given; the SMTP wire path (smtp-server
 * in, nodemailer out) runs the same property a few hundred times in test/admit-header-smtp.test.ts.
 * And the property is shown to have teeth: with a weakened admission (the old lenient one, a
 * lenient mailbox parser, no display-name check, or the received bytes forwarded) it finds a
 * counterexample.
 */
import fc from 'fast-check';
import addressparser from 'nodemailer/lib/addressparser';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { admitHeader, type AdmittedMessage, type HeaderPolicy } from '../src/admit/header.js';
import { parseMailbox, type MailboxParser } from '../src/admit/mailbox-syntax.js';
import { openCertificateStore, type CertificateStore } from '../src/certs/store.js';
import { readHeaderBlock } from '../src/mime/header.js';
import { toMailbox, type Mailbox } from '../src/mime/mailbox.js';
import { Pipeline, type PipelineDeps } from '../src/pipeline.js';
import { RelayError, replies } from '../src/replies.js';
import { NativeEngine } from '../src/signing/native.js';
import { COVERED, hostileMessage, type HostileMessage } from './support/hostile-headers.js';
import { KeepingUpstream } from './support/keeping-upstream.js';
import { createTestPki, type TestPki } from './support/pki.js';
import { PythonEmail, requirePython } from './support/python-email.js';
import { allViews, disagreements } from './support/sender-views.js';

const HAVE_PYTHON = requirePython('the header disagreement property test needs Python email as one of its parsers');
const RUNS = Number(process.env.HEADER_PROPERTY_RUNS ?? 2500);
const MAILBOX = COVERED as Mailbox;

let pki: TestPki;
let certs: CertificateStore;
let engine: NativeEngine;
let python: PythonEmail;
const log = pino({ level: 'silent' });

beforeAll(async () => {
  pki = await createTestPki({ keyType: 'ec' });
  const leaf = await pki.issueLeaf('notify', { emails: [COVERED], keyType: 'ec' });
  certs = openCertificateStore({ path: leaf.bundlePath, log });
  engine = new NativeEngine();
  if (HAVE_PYTHON) python = new PythonEmail();
});

afterAll(async () => {
  await python?.close();
  certs?.close();
  await engine?.close();
  await pki?.cleanup();
});

type Admission = NonNullable<PipelineDeps['admitHeader']>;

/** Runs one message through a real pipeline; the forwarded bytes, or the refusal. */
async function relay(msg: HostileMessage, admission?: Admission): Promise<{ code: number; text: string; forwarded?: Buffer }> {
  const upstream = new KeepingUpstream();
  const pipeline = new Pipeline({
    certs,
    engine,
    upstream,
    log,
    options: { signing: msg.signing, headerProtection: 'off' },
    ...(admission ? { admitHeader: admission } : {}),
  });
  const reply = await pipeline.process({
    id: 'prop',
    envelope: { from: COVERED, to: ['a@example.org'], smtputf8: msg.smtputf8 },
    raw: msg.raw,
    client: { address: '127.0.0.1' },
  });
  return { code: reply.code, text: `${reply.code} ${reply.status} ${reply.text}`, forwarded: reply.code === 250 ? upstream.last : undefined };
}

interface Tally {
  forwarded: number;
  refused: number;
  benign: number;
}

/**
 * The property: refused with a 550 5.7.1 / 554 5.6.0 (never a benign message), or forwarded and
 * read alike by every parser.
 */
function property(tally: Tally, admission?: Admission) {
  return fc.asyncProperty(hostileMessage, async (msg) => {
    const result = await relay(msg, admission);
    if (msg.benign) tally.benign++;
    if (!result.forwarded) {
      tally.refused++;
      // anything else (451 internal error, 250 without delivery) is a bug, not a refusal
      expect(result.text).toMatch(/^(550 5\.7\.1|554 5\.6\.0) /);
      expect(msg.benign, `a legitimate message was refused: ${result.text}`).toBe(false);
      return;
    }
    tally.forwarded++;
    const views = await allViews(result.forwarded, python, [MAILBOX], msg.smtputf8);
    const problems = disagreements(views, { mailbox: MAILBOX, contentType: msg.signing === 'on' ? 'multipart/signed' : undefined });
    expect(problems, `forwarded:\n${result.forwarded.toString('latin1').slice(0, 1500)}`).toEqual([]);
  });
}

describe.skipIf(!HAVE_PYTHON)('hostile header blocks: refused, or read alike by mailparser, Python (two ways) and the relay', () => {
  it(`holds for ${RUNS} generated messages`, { timeout: 240_000 }, async () => {
    const tally: Tally = { forwarded: 0, refused: 0, benign: 0 };
    await fc.assert(property(tally), { numRuns: RUNS });
    // Neither half may be vacuous: about a quarter of the messages are legitimate (each of them
    // must be forwarded, above), and most of the rest must be refused.
    expect(tally.benign, JSON.stringify(tally)).toBeGreaterThan(RUNS * 0.15);
    expect(tally.forwarded, JSON.stringify(tally)).toBeGreaterThan(RUNS * 0.15);
    expect(tally.refused, JSON.stringify(tally)).toBeGreaterThan(RUNS * 0.4);
  });

  /**
   * Weakened admissions: each must turn the property red. `endOnFailure` keeps the run short
   * (no shrinking); the counterexample is printed so the catch can be read.
   */
  const weakened: [string, Admission][] = [
    ['the admission before issue 10 (lenient reader, addressparser, raw bytes forwarded)', legacyAdmission],
    ['the canonical header with a lenient mailbox parser (addressparser)', (raw, policy) => admitHeader(raw, policy, lenientParser)],
    ['the strict parser without the display-name check', (raw, policy) => admitHeader(raw, policy, blindParser)],
    ['the canonical header checked, but the received bytes forwarded', (raw, policy) => ({ ...admitHeader(raw, policy), message: raw })],
  ];
  it.each(weakened)('finds a counterexample with %s', { timeout: 120_000 }, async (_name, admission) => {
    const result = await fc.check(property({ forwarded: 0, refused: 0, benign: 0 }, admission), { numRuns: 3000, endOnFailure: true });
    expect(result.failed, 'the weakened admission was not caught').toBe(true);
    const example = result.counterexample?.[0] as HostileMessage | undefined;
    console.log(`caught after ${result.numRuns} runs: ${JSON.stringify(example?.raw.toString('latin1').slice(0, 300))}`);
  });
});

/** The From check as it was before issue 10: LF/CRLF reader, nodemailer's addressparser, received bytes forwarded. */
function legacyAdmission(raw: Buffer, policy: HeaderPolicy): AdmittedMessage {
  const fields = readHeaderBlock(raw, 0, raw.length, 256 * 1024).fields;
  const values = fields.filter((f) => f.name === 'from').map((f) => Buffer.concat(f.lines).toString('utf8').replace(/^[^:]*:/, ''));
  if (values.length !== 1) throw new RelayError(replies.fromHeaderInvalid(`appears ${values.length} times`));
  const addresses = addressparser(values[0]!, { flatten: true }).map((a) => a.address).filter(Boolean);
  if (addresses.length !== 1) throw new RelayError(replies.fromHeaderInvalid(`names ${addresses.length} addresses`));
  const mailbox = toMailbox(addresses[0]!);
  if (!policy.covered.includes(mailbox)) throw new RelayError(replies.fromHeaderNotCovered(mailbox, policy.covered));
  return { message: raw, from: mailbox };
}

/** nodemailer's addressparser in place of the strict reader: one address, its name as the shown text. */
const lenientParser: MailboxParser = (value) => {
  const found = addressparser(value, { flatten: true }).filter((a) => a.address);
  if (found.length !== 1) return { ok: false, problem: `names ${found.length} addresses` };
  return { ok: true, mailbox: { address: found[0]!.address, shown: [found[0]!.name] } };
};

/** The strict reader, but reporting no shown text, so display names and comments go unchecked. */
const blindParser: MailboxParser = (value) => {
  const parsed = parseMailbox(value);
  return parsed.ok ? { ok: true, mailbox: { address: parsed.mailbox.address, shown: [] } } : parsed;
};
