/**
 * The relay behind a real Postfix, two ways, with the same messages: as a milter
 * (deploy/postfix/milter.cf) and as an after-queue content filter (deploy/postfix/main.cf +
 * master.cf). Postfix is a private instance (test/support/postfix.ts) that relays to the sink.
 * Measured per setup: how fast clients get Postfix's 250, how fast mail reaches the sink, and
 * the CPU that Postfix and the relay spend per message.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { freePorts, postfixProblem, startPostfix, type PostfixInstance } from '../test/support/postfix.js';
import { cpu, startRelay, type Service } from './processes.js';
import { Connection, transaction, type Envelope } from './smtp-client.js';

export interface PostfixPathResult {
  name: 'milter' | 'content filter';
  label: string;
  messages: number;
  sessions: number;
  /** Client side: every message until Postfix's 250. */
  submitted: { seconds: number; msgPerSec: number; latencies: number[]; errors: number; firstError?: string };
  /** From the first submission until the sink has taken every message. */
  delivered: { seconds: number; msgPerSec: number };
  /** CPU ms per message: the relay process, and every Postfix process (live ones plus those master reaped). */
  cpuMsPerMsg: { relay: number; postfix: number };
}

export interface PostfixPathOptions {
  root: string;
  bundle: string;
  sinkPort: number;
  envelope: Envelope;
  payload: Buffer;
  messages: number;
  sessions: number;
  work: string;
  log: (s: string) => void;
}

/** Why the Postfix comparison cannot run here, if it cannot. */
export const postfixPathsProblem = (): string | undefined => postfixProblem();

const snippet = (root: string, ...p: string[]) => readFileSync(join(root, 'deploy/postfix', ...p), 'utf8');

/** Settings this benchmark needs and a production host would not: offline, and everything goes to the sink. */
const environment = (sinkPort: number) => ({
  relayhost: `[127.0.0.1]:${sinkPort}`,
  default_transport: 'smtp',
  smtp_host_lookup: 'native',
  smtp_dns_support_level: 'disabled',
  smtpd_peername_lookup: 'no',
});

interface Setup {
  relay: Service;
  postfix: PostfixInstance;
  smtpPort: number;
}

async function milter(o: PostfixPathOptions): Promise<Setup> {
  const [smtpPort, milterPort] = (await freePorts(2)) as [number, number];
  const relay = await startRelay({
    cli: join(o.root, 'dist/cli.js'),
    env: { SMIME_RELAY_CERT: o.bundle, SMIME_RELAY_UPSTREAM: `smtp://127.0.0.1:${o.sinkPort}`, SMIME_RELAY_MILTER: `127.0.0.1:${milterPort}`, LOG_LEVEL: 'info' },
    logPath: join(o.work, 'postfix-milter-relay.log'),
  });
  try {
    const postfix = await startPostfix({
      mainCf: snippet(o.root, 'milter.cf').replace(/127\.0\.0\.1:8891\b/g, `127.0.0.1:${milterPort}`),
      masterCf: `127.0.0.1:${smtpPort} inet n - n - - smtpd\n`,
      main: environment(o.sinkPort),
    });
    return { relay, postfix, smtpPort };
  } catch (e) {
    await relay.stop();
    throw e;
  }
}

async function contentFilter(o: PostfixPathOptions): Promise<Setup> {
  const [smtpPort, reinjectPort] = (await freePorts(2)) as [number, number];
  const relay = await startRelay({
    cli: join(o.root, 'dist/cli.js'),
    env: { SMIME_RELAY_CERT: o.bundle, SMIME_RELAY_UPSTREAM: `smtp://127.0.0.1:${reinjectPort}`, LOG_LEVEL: 'info' },
    logPath: join(o.work, 'postfix-filter-relay.log'),
  });
  const ports = (text: string) => text.replace(/(127\.0\.0\.1\]?):10025\b/g, `$1:${relay.port}`).replace(/127\.0\.0\.1:10026\b/g, `127.0.0.1:${reinjectPort}`);
  try {
    const postfix = await startPostfix({
      mainCf: ports(snippet(o.root, 'main.cf')),
      masterCf: `127.0.0.1:${smtpPort} inet n - n - - smtpd\n` + ports(snippet(o.root, 'master.cf')),
      main: environment(o.sinkPort),
    });
    return { relay, postfix, smtpPort };
  } catch (e) {
    await relay.stop();
    throw e;
  }
}

