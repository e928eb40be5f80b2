import { X509Certificate, type KeyObject } from 'node:crypto';
import * as asn1js from 'asn1js';
import * as pkijs from 'pkijs';
import { error, warning, type Finding } from './findings.js';

/** Facts about one leaf certificate, as `check-cert` prints them. */
export interface CertificateDetails {
  readonly subject: string;
  readonly issuer: string;
  readonly serial: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
  readonly key: { readonly type: string; readonly bits?: number; readonly curve?: string; readonly text: string };
  readonly signatureAlgorithm: string;
  readonly chain: ChainStatus;
}

export interface ChainStatus {
  /**
   * complete: leaf up to a self-signed root; root-omitted: leaf up to an intermediate whose issuer
   * (the root) is left out, which is fine; leaf-only: no intermediates at all; self-signed: the
   * leaf is its own issuer; broken: the certificates given do not lead from the leaf.
   */
  readonly status: 'complete' | 'root-omitted' | 'leaf-only' | 'self-signed' | 'broken';
  /** Subjects from the leaf upwards, as far as the bundle goes. */
  readonly path: readonly string[];
  readonly text: string;
}

const OID = {
  emailProtection: '1.3.6.1.5.5.7.3.4',
  anyExtendedKeyUsage: '2.5.29.37.0',
  keyUsage: '2.5.29.15',
  extKeyUsage: '2.5.29.37',
  rsaPss: '1.2.840.113549.1.1.10',
} as const;

const SIGNATURE_NAMES: Record<string, string> = {
  '1.2.840.113549.1.1.4': 'md5WithRSAEncryption',
  '1.2.840.113549.1.1.5': 'sha1WithRSAEncryption',
  '1.2.840.113549.1.1.10': 'RSASSA-PSS',
  '1.2.840.113549.1.1.11': 'sha256WithRSAEncryption',
  '1.2.840.113549.1.1.12': 'sha384WithRSAEncryption',
  '1.2.840.113549.1.1.13': 'sha512WithRSAEncryption',
  '1.2.840.10045.4.1': 'ecdsa-with-SHA1',
  '1.2.840.10045.4.3.2': 'ecdsa-with-SHA256',
  '1.2.840.10045.4.3.3': 'ecdsa-with-SHA384',
  '1.2.840.10045.4.3.4': 'ecdsa-with-SHA512',
  '1.3.101.112': 'Ed25519',
  '1.3.101.113': 'Ed448',
};
const WEAK_SIGNATURES = new Set(['1.2.840.113549.1.1.4', '1.2.840.113549.1.1.5', '1.2.840.10045.4.1']);

/** "C=DE\nO=Acme\nCN=x" (Node's form) as "C=DE, O=Acme, CN=x". */
export function dn(name: string): string {
  return name.split('\n').filter(Boolean).join(', ');
}

function parsePkijs(cert: X509Certificate): pkijs.Certificate | undefined {
  try {
    const asn = asn1js.fromBER(new Uint8Array(cert.raw));
    return asn.offset === -1 ? undefined : new pkijs.Certificate({ schema: asn.result });
  } catch {
    return undefined;
  }
}

function describeKey(key: KeyObject): CertificateDetails['key'] {
  const type = key.asymmetricKeyType ?? 'unknown';
  const d = key.asymmetricKeyDetails ?? {};
  if (type === 'rsa' || type === 'rsa-pss') {
    const bits = d.modulusLength;
    return { type: type === 'rsa' ? 'RSA' : 'RSA-PSS', bits, text: `${type === 'rsa' ? 'RSA' : 'RSA-PSS'} ${bits} bits` };
  }
  if (type === 'ec') {
    const curve = d.namedCurve ?? 'unknown curve';
    const bits = { prime256v1: 256, secp384r1: 384, secp521r1: 521 }[curve];
    return { type: 'EC', curve, bits, text: `EC ${curve}${bits ? ` (${bits} bits)` : ''}` };
  }
  return { type, text: type };
}

