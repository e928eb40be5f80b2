import { execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { SigningEngine } from '../src/signing/engine.js';
import { checkIntegrity } from '../src/verify/integrity.js';
import { sendMessage } from './support/client.js';
import { createTestPki, type Leaf, type TestPki } from './support/pki.js';
import { startTestRelay } from './support/relay.js';
import { sample, serveRelay, type ServedRelay } from './support/served.js';
import { startSink, type Sink } from './support/sink.js';
import { verifyOpenssl } from './support/verify.js';

/*
 * SMIME_RELAY_SELF_VERIFY: the relay reads its own outgoing bytes back before the upstream sees
 * them. A signer that goes wrong (a corrupting `openssl` first on PATH, or damage to what the
 * native engine returned) must never reach the upstream: the client gets 451 4.7.0 with the tx
 * id, the log has an error line with the reason, and the outcome self_verify_failed is counted.
 */

const SENDER = 'alerts@example.test';
const REAL_OPENSSL = execFileSync('sh', ['-c', 'command -v openssl'], { encoding: 'utf8' }).trim();

let pki: TestPki;
let leaf: Leaf;
let sink: Sink;
let work: string;

beforeAll(async () => {
  pki = await createTestPki();
  leaf = await pki.issueLeaf('alerts', { emails: [SENDER] });
  sink = await startSink();
  work = mkdtempSync(join(tmpdir(), 'smr-selfverify-'));
  // An `openssl` that signs something other than what it was given ("content"), or returns a
  // signature with its last byte changed ("signature"); everything else runs the real openssl.
  const bin = join(work, 'bin');
  execFileSync('mkdir', [bin]);
  writeFileSync(
    join(bin, 'openssl'),
    `#!/bin/sh
mode=$(cat '${work}/mode' 2>/dev/null)
if [ "$1" != cms ] || [ "$2" != -sign ] || [ "$mode" = ok ]; then exec '${REAL_OPENSSL}' "$@"; fi
tmp=$(mktemp)
if [ "$mode" = content ]; then
  { cat; printf 'one more line the relay never sent\\r\\n'; } | '${REAL_OPENSSL}' "$@" > "$tmp" || exit $?
else
  '${REAL_OPENSSL}' "$@" > "$tmp" || exit $?
  size=$(stat -c %s "$tmp")
  last=$(tail -c 1 "$tmp" | od -An -tu1 | tr -d ' ')
  printf "\\\\$(printf '%03o' $(( (last + 1) % 256 )))" | dd of="$tmp" bs=1 seek=$((size - 1)) conv=notrunc 2>/dev/null
fi
cat "$tmp"
rm -f "$tmp"
`,
  );
  chmodSync(join(bin, 'openssl'), 0o755);
});

afterAll(async () => {
  await sink?.close();
  await pki?.cleanup();
  if (work) rmSync(work, { recursive: true, force: true });
});

let seq = 0;
const message = (label: string) =>
  Buffer.from(`From: ${SENDER}\r\nTo: a@example.org\r\nSubject: ${label}\r\nMessage-ID: <self-${++seq}@example.test>\r\n\r\n${'A line of body text.\r\n'.repeat(20)}`);

describe('a corrupting openssl first on PATH, SMIME_RELAY_ENGINE=openssl', () => {
  let relay: ServedRelay;
  const setMode = (mode: 'ok' | 'content' | 'signature') => writeFileSync(join(work, 'mode'), mode);

  beforeAll(async () => {
    setMode('ok');
    relay = await serveRelay(
      {
        PATH: `${join(work, 'bin')}:${process.env.PATH}`,
        SMIME_RELAY_ENGINE: 'openssl',
        SMIME_RELAY_CERT: leaf.bundlePath,
        SMIME_RELAY_UPSTREAM: sink.url,
        SMIME_RELAY_METRICS: '127.0.0.1:0',
      },
      work,
    );
  });
  afterEach(() => setMode('ok'));
  afterAll(async () => relay?.stop());

  it.each([
    ['signs bytes other than the message', 'content', /does not match the signature's sha-256 digest/],
    ['returns a signature with one byte changed', 'signature', /signature over the signed attributes does not verify/],
  ] as const)('openssl %s: 451 4.7.0 with the tx id, an error log line, self_verify_failed counted, nothing forwarded', async (_name, mode, reason) => {
    const before = sink.received.length;
    const counted = sample(await relay.metrics(), 'smime_relay_messages_total', { outcome: 'self_verify_failed' }) ?? NaN;
    setMode(mode);

    const result = await sendMessage(relay.port, SENDER, ['a@example.org'], message(`corrupt ${mode}`));
    expect(result.final?.code, result.final?.text).toBe(451);
    expect(result.final?.text).toMatch(/^4\.7\.0 Signature self-check failed \(.+\); the message was not forwarded, try again later \(tx [\w-]+\)$/);
    expect(result.final?.text).toMatch(reason);
    const tx = /\(tx ([\w-]+)\)$/.exec(result.final!.text)![1];

    const line = await relay.logged(/^self-verification failed/);
    expect(line).toMatchObject({ level: 50, tx, engine: 'openssl', serial: leaf.serial });
    expect(String(line.reason)).toMatch(reason);
    await relay.logged(/^transaction$/);
    expect(relay.logs.find((l) => l.msg === 'transaction' && l.tx === tx)).toMatchObject({ outcome: 'self_verify_failed' });
    expect(sample(await relay.metrics(), 'smime_relay_messages_total', { outcome: 'self_verify_failed' })).toBe(counted + 1);
    // Nothing reached the upstream, not even later.
    await new Promise((r) => setTimeout(r, 300));
    expect(sink.received.length).toBe(before);
    relay.logs.length = 0;
  });

  it('the same relay forwards, verifiably, once openssl is sound again', async () => {
    const before = sink.received.length;
    const result = await sendMessage(relay.port, SENDER, ['a@example.org'], message('sound openssl'));
    expect(result.final?.code, result.final?.text).toBe(250);
    const [got] = (await sink.waitFor(before + 1)).slice(before);
    expect((await verifyOpenssl(got!.raw, pki.rootCertPath)).ok).toBe(true);
  });
});

describe('SMIME_RELAY_SELF_VERIFY=off forwards what the signer produced', () => {
  it('the corrupted signature then reaches the upstream, and openssl rejects it: the check is what kept it back', async () => {
    writeFileSync(join(work, 'mode'), 'content');
    const relay = await serveRelay(
      { PATH: `${join(work, 'bin')}:${process.env.PATH}`, SMIME_RELAY_ENGINE: 'openssl', SMIME_RELAY_CERT: leaf.bundlePath, SMIME_RELAY_UPSTREAM: sink.url, SMIME_RELAY_SELF_VERIFY: 'off' },
      work,
    );
    try {
      const before = sink.received.length;
      const result = await sendMessage(relay.port, SENDER, ['a@example.org'], message('unchecked'));
      expect(result.final?.code, result.final?.text).toBe(250);
      const [got] = (await sink.waitFor(before + 1)).slice(before);
      const verdict = await verifyOpenssl(got!.raw, pki.rootCertPath);
      expect(verdict.ok).toBe(false);
      expect(verdict.detail).toMatch(/digest failure|content verify error|verification failure/i);
    } finally {
      writeFileSync(join(work, 'mode'), 'ok');
      await relay.stop();
    }
  });
});

describe('the native engine is guarded too', () => {
  /** The real native engine, with its result damaged the way a DER-encoding slip would. */
  const damaging = (damage: (der: Buffer) => Buffer) => (engine: SigningEngine): SigningEngine => ({
    name: engine.name,
    sign: async (content, bundle) => damage(await engine.sign(content, bundle)),
    close: () => engine.close(),
  });

  it.each([
    ['the signature value changed', (der: Buffer) => Buffer.concat([der.subarray(0, -1), Buffer.from([der[der.length - 1]! ^ 0x01])]), /does not verify/],
    ['the DER truncated', (der: Buffer) => der.subarray(0, der.length - 10), /not valid DER/],
  ] as const)('%s: 451 4.7.0, nothing forwarded', async (_name, damage, reason) => {
    const relay = await startTestRelay({ SMIME_RELAY_ENGINE: 'native', SMIME_RELAY_CERT: leaf.bundlePath, SMIME_RELAY_UPSTREAM: sink.url }, { wrapEngine: damaging(damage) });
    try {
      const before = sink.received.length;
      const result = await sendMessage(relay.address.port, SENDER, ['a@example.org'], message('native damaged'));
      expect(result.final?.code, result.final?.text).toBe(451);
      expect(result.final?.text).toMatch(/^4\.7\.0 Signature self-check failed/);
      expect(result.final?.text).toMatch(reason);
      expect(relay.logs.find((l) => String(l.msg).startsWith('self-verification failed'))).toMatchObject({ level: 50, engine: 'native' });
      expect(relay.logs.find((l) => l.msg === 'transaction')).toMatchObject({ outcome: 'self_verify_failed' });
      expect(sink.received.length).toBe(before);
    } finally {
      await relay.close();
    }
  });

  it('an undamaged native signature passes the check and the transaction line times it', async () => {
    const relay = await startTestRelay({ SMIME_RELAY_ENGINE: 'native', SMIME_RELAY_CERT: leaf.bundlePath, SMIME_RELAY_UPSTREAM: sink.url });
    try {
      const before = sink.received.length;
      const result = await sendMessage(relay.address.port, SENDER, ['a@example.org'], message('native sound'));
      expect(result.final?.code, result.final?.text).toBe(250);
      const [got] = (await sink.waitFor(before + 1)).slice(before);
      expect((await verifyOpenssl(got!.raw, pki.rootCertPath)).ok).toBe(true);
      expect(checkIntegrity(got!.raw).ok).toBe(true);
      const line = relay.logs.find((l) => l.msg === 'transaction')!;
      expect(Object.keys(line.durations as object)).toContain('self_verify');
    } finally {
      await relay.close();
    }
  });
});
