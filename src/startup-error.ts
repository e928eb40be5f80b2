/**
 * The relay cannot start, for a reason the admin can fix: the message names the setting and the
 * fix, and is all `smime-relay serve` prints (no stack trace, see cli.ts).
 */
export class StartupError extends Error {
  override name = 'StartupError';
}

/**
 * A listener that cannot bind, as the admin meets it: the setting and address it came from and
 * what to do, rather than a bare `listen EADDRINUSE`.
 */
export function listenFailure(setting: string, address: { host: string; port: number }, err: unknown): StartupError {
  const where = `${address.host.includes(':') ? `[${address.host}]` : address.host}:${address.port}`;
  const code = (err as NodeJS.ErrnoException).code;
  const why =
    code === 'EADDRINUSE'
      ? 'the address is already in use (another smime-relay, or another program, listens there). Stop that program, or choose a free port'
      : code === 'EACCES'
        ? `this user may not bind port ${address.port} (ports below 1024 need privileges). Choose a port above 1023`
        : code === 'EADDRNOTAVAIL'
          ? `no network interface of this host has the address ${address.host}. Use one of its addresses, 127.0.0.1 or 0.0.0.0`
          : (err as Error).message;
  return new StartupError(`${setting} ${where}: cannot listen: ${why}.`);
}
