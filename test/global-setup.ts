import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/**
 * Builds dist/ once before any test file runs. The CLI, shutdown and deploy tests run what
 * `npm start` runs (the compiled dist/); when each file rebuilt it itself, one file's tsc could
 * rewrite dist/ while another file's relay was starting from it, and that relay died at import.
 */
export default function setup(): void {
  const root = fileURLToPath(new URL('..', import.meta.url));
  const build = spawnSync(process.execPath, ['node_modules/typescript/bin/tsc', '-p', 'src'], { cwd: root, encoding: 'utf8' });
  if (build.status !== 0) throw new Error(`tsc -p src failed before the tests:\n${build.stdout}${build.stderr}`);
}
