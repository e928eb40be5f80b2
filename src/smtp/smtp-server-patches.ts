import { createRequire } from 'node:module';
import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';

/**
 * The only places where we reach into smtp-server, pinned to the version they were written
 * against (3.21.x). Each patch is small, covered by test/smtp-server-patches.test.ts, and
 * switches itself off (with the library behaviour left intact) on any other version.
 */
const version: string = createRequire(import.meta.url)('smtp-server/package.json').version;
export const patchesApply = /^3\.21\./.test(version);

interface MailParamError {
  code: number;
  message: string;
  enhancedCode?: string | null;
}
type Proto = { _validateMailParams(parsed: unknown): MailParamError | null | undefined };

if (patchesApply) {
  const proto = (SMTPConnection as unknown as { prototype: Proto }).prototype;
  const validate = proto._validateMailParams;
  // smtp-server answers an oversized SIZE= with its own text and, since we keep its automatic
  // enhanced codes off, without 5.3.4 (RFC 3463 "message too big for system").
  proto._validateMailParams = function (this: { _server: { options: { size?: number } } }, parsed) {
    const err = validate.call(this, parsed);
    if (err && err.code === 552) {
      return { ...err, message: `5.3.4 Message exceeds the fixed maximum message size of ${this._server.options.size} bytes` };
    }
    return err;
  };
}
