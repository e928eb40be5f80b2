import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { TestProject } from 'vitest/node';
import { leftoverProcesses, stopProcesses } from './support/leftovers.js';
import { removeTestAddresses } from './support/lan-address.js';

/**
 * Once per `vitest run`, around all test files:
 *
 * - builds dist/ once. The CLI, shutdown and deploy tests run what `npm start` runs (the compiled
 *   dist/); when each file rebuilt it itself, one file's tsc could rewrite dist/ while another
 *   file's relay was starting from it, and that relay died at import. (Under Stryker the sources
 *   are instrumented; `npm run mutate` builds dist/ before and the sandbox gets a copy.)
 * - gives the run its own temp dir (TMPDIR, and SMR_TEST_RUN naming it; not SMIME_RELAY_*, which
 *   the relay refuses as an unknown setting), so whatever the tests start can be told apart from
 *   the developer's own processes: a process belongs to the run when its environment, command
 *   line or working directory names that dir. Postfix's daemons carry MAIL_CONFIG and work in
 *   the queue directory below it; the relays the tests spawn run with a certificate or a
 *   working directory from it.
 * - afterwards fails the run (exit code 1) when a relay, Postfix, Dovecot or any other process
 *   the tests started is still running, after ending it; when, under CI=true, a test was skipped
 *   (a missing tool must fail CI, not skip); and removes the run's temp dir and test addresses.
 */
export default function setup(project: TestProject): () => Promise<void> {
  const root = fileURLToPath(new URL('..', import.meta.url));
  const underStryker = process.env.STRYKER_MUTATOR_WORKER !== undefined && existsSync(join(root, 'dist/cli.js'));
  // Stryker's sandbox copy of the checkout is mode 0700; the tests that run the CLI as another
  // user (check-cert as the container's and the pod's user) need it readable like the checkout.
  if (underStryker) chmodSync(root, 0o755);
  else {
    const build = spawnSync(process.execPath, ['node_modules/typescript/bin/tsc', '-p', 'src'], { cwd: root, encoding: 'utf8' });
    if (build.status !== 0) throw new Error(`tsc -p src failed before the tests:\n${build.stdout}${build.stderr}`);
  }

  const run = mkdtempSync(join(tmpdir(), 'smime-relay-tests-'));
  // Postfix daemons run as the postfix user and must reach queue directories below this one.
  chmodSync(run, 0o755);
  process.env.TMPDIR = run;
  process.env.SMR_TEST_RUN = run;

  return async () => {
    const problems: string[] = [];
    const left = await leftoverProcesses(run);
    if (left.length) {
      await stopProcesses(left);
      problems.push(
        `${left.length} process(es) started by the tests were still running after the suite (now ended):\n` +
          left.map((p) => `  pid ${p.pid} [${p.kind}] ${p.command}`).join('\n'),
      );
    }
    const addresses = removeTestAddresses(run);
    if (addresses.length) problems.push(`test addresses were left on lo (now removed): ${addresses.join(', ')}`);

    if (process.env.CI === 'true' && !project.config.testNamePattern) {
      const skipped = project.vitest.state
        .getTestModules()
        .flatMap((m) => [...m.children.allTests()])
        .filter((t) => t.result().state === 'skipped')
        .map((t) => `  ${t.module.moduleId.slice(root.length)}: ${t.fullName}`);
      if (skipped.length) problems.push(`under CI=true every skip is a failure; skipped:\n${skipped.join('\n')}`);
    }

    const files = existsSync(run) ? readdirSync(run) : [];
    rmSync(run, { recursive: true, force: true });
    if (files.length) console.warn(`note: the tests left ${files.length} temp entr${files.length === 1 ? 'y' : 'ies'} (removed): ${files.slice(0, 10).join(', ')}`);

    if (problems.length) {
      console.error(`\nTest run FAILED after the tests:\n${problems.map((p) => `- ${p}`).join('\n')}\n`);
      process.exitCode = 1;
    }
  };
}
