import { createHash, type X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { Logger } from 'pino';
import { permissionVerdict } from '../../certs/load.js';
import { SigningError } from '../engine.js';
import type { KeyLocation, KeySource, SigningKey } from '../key.js';
import { Semaphore } from '../semaphore.js';
import { loadBinding, type Pkcs11Binding, type Pkcs11Module } from './binding.js';
import { publicKeyOf, sameModulus, samePoint, type PublicKeyMatch } from './match.js';
import { acquireModule, releaseModule } from './module.js';
import { digestInfoSha256, ecdsaDer } from './signature.js';
import { ckr, TokenError } from './token-error.js';

export interface TokenOptions {
  /** SMIME_RELAY_PKCS11_MODULE */
  module: string;
  /** SMIME_RELAY_PKCS11_TOKEN: the token label. */
  token: string;
  /** SMIME_RELAY_PKCS11_PIN_FILE: the user PIN is its first line. */
  pinFile: string;
  /** Logged-in sessions used for signing at once. */
  sessions?: number;
  log?: Logger;
}

/** The token as it is while logged in. A token error replaces it with a fresh one (`generation`). */
interface OpenToken {
  readonly generation: number;
  readonly module: Pkcs11Module;
  readonly slot: Buffer;
  /** Logs in and looks keys up; never signs, so lookups and signatures do not share an operation. */
  readonly control: Buffer;
  /** Signing sessions not in use right now. */
  readonly idle: Buffer[];
  readonly mechanisms: ReadonlySet<number>;
  readonly warnings: string[];
}

/** Answers that mean the sessions, the login or the token's slot are gone: re-open, then retry once. */
const REOPEN = new Set([
  'CKR_SESSION_HANDLE_INVALID',
  'CKR_SESSION_CLOSED',
  'CKR_USER_NOT_LOGGED_IN',
  'CKR_DEVICE_REMOVED',
  'CKR_DEVICE_ERROR',
  'CKR_TOKEN_NOT_PRESENT',
  'CKR_TOKEN_NOT_RECOGNIZED',
  'CKR_SLOT_ID_INVALID',
]);
/** Answers that mean the key object changed (re-imported, replaced): look it up again, then retry once. */
const REFIND = new Set(['CKR_KEY_HANDLE_INVALID', 'CKR_OBJECT_HANDLE_INVALID']);

const DEFAULT_SESSIONS = 4;

/**
 * A PKCS#11 token holding signing keys (SMIME_RELAY_PKCS11_*). A certificate whose file has no
 * private key is paired with the token's private key whose public key matches it: CKA_MODULUS for
 * RSA, CKA_EC_POINT of the public key object with the same CKA_ID for EC. The private key never
 * leaves the token; the relay only hands it the bytes to sign.
 *
 * Signing uses a small pool of sessions of one login: C_SignInit, then C_Sign on a libuv worker
 * thread (pkcs11js' asynchronous call), so the event loop keeps serving SMTP while the token
 * works. A token error closes the sessions; the next signature logs in again. A wrong PIN is never
 * tried twice: real tokens lock the PIN after a few failures, so the same PIN is only tried again
 * once the PIN file changed (and the certificates are reloaded, e.g. by SIGHUP).
 */
export class Pkcs11Token implements KeySource {
  readonly label: string;
  readonly description: string;
  private readonly slots: Semaphore;
  private readonly log: Logger | undefined;
  private state: OpenToken | undefined;
  private generation = 0;
  private module: Pkcs11Module | undefined;
  /** A PIN the token refused: not tried again while the PIN file still holds it. */
  private refused: { pin: string; error: TokenError } | undefined;
  private closed = false;

  constructor(private readonly opts: TokenOptions) {
    this.label = opts.token;
    this.description = `token ${opts.token}`;
    this.slots = new Semaphore(opts.sessions ?? DEFAULT_SESSIONS);
    this.log = opts.log?.child({ component: 'pkcs11', token: opts.token });
  }

  keyFor(certificate: X509Certificate): { key: SigningKey; warnings: string[] } {
    const open = this.open();
    const match = publicKeyOf(certificate);
    if (!match) {
      throw new TokenError('token-no-key', `the certificate has a ${certificate.publicKey.asymmetricKeyType} key; keys on a token are used for RSA and EC (P-256, P-384, P-521) certificates only`);
    }
    const found = this.find(open, match);
    return { key: new TokenKey(this, match, found.handle, open.generation, found.object), warnings: open.warnings };
  }

  /** Signs on the token; rejects with a SigningError (451 4.7.0), never with anything that could become a 250. */
  sign(key: TokenKey, data: Buffer): Promise<Buffer> {
    return this.slots.run(async () => {
      for (let attempt = 1; ; attempt++) {
        try {
          return await this.signOnce(key, data);
        } catch (e) {
          const code = ckr(e);
          const again = attempt === 1 && code !== undefined && (REOPEN.has(code) || REFIND.has(code));
          if (again) {
            this.log?.warn({ err: code }, `${this.description} answered ${code} while signing; ${REOPEN.has(code) ? 'opening new sessions' : 'looking the key up again'} and retrying once`);
            if (REOPEN.has(code)) this.reset();
            else key.forget();
            continue;
          }
          const why = e instanceof TokenError ? e.message : (code ?? (e as Error).message);
          throw new SigningError(`PKCS#11 ${this.description}: ${why}`);
        }
      }
    });
  }

  close(): void {
    this.closed = true;
    this.reset();
    if (this.module) releaseModule(this.opts.module);
    this.module = undefined;
  }

  private async signOnce(key: TokenKey, data: Buffer): Promise<Buffer> {
    const open = this.open();
    const handle = key.handleIn(open.generation) ?? this.rebind(open, key);
    const m = open.module;
    const b = loadBinding();
    let mechanism: number;
    let input: Buffer;
    if (key.match.type === 'ec') {
      mechanism = b.CKM_ECDSA;
      input = createHash('sha256').update(data).digest();
    } else if (open.mechanisms.has(b.CKM_SHA256_RSA_PKCS)) {
      mechanism = b.CKM_SHA256_RSA_PKCS;
      input = data;
    } else {
      mechanism = b.CKM_RSA_PKCS;
      input = digestInfoSha256(createHash('sha256').update(data).digest());
    }
    const session = open.idle.pop() ?? m.C_OpenSession(open.slot, b.CKF_SERIAL_SESSION);
    let ok = false;
    try {
      m.C_SignInit(session, { mechanism }, handle);
      const signature = await m.C_SignAsync(session, input, Buffer.alloc(key.match.bytes + 16));
      ok = true;
      return key.match.type === 'ec' ? ecdsaDer(signature) : Buffer.from(signature);
    } finally {
      // A session whose operation failed, or that belongs to a token state since replaced, is closed.
      if (ok && this.state === open) open.idle.push(session);
      else closeQuietly(m, session);
    }
  }

  /** Logs in (once per token state) and returns the open token; throws a TokenError. */
  private open(): OpenToken {
    if (this.closed) throw new TokenError('token-error', 'the relay is shutting down');
    if (this.state) return this.state;
    const { module: path, token: label, pinFile } = this.opts;
    const { pin, warnings } = readPin(pinFile);
    if (this.refused?.pin === pin) throw this.refused.error;
    const b: Pkcs11Binding = loadBinding();
    this.module ??= acquireModule(b, path);
    const m = this.module;
    let control: Buffer | undefined;
    try {
      const slot = findSlot(m, label);
      const flags = m.C_GetTokenInfo(slot).flags;
      // A locked token gets no PIN at all: it refuses any until an admin unlocks it.
      if (flags & b.CKF_USER_PIN_LOCKED) throw locked(label);
      if (!(flags & b.CKF_USER_PIN_INITIALIZED)) {
        throw new TokenError('token-pin', `token '${label}' has no user PIN set yet (CKF_USER_PIN_INITIALIZED is off); set one with the security officer PIN (pkcs11-tool --init-pin --login --login-type so), then put it into the PIN file`);
      }
      control = m.C_OpenSession(slot, b.CKF_SERIAL_SESSION);
      try {
        m.C_Login(control, b.CKU_USER, pin);
      } catch (e) {
        const code = ckr(e);
        if (code === 'CKR_PIN_INCORRECT') {
          const left = flags & b.CKF_USER_PIN_FINAL_TRY ? '; that was the final try before the token locks, so check the PIN before anything else' : '';
          const error = new TokenError('token-pin', `token '${label}' refused the PIN in '${pinFile}' (CKR_PIN_INCORRECT). Put the user PIN on the first line of that file; it is not tried again until the file changes${left}`);
          this.refused = { pin, error };
          throw error;
        }
        if (code === 'CKR_PIN_LOCKED') throw locked(label);
        if (code !== 'CKR_USER_ALREADY_LOGGED_IN') throw new TokenError('token-error', `token '${label}': login failed (${code ?? (e as Error).message})`);
      }
      const state: OpenToken = {
        generation: ++this.generation,
        module: m,
        slot,
        control,
        idle: [],
        mechanisms: new Set(m.C_GetMechanismList(slot)),
        warnings,
      };
      this.state = state;
      this.refused = undefined;
      this.log?.info({ module: path }, `logged in to PKCS#11 ${this.description}`);
      return state;
    } catch (e) {
      if (control) closeQuietly(m, control);
      throw e instanceof TokenError ? e : new TokenError('token-error', `token '${label}': ${ckr(e) ?? (e as Error).message}`);
    }
  }

  /** Closes every session of the current state; the next use logs in again (the slot may have changed too). */
  private reset(): void {
    const state = this.state;
    this.state = undefined;
    if (!state) return;
    for (const s of state.idle.splice(0)) closeQuietly(state.module, s);
    closeQuietly(state.module, state.control);
  }

  private rebind(open: OpenToken, key: TokenKey): Buffer {
    const found = this.find(open, key.match);
    key.bind(found.handle, open.generation);
    return found.handle;
  }

  /** The private key for the public key, found through the control session. */
  private find(open: OpenToken, match: PublicKeyMatch): { handle: Buffer; object: string } {
    const b = loadBinding();
    const m = open.module;
    const s = open.control;
    const privates = findObjects(m, s, [{ type: b.CKA_CLASS, value: b.CKO_PRIVATE_KEY }]);
    const described = privates.map((h) => ({ handle: h, ...describeObject(b, m, s, h) }));
    let found: (typeof described)[number] | undefined;
    if (match.type === 'rsa') {
      found = described.find((k) => k.keyType === b.CKK_RSA && sameModulus(attribute(m, s, k.handle, b.CKA_MODULUS) ?? Buffer.alloc(0), match));
    } else {
      // EC private key objects carry no public point; the public key object with the same CKA_ID does.
      const publics = findObjects(m, s, [{ type: b.CKA_CLASS, value: b.CKO_PUBLIC_KEY }, { type: b.CKA_KEY_TYPE, value: b.CKK_EC }]);
      const pub = publics.find((h) => samePoint(attribute(m, s, h, b.CKA_EC_POINT) ?? Buffer.alloc(0), match));
      const id = pub ? attribute(m, s, pub, b.CKA_ID) : undefined;
      found = id ? described.find((k) => k.keyType === b.CKK_EC && k.id.equals(id)) : undefined;
    }
    if (!found) {
      const inventory = described.length
        ? `it holds ${described.map((k) => `${k.object} (${k.keyType === b.CKK_RSA ? 'RSA' : k.keyType === b.CKK_EC ? 'EC' : `key type ${k.keyType}`})`).join(', ')}`
        : 'it holds no private keys';
      throw new TokenError(
        'token-no-key',
        `no private key on token '${this.opts.token}' matches the certificate's ${match.type === 'rsa' ? 'RSA modulus' : `EC ${match.curve} point`}; ${inventory}. ` +
          `Import the key the certificate was issued for, with its public key (softhsm2-util --import key.pem --token ${this.opts.token} --label … --id … , or your HSM's tools).`,
      );
    }
    if (!flag(attribute(m, s, found.handle, b.CKA_SIGN))) {
      throw new TokenError('token-no-key', `the matching key ${found.object} on token '${this.opts.token}' may not sign (CKA_SIGN is false)`);
    }
    if (flag(attribute(m, s, found.handle, b.CKA_ALWAYS_AUTHENTICATE))) {
      throw new TokenError('token-no-key', `the matching key ${found.object} on token '${this.opts.token}' wants the PIN again for every signature (CKA_ALWAYS_AUTHENTICATE), which a relay cannot give`);
    }
    return { handle: found.handle, object: found.object };
  }
}

/** A private key on the token, found by the public key of its certificate. */
export class TokenKey implements SigningKey {
  readonly type: string;
  readonly location: KeyLocation;
  private generation: number;

  constructor(
    private readonly token: Pkcs11Token,
    readonly match: PublicKeyMatch,
    private handle: Buffer,
    generation: number,
    object: string,
  ) {
    this.type = match.type;
    this.generation = generation;
    this.location = { kind: 'token', token: token.label, object };
  }

  sign(data: Buffer): Promise<Buffer> {
    return this.token.sign(this, data);
  }

  /** The object handle, if it was found in this token state; handles do not survive a new login. */
  handleIn(generation: number): Buffer | undefined {
    return generation === this.generation ? this.handle : undefined;
  }

  bind(handle: Buffer, generation: number): void {
    this.handle = handle;
    this.generation = generation;
  }

  forget(): void {
    this.generation = -1;
  }
}

function readPin(pinFile: string): { pin: string; warnings: string[] } {
  let text: string;
  try {
    text = readFileSync(pinFile, 'utf8');
  } catch (e) {
    throw new TokenError('token-pin', `the PIN file '${pinFile}' (SMIME_RELAY_PKCS11_PIN_FILE) cannot be read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  const pin = text.split(/\r?\n/)[0] ?? '';
  if (!pin) throw new TokenError('token-pin', `the PIN file '${pinFile}' (SMIME_RELAY_PKCS11_PIN_FILE) is empty; put the token's user PIN on its first line`);
  return { pin, warnings: permissionVerdict(pinFile, 'PKCS#11 PIN file').findings.map((f) => f.message) };
}

function findSlot(m: Pkcs11Module, label: string): Buffer {
  const seen: string[] = [];
  for (const slot of m.C_GetSlotList(true)) {
    const name = m.C_GetTokenInfo(slot).label.trim();
    if (name === label) return slot;
    // SoftHSM always offers one uninitialised token with an empty label; it is not worth naming.
    if (name) seen.push(`'${name}'`);
  }
  throw new TokenError(
    'token-not-found',
    `no token labelled '${label}' (SMIME_RELAY_PKCS11_TOKEN) is present; the module sees ${seen.length ? seen.join(', ') : 'no token at all'}`,
  );
}

function locked(label: string): TokenError {
  return new TokenError(
    'token-locked',
    `token '${label}' is locked: its user PIN was entered wrongly too often (CKF_USER_PIN_LOCKED). Unlock it with the security officer PIN (pkcs11-tool --init-pin --login --login-type so, or your HSM's tools); the relay does not try a PIN on a locked token`,
  );
}

function findObjects(m: Pkcs11Module, s: Buffer, template: { type: number; value?: number | boolean | Buffer }[]): Buffer[] {
  m.C_FindObjectsInit(s, template);
  try {
    const out: Buffer[] = [];
    for (let batch = m.C_FindObjects(s, 64); batch.length > 0; batch = m.C_FindObjects(s, 64)) out.push(...batch);
    return out;
  } finally {
    m.C_FindObjectsFinal(s);
  }
}

/** One attribute's value, or undefined when the object does not have it (CKR_ATTRIBUTE_TYPE_INVALID). */
function attribute(m: Pkcs11Module, s: Buffer, object: Buffer, type: number): Buffer | undefined {
  try {
    return m.C_GetAttributeValue(s, object, [{ type }])[0]?.value;
  } catch (e) {
    if (ckr(e)?.startsWith('CKR_ATTRIBUTE_')) return undefined;
    throw e;
  }
}

function describeObject(b: Pkcs11Binding, m: Pkcs11Module, s: Buffer, h: Buffer): { keyType: number; id: Buffer; object: string } {
  const keyType = ulong(attribute(m, s, h, b.CKA_KEY_TYPE));
  const id = attribute(m, s, h, b.CKA_ID) ?? Buffer.alloc(0);
  const label = attribute(m, s, h, b.CKA_LABEL)?.toString('utf8') ?? '';
  return { keyType, id, object: `label '${label}', id ${id.length ? id.toString('hex') : '(none)'}` };
}

/** CK_ULONG in the platform's byte order, which is little-endian on every machine this runs on. */
function ulong(value: Buffer | undefined): number {
  if (!value || value.length === 0) return -1;
  return value.length >= 8 ? Number(value.readBigUInt64LE()) : value.readUInt32LE();
}

const flag = (value: Buffer | undefined): boolean => value !== undefined && value.length > 0 && value[0] !== 0;

function closeQuietly(m: Pkcs11Module, session: Buffer): void {
  try {
    m.C_CloseSession(session);
  } catch {
    // already gone with the token or the login
  }
}
