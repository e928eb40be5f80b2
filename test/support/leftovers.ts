import { readdirSync, readFileSync, readlinkSync } from 'node:fs';

/** A process of this test run that was still running when the run ended. */
export interface Leftover {
  pid: number;
  kind: 'relay' | 'postfix' | 'dovecot' | 'other';
  command: string;
}

interface ProcessInfo {
  pid: number;
  ppid: number;
  state: string;
  exe: string;
  cmdline: string;
  environ: string;
  cwd: string;
}

function read(pid: number): ProcessInfo | undefined {
  const at = (f: string) => `/proc/${pid}/${f}`;
  try {
    // stat: "pid (comm) state ppid ..."; comm may contain spaces and parentheses.
    const stat = readFileSync(at('stat'), 'latin1');
    const [state, ppid] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const link = (f: string) => {
      try {
        return readlinkSync(at(f));
      } catch {
        return '';
      }
    };
    return {
      pid,
      ppid: Number(ppid),
      state: state ?? '',
      exe: link('exe'),
      cwd: link('cwd'),
      cmdline: readFileSync(at('cmdline'), 'latin1').replace(/\0/g, ' ').trim(),
      environ: readFileSync(at('environ'), 'latin1'),
    };
  } catch {
    // gone meanwhile, or another user's process (not ours)
    return undefined;
  }
}

function kindOf(p: ProcessInfo): Leftover['kind'] {
  if (p.exe.includes('/postfix/') || p.environ.includes('\0MAIL_CONFIG=') || p.environ.startsWith('MAIL_CONFIG=')) return 'postfix';
  if (p.exe.includes('dovecot') || /\bdovecot\b/.test(p.cmdline)) return 'dovecot';
  if (/\bcli\.(js|ts)\b/.test(p.cmdline)) return 'relay';
  return 'other';
}

/**
 * Processes that belong to the test run whose temp dir is `run`: their environment, command line
 * or working directory names it (see test/global-setup.ts). This process and its ancestors
 * (vitest, npm) are never counted, and neither are zombies (already exited).
 */
export function processesOfRun(run: string): Leftover[] {
  const all = readdirSync('/proc')
    .filter((e) => /^\d+$/.test(e))
    .map((e) => read(Number(e)))
    .filter((p): p is ProcessInfo => p !== undefined);
  const byPid = new Map(all.map((p) => [p.pid, p]));
  const mine = new Set<number>();
  for (let p = byPid.get(process.pid); p && !mine.has(p.pid); p = byPid.get(p.ppid)) mine.add(p.pid);
  return all
    .filter((p) => !mine.has(p.pid) && p.state !== 'Z')
    .filter((p) => p.environ.includes(run) || p.cmdline.includes(run) || p.cwd === run || p.cwd.startsWith(`${run}/`))
    .map((p) => ({ pid: p.pid, kind: kindOf(p), command: p.cmdline || p.exe }));
}

/** The run's processes still there after `graceMs` (Postfix's daemons take a moment to follow master). */
export async function leftoverProcesses(run: string, graceMs = 10_000): Promise<Leftover[]> {
  const deadline = Date.now() + graceMs;
  for (;;) {
    const left = processesOfRun(run);
    if (!left.length || Date.now() > deadline) return left;
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** SIGTERM, then SIGKILL after `graceMs`, by PID: only processes this run started are passed here. */
export async function stopProcesses(left: Leftover[], graceMs = 3_000): Promise<void> {
  const signal = (sig: NodeJS.Signals) => {
    for (const p of left) {
      try {
        process.kill(p.pid, sig);
      } catch {
        // exited meanwhile
      }
    }
  };
  signal('SIGTERM');
  const alive = () => left.some((p) => read(p.pid) && read(p.pid)!.state !== 'Z');
  const deadline = Date.now() + graceMs;
  while (alive() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  if (alive()) signal('SIGKILL');
}
