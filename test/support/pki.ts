import { spawn } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { rmSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface LeafOptions {
  /** SAN rfc822Name entries; default ['notifications@example.test']. An empty list means no SAN. */
  emails?: string[];
  /** Put emailAddress= into the subject DN. */
  subjectEmail?: string;
  /** Subject CN; default the first email (or 'test signer'). */
  cn?: string;
  /** Default 'rsa' (2048 bits); 'ec' is P-256. */
  keyType?: 'rsa' | 'ec';
  rsaBits?: number;
  /** Default 'emailProtection'; null leaves the EKU extension out. */
  eku?: string | null;
  /** Default 'critical,digitalSignature,nonRepudiation' (+keyEncipherment for RSA); null leaves it out. */
  keyUsage?: string | null;
  /** Default now - 1 hour. */
  notBefore?: Date;
  /** Default now + 365 days. */
  notAfter?: Date;
  /** Digest of the intermediate's signature on the leaf; default sha256. */
  md?: 'sha256' | 'sha1';
  /** An RSA-PSS leaf key (so every signature it makes is PSS), certified with a PSS signature. */
  pss?: boolean;
  /** Key written as encrypted PKCS#8 (AES-256-CBC) in keyPath and in the bundle. */
  encryptKeyWithPassword?: string;
  /** Key written as 'BEGIN RSA PRIVATE KEY' / 'BEGIN EC PRIVATE KEY' in keyPath and in the bundle. */
  traditionalKey?: boolean;
  /** More extension lines in openssl's config syntax, e.g. `authorityInfoAccess = OCSP;URI:http://…`. */
  extensions?: string[];
}

export interface Leaf {
  dir: string;
  /** The key as the options asked for it (plain PKCS#8 unless encrypted/traditional was requested). */
  keyPath: string;
  certPath: string;
  /** key + leaf + intermediate in one PEM (mode 0600), in that order. */
  bundlePath: string;
  /** A PKCS#12 file with key, leaf and chain (intermediate + root), made on first request per password. */
  p12Path: (password: string) => Promise<string>;
  /** Serial number, upper-case hex as node's X509Certificate prints it. */
  serial: string;
  emails: string[];
}

export interface TestPki {
  /** Temp dir, removed by cleanup(). */
  dir: string;
  rootCertPath: string;
  intermediateCertPath: string;
  /** Intermediate then root, PEM. */
  chainPath: string;
  /** The intermediate's key, and the openssl config whose CA_DB environment variable names an `openssl ca` database directory. */
  intermediateKeyPath: string;
  configPath: string;
  /** Issues a leaf signed by the intermediate. */
  issueLeaf(name: string, opts?: LeafOptions): Promise<Leaf>;
  cleanup(): Promise<void>;
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: Buffer;
  stderr: string;
  timedOut: boolean;
}

/**
 * Runs a program with stdin from /dev/null (or the given input) and a hard kill after `timeoutMs`,
 * because a verifier or openssl waiting on a prompt must fail the test, not hang it.
 */
export function run(
  cmd: string,
  args: string[],
  opts: { input?: Buffer | string; env?: NodeJS.ProcessEnv; cwd?: string; timeoutMs?: number } = {},
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd: opts.cwd,
      env: opts.env ?? process.env,
      stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, opts.timeoutMs ?? 30_000);
    child.stdout!.on('data', (d: Buffer) => out.push(d));
    child.stderr!.on('data', (d: Buffer) => err.push(d));
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout: Buffer.concat(out), stderr: Buffer.concat(err).toString('utf8'), timedOut });
    });
    if (opts.input !== undefined) {
      child.stdin!.on('error', () => {}); // the child may exit before reading everything
      child.stdin!.end(opts.input);
    }
  });
}

const liveTempDirs = new Set<string>();
let exitHook = false;

/**
 * A temp dir that is also removed if the process exits before its owner cleans up (a test that
 * timed out, a bench that threw), so aborted runs do not leave keys in /tmp.
 */
