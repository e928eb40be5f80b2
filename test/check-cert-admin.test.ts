/**
 * `smime-relay check-cert` and the certificate loader as an admin meets them: one day count,
 * certificates their CA signed with RSA-PSS, and file ownership as the container image and the
 * Kubernetes manifests set it up (the permission advice must agree with what they ship).
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseDocument } from 'yaml';
import { checkCert } from '../src/certs/check-cert.js';
import { loadPath } from '../src/certs/load.js';
import { createTestPki, type Leaf, type TestPki } from './support/pki.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const cli = join(root, 'dist/cli.js');
const DAY = 86_400_000;

async function check(argv: string[], now?: Date): Promise<{ code: number; out: string }> {
  let out = '';
  const code = await checkCert(argv, (s) => (out += s + '\n'), now);
  return { code, out };
}

let pki: TestPki;
let expired: Leaf;
let work: string;

beforeAll(async () => {
  pki = await createTestPki();
  expired = await pki.issueLeaf('expired', { notBefore: new Date(Date.now() - 400 * DAY), notAfter: new Date(Date.now() - 3 * DAY) });
  work = mkdtempSync(join(tmpdir(), 'smime-relay-check-cert-'));
  // Other users (the image's uid) must reach the directories below it.
  chmodSync(work, 0o755);
});

afterAll(async () => {
  rmSync(work, { recursive: true, force: true });
  await pki?.cleanup();
});

describe('one day count', () => {
  it('an expired certificate: the dates line, the error and --json all say the same number of days', async () => {
    const notAfter = new Date(loadPath(expired.bundlePath).entries[0]!.details!.notAfter);
    // Two thousand one hundred fifty-nine and a half days after it expired.
    const now = new Date(notAfter.getTime() + 2159.5 * DAY);
    const text = (await check([expired.bundlePath], now)).out;
    expect(text).toContain('(expired 2159 day(s) ago)');
    expect(text).toContain('2159 day(s) ago. Renew it');
    expect(new Set([...text.matchAll(/(\d+) day\(s\)/g)].map((m) => m[1]))).toEqual(new Set(['2159']));
    const json = JSON.parse((await check(['--json', expired.bundlePath], now)).out);
    expect(json.certificates[0].daysLeft).toBe(-2159);
  });
});

describe('certificates their CA signed with RSA-PSS', () => {
  const pkis: TestPki[] = [];
  afterAll(async () => {
    await Promise.all(pkis.map((p) => p.cleanup()));
  });

  async function pssLeaf(pss: 'hash-length-salt' | 'max-salt'): Promise<Leaf> {
    const p = await createTestPki({ pss });
    pkis.push(p);
    return p.issueLeaf('pss-signed', { emails: ['alerts@example.test'] });
  }

  it('salt as long as the hash: the relay can sign with it; check-cert exits 0 with a warning naming what was measured', async () => {
    const leaf = await pssLeaf('hash-length-salt');
    expect(loadPath(leaf.bundlePath).entries[0]!.bundle, 'the loader gives the relay a bundle to sign with').toBeDefined();
    const { code, out } = await check([leaf.bundlePath]);
    expect(code).toBe(0);
    expect(out).toContain('signature:    RSASSA-PSS (SHA-256, salt length 32)');
    const w = /warning \(pss\): (.*)/.exec(out)?.[1];
    expect(w).toContain("the certificate (SHA-256, salt length 32) and 'O=smime-relay tests, CN=Test Intermediate CA' (SHA-256, salt length 32) are signed by the CA with RSASSA-PSS");
    expect(w).toContain('OpenSSL 3.0.19, gpgsm 2.2.40 (KMail, Evolution) and NSS 3.87.1 (Thunderbird) accept this chain');
    expect(out).toContain('=> can sign for alerts@example.test');
  });

  it("openssl's default maximum salt: the warning says gpgsm 2.2.40 rejects it, OpenSSL and NSS accept it; exit 0", async () => {
    const leaf = await pssLeaf('max-salt');
    const { code, out } = await check([leaf.bundlePath]);
    expect(code).toBe(0);
    const w = /warning \(pss\): (.*)/.exec(out)?.[1];
    expect(w).toMatch(/salt length \d{3}\)/);
    expect(w).toContain('gpgsm rejects a PSS salt length other than the hash length (measured: gpgsm 2.2.40, used by KMail and Evolution)');
    expect(w).toContain('OpenSSL 3.0.19 and NSS 3.87.1 (Thunderbird) accept it');
  });
});

/** Runs check-cert as another user, the way the container image and the Kubernetes pod run the relay. */
function checkCertAs(uid: number, gid: number, path: string) {
  const r = spawnSync(process.execPath, [cli, 'check-cert', path], { uid, gid, encoding: 'utf8', env: { PATH: process.env.PATH! } });
  if (/EACCES[\s\S]*dist\/cli\.js|Cannot find module .*dist\/cli\.js/.test(r.stderr)) {
    throw new Error(`uid ${uid} cannot reach ${cli}: a directory above the checkout lacks search permission for others (bash .ci/run adds it)\n${r.stderr}`);
  }
  return r;
}

