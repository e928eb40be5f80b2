import type { X509Certificate } from 'node:crypto';
import { checkIntegrity } from './integrity.js';
import { NotSignedError } from './split.js';

/**
 * self-verify: reads the exact bytes about to be forwarded back as a recipient would (split,
 * digest, signature with the certificate the relay signed with) and returns why they would not
 * verify, or undefined when they do. Nothing of the signing step is reused, so a fault in the
 * engine, the wrapper or anything in between is caught before the upstream sees the message.
 */
export function selfVerificationFailure(message: Buffer, signer: X509Certificate): string | undefined {
  try {
    const result = checkIntegrity(message, { signer });
    return result.ok ? undefined : result.reason;
  } catch (e) {
    if (e instanceof NotSignedError) return e.message;
    throw e;
  }
}