/** `count` messages over `sessions` reused connections, as fast as Postfix answers. */
async function submit(port: number, count: number, sessions: number, env: Envelope, payload: Buffer): Promise<PostfixPathResult['submitted']> {
  let next = 0;
  const latencies: number[] = [];
  let errors = 0;
  let firstError: string | undefined;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: sessions }, async () => {
      let conn: Connection | undefined;
      while (next < count) {
        next++;
        try {
          if (!conn) {
            conn = await Connection.open(port);
            if ((await conn.read()).code !== 220) throw new Error('no 220 greeting');
            await conn.expect('EHLO bench.test', 250);
          }
          const started = performance.now();
          await transaction(conn, env, payload);
          latencies.push(performance.now() - started);
        } catch (e) {
          errors++;
          firstError ??= (e as Error).message;
          conn?.destroy();
          conn = undefined;
        }
      }
      conn?.quit();
    }),
  );
  const seconds = (performance.now() - t0) / 1000;
  return { seconds, msgPerSec: latencies.length / seconds, latencies, errors, firstError };
}

/** Messages Postfix handed to the sink so far, from its own log. */
function deliveredToSink(postfix: PostfixInstance, sinkPort: number): number {
  const sent = new RegExp(`relay=127\\.0\\.0\\.1\\[127\\.0\\.0\\.1\\]:${sinkPort}, .*status=sent`, 'g');
  return postfix.log().match(sent)?.length ?? 0;
}

async function waitForDeliveries(postfix: PostfixInstance, sinkPort: number, n: number, timeoutMs = 300_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (deliveredToSink(postfix, sinkPort) < n) {
    if (Date.now() > deadline) throw new Error(`only ${deliveredToSink(postfix, sinkPort)} of ${n} messages reached the sink within ${timeoutMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** CPU seconds of the Postfix processes: the live ones, plus the children master has reaped. */
function postfixCpu(postfix: PostfixInstance): Map<number, number> {
  const master = Number(readFileSync(join(postfix.dir, 'queue/pid/master.pid'), 'utf8').trim());
  const seen = new Map<number, number>();
  for (const pid of postfix.processes()) {
    try {
      const c = cpu(pid);
      seen.set(pid, c.self + (pid === master ? c.children : 0));
    } catch {
      // exited between listing and reading: its time is in master's children now
    }
  }
  return seen;
}

/** A daemon that exited in between is in master's children afterwards, with its earlier time too. */
const cpuDelta = (before: Map<number, number>, after: Map<number, number>): number => {
  const sum = (m: Map<number, number>) => [...m.values()].reduce((a, b) => a + b, 0);
  return sum(after) - sum(before);
};

export async function measurePostfixPaths(o: PostfixPathOptions): Promise<PostfixPathResult[]> {
  const results: PostfixPathResult[] = [];
  const setups = [
    { name: 'milter' as const, label: 'Postfix + milter (deploy/postfix/milter.cf)', start: milter },
    { name: 'content filter' as const, label: 'Postfix + after-queue content filter (deploy/postfix/main.cf + master.cf)', start: contentFilter },
  ];
  for (const s of setups) {
    o.log(`${s.label}:`);
    const { relay, postfix, smtpPort } = await s.start(o);
    try {
      // warm-up: every Postfix daemon started, the relay's code paths loaded
      const warm = Math.min(50, o.messages);
      await submit(smtpPort, warm, Math.min(o.sessions, warm), o.envelope, o.payload);
      await waitForDeliveries(postfix, o.sinkPort, warm);

      const relayBefore = cpu(relay.pid);
      const postfixBefore = postfixCpu(postfix);
      const t0 = performance.now();
      const submitted = await submit(smtpPort, o.messages, o.sessions, o.envelope, o.payload);
      await waitForDeliveries(postfix, o.sinkPort, warm + submitted.latencies.length);
      const seconds = (performance.now() - t0) / 1000;
      const relayAfter = cpu(relay.pid);
      const n = submitted.latencies.length;
      const result: PostfixPathResult = {
        name: s.name,
        label: s.label,
        messages: n,
        sessions: o.sessions,
        submitted,
        delivered: { seconds, msgPerSec: n / seconds },
        cpuMsPerMsg: {
          relay: ((relayAfter.self + relayAfter.children - relayBefore.self - relayBefore.children) * 1000) / n,
          postfix: (cpuDelta(postfixBefore, postfixCpu(postfix)) * 1000) / n,
        },
      };
      o.log(
        `  ${n} messages: clients got 250 at ${submitted.msgPerSec.toFixed(0)} msg/s, delivered at ${result.delivered.msgPerSec.toFixed(0)} msg/s; ` +
          `CPU per message: relay ${result.cpuMsPerMsg.relay.toFixed(2)} ms, Postfix ${result.cpuMsPerMsg.postfix.toFixed(2)} ms` +
          (submitted.errors ? `; ${submitted.errors} errors (${submitted.firstError})` : ''),
      );
      results.push(result);
    } finally {
      await postfix.stop();
      await relay.stop();
    }
  }
  return results;
}
