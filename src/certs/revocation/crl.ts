import type { X509Certificate } from 'node:crypto';
import * as asn1js from 'asn1js';
import * as pkijs from 'pkijs';
import { checkFreshness, type Answer } from './answer.js';
import { fetchBytes } from './http.js';
import { REVOCATION_REASONS, verifiesWith } from './signed.js';

const REASON_CODE = '2.5.29.21';

/**
 * Fetches a CRL (RFC 5280 §5) over HTTP, DER or PEM, checks that the issuer signed it and that it
 * is current, and looks the certificate's serial up in it. Throws an Error that says what went
 * wrong otherwise.
 */
export async function consultCrl(leaf: X509Certificate, issuer: X509Certificate, url: string, timeoutMs: number, now: Date): Promise<Answer> {
  const body = await fetchBytes(url, { method: 'GET', accept: 'application/pkix-crl' }, timeoutMs);
  const pem = /-----BEGIN X509 CRL-----([\s\S]*?)-----END X509 CRL-----/.exec(body.toString('latin1'));
  const der = pem ? new Uint8Array(Buffer.from(pem[1]!.replace(/\s+/g, ''), 'base64')) : body;
  let crl: pkijs.CertificateRevocationList;
  try {
    crl = pkijs.CertificateRevocationList.fromBER(der);
  } catch (e) {
    throw new Error(`${url} did not send a CRL (${(e as Error).message})`);
  }
  const issuerP = pkijs.Certificate.fromBER(issuer.raw);
  if (!Buffer.from(crl.issuer.valueBeforeDecode).equals(Buffer.from(issuerP.subject.valueBeforeDecode))) {
    throw new Error(`the CRL at ${url} was issued by another CA, not by the certificate's issuer`);
  }
  if (!verifiesWith(crl.tbsView, crl.signatureAlgorithm.algorithmId, crl.signatureValue.valueBlock.valueHexView, issuer.publicKey)) {
    throw new Error(`the CRL at ${url} is not signed by the certificate's issuer`);
  }
  const thisUpdate = crl.thisUpdate.value;
  const nextUpdate = crl.nextUpdate?.value;
  checkFreshness(`the CRL at ${url}`, thisUpdate, nextUpdate, now);
  const serial = Buffer.from(pkijs.Certificate.fromBER(leaf.raw).serialNumber.valueBlock.valueHexView).toString('hex');
  const entry = (crl.revokedCertificates ?? []).find((r) => Buffer.from(r.userCertificate.valueBlock.valueHexView).toString('hex') === serial);
  if (!entry) return { state: 'good', thisUpdate, nextUpdate };
  const reasonExt = entry.crlEntryExtensions?.extensions.find((e) => e.extnID === REASON_CODE)?.parsedValue as asn1js.Enumerated | undefined;
  const code = reasonExt?.valueBlock.valueDec;
  return { state: 'revoked', revokedAt: entry.revocationDate.value, reason: code === undefined ? undefined : (REVOCATION_REASONS[code] ?? `reason ${code}`), thisUpdate, nextUpdate };
}
