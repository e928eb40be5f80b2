/**
 * Settings and start-up errors as an admin meets them: the real CLI (dist/cli.js, what `npm start`
 * and the systemd unit run) in a fresh directory, with only the environment the test gives it.
 * Each case reads what the admin reads: the exit status, stdout and stderr.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestPki, openssl, type Leaf, type TestPki } from './support/pki.js';

const root = new URL('..', import.meta.url).pathname;
const cli = join(root, 'dist/cli.js');
const VERSION = (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string }).version;

let work: string;
let pki: TestPki;
let leaf: Leaf;
let der: string;

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'smime-relay-startup-'));
  pki = await createTestPki();
  leaf = await pki.issueLeaf('alerts', { emails: ['alerts@example.test'] });
  der = join(work, 'alerts.der');
  await openssl(['x509', '-in', leaf.certPath, '-outform', 'DER', '-out', der]);
});

afterAll(async () => {
  rmSync(work, { recursive: true, force: true });
  await pki?.cleanup();
});

/**
 * The CLI in its own empty directory, so nothing (certs/dev, outbox/) lands in the repository.
 * Asynchronous, so that the cases of one test run side by side and a port this process holds
 * stays held.
 */
function run(args: string[], env: Record<string, string> = {}): Promise<{ status: number | null; stdout: string; stderr: string; cwd: string }> {
  const cwd = mkdtempSync(join(work, 'cwd-'));
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [cli, ...args], { cwd, env: { PATH: process.env.PATH!, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d));
    child.stderr.on('data', (d: Buffer) => (stderr += d));
    // A relay that started after all must not outlive the test.
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.on('error', reject);
    child.on('close', (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr, cwd });
    });
  });
}

/** stderr without pino's JSON log lines: what is left is what the CLI itself said. */
const said = (stderr: string) => stderr.split('\n').filter((l) => l && !l.startsWith('{')).join('\n');
const jsonLines = (stderr: string) => stderr.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
const STACK_FRAME = /^\s+at /m;

describe('a misspelled setting stops the relay (exit 2) and names the closest real one', () => {
  it('SMIME_RELAY_UPSTREM in the environment: "did you mean SMIME_RELAY_UPSTREAM?", and no mail goes to ./outbox', async () => {
    const r = await run(['serve', '--listen', '127.0.0.1:0'], { SMIME_RELAY_UPSTREM: 'smtp://mta.example.test:25' });
    expect(r.status).toBe(2);
    expect(r.stderr).toContain('SMIME_RELAY_UPSTREM (environment variable) is not a setting; did you mean SMIME_RELAY_UPSTREAM?');
    expect(r.stdout).toBe('');
    expect(existsSync(join(r.cwd, 'outbox'))).toBe(false);
    expect(existsSync(join(r.cwd, 'certs'))).toBe(false);
  });

  it('every command that reads the settings refuses it, config --print included', async () => {
    const r = await run(['config', '--print'], { SMIME_RELAY_SINGING: 'off' });
    expect(r.status).toBe(2);
    expect(r.stderr).toContain('did you mean SMIME_RELAY_SIGNING?');
  });

  it('a --config-dir file in the relay\'s namespaces that is not a setting; the app\'s own files are left alone', async () => {
    const dir = join(work, 'envdir');
    mkdirSync(dir);
    // What a Tattler envdir holds besides the relay's settings: the app's own keys.
    writeFileSync(join(dir, 'TATTLER_EMAIL_SENDER'), 'alerts@example.test\n');
    writeFileSync(join(dir, 'TATTLER_SMTP_ADDRESS'), '127.0.0.1:2525\n');
    writeFileSync(join(dir, 'DATABASE_URL'), 'postgres://app\n');
    writeFileSync(join(dir, 'SMIME_RELAY_MAX_SIZE'), '10MiB\n');
    const fine = await run(['config', '--print', '--config-dir', dir]);
    expect(fine.status, fine.stderr).toBe(0);
    expect(fine.stdout).toContain(`SMIME_RELAY_MAX_SIZE=10485760  # config-dir: ${join(dir, 'SMIME_RELAY_MAX_SIZE')}`);

    writeFileSync(join(dir, 'SMIME_RELAY_UPSTREM'), 'smtp://mta.example.test:25\n');
    writeFileSync(join(dir, 'TATTLER_EMAIL_SMIME_CRT'), '/etc/tattler/cert.pem\n');
    const r = await run(['serve', '--config-dir', dir]);
    expect(r.status).toBe(2);
    expect(r.stderr).toContain(`${join(dir, 'SMIME_RELAY_UPSTREM')} (--config-dir file) is not a setting; did you mean SMIME_RELAY_UPSTREAM?`);
    expect(r.stderr).toContain(`${join(dir, 'TATTLER_EMAIL_SMIME_CRT')} (--config-dir file) is not a setting; did you mean TATTLER_EMAIL_SMIME_CERT?`);
    expect(r.stderr).not.toMatch(/TATTLER_EMAIL_SENDER|TATTLER_SMTP_ADDRESS|DATABASE_URL/);
  });
});

