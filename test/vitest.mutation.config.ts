import { configDefaults, defineConfig, mergeConfig } from 'vitest/config';
import base from './vitest.config.js';
import { FastFirstSequencer } from './mutation/fast-first-sequencer.js';

/** The test configuration under Stryker (`npm run mutate`, stryker.config.mjs). */
export default mergeConfig(
  base,
  defineConfig({
    test: {
      // Stryker's vitest runner runs every file in worker threads of one process. SoftHSM is
      // loaded once per process and reads its token directory then, so the PKCS#11 tests (which
      // give each file its own tokens) only work in processes of their own, as `npm test` runs them.
      exclude: [...configDefaults.exclude, 'test/pkcs11.test.ts'],
      // Charges coverage seen while a file loads or runs its hooks to that file's tests.
      setupFiles: ['test/mutation/coverage-per-file.ts'],
      sequence: { sequencer: FastFirstSequencer },
    },
  }),
);
