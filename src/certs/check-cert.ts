import { loadConfig } from '../config/load.js';
import { tokenFromConfig } from '../signing/pkcs11/from-config.js';
import { error, warning, type Finding } from './findings.js';
import { checkRevocation, describeStatus, isoSeconds, type RevocationStatus } from './revocation/check.js';
import { loadPath, type LoadedBundle } from './load.js';
import { daysUntil, validityFindings } from './validate.js';

const USAGE = `Usage: smime-relay check-cert PATH [--password-file FILE] [--pkcs11-… ] [--json]

Checks a certificate bundle before you deploy it: a PEM file (private key, certificate and
chain in any order), a PKCS#12 file (.p12/.pfx), or a directory of them.

  --password-file FILE  passphrase of an encrypted key or PKCS#12 file, first line
                        (what SMIME_RELAY_CERT_PASSWORD_FILE will name)
  --pkcs11-module FILE, --pkcs11-token LABEL, --pkcs11-pin-file FILE
                        the PKCS#11 token that holds the keys of certificates given without
                        one (default: SMIME_RELAY_PKCS11_MODULE, _TOKEN, _PIN_FILE)
  --revocation off|soft|hard
                        ask the OCSP responder (or the CRL) whether each certificate was revoked;
                        hard: a status that cannot be checked is an error (default:
                        SMIME_RELAY_REVOCATION, else soft)
  --json                machine-readable output
  --help                this text

Exit status: 0 when every bundle can sign, 1 when one cannot (the reasons are printed),
2 for a usage error.
`;

interface Verdict {
  readonly entry: LoadedBundle;
  readonly canSign: boolean;
  /** Cannot sign only because of its dates, and another bundle covers all its mailboxes today. */
  readonly superseded: boolean;
  readonly errors: Finding[];
  readonly warnings: Finding[];
  readonly daysLeft?: number;
}