describe('a start-up error is one message on stderr', () => {
  it('a DER certificate: the explanation once, no stack trace, no JSON copy of it; exit 1', async () => {
    const r = await run(['serve', '--listen', '127.0.0.1:0'], { SMIME_RELAY_CERT: der });
    expect(r.status).toBe(1);
    const message = said(r.stderr);
    expect(message).toMatch(/^smime-relay: SMIME_RELAY_CERT names '.*alerts\.der', which holds no usable certificate:$/m);
    expect(message.match(/appears to be binary/g)).toHaveLength(1);
    expect(message).toContain(`openssl x509 -inform DER -in '${der}' -out cert.pem`);
    expect(message).not.toMatch(STACK_FRAME);
    expect(jsonLines(r.stderr).filter((l) => String(l.msg).includes('binary'))).toEqual([]);
  });

  it('LOG_LEVEL=debug adds the stack trace, for whoever debugs the relay itself', async () => {
    const r = await run(['serve', '--listen', '127.0.0.1:0'], { SMIME_RELAY_CERT: der, LOG_LEVEL: 'debug' });
    expect(r.status).toBe(1);
    expect(said(r.stderr)).toMatch(STACK_FRAME);
  });

  it('names the variable the user set: TATTLER_EMAIL_SMIME_CERT, not SMIME_RELAY_CERT', async () => {
    const binary = await run(['serve', '--listen', '127.0.0.1:0'], { TATTLER_EMAIL_SMIME_CERT: der });
    expect(binary.status).toBe(1);
    expect(said(binary.stderr)).toContain(`TATTLER_EMAIL_SMIME_CERT names '${der}'`);
    expect(said(binary.stderr)).not.toContain('SMIME_RELAY_CERT');

    const missing = await run(['serve', '--listen', '127.0.0.1:0'], { TATTLER_EMAIL_SMIME_CERT: join(work, 'nowhere.pem') });
    expect(missing.status).toBe(1);
    expect(said(missing.stderr)).toContain('does not exist (or is a symlink to nothing). Check TATTLER_EMAIL_SMIME_CERT.');
    expect(said(missing.stderr)).not.toContain('SMIME_RELAY_CERT');

    const flag = await run(['serve', '--listen', '127.0.0.1:0', '--cert', der]);
    expect(said(flag.stderr)).toContain(`--cert names '${der}'`);
  });

  it('SMIME_RELAY_SIGNING=off without a certificate says why the certificate is still needed', async () => {
    const r = await run(['serve', '--listen', '127.0.0.1:0'], { SMIME_RELAY_SIGNING: 'off', SMIME_RELAY_UPSTREAM: 'smtp://127.0.0.1:25' });
    expect(r.status).toBe(2);
    const message = said(r.stderr);
    expect(message).toContain('SMIME_RELAY_CERT is not set');
    expect(message).toContain('SMIME_RELAY_SIGNING=off forwards mail unsigned, but the relay still needs the certificates');
    expect(message).toContain('MAIL FROM and the From header are checked against them');
    expect(message).not.toMatch(STACK_FRAME);
  });

  describe('a port already in use names the setting and the address', () => {
    let busy: Server;
    let port = 0;
    beforeAll(async () => {
      busy = createServer();
      await new Promise<void>((resolve) => busy.listen(0, '127.0.0.1', resolve));
      port = (busy.address() as { port: number }).port;
    });
    afterAll(() => new Promise<void>((resolve) => busy.close(() => resolve())));

    it('SMIME_RELAY_METRICS', async () => {
      const r = await run(['serve', '--listen', '127.0.0.1:0'], { SMIME_RELAY_CERT: leaf.bundlePath, SMIME_RELAY_METRICS: `127.0.0.1:${port}` });
      expect(r.status).toBe(1);
      expect(said(r.stderr)).toBe(
        `smime-relay: SMIME_RELAY_METRICS 127.0.0.1:${port}: cannot listen: the address is already in use (another smime-relay, or another program, listens there). Stop that program, or choose a free port.`,
      );
    });

    it('SMIME_RELAY_LISTEN', async () => {
      const r = await run(['serve'], { SMIME_RELAY_CERT: leaf.bundlePath, SMIME_RELAY_LISTEN: `127.0.0.1:${port}` });
      expect(r.status).toBe(1);
      expect(said(r.stderr)).toMatch(new RegExp(`^smime-relay: SMIME_RELAY_LISTEN 127\\.0\\.0\\.1:${port}: cannot listen: the address is already in use`));
      expect(r.stderr).not.toMatch(STACK_FRAME);
    });
  });
});

