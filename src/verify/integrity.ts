import type { KeyObject, X509Certificate } from 'node:crypto';
import { contentMatches, MICALG, publicKeyOf, readSignedData, signatureValid, SignatureFormatError, type SignerView } from './signed-data.js';
import { SignedStructureError, splitSignedMessage, type SignedMessageParts } from './split.js';

/**
 * Integrity of a clear-signed message: the signed part hashes to the signed messageDigest, and
 * the signature over the signed attributes verifies with the signer's certificate. Whether that
 * certificate deserves trust is a separate question (src/verify/trust.ts): a message can be
 * intact and untrusted, and diagnose reports the two apart.
 *
 * Used for self-verification before forwarding, by `smime-relay diagnose` and by the canary.
 */
export type Integrity = Intact | Broken;

export interface Intact {
  readonly ok: true;
  readonly parts: SignedMessageParts;
  readonly view: SignerView;
  readonly certificate: X509Certificate;
}

export interface Broken {
  readonly ok: false;
  readonly failure: IntegrityFailure;
  /** One sentence naming what is wrong, for a log line or an SMTP reply. */
  readonly reason: string;
  readonly parts?: SignedMessageParts;
  readonly view?: SignerView;
  readonly certificate?: X509Certificate;
  readonly key?: KeyObject;
}

export type IntegrityFailure =
  /** The parts of the multipart/signed cannot be found (boundary, part count, second part). */
  | 'structure'
  /** The signature part is not a readable CMS SignedData. */
  | 'signature-format'
  /** A digest or signature algorithm this verifier does not implement. */
  | 'unsupported'
  /** The SignedData does not carry the certificate its signer identifier names. */
  | 'signer-missing'
  /** The signer is not the certificate the relay signed with (self-verification only). */
  | 'signer-mismatch'
  /** micalg names another digest than the signature uses; Thunderbird hashes with micalg. */
  | 'micalg-mismatch'
  /** The signed part does not hash to the signed messageDigest: its bytes changed. */
  | 'digest-mismatch'
  /** The digest matches but the signature does not verify: the signature or its attributes changed. */
  | 'bad-signature';

export interface IntegrityOptions {
  /** Self-verification: the certificate the relay signed with; any other signer is a failure. */
  signer?: X509Certificate;
}

const keys = new WeakMap<X509Certificate, KeyObject>();

function keyOf(cert: X509Certificate): KeyObject {
  let key = keys.get(cert);
  // Stryker disable next-line ConditionalExpression: the map only saves reading the key again; cert.publicKey gives an equal key every time
  if (!key) keys.set(cert, (key = cert.publicKey));
  return key;
}

/** Splits, reads and checks `message`. Throws NotSignedError when it is not clear-signed at all. */
export function checkIntegrity(message: Buffer, opts: IntegrityOptions = {}): Integrity {
  let parts: SignedMessageParts;
  try {
    parts = splitSignedMessage(message);
  } catch (e) {
    if (e instanceof SignedStructureError) return { ok: false, failure: 'structure', reason: e.message };
    throw e;
  }
  let view: SignerView;
  try {
    view = readSignedData(parts.signature);
  } catch (e) {
    if (e instanceof SignatureFormatError) return { ok: false, failure: e.unsupported ? 'unsupported' : 'signature-format', reason: e.message, parts };
    throw e;
  }
  return checkParts(parts, view, opts);
}

/** The checks after the split: also used by diagnose on a repaired copy of the signed part. */
export function checkParts(parts: SignedMessageParts, view: SignerView, opts: IntegrityOptions = {}, content = parts.content): Integrity {
  const broken = (failure: IntegrityFailure, reason: string, extra: Partial<Broken> = {}): Broken => ({ ok: false, failure, reason, parts, view, ...extra });
  if (!view.signerCertificate) return broken('signer-missing', `the signature does not carry the signer's certificate (${view.sid})`);
  let certificate: X509Certificate;
  let key: KeyObject;
  if (opts.signer) {
    if (!opts.signer.raw.equals(view.signerCertificate)) return broken('signer-mismatch', `the signer certificate (${view.sid}) is not the one the relay signed with (serial ${opts.signer.serialNumber})`);
    certificate = opts.signer;
    key = keyOf(certificate);
  } else {
    const parsed = publicKeyOf(view.signerCertificate);
    if (!parsed) return broken('signature-format', `the signer certificate (${view.sid}) cannot be parsed`);
    ({ certificate, key } = parsed);
  }
  const keyType = key.asymmetricKeyType;
  if (keyType !== view.keyType) return broken('unsupported', `the signature algorithm is ${view.keyType.toUpperCase()} but the signer's key is ${keyType ?? 'unknown'}`, { certificate, key });
  const expectedMicalg = MICALG[view.digest];
  if (parts.micalg !== undefined && parts.micalg !== expectedMicalg) {
    return broken('micalg-mismatch', `micalg=${parts.micalg} in the Content-Type, but the signature uses ${expectedMicalg}; clients that hash with micalg (Thunderbird) reject it`, { certificate, key });
  }
  if (!contentMatches(view, content, key)) {
    return broken('digest-mismatch', `the signed part does not match the signature's ${expectedMicalg} digest: its bytes changed after signing`, { certificate, key });
  }
  if (!signatureValid(view, key, content)) {
    return broken('bad-signature', `the signed part matches its digest, but the signature over the signed attributes does not verify with the signer's certificate (${view.sid})`, { certificate, key });
  }
  return { ok: true, parts, view, certificate };
}
