import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { createServer as createTcpServer } from 'node:net';
import { join } from 'node:path';
import { openssl, type TestPki } from './pki.js';

/**
 * The intermediate CA of a test PKI as a revocation authority: an `openssl ca` database
 * (index.txt) where certificates are entered as valid or revoked, a real `openssl ocsp` responder
 * reading it, and CRLs made from it with `openssl ca -gencrl`.
 */
export interface RevocationAuthority {
  /** Enters the certificate as valid (V): the responder answers "good" for it. */
  valid(certPath: string): Promise<void>;
  /** Revokes it (R), with a CRLReason such as keyCompromise. */
  revoke(certPath: string, reason?: string): Promise<void>;
  /** A CRL of the current database, DER. */
  crl(): Promise<Buffer>;
  /** `openssl ocsp -index … -port …`, the issuing CA signing its own answers, valid for 5 minutes. */
  startOcsp(port: number): Promise<{ pid: number; stop(): Promise<void> }>;
}

export function revocationAuthority(pki: TestPki, dir: string): RevocationAuthority {
  const db = join(dir, 'ca-db');
  mkdirSync(db, { recursive: true });
  writeFileSync(join(db, 'index.txt'), '');
  const env = { ...process.env, CA_DB: db };
  const ca = (args: string[]) => openssl(['ca', '-config', pki.configPath, '-batch', '-keyfile', pki.intermediateKeyPath, '-cert', pki.intermediateCertPath, ...args], { env });
  return {
    async valid(certPath) {
      await ca(['-valid', certPath]);
    },
    async revoke(certPath, reason = 'keyCompromise') {
      await ca(['-revoke', certPath, '-crl_reason', reason]);
    },
    async crl() {
      const pem = join(dir, 'current.crl.pem');
      await ca(['-gencrl', '-crldays', '1', '-md', 'sha256', '-out', pem]);
      return openssl(['crl', '-in', pem, '-outform', 'DER']);
    },
    async startOcsp(port) {
      const child = spawn(
        'openssl',
        ['ocsp', '-index', join(db, 'index.txt'), '-port', String(port), '-rsigner', pki.intermediateCertPath, '-rkey', pki.intermediateKeyPath, '-CA', pki.intermediateCertPath, '-nmin', '5'],
        { stdio: ['ignore', 'ignore', 'pipe'] },
      );
      let stderr = '';
      child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
      await waitListening(port, child, () => stderr);
      return { pid: child.pid!, stop: () => stop(child) };
    },
  };
}

async function waitListening(port: number, child: ChildProcess, stderr: () => string): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`openssl ocsp exited (${child.exitCode}): ${stderr()}`);
    const up = await new Promise<boolean>((resolve) => {
      const s = createTcpServer();
      // Binding fails while the responder holds the port.
      s.once('error', () => resolve(true));
      s.listen(port, '127.0.0.1', () => s.close(() => resolve(false)));
    });
    if (up) return;
    if (Date.now() > deadline) {
      await stop(child);
      throw new Error(`openssl ocsp did not listen on ${port} within 10 s: ${stderr()}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

function stop(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once('exit', () => resolve());
    child.kill('SIGTERM');
  });
}

/** A plain HTTP server that serves whatever `body()` returns, as a CRL distribution point does. */
export async function startCrlServer(body: () => Promise<Buffer>): Promise<{ port: number; requests: number; close(): Promise<void> }> {
  const state = { requests: 0 };
  const server: Server = createServer((req, res) => {
    state.requests++;
    body().then(
      (b) => res.writeHead(200, { 'content-type': 'application/pkix-crl', 'content-length': b.length }).end(b),
      (e: Error) => res.writeHead(500).end(e.message),
    );
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  return {
    port,
    get requests() {
      return state.requests;
    },
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