describe('version, help and usage errors', () => {
  it.each([['--version'], ['-V'], ['version']])('%s prints smime-relay, node and openssl versions on stdout and exits 0', async (arg) => {
    const r = await run([arg]);
    expect(r.status).toBe(0);
    expect(r.stderr).toBe('');
    const [first, node, ssl] = r.stdout.split('\n');
    expect(first).toBe(`smime-relay ${VERSION}`);
    expect(node).toBe(`node ${process.version} (OpenSSL ${process.versions.openssl}: the native engine)`);
    expect(ssl).toMatch(/^openssl program: OpenSSL 3\.\d+\.\d+/);
  });

  it.each([['serve'], ['config'], ['check-cert'], ['hash-password'], ['sign'], ['version']])('%s --help: usage on stdout, exit 0', async (cmd) => {
    const r = await run([cmd, '--help']);
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`^Usage: smime-relay ${cmd}`));
    expect(r.stderr).toBe('');
  });

  it('--help lists every command, version included', async () => {
    const r = await run(['--help']);
    expect(r.status).toBe(0);
    for (const cmd of ['serve', 'config', 'check-cert', 'hash-password', 'sign', 'version']) expect(r.stdout).toMatch(new RegExp(`^  ${cmd} `, 'm'));
  });

  it('every usage error goes to stderr with exit 2, and nothing to stdout', async () => {
    const cases = [
      [], ['frobnicate'], ['serve', '--frobnicate'], ['serve', 'extra'], ['config'], ['config', '--nope'], ['check-cert'],
      ['check-cert', '--bogus', 'x'], ['hash-password', '--mailboxes', 'a@example.test'], ['sign'], ['version', 'extra'],
    ];
    const results = await Promise.all(cases.map((args) => run(args)));
    results.forEach((r, i) => {
      const what = `smime-relay ${cases[i]!.join(' ')}`;
      expect(r.status, what).toBe(2);
      expect(r.stdout, what).toBe('');
      expect(r.stderr, what).toMatch(/^smime-relay/);
      expect(r.stderr, what).not.toMatch(STACK_FRAME);
    });
  });
});
