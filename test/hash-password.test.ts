/**
 * `smime-relay hash-password` from a pipe, in-process: what a script feeding it a password gets on
 * stdout and stderr, and the exit code. The hashes are checked with real scrypt and read back by
 * the users-file parser. (The terminal prompt, and the CLI as a child process, are in
 * test/access.test.ts.)
 */
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { hashPasswordCommand } from '../src/access/hash-password.js';
import { parsePasswordHash, verifyPassword } from '../src/access/password.js';
import { parseUsersFile } from '../src/access/users.js';

async function run(args: string[], input = '') {
  const out = { stdout: '', stderr: '' };
  const code = await hashPasswordCommand(args, {
    stdin: Readable.from([Buffer.from(input)]),
    stdout: { write: (t: string) => (out.stdout += t) },
    stderr: { write: (t: string) => (out.stderr += t) },
  });
  return { code, ...out };
}

describe('smime-relay hash-password, from a pipe', () => {
  it('--help prints the usage with the scrypt cost to stdout and exits 0', async () => {
    const r = await run(['--help']);
    expect(r).toMatchObject({ code: 0, stderr: '' });
    expect(r.stdout).toMatch(/^Usage: smime-relay hash-password \[--user NAME \[--mailboxes LIST\]\]\n/);
    expect(r.stdout).toContain('N=32768 r=8 p=1');
    expect((await run(['-h'])).stdout).toBe(r.stdout);
  });

  it('prints only the hash of the first line (CRLF or LF), never the password', async () => {
    const r = await run([], 'pass word\r\nsecond line\n');
    expect(r).toMatchObject({ code: 0, stderr: '' });
    expect(r.stdout).toMatch(/^scrypt\$32768\$8\$1\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+\n$/);
    expect(r.stdout).not.toContain('pass word');
    const hash = parsePasswordHash(r.stdout.trimEnd());
    expect(await verifyPassword('pass word', hash)).toBe(true);
    expect(await verifyPassword('pass word\r', hash)).toBe(false);
  });

  it('with --user and --mailboxes prints a users-file line; the list is trimmed and empty entries dropped', async () => {
    const r = await run(['--user', 'billing', '--mailboxes', ' billing@example.test , ,ops@example.test'], 's3cret\n');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^billing:scrypt\$[^:]+:billing@example\.test,ops@example\.test\n$/);
    const entry = parseUsersFile(r.stdout, 'stdout').get('billing')!;
    expect(entry.mailboxes).toEqual(['billing@example.test', 'ops@example.test']);
    expect(await verifyPassword('s3cret', entry.hash)).toBe(true);
  });

  it('with --user alone, or a mailbox list with nothing in it, the line has no mailbox field', async () => {
    for (const args of [['--user', 'ops'], ['--user', 'ops', '--mailboxes', ' , ']]) {
      const r = await run(args, 'x\n');
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/^ops:scrypt\$[^:]+\n$/);
      expect(parseUsersFile(r.stdout, 'stdout').get('ops')!.mailboxes).toBeUndefined();
    }
  });

  it.each([
    [['--mailboxes', 'a@example.test'], 'x\n', 2, 'smime-relay hash-password: --mailboxes needs --user\n'],
    [['--user', 'two words'], 'x\n', 2, "smime-relay hash-password: 'two words' is not a valid user name (no spaces or ':')\n"],
    [['--user', 'a:b'], 'x\n', 2, "smime-relay hash-password: 'a:b' is not a valid user name (no spaces or ':')\n"],
    [[], '', 1, 'smime-relay hash-password: empty password\n'],
    [[], '\nsecond line\n', 1, 'smime-relay hash-password: empty password\n'],
  ])('%j with input %j: exit %i and one line on stderr, nothing on stdout', async (args, input, code, stderr) => {
    expect(await run(args, input)).toEqual({ code, stdout: '', stderr });
  });
});
