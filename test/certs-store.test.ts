import { spawn, execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, readlinkSync, renameSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { describeForLog } from '../src/certs/bundle.js';
import { expiryWarnings } from '../src/certs/expiry.js';
import { CertificateError } from '../src/certs/findings.js';
import { openCertificateStore, type CertificateStore, type CertificateStoreOptions } from '../src/certs/store.js';
import { toMailbox } from '../src/mime/mailbox.js';
import { createTestPki, openssl, type Leaf, type TestPki } from './support/pki.js';

const DAY = 86_400_000;
const BILLING = toMailbox('billing@example.test');
const SECURITY = toMailbox('security@example.test');

// Fixtures are dozens of openssl runs; on a busy machine they outlast vitest's 5 s/10 s defaults.
vi.setConfig({ testTimeout: 30_000, hookTimeout: 120_000 });

let pki: TestPki;
let seq = 0;
const L: Record<string, Leaf> = {};
const open: CertificateStore[] = [];

beforeAll(async () => {
  pki = await createTestPki();
  const now = Date.now();
  const specs: [string, Parameters<TestPki['issueLeaf']>[1]][] = [
    ['billing-a', { emails: ['billing@example.test'], notAfter: new Date(now + 100 * DAY) }],
    ['billing-b', { emails: ['billing@example.test'], notAfter: new Date(now + 300 * DAY) }],
    ['billing-next', { emails: ['billing@example.test'], notBefore: new Date(now + 50 * DAY), notAfter: new Date(now + 500 * DAY) }],
    ['billing-expired', { emails: ['billing@example.test'], notBefore: new Date(now - 400 * DAY), notAfter: new Date(now - 2 * DAY) }],
    ['billing-soon', { emails: ['billing@example.test'], notAfter: new Date(now + 10 * DAY) }],
    ['security-ec', { emails: ['security@example.test'], keyType: 'ec' }],
  ];
  const issued = await Promise.all(specs.map(([n, o]) => pki.issueLeaf(n, o)));
  specs.forEach(([n], i) => (L[n] = issued[i]!));
});

afterEach(() => {
  for (const s of open.splice(0)) s.close();
});

afterAll(async () => {
  await pki?.cleanup();
});

function logs() {
  const lines: { level: number; msg: string; [k: string]: unknown }[] = [];
  const log = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s)) });
  return { log, lines };
}

function start(path: string, extra: Partial<CertificateStoreOptions> = {}) {
  const { log, lines } = logs();
  const failures: CertificateError[] = [];
  const store = openCertificateStore({ path, log, onReloadFailure: (e) => failures.push(e), ...extra });
  open.push(store);
  return { store, lines, failures };
}

function scratch(): string {
  const d = join(pki.dir, `case-${++seq}`);
  mkdirSync(d, { mode: 0o700 });
  return d;
}

const serialOf = (store: CertificateStore, m = BILLING) => {
  const r = store.lookup(m);
  return r.kind === 'ok' ? r.bundle.serial : r.kind;
};

/** Polls lookups until the expected answer shows up: the issue allows "within a few seconds". */
async function eventually(store: CertificateStore, want: string, m = BILLING): Promise<void> {
  const deadline = Date.now() + 5000;
  while (serialOf(store, m) !== want && Date.now() < deadline) await sleep(50);
  expect(serialOf(store, m)).toBe(want);
}

