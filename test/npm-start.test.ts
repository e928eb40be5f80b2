/**
 * `npm start` under a process manager (supervisord, pm2, a container whose command is
 * `npm start`): the manager sends SIGTERM to npm, and the relay must get it and stop. A real npm,
 * a real relay process, a real signal.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestPki, makeTempDir, type Leaf, type TestPki } from './support/pki.js';

const root = new URL('..', import.meta.url).pathname;

let pki: TestPki;
let leaf: Leaf;
let outbox: { dir: string; remove: () => Promise<void> };

beforeAll(async () => {
  pki = await createTestPki();
  leaf = await pki.issueLeaf('alerts', { emails: ['alerts@example.test'] });
  outbox = await makeTempDir('smime-relay-npm-start-');
});

afterAll(async () => {
  await outbox?.remove();
  await pki?.cleanup();
});

/** Every process below `pid`, from /proc (ppid is the 4th field of /proc/PID/stat). */
function descendants(pid: number): number[] {
  const parent = new Map<number, number>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      parent.set(Number(entry), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]));
    } catch {
      // exited meanwhile
    }
  }
  const out: number[] = [];
  const walk = (p: number) => {
    for (const [child, pp] of parent) if (pp === p) (out.push(child), walk(child));
  };
  walk(pid);
  return out;
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

const accepts = (port: number) =>
  new Promise<boolean>((resolve) => {
    const s = connect({ port, host: '127.0.0.1' }, () => (s.destroy(), resolve(true)));
    s.on('error', () => resolve(false));
  });

describe('npm start', () => {
  it('SIGTERM to the npm process reaches the relay: it drains, exits, and stops listening', async () => {
    const npm: ChildProcess = spawn('npm', ['start'], {
      cwd: root,
      env: {
        PATH: process.env.PATH!,
        HOME: process.env.HOME ?? '/root',
        SMIME_RELAY_LISTEN: '127.0.0.1:0',
        SMIME_RELAY_CERT: leaf.bundlePath,
        SMIME_RELAY_UPSTREAM: `file:${outbox.dir}`,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    npm.stderr!.on('data', (d) => (stderr += d));
    npm.stdout!.resume();
    let relayPids: number[] = [];
    try {
      const until = Date.now() + 60_000;
      while (!stderr.includes('"msg":"smime-relay listening"')) {
        if (npm.exitCode !== null || Date.now() > until) throw new Error(`npm start did not bring the relay up:\n${stderr}`);
        await new Promise((r) => setTimeout(r, 100));
      }
      const listening = stderr.split('\n').find((l) => l.includes('"msg":"smime-relay listening"'))!;
      const port = Number(/:(\d+)$/.exec(JSON.parse(listening).listen as string)![1]);
      relayPids = descendants(npm.pid!);
      expect(relayPids.length).toBeGreaterThan(0);
      expect(await accepts(port)).toBe(true);

      const npmExit = new Promise<void>((resolve) => npm.once('exit', () => resolve()));
      npm.kill('SIGTERM');
      await npmExit;
      const deadline = Date.now() + 20_000;
      while (relayPids.some(alive) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
      expect(relayPids.filter(alive), 'processes npm started that outlived it').toEqual([]);
      expect(await accepts(port)).toBe(false);
      expect(stderr).toContain('"signal":"SIGTERM"');
    } finally {
      for (const pid of [...relayPids, npm.pid!]) if (alive(pid)) process.kill(pid, 'SIGKILL');
    }
  }, 90_000);
});
