/**
 * `npm run bench [-- --quick]`: unsigned pass-through, the openssl engine and the native engine,
 * side by side in one run on this machine, each relay a child process (`node dist/cli.js serve`)
 * so its CPU and memory are its own. Prints every target of issues 7 and 10 with pass/fail and writes
 * bench/results/latest.md. Loopback only; bounded in time (4–6 minutes, --quick about 1.5 less).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, release, tmpdir, totalmem, availableParallelism } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { createTestPki, type Leaf, type TestPki } from '../test/support/pki.js';
import { createSoftHsm, missingForPkcs11 } from '../test/support/softhsm.js';
import { buildRelay } from './build.js';
import { eightBitMessage, largeMessage, smallMessage } from './messages.js';
import { EIGHT_BIT, measureEightBit } from './memory.js';
import { cpu, memory, runTimed, sampleTreeRss, SMTP_SOURCE, startRelay, startSink, type CpuSample, type Service } from './processes.js';
import { dataPayload, measureGreetings, runLoad, sendConcurrently, type Envelope, type LoadResult } from './smtp-client.js';
import { measurePostfixPaths, postfixPathsProblem, type PostfixPathResult } from './postfix-paths.js';
import { renderReport, evaluateTargets, type ConfigResult, type LargeResult, type Measured, type RunInfo } from './report.js';
import { measureSelfVerifyCost, type SelfVerifyCost } from './self-verify.js';

const HELP = `Usage: npm run bench [-- --quick] [-- --out FILE] [-- --no-postfix | --postfix-only]

Measures unsigned pass-through, the openssl engine and the native engine side by side, the last
also with its key on a SoftHSM2 token (PKCS#11) when softhsm2 and the pkcs11js binding are there:
2 KB messages over 20 reused connections, one new connection per message (20 sessions),
connect→220 times, peak RSS with one and with ten concurrent 25 MB messages, and with one
and twelve concurrent 24 MiB messages of 8-bit text while small messages keep being sent
(the memory budget; \`npm run bench:memory\` runs only that). Then the cost of
self-verification: the native engine with SMIME_RELAY_SELF_VERIFY on and off, in alternating
rounds, and the check timed in-process against signing. Last, behind a private Postfix (when
it can run: root, postfix installed), the relay as a milter against the relay as an
after-queue content filter, with the same messages.
Relays run as child processes (node dist/cli.js serve, rebuilt first with tsc -p src);
the sink is Postfix smtp-sink when installed; smtp-source cross-checks throughput.

  --quick      shorter throughput windows (about 1.5 minutes less)
  --no-build   use dist/ as it is
  --no-postfix     leave out the Postfix comparison
  --postfix-only   run only the Postfix comparison (printed, not written to the results file)
  --out FILE   where to write the Markdown results (default bench/results/latest.md)
  -h, --help   show this help
`;

const root = fileURLToPath(new URL('..', import.meta.url));
const { values: flags } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    'no-build': { type: 'boolean', default: false },
    'no-postfix': { type: 'boolean', default: false },
    'postfix-only': { type: 'boolean', default: false },
    out: { type: 'string', default: join(root, 'bench/results/latest.md') },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (flags.help) {
  process.stdout.write(HELP);
  process.exit(0);
}

const quick = flags.quick;
const P = {
  sessions: 20,
  warmupMs: quick ? 700 : 1500,
  measureMs: quick ? 2500 : 6000,
  greetings: quick ? 50 : 200,
  smallSize: 2048,
  largeSize: 25_000_000,
  largeConcurrent: 10,
  /** smtp-source runs about this long per scenario (its message count is sized from our own rate). */
  sourceSeconds: quick ? 1.5 : 3,
  /** Messages through each Postfix setup (milter, content filter). */
  postfixMessages: quick ? 500 : 2000,
};

const FROM = 'bench@example.test';
const TO = 'rcpt@example.org';
const envelope: Envelope = { from: FROM, to: TO, declareSize: true };

const log = (s: string) => process.stdout.write(s + '\n');
const since = (t: number) => `${((performance.now() - t) / 1000).toFixed(1)} s`;

function build(): void {
  if (!flags['no-build']) buildRelay(root, log);
}

