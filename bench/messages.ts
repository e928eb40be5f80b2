import { randomBytes } from 'node:crypto';

const CRLF = '\r\n';

function headers(from: string, to: string, subject: string): string {
  return (
    `From: Bench <${from}>${CRLF}` +
    `To: <${to}>${CRLF}` +
    `Subject: ${subject}${CRLF}` +
    `Date: ${new Date().toUTCString().replace('GMT', '+0000')}${CRLF}` +
    `Message-ID: <${randomBytes(8).toString('hex')}@bench.test>${CRLF}` +
    `MIME-Version: 1.0${CRLF}`
  );
}

/** A plain-text notification of exactly `size` bytes, CRLF, 7-bit, lines of 72 characters. */
export function smallMessage(from: string, to: string, size = 2048): Buffer {
  const head = headers(from, to, `bench ${size} bytes`) + `Content-Type: text/plain; charset=us-ascii${CRLF}${CRLF}`;
  const line = 'The quick brown fox jumps over the lazy dog; signed in transit, or not.  '.slice(0, 70) + CRLF;
  let body = '';
  while (head.length + body.length + line.length <= size) body += line;
  const rest = size - head.length - body.length;
  if (rest >= 2) body += 'x'.repeat(rest - 2) + CRLF;
  return Buffer.from(head + body, 'latin1');
}

/** About `size` bytes: a short text part and a base64 attachment of random data, as a report mail would be. */
export function largeMessage(from: string, to: string, size: number): Buffer {
  const boundary = `bench-${randomBytes(9).toString('hex')}`;
  const head =
    headers(from, to, `bench ${Math.round(size / 1e6)} MB attachment`) +
    `Content-Type: multipart/mixed; boundary="${boundary}"${CRLF}${CRLF}` +
    `--${boundary}${CRLF}Content-Type: text/plain; charset=us-ascii${CRLF}${CRLF}The report is attached.${CRLF}` +
    `--${boundary}${CRLF}Content-Type: application/octet-stream; name="report.bin"${CRLF}` +
    `Content-Transfer-Encoding: base64${CRLF}Content-Disposition: attachment; filename="report.bin"${CRLF}${CRLF}`;
  const tail = `${CRLF}--${boundary}--${CRLF}`;
  const room = size - head.length - tail.length;
  // 76 base64 characters + CRLF encode 57 bytes
  const data = randomBytes(Math.floor(room / 78) * 57);
  const b64 = data.toString('base64');
  const lines: string[] = [];
  for (let i = 0; i < b64.length; i += 76) lines.push(b64.slice(i, i + 76));
  return Buffer.from(head + lines.join(CRLF) + tail, 'latin1');
}

/**
 * About `size` bytes of 8-bit text: text/plain in UTF-8, `Content-Transfer-Encoding: 8bit`, Russian
 * prose in CRLF lines, as a newsletter or report in Cyrillic (or Greek, Arabic, Hebrew) arrives.
 * Almost every byte is 8-bit, so this is the message that grows most when made 7-bit safe:
 * quoted-printable writes three bytes for each of them.
 */
export function eightBitMessage(from: string, to: string, size: number): Buffer {
  const head = Buffer.from(
    headers(from, to, `bench ${Math.round(size / 2 ** 20)} MiB 8-bit text`) +
      `Content-Type: text/plain; charset=utf-8${CRLF}Content-Transfer-Encoding: 8bit${CRLF}${CRLF}`,
    'latin1',
  );
  const lines = [
    'Съешь же ещё этих мягких французских булок, да выпей чаю.',
    'Широкая электрификация южных губерний даст мощный толчок подъёму сельского хозяйства.',
    'В чащах юга жил бы цитрус? Да, но фальшивый экземпляр!',
  ].map((l) => Buffer.from(l + CRLF, 'utf8'));
  const out = Buffer.alloc(size, 0x20);
  head.copy(out);
  let at = head.length;
  for (let k = 0; at + lines[k % lines.length]!.length <= size - 2; k++) at += lines[k % lines.length]!.copy(out, at);
  // pad the last line with blanks up to the exact size
  out.write(CRLF, size - 2, 'latin1');
  return out;
}