describe('opening', () => {
  it('serves the mailbox in the bundle and knows nothing of others', () => {
    const { store } = start(L['billing-a']!.bundlePath);
    expect(store.mailboxes()).toEqual([BILLING]);
    const r = store.lookup(BILLING);
    expect(r.kind).toBe('ok');
    if (r.kind === 'ok') {
      expect(r.bundle.serial).toBe(L['billing-a']!.serial);
      expect(describeForLog(r.bundle)).toEqual({ mailboxes: [BILLING], serial: L['billing-a']!.serial, notAfter: r.bundle.notAfter.toISOString(), source: L['billing-a']!.bundlePath });
    }
    expect(store.lookup(toMailbox('someone@else.test'))).toEqual({ kind: 'unknown' });
  });

  it('refuses to start with nothing usable: a missing path, a broken bundle, an empty directory', async () => {
    const d = scratch();
    expect(() => start(join(d, 'missing.pem'))).toThrow(CertificateError);
    const der = join(d, 'cert.der');
    await openssl(['x509', '-in', L['billing-a']!.certPath, '-outform', 'DER', '-out', der]);
    expect(() => start(der)).toThrow(/appears to be binary/);
    const empty = join(d, 'empty');
    mkdirSync(empty);
    expect(() => start(empty)).toThrow(/no certificate bundles/);
  });

  it('starts with an expired certificate but never returns it: its mailbox is unavailable (451, not 550)', () => {
    const { store, lines } = start(L['billing-expired']!.bundlePath);
    const r = store.lookup(BILLING);
    expect(r.kind).toBe('unavailable');
    if (r.kind === 'unavailable') expect(r.reason).toContain('expired');
    expect(lines.some((l) => l.level === 50 && l.msg.includes('expired'))).toBe(true);
  });

  it('judges validity with the clock at lookup time', () => {
    let now = new Date();
    const { store } = start(L['billing-a']!.bundlePath, { now: () => now });
    expect(serialOf(store)).toBe(L['billing-a']!.serial);
    now = new Date(Date.now() + 101 * DAY);
    const r = store.lookup(BILLING);
    expect(r).toMatchObject({ kind: 'unavailable' });
    if (r.kind === 'unavailable') expect(r.reason).toMatch(/expired on/);
  });

  it('reads a PKCS#12 file with the password file', async () => {
    const d = scratch();
    const pw = join(d, 'pw');
    writeFileSync(pw, 'vendor\n', { mode: 0o600 });
    const { store } = start(await L['security-ec']!.p12Path('vendor'), { passwordFile: pw });
    expect(serialOf(store, SECURITY)).toBe(L['security-ec']!.serial);
  });
});

describe('a directory of certificates', () => {
  it('signs each mailbox with its own certificate, RSA and EC P-256 side by side', () => {
    const d = scratch();
    copyFileSync(L['billing-a']!.bundlePath, join(d, 'billing.pem'));
    copyFileSync(L['security-ec']!.bundlePath, join(d, 'security.pem'));
    writeFileSync(join(d, 'README.txt'), 'one bundle per mailbox\n');
    const { store, lines } = start(d);
    expect(store.mailboxes()).toEqual([BILLING, SECURITY]);
    const b = store.lookup(BILLING);
    const s = store.lookup(SECURITY);
    expect(b.kind === 'ok' && b.bundle.key.type).toBe('rsa');
    expect(s.kind === 'ok' && s.bundle.key.type).toBe('ec');
    expect(s.kind === 'ok' && s.bundle.serial).toBe(L['security-ec']!.serial);
    expect(lines.some((l) => l.level === 40 && l.msg.includes('README.txt'))).toBe(true);
  });

  it('with two certificates for one mailbox, uses the valid one that expires last and logs which', () => {
    const d = scratch();
    copyFileSync(L['billing-a']!.bundlePath, join(d, 'billing-2025.pem'));
    copyFileSync(L['billing-b']!.bundlePath, join(d, 'billing-2026.pem'));
    copyFileSync(L['billing-expired']!.bundlePath, join(d, 'billing-2024.pem'));
    const { store, lines } = start(d);
    expect(serialOf(store)).toBe(L['billing-b']!.serial);
    expect(lines.some((l) => l.level === 30 && l.msg.includes(`using serial ${L['billing-b']!.serial}`))).toBe(true);
  });

  it('keeps using the current certificate until a renewal deployed early becomes valid', () => {
    const d = scratch();
    copyFileSync(L['billing-a']!.bundlePath, join(d, 'current.pem'));
    copyFileSync(L['billing-next']!.bundlePath, join(d, 'next.pem'));
    let now = new Date();
    const { store, lines } = start(d, { now: () => now });
    expect(serialOf(store)).toBe(L['billing-a']!.serial);
    now = new Date(Date.now() + 60 * DAY);
    expect(serialOf(store)).toBe(L['billing-next']!.serial);
    expect(lines.some((l) => l.msg.includes(`using serial ${L['billing-next']!.serial}`))).toBe(true);
  });

  it('a broken file for a mailbox makes it unavailable, not unknown', () => {
    const d = scratch();
    copyFileSync(L['security-ec']!.bundlePath, join(d, 'security.pem'));
    // The billing certificate without its key: the mailbox is known, the bundle cannot sign.
    writeFileSync(join(d, 'billing.pem'), readFileSync(L['billing-a']!.certPath), { mode: 0o600 });
    const { store } = start(d);
    expect(store.lookup(BILLING)).toMatchObject({ kind: 'unavailable' });
    expect(serialOf(store, SECURITY)).toBe(L['security-ec']!.serial);
  });

  it('keeps every certificate when the whole directory disappears, and says so', async () => {
    const d = scratch();
    mkdirSync(join(d, 'certs'));
    copyFileSync(L['billing-a']!.bundlePath, join(d, 'certs', 'billing.pem'));
    const { store, failures } = start(join(d, 'certs'), { settleMs: 50 });
    renameSync(join(d, 'certs'), join(d, 'moved'));
    const deadline = Date.now() + 5000;
    while (failures.length === 0 && Date.now() < deadline) {
      expect(serialOf(store)).toBe(L['billing-a']!.serial);
      await sleep(50);
    }
    expect(failures[0]?.message).toContain('does not exist');
    store.reload();
    expect(serialOf(store)).toBe(L['billing-a']!.serial);
  });

  it('reload() (SIGHUP) forgets a file removed from the directory; a watch-triggered reload keeps it', async () => {
    const d = scratch();
    copyFileSync(L['billing-a']!.bundlePath, join(d, 'billing.pem'));
    copyFileSync(L['security-ec']!.bundlePath, join(d, 'security.pem'));
    const { store, failures } = start(d, { recheckMs: 0, settleMs: 50 });
    unlinkSync(join(d, 'billing.pem'));
    const deadline = Date.now() + 5000;
    while (failures.length === 0 && Date.now() < deadline) {
      store.lookup(SECURITY);
      await sleep(50);
    }
    expect(failures[0]?.message).toContain('disappeared');
    expect(serialOf(store)).toBe(L['billing-a']!.serial);
    store.reload();
    expect(store.lookup(BILLING)).toEqual({ kind: 'unknown' });
    expect(serialOf(store, SECURITY)).toBe(L['security-ec']!.serial);
  });
});

