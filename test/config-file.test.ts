import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { loadConfig } from '../src/config/load.js';
import { settingList } from '../src/config/settings.js';
import { configExampleYaml } from '../src/config/table.js';

const EXAMPLE = fileURLToPath(new URL('../config/smime-relay.example.yaml', import.meta.url));
const text = readFileSync(EXAMPLE, 'utf8');
const example = parseYaml(text) as Record<string, unknown>;

describe('config/smime-relay.example.yaml', () => {
  it('loads through --config as it ships: every key is known and every value is valid', () => {
    const { config, sources } = loadConfig({ configFile: EXAMPLE, env: {} });
    expect(config.listen).toEqual({ host: '127.0.0.1', port: 2525 });
    // Keys with a value come from the file; empty ones fall through to the (unset) default.
    for (const s of settingList) {
      const expected = example[s.key] === null ? 'default' : 'config-file';
      expect(sources[s.key]?.source, s.key).toBe(expected);
    }
  });

  it('is exactly what `smime-relay config --example` generates from the settings (npm run docs)', () => {
    expect(text).toBe(configExampleYaml());
  });

  it('holds every setting, and nothing else', () => {
    expect(Object.keys(example).sort()).toEqual(settingList.map((s) => s.key).sort());
  });

  it("shows each setting's default, so copying the file changes nothing", () => {
    for (const s of settingList) {
      const value = example[s.key];
      if (s.default === undefined) expect(value, s.key).toBeNull();
      else expect(String(value), s.key).toBe(s.default);
    }
  });

  it('explains each setting in a comment that names its environment variable and flag', () => {
    const lines = text.split('\n');
    for (const s of settingList) {
      const at = lines.findIndex((l) => l.startsWith(`${s.key}:`));
      const comment: string[] = [];
      for (let i = at - 1; i >= 0 && lines[i]!.startsWith('#'); i--) comment.unshift(lines[i]!.replace(/^# ?/, ''));
      const said = comment.join(' ');
      expect(said, s.key).toContain(s.env);
      expect(said, s.key).toContain(s.flag);
      expect(said.length, `${s.key} has no explanation`).toBeGreaterThan(s.env.length + s.flag.length + 20);
    }
  });

  it('loads the same when converted to the JSON form --config also accepts', () => {
    const dir = mkdtempSync(join(tmpdir(), 'smime-relay-config-'));
    try {
      const json = join(dir, 'smime-relay.json');
      writeFileSync(json, JSON.stringify(example));
      expect(loadConfig({ configFile: json, env: {} }).config).toEqual(loadConfig({ configFile: EXAMPLE, env: {} }).config);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
