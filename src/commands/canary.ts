import type { Logger } from 'pino';
import { openSigningPath } from '../app.js';
import { createCanary } from '../canary/setup.js';
import type { Config } from '../config/settings.js';
import { checkOpensslVersion } from '../signing/openssl-version.js';
import { render } from './diagnose.js';

export const CANARY_HELP = `Usage: smime-relay canary --once [--config FILE] [--config-dir DIR] [settings...]

Runs one canary round and exits: signs a test message as SMIME_RELAY_CANARY_FROM through the
relay's own pipeline and SMIME_RELAY_UPSTREAM to SMIME_RELAY_CANARY_TO, reads it back over
SMIME_RELAY_CANARY_IMAP, diagnoses it as 'smime-relay diagnose' does, and deletes it. The admin's
first check of a mail path; 'serve' runs the same round every SMIME_RELAY_CANARY_INTERVAL.

Settings are read as 'serve' reads them (flags, environment, --config, --config-dir).

Exit status: 0 intact, 1 altered (the change is named), 2 missing (not sent, or not found in the
mailbox in time) or a configuration error.
`;

/** `smime-relay canary --once`: one round, printed like diagnose, with diagnose's exit codes. */
export async function canaryOnce(config: Config, log: Logger, out: (s: string) => void): Promise<number> {
  if (!config.canaryTo || !config.canaryImap) {
    out('smime-relay canary: set SMIME_RELAY_CANARY_TO and SMIME_RELAY_CANARY_IMAP (see smime-relay canary --help)\n');
    return 2;
  }
  if (config.engine === 'openssl') checkOpensslVersion();
  // One round and exit: no metrics listener.
  const path = await openSigningPath({ ...config, metrics: undefined }, log);
  try {
    const canary = createCanary(config, { pipeline: path.pipeline, certs: path.certs, log })!;
    const outcome = await canary.runOnce();
    out(`canary ${outcome.result} (${outcome.messageId})\n${outcome.diagnosis ? render(outcome.diagnosis, false) : outcome.summary + '\n'}`);
    return outcome.exitCode;
  } finally {
    await path.close();
  }
}
