import pino, { type Logger } from 'pino';

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
