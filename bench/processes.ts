import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { Connection } from './smtp-client.js';

/** Clock ticks per second for /proc/<pid>/stat; 100 on every Linux this runs on (getconf CLK_TCK). */
const TICKS = 100;

export interface CpuSample {
  /** utime+stime of the process itself, seconds. */
  self: number;
  /** cutime+cstime: children it has reaped (the openssl processes), seconds. */
  children: number;
}

/** proc(5): fields after the command name, which may itself contain spaces and parentheses. */
export function cpu(pid: number): CpuSample {
  const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // f[0] is field 3 (state): utime is field 14, stime 15, cutime 16, cstime 17
  const n = (i: number) => Number(f[i - 3]);
  return { self: (n(14) + n(15)) / TICKS, children: (n(16) + n(17)) / TICKS };
}

/** VmRSS and VmHWM (peak resident set) in bytes. */
export function memory(pid: number): { rss: number; hwm: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'latin1');
  const kb = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN) * 1024;
  return { rss: kb('VmRSS'), hwm: kb('VmHWM') };
}

/** Resident memory of a process plus its live children (openssl signers), sampled until stopped. */
export function sampleTreeRss(pid: number, everyMs = 20): { stop(): number } {
  let peak = 0;
  const sample = () => {
    try {
      let total = memory(pid).rss;
      const kids = readFileSync(`/proc/${pid}/task/${pid}/children`, 'latin1').trim();
      for (const kid of kids ? kids.split(' ') : []) {
        try {
          // a child that has exited but is not yet reaped has no VmRSS line
          total += memory(Number(kid)).rss || 0;
        } catch {
          // exited between the listing and the read
        }
      }
      peak = Math.max(peak, total);
    } catch {
      // the relay itself is gone; the run reports its error elsewhere
    }
  };
  sample();
  const timer = setInterval(sample, everyMs);
  return {
    stop() {
      clearInterval(timer);
      sample();
      return peak;
    },
  };
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

/** Waits until something on the port answers 220 (or fails with the process's own log). */
async function waitForGreeting(port: number, child: ChildProcess, what: string, logPath?: string): Promise<void> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      const log = logPath && existsSync(logPath) ? readFileSync(logPath, 'utf8').slice(-2000) : '';
      throw new Error(`${what} exited (${child.exitCode ?? child.signalCode}) before listening\n${log}`);
    }
    try {
      const c = await Connection.open(port);
      const r = await c.read(5_000);
      c.quit();
      if (r.code === 220) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`${what} did not answer on 127.0.0.1:${port} within 20 s`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export interface Service {
  readonly pid: number;
  readonly port: number;
  stop(): Promise<void>;
}

function stopper(child: ChildProcess): () => Promise<void> {
  return () =>
    new Promise<void>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve();
      const kill = setTimeout(() => child.kill('SIGKILL'), 10_000);
      child.once('exit', () => {
        clearTimeout(kill);
        resolve();
      });
      child.kill('SIGTERM');
    });
}

export const SMTP_SINK = '/usr/sbin/smtp-sink';
export const SMTP_SOURCE = '/usr/sbin/smtp-source';

/**
 * The upstream: Postfix's smtp-sink (C, accepts and discards) when installed, else a child
 * running bench/sink-server.ts on smtp-server, so the sink never shares the relay's process.
 */
export async function startSink(): Promise<Service & { kind: string }> {
  const port = await freePort();
  let child: ChildProcess;
  let kind: string;
  if (existsSync(SMTP_SINK)) {
    // -u is required when started as root: smtp-sink drops to that user after binding
    const asRoot = process.getuid?.() === 0 ? ['-u', 'nobody'] : [];
    child = spawn(SMTP_SINK, [...asRoot, `127.0.0.1:${port}`, '1000'], { stdio: 'ignore' });
    kind = 'Postfix smtp-sink';
  } else {
    child = spawn(process.execPath, ['--import', 'tsx', new URL('./sink-server.ts', import.meta.url).pathname, String(port)], { stdio: 'ignore' });
    kind = 'smtp-server sink (child process)';
  }
  await waitForGreeting(port, child, kind);
  return { pid: child.pid!, port, kind, stop: stopper(child) };
}

/** One relay as an operator runs it: `node dist/cli.js serve`, configured by environment only. */
export async function startRelay(opts: { cli: string; env: Record<string, string>; logPath: string }): Promise<Service> {
  const port = await freePort();
  const env: NodeJS.ProcessEnv = {};
  // Nothing from the caller's environment may change what is measured.
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('SMIME_RELAY_') && k !== 'LOG_LEVEL') env[k] = v;
  Object.assign(env, { SMIME_RELAY_LISTEN: `127.0.0.1:${port}`, ...opts.env });
  const fd = openSync(opts.logPath, 'a');
  const child = spawn(process.execPath, [opts.cli, 'serve'], { env, stdio: ['ignore', fd, fd] });
  closeSync(fd);
  try {
    await waitForGreeting(port, child, 'relay', opts.logPath);
  } catch (e) {
    child.kill('SIGKILL');
    throw e;
  }
  return { pid: child.pid!, port, stop: stopper(child) };
}

/** Runs a command to completion with a hard deadline; returns wall time and output. */
export function runTimed(cmd: string, args: string[], timeoutMs: number): Promise<{ code: number | null; seconds: number; output: string }> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout!.on('data', (d: Buffer) => (output += d.toString('utf8')));
    child.stderr!.on('data', (d: Buffer) => (output += d.toString('utf8')));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, seconds: (performance.now() - t0) / 1000, output });
    });
  });
}
