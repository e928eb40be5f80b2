import { spawnSync } from 'node:child_process';
import { X509Certificate, createPrivateKey, type KeyObject } from 'node:crypto';
import { readFileSync, readdirSync, realpathSync, statSync, type Stats } from 'node:fs';
import { extname, join } from 'node:path';
import * as asn1js from 'asn1js';
import type { Mailbox } from '../mime/mailbox.js';
import type { KeySource, SigningKey } from '../signing/key.js';
import { TokenError } from '../signing/pkcs11/token-error.js';
import { assembleBundle, bundleOf, certificateMailboxes, pemBlocks, type CertificateBundle } from './bundle.js';
import { error, warning, type Finding } from './findings.js';
import { validateLeaf, type CertificateDetails } from './validate.js';

/** One file as loaded: a bundle when it can sign (clock aside), and everything found about it. */
export interface LoadedBundle {
  /** The path as configured (a directory entry is `dir/name`), not its resolved target. */
  readonly source: string;
  /** Where the source pointed when it was read (symlinks resolved), when that differs. */
  readonly resolved?: string;
  readonly format: 'pem' | 'pkcs12' | 'unknown';
  /** Present when nothing but the clock can stop signing with it. */
  readonly bundle?: CertificateBundle;
  /** Mailboxes of the leaf, or of the best-guess leaf when the file is broken (so lookups can say "unavailable"). */
  readonly mailboxes: readonly Mailbox[];
  readonly details?: CertificateDetails;
  /** Findings that do not depend on the clock; see validityFindings for those that do. */
  readonly findings: readonly Finding[];
  readonly permissions: PermissionVerdict;
}

export interface PermissionVerdict {
  readonly ok: boolean;
  readonly text: string;
}

export interface LoadOptions {
  passwordFile?: string;
  /** openssl binary used for PKCS#12 files. */
  openssl?: string;
  /** The setting the path came from, as the user named it (TATTLER_EMAIL_SMIME_CERT…); default SMIME_RELAY_CERT. */
  setting?: string;
  /** Where a certificate without a private key in its file finds one (SMIME_RELAY_PKCS11_*). */
  keys?: KeySource;
}

export interface PathLoad {
  readonly mode: 'file' | 'directory';
  readonly entries: LoadedBundle[];
  /** Directory entries that are not certificate bundles (a README, a password file). */
  readonly skipped: { readonly source: string; readonly reason: string }[];
}

const BINARY_WORDING = (p: string) =>
  `path '${p}' appears to be binary. I need a PEM file that includes 'BEGIN PRIVATE KEY' and 'BEGIN CERTIFICATE' sections.`;

/** Loads a PEM bundle, a PKCS#12 file, or every bundle in a directory. Never throws for bad content. */
export function loadPath(path: string, opts: LoadOptions = {}): PathLoad {
  let st: Stats;
  try {
    st = statSync(path);
  } catch (e) {
    return { mode: 'file', entries: [failed(path, 'unknown', [accessFinding(path, e, opts.setting)])], skipped: [] };
  }
  if (!st.isDirectory()) return { mode: 'file', entries: [loadFile(path, opts, false)!], skipped: [] };

  const entries: LoadedBundle[] = [];
  const skipped: PathLoad['skipped'] = [];
  let names: string[];
  try {
    names = readdirSync(path).sort();
  } catch (e) {
    return { mode: 'directory', entries: [failed(path, 'unknown', [accessFinding(path, e)])], skipped };
  }
  for (const name of names) {
    // Dotfiles include Kubernetes' ..data and ..2025_01_01 directories; the visible names are
    // symlinks through ..data, so following them picks up a Secret swap by itself.
    if (name.startsWith('.')) continue;
    const source = join(path, name);
    let est: Stats;
    try {
      est = statSync(source);
    } catch (e) {
      entries.push(failed(source, 'unknown', [accessFinding(source, e)]));
      continue;
    }
    if (!est.isFile()) continue;
    const loaded = loadFile(source, opts, true);
    if (loaded) entries.push(loaded);
    else skipped.push({ source, reason: `'${source}' is not a certificate bundle (no PEM key or certificate, not PKCS#12); skipped` });
  }
  return { mode: 'directory', entries, skipped };
}

