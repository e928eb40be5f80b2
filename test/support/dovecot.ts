import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { makeTempDir, openssl, run } from './pki.js';
import { freePorts, until } from './postfix.js';

/**
 * A private Dovecot serving one Maildir over IMAP (STARTTLS) and IMAPS on free loopback ports,
 * with its own base_dir, state and log under a temp dir (shared/notes/real-parts.md). It never
 * reads /etc/dovecot. Started as root, like the private Postfix; the mail user is nobody, the
 * user local(8) delivers as.
 */
export interface DovecotInstance {
  readonly dir: string;
  readonly imapPort: number;
  readonly imapsPort: number;
  /** The server's self-signed certificate (SAN localhost, 127.0.0.1): the CA a client must trust. */
  readonly certPath: string;
  readonly user: string;
  readonly password: string;
  /** The auth socket for Postfix's SASL (`smtpd_sasl_type = dovecot`), with the sasl option. */
  readonly saslPath?: string;
  /** Dovecot's own log, for failure messages. */
  log(): string;
  /** The master PID while running. */
  masterPid(): number | undefined;
  /** The master and every process it started, while running. */
  processes(): number[];
  /** Kills the master (which ends its children) and waits until it is gone; removes the temp dir. Idempotent. */
  stop(): Promise<void>;
}

const DOVECOT = ['/usr/sbin/dovecot', '/usr/local/sbin/dovecot'].find((p) => existsSync(p));

/** Why a private Dovecot cannot run here, or undefined when it can. */
export function dovecotProblem(): string | undefined {
  if (!DOVECOT) return 'Dovecot is not installed (dovecot not found; apt-get install -y dovecot-imapd)';
  if (process.getuid?.() !== 0) return 'a private Dovecot must be started as root';
  if (spawnSync('id', ['-u', 'dovenull']).status !== 0) return 'the dovenull account does not exist (the dovecot-core package creates it)';
  return undefined;
}

/** Locally a missing Dovecot skips loudly; under CI=true it fails, as for Postfix. */
export function requireDovecot(env: NodeJS.ProcessEnv = process.env): boolean {
  const problem = dovecotProblem();
  if (!problem) return true;
  if (env.CI === 'true') throw new Error(`Dovecot end-to-end test cannot run under CI: ${problem}`);
  console.warn(`\n${'!'.repeat(78)}\n!! WARNING: ${problem}.\n!! The canary end-to-end tests are SKIPPED.\n${'!'.repeat(78)}\n`);
  return false;
}

const running = new Set<() => void>();
let exitHook = false;

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

/** Descendants of `pid`, from /proc (ppid is the 4th field of /proc/PID/stat, after the command in parentheses). */
function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid) out.push(Number(entry), ...childrenOf(Number(entry)));
    } catch {
      // gone
    }
  }
  return out;
}

/** sasl: also serve Postfix's SASL (smtpd_sasl_path) on a unix socket, for the same user. */
export async function startDovecot(opts: { maildir: string; user?: string; password?: string; sasl?: boolean }): Promise<DovecotInstance> {
  const user = opts.user ?? 'testuser';
  const password = opts.password ?? 's3cret';
  const temp = await makeTempDir('smime-relay-dovecot-');
  const dir = temp.dir;
  chmodSync(dir, 0o755);
  const dc = join(dir, 'dc');
  mkdirSync(dc);
  const certPath = join(dc, 'cert.pem');
  const keyPath = join(dc, 'key.pem');
  await openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1', '-keyout', keyPath, '-out', certPath]);
  writeFileSync(join(dc, 'passwd'), `${user}:{PLAIN}${password}\n`);
  const [imapPort, imapsPort] = (await freePorts(2)) as [number, number];
  const logPath = join(dir, 'dovecot.log');
  const saslPath = join(dir, 'sasl-auth');
  const conf = join(dc, 'dovecot.conf');
  writeFileSync(
    conf,
    `base_dir = ${dc}/run
state_dir = ${dc}/state
log_path = ${logPath}
protocols = imap
listen = 127.0.0.1
ssl = yes
ssl_cert = <${certPath}
ssl_key = <${keyPath}
disable_plaintext_auth = no
mail_location = maildir:${opts.maildir}
passdb {
  driver = passwd-file
  args = ${dc}/passwd
}
userdb {
  driver = static
  args = uid=nobody gid=nogroup home=${opts.maildir}
}
service imap-login {
  inet_listener imap {
    port = ${imapPort}
  }
  inet_listener imaps {
    port = ${imapsPort}
    ssl = yes
  }
}
${
  opts.sasl
    ? `auth_mechanisms = plain login
service auth {
  unix_listener ${saslPath} {
    mode = 0666
  }
}
`
    : ''
}`,
  );
  const pidFile = join(dc, 'run', 'master.pid');
  const masterPid = () => {
    try {
      const pid = Number(readFileSync(pidFile, 'utf8').trim());
      return pid > 0 && alive(pid) ? pid : undefined;
    } catch {
      return undefined;
    }
  };
  let stopped = false;
  let lastPid: number | undefined;
  const known = new Set<number>();
  const emergency = () => {
    const pid = masterPid() ?? lastPid;
    if (pid) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
  };
  running.add(emergency);
  if (!exitHook) {
    exitHook = true;
    process.once('exit', () => running.forEach((f) => f()));
  }
  const instance: DovecotInstance = {
    dir,
    imapPort,
    imapsPort,
    certPath,
    user,
    password,
    ...(opts.sasl ? { saslPath } : {}),
    log: () => (existsSync(logPath) ? readFileSync(logPath, 'utf8') : ''),
    masterPid,
    processes: () => {
      const master = masterPid();
      if (master) for (const pid of [master, ...childrenOf(master)]) known.add(pid);
      return [...known].filter(alive);
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      try {
        const pids = instance.processes();
        const pid = masterPid() ?? lastPid;
        if (pid && alive(pid)) process.kill(pid, 'SIGTERM');
        // the master ends its children; wait for all of them, then insist
        const gone = await until('Dovecot to stop', () => (pids.some(alive) ? undefined : true), 10_000, 50).catch(() => false);
        if (!gone) for (const p of pids.filter(alive)) process.kill(p, 'SIGKILL');
      } finally {
        running.delete(emergency);
        await temp.remove();
      }
    },
  };
  // The daemon keeps its stderr open: it goes to a file, never to a pipe we would wait on.
  const r = await run('sh', ['-c', `exec '${DOVECOT}' -c '${conf}' >>'${join(dir, 'dovecot.stderr')}' 2>&1 </dev/null`], { timeoutMs: 30_000 });
  if (r.code !== 0) {
    const why = `dovecot -c ${conf} (exit ${r.code}): ${existsSync(join(dir, 'dovecot.stderr')) ? readFileSync(join(dir, 'dovecot.stderr'), 'utf8') : ''}${instance.log()}`;
    await instance.stop();
    throw new Error(why);
  }
  try {
    lastPid = await until('Dovecot master.pid', () => masterPid(), 15_000, 50);
  } catch (e) {
    await instance.stop();
    throw new Error(`${(e as Error).message}\n${instance.log()}`);
  }
  return instance;
}
