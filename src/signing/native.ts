import { createHash } from 'node:crypto';
import * as asn1js from 'asn1js';
import * as pkijs from 'pkijs';
import type { CertificateBundle } from '../certs/bundle.js';
import { SigningError, type SigningEngine } from './engine.js';
import type { SigningKey } from './key.js';

const OID = {
  data: '1.2.840.113549.1.7.1',
  signedData: '1.2.840.113549.1.7.2',
  contentType: '1.2.840.113549.1.9.3',
  messageDigest: '1.2.840.113549.1.9.4',
  signingTime: '1.2.840.113549.1.9.5',
  smimeCapabilities: '1.2.840.113549.1.9.15',
  signingCertificateV2: '1.2.840.113549.1.9.16.2.47',
  encryptionKeyPreference: '1.2.840.113549.1.9.16.2.11',
  sha256: '2.16.840.1.101.3.4.2.1',
  rsaEncryption: '1.2.840.113549.1.1.1',
  ecdsaWithSha256: '1.2.840.10045.4.3.2',
  aes256Cbc: '2.16.840.1.101.3.4.1.42',
  aes192Cbc: '2.16.840.1.101.3.4.1.22',
  aes128Cbc: '2.16.840.1.101.3.4.1.2',
} as const;

const der = (node: asn1js.BaseBlock): Buffer => Buffer.from(node.toBER(false));
const oid = (value: string) => new asn1js.ObjectIdentifier({ value });
const seq = (...value: asn1js.BaseBlock[]) => new asn1js.Sequence({ value });
const set = (...value: asn1js.BaseBlock[]) => new asn1js.Set({ value });

// The parts that never change, encoded once with asn1js at load time.
/** sha256 without parameters, as openssl writes it (RFC 5754 §2: absent is preferred). */
const SHA256_ALGORITHM = der(seq(oid(OID.sha256)));
const DIGEST_ALGORITHMS = der(set(seq(oid(OID.sha256))));
/** Detached: eContentType id-data and no eContent (RFC 5652 §5.2). */
const ENCAP_CONTENT_INFO = der(seq(oid(OID.data)));
const VERSION_1 = der(new asn1js.Integer({ value: 1 }));
const SIGNED_DATA_OID = der(oid(OID.signedData));
const CONTENT_TYPE_ATTRIBUTE = der(seq(oid(OID.contentType), set(oid(OID.data))));
const SIGNING_TIME_OID = der(oid(OID.signingTime));
const MESSAGE_DIGEST_OID = der(oid(OID.messageDigest));
const SIGNING_CERTIFICATE_V2_OID = der(oid(OID.signingCertificateV2));
const ENCRYPTION_KEY_PREFERENCE_OID = der(oid(OID.encryptionKeyPreference));
/**
 * Only the AES-CBC ciphers, strongest first (RFC 8551 §2.5.2). openssl also advertises
 * 3DES, RC2 and DES, which would invite a correspondent to encrypt to us with broken ciphers.
 */
const SMIME_CAPABILITIES_ATTRIBUTE = der(
  seq(oid(OID.smimeCapabilities), set(seq(seq(oid(OID.aes256Cbc)), seq(oid(OID.aes192Cbc)), seq(oid(OID.aes128Cbc))))),
);
/**
 * openssl writes plain rsaEncryption here (RFC 3370 §3.2 allows it) and gpgsm, NSS and
 * openssl all accept it; PKCS#1 v1.5 because gpgsm rejects RSA-PSS (shared/notes/smime.md).
 */
const RSA_SIGNATURE_ALGORITHM = der(seq(oid(OID.rsaEncryption), new asn1js.Null()));
/** ecdsa-with-SHA256 takes no parameters (RFC 5758 §3.2). */
const ECDSA_SIGNATURE_ALGORITHM = der(seq(oid(OID.ecdsaWithSha256)));