function machine(): RunInfo['machine'] {
  const opensslVersion = execFileSync('openssl', ['version'], { encoding: 'utf8' }).trim();
  const smtpServer = JSON.parse(readFileSync(join(root, 'node_modules/smtp-server/package.json'), 'utf8')).version as string;
  return {
    cores: availableParallelism(),
    memoryGiB: totalmem() / 1024 ** 3,
    cpu: cpus()[0]?.model.trim() ?? 'unknown',
    kernel: release(),
    node: process.version,
    openssl: opensslVersion,
    smtpServer,
    date: new Date().toISOString(),
    loadBefore: loadavg()[0]!,
  };
}

/** Relay CPU over a load window, per message, in milliseconds. */
function cpuPerMessage(a: CpuSample, b: CpuSample, messages: number) {
  if (!messages) return { self: NaN, withChildren: NaN };
  return {
    self: ((b.self - a.self) * 1000) / messages,
    withChildren: ((b.self - a.self + b.children - a.children) * 1000) / messages,
  };
}

async function measureLoad(relay: Service, reuse: boolean, payload: Buffer): Promise<Measured> {
  let a: CpuSample | undefined;
  let b: CpuSample | undefined;
  const r: LoadResult = await runLoad({
    port: relay.port,
    sessions: P.sessions,
    reuse,
    warmupMs: P.warmupMs,
    measureMs: P.measureMs,
    envelope,
    payload,
    onWindow: (edge) => (edge === 'start' ? (a = cpu(relay.pid)) : (b = cpu(relay.pid))),
  });
  const per = a && b ? cpuPerMessage(a, b, r.messages) : { self: NaN, withChildren: NaN };
  return {
    msgPerSec: r.messages / r.seconds,
    messages: r.messages,
    latencies: r.latencies,
    greetings: r.greetings,
    cpuMsPerMsg: per.self,
    cpuMsPerMsgWithChildren: per.withChildren,
    errors: r.errors,
    firstError: r.firstError,
  };
}

/** smtp-source as an independent load generator: throughput from its wall time, message count sized to about sourceSeconds. */
async function crossCheck(port: number, reuse: boolean, rate: number): Promise<{ msgPerSec: number; messages: number; error?: string } | undefined> {
  if (!existsSync(SMTP_SOURCE)) return undefined;
  const messages = Math.max(100, Math.min(30_000, Math.round(rate * P.sourceSeconds)));
  const args = [...(reuse ? ['-d'] : []), '-s', String(P.sessions), '-m', String(messages), '-l', String(P.smallSize), '-f', FROM, '-t', TO, '-S', 'bench smtp-source', '-M', 'bench.test', `127.0.0.1:${port}`];
  const r = await runTimed(SMTP_SOURCE, args, 120_000);
  const error = r.code === 0 ? undefined : `smtp-source exit ${r.code}: ${r.output.trim().split('\n')[0] ?? ''}`;
  return { msgPerSec: messages / r.seconds, messages, error };
}

async function measureLarge(start: () => Promise<Service>, n: number, payload: Buffer, warm: Buffer): Promise<LargeResult> {
  const relay = await start();
  try {
    // one small message first, so the baseline includes the code paths every message loads
    await sendConcurrently(relay.port, 1, envelope, warm);
    const baseline = memory(relay.pid).rss;
    const tree = sampleTreeRss(relay.pid);
    const t0 = performance.now();
    const r = await sendConcurrently(relay.port, n, envelope, payload);
    const seconds = (performance.now() - t0) / 1000;
    const treePeak = tree.stop();
    return { n, size: P.largeSize, baselineRss: baseline, peakHwm: memory(relay.pid).hwm, peakTree: treePeak, seconds, latencies: r.latencies, errors: r.errors };
  } finally {
    await relay.stop();
  }
}

/**
 * The bench certificate's key on a SoftHSM2 token in the work directory, and the relay settings
 * that use it; undefined (with the reason printed) when softhsm2 or the pkcs11js binding is missing.
 */
