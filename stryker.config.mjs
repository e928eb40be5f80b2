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
    // Which mail the milter takes on: a covered sender it missed would pass unsigned.
    'src/milter/scope.ts',
    // The header reading only (readHeaderBlock, topHeaderFields, fieldValue), not the rewriting.
    'src/mime/header.ts:8-82',
    'src/mime/header.ts:94-98',
    // Self-verification (issue 12): the forwarded bytes read back as a recipient would.
    'src/verify/self-verify.ts',
    'src/verify/integrity.ts',
    'src/verify/signed-data.ts',
    'src/verify/split.ts',
    'src/verify/der.ts',
  ],
  // The test files that exercise the trust path in the test process, each in a second or two:
  // the mutated code runs where Stryker can switch a mutant on, and a mutant costs a run of only
  // the tests that reached it. Left out, though they test the same code end to end: files whose
  // work runs in other processes, where no mutant is active (the CLI, diagnose, Postfix, Dovecot,
  // verifier and deployment tests), and files that start a relay for the whole file (relay,
  // access, tls, admit-header-smtp and the like): with them every mutant of the relay's code was
  // "covered" by whole files, and a directory took over an hour on two cores. What those files
  // proved for the trust path has an in-process test here (README, "Mutation testing").
  testFiles: [
    'test/access-units.test.ts',
    'test/admit-header.test.ts',
    'test/hash-password.test.ts',
    'test/header-disagreement.test.ts',
    'test/legacy-8bit.test.ts',
    'test/milter-codec.test.ts',
    'test/mime-header-read.test.ts',
    'test/multipart-signed.test.ts',
    'test/pipeline.test.ts',
    'test/signing-native.test.ts',
    'test/verify-cms.test.ts',
    'test/verify-read.test.ts',
  ],
  testRunner: 'vitest',
  // Adds per-file attribution of load-time and hook coverage, and a fast-first file order.
  vitest: { configFile: 'test/vitest.mutation.config.ts', related: true },
  // Only the tests that ran the mutated code run for each mutant.
  coverageAnalysis: 'perTest',
  // Mutants that do not compile are dropped before any test runs. The checker type-checks src/
  // only: a mutant of the relay that compiles is a program that could ship, whatever the tests'
  // types say, and leaving test/ and bench/ out makes each check cheaper. On two cores its one
  // process is the floor of a run's time (about 0.75 s of CPU a mutant).
  checkers: ['typescript'],
  tsconfigFile: 'src/tsconfig.json',
  reporters: ['clear-text', 'progress-append-only', 'json', 'html'],
  jsonReporter: { fileName: 'reports/mutation/mutation.json' },
  htmlReporter: { fileName: 'reports/mutation/mutation.html' },
  clearTextReporter: { allowEmojis: false, logTests: false, reportScoreTable: true },
  thresholds: { high: 90, low: 85, break: 85 },
  // Two cores: one test runner and one type checker at a time.
  concurrency: 2,
  // A mutant that loops where Stryker counts hits is stopped by its hit limit; one that loops
  // elsewhere (a loop whose increment was removed) or leaves a promise pending waits for this
  // timeout: twice the time its tests took in the dry run, plus 5 s. src/admit/ has about twenty
  // such mutants, and each one costs the timeout and a restart of the test runner.
  timeoutFactor: 2,
  timeoutMS: 5_000,
  dryRunTimeoutMinutes: 30,
  incremental: true,
  incrementalFile: 'test/mutation/stryker-incremental.json',
  // dist/ is copied in (built by `npm run mutate` first): the tests that run the CLI need it.
  ignorePatterns: ['reports', 'bench/results', 'outbox', 'certs/dev', '.exp'],
  tempDirName: '.stryker-tmp',
};