/** Follows issuers from the leaf through the other certificates of the bundle, in any order. */
export function chainStatus(leaf: X509Certificate, others: readonly X509Certificate[]): { status: ChainStatus; unused: X509Certificate[] } {
  const isSelfSigned = (c: X509Certificate) => c.checkIssued(c) && safeVerify(c, c);
  const path = [leaf];
  const left = new Set(others.filter((c) => !c.raw.equals(leaf.raw)));
  let top = leaf;
  while (!isSelfSigned(top)) {
    const issuer = [...left].find((c) => top.checkIssued(c) && safeVerify(top, c));
    if (!issuer) break;
    left.delete(issuer);
    path.push(issuer);
    top = issuer;
  }
  const subjects = path.map((c) => dn(c.subject));
  const arrow = subjects.join(' → ');
  let status: ChainStatus;
  if (path.length === 1 && isSelfSigned(leaf)) {
    status = { status: 'self-signed', path: subjects, text: 'self-signed leaf: recipients must trust this very certificate' };
  } else if (path.length > 1 && isSelfSigned(top)) {
    status = { status: 'complete', path: subjects, text: `${arrow} (complete up to the root)` };
  } else if (path.length > 1) {
    status = { status: 'root-omitted', path: subjects, text: `${arrow} → [${dn(top.issuer)}, not included: fine if recipients trust it]` };
  } else if (others.length === 0) {
    status = { status: 'leaf-only', path: subjects, text: `leaf only, issued by ${dn(leaf.issuer)}; no intermediate certificates in the bundle` };
  } else {
    status = { status: 'broken', path: subjects, text: `the certificates in the bundle do not lead from the leaf: none of them issued it (${dn(leaf.issuer)})` };
  }
  return { status, unused: [...left] };
}

const HASHES: Record<string, { name: string; bytes: number }> = {
  '1.3.14.3.2.26': { name: 'SHA-1', bytes: 20 },
  '2.16.840.1.101.3.4.2.1': { name: 'SHA-256', bytes: 32 },
  '2.16.840.1.101.3.4.2.2': { name: 'SHA-384', bytes: 48 },
  '2.16.840.1.101.3.4.2.3': { name: 'SHA-512', bytes: 64 },
};

interface PssParameters {
  readonly hash: string;
  readonly saltLength: number;
  /** The salt is as long as the hash output, as the CA/Browser Forum S/MIME requirements prescribe. */
  readonly saltIsHashLength: boolean;
}

/** RSASSA-PSS-params of a certificate's signature (RFC 4055 §3.1; absent fields are SHA-1 and 20). */
function pssParameters(cert: pkijs.Certificate): PssParameters {
  const raw = cert.signatureAlgorithm.algorithmParams as asn1js.Sequence | undefined;
  let params: pkijs.RSASSAPSSParams;
  try {
    params = raw instanceof asn1js.Sequence ? new pkijs.RSASSAPSSParams({ schema: raw }) : new pkijs.RSASSAPSSParams();
  } catch {
    params = new pkijs.RSASSAPSSParams();
  }
  const hash = HASHES[params.hashAlgorithm.algorithmId];
  return { hash: hash?.name ?? params.hashAlgorithm.algorithmId, saltLength: params.saltLength, saltIsHashLength: hash?.bytes === params.saltLength };
}

interface PssSigned {
  readonly what: string;
  readonly params: PssParameters;
}

const pssText = (p: PssParameters) => `${p.hash}, salt length ${p.saltLength}`;

/**
 * A chain signed with RSASSA-PSS. The relay signs with it as with any RSA key: its own CMS
 * signature stays PKCS#1 v1.5, which every verifier accepts. What recipients see depends on
 * whether their client verifies PSS certificate signatures. Measured here (test/interop.test.ts):
 * OpenSSL 3.0.19 and NSS 3.87.1 verify both kinds; gpgsm 2.2.40 (libksba 1.6.3, libgcrypt 1.10.1)
 * verifies a salt as long as the hash and rejects any other ("rejected due to salt length"),
 * including the maximum salt `openssl x509 -sigopt rsa_padding_mode:pss` writes by default.
 */
function pssFinding(source: string, signed: readonly PssSigned[]): Finding {
  const list = signed.map((s) => `${s.what} (${pssText(s.params)})`).join(' and ');
  const what = `'${source}': ${list} ${signed.length > 1 ? 'are' : 'is'} signed by the CA with RSASSA-PSS.`;
  if (signed.some((s) => !s.params.saltIsHashLength)) {
    return warning('pss', `${what} gpgsm rejects a PSS salt length other than the hash length (measured: gpgsm 2.2.40, used by KMail and Evolution), so those recipients see a bad signature; OpenSSL 3.0.19 and NSS 3.87.1 (Thunderbird) accept it. The relay signs with it. Ask your CA for a certificate whose PSS salt is as long as the hash (32 for SHA-256), as the CA/Browser Forum S/MIME requirements prescribe.`);
  }
  return warning('pss', `${what} Not every mail client verifies PSS certificate signatures: measured here, OpenSSL 3.0.19, gpgsm 2.2.40 (KMail, Evolution) and NSS 3.87.1 (Thunderbird) accept this chain; Outlook and Apple Mail were not measured. The relay signs with it.`);
}

