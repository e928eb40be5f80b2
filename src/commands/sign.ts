import { readFileSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { admitHeader } from '../admit/header.js';
import type { CertificateBundle } from '../certs/bundle.js';
import { loadPath } from '../certs/load.js';
import { validityFindings } from '../certs/validate.js';
import { ConfigError, loadConfig } from '../config/load.js';
import { alreadyProtected } from '../mime/already-protected.js';
import { signMessage } from '../mime/multipart-signed.js';
import { MimeError, prepareMessage } from '../mime/prepare.js';
import type { SigningEngine } from '../signing/engine.js';
import { createEngine } from '../signing/create.js';
import type { KeySource } from '../signing/key.js';
import { tokenFromConfig } from '../signing/pkcs11/from-config.js';
import { RelayError } from '../replies.js';

export const SIGN_HELP = `Usage: smime-relay sign --cert PATH [--in FILE] [--out FILE] [options]

Signs one message file the way the relay signs mail in transit: the same sender check, the same
7-bit preparation and the same signing engine. The message is read from --in (default: standard
input) and the signed message is written to --out (default: standard output).

Options:
  --cert PATH                 PEM bundle (key, certificate, chain), PKCS#12 file, or a directory of
                              them (default: SMIME_RELAY_CERT)
  --in FILE                   message to sign (default: standard input)
  --out FILE                  where to write the signed message (default: standard output)
  --engine openssl|native     signing engine (default: SMIME_RELAY_ENGINE, else native)
  --header-protection off|clear
                              copy From, To, Subject... into the signed part, RFC 9788
                              (default: SMIME_RELAY_HEADER_PROTECTION, else off)
  -h, --help                  show this help

A certificate given without its private key is signed with the key on the PKCS#11 token that
SMIME_RELAY_PKCS11_MODULE, SMIME_RELAY_PKCS11_TOKEN and SMIME_RELAY_PKCS11_PIN_FILE name.

Exit status: 0 signed (or already signed/encrypted and copied unchanged), 1 refused or failed
(for example: the From address is not covered by the certificate), 2 usage error.
`;

export interface SignIo {
  readInput(path: string | undefined): Buffer;
  writeOutput(path: string | undefined, data: Buffer): void;
  error(line: string): void;
}

const defaultIo: SignIo = {
  readInput: (path) => readFileSync(path ?? 0),
  writeOutput: (path, data) => writeFileSync(path ?? 1, data),
  error: (line) => process.stderr.write(`smime-relay sign: ${line}\n`),
};

class Refusal extends Error {}

/**
 * `smime-relay sign`: one message, offline. Everything it does is a pipeline stage the relay
 * uses (admitHeader, prepareMessage, the engine, signMessage); only the input and
 * output differ.
 */
export async function signCommand(argv: string[], io: SignIo = defaultIo): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      cert: { type: 'string' },
      in: { type: 'string' },
      out: { type: 'string' },
      engine: { type: 'string' },
      'header-protection': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    allowPositionals: false,
  });
  if (values.help) {
    process.stdout.write(SIGN_HELP);
    return 0;
  }
  // The relay's own settings table validates the values and supplies the environment fallbacks.
  const { config } = loadConfig({
    flags: { cert: values.cert, engine: values.engine, headerProtection: values['header-protection'] },
    env: process.env,
  });
  if (!config.cert) {
    io.error('--cert PATH is required (or set SMIME_RELAY_CERT). See smime-relay sign --help.');
    return 2;
  }

  let engine: SigningEngine | undefined;
  let token: ReturnType<typeof tokenFromConfig>;
  try {
    token = tokenFromConfig(config);
    const bundles = loadBundles(config.cert, token);
    const raw = io.readInput(values.in);

    const protectedAs = alreadyProtected(raw);
    if (protectedAs) {
      io.error(`the message is already ${protectedAs}; copied unchanged instead of signing it twice`);
      io.writeOutput(values.out, raw);
      return 0;
    }

    const covered = [...new Set(bundles.flatMap((b) => b.mailboxes))];
    // A file has no SMTP envelope to say SMTPUTF8; UTF-8 in its header is taken as RFC 6532.
    const { message, from } = admitHeader(raw, { covered, smtputf8: true });
    const bundle = bundles.find((b) => b.mailboxes.includes(from))!;
    const invalid = validityFindings(bundle.source, bundle.notBefore, bundle.notAfter, new Date());
    if (invalid.length) throw new Refusal(invalid.map((f) => f.message).join('; '));

    const prepared = prepareMessage(message, { headerProtection: config.headerProtection });
    const signer = (engine = createEngine(config));
    const signed = await signMessage(prepared, (content) => signer.sign(content, bundle));
    io.writeOutput(values.out, signed);
    return 0;
  } catch (e) {
    if (e instanceof RelayError) io.error(`refused: ${e.reply.text}`);
    else if (e instanceof MimeError) io.error(`refused: the message cannot be made 7-bit safe for signing: ${e.message}`);
    else if (e instanceof Refusal) io.error(`refused: ${e.message}`);
    else if (isFileError(e) || e instanceof ConfigError) io.error(`${e.message}`);
    else throw e;
    return 1;
  } finally {
    await engine?.close();
    token?.close();
  }
}

function loadBundles(path: string, keys: KeySource | undefined): CertificateBundle[] {
  const loaded = loadPath(path, { keys });
  const bundles = loaded.entries.flatMap((e) => (e.bundle ? [e.bundle] : []));
  if (bundles.length === 0) {
    const why = loaded.entries.flatMap((e) => e.findings.filter((f) => f.severity === 'error').map((f) => f.message));
    throw new Refusal(`no usable certificate in '${path}'${why.length ? `: ${why.join('; ')}` : ''}`);
  }
  return bundles;
}

function isFileError(e: unknown): e is NodeJS.ErrnoException {
  return e instanceof Error && typeof (e as NodeJS.ErrnoException).code === 'string' && 'syscall' in e;
}