describe('renewal without restart', () => {
  it('follows a re-pointed symlink (ln -fs)', async () => {
    const d = scratch();
    copyFileSync(L['billing-a']!.bundlePath, join(d, 'billing_2025.pem'));
    copyFileSync(L['billing-b']!.bundlePath, join(d, 'billing_2026.pem'));
    symlinkSync('billing_2025.pem', join(d, 'billing.pem'));
    const { store, failures, lines } = start(join(d, 'billing.pem'));
    expect(serialOf(store)).toBe(L['billing-a']!.serial);
    execFileSync('ln', ['-fs', 'billing_2026.pem', join(d, 'billing.pem')]);
    await eventually(store, L['billing-b']!.serial);
    expect(failures).toEqual([]);
    expect(lines.some((l) => l.level === 30 && l.msg.includes(`serial ${L['billing-b']!.serial}`))).toBe(true);
  });

  it('follows a file replaced in place', async () => {
    const d = scratch();
    const p = join(d, 'billing.pem');
    copyFileSync(L['billing-a']!.bundlePath, p);
    const { store } = start(p);
    writeFileSync(p, readFileSync(L['billing-b']!.bundlePath));
    await eventually(store, L['billing-b']!.serial);
  });

  /** The layout kubelet writes for a Secret volume: visible names link through ..data. */
  function kubernetesVolume(d: string, first: Leaf) {
    mkdirSync(join(d, '..2025_01_01_00_00_00.1'));
    copyFileSync(first.bundlePath, join(d, '..2025_01_01_00_00_00.1', 'tls.pem'));
    symlinkSync('..2025_01_01_00_00_00.1', join(d, '..data'));
    symlinkSync('..data/tls.pem', join(d, 'tls.pem'));
    return (next: Leaf, stamp: string) => {
      const old = readlinkSync(join(d, '..data'));
      mkdirSync(join(d, stamp));
      copyFileSync(next.bundlePath, join(d, stamp, 'tls.pem'));
      symlinkSync(stamp, join(d, '..data_tmp'));
      renameSync(join(d, '..data_tmp'), join(d, '..data'));
      rmSync(join(d, old), { recursive: true });
    };
  }

  it('follows a Kubernetes Secret update (..data swap), configured as the file', async () => {
    const d = scratch();
    const swap = kubernetesVolume(d, L['billing-a']!);
    const { store, failures } = start(join(d, 'tls.pem'));
    expect(serialOf(store)).toBe(L['billing-a']!.serial);
    swap(L['billing-b']!, '..2026_01_01_00_00_00.2');
    await eventually(store, L['billing-b']!.serial);
    expect(failures).toEqual([]);
  });

  it('follows a Kubernetes Secret update (..data swap), configured as the directory', async () => {
    const d = scratch();
    const swap = kubernetesVolume(d, L['billing-a']!);
    const { store, failures } = start(d);
    expect(store.mailboxes()).toEqual([BILLING]);
    swap(L['billing-b']!, '..2026_01_01_00_00_00.2');
    await eventually(store, L['billing-b']!.serial);
    expect(failures).toEqual([]);
  });

  it('keeps the last good certificate when the new file is broken, says why, and takes the next good one', async () => {
    const d = scratch();
    copyFileSync(L['billing-a']!.bundlePath, join(d, 'good.pem'));
    await openssl(['x509', '-in', L['billing-b']!.certPath, '-outform', 'DER', '-out', join(d, 'broken.der')]);
    copyFileSync(L['billing-b']!.bundlePath, join(d, 'fixed.pem'));
    symlinkSync('good.pem', join(d, 'billing.pem'));
    const { store, failures, lines } = start(join(d, 'billing.pem'), { settleMs: 50 });
    execFileSync('ln', ['-fs', 'broken.der', join(d, 'billing.pem')]);
    const deadline = Date.now() + 5000;
    while (failures.length === 0 && Date.now() < deadline) {
      expect(serialOf(store)).toBe(L['billing-a']!.serial);
      await sleep(50);
    }
    expect(failures).toHaveLength(1);
    expect(failures[0]!.message).toContain('appears to be binary');
    expect(failures[0]!.message).toContain(`Still using the certificate loaded before (serial ${L['billing-a']!.serial})`);
    expect(lines.some((l) => l.level === 50 && l.msg.includes('binary') && String(l.target).endsWith('broken.der'))).toBe(true);
    expect(serialOf(store)).toBe(L['billing-a']!.serial);
    execFileSync('ln', ['-fs', 'fixed.pem', join(d, 'billing.pem')]);
    await eventually(store, L['billing-b']!.serial);
  });

  it('a renewal swapped in before its start date waits; the old one serves until then', async () => {
    const d = scratch();
    copyFileSync(L['billing-a']!.bundlePath, join(d, 'a.pem'));
    copyFileSync(L['billing-next']!.bundlePath, join(d, 'next.pem'));
    symlinkSync('a.pem', join(d, 'billing.pem'));
    let now = new Date();
    const { store, failures, lines } = start(join(d, 'billing.pem'), { now: () => now });
    execFileSync('ln', ['-fs', 'next.pem', join(d, 'billing.pem')]);
    const deadline = Date.now() + 5000;
    while (!lines.some((l) => l.msg.includes('not yet valid')) && Date.now() < deadline) {
      expect(serialOf(store)).toBe(L['billing-a']!.serial);
      await sleep(50);
    }
    expect(lines.find((l) => l.msg.includes('not yet valid'))?.msg).toContain(`still using serial ${L['billing-a']!.serial}`);
    expect(failures).toEqual([]);
    now = new Date(Date.now() + 51 * DAY);
    expect(serialOf(store)).toBe(L['billing-next']!.serial);
  });

  it('an expired file swapped in is refused loudly and the valid one stays', async () => {
    const d = scratch();
    copyFileSync(L['billing-a']!.bundlePath, join(d, 'a.pem'));
    copyFileSync(L['billing-expired']!.bundlePath, join(d, 'old.pem'));
    symlinkSync('a.pem', join(d, 'billing.pem'));
    const { store, failures } = start(join(d, 'billing.pem'));
    execFileSync('ln', ['-fs', 'old.pem', join(d, 'billing.pem')]);
    const deadline = Date.now() + 5000;
    while (failures.length === 0 && Date.now() < deadline) {
      expect(serialOf(store)).toBe(L['billing-a']!.serial);
      await sleep(50);
    }
    expect(failures[0]?.message).toContain('expired');
    expect(serialOf(store)).toBe(L['billing-a']!.serial);
  });

  it('keeps the loaded certificate when the file disappears, and logs an error', async () => {
    const d = scratch();
    const p = join(d, 'billing.pem');
    copyFileSync(L['billing-a']!.bundlePath, p);
    const { store, failures, lines } = start(p, { settleMs: 50 });
    unlinkSync(p);
    const deadline = Date.now() + 5000;
    while (failures.length === 0 && Date.now() < deadline) await sleep(50);
    expect(failures[0]?.message).toContain('does not exist');
    expect(lines.some((l) => l.level === 50 && l.msg.includes('Still using'))).toBe(true);
    expect(serialOf(store)).toBe(L['billing-a']!.serial);
  });

  it('a half-written file is never used, with an in-place write in progress', async () => {
    const d = scratch();
    const p = join(d, 'billing.pem');
    copyFileSync(L['billing-a']!.bundlePath, p);
    const { store, failures } = start(p, { settleMs: 50 });
    const full = readFileSync(L['billing-b']!.bundlePath);
    // Key and leaf complete, intermediate cut off: parses, but must not be taken.
    writeFileSync(p, full.subarray(0, full.length - 300));
    const deadline = Date.now() + 5000;
    while (failures.length === 0 && Date.now() < deadline) {
      expect(serialOf(store)).toBe(L['billing-a']!.serial);
      await sleep(50);
    }
    expect(failures[0]?.message).toContain('incomplete');
    writeFileSync(p, full);
    await eventually(store, L['billing-b']!.serial);
    const r = store.lookup(BILLING);
    expect(r.kind === 'ok' && r.bundle.chain.length).toBe(1);
  });

  for (const how of ['symlink', 'in-place'] as const) {
    it(`lookups while another process swaps the file (${how}) only ever return one of the two complete bundles`, async () => {
      const d = scratch();
      copyFileSync(L['billing-a']!.bundlePath, join(d, 'a.pem'));
      copyFileSync(L['billing-b']!.bundlePath, join(d, 'b.pem'));
      copyFileSync(join(d, 'a.pem'), join(d, 'cur.pem'));
      if (how === 'symlink') {
        rmSync(join(d, 'cur.pem'));
        symlinkSync('a.pem', join(d, 'cur.pem'));
      }
      const { store } = start(join(d, 'cur.pem'), { recheckMs: 0, settleMs: 20 });
      const script =
        how === 'symlink'
          ? 'while :; do ln -fs b.pem cur.pem; sleep 0.02; ln -fs a.pem cur.pem; sleep 0.02; done'
          : 'while :; do cat b.pem > cur.pem; sleep 0.02; cat a.pem > cur.pem; sleep 0.02; done';
      // A short rest between writes lets each version be seen; the writes themselves still race the lookups.
      const swapper = spawn('sh', ['-c', script], { cwd: d, stdio: 'ignore' });
      const valid = new Set([L['billing-a']!.serial, L['billing-b']!.serial]);
      const seen = new Map<string, number>();
      let lookups = 0;
      try {
        const until = Date.now() + 2000;
        while (Date.now() < until) {
          for (let i = 0; i < 20; i++) {
            const r = store.lookup(BILLING);
            lookups++;
            const key = r.kind === 'ok' ? r.bundle.serial : `${r.kind}`;
            seen.set(key, (seen.get(key) ?? 0) + 1);
            if (r.kind === 'ok') expect(r.bundle.chain).toHaveLength(1);
          }
          await sleep(1);
        }
      } finally {
        swapper.kill();
      }
      console.log(`${how} swap: ${lookups} lookups, answers ${JSON.stringify(Object.fromEntries(seen))}`);
      expect([...seen.keys()].every((k) => valid.has(k))).toBe(true);
      expect(seen.size).toBe(2);
    });
  }
});

