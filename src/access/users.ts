import { randomBytes } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { toMailbox, type Mailbox } from '../mime/mailbox.js';
import { DEFAULT_SCRYPT, parsePasswordHash, PasswordHashError, verifyPassword, type PasswordHash } from './password.js';

/**
 * Someone who authenticated with SMTP AUTH. `mailboxes` limits the senders (envelope and From
 * header) the relay signs for on this user's behalf, like signing-milter's auth-signing-table;
 * undefined means every mailbox of the loaded certificates.
 */
export interface Principal {
  readonly user: string;
  readonly mailboxes?: readonly Mailbox[];
}

interface UserEntry extends Principal {
  readonly hash: PasswordHash;
}

export class UsersFileError extends Error {
  override name = 'UsersFileError';
}

const USERNAME = /^[^\s:#][^\s:]{0,255}$/;
export const isValidUserName = (name: string): boolean => USERNAME.test(name);
const MAILBOX = /^[^\s@,<>]+@[^\s@,<>]+$/;

/**
 * The users file (SMIME_RELAY_USERS): one user per line, `#` starts a comment line.
 *
 *     username:scrypt$N$r$p$salt$hash[:mailbox,mailbox,...]
 */
export function parseUsersFile(text: string, path: string): Map<string, UserEntry> {
  const users = new Map<string, UserEntry>();
  const problems: string[] = [];
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (!line || line.startsWith('#')) return;
    const where = `${path} line ${i + 1}`;
    const fields = line.split(':');
    if (fields.length < 2 || fields.length > 3) {
      problems.push(`${where}: expected username:hash or username:hash:mailbox,mailbox`);
      return;
    }
    const [user, hashText, mailboxText] = fields as [string, string, string | undefined];
    if (!USERNAME.test(user)) return void problems.push(`${where}: '${user}' is not a valid user name (no spaces or ':')`);
    if (users.has(user)) return void problems.push(`${where}: user '${user}' appears twice`);
    let hash: PasswordHash;
    try {
      hash = parsePasswordHash(hashText);
    } catch (e) {
      // The hash field is never echoed: it may be a password pasted in by mistake.
      return void problems.push(`${where}: the password hash of '${user}' is invalid: ${(e as PasswordHashError).message}`);
    }
    let mailboxes: Mailbox[] | undefined;
    if (mailboxText !== undefined) {
      const list = mailboxText.split(',').map((m) => m.trim()).filter(Boolean);
      const bad = list.filter((m) => !MAILBOX.test(m));
      if (!list.length) return void problems.push(`${where}: the mailbox list of '${user}' is empty; leave out the last ':' to allow every mailbox`);
      if (bad.length) return void problems.push(`${where}: not a mailbox: ${bad.join(', ')}`);
      mailboxes = list.map(toMailbox);
    }
    users.set(user, { user, hash, mailboxes });
  });
  if (problems.length) throw new UsersFileError(problems.join('\n  '));
  return users;
}

export interface UsersFileStatus {
  users: number;
  /** The file can be read by every local user: the hashes are open to offline guessing. */
  worldReadable: boolean;
}

/** The users file, loaded at start and re-read on reload(); a broken new version keeps the old users. */
export class Users {
  private users: Map<string, UserEntry>;
  /** Checked when the name is unknown, so timing does not reveal which names exist. */
  private readonly decoy: PasswordHash = { ...DEFAULT_SCRYPT, salt: randomBytes(16), hash: randomBytes(32) };

  constructor(readonly path: string) {
    this.users = this.read();
  }

  private read(): Map<string, UserEntry> {
    let text: string;
    try {
      text = readFileSync(this.path, 'utf8');
    } catch (e) {
      throw new UsersFileError(`cannot read ${this.path}: ${(e as Error).message}`);
    }
    return parseUsersFile(text, this.path);
  }

  status(): UsersFileStatus {
    let worldReadable = false;
    try {
      worldReadable = (statSync(this.path).mode & 0o004) !== 0;
    } catch {
      // reported by read()
    }
    return { users: this.users.size, worldReadable };
  }

  /** Re-reads the file; throws UsersFileError and keeps the current users when it is broken. */
  reload(): UsersFileStatus {
    this.users = this.read();
    return this.status();
  }

  has(user: string): boolean {
    return this.users.has(user);
  }

  /** The current entry for a user who authenticated earlier: a reload can revoke or narrow it. */
  principal(user: string): Principal | undefined {
    const entry = this.users.get(user);
    return entry && { user: entry.user, mailboxes: entry.mailboxes };
  }

  async authenticate(user: string, password: string): Promise<Principal | undefined> {
    const entry = this.users.get(user);
    const ok = await verifyPassword(password, entry?.hash ?? this.decoy);
    return ok && entry ? { user: entry.user, mailboxes: entry.mailboxes } : undefined;
  }
}
