import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';

/** Compiles src/ into dist/ (tsc -p src), so the benchmarks run the relay as an operator does. */
export function buildRelay(root: string, log: (s: string) => void): void {
  try {
    execFileSync(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '-p', join(root, 'src')], { stdio: 'pipe' });
  } catch (e) {
    // tsc still emits on type errors; someone else's work in progress must not stop a benchmark
    const out = String((e as { stdout?: Buffer }).stdout ?? '').split('\n').slice(0, 5).join('\n');
    if (!existsSync(join(root, 'dist/cli.js'))) throw new Error(`build failed and there is no dist/cli.js:\n${out}`);
    log(`warning: tsc -p src reported errors; using what it emitted:\n${out}`);
  }
}
