import { randomBytes } from 'node:crypto';
import { crlfOnly } from '../mime/line-endings.js';
import { encodeQuotedPrintable } from '../mime/transfer-encoding.js';
import { enhancedStatusOf } from '../replies.js';
import type { RecipientRejection } from './upstream.js';

export interface DsnInput {
  /** Our host name, for Reporting-MTA and the From/Message-ID of the report. */
  reportingMta: string;
  /** The envelope sender of the original message: the report's only recipient. */
  to: string;
  arrivalDate: Date;
  /** The original message as received; only its header block is returned (RFC 3462 text/rfc822-headers). */
  original: Buffer;
  rejected: readonly RecipientRejection[];
  /** Number of recipients the message was delivered to, for the human part. */
  deliveredCount: number;
  /** Our transaction id, so the report and the log line can be matched. */
  txId: string;
}

/** Headers of the original returned in the report; a header block beyond this is cut. */
const MAX_RETURNED_HEADER_BYTES = 64 * 1024;

/**
 * A delivery status notification (RFC 3464) for recipients the upstream refused after it accepted
 * others: multipart/report; report-type=delivery-status (RFC 6522) with a human-readable part, a
 * message/delivery-status part with one block per refused recipient, and the original headers.
 * It goes out with a null envelope sender (RFC 5321 §4.5.5), so it can never cause another one.
 */
export function buildDsn(input: DsnInput): Buffer {
  const host = oneLine(input.reportingMta) || 'localhost';
  const boundary = `=_dsn_${randomBytes(12).toString('hex')}`;
  const date = rfc5322Date(new Date());
  const lines: string[] = [
    `From: Mail Delivery System <MAILER-DAEMON@${host}>`,
    `To: <${oneLine(input.to)}>`,
    'Subject: Undelivered Mail Returned to Sender',
    `Date: ${date}`,
    `Message-ID: <${input.txId}.${Date.now().toString(36)}.dsn@${host}>`,
    // RFC 3834: an automatic answer, so autoresponders do not answer it.
    'Auto-Submitted: auto-replied',
    'MIME-Version: 1.0',
    `Content-Type: multipart/report; report-type=delivery-status; boundary="${boundary}"`,
    '',
    'This is a MIME-encapsulated delivery status notification.',
    '',
    `--${boundary}`,
    'Content-Description: Notification',
    'Content-Type: text/plain; charset=us-ascii',
    '',
    `This is the mail relay at ${host} (smime-relay).`,
    '',
    `Your message was signed and delivered to ${input.deliveredCount} recipient(s), but the next`,
    'mail server refused the recipient(s) below, so the message was NOT delivered to them.',
    'This relay keeps no queue and will not retry; send the message to them again if needed:',
    '',
    ...input.rejected.map((r) => `  <${oneLine(r.recipient)}>: ${diagnostic(r)}`),
    '',
    `Relay transaction id: ${input.txId}`,
    '',
    `--${boundary}`,
    'Content-Description: Delivery report',
    'Content-Type: message/delivery-status',
    '',
    // Per-message fields (RFC 3464 §2.2)
    `Reporting-MTA: dns; ${host}`,
    `Arrival-Date: ${rfc5322Date(input.arrivalDate)}`,
    // Per-recipient fields (RFC 3464 §2.3), each block preceded by a blank line
    ...input.rejected.flatMap((r) => [
      '',
      `Final-Recipient: rfc822; ${oneLine(r.recipient)}`,
      'Action: failed',
      `Status: ${statusOf(r)}`,
      `Diagnostic-Code: smtp; ${diagnostic(r)}`,
    ]),
    '',
    `--${boundary}`,
    'Content-Description: Undelivered Message Headers',
    'Content-Type: text/rfc822-headers',
  ];
  const headers = headerBlock(input.original);
  // The headers go back as they were, unless they hold 8-bit bytes an upstream without 8BITMIME
  // could refuse; text/rfc822-headers is a text type, so quoted-printable is allowed then.
  const eightBit = headers.some((b) => b > 0x7e || (b < 0x20 && b !== 0x0d && b !== 0x0a && b !== 0x09));
  if (eightBit) lines.push('Content-Transfer-Encoding: quoted-printable');
  lines.push('', '');
  const body = eightBit ? encodeQuotedPrintable(headers) : headers;
  return Buffer.concat([
    Buffer.from(lines.join('\r\n'), 'latin1'),
    crlfOnly(body),
    Buffer.from(`\r\n--${boundary}--\r\n`, 'latin1'),
  ]);
}

/** The RFC 3463 status upstream gave for the recipient, else one derived from its reply code. */
export function statusOf(r: RecipientRejection): string {
  return enhancedStatusOf(r.code >= 400 && r.code < 600 ? r.code : 550, r.response);
}

function diagnostic(r: RecipientRejection): string {
  const text = oneLine(r.response);
  return /^\d{3}\b/.test(text) ? text : `${r.code || 550} ${text}`;
}

function headerBlock(raw: Buffer): Buffer {
  const crlf = raw.indexOf('\r\n\r\n');
  const lf = raw.indexOf('\n\n');
  const end = crlf >= 0 && (lf < 0 || crlf < lf) ? crlf : lf >= 0 ? lf : raw.length;
  let block = raw.subarray(0, Math.min(end, MAX_RETURNED_HEADER_BYTES));
  while (block.length && (block[block.length - 1] === 0x0a || block[block.length - 1] === 0x0d)) block = block.subarray(0, -1);
  return block;
}

/** Upstream text and addresses go into header fields: no line breaks, ASCII only. */
function oneLine(s: string): string {
  return s.replace(/[\r\n\t]+/g, ' ').replace(/[^\x20-\x7e]/g, '?').trim();
}

function rfc5322Date(d: Date): string {
  return d.toUTCString().replace(/GMT$/, '+0000');
}
