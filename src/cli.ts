#!/usr/bin/env node
import { parseArgs } from 'node:util';
import { hashPasswordCommand } from './access/hash-password.js';
import { startRelay } from './app.js';
import { checkCert } from './certs/check-cert.js';
import { CertificateError } from './certs/findings.js';
import { signCommand } from './commands/sign.js';
import { diagnoseCommand } from './commands/diagnose.js';
import { CANARY_HELP, canaryOnce } from './commands/canary.js';
import { versionCommand } from './commands/version.js';
import { DEV_MAILBOX } from './certs/dev.js';
import { ConfigError, loadConfig, settingNames } from './config/load.js';
import { isSwitch, settingList, type MilterAddress } from './config/settings.js';
import { describeMilterAddress } from './milter/listener.js';
import { configExampleYaml, configTableMarkdown } from './config/table.js';
import { createLogger, prettyDestination } from './log.js';
import { StartupError } from './startup-error.js';

const flagName = (flag: string) => flag.replace(/^--/, '');

function settingsHelp(): string {
  return settingList
    .map((s) => `  ${s.flag} VALUE\n      ${s.doc}\n      env ${s.env}${s.aliases ? ` (alias ${s.aliases.join(', ')})` : ''}; default: ${s.defaultText ?? s.default ?? '(unset)'}`)
    .join('\n');
}

const HELP = {
  get main() {
    const width = Math.max(...Object.keys(commands).map((name) => name.length)) + 2;
    const list = Object.entries(commands)
      .map(([name, c]) => `  ${name.padEnd(width)}${c.summary.replace(/\n/g, `\n  ${' '.repeat(width)}`)}`)
      .join('\n');
    return `Usage: smime-relay <command> [options]

An SMTP relay that S/MIME-signs mail in transit.

Commands:
${list}

Run 'smime-relay <command> --help' for the options of a command.
`;
  },
  get config() {
    return `Usage: smime-relay config --print | --markdown | --example [--config FILE] [--config-dir DIR] [settings...]

  --print       show every setting's effective value (secrets masked) and its source
  --markdown    print the configuration table of the README
  --example     print config/smime-relay.example.yaml: every setting with its default
${SOURCE_OPTIONS}
  -h, --help    show this help
`;
  },
  serve: () => `Usage: smime-relay serve [--config FILE] [--config-dir DIR] [settings...]

Settings come from flags, then the environment, then --config FILE (YAML or JSON, keys as in the
README), then --config-dir DIR (one file per variable name, envdir style), then defaults.

Options:
${SOURCE_OPTIONS}
  -h, --help          show this help

Settings:
${settingsHelp()}
`,
};

const SOURCE_OPTIONS = `  --config FILE       YAML or JSON configuration file
  --config-dir DIR    directory with one file per setting, named like the environment variable`;

const SWITCHES = new Set(settingList.filter(isSwitch).map((s) => s.flag));
const SWITCH_VALUE = /^(true|false|yes|no|on|off|1|0)$/i;

/** `--lmtp` alone means `--lmtp true`; `--lmtp false` and `--lmtp=false` work as written. */
function withSwitchValues(argv: string[]): string[] {
  return argv.flatMap((arg, i) => (SWITCHES.has(arg) && !SWITCH_VALUE.test(argv[i + 1] ?? '') ? [arg, 'true'] : [arg]));
}

/** Parses --config, --config-dir and one --flag per setting, then resolves every source. */
function configFromArgs(argv: string[], extra: Record<string, { type: 'boolean' }> = {}) {
  const options: Record<string, { type: 'string' | 'boolean'; short?: string }> = {
    config: { type: 'string' },
    'config-dir': { type: 'string' },
    help: { type: 'boolean', short: 'h' },
    ...extra,
  };
  for (const s of settingList) options[flagName(s.flag)] = { type: 'string' };
  const { values } = parseArgs({ args: withSwitchValues(argv), options, allowPositionals: false });
  if (values.help) return { help: true as const, values };
  const flags: Record<string, string | undefined> = {};
  for (const s of settingList) flags[s.key] = values[flagName(s.flag)] as string | undefined;
  const loaded = loadConfig({
    flags,
    env: process.env,
    configFile: values.config as string | undefined,
    configDir: values['config-dir'] as string | undefined,
  });
  debugging = ['debug', 'trace'].includes(loaded.config.logLevel);
  return { help: false as const, values, ...loaded };
}

