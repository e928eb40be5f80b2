import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';

export const DEV_MAILBOX = 'notifications@localhost';

export interface DevCertificate {
  dir: string;
  bundlePath: string;
  caCertPath: string;
  created: boolean;
}

/**
 * The embedded default: a development CA and a certificate for notifications@localhost, made
 * with openssl on first start. No client trusts it; it exists so that `npm start` signs real mail
 * that verifies against certs/dev/ca.crt.
 */
export function ensureDevCertificate(dir = 'certs/dev'): DevCertificate {
  const abs = resolve(dir);
  const bundlePath = join(abs, `${DEV_MAILBOX}.pem`);
  const caCertPath = join(abs, 'ca.crt');
  if (existsSync(bundlePath) && existsSync(caCertPath)) return { dir: abs, bundlePath, caCertPath, created: false };

  mkdirSync(abs, { recursive: true, mode: 0o700 });
  chmodSync(abs, 0o700);
  const run = (...args: string[]) => execFileSync('openssl', args, { cwd: abs, stdio: ['ignore', 'ignore', 'pipe'] });
  const f = (name: string) => join(abs, name);
  run('req', '-x509', '-newkey', 'rsa:2048', '-noenc', '-keyout', f('ca.key'), '-out', caCertPath, '-days', '3650',
    '-subj', '/O=smime-relay development/CN=smime-relay development CA (not trusted)',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
  run('req', '-newkey', 'rsa:2048', '-noenc', '-keyout', f('leaf.key'), '-out', f('leaf.csr'),
    '-subj', `/O=smime-relay development/CN=${DEV_MAILBOX}/emailAddress=${DEV_MAILBOX}`);
  writeFileSync(f('leaf.ext'), [
    'basicConstraints=critical,CA:FALSE',
    'keyUsage=critical,digitalSignature,nonRepudiation,keyEncipherment',
    'extendedKeyUsage=emailProtection',
    `subjectAltName=email:${DEV_MAILBOX}`,
    'subjectKeyIdentifier=hash',
    'authorityKeyIdentifier=keyid',
  ].join('\n') + '\n');
  run('x509', '-req', '-in', f('leaf.csr'), '-CA', caCertPath, '-CAkey', f('ca.key'), '-CAcreateserial',
    '-days', '825', '-sha256', '-extfile', f('leaf.ext'), '-out', f('leaf.crt'));
  const bundle = [readFileSync(f('leaf.key'), 'latin1'), readFileSync(f('leaf.crt'), 'latin1')].join('');
  writeFileSync(bundlePath, bundle, { mode: 0o600 });
  chmodSync(f('ca.key'), 0o600);
  for (const tmp of ['leaf.key', 'leaf.csr', 'leaf.ext', 'leaf.crt', 'ca.srl']) rmSync(f(tmp), { force: true });
  return { dir: abs, bundlePath, caCertPath, created: true };
}
