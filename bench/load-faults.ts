/**
 * Load with faults: nothing lost, duplicates counted and explained.
 *
 *   npm run bench:faults -- [--seconds 60] [--clients 200] [--engine openssl|native]
 *                           [--verify 500|all] [--seed 1] [--upstream-timeout-ms 3000]
 *                           [--fault-scale 1] [--out bench/results/faults.md]
 *
 * Runs the compiled relay (`node dist/cli.js serve`, built first) as its own process, between
 * `--clients` concurrent SMTP clients and a real SMTP sink (test/support/sink.ts) that answers at
 * random with drops (mid-DATA and after the final dot), 4xx at MAIL/RCPT/DATA, and slow replies
 * (some slower than the relay's upstream timeout). Every message carries a unique X-Load-Id.
 * At the end it compares what the clients were told with what the sink holds, verifies the
 * signatures of the sink's messages with openssl, and writes bench/results/faults.md.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { RawClient, dataPayload } from '../test/support/client.js';
import { createTestPki } from '../test/support/pki.js';
import { startSink, type Action, type Received } from '../test/support/sink.js';
import { verifyOpenssl } from '../test/support/verify.js';

const { values: args } = parseArgs({
  options: {
    seconds: { type: 'string', default: '60' },
    clients: { type: 'string', default: '200' },
    engine: { type: 'string', default: 'openssl' },
    verify: { type: 'string', default: '500' },
    seed: { type: 'string', default: '1' },
    /** Scales every fault probability; 0 gives the no-fault baseline. */
    'fault-scale': { type: 'string', default: '1' },
    out: { type: 'string', default: 'bench/results/faults.md' },
    'upstream-timeout-ms': { type: 'string', default: '3000' },
    help: { type: 'boolean', short: 'h' },
  },
});
if (args.help) {
  process.stdout.write('Usage: npm run bench:faults -- [--seconds 60] [--clients 200] [--engine openssl|native] [--verify 500|all] [--seed 1] [--upstream-timeout-ms 3000] [--fault-scale 1] [--out bench/results/faults.md]\n');
  process.exit(0);
}
const SECONDS = Math.min(Number(args.seconds), 600);
const CLIENTS = Number(args.clients);
const UPSTREAM_TIMEOUT_MS = Number(args['upstream-timeout-ms']);
const SENDER = 'load@example.test';
const root = new URL('..', import.meta.url).pathname;

/** mulberry32: a seeded PRNG, so a run's fault pattern can be replayed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rand = prng(Number(args.seed));
const SCALE = Number(args['fault-scale']);
/** A fault happens with probability p (scaled by --fault-scale). */
const chance = (p: number) => rand() < p * SCALE;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- the upstream and its faults
type Fault =
  | 'accept'
  | 'drop-mid-data'
  | 'drop-after-dot'
  | '451-at-data'
  | '421-at-data'
  | 'slow-within-timeout'
  | 'slow-past-timeout';
const faultAt = { mailFrom421: 0, mailFrom451: 0, rcpt450: 0, dropMidData: 0 };
/** What the sink did with each attempt at a message, by X-Load-Id. */
const attempts = new Map<string, Fault[]>();
let pendingSlow = 0;
const idOf = (raw: Buffer) => /^X-Load-Id: (\S+)/m.exec(raw.toString('latin1'))?.[1] ?? '?';

const pki = await createTestPki();
const leaf = await pki.issueLeaf('load', { emails: [SENDER] });
const sink = await startSink();
let dropNext = false;
sink.script = {
  mailFrom: () => {
    const r = rand() / SCALE;
    if (r < 0.01) return faultAt.mailFrom421++, { reply: 421, text: '4.3.2 Service shutting down' };
    if (r < 0.02) return faultAt.mailFrom451++, { reply: 451, text: '4.3.0 Try again later' };
    // decided here, read by the sink when DATA starts on this connection
    dropNext = chance(0.02);
    return 'accept';
  },
  rcptTo: () => (chance(0.02) ? (faultAt.rcpt450++, { reply: 450, text: '4.2.1 Mailbox busy' }) : 'accept'),
  get dropAfterDataBytes() {
    const drop = dropNext;
    dropNext = false;
    if (drop) faultAt.dropMidData++;
    return drop ? 400 : undefined;
  },
  data: (msg: Received) => {
    const id = idOf(msg.raw);
    const r = rand() / SCALE;
    let fault: Fault = 'accept';
    let action: Action | Promise<Action> = 'accept';
    if (r < 0.03) (fault = 'drop-after-dot'), (action = { drop: true });
    else if (r < 0.07) (fault = '451-at-data'), (action = { reply: 451, text: '4.3.0 Try again later' });
    else if (r < 0.08) (fault = '421-at-data'), (action = { reply: 421, text: '4.3.2 Closing' });
    else if (r < 0.13) {
      // Slow replies: most inside the relay's upstream timeout, some past it.
      const delay = 300 + rand() * UPSTREAM_TIMEOUT_MS * 1.4;
      fault = delay < UPSTREAM_TIMEOUT_MS ? 'slow-within-timeout' : 'slow-past-timeout';
      pendingSlow++;
      action = sleep(delay).then(() => (pendingSlow--, 'accept' as const));
    }
    (attempts.get(id) ?? attempts.set(id, []).get(id)!).push(fault);
    return action;
  },
} as typeof sink.script;

