import { createRequire } from 'node:module';
import type { Socket } from 'node:net';
import { SMTPServer } from 'smtp-server';
import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';

/**
 * The only places where we reach into smtp-server, pinned to the version they were written
 * against (3.21.x). Each patch is small and switches itself off (with the library behaviour left
 * intact) on any other version; test/smtp-server-patches.test.ts proves both, on the installed
 * version and on a copy of it that says it is another. The relay's use of them is tested in
 * test/greeting.test.ts (greeting) and test/proxy-xforward.test.ts (peer trust).
 */
const version: string = createRequire(import.meta.url)('smtp-server/package.json').version;
export const patchesApply = /^3\.21\./.test(version);

interface MailParamError {
  code: number;
  message: string;
  enhancedCode?: string | null;
}
type Proto = { _validateMailParams(parsed: unknown): MailParamError | null | undefined };

/** A server option the greeting patch adds; without it smtp-server's own 100 ms delay applies. */
export interface GreetingDelayOption {
  /** Milliseconds a new connection from this address waits before its 220; 0 greets at once. */
  greetingDelay?: (remoteAddress: string) => number;
  /** The 421 for a connection over maxClients (the text without the code); smtp-server's own otherwise. */
  tooManyClients?: (remoteAddress: string) => string;
}

/** Connections greeted at once or after a delay, counted by the patch (tests and the benchmark read it). */
export const greetingStats = { immediate: 0, delayed: 0 };

interface ConnectionInternals {
  _server: { options: GreetingDelayOption & { maxClients?: number }; connections: Set<unknown> };
  remoteAddress: string;
  name: string;
  _setListeners(callback: () => void): void;
  connectionReady(): void;
  send(code: number, text: string, commandName: false): void;
}
type InitProto = { init(this: ConnectionInternals): void };

if (patchesApply) {
  const proto = (SMTPConnection as unknown as { prototype: Proto }).prototype;
  const validate = proto._validateMailParams;
  // smtp-server answers an oversized SIZE= with its own text and, since we keep its automatic
  // enhanced codes off, without 5.3.4 (RFC 3463 "message too big for system").
  proto._validateMailParams = function (this: { _server: { options: { size?: number } } }, parsed) {
    const err = validate.call(this, parsed);
    if (err && err.code === 552) {
      return { ...err, message: `5.3.4 Message exceeds the fixed maximum message size of ${this._server.options.size} bytes` };
    }
    return err;
  };
}

if (patchesApply) {
  const proto = (SMTPConnection as unknown as { prototype: InitProto }).prototype;
  const init = proto.init;
  // smtp-server holds every new connection 100 ms before the 220 so that a client speaking first
  // (spamware not waiting for the greeting, RFC 5321 §3.1) gets 421. That costs a client that
  // connects once per message (Python smtplib, PHP mail(), Tattler) 100 ms on every mail, and a
  // loopback or allow-listed client gains nothing from it. So the server asks per client; an
  // early talker on a connection that is still delayed is refused exactly as before, since
  // _ready stays false until connectionReady(). Without the option, the library's init runs.
  proto.init = function (this: ConnectionInternals) {
    const delayFor = this._server.options.greetingDelay;
    if (typeof delayFor !== 'function') return init.call(this);
    // The library's init() (3.21.6) with the fixed 100 ms replaced. Asked inside the callback
    // because with useProxy the remote address is only known once the PROXY header was read.
    this._setListeners(() => {
      const { maxClients, tooManyClients } = this._server.options;
      if (maxClients && this._server.connections.size > maxClients) {
        return this.send(421, tooManyClients?.(this.remoteAddress) ?? this.name + ' Too many connected clients, try again in a moment', false);
      }
      const ms = delayFor(this.remoteAddress);
      if (ms > 0) {
        greetingStats.delayed++;
        // unref'd like the library's timer, so a pending greeting never keeps the process alive
        setTimeout(() => this.connectionReady(), ms).unref();
      } else {
        greetingStats.immediate++;
        this.connectionReady();
      }
    });
  };
}

