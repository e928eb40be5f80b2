/**
 * `npm run mutate:changed`: Stryker on the trust-path files whose source differs from
 * the run recorded in test/mutation/stryker-incremental.json, in incremental mode; nothing when
 * none differs. A clean CI clone has no report of its own, so the committed record is what
 * "changed" is measured against: `npm run mutate` locally, then commit the record with the change.
 *
 * Prints what it does; exits with Stryker's code (non-zero below the break threshold).
 * `--list` only prints the changed entries.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../..', import.meta.url));
const config = (await import(join(root, 'stryker.config.mjs'))).default as { mutate: string[]; incrementalFile: string };
const record = join(root, config.incrementalFile);
const recorded: Record<string, { source: string }> = existsSync(record)
  ? (JSON.parse(readFileSync(record, 'utf8')) as { files: Record<string, { source: string }> }).files
  : {};

/** The mutate entries (a file, or a file with a line range) whose file is not as recorded. */
function changedEntries(): string[] {
  const out: string[] = [];
  const excluded = new Set(config.mutate.filter((e) => e.startsWith('!')).map((e) => e.slice(1)));
  for (const entry of config.mutate.filter((e) => !e.startsWith('!'))) {
    const file = entry.replace(/:\d+-\d+$/, '');
    const paths = (file.includes('*') ? globFiles(file) : [file]).filter((p) => !excluded.has(p));
    for (const path of paths) {
      const now = readFileSync(join(root, path), 'utf8');
      if (recorded[path]?.source !== now) out.push(path === file ? entry : path);
    }
  }
  return [...new Set(out)];
}

/** The files a `dir/**\/*.ts` pattern names (the only glob shape stryker.config.mjs uses). */
function globFiles(pattern: string): string[] {
  const m = /^(.*)\/\*\*\/\*\.ts$/.exec(pattern);
  if (!m) throw new Error(`test/mutation/changed.ts reads only 'dir/**/*.ts' patterns, not '${pattern}'`);
  const git = spawnSync('git', ['ls-files', '--', `${m[1]}/*.ts`], { cwd: root, encoding: 'utf8' });
  if (git.status !== 0) throw new Error(`git ls-files failed: ${git.stderr}`);
  return git.stdout.split('\n').filter(Boolean);
}

const changed = changedEntries();
if (!changed.length) {
  console.log(`mutation: the trust path is as recorded in ${config.incrementalFile}; nothing to mutate`);
  process.exit(0);
}
console.log(`mutation: changed since the recorded run: ${changed.join(' ')}`);
if (process.argv.includes('--list')) process.exit(0);
const stryker = spawnSync(process.execPath, [join(root, 'node_modules/@stryker-mutator/core/bin/stryker.js'), 'run', '--mutate', changed.join(',')], {
  cwd: root,
  stdio: 'inherit',
});
process.exit(stryker.status ?? 1);
