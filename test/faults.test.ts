import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { sendMessage } from './support/client.js';
import { createTestPki, type Leaf, type TestPki } from './support/pki.js';
import { startTestRelay, type TestRelay } from './support/relay.js';
import { startSink, type Sink, type SinkScript } from './support/sink.js';
import { verifyOpenssl } from './support/verify.js';

/*
 * Nothing lost, nothing duplicated: whatever the upstream or the signing process does, the
 * client is told 250 only when the upstream has the signed message, and 4xx otherwise so its
 * queue keeps it. The upstream is a real SMTP peer scripted to fail; openssl is the real binary
 * behind a wrapper script that crashes or hangs on demand (fault injection for the child
 * process, not a stand-in for the signer: in "ok" mode it runs the real openssl).
 */

const SENDER = 'alerts@example.test';
const REAL_OPENSSL = execFileSync('sh', ['-c', 'command -v openssl'], { encoding: 'utf8' }).trim();

let pki: TestPki;
let leaf: Leaf;
let sink: Sink;
let relay: TestRelay;
let work: string;
let fakeOpenssl: string;

const setOpensslMode = (mode: 'ok' | 'crash' | 'hang') => writeFileSync(join(work, 'mode'), mode);

beforeAll(async () => {
  pki = await createTestPki();
  leaf = await pki.issueLeaf('alerts', { emails: [SENDER] });
  work = mkdtempSync(join(tmpdir(), 'smr-faults-'));
  fakeOpenssl = join(work, 'openssl');
  writeFileSync(
    fakeOpenssl,
    `#!/bin/sh
# 'version' always answers, so the relay's start-up check passes; 'cms' misbehaves on demand.
if [ "$1" = version ]; then exec '${REAL_OPENSSL}' version; fi
case "$(cat '${work}/mode' 2>/dev/null)" in
  crash) kill -SEGV $$ ;;
  hang) exec sleep 600 ;;
  *) exec '${REAL_OPENSSL}' "$@" ;;
esac
`,
  );
  chmodSync(fakeOpenssl, 0o755);
  setOpensslMode('ok');
  sink = await startSink();
  relay = await startTestRelay(
    {
      SMIME_RELAY_CERT: leaf.bundlePath,
      SMIME_RELAY_UPSTREAM: sink.url,
      SMIME_RELAY_UPSTREAM_TIMEOUT_MS: '1500',
      SMIME_RELAY_SIGN_TIMEOUT_MS: '1500',
      // The openssl engine: these tests break the openssl child process on purpose.
      SMIME_RELAY_ENGINE: 'openssl',
    },
    { openssl: fakeOpenssl },
  );
});

afterEach(() => {
  sink.script = {};
  setOpensslMode('ok');
});

afterAll(async () => {
  await relay?.close();
  await sink?.close();
  await pki?.cleanup();
  if (work) rmSync(work, { recursive: true, force: true });
});

let seq = 0;
const message = (label: string) =>
  Buffer.from(`From: ${SENDER}\r\nTo: a@example.org\r\nSubject: ${label}\r\nMessage-ID: <fault-${++seq}@example.test>\r\n\r\n${'A line of body text.\r\n'.repeat(20)}`);

/** The relay still serves: a normal message goes through, signed and verifiable. */
async function expectHealthy(r: TestRelay = relay) {
  const before = sink.received.length;
  const result = await sendMessage(r.address.port, SENDER, ['after@example.org'], message('healthy again'));
  expect(result.final?.code, result.final?.text).toBe(250);
  const [got] = (await sink.waitFor(before + 1)).slice(before);
  expect((await verifyOpenssl(got!.raw, pki.rootCertPath)).ok).toBe(true);
}

describe('the upstream fails: the client gets 4xx, never 250, and the upstream has no copy', () => {
  const faults: [string, SinkScript, RegExp][] = [
    ['hangs up in the middle of DATA', { dropAfterDataBytes: 300 }, /^4\.4\.1 /],
    ['hangs up after the final dot, before answering', { data: () => ({ drop: true }) }, /^4\.4\.1 /],
    ['never answers the final dot (stall)', { data: () => ({ stall: true }) }, /^4\.4\.1 .*no answer within 1500 ms/],
    ['never answers MAIL FROM (stall)', { mailFrom: () => ({ stall: true }) }, /^4\.4\.1 /],
    // An upstream that answered gets its own enhanced status passed on; 4.4.1 is for silence.
    ['answers 421 at MAIL FROM', { mailFrom: () => ({ reply: 421, text: '4.3.2 Service shutting down' }) }, /^4\.3\.2 .*421/],
    ['answers 421 at RCPT TO', { rcptTo: () => ({ reply: 421, text: '4.3.2 Service shutting down' }) }, /^4\.3\.2 /],
    ['answers 421 after the final dot', { data: () => ({ reply: 421, text: '4.3.2 Service shutting down' }) }, /^4\.3\.2 .*421/],
    ['answers 451 after the final dot', { data: () => ({ reply: 451, text: '4.3.0 Try later' }) }, /^4\.3\.0 .*451/],
    ['answers 452 without an enhanced status after the final dot', { data: () => ({ reply: 452, text: 'Insufficient storage' }) }, /^4\.0\.0 .*452/],
  ];

  it.each(faults)('upstream %s', async (_name, script, text) => {
    sink.script = script;
    const before = sink.received.length;
    const result = await sendMessage(relay.address.port, SENDER, ['a@example.org'], message(_name));
    expect(result.final?.code, result.final?.text).toBeGreaterThanOrEqual(400);
    expect(result.final?.code).toBeLessThan(500);
    expect(result.final?.text).toMatch(text);
    expect(sink.received.length).toBe(before);

    sink.script = {};
    await expectHealthy();
  });

  it('an upstream reply slower than SMIME_RELAY_UPSTREAM_TIMEOUT_MS: 451, and the copy the upstream kept is the only possible duplicate', async () => {
    let released!: () => void;
    const late = new Promise<void>((r) => (released = r));
    sink.script = { data: () => late.then(() => 'accept' as const) };
    const before = sink.received.length;
    const result = await sendMessage(relay.address.port, SENDER, ['a@example.org'], message('slow upstream'));
    expect(result.final?.code).toBe(451);
    // The upstream now queues the message it had received in full: the client, told 451, will
    // send it again. That is a duplicate, never a loss — the one way SMTP without a shared
    // transaction can go when a reply does not arrive in time (RFC 1047).
    released();
    await sink.waitFor(before + 1);
    sink.script = {};
    await expectHealthy();
  });
});

