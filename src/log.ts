import pino, { type Logger } from 'pino';
import { ConfigError } from './config/load.js';

export type { Logger };

/**
 * One JSON line per event. Anything that could hold a secret is redacted by path, so a careless
 * log call cannot leak a password, an AUTH payload or key material.
 */
export function createLogger(level: string, destination?: pino.DestinationStream): Logger {
  return pino(
    {
      level,
      base: { name: 'smime-relay' },
      redact: {
        paths: ['password', 'pass', '*.password', '*.pass', 'auth.*', '*.auth', 'key', '*.key', 'keyPem', '*.keyPem'],
        censor: '[redacted]',
      },
    },
    destination ?? pino.destination({ fd: 2, sync: false }),
  );
}

/**
 * LOG_FORMAT=pretty: human-readable lines on stderr through pino-pretty. It is an optional
 * package (log shippers want JSON, so production installs need not carry it), hence the dynamic
 * import and the error that says how to get it.
 */
export async function prettyDestination(): Promise<pino.DestinationStream> {
  const name = 'pino-pretty';
  let mod: { default: (options: Record<string, unknown>) => pino.DestinationStream };
  try {
    mod = (await import(name)) as typeof mod;
  } catch (e) {
    if ((e as { code?: string }).code !== 'ERR_MODULE_NOT_FOUND') throw e;
    throw new ConfigError(
      'LOG_FORMAT=pretty (--log-format pretty) needs the optional package pino-pretty, which is not installed. ' +
        'Install it with `npm install pino-pretty`, or use LOG_FORMAT=json.',
    );
  }
  return mod.default({ destination: 2, colorize: process.stderr.isTTY ?? false, translateTime: 'SYS:standard', ignore: 'pid,hostname' });
}