function accessFinding(path: string, e: unknown, setting = 'SMIME_RELAY_CERT'): Finding {
  const code = (e as NodeJS.ErrnoException).code;
  if (code === 'ENOENT') return error('not-found', `'${path}' does not exist (or is a symlink to nothing). Check ${setting}.`);
  if (code === 'EACCES') {
    const gid = process.getgid?.();
    return error(
      'unreadable',
      `'${path}' cannot be read by this user (uid ${process.getuid?.()}, gid ${gid}). Let the relay's group read it: ` +
        `chgrp ${gid} '${path}' && chmod 640 '${path}' (its directory: chgrp ${gid} and chmod 750), or make the relay's user its owner: chown ${process.getuid?.()} '${path}' && chmod 600 '${path}'.`,
    );
  }
  return error('unreadable', `'${path}' cannot be read: ${(e as Error).message}`);
}

function failed(source: string, format: LoadedBundle['format'], findings: Finding[], mailboxes: readonly Mailbox[] = [], permissions?: PermissionVerdict): LoadedBundle {
  return { source, format, mailboxes, findings, permissions: permissions ?? { ok: true, text: 'not checked' } };
}

/**
 * The private key file must be readable by the relay and nobody else but root: owned by the
 * relay's user (mode 0600), or owned by root and readable by a group the relay belongs to (0640
 * or 0440, as the systemd install and a Kubernetes Secret with defaultMode 0440 and fsGroup make
 * it). Readable by everyone, by a group the relay is not in, or owned by another user: a warning.
 */
export function permissionVerdict(path: string, what: string): { verdict: PermissionVerdict; findings: Finding[] } {
  let st: Stats;
  try {
    st = statSync(path);
  } catch {
    return { verdict: { ok: false, text: 'cannot stat' }, findings: [] };
  }
  const mode = (st.mode & 0o777).toString(8).padStart(4, '0');
  const uid = process.getuid?.();
  const gid = process.getgid?.();
  const ourGroups = new Set([gid, ...(process.getgroups?.() ?? [])]);
  const fix = `chmod 600 '${path}' owned by the relay's user, or chgrp ${gid} '${path}' && chmod 640 '${path}' (in Kubernetes, defaultMode: 0440 with fsGroup on the Secret volume)`;
  const findings: Finding[] = [];
  if (st.mode & 0o007) {
    findings.push(warning('permissions', `'${path}' (${what}) has mode ${mode}: it is readable by everyone. Restrict it: ${fix}.`));
  } else if (st.mode & 0o070 && !ourGroups.has(st.gid)) {
    findings.push(warning('permissions', `'${path}' (${what}) has mode ${mode}: it is readable by group ${st.gid}, which the relay (gid ${gid}) is not in. Restrict it: ${fix}.`));
  }
  if (uid !== undefined && st.uid !== uid && st.uid !== 0) {
    findings.push(warning('permissions', `'${path}' (${what}) is owned by uid ${st.uid}, neither the user running the relay (uid ${uid}) nor root: that user can read and replace it. Make it owned by the relay's user or by root: chown.`));
  }
  const owner = st.uid === uid ? "owned by the relay's user" : st.uid === 0 ? 'owned by root' : `owned by uid ${st.uid}`;
  const readers = st.mode & 0o007 ? 'readable by everyone' : st.mode & 0o070 ? (ourGroups.has(st.gid) ? `readable by the relay's group ${st.gid}` : `readable by group ${st.gid}`) : '';
  const text = `${findings.length === 0 ? 'ok' : 'NOT OK'} (mode ${mode}, ${[owner, readers].filter(Boolean).join(', ')})`;
  return { verdict: { ok: findings.length === 0, text }, findings };
}

function readPassword(passwordFile: string): { password?: string; findings: Finding[] } {
  try {
    // The first line, as `openssl -passin file:` reads it, so both paths agree.
    const password = readFileSync(passwordFile, 'utf8').split(/\r?\n/)[0] ?? '';
    return { password, findings: permissionVerdict(passwordFile, 'password file').findings };
  } catch (e) {
    return { findings: [error('unreadable', `the password file '${passwordFile}' (SMIME_RELAY_CERT_PASSWORD_FILE) cannot be read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}.`)] };
  }
}

