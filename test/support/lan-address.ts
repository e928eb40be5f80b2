import { spawnSync } from 'node:child_process';
import { createHash, randomInt } from 'node:crypto';
import { networkInterfaces } from 'node:os';

/**
 * Tests of "a client (or listener) that is not on loopback" need an IPv4 address of this machine
 * outside 127.0.0.0/8. A machine with a LAN address has one. A machine without (a container
 * with only `lo`) gets one when the tests run as root: a /32 from 198.18.0.0/15, the range
 * RFC 2544 reserves for benchmarks, so it never shadows a real host. It goes on `lo` under a
 * label naming this test run and is removed when the test file is done, at process exit, and in
 * any case by the global teardown (test/global-setup.ts), which removes every address with this
 * run's label (and no other run's). Anything else is a loud skip locally and a failure under CI=true.
 */
export function loLabel(run = process.env.SMR_TEST_RUN ?? ''): string {
  // An interface label is at most 15 bytes and must start with the device name.
  return `lo:smr${createHash('sha256').update(run).digest('hex').slice(0, 8)}`;
}

export interface LanAddress {
  address: string;
  /** Removes the address when this helper added it; a no-op for a real LAN address. */
  release(): void;
}

/** The first IPv4 address on a non-loopback interface, if the machine has one. */
export function existingLanAddress(): string | undefined {
  return Object.values(networkInterfaces())
    .flat()
    .find((i) => i && !i.internal && i.family === 'IPv4')?.address;
}

const ip = (...args: string[]) => spawnSync('ip', args, { encoding: 'utf8', timeout: 10_000 });

/** Adds a 198.18.x.y/32 to `lo` (root only); undefined with the reason when that is not possible. */
export function addTestAddress(): LanAddress | { problem: string } {
  if (process.getuid?.() !== 0) return { problem: 'not running as root, so no address can be added to lo' };
  const address = `198.${18 + randomInt(2)}.${randomInt(256)}.${1 + randomInt(254)}`;
  const added = ip('addr', 'add', `${address}/32`, 'dev', 'lo', 'label', loLabel());
  if (added.error) return { problem: `cannot run ip (${added.error.message}; apt-get install -y iproute2)` };
  if (added.status !== 0) return { problem: `ip addr add ${address}/32 dev lo failed: ${added.stderr.trim()}` };
  let released = false;
  const release = () => {
    if (released) return;
    released = true;
    ip('addr', 'del', `${address}/32`, 'dev', 'lo');
  };
  process.once('exit', release);
  return { address, release };
}

/**
 * A non-loopback address for this test file, or undefined (after a warning) when there is none
 * and none can be made. Under CI=true that is an error instead: a green CI run must mean the
 * LAN-address tests ran.
 */
export function lanAddressForTests(env: NodeJS.ProcessEnv = process.env): LanAddress | undefined {
  const existing = existingLanAddress();
  if (existing) return { address: existing, release: () => {} };
  const made = addTestAddress();
  if ('address' in made) return made;
  const why = `this machine has no non-loopback IPv4 address and ${made.problem}`;
  if (env.CI === 'true') throw new Error(`LAN-address tests cannot run under CI: ${why}`);
  console.warn(`\n${'!'.repeat(78)}\n!! WARNING: ${why}.\n!! The tests that need a non-loopback address are SKIPPED.\n${'!'.repeat(78)}\n`);
  return undefined;
}

/** Removes every address this run's tests added to lo (the global teardown's last resort). */
export function removeTestAddresses(run: string): string[] {
  const label = loLabel(run);
  const shown = ip('-4', '-o', 'addr', 'show', 'dev', 'lo');
  if (shown.status !== 0) return [];
  const removed: string[] = [];
  for (const line of shown.stdout.split('\n')) {
    const m = /inet (\S+) /.exec(line);
    if (m && line.split(/[\s\\]+/).includes(label) && ip('addr', 'del', m[1]!, 'dev', 'lo').status === 0) removed.push(m[1]!);
  }
  return removed;
}
