import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

export const VERSION_HELP = `Usage: smime-relay version   (or: smime-relay --version, smime-relay -V)

Prints the version of smime-relay, of node and of the OpenSSL it signs with (node's own for the
native engine, the openssl program for SMIME_RELAY_ENGINE=openssl), one per line. Exit status 0.
`;

function relayVersion(): string {
  // dist/commands/version.js and src/commands/version.ts both sit two levels below package.json.
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

/** The openssl program's own version line, or why there is none (it is optional: see README). */
function opensslProgram(): string {
  const r = spawnSync('openssl', ['version'], { encoding: 'utf8', timeout: 10_000, stdio: ['ignore', 'pipe', 'ignore'] });
  const line = r.status === 0 ? (r.stdout ?? '').trim().split('\n')[0] : undefined;
  return line ?? 'not found (needed only by SMIME_RELAY_ENGINE=openssl, PKCS#12 files and the development certificate)';
}

/** `smime-relay version`, `--version`, `-V`: what a bug report needs, on stdout. */
export async function versionCommand(argv: string[]): Promise<number> {
  if (argv.length === 1 && (argv[0] === '--help' || argv[0] === '-h')) {
    process.stdout.write(VERSION_HELP);
    return 0;
  }
  if (argv.length) {
    process.stderr.write(`smime-relay version: takes no arguments, got '${argv.join(' ')}'\n\n${VERSION_HELP}`);
    return 2;
  }
  process.stdout.write(
    `smime-relay ${relayVersion()}\n` +
      `node ${process.version} (OpenSSL ${process.versions.openssl}: the native engine)\n` +
      `openssl program: ${opensslProgram()}\n`,
  );
  return 0;
}
