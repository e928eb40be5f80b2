import { watch, realpathSync, statSync, type FSWatcher } from 'node:fs';
import { dirname } from 'node:path';
import type { Logger } from 'pino';
import type { Mailbox } from '../mime/mailbox.js';
import type { KeySource } from '../signing/key.js';
import { describeForLog, type CertificateBundle } from './bundle.js';
import { expiryWarnings } from './expiry.js';
import { CertificateError, type Finding } from './findings.js';
import { loadPath, pathSignature, type LoadedBundle } from './load.js';
import type { RevocationGate } from './revocation/monitor.js';
import { validityFindings } from './validate.js';

/** What the store knows about a mailbox at the moment a message needs signing. */
export type CertificateLookup =
  | { kind: 'ok'; bundle: CertificateBundle }
  /** A certificate is configured for this mailbox but cannot be used now (expired, broken). */
  | { kind: 'unavailable'; reason: string }
  /** No certificate was ever configured for this mailbox. */
  | { kind: 'unknown' };

export interface CertificateStore {
  /** Every mailbox some configured certificate covers, for error texts. */
  mailboxes(): Mailbox[];
  lookup(mailbox: Mailbox): CertificateLookup;
  /** Every certificate loaded now, valid or not (expired ones too), for the expiry gauge. */
  bundles(): CertificateBundle[];
  /** Re-read the configured path (SIGHUP, file change). */
  reload(): void;
  close(): void;
}

export interface CertificateStoreOptions {
  /** A PEM bundle, a PKCS#12 file, or a directory of them (SMIME_RELAY_CERT). */
  path: string;
  /** The name the path was configured under (TATTLER_EMAIL_SMIME_CERT, --cert…), for error texts; default SMIME_RELAY_CERT. */
  setting?: string;
  /** SMIME_RELAY_CERT_PASSWORD_FILE: passphrase of encrypted keys and PKCS#12 files, first line. */
  passwordFile?: string;
  log: Logger;
  /** The clock validity is judged by; tests move it. */
  now?: () => Date;
  /** Called when a changed file cannot be used and the last good certificate stays in service. */
  onReloadFailure?: (err: CertificateError) => void;
  /** A lookup re-checks the path (realpath + stat) at most this often. Default 1000 ms. */
  recheckMs?: number;
  /** After a failed reload, look again this much later before calling it an error: `ln -sf` and `cp` leave short gaps. Default 500 ms. */
  settleMs?: number;
  openssl?: string;
  /** Where certificates without a private key in their file find it: a PKCS#11 token. */
  keys?: KeySource;
  /** Revocation of the loaded certificates (SMIME_RELAY_REVOCATION); a refused one is `unavailable`. */
  revocation?: RevocationGate;
}

interface SourceState {
  /** Newest structurally usable load first; an older one stays only while the newest is not valid yet. */
  loaded: LoadedBundle[];
  /** The latest load of this source failed; kept for the "unavailable" reason when nothing loaded. */
  failure?: { reason: string; mailboxes: readonly Mailbox[] };
}

const DAY = 86_400_000;
const within = (b: CertificateBundle, now: Date) => b.notBefore <= now && now <= b.notAfter;
const errorsOf = (fs: readonly Finding[]) => fs.filter((f) => f.severity === 'error');

/**
 * Opens the configured certificates and keeps them current: a watcher on the containing
 * directory plus a cheap realpath/stat check on use, so a re-pointed symlink, a file replaced in
 * place or a Kubernetes `..data` swap takes effect within about a second, without a restart.
 * A broken replacement never displaces the last good certificate.
 *
 * Throws CertificateError when nothing configured can ever sign (missing path, every bundle
 * broken). A bundle that is merely expired or not yet valid does not stop start-up: its mailboxes
 * get `unavailable` (451, mail waits) until it is renewed.
 */
export function openCertificateStore(opts: CertificateStoreOptions): CertificateStore {
  const store = new WatchedStore(opts);
  try {
    store.start();
  } catch (e) {
    store.close();
    throw e;
  }
  return store;
}

