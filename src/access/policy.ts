import type { Logger } from 'pino';
import type { SMTPServer, SMTPServerAuthentication, SMTPServerOptions, SMTPServerSession } from 'smtp-server';
import { RelayError, replies, type SmtpReply } from '../replies.js';
import type { Refusal } from '../smtp/refusal.js';
import { AuthGuard } from './auth-guard.js';
import { loadListenerTls, type ListenerTls, type ListenerTlsSettings } from './listener-tls.js';
import { isLoopback, plainAddress, type AllowList } from './network.js';
import type { Principal, Users } from './users.js';

/**
 * Who may use the relay, decided per SMTP session:
 *
 * | gate | when | refusal |
 * |---|---|---|
 * | SMIME_RELAY_ALLOW (network) | at connect | 554 5.7.1 |
 * | SMIME_RELAY_PROXY_PROTOCOL (balancers) | a PROXY header from anyone else | 421 4.7.0, closed |
 * | SMIME_RELAY_XFORWARD_HOSTS | XFORWARD from anyone else | 550 5.7.0 |
 * | TLS_MODE=required | MAIL FROM (AUTH is not offered before STARTTLS) | 530 5.7.0 |
 * | failed AUTH (src/access/auth-guard.ts) | the 3rd on a connection; over the address's budget | 421 4.7.0; 454 4.7.0 |
 * | SMIME_RELAY_USERS (identity) | MAIL FROM without AUTH | 530 5.7.0 |
 * | the user's mailboxes | MAIL FROM, then the From header | 550 5.7.1 |
 *
 * Gates add up: with both ALLOW and USERS a client must come from a listed network and
 * authenticate. AUTH is offered only over TLS, or without TLS to a client on the loopback range.
 */
export interface AccessOptions {
  allow?: AllowList;
  users?: Users;
  tls?: ListenerTls;
  /** Re-read on reload(). */
  tlsSettings?: ListenerTlsSettings;
  /** SMIME_RELAY_PROXY_PROTOCOL: the load balancers whose PROXY header names the client. */
  proxies?: AllowList;
  /** SMIME_RELAY_XFORWARD_HOSTS: the MTAs (Postfix) that may name the original client with XFORWARD. */
  xforwardHosts?: AllowList;
  /** Failed-AUTH accounting and password-check slots; one per relay. */
  authGuard?: AuthGuard;
  log: Logger;
}

/** What the connection itself was when it arrived, before XFORWARD could rename the client. */
interface ConnectionFacts {
  /** The client: the socket's peer, or the address in a trusted PROXY header. */
  address: string;
  /**
   * Both hops are loopback: the client, and the socket it reached us on (a balancer's, with
   * PROXY). A password sent in clear then never crosses a network.
   */
  loopback: boolean;
}

type SmtpServerError = Error & { responseCode: number };
const asError = (r: SmtpReply): SmtpServerError => Object.assign(new Error(`${r.status} ${r.text}`), { responseCode: r.code });

/** A user name as it may appear in a log line: only names from the users file (a mistyped password lands in the name field). */
const MAX_LOGGED_NAME = 64;

export class AccessPolicy {
  private readonly connections = new WeakMap<SMTPServerSession, ConnectionFacts>();
  private readonly principals = new WeakMap<SMTPServerSession, Principal>();
  /** Failed AUTH attempts per connection. */
  private readonly authFailures = new WeakMap<SMTPServerSession, number>();
  private readonly guard: AuthGuard;
  private tls: ListenerTls | undefined;

  constructor(private readonly opts: AccessOptions) {
    this.tls = opts.tls;
    this.guard = opts.authGuard ?? new AuthGuard();
  }

  /** No gates: what a loopback listener without ALLOW, USERS or TLS gets. */
  static open(log: Logger): AccessPolicy {
    return new AccessPolicy({ log });
  }

  /** In SMIME_RELAY_ALLOW (false when there is no allow-list). */
  allowListed(address: string): boolean {
    return this.opts.allow?.allows(address) ?? false;
  }

  /** A connection from this socket address starts with a PROXY header (SMIME_RELAY_PROXY_PROTOCOL). */
  isProxy(socketAddress: string): boolean {
    return this.opts.proxies?.allows(socketAddress) ?? false;
  }

  /** May send XFORWARD (SMIME_RELAY_XFORWARD_HOSTS), judged on the connection's own client address. */
  mayXforward(clientAddress: string): boolean {
    return this.opts.xforwardHosts?.allows(clientAddress) ?? false;
  }

