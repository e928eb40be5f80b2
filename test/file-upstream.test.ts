import { spawn } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sendMessage } from './support/client.js';
import { createTestPki, type Leaf, type TestPki } from './support/pki.js';
import { linesFor, startTestRelay, type TestRelay } from './support/relay.js';

/*
 * The file: upstream (issue 10, item 9): what it writes has CRLF line endings only, passed-through
 * mail included, as it would have on the wire; a failed write leaves nothing behind; the reply
 * names neither the path nor the error's details, which the log line with the same tx id has.
 */

const root = new URL('..', import.meta.url).pathname;
const SENDER = 'alerts@example.test';

let pki: TestPki;
let leaf: Leaf;
let dir: string;

beforeAll(async () => {
  pki = await createTestPki();
  leaf = await pki.issueLeaf('alerts', { emails: [SENDER] });
  dir = await mkdtemp(join(tmpdir(), 'smr-file-up-'));
});

afterAll(async () => {
  await pki?.cleanup();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** Bare LF, bare CR, and a CRLF line, as a sloppy script writes them. */
const sloppy = (extra = '') =>
  Buffer.from(`From: ${SENDER}\nTo: ops@example.org\r\nSubject: line endings\n${extra}\nfirst line\nsecond\rthird\r\nlast\r\n`, 'latin1');

const bareBreaks = (b: Buffer) => (b.toString('latin1').match(/\r(?!\n)|(?<!\r)\n/g) ?? []).length;

async function only(outbox: string): Promise<Buffer> {
  const files = await readdir(outbox);
  expect(files).toHaveLength(1);
  expect(files[0]).toMatch(/\.eml$/);
  return readFile(join(outbox, files[0]!));
}

describe('file: upstream line endings', () => {
  let relay: TestRelay;
  let outbox: string;

  afterAll(() => relay?.close());

  it('mail passed through unsigned (SMIME_RELAY_SIGNING=off) is written with CRLF only', async () => {
    outbox = join(dir, 'unsigned');
    relay = await startTestRelay({ SMIME_RELAY_CERT: leaf.bundlePath, SMIME_RELAY_UPSTREAM: `file:${outbox}`, SMIME_RELAY_SIGNING: 'off' });
    const result = await sendMessage(relay.address.port, SENDER, ['ops@example.org'], sloppy());
    expect(result.final?.code, result.final?.text).toBe(250);
    const eml = await only(outbox);
    expect(bareBreaks(eml)).toBe(0);
    expect(eml.toString('latin1')).toBe(sloppy().toString('latin1').replace(/\r\n|\r|\n/g, '\r\n'));
  });

  it('the reply names the file by its id, not its path; the log line has the path', async () => {
    const result = await sendMessage(relay.address.port, SENDER, ['ops@example.org'], sloppy());
    const id = /^2\.0\.0 Ok: queued as ([\w-]+) \(tx [\w-]+\)$/.exec(result.final!.text)?.[1];
    expect(id, result.final!.text).toBeDefined();
    expect(result.final!.text).not.toContain(outbox);
    const line = linesFor(relay, result.final!).find((l) => l.msg === 'transaction');
    expect(line?.upstream).toBe(`written to ${join(outbox, `${id}.eml`)}`);
  });

  it('an already signed message, forwarded unchanged, is written with CRLF only too', async () => {
    const signedOutbox = join(dir, 'protected');
    const signing = await startTestRelay({ SMIME_RELAY_CERT: leaf.bundlePath, SMIME_RELAY_UPSTREAM: `file:${signedOutbox}` });
    try {
      const raw = sloppy('MIME-Version: 1.0\nContent-Type: multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256; boundary="b"\n');
      const result = await sendMessage(signing.address.port, SENDER, ['ops@example.org'], raw);
      expect(result.final?.code, result.final?.text).toBe(250);
      expect(linesFor(signing, result.final!).find((l) => l.msg === 'transaction')).toMatchObject({ outcome: 'passed_protected' });
      expect(bareBreaks(await only(signedOutbox))).toBe(0);
    } finally {
      await signing.close();
    }
  });
});

describe('a write that fails', () => {
  it('leaves no .tmp file, answers 451 without the path, and logs the path with the same tx id', { timeout: 60_000 }, async () => {
    const outbox = join(dir, 'full');
    // A real failure in the middle of a write: the relay runs with a 16 KiB file size limit
    // (RLIMIT_FSIZE), so writing a larger message fails with EFBIG after the temp file exists.
    const child = spawn('bash', ['-c', 'ulimit -f 16 && exec "$0" "$@"', process.execPath, join(root, 'dist/cli.js'), 'serve'], {
      env: {
        PATH: process.env.PATH!,
        SMIME_RELAY_LISTEN: '127.0.0.1:0',
        SMIME_RELAY_CERT: leaf.bundlePath,
        SMIME_RELAY_UPSTREAM: `file:${outbox}`,
      },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    const logs: Record<string, unknown>[] = [];
    let partial = '';
    const listening = new Promise<number>((resolve, reject) => {
      child.stderr!.setEncoding('utf8').on('data', (d: string) => {
        const lines = (partial + d).split('\n');
        partial = lines.pop()!;
        for (const l of lines) {
          if (!l.startsWith('{')) continue;
          const line = JSON.parse(l) as Record<string, unknown>;
          logs.push(line);
          if (line.msg === 'smime-relay listening') resolve(Number(String(line.listen).split(':').pop()));
        }
      });
      child.once('exit', (code) => reject(new Error(`the relay exited (${code}) before listening: ${JSON.stringify(logs)}`)));
    });
    try {
      const port = await listening;
      const big = Buffer.from(`From: ${SENDER}\r\nTo: ops@example.org\r\nSubject: too big for the disk\r\n\r\n${'0123456789abcdef'.repeat(4 * 32).concat('\r\n').repeat(16)}`);
      expect(big.length).toBeGreaterThan(32 * 1024);
      const result = await sendMessage(port, SENDER, ['ops@example.org'], big);
      expect(result.final?.code).toBe(451);
      expect(result.final?.text).toMatch(/^4\.3\.0 The message could not be written to the outbox \(EFBIG\); try again later \(tx [\w-]+\)$/);
      expect(result.final?.text).not.toContain(outbox);
      expect(await readdir(outbox)).toEqual([]);
      const tx = /\(tx ([\w-]+)\)$/.exec(result.final!.text)![1];
      // The reply can arrive before the child's log line has come through its stderr pipe.
      let line: Record<string, unknown> | undefined;
      for (let i = 0; i < 100 && !(line = logs.find((l) => l.msg === 'transaction' && l.tx === tx)); i++) await new Promise((r) => setTimeout(r, 50));
      expect(line).toMatchObject({ outcome: 'upstream_tempfail' });
      expect(String(line!.error)).toContain(outbox);
      expect(String(line!.error)).toMatch(/EFBIG/);
    } finally {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGKILL');
      await exited;
    }
  });
});
