import type { Logger } from 'pino';
import type { CertificateStore } from '../certs/store.js';
import { ConfigError } from '../config/load.js';
import type { Config } from '../config/settings.js';
import { toMailbox } from '../mime/mailbox.js';
import type { Pipeline } from '../pipeline.js';
import { Canary, type CanaryReporter } from './canary.js';
import { ImapCanaryMailbox } from './mailbox.js';

/**
 * The canary the configuration asks for, or undefined when SMIME_RELAY_CANARY_TO is unset.
 * A half or wrong canary configuration stops the start, like any other bad setting.
 */
export function createCanary(
  config: Config,
  deps: { pipeline: Pick<Pipeline, 'process'>; certs: CertificateStore; log: Logger; reporter?: CanaryReporter },
): Canary | undefined {
  if (!config.canaryTo && !config.canaryImap) return undefined;
  if (!config.canaryTo || !config.canaryImap) {
    throw new ConfigError(
      `${config.canaryTo ? 'SMIME_RELAY_CANARY_IMAP' : 'SMIME_RELAY_CANARY_TO'} is not set: the canary needs both SMIME_RELAY_CANARY_TO (where it is sent) and SMIME_RELAY_CANARY_IMAP (how it is read back)`,
    );
  }
  const covered = deps.certs.mailboxes();
  const from = config.canaryFrom ? toMailbox(config.canaryFrom) : covered[0];
  if (!from || !covered.includes(from)) {
    throw new ConfigError(`SMIME_RELAY_CANARY_FROM ${config.canaryFrom ?? '(unset)'} is not a mailbox this relay signs for; it signs for: ${covered.join(', ') || '(none)'}`);
  }
  return new Canary({
    pipeline: deps.pipeline,
    mailbox: new ImapCanaryMailbox(config.canaryImap),
    from,
    to: config.canaryTo,
    intervalMs: config.canaryInterval,
    log: deps.log.child({ component: 'canary' }),
    reporter: deps.reporter,
  });
}