  /** The answer to a PROXY header or XFORWARD from a peer that is not trusted to send it. */
  untrustedCommand(command: 'PROXY' | 'XFORWARD', address: string): Refusal {
    const client = plainAddress(address);
    return command === 'PROXY'
      ? { reply: replies.proxyHeaderNotTrusted(client), why: 'closed a connection that sent a PROXY header but is not listed in SMIME_RELAY_PROXY_PROTOCOL', fields: { client } }
      : { reply: replies.xforwardNotAllowed(client), why: 'refused XFORWARD from a client not listed in SMIME_RELAY_XFORWARD_HOSTS', fields: { client } };
  }

  /** The smtp-server options this policy decides; the receiver spreads them into its own. */
  serverOptions(): Partial<SMTPServerOptions> {
    const tls = this.tls;
    return {
      secure: tls?.mode === 'implicit',
      ...(tls ? { key: tls.key, cert: tls.cert } : {}),
      // Without our own certificate smtp-server would offer STARTTLS with its built-in one,
      // whose private key is public.
      hideSTARTTLS: !tls || tls.mode === 'implicit',
      disabledCommands: this.disabledFor(undefined),
      authMethods: ['PLAIN', 'LOGIN'],
      // Whether AUTH is offered is decided per session below (disabledCommands), so the
      // library's single server-wide switch must not second-guess the loopback exception.
      allowInsecureAuth: true,
      // Authentication is demanded at MAIL FROM by admitSession(), with our reply text.
      authOptional: true,
      onSecure: (_socket, session, callback) => {
        session.disabledCommands = this.disabledFor(session);
        callback();
      },
      onAuth: (auth, session, callback) => {
        this.authenticate(auth, session).then(
          (user) => callback(null, { user }),
          (e: unknown) => callback(e instanceof RelayError ? asError(e.reply) : (e as Error)),
        );
      },
    };
  }

  /**
   * Commands a session may not use. AUTH is hidden, not just refused, where it is not allowed:
   * a client that reads EHLO then never sends a password in clear (Python's smtplib stops with
   * "AUTH not supported"; AUTH LOGIN is refused before the password is asked for).
   */
  private disabledFor(session: SMTPServerSession | undefined): string[] {
    const off: string[] = [];
    if (!this.tls || this.tls.mode === 'implicit') off.push('STARTTLS');
    if (!this.opts.users || !this.authAllowed(session)) off.push('AUTH');
    return off;
  }

  private authAllowed(session: SMTPServerSession | undefined): boolean {
    if (!session) return true;
    if (session.secure) return true;
    if (this.tls?.mode === 'required') return false;
    return this.connections.get(session)?.loopback ?? false;
  }

  /**
   * onConnect: the refusal of a client outside SMIME_RELAY_ALLOW, if any. `socketAddress` is the
   * socket's own peer, which differs from session.remoteAddress behind a PROXY balancer.
   */
  admitConnection(session: SMTPServerSession, socketAddress: string): Refusal | undefined {
    const address = plainAddress(session.remoteAddress);
    this.connections.set(session, { address, loopback: isLoopback(address) && isLoopback(socketAddress) });
    const { allow } = this.opts;
    if (allow && !allow.allows(address)) {
      return { reply: replies.clientNotAllowed(address), why: 'connection refused: client address is not in SMIME_RELAY_ALLOW', fields: { client: address } };
    }
    session.disabledCommands = this.disabledFor(session);
    return undefined;
  }

  private async authenticate(auth: SMTPServerAuthentication, session: SMTPServerSession): Promise<Principal> {
    const { users, log } = this.opts;
    const client = this.connections.get(session)?.address ?? session.remoteAddress;
    // smtp-server only calls this for offered mechanisms; this guards a future option change.
    if (!users) throw new RelayError(replies.authFailed());
    if (!this.authAllowed(session)) throw new RelayError(replies.authNeedsTls());
    // Stryker disable StringLiteral: smtp-server gives PLAIN and LOGIN (the only methods offered) a string name and
    // password, possibly empty; the fallbacks only satisfy the types (undefined is for XOAUTH2's token).
    const name = auth.username ?? '';
    const password = auth.password ?? '';
    // Stryker restore StringLiteral
    const guarded = await this.guard.run(client, () => users.authenticate(name, password));
    if (!guarded.checked) {
      const { budget, windowMs } = this.guard.limits;
      log.warn({ client, failures: guarded.failures, limit: budget }, 'authentication refused without a check: too many failed attempts from this address');
      throw this.failedAttempt(session, client, replies.authBlocked(guarded.failures, Math.round(windowMs / 60_000)));
    }
    const principal = guarded.result;
    if (!principal) {
      const known = users.has(name);
      log.warn(
        { client, method: auth.method, ...(known ? { user: name.slice(0, MAX_LOGGED_NAME) } : { userKnown: false }), failuresFromAddress: this.guard.recentFailures(client) },
        'authentication failed',
      );
      throw this.failedAttempt(session, client, replies.authFailed());
    }
    log.info({ client, user: principal.user, method: auth.method, tls: session.secure }, 'authenticated');
    return principal;
  }