// ---------------------------------------------------------------- the relay, as deployed
const build = spawnSync('npx', ['tsc', '-p', 'src'], { cwd: root, encoding: 'utf8' });
if (build.status !== 0) throw new Error(`build failed: ${build.stdout}${build.stderr}`);
const relay = spawn(process.execPath, [join(root, 'dist/cli.js'), 'serve'], {
  cwd: root,
  env: {
    PATH: process.env.PATH!,
    SMIME_RELAY_LISTEN: '127.0.0.1:0',
    SMIME_RELAY_CERT: leaf.bundlePath,
    SMIME_RELAY_UPSTREAM: sink.url,
    SMIME_RELAY_ENGINE: args.engine!,
    SMIME_RELAY_UPSTREAM_TIMEOUT_MS: String(UPSTREAM_TIMEOUT_MS),
    SMIME_RELAY_MAX_CLIENTS: String(CLIENTS + 50),
    // every client comes from 127.0.0.1
    SMIME_RELAY_MAX_CLIENTS_PER_IP: String(CLIENTS + 50),
    LOG_LEVEL: 'info',
  },
  stdio: ['ignore', 'ignore', 'pipe'],
});
const relayLog = { lines: 0, errors: 0, warns: 0, byMsg: new Map<string, number>() };
let port = 0;
let partial = '';
relay.stderr!.setEncoding('utf8').on('data', (d: string) => {
  partial += d;
  const lines = partial.split('\n');
  partial = lines.pop()!;
  for (const line of lines) {
    if (!line.startsWith('{')) continue;
    const l = JSON.parse(line) as { level: number; msg: string; listen?: string };
    relayLog.lines++;
    if (l.level >= 50) relayLog.errors++;
    else if (l.level >= 40) relayLog.warns++;
    relayLog.byMsg.set(l.msg, (relayLog.byMsg.get(l.msg) ?? 0) + 1);
    if (l.listen) port = Number(l.listen.split(':').pop());
  }
});
const relayExit = new Promise<number | null>((r) => relay.once('exit', (code) => r(code)));
for (let i = 0; i < 400 && !port; i++) await sleep(50);
if (!port) throw new Error('relay did not start');

// ---------------------------------------------------------------- the clients
type Told = 250 | '4xx' | '5xx' | 'no-answer';
const told = new Map<string, { told: Told; text: string }>();
let seq = 0;
const deadline = Date.now() + SECONDS * 1000;
const started = Date.now();

const messageFor = (id: string) =>
  Buffer.from(
    `From: Load <${SENDER}>\r\nTo: rcpt@example.org\r\nSubject: load ${id}\r\nX-Load-Id: ${id}\r\n` +
      `Message-ID: <${id}@load.example.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n` +
      `Your code is ${id}. Grüße.\r\n${'A line of a typical notification body.\r\n'.repeat(30)}`,
  );

async function client(): Promise<void> {
  let c: RawClient | undefined;
  while (Date.now() < deadline) {
    try {
      if (!c || c.closed) {
        c = await RawClient.open(port);
        if ((await c.read(30_000)).code !== 220) throw new Error('no greeting');
        if ((await c.command('EHLO load.test')).code !== 250) throw new Error('EHLO refused');
      }
      const id = `m${++seq}`;
      const mail = await c.command(`MAIL FROM:<${SENDER}>`);
      if (mail.code !== 250) throw new Error(`MAIL ${mail.code}`);
      if ((await c.command('RCPT TO:<rcpt@example.org>')).code !== 250) throw new Error('RCPT refused');
      if ((await c.command('DATA')).code !== 354) throw new Error('DATA refused');
      c.write(dataPayload(messageFor(id)));
      let final;
      try {
        final = await c.read(60_000);
      } catch {
        final = { code: 0, text: 'no reply in 60 s' };
      }
      const t: Told = final.code === 250 ? 250 : final.code >= 500 ? '5xx' : final.code >= 400 ? '4xx' : 'no-answer';
      told.set(id, { told: t, text: final.text });
      if (final.code === 0 || final.code === 421) c.close();
    } catch {
      c?.close();
      c = undefined;
      await sleep(50);
    }
  }
  if (c && !c.closed) {
    await c.command('QUIT').catch(() => undefined);
    c.close();
  }
}