describe('expiry warnings', () => {
  it('warns at startup, naming mailbox, serial and days left', () => {
    const { lines } = start(L['billing-soon']!.bundlePath);
    const w = lines.find((l) => l.level === 40 && String(l.msg).includes('expires in'));
    expect(w).toBeDefined();
    expect(w).toMatchObject({ serial: L['billing-soon']!.serial, mailboxes: [BILLING] });
    expect([9, 10]).toContain(w!.daysLeft);
  });

  it('says it once per threshold: 30, 14, 7 and 1 days before notAfter', () => {
    const { store } = start(L['billing-a']!.bundlePath);
    const r = store.lookup(BILLING);
    if (r.kind !== 'ok') throw new Error('expected a bundle');
    const b = r.bundle;
    const warned = new Set<string>();
    const at = (daysBefore: number) => expiryWarnings([b], new Date(b.notAfter.getTime() - daysBefore * DAY - 3600_000), warned).map((w) => w.threshold);
    const said = [45, 31, 30, 29, 20, 14, 13, 8, 7, 6, 2, 1, 0].map((n) => [n, at(n)]);
    expect(said.filter(([, t]) => (t as number[]).length > 0)).toEqual([
      [30, [30]],
      [14, [14]],
      [7, [7]],
      [1, [1]],
    ]);
    // A relay started 5 days before expiry says it once, not four times.
    expect(expiryWarnings([b], new Date(b.notAfter.getTime() - 5 * DAY), new Set())).toHaveLength(1);
  });

  it('does not warn about a certificate whose renewal is already loaded', () => {
    const d = scratch();
    copyFileSync(L['billing-soon']!.bundlePath, join(d, 'old.pem'));
    copyFileSync(L['billing-b']!.bundlePath, join(d, 'new.pem'));
    const { lines } = start(d);
    expect(lines.some((l) => String(l.msg).includes('expires in'))).toBe(false);
  });
});
