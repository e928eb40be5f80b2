import { createRequire } from 'node:module';
import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';

/**
 * The only places where we reach into smtp-server, pinned to the version they were written
 * against (3.21.x). Each patch is small, covered by test/smtp-server-patches.test.ts, and
 * switches itself off (with the library behaviour left intact) on any other version.
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
      const { maxClients } = this._server.options;
      if (maxClients && this._server.connections.size > maxClients) {
        return this.send(421, this.name + ' Too many connected clients, try again in a moment', false);
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
