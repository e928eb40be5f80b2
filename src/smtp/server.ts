import { SMTPServer, type SMTPServerSession } from 'smtp-server';
import type { Logger } from 'pino';
import { AccessPolicy } from '../access/policy.js';
import { newTransactionId, type Pipeline } from '../pipeline.js';
import type { MemoryAdmission } from './memory-admission.js';
import { declaredSize, readData } from './read-data.js';
import { RelayError, replies, type SmtpReply } from '../replies.js';
import type { SessionPolicy } from './sessions.js';
import { announce, type Refusal } from './refusal.js';
import type { GreetingDelayOption, PeerTrustOption } from './smtp-server-patches.js';
import './smtp-server-patches.js';

export interface ReceiveOptions {
  maxSize: number;
  log: Logger;
  /** Per-client wait before the 220 (src/smtp/greeting.ts); unset keeps smtp-server's 100 ms. */
  greetingDelay?: GreetingDelayOption['greetingDelay'];
  /** Who may connect, authenticate and send (src/access/); default: no gates, no TLS. */
  access?: AccessPolicy;
  /** Connection caps, transaction deadline, drain (src/smtp/sessions.ts); default: smtp-server's own limits only. */
  sessions?: SessionPolicy;
  /** SMIME_RELAY_LMTP: speak LMTP; the pipeline then answers each recipient separately. */
  lmtp?: boolean;
  /** SMIME_RELAY_MEMORY_BUDGET (src/smtp/memory-admission.ts); default: no budget. */
  memory?: MemoryAdmission;
}

/** The authenticated user of a session, for a log line. */
const userOf = (session: SMTPServerSession): { user?: string } => {
  const user = (session.user as { user?: string } | undefined)?.user;
  return user ? { user } : {};
};

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
  const memory = opts.memory;
  // A refusal's reply carries a tx id, and the log line with that id says why (src/smtp/refusal.ts).
  const refuse = (refusal: Refusal, level?: 'error') => smtpError(announce(log, refusal, level));
  /** The socket's own peer: a balancer's address when a PROXY header named the client. */
  const socketAddressOf = (session: SMTPServerSession): string => {
    for (const c of server.connections) if (c.id === session.id) return c._socket.remoteAddress ?? session.remoteAddress;
    return session.remoteAddress;
  };
  const server = new SMTPServer({
    name: 'smime-relay',
    banner: 'smime-relay ready',
    size: maxSize,
    // Replies carry their own RFC 3463 status in the text; smtp-server's automatic mapping would
    // put a generic one (550 → 5.1.1) in front of ours.
    hideENHANCEDSTATUSCODES: true,
    // TLS, STARTTLS, AUTH and the auth hook: src/access/policy.ts.
    ...accessOptions,
    ...sessions?.serverOptions(),
    lmtp: opts.lmtp ?? false,
    // The allow-list first (its 554 says more), then the per-address cap, which starts the
    // transaction clock.
    onConnect(session, callback) {
      const refused = access.admitConnection(session, socketAddressOf(session)) ?? sessions?.admitConnection(session);
      callback(refused ? refuse(refused) : null);
    },
    onRcptTo(address, session, callback) {
      const refused = sessions?.admitRecipient(session, address.address);
      callback(refused ? refuse(refused) : null);
    },
    onClose(session) {
      sessions?.closed(session);
      memory?.closed(session);
    },
    disableReverseLookup: true,
    logger: false,
    // Postfix (smtp_send_xforward_command=yes) names the original client with XFORWARD, so the
    // transaction log shows it. It only changes what is logged: the peer is recorded too, and
    // nothing is granted on the forwarded address. PROXY headers and XFORWARD are taken only from
    // the networks configured for them (SMIME_RELAY_PROXY_PROTOCOL, SMIME_RELAY_XFORWARD_HOSTS);
    // the patch in smtp-server-patches.ts matches networks, where the library matches addresses.
    ...({
      peerTrust: {
        proxy: (socketAddress) => access.isProxy(socketAddress),
        xforward: (clientAddress) => access.mayXforward(clientAddress),
        refuse: (command, client) => {
          const reply = announce(log, access.untrustedCommand(command, client.address));
          return { code: reply.code, text: `${reply.status} ${reply.text}` };
        },
      },
    } satisfies PeerTrustOption),
    // Without that patch (another smtp-server version) the library's own exact-address lists
    // apply: PROXY is off, and XFORWARD stays for 127.0.0.1 and ::1 when they are trusted.
    useProxy: false,
    useXForward: ['127.0.0.1', '::1'].filter((a) => access.mayXforward(a)),
    // read by the patched connection start in smtp-server-patches.ts
    ...({
      greetingDelay: opts.greetingDelay,
      tooManyClients: (address) => {
        const limit = sessions?.serverOptions().maxClients ?? 0;
        const reply = announce(log, { reply: replies.tooManyClients(limit), why: 'connection refused: SMIME_RELAY_MAX_CLIENTS reached', fields: { client: address, limit } });
        return `${reply.status} ${reply.text}`;
      },
    } satisfies GreetingDelayOption),
    onMailFrom(address, session, callback) {
      try {
        const draining = sessions?.admitTransaction();
        if (draining) return callback(refuse(draining));
        pipeline.admitSender(address.address, access.admitSession(session));
      } catch (e) {
        if (!(e instanceof RelayError)) return callback(e as Error);
        return callback(refuse({ reply: e.reply, why: 'MAIL FROM refused', fields: { client: session.remoteAddress, mailFrom: address.address, ...userOf(session) } }));
      }
      if (!memory) return callback();
      // May wait for room in the memory budget; the sender was checked first, so nobody waits only to be refused.
      memory.admit(session, declaredSize(address.args)).then(
        (refused) => callback(refused ? refuse(refused) : null),
        (e: Error) => callback(e),
      );
    },
    onData(stream, session: SMTPServerSession, callback) {
      const held = memory?.receiving(session);
      void (async () => {
        const data = await readData(stream, maxSize, declaredSize(session.envelope.mailFrom && session.envelope.mailFrom.args), held?.admit);
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
        if (data === 'no-memory') return smtpError(pipeline.refuse(tx, replies.insufficientMemory('the messages in progress hold the whole memory budget')));
        const reply = await pipeline.process({ ...tx, raw: data, memory: held?.reservation });
        // LMTP (RFC 2033 §4.2): one answer per recipient, in RCPT order.
        if (opts.lmtp && reply.recipients) return reply.recipients.map((r) => (r.code === 250 ? `${r.status} ${r.text}` : smtpError(r)));
        return reply.code === 250 ? `${reply.status} ${reply.text}` : smtpError(reply);
      })()
        .then(
          (result) => (typeof result === 'string' || Array.isArray(result) ? callback(null, result) : callback(result)),
          (e: Error) => {
            callback(refuse({ reply: replies.internalError(e.message), why: 'unexpected error while handling DATA', fields: { err: e } }, 'error'));
          },
        )
        .finally(() => {
          held?.reservation.release();
          sessions?.answered(session);
        });
    },
  });
  sessions?.attach(server);
  return server;
}
