import { SMTPServer, type SMTPServerDataStream, type SMTPServerSession } from 'smtp-server';
import type { Logger } from 'pino';
import { newTransactionId, type Pipeline } from '../pipeline.js';
import { RelayError, replies, type SmtpReply } from './reply.js';
import './smtp-server-patches.js';

export interface ReceiveOptions {
  maxSize: number;
  log: Logger;
}

/** smtp-server reads the reply code from err.responseCode; the enhanced status goes first in the text. */
function smtpError(reply: SmtpReply): Error & { responseCode: number } {
  return Object.assign(new Error(`${reply.status} ${reply.text}`), { responseCode: reply.code });
}

/**
 * Reads the DATA stream exactly once. Past maxSize it keeps draining (the client must reach the
 * final dot to read our 552) but stops storing.
 */
function readData(stream: SMTPServerDataStream, maxSize: number): Promise<Buffer | 'too-big'> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    stream.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size <= maxSize) chunks.push(chunk);
    });
    stream.on('error', reject);
    stream.on('end', () => resolve(size > maxSize || stream.sizeExceeded ? 'too-big' : Buffer.concat(chunks, size)));
  });
}

/** receive: the SMTP listener. Protocol is smtp-server's; policy is the pipeline's. */
export function createReceiver(pipeline: Pipeline, opts: ReceiveOptions): SMTPServer {
  const { log, maxSize } = opts;
  return new SMTPServer({
    name: 'smime-relay',
    banner: 'smime-relay ready',
    size: maxSize,
    // Replies carry their own RFC 3463 status in the text; smtp-server's automatic mapping would
    // put a generic one (550 → 5.1.1) in front of ours.
    hideENHANCEDSTATUSCODES: true,
    // Without a configured certificate smtp-server would offer STARTTLS with a built-in
    // self-signed one, which a verifying client (nodemailer by default) then fails on.
    hideSTARTTLS: true,
    disabledCommands: ['AUTH'],
    authOptional: true,
    disableReverseLookup: true,
    logger: false,
    onMailFrom(address, _session, callback) {
      try {
        pipeline.admitSender(address.address);
        callback();
      } catch (e) {
        callback(e instanceof RelayError ? smtpError(e.reply) : (e as Error));
      }
    },
    onData(stream, session: SMTPServerSession, callback) {
      void (async () => {
        const data = await readData(stream, maxSize);
        if (data === 'too-big') return smtpError(replies.messageTooBig(maxSize));
        const reply = await pipeline.process({
          id: newTransactionId(),
          envelope: {
            from: session.envelope.mailFrom ? session.envelope.mailFrom.address : '',
            to: session.envelope.rcptTo.map((r) => r.address),
          },
          raw: data,
          client: { address: session.remoteAddress, hostname: session.clientHostname },
        });
        return reply.code === 250 ? `${reply.status} ${reply.text}` : smtpError(reply);
      })().then(
        (result) => (typeof result === 'string' ? callback(null, result) : callback(result)),
        (e: Error) => {
          log.error({ err: e }, 'unexpected error while handling DATA');
          callback(smtpError(replies.internalError(e.message)));
        },
      );
    },
  });
}
