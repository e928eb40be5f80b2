import { z } from 'zod';

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

export const settings = {
  listen: {
    key: 'listen',
    env: 'SMIME_RELAY_LISTEN',
    flag: '--listen',
    default: '127.0.0.1:2525',
    doc: 'Address the SMTP listener binds, host:port.',
    parse: hostPort,
  },
  upstream: {
    key: 'upstream',
    env: 'SMIME_RELAY_UPSTREAM',
    flag: '--upstream',
    default: 'file:outbox',
    doc: 'Where signed mail goes: smtp://[user:pass@]host:port (STARTTLS when offered), smtps://host:port (implicit TLS), or file:DIR (one .eml per message).',
    parse: upstreamUrl,
    secret: true,
  },
  cert: {
    key: 'cert',
    env: 'SMIME_RELAY_CERT',
    aliases: ['TATTLER_EMAIL_SMIME_CERT'],
    flag: '--cert',
    default: undefined,
    defaultText: 'development certificate, generated in certs/dev/ (file: upstream only)',
    doc: 'PEM bundle with private key, certificate and chain in one file, in any order. TATTLER_EMAIL_SMIME_CERT is accepted as an alias.',
    parse: text,
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
    default: 'openssl',
    doc: 'native: sign in-process (Node crypto, CMS built in src/signing/native.ts). openssl: run `openssl cms -sign` per message (the reference; also the way to use keys held by OpenSSL providers).',
    parse: oneOf(['native', 'openssl'] as const),
  },
  signTimeoutMs: {
    key: 'signTimeoutMs',
    env: 'SMIME_RELAY_SIGN_TIMEOUT_MS',
    flag: '--sign-timeout-ms',
    default: '30000',
    doc: 'Kill an openssl signing process that runs longer than this; the client gets 451 4.7.0.',
    parse: millis,
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
  logLevel: {
    key: 'logLevel',
    env: 'LOG_LEVEL',
    flag: '--log-level',
    default: 'info',
    doc: 'pino log level: fatal, error, warn, info, debug, trace or silent.',
    parse: oneOf(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const),
  },
} satisfies Record<string, Setting>;

export type SettingKey = keyof typeof settings;

type Parsed<K extends SettingKey> = z.output<(typeof settings)[K]['parse']>;

/** The validated configuration: settings without a default may be undefined. */
export type Config = {
  readonly [K in SettingKey]: (typeof settings)[K]['default'] extends string ? Parsed<K> : Parsed<K> | undefined;
};

export const settingList: readonly Setting[] = Object.values(settings);
