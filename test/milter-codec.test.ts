/**
 * The milter module's pure parts: framing, the replies as bytes, the header edit script (checked
 * by replaying it the way Postfix's cleanup(8) applies edits), and which mail the milter takes on.
 * The protocol against real peers is in milter.test.ts (miltertest) and milter-postfix.test.ts.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { changeHeader, encodePacket, MilterProtocolError, PacketReader, parseConnect, replaceBody, replyCode } from '../src/milter/codec.js';
import { editsFor, headerBlock, type HeaderEdit, type MilterHeader } from '../src/milter/edits.js';
import { CHUNK_SIZE } from '../src/milter/protocol.js';
import { claimsCoveredSender } from '../src/milter/scope.js';
import { toMailbox } from '../src/mime/mailbox.js';

describe('framing', () => {
  it('finds the same packets however the bytes are split', () => {
    const packets = [encodePacket('O', Buffer.alloc(12, 1)), encodePacket('B', Buffer.alloc(70_000, 0x61)), encodePacket('E')];
    const stream = Buffer.concat(packets);
    for (const step of [1, 3, 4096, stream.length]) {
      const reader = new PacketReader();
      const got = [];
      for (let at = 0; at < stream.length; at += step) got.push(...reader.push(stream.subarray(at, at + step)));
      expect(got.map((p) => [p.command, p.data.length])).toEqual([['O', 12], ['B', 70_000], ['E', 0]]);
    }
  });

  it('refuses a packet without a command byte, and one over the size limit, before buffering it', () => {
    const empty = Buffer.alloc(4);
    expect(() => new PacketReader().push(empty)).toThrow(MilterProtocolError);
    const huge = Buffer.alloc(5);
    huge.writeUInt32BE(2 ** 31, 0);
    expect(() => new PacketReader(1024).push(huge)).toThrow(/exceeds the limit of 1024 bytes/);
  });

  it('reads the connect event of Postfix: host, family, port and address', () => {
    const inet = Buffer.concat([Buffer.from('client.example\0' + '4', 'latin1'), Buffer.from([0x30, 0x39]), Buffer.from('192.0.2.7\0')]);
    expect(parseConnect(inet)).toEqual({ hostname: 'client.example', family: '4', address: '192.0.2.7' });
    expect(parseConnect(Buffer.from('localhost\0U', 'latin1'))).toEqual({ hostname: 'localhost', family: 'U' });
  });
});

describe('replies', () => {
  it('SMFIR_REPLYCODE: one line, % doubled (Postfix reads it as a format string), ASCII only, NUL-terminated', () => {
    const p = replyCode(550, '5.7.1', 'From <zoë@example.com> 100% wrong\r\nInjected: x');
    expect(p.subarray(4, 5).toString()).toBe('y');
    expect(p.subarray(5).toString('latin1')).toBe('550 5.7.1 From <zo?@example.com> 100%% wrong Injected: x\0');
    expect(p.readUInt32BE(0)).toBe(p.length - 4);
  });

  it('SMFIR_REPLBODY: the body in chunks of at most 65535 bytes, in order', () => {
    const body = Buffer.alloc(150_000);
    for (let i = 0; i < body.length; i++) body[i] = i & 0xff;
    const chunks = replaceBody(body);
    expect(chunks.map((c) => c.length - 5)).toEqual([CHUNK_SIZE, CHUNK_SIZE, 150_000 - 2 * CHUNK_SIZE]);
    expect(Buffer.concat(chunks.map((c) => c.subarray(5))).equals(body)).toBe(true);
  });

  it('a header value holding NUL cannot be sent: an error, not a truncated field', () => {
    expect(() => changeHeader(1, 'Subject', ' a\0b')).toThrow(MilterProtocolError);
  });
});

/** Replays edits the way Postfix's cleanup(8) does: changes find the n-th remaining field of that name among the received ones; adds append. */
function apply(received: readonly MilterHeader[], edits: readonly HeaderEdit[]): MilterHeader[] {
  const fields = received.map((h) => ({ ...h, deleted: false, added: false }));
  for (const e of edits) {
    if (e.kind === 'add') {
      fields.push({ name: e.name, value: e.value, deleted: false, added: true });
      continue;
    }
    const same = fields.filter((f) => !f.deleted && !f.added && f.name.toLowerCase() === e.name.toLowerCase());
    const target = same[e.index - 1];
    if (!target) throw new Error(`no ${e.name} #${e.index}`);
    // An empty value deletes (milter8.c: "if (STR(milter->body)[0]) upd_header else del_header").
    if (e.value === '') target.deleted = true;
    else Object.assign(target, { name: e.name, value: e.value });
  }
  return fields.filter((f) => !f.deleted).map(({ name, value }) => ({ name, value }));
}

