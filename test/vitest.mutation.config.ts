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
      // generated messages still kills what it kills (README, "Mutation testing"), and keeps a
      // mutant that loops from running until the timeout: Stryker stops a loop after 100 times
      // the hits of the dry run, and those grow with the number of messages.
      env: { HEADER_PROPERTY_RUNS: '250' },
    },
  }),
);