type DerKind = 'pkcs12' | 'certificate' | 'pkcs7' | 'der';

function sniffDer(buf: Buffer): DerKind | undefined {
  const asn = asn1js.fromBER(new Uint8Array(buf));
  if (asn.offset === -1 || !(asn.result instanceof asn1js.Sequence)) return undefined;
  const items = asn.result.valueBlock.value;
  const oidOf = (x: unknown) =>
    x instanceof asn1js.Sequence && x.valueBlock.value[0] instanceof asn1js.ObjectIdentifier ? x.valueBlock.value[0].valueBlock.toString() : undefined;
  if (items[0] instanceof asn1js.Integer && items[0].valueBlock.valueDec === 3 && oidOf(items[1]) === '1.2.840.113549.1.7.1') return 'pkcs12';
  if (items[0] instanceof asn1js.ObjectIdentifier && items[0].valueBlock.toString() === '1.2.840.113549.1.7.2') return 'pkcs7';
  try {
    new X509Certificate(buf);
    return 'certificate';
  } catch {
    return 'der';
  }
}

function looksBinary(buf: Buffer): boolean {
  const head = buf.subarray(0, 4096);
  for (const b of head) if (b === 0 || (b < 0x20 && b !== 0x09 && b !== 0x0a && b !== 0x0d)) return true;
  return head[0] === 0x30 && head[1] !== undefined && head[1] >= 0x80;
}

/**
 * Loads one file. In a directory (`lenient`), a file that is plainly not a bundle returns
 * undefined so the caller can skip it; given by name, the same file is an error.
 */
export function loadFile(source: string, opts: LoadOptions, lenient: boolean): LoadedBundle | undefined {
  const loaded = readOne(source, opts, lenient);
  if (!loaded) return undefined;
  let resolved: string | undefined;
  try {
    resolved = realpathSync(source);
  } catch {
    resolved = undefined;
  }
  return resolved && resolved !== source ? { ...loaded, resolved } : loaded;
}

function readOne(source: string, opts: LoadOptions, lenient: boolean): LoadedBundle | undefined {
  let buf: Buffer;
  try {
    buf = readFileSync(source);
  } catch (e) {
    return failed(source, 'unknown', [accessFinding(source, e)]);
  }
  const perm = permissionVerdict(source, 'certificate bundle with the private key');
  const ext = extname(source).toLowerCase();
  const text = buf.toString('latin1');
  const isPem = text.includes('-----BEGIN ');

  if (!isPem && (ext === '.p12' || ext === '.pfx' || (looksBinary(buf) && sniffDer(buf) === 'pkcs12'))) {
    return loadPkcs12(source, opts, perm, ext === '.p12' || ext === '.pfx');
  }
  if (!isPem) {
    if (buf.length === 0) return lenient ? undefined : failed(source, 'unknown', [error('no-key', `'${source}' is empty. I need a PEM file that includes 'BEGIN PRIVATE KEY' and 'BEGIN CERTIFICATE' sections.`)], [], perm.verdict);
    if (!looksBinary(buf)) {
      return lenient ? undefined : failed(source, 'unknown', [error('no-key', `'${source}' has no PEM sections. I need a PEM file that includes 'BEGIN PRIVATE KEY' and 'BEGIN CERTIFICATE' sections.`)], [], perm.verdict);
    }
    const kind = sniffDer(buf);
    if (lenient && kind === undefined) return undefined;
    const hint =
      kind === 'certificate'
        ? ` It is a DER certificate: convert it with \`openssl x509 -inform DER -in '${source}' -out cert.pem\`, then put the private key, that certificate and the chain into one PEM file.`
        : kind === 'pkcs7'
          ? ` It is a PKCS#7 (.p7b) certificate list without a key: \`openssl pkcs7 -inform DER -print_certs -in '${source}'\` prints the certificates as PEM; add the private key.`
          : kind === 'der'
            ? ` If it is a DER private key, convert it with \`openssl pkey -inform DER -in '${source}' -out key.pem\`.`
            : '';
    return failed(source, 'unknown', [error('binary', BINARY_WORDING(source) + hint), ...perm.findings], [], perm.verdict);
  }
  return loadPemText(source, text, opts, perm, 'pem');
}

