import { mkdtempSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../src/config/load.js';
import { settingList } from '../src/config/settings.js';
import { configTableMarkdown } from '../src/config/table.js';

const tmp = () => mkdtempSync(join(tmpdir(), 'smime-relay-config-'));

describe('configuration sources and precedence', () => {
  it('uses the documented defaults when nothing is set', () => {
    const { config, sources } = loadConfig({ env: {} });
    expect(config.listen).toEqual({ host: '127.0.0.1', port: 2525 });
    expect(config.upstream).toMatchObject({ kind: 'file', dir: 'outbox' });
    expect(config.maxSize).toBe(25 * 1024 * 1024);
    expect(config.logLevel).toBe('info');
    expect(config.cert).toBeUndefined();
    expect(sources.listen!.source).toBe('default');
  });

  it('flags beat env, env beats the config file, the file beats the config dir', () => {
    const dir = tmp();
    const file = join(dir, 'relay.yaml');
    writeFileSync(file, 'listen: "127.0.0.1:3000"\nmaxSize: 1000\nlogLevel: warn\ncert: /from/file.pem\n');
    const cfgDir = join(dir, 'conf.d');
    mkdirSync(cfgDir);
    for (const [k, v] of Object.entries({ SMIME_RELAY_LISTEN: '127.0.0.1:4000', SMIME_RELAY_MAX_SIZE: '2000', LOG_LEVEL: 'error', SMIME_RELAY_CERT: '/from/dir.pem', SMIME_RELAY_SIGNING: 'off\n' })) {
      writeFileSync(join(cfgDir, k), v);
    }
    const { config, sources } = loadConfig({
      flags: { listen: '127.0.0.1:5000' },
      env: { SMIME_RELAY_LISTEN: '127.0.0.1:6000', SMIME_RELAY_MAX_SIZE: '3000' },
      configFile: file,
      configDir: cfgDir,
    });
    expect(config.listen).toEqual({ host: '127.0.0.1', port: 5000 });
    expect(config.maxSize).toBe(3000);
    expect(config.logLevel).toBe('warn');
    expect(config.cert).toBe('/from/file.pem');
    expect(config.signing).toBe('off'); // only the config dir sets it; content is trimmed
    expect(sources.listen!.source).toBe('flag');
    expect(sources.maxSize!.source).toBe('env');
    expect(sources.logLevel!.source).toBe('config-file');
    expect(sources.signing).toEqual({ source: 'config-dir', name: join(cfgDir, 'SMIME_RELAY_SIGNING') });
  });

  it('accepts TATTLER_EMAIL_SMIME_CERT as an alias, in the env and in a Tattler config dir', () => {
    expect(loadConfig({ env: { TATTLER_EMAIL_SMIME_CERT: '/a.pem' } }).config.cert).toBe('/a.pem');
    expect(loadConfig({ env: { TATTLER_EMAIL_SMIME_CERT: '/a.pem', SMIME_RELAY_CERT: '/b.pem' } }).config.cert).toBe('/b.pem');
    const dir = tmp();
    writeFileSync(join(dir, 'TATTLER_EMAIL_SMIME_CERT'), '  /c.pem \n');
    writeFileSync(join(dir, 'TATTLER_UNRELATED_SETTING'), 'ignored');
    expect(loadConfig({ env: {}, configDir: dir }).config.cert).toBe('/c.pem');
  });

  it('parses upstream URLs and masks the password', () => {
    const { config } = loadConfig({ env: { SMIME_RELAY_UPSTREAM: 'smtps://user:s3cret@mail.example.com' } });
    expect(config.upstream).toMatchObject({ kind: 'smtp', host: 'mail.example.com', port: 465, secure: true, user: 'user', pass: 's3cret' });
    expect(config.upstream.display).not.toContain('s3cret');
    expect(loadConfig({ env: { SMIME_RELAY_UPSTREAM: 'smtp://[::1]:10026' } }).config.upstream).toMatchObject({ host: '::1', port: 10026, secure: false });
  });

  it('rejects every bad value at once, naming the variable, the flag and what is expected', () => {
    let error: unknown;
    try {
      loadConfig({ env: { SMIME_RELAY_LISTEN: 'localhost', SMIME_RELAY_UPSTREAM: 'http://x', SMIME_RELAY_MAX_SIZE: 'big', LOG_LEVEL: 'loud' } });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ConfigError);
    const msg = (error as Error).message;
    expect(msg).toContain('SMIME_RELAY_LISTEN (--listen');
    expect(msg).toContain('expected host:port');
    expect(msg).toContain('SMIME_RELAY_UPSTREAM');
    expect(msg).toContain('SMIME_RELAY_MAX_SIZE');
    expect(msg).toContain('LOG_LEVEL');
  });

  it('rejects an unknown key in a config file', () => {
    const file = join(tmp(), 'c.json');
    writeFileSync(file, JSON.stringify({ lisen: '1.2.3.4:25' }));
    expect(() => loadConfig({ env: {}, configFile: file })).toThrow(/unknown key 'lisen'/);
  });

  it('the README configuration table is exactly the generated one (smime-relay config --markdown)', () => {
    const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
    const start = readme.indexOf('<!-- config-table:start -->\n');
    const end = readme.indexOf('<!-- config-table:end -->');
    expect(start, 'README has the config-table markers').toBeGreaterThan(0);
    expect(readme.slice(start + '<!-- config-table:start -->\n'.length, end)).toBe(configTableMarkdown());
    for (const s of settingList) expect(configTableMarkdown()).toContain(`\`${s.env}\``);
  });
});
