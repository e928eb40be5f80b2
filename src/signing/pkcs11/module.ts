import type { Pkcs11Binding, Pkcs11Module } from './binding.js';
import { ckr, TokenError } from './token-error.js';

interface Loaded {
  readonly module: Pkcs11Module;
  users: number;
}

/**
 * A PKCS#11 module is initialised once per process: C_Initialize a second time answers
 * CKR_CRYPTOKI_ALREADY_INITIALIZED, and C_Finalize ends every session of the process. Several
 * relays in one process (the tests) therefore share one loaded module per path, finalised when
 * the last of them lets go.
 */
const loaded = new Map<string, Loaded>();

export function acquireModule(binding: Pkcs11Binding, path: string): Pkcs11Module {
  const known = loaded.get(path);
  if (known) {
    known.users++;
    return known.module;
  }
  const module = new binding.PKCS11();
  try {
    module.load(path);
  } catch (e) {
    throw new TokenError(
      'token-module',
      `the PKCS#11 module '${path}' (SMIME_RELAY_PKCS11_MODULE) does not load: ${(e as Error).message}. ` +
        `Give the path of your token's PKCS#11 library (SoftHSM: /usr/lib/softhsm/libsofthsm2.so; OpenSC: /usr/lib/x86_64-linux-gnu/opensc-pkcs11.so)`,
    );
  }
  try {
    // Signatures run on libuv worker threads in parallel: the module must do its own locking.
    module.C_Initialize({ flags: binding.CKF_OS_LOCKING_OK });
  } catch (e) {
    if (ckr(e) !== 'CKR_CRYPTOKI_ALREADY_INITIALIZED') {
      module.close();
      throw new TokenError('token-module', `the PKCS#11 module '${path}' loads but does not initialise (C_Initialize: ${(e as Error).message}). Check its own configuration (SoftHSM: SOFTHSM2_CONF)`);
    }
  }
  loaded.set(path, { module, users: 1 });
  return module;
}

export function releaseModule(path: string): void {
  const known = loaded.get(path);
  if (!known || --known.users > 0) return;
  loaded.delete(path);
  try {
    known.module.C_Finalize();
  } catch {
    // finalising is the last word; a module that disagrees changes nothing
  }
  known.module.close();
}