/** What is fixed per signing identity, so a message costs one hash, one signature and a few copies. */
interface SignerTemplate {
  key: SigningKey;
  /** DER of IssuerAndSerialNumber, copied byte for byte from the leaf. */
  sid: Buffer;
  /** The signed attributes that name the signer certificate (RFC 5035 §3, RFC 8551 §2.5.3). */
  identityAttributes: Buffer[];
  signatureAlgorithm: Buffer;
  /** DER of the [0] IMPLICIT CertificateSet: leaf plus chain. */
  certificates: Buffer;
}

/**
 * Signs in-process: a detached CMS SignedData with the same shape as
 * `openssl cms -sign -binary -cades -md sha256` (RFC 5652 §5, RFC 8551 §2.5).
 *
 * PKI.js's own SignedData.sign costs about 3.8 ms per message here, more than ten times the
 * RSA operation, mostly in building and re-encoding objects. So PKI.js parses each identity
 * once, the per-message parts are a handful of DER fields written directly, and the signature
 * comes from the bundle's key: Node's crypto.sign for a key from the file, the token for a
 * PKCS#11 key, both off the event loop so it stays free for SMTP.
 */
export class NativeEngine implements SigningEngine {
  readonly name = 'native' as const;
  private readonly templates = new WeakMap<CertificateBundle, SignerTemplate>();
  private readonly now: () => Date;

  /** `now` is the signingTime clock; tests pin it to compare with openssl's output byte for byte. */
  constructor(opts: { now?: () => Date } = {}) {
    this.now = opts.now ?? (() => new Date());
  }

  async sign(content: Buffer, bundle: CertificateBundle): Promise<Buffer> {
    const t = this.templateFor(bundle);
    const digest = createHash('sha256').update(content).digest();
    // The set RFC 8551 §2.5 asks senders for; README "Interoperability" says why each is there.
    const attributes = [
      CONTENT_TYPE_ATTRIBUTE,
      tlv(0x30, SIGNING_TIME_OID, tlv(0x31, encodeTime(this.now()))),
      tlv(0x30, MESSAGE_DIGEST_OID, tlv(0x31, tlv(0x04, digest))),
      SMIME_CAPABILITIES_ATTRIBUTE,
      ...t.identityAttributes,
    ];
    // DER SET OF: elements in ascending order of their encodings (X.690 §11.6), as `openssl cms
    // -sign` writes them. DER requires it; the verifiers do not: openssl, gpgsm and NSS all accept
    // an unsorted set, because they check the signature over the bytes as received.
    const attributeBytes = Buffer.concat(attributes.sort(Buffer.compare));
    // The signature covers the attributes with the SET tag, although they travel as [0] (RFC 5652 §5.4).
    const signature = await t.key.sign(tlv(0x31, attributeBytes));
    const signerInfo = tlv(
      0x30,
      VERSION_1,
      t.sid,
      SHA256_ALGORITHM,
      tlv(0xa0, attributeBytes),
      t.signatureAlgorithm,
      tlv(0x04, signature),
    );
    const signedData = tlv(0x30, VERSION_1, DIGEST_ALGORITHMS, ENCAP_CONTENT_INFO, t.certificates, tlv(0x31, signerInfo));
    return tlv(0x30, SIGNED_DATA_OID, tlv(0xa0, signedData));
  }

  async close(): Promise<void> {}

  private templateFor(bundle: CertificateBundle): SignerTemplate {
    let t = this.templates.get(bundle);
    if (!t) {
      t = buildTemplate(bundle);
      this.templates.set(bundle, t);
    }
    return t;
  }
}

