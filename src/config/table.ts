import { settingList, type Setting } from './settings.js';

export const defaultText = (s: Setting): string => s.defaultText ?? (s.default === undefined ? '(unset)' : s.default);

/** The README's configuration table, generated from the settings so the two cannot drift. */
export function configTableMarkdown(): string {
  const rows = settingList.map((s) => {
    const env = `\`${s.env}\`` + (s.aliases?.length ? ` (alias ${s.aliases.map((a) => `\`${a}\``).join(', ')})` : '');
    const def = s.defaultText ?? (s.default === undefined ? '(unset)' : `\`${s.default}\``);
    return `| ${env} | \`${s.flag}\` | \`${s.key}\` | ${def} | ${s.doc.replace(/\|/g, '\\|')} |`;
  });
  return ['| environment | flag | config key | default | meaning |', '|---|---|---|---|---|', ...rows].join('\n') + '\n';
}