class WatchedStore implements CertificateStore {
  private readonly log: Logger;
  private readonly now: () => Date;
  private readonly recheckMs: number;
  private readonly settleMs: number;
  private sources = new Map<string, SourceState>();
  private index = new Map<Mailbox, { good: CertificateBundle[]; broken: string[] }>();
  private signature = '';
  private lastCheck = 0;
  private watchers = new Map<string, FSWatcher>();
  private debounce: NodeJS.Timeout | undefined;
  private settle: NodeJS.Timeout | undefined;
  private daily: NodeJS.Timeout | undefined;
  private readonly warned = new Set<string>();
  private readonly chosen = new Map<Mailbox, string>();
  private closed = false;
  /**
   * What the first load has to say, logged once the relay is sure to start. When nothing can sign,
   * start() throws instead and its message is the one thing the admin reads, said once.
   */
  private startupLines: (() => void)[] | undefined = [];

  constructor(private readonly opts: CertificateStoreOptions) {
    this.log = opts.log.child({ component: 'certs' });
    this.now = opts.now ?? (() => new Date());
    this.recheckMs = opts.recheckMs ?? 1000;
    this.settleMs = opts.settleMs ?? 500;
  }

  start(): void {
    this.load('startup');
    const lines = this.startupLines ?? [];
    this.startupLines = undefined;
    const usable = [...this.sources.values()].some((s) => s.loaded.length > 0);
    if (!usable) {
      const reasons = [...this.sources.values()].map((s) => s.failure?.reason).filter(Boolean);
      const setting = this.opts.setting ?? 'SMIME_RELAY_CERT';
      throw new CertificateError(
        `${setting} names '${this.opts.path}', which holds no usable certificate:\n${reasons.length ? reasons.join('\n') : `  the directory holds no certificate bundles`}\nRun \`smime-relay check-cert '${this.opts.path}'\` for details.`,
      );
    }
    for (const line of lines) line();
    this.rewatch();
    this.checkExpiry();
    this.daily = setInterval(() => this.checkExpiry(), DAY);
    this.daily.unref();
  }

  mailboxes(): Mailbox[] {
    return [...this.index.keys()].sort();
  }

  /** Re-reads the path when it changed, at most once per recheckMs: cheap enough for every use. */
  private recheck(): void {
    const t = Date.now();
    if (t - this.lastCheck < this.recheckMs) return;
    this.lastCheck = t;
    this.load('use');
  }

  bundles(): CertificateBundle[] {
    this.recheck();
    return [...this.sources.values()].flatMap((s) => s.loaded.flatMap((l) => (l.bundle ? [l.bundle] : [])));
  }

  lookup(mailbox: Mailbox): CertificateLookup {
    this.recheck();
    const entry = this.index.get(mailbox);
    if (!entry) return { kind: 'unknown' };
    const now = this.now();
    const refusal = (b: CertificateBundle) => this.opts.revocation?.refusal(b);
    const valid = entry.good.filter((b) => within(b, now) && !refusal(b)).sort((a, b) => b.notAfter.getTime() - a.notAfter.getTime());
    const best = valid[0];
    if (best) {
      if (valid.length > 1 && this.chosen.get(mailbox) !== best.serial) {
        this.log.info({ mailbox, chosen: describeForLog(best), others: valid.slice(1).map(describeForLog) }, `${valid.length} valid certificates for ${mailbox}: using serial ${best.serial}, the one that expires last`);
      }
      this.chosen.set(mailbox, best.serial);
      return { kind: 'ok', bundle: best };
    }
    // Short reasons without paths: they may end up in an SMTP reply. The log has the details.
    const reasons = entry.good.map((b) =>
      now < b.notBefore
        ? `the certificate for ${mailbox} (serial ${b.serial}) is not valid before ${b.notBefore.toISOString()}`
        : now > b.notAfter
          ? `the certificate for ${mailbox} (serial ${b.serial}) expired on ${b.notAfter.toISOString()}`
          : `the certificate for ${mailbox} (serial ${b.serial}): ${refusal(b)}`,
    );
    if (entry.good.length === 0) reasons.push(...entry.broken.map(() => `the certificate configured for ${mailbox} cannot be loaded`));
    return { kind: 'unavailable', reason: [...new Set(reasons)].join('; ') };
  }