/** `smime-relay check-cert`: the admin's check, with the same loader and rules the relay uses. */
export async function checkCert(argv: string[], out: (s: string) => void, now: Date = new Date(), err: (s: string) => void = out): Promise<number> {
  let path: string | undefined;
  let passwordFile: string | undefined;
  let json = false;
  const settingFlags: Record<string, string> = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--help' || a === '-h') {
      out(USAGE);
      return 0;
    } else if (a === '--json') json = true;
    else if (a === '--password-file') {
      passwordFile = argv[++i];
      if (!passwordFile) return usage(err, '--password-file needs a file name');
    } else if (a.startsWith('--password-file=')) passwordFile = a.slice('--password-file='.length);
    else if (a.split('=')[0]! in SETTING_OPTIONS) {
      const [name, inline] = a.split(/=(.*)/s) as [keyof typeof SETTING_OPTIONS, string | undefined];
      const value = inline ?? argv[++i];
      if (!value) return usage(err, `${name} needs a value`);
      settingFlags[SETTING_OPTIONS[name]] = value;
    } else if (a.startsWith('-') && a !== '-') return usage(err, `unknown option '${a}'`);
    else if (path === undefined) path = a;
    else return usage(err, `only one PATH, got '${path}' and '${a}'`);
  }
  if (!path) return usage(err, 'PATH is missing');

  // The same settings table as the relay: the flags, else SMIME_RELAY_PKCS11_* and _REVOCATION from the environment.
  const settings = loadConfig({ flags: settingFlags, env: process.env }).config;
  const token = tokenFromConfig(settings);
  let result: ReturnType<typeof loadPath>;
  try {
    result = loadPath(path, { passwordFile, keys: token });
  } finally {
    token?.close();
  }
  const revocation = await revocationOf(result.entries, settings.revocation);
  const verdicts = judge(result.entries.map((e) => withRevocation(e, revocation.get(e.source), settings.revocation)), now);
  const ok = verdicts.length > 0 && verdicts.every((v) => v.canSign || v.superseded);

  if (json) {
    out(
      JSON.stringify(
        {
          path,
          mode: result.mode,
          ok,
          certificates: verdicts.map((v) => ({
            source: v.entry.source,
            resolved: v.entry.resolved,
            format: v.entry.format,
            canSign: v.canSign,
            superseded: v.superseded,
            mailboxes: v.entry.mailboxes,
            subject: v.entry.details?.subject,
            issuer: v.entry.details?.issuer,
            serial: v.entry.details?.serial,
            notBefore: v.entry.details?.notBefore.toISOString(),
            notAfter: v.entry.details?.notAfter.toISOString(),
            daysLeft: v.daysLeft,
            key: v.entry.details?.key,
            keyLocation: v.entry.bundle?.key.location,
            revocation: revocationJson(revocation.get(v.entry.source)),
            signatureAlgorithm: v.entry.details?.signatureAlgorithm,
            chain: v.entry.details?.chain,
            permissions: v.entry.permissions,
            errors: v.errors.map(({ code, message }) => ({ code, message })),
            warnings: v.warnings.map(({ code, message }) => ({ code, message })),
          })),
          skipped: result.skipped,
        },
        null,
        2,
      ),
    );
    return ok ? 0 : 1;
  }

  const lines: string[] = [];
  for (const s of result.skipped) lines.push(`note: ${s.reason}`, '');
  if (result.mode === 'directory' && verdicts.length === 0) lines.push(`'${path}' holds no certificate bundles.`);
  for (const v of verdicts) {
    const d = v.entry.details;
    lines.push(`${v.entry.source}${v.entry.resolved ? ` -> ${v.entry.resolved}` : ''} (${v.entry.format === 'pkcs12' ? 'PKCS#12' : v.entry.format === 'pem' ? 'PEM' : 'unrecognised'})`);
    if (d) {
      const left = v.daysLeft === undefined ? '' : d.notAfter < now ? ` (expired ${-v.daysLeft} day(s) ago)` : ` (${v.daysLeft} day(s) left)`;
      lines.push(
        `  mailboxes:    ${v.entry.mailboxes.length ? v.entry.mailboxes.join(', ') : '(none)'}`,
        `  subject:      ${d.subject}`,
        `  issuer:       ${d.issuer}`,
        `  serial:       ${d.serial}`,
        `  not before:   ${d.notBefore.toISOString()}`,
        `  not after:    ${d.notAfter.toISOString()}${left}`,
        `  key:          ${keyLine(v.entry)}`,
        `  signature:    ${d.signatureAlgorithm}`,
        `  chain:        ${d.chain.status}: ${d.chain.text}`,
      );
      const status = revocation.get(v.entry.source);
      if (status) lines.push(`  revocation:   ${describeStatus(status)}`);
    } else if (v.entry.mailboxes.length) {
      lines.push(`  mailboxes:    ${v.entry.mailboxes.join(', ')}`);
    }
    lines.push(`  permissions:  ${v.entry.permissions.text}`);
    for (const f of v.errors) lines.push(`  ERROR (${f.code}): ${f.message}`);
    for (const f of v.warnings) lines.push(`  warning (${f.code}): ${f.message}`);
    lines.push(
      v.canSign
        ? `  => can sign for ${v.entry.mailboxes.join(', ')}`
        : v.superseded
          ? `  => not used: another certificate covers ${v.entry.mailboxes.join(', ')} today`
          : `  => CANNOT SIGN: ${v.errors.map((f) => f.code).join(', ')}`,
      '',
    );
  }
  lines.push(ok ? 'OK: the relay can sign with this.' : `NOT OK: ${verdicts.filter((v) => !v.canSign && !v.superseded).length} of ${verdicts.length} bundle(s) cannot sign.`);
  out(lines.join('\n'));
  return ok ? 0 : 1;
}

/** The revocation status of every bundle that could sign, by source; none with --revocation off. */
async function revocationOf(entries: readonly LoadedBundle[], mode: 'off' | 'soft' | 'hard'): Promise<Map<string, RevocationStatus>> {
  const out = new Map<string, RevocationStatus>();
  if (mode === 'off') return out;
  await Promise.all(entries.map(async (e) => e.bundle && out.set(e.source, await checkRevocation(e.bundle))));
  return out;
}

