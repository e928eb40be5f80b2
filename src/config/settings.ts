import { z } from 'zod';
import { cidrText, parseCidr } from '../access/network.js';
import { parseEnvelopeSenders } from '../admit/envelope-senders.js';

/**
 * Every setting the relay understands, in one table. Each has exactly one name per source:
 * an environment variable, a `--flag`, and a key in a config file; `--config-dir` files are
 * named after the environment variable (envdir style, as Tattler does). The README's
 * configuration table is checked against this list by a test.
 */
export interface Setting<T = unknown> {
  /** Key in a YAML/JSON config file, and the name of the value in code. */
  readonly key: string;
  readonly env: string;
  /** Other accepted environment/config-dir names for compatibility. */
  readonly aliases?: readonly string[];
  readonly flag: string;
  /** Default as written by a user; undefined means "not set". */
  readonly default: string | undefined;
  /** How the README and --help describe the default when it is not a literal value. */
  readonly defaultText?: string;
  readonly doc: string;
  /** Parses the textual value; every source is reduced to text first. */
  readonly parse: z.ZodType<T>;
  /** Masked in `config --print` and logs. */
  readonly secret?: boolean;
}

const hostPort = z.string().transform((s, ctx) => {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:\s]+)):(\d{1,5})$/.exec(s.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || port < 0 || port > 65535) {
    ctx.addIssue({ code: 'custom', message: `expected host:port (for example 127.0.0.1:2525), got '${s}'` });
    return z.NEVER;
  }
  return { host: m[1] ?? m[2]!, port };
});

/** SMIME_RELAY_LISTEN: host:port, or off (the milter runs alone). */
const listenAddress = z.string().transform((s, ctx) => {
  if (s.trim().toLowerCase() === 'off') return 'off' as const;
  const parsed = hostPort.safeParse(s);
  if (!parsed.success) {
    ctx.addIssue({ code: 'custom', message: `expected host:port (for example 127.0.0.1:2525) or off, got '${s}'` });
    return z.NEVER;
  }
  return parsed.data;
});

/** SMIME_RELAY_MILTER: host:port, or unix:/absolute/path. */
const milterAddress = z.string().transform((s, ctx) => {
  const v = s.trim();
  if (v.startsWith('unix:')) {
    const path = v.slice('unix:'.length);
    if (!path.startsWith('/')) {
      ctx.addIssue({ code: 'custom', message: `unix: needs an absolute path, e.g. unix:/var/spool/postfix/smime-relay/milter.sock, got '${v}'` });
      return z.NEVER;
    }
    return { kind: 'unix' as const, path };
  }
  if (v.startsWith('inet:')) {
    ctx.addIssue({ code: 'custom', message: `write '${v.slice('inet:'.length)}' without 'inet:' (that prefix belongs in Postfix's smtpd_milters)` });
    return z.NEVER;
  }
  const parsed = hostPort.safeParse(v);
  if (!parsed.success) {
    ctx.addIssue({ code: 'custom', message: `expected host:port (for example 127.0.0.1:8891) or unix:/path, got '${s}'` });
    return z.NEVER;
  }
  return { kind: 'inet' as const, ...parsed.data };
});
export type MilterAddress = z.output<typeof milterAddress>;

const bytes = z.string().transform((s, ctx) => {
  const m = /^\s*(\d+)\s*([kmg]i?b?)?\s*$/i.exec(s);
  if (!m) {
    ctx.addIssue({ code: 'custom', message: `expected a byte count such as 26214400 or 25MiB, got '${s}'` });
    return z.NEVER;
  }
  const unit = (m[2] ?? '').toLowerCase()[0];
  const mult = unit === 'k' ? 1024 : unit === 'm' ? 1024 ** 2 : unit === 'g' ? 1024 ** 3 : 1;
  return Number(m[1]) * mult;
});

const millis = z
  .string()
  .regex(/^\d+$/, 'expected a whole number of milliseconds')
  .transform(Number);

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
/**
 * A duration as people write it: 90s, 30m, 6h, 1h30m, 1d; in milliseconds, from 1 s to 7 days
 * (which Node's timers can still wait).
 */
