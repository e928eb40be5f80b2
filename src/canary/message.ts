import { randomBytes } from 'node:crypto';

/**
 * The canary: a small message with the shapes hops like to rewrite, so it breaks where real mail
 * would: UTF-8 text with trailing blanks and a long line (quoted-printable after prepare, which
 * hops decode to 8bit or re-encode), and a binary attachment (base64, which hops re-wrap).
 */
export function canaryMessage(from: string, to: string, now: Date = new Date()): { raw: Buffer; messageId: string } {
  const id = randomBytes(9).toString('base64url');
  const domain = from.slice(from.lastIndexOf('@') + 1);
  const messageId = `<smime-relay-canary.${id}@${domain}>`;
  const boundary = `canary-${id}`;
  const attachment = Buffer.from(Array.from({ length: 600 }, (_, k) => (k * 37 + 11) % 256));
  const raw = [
    `From: smime-relay canary <${from}>`,
    `To: <${to}>`,
    `Subject: smime-relay canary ${id}`,
    `Date: ${now.toUTCString().replace('GMT', '+0000')}`,
    `Message-ID: ${messageId}`,
    'MIME-Version: 1.0',
    `Content-Type: multipart/mixed; boundary="${boundary}"`,
    '',
    `--${boundary}`,
    'Content-Type: text/plain; charset=utf-8',
    'Content-Transfer-Encoding: 8bit',
    '',
    'This message checks that S/MIME signatures survive the mail path. It is deleted automatically.   ',
    'Grüße — ünïcödé, a tab\there, and a line long enough to be wrapped by a hop that re-encodes quoted-printable text.',
    '',
    `--${boundary}`,
    'Content-Type: application/octet-stream; name="canary.bin"',
    'Content-Disposition: attachment; filename="canary.bin"',
    'Content-Transfer-Encoding: base64',
    '',
    attachment.toString('base64').replace(/(.{76})/g, '$1\r\n').trimEnd(),
    `--${boundary}--`,
    '',
  ].join('\r\n');
  return { raw: Buffer.from(raw, 'utf8'), messageId };
}
