import type { X509Certificate } from 'node:crypto';
import * as pkijs from 'pkijs';

const OID = {
  authorityInfoAccess: '1.3.6.1.5.5.7.1.1',
  ocsp: '1.3.6.1.5.5.7.48.1',
  crlDistributionPoints: '2.5.29.31',
} as const;

/** GeneralName CHOICE tag of uniformResourceIdentifier (RFC 5280 §4.2.1.6). */
const URI = 6;

/** Where the certificate says its status is published: HTTP(S) URLs only, in the certificate's order. */
export interface RevocationSources {
  /** Authority Information Access, id-ad-ocsp (RFC 5280 §4.2.2.1, RFC 6960). */
  readonly ocsp: string[];
  /** CRL Distribution Points, fullName URIs (RFC 5280 §4.2.1.13). */
  readonly crl: string[];
}

export function revocationSources(cert: X509Certificate): RevocationSources {
  let parsed: pkijs.Certificate;
  try {
    parsed = pkijs.Certificate.fromBER(cert.raw);
  } catch {
    return { ocsp: [], crl: [] };
  }
  const http = (s: unknown): s is string => typeof s === 'string' && /^https?:\/\//i.test(s);
  const ocsp: string[] = [];
  const crl: string[] = [];
  for (const ext of parsed.extensions ?? []) {
    if (ext.extnID === OID.authorityInfoAccess && ext.parsedValue instanceof pkijs.InfoAccess) {
      for (const d of ext.parsedValue.accessDescriptions) {
        if (d.accessMethod === OID.ocsp && d.accessLocation.type === URI && http(d.accessLocation.value)) ocsp.push(d.accessLocation.value);
      }
    }
    if (ext.extnID === OID.crlDistributionPoints && ext.parsedValue instanceof pkijs.CRLDistributionPoints) {
      for (const point of ext.parsedValue.distributionPoints) {
        const names = Array.isArray(point.distributionPoint) ? point.distributionPoint : [];
        for (const n of names) if (n.type === URI && http(n.value)) crl.push(n.value);
      }
    }
  }
  return { ocsp, crl };
}