function buildTemplate(bundle: CertificateBundle): SignerTemplate {
  let leaf: pkijs.Certificate;
  try {
    leaf = pkijs.Certificate.fromBER(bundle.leaf.raw);
  } catch (e) {
    throw new SigningError(`${bundle.source}: cannot parse the signer certificate: ${(e as Error).message}`);
  }
  // The raw issuer and serial bytes, not a re-encoding: verifiers match them against the certificate.
  const issuer = Buffer.from(leaf.issuer.valueBeforeDecode);
  const serial = Buffer.from(leaf.serialNumber.valueBeforeDecodeView);
  const sid = tlv(0x30, issuer, serial);

  let signatureAlgorithm: Buffer;
  switch (bundle.key.type) {
    case 'rsa':
      signatureAlgorithm = RSA_SIGNATURE_ALGORITHM;
      break;
    case 'ec':
      signatureAlgorithm = ECDSA_SIGNATURE_ALGORITHM;
      break;
    default:
      throw new SigningError(
        `${bundle.source}: the native engine signs with RSA (PKCS#1 v1.5) or ECDSA keys, not ${bundle.key.type}`,
      );
  }

  // Leaf plus every chain certificate, once each, in DER SET OF order as openssl writes them.
  const certs: Buffer[] = [];
  for (const cert of [bundle.leaf, ...bundle.chain]) {
    if (!certs.some((c) => c.equals(cert.raw))) certs.push(cert.raw);
  }
  certs.sort(Buffer.compare);
  return { key: bundle.key, sid, identityAttributes: identityAttributes(bundle.leaf.raw, issuer, serial), signatureAlgorithm, certificates: tlv(0xa0, ...certs) };
}

/**
 * The two signed attributes that name the signer certificate, fixed per identity:
 * - ESS signingCertificateV2 (RFC 5035 §3) binds the signature to this very certificate, so it
 *   cannot be passed off as made with another certificate for the same key. One ESSCertIDv2: the
 *   SHA-256 of the certificate (hashAlgorithm left out, DER omits the DEFAULT sha256) and
 *   issuerSerial, the issuer as a directoryName [4] and the serial; byte for byte what
 *   `openssl cms -sign -cades` writes.
 * - SMIMEEncryptionKeyPreference (RFC 8551 §2.5.3) tells correspondents which certificate to
 *   encrypt replies to: the signer's own, as issuerAndSerialNumber [0] IMPLICIT.
 */
function identityAttributes(leafDer: Buffer, issuer: Buffer, serial: Buffer): Buffer[] {
  const certHash = createHash('sha256').update(leafDer).digest();
  const issuerSerial = tlv(0x30, tlv(0x30, tlv(0xa4, issuer)), serial);
  const signingCertificateV2 = tlv(0x30, tlv(0x30, tlv(0x30, tlv(0x04, certHash), issuerSerial)));
  return [
    tlv(0x30, SIGNING_CERTIFICATE_V2_OID, tlv(0x31, signingCertificateV2)),
    tlv(0x30, ENCRYPTION_KEY_PREFERENCE_OID, tlv(0x31, tlv(0xa0, issuer, serial))),
  ];
}

/** DER tag-length-value; every tag used here is a single octet. Exported for its test. */
export function tlv(tag: number, ...parts: Buffer[]): Buffer {
  let len = 0;
  for (const p of parts) len += p.length;
  let header: Buffer;
  if (len < 0x80) header = Buffer.from([tag, len]);
  else if (len < 0x100) header = Buffer.from([tag, 0x81, len]);
  else if (len < 0x10000) header = Buffer.from([tag, 0x82, len >> 8, len & 0xff]);
  else if (len < 0x1000000) header = Buffer.from([tag, 0x83, len >> 16, (len >> 8) & 0xff, len & 0xff]);
  else header = Buffer.from([tag, 0x84, len >>> 24, (len >> 16) & 0xff, (len >> 8) & 0xff, len & 0xff]);
  return Buffer.concat([header, ...parts], header.length + len);
}

/** UTCTime for 1950–2049, GeneralizedTime otherwise (RFC 5652 §11.3), always UTC to the second. */
export function encodeTime(date: Date): Buffer {
  const y = date.getUTCFullYear();
  const two = (n: number) => String(n).padStart(2, '0');
  const rest =
    two(date.getUTCMonth() + 1) +
    two(date.getUTCDate()) +
    two(date.getUTCHours()) +
    two(date.getUTCMinutes()) +
    two(date.getUTCSeconds()) +
    'Z';
  if (y >= 1950 && y < 2050) return tlv(0x17, Buffer.from(two(y % 100) + rest, 'latin1'));
  return tlv(0x18, Buffer.from(String(y).padStart(4, '0') + rest, 'latin1'));
}
