import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { openAccess } from './access/open.js';
import { DEV_MAILBOX, ensureDevCertificate } from './certs/dev.js';
import { RevocationMonitor } from './certs/revocation/monitor.js';
import { openCertificateStore, type CertificateStore } from './certs/store.js';
import { settings, type Config, type SettingKey } from './config/settings.js';
import { ConfigError } from './config/load.js';
import { dkimSigningFrom, withDkimSigning, type DkimSigning } from './dkim/signing.js';
import { Canary } from './canary/canary.js';
import { createCanary } from './canary/setup.js';
import { MemoryBudget } from './memory/budget.js';
import { messageFootprint } from './memory/footprint.js';
import { Observability } from './metrics/observability.js';
import { Pipeline } from './pipeline.js';
import { checkOpensslVersion } from './signing/openssl-version.js';
import { createEngine } from './signing/create.js';
import type { SigningEngine } from './signing/engine.js';
import { tokenFromConfig } from './signing/pkcs11/from-config.js';
import { greetingDelay } from './smtp/greeting.js';
import { MAX_MEMORY_WAIT_MS, MemoryAdmission } from './smtp/memory-admission.js';
import { describeMilterAddress, listenMilter, type MilterListener } from './milter/listener.js';
import { RelayFilter } from './milter/relay-filter.js';
import { createReceiver } from './smtp/server.js';
import { SessionPolicy } from './smtp/sessions.js';
import { FileUpstream } from './upstream/file.js';
import { listenFailure, StartupError } from './startup-error.js';
import { SmtpUpstream } from './upstream/smtp.js';
import type { Upstream } from './upstream/upstream.js';

export interface RunningRelay {
  /** The SMTP listener's address; reading it with SMIME_RELAY_LISTEN=off is an error. */
  readonly address: { host: string; port: number };
  /** The milter listener (SMIME_RELAY_MILTER), when configured; its port is the bound one. */
  readonly milter?: MilterListener;
  readonly certs: CertificateStore;
  readonly upstream: Upstream;
  /** Where /metrics, /healthz and /readyz are served (SMIME_RELAY_METRICS); undefined when off. */
  readonly metricsAddress?: { host: string; port: number };
  /** SIGHUP: re-read the certificates, the users file and the listener's TLS certificate. */
  reload(): void;
  /** Stop accepting, let transactions in progress finish, close the upstream pool. */
  close(): Promise<void>;
}

function createUpstream(config: Config, log: Logger, dkim: DkimSigning | undefined): Upstream {
  const target = config.upstream;
  if (target.kind === 'file') {
    const file = new FileUpstream(target.dir);
    return dkim ? withDkimSigning(file, dkim) : file;
  }
  return new SmtpUpstream({
    dkim,
    target,
    timeoutMs: config.upstreamTimeoutMs,
    poolSize: config.upstreamPoolSize,
    log,
    rejectUnauthorized: config.upstreamTlsVerify,
    insecureAuth: config.upstreamInsecureAuth,
  });
}

function resolveCertificatePath(config: Config, log: Logger, name: (key: SettingKey) => string): string {
  if (config.cert) return config.cert;
  if (config.upstream.kind !== 'file') {
    // With signing off nothing is signed, but the certificates still say who may send.
    const why =
      config.signing === 'off'
        ? `${name('signing')}=off forwards mail unsigned, but the relay still needs the certificates: their mailboxes are ` +
          'the senders it accepts (MAIL FROM and the From header are checked against them, so it cannot be misused as an open relay). '
        : 'The development certificate is only used with a file: upstream, because no client trusts it. ';
    throw new ConfigError(
      `SMIME_RELAY_CERT is not set. ${why}Set SMIME_RELAY_CERT (--cert) to your PEM bundle, PKCS#12 file or certificate directory.`,
    );
  }
  let dev: ReturnType<typeof ensureDevCertificate>;
  try {
    dev = ensureDevCertificate();
  } catch (e) {
    // Generating it needs openssl: say so plainly when that is what failed.
    checkOpensslVersion('openssl', 'the development certificate (no SMIME_RELAY_CERT) has to be generated');
    throw e;
  }
  if (dev.replaced) log.warn({ dir: dev.dir, reason: dev.replaced }, `generated a new development certificate in ${dev.dir}: the one there could not be used (${dev.replaced})`);
  log.warn(
    { cert: dev.bundlePath, ca: dev.caCertPath, created: dev.created },
    `using a DEVELOPMENT certificate for ${DEV_MAILBOX} that no mail client trusts; set SMIME_RELAY_CERT for real use`,
  );
  return dev.bundlePath;
}

/**
 * SMIME_RELAY_MEMORY_BUDGET, refused at start when it cannot hold even one message of
 * SMIME_RELAY_MAX_SIZE: every such message would get 452 until its client gave up on it.
 */
