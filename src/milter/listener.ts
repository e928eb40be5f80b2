/**
 * The milter listener (SMIME_RELAY_MILTER): a TCP port or a unix socket that MTAs connect to.
 *
 * A milter trusts what its MTA says: the SASL login and the client address arrive as macros.
 * Whoever can connect can claim any login, so connections are gated like the SMTP listener:
 * a unix socket is created mode 0660 (its directory decides who may reach it), loopback peers
 * are accepted, and any other peer must be in SMIME_RELAY_ALLOW (the binding rule in
 * src/access/binding.ts refuses a non-loopback address without one).
 */
import { chmodSync, lstatSync, unlinkSync } from 'node:fs';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import type { Logger } from 'pino';
import type { AccessPolicy } from '../access/policy.js';
import type { MilterAddress } from '../config/settings.js';
import { isLoopback, plainAddress } from '../access/network.js';
import { MilterSession, type MessageFilter } from './session.js';

export const describeMilterAddress = (a: MilterAddress): string =>
  a.kind === 'unix' ? `unix:${a.path}` : `${a.host.includes(':') ? `[${a.host}]` : a.host}:${a.port}`;

/** Owner and group may connect; the group comes from a setgid directory (see the README). */
const SOCKET_MODE = 0o660;

export interface MilterListenerOptions {
  address: MilterAddress;
  filter: MessageFilter;
  access: AccessPolicy;
  /** Most simultaneous MTA connections (SMIME_RELAY_MAX_CLIENTS); more are closed at once. */
  maxConnections: number;
  log: Logger;
}

export interface MilterListener {
  /** Where it listens: the bound port for inet (useful with port 0), the path for unix. */
  readonly address: MilterAddress;
  readonly connections: number;
  listening(): boolean;
  /** Stops accepting, lets messages being signed finish (at most `timeoutMs`), then closes the rest. */
  close(timeoutMs: number): Promise<void>;
}

export async function listenMilter(opts: MilterListenerOptions): Promise<MilterListener> {
  const { access, filter, log } = opts;
  const sessions = new Map<Socket, MilterSession>();
  const server: Server = createServer({ noDelay: true }, (socket) => {
    const peer = socket.remoteAddress ? plainAddress(socket.remoteAddress) : 'unix';
    if (peer !== 'unix' && !isLoopback(peer) && !access.allowListed(peer)) {
      log.warn({ peer }, 'milter connection refused: peer is neither loopback nor in SMIME_RELAY_ALLOW');
      socket.destroy();
      return;
    }
    if (sessions.size >= opts.maxConnections) {
      // The MTA applies milter_default_action (tempfail): the message waits, it never passes unsigned.
      log.warn({ peer, limit: opts.maxConnections }, 'milter connection refused: SMIME_RELAY_MAX_CLIENTS reached');
      socket.destroy();
      return;
    }
    socket.setKeepAlive(true, 60_000);
    sessions.set(socket, new MilterSession(socket, peer, filter, log));
    socket.on('close', () => sessions.delete(socket));
  });

  if (opts.address.kind === 'unix') await removeStaleSocket(opts.address.path);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    const done = () => {
      server.off('error', reject);
      resolve();
    };
    if (opts.address.kind === 'unix') server.listen(opts.address.path, done);
    else server.listen(opts.address.port, opts.address.host, done);
  });
  server.on('error', (err) => log.error({ err }, 'milter listener error'));
  let address = opts.address;
  if (address.kind === 'unix') chmodSync(address.path, SOCKET_MODE);
  else address = { ...address, port: (server.address() as AddressInfo).port };

  return {
    address,
    get connections() {
      return sessions.size;
    },
    listening: () => server.listening,
    async close(timeoutMs: number) {
      const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
      const busy = [...sessions.values()].filter((s) => s.busy);
      // Idle connections go now; the MTA reconnects for its next message, to whoever listens then.
      for (const [socket, session] of sessions) if (!session.busy) socket.destroy();
      await Promise.race([Promise.all(busy.map((s) => s.idle())), new Promise((r) => setTimeout(r, timeoutMs).unref())]);
      for (const socket of sessions.keys()) socket.destroy();
      await stopped;
    },
  };
}

/** A socket file left by a relay that did not stop cleanly would make listen() fail; a live one is not ours to take. */
async function removeStaleSocket(path: string): Promise<void> {
  let isSocket: boolean;
  try {
    isSocket = lstatSync(path).isSocket();
  } catch {
    return;
  }
  if (!isSocket) throw new Error(`${path} exists and is not a socket; remove it or choose another path`);
  const live = await new Promise<boolean>((resolve) => {
    const probe = connect(path, () => {
      probe.destroy();
      resolve(true);
    });
    probe.on('error', () => resolve(false));
  });
  if (live) throw new Error(`another process is listening on ${path} (a second relay?)`);
  unlinkSync(path);
}
