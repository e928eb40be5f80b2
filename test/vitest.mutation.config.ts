import { defineConfig, mergeConfig } from 'vitest/config';
import base from './vitest.config.js';
import { FastFirstSequencer } from './mutation/fast-first-sequencer.js';

/** The test configuration under Stryker (`npm run mutate`, stryker.config.mjs). */
export default mergeConfig(
  base,
  defineConfig({
    test: {
      // Charges coverage seen while a file loads or runs its hooks to that file's tests.
      setupFiles: ['test/mutation/coverage-per-file.ts'],
      sequence: { sequencer: FastFirstSequencer },
      // The header property test runs for nearly every mutant of src/admit/. A tenth of its
      // generated messages killed the same mutants (README, "Mutation testing") in a third of
      // the time, and a mutant's timeout is measured from that time.
      env: { HEADER_PROPERTY_RUNS: '250' },
    },
  }),
);
