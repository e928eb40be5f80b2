/**
 * `npm run bench:signing`: the cost of one signature in-process, per engine and key type, without
 * SMTP around it. Moved here from test/signing-native.test.ts, where it printed figures that no
 * assertion read (issue 15: a test must be able to fail; performance is measured in bench/).
 */
import { parseArgs } from 'node:util';
import { loadPath } from '../src/certs/load.js';
import type { CertificateBundle } from '../src/certs/bundle.js';
import { NativeEngine } from '../src/signing/native.js';
import { OpensslEngine } from '../src/signing/openssl.js';
import type { SigningEngine } from '../src/signing/engine.js';
import { createTestPki } from '../test/support/pki.js';

const HELP = `Usage: npm run bench:signing [-- --native N] [-- --openssl N]

Signs a small MIME part N times with each engine (native: in-process, openssl: one
\`openssl cms -sign\` per message) for an RSA-2048 and an EC P-256 leaf, one after another and
all at once, and prints the time per signature. About half a minute.

  --native N    signatures per native measurement (default 200)
  --openssl N   signatures per openssl measurement (default 50; each is a process start)
  -h, --help    show this help
`;

const { values: flags } = parseArgs({
  options: {
    native: { type: 'string', default: '200' },
    openssl: { type: 'string', default: '50' },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (flags.help) {
  process.stdout.write(HELP);
  process.exit(0);
}

const CONTENT = Buffer.from('Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n\r\nQuarterly numbers attached.\r\n');

/** Milliseconds per signature over n signatures, after one that fills the per-bundle cache. */
async function perSignature(engine: SigningEngine, bundle: CertificateBundle, n: number, concurrent: boolean): Promise<string> {
  await engine.sign(CONTENT, bundle);
  const t0 = performance.now();
  if (concurrent) await Promise.all(Array.from({ length: n }, () => engine.sign(CONTENT, bundle)));
  else for (let i = 0; i < n; i++) await engine.sign(CONTENT, bundle);
  return `${((performance.now() - t0) / n).toFixed(3)} ms`;
}

const runs = { native: Number(flags.native), openssl: Number(flags.openssl) };
const engines = { native: new NativeEngine(), openssl: new OpensslEngine() };
const pkis = await Promise.all((['rsa', 'ec'] as const).map((keyType) => createTestPki({ keyType })));
try {
  for (const [i, keyType] of (['rsa', 'ec'] as const).entries()) {
    const leaf = await pkis[i]!.issueLeaf('bench', { keyType, emails: ['bench@example.test'] });
    const bundle = loadPath(leaf.bundlePath).entries[0]!.bundle!;
    for (const name of ['native', 'openssl'] as const) {
      const n = runs[name];
      const sequential = await perSignature(engines[name], bundle, n, false);
      const concurrent = await perSignature(engines[name], bundle, n, true);
      process.stdout.write(`[signing ${keyType}] ${name} x${n}: ${sequential} sequential, ${concurrent} each concurrent\n`);
    }
  }
} finally {
  await Promise.all([engines.native.close(), engines.openssl.close(), ...pkis.map((p) => p.cleanup())]);
}
