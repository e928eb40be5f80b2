/** Figures of one benchmark run, the targets of issues 7 and 12, and the Markdown that bench/results/latest.md holds. */
import type { PostfixPathResult } from './postfix-paths.js';
import { median, type SelfVerifyCost } from './self-verify.js';

export interface Measured {
  msgPerSec: number;
  messages: number;
  /** ms per message */
  latencies: number[];
  /** connect→220, ms, for new connections under load */
  greetings: number[];
  /** relay process utime+stime per message, ms */
  cpuMsPerMsg: number;
  /** the same plus the openssl children it reaped */
  cpuMsPerMsgWithChildren: number;
  errors: number;
  firstError?: string;
}

export interface LargeResult {
  n: number;
  size: number;
  /** VmRSS after start and one small message */
  baselineRss: number;
  /** VmHWM of the relay process at the end */
  peakHwm: number;
  /** highest sampled VmRSS of the relay plus its live children (openssl) */
  peakTree: number;
  seconds: number;
  latencies: number[];
  errors: string[];
}

export interface ConfigResult {
  name: 'unsigned' | 'openssl' | 'native' | 'native-token';
  label: string;
  idleRss: number;
  afterLoad: { rss: number; hwm: number };
  greetings: number[];
  reused: Measured;
  newConn: Measured;
  source?: { reused: CrossCheck; newConn: CrossCheck };
  large1?: LargeResult;
  large10?: LargeResult;
  /** 24 MiB of 8-bit text, one and twelve at once (bench/memory.ts). */
  eightBit?: { one: EightBitRun; many: EightBitRun };
}

interface CrossCheck {
  msgPerSec: number;
  messages: number;
  error?: string;
}

export interface RunInfo {
  machine: {
    cores: number;
    memoryGiB: number;
    cpu: string;
    kernel: string;
    node: string;
    openssl: string;
    smtpServer: string;
    date: string;
    /** 1-minute load average when the run started and ended: other work on the machine skews everything */
    loadBefore: number;
    loadAfter?: number;
  };
  quick: boolean;
  params: { sessions: number; warmupMs: number; measureMs: number; greetings: number; smallSize: number; largeSize: number; largeConcurrent: number };
  sink: string;
  loadGenerator: string;
  reference: { msgPerSec: number; errors: number } | undefined;
  elapsedSeconds?: number;
}

export interface Target {
  figure: string;
  target: string;
  measured: string;
  pass: boolean | undefined;
}

