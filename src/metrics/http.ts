import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import type { Readiness } from './readiness.js';

export interface ObservabilityServerOptions {
  host: string;
  port: number;
  registry: Registry;
  readiness: Readiness;
  /** Liveness: true while the SMTP listener is accepting connections. */
  live: () => boolean;
  log: Logger;
}

export interface ObservabilityServer {
  readonly address: { host: string; port: number };
  close(): Promise<void>;
}

function send(res: ServerResponse, status: number, type: string, body: string): void {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
  res.end(body);
}

const json = (res: ServerResponse, status: number, body: unknown) => send(res, status, 'application/json', JSON.stringify(body) + '\n');

/**
 * SMIME_RELAY_METRICS: GET /metrics (Prometheus text format), /healthz (liveness), /readyz
 * (readiness). Read-only and without secrets, but still meant for a management network: bind it
 * to loopback or a pod IP, not to the address clients send mail to.
 */
export async function startObservabilityServer(opts: ObservabilityServerOptions): Promise<ObservabilityServer> {
  const { registry, readiness, live, log } = opts;
  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('allow', 'GET, HEAD');
      return send(res, 405, 'text/plain', 'method not allowed\n');
    }
    const path = new URL(req.url ?? '/', 'http://localhost').pathname;
    switch (path) {
      case '/metrics':
        return send(res, 200, registry.contentType, await registry.metrics());
      case '/healthz':
        return live() ? json(res, 200, { status: 'ok' }) : json(res, 503, { status: 'stopping', reason: 'the SMTP listener is not accepting connections' });
      case '/readyz': {
        const report = live() ? readiness.report() : { ready: false, reasons: ['the SMTP listener is not accepting connections'] };
        return json(res, report.ready ? 200 : 503, { status: report.ready ? 'ready' : 'not ready', ...report });
      }
      default:
        return send(res, 404, 'text/plain', 'not found; try /metrics, /healthz or /readyz\n');
    }
  };
  const server = createServer((req, res) => {
    handle(req, res).catch((err: Error) => {
      log.error({ err }, 'metrics endpoint failed');
      if (!res.headersSent) send(res, 500, 'text/plain', 'internal error\n');
      else res.destroy();
    });
  });
  // Scrapers and probes open a connection per request; idle ones must not hold close() up.
  server.keepAliveTimeout = 5_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  server.on('error', (err) => log.error({ err }, 'metrics listener error'));
  const bound = server.address() as AddressInfo;
  return {
    address: { host: bound.address, port: bound.port },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