const duration = z.string().transform((s, ctx) => {
  const v = s.trim().toLowerCase();
  let total = 0;
  const rest = v.replace(/(\d+)(ms|s|m|h|d)/g, (_, n: string, unit: string) => {
    total += Number(n) * DURATION_UNITS[unit]!;
    return '';
  });
  if (!v || rest !== '' || total < 1000 || total > 7 * 86_400_000) {
    ctx.addIssue({ code: 'custom', message: `expected a duration such as 90s, 30m or 1h (from 1s to 7d), got '${s}'` });
    return z.NEVER;
  }
  return total;
});

const positiveInt = z
  .string()
  .regex(/^[1-9]\d*$/, 'expected a positive whole number')
  .transform(Number);

const bool = z
  .string()
  .transform((s) => s.trim().toLowerCase())
  .pipe(z.enum(['true', 'false', 'yes', 'no', 'on', 'off', '1', '0']))
  .transform((s) => ['true', 'yes', 'on', '1'].includes(s));

const oneOf = <T extends readonly [string, ...string[]]>(values: T) =>
  z
    .string()
    .transform((s) => s.trim().toLowerCase())
    .pipe(z.enum(values));

const upstreamUrl = z.string().transform((s, ctx) => {
  const v = s.trim();
  if (v.startsWith('file:')) {
    const dir = v.slice('file:'.length).replace(/^\/\/(?=\/)/, '');
    if (!dir) ctx.addIssue({ code: 'custom', message: `file: needs a directory, e.g. file:outbox` });
    return { kind: 'file' as const, dir, display: v };
  }
  let url: URL;
  try {
    url = new URL(v);
  } catch {
    ctx.addIssue({ code: 'custom', message: `expected smtp://host:port, smtps://host:port or file:DIR, got '${v}'` });
    return z.NEVER;
  }
  if (url.protocol !== 'smtp:' && url.protocol !== 'smtps:') {
    ctx.addIssue({ code: 'custom', message: `scheme must be smtp:, smtps: or file:, got '${url.protocol}'` });
    return z.NEVER;
  }
  const secure = url.protocol === 'smtps:';
  const masked = new URL(url.href);
  if (masked.password) masked.password = '****';
  return {
    kind: 'smtp' as const,
    host: url.hostname.replace(/^\[|\]$/g, ''),
    port: url.port ? Number(url.port) : secure ? 465 : 25,
    secure,
    user: url.username ? decodeURIComponent(url.username) : undefined,
    pass: url.password ? decodeURIComponent(url.password) : undefined,
    display: masked.href,
  };
});
export type UpstreamTarget = z.output<typeof upstreamUrl>;

const text = z.string().transform((s) => s.trim());

/** imaps://user:pass@host[:993]/MAILBOX, or imap://… where STARTTLS is then required. */
const imapUrl = z.string().transform((s, ctx) => {
  let url: URL;
  try {
    url = new URL(s.trim());
  } catch {
    ctx.addIssue({ code: 'custom', message: `expected imaps://user:pass@host:993/INBOX, got '${s}'` });
    return z.NEVER;
  }
  if (url.protocol !== 'imaps:' && url.protocol !== 'imap:') {
    ctx.addIssue({ code: 'custom', message: `scheme must be imaps: or imap: (STARTTLS required), got '${url.protocol}'` });
    return z.NEVER;
  }
  if (!url.username || !url.password) {
    ctx.addIssue({ code: 'custom', message: 'the IMAP URL needs user:pass@ (percent-encode special characters)' });
    return z.NEVER;
  }
  const secure = url.protocol === 'imaps:';
  const masked = new URL(url.href);
  masked.password = '****';
  return {
    secure,
    host: url.hostname.replace(/^\[|\]$/g, ''),
    port: url.port ? Number(url.port) : secure ? 993 : 143,
    user: decodeURIComponent(url.username),
    pass: decodeURIComponent(url.password),
    mailbox: decodeURIComponent(url.pathname.replace(/^\//, '')) || 'INBOX',
    display: masked.href,
  };
});
export type ImapTarget = z.output<typeof imapUrl>;

const envelopeSenders = z.string().transform((s, ctx) => {
  const parsed = parseEnvelopeSenders(s);
  if (typeof parsed === 'string') {
    ctx.addIssue({ code: 'custom', message: parsed });
    return z.NEVER;
  }
  return parsed;
});

const cidrList = z.string().transform((s, ctx) => {
  const entries = s.split(',').map((e) => e.trim()).filter(Boolean);
  if (!entries.length) {
    ctx.addIssue({ code: 'custom', message: 'expected at least one network, e.g. 192.0.2.0/24,2001:db8::/32' });
    return z.NEVER;
  }
  const networks: string[] = [];
  for (const e of entries) {
    try {
      networks.push(cidrText(parseCidr(e)));
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: `${(err as Error).message}; expected networks such as 192.0.2.0/24,2001:db8::/32` });
    }
  }
  return networks as readonly string[];
});

