import { describe, expect, it } from 'vitest';
import { draftSignedMessage, draftSize } from '../src/mime/multipart-signed.js';
import { prepareMessage } from '../src/mime/prepare.js';
import { splitSigned } from './support/verify.js';

const raw = Buffer.from(
  'From: <alerts@example.test>\r\nTo: <ops@example.org>\r\nSubject: draft\r\nMIME-Version: 1.0\r\n' +
    'Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n' +
    'Grüße aus Köln.\r\n'.repeat(200),
  'utf8',
);

describe('draftSignedMessage: the signed bytes are the sent bytes', () => {
  // a signature part that fits the room kept for it, and one (a long chain) that does not
  for (const [name, derBytes] of [['fits its room', 3_000], ['outgrows its room', 40_000]] as const) {
    it(`the entity is signed in place and sent unchanged; the signature ${name}`, () => {
      const prepared = prepareMessage(raw);
      const entity = prepared.entity.toBuffer();
      const draft = draftSignedMessage(prepared);
      expect(draft.content.equals(entity)).toBe(true);
      const signedCopy = Buffer.from(draft.content);
      const der = Buffer.alloc(derBytes, 0x5a);
      const message = draft.complete(der);
      const parts = splitSigned(message);
      expect(parts.content.equals(signedCopy)).toBe(true);
      expect(parts.signature.equals(der)).toBe(true);
      expect(message.subarray(0, prepared.outerHeaders.length).equals(prepared.outerHeaders)).toBe(true);
      // with room for the signature, the message is sent from the very buffer the entity was signed in
      expect(message.buffer === draft.content.buffer).toBe(derBytes < 10_000);
      if (derBytes < 10_000) expect(message.length).toBeLessThanOrEqual(draftSize(prepared));
    });
  }
});
