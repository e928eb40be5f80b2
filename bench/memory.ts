/**
 * Memory with large 8-bit mail (issue 10, "bounded memory, nothing lost"): peak RSS of a relay
 * that signs one 24 MiB message of 8-bit text, and twelve at once, while small messages keep
 * being sent, one a quarter second after the previous one was answered, and must keep getting
 * their 250 within seconds.
 *
 *   npm run bench:memory [-- --no-build] [-- --cli dist/cli.js] [-- --out bench/results/memory.md]
 *
 * `npm run bench` runs the same scenario for each configuration and puts it in latest.md; this
 * entry point runs only it (native and openssl engines, and unsigned pass-through).
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { createTestPki } from '../test/support/pki.js';
import { buildRelay } from './build.js';
import { eightBitMessage, smallMessage } from './messages.js';
import { memory, startRelay, startSink, type Service } from './processes.js';
import { eightBitRows, eightBitTargets, perMessage, type EightBitRun } from './report.js';
import { dataPayload, sendConcurrently, type Envelope } from './smtp-client.js';

export const EIGHT_BIT = {
  size: 24 * 2 ** 20,
  concurrent: 12,
  /** The pause before the next small message, once the previous one was answered. */
  probeEveryMs: 250,
};

const MiB = 2 ** 20;
const f0 = (n: number) => (Number.isFinite(n) ? n.toFixed(0) : '–');
const f1 = (n: number) => (Number.isFinite(n) ? n.toFixed(1) : '–');

/** One fresh relay: n concurrent large 8-bit messages, small ones sent alongside until they are all answered. */
export async function measureEightBit(start: () => Promise<Service>, n: number, envelope: Envelope, large: Buffer, small: Buffer): Promise<EightBitRun> {
  const relay = await start();
  try {
    await sendConcurrently(relay.port, 1, envelope, small);
    const baseline = memory(relay.pid).rss;
    const t0 = performance.now();
    let done = false;
    const sending = sendConcurrently(relay.port, n, envelope, large).finally(() => (done = true));
    const smallLatencies: number[] = [];
    const smallErrors: string[] = [];
    const probing = (async () => {
      while (!done) {
        await new Promise((r) => setTimeout(r, EIGHT_BIT.probeEveryMs));
        if (done) break;
        const r = await sendConcurrently(relay.port, 1, envelope, small);
        smallLatencies.push(...r.latencies);
        smallErrors.push(...r.errors);
      }
    })();
    const r = await sending;
    const seconds = (performance.now() - t0) / 1000;
    await probing;
    return { n, size: large.length, baselineRss: baseline, peakHwm: memory(relay.pid).hwm, seconds, errors: r.errors, small: smallLatencies, smallErrors };
  } finally {
    await relay.stop();
  }
}

// ------------------------------------------------------------------ npm run bench:memory

const HELP = `Usage: npm run bench:memory [-- --no-build] [-- --cli FILE] [-- --out FILE]

One and then ${EIGHT_BIT.concurrent} concurrent ${EIGHT_BIT.size / MiB} MiB messages of 8-bit text (UTF-8 Russian, 8bit),
through unsigned pass-through, the openssl engine and the native engine (a fresh relay
process for each run, default SMIME_RELAY_MEMORY_BUDGET), while small messages keep being sent
(${EIGHT_BIT.probeEveryMs} ms apart). Prints peak RSS and the small messages' latency, and writes them to FILE.

  --no-build   use dist/ as it is
  --cli FILE   the relay to run (default dist/cli.js; for before/after figures of another build)
  --out FILE   where to write the Markdown results (default bench/results/memory.md)
  -h, --help   show this help
`;

async function main(): Promise<void> {
  const root = fileURLToPath(new URL('..', import.meta.url));
  const { values: flags } = parseArgs({
    options: {
      'no-build': { type: 'boolean', default: false },
      cli: { type: 'string', default: join(root, 'dist/cli.js') },
      out: { type: 'string', default: join(root, 'bench/results/memory.md') },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (flags.help) {
    process.stdout.write(HELP);
    return;
  }
  const log = (s: string) => process.stdout.write(s + '\n');
  if (!flags['no-build']) buildRelay(root, log);
  const loadBefore = loadavg()[0]!;
  const work = mkdtempSync(join(tmpdir(), 'smime-bench-memory-'));
  const pki = await createTestPki({ keyType: 'rsa' });
  const sink = await startSink();
  const FROM = 'bench@example.test';
  const TO = 'rcpt@example.org';
  const envelope: Envelope = { from: FROM, to: TO, declareSize: true };
  const runs: { name: string; one?: EightBitRun; many?: EightBitRun }[] = [];
  try {
    const leaf = await pki.issueLeaf('bench', { emails: [FROM] });
    const large = dataPayload(eightBitMessage(FROM, TO, EIGHT_BIT.size));
    const small = dataPayload(smallMessage(FROM, TO, 2048));
    const common = { SMIME_RELAY_CERT: leaf.bundlePath, SMIME_RELAY_UPSTREAM: `smtp://127.0.0.1:${sink.port}`, LOG_LEVEL: 'info' };
    for (const [name, env] of [
      ['unsigned', { SMIME_RELAY_SIGNING: 'off' }],
      ['openssl', { SMIME_RELAY_ENGINE: 'openssl' }],
      ['native', { SMIME_RELAY_ENGINE: 'native' }],
    ] as const) {
      let seq = 0;
      const start = () => startRelay({ cli: flags.cli, env: { ...common, ...env }, logPath: join(work, `${name}-${++seq}.log`) });
      const one = await measureEightBit(start, 1, envelope, large, small);
      const many = await measureEightBit(start, EIGHT_BIT.concurrent, envelope, large, small);
      const slowest = many.small.length ? Math.max(...many.small) : NaN;
      log(`${name}: 1 → ${f0(one.peakHwm / MiB)} MiB (${f1(perMessage(one))} × size); ${many.n} → ${f0(many.peakHwm / MiB)} MiB in ${f1(many.seconds)} s, small messages max ${f0(slowest)} ms`);
      runs.push({ name, one, many });
    }
  } finally {
    await sink.stop();
    await pki.cleanup();
  }
  rmSync(work, { recursive: true, force: true });
  const targets = eightBitTargets(runs);
  for (const t of targets) log(`${t.pass === undefined ? ' n/a' : t.pass ? 'PASS' : 'FAIL'}  ${t.figure}: ${t.measured} (target ${t.target})`);
  const md = [
    '# smime-relay memory benchmark: 8-bit text',
    '',
    `Written by \`npm run bench:memory\` on ${new Date().toISOString()}; 1-minute load average ${f1(loadBefore)} at the start, ${f1(loadavg()[0]!)} at the end.`,
    '',
    '| figure | target | measured | result |',
    '|---|---|---|---|',
    ...targets.map((t) => `| ${t.figure} | ${t.target} | ${t.measured} | ${t.pass === undefined ? 'n/a' : t.pass ? 'pass' : '**FAIL**'} |`),
    '',
    ...eightBitRows(runs),
    '',
  ].join('\n');
  mkdirSync(dirname(flags.out), { recursive: true });
  writeFileSync(flags.out, md);
  log(`wrote ${flags.out}`);
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main().catch((e: unknown) => {
    process.stderr.write(`bench:memory failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exitCode = 1;
  });
}
