import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo, type Server } from 'node:net';
import { join } from 'node:path';
import { makeTempDir, run, type RunResult } from './pki.js';

/**
 * A private Postfix instance for end-to-end tests: its own main.cf/master.cf, queue and data
 * directories under a temp dir, its own loopback ports, started with `postfix -c DIR`. It never
 * reads or changes /etc/postfix or the system instance.
 *
 * As root, Postfix accepts any `-c DIR` (mail_conf.c only asks an unprivileged caller for
 * alternate_config_directories in the default main.cf), so nothing outside the temp dir changes.
 * Starting master(8) needs root anyway, which is why root is a requirement here.
 */

const SBIN = ['/usr/sbin', '/sbin'];

function which(cmd: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(':').concat(SBIN)) {
    if (dir && existsSync(join(dir, cmd))) return join(dir, cmd);
  }
  return undefined;
}

const MAIL_OWNER = 'postfix';
const SETGID_GROUP = 'postdrop';

function idOf(flag: '-u' | '-g', name: string): number | undefined {
  const r = spawnSync('id', [flag, name], { encoding: 'utf8' });
  return r.status === 0 ? Number(r.stdout.trim()) : undefined;
}

function groupExists(name: string): boolean {
  return spawnSync('getent', ['group', name]).status === 0;
}

/** Why a private Postfix cannot run on this machine, or undefined when it can. */
export function postfixProblem(): string | undefined {
  const missing = ['postfix', 'postconf', 'postqueue'].filter((c) => !which(c));
  if (missing.length) return `Postfix is not installed (${missing.join(', ')} not found; apt-get install -y postfix)`;
  if (process.getuid?.() !== 0) return 'a private Postfix master must be started as root';
  if (idOf('-u', MAIL_OWNER) === undefined) return `the ${MAIL_OWNER} account does not exist (the postfix package creates it)`;
  if (!groupExists(SETGID_GROUP)) return `the ${SETGID_GROUP} group does not exist (the postfix package creates it)`;
  return undefined;
}

/**
 * Locally a machine without Postfix skips the end-to-end test with a loud warning; under CI=true
 * it is a failure, because a green CI run must mean Postfix really carried the mail.
 */
export function requirePostfix(env: NodeJS.ProcessEnv = process.env): boolean {
  const problem = postfixProblem();
  if (!problem) return true;
  if (env.CI === 'true') throw new Error(`Postfix end-to-end test cannot run under CI: ${problem}`);
  console.warn(
    `\n${'!'.repeat(78)}\n!! WARNING: ${problem}.\n` +
      `!! The Postfix end-to-end tests are SKIPPED: deploy/postfix/ is NOT proved on this machine.\n` +
      `${'!'.repeat(78)}\n`,
  );
  return false;
}

/** The kernel's ephemeral range: where listen(0) and every outgoing connection take their port. */
function ephemeralRange(): [number, number] {
  try {
    const [low, high] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
    if (low && high) return [low, high];
  } catch {
    // not Linux: the IANA range
  }
  return [49152, 65535];
}

const BLOCK = 256;
let nextInBlock = Math.floor(Math.random() * BLOCK);

const closed = (s: Server) => new Promise<void>((r) => s.close(() => r()));

async function bindable(port: number): Promise<Server | undefined> {
  const s = createServer();
  return new Promise((resolve) => {
    s.once('error', () => resolve(undefined));
    s.listen(port, '127.0.0.1', () => resolve(s));
  });
}

/**
 * `n` distinct loopback ports that are free now and that nothing else in the test run will take
 * before a daemon (Postfix, Dovecot, openssl ocsp) binds them, which can be seconds later.
 *
 * A port from listen(0) is not that: it comes from the ephemeral range, and once the probe
 * closes it, any outgoing connection of a test running beside this one may take it as its local
 * port; master(8) then fails to bind and Postfix says only "mail system startup failed". So the
 * ports come from below the ephemeral range, where the kernel never hands out a port by itself,
 * and each vitest worker (VITEST_POOL_ID, unique among the workers running at once) walks its own
 * block of them, so two test files never pick the same port. A port something else on the
 * machine listens on is skipped.
 */