/** Nearest-rank percentile. */
export function percentile(values: number[], p: number): number {
  if (!values.length) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

const MiB = 2 ** 20;
const f0 = (n: number) => (Number.isFinite(n) ? n.toFixed(0) : '–');
const f1 = (n: number) => (Number.isFinite(n) ? n.toFixed(1) : '–');
const f2 = (n: number) => (Number.isFinite(n) ? n.toFixed(2) : '–');
const mib = (n: number) => `${f0(n / MiB)} MiB`;

/** One fresh relay given n large messages of 8-bit text at once, with small ones sent alongside (bench/memory.ts). */
export interface EightBitRun {
  n: number;
  size: number;
  baselineRss: number;
  peakHwm: number;
  seconds: number;
  /** Large messages answered with something other than 250 (a 452 from the memory budget counts here). */
  errors: string[];
  /** connect → 250 of each small message sent while the large ones were in flight, ms. */
  small: number[];
  smallErrors: string[];
}

/** The targets of issue 10 item 7. */
const EIGHT_BIT_LIMITS = {
  /** Peak RSS of the relay with twelve in flight. */
  peak: 2 ** 30,
  /** "A small message sent meanwhile gets its 250 within seconds." */
  smallLatencyMs: 5_000,
  /** RSS increase of one message in flight, in multiples of its size. */
  perMessage: 4,
};

export const perMessage = (r: EightBitRun): number => (r.peakHwm - r.baselineRss) / r.n / r.size;


/** The Markdown table rows of the scenario, one per run. */
export function eightBitRows(runs: { name: string; one?: EightBitRun; many?: EightBitRun }[]): string[] {
  const out = [
    '| configuration | in flight | wall time | baseline RSS | peak RSS (VmHWM) | increase per message | small messages meanwhile: median | max | errors |',
    '|---|---|---|---|---|---|---|---|---|',
  ];
  for (const { name, one, many } of runs) {
    for (const r of [one, many]) {
      if (!r) continue;
      const errors = [...r.errors, ...r.smallErrors];
      out.push(
        `| ${name} | ${r.n} | ${f1(r.seconds)} s | ${f0(r.baselineRss / MiB)} MiB | ${f0(r.peakHwm / MiB)} MiB | ${f1(perMessage(r))} × size | ` +
          `${r.small.length ? `${f0(percentile(r.small, 50))} ms` : '–'} | ${r.small.length ? `${f0(Math.max(...r.small))} ms (${r.small.length} sent)` : '–'} | ${errors.length ? `${errors.length}: ${errors[0]}` : 0} |`,
      );
    }
  }
  return out;
}

/** The targets of issue 10 item 7, judged on the runs of every configuration measured. */
export function eightBitTargets(runs: { name: string; one?: EightBitRun; many?: EightBitRun }[]): Target[] {
  const many = runs.filter((r) => r.many);
  const one = runs.filter((r) => r.one);
  const clean = (r: EightBitRun) => r.errors.length === 0 && r.smallErrors.length === 0;
  const worst = (xs: number[]) => (xs.length ? Math.max(...xs) : NaN);
  const peak = worst(many.map((r) => r.many!.peakHwm));
  const slowest = worst(many.flatMap((r) => (r.many!.small.length ? [Math.max(...r.many!.small)] : [])));
  const per = worst(one.map((r) => perMessage(r.one!)));
  return [
    {
      figure: `peak RSS, ${many[0]?.many?.n ?? 12} concurrent ${f0((many[0]?.many?.size ?? NaN) / MiB)} MiB 8-bit messages`,
      target: '< 1 GiB, every message answered 250',
      measured: many.map((r) => `${r.name} ${f0(r.many!.peakHwm / MiB)} MiB`).join(', '),
      pass: many.length ? peak < EIGHT_BIT_LIMITS.peak && many.every((r) => r.many!.errors.length === 0) : undefined,
    },
    {
      figure: 'a small message sent meanwhile: connect → 250, slowest',
      target: `≤ ${EIGHT_BIT_LIMITS.smallLatencyMs / 1000} s`,
      measured: many.map((r) => `${r.name} ${r.many!.small.length ? `${f0(Math.max(...r.many!.small))} ms` : 'none sent'}`).join(', '),
      pass: many.length && Number.isFinite(slowest) ? slowest <= EIGHT_BIT_LIMITS.smallLatencyMs && many.every((r) => clean(r.many!)) : undefined,
    },
    {
      figure: `RSS increase for one ${f0((one[0]?.one?.size ?? NaN) / MiB)} MiB 8-bit message in flight`,
      target: `≤ ${EIGHT_BIT_LIMITS.perMessage} × its size`,
      measured: one.map((r) => `${r.name} ${f1(perMessage(r.one!))} ×`).join(', '),
      pass: one.length ? per <= EIGHT_BIT_LIMITS.perMessage && one.every((r) => r.one!.errors.length === 0) : undefined,
    },
  ];
}

export function evaluateTargets(results: ConfigResult[], largeSize: number, selfVerify?: SelfVerifyCost): Target[] {
  const by = (name: ConfigResult['name']) => results.find((r) => r.name === name);
  const unsigned = by('unsigned');
  const openssl = by('openssl');
  const native = by('native');
  const targets: Target[] = [];
  const ratio = (a?: Measured, b?: Measured) => (a && b && b.msgPerSec ? a.msgPerSec / b.msgPerSec : NaN);
  const clean = (...m: (Measured | undefined)[]) => m.every((x) => x && x.errors === 0);
  const check = (value: number, ok: (v: number) => boolean, valid = true) => (Number.isFinite(value) && valid ? ok(value) : undefined);

  const nativeRatio = ratio(native?.reused, unsigned?.reused);
  targets.push({
    figure: 'native engine signed throughput, 2 KB, 20 sessions',
    target: '≥ 0.55 × unsigned pass-through',
    measured: `${f2(nativeRatio)} × (${f0(native?.reused.msgPerSec ?? NaN)} vs ${f0(unsigned?.reused.msgPerSec ?? NaN)} msg/s)`,
    pass: check(nativeRatio, (v) => v >= 0.55, clean(native?.reused, unsigned?.reused)),
  });
  const opensslRatio = ratio(openssl?.reused, unsigned?.reused);
  targets.push({
    figure: 'openssl engine signed throughput',
    target: '≥ 0.09 × unsigned pass-through',
    measured: `${f2(opensslRatio)} × (${f0(openssl?.reused.msgPerSec ?? NaN)} msg/s)`,
    pass: check(opensslRatio, (v) => v >= 0.09, clean(openssl?.reused, unsigned?.reused)),
  });
  const token = by('native-token');
  const tokenRatio = ratio(token?.reused, native?.reused);
  targets.push({
    figure: 'native engine with the key on a SoftHSM token (PKCS#11), 2 KB, 20 sessions',
    target: '≥ 0.5 × the native engine with the key from the file',
    measured: token ? `${f2(tokenRatio)} × (${f0(token.reused.msgPerSec)} vs ${f0(native?.reused.msgPerSec ?? NaN)} msg/s)` : 'not measured (SoftHSM or the pkcs11js binding is missing)',
    pass: check(tokenRatio, (v) => v >= 0.5, clean(token?.reused, native?.reused)),
  });
  const greetingMedian = percentile(native?.greetings ?? [], 50);
  targets.push({
    figure: 'connect → 220 greeting, median, loopback',
    target: '≤ 5 ms',
    measured: `${f2(greetingMedian)} ms (p99 ${f2(percentile(native?.greetings ?? [], 99))} ms, ${native?.greetings.length ?? 0} connects to an idle relay)`,
    pass: check(greetingMedian, (v) => v <= 5),
  });
  const connRatio = ratio(native?.newConn, native?.reused);
  targets.push({
    figure: 'new-connection-per-message, signed native, 20 sessions',
    target: '≥ 0.5 × the reused-connection figure',
    measured: `${f2(connRatio)} × (${f0(native?.newConn.msgPerSec ?? NaN)} vs ${f0(native?.reused.msgPerSec ?? NaN)} msg/s)`,
    pass: check(connRatio, (v) => v >= 0.5, clean(native?.newConn, native?.reused)),
  });
  const p99 = percentile(native?.reused.latencies ?? [], 99);
  targets.push({
    figure: 'p99 latency, native engine, 20 sessions, reused connections',
    target: '≤ 30 ms',
    measured: `${f1(p99)} ms (p50 ${f1(percentile(native?.reused.latencies ?? [], 50))} ms)`,
    pass: check(p99, (v) => v <= 30, clean(native?.reused)),
  });
  const large = results.filter((r) => r.large10);
  const worstPeak = Math.max(...large.map((r) => r.large10!.peakHwm));
  targets.push({
    figure: `peak RSS with ${large[0]?.large10?.n ?? 10} concurrent 25 MB messages (relay process, VmHWM)`,
    target: '≤ 1.2 GB',
    measured: large.map((r) => `${r.name} ${mib(r.large10!.peakHwm)}`).join(', '),
    pass: check(worstPeak, (v) => v <= 1.2e9, large.length > 0 && large.every((r) => r.large10!.errors.length === 0)),
  });
  const perMessage = (r: LargeResult) => (r.peakHwm - r.baselineRss) / r.n / largeSize;
  const worstPer = Math.max(...large.map((r) => perMessage(r.large10!)));
  targets.push({
    figure: 'RSS increase per in-flight 25 MB message (10 concurrent)',
    target: '≤ about 4 × its size',
    measured: large.map((r) => `${r.name} ${f1(perMessage(r.large10!))} ×`).join(', '),
    pass: check(worstPer, (v) => v <= 4, large.length > 0),
  });
  // issue 10: bounded memory, nothing lost
  targets.push(...eightBitTargets(results.map((r) => ({ name: r.name, ...r.eightBit }))));
  if (selfVerify) {
    const cost = selfVerifyCostOf(selfVerify);
    targets.push({
      figure: 'self-verification cost, native engine, 2 KB, 20 sessions (issue 12)',
      target: '≤ 5 % of native signed throughput',
      measured: `${f1(cost.throughput * 100)} % (median ${f0(median(selfVerify.on.msgPerSec))} on vs ${f0(median(selfVerify.off.msgPerSec))} off msg/s over ${selfVerify.rounds} alternating rounds; relay CPU ${f1(cost.cpu * 100)} %; in-process ${f0(selfVerify.inProcess.verifyUs)} µs to verify vs ${f0(selfVerify.inProcess.signUs)} µs to sign)`,
      pass: check(cost.throughput, (v) => v <= 0.05, selfVerify.on.errors === 0 && selfVerify.off.errors === 0),
    });
  }
  return targets;
}

/** Throughput lost and relay CPU added by the check, as fractions of the figures without it. */
export function selfVerifyCostOf(sv: SelfVerifyCost): { throughput: number; cpu: number } {
  const on = median(sv.on.msgPerSec);
  const off = median(sv.off.msgPerSec);
  return { throughput: 1 - on / off, cpu: median(sv.on.cpuMsPerMsg) / median(sv.off.cpuMsPerMsg) - 1 };
}

function latencyCells(m: Measured): string {
  return `${f1(percentile(m.latencies, 50))} | ${f1(percentile(m.latencies, 95))} | ${f1(percentile(m.latencies, 99))}`;
}

export function renderReport(info: RunInfo, results: ConfigResult[], targets: Target[], selfVerify?: SelfVerifyCost, postfix: PostfixPathResult[] | string = 'not run'): string {
  const m = info.machine;
  const by = (name: ConfigResult['name']) => results.find((r) => r.name === name);
  const u = by('unsigned')?.reused.msgPerSec ?? NaN;
  const o = by('openssl')?.reused.msgPerSec ?? NaN;
  const n = by('native')?.reused.msgPerSec ?? NaN;
  const nNew = by('native')?.newConn.msgPerSec ?? NaN;
  const out: string[] = [];
  out.push(`# smime-relay benchmark results`, '');
  out.push(
    `Written by \`npm run bench${info.quick ? ' -- --quick' : ''}\` on ${m.date}. All figures come from this one run, ` +
      'on loopback, configurations side by side; the machines are shared and noisy, so read the ratios, ' +
      'and the absolute numbers as context.',
    '',
  );
  out.push('## Headline', '');
  out.push(`- The **native engine** signs at **${f2(n / u)} ×** the throughput of unsigned pass-through (${f0(n)} vs ${f0(u)} msg/s, 2 KB, 20 sessions, reused connections).`);
  out.push(`- The **openssl engine** (one \`openssl cms\` process per message) reaches **${f2(o / u)} ×** (${f0(o)} msg/s); the native engine is **${f1(n / o)} ×** faster.`);
  out.push(`- **One new connection per message** (native engine) runs at **${f2(nNew / n)} ×** the reused-connection figure: there is no greeting delay for loopback clients (connect→220 median ${f2(percentile(by('native')?.greetings ?? [], 50))} ms; smtp-server alone waits 100 ms).`);
  const t = by('native-token')?.reused.msgPerSec;
  if (t !== undefined) out.push(`- With the **key on a PKCS#11 token** (SoftHSM2, signing through the token's asynchronous C_Sign) the native engine signs at **${f2(t / n)} ×** its throughput with the key from the file (${f0(t)} vs ${f0(n)} msg/s).`);
  const l10 = by('native')?.large10;
  if (l10) out.push(`- **${l10.n} concurrent 25 MB messages** (native engine) peak at **${mib(l10.peakHwm)}** RSS, ${f1((l10.peakHwm - l10.baselineRss) / l10.n / l10.size)} × the size per in-flight message.`);
  if (selfVerify) {
    const cost = selfVerifyCostOf(selfVerify);
    out.push(`- **Self-verification** (on by default) costs **${f1(cost.throughput * 100)} %** of native signed throughput (median ${f0(median(selfVerify.on.msgPerSec))} vs ${f0(median(selfVerify.off.msgPerSec))} msg/s) and ${f1(cost.cpu * 100)} % relay CPU; in-process the check takes ${f0(selfVerify.inProcess.verifyUs)} µs of CPU per 2 KB message against ${f0(selfVerify.inProcess.signUs)} µs to sign it (best of 7 passes).`);
  }
  const pm = typeof postfix === 'string' ? undefined : postfix.find((r) => r.name === 'milter');
  const pf = typeof postfix === 'string' ? undefined : postfix.find((r) => r.name === 'content filter');
  if (pm && pf) {
    const cost = (r: PostfixPathResult) => r.cpuMsPerMsg.relay + r.cpuMsPerMsg.postfix;
    out.push(
      `- **Behind Postfix**, the relay as a **milter** delivers ${f0(pm.delivered.msgPerSec)} msg/s against ${f0(pf.delivered.msgPerSec)} msg/s as an after-queue content filter ` +
        `(**${f2(pm.delivered.msgPerSec / pf.delivered.msgPerSec)} ×**), for ${f2(cost(pm))} against ${f2(cost(pf))} ms of relay + Postfix CPU per message.`,
    );
  }
  out.push('');
  out.push('## Targets (issues 7, 10 and 12)', '', '| figure | target | measured | result |', '|---|---|---|---|');
  for (const t of targets) out.push(`| ${t.figure} | ${t.target} | ${t.measured} | ${t.pass === undefined ? 'n/a' : t.pass ? 'pass' : '**FAIL**'} |`);
  out.push('');
  out.push('## 2 KB messages, 20 sessions', '');
  out.push(
    '| configuration | connections | msg/s | p50 ms | p95 ms | p99 ms | relay CPU ms/msg | incl. openssl children | smtp-source msg/s | errors |',
    '|---|---|---|---|---|---|---|---|---|---|',
  );
  for (const r of results) {
    for (const [kind, mm, src] of [
      ['reused', r.reused, r.source?.reused],
      ['new per message', r.newConn, r.source?.newConn],
    ] as const) {
      const srcCell = src ? (src.error ? `error: ${src.error}` : f0(src.msgPerSec)) : '–';
      out.push(
        `| ${r.name} | ${kind} | ${f0(mm.msgPerSec)} | ${latencyCells(mm)} | ${f2(mm.cpuMsPerMsg)} | ${f2(mm.cpuMsPerMsgWithChildren)} | ${srcCell} | ${mm.errors ? `${mm.errors} (${mm.firstError})` : 0} |`,
      );
    }
  }
  if (info.reference) out.push('', `Reference, no relay: the same client straight into the sink moves ${f0(info.reference.msgPerSec)} msg/s (the ceiling of client + sink on this machine).`);
  out.push('');
  out.push('## Connect → 220', '');
  out.push('| configuration | idle relay, sequential connects: median | p99 | under load (new connection per message): median | p99 |', '|---|---|---|---|---|');
  for (const r of results) {
    out.push(`| ${r.name} | ${f2(percentile(r.greetings, 50))} ms | ${f2(percentile(r.greetings, 99))} ms | ${f2(percentile(r.newConn.greetings, 50))} ms | ${f2(percentile(r.newConn.greetings, 99))} ms |`);
  }
  out.push('');
  out.push('## 25 MB messages: memory', '');
  out.push(
    '| configuration | in flight | wall time | baseline RSS | peak RSS (VmHWM) | increase per message | peak incl. openssl children | errors |',
    '|---|---|---|---|---|---|---|---|',
  );
  for (const r of results) {
    for (const l of [r.large1, r.large10]) {
      if (!l) continue;
      out.push(
        `| ${r.name} | ${l.n} | ${f1(l.seconds)} s | ${mib(l.baselineRss)} | ${mib(l.peakHwm)} | ${f1((l.peakHwm - l.baselineRss) / l.n / l.size)} × size | ${mib(l.peakTree)} | ${l.errors.length ? l.errors[0] : 0} |`,
      );
    }
  }
  out.push('');
  const eightBit = results.find((r) => r.eightBit)?.eightBit;
  if (eightBit) {
    out.push(`## ${f0(eightBit.many.size / MiB)} MiB of 8-bit text: memory budget`, '');
    out.push(
      `Each configuration with the default \`SMIME_RELAY_MEMORY_BUDGET\` (512 MiB), a fresh relay per run: one message, then ${eightBit.many.n} at once, of UTF-8 Russian text sent as 8bit ` +
        '(nearly every byte 8-bit: the text that grows most when made 7-bit safe), while a 2 KB message is sent on a new connection a quarter second after the previous one was answered, until the large ones are all answered.',
      '',
    );
    out.push(...eightBitRows(results.map((r) => ({ name: r.name, ...r.eightBit }))));
    out.push('');
  }
  if (selfVerify) {
    out.push('## Self-verification: native engine, SMIME_RELAY_SELF_VERIFY on vs off', '');
    out.push('| round | on: msg/s | off: msg/s | on: relay CPU ms/msg | off: relay CPU ms/msg |', '|---|---|---|---|---|');
    for (let k = 0; k < selfVerify.rounds; k++) {
      out.push(`| ${k + 1} | ${f0(selfVerify.on.msgPerSec[k]!)} | ${f0(selfVerify.off.msgPerSec[k]!)} | ${f2(selfVerify.on.cpuMsPerMsg[k]!)} | ${f2(selfVerify.off.cpuMsPerMsg[k]!)} |`);
    }
    out.push(`| median | ${f0(median(selfVerify.on.msgPerSec))} | ${f0(median(selfVerify.off.msgPerSec))} | ${f2(median(selfVerify.on.cpuMsPerMsg))} | ${f2(median(selfVerify.off.cpuMsPerMsg))} |`);
    out.push('', `Both relays run at once; each round measures one after the other under the same load (2 KB, ${info.params.sessions} sessions, reused connections), the order alternating. In-process, one 2 KB message, best of 7 passes of 300: ${f0(selfVerify.inProcess.signUs)} µs CPU to prepare, sign and wrap, ${f0(selfVerify.inProcess.verifyUs)} µs CPU to self-verify.`, '');
  }
  out.push('## Behind Postfix: milter against after-queue content filter', '');
  if (typeof postfix === 'string') out.push(`Postfix comparison ${postfix}.`, '');
  else {
    out.push(
      `The same ${postfix[0]?.messages ?? 0} messages (2 KB, ${postfix[0]?.sessions ?? 0} sessions reusing connections) into a private Postfix that relays to the sink, ` +
        'once with the relay as a milter (`deploy/postfix/milter.cf`), once as an after-queue content filter (`deploy/postfix/main.cf` + `master.cf`).',
      '',
      '| setup | clients get 250: msg/s | p50 ms | p95 ms | p99 ms | delivered to the sink: msg/s | relay CPU ms/msg | Postfix CPU ms/msg | errors |',
      '|---|---|---|---|---|---|---|---|---|',
    );
    for (const r of postfix) {
      const sub = r.submitted;
      out.push(
        `| ${r.name} | ${f0(sub.msgPerSec)} | ${f1(percentile(sub.latencies, 50))} | ${f1(percentile(sub.latencies, 95))} | ${f1(percentile(sub.latencies, 99))} | ` +
          `${f0(r.delivered.msgPerSec)} | ${f2(r.cpuMsPerMsg.relay)} | ${f2(r.cpuMsPerMsg.postfix)} | ${sub.errors ? `${sub.errors} (${sub.firstError})` : 0} |`,
      );
    }
    out.push(
      '',
      '- "clients get 250": from MAIL FROM to Postfix\'s 250 after the data; with the milter that includes signing, with the content filter only queueing.',
      '- "delivered": from the first submission until Postfix logged the last `status=sent` to the sink; it includes the content filter\'s second pass through the queue.',
      '- Postfix CPU: utime+stime of every process of the instance, the live daemons plus those master reaped, across the measured messages.',
      '',
    );
  }
  out.push('## Machine', '');
  out.push(`- ${m.cores} cores (${m.cpu}), ${f1(m.memoryGiB)} GiB memory, Linux ${m.kernel}`);
  out.push(`- Node ${m.node}; ${m.openssl}; smtp-server ${m.smtpServer}`);
  out.push(`- sink: ${info.sink}; load: ${info.loadGenerator}`);
  out.push(`- run took ${f0(info.elapsedSeconds ?? NaN)} s${info.quick ? ' (--quick)' : ''}; 1-minute load average ${f1(m.loadBefore)} at the start, ${f1(m.loadAfter ?? NaN)} at the end`);
  if (Math.max(m.loadBefore, m.loadAfter ?? 0) > m.cores) {
    out.push(`- **The machine was busy with other work during this run (load average above ${m.cores}); every absolute figure is inflated, and ratios are only roughly comparable.**`);
  }
  out.push('');
  out.push('## Method', '');
  out.push(
    `- Each configuration is a separate relay process, \`node dist/cli.js serve\`, with LOG_LEVEL=info (one log line per message, as in production), ` +
      'an RSA-2048 certificate generated for this run, and the default upstream pool (8 connections) into the sink.',
    '- Clients declare SIZE= on MAIL FROM, as Python smtplib, nodemailer and Postfix do; the relay then receives each message into one buffer of that size.',
    `- Load is closed-loop: ${info.params.sessions} sessions each send the next message when the previous one is answered. ` +
      `After ${info.params.warmupMs} ms of warm-up, only transactions that start and end inside a ${info.params.measureMs} ms window count. ` +
      'Latency is MAIL FROM → 250 after the data with reused connections, connect → 250 with a new connection per message.',
    '- The client, the relay and the sink share the same cores, so every configuration is measured under the same handicap.',
    '- CPU per message: utime+stime of the relay process from /proc/PID/stat across the window; "incl. openssl children" adds cutime+cstime, the openssl processes it reaped.',
    `- Memory: a fresh relay per scenario; baseline VmRSS after one small message, peak VmHWM from /proc/PID/status after ${info.params.largeConcurrent} simultaneous connections each sent one ${f0(info.params.largeSize / 1e6)} MB message (a text part and a base64 attachment). "incl. openssl children" samples the relay plus its live children every 20 ms.`,
    '- smtp-source (Postfix) cross-checks throughput: `smtp-source [-d] -s 20 -m N -l 2048`, its message count sized to run about as long as a few seconds; msg/s from its wall time.',
    `- connect → 220: ${info.params.greetings} sequential connections to an idle relay, then the same figure for every new connection under load.`,
    '- native-token: the same certificate with its key imported into a SoftHSM2 token in a temporary SOFTHSM2_CONF directory, the certificate file holding certificate and chain only (SMIME_RELAY_PKCS11_*). Its 25 MB runs are left out: the key is not involved in memory use.',
  );
  out.push('');
  return out.join('\n');
}