function loadPkcs12(source: string, opts: LoadOptions, perm: ReturnType<typeof permissionVerdict>, byName: boolean): LoadedBundle {
  const findings: Finding[] = [];
  const how = `set SMIME_RELAY_CERT_PASSWORD_FILE to a file holding the PKCS#12 password (chmod 600), or convert it once: \`openssl pkcs12 -in '${source}' -out bundle.pem -noenc\` and use bundle.pem`;
  let passArg = 'pass:';
  if (opts.passwordFile) {
    const pw = readPassword(opts.passwordFile);
    findings.push(...pw.findings);
    if (pw.password === undefined) return failed(source, 'pkcs12', [...findings, ...perm.findings], [], perm.verdict);
    passArg = `file:${opts.passwordFile}`;
  }
  const openssl = opts.openssl ?? 'openssl';
  // -nodes (not -noenc) also works with OpenSSL 1.1.1. Old RC2/3DES files need the legacy
  // provider under OpenSSL 3, so retry with -legacy before giving up.
  const run = (legacy: boolean) =>
    spawnSync(openssl, ['pkcs12', '-in', source, '-nodes', '-passin', passArg, ...(legacy ? ['-legacy'] : [])], {
      encoding: 'latin1',
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: 30_000,
    });
  let r = run(false);
  if (r.error) {
    findings.push(error('pkcs12', `'${source}' is a PKCS#12 file, and reading it needs openssl, which could not be run (${(r.error as NodeJS.ErrnoException).code ?? r.error.message}). Install openssl, or convert the file elsewhere: \`openssl pkcs12 -in '${source}' -out bundle.pem -noenc\`.`));
    return failed(source, 'pkcs12', [...findings, ...perm.findings], [], perm.verdict);
  }
  const macError = (s: string) => /mac verify|invalid password/i.test(s);
  if (r.status !== 0 && !macError(r.stderr)) {
    const legacy = run(true);
    if (legacy.status === 0) r = legacy;
  }
  if (r.status !== 0) {
    const why = r.stderr.split('\n').find((l) => l.trim()) ?? `exit ${r.status}`;
    if (macError(r.stderr)) {
      findings.push(
        error(
          opts.passwordFile ? 'wrong-password' : byName ? 'pkcs12' : 'binary',
          opts.passwordFile
            ? `'${source}' is a PKCS#12 file and the password in '${opts.passwordFile}' does not open it (${why.trim()}). Put the right password on the first line of that file.`
            : byName
              ? `'${source}' is a PKCS#12 file protected by a password: ${how}.`
              : `${BINARY_WORDING(source)} It is a PKCS#12 file: use it directly: ${how}.`,
        ),
      );
    } else {
      findings.push(error(byName ? 'pkcs12' : 'binary', `${byName ? '' : BINARY_WORDING(source) + ' '}'${source}' could not be read as PKCS#12: ${why.trim()}. If the file is complete, convert it with \`openssl pkcs12 -legacy -in '${source}' -out bundle.pem -noenc\` and check the output.`));
    }
    return failed(source, 'pkcs12', [...findings, ...perm.findings], [], perm.verdict);
  }
  const loaded = loadPemText(source, r.stdout, { ...opts, passwordFile: undefined }, perm, 'pkcs12');
  return { ...loaded, findings: [...findings, ...loaded.findings] };
}

