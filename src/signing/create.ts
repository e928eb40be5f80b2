import type { Config } from '../config/settings.js';
import type { SigningEngine } from './engine.js';
import { NativeEngine } from './native.js';
import { OpensslEngine } from './openssl.js';

/** The engine SMIME_RELAY_ENGINE names; `opensslBinary` lets fault tests put a broken openssl in front. */
export function createEngine(config: Pick<Config, 'engine' | 'signTimeoutMs'>, opensslBinary?: string): SigningEngine {
  if (config.engine === 'native') return new NativeEngine();
  return new OpensslEngine({ timeoutMs: config.signTimeoutMs, ...(opensslBinary ? { binary: opensslBinary } : {}) });
}