/** The entry with what its revocation status means for signing, as the relay would judge it. */
function withRevocation(entry: LoadedBundle, status: RevocationStatus | undefined, mode: 'off' | 'soft' | 'hard'): LoadedBundle {
  if (status?.state === 'revoked') {
    return { ...entry, findings: [...entry.findings, error('revoked', `'${entry.source}': the certificate was revoked on ${isoSeconds(status.revokedAt)} (${status.reason ? `${status.reason}, ` : ''}${status.source}). The relay does not sign with it: get a new certificate from your CA.`)] };
  }
  if (status?.state === 'failed') {
    const effect = mode === 'hard' ? 'With SMIME_RELAY_REVOCATION=hard the relay does not sign with it until the status can be checked.' : 'The relay signs with it anyway (SMIME_RELAY_REVOCATION=soft) and warns.';
    const finding = mode === 'hard' ? error : warning;
    return { ...entry, findings: [...entry.findings, finding('revocation', `'${entry.source}': the revocation status could not be checked: ${status.problem}. ${effect}`)] };
  }
  return entry;
}

function revocationJson(status: RevocationStatus | undefined): Record<string, unknown> | undefined {
  if (!status) return undefined;
  const iso = (d: Date | undefined) => d?.toISOString();
  if (status.state === 'good' || status.state === 'revoked') {
    return { state: status.state, source: status.source, revokedAt: status.state === 'revoked' ? iso(status.revokedAt) : undefined, reason: status.reason, thisUpdate: iso(status.thisUpdate), nextUpdate: iso(status.nextUpdate) };
  }
  return { state: status.state, problem: status.problem };
}

/** Options that stand for a relay setting (the token, revocation), and the setting each one names. */
const SETTING_OPTIONS = { '--pkcs11-module': 'pkcs11Module', '--pkcs11-token': 'pkcs11Token', '--pkcs11-pin-file': 'pkcs11PinFile', '--revocation': 'revocation' } as const;

/** "RSA 2048 bits", or for a key on a token "on token relay (label 'notify', id 01), RSA 2048 bits". */
function keyLine(entry: LoadedBundle): string {
  const location = entry.bundle?.key.location;
  return location?.kind === 'token' ? `on token ${location.token} (${location.object}), ${entry.details!.key.text}` : entry.details!.key.text;
}

/** A usage error goes to stderr (the caller's `err`), so a script reading stdout never takes it for a verdict. */
function usage(err: (s: string) => void, problem: string): number {
  err(`smime-relay check-cert: ${problem}\n\n${USAGE}`);
  return 2;
}

/**
 * Adds the clock's verdict. In a directory an expired or not-yet-valid certificate whose
 * mailboxes all have another certificate valid today is the normal overlap of a renewal, so it
 * is only a warning there.
 */
function judge(entries: readonly LoadedBundle[], now: Date): Verdict[] {
  const timed = entries.map((entry) => {
    const b = entry.bundle;
    const time = b ? validityFindings(entry.source, b.notBefore, b.notAfter, now) : [];
    return { entry, time, validNow: !!b && time.length === 0 };
  });
  return timed.map(({ entry, time }) => {
    const covered = entry.mailboxes.length > 0 && entry.mailboxes.every((m) => timed.some((o) => o.entry !== entry && o.validNow && o.entry.mailboxes.includes(m)));
    const timeFindings = covered ? time.map((f) => warning(f.code, `${f.message} Another certificate in the directory covers ${entry.mailboxes.join(', ')} today, so the relay uses that one.`)) : time;
    const all = [...entry.findings, ...timeFindings];
    const errors = all.filter((f) => f.severity === 'error');
    const d = entry.details;
    const canSign = errors.length === 0 && !!entry.bundle && time.length === 0;
    return {
      entry,
      canSign,
      superseded: !canSign && covered && errors.length === 0 && !!entry.bundle,
      errors,
      warnings: all.filter((f) => f.severity === 'warning'),
      daysLeft: d ? daysUntil(d.notAfter, now) : undefined,
    };
  });
}