process.stdout.write(`load-faults: ${CLIENTS} clients for ${SECONDS} s against 127.0.0.1:${port} (engine ${args.engine}, seed ${args.seed})\n`);
const progress = setInterval(() => process.stdout.write(`  ${Math.round((Date.now() - started) / 1000)} s: ${told.size} answered, sink has ${sink.received.length}\n`), 10_000);
await Promise.all(Array.from({ length: CLIENTS }, client));
clearInterval(progress);
const elapsed = (Date.now() - started) / 1000;
// Let slow upstream replies that the relay stopped waiting for land, as they would in reality.
while (pendingSlow > 0) await sleep(100);

relay.kill('SIGTERM');
const exitCode = await relayExit;

// ---------------------------------------------------------------- the count
const inSink = new Map<string, Received[]>();
for (const m of sink.received) {
  const id = idOf(m.raw);
  (inSink.get(id) ?? inSink.set(id, []).get(id)!).push(m);
}
const count = (pred: (t: Told) => boolean) => [...told.values()].filter((v) => pred(v.told)).length;
const told250 = count((t) => t === 250);
const told4xx = count((t) => t === '4xx');
const told5xx = count((t) => t === '5xx');
const noAnswer = count((t) => t === 'no-answer');
const lost = [...told].filter(([id, v]) => v.told === 250 && !inSink.has(id)).map(([id]) => id);
const toldOkInSink = [...told].filter(([id, v]) => v.told === 250 && inSink.has(id)).length;
const dupTold = [...told].filter(([id, v]) => v.told !== 250 && inSink.has(id));
const multiCopies = [...inSink].filter(([, ms]) => ms.length > 1);
const unknownInSink = [...inSink.keys()].filter((id) => !told.has(id));
const dupReasons = new Map<string, number>();
for (const [id] of dupTold) {
  const why = (attempts.get(id) ?? ['?']).join(' then ');
  dupReasons.set(why, (dupReasons.get(why) ?? 0) + 1);
}
/** Why clients were refused, from the reply text the relay gave. */
const refusalReasons = new Map<string, number>();
for (const v of told.values()) {
  if (v.told === 250) continue;
  const t = v.text;
  const why = /stayed busy/.test(t)
    ? 'relay: every upstream connection stayed busy for the whole timeout; the message was not sent'
    : /no answer within/.test(t)
      ? 'relay: the upstream did not answer within the timeout'
      : /\b421\b/.test(t)
        ? 'upstream answered 421'
        : /\b45\d\b/.test(t)
          ? 'upstream answered 450/451'
          : /ECONNECTION|ECONNRESET|closed|socket|EPIPE/i.test(t)
            ? 'upstream connection lost (hang-up mid-DATA or after the final dot)'
            : `${v.told}: ${t.slice(0, 80)}`;
  refusalReasons.set(why, (refusalReasons.get(why) ?? 0) + 1);
}
const faultCounts = new Map<string, number>();
for (const fs of attempts.values()) for (const f of fs) faultCounts.set(f, (faultCounts.get(f) ?? 0) + 1);

// Verify signatures: every message the sink holds, or a random sample.
const all = sink.received;
const sample = args.verify === 'all' ? all : [...all].sort(() => rand() - 0.5).slice(0, Number(args.verify));
let verified = 0;
const failures: string[] = [];
for (let i = 0; i < sample.length; i += 8) {
  const batch = sample.slice(i, i + 8);
  const results = await Promise.all(batch.map((m) => verifyOpenssl(m.raw, pki.rootCertPath)));
  results.forEach((r, j) => (r.ok ? verified++ : failures.push(`${idOf(batch[j]!.raw)}: ${r.detail}`)));
}

await sink.close();
await pki.cleanup();