async function configCommand(argv: string[]): Promise<number> {
  const parsed = configFromArgs(argv, { print: { type: 'boolean' }, markdown: { type: 'boolean' }, example: { type: 'boolean' } });
  if (parsed.help) {
    process.stdout.write(HELP.config);
    return 0;
  }
  if (!parsed.values.print && !parsed.values.markdown && !parsed.values.example) {
    process.stderr.write(`smime-relay config: say what to show: --print, --markdown or --example\n\n${HELP.config}`);
    return 2;
  }
  if (parsed.values.markdown) {
    process.stdout.write(configTableMarkdown());
    return 0;
  }
  if (parsed.values.example) {
    process.stdout.write(configExampleYaml());
    return 0;
  }
  for (const s of settingList) {
    const value = (parsed.config as Record<string, unknown>)[s.key];
    const { source, name } = parsed.sources[s.key]!;
    process.stdout.write(`${s.env}=${displayValue(s.key, value)}  # ${source}${source === 'default' ? '' : `: ${name}`}\n`);
  }
  return 0;
}

/** Renders a parsed value back into the form a user writes, with secrets masked. */
function displayValue(key: string, value: unknown): string {
  if (value === undefined) return '';
  if (value === 'off') return 'off';
  if (key === 'milter') return describeMilterAddress(value as MilterAddress);
  if (key === 'listen' || key === 'metrics') {
    const v = value as { host: string; port: number };
    return v.host.includes(':') ? `[${v.host}]:${v.port}` : `${v.host}:${v.port}`;
  }
  if (key === 'upstream' || key === 'canaryImap') return (value as { display: string }).display;
  return String(value);
}

async function serve(argv: string[]): Promise<number> {
  const parsed = configFromArgs(argv);
  if (parsed.help) {
    process.stdout.write(HELP.serve());
    return 0;
  }
  const { config } = parsed;
  const log = createLogger(config.logLevel, config.logFormat === 'pretty' ? await prettyDestination() : undefined);
  let relay: Awaited<ReturnType<typeof startRelay>>;
  try {
    relay = await startRelay(config, log, { names: settingNames(parsed.sources) });
  } catch (e) {
    // pino writes asynchronously: what was logged before a refused start comes before its message.
    await new Promise<void>((resolve) => log.flush(() => resolve()));
    throw e;
  }

  if (!config.cert && config.upstream.kind === 'file') {
    const { host, port } = relay.address;
    // One line: how to send a test message, where it lands, and how to verify it.
    process.stdout.write(
      `Try it: swaks --server ${host}:${port} --from ${DEV_MAILBOX} --to you@example.com` +
        ` ; the signed message lands in ${config.upstream.dir}/ ;` +
        ` verify: openssl cms -verify -in ${config.upstream.dir}/<file>.eml -CAfile certs/dev/ca.crt -purpose smimesign -out /dev/null\n`,
    );
  }

  // SIGHUP: re-read certificates and users without dropping a connection.
  const reload = () => {
    log.info({ signal: 'SIGHUP' }, 'reloading certificates and users');
    try {
      relay.reload();
    } catch (e) {
      log.error({ err: e }, 'reload failed; the previous certificates and users stay in service');
    }
  };
  process.on('SIGHUP', reload);
  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      log.info({ signal }, 'shutting down: finishing transactions in progress');
      resolve();
    };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
  await relay.close();
  process.off('SIGHUP', reload);
  log.flush();
  // close() is bounded by SMIME_RELAY_SHUTDOWN_TIMEOUT_MS; whatever it had to abandon (a signing
  // child, an upstream socket) must not keep the process alive past it. Unref'd: a clean
  // shutdown exits before this fires.
  setTimeout(() => process.exit(0), 2_000).unref();
  return 0;
}

