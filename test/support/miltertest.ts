import { spawnSync } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { makeTempDir, run, type RunResult } from './pki.js';

/**
 * OpenDKIM's miltertest (Debian package `miltertest`): the MTA side of the milter protocol,
 * driven by a Lua script. An independent implementation of the protocol to test the relay's
 * codec against, next to Postfix itself.
 *
 * Known limit, from its source (miltertest/miltertest.c, v1.6.0 here): mt_milter_read() reads a
 * reply packet into a 1024-byte stack buffer without a bound, so any reply over 1 KiB (a body
 * replacement chunk: a signed body always is) overflows it and aborts miltertest with "stack
 * smashing detected". Signed output is therefore checked through Postfix (milter-postfix.test.ts);
 * miltertest checks negotiation, macros and every answer that is not a body replacement. Its
 * MT_SMTPREPLY check compares the whole reply text, which holds the tx id; the tests read the
 * text from the relay's transaction log line instead.
 */
export function miltertestMissing(): boolean {
  return spawnSync('miltertest', ['-V'], { encoding: 'utf8' }).status !== 0;
}

/** Locally a loud skip; under CI=true a failure, so a green CI run means miltertest ran. */
export function requireMiltertest(env: NodeJS.ProcessEnv = process.env): boolean {
  if (!miltertestMissing()) return true;
  if (env.CI === 'true') throw new Error('miltertest is not installed (apt-get install -y miltertest); the milter codec tests need it under CI');
  console.warn(
    `\n${'!'.repeat(78)}\n!! WARNING: miltertest is not installed (apt-get install -y miltertest).\n` +
      `!! The miltertest checks of the milter codec are SKIPPED.\n${'!'.repeat(78)}\n`,
  );
  return false;
}

/** Helpers every script gets: a reply as its letter, and one message from connect to end. */
const PRELUDE = `
local unpack = table.unpack or unpack
function letter(conn) return string.char(math.floor(mt.getreply(conn))) end
function ok(err) if err ~= nil then error(err) end end
-- o: socket, client, clientName, login, from, rcpt, headers {{name, value}}, body, stopBeforeEom
function message(o)
  local conn = mt.connect(o.socket, 20, 0.1)
  if conn == nil then error("cannot connect to " .. o.socket) end
  if o.client then mt.macro(conn, SMFIC_CONNECT, "{client_addr}", o.client) end
  ok(mt.conninfo(conn, o.clientName or "client.example.net", o.client or "127.0.0.1"))
  local mail = {"i", "QUEUE1"}
  if o.login then mail = {"i", "QUEUE1", "{auth_authen}", o.login, "{auth_type}", "PLAIN"} end
  mt.macro(conn, SMFIC_MAIL, unpack(mail))
  ok(mt.mailfrom(conn, "<" .. o.from .. ">"))
  ok(mt.rcptto(conn, "<" .. (o.rcpt or "rcpt@example.org") .. ">"))
  for _, h in ipairs(o.headers) do ok(mt.header(conn, h[1], h[2])) end
  ok(mt.eoh(conn))
  local r = letter(conn)
  mt.echo("EOH " .. r)
  if r ~= "c" then mt.disconnect(conn) return end
  ok(mt.bodystring(conn, o.body or "Hello.\\r\\n"))
  r = letter(conn)
  mt.echo("BODY " .. r)
  if r ~= "c" or o.stopBeforeEom then mt.disconnect(conn) return end
  ok(mt.eom(conn))
  mt.echo("EOM " .. letter(conn))
  if mt.eom_check(conn, MT_BODYCHANGE) then mt.echo("BODYCHANGE") end
  if mt.eom_check(conn, MT_HDRADD) then mt.echo("HDRADD") end
  mt.disconnect(conn)
end
`;

export interface MiltertestResult extends RunResult {
  /** The lines the script echoed. */
  lines: string[];
}

/** Runs a Lua script (after the prelude) through miltertest. */
export async function miltertest(script: string): Promise<MiltertestResult> {
  const temp = await makeTempDir('smime-relay-miltertest-');
  try {
    const path = join(temp.dir, 'test.lua');
    await writeFile(path, PRELUDE + script);
    const r = await run('miltertest', ['-s', path], { timeoutMs: 30_000 });
    return { ...r, lines: r.stdout.toString('utf8').split('\n').filter(Boolean) };
  } finally {
    await temp.remove();
  }
}

/** A Lua string literal. */
export const lua = (s: string): string => JSON.stringify(s);
