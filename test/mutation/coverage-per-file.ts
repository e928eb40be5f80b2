/**
 * Loaded by test/vitest.mutation.config.ts, i.e. only under Stryker (`npm run mutate`), after
 * Stryker's own setup file (@stryker-mutator/vitest-runner 9.6.1, src/stryker-setup.ts).
 *
 * Stryker's per-test coverage counts a mutant as covered by a test only when the mutated code
 * runs inside that test. Code that runs while a test file loads its modules or in its
 * beforeAll/afterAll hooks (constants of native.ts, the users-file patterns, the relay that a
 * describe block starts for all its tests) is "static" coverage, and each static mutant costs a
 * run of every related test file with a fresh module graph: hours on two cores. Stryker's
 * ignoreStatic would drop them from the score instead, untested.
 *
 * Here static coverage is charged to the file that caused it: at the end of each test file its
 * static hits are counted for every test of that file, and in a mutant run the mutant is active
 * from before the file imports anything. Vitest evaluates each test file's modules afresh
 * (isolate, the default), so this is Stryker's static activation, limited to the test files
 * that can see the mutant.
 */
import { afterAll, inject } from 'vitest';
import type { RunnerTask as Task } from 'vitest';

declare module 'vitest' {
  interface ProvidedContext {
    mode: 'dry-run' | 'mutant';
    activeMutant: string;
    globalNamespace: string;
  }
}

interface Coverage {
  static: Record<string, number>;
  perTest: Record<string, Record<string, number>>;
}
interface Namespace {
  activeMutant?: string;
  mutantCoverage?: Coverage;
}

const globals = globalThis as unknown as Record<string, Namespace | undefined>;
const ns = (globals[inject('globalNamespace')] ??= {});

/** Stryker's test id (vitest-runner's toRawTestId): the file path, '#', the names from the file suite down. */
function testId(task: Task): string {
  const names = [task.name];
  for (let suite = task.suite; suite; suite = suite.suite) names.unshift(suite.name);
  return `${task.file?.filepath ?? 'unknown.js'}#${names.join(' ').trim()}`;
}

function testsRun(suite: { tasks: Task[] }): Task[] {
  return suite.tasks.flatMap((t) => ('tasks' in t ? testsRun(t) : t.type === 'test' && (t.result?.state === 'pass' || t.result?.state === 'fail') ? [t] : []));
}

if (inject('mode') === 'mutant') {
  ns.activeMutant = inject('activeMutant');
} else {
  // Registered after Stryker's afterAll; vitest runs afterAll hooks last-registered first, so
  // this moves the hits before Stryker hands the coverage object over.
  afterAll((_context, file) => {
    const coverage = ns.mutantCoverage;
    if (!coverage) return;
    const hits = Object.entries(coverage.static);
    if (!hits.length) return;
    for (const test of testsRun(file)) {
      const perTest = (coverage.perTest[testId(test)] ??= {});
      for (const [mutant, n] of hits) perTest[mutant] = (perTest[mutant] ?? 0) + n;
    }
    coverage.static = {};
  });
}