  reload(): void {
    this.load('signal');
  }

  close(): void {
    this.closed = true;
    for (const w of this.watchers.values()) w.close();
    this.watchers.clear();
    clearTimeout(this.debounce);
    clearTimeout(this.settle);
    clearInterval(this.daily);
  }

  private load(trigger: 'startup' | 'signal' | 'watch' | 'use' | 'settle'): void {
    if (this.closed) return;
    const { path, passwordFile } = this.opts;
    const signature = pathSignature(path, passwordFile);
    if ((trigger === 'watch' || trigger === 'use') && signature === this.signature) return;

    const result = loadPath(path, { passwordFile, openssl: this.opts.openssl, setting: this.opts.setting, keys: this.opts.keys });
    const failing = result.entries.some((e) => !e.bundle);
    const vanished = [...this.sources.keys()].filter((s) => !result.entries.some((e) => e.source === s));
    // A file that changed while it was read may be torn even when it parses (a write that stopped
    // between the leaf and the intermediate), so it is read again once it holds still.
    const moving = trigger !== 'startup' && pathSignature(path, passwordFile) !== signature;
    if (moving || ((trigger === 'watch' || trigger === 'use') && (failing || vanished.length > 0))) {
      // `ln -sf` unlinks before it links, `cp` truncates before it writes: look again shortly
      // before calling it an error. The old certificates stay in service meanwhile.
      clearTimeout(this.settle);
      this.settle = setTimeout(() => this.load('settle'), this.settleMs);
      this.settle.unref();
      return;
    }
    this.signature = signature;
    const now = this.now();
    const report = trigger !== 'startup';
    // The configured directory itself is gone or unreadable: nothing in it can be judged, so
    // everything loaded from it stays in service.
    const whole = result.entries.length === 1 && result.entries[0]!.source === path && this.sources.size > 0 && !this.sources.has(path);

    for (const s of result.skipped) this.say(() => this.log.warn({ source: s.source }, s.reason));
    for (const entry of result.entries) {
      if (whole) break;
      const state = this.sources.get(entry.source) ?? { loaded: [] };
      this.sources.set(entry.source, state);
      for (const f of entry.findings) if (f.severity === 'warning') this.say(() => this.log.warn({ source: entry.source, code: f.code }, f.message));
      if (!entry.bundle) {
        const kept = state.loaded[0]?.bundle;
        state.failure = { reason: errorsOf(entry.findings).map((f) => f.message).join('\n'), mailboxes: entry.mailboxes };
        this.fail(entry, errorsOf(entry.findings), kept ? ` Still using the certificate loaded before (serial ${kept.serial}).` : '', report);
        continue;
      }
      state.failure = undefined;
      const b = entry.bundle;
      const same = state.loaded[0]?.bundle?.leaf.raw.equals(b.leaf.raw) ?? false;
      const timeErrors = validityFindings(entry.source, b.notBefore, b.notAfter, now);
      if (timeErrors.length === 0 || same) {
        state.loaded = [entry];
      } else {
        // A renewal deployed before its start date, or a stale file: keep the previous certificate
        // while it is valid; lookups pick whichever is valid at the time.
        const keep = state.loaded.filter((l) => l.bundle && within(l.bundle, now) && !l.bundle.leaf.raw.equals(b.leaf.raw)).slice(0, 1);
        state.loaded = [entry, ...keep];
        for (const f of timeErrors) {
          const kept = keep[0]?.bundle ? `; still using serial ${keep[0].bundle.serial} until then` : '';
          if (f.code === 'expired') this.say(() => this.log.error({ source: entry.source, serial: b.serial }, f.message + kept));
          else this.say(() => this.log.warn({ source: entry.source, serial: b.serial }, f.message + kept));
        }
        if (report && timeErrors.some((f) => f.code === 'expired')) this.opts.onReloadFailure?.(new CertificateError(timeErrors[0]!.message, timeErrors));
      }
      if (!same || trigger === 'startup' || trigger === 'signal') {
        this.say(() => this.log.info({ ...describeForLog(b), trigger }, `certificate loaded for ${b.mailboxes.join(', ')} (serial ${b.serial})`));
      }
    }

    for (const source of vanished) {
      const state = this.sources.get(source)!;
      if (trigger === 'signal' && result.mode === 'directory' && !whole) {
        this.sources.delete(source);
        this.log.warn({ source }, `'${source}' is no longer in '${path}'; its certificate is no longer used`);
        continue;
      }
      if (whole || state.loaded.length === 0) continue;
      const message = `'${source}' disappeared; still using the certificate loaded from it (serial ${state.loaded[0]!.bundle!.serial}). Put it back, or send SIGHUP to forget it.`;
      this.log.error({ source }, message);
      if (report) this.opts.onReloadFailure?.(new CertificateError(message));
    }
    if (whole) this.fail(result.entries[0]!, errorsOf(result.entries[0]!.findings), ' Still using the certificates loaded from it before.', report);

    this.reindex();
    if (trigger !== 'startup') this.rewatch();
  }