/**
 * A list of networks, or one of `off` words for none at all (an empty variable falls back to the
 * default, so "nobody" needs a word). `refuse` turns a value away with its own message.
 */
const networksOrNone = (off: readonly string[], refuse?: (value: string) => string | undefined) =>
  z.string().transform((s, ctx) => {
    const v = s.trim().toLowerCase();
    if (off.includes(v)) return [] as readonly string[];
    const refused = refuse?.(v);
    if (refused) {
      ctx.addIssue({ code: 'custom', message: refused });
      return z.NEVER;
    }
    const parsed = cidrList.safeParse(s);
    if (!parsed.success) {
      for (const issue of parsed.error.issues) ctx.addIssue({ code: 'custom', message: issue.message });
      return z.NEVER;
    }
    return parsed.data;
  });

/**
 * SMIME_RELAY_PROXY_PROTOCOL: the load balancers' networks. It used to be a yes/no switch, and
 * `true` trusted a PROXY header from anyone, so that form is refused with the new one shown.
 */
const proxyNetworks = networksOrNone(['false', 'no', 'off', '0', 'none'], (v) =>
  ['true', 'yes', 'on', '1'].includes(v)
    ? `'${v}' would trust a PROXY header from any client; list the networks of your load balancers instead, e.g. SMIME_RELAY_PROXY_PROTOCOL=10.0.0.5/32 (comma-separated CIDR)`
    : undefined,
);

