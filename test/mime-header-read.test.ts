import { describe, expect, it } from 'vitest';
import { MimeError } from '../src/mime/error.js';
import { DEFAULT_MAX_HEADER_BYTES, fieldValue, readHeaderBlock, topHeaderFields } from '../src/mime/header.js';

/**
 * The header reader every trust decision starts from (admission, prepare, self-verification):
 * exact offsets, line ends and names, also when it reads a range inside a larger buffer (a part
 * of a multipart, the signature part of a signed message).
 */
const lines = (b: { fields: { name: string; lines: Buffer[] }[] }) => b.fields.map((f) => [f.name, ...f.lines.map((l) => l.toString('latin1'))]);

describe('readHeaderBlock', () => {
  it('reads fields up to the blank line and gives the offset of the body', () => {
    const buf = Buffer.from('From: a@example.com\r\nSubject: hi\r\n  there\r\n\r\nbody\r\n', 'latin1');
    const block = readHeaderBlock(buf, 0, buf.length, 1000);
    expect(lines(block)).toEqual([
      ['from', 'From: a@example.com'],
      ['subject', 'Subject: hi', '  there'],
    ]);
    expect(buf.subarray(block.bodyStart).toString('latin1')).toBe('body\r\n');
  });

  it('reads only the range it is given, inside a larger buffer', () => {
    const buf = Buffer.from('X\rA: 1\r\nB: 2\r\n\r\nbody', 'latin1');
    const start = 2;
    const block = readHeaderBlock(buf, start, buf.length, 1000);
    expect(lines(block)).toEqual([
      ['a', 'A: 1'],
      ['b', 'B: 2'],
    ]);
    expect(block.bodyStart).toBe(buf.indexOf('body'));
  });

  it('stops at the end of its range even when the buffer goes on', () => {
    const buf = Buffer.from('A: 1\nB: 22\nC: 3\n', 'latin1');
    const end = buf.indexOf('22') + 1; // inside "B: 22"
    const block = readHeaderBlock(buf, 0, end, 1000);
    expect(lines(block)).toEqual([
      ['a', 'A: 1'],
      ['b', 'B: 2'],
    ]);
    expect(block.bodyStart).toBe(end);
  });

  it('ends at a line feed exactly at the end of its range', () => {
    const buf = Buffer.from('A: 1\nB: 2\nC: 3\n', 'latin1');
    const end = buf.indexOf('B');
    const block = readHeaderBlock(buf, 0, end, 1000);
    expect(lines(block)).toEqual([['a', 'A: 1']]);
    expect(block.bodyStart).toBe(end);
  });

  it('keeps a CR that no LF follows within the range (only CRLF and LF end a line)', () => {
    const buf = Buffer.from('A: 1\r\nB: 2\r\nrest', 'latin1');
    const end = buf.indexOf('B: 2') + 5; // "B: 2\r", its LF outside the range
    const block = readHeaderBlock(buf, 0, end, 1000);
    expect(lines(block)).toEqual([
      ['a', 'A: 1'],
      ['b', 'B: 2\r'],
    ]);
    expect(block.bodyStart).toBe(end);
  });

  it('finds the empty line at the start of its range, whatever byte precedes the range', () => {
    const buf = Buffer.from('X\r\nbody', 'latin1');
    expect(readHeaderBlock(buf, 2, buf.length, 1000)).toEqual({ fields: [], bodyStart: 3 });
  });

  it('takes an empty range as an empty block', () => {
    const buf = Buffer.from('A: 1\r\n', 'latin1');
    expect(readHeaderBlock(buf, 3, 3, 1000)).toEqual({ fields: [], bodyStart: 3 });
  });

  it('reads a message that is only a header, without a final line break', () => {
    const buf = Buffer.from('A: 1\r\nB: 2', 'latin1');
    const block = readHeaderBlock(buf, 0, buf.length, 1000);
    expect(lines(block)).toEqual([
      ['a', 'A: 1'],
      ['b', 'B: 2'],
    ]);
    expect(block.bodyStart).toBe(buf.length);
  });

  it('ends the block at an empty line, with CRLF or with LF alone', () => {
    for (const text of ['A: 1\r\n\r\nbody', 'A: 1\n\nbody']) {
      const buf = Buffer.from(text, 'latin1');
      const block = readHeaderBlock(buf, 0, buf.length, 1000);
      expect(lines(block)).toEqual([['a', 'A: 1']]);
      expect(buf.subarray(block.bodyStart).toString('latin1')).toBe('body');
    }
    const atStart = Buffer.from('\r\nbody', 'latin1');
    expect(readHeaderBlock(atStart, 0, atStart.length, 1000)).toEqual({ fields: [], bodyStart: 2 });
  });

  it('names a field by what precedes its first colon, trimmed and lower-cased; no colon, no name', () => {
    const buf = Buffer.from('Content-TYPE : text/plain\r\nX-A:b:c\r\nno colon here\r\n\r\n', 'latin1');
    expect(readHeaderBlock(buf, 0, buf.length, 1000).fields.map((f) => f.name)).toEqual(['content-type', 'x-a', '']);
  });

  it('refuses a block longer than the limit, counted from the start of its range', () => {
    const text = 'A: 123456789\r\n\r\n';
    const buf = Buffer.from('pad' + text, 'latin1');
    const last = buf.lastIndexOf('\n') - 3; // the blank line's LF, 15 bytes after the start
    expect(readHeaderBlock(buf, 3, buf.length, last).fields).toHaveLength(1);
    expect(() => readHeaderBlock(buf, 3, buf.length, last - 1)).toThrow(MimeError);
    expect(() => readHeaderBlock(buf, 3, buf.length, last - 1)).toThrow(/exceeds the limit of 14 bytes/);
  });
});

describe('topHeaderFields', () => {
  it('gives the top-level fields of a message', () => {
    expect(topHeaderFields(Buffer.from('From: a@example.com\r\n\r\nFrom: b@example.com\r\n'))?.map((f) => fieldValue(f))).toEqual([' a@example.com']);
  });

  it('gives undefined for a header block over the relay-wide limit, instead of throwing', () => {
    const big = Buffer.from(`X-Big: ${'a'.repeat(DEFAULT_MAX_HEADER_BYTES)}\r\n\r\nbody`, 'latin1');
    expect(topHeaderFields(big)).toBeUndefined();
  });
});

describe('fieldValue', () => {
  it('is the unfolded text after the first colon', () => {
    const buf = Buffer.from('Subject: a: b\r\n c\r\n\r\n', 'latin1');
    expect(fieldValue(readHeaderBlock(buf, 0, buf.length, 1000).fields[0]!)).toBe(' a: b c');
  });

  it('is empty for a line without a colon', () => {
    const buf = Buffer.from('no colon\r\n\r\n', 'latin1');
    expect(fieldValue(readHeaderBlock(buf, 0, buf.length, 1000).fields[0]!)).toBe('');
  });
});
