/**
 * Fallback upstream for `npm run bench` when Postfix's smtp-sink is not installed: accepts and
 * discards every message. Run as its own process: `node --import tsx bench/sink-server.ts PORT`.
 */
import { SMTPServer } from 'smtp-server';
import '../src/smtp/smtp-server-patches.js';

const port = Number(process.argv[2]);
const server = new SMTPServer({
  disableReverseLookup: true,
  hideSTARTTLS: true,
  authOptional: true,
  logger: false,
  size: 64 * 1024 * 1024,
  // the relay's pooled connections are loopback; no reason to wait 100 ms on them either
  ...{ greetingDelay: () => 0 },
  onData(stream, _session, callback) {
    stream.on('data', () => {});
    stream.on('end', () => callback(null, 'Ok: queued as bench'));
  },
});
server.listen(port, '127.0.0.1');
process.on('SIGTERM', () => server.close(() => process.exit(0)));
