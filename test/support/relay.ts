import { Writable } from 'node:stream';
import { onTestFinished } from 'vitest';
import { createLogger } from '../../src/log.js';
import { startRelay, type RelayInternals, type RunningRelay } from '../../src/app.js';
import { loadConfig } from '../../src/config/load.js';

export interface TestRelay extends RunningRelay {
  /** Every log line the relay wrote, parsed. */
  logs: Record<string, unknown>[];
}

/**
 * Starts the relay in-process on a free loopback port, configured as a user would (env names).
 * SMIME_RELAY_ENGINE in the test process's environment picks the engine for every relay a test
 * starts without naming one: `npm test` runs the end-to-end suites once more with the openssl
 * engine that way.
 */
export async function startTestRelay(env: Record<string, string>, internals: RelayInternals = {}): Promise<TestRelay> {
  const engine = process.env.SMIME_RELAY_ENGINE ? { SMIME_RELAY_ENGINE: process.env.SMIME_RELAY_ENGINE } : {};
  const { config } = loadConfig({ env: { SMIME_RELAY_LISTEN: '127.0.0.1:0', LOG_LEVEL: 'debug', ...engine, ...env } });
  const logs: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString('utf8').split('\n')) if (line) logs.push(JSON.parse(line));
      cb();
    },
  });
  const log = createLogger(config.logLevel, sink);
  const relay = await startRelay(config, log, internals);
  // close() may be called again by the test's own cleanup: the second call waits for the first.
  const closing = { promise: undefined as Promise<void> | undefined };
  const close = relay.close.bind(relay);
  const testRelay = Object.assign(relay, { logs, close: () => (closing.promise ??= close()) });
  // A relay started inside a test that fails or times out ends with it, so it cannot keep
  // listening while the test's own cleanup never runs. (A passing test may hand its relay to the
  // next one; a relay started in a hook is the hook's to close: onTestFinished exists only in a test.)
  try {
    onTestFinished(({ task }) => (task.result?.state === 'fail' ? testRelay.close() : undefined));
  } catch {
    // started in beforeAll/beforeEach
  }
  return testRelay;
}

/** The transaction id at the end of a reply (`... (tx k3Jx0aZq)`), if it has one. */
export const txOf = (reply: { text: string }): string | undefined => /\(tx ([\w-]+)\)$/.exec(reply.text)?.[1];

/** The relay's log lines that carry the reply's transaction id (none when the reply has no id). */
export function linesFor(relay: { logs: Record<string, unknown>[] }, reply: { text: string }): Record<string, unknown>[] {
  const tx = txOf(reply);
  return tx ? relay.logs.filter((l) => l.tx === tx) : [];
}
