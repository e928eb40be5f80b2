import { spawnSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { chmodSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkCert } from '../src/certs/check-cert.js';
import { loadPath } from '../src/certs/load.js';
import { createLogger } from '../src/log.js';
import { NativeEngine } from '../src/signing/native.js';
import { Pkcs11Token } from '../src/signing/pkcs11/token.js';
import { sendMessage } from './support/client.js';
import { createTestPki, makeTempDir, type Leaf, type TestPki } from './support/pki.js';
import { startTestRelay, type TestRelay } from './support/relay.js';
import { startSink, type Sink } from './support/sink.js';
import { createSoftHsm, pkcs11Available, SOFTHSM_MODULE, type SoftHsm } from './support/softhsm.js';
import { assertAllVerify, splitSigned, verifyOpenssl } from './support/verify.js';

/*
 * Keys on a PKCS#11 token (SoftHSM2): certificates given without their key are paired with the
 * token key whose public key matches, signed on the token over SMTP, and checked by OpenSSL, gpgsm
 * and NSS. Locally a missing SoftHSM, pkcs11-tool or pkcs11js binding skips loudly; under CI=true
 * it fails.
 */

const available = pkcs11Available();
const PIN = '1234';
const TOKEN = 'relay';
const FILE_SENDER = 'file@example.test';
const RSA_SENDER = 'token-rsa@example.test';
const EC_SENDER = 'token-ec@example.test';
const ORPHAN_SENDER = 'orphan@example.test';

let dir: string;
let removeDir: () => Promise<void>;
let pki: TestPki;
let hsm: SoftHsm;
let sink: Sink;
let pinFile: string;
let wrongPinFile: string;
let mixedDir: string;
const leaves: Record<'file' | 'rsa' | 'ec' | 'orphan', Leaf> = {} as never;
const savedConf = process.env.SOFTHSM2_CONF;

const msg = (from: string, n = 0) => Buffer.from(`From: ${from}\r\nTo: a@example.org\r\nSubject: token ${n}\r\n\r\nsigned on a token ${n}\r\n`);
/** A certificate file as an admin deploys it when the key is on a token: certificate and chain, no key. */
const keyless = (leaf: Leaf) => readFileSync(leaf.certPath, 'latin1') + readFileSync(pki.intermediateCertPath, 'latin1');
const token = (extra: Record<string, string> = {}) => ({
  SMIME_RELAY_PKCS11_MODULE: SOFTHSM_MODULE,
  SMIME_RELAY_PKCS11_TOKEN: TOKEN,
  SMIME_RELAY_PKCS11_PIN_FILE: pinFile,
  SMIME_RELAY_ENGINE: 'native',
  ...extra,
});
const flags = (pin = pinFile, label = TOKEN, module = SOFTHSM_MODULE) => ['--pkcs11-module', module, '--pkcs11-token', label, '--pkcs11-pin-file', pin];

async function check(argv: string[]): Promise<{ code: number; text: string }> {
  const lines: string[] = [];
  const code = await checkCert(argv, (s) => lines.push(s));
  return { code, text: lines.join('\n') };
}

/** Serial of the signer certificate embedded in a signed message, upper-case hex as node prints it. */
function signerSerial(message: Buffer): string {
  const pem = spawnSync('openssl', ['pkcs7', '-inform', 'DER', '-print_certs'], { input: splitSigned(message).signature, encoding: 'latin1' }).stdout;
  const certs = [...pem.matchAll(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g)].map((m) => new X509Certificate(m[0]));
  return certs.find((c) => !c.ca)!.serialNumber;
}

function write(path: string, text: string, mode = 0o600): string {
  writeFileSync(path, text, { mode });
  chmodSync(path, mode);
  return path;
}

beforeAll(async () => {
  if (!available) return;
  ({ dir, remove: removeDir } = await makeTempDir('smime-pkcs11-'));
  pki = await createTestPki();
  hsm = createSoftHsm(join(dir, 'softhsm'));
  // The module reads SOFTHSM2_CONF when this process first initialises it; relays run in-process.
  process.env.SOFTHSM2_CONF = hsm.conf;
  [leaves.file, leaves.rsa, leaves.ec, leaves.orphan] = await Promise.all([
    pki.issueLeaf('file', { emails: [FILE_SENDER] }),
    pki.issueLeaf('token-rsa', { emails: [RSA_SENDER] }),
    pki.issueLeaf('token-ec', { emails: [EC_SENDER], keyType: 'ec' }),
    pki.issueLeaf('orphan', { emails: [ORPHAN_SENDER] }),
  ]);
  // Every token exists before the module is first initialised: SoftHSM scans its tokens then.
  await hsm.initToken(TOKEN, PIN);
  await hsm.initToken('locked', PIN);
  hsm.lockUserPin('locked');
  await hsm.importKey(TOKEN, PIN, leaves.rsa.keyPath, 'token-rsa', '01');
  await hsm.importKey(TOKEN, PIN, leaves.ec.keyPath, 'token-ec', '02');

  pinFile = write(join(dir, 'pin'), `${PIN}\n`);
  wrongPinFile = write(join(dir, 'wrong-pin'), '0000\n');
  mixedDir = join(dir, 'mixed');
  mkdirSync(mixedDir, { mode: 0o700 });
  write(join(mixedDir, `${FILE_SENDER}.pem`), readFileSync(leaves.file.bundlePath, 'latin1'));
  write(join(mixedDir, `${RSA_SENDER}.pem`), keyless(leaves.rsa), 0o644);
  write(join(mixedDir, `${EC_SENDER}.pem`), keyless(leaves.ec), 0o644);
  sink = await startSink();
}, 120_000);

afterAll(async () => {
  await sink?.close();
  await pki?.cleanup();
  await removeDir?.();
  if (savedConf === undefined) delete process.env.SOFTHSM2_CONF;
  else process.env.SOFTHSM2_CONF = savedConf;
});

describe.skipIf(!available)('check-cert with keys on a PKCS#11 token', () => {
  it('pairs key-less certificates with the token keys, mixed with a bundle that has its own key', async () => {
    const r = await check([mixedDir, ...flags()]);
    expect(r.code, r.text).toBe(0);
    expect(r.text).toContain(`key:          on token ${TOKEN} (label 'token-rsa', id 01), RSA 2048 bits`);
    expect(r.text).toContain(`key:          on token ${TOKEN} (label 'token-ec', id 02), EC prime256v1 (256 bits)`);
    expect(r.text).toMatch(/file@example\.test\.pem \(PEM\)\n(?:.*\n)*? {2}key: {10}RSA 2048 bits\n/);
    expect(r.text).toContain(`=> can sign for ${RSA_SENDER}`);
    expect(r.text).toContain(`=> can sign for ${EC_SENDER}`);
    expect(r.text).toContain(`=> can sign for ${FILE_SENDER}`);

    const json = JSON.parse((await check([mixedDir, '--json', ...flags()])).text);
    const bySource = (name: string) => json.certificates.find((c: { source: string }) => c.source.endsWith(name));
    expect(bySource(`${RSA_SENDER}.pem`).keyLocation).toEqual({ kind: 'token', token: TOKEN, object: "label 'token-rsa', id 01" });
    expect(bySource(`${FILE_SENDER}.pem`).keyLocation).toEqual({ kind: 'file' });
  });

  it('reports a certificate whose key is not on the token, naming what the token holds', async () => {
    const path = write(join(dir, 'orphan.pem'), keyless(leaves.orphan));
    const r = await check([path, ...flags()]);
    expect(r.code).toBe(1);
    expect(r.text).toContain('ERROR (token-no-key)');
    expect(r.text).toContain(`no private key on token '${TOKEN}' matches the certificate's RSA modulus`);
    expect(r.text).toContain("label 'token-rsa', id 01 (RSA)");
    expect(r.text).toContain("label 'token-ec', id 02 (EC)");
  });

  it('reports a wrong PIN', async () => {
    const r = await check([join(mixedDir, `${RSA_SENDER}.pem`), ...flags(wrongPinFile)]);
    expect(r.code).toBe(1);
    expect(r.text).toContain('ERROR (token-pin)');
    expect(r.text).toContain(`token '${TOKEN}' refused the PIN in '${wrongPinFile}' (CKR_PIN_INCORRECT)`);
  });

  it('reports a locked token without trying the PIN on it', async () => {
    const r = await check([join(mixedDir, `${RSA_SENDER}.pem`), ...flags(pinFile, 'locked')]);
    expect(r.code).toBe(1);
    expect(r.text).toContain('ERROR (token-locked)');
    expect(r.text).toContain("token 'locked' is locked: its user PIN was entered wrongly too often (CKF_USER_PIN_LOCKED)");
  });

  it('reports a module that does not load, a library that is no PKCS#11 module, and a token that is not there', async () => {
    const missing = await check([join(mixedDir, `${RSA_SENDER}.pem`), ...flags(pinFile, TOKEN, join(dir, 'no-such-module.so'))]);
    expect(missing.code).toBe(1);
    expect(missing.text).toContain('ERROR (token-module)');
    expect(missing.text).toMatch(/the PKCS#11 module '.*no-such-module\.so' \(SMIME_RELAY_PKCS11_MODULE\) does not load: .*cannot open shared object file/);

    const libz = spawnSync('sh', ['-c', 'ls /lib/x86_64-linux-gnu/libz.so.1 /usr/lib/x86_64-linux-gnu/libz.so.1 2>/dev/null | head -1'], { encoding: 'utf8' }).stdout.trim();
    if (libz) {
      const notPkcs11 = await check([join(mixedDir, `${RSA_SENDER}.pem`), ...flags(pinFile, TOKEN, libz)]);
      expect(notPkcs11.text).toContain('ERROR (token-module)');
      expect(notPkcs11.text).toContain('C_GetFunctionList');
    }

    const absent = await check([join(mixedDir, `${RSA_SENDER}.pem`), ...flags(pinFile, 'no-such-token')]);
    expect(absent.code).toBe(1);
    expect(absent.text).toContain('ERROR (token-not-found)');
    expect(absent.text).toMatch(/no token labelled 'no-such-token' \(SMIME_RELAY_PKCS11_TOKEN\) is present; the module sees ('relay', 'locked'|'locked', 'relay')\./);
  });

  it('without token settings, a key-less certificate says where its key could come from', async () => {
    const r = await check([join(mixedDir, `${RSA_SENDER}.pem`)]);
    expect(r.code).toBe(1);
    expect(r.text).toContain('ERROR (no-key)');
    expect(r.text).toContain('SMIME_RELAY_PKCS11_MODULE');
  });
});

describe.skipIf(!available)('the relay signing on the token over SMTP', () => {
  let relay: TestRelay;

  beforeAll(async () => {
    relay = await startTestRelay({ SMIME_RELAY_CERT: mixedDir, SMIME_RELAY_UPSTREAM: sink.url, ...token() });
  });
  afterAll(async () => {
    await relay?.close();
  });

  it('signs for the RSA and EC token keys and the file key, one mailbox each; all three verifiers accept every message', async () => {
    const before = sink.received.length;
    for (const [i, from] of [FILE_SENDER, RSA_SENDER, EC_SENDER].entries()) {
      const r = await sendMessage(relay.address.port, from, ['a@example.org'], msg(from, i));
      expect(r.final?.code, r.final?.text).toBe(250);
    }
    const got = (await sink.waitFor(before + 3)).slice(before);
    expect(got.map((m) => signerSerial(m.raw))).toEqual([leaves.file.serial, leaves.rsa.serial, leaves.ec.serial]);
    for (const m of got) await assertAllVerify(m.raw, pki.rootCertPath);
  });

  it('answers 451 4.7.0 with the tx id, never 250, when the token lost the key; signs again once it is back', async () => {
    await hsm.deletePrivateKey(TOKEN, PIN, '02');
    const before = sink.received.length;
    const failed = await sendMessage(relay.address.port, EC_SENDER, ['a@example.org'], msg(EC_SENDER, 10));
    expect(failed.final?.code).toBe(451);
    expect(failed.final?.text).toMatch(/^4\.7\.0 Signing failed temporarily \(PKCS#11 token relay: no private key on token 'relay' matches/);
    expect(failed.final?.text).toMatch(/\(tx [\w-]+\)$/);
    // The other mailboxes are not affected.
    expect((await sendMessage(relay.address.port, RSA_SENDER, ['a@example.org'], msg(RSA_SENDER, 11))).final?.code).toBe(250);

    await hsm.importKey(TOKEN, PIN, leaves.ec.keyPath, 'token-ec', '02');
    const back = await sendMessage(relay.address.port, EC_SENDER, ['a@example.org'], msg(EC_SENDER, 12));
    expect(back.final?.code, back.final?.text).toBe(250);
    const got = (await sink.waitFor(before + 2)).slice(before);
    expect(got.map((m) => signerSerial(m.raw))).toEqual([leaves.rsa.serial, leaves.ec.serial]);
    await assertAllVerify(got[1]!.raw, pki.rootCertPath);
    expect(relay.logs.some((l) => l.level === 40 && /answered CKR_OBJECT_HANDLE_INVALID while signing; looking the key up again/.test(String(l.msg)))).toBe(true);
  });

  it('opens new sessions and logs in again when the token dropped every session', async () => {
    // What an HSM failover or a token re-insertion does: every session of this process is gone,
    // and with them the login. A second handle on the same module closes them from outside.
    const binding = createRequire(import.meta.url)('pkcs11js');
    const other = new binding.PKCS11();
    other.load(SOFTHSM_MODULE);
    try {
      other.C_Initialize();
    } catch (e) {
      expect((e as Error).message).toBe('CKR_CRYPTOKI_ALREADY_INITIALIZED');
    }
    const slot = other.C_GetSlotList(true).find((s: Buffer) => other.C_GetTokenInfo(s).label.trim() === TOKEN);
    other.C_CloseAllSessions(slot);

    const before = sink.received.length;
    const r = await sendMessage(relay.address.port, RSA_SENDER, ['a@example.org'], msg(RSA_SENDER, 20));
    expect(r.final?.code, r.final?.text).toBe(250);
    await assertAllVerify((await sink.waitFor(before + 1))[before]!.raw, pki.rootCertPath);
    expect(relay.logs.some((l) => l.level === 40 && /answered CKR_SESSION_HANDLE_INVALID while signing; opening new sessions/.test(String(l.msg)))).toBe(true);
  });
});

describe.skipIf(!available)('hot reload of a certificate whose key is on the token', () => {
  it('a renewed certificate for a new token key is used from the next message on, without a restart', async () => {
    const certDir = join(dir, 'reload');
    mkdirSync(certDir);
    const path = join(certDir, `${RSA_SENDER}.pem`);
    write(path, keyless(leaves.rsa), 0o644);
    const relay = await startTestRelay({ SMIME_RELAY_CERT: path, SMIME_RELAY_UPSTREAM: sink.url, ...token() });
    try {
      const before = sink.received.length;
      expect((await sendMessage(relay.address.port, RSA_SENDER, ['a@example.org'], msg(RSA_SENDER, 30))).final?.code).toBe(250);
      // The renewal: a new key on the token, then the new certificate renamed into place.
      const renewed = await pki.issueLeaf('token-rsa-2', { emails: [RSA_SENDER] });
      await hsm.importKey(TOKEN, PIN, renewed.keyPath, 'token-rsa-2', '03');
      write(join(certDir, '.new.pem'), keyless(renewed), 0o644);
      renameSync(join(certDir, '.new.pem'), path);
      let serial = '';
      for (let i = 0; i < 40 && serial !== renewed.serial; i++) {
        await new Promise((r) => setTimeout(r, 250));
        const n = sink.received.length;
        expect((await sendMessage(relay.address.port, RSA_SENDER, ['a@example.org'], msg(RSA_SENDER, 31 + i))).final?.code).toBe(250);
        serial = signerSerial((await sink.waitFor(n + 1))[n]!.raw);
      }
      expect(serial).toBe(renewed.serial);
      expect(signerSerial(sink.received[before]!.raw)).toBe(leaves.rsa.serial);
      expect((await verifyOpenssl(sink.received[sink.received.length - 1]!.raw, pki.rootCertPath)).ok).toBe(true);
    } finally {
      await relay.close();
    }
  }, 60_000);
});

describe.skipIf(!available)('start-up refusals', () => {
  it('refuses SMIME_RELAY_ENGINE=openssl with a token, at start-up and with the reason, in-process and from the CLI', async () => {
    await expect(startTestRelay({ SMIME_RELAY_CERT: mixedDir, SMIME_RELAY_UPSTREAM: sink.url, ...token({ SMIME_RELAY_ENGINE: 'openssl' }) })).rejects.toThrow(
      /SMIME_RELAY_ENGINE=openssl cannot sign with a key on a PKCS#11 token.*Debian 12 ships no pkcs11-provider.*SMIME_RELAY_ENGINE=native/,
    );
    const env: NodeJS.ProcessEnv = { ...process.env, SMIME_RELAY_CERT: mixedDir, SMIME_RELAY_UPSTREAM: sink.url, SMIME_RELAY_LISTEN: '127.0.0.1:0', ...token({ SMIME_RELAY_ENGINE: 'openssl' }) };
    const r = spawnSync(process.execPath, ['dist/cli.js', 'serve'], { env, encoding: 'utf8', timeout: 30_000 });
    expect(r.status).toBe(2);
    expect(r.stderr).toContain('SMIME_RELAY_ENGINE=openssl cannot sign with a key on a PKCS#11 token');
  });

  it('refuses half of the token settings', async () => {
    await expect(startTestRelay({ SMIME_RELAY_CERT: mixedDir, SMIME_RELAY_UPSTREAM: sink.url, SMIME_RELAY_PKCS11_MODULE: SOFTHSM_MODULE })).rejects.toThrow(
      /SMIME_RELAY_PKCS11_TOKEN and SMIME_RELAY_PKCS11_PIN_FILE are not set/,
    );
  });

  it('does not start when the only certificate needs the token and the PIN is wrong, and says why', async () => {
    await expect(
      startTestRelay({ SMIME_RELAY_CERT: join(mixedDir, `${RSA_SENDER}.pem`), SMIME_RELAY_UPSTREAM: sink.url, ...token({ SMIME_RELAY_PKCS11_PIN_FILE: wrongPinFile }) }),
    ).rejects.toThrow(/no usable certificate[\s\S]*refused the PIN/);
  });
});

describe.skipIf(!available)('the token engine in-process', () => {
  it('signs on a libuv worker thread: the event loop runs while 40 signatures are in progress', async () => {
    const lines: Record<string, unknown>[] = [];
    const log = createLogger('debug', new Writable({ write: (c: Buffer, _e, cb) => (lines.push(JSON.parse(c.toString())), cb()) }));
    const keys = new Pkcs11Token({ module: SOFTHSM_MODULE, token: TOKEN, pinFile, log });
    const engine = new NativeEngine();
    try {
      const bundle = loadPath(join(mixedDir, `${RSA_SENDER}.pem`), { keys }).entries[0]!.bundle!;
      expect(bundle.key.location).toEqual({ kind: 'token', token: TOKEN, object: "label 'token-rsa', id 01" });
      let done = 0;
      const all = Promise.all(Array.from({ length: 40 }, () => engine.sign(Buffer.from('x\r\n'), bundle).then((s) => (done++, s))));
      // A synchronous C_Sign would finish all 40 before the event loop reaches this callback.
      const seen = await new Promise<number>((resolve) => setImmediate(() => resolve(done)));
      expect(seen).toBeLessThan(40);
      const signatures = await all;
      const content = join(dir, 'x.content');
      writeFileSync(content, 'x\r\n');
      const sig = join(dir, 'x.p7s');
      writeFileSync(sig, signatures[39]!);
      const v = spawnSync('openssl', ['cms', '-verify', '-binary', '-inform', 'DER', '-in', sig, '-content', content, '-CAfile', pki.rootCertPath, '-purpose', 'smimesign', '-out', '/dev/null'], { encoding: 'utf8' });
      expect(v.status, v.stderr).toBe(0);
      expect(lines.some((l) => /logged in to PKCS#11 token relay/.test(String(l.msg)))).toBe(true);
    } finally {
      await engine.close();
      keys.close();
    }
  });
});