export async function makeTempDir(prefix: string): Promise<{ dir: string; remove: () => Promise<void> }> {
  if (!exitHook) {
    exitHook = true;
    process.once('exit', () => {
      for (const d of liveTempDirs) rmSync(d, { recursive: true, force: true });
    });
  }
  const dir = await mkdtemp(join(tmpdir(), prefix));
  liveTempDirs.add(dir);
  return {
    dir,
    remove: async () => {
      await rm(dir, { recursive: true, force: true });
      liveTempDirs.delete(dir);
    },
  };
}

/** Runs openssl and throws with its stderr when it fails: a broken fixture must say why. */
export async function openssl(args: string[], opts: { input?: Buffer | string; env?: NodeJS.ProcessEnv; cwd?: string } = {}): Promise<Buffer> {
  const r = await run('openssl', args, opts);
  if (r.code !== 0) {
    throw new Error(`openssl ${args.join(' ')} failed (${r.timedOut ? 'timed out' : `exit ${r.code ?? r.signal}`}): ${r.stderr.trim()}`);
  }
  return r.stdout;
}

// One config serves every issuance. Each `openssl ca` run gets its own database directory through
// $ENV::CA_DB, so concurrent issueLeaf() calls never share index.txt or a serial file.
const CONFIG = `
CA_DB = .
[ca]
default_ca = test_ca
[test_ca]
dir = $ENV::CA_DB
database = $dir/index.txt
new_certs_dir = $dir
rand_serial = yes
unique_subject = no
default_md = sha256
policy = policy_any
copy_extensions = none
[policy_any]
countryName = optional
organizationName = optional
commonName = optional
emailAddress = optional
[req]
distinguished_name = req_dn
prompt = no
[req_dn]
CN = unused
[v3_root]
basicConstraints = critical,CA:true
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[v3_intermediate]
basicConstraints = critical,CA:true,pathlen:0
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
`;

const HOUR = 3600_000;
const DAY = 24 * HOUR;

/** openssl ca -startdate/-enddate: UTCTime (YYMMDDHHMMSSZ) until 2049, GeneralizedTime after (RFC 5280 §4.1.2.5). */
function asn1Time(d: Date): string {
  const iso = d.toISOString(); // 2025-01-02T03:04:05.678Z
  const digits = iso.slice(0, 19).replace(/[-T:]/g, '');
  const year = d.getUTCFullYear();
  return (year >= 1950 && year < 2050 ? digits.slice(2) : digits) + 'Z';
}

function newKeyArgs(keyType: 'rsa' | 'ec', rsaBits = 2048, pss = false): string[] {
  if (pss) return ['-newkey', 'rsa-pss', '-pkeyopt', `rsa_keygen_bits:${rsaBits}`];
  if (keyType === 'ec') return ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256'];
  return ['-newkey', `rsa:${rsaBits}`];
}

/** A subject for `-subj`, escaping the characters openssl treats as separators. */
function subj(parts: [string, string][]): string {
  return parts.map(([k, v]) => `/${k}=${v.replace(/([\\/+=])/g, '\\$1')}`).join('');
}

export interface PkiOptions {
  /** Key type of the root and intermediate; default 'rsa'. */
  keyType?: 'rsa' | 'ec';
  /**
   * The CA signs every certificate (root, intermediate, leaves) with RSASSA-PSS, SHA-256 and MGF1
   * SHA-256: 'hash-length-salt' with a 32-byte salt, as the CA/Browser Forum S/MIME requirements
   * prescribe; 'max-salt' with the longest salt, which is what `-sigopt rsa_padding_mode:pss`
   * alone makes openssl write. RSA CA keys only.
   */
  pss?: 'hash-length-salt' | 'max-salt';
}

