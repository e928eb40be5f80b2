/**
 * `tsx test/mutation/merge-records.ts OUT IN...`: one mutation report from several Stryker runs.
 *
 * A run limited with `--mutate` writes a report (and an incremental record) of only the files it
 * mutated, so a trust path measured one directory at a time (README, "Mutation testing") leaves
 * one report per run. This merges them: every source file from the run that names it last, and
 * the test files those runs ran. Test ids are numbers local to each run, so each test gets a new
 * id from its file and name, and every mutant's coveredBy and killedBy are rewritten to match.
 *
 * Prints the score of each file and the total, as Stryker counts it: killed and timed out over
 * all but the ignored, the ones that do not compile and the runtime errors.
 */
import { readFileSync, writeFileSync } from 'node:fs';

interface Mutant {
  status: string;
  coveredBy?: string[];
  killedBy?: string[];
  [key: string]: unknown;
}
interface Report {
  files: Record<string, { source: string; mutants: Mutant[]; [key: string]: unknown }>;
  testFiles?: Record<string, { source?: string; tests: { id: string; name: string; [key: string]: unknown }[] }>;
  [key: string]: unknown;
}

const [out, ...inputs] = process.argv.slice(2);
if (!out || inputs.length === 0 || out === '--help') {
  console.error('usage: tsx test/mutation/merge-records.ts OUT.json IN.json...');
  process.exit(out === '--help' ? 0 : 2);
}

const merged: Report = { ...(JSON.parse(readFileSync(inputs[0]!, 'utf8')) as Report), files: {}, testFiles: {} };
const ids = new Map<string, string>();
const globalId = (file: string, name: string): string => {
  const key = `${file}\0${name}`;
  if (!ids.has(key)) ids.set(key, String(ids.size));
  return ids.get(key)!;
};

for (const input of inputs) {
  const report = JSON.parse(readFileSync(input, 'utf8')) as Report;
  const local = new Map<string, string>();
  for (const [file, tf] of Object.entries(report.testFiles ?? {})) {
    const tests = tf.tests.map((t) => {
      const id = globalId(file, t.name);
      local.set(t.id, id);
      return { ...t, id };
    });
    const known = merged.testFiles![file]?.tests ?? [];
    merged.testFiles![file] = { ...tf, tests: [...known.filter((k) => !tests.some((t) => t.id === k.id)), ...tests] };
  }
  const remap = (list?: string[]) => list?.map((id) => local.get(id) ?? id);
  for (const [file, f] of Object.entries(report.files)) {
    merged.files[file] = { ...f, mutants: f.mutants.map((m) => ({ ...m, coveredBy: remap(m.coveredBy), killedBy: remap(m.killedBy) })) };
  }
}

writeFileSync(out, JSON.stringify(merged));

const count = (mutants: Mutant[]) => {
  const n = (s: string) => mutants.filter((m) => m.status === s).length;
  const detected = n('Killed') + n('Timeout');
  const valid = detected + n('Survived') + n('NoCoverage');
  return { detected, valid, survived: n('Survived') + n('NoCoverage') };
};
const all: Mutant[] = [];
for (const [file, f] of Object.entries(merged.files).sort(([a], [b]) => a.localeCompare(b))) {
  const c = count(f.mutants);
  all.push(...f.mutants);
  console.log(`${file}: ${((100 * c.detected) / c.valid).toFixed(1)} % (${c.detected} of ${c.valid}, ${c.survived} surviving)`);
}
const t = count(all);
console.log(`total: ${((100 * t.detected) / t.valid).toFixed(1)} % (${t.detected} of ${t.valid}, ${t.survived} surviving) in ${Object.keys(merged.files).length} files; written to ${out}`);
