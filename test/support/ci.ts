import type { TestContext } from 'vitest';

/**
 * What a test needs from the machine (a tool, an account, root): present, it is returned; absent,
 * the test is skipped with the reason, except under CI=true, where it fails. A green CI run must
 * mean every test ran (the global teardown also fails a CI run with any skipped test).
 */
export function required<T>(ctx: TestContext, value: T | undefined | false | null, missing: string, env: NodeJS.ProcessEnv = process.env): T {
  if (value !== undefined && value !== false && value !== null) return value;
  if (env.CI === 'true') throw new Error(`${missing}; under CI=true this fails instead of skipping`);
  console.warn(`SKIPPED: ${missing}`);
  return ctx.skip(missing);
}
