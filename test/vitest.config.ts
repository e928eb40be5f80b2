import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    root: fileURLToPath(new URL('..', import.meta.url)),
    include: ['test/**/*.test.ts'],
    // dist/ is built once here; test files never rebuild it (they would race each other).
    globalSetup: ['test/global-setup.ts'],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // Tests spawn openssl, verifiers and SMTP peers; two cores run two files at a time.
    maxWorkers: 2,
  },
});