function loadPemText(source: string, text: string, opts: LoadOptions, perm: ReturnType<typeof permissionVerdict>, format: 'pem' | 'pkcs12'): LoadedBundle {
  const findings: Finding[] = [...perm.findings];
  const blocks = pemBlocks(text);
  const begins = text.match(/-----BEGIN [A-Z0-9 ]+-----/g)?.length ?? 0;
  if (begins !== blocks.length) {
    // A file still being written ends in the middle of a section. Whatever parsed so far must not
    // be used: a missing tail could silently drop an intermediate.
    findings.push(error('truncated', `'${source}' is incomplete: ${begins - blocks.length} of its ${begins} PEM sections have no matching END line (a file still being written, or cut off). Write the new file elsewhere and rename it into place.`));
    return failed(source, format, findings, [], perm.verdict);
  }
  const keyBlocks = blocks.filter((b) => b.label.endsWith('PRIVATE KEY'));
  const certs: X509Certificate[] = [];
  for (const [i, b] of blocks.filter((b) => b.label === 'CERTIFICATE' || b.label === 'TRUSTED CERTIFICATE').entries()) {
    try {
      certs.push(new X509Certificate(b.text.replace(/TRUSTED CERTIFICATE/g, 'CERTIFICATE')));
    } catch (e) {
      findings.push(error('bad-cert', `'${source}': certificate section ${i + 1} cannot be parsed (${(e as Error).message}).`));
    }
  }
  const guessLeaf = certs.find((c) => certificateMailboxes(c).length > 0) ?? certs[0];
  const guessedMailboxes = guessLeaf ? certificateMailboxes(guessLeaf) : [];
  const fail = () => failed(source, format, findings, guessedMailboxes, perm.verdict);

  if (certs.length === 0 && !findings.some((f) => f.code === 'bad-cert')) {
    findings.push(error('no-cert', `'${source}' has no certificate: I need a PEM file that includes 'BEGIN PRIVATE KEY' and 'BEGIN CERTIFICATE' sections. Append the certificate your CA issued, then the intermediate(s): cat key.pem cert.pem chain.pem > bundle.pem`));
  }
  if (keyBlocks.length === 0 && !opts.keys) {
    findings.push(error('no-key', `'${source}' has no private key: I need a PEM file that includes 'BEGIN PRIVATE KEY' and 'BEGIN CERTIFICATE' sections. Put the private key you generated the request with into the same file: cat key.pem cert.pem chain.pem > bundle.pem (or, if the key is on a PKCS#11 token, set SMIME_RELAY_PKCS11_MODULE, _TOKEN and _PIN_FILE).`));
  }
  if (keyBlocks.length > 1) {
    findings.push(error('several-keys', `'${source}' holds ${keyBlocks.length} private keys; a bundle holds exactly one. In a directory, give each certificate its own file.`));
  }
  if (findings.some((f) => f.severity === 'error')) return fail();
  if (keyBlocks.length === 0) return loadWithTokenKey(source, format, certs, guessLeaf!, opts.keys!, findings);

  const keyBlock = keyBlocks[0]!;
  const encrypted = keyBlock.label === 'ENCRYPTED PRIVATE KEY' || /Proc-Type:\s*4,ENCRYPTED/.test(keyBlock.text);
  let key: KeyObject;
  if (encrypted && !opts.passwordFile) {
    findings.push(
      error(
        'encrypted-key',
        `'${source}': the private key is encrypted and no password was given. Either set SMIME_RELAY_CERT_PASSWORD_FILE to a file holding the passphrase (chmod 600), or store the key unencrypted once: \`openssl pkey -in '${source}' -out key.pem\` (from a .p12: \`openssl pkcs12 -in bundle.p12 -out bundle.pem -noenc\`), rebuild the bundle and chmod 600 it.`,
      ),
    );
    return fail();
  }
  try {
    if (encrypted) {
      const pw = readPassword(opts.passwordFile!);
      findings.push(...pw.findings);
      if (pw.password === undefined) return fail();
      try {
        key = createPrivateKey({ key: keyBlock.text, format: 'pem', passphrase: pw.password });
      } catch (e) {
        findings.push(error('wrong-password', `'${source}': the private key cannot be decrypted with the password in '${opts.passwordFile}' (${(e as Error).message}). Put the right passphrase on the first line of that file.`));
        return fail();
      }
    } else {
      key = createPrivateKey({ key: keyBlock.text, format: 'pem' });
    }
  } catch (e) {
    findings.push(error('bad-key', `'${source}': the private key cannot be read (${(e as Error).message}). Check that the 'BEGIN … PRIVATE KEY' section is complete.`));
    return fail();
  }

  let bundle: CertificateBundle;
  try {
    bundle = assembleBundle(source, key, certs);
  } catch {
    const leaf = guessLeaf!;
    const names = guessedMailboxes.length ? ` for ${guessedMailboxes.join(', ')}` : '';
    const which = `the certificate${names} (serial ${leaf.serialNumber}, ${leaf.subject.split('\n').join(', ')})${certs.length > 1 ? ` nor any other of the ${certs.length} certificates` : ''}`;
    findings.push(error('key-mismatch', `'${source}': the private key does not match ${which}. The key belongs to a different certificate: find the key you created the certificate request with, or the certificate issued for this key.`));
    return fail();
  }
  const { findings: leafFindings, details } = validateLeaf(source, key, bundle.leaf, bundle.chain, bundle.mailboxes.length);
  findings.push(...leafFindings);
  const canSign = !findings.some((f) => f.severity === 'error');
  return {
    source,
    format,
    bundle: canSign ? bundle : undefined,
    mailboxes: bundle.mailboxes,
    details,
    findings,
    permissions: perm.verdict,
  };
}

