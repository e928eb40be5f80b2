import { settingList } from './settings.js';

/**
 * Which names are the relay's to judge. `SMIME_RELAY_*` is its own namespace, and Tattler, whose
 * S/MIME setting the relay takes over, has exactly one name under `TATTLER_EMAIL_SMIME_`
 * (TATTLER_EMAIL_SMIME_CERT). An unknown name under either prefix is a typo that would otherwise
 * be ignored silently (SMIME_RELAY_UPSTREM left mail in ./outbox), so it stops the relay. Every
 * other name (TATTLER_EMAIL_SENDER, DATABASE_URL, PATH) belongs to someone else: an envdir
 * directory shared with the app holds the app's own keys, and the environment holds everything.
 */
export const OWN_PREFIXES = ['SMIME_RELAY_', 'TATTLER_EMAIL_SMIME_'] as const;

export const knownNames: ReadonlySet<string> = new Set(settingList.flatMap((s) => [s.env, ...(s.aliases ?? [])]));

/** True for a name in the relay's namespaces that no setting has. */
export function isUnknownSetting(name: string): boolean {
  return OWN_PREFIXES.some((p) => name.startsWith(p)) && !knownNames.has(name);
}

/** The known name closest to `name` (edit distance), for "did you mean …?". */
export function closestName(name: string): string {
  let best = '';
  let bestDistance = Infinity;
  for (const known of knownNames) {
    const d = editDistance(name, known);
    if (d < bestDistance) [best, bestDistance] = [known, d];
  }
  return best;
}

/** Levenshtein distance: insertions, deletions and substitutions each cost 1. */
function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min(previous[j]! + 1, current[j - 1]! + 1, previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    previous = current;
  }
  return previous[b.length]!;
}
