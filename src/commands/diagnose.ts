import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { pemBlocks } from '../certs/bundle.js';
import { diagnose, type Diagnosis } from '../verify/diagnose.js';

export const DIAGNOSE_HELP = `Usage: smime-relay diagnose FILE [--ca FILE] [--json]

Checks a signed message as it arrived (saved from the mail client, or taken from the mailbox;
FILE - reads standard input) and, when the signature no longer verifies, says which part changed
and how: transfer encoding decoded or re-encoded, base64 re-wrapped, line endings, trailing
whitespace, a part header refolded, re-cased or reordered, preamble or epilogue, the boundary.
Outer headers (Received:, a tagged Subject:) are not signed, so changing them is fine; so is a
copy saved with LF line endings.

Options:
  --ca FILE   PEM file with the CA certificate(s) to trust; then an untrusted chain, a certificate
              that was not valid at signing time, or a From address not in the certificate makes
              the exit status 1 (without --ca they are reported but do not change it)
  --json      print the diagnosis as JSON
  -h, --help  show this help

Exit status: 0 intact, 1 broken (or not trusted, with --ca), 2 not a signed message or unreadable.
`;

export interface DiagnoseIo {
  read(path: string): Buffer;
  out(text: string): void;
  error(line: string): void;
}

const defaultIo: DiagnoseIo = {
  read: (path) => readFileSync(path === '-' ? 0 : path),
  out: (text) => process.stdout.write(text),
  error: (line) => process.stderr.write(`smime-relay diagnose: ${line}\n`),
};

export async function diagnoseCommand(argv: string[], io: DiagnoseIo = defaultIo): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    options: { ca: { type: 'string' }, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
    allowPositionals: true,
  });
  if (values.help) {
    io.out(DIAGNOSE_HELP);
    return 0;
  }
  if (positionals.length !== 1) {
    io.error(`expected exactly one FILE, got ${positionals.length}. See smime-relay diagnose --help.`);
    return 2;
  }
  let ca: X509Certificate[] | undefined;
  let message: Buffer;
  try {
    if (values.ca) ca = readCa(values.ca, io);
    message = io.read(positionals[0]!);
  } catch (e) {
    io.error((e as Error).message);
    return 2;
  }
  const d = diagnose(message, { ca });
  io.out(values.json ? JSON.stringify(d, null, 2) + '\n' : render(d, ca !== undefined));
  return d.exitCode;
}

function readCa(path: string, io: DiagnoseIo): X509Certificate[] {
  const certs = pemBlocks(io.read(path).toString('utf8'))
    .filter((b) => b.label === 'CERTIFICATE')
    .map((b) => new X509Certificate(b.text));
  if (!certs.length) throw new Error(`--ca ${path}: no PEM certificate in the file`);
  return certs;
}

const iso = (d: Date) => d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC');

/** The human form: the verdict first, then one labelled fact per line. */
export function render(d: Diagnosis, withCa: boolean): string {
  const lines = [d.summary];
  const row = (label: string, text: string) => lines.push(`  ${(label + ':').padEnd(9)} ${text}`);
  if (d.change) {
    row('change', d.change.description);
    for (const p of d.change.parts) row('part', p.text);
  }
  if (d.signer) {
    row('signer', `${d.signer.subject} (issued by ${d.signer.issuer}, serial ${d.signer.serial})`);
    row('mailbox', d.signer.mailboxes.join(', ') || '(none in the certificate)');
    row('signed', d.signer.signingTime ? iso(d.signer.signingTime) : '(no signing time in the signature)');
  }
  if (d.trust) {
    if (d.trust.chainTrusted === undefined) row('chain', `${d.trust.path.join(' → ')} (not judged: give --ca FILE to check it)`);
    else row('chain', `${d.trust.path.join(' → ')} (${d.trust.chainTrusted ? 'trusted' : 'NOT trusted'})`);
    for (const p of d.trust.problems) row(withCa ? 'trust' : 'warning', p.message);
  }
  for (const h of d.protectedHeaders ?? []) row('header', `${h.name}: signed "${h.signed}", outer "${h.outer}"`);
  for (const n of d.notes) row('note', n);
  return lines.join('\n') + '\n';
}