const outgoing = (headers: MilterHeader[], body = 'body\r\n') => Buffer.concat([headerBlock(headers), Buffer.from(body)]);
const h = (name: string, value: string): MilterHeader => ({ name, value: ' ' + value });

describe('header edits: the received header block becomes the outgoing one', () => {
  it("the relay's own change: Content-* replaced in place, MIME-Version kept, nothing else touched", () => {
    const received = [h('From', 'a@example.test'), h('To', 'b@example.org'), h('MIME-Version', '1.0'), h('Content-Type', 'text/plain'), h('Subject', 'x')];
    const out = [h('From', 'a@example.test'), h('To', 'b@example.org'), h('Subject', 'x'), h('MIME-Version', '1.0'), { name: 'Content-Type', value: ' multipart/signed; micalg=sha-256;\n\tboundary="b"' }];
    const edits = editsFor(received, Buffer.from('old\r\n'), outgoing(out, 'new\r\n'));
    expect(apply(received, edits.headers)).toEqual(out);
    expect(edits.body?.toString()).toBe('new\r\n');
    // From, To and Subject stay where they are: Postfix is never asked to touch them.
    expect(edits.headers.filter((e) => ['from', 'to'].includes(e.name.toLowerCase()))).toEqual([]);
  });

  it('no change at all: no edits and no body', () => {
    const received = [h('From', 'a@example.test'), h('Subject', 'x')];
    expect(editsFor(received, Buffer.from('same\r\n'), outgoing(received, 'same\r\n'))).toEqual({ headers: [] });
  });

  it('any outgoing header block is reached from any received one (property)', () => {
    const names = ['From', 'To', 'Subject', 'Received', 'X-A', 'Content-Type'];
    const field = fc.record({ name: fc.constantFrom(...names), value: fc.constantFrom(' a', ' b', ' c\n\td', '') });
    fc.assert(
      fc.property(fc.array(field, { maxLength: 12 }), fc.array(field, { maxLength: 12 }), (received, wanted) => {
        const edits = editsFor(received, Buffer.from('x'), outgoing(wanted, 'x'));
        expect(apply(received, edits.headers)).toEqual(wanted);
      }),
      { numRuns: 500 },
    );
  });
});

describe('which mail the milter takes on', () => {
  const covered = [toMailbox('notify@example.com')];
  const claims = (headers: [string, string][]) => claimsCoveredSender(headers.map(([name, value]) => ({ name, value })), covered);

  it('a covered mailbox in From, Sender or Resent-*, however it is written', () => {
    expect(claims([['From', ' Notify <NOTIFY@example.com>']])).toBe(true);
    expect(claims([['From', ' "notify@example.com" <evil@example.org>']])).toBe(true);
    expect(claims([['From', ' evil@example.org'], ['Sender', ' notify@example.com']])).toBe(true);
    expect(claims([['Resent-From', ' notify@example.com']])).toBe(true);
    expect(claims([['Resent-Sender', 'notify@example.com']])).toBe(true);
    // the whole value, with nothing around the address, and a name as an MTA may pass it
    expect(claims([['From', 'notify@example.com']])).toBe(true);
    expect(claims([['From ', ' notify@example.com']])).toBe(true);
  });

  it('not a field whose name only contains From or Sender', () => {
    for (const name of ['X-From', 'X-Original-Sender', 'From-Address', 'Sender-Id', 'Resent-Fromage']) {
      expect(claims([[name, ' notify@example.com']]), name).toBe(false);
    }
  });

  it('a sender field smuggled into another field behind a bare CR, LF or NUL', () => {
    expect(claims([['From', ' evil@example.org'], ['X-A', ' a\rFrom: notify@example.com']])).toBe(true);
    expect(claims([['X-A', ' a\0sender: notify@example.com']])).toBe(true);
    // with blanks before the name and before the colon, as a reader of the next hop allows
    expect(claims([['X-A', ' a\n \tFrom: notify@example.com']])).toBe(true);
    expect(claims([['X-A', ' a\nResent-Sender \t: notify@example.com']])).toBe(true);
    // behind the smuggled line, only what it says counts
    expect(claims([['X-A', ' notify@example.com\nFrom: evil@example.org']])).toBe(false);
  });

  it('not a longer address that contains it, and not a recipient', () => {
    expect(claims([['From', ' xnotify@example.com']])).toBe(false);
    expect(claims([['From', ' notify@example.com.evil.org']])).toBe(false);
    expect(claims([['From', ' someone@example.org'], ['To', ' notify@example.com'], ['Reply-To', ' notify@example.com']])).toBe(false);
  });
});
