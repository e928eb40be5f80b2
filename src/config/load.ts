import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { OWN_PREFIXES, closestName, isUnknownSetting, knownNames } from './names.js';
import { settingList, type Config, type Setting, type SettingKey } from './settings.js';

/** Where a value came from, for `config --print` and error messages. */
export type Source = 'flag' | 'env' | 'config-file' | 'config-dir' | 'default';

export interface LoadedConfig {
  config: Config;
  sources: Record<string, { source: Source; name: string }>;
}

export interface ConfigInputs {
  /** Values given as --flags, keyed by setting key. */
  flags?: Record<string, string | undefined>;
  env?: NodeJS.ProcessEnv;
  /** Path of a YAML or JSON file (--config). */
  configFile?: string;
  /** Tattler-style directory: one file per variable name, trimmed content is the value (--config-dir). */
  configDir?: string;
}

export class ConfigError extends Error {
  override name = 'ConfigError';
}

function readConfigFile(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new ConfigError(`--config ${path}: cannot read the file (${(e as Error).message})`);
  }
  let data: unknown;
  try {
    data = path.endsWith('.json') ? JSON.parse(text) : parseYaml(text);
  } catch (e) {
    throw new ConfigError(`--config ${path}: not valid ${path.endsWith('.json') ? 'JSON' : 'YAML'}: ${(e as Error).message}`);
  }
  if (data === null || data === undefined) return {};
  if (typeof data !== 'object' || Array.isArray(data)) {
    throw new ConfigError(`--config ${path}: expected a mapping of setting keys to values`);
  }
  const known = new Set(settingList.map((s) => s.key));
  for (const k of Object.keys(data)) {
    if (!known.has(k)) {
      throw new ConfigError(`--config ${path}: unknown key '${k}'. Known keys: ${[...known].join(', ')}`);
    }
  }
  return data as Record<string, unknown>;
}

function readConfigDir(dir: string, unknown: string[]): Map<string, string> {
  if (!existsSync(dir) || !statSync(dir).isDirectory()) {
    throw new ConfigError(`--config-dir ${dir}: not a directory`);
  }
  const values = new Map<string, string>();
  for (const name of readdirSync(dir)) {
    if (name.startsWith('.')) continue;
    const path = join(dir, name);
    // envdir directories often hold the app's other keys too; only the relay's namespaces count.
    if (isUnknownSetting(name)) unknown.push(`${path} (--config-dir file) ${didYouMean(name)}`);
    if (!knownNames.has(name) || !statSync(path).isFile()) continue;
    values.set(name, readFileSync(path, 'utf8').trim());
  }
  return values;
}

const didYouMean = (name: string) => `is not a setting; did you mean ${closestName(name)}?`;

/** Unknown names in the relay's namespaces, from the environment (see names.ts for which count). */
function unknownEnv(env: NodeJS.ProcessEnv): string[] {
  return Object.keys(env)
    .filter(isUnknownSetting)
    .sort()
    .map((name) => `${name} (environment variable) ${didYouMean(name)}`);
}

function pick(s: Setting, inputs: ConfigInputs, file: Record<string, unknown>, dir: Map<string, string>) {
  const flag = inputs.flags?.[s.key];
  if (flag !== undefined) return { value: flag, source: 'flag' as const, name: s.flag };
  const env = inputs.env ?? {};
  for (const name of [s.env, ...(s.aliases ?? [])]) {
    const v = env[name];
    if (v !== undefined && v !== '') return { value: v, source: 'env' as const, name };
  }
  const fromFile = file[s.key];
  if (fromFile !== undefined && fromFile !== null) {
    return { value: String(fromFile), source: 'config-file' as const, name: `${inputs.configFile}:${s.key}` };
  }
  for (const name of [s.env, ...(s.aliases ?? [])]) {
    const v = dir.get(name);
    if (v !== undefined && v !== '') return { value: v, source: 'config-dir' as const, name: join(inputs.configDir!, name) };
  }
  return { value: s.default, source: 'default' as const, name: 'default' };
}

/**
 * Resolves every setting with the precedence flags > environment > config file > config dir >
 * default, and validates all of them, reporting every problem at once with the key and the fix.
 */
export function loadConfig(inputs: ConfigInputs): LoadedConfig {
  const file = inputs.configFile ? readConfigFile(inputs.configFile) : {};
  // A misspelled name would otherwise be ignored silently, and its default used instead.
  const unknown = unknownEnv(inputs.env ?? {});
  const dir = inputs.configDir ? readConfigDir(inputs.configDir, unknown) : new Map<string, string>();
  const config: Record<string, unknown> = {};
  const sources: LoadedConfig['sources'] = {};
  const problems: string[] = [...unknown];
  for (const s of settingList) {
    const { value, source, name } = pick(s, inputs, file, dir);
    sources[s.key] = { source, name };
    if (value === undefined) {
      config[s.key] = undefined;
      continue;
    }
    const result = s.parse.safeParse(value);
    if (result.success) config[s.key] = result.data;
    else {
      const why = result.error.issues.map((i) => i.message).join('; ');
      problems.push(`${s.env} (${s.flag}, from ${source === 'default' ? 'default' : name}): ${why}`);
    }
  }
  if (problems.length) {
    const hint = unknown.length ? `\nNames starting with ${OWN_PREFIXES.join(' or ')} must be settings; \`smime-relay serve --help\` lists them.` : '';
    throw new ConfigError(`invalid configuration:\n  ${problems.join('\n  ')}${hint}`);
  }
  return { config: config as Config, sources };
}

/**
 * The name under which the user set a setting, for error texts: the environment variable as
 * written (TATTLER_EMAIL_SMIME_CERT, not SMIME_RELAY_CERT), the --flag, the config file key or
 * the --config-dir file; the main environment name when the default applies.
 */
export function settingNames(sources: LoadedConfig['sources']): Partial<Record<SettingKey, string>> {
  const names: Partial<Record<SettingKey, string>> = {};
  for (const s of settingList) {
    const from = sources[s.key];
    names[s.key as SettingKey] = !from || from.source === 'default' ? s.env : from.name;
  }
  return names;
}