export const settings = {
  listen: {
    key: 'listen',
    env: 'SMIME_RELAY_LISTEN',
    flag: '--listen',
    default: '127.0.0.1:2525',
    doc: 'Address the SMTP listener binds, host:port. Anything but loopback needs SMIME_RELAY_ALLOW or SMIME_RELAY_USERS, or the relay refuses to start. off: no SMTP listener, the milter (SMIME_RELAY_MILTER) runs alone.',
    parse: listenAddress,
  },
  milter: {
    key: 'milter',
    env: 'SMIME_RELAY_MILTER',
    flag: '--milter',
    default: undefined,
    defaultText: 'off',
    doc: 'Also listen for MTAs speaking the Sendmail milter protocol (version 6; Postfix smtpd_milters / non_smtpd_milters): host:port, or unix:/path (a socket created mode 0660). Mail whose From names a covered mailbox is signed in place; other mail passes unchanged. Anything but loopback or a unix socket needs SMIME_RELAY_ALLOW (the MTA\'s address), or the relay refuses to start.',
    parse: milterAddress,
  },
  allow: {
    key: 'allow',
    env: 'SMIME_RELAY_ALLOW',
    flag: '--allow',
    default: undefined,
    defaultText: '(unset: every client that can reach the listener)',
    doc: 'Comma-separated networks (CIDR, IPv4 or IPv6; a bare address is one host) that may connect; others get 554 5.7.1 at connect. Only the listed networks: add 127.0.0.1/32 and ::1/128 if local clients should still connect.',
    parse: cidrList,
  },
  users: {
    key: 'users',
    env: 'SMIME_RELAY_USERS',
    flag: '--users',
    default: undefined,
    doc: 'Users file for SMTP AUTH (PLAIN, LOGIN): one `user:scrypt-hash[:mailbox,mailbox]` per line (see Security). When set, every client must authenticate before MAIL FROM (530 5.7.0), and may only send as its listed mailboxes (550 5.7.1). Re-read on SIGHUP.',
    parse: text,
  },
  envelopeSenders: {
    key: 'envelopeSenders',
    env: 'SMIME_RELAY_ENVELOPE_SENDERS',
    flag: '--envelope-senders',
    default: undefined,
    defaultText: "(unset: MAIL FROM must be a certificate's mailbox)",
    doc: "Comma-separated envelope senders (MAIL FROM) allowed besides the certificates' mailboxes: `*` matches any characters except @, `<>` is the null sender. For bounce addresses (VERP: bounces+*@example.com) and legacy sendmail (root@*). The From header must still be a certificate's mailbox (and one of the user's, with SMIME_RELAY_USERS).",
    parse: envelopeSenders,
  },
  tlsCert: {
    key: 'tlsCert',
    env: 'SMIME_RELAY_TLS_CERT',
    flag: '--tls-cert',
    default: undefined,
    doc: 'PEM certificate (with chain) of the SMTP listener; with SMIME_RELAY_TLS_KEY it enables TLS. Re-read on SIGHUP.',
    parse: text,
  },
  tlsKey: {
    key: 'tlsKey',
    env: 'SMIME_RELAY_TLS_KEY',
    flag: '--tls-key',
    default: undefined,
    doc: 'PEM private key of SMIME_RELAY_TLS_CERT.',
    parse: text,
  },
  tlsMode: {
    key: 'tlsMode',
    env: 'SMIME_RELAY_TLS_MODE',
    flag: '--tls-mode',
    default: undefined,
    defaultText: 'starttls when SMIME_RELAY_TLS_CERT is set',
    doc: 'starttls: offer STARTTLS. required: offer it and refuse MAIL (530 5.7.0) and AUTH until it was used. implicit: TLS from the first byte (port 465 style).',
    parse: oneOf(['starttls', 'implicit', 'required'] as const),
  },
  upstream: {
    key: 'upstream',
    env: 'SMIME_RELAY_UPSTREAM',
    flag: '--upstream',
    default: 'file:outbox',
    doc: 'Where signed mail goes: smtp://[user:pass@]host:port (STARTTLS when offered; with a user and password only after STARTTLS, see SMIME_RELAY_UPSTREAM_INSECURE_AUTH), smtps://[user:pass@]host:port (implicit TLS), or file:DIR (one .eml per message, CRLF line endings).',
    parse: upstreamUrl,
    secret: true,
  },
  upstreamInsecureAuth: {
    key: 'upstreamInsecureAuth',
    env: 'SMIME_RELAY_UPSTREAM_INSECURE_AUTH',
    flag: '--upstream-insecure-auth',
    default: 'false',
    doc: 'With a user and password in an smtp:// upstream, the relay authenticates only after STARTTLS; an upstream that does not offer it gets no AUTH, and clients get 451 4.7.0. true sends the password without TLS too: only for an MTA on loopback.',
    parse: bool,
  },
  cert: {
    key: 'cert',
    env: 'SMIME_RELAY_CERT',
    aliases: ['TATTLER_EMAIL_SMIME_CERT'],
    flag: '--cert',
    default: undefined,
    defaultText: 'development certificate, generated in certs/dev/ (file: upstream only)',
    doc: 'A PEM bundle (private key, certificate and chain in one file, in any order), a PKCS#12 file (.p12/.pfx), or a directory of them (one certificate per mailbox). Reloaded on change and on SIGHUP. TATTLER_EMAIL_SMIME_CERT is accepted as an alias.',
    parse: text,
  },
  certPasswordFile: {
    key: 'certPasswordFile',
    env: 'SMIME_RELAY_CERT_PASSWORD_FILE',
    flag: '--cert-password-file',
    default: undefined,
    doc: 'File whose first line is the passphrase of an encrypted private key or a PKCS#12 file. Keep it mode 0600.',
    parse: text,
  },
  pkcs11Module: {
    key: 'pkcs11Module',
    env: 'SMIME_RELAY_PKCS11_MODULE',
    flag: '--pkcs11-module',
    default: undefined,
    defaultText: '(unset: keys come from the certificate files)',
    doc: "Path of the PKCS#11 module of the token that holds the private keys, e.g. /usr/lib/softhsm/libsofthsm2.so. A certificate file without a private key (certificate and chain, PEM) is then paired with the token's private key whose public key matches. Native engine only; needs the optional pkcs11js binding (see Certificates). Set together with SMIME_RELAY_PKCS11_TOKEN and SMIME_RELAY_PKCS11_PIN_FILE.",
    parse: text,
  },
  pkcs11Token: {
    key: 'pkcs11Token',
    env: 'SMIME_RELAY_PKCS11_TOKEN',
    flag: '--pkcs11-token',
    default: undefined,
    doc: 'Label of the PKCS#11 token that holds the keys.',
    parse: text,
  },
  pkcs11PinFile: {
    key: 'pkcs11PinFile',
    env: 'SMIME_RELAY_PKCS11_PIN_FILE',
    flag: '--pkcs11-pin-file',
    default: undefined,
    doc: "File whose first line is the token's user PIN. Keep it mode 0600. A PIN the token refused is not tried again until the file changes (send SIGHUP after fixing it), so the relay never locks the token.",
    parse: text,
  },
  revocation: {
    key: 'revocation',
    env: 'SMIME_RELAY_REVOCATION',
    flag: '--revocation',
    default: 'soft',
    doc: "Check whether the relay's own certificates were revoked: OCSP (the responder in the certificate's AIA), else its CRL distribution point; at load, every SMIME_RELAY_REVOCATION_INTERVAL, and when the responder's answer expires. A revoked certificate stops signing unless off: its mail gets 451 4.7.1. soft: a responder that cannot be reached is a warning and signing goes on. hard: it is treated like revoked. off: no checks.",
    parse: oneOf(['off', 'soft', 'hard'] as const),
  },
  revocationInterval: {
    key: 'revocationInterval',
    env: 'SMIME_RELAY_REVOCATION_INTERVAL',
    flag: '--revocation-interval',
    default: '6h',
    doc: "How often the revocation status is checked again (30s, 15m, 6h, 1d; at most 7d); sooner when the responder's nextUpdate says its answer expires earlier. A failed check is retried within 5 minutes.",
    parse: duration,
  },
  onMissingCert: {
    key: 'onMissingCert',
    env: 'SMIME_RELAY_ON_MISSING_CERT',
    flag: '--on-missing-cert',
    default: 'reject',
    doc: 'What to do with mail from a mailbox whose certificate is expired or unusable. reject: 451 4.7.1 (mail waits in the client queue; a mailbox never configured gets 550 5.7.1). send-unsigned: forward it unchanged and log a warning.',
    parse: oneOf(['reject', 'send-unsigned'] as const),
  },
  maxSize: {
    key: 'maxSize',
    env: 'SMIME_RELAY_MAX_SIZE',
    flag: '--max-size',
    default: '26214400',
    defaultText: '26214400 (25 MiB)',
    doc: 'Largest message accepted, in bytes (suffixes KiB, MiB, GiB allowed). Checked against SIZE= and against the bytes received; larger gets 552 5.3.4.',
    parse: bytes,
  },
  memoryBudget: {
    key: 'memoryBudget',
    env: 'SMIME_RELAY_MEMORY_BUDGET',
    flag: '--memory-budget',
    default: '512MiB',
    doc: 'Most memory the messages in progress may hold together: received, prepared and signed copies (suffixes KiB, MiB, GiB allowed). A message that does not fit waits at MAIL FROM when it declared SIZE= (at most 30 s, and at most half SMIME_RELAY_IDLE_TIMEOUT_MS), otherwise gets 452 4.3.1, which its client retries. It must hold one SMIME_RELAY_MAX_SIZE message being signed (2.4 × its size), or the relay does not start.',
    parse: bytes,
  },
  maxRecipients: {
    key: 'maxRecipients',
    env: 'SMIME_RELAY_MAX_RECIPIENTS',
    flag: '--max-recipients',
    default: '100',
    doc: 'Most RCPT TO per message (RFC 5321 §4.5.3.1.8 requires at least 100); one more gets 452 4.5.3 and the client sends the rest in another transaction.',
    parse: positiveInt,
  },
  maxClients: {
    key: 'maxClients',
    env: 'SMIME_RELAY_MAX_CLIENTS',
    flag: '--max-clients',
    default: '200',
    doc: 'Most simultaneous client connections; one more gets 421 4.3.2 and is closed. With more than 80% of them in use the relay is in stress mode: a client that sends less than 1 KiB/s over 10 s (nothing at all included) gets 421 4.4.2, so slow clients cannot hold every slot.',
    parse: positiveInt,
  },
  maxClientsPerIp: {
    key: 'maxClientsPerIp',
    env: 'SMIME_RELAY_MAX_CLIENTS_PER_IP',
    flag: '--max-clients-per-ip',
    default: '50',
    doc: 'Most simultaneous connections from one client address, so one client cannot take every slot; one more gets 421 4.7.0. Leave room for an app that opens a connection per message from many workers (a closing connection still counts for a moment).',
    parse: positiveInt,
  },
  idleTimeoutMs: {
    key: 'idleTimeoutMs',
    env: 'SMIME_RELAY_IDLE_TIMEOUT_MS',
    flag: '--idle-timeout-ms',
    default: '60000',
    doc: 'Close a client connection that sends nothing for this long (421); 10 s in stress mode (see SMIME_RELAY_MAX_CLIENTS). Every byte restarts it; SMIME_RELAY_TRANSACTION_TIMEOUT_MS bounds slow senders.',
    parse: millis,
  },
  transactionTimeoutMs: {
    key: 'transactionTimeoutMs',
    env: 'SMIME_RELAY_TRANSACTION_TIMEOUT_MS',
    flag: '--transaction-timeout-ms',
    default: '300000',
    doc: 'Deadline for a client to get from connecting (or from its previous message) to the end of DATA; trickling bytes does not extend it. Past it: 421 4.4.2 and the connection is closed. Signing and forwarding are not counted.',
    parse: positiveInt,
  },
  shutdownTimeoutMs: {
    key: 'shutdownTimeoutMs',
    env: 'SMIME_RELAY_SHUTDOWN_TIMEOUT_MS',
    flag: '--shutdown-timeout-ms',
    default: '30000',
    doc: 'On SIGTERM, how long messages in progress may take to finish (sign and forward) before the remaining connections get 421 4.3.2 and the relay exits.',
    parse: millis,
  },
  lmtp: {
    key: 'lmtp',
    env: 'SMIME_RELAY_LMTP',
    flag: '--lmtp',
    default: 'false',
    doc: 'true: speak LMTP (RFC 2033) instead of SMTP on the listener, so after DATA every recipient gets its own reply, taken from the upstream answer for that recipient. For Postfix `lmtp:` transports that want exact per-recipient status.',
    parse: bool,
  },
  signing: {
    key: 'signing',
    env: 'SMIME_RELAY_SIGNING',
    flag: '--signing',
    default: 'on',
    doc: 'on: sign every message. off: forward unchanged (pass-through; sender checks still apply). Only an explicit off forwards unsigned mail.',
    parse: oneOf(['on', 'off'] as const),
  },
  engine: {
    key: 'engine',
    env: 'SMIME_RELAY_ENGINE',
    flag: '--engine',
    default: 'native',
    doc: 'native: sign in-process (Node crypto or a PKCS#11 token, CMS SignedData with the signed attributes of RFC 8551 §2.5; passes the three-verifier interop suite). openssl: run `openssl cms -sign -cades` per message (the reference; keys from files only, so it refuses to start with SMIME_RELAY_PKCS11_MODULE).',
    parse: oneOf(['native', 'openssl'] as const),
  },
  selfVerify: {
    key: 'selfVerify',
    env: 'SMIME_RELAY_SELF_VERIFY',
    flag: '--self-verify',
    default: 'on',
    doc: 'on: before forwarding, read the exact outgoing bytes back as a recipient would (split, digest, signature with the signing certificate); a message that does not verify is not forwarded and the client gets 451 4.7.0. off: skip the check.',
    parse: oneOf(['on', 'off'] as const),
  },
  signTimeoutMs: {
    key: 'signTimeoutMs',
    env: 'SMIME_RELAY_SIGN_TIMEOUT_MS',
    flag: '--sign-timeout-ms',
    default: '30000',
    doc: 'Kill an openssl signing process that runs longer than this; the client gets 451 4.7.0.',
    parse: millis,
  },
  headerProtection: {
    key: 'headerProtection',
    env: 'SMIME_RELAY_HEADER_PROTECTION',
    flag: '--header-protection',
    default: 'off',
    doc: 'clear: copy From, To, Cc, Subject, Date, Message-ID and Reply-To into the signed part and mark it hp="clear" (RFC 9788), so recent Thunderbird shows them as protected; other clients ignore the copies. off: sign the content headers only.',
    parse: oneOf(['off', 'clear'] as const),
  },
  stripDkim: {
    key: 'stripDkim',
    env: 'SMIME_RELAY_STRIP_DKIM',
    flag: '--strip-dkim',
    default: 'false',
    doc: 'Remove DKIM-Signature headers that arrive with a message. S/MIME signing changes the body, so they no longer verify; either way the relay logs one warning per message naming their d= domains.',
    parse: bool,
  },
  dkimDomain: {
    key: 'dkimDomain',
    env: 'SMIME_RELAY_DKIM_DOMAIN',
    flag: '--dkim-domain',
    default: undefined,
    defaultText: '(unset: no DKIM signing)',
    doc: 'DKIM-sign every outgoing message after S/MIME signing, as this domain (d=). Set together with SMIME_RELAY_DKIM_SELECTOR and SMIME_RELAY_DKIM_KEY, or not at all.',
    parse: z.string().trim().toLowerCase().regex(/^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/, 'expected a domain name such as example.com'),
  },
  dkimSelector: {
    key: 'dkimSelector',
    env: 'SMIME_RELAY_DKIM_SELECTOR',
    flag: '--dkim-selector',
    default: undefined,
    defaultText: '(unset)',
    doc: 'DKIM selector (s=); the public key is published at SELECTOR._domainkey.DOMAIN.',
    parse: z.string().trim().regex(/^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$/, 'expected a selector such as smime2026'),
  },
  dkimKey: {
    key: 'dkimKey',
    env: 'SMIME_RELAY_DKIM_KEY',
    flag: '--dkim-key',
    default: undefined,
    defaultText: '(unset)',
    doc: 'File with the DKIM private key: unencrypted PEM, RSA (2048 bits recommended), readable by the relay only.',
    parse: text,
  },
  upstreamTimeoutMs: {
    key: 'upstreamTimeoutMs',
    env: 'SMIME_RELAY_UPSTREAM_TIMEOUT_MS',
    flag: '--upstream-timeout-ms',
    default: '60000',
    doc: 'Give up on an upstream that does not answer within this time; the client gets 451 4.4.1.',
    parse: millis,
  },
  upstreamPoolSize: {
    key: 'upstreamPoolSize',
    env: 'SMIME_RELAY_UPSTREAM_POOL_SIZE',
    flag: '--upstream-pool-size',
    default: '8',
    doc: 'Connections kept open to an smtp(s) upstream.',
    parse: positiveInt,
  },
  upstreamTlsVerify: {
    key: 'upstreamTlsVerify',
    env: 'SMIME_RELAY_UPSTREAM_TLS_VERIFY',
    flag: '--upstream-tls-verify',
    default: 'true',
    doc: "Verify the upstream's TLS certificate (STARTTLS or smtps). false accepts any certificate, which lets anyone on the path read and change signed mail; it is logged as a warning at start.",
    parse: bool,
  },
  greetingDelayMs: {
    key: 'greetingDelayMs',
    env: 'SMIME_RELAY_GREETING_DELAY_MS',
    flag: '--greeting-delay-ms',
    default: '100',
    doc: 'How long a client that is neither loopback nor allow-listed waits for the 220 greeting; one that talks before it gets 421 (early-talker check, as smtp-server does by default). Loopback and allow-listed clients are greeted at once. 0 turns the delay off.',
    parse: millis,
  },
  logLevel: {
    key: 'logLevel',
    env: 'LOG_LEVEL',
    flag: '--log-level',
    default: 'info',
    doc: 'pino log level: fatal, error, warn, info, debug, trace or silent.',
    parse: oneOf(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const),
  },
  logFormat: {
    key: 'logFormat',
    env: 'LOG_FORMAT',
    flag: '--log-format',
    default: 'json',
    doc: 'json: one JSON object per line (for log shippers). pretty: coloured, human-readable lines for a terminal (pino-pretty).',
    parse: oneOf(['json', 'pretty'] as const),
  },
  metrics: {
    key: 'metrics',
    env: 'SMIME_RELAY_METRICS',
    flag: '--metrics',
    default: undefined,
    defaultText: 'off',
    doc: 'host:port for an HTTP listener serving /metrics (Prometheus), /healthz (liveness) and /readyz (a valid certificate is loaded and the upstream answered its last probe). Keep it on a management address.',
    parse: hostPort,
  },
  canaryTo: {
    key: 'canaryTo',
    env: 'SMIME_RELAY_CANARY_TO',
    flag: '--canary-to',
    default: undefined,
    defaultText: '(unset: no canary)',
    doc: 'A mailbox the canary is sent to: every SMIME_RELAY_CANARY_INTERVAL the relay signs a test message through its own pipeline and upstream, reads it back over SMIME_RELAY_CANARY_IMAP, diagnoses it and deletes it. Set together with SMIME_RELAY_CANARY_IMAP.',
    parse: z.string().trim().regex(/^[^@\s<>]+@[^@\s<>]+$/, 'expected a mailbox such as canary@example.org'),
  },
  canaryImap: {
    key: 'canaryImap',
    env: 'SMIME_RELAY_CANARY_IMAP',
    flag: '--canary-imap',
    default: undefined,
    defaultText: '(unset)',
    doc: 'How to read the canary mailbox: imaps://user:pass@host:993/INBOX, or imap://user:pass@host:143/INBOX with STARTTLS required. The server certificate is verified (a private CA: NODE_EXTRA_CA_CERTS).',
    parse: imapUrl,
    secret: true,
  },
  canaryFrom: {
    key: 'canaryFrom',
    env: 'SMIME_RELAY_CANARY_FROM',
    flag: '--canary-from',
    default: undefined,
    defaultText: '(the first mailbox of the loaded certificates)',
    doc: 'The covered mailbox the canary is signed as.',
    parse: z.string().trim().toLowerCase().regex(/^[^@\s<>]+@[^@\s<>]+$/, 'expected a mailbox such as alerts@example.com'),
  },
  canaryInterval: {
    key: 'canaryInterval',
    env: 'SMIME_RELAY_CANARY_INTERVAL',
    flag: '--canary-interval',
    default: '1h',
    doc: 'How often the canary runs (a duration such as 1h, 30m or 90s). A canary that has not arrived after this long, or after 10 minutes when that is shorter, counts as missing.',
    parse: duration,
  },
  proxyProtocol: {
    key: 'proxyProtocol',
    env: 'SMIME_RELAY_PROXY_PROTOCOL',
    flag: '--proxy-protocol',
    default: undefined,
    defaultText: 'off',
    doc: 'Comma-separated networks (CIDR) of the load balancers that send a PROXY protocol v1 header (HAProxy `send-proxy`). Connections from them must start with it, and the address in it is the client for logs, SMIME_RELAY_ALLOW and the per-address limits; anyone else who sends one is disconnected (421 4.7.0). The old value true is refused.',
    parse: proxyNetworks,
  },
  xforwardHosts: {
    key: 'xforwardHosts',
    env: 'SMIME_RELAY_XFORWARD_HOSTS',
    flag: '--xforward-hosts',
    default: '127.0.0.0/8,::1',
    doc: 'Comma-separated networks (CIDR) that are offered XFORWARD (Postfix `smtp_send_xforward_command`) to name the original client in the log, like Postfix\'s smtpd_authorized_xforward_hosts; others get 550 5.7.0 if they send it. none: nobody.',
    parse: networksOrNone(['none']),
  },
} satisfies Record<string, Setting>;

export type SettingKey = keyof typeof settings;

type Parsed<K extends SettingKey> = z.output<(typeof settings)[K]['parse']>;

/** The validated configuration: settings without a default may be undefined. */
export type Config = {
  readonly [K in SettingKey]: (typeof settings)[K]['default'] extends string ? Parsed<K> : Parsed<K> | undefined;
};

export const settingList: readonly Setting[] = Object.values(settings);

/** A yes/no setting: its --flag may stand alone (`--lmtp` means `--lmtp true`). */
export const isSwitch = (s: Setting): boolean => s.parse === bool;
