import { createRequire } from 'node:module';
import { TokenError } from './token-error.js';

/**
 * The part of pkcs11js (PeculiarVentures' PKCS#11 binding) the relay uses. It is declared here,
 * not imported from the package's own types, because pkcs11js is an optionalDependency: on a
 * machine without a compiler its native build fails, npm leaves it out, and the relay must still
 * compile and run with keys from files.
 */
export interface Pkcs11Module {
  load(path: string): void;
  close(): void;
  C_Initialize(options?: { flags?: number }): void;
  C_Finalize(): void;
  C_GetSlotList(tokenPresent?: boolean): Buffer[];
  C_GetTokenInfo(slot: Buffer): { label: string; flags: number };
  C_GetMechanismList(slot: Buffer): number[];
  C_OpenSession(slot: Buffer, flags: number): Buffer;
  C_CloseSession(session: Buffer): void;
  C_Login(session: Buffer, userType: number, pin?: string): void;
  C_FindObjectsInit(session: Buffer, template: { type: number; value?: number | boolean | Buffer }[]): void;
  C_FindObjects(session: Buffer, maxObjectCount: number): Buffer[];
  C_FindObjectsFinal(session: Buffer): void;
  C_GetAttributeValue(session: Buffer, object: Buffer, template: { type: number }[]): { type: number; value: Buffer }[];
  C_SignInit(session: Buffer, mechanism: { mechanism: number }, key: Buffer): void;
  /** Runs C_Sign on a libuv worker thread: the event loop stays free while the token works. */
  C_SignAsync(session: Buffer, data: Buffer, out: Buffer): Promise<Buffer>;
}

/** PKCS#11 v2.40 constants, by the names the standard gives them (pkcs11t.h). */
export interface Pkcs11Constants {
  CKF_OS_LOCKING_OK: number;
  CKF_SERIAL_SESSION: number;
  CKF_USER_PIN_LOCKED: number;
  CKF_USER_PIN_FINAL_TRY: number;
  CKF_USER_PIN_INITIALIZED: number;
  CKU_USER: number;
  CKO_PRIVATE_KEY: number;
  CKO_PUBLIC_KEY: number;
  CKA_CLASS: number;
  CKA_KEY_TYPE: number;
  CKA_LABEL: number;
  CKA_ID: number;
  CKA_SIGN: number;
  CKA_ALWAYS_AUTHENTICATE: number;
  CKA_MODULUS: number;
  CKA_PUBLIC_EXPONENT: number;
  CKA_EC_POINT: number;
  CKK_RSA: number;
  CKK_EC: number;
  CKM_RSA_PKCS: number;
  CKM_SHA256_RSA_PKCS: number;
  CKM_ECDSA: number;
}

export interface Pkcs11Binding extends Pkcs11Constants {
  PKCS11: new () => Pkcs11Module;
}

export const BINDING_PACKAGE = 'pkcs11js';

let cached: Pkcs11Binding | undefined;

/**
 * pkcs11js, loaded on first use only: a relay without SMIME_RELAY_PKCS11_MODULE never touches it.
 * Throws a TokenError that says how to get it when it is not installed or was not built.
 */
export function loadBinding(): Pkcs11Binding {
  if (cached) return cached;
  try {
    cached = createRequire(import.meta.url)(BINDING_PACKAGE) as Pkcs11Binding;
    return cached;
  } catch (e) {
    throw new TokenError(
      'token-binding',
      `SMIME_RELAY_PKCS11_MODULE is set, but the PKCS#11 binding (the optional npm package ${BINDING_PACKAGE}) is not installed or was not built ` +
        `(${(e as Error).message.split('\n')[0]}). It is compiled when npm installs it, which needs a C++ compiler, make and python3: ` +
        `apt-get install -y g++ make python3, then run npm ci (or npm rebuild ${BINDING_PACKAGE}) again.`,
    );
  }
}