export async function createTestPki(opts: PkiOptions = {}): Promise<TestPki> {
  const keyType = opts.keyType ?? 'rsa';
  const caPss = opts.pss ? ['rsa_padding_mode:pss', 'rsa_mgf1_md:sha256', `rsa_pss_saltlen:${opts.pss === 'max-salt' ? 'max' : 'digest'}`] : [];
  const { dir, remove } = await makeTempDir('smime-pki-');
  const configPath = join(dir, 'openssl.cnf');
  await writeFile(configPath, CONFIG);
  const f = (name: string) => join(dir, name);
  let issued = 0;

  /** Makes a key + CSR in one openssl run (the key comes out as unencrypted PKCS#8). */
  const request = async (prefix: string, subject: string, keyArgs: string[]) => {
    await openssl(['req', '-new', '-config', configPath, ...keyArgs, '-noenc', '-keyout', `${prefix}.key`, '-subj', subject, '-out', `${prefix}.csr`]);
  };

  /**
   * Certifies a CSR with `openssl ca`, the one OpenSSL 3.0 tool that takes an explicit notBefore, so
   * that expired and not-yet-valid fixtures are real certificates rather than faked clocks.
   */
  const certify = async (p: {
    csr: string; out: string; issuerCert?: string; issuerKey: string; start: Date; end: Date;
    extFile?: string; extensions: string; md?: string; sigopts?: string[]; selfsign?: boolean; subject: string;
  }) => {
    const db = f(`ca-db-${++issued}`);
    await mkdir(db);
    try {
      await writeFile(join(db, 'index.txt'), '');
      await openssl([
        'ca', '-config', configPath, '-batch', '-notext', '-preserveDN', '-subj', p.subject,
        '-in', p.csr, '-out', p.out, '-keyfile', p.issuerKey,
        ...(p.selfsign ? ['-selfsign'] : ['-cert', p.issuerCert!]),
        '-startdate', asn1Time(p.start), '-enddate', asn1Time(p.end),
        ...(p.extFile ? ['-extfile', p.extFile] : []), '-extensions', p.extensions,
        '-md', p.md ?? 'sha256',
        ...(p.sigopts ?? []).flatMap((o) => ['-sigopt', o]),
      ], { env: { ...process.env, CA_DB: db } });
    } finally {
      await rm(db, { recursive: true, force: true });
    }
  };

  const rootCertPath = f('root.crt');
  const intermediateCertPath = f('intermediate.crt');
  const chainPath = f('chain.pem');
  let intPem: string;
  try {
    intPem = await makeCas();
  } catch (e) {
    await remove();
    throw e;
  }

  /** Root and intermediate; returns the intermediate's PEM, which every bundle carries. */
  async function makeCas(): Promise<string> {
    const now = Date.now();
    // The CA certificates are back-dated well past any leaf a test back-dates, so a leaf's own
    // dates are the only thing that decides whether it is in its validity period.
    const caStart = new Date(now - 5 * 365 * DAY);
    const caEnd = new Date(now + 10 * 365 * DAY);
    const rootSubject = subj([['O', 'smime-relay tests'], ['CN', 'Test Root CA']]);
    const intSubject = subj([['O', 'smime-relay tests'], ['CN', 'Test Intermediate CA']]);
    await Promise.all([
      request(f('root'), rootSubject, newKeyArgs(keyType)),
      request(f('intermediate'), intSubject, newKeyArgs(keyType)),
    ]);
    await certify({ csr: f('root.csr'), out: rootCertPath, issuerKey: f('root.key'), start: caStart, end: caEnd, extensions: 'v3_root', selfsign: true, subject: rootSubject, sigopts: caPss });
    await certify({ csr: f('intermediate.csr'), out: intermediateCertPath, issuerCert: rootCertPath, issuerKey: f('root.key'), start: caStart, end: caEnd, extensions: 'v3_intermediate', subject: intSubject, sigopts: caPss });
    const rootPem = await readFile(rootCertPath, 'latin1');
    const intPem = await readFile(intermediateCertPath, 'latin1');
    await writeFile(chainPath, intPem + rootPem);
    return intPem;
  }

  const names = new Set<string>();
  // cleanup() waits for issuances still running, or their openssl would recreate files in a
  // directory that was just removed and leave it behind.
  const inFlight = new Set<Promise<unknown>>();
  let closed = false;

  function issueLeaf(name: string, o: LeafOptions = {}): Promise<Leaf> {
    if (closed) return Promise.reject(new Error(`issueLeaf('${name}') after cleanup()`));
    const p = issue(name, o);
    inFlight.add(p);
    const done = () => inFlight.delete(p);
    p.then(done, done);
    return p;
  }

  async function issue(name: string, o: LeafOptions): Promise<Leaf> {
    if (!/^[\w.@+-]+$/.test(name) || names.has(name)) throw new Error(`issueLeaf: name '${name}' must be unique and file-name safe`);
    names.add(name);
    const ldir = join(dir, 'leaf-' + name);
    await mkdir(ldir, { mode: 0o700 });
    const lf = (n: string) => join(ldir, n);
    const emails = o.emails ?? ['notifications@example.test'];
    const leafKeyType = o.keyType ?? 'rsa';
    const cn = o.cn ?? emails[0] ?? 'test signer';
    const subject = subj([['O', 'smime-relay tests'], ['CN', cn], ...(o.subjectEmail ? [['emailAddress', o.subjectEmail] as [string, string]] : [])]);

    await request(lf('plain'), subject, newKeyArgs(leafKeyType, o.rsaBits, o.pss));

    const keyUsage = o.keyUsage === undefined
      ? `critical,digitalSignature,nonRepudiation${leafKeyType === 'rsa' ? ',keyEncipherment' : ''}`
      : o.keyUsage;
    const eku = o.eku === undefined ? 'emailProtection' : o.eku;
    const ext = ['[leaf]', 'basicConstraints = critical,CA:false', 'subjectKeyIdentifier = hash', 'authorityKeyIdentifier = keyid:always'];
    if (keyUsage !== null) ext.push(`keyUsage = ${keyUsage}`);
    if (eku !== null) ext.push(`extendedKeyUsage = ${eku}`);
    if (emails.length > 0) ext.push(`subjectAltName = ${emails.map((e) => `email:${e}`).join(',')}`);
    ext.push(...(o.extensions ?? []));
    await writeFile(lf('leaf.ext'), ext.join('\n') + '\n');

    const certPath = lf('cert.pem');
    await certify({
      csr: lf('plain.csr'), out: certPath, issuerCert: intermediateCertPath, issuerKey: f('intermediate.key'),
      start: o.notBefore ?? new Date(Date.now() - HOUR), end: o.notAfter ?? new Date(Date.now() + 365 * DAY),
      extFile: lf('leaf.ext'), extensions: 'leaf', md: o.md ?? 'sha256', subject,
      // A PSS signature on the certificate too, so the fixture is PSS through and through; only an
      // RSA intermediate can make one.
      sigopts: o.pss && keyType === 'rsa' ? ['rsa_padding_mode:pss', 'rsa_pss_saltlen:digest'] : caPss,
    });

    const plainKeyPath = lf('plain.key');
    let keyPath = plainKeyPath;
    if (o.encryptKeyWithPassword !== undefined || o.traditionalKey) {
      keyPath = lf('key.pem');
      await openssl([
        'pkey', '-in', plainKeyPath, '-out', keyPath,
        ...(o.traditionalKey ? ['-traditional'] : []),
        ...(o.encryptKeyWithPassword !== undefined ? ['-aes-256-cbc', '-passout', `pass:${o.encryptKeyWithPassword}`] : []),
      ]);
    }
    const [keyPem, certPem] = await Promise.all([readFile(keyPath, 'latin1'), readFile(certPath, 'latin1')]);
    const bundlePath = lf('bundle.pem');
    await writeFile(bundlePath, keyPem + certPem + intPem, { mode: 0o600 });
    await chmod(bundlePath, 0o600);

    const p12s = new Map<string, Promise<string>>();
    const p12Path = (password: string) => {
      let p = p12s.get(password);
      if (!p) {
        if (closed) return Promise.reject(new Error(`p12Path() for '${name}' after cleanup()`));
        const out = lf(`bundle-${p12s.size}.p12`);
        p = openssl(['pkcs12', '-export', '-inkey', plainKeyPath, '-in', certPath, '-certfile', chainPath, '-name', name, '-passout', `pass:${password}`, '-out', out])
          .then(async () => {
            await chmod(out, 0o600);
            return out;
          });
        p12s.set(password, p);
        inFlight.add(p);
        const done = () => inFlight.delete(p!);
        p.then(done, done);
      }
      return p;
    };

    return { dir: ldir, keyPath, certPath, bundlePath, p12Path, serial: new X509Certificate(certPem).serialNumber, emails };
  }

  return {
    dir,
    rootCertPath,
    intermediateCertPath,
    chainPath,
    intermediateKeyPath: f('intermediate.key'),
    configPath,
    issueLeaf,
    async cleanup() {
      closed = true;
      await Promise.allSettled([...inFlight]);
      await remove();
    },
  };
}
