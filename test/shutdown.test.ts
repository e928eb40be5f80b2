import { spawn, type ChildProcess } from 'node:child_process';
import { connect } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { RawClient, sendMessage } from './support/client.js';
import { createTestPki, type Leaf, type TestPki } from './support/pki.js';
import { startSink, type Sink } from './support/sink.js';
import { verifyOpenssl } from './support/verify.js';

/*
 * Shutdown and reload of the real process (`smime-relay serve`, the compiled dist/): SIGTERM
 * stops accepting, lets the message in progress be signed, forwarded and answered, then exits 0;
 * SIGHUP reloads without dropping anything.
 */

const root = new URL('..', import.meta.url).pathname;
const cli = join(root, 'dist/cli.js');
const SENDER = 'alerts@example.test';

let pki: TestPki;
let leaf: Leaf;
let sink: Sink;
let cwd: string;

beforeAll(async () => {
  pki = await createTestPki();
  leaf = await pki.issueLeaf('alerts', { emails: [SENDER] });
  sink = await startSink();
  cwd = mkdtempSync(join(tmpdir(), 'smr-shutdown-'));
}, 120_000);

afterEach(() => {
  sink.script = {};
});

afterAll(async () => {
  await sink?.close();
  await pki?.cleanup();
  if (cwd) rmSync(cwd, { recursive: true, force: true });
});

interface Served {
  child: ChildProcess;
  port: number;
  logs: Record<string, unknown>[];
  /** Resolves with the first log line whose msg matches. */
  logged(msg: RegExp): Promise<Record<string, unknown>>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

async function serve(env: Record<string, string> = {}): Promise<Served> {
  const child = spawn(process.execPath, [cli, 'serve'], {
    cwd,
    env: {
      PATH: process.env.PATH!,
      SMIME_RELAY_LISTEN: '127.0.0.1:0',
      SMIME_RELAY_CERT: leaf.bundlePath,
      SMIME_RELAY_UPSTREAM: sink.url,
      LOG_LEVEL: 'info',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs: Record<string, unknown>[] = [];
  const watchers: { re: RegExp; resolve: (l: Record<string, unknown>) => void }[] = [];
  let partial = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => {
    partial += d;
    const lines = partial.split('\n');
    partial = lines.pop()!;
    for (const line of lines) {
      if (!line.startsWith('{')) continue;
      const l = JSON.parse(line) as Record<string, unknown>;
      logs.push(l);
      for (const w of watchers.splice(0)) (w.re.test(String(l.msg)) ? w.resolve(l) : watchers.push(w));
    }
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  const logged = (re: RegExp) =>
    new Promise<Record<string, unknown>>((resolve, reject) => {
      const found = logs.find((l) => re.test(String(l.msg)));
      if (found) return resolve(found);
      watchers.push({ re, resolve });
      void exited.then(({ code }) => reject(new Error(`relay exited (${code}) before logging ${re}: ${JSON.stringify(logs)}`)));
    });
  const listening = await logged(/^smime-relay listening$/);
  const port = Number(String(listening.listen).split(':').pop());
  return { child, port, logs, logged, exited };
}

/** A sink that holds the reply to DATA until released; `arrived` resolves once the message is there. */
function holdingSink() {
  let release!: () => void;
  let arrived!: () => void;
  const released = new Promise<void>((r) => (release = r));
  const arrivedP = new Promise<void>((r) => (arrived = r));
  sink.script = {
    data: () => {
      arrived();
      return released.then(() => 'accept' as const);
    },
  };
  return { release, arrived: arrivedP };
}

const refused = (port: number) =>
  new Promise<boolean>((resolve) => {
    const s = connect(port, '127.0.0.1');
    s.once('connect', () => (s.destroy(), resolve(false)));
    s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code === 'ECONNREFUSED'));
  });

const message = (subject: string) => Buffer.from(`From: ${SENDER}\r\nTo: a@example.org\r\nSubject: ${subject}\r\n\r\nbody\r\n`);

describe('SIGTERM', () => {
  it('stops accepting, tells idle clients 421, finishes the message in progress with 250, and exits 0', async () => {
    const relay = await serve();
    const hold = holdingSink();
    const idle = await RawClient.open(relay.port);
    expect((await idle.read()).code).toBe(220);
    expect((await idle.command('EHLO idle.test')).code).toBe(250);

    const before = sink.received.length;
    const sending = sendMessage(relay.port, SENDER, ['a@example.org'], message('in flight during SIGTERM'));
    await hold.arrived; // signed and at the upstream, which has not answered yet
    relay.child.kill('SIGTERM');
    await relay.logged(/^shutting down/);

    expect(await idle.read()).toEqual({ code: 421, text: '4.3.2 smime-relay is shutting down; try again later' });
    expect(await refused(relay.port)).toBe(true);

    hold.release();
    const result = await sending;
    expect(result.final?.code, result.final?.text).toBe(250);
    expect(await relay.exited).toEqual({ code: 0, signal: null });

    const [got] = (await sink.waitFor(before + 1)).slice(before);
    expect((await verifyOpenssl(got!.raw, pki.rootCertPath)).ok).toBe(true);
    idle.close();
  });

  it('past SMIME_RELAY_SHUTDOWN_TIMEOUT_MS what is left gets 421 4.3.2 and the process still exits 0', async () => {
    const relay = await serve({ SMIME_RELAY_SHUTDOWN_TIMEOUT_MS: '1000' });
    const hold = holdingSink();
    const sending = sendMessage(relay.port, SENDER, ['a@example.org'], message('stuck during SIGTERM'));
    await hold.arrived;
    relay.child.kill('SIGTERM');
    const result = await sending;
    expect(result.final).toEqual({ code: 421, text: '4.3.2 smime-relay is shutting down; try again later' });
    expect(await relay.exited).toEqual({ code: 0, signal: null });
    expect(relay.logs.some((l) => l.level === 40 && /shutdown deadline reached/.test(String(l.msg)))).toBe(true);
    hold.release();
  });
});

describe('SIGHUP', () => {
  it('reloads certificates and users, keeps serving, and a later SIGTERM still exits 0', async () => {
    const relay = await serve();
    const idle = await RawClient.open(relay.port);
    expect((await idle.read()).code).toBe(220);
    relay.child.kill('SIGHUP');
    await relay.logged(/^reloading certificates and users$/);
    expect((await idle.command('NOOP')).code).toBe(250);

    const before = sink.received.length;
    expect((await sendMessage(relay.port, SENDER, ['a@example.org'], message('after SIGHUP'))).final?.code).toBe(250);
    await sink.waitFor(before + 1);

    relay.child.kill('SIGTERM');
    expect(await relay.exited).toEqual({ code: 0, signal: null });
    idle.close();
  });
});
