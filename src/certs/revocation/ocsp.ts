import { createHash, X509Certificate } from 'node:crypto';
import * as asn1js from 'asn1js';
import * as pkijs from 'pkijs';
import { checkFreshness, type Answer } from './answer.js';
import { fetchBytes } from './http.js';
import { REVOCATION_REASONS, verifiesWith } from './signed.js';

const OID = {
  sha1: '1.3.14.3.2.26',
  basicResponse: '1.3.6.1.5.5.7.48.1.1',
  ocspSigning: '1.3.6.1.5.5.7.3.9',
} as const;

/** OCSPResponseStatus (RFC 6960 §4.2.1). */
const RESPONSE_STATUS: Record<number, string> = {
  1: 'malformedRequest',
  2: 'internalError',
  3: 'tryLater',
  5: 'sigRequired',
  6: 'unauthorized',
};

const hex = (b: ArrayBuffer | Uint8Array) => Buffer.from(b instanceof Uint8Array ? b : new Uint8Array(b)).toString('hex');

/**
 * Asks an OCSP responder (RFC 6960) about `leaf` over HTTP POST and checks the answer: signed by
 * the issuer or by a responder the issuer delegated (id-kp-OCSPSigning), about this very
 * certificate, and current. Throws an Error that says what went wrong otherwise.
 *
 * The CertID uses SHA-1, which every responder understands (RFC 5019 §2.1.1); it names the
 * certificate, it protects nothing, so SHA-1's weakness does not matter here.
 */
export async function queryOcsp(leaf: X509Certificate, issuer: X509Certificate, url: string, timeoutMs: number, now: Date): Promise<Answer> {
  const leafP = pkijs.Certificate.fromBER(leaf.raw);
  const issuerP = pkijs.Certificate.fromBER(issuer.raw);
  const nameHash = createHash('sha1').update(Buffer.from(issuerP.subject.valueBeforeDecode)).digest();
  const keyHash = createHash('sha1').update(issuerP.subjectPublicKeyInfo.subjectPublicKey.valueBlock.valueHexView).digest();
  const serial = leafP.serialNumber.valueBlock.valueHexView;
  const certId = new asn1js.Sequence({
    value: [
      new asn1js.Sequence({ value: [new asn1js.ObjectIdentifier({ value: OID.sha1 }), new asn1js.Null()] }),
      new asn1js.OctetString({ valueHex: nameHash }),
      new asn1js.OctetString({ valueHex: keyHash }),
      new asn1js.Integer({ valueHex: serial }),
    ],
  });
  // OCSPRequest { tbsRequest { requestList { Request { reqCert } } } }, no nonce: most responders
  // serve pre-signed answers and ignore it; freshness comes from thisUpdate/nextUpdate instead.
  const request = new asn1js.Sequence({ value: [new asn1js.Sequence({ value: [new asn1js.Sequence({ value: [new asn1js.Sequence({ value: [certId] })] })] })] });
  const body = await fetchBytes(url, { method: 'POST', body: new Uint8Array(request.toBER()), contentType: 'application/ocsp-request', accept: 'application/ocsp-response' }, timeoutMs);

  let response: pkijs.OCSPResponse;
  let basic: pkijs.BasicOCSPResponse;
  try {
    response = pkijs.OCSPResponse.fromBER(body);
  } catch (e) {
    throw new Error(`${url} did not answer with an OCSP response (${(e as Error).message})`);
  }
  const status = response.responseStatus.valueBlock.valueDec;
  if (status !== 0) throw new Error(`${url} refused the request: ${RESPONSE_STATUS[status] ?? `status ${status}`}`);
  if (response.responseBytes?.responseType !== OID.basicResponse) throw new Error(`${url} answered with an OCSP response type other than basic`);
  try {
    basic = pkijs.BasicOCSPResponse.fromBER(new Uint8Array(response.responseBytes.response.valueBlock.valueHexView));
  } catch (e) {
    throw new Error(`${url} sent a malformed OCSP response (${(e as Error).message})`);
  }

  // Signed by the issuer itself, or by a responder certificate the issuer issued for OCSP signing (RFC 6960 §4.2.2.2).
  const tbs = basic.tbsResponseData.tbsView;
  const algorithm = basic.signatureAlgorithm.algorithmId;
  const signature = basic.signature.valueBlock.valueHexView;
  const included = (basic.certs ?? []).map((c) => new X509Certificate(Buffer.from(c.toSchema().toBER())));
  const signer = [issuer, ...included].find((c) => verifiesWith(tbs, algorithm, signature, c.publicKey));
  if (!signer) throw new Error(`the OCSP response from ${url} is not signed by the issuer or a responder certificate it carries`);
  if (!signer.raw.equals(issuer.raw)) {
    const delegated = signer.checkIssued(issuer) && signer.verify(issuer.publicKey) && (signer.keyUsage ?? []).includes(OID.ocspSigning);
    if (!delegated) throw new Error(`the OCSP response from ${url} is signed by '${signer.subject.replace(/\n/g, ', ')}', which the issuer did not authorise for OCSP signing`);
  }

  const single = basic.tbsResponseData.responses.find(
    (r) =>
      r.certID.hashAlgorithm.algorithmId === OID.sha1 &&
      hex(r.certID.issuerNameHash.valueBlock.valueHexView) === nameHash.toString('hex') &&
      hex(r.certID.issuerKeyHash.valueBlock.valueHexView) === keyHash.toString('hex') &&
      hex(r.certID.serialNumber.valueBlock.valueHexView) === hex(serial),
  );
  if (!single) throw new Error(`the OCSP response from ${url} is about other certificates`);
  checkFreshness(`the OCSP response from ${url}`, single.thisUpdate, single.nextUpdate, now);
  const certStatus = single.certStatus as asn1js.BaseBlock;
  const base = { thisUpdate: single.thisUpdate, nextUpdate: single.nextUpdate };
  switch (certStatus.idBlock.tagNumber) {
    case 0:
      return { state: 'good', ...base };
    case 1: {
      // revoked [1] IMPLICIT RevokedInfo { revocationTime GeneralizedTime, revocationReason [0] EXPLICIT CRLReason OPTIONAL }
      const [time, reason] = (certStatus as asn1js.Constructed).valueBlock.value;
      const code = reason ? ((reason as asn1js.Constructed).valueBlock.value[0] as asn1js.Enumerated | undefined)?.valueBlock.valueDec : undefined;
      return { state: 'revoked', revokedAt: (time as asn1js.GeneralizedTime).toDate(), reason: code === undefined ? undefined : (REVOCATION_REASONS[code] ?? `reason ${code}`), ...base };
    }
    default:
      throw new Error(`the OCSP responder ${url} does not know the certificate (status unknown)`);
  }
}