describe('openssl fails: a timeout kills it and the client gets 451 4.7.0', () => {
  it.each([
    ['crashes (SIGSEGV)', 'crash', /openssl exited with SIGSEGV/],
    ['hangs, and is killed after SMIME_RELAY_SIGN_TIMEOUT_MS', 'hang', /openssl did not finish within 1500 ms and was killed/],
  ] as const)('openssl %s', async (_name, mode, text) => {
    setOpensslMode(mode);
    const before = sink.received.length;
    const result = await sendMessage(relay.address.port, SENDER, ['a@example.org'], message(`openssl ${mode}`));
    expect(result.final?.code).toBe(451);
    expect(result.final?.text).toMatch(/^4\.7\.0 Signing failed temporarily/);
    expect(result.final?.text).toMatch(text);
    expect(sink.received.length).toBe(before);

    setOpensslMode('ok');
    await expectHealthy();
  });

  it('openssl disappears from disk at run time: 451 4.7.0 naming the binary, and back to 250 once it returns', async () => {
    const away = `${fakeOpenssl}.away`;
    renameSync(fakeOpenssl, away);
    try {
      const result = await sendMessage(relay.address.port, SENDER, ['a@example.org'], message('openssl missing'));
      expect(result.final?.code).toBe(451);
      expect(result.final?.text).toMatch(/^4\.7\.0 .*openssl not found/);
    } finally {
      renameSync(away, fakeOpenssl);
    }
    await expectHealthy();
  });
});

describe('start-up check: openssl version ≥ 3.0, only when something needs it', () => {
  const env = () => ({ SMIME_RELAY_CERT: leaf.bundlePath, SMIME_RELAY_UPSTREAM: sink.url, SMIME_RELAY_ENGINE: 'openssl' });

  it('an OpenSSL 1.1 binary stops the relay with the version it found and the fix', async () => {
    const old = join(work, 'openssl-1.1');
    writeFileSync(old, '#!/bin/sh\necho "OpenSSL 1.1.1w  11 Sep 2023"\n');
    chmodSync(old, 0o755);
    await expect(startTestRelay(env(), { openssl: old })).rejects.toThrow(
      /is OpenSSL 1\.1\.1w .*needs OpenSSL 3\.0 or newer because of SMIME_RELAY_ENGINE=openssl\. Install OpenSSL 3\.x .*SMIME_RELAY_ENGINE=native/,
    );
  });

  it('a missing openssl stops the relay and says where it looked', async () => {
    await expect(startTestRelay(env(), { openssl: join(work, 'no-such-openssl') })).rejects.toThrow(/openssl was not found \(looked for '.*no-such-openssl' on PATH\)/);
  });

  it('the native engine starts without openssl', async () => {
    const r = await startTestRelay({ ...env(), SMIME_RELAY_ENGINE: 'native' }, { openssl: join(work, 'no-such-openssl') });
    try {
      await expectHealthy(r);
    } finally {
      await r.close();
    }
  });
});

describe('the certificate file disappears at run time', () => {
  it('the relay keeps signing with the certificate it loaded, also after SIGHUP, and logs an error', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'smr-cert-'));
    const bundle = join(dir, 'alerts.pem');
    copyFileSync(leaf.bundlePath, bundle);
    chmodSync(bundle, 0o600);
    const r = await startTestRelay({ SMIME_RELAY_CERT: bundle, SMIME_RELAY_UPSTREAM: sink.url });
    try {
      await expectHealthy(r);
      rmSync(bundle);
      r.reload(); // what SIGHUP does
      await expectHealthy(r);
      expect(r.logs.some((l) => (l.level as number) >= 50 && /still using/i.test(String(l.msg)))).toBe(true);
    } finally {
      await r.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
