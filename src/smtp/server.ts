import { SMTPServer, type SMTPServerSession } from 'smtp-server';
import type { Logger } from 'pino';
import { AccessPolicy } from '../access/policy.js';
import { newTransactionId, type Pipeline } from '../pipeline.js';
import { declaredSize, readData } from './read-data.js';
import { RelayError, replies, type SmtpReply } from '../replies.js';
import type { SessionPolicy } from './sessions.js';
import type { GreetingDelayOption } from './smtp-server-patches.js';
import './smtp-server-patches.js';

export interface ReceiveOptions {
  maxSize: number;
  log: Logger;
  /** Per-client wait before the 220 (src/smtp/greeting.ts); unset keeps smtp-server's 100 ms. */
  greetingDelay?: GreetingDelayOption['greetingDelay'];
  /** SMIME_RELAY_PROXY_PROTOCOL: every connection starts with a PROXY v1 header naming the client. */
  proxyProtocol?: boolean;
  /** Who may connect, authenticate and send (src/access/); default: no gates, no TLS. */
  access?: AccessPolicy;
  /** Connection caps, transaction deadline, drain (src/smtp/sessions.ts); default: smtp-server's own limits only. */
  sessions?: SessionPolicy;
  /** SMIME_RELAY_LMTP: speak LMTP; the pipeline then answers each recipient separately. */
  lmtp?: boolean;
}

/** smtp-server reads the reply code from err.responseCode; the enhanced status goes first in the text. */
function smtpError(reply: SmtpReply): Error & { responseCode: number } {
  return Object.assign(new Error(`${reply.status} ${reply.text}`), { responseCode: reply.code });
}

/** receive: the SMTP listener. Protocol is smtp-server's; policy is the pipeline's. */
export function createReceiver(pipeline: Pipeline, opts: ReceiveOptions): SMTPServer {
  const { log, maxSize } = opts;
  const access = opts.access ?? AccessPolicy.open(log);
  const accessOptions = access.serverOptions();
  const sessions = opts.sessions;
  const server = new SMTPServer({
    name: 'smime-relay',
    banner: 'smime-relay ready',
    size: maxSize,
    // Replies carry their own RFC 3463 status in the text; smtp-server's automatic mapping would
    // put a generic one (550 → 5.1.1) in front of ours.
    hideENHANCEDSTATUSCODES: true,
    // TLS, STARTTLS, AUTH and the connect/auth hooks: src/access/policy.ts.
    ...accessOptions,
    ...sessions?.serverOptions(),
    lmtp: opts.lmtp ?? false,
    // The allow-list first (its 554 says more), then the per-address cap, which starts the
    // transaction clock.
    onConnect(session, callback) {
      const next = (err?: Error | null) => {
        if (err || !sessions) return callback(err);
        const refused = sessions.admitConnection(session);
        callback(refused ? smtpError(refused) : null);
      };
      if (accessOptions.onConnect) accessOptions.onConnect(session, next);
      else next();
    },
    onRcptTo(address, session, callback) {
      const refused = sessions?.admitRecipient(session, address.address);
      callback(refused ? smtpError(refused) : null);
    },
    onClose(session) {
      sessions?.closed(session);
    },
    disableReverseLookup: true,
    logger: false,
    useProxy: opts.proxyProtocol ?? false,
    // Postfix (smtp_send_xforward_command=yes) names the original client this way, so the
    // transaction log shows it. It only changes what is logged: the peer is recorded too, and
    // nothing is granted on the forwarded address.
    useXForward: true,
    // read by the patched connection start in smtp-server-patches.ts
    ...({ greetingDelay: opts.greetingDelay } satisfies GreetingDelayOption),
    onMailFrom(address, session, callback) {
      const refused = sessions?.admitTransaction();
      if (refused) return callback(smtpError(refused));
      try {
        pipeline.admitSender(address.address, access.admitSession(session));
        callback();
      } catch (e) {
        callback(e instanceof RelayError ? smtpError(e.reply) : (e as Error));
      }
    },
    onData(stream, session: SMTPServerSession, callback) {
      void (async () => {
        const data = await readData(stream, maxSize, declaredSize(session.envelope.mailFrom && session.envelope.mailFrom.args));
        sessions?.received(session);
        const peer = session.xForward.get('ADDR:DEFAULT');
        const tx = {
          id: newTransactionId(),
          envelope: {
            from: session.envelope.mailFrom ? session.envelope.mailFrom.address : '',
            to: session.envelope.rcptTo.map((r) => r.address),
            smtputf8: session.envelope.smtpUtf8 === true,
          },
          client: { address: session.remoteAddress, hostname: session.clientHostname, ...(peer ? { peer: String(peer) } : {}) },
          principal: access.principalOf(session),
        };
        if (data === 'too-big') return smtpError(pipeline.refuse(tx, replies.messageTooBig(maxSize)));
        const reply = await pipeline.process({ ...tx, raw: data });
        // LMTP (RFC 2033 §4.2): one answer per recipient, in RCPT order.
        if (opts.lmtp && reply.recipients) return reply.recipients.map((r) => (r.code === 250 ? `${r.status} ${r.text}` : smtpError(r)));
        return reply.code === 250 ? `${reply.status} ${reply.text}` : smtpError(reply);
      })()
        .then(
          (result) => (typeof result === 'string' || Array.isArray(result) ? callback(null, result) : callback(result)),
          (e: Error) => {
            log.error({ err: e }, 'unexpected error while handling DATA');
            callback(smtpError(replies.internalError(e.message)));
          },
        )
        .finally(() => sessions?.answered(session));
    },
  });
  sessions?.attach(server);
  return server;
}
