/**
 * src/smtp/smtp-server-patches.ts reaches into smtp-server 3.21.x: a per-client greeting delay,
 * a SIZE= refusal with RFC 3463's 5.3.4, and peer trust (which peers may send PROXY and XFORWARD,
 * and our reply to the others). On any other smtp-server version each must switch itself off and
 * leave the library as it is.
 *
 * "Another version" is made for real, not mocked: a copy of the installed smtp-server whose
 * package.json says 3.22.0, and a byte-for-byte copy of the patch module beside it, so the only
 * difference from the pinned case is the version string the module reads. Both are then served
 * over real sockets.
 */
import { copyFileSync, cpSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { SMTPServer, type SMTPServerOptions } from 'smtp-server';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as pinned from '../src/smtp/smtp-server-patches.js';
import type { GreetingDelayOption, PeerTrustOption } from '../src/smtp/smtp-server-patches.js';
import { RawClient } from './support/client.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const installed = JSON.parse(readFileSync(join(root, 'node_modules/smtp-server/package.json'), 'utf8')) as { version: string };

type PatchModule = typeof pinned;
type ServerClass = typeof SMTPServer;

const SIZE_LIMIT = 1000;

/** XFORWARD only from 127.0.0.1, PROXY from nobody, and a refusal in our words. */
const peerTrust: PeerTrustOption['peerTrust'] = {
  proxy: () => false,
  xforward: (address) => address === '127.0.0.1',
  refuse: (command, client) => ({ code: 550, text: `5.7.0 ${command} is not accepted from ${client.address}` }),
};

/** A bare server of the given smtp-server copy, with a size limit and the relay's options that the patches read. */
async function serve(Server: ServerClass, options: GreetingDelayOption & PeerTrustOption = {}) {
  const server = new Server({
    disableReverseLookup: true,
    hideSTARTTLS: true,
    authOptional: true,
    logger: false,
    size: SIZE_LIMIT,
    ...options,
  } as SMTPServerOptions);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.server.address() as AddressInfo;
  return { port, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
}

/** MAIL FROM with a SIZE= larger than the limit, after a normal greeting and EHLO. */
async function oversizedMailFrom(port: number) {
  const c = await RawClient.open(port);
  try {
    await c.hello();
    return await c.command(`MAIL FROM:<a@example.test> SIZE=${SIZE_LIMIT * 5}`);
  } finally {
    c.close();
  }
}

/** The first reply within `ms`, or undefined when the server stays silent that long (then close `c`). */
async function firstReplyWithin(c: RawClient, ms: number) {
  try {
    return await c.read(ms);
  } catch {
    return undefined;
  }
}

describe(`on the pinned smtp-server (installed: ${installed.version})`, () => {
  it('the installed version is the one the patches were written for', () => {
    // An update of smtp-server (package.json allows ^3.21) switches the patches off silently;
    // this says so, so the patches are re-read against the new library before it ships.
    expect(installed.version).toMatch(/^3\.21\./);
    expect(pinned.patchesApply).toBe(true);
  });

  it('SIZE patch: an oversized SIZE= gets 552 with 5.3.4 and the limit in bytes; a fitting one 250', async () => {
    const server = await serve(SMTPServer);
    try {
      const refused = await oversizedMailFrom(server.port);
      expect(refused).toEqual({ code: 552, text: `5.3.4 Message exceeds the fixed maximum message size of ${SIZE_LIMIT} bytes` });
      const c = await RawClient.open(server.port);
      await c.hello();
      expect((await c.command(`MAIL FROM:<a@example.test> SIZE=${SIZE_LIMIT}`)).code).toBe(250);
      c.close();
    } finally {
      await server.close();
    }
  });

  it('greeting patch: the server asks greetingDelay for each client address and holds the 220 that long', async () => {
    const asked: string[] = [];
    const server = await serve(SMTPServer, {
      greetingDelay: (address) => {
        asked.push(address);
        return 60_000;
      },
    });
    try {
      const before = { ...pinned.greetingStats };
      const patient = await RawClient.open(server.port);
      // smtp-server alone greets after 100 ms; a whole second of silence is the patched delay.
      expect(await firstReplyWithin(patient, 1_000)).toBeUndefined();
      patient.close();
      // Not ready yet, so a client speaking first is refused exactly as smtp-server refuses it.
      const early = await RawClient.open(server.port);
      early.write('EHLO early.test\r\n');
      const refused = await early.read(5_000);
      expect(refused.code).toBe(421);
      expect(refused.text).toMatch(/talk too soon/i);
      early.close();
      expect(asked).toEqual(['127.0.0.1', '127.0.0.1']);
      expect(pinned.greetingStats.delayed - before.delayed).toBe(2);
    } finally {
      await server.close();
    }
  });

  it('greeting patch: a delay of 0 greets at once, through connectionReady() and not a timer', async () => {
    const server = await serve(SMTPServer, { greetingDelay: () => 0 });
    try {
      const before = { ...pinned.greetingStats };
      const c = await RawClient.open(server.port);
      expect((await c.read(5_000)).code).toBe(220);
      expect((await c.command('EHLO patient.test')).code).toBe(250);
      c.close();
      expect(pinned.greetingStats.immediate - before.immediate).toBe(1);
      expect(pinned.greetingStats.delayed - before.delayed).toBe(0);
    } finally {
      await server.close();
    }
  });

  it('peer-trust patch: XFORWARD offered and taken from a trusted peer only; PROXY and XFORWARD from others get our reply', async () => {
    const server = await serve(SMTPServer, { peerTrust });
    try {
      const trusted = await RawClient.open(server.port, '127.0.0.1', { localAddress: '127.0.0.1' });
      expect((await trusted.hello()).text).toContain('XFORWARD');
      expect((await trusted.command('XFORWARD ADDR=192.0.2.7')).code).toBe(250);
      trusted.close();

      const other = await RawClient.open(server.port, '127.0.0.1', { localAddress: '127.0.0.2' });
      expect((await other.hello()).text).not.toContain('XFORWARD');
      expect(await other.command('XFORWARD ADDR=192.0.2.7')).toEqual({ code: 550, text: '5.7.0 XFORWARD is not accepted from 127.0.0.2' });
      other.close();

      // A PROXY header from a peer not listed as a balancer: answered by us (ahead of smtp-server's
      // early-talker check) and the connection closed.
      const proxied = await RawClient.open(server.port, '127.0.0.1', { localAddress: '127.0.0.2' });
      proxied.write('PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\n');
      expect(await proxied.read(5_000)).toEqual({ code: 550, text: '5.7.0 PROXY is not accepted from 127.0.0.2' });
      expect((await proxied.read(5_000)).code).toBe(0);
    } finally {
      await server.close();
    }
  });
});

describe('on another smtp-server version (a copy of the installed one that says 3.22.0)', () => {
  let dir: string;
  let other: PatchModule;
  let OtherServer: ServerClass;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'smime-relay-patches-'));
    // The patch module resolves smtp-server from its own location: give it a node_modules of its
    // own, with the smtp-server copy and every other package linked to the real ones.
    const modules = join(dir, 'node_modules');
    mkdirSync(modules);
    for (const name of readdirSync(join(root, 'node_modules'))) {
      if (name !== 'smtp-server' && !name.startsWith('.')) symlinkSync(join(root, 'node_modules', name), join(modules, name));
    }
    const copy = join(modules, 'smtp-server');
    cpSync(join(root, 'node_modules/smtp-server'), copy, { recursive: true });
    const manifest = JSON.parse(readFileSync(join(copy, 'package.json'), 'utf8')) as { version: string };
    writeFileSync(join(copy, 'package.json'), JSON.stringify({ ...manifest, version: '3.22.0' }, null, 2));
    mkdirSync(join(dir, 'src'));
    const patches = join(dir, 'src', 'smtp-server-patches.ts');
    copyFileSync(join(root, 'src/smtp/smtp-server-patches.ts'), patches);
    other = (await import(pathToFileURL(patches).href)) as PatchModule;
    OtherServer = ((await import(pathToFileURL(join(copy, 'dist/esm/smtp-server.js')).href)) as { SMTPServer: ServerClass }).SMTPServer;
  });

  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('the patch module sees 3.22.0 and does not apply', () => {
    expect(OtherServer).not.toBe(SMTPServer);
    expect(other.patchesApply).toBe(false);
  });

  it('SIZE patch off: smtp-server answers an oversized SIZE= in its own words', async () => {
    const server = await serve(OtherServer);
    try {
      const refused = await oversizedMailFrom(server.port);
      expect(refused.code).toBe(552);
      expect(refused.text).toBe(`Error: message exceeds fixed maximum message size ${SIZE_LIMIT}`);
    } finally {
      await server.close();
    }
  });

  it('greeting patch off: greetingDelay is never asked and smtp-server greets after its own short delay', async () => {
    const asked: string[] = [];
    const server = await serve(OtherServer, {
      greetingDelay: (address) => {
        asked.push(address);
        return 60_000;
      },
    });
    try {
      const before = { ...other.greetingStats };
      const c = await RawClient.open(server.port);
      expect((await c.read(15_000)).code).toBe(220);
      c.close();
      expect(asked).toEqual([]);
      expect(other.greetingStats).toEqual(before);
    } finally {
      await server.close();
    }
  });

  it('peer-trust patch off: the option is ignored and smtp-server decides with its own (here empty) lists', async () => {
    const server = await serve(OtherServer, { peerTrust });
    try {
      const c = await RawClient.open(server.port, '127.0.0.1', { localAddress: '127.0.0.1' });
      expect((await c.hello()).text).not.toContain('XFORWARD');
      expect(await c.command('XFORWARD ADDR=192.0.2.7')).toEqual({ code: 550, text: 'Error: Not allowed' });
      c.close();
    } finally {
      await server.close();
    }
  });
});
