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
  // The test files that exercise the trust path in the test process. Left out: files whose work
  // runs in other processes, where no mutant is active (the CLI, diagnose, Postfix, Dovecot,
  // verifier and deployment tests); the long ones whose cases the files below already make
  // (interop's verifier matrix, the MIME fuzzer, the memory and stress loads): a mutant no file
  // here kills costs a run of all of them, and with those it took hours on two cores; and the
  // PKCS#11 tests, which need a process per file (SoftHSM reads its tokens once per process, and
  // Stryker's vitest runner runs all files in threads of one).
  testFiles: [
    'test/abuse.test.ts',
    'test/access.test.ts',
    'test/admit-header-smtp.test.ts',
    'test/admit-header.test.ts',
    'test/auth-guessing.test.ts',
    'test/certs-relay.test.ts',
    'test/config-file.test.ts',
    'test/config.test.ts',
    'test/dkim.test.ts',
    'test/dsn.test.ts',
    'test/envelope-senders.test.ts',
    'test/faults.test.ts',
    'test/file-upstream.test.ts',
    'test/greeting.test.ts',
    'test/hash-password.test.ts',
    'test/header-disagreement.test.ts',
    'test/legacy-8bit.test.ts',
    'test/memory-budget.test.ts',
    'test/metrics.test.ts',
    'test/milter-codec.test.ts',
    'test/mime-header-read.test.ts',
    'test/mime-prepare.test.ts',
    'test/multipart-signed.test.ts',
    'test/pipeline.test.ts',
    'test/verify-read.test.ts',
    'test/proxy-xforward.test.ts',
    'test/read-data.test.ts',
    'test/refusals.test.ts',
    'test/relay.test.ts',
    'test/self-verify.test.ts',
    'test/signing-native.test.ts',
    'test/smtp-server-patches.test.ts',
    'test/smuggling.test.ts',
    'test/tls.test.ts',
    'test/upstream-auth.test.ts',
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
