#!/usr/bin/env node
import { parseArgs } from 'node:util';
import { hashPasswordCommand } from './access/hash-password.js';
import { startRelay } from './app.js';
import { checkCert } from './certs/check-cert.js';
import { signCommand } from './commands/sign.js';
import { diagnoseCommand } from './commands/diagnose.js';
import { CANARY_HELP, canaryOnce } from './commands/canary.js';
import { DEV_MAILBOX } from './certs/dev.js';
import { ConfigError, loadConfig } from './config/load.js';
import { isSwitch, settingList } from './config/settings.js';
import { configExampleYaml, configTableMarkdown } from './config/table.js';
import { createLogger, prettyDestination } from './log.js';

const flagName = (flag: string) => flag.replace(/^--/, '');

function settingsHelp(): string {
  return settingList
    .map((s) => `  ${s.flag} VALUE\n      ${s.doc}\n      env ${s.env}${s.aliases ? ` (alias ${s.aliases.join(', ')})` : ''}; default: ${s.defaultText ?? s.default ?? '(unset)'}`)
    .join('\n');
}

const HELP = {
  main: `Usage: smime-relay <command> [options]

An SMTP relay that S/MIME-signs mail in transit.

Commands:
  serve        run the relay (default settings: listen 127.0.0.1:2525, sign with a development
               certificate, write signed mail to ./outbox/)
  config       show the effective configuration and where each value came from
  check-cert   validate a certificate bundle, PKCS#12 file or directory before deploying it
  hash-password  read a password and print its scrypt hash for the users file (SMIME_RELAY_USERS)
  sign         sign one message file offline, exactly as the relay would (--cert, --in, --out)
  diagnose     check a signed message as it arrived; name the part and the change that broke it
  canary       send one signed canary through the real mail path and diagnose it (--once)

Run 'smime-relay <command> --help' for the options of a command.
`,
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
  return { help: false as const, values, ...loaded };
}

async function configCommand(argv: string[]): Promise<number> {
  const parsed = configFromArgs(argv, { print: { type: 'boolean' }, markdown: { type: 'boolean' }, example: { type: 'boolean' } });
  if (parsed.help || (!parsed.values.print && !parsed.values.markdown && !parsed.values.example)) {
    process.stdout.write(HELP.config);
    return parsed.help ? 0 : 2;
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
  const relay = await startRelay(config, log);

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
  if (parsed.help || !parsed.values.once) {
    process.stdout.write(CANARY_HELP);
    return parsed.help ? 0 : 2;
  }
  const log = createLogger(parsed.config.logLevel, parsed.config.logFormat === 'pretty' ? await prettyDestination() : undefined);
  const code = await canaryOnce(parsed.config, log, (s) => process.stdout.write(s));
  log.flush();
  return code;
}

const commands: Record<string, (argv: string[]) => Promise<number>> = {
  serve,
  config: configCommand,
  'hash-password': hashPasswordCommand,
  sign: (argv) => signCommand(argv),
  diagnose: (argv) => diagnoseCommand(argv),
  canary,
  'check-cert': (argv) => checkCert(argv, (line) => process.stdout.write(line.endsWith('\n') ? line : line + '\n')),
};

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (!command || command === '--help' || command === '-h' || command === 'help') {
    process.stdout.write(HELP.main);
    return command ? 0 : 2;
  }
  const run = commands[command];
  if (!run) {
    process.stderr.write(`smime-relay: unknown command '${command}'\n\n${HELP.main}`);
    return 2;
  }
  return run(rest);
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    if (e instanceof ConfigError || (e instanceof Error && 'code' in e && String(e.code).startsWith('ERR_PARSE_ARGS'))) {
      process.stderr.write(`smime-relay: ${e.message}\n`);
      process.exitCode = 2;
    } else {
      process.stderr.write(`smime-relay: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
      process.exitCode = 1;
    }
  },
);