export async function freePorts(n: number): Promise<number[]> {
  const [low] = ephemeralRange();
  const first = 10_000;
  const blocks = Math.max(1, Math.floor((low - first) / BLOCK));
  const base = first + (Number(process.env.VITEST_POOL_ID ?? 0) % blocks) * BLOCK;
  const held: Server[] = [];
  try {
    for (let tried = 0; held.length < n; tried++) {
      if (tried >= BLOCK) throw new Error(`no ${n} free loopback ports in ${base}-${base + BLOCK - 1}`);
      const s = await bindable(base + (nextInBlock++ % BLOCK));
      if (s) held.push(s);
    }
    return held.map((s) => (s.address() as AddressInfo).port);
  } finally {
    await Promise.all(held.map(closed));
  }
}

/** Polls `probe` until it returns a value (not undefined), failing after `timeoutMs` with `what`. */
export async function until<T>(what: string, probe: () => T | undefined | Promise<T | undefined>, timeoutMs = 15_000, everyMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/**
 * The services every instance needs, none chrooted (a chroot jail would need copies of /etc
 * files inside the queue directory). No listener on :25: each test adds its own on a free port.
 */
const BASE_MASTER_CF = `# service type  private unpriv  chroot  wakeup  maxproc command
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`;

export interface PostfixOptions {
  /** main.cf text appended to the base (the snippet under test). */
  mainCf?: string;
  /** master.cf text appended to the base services (the snippet under test). */
  masterCf?: string;
  /** main.cf parameters set with `postconf -e` after the snippet, for this test environment. */
  main?: Record<string, string>;
  /** Per-service overrides for `postconf -P`, e.g. '127.0.0.1:2525/inet/smtpd_sasl_auth_enable=no'. */
  serviceOverrides?: string[];
  /**
   * Local delivery: mail for `user@domain` goes through local(8) into `maildir` (a Maildir whose
   * parents the postfix user can traverse, owned by nobody: local(8) delivers as nobody because
   * the alias file is root's). Everything else is refused.
   */
  maildir?: { user: string; domain: string; dir: string };
}

/** One entry of `postqueue -j` (postqueue(1), Postfix 3.1+). */
export interface QueuedMessage {
  queue_name: 'incoming' | 'active' | 'deferred' | 'hold' | 'maildrop' | string;
  queue_id: string;
  sender: string;
  recipients: { address: string; delay_reason?: string }[];
}

export interface PostfixInstance {
  /** The temp dir holding etc/, queue/, data/ and maillog. */
  readonly dir: string;
  /** The config directory given to every command as `-c`. */
  readonly configDir: string;
  /** `postconf -c DIR ARGS`; throws on any warning, which is how Postfix reports a typo. */
  postconf(...args: string[]): Promise<string>;
  /** The queue as `postqueue -j` reports it. */
  queue(): Promise<QueuedMessage[]>;
  /** `postqueue -f`: retry every deferred message now, including destinations marked dead. */
  flush(): Promise<void>;
  /** Postfix's own log (maillog_file), for assertions and failure messages. */
  log(): string;
  /** The PIDs of every Postfix daemon running for this config dir. */
  processes(): number[];
  /** Messages local(8) delivered into the Maildir (the maildir option), oldest first, as stored (LF line ends). */
  delivered(): Buffer[];
  /** `sendmail -C DIR ARGS`, the message on stdin: local submission through postdrop and pickup. */
  sendmail(args: string[], message: Buffer): Promise<RunResult>;
  /** Stops the instance, kills whatever it left behind, and removes the temp dir. Idempotent. */
  stop(): Promise<void>;
}

function daemonDirectory(configDir: string): string {
  const r = spawnSync(which('postconf')!, ['-c', configDir, '-h', 'daemon_directory'], { encoding: 'utf8' });
  return r.stdout.trim() || '/usr/lib/postfix/sbin';
}

/**
 * Postfix daemons do not name their config dir on the command line ("qmgr -l -t unix -u"), but
 * master passes MAIL_CONFIG to every child (import_environment), so a daemon belongs to this
 * instance when it runs a program from daemon_directory with MAIL_CONFIG=configDir.
 */
function processesOf(configDir: string, daemonDir: string): number[] {
  const marker = Buffer.from(`\0MAIL_CONFIG=${configDir}\0`);
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (!readlinkSync(`/proc/${entry}/exe`).startsWith(daemonDir + '/')) continue;
      const environ = Buffer.concat([Buffer.from([0]), readFileSync(`/proc/${entry}/environ`)]);
      if (environ.includes(marker)) pids.push(Number(entry));
    } catch {
      // gone already, or not ours to read
    }
  }
  return pids;
}