const asRoot = process.getuid?.() === 0;
if (!asRoot) {
  if (process.env.CI === 'true') throw new Error('the ownership tests run check-cert as another user, which needs root (CI runs as root)');
  console.warn('SKIPPED: the file-ownership tests need root to chown and to run check-cert as another user');
}

describe.skipIf(!asRoot)('file ownership as the deployments set it up', () => {
  /** A directory as an admin (or the kubelet) prepares it, holding one bundle. */
  function certDir(owner: [number, number], dirMode: number, fileMode: number): { dir: string; file: string } {
    const base = mkdtempSync(join(work, 'owned-'));
    chmodSync(base, 0o755);
    const dir = join(base, 'certs');
    mkdirSync(dir);
    const file = join(dir, 'alerts.pem');
    copyFileSync(expired.bundlePath, file);
    chownSync(dir, ...owner);
    chownSync(file, ...owner);
    chmodSync(dir, dirMode);
    chmodSync(file, fileMode);
    return { dir, file };
  }

  it('Kubernetes: a Secret with defaultMode 0440 and fsGroup, read by runAsUser: no permission warning', () => {
    const doc = parseDocument(readFileSync(join(root, 'deploy/kubernetes/deployment.yaml'), 'utf8'), { version: '1.1' }).toJS();
    const pod = doc.spec.template.spec;
    const mode = pod.volumes.find((v: { secret?: unknown }) => v.secret).secret.defaultMode as number;
    const { runAsUser, fsGroup } = pod.securityContext as { runAsUser: number; fsGroup: number };
    expect(mode).toBe(0o440);
    // The kubelet writes Secret files owned by root, in the fsGroup, with defaultMode.
    const { file } = certDir([0, fsGroup], 0o755, mode);
    const r = checkCertAs(runAsUser, fsGroup, file);
    expect(r.stdout).toContain(`permissions:  ok (mode 0440, owned by root, readable by the relay's group ${fsGroup})`);
    expect(r.stdout).not.toContain('warning (permissions)');
  });

  it('container: the README\'s chown/chmod for host certificates lets the image user read them, without a warning', () => {
    const readme = readFileSync(join(root, 'README.md'), 'utf8');
    const container = readme.slice(readme.indexOf('### Container'), readme.indexOf('### Kubernetes'));
    const commands = [...container.matchAll(/^sudo (chown|chmod) (.+) \/etc\/smime-relay\/certs(\/\*)?$/gm)];
    expect(commands.map((m) => m[1])).toEqual(['chown', 'chmod', 'chmod']);
    const dockerfile = readFileSync(join(root, 'deploy/container/Dockerfile'), 'utf8');
    const [uid, gid] = /^USER (\d+):(\d+)$/m.exec(dockerfile)!.slice(1).map(Number) as [number, number];
    // As an admin would have it before following the README: root's, mode 0600.
    const { dir, file } = certDir([0, 0], 0o700, 0o600);
    const before = checkCertAs(uid, gid, dir);
    expect(before.stdout).toContain(`cannot be read by this user (uid ${uid}, gid ${gid})`);
    expect(before.stdout).toContain(`chgrp ${gid}`);
    for (const [, cmd, args, all] of commands) {
      const target = all ? file : dir;
      const r = spawnSync(cmd!, [...args!.split(' '), target], { encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(0);
    }
    const after = checkCertAs(uid, gid, dir);
    expect(after.stdout).toMatch(/permissions:  ok \(mode 0640, owned by root, readable by the relay's group \d+\)/);
    expect(after.stdout).not.toContain('warning (permissions)');
    expect(after.stdout).not.toContain('cannot be read');
  });

  it('a file readable by a group the relay is not in, or owned by another user, still warns', () => {
    const { file } = certDir([0, 4242], 0o755, 0o640);
    const r = checkCertAs(10001, 10001, file);
    // Unreadable to 10001 (neither owner nor group): an error that says how to fix it.
    expect(r.stdout).toContain('cannot be read by this user (uid 10001, gid 10001)');
    const other = certDir([4242, 10001], 0o755, 0o640);
    const o = checkCertAs(10001, 10001, other.file);
    expect(o.stdout).toContain('is owned by uid 4242, neither the user running the relay (uid 10001) nor root');
  });
});