  private say(line: () => void): void {
    if (this.startupLines) this.startupLines.push(line);
    else line();
  }

  private fail(entry: LoadedBundle, errors: Finding[], suffix: string, report: boolean): void {
    const reason = errors.map((f) => f.message).join('\n');
    this.say(() => this.log.error({ source: entry.source, target: entry.resolved, codes: errors.map((f) => f.code) }, reason + suffix));
    if (report) this.opts.onReloadFailure?.(new CertificateError(reason + suffix, errors));
  }

  private reindex(): void {
    const index = new Map<Mailbox, { good: CertificateBundle[]; broken: string[] }>();
    const at = (m: Mailbox) => index.get(m) ?? index.set(m, { good: [], broken: [] }).get(m)!;
    for (const [source, state] of this.sources) {
      for (const l of state.loaded) for (const m of l.bundle!.mailboxes) at(m).good.push(l.bundle!);
      if (state.failure) for (const m of state.failure.mailboxes) at(m).broken.push(source);
    }
    const now = this.now();
    for (const [m, e] of index) {
      const valid = e.good.filter((b) => within(b, now));
      if (valid.length > 1) {
        const best = valid.reduce((a, b) => (b.notAfter > a.notAfter ? b : a));
        this.log.info({ mailbox: m, chosen: describeForLog(best) }, `${valid.length} valid certificates for ${m}: using serial ${best.serial} from '${best.source}', the one that expires last`);
        this.chosen.set(m, best.serial);
      }
    }
    this.index = index;
    this.opts.revocation?.track([...this.sources.values()].flatMap((st) => st.loaded.map((l) => l.bundle!)));
  }

  /** Watches the directory holding the path and the one holding its target (renames replace inodes). */
  private rewatch(): void {
    if (this.closed) return;
    const { path } = this.opts;
    const dirs = new Set<string>();
    let isDir = false;
    try {
      isDir = statSync(path).isDirectory();
    } catch {
      // gone for now; the parent directory watch sees it come back
    }
    dirs.add(isDir ? path : dirname(path));
    try {
      const real = realpathSync(path);
      dirs.add(isDir ? real : dirname(real));
    } catch {
      // as above
    }
    for (const [dir, w] of this.watchers) {
      if (!dirs.has(dir)) {
        w.close();
        this.watchers.delete(dir);
      }
    }
    for (const dir of dirs) {
      if (this.watchers.has(dir)) continue;
      try {
        const w = watch(dir, { persistent: false }, () => this.changed());
        w.on('error', () => {
          w.close();
          this.watchers.delete(dir);
        });
        this.watchers.set(dir, w);
      } catch (e) {
        this.log.debug({ dir, err: (e as Error).message }, 'cannot watch directory; relying on the check at lookup');
      }
    }
  }

  private changed(): void {
    clearTimeout(this.debounce);
    this.debounce = setTimeout(() => this.load('watch'), 100);
    this.debounce.unref();
  }

  private checkExpiry(): void {
    const bundles = [...this.sources.values()].flatMap((s) => s.loaded.map((l) => l.bundle!));
    for (const w of expiryWarnings(bundles, this.now(), this.warned)) {
      this.log.warn({ ...describeForLog(w.bundle), daysLeft: w.daysLeft }, w.message);
    }
  }
}
