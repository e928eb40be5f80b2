import { spawnSync } from 'node:child_process';
import { ConfigError } from '../config/load.js';

/** `openssl cms` with the defaults the relay relies on (SHA-256, PKCS#1 v1.5, no legacy provider) is OpenSSL 3. */
const MINIMUM_MAJOR = 3;

/**
 * Start-up check, run when something will need the openssl binary (SMIME_RELAY_ENGINE=openssl,
 * or the development certificate has to be generated): fail now with the fix, rather than
 * answering 451 to every message later. Returns the version line, e.g. "OpenSSL 3.0.15 3 Sep 2024".
 */
export function checkOpensslVersion(binary = 'openssl', why = 'SMIME_RELAY_ENGINE=openssl'): string {
  const r = spawnSync(binary, ['version'], { encoding: 'utf8', timeout: 10_000, stdio: ['ignore', 'pipe', 'pipe'] });
  const fix = `Install OpenSSL ${MINIMUM_MAJOR}.x (Debian/Ubuntu: apt-get install openssl), or set SMIME_RELAY_ENGINE=native to sign without it.`;
  if (r.error) {
    const code = (r.error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new ConfigError(`openssl was not found (looked for '${binary}' on PATH); it is needed because of ${why}. ${fix}`);
    if (code === 'ETIMEDOUT') throw new ConfigError(`'${binary} version' did not answer within 10 s; it is needed because of ${why}. ${fix}`);
    throw new ConfigError(`'${binary} version' could not be run (${code ?? r.error.message}); it is needed because of ${why}. ${fix}`);
  }
  const line = (r.stdout ?? '').trim().split('\n')[0] ?? '';
  if (r.status !== 0 || !line) {
    throw new ConfigError(`'${binary} version' failed (${r.signal ?? `exit ${r.status}`}): ${(r.stderr ?? '').trim().split('\n')[0] ?? ''}. ${fix}`);
  }
  const m = /^OpenSSL (\d+)\.(\d+)\.(\d+)/.exec(line);
  if (!m) throw new ConfigError(`'${binary}' is not OpenSSL (it says '${line}'); the relay needs OpenSSL ${MINIMUM_MAJOR}.0 or newer because of ${why}. ${fix}`);
  if (Number(m[1]) < MINIMUM_MAJOR) {
    throw new ConfigError(`'${binary}' is ${line}; the relay needs OpenSSL ${MINIMUM_MAJOR}.0 or newer because of ${why}. ${fix}`);
  }
  return line;
}
