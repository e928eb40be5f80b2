import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, renameSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sendMessage } from './support/client.js';
import { createTestPki, type Leaf, type TestPki } from './support/pki.js';
import { startTestRelay } from './support/relay.js';
import { startSink, type Sink } from './support/sink.js';
import { splitSigned, verifyOpenssl } from './support/verify.js';

const SUPPORT = 'support@company.test';
const msg = (from: string, n = 0) => Buffer.from(`From: ${from}\r\nTo: a@example.org\r\nSubject: n${n}\r\n\r\nmessage ${n}\r\n`);

let pki: TestPki;
let sink: Sink;

beforeAll(async () => {
  pki = await createTestPki();
  sink = await startSink();
});

afterAll(async () => {
  await sink?.close();
  await pki?.cleanup();
});

/** Serial of the signer certificate embedded in a signed message. */
function signerSerial(message: Buffer): string {
  const der = splitSigned(message).signature;
  const r = spawnSync('openssl', ['cms', '-cmsout', '-print', '-inform', 'DER'], { input: der, encoding: 'utf8' });
  const signerInfos = r.stdout.slice(r.stdout.indexOf('signerInfos:'));
  const m = /serialNumber: (?:0x)?([0-9A-F]+)/i.exec(signerInfos);
  return (m?.[1] ?? '').toUpperCase().replace(/^0+/, '');
}
const norm = (serial: string) => serial.toUpperCase().replace(/^0+/, '');

describe('certificate renewal through the running relay', () => {
  it('a symlink re-pointed under load: no restart, no message lost, each signed by the old or the new certificate', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'smime-relay-renew-'));
    const old: Leaf = await pki.issueLeaf('support-2025', { emails: [SUPPORT] });
    const renewed: Leaf = await pki.issueLeaf('support-2026', { emails: [SUPPORT] });
    copyFileSync(old.bundlePath, join(dir, `${SUPPORT}_2025.pem`));
    copyFileSync(renewed.bundlePath, join(dir, `${SUPPORT}_2026.pem`));
    const link = join(dir, `${SUPPORT}.pem`);
    symlinkSync(`${SUPPORT}_2025.pem`, link);
    const relay = await startTestRelay({ SMIME_RELAY_CERT: link, SMIME_RELAY_UPSTREAM: sink.url });
    try {
      const before = sink.received.length;
      const results: number[] = [];
      let n = 0;
      const sender = async () => {
        while (n < 60) {
          const i = n++;
          const r = await sendMessage(relay.address.port, SUPPORT, ['a@example.org'], msg(SUPPORT, i));
          results.push(r.final?.code ?? 0);
          if (i === 20) {
            // ln -fs support@company.test_2026.pem support@company.test.pem, atomically, mid-stream
            symlinkSync(`${SUPPORT}_2026.pem`, join(dir, 'tmp-link'));
            renameSync(join(dir, 'tmp-link'), link);
          }
        }
      };
      await Promise.all([sender(), sender(), sender(), sender()]);
      expect(results.filter((c) => c === 250)).toHaveLength(60);
      const got = (await sink.waitFor(before + 60)).slice(before);
      expect(got).toHaveLength(60);
      const serials = got.map((m) => signerSerial(m.raw));
      expect(new Set(serials)).toEqual(new Set([norm(old.serial), norm(renewed.serial)]));
      // After the swap has been seen, a new message is signed with the new certificate within a few seconds.
      await new Promise((r) => setTimeout(r, 1500));
      await sendMessage(relay.address.port, SUPPORT, ['a@example.org'], msg(SUPPORT, 99));
      const last = (await sink.waitFor(before + 61))[before + 60]!;
      expect(signerSerial(last.raw)).toBe(norm(renewed.serial));
      for (const m of [got[0]!, got[59]!, last]) expect((await verifyOpenssl(m.raw, pki.rootCertPath)).ok).toBe(true);
    } finally {
      await relay.close();
    }
  }, 120_000);
});

describe('SMIME_RELAY_ON_MISSING_CERT for a mailbox whose certificate expired', () => {
  const EXPIRED = 'billing@company.test';
  let expired: Leaf;
  beforeAll(async () => {
    expired = await pki.issueLeaf('billing-old', {
      emails: [EXPIRED],
      notBefore: new Date(Date.now() - 400 * 86400_000),
      notAfter: new Date(Date.now() - 86400_000),
    });
  });

  it('reject (default): 451 4.7.1 so the mail waits in the client queue; nothing is forwarded', async () => {
    const relay = await startTestRelay({ SMIME_RELAY_CERT: expired.bundlePath, SMIME_RELAY_UPSTREAM: sink.url });
    try {
      const before = sink.received.length;
      const r = await sendMessage(relay.address.port, EXPIRED, ['a@example.org'], msg(EXPIRED));
      expect(r.final?.code).toBe(451);
      expect(r.final?.text).toMatch(/^4\.7\.1 Certificate for <billing@company\.test> is not usable \(.*expired/);
      await new Promise((res) => setTimeout(res, 200));
      expect(sink.received.length).toBe(before);
    } finally {
      await relay.close();
    }
  });

  it('send-unsigned: forwarded unchanged, with a warning in the log', async () => {
    const relay = await startTestRelay({ SMIME_RELAY_CERT: expired.bundlePath, SMIME_RELAY_UPSTREAM: sink.url, SMIME_RELAY_ON_MISSING_CERT: 'send-unsigned' });
    try {
      const before = sink.received.length;
      const input = msg(EXPIRED, 7);
      const r = await sendMessage(relay.address.port, EXPIRED, ['a@example.org'], input);
      expect(r.final?.code).toBe(250);
      const [got] = (await sink.waitFor(before + 1)).slice(before);
      expect(got!.raw.equals(input)).toBe(true);
      expect(relay.logs.some((l) => l.level === 40 && String(l.msg).includes('UNSIGNED'))).toBe(true);
    } finally {
      await relay.close();
    }
  });

  it('a mailbox never configured is still 550 5.7.1 under send-unsigned', async () => {
    const relay = await startTestRelay({ SMIME_RELAY_CERT: expired.bundlePath, SMIME_RELAY_UPSTREAM: sink.url, SMIME_RELAY_ON_MISSING_CERT: 'send-unsigned' });
    try {
      const r = await sendMessage(relay.address.port, 'someone@else.test', ['a@example.org'], msg('someone@else.test'));
      expect(r.mailFrom.code).toBe(550);
    } finally {
      await relay.close();
    }
  });
});