function safeVerify(cert: X509Certificate, issuer: X509Certificate): boolean {
  try {
    return cert.verify(issuer.publicKey);
  } catch {
    return false;
  }
}

const days = (ms: number) => Math.floor(ms / 86_400_000);

/**
 * Whole days from `now` until `when`, negative once it has passed: the one day count that
 * check-cert's dates and the expiry findings both print, so they never differ by one.
 */
export function daysUntil(when: Date, now: Date): number {
  const ms = when.getTime() - now.getTime();
  return ms >= 0 ? days(ms) : -days(-ms) || 0;
}
const isoDay = (d: Date) => d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC');

/** Expired / not yet valid, judged at `now`; kept apart because the store re-judges it on every lookup. */
export function validityFindings(source: string, notBefore: Date, notAfter: Date, now: Date): Finding[] {
  if (now < notBefore) {
    return [
      error(
        'not-yet-valid',
        `'${source}': the certificate is not yet valid: it starts on ${isoDay(notBefore)}, in ${days(notBefore.getTime() - now.getTime()) + 1} day(s). Check the clock of this machine, or keep the current certificate until then.`,
      ),
    ];
  }
  if (now > notAfter) {
    return [
      error(
        'expired',
        `'${source}': the certificate expired on ${isoDay(notAfter)}, ${-daysUntil(notAfter, now)} day(s) ago. Renew it with your CA and point the relay at the new bundle (no restart needed).`,
      ),
    ];
  }
  return [];
}

/**
 * Everything that can be judged about a leaf, its key and its chain without the clock: the
 * findings say what is wrong and how to fix it, naming the file.
 */
