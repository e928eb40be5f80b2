import { parseArgs } from 'node:util';
import { DEFAULT_SCRYPT, hashPassword } from './password.js';
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

/**
 * Reads one line per prompt from a terminal with echo off, so the password never shows on screen
 * or in scrollback. One reader for all prompts: typed-ahead input arrives in one chunk.
 * Resolves undefined on Ctrl-C or Ctrl-D.
 */
function readHidden(prompts: string[]): Promise<string[] | undefined> {
  const stdin = process.stdin;
  const answers: string[] = [];
  let current = '';
  let previous = '';
  return new Promise((resolve) => {
    const finish = (result: string[] | undefined) => {
      stdin.off('data', onData);
      stdin.setRawMode(false);
      stdin.pause();
      resolve(result);
    };
    const onData = (chunk: Buffer) => {
      for (const ch of chunk.toString('utf8')) {
        const afterCr = previous === '\r';
        previous = ch;
        if (ch === '\n' && afterCr) continue;
        if (ch === '\r' || ch === '\n') {
          answers.push(current);
          current = '';
          process.stderr.write('\n');
          if (answers.length === prompts.length) return finish(answers);
          process.stderr.write(prompts[answers.length]!);
        } else if (ch === '\u0003' || ch === '\u0004') {
          process.stderr.write('\n');
          return finish(undefined);
        } else if (ch === '\u007f' || ch === '\b') {
          current = current.slice(0, -1);
        } else {
          current += ch;
        }
      }
    };
    // Echo off before the prompt appears: a password typed or pasted the moment the prompt
    // shows must never be echoed by the terminal.
    stdin.setRawMode(true);
    process.stderr.write(prompts[0]!);
    stdin.resume();
    stdin.on('data', onData);
  });
}

async function readPiped(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8').split(/\r?\n/)[0] ?? '';
}

export async function hashPasswordCommand(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: { user: { type: 'string' }, mailboxes: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
    allowPositionals: false,
  });
  if (values.help) {
    process.stdout.write(HASH_PASSWORD_HELP);
    return 0;
  }
  if (values.mailboxes && !values.user) {
    process.stderr.write('smime-relay hash-password: --mailboxes needs --user\n');
    return 2;
  }
  if (values.user !== undefined && !isValidUserName(values.user)) {
    process.stderr.write(`smime-relay hash-password: '${values.user}' is not a valid user name (no spaces or ':')\n`);
    return 2;
  }
  let password: string;
  if (process.stdin.isTTY) {
    const answers = await readHidden(['Password: ', 'Repeat password: ']);
    if (!answers) {
      process.stderr.write('smime-relay hash-password: cancelled\n');
      return 1;
    }
    if (answers[0] !== answers[1]) {
      process.stderr.write('smime-relay hash-password: the passwords differ\n');
      return 1;
    }
    password = answers[0]!;
  } else {
    password = await readPiped();
  }
  if (!password) {
    process.stderr.write('smime-relay hash-password: empty password\n');
    return 1;
  }
  const hash = await hashPassword(password);
  const mailboxes = values.mailboxes?.split(',').map((m) => m.trim()).filter(Boolean).join(',');
  process.stdout.write((values.user ? `${values.user}:${hash}${mailboxes ? `:${mailboxes}` : ''}` : hash) + '\n');
  return 0;
}