function memoryBudget(config: Config, name: (key: SettingKey) => string): MemoryBudget {
  const least = messageFootprint(config.maxSize, config.signing === 'on');
  if (config.memoryBudget < least) {
    const mib = (n: number) => `${Math.ceil(n / 2 ** 20)} MiB`;
    throw new ConfigError(
      `${name('memoryBudget')} (${mib(config.memoryBudget)}) cannot hold one message of ${name('maxSize')} ` +
        `(${mib(config.maxSize)}) while it is ${config.signing === 'on' ? 'signed' : 'relayed'}, which takes up to ${mib(least)}. ` +
        `Set ${name('memoryBudget')} to at least ${mib(least)}, or lower ${name('maxSize')}.`,
    );
  }
  return new MemoryBudget(config.memoryBudget);
}

/** Knobs that are not user settings; tests shorten the upstream probe interval. */
export interface RelayInternals {
  probeIntervalMs?: number;
  /** The openssl binary the openssl engine runs; fault tests point it at a script that crashes or hangs. */
  openssl?: string;
  /** Fault injection around the signing engine: self-verification tests damage what it returns. */
  wrapEngine?: (engine: SigningEngine) => SigningEngine;
  /**
   * The name the user gave each setting (TATTLER_EMAIL_SMIME_CERT, --cert, a --config-dir file),
   * so start-up errors name what the user wrote; settingNames() in config/load.ts. Default: the
   * SMIME_RELAY_* name.
   */
  names?: Partial<Record<SettingKey, string>>;
}

/** The signing path without a listener: what `serve` and `smime-relay canary --once` share. */
export interface SigningPath {
  readonly certs: CertificateStore;
  readonly engine: SigningEngine;
  readonly upstream: Upstream;
  readonly pipeline: Pipeline;
  /** Metrics of this path; SMIME_RELAY_METRICS unset (as for `canary --once`) makes every hook a no-op. */
  readonly observability: Observability;
  close(): Promise<void>;
}

/** The name the user gave each setting, for error messages (default: the SMIME_RELAY_* name). */
const settingNames = (internals: RelayInternals) => (key: SettingKey): string => internals.names?.[key] ?? settings[key].env;

/**
 * Certificates (with their keys, on disk or on a PKCS#11 token, and their revocation status),
 * the signing engine, the upstream and the pipeline over them. Resolves once the first
 * revocation status of every certificate is known, so the first message is judged like the rest.
 */
export async function openSigningPath(config: Config, log: Logger, internals: RelayInternals = {}): Promise<SigningPath> {
  const name = settingNames(internals);
  // Keys on a PKCS#11 token with an engine that cannot use them, or without the binding, stop the start.
  const token = tokenFromConfig(config, log);
  const revocation =
    config.revocation === 'off'
      ? undefined
      : new RevocationMonitor({ mode: config.revocation, intervalMs: config.revocationInterval, log, onCheckFailure: () => observability.revocationCheckFailure() });
  const observability = new Observability(config.metrics, {
    canary: config.canaryTo !== undefined,
    revoked: revocation && ((b) => revocation.status(b)?.state === 'revoked'),
  });
  let certs: CertificateStore;
  try {
    certs = openCertificateStore({
      path: resolveCertificatePath(config, log, name),
      setting: config.cert ? name('cert') : undefined,
      passwordFile: config.certPasswordFile,
      log,
      onReloadFailure: () => observability.reloadFailure(),
      keys: token,
      revocation,
    });
    // The first status of every certificate is known before the first message (each request is bounded by its timeout).
    await revocation?.ready();
  } catch (e) {
    revocation?.close();
    token?.close();
    throw e;
  }
  const created = createEngine(config, internals.openssl);
  const engine = internals.wrapEngine ? internals.wrapEngine(created) : created;
  const upstream = createUpstream(config, log, dkimSigningFrom(config));
  const pipeline = new Pipeline({
    certs,
    engine,
    upstream,
    log,
    options: {
      lmtp: config.lmtp,
      signing: config.signing,
      headerProtection: config.headerProtection,
      onMissingCert: config.onMissingCert,
      stripDkim: config.stripDkim,
      selfVerify: config.selfVerify,
      envelopeSenders: config.envelopeSenders,
    },
    metrics: observability.metrics,
  });
  return {
    certs,
    engine,
    upstream,
    pipeline,
    observability,
    async close() {
      await upstream.close();
      await engine.close();
      certs.close();
      revocation?.close();
      token?.close();
    },
  };
}