/**
 * A file with certificates and no private key, paired with the key on the token whose public key
 * is the leaf's. The leaf is the certificate that has such a key: the one naming a mailbox is
 * tried first, so a missing key is reported for it rather than for an intermediate.
 */
function loadWithTokenKey(source: string, format: 'pem' | 'pkcs12', certs: X509Certificate[], guessLeaf: X509Certificate, keys: KeySource, findings: Finding[]): LoadedBundle {
  // Certificates are public: the file's permissions only matter when it holds a key.
  const own = findings.filter((f) => f.code !== 'permissions');
  const permissions = { ok: true, text: `not checked: the file holds no private key (the key is on the ${keys.description})` };
  let found: { leaf: X509Certificate; key: SigningKey; warnings: string[] } | undefined;
  let refusal: TokenError | undefined;
  for (const cert of [guessLeaf, ...certs.filter((c) => c !== guessLeaf)]) {
    try {
      found = { leaf: cert, ...keys.keyFor(cert) };
      break;
    } catch (e) {
      if (!(e instanceof TokenError)) throw e;
      refusal ??= e;
      // Only "no key for this certificate" can differ from one certificate to the next.
      if (e.code !== 'token-no-key') break;
    }
  }
  if (!found) {
    own.push(error(refusal!.code, `'${source}' holds no private key, and the ${keys.description} cannot provide it: ${refusal!.message}.`));
    return failed(source, format, own, certificateMailboxes(guessLeaf), permissions);
  }
  for (const w of found.warnings) own.push(warning('permissions', w));
  const bundle = bundleOf(source, found.key, found.leaf, certs);
  const { findings: leafFindings, details } = validateLeaf(source, found.leaf.publicKey, bundle.leaf, bundle.chain, bundle.mailboxes.length);
  own.push(...leafFindings);
  return {
    source,
    format,
    bundle: own.some((f) => f.severity === 'error') ? undefined : bundle,
    mailboxes: bundle.mailboxes,
    details,
    findings: own,
    permissions,
  };
}

/**
 * What identifies the current content of a path cheaply: the resolved target and its inode,
 * size and times. Any symlink re-point, rename-over or in-place write changes it.
 */
export function pathSignature(path: string, passwordFile?: string): string {
  const one = (p: string) => {
    try {
      const real = realpathSync(p);
      const st = statSync(real);
      return `${real}:${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`;
    } catch (e) {
      return `${p}:${(e as NodeJS.ErrnoException).code ?? 'error'}`;
    }
  };
  const parts = [one(path)];
  try {
    if (statSync(path).isDirectory()) {
      for (const name of readdirSync(path).sort()) if (!name.startsWith('.')) parts.push(`${name}=${one(join(path, name))}`);
    }
  } catch {
    // missing: one() already recorded it
  }
  if (passwordFile) parts.push(`pw=${one(passwordFile)}`);
  return parts.join('|');
}
