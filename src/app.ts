import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { loadPemBundle, type CertificateBundle } from './certs/bundle.js';
import { DEV_MAILBOX, ensureDevCertificate } from './certs/dev.js';
import type { CertificateStore } from './certs/store.js';
import type { Config } from './config/settings.js';
import { ConfigError } from './config/load.js';
import { Pipeline } from './pipeline.js';
import { NativeEngine } from './signing/native.js';
import { OpensslEngine } from './signing/openssl.js';
import type { SigningEngine } from './signing/engine.js';
import { createReceiver } from './smtp/server.js';
import { FileUpstream } from './upstream/file.js';
import { SmtpUpstream } from './upstream/smtp.js';
import type { Upstream } from './upstream/upstream.js';

export interface RunningRelay {
  readonly address: { host: string; port: number };
  readonly certs: CertificateStore;
  readonly upstream: Upstream;
  /** Stop accepting, let transactions in progress finish, close the upstream pool. */
  close(): Promise<void>;
}

/** Temporary: one PEM bundle, read once. */
function singleBundleStore(path: string): CertificateStore {
  const bundle: CertificateBundle = loadPemBundle(path);
  return {
    mailboxes: () => [...bundle.mailboxes],
    lookup: (m) => (bundle.mailboxes.includes(m) ? { kind: 'ok', bundle } : { kind: 'unknown' }),
    reload: () => {},
    close: () => {},
  };
}

function createUpstream(config: Config, log: Logger): Upstream {
  const target = config.upstream;
  if (target.kind === 'file') return new FileUpstream(target.dir);
  return new SmtpUpstream({ target, timeoutMs: config.upstreamTimeoutMs, poolSize: config.upstreamPoolSize, log });
}

function resolveCertificatePath(config: Config, log: Logger): string {
  if (config.cert) return config.cert;
  if (config.upstream.kind !== 'file') {
    throw new ConfigError(
      'SMIME_RELAY_CERT is not set. The development certificate is only used with a file: upstream, because ' +
        'no client trusts it. Set SMIME_RELAY_CERT (--cert) to your PEM bundle.',
    );
  }
  const dev = ensureDevCertificate();
  log.warn(
    { cert: dev.bundlePath, ca: dev.caCertPath, created: dev.created },
    `using a DEVELOPMENT certificate for ${DEV_MAILBOX} that no mail client trusts; set SMIME_RELAY_CERT for real use`,
  );
  return dev.bundlePath;
}

export async function startRelay(config: Config, log: Logger): Promise<RunningRelay> {
  const certs = singleBundleStore(resolveCertificatePath(config, log));
  const engine: SigningEngine =
    config.engine === 'native' ? new NativeEngine() : new OpensslEngine({ timeoutMs: config.signTimeoutMs });
  const upstream = createUpstream(config, log);
  const pipeline = new Pipeline({
    certs,
    engine,
    upstream,
    log,
    options: { signing: config.signing, headerProtection: 'off' },
  });
  const server = createReceiver(pipeline, { maxSize: config.maxSize, log });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.listen.port, config.listen.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  server.on('error', (err) => log.error({ err }, 'SMTP listener error'));
  const bound = server.server.address() as AddressInfo;
  log.info(
    { listen: `${bound.address}:${bound.port}`, upstream: upstream.description, signsFor: certs.mailboxes(), signing: config.signing, engine: engine.name },
    'smime-relay listening',
  );
  return {
    address: { host: bound.address, port: bound.port },
    certs,
    upstream,
    async close() {
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await upstream.close();
      await engine.close();
      certs.close();
    },
  };
}