export function validateLeaf(source: string, key: KeyObject, leaf: X509Certificate, others: readonly X509Certificate[], mailboxCount: number): { findings: Finding[]; details: CertificateDetails } {
  const findings: Finding[] = [];
  const keyInfo = describeKey(key);
  const parsed = parsePkijs(leaf);
  const sigOid = parsed?.signatureAlgorithm.algorithmId ?? '';
  const signatureAlgorithm = sigOid === OID.rsaPss && parsed ? `RSASSA-PSS (${pssText(pssParameters(parsed))})` : SIGNATURE_NAMES[sigOid] ?? (sigOid || 'unknown');

  if (keyInfo.type === 'RSA' && (keyInfo.bits ?? 0) < 2048) {
    findings.push(error('weak-key', `'${source}': the RSA key has ${keyInfo.bits} bits; at least 2048 are required (NIST SP 800-131A, and current clients distrust less). Get a new certificate with an RSA 2048+ or EC P-256 key.`));
  }
  if (keyInfo.type === 'RSA-PSS' || parsed?.subjectPublicKeyInfo.algorithm.algorithmId === OID.rsaPss) {
    findings.push(error('pss', `'${source}': the key is an RSA-PSS key, so every signature would use RSA-PSS, which gpgsm (KMail, Evolution) rejects. Use a plain RSA (PKCS#1 v1.5) or EC P-256 key.`));
  }
  if (keyInfo.type === 'EC' && !['prime256v1', 'secp384r1', 'secp521r1'].includes(keyInfo.curve ?? '')) {
    findings.push(warning('key-type', `'${source}': EC curve ${keyInfo.curve} is not one of P-256, P-384 or P-521; most mail clients cannot verify it.`));
  }
  if (keyInfo.type === 'ed25519' || keyInfo.type === 'ed448') {
    findings.push(error('key-type', `'${source}': ${keyInfo.type} keys are not supported by mainstream S/MIME clients (Outlook, Thunderbird, Apple Mail). Use RSA 2048+ or EC P-256.`));
  }
  const pssLeaf = sigOid === OID.rsaPss && parsed ? pssParameters(parsed) : undefined;
  if (WEAK_SIGNATURES.has(sigOid) || pssLeaf?.hash === 'SHA-1') {
    findings.push(error('sha1', `'${source}': the certificate is signed with ${signatureAlgorithm}. Thunderbird rejects SHA-1 (and MD5) signatures, so recipients would see a broken signature. Ask your CA for a SHA-256 certificate.`));
  }
  const pssSigned: PssSigned[] = pssLeaf ? [{ what: 'the certificate', params: pssLeaf }] : [];
  for (const c of others) {
    const p = parsePkijs(c);
    const oid = p?.signatureAlgorithm.algorithmId ?? '';
    if (WEAK_SIGNATURES.has(oid) && !(c.checkIssued(c) && safeVerify(c, c))) {
      findings.push(warning('sha1', `'${source}': the chain certificate '${dn(c.subject)}' is signed with ${SIGNATURE_NAMES[oid]}; Thunderbird rejects SHA-1 in the chain. Get the current intermediate from your CA.`));
    }
    if (oid === OID.rsaPss && p) pssSigned.push({ what: `'${dn(c.subject)}'`, params: pssParameters(p) });
  }
  if (pssSigned.length) findings.push(pssFinding(source, pssSigned));

  const ext = new Map((parsed?.extensions ?? []).map((e) => [e.extnID, e]));
  const eku = ext.get(OID.extKeyUsage)?.parsedValue as pkijs.ExtKeyUsage | undefined;
  if (!eku) {
    findings.push(warning('eku', `'${source}': the certificate has no extended key usage. RFC 8550 allows that, but S/MIME certificates normally carry emailProtection and some clients expect it.`));
  } else if (!eku.keyPurposes.includes(OID.emailProtection) && !eku.keyPurposes.includes(OID.anyExtendedKeyUsage)) {
    findings.push(error('eku', `'${source}': the certificate is not for e-mail: its extended key usage lacks emailProtection (1.3.6.1.5.5.7.3.4), so clients reject signatures made with it. This is usually a TLS certificate; get an S/MIME certificate instead.`));
  }
  const ku = ext.get(OID.keyUsage)?.parsedValue as asn1js.BitString | undefined;
  if (!ext.has(OID.keyUsage)) {
    findings.push(warning('key-usage', `'${source}': the certificate has no key usage extension; Apple Mail (macOS Sierra and later) rejects such signatures.`));
  } else {
    const first = ku?.valueBlock.valueHexView[0] ?? 0;
    const digitalSignature = (first & 0x80) !== 0;
    const nonRepudiation = (first & 0x40) !== 0;
    if (!digitalSignature && !nonRepudiation) {
      findings.push(error('key-usage', `'${source}': the certificate's key usage does not include digitalSignature, so it may not sign (RFC 8550 §4.4.2). Get a certificate meant for signing.`));
    } else if (!digitalSignature) {
      findings.push(warning('key-usage', `'${source}': the certificate's key usage has nonRepudiation but not digitalSignature; some clients reject that for signing.`));
    }
  }

  if (mailboxCount === 0) {
    findings.push(error('no-mailbox', `'${source}': the certificate names no mailbox (no e-mail subjectAltName and no emailAddress in the subject), so no sender could be signed for. An S/MIME certificate must carry the mailbox it is issued to.`));
  }

  const { status: chain, unused } = chainStatus(leaf, others);
  if (chain.status === 'broken') {
    findings.push(warning('chain', `'${source}': ${chain.text}. Recipients will see "untrusted" (Outlook does not fetch missing intermediates). Append the intermediate certificate(s) from your CA to the bundle.`));
  } else if (chain.status === 'leaf-only') {
    findings.push(warning('chain', `'${source}': the bundle has no intermediate certificates. Unless ${dn(leaf.issuer)} is a root every recipient trusts, Outlook will show the signature as untrusted. Append your CA's intermediate certificate(s) to the bundle.`));
  }
  for (const c of unused) {
    findings.push(warning('chain', `'${source}': the certificate '${dn(c.subject)}' is not part of the chain from the leaf; it will be sent along but does not help.`));
  }

  return {
    findings,
    details: {
      subject: dn(leaf.subject),
      issuer: dn(leaf.issuer),
      serial: leaf.serialNumber,
      notBefore: new Date(leaf.validFrom),
      notAfter: new Date(leaf.validTo),
      key: keyInfo,
      signatureAlgorithm,
      chain,
    },
  };
}
