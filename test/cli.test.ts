import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sendMessage } from './support/client.js';

const root = new URL('..', import.meta.url).pathname;
const cli = join(root, 'dist/cli.js');

// The CLI tests run what `npm start` runs: the compiled dist/, built once by test/global-setup.ts.

function run(args: string[], env: Record<string, string> = {}, cwd = root) {
  return spawnSync(process.execPath, [cli, ...args], { cwd, env: { PATH: process.env.PATH!, ...env }, encoding: 'utf8' });
}

describe('smime-relay CLI', () => {
  it.each([['serve'], ['config']])('%s --help explains the command', (cmd) => {
    const r = run([cmd, '--help']);
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`^Usage: smime-relay ${cmd}`));
  });

  it('--help lists the commands; an unknown command is an error', () => {
    expect(run(['--help']).stdout).toContain('serve');
    const r = run(['frobnicate']);
    expect(r.status).toBe(2);
    expect(r.stderr).toContain("unknown command 'frobnicate'");
  });

  it('a bad setting stops the relay with the variable and the fix', () => {
    const r = run(['serve'], { SMIME_RELAY_MAX_SIZE: 'lots' });
    expect(r.status).toBe(2);
    expect(r.stderr).toContain('SMIME_RELAY_MAX_SIZE');
    expect(r.stderr).toContain('expected a byte count');
  });

  it('refuses to use the development certificate with a real upstream', () => {
    const r = run(['serve', '--listen', '127.0.0.1:0'], { SMIME_RELAY_UPSTREAM: 'smtp://127.0.0.1:25' }, mkdtempSync(join(tmpdir(), 'smr-')));
    expect(r.status).toBe(2);
    expect(r.stderr).toContain('SMIME_RELAY_CERT is not set');
  });

  it('a yes/no setting flag may stand alone: --lmtp means --lmtp true', () => {
    expect(run(['config', '--print', '--lmtp']).stdout).toContain('SMIME_RELAY_LMTP=true  # flag: --lmtp');
    expect(run(['config', '--print', '--lmtp', 'false', '--listen', '127.0.0.1:2600']).stdout).toContain('SMIME_RELAY_LMTP=false  # flag: --lmtp');
    const both = run(['config', '--print', '--strip-dkim', '--lmtp=no']).stdout;
    expect(both).toContain('SMIME_RELAY_STRIP_DKIM=true  # flag: --strip-dkim');
    expect(both).toContain('SMIME_RELAY_LMTP=false  # flag: --lmtp');
  });

  it('config --print shows values and sources, with the upstream password masked', () => {
    const r = run(['config', '--print', '--listen', '127.0.0.1:2600'], { SMIME_RELAY_UPSTREAM: 'smtp://u:hunter2@mx.example.com:587' });
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('SMIME_RELAY_LISTEN=127.0.0.1:2600  # flag: --listen');
    expect(r.stdout).toMatch(/SMIME_RELAY_UPSTREAM=smtp:\/\/u:\*\*\*\*@mx\.example\.com:587.*# env/);
    expect(r.stdout).not.toContain('hunter2');
  });

  it('config --print writes the milter settings back as the user wrote them', () => {
    const r = run(['config', '--print', '--listen', 'off', '--milter', 'unix:/var/spool/postfix/smime-relay/milter.sock']);
    expect(r.stdout).toContain('SMIME_RELAY_LISTEN=off  # flag: --listen');
    expect(r.stdout).toContain('SMIME_RELAY_MILTER=unix:/var/spool/postfix/smime-relay/milter.sock  # flag: --milter');
    expect(run(['config', '--print', '--milter', '[::1]:8891']).stdout).toContain('SMIME_RELAY_MILTER=[::1]:8891  # flag: --milter');
  });
});

describe('the embedded default: `npm start` with nothing configured', () => {
  let dir: string;
  let child: ChildProcess;
  let stdout = '';
  let stderr = '';
  let port = 0;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'smime-relay-default-'));
    port = 20000 + Math.floor(Math.random() * 20000);
    child = spawn(process.execPath, [cli, 'serve', '--listen', `127.0.0.1:${port}`], { cwd: dir, env: { PATH: process.env.PATH! } });
    child.stdout!.on('data', (d) => (stdout += d));
    child.stderr!.on('data', (d) => (stderr += d));
    const until = Date.now() + 20_000;
    // pino writes stderr asynchronously: wait for the warning too, not just the stdout line.
    while (!stdout.includes('Try it:') || !stderr.includes('DEVELOPMENT certificate')) {
      if (Date.now() > until || child.exitCode !== null) throw new Error(`relay did not start:\n${stdout}\n${stderr}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  });

  afterAll(() => {
    child?.kill('SIGTERM');
  });

  it('generates a development CA and certificate in certs/dev with mode 0600 keys, and warns', () => {
    const files = readdirSync(join(dir, 'certs/dev'));
    expect(files).toEqual(expect.arrayContaining(['ca.crt', 'ca.key', 'notifications@localhost.pem']));
    expect(statSync(join(dir, 'certs/dev/notifications@localhost.pem')).mode & 0o777).toBe(0o600);
    expect(statSync(join(dir, 'certs/dev/ca.key')).mode & 0o777).toBe(0o600);
    expect(stderr).toMatch(/DEVELOPMENT certificate .* no mail client trusts/);
  });

  it('prints one line with a swaks command, where mail lands and how to verify it', () => {
    const line = stdout.split('\n').find((l) => l.startsWith('Try it:'))!;
    expect(line).toContain(`swaks --server 127.0.0.1:${port} --from notifications@localhost`);
    expect(line).toContain('outbox/');
    expect(line).toContain('openssl cms -verify');
    expect(line).toContain('-CAfile certs/dev/ca.crt');
  });

  it('signs a message into outbox/ that verifies against certs/dev/ca.crt', async () => {
    const raw = Buffer.from('From: notifications@localhost\r\nTo: you@example.com\r\nSubject: hello\r\n\r\nHello from the default setup.\r\n');
    const r = await sendMessage(port, 'notifications@localhost', ['you@example.com'], raw);
    expect(r.final?.code, r.final?.text).toBe(250);
    const eml = readdirSync(join(dir, 'outbox')).filter((f) => f.endsWith('.eml'));
    expect(eml).toHaveLength(1);
    const path = join(dir, 'outbox', eml[0]!);
    // The reply names the file (outbox/<id>.eml) by its id, never the local path.
    expect(r.final!.text).toMatch(new RegExp(`^2\\.0\\.0 Ok: queued as ${eml[0]!.replace(/\.eml$/, '')} \\(tx [\\w-]+\\)$`));
    const verify = spawnSync('openssl', ['cms', '-verify', '-in', path, '-CAfile', join(dir, 'certs/dev/ca.crt'), '-purpose', 'smimesign', '-out', '/dev/null'], { encoding: 'utf8' });
    expect(verify.status, verify.stderr).toBe(0);
    expect(readFileSync(path, 'latin1')).toContain('Subject: hello');
  });

  it('exits 0 on SIGTERM', async () => {
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
  });
});
