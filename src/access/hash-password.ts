import { parseArgs } from 'node:util';
import { DEFAULT_SCRYPT, hashPassword } from './password.js';
import { askNewPassword } from './terminal-prompt.js';
import { isValidUserName } from './users.js';

export const HASH_PASSWORD_HELP = `Usage: smime-relay hash-password [--user NAME [--mailboxes LIST]]

Reads a password and prints its scrypt hash for the users file (SMIME_RELAY_USERS).
On a terminal it asks twice without echoing; from a pipe it reads the first line:

  smime-relay hash-password --user billing --mailboxes billing@example.com >> /etc/smime-relay/users
  printf '%s\\n' "$PASSWORD" | smime-relay hash-password

Options:
  --user NAME         print a whole users-file line (NAME:HASH) instead of the hash alone
  --mailboxes LIST    with --user: comma-separated sender mailboxes this user may sign for
                      (without it, every mailbox of the loaded certificates)
  -h, --help          show this help

Hash format: scrypt$N$r$p$salt$hash (base64), N=${DEFAULT_SCRYPT.N} r=${DEFAULT_SCRYPT.r} p=${DEFAULT_SCRYPT.p}.
`;

/** Where the command reads and writes: the process's own streams, or (in tests) others. */
export interface CommandStreams {
  stdin: AsyncIterable<Buffer | string> & { isTTY?: boolean };
  stdout: { write(text: string): unknown };
  stderr: { write(text: string): unknown };
}

async function readPiped(stdin: CommandStreams['stdin']): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of stdin) chunks.push(Buffer.from(chunk));
  // Stryker disable next-line StringLiteral: split() always returns a first element, so the fallback is never used.
  return Buffer.concat(chunks).toString('utf8').split(/\r?\n/)[0] ?? '';
}

export async function hashPasswordCommand(argv: string[], io: CommandStreams = process): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: { user: { type: 'string' }, mailboxes: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
    allowPositionals: false,
  });
  if (values.help) {
    io.stdout.write(HASH_PASSWORD_HELP);
    return 0;
  }
  if (values.mailboxes && !values.user) {
    io.stderr.write('smime-relay hash-password: --mailboxes needs --user\n');
    return 2;
  }
  if (values.user !== undefined && !isValidUserName(values.user)) {
    io.stderr.write(`smime-relay hash-password: '${values.user}' is not a valid user name (no spaces or ':')\n`);
    return 2;
  }
  let password: string;
  if (io.stdin.isTTY) {
    // The process's own terminal, on which echo is switched off.
    const asked = await askNewPassword();
    if ('problem' in asked) {
      io.stderr.write(`smime-relay hash-password: ${asked.problem}\n`);
      return 1;
    }
    password = asked.password;
  } else {
    password = await readPiped(io.stdin);
  }
  if (!password) {
    io.stderr.write('smime-relay hash-password: empty password\n');
    return 1;
  }
  const hash = await hashPassword(password);
  const mailboxes = values.mailboxes?.split(',').map((m) => m.trim()).filter(Boolean).join(',');
  io.stdout.write((values.user ? `${values.user}:${hash}${mailboxes ? `:${mailboxes}` : ''}` : hash) + '\n');
  return 0;
}
