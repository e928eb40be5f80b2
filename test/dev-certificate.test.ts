/**
 * The development certificate (no SMIME_RELAY_CERT, file: upstream) as `npm start` meets it:
 * several relays starting at once in one folder, a broken leftover from an earlier run, a lock
 * left by a killed process. Real relay processes (dist/cli.js), real openssl.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { sendMessage } from './support/client.js';

const cli = join(new URL('..', import.meta.url).pathname, 'dist/cli.js');
const DEV = 'notifications@localhost';

interface Started {
  child: ChildProcess;
  port: number;
  stderr: () => string;
}

const children: ChildProcess[] = [];
const dirs: string[] = [];

afterEach(async () => {
  // Every relay this file started ends here, by PID, whatever the test did.
  await Promise.all(children.splice(0).map((c) => stop(c)));
});
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
    child.once('exit', () => {
      clearTimeout(t);
      resolve();
    });
    child.kill('SIGTERM');
  });
}

function folder(): string {
  const d = mkdtempSync(join(tmpdir(), 'smime-relay-devcert-'));
  dirs.push(d);
  return d;
}

/** `smime-relay serve` with nothing configured, in `cwd`; resolves once it said where it listens. */
async function serve(cwd: string): Promise<Started> {
  const child = spawn(process.execPath, [cli, 'serve', '--listen', '127.0.0.1:0'], { cwd, env: { PATH: process.env.PATH! }, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d) => (stdout += d));
  child.stderr!.on('data', (d) => (stderr += d));
  const until = Date.now() + 60_000;
  // pino writes asynchronously: wait for the listening line too, not just stdout.
  while (!/--server 127\.0\.0\.1:(\d+)/.test(stdout) || !stderr.includes('smime-relay listening')) {
    if (child.exitCode !== null || Date.now() > until) throw new Error(`relay did not start (exit ${child.exitCode}):\n${stdout}\n${stderr}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return { child, port: Number(/--server 127\.0\.0\.1:(\d+)/.exec(stdout)![1]), stderr: () => stderr };
}

const logLines = (stderr: string) => stderr.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);

/** Sends one message through a relay and verifies what lands in outbox/ against certs/dev/ca.crt. */
async function expectSignsVerifiably(cwd: string, port: number, subject: string) {
  const raw = Buffer.from(`From: ${DEV}\r\nTo: you@example.com\r\nSubject: ${subject}\r\n\r\nhello\r\n`);
  const r = await sendMessage(port, DEV, ['you@example.com'], raw);
  expect(r.final?.code, r.final?.text).toBe(250);
  // The reply names the outbox file by its id only (no local paths in replies); it lands in outbox/.
  const id = /queued as (\S+)/.exec(r.final!.text)![1]!;
  const path = join(cwd, 'outbox', `${id}.eml`);
  const v = spawnSync('openssl', ['cms', '-verify', '-in', path, '-CAfile', join(cwd, 'certs/dev/ca.crt'), '-purpose', 'smimesign', '-out', '/dev/null'], { encoding: 'utf8' });
  expect(v.status, v.stderr).toBe(0);
}

describe('the development certificate', () => {
  it('three relays starting at once in one folder: one generates it under the lock, all sign with it; no leftovers', async () => {
    const cwd = folder();
    const relays = await Promise.all([serve(cwd), serve(cwd), serve(cwd)]);
    const created = relays.map((r) => logLines(r.stderr()).find((l) => String(l.msg).startsWith('using a DEVELOPMENT certificate'))?.created);
    expect(created.filter((c) => c === true)).toHaveLength(1);
    expect(created.filter((c) => c === false)).toHaveLength(2);
    expect(readdirSync(join(cwd, 'certs')).sort()).toEqual(['dev']);
    expect(readdirSync(join(cwd, 'certs/dev')).sort()).toEqual(['ca.crt', 'ca.key', `${DEV}.pem`]);
    for (const [i, r] of relays.entries()) await expectSignsVerifiably(cwd, r.port, `relay ${i}`);
  }, 120_000);

  it('the first start does not warn about intermediates: the bundle carries the CA the relay made', async () => {
    const cwd = folder();
    const r = await serve(cwd);
    const warnings = logLines(r.stderr()).filter((l) => l.level === 40);
    expect(warnings.map((l) => l.msg)).toEqual([expect.stringMatching(/^using a DEVELOPMENT certificate/)]);
    const check = spawnSync(process.execPath, [cli, 'check-cert', 'certs/dev/notifications@localhost.pem'], { cwd, encoding: 'utf8' });
    expect(check.status).toBe(0);
    expect(check.stdout).toContain('chain:        complete');
    expect(check.stdout).not.toContain('warning');
  });

  it('a broken leftover (the key of one run, the certificate of another) is regenerated, not fatal', async () => {
    const [a, b] = [folder(), folder()];
    await Promise.all([serve(a), serve(b)]);
    await Promise.all(children.splice(0).map((c) => stop(c)));
    // a's key with b's certificate, as two interleaved runs used to leave it.
    const pem = (dir: string) => readFileSync(join(dir, 'certs/dev', `${DEV}.pem`), 'latin1');
    const keyOfA = /-----BEGIN PRIVATE KEY-----[\s\S]*?-----END PRIVATE KEY-----\n/.exec(pem(a))![0];
    const certsOfB = pem(b).replace(/-----BEGIN PRIVATE KEY-----[\s\S]*?-----END PRIVATE KEY-----\n/, '');
    writeFileSync(join(a, 'certs/dev', `${DEV}.pem`), keyOfA + certsOfB, { mode: 0o600 });
    copyFileSync(join(b, 'certs/dev/ca.crt'), join(a, 'certs/dev/ca.crt'));

    const r = await serve(a);
    const replaced = logLines(r.stderr()).find((l) => String(l.msg).startsWith('generated a new development certificate'));
    expect(replaced?.reason).toBe('the private key does not match the certificate');
    await expectSignsVerifiably(a, r.port, 'after regeneration');
  }, 120_000);

  it('a lock left by a process that died mid-generation is taken over', async () => {
    const cwd = folder();
    const dead = spawnSync('sh', ['-c', 'echo $$']).stdout.toString().trim();
    mkdirSync(join(cwd, 'certs'));
    writeFileSync(join(cwd, 'certs/.dev.lock'), `${dead}\n`);
    const r = await serve(cwd);
    expect(existsSync(join(cwd, 'certs/.dev.lock'))).toBe(false);
    await expectSignsVerifiably(cwd, r.port, 'after a stale lock');
  }, 60_000);
});
