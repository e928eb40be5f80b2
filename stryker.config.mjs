// @ts-check
/**
 * Mutation testing of the trust path (`npm run mutate`, README "Mutation testing"): the code that
 * decides who may send, as whom, and what gets signed. A mutant that no test notices is either
 * a missing test or an equivalent mutant, marked in the code with a `// Stryker disable` comment
 * that says why.
 *
 * @type {import('@stryker-mutator/api/core').PartialStrykerOptions}
 */
export default {
  mutate: [
    'src/admit/**/*.ts',
    'src/access/**/*.ts',
    // Only a real terminal exercises the password prompt: its test runs the CLI under script(1),
    // in a process of its own that Stryker's instrumentation does not reach.
    '!src/access/terminal-prompt.ts',
    'src/pipeline.ts',
    'src/signing/native.ts',
    // The header reading only (readHeaderBlock, topHeaderFields, fieldValue), not the rewriting.
    'src/mime/header.ts:8-70',
    'src/mime/header.ts:81-86',
    // Self-verification (issue 12): the forwarded bytes read back as a recipient would.
    'src/verify/self-verify.ts',
    'src/verify/integrity.ts',
    'src/verify/signed-data.ts',
    'src/verify/split.ts',
    'src/verify/der.ts',
  ],
  testRunner: 'vitest',
  // Adds per-file attribution of load-time and hook coverage, and a fast-first file order.
  vitest: { configFile: 'test/vitest.mutation.config.ts', related: true },
  // Only the tests that ran the mutated code run for each mutant.
  coverageAnalysis: 'perTest',
  // Mutants that do not compile are dropped before any test runs.
  checkers: ['typescript'],
  tsconfigFile: 'tsconfig.json',
  reporters: ['clear-text', 'progress-append-only', 'json', 'html'],
  jsonReporter: { fileName: 'reports/mutation/mutation.json' },
  htmlReporter: { fileName: 'reports/mutation/mutation.html' },
  clearTextReporter: { allowEmojis: false, logTests: false, reportScoreTable: true },
  thresholds: { high: 90, low: 85, break: 85 },
  // Two cores: one test runner and one type checker at a time.
  concurrency: 2,
  // The tests start relays, openssl and verifiers; on a loaded machine a run may take several
  // times its dry-run time without being stuck, and the files' hooks are not in that time. A
  // "timeout" must mean a mutant that hangs (an endless loop hits the hit limit long before).
  timeoutFactor: 3,
  timeoutMS: 120_000,
  dryRunTimeoutMinutes: 30,
  incremental: true,
  incrementalFile: 'test/mutation/stryker-incremental.json',
  // dist/ is copied in (built by `npm run mutate` first): the tests that run the CLI need it.
  ignorePatterns: ['reports', 'bench/results', 'outbox', 'certs/dev', '.exp'],
  tempDirName: '.stryker-tmp',
};