export async function startRelay(config: Config, log: Logger, internals: RelayInternals = {}): Promise<RunningRelay> {
  const name = settingNames(internals);
  if (config.listen === 'off' && !config.milter) {
    throw new ConfigError(`${name('listen')}=off turns the SMTP listener off, so ${name('milter')} must be set, or nothing would listen.`);
  }
  // First: an exposed listener without ALLOW or USERS must stop the relay before anything else happens.
  const access = await openAccess(config, log);
  // Before anything is opened: a missing or pre-3.0 openssl is a start-up error, not 451 on every message.
  if (config.engine === 'openssl') log.debug({ openssl: checkOpensslVersion(internals.openssl) }, 'openssl found');
  const budget = memoryBudget(config, name);
  const path = await openSigningPath(config, log, internals);
  const { certs, engine, upstream, pipeline, observability } = path;
  let canary: Canary | undefined;
  try {
    canary = createCanary(config, { pipeline, certs, log, reporter: observability });
  } catch (e) {
    await path.close();
    throw e;
  }
  const sessions = new SessionPolicy({
    maxClients: config.maxClients,
    maxClientsPerIp: config.maxClientsPerIp,
    maxRecipients: config.maxRecipients,
    idleTimeoutMs: config.idleTimeoutMs,
    transactionTimeoutMs: config.transactionTimeoutMs,
    shutdownTimeoutMs: config.shutdownTimeoutMs,
    log,
  });
  const server = config.listen === 'off' ? undefined : createReceiver(pipeline, {
    sessions,
    lmtp: config.lmtp,
    maxSize: config.maxSize,
    memory: new MemoryAdmission({ budget, signing: config.signing === 'on', idleTimeoutMs: config.idleTimeoutMs, metrics: observability.metrics }),
    log,
    greetingDelay: greetingDelay({ delayMs: config.greetingDelayMs, isTrusted: (a) => access.allowListed(a) }),
    access,
  });
  if (server && config.listen !== 'off') await listenSmtp(server, config.listen, name('listen'), log);
  let milter: MilterListener | undefined;
  try {
    if (config.milter) {
      milter = await listenMilter({
        address: config.milter,
        filter: new RelayFilter({
          pipeline,
          access,
          certs,
          maxSize: config.maxSize,
          // The MTA waits for the end-of-header answer (Postfix: milter_content_timeout, 300 s).
          memory: { budget, signing: config.signing === 'on', waitMs: MAX_MEMORY_WAIT_MS },
          log,
        }),
        access,
        maxConnections: config.maxClients,
        log,
      }).catch((err: Error) => {
        const address = config.milter!;
        throw address.kind === 'inet' ? listenFailure(name('milter'), address, err) : new StartupError(`${name('milter')} ${describeMilterAddress(address)}: cannot listen: ${err.message}.`);
      });
    }
  } catch (e) {
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
    throw e;
  }
  const bound = server && (server.server.address() as AddressInfo);
  log.info(
    {
      listen: bound ? `${bound.address}:${bound.port}` : 'off',
      ...(milter ? { milter: describeMilterAddress(milter.address) } : {}),
      upstream: upstream.description,
      signsFor: certs.mailboxes(),
      signing: config.signing,
      engine: engine.name,
    },
    'smime-relay listening',
  );
  try {
    await observability.serve({
      certs,
      upstream,
      log,
      live: () => (server ? server.server.listening : true) && (milter ? milter.listening() : true),
      connections: () => (server?.connections.size ?? 0) + (milter?.connections ?? 0),
      stress: () => sessions.stressed,
      memory: budget,
      probeIntervalMs: internals.probeIntervalMs,
      setting: name('metrics'),
    });
  } catch (e) {
    await Promise.all([server && new Promise<void>((resolve) => server.close(() => resolve())), milter?.close(config.shutdownTimeoutMs)]);
    throw e;
  }
  canary?.start();
  return {
    get address() {
      if (!bound) throw new Error('the SMTP listener is off (SMIME_RELAY_LISTEN=off)');
      return { host: bound.address, port: bound.port };
    },
    milter,
    metricsAddress: observability.address,
    certs,
    upstream,
    reload() {
      certs.reload();
      access.reload(server);
    },
    async close() {
      await canary?.close();
      // Finish what is in progress (bounded by SMIME_RELAY_SHUTDOWN_TIMEOUT_MS), then the pool.
      await Promise.all([sessions.drain(), milter?.close(config.shutdownTimeoutMs)]);
      // Last, so /readyz answers 503 while transactions drain.
      await observability.close();
      await path.close();
    },
  };
}

/** Binds the SMTP listener; its errors after that are logged, not fatal. */
async function listenSmtp(server: ReturnType<typeof createReceiver>, listen: { host: string; port: number }, setting: string, log: Logger): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const failed = (err: Error) => reject(listenFailure(setting, listen, err));
    server.once('error', failed);
    server.listen(listen.port, listen.host, () => {
      server.off('error', failed);
      resolve();
    });
  });
  server.on('error', (err) => log.error({ err }, 'SMTP listener error'));
}