/**
 * A server option the peer-trust patch adds. smtp-server's own useProxy and useXForward trust a
 * list of exact addresses; an operator names networks (SMIME_RELAY_PROXY_PROTOCOL,
 * SMIME_RELAY_XFORWARD_HOSTS), and a refusal must carry our reply, not "550 Error: Not allowed".
 * Without the patch (another smtp-server version) the library's own lists apply.
 */
export interface PeerTrustOption {
  peerTrust?: {
    /** Does a connection from this socket address start with a PROXY v1 header? */
    proxy(socketAddress: string): boolean;
    /** May this client (the PROXY address when there was a header) send XFORWARD? */
    xforward(clientAddress: string): boolean;
    /**
     * The reply to a PROXY line or an XFORWARD from a client not trusted for it. A PROXY line is
     * answered and the connection closed: the client was speaking to someone else, or lying.
     */
    refuse(command: 'PROXY' | 'XFORWARD', client: { connection: string; address: string }): { code: number; text: string };
  };
}

interface TrustInternals {
  _server: { options: PeerTrustOption };
  id: string;
  _originalRemoteAddress: string;
  _xClient: Map<string, unknown>;
  _isSupported(command: string): boolean;
  _proxyCommandAllowed(command: string, option: string): boolean;
  send(code: number, text: string, context?: string | false): void;
  close(): void;
}
type TrustProto = {
  _proxyCommandAllowed(this: TrustInternals, command: string, option: string): boolean;
  handler_XFORWARD(this: TrustInternals, command: Buffer, callback: () => void): void;
  _onCommand(this: TrustInternals, command: Buffer, callback?: () => void): void;
};
type ServerProto = { _expectsProxyHeader(this: { options: PeerTrustOption }, socket: Socket): boolean };

if (patchesApply) {
  const server = (SMTPServer as unknown as { prototype: ServerProto }).prototype;
  const expectsProxyHeader = server._expectsProxyHeader;
  // Both the pre-session guard and the header reader ask this (3.21.6 _acceptSocket/_handleProxy).
  server._expectsProxyHeader = function (socket) {
    const trust = this.options.peerTrust;
    return trust ? trust.proxy(socket.remoteAddress ?? '') : expectsProxyHeader.call(this, socket);
  };

  const proto = (SMTPConnection as unknown as { prototype: TrustProto }).prototype;
  const proxyCommandAllowed = proto._proxyCommandAllowed;
  // Decides both whether EHLO advertises XFORWARD and whether the command is honoured. Checked
  // against the address the connection arrived from, never one an earlier XFORWARD claimed.
  proto._proxyCommandAllowed = function (command, option) {
    const trust = this._server.options.peerTrust;
    if (!trust || command !== 'XFORWARD') return proxyCommandAllowed.call(this, command, option);
    return !this._xClient.has('ADDR') && trust.xforward(this._originalRemoteAddress) && this._isSupported(command);
  };

  const xforward = proto.handler_XFORWARD;
  proto.handler_XFORWARD = function (command, callback) {
    const trust = this._server.options.peerTrust;
    if (trust && !this._proxyCommandAllowed('XFORWARD', 'useXForward')) {
      const reply = trust.refuse('XFORWARD', { connection: this.id, address: this._originalRemoteAddress });
      this.send(reply.code, reply.text, false);
      return callback();
    }
    return xforward.call(this, command, callback);
  };

  const onCommand = proto._onCommand;
  // A PROXY header inside the SMTP session comes from a peer not listed as a balancer (a listed
  // one has its header read before the session starts). Checked ahead of the early-talker test,
  // since a header is sent at once, so the refusal is ours and is logged with the real peer.
  proto._onCommand = function (command, callback) {
    const trust = this._server.options.peerTrust;
    if (trust && /^PROXY(?: |$)/i.test((command ?? '').toString())) {
      // Not the session's address: before the greeting the session is not filled in yet.
      const reply = trust.refuse('PROXY', { connection: this.id, address: this._originalRemoteAddress });
      this.send(reply.code, reply.text, false);
      return this.close();
    }
    return onCommand.call(this, command, callback);
  };
}