  /** Counts a failed attempt on this connection; the last one allowed closes it (421). */
  private failedAttempt(session: SMTPServerSession, client: string, reply: SmtpReply): RelayError {
    const n = (this.authFailures.get(session) ?? 0) + 1;
    this.authFailures.set(session, n);
    const limit = this.guard.limits.perConnection;
    if (n < limit) return new RelayError(reply);
    this.opts.log.warn({ client, limit }, 'closed a connection after too many failed authentication attempts');
    return new RelayError(replies.authTooManyFailures(limit));
  }

  /**
   * The MAIL FROM gate: TLS when required, then AUTH when users are configured. Returns who is
   * sending (undefined without a users file). Looked up afresh, so a reload that removed or
   * narrowed a user applies to sessions that authenticated before it.
   */
  admitSession(session: SMTPServerSession): Principal | undefined {
    this.principals.delete(session);
    if (this.tls?.mode === 'required' && !session.secure) throw new RelayError(replies.tlsRequired());
    const { users } = this.opts;
    if (!users) return undefined;
    const name = (session.user as Principal | undefined)?.user;
    const principal = name === undefined ? undefined : users.principal(name);
    if (!principal) throw new RelayError(replies.authRequired());
    this.principals.set(session, principal);
    return principal;
  }

  /** The principal admitted at this transaction's MAIL FROM; a users file without one admits nobody. */
  principalOf(session: SMTPServerSession): Principal | undefined {
    const principal = this.principals.get(session);
    if (!principal && this.opts.users) throw new RelayError(replies.authRequired());
    return principal;
  }

  /**
   * The milter's gate (src/milter/), for mail from a covered mailbox. The MTA authenticated the
   * client and names it: `login` is its SASL login ({auth_authen}), `address` its IP address
   * ({client_addr}; none for mail submitted locally with sendmail). The same gates as at SMTP:
   * with SMIME_RELAY_USERS the login must be a user (its mailbox list then limits From); with
   * SMIME_RELAY_ALLOW, or without users, the client address must be loopback, in the allow-list,
   * or absent. Gates add up.
   */
  admitRelayedClient(client: { login?: string; address?: string }): Principal | undefined {
    const { users, allow } = this.opts;
    let principal: Principal | undefined;
    if (users) {
      if (!client.login) throw new RelayError(replies.relayedAuthRequired());
      principal = users.principal(client.login);
      if (!principal) throw new RelayError(replies.relayedLoginUnknown(client.login.slice(0, MAX_LOGGED_NAME)));
    }
    // Sendmail writes IPv6 client addresses as "IPv6:2001:db8::1"; Postfix writes them bare.
    const address = client.address ? plainAddress(client.address.replace(/^ipv6:/i, '')) : '';
    // Users alone admit a login from anywhere, as AUTH does at SMTP; otherwise the address decides.
    const addressGate = !users || allow !== undefined;
    if (addressGate && address && !isLoopback(address) && !(allow?.allows(address) ?? false)) {
      throw new RelayError(replies.relayedClientNotAllowed(address.slice(0, 64)));
    }
    return principal;
  }

  /**
   * SIGHUP: re-read the users file and the listener certificate. A broken file is logged and
   * the previous one stays in service, as with the signing certificates.
   */
  reload(server?: SMTPServer): void {
    const { users, tlsSettings, log } = this.opts;
    if (users) {
      try {
        const status = users.reload();
        log.info({ users: status.users, path: users.path }, 'users file reloaded');
        if (status.worldReadable) log.warn({ path: users.path }, 'SMIME_RELAY_USERS is readable by every local user; chmod 640 it');
      } catch (e) {
        log.error({ path: users.path, err: (e as Error).message }, 'users file NOT reloaded; the previous users stay in service');
      }
    }
    if (this.tls && tlsSettings) {
      try {
        const next = loadListenerTls({ ...tlsSettings, tlsMode: this.tls.mode });
        if (next) {
          server?.updateSecureContext({ key: next.key, cert: next.cert });
          this.tls = next;
          for (const w of next.warnings) log.warn(w);
          log.info({ cert: tlsSettings.tlsCert }, 'listener TLS certificate reloaded');
        }
      } catch (e) {
        log.error({ err: (e as Error).message }, 'listener TLS certificate NOT reloaded; the previous one stays in service');
      }
    }
  }
}