const pct = (n: number, d: number) => (d ? `${((100 * n) / d).toFixed(1)} %` : '-');
const faultRows = [
  ['accept (normal 250)', faultCounts.get('accept') ?? 0],
  ['slow reply within the relay timeout (then 250)', faultCounts.get('slow-within-timeout') ?? 0],
  [`slow reply past the relay timeout of ${UPSTREAM_TIMEOUT_MS} ms (then 250)`, faultCounts.get('slow-past-timeout') ?? 0],
  ['hang up after the final dot, no reply', faultCounts.get('drop-after-dot') ?? 0],
  ['451 after the final dot', faultCounts.get('451-at-data') ?? 0],
  ['421 after the final dot', faultCounts.get('421-at-data') ?? 0],
  ['421 at MAIL FROM', faultAt.mailFrom421],
  ['451 at MAIL FROM', faultAt.mailFrom451],
  ['450 at RCPT TO', faultAt.rcpt450],
] as const;
const report = `# Load with upstream faults

\`npm run bench:faults -- --seconds ${SECONDS} --clients ${CLIENTS} --engine ${args.engine} --verify ${args.verify} --seed ${args.seed} --fault-scale ${SCALE}\`,
run ${new Date().toISOString()} on ${cpus().length} cores, Node ${process.version}.
The relay is the compiled \`dist/cli.js serve\` in its own process (signing engine \`${args.engine}\`,
\`SMIME_RELAY_UPSTREAM_TIMEOUT_MS=${UPSTREAM_TIMEOUT_MS}\`); ${CLIENTS} clients keep one connection each
(reconnecting after a 421 or a lost connection) and send one-recipient messages, each with a unique
\`X-Load-Id\`. The upstream is a real SMTP peer (smtp-server) that misbehaves at random.

## Result

| | messages |
|---|---:|
| sent by the clients (a final reply was awaited) | ${told.size} |
| told **250** | ${told250} |
| told 4xx (the client keeps it and retries) | ${told4xx} |
| told 5xx | ${told5xx} |
| no answer (connection lost, no reply in 60 s) | ${noAnswer} |
| **held by the sink** (distinct messages) | ${inSink.size} |
| told 250 and held by the sink | ${toldOkInSink} |
| **lost: told 250, not held by the sink** | **${lost.length}** |
| duplicates: told 4xx or no answer, but held by the sink | ${dupTold.length} (${pct(dupTold.length, told.size)}) |
| held by the sink more than once | ${multiCopies.length} |
| held by the sink, never sent by a client | ${unknownInSink.length} |
| signatures verified with \`openssl cms -verify\` | ${verified} of ${sample.length} checked (${args.verify === 'all' ? 'all' : 'random sample'}), ${failures.length} failed |

Throughput: ${(told.size / elapsed).toFixed(0)} messages/s answered over ${elapsed.toFixed(1)} s, with ${pct(told4xx + noAnswer + told5xx, told.size)} of them refused because of injected faults.
The relay exited with code ${exitCode} on SIGTERM at the end. It logged ${relayLog.errors} error and ${relayLog.warns} warning lines.

**Nothing lost:** every message a client was told 250 for is at the sink${lost.length ? ' — NOT MET: ' + lost.slice(0, 10).join(', ') : ''}.

## Faults injected at the upstream

| fault | times |
|---|---:|
${faultRows.map(([n, c]) => `| ${n} | ${c} |`).join('\n')}
| hang up in the middle of DATA (after 400 bytes) | ${faultAt.dropMidData} |

## Why clients were refused

| reason (from the relay's reply) | messages |
|---|---:|
${[...refusalReasons].sort((a, b) => b[1] - a[1]).map(([why, n]) => `| ${why} | ${n} |`).join('\n') || '| (none) | 0 |'}

${[...told.values()].some((v) => /stayed busy/.test(v.text)) ? `Slow replies and hang-ups keep upstream connections (\`SMIME_RELAY_UPSTREAM_POOL_SIZE\`, 8) busy,
so with ${CLIENTS} clients some messages could not get a connection within the timeout: the relay then
answered 451 without sending them — back-pressure the client's queue absorbs, never a silent queue
inside the relay that could still send after the client was told 451.
` : ''}
## Duplicates explained

A duplicate is a message the client was told 4xx for (so it will send it again) while the upstream
already has a copy. SMTP has no two-phase commit: once the upstream has the final dot, the relay can
only learn the outcome from the reply, and when the reply does not come in time the only safe answer
is 4xx — a possible duplicate, never a loss (RFC 1047 describes exactly this window).
Upstream behaviour behind each duplicate in this run:

| what the upstream did with the attempts at that message | duplicates |
|---|---:|
${[...dupReasons].map(([why, n]) => `| ${why} | ${n} |`).join('\n') || '| (none) | 0 |'}

"slow-past-timeout" is the expected cause: the upstream answered 250 after the relay had stopped
waiting (\`SMIME_RELAY_UPSTREAM_TIMEOUT_MS\`), so the relay told the client 451 while the upstream
queued the message. "slow-within-timeout" is the same case at the edge: a reply delay just under
the timeout plus the time to transfer the message went over it. Raising the timeout above the upstream's worst reply time closes most of this
window; Postfix's own \`smtp_data_done_timeout\` is 600 s for the same reason.
${multiCopies.length ? `\nMessages held more than once: ${multiCopies.length}; nodemailer re-sends on a fresh pooled connection when one dies under it (\`maxRequeues\`), which can deliver twice when the first copy was in fact taken.\n` : ''}${failures.length ? `\nSignature failures:\n\n${failures.slice(0, 20).map((f) => `- ${f}`).join('\n')}\n` : ''}`;

const out = join(root, args.out!);
mkdirSync(dirname(out), { recursive: true });
writeFileSync(out, report);
process.stdout.write(report);
process.exit(lost.length || failures.length ? 1 : 0);
