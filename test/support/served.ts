import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';

const root = new URL('../..', import.meta.url).pathname;
export const CLI = join(root, 'dist/cli.js');

/** `smime-relay serve` as a real process (the compiled dist/, built once by test/global-setup.ts). */
export interface ServedRelay {
  readonly child: ChildProcess;
  readonly port: number;
  /** The /metrics listener, when SMIME_RELAY_METRICS was set. */
  readonly metricsPort: number | undefined;
  /** Every JSON log line so far. */
  readonly logs: Record<string, unknown>[];
  /** Resolves with the first log line whose msg matches (already written or still to come). */
  logged(msg: RegExp, timeoutMs?: number): Promise<Record<string, unknown>>;
  /** The Prometheus text of /metrics. */
  metrics(): Promise<string>;
  /** SIGTERM, then SIGKILL after 10 s; resolves once the process is gone. Idempotent. */
  stop(): Promise<void>;
}

/**
 * Starts `node dist/cli.js serve` with exactly `env` (plus PATH unless given): for what only a
 * real process shows, such as a program found first on PATH or a CA given by NODE_EXTRA_CA_CERTS.
 */
export async function serveRelay(env: Record<string, string>, cwd = root): Promise<ServedRelay> {
  const child = spawn(process.execPath, [CLI, 'serve'], {
    cwd,
    env: { PATH: process.env.PATH!, SMIME_RELAY_LISTEN: '127.0.0.1:0', LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs: Record<string, unknown>[] = [];
  const watchers: { re: RegExp; resolve: (l: Record<string, unknown>) => void }[] = [];
  let partial = '';
  let stderrText = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => {
    partial += d;
    const lines = partial.split('\n');
    partial = lines.pop()!;
    for (const line of lines) {
      if (!line.startsWith('{')) {
        stderrText += line + '\n';
        continue;
      }
      const l = JSON.parse(line) as Record<string, unknown>;
      logs.push(l);
      for (const w of watchers.splice(0)) (w.re.test(String(l.msg)) ? w.resolve(l) : watchers.push(w));
    }
  });
  child.stdout!.resume();
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  let gone = false;
  void exited.then(() => (gone = true));
  const logged = (re: RegExp, timeoutMs = 30_000) =>
    new Promise<Record<string, unknown>>((resolve, reject) => {
      const found = logs.find((l) => re.test(String(l.msg)));
      if (found) return resolve(found);
      const timer = setTimeout(() => reject(new Error(`no log line matching ${re} within ${timeoutMs} ms: ${JSON.stringify(logs.slice(-5))}`)), timeoutMs);
      watchers.push({ re, resolve: (l) => (clearTimeout(timer), resolve(l)) });
      void exited.then((code) => (clearTimeout(timer), reject(new Error(`relay exited (${code}) before logging ${re}: ${stderrText}${JSON.stringify(logs)}`))));
    });
  const stop = async () => {
    if (gone) return;
    child.kill('SIGTERM');
    const killer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(killer);
  };
  try {
    const listening = await logged(/^smime-relay listening$/);
    const port = Number(String(listening.listen).split(':').pop());
    let metricsPort: number | undefined;
    if (env.SMIME_RELAY_METRICS) {
      const line = await logged(/^metrics and health endpoints listening$/);
      metricsPort = Number(/:(\d+)\/metrics$/.exec(String(line.metrics))?.[1]);
    }
    return {
      child,
      port,
      metricsPort,
      logs,
      logged,
      stop,
      async metrics() {
        const r = await fetch(`http://127.0.0.1:${metricsPort}/metrics`);
        return r.text();
      },
    };
  } catch (e) {
    await stop();
    throw e;
  }
}

/** The value of one sample in Prometheus text, e.g. sample(text, 'smime_relay_messages_total', { outcome: 'signed' }). */
export function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  for (const line of text.split('\n')) {
    const m = /^([a-z_:]+)(?:\{([^}]*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = (m[2] ?? '').split(',').filter(Boolean);
    if (want.every((w) => have.includes(w)) && have.length === want.length) return Number(m[3]);
  }
  return undefined;
}
