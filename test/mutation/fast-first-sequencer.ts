import { BaseSequencer, type TestSpecification } from 'vitest/node';

/**
 * Test file order under Stryker. A mutant run stops at the first failing test (bail), so the
 * sooner a killing file runs the cheaper the mutant. Vitest's own order runs the slowest files
 * first (good for parallel workers; Stryker gives each runner one). Here: files that failed last
 * time first (the previous mutant's killer often kills the next one too), then the fastest
 * (files not timed yet count as fastest).
 */
export class FastFirstSequencer extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const { cache, config } = this.ctx;
    const key = (f: TestSpecification) => `${f.project.name}:${f.moduleId.slice(config.root.length + 1)}`;
    const rank = (f: TestSpecification) => {
      const last = cache.getFileTestResults(key(f));
      return { failed: last?.failed ? 0 : 1, duration: last?.duration ?? 0 };
    };
    const ranked = new Map(files.map((f) => [f, rank(f)]));
    return [...files].sort((a, b) => {
      const ra = ranked.get(a)!;
      const rb = ranked.get(b)!;
      return ra.failed - rb.failed || ra.duration - rb.duration;
    });
  }
}
