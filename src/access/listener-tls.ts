import { X509Certificate } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { createSecureContext } from 'node:tls';

/**
 * TLS on the SMTP listener (SMIME_RELAY_TLS_CERT, _KEY, _MODE).
 * - starttls: offer STARTTLS; plaintext sessions still work (AUTH only on loopback, see policy.ts).
 * - required: offer STARTTLS and refuse MAIL and AUTH until the client used it (RFC 3207 §4, 530).
 * - implicit: TLS from the first byte (the "smtps"/465 style, RFC 8314).
 */
export type TlsMode = 'starttls' | 'implicit' | 'required';

export interface ListenerTls {
  readonly mode: TlsMode;
  readonly key: Buffer;
  readonly cert: Buffer;
  /** Things an operator should know but that do not stop the relay (permissions, expiry). */
  readonly warnings: string[];
}

export interface ListenerTlsSettings {
  tlsCert?: string;
  tlsKey?: string;
  tlsMode?: TlsMode;
}

export class ListenerTlsError extends Error {
  override name = 'ListenerTlsError';
}

function readPem(path: string, env: string): Buffer {
  try {
    return readFileSync(path);
  } catch (e) {
    throw new ListenerTlsError(`${env}: cannot read ${path} (${(e as Error).message})`);
  }
}

/** Reads and checks the listener's certificate and key; undefined when TLS is not configured. */
export function loadListenerTls(s: ListenerTlsSettings, now = new Date()): ListenerTls | undefined {
  if (!s.tlsCert && !s.tlsKey) {
    if (s.tlsMode) {
      throw new ListenerTlsError(
        `SMIME_RELAY_TLS_MODE=${s.tlsMode} needs a server certificate: set SMIME_RELAY_TLS_CERT and SMIME_RELAY_TLS_KEY (PEM files), or unset SMIME_RELAY_TLS_MODE`,
      );
    }
    return undefined;
  }
  if (!s.tlsCert || !s.tlsKey) {
    const missing = s.tlsCert ? 'SMIME_RELAY_TLS_KEY' : 'SMIME_RELAY_TLS_CERT';
    throw new ListenerTlsError(`SMIME_RELAY_TLS_CERT and SMIME_RELAY_TLS_KEY go together: ${missing} is not set`);
  }
  const cert = readPem(s.tlsCert, 'SMIME_RELAY_TLS_CERT');
  const key = readPem(s.tlsKey, 'SMIME_RELAY_TLS_KEY');
  try {
    createSecureContext({ key, cert });
  } catch (e) {
    // OpenSSL's text ("key values mismatch", "no start line") says what is wrong; never the key itself.
    throw new ListenerTlsError(
      `SMIME_RELAY_TLS_CERT ${s.tlsCert} and SMIME_RELAY_TLS_KEY ${s.tlsKey} cannot be used together: ${(e as Error).message}`,
    );
  }
  const warnings: string[] = [];
  const mode = statSync(s.tlsKey).mode;
  if (mode & 0o077) {
    warnings.push(`SMIME_RELAY_TLS_KEY ${s.tlsKey} is readable by group or others (mode ${(mode & 0o777).toString(8)}); chmod 600 it`);
  }
  try {
    const leaf = new X509Certificate(cert);
    if (new Date(leaf.validTo) < now) warnings.push(`SMIME_RELAY_TLS_CERT ${s.tlsCert} expired on ${leaf.validTo}; clients that verify will refuse STARTTLS`);
  } catch {
    // createSecureContext accepted it; a parse quirk here is not worth refusing to start.
  }
  return { mode: s.tlsMode ?? 'starttls', key, cert, warnings };
}
