import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { run } from './pki.js';

/**
 * SoftHSM2 as the PKCS#11 token of the tests (apt: softhsm2, opensc for pkcs11-tool): a token
 * directory of its own under a temp dir (SOFTHSM2_CONF), nothing in /etc touched.
 */
export const SOFTHSM_MODULE = '/usr/lib/softhsm/libsofthsm2.so';
export const SO_PIN = '56781234';

/** What the PKCS#11 tests need that may be missing, with how to get it. */
export function missingForPkcs11(): string[] {
  const missing: string[] = [];
  const has = (bin: string) => spawnSync('sh', ['-c', `command -v ${bin}`]).status === 0;
  if (!has('softhsm2-util') || !existsSync(SOFTHSM_MODULE)) missing.push('softhsm2 (apt-get install -y softhsm2)');
  if (!has('pkcs11-tool')) missing.push('pkcs11-tool (apt-get install -y opensc)');
  try {
    createRequire(import.meta.url)('pkcs11js');
  } catch {
    missing.push('the pkcs11js binding (an optionalDependency: it needs g++, make and python3 when npm installs it; then npm ci)');
  }
  return missing;
}

/**
 * Locally, a missing SoftHSM, pkcs11-tool or binding skips the PKCS#11 tests with a loud warning;
 * under CI=true it fails them, because a green CI run must mean signing on a token was tested.
 */
export function pkcs11Available(): boolean {
  const missing = missingForPkcs11();
  if (missing.length === 0) return true;
  if (process.env.CI === 'true') throw new Error(`PKCS#11 tests cannot run under CI: missing ${missing.join('; ')}`);
  console.warn(`\n${'!'.repeat(78)}\n!! WARNING: PKCS#11 tests SKIPPED: missing ${missing.join('; ')}\n${'!'.repeat(78)}\n`);
  return false;
}

export interface SoftHsm {
  /** SOFTHSM2_CONF for every process (and this one) that opens the module. */
  readonly conf: string;
  readonly module: string;
  /** Creates a token; call before the module is first initialised in this process (SoftHSM scans its tokens then). */
  initToken(label: string, pin: string): Promise<void>;
  /** Imports a PKCS#8 PEM key pair (private and public key objects) with the given label and hex id. */
  importKey(token: string, pin: string, keyPath: string, label: string, id: string): Promise<void>;
  /** Deletes the private key object with that id, as an admin with pkcs11-tool would. */
  deletePrivateKey(token: string, pin: string, id: string): Promise<void>;
  /**
   * Marks the token's user PIN as locked (CKF_USER_PIN_LOCKED), the state a hardware token is in
   * after too many wrong PINs. SoftHSM itself never locks, so the flag is set in its token file.
   */
  lockUserPin(token: string): void;
}

async function mustRun(cmd: string, args: string[], env: NodeJS.ProcessEnv): Promise<string> {
  const r = await run(cmd, args, { env });
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.code ?? r.signal}): ${r.stdout.toString()}${r.stderr}`);
  return r.stdout.toString();
}

export function createSoftHsm(dir: string): SoftHsm {
  const tokens = join(dir, 'tokens');
  mkdirSync(tokens, { recursive: true });
  const conf = join(dir, 'softhsm2.conf');
  writeFileSync(conf, `directories.tokendir = ${tokens}\nobjectstore.backend = file\nlog.level = ERROR\n`);
  const env = { ...process.env, SOFTHSM2_CONF: conf };
  return {
    conf,
    module: SOFTHSM_MODULE,
    async initToken(label, pin) {
      await mustRun('softhsm2-util', ['--init-token', '--free', '--label', label, '--pin', pin, '--so-pin', SO_PIN], env);
    },
    async importKey(token, pin, keyPath, label, id) {
      await mustRun('softhsm2-util', ['--import', keyPath, '--token', token, '--label', label, '--id', id, '--pin', pin], env);
    },
    async deletePrivateKey(token, pin, id) {
      await mustRun('pkcs11-tool', ['--module', SOFTHSM_MODULE, '--token-label', token, '--login', '--pin', pin, '--delete-object', '--type', 'privkey', '--id', id], env);
    },
    lockUserPin(token) {
      // SoftHSM's token.object is a list of (attribute type, value type, value): the token flags are
      // vendor attribute 0x8000534b (CKA_OS_TOKENFLAGS), an unsigned long, 8 bytes big-endian.
      const flagsAttribute = Buffer.from('000000008000534b0000000000000002', 'hex');
      for (const name of readdirSync(tokens)) {
        const file = join(tokens, name, 'token.object');
        const data = readFileSync(file);
        if (!data.includes(Buffer.from(token.padEnd(32, ' ')))) continue;
        const at = data.indexOf(flagsAttribute);
        if (at < 0) throw new Error(`lockUserPin: no token flags in ${file}`);
        const value = at + flagsAttribute.length;
        data.writeBigUInt64BE(data.readBigUInt64BE(value) | 0x40000n, value); // CKF_USER_PIN_LOCKED
        writeFileSync(file, data);
        return;
      }
      throw new Error(`lockUserPin: no token labelled ${token} in ${tokens}`);
    },
  };
}