async function tokenConfig(work: string, leaf: Leaf, pki: TestPki): Promise<Record<string, string> | undefined> {
  const missing = missingForPkcs11();
  if (missing.length) {
    log(`native-token: skipped, missing ${missing.join('; ')}`);
    return undefined;
  }
  const hsm = createSoftHsm(join(work, 'softhsm'));
  await hsm.initToken('bench', '1234');
  await hsm.importKey('bench', '1234', leaf.keyPath, 'bench', '01');
  const cert = join(work, 'token-cert.pem');
  writeFileSync(cert, readFileSync(leaf.certPath, 'latin1') + readFileSync(pki.intermediateCertPath, 'latin1'));
  const pin = join(work, 'token.pin');
  writeFileSync(pin, '1234\n', { mode: 0o600 });
  return { SOFTHSM2_CONF: hsm.conf, SMIME_RELAY_CERT: cert, SMIME_RELAY_PKCS11_MODULE: hsm.module, SMIME_RELAY_PKCS11_TOKEN: 'bench', SMIME_RELAY_PKCS11_PIN_FILE: pin };
}

async function main(): Promise<void> {
  const t0 = performance.now();
  log(`smime-relay benchmark${quick ? ' (--quick)' : ''}: building dist/ …`);
  build();
  const info: RunInfo = { machine: machine(), quick, params: P, sink: '', loadGenerator: '', reference: undefined };
  const work = mkdtempSync(join(tmpdir(), 'smime-bench-'));
  const pki = await createTestPki({ keyType: 'rsa' });
  const sink = await startSink();
  info.sink = sink.kind;
  info.loadGenerator = `own Node client (bench/smtp-client.ts)${existsSync(SMTP_SOURCE) ? ' + Postfix smtp-source as cross-check' : ''}`;
  const results: ConfigResult[] = [];
  let selfVerify: SelfVerifyCost | undefined;
  let postfix: PostfixPathResult[] | string = 'not run (--no-postfix)';
  let failed = true;
  try {
    const leaf = await pki.issueLeaf('bench', { emails: [FROM] });
    const small = dataPayload(smallMessage(FROM, TO, P.smallSize));
    const large = dataPayload(largeMessage(FROM, TO, P.largeSize));
    const eightBit = dataPayload(eightBitMessage(FROM, TO, EIGHT_BIT.size));
    const common = { SMIME_RELAY_CERT: leaf.bundlePath, SMIME_RELAY_UPSTREAM: `smtp://127.0.0.1:${sink.port}`, LOG_LEVEL: 'info' };

    // The ceiling of this client and sink on this machine, with no relay in between.
    if (!flags['postfix-only']) {
      log(`reference: client → ${sink.kind} directly …`);
      const direct = await runLoad({ port: sink.port, sessions: P.sessions, reuse: true, warmupMs: P.warmupMs, measureMs: P.measureMs, envelope, payload: small });
      info.reference = { msgPerSec: direct.messages / direct.seconds, errors: direct.errors };
    }

    const token = flags['postfix-only'] ? undefined : await tokenConfig(work, leaf, pki);
    const configs: { name: ConfigResult['name']; label: string; env: Record<string, string>; large: boolean }[] = [
      { name: 'unsigned', label: 'unsigned pass-through (SMIME_RELAY_SIGNING=off)', env: { SMIME_RELAY_SIGNING: 'off' }, large: true },
      { name: 'openssl', label: 'openssl engine (SMIME_RELAY_ENGINE=openssl)', env: { SMIME_RELAY_ENGINE: 'openssl' }, large: true },
      { name: 'native', label: 'native engine (SMIME_RELAY_ENGINE=native)', env: { SMIME_RELAY_ENGINE: 'native' }, large: true },
      ...(token ? [{ name: 'native-token' as const, label: 'native engine, key on a SoftHSM2 token (SMIME_RELAY_PKCS11_*)', env: { SMIME_RELAY_ENGINE: 'native', ...token }, large: false }] : []),
    ];
    for (const c of flags['postfix-only'] ? [] : configs) {
      const t = performance.now();
      let seq = 0;
      const start = () => startRelay({ cli: join(root, 'dist/cli.js'), env: { ...common, ...c.env }, logPath: join(work, `${c.name}-${++seq}.log`) });
      log(`${c.label}:`);
      const relay = await start();
      let result: ConfigResult;
      try {
        const idleRss = memory(relay.pid).rss;
        const greetings = await measureGreetings(relay.port, P.greetings);
        const reused = await measureLoad(relay, true, small);
        log(`  reused connections: ${reused.msgPerSec.toFixed(0)} msg/s${reused.errors ? `, ${reused.errors} errors (${reused.firstError})` : ''}`);
        const newConn = await measureLoad(relay, false, small);
        log(`  new connection per message: ${newConn.msgPerSec.toFixed(0)} msg/s${newConn.errors ? `, ${newConn.errors} errors (${newConn.firstError})` : ''}`);
        const sourceReused = await crossCheck(relay.port, true, reused.msgPerSec);
        const sourceNew = await crossCheck(relay.port, false, newConn.msgPerSec);
        const afterLoadRss = memory(relay.pid);
        result = { name: c.name, label: c.label, idleRss, afterLoad: afterLoadRss, greetings, reused, newConn, source: sourceReused && sourceNew ? { reused: sourceReused, newConn: sourceNew } : undefined };
      } finally {
        await relay.stop();
      }
      if (c.large) {
        result.large1 = await measureLarge(start, 1, large, small);
        result.large10 = await measureLarge(start, P.largeConcurrent, large, small);
        log(`  25 MB: 1 → peak RSS ${(result.large1.peakHwm / 2 ** 20).toFixed(0)} MiB; ${P.largeConcurrent} concurrent → ${(result.large10.peakHwm / 2 ** 20).toFixed(0)} MiB (${since(t)})`);
        result.eightBit = {
          one: await measureEightBit(start, 1, envelope, eightBit, small),
          many: await measureEightBit(start, EIGHT_BIT.concurrent, envelope, eightBit, small),
        };
        const { one, many } = result.eightBit;
        log(`  24 MiB 8-bit text: 1 → peak RSS ${(one.peakHwm / 2 ** 20).toFixed(0)} MiB; ${many.n} concurrent → ${(many.peakHwm / 2 ** 20).toFixed(0)} MiB, small messages meanwhile max ${many.small.length ? Math.max(...many.small).toFixed(0) : '–'} ms (${since(t)})`);
      }
      results.push(result);
    }

    if (!flags['postfix-only']) {
      log('self-verification cost (native engine, SMIME_RELAY_SELF_VERIFY on vs off, alternating rounds):');
      let seq = 0;
      selfVerify = await measureSelfVerifyCost({
        start: (sv) => startRelay({ cli: join(root, 'dist/cli.js'), env: { ...common, SMIME_RELAY_ENGINE: 'native', SMIME_RELAY_SELF_VERIFY: sv }, logPath: join(work, `self-verify-${sv}-${++seq}.log`) }),
        bundlePath: leaf.bundlePath,
        raw: smallMessage(FROM, TO, P.smallSize),
        payload: small,
        envelope,
        sessions: P.sessions,
        warmupMs: P.warmupMs,
        measureMs: quick ? 2000 : 4000,
        rounds: quick ? 3 : 5,
        log,
      });
    }
    if (!flags['no-postfix']) {
      const problem = postfixPathsProblem();
      if (problem) {
        postfix = `not run: ${problem}`;
        log(`Postfix comparison ${postfix}`);
      } else {
        postfix = await measurePostfixPaths({
          root,
          bundle: leaf.bundlePath,
          sinkPort: sink.port,
          envelope,
          payload: small,
          messages: P.postfixMessages,
          sessions: P.sessions,
          work,
          log,
        });
      }
    }
    failed = false;
  } finally {
    await sink.stop();
    await pki.cleanup();
    if (failed) log(`relay logs kept in ${work}`);
  }

  const targets = evaluateTargets(results, P.largeSize, selfVerify);
  info.elapsedSeconds = (performance.now() - t0) / 1000;
  info.machine.loadAfter = loadavg()[0]!;
  const md = renderReport(info, results, targets, selfVerify, postfix);
  if (flags['postfix-only']) {
    // Half a report would overwrite the last full one: print the Postfix section instead.
    log('\n' + md.slice(md.indexOf('## Behind Postfix'), md.indexOf('## Machine')));
    rmSync(work, { recursive: true, force: true });
    return;
  }
  log('');
  for (const t of targets) log(`${t.pass === undefined ? ' n/a' : t.pass ? 'PASS' : 'FAIL'}  ${t.figure}: ${t.measured} (target ${t.target})`);
  mkdirSync(join(flags.out, '..'), { recursive: true });
  writeFileSync(flags.out, md);
  log(`\nwrote ${flags.out} in ${since(t0)}`);
  rmSync(work, { recursive: true, force: true });
}

main().catch((e: unknown) => {
  process.stderr.write(`bench failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exitCode = 1;
});