const running = new Set<() => void>();
let exitHook = false;

/** Writes the configuration, checks it with postconf, and starts master with `postfix -c DIR start`. */
export async function startPostfix(opts: PostfixOptions): Promise<PostfixInstance> {
  const postfix = which('postfix')!;
  const postconfBin = which('postconf')!;
  const postqueue = which('postqueue')!;
  const temp = await makeTempDir('smime-relay-postfix-');
  const dir = temp.dir;
  // Daemons run as mail_owner and must reach the queue and data directories below this one.
  chmodSync(dir, 0o755);
  const configDir = join(dir, 'etc');
  const queueDir = join(dir, 'queue');
  const dataDir = join(dir, 'data');
  const maillog = join(dir, 'maillog');
  mkdirSync(configDir);
  mkdirSync(queueDir, { mode: 0o755 });
  mkdirSync(dataDir, { mode: 0o700 });
  chownSync(dataDir, idOf('-u', MAIL_OWNER)!, idOf('-g', MAIL_OWNER)!);

  const base = [
    'compatibility_level = 3.6',
    'myhostname = mta.example.test',
    'mydomain = example.test',
    'myorigin = $mydomain',
    `queue_directory = ${queueDir}`,
    `data_directory = ${dataDir}`,
    `mail_owner = ${MAIL_OWNER}`,
    `setgid_group = ${SETGID_GROUP}`,
    'inet_interfaces = 127.0.0.1',
    'inet_protocols = ipv4',
    'mydestination =',
    'mynetworks = 127.0.0.0/8',
    'alias_maps =',
    'alias_database =',
    'biff = no',
    // Without syslog in a container, postlogd writes Postfix's log where the test can read it.
    `maillog_file = ${maillog}`,
    `maillog_file_prefixes = ${dir}`,
    '',
  ].join('\n');
  writeFileSync(join(configDir, 'main.cf'), base + (opts.mainCf ?? '') + '\n');
  let masterCf = opts.masterCf ?? '';
  let main = opts.main ?? {};
  if (opts.maildir) {
    // postmap format for texthash (no colon); the trailing slash makes local(8) write a Maildir
    writeFileSync(join(configDir, 'aliases'), `${opts.maildir.user} ${opts.maildir.dir.replace(/\/?$/, '/')}\n`);
    masterCf += '\nlocal     unix  -       n       n       -       -       local\n';
    main = {
      mydestination: `${opts.maildir.domain}, localhost`,
      alias_maps: `texthash:${join(configDir, 'aliases')}`,
      local_recipient_maps: '$alias_maps',
      default_transport: 'error:outbound mail disabled',
      ...main,
    };
  }
  writeFileSync(join(configDir, 'master.cf'), BASE_MASTER_CF + '\n' + masterCf + '\n');

  // Postfix does not trust a config file modified in the last second or two (it may be half
  // written): every reader sleeps in 300 ms steps until the mtime is old enough. Freshly written
  // files would cost each postconf and postfix call here about 1.5 s, so they are dated back.
  const settle = () => {
    const past = new Date(Date.now() - 60_000);
    for (const f of ['main.cf', 'master.cf']) utimesSync(join(configDir, f), past, past);
  };
  const postconf = async (...args: string[]): Promise<string> => {
    settle();
    const r = await run(postconfBin, ['-c', configDir, ...args], { timeoutMs: 15_000 });
    if (r.code !== 0 || r.stderr.trim()) throw new Error(`postconf ${args.join(' ')} (exit ${r.code}): ${r.stderr.trim()}`);
    return r.stdout.toString('utf8');
  };
  try {
    const settings = Object.entries(main).map(([k, v]) => `${k}=${v}`);
    if (settings.length) await postconf('-e', ...settings);
    // The snippets' own services may ask for a chroot (before-queue submission does).
    await postconf('-F', '*/*/chroot=n');
    if (opts.serviceOverrides?.length) await postconf('-P', ...opts.serviceOverrides);
    // postconf warns about parameters it does not know; a typo in a snippet or here fails now.
    await postconf('-n');
    await postconf('-M');
  } catch (e) {
    await temp.remove();
    throw e;
  }

  const daemonDir = daemonDirectory(configDir);
  let stopped = false;
  const killLeftovers = (signal: NodeJS.Signals) => {
    for (const pid of processesOf(configDir, daemonDir)) {
      try {
        process.kill(pid, signal);
      } catch {
        // exited meanwhile
      }
    }
  };
  // Last resort if the test process exits without stop() (a crash, a killed worker).
  const emergencyStop = () => {
    spawnSync(postfix, ['-c', configDir, 'abort'], { stdio: 'ignore', timeout: 5_000 });
    killLeftovers('SIGKILL');
  };
  running.add(emergencyStop);
  if (!exitHook) {
    exitHook = true;
    process.once('exit', () => running.forEach((f) => f()));
  }

  const instance: PostfixInstance = {
    dir,
    configDir,
    postconf,
    async queue() {
      const r = await run(postqueue, ['-c', configDir, '-j'], { timeoutMs: 15_000 });
      if (r.code !== 0) throw new Error(`postqueue -j (exit ${r.code}): ${r.stderr.trim()}`);
      return r.stdout
        .toString('utf8')
        .split('\n')
        .filter((l) => l.trim())
        .map((l) => JSON.parse(l) as QueuedMessage);
    },
    async flush() {
      const r = await run(postqueue, ['-c', configDir, '-f'], { timeoutMs: 15_000 });
      if (r.code !== 0) throw new Error(`postqueue -f (exit ${r.code}): ${r.stderr.trim()}`);
    },
    log: () => (existsSync(maillog) ? readFileSync(maillog, 'utf8') : ''),
    processes: () => processesOf(configDir, daemonDir),
    delivered() {
      const fresh = opts.maildir && join(opts.maildir.dir, 'new');
      if (!fresh || !existsSync(fresh)) return [];
      return readdirSync(fresh)
        .map((name) => ({ path: join(fresh, name), at: statSync(join(fresh, name)).mtimeMs }))
        .sort((a, b) => a.at - b.at || a.path.localeCompare(b.path))
        .map((f) => readFileSync(f.path));
    },
    sendmail: (args: string[], message: Buffer) => run(which('sendmail')!, ['-C', configDir, ...args], { input: message, timeoutMs: 30_000 }),
    async stop() {
      if (stopped) return;
      stopped = true;
      try {
        if (processesOf(configDir, daemonDir).length) {
          await run(postfix, ['-c', configDir, 'stop'], { timeoutMs: 15_000 });
          // master signals its children and exits; give them a moment, then insist.
          const gone = await until('Postfix to stop', () => (processesOf(configDir, daemonDir).length ? undefined : true), 5_000, 50).catch(() => false);
          if (!gone) {
            await run(postfix, ['-c', configDir, 'abort'], { timeoutMs: 15_000 });
            killLeftovers('SIGKILL');
          }
        }
      } finally {
        running.delete(emergencyStop);
        await temp.remove();
      }
    },
  };

  settle();
  const started = await run(postfix, ['-c', configDir, 'start'], { timeoutMs: 60_000 });
  if (started.code !== 0) {
    // master(8) cannot log why it failed before postlogd runs; a port taken meanwhile is the usual cause.
    const taken: string[] = [];
    for (const [, addr, port] of readFileSync(join(configDir, 'master.cf'), 'utf8').matchAll(/^([\d.]+):(\d+)\s+inet\s/gm)) {
      const s = await bindable(Number(port));
      if (s) await closed(s);
      else taken.push(`${addr}:${port}`);
    }
    const cause = taken.length ? `\nthe master.cf listener${taken.length > 1 ? 's' : ''} ${taken.join(', ')} cannot bind: the port is in use` : '';
    const why = `postfix -c ${configDir} start (exit ${started.code}): ${started.stderr.trim()}\n${instance.log()}${cause}`;
    await instance.stop();
    throw new Error(why);
  }
  return instance;
}