async function canary(argv: string[]): Promise<number> {
  const parsed = configFromArgs(argv, { once: { type: 'boolean' } });
  if (parsed.help) {
    process.stdout.write(CANARY_HELP);
    return 0;
  }
  if (!parsed.values.once) {
    process.stderr.write(`smime-relay canary: --once is required\n\n${CANARY_HELP}`);
    return 2;
  }
  const log = createLogger(parsed.config.logLevel, parsed.config.logFormat === 'pretty' ? await prettyDestination() : undefined);
  const code = await canaryOnce(parsed.config, log, (s) => process.stdout.write(s));
  log.flush();
  return code;
}

interface Command {
  /** One line (or a few) for `smime-relay --help`. */
  readonly summary: string;
  readonly run: (argv: string[]) => Promise<number>;
}

const stdoutLine = (line: string) => process.stdout.write(line.endsWith('\n') ? line : line + '\n');
const stderrLine = (line: string) => process.stderr.write(line.endsWith('\n') ? line : line + '\n');

/** Every command, in the order `--help` lists them; a new command is one entry here. */
const commands: Record<string, Command> = {
  serve: {
    summary: 'run the relay (default settings: listen 127.0.0.1:2525, sign with a development\ncertificate, write signed mail to ./outbox/)',
    run: serve,
  },
  config: { summary: 'show the effective configuration and where each value came from', run: configCommand },
  'check-cert': {
    summary: 'validate a certificate bundle, PKCS#12 file or directory before deploying it',
    run: (argv) => checkCert(argv, stdoutLine, new Date(), stderrLine),
  },
  'hash-password': { summary: 'read a password and print its scrypt hash for the users file (SMIME_RELAY_USERS)', run: hashPasswordCommand },
  sign: { summary: 'sign one message file offline, exactly as the relay would (--cert, --in, --out)', run: (argv) => signCommand(argv) },
  diagnose: {
    summary: 'check a signed message as it arrived; name the part and the change that broke it',
    run: (argv) => diagnoseCommand(argv),
  },
  canary: { summary: 'send one signed canary through the real mail path and diagnose it (--once)', run: canary },
  version: { summary: 'print the version of smime-relay, node and openssl (also --version, -V)', run: versionCommand },
};

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === '--help' || command === '-h' || command === 'help') {
    process.stdout.write(HELP.main);
    return 0;
  }
  if (!command) {
    process.stderr.write(`smime-relay: which command?\n\n${HELP.main}`);
    return 2;
  }
  if (command === '--version' || command === '-V') return commands.version!.run(rest);
  const run = commands[command]?.run;
  if (!run) {
    process.stderr.write(`smime-relay: unknown command '${command}'\n\n${HELP.main}`);
    return 2;
  }
  return run(rest);
}

/** LOG_LEVEL=debug (or trace): a failure also shows its stack trace. Updated once the settings are read. */
let debugging = ['debug', 'trace'].includes((process.env.LOG_LEVEL ?? '').trim().toLowerCase());

/**
 * A command that fails says so in one message on stderr: what went wrong and what to fix, as the
 * error worded it. A stack trace helps only whoever debugs the relay itself, so it is shown at
 * LOG_LEVEL=debug only. Exit status: 2 for usage and configuration errors, 1 for anything else.
 */
function reportFailure(e: unknown): number {
  const usage = e instanceof ConfigError || (e instanceof Error && 'code' in e && String(e.code).startsWith('ERR_PARSE_ARGS'));
  const expected = usage || e instanceof StartupError || e instanceof CertificateError;
  const message = e instanceof Error ? e.message : String(e);
  process.stderr.write(`smime-relay: ${message}\n`);
  if (debugging && e instanceof Error && e.stack) process.stderr.write(`${e.stack}\n`);
  else if (!expected) process.stderr.write('(this looks like a bug in smime-relay; run with LOG_LEVEL=debug to see where it happened)\n');
  return usage ? 2 : 1;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.exitCode = reportFailure(e);
  },
);
