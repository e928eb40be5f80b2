import type { CertificateBundle } from '../certs/bundle.js';
import type { CertificateStore } from '../certs/store.js';

/**
 * Every certificate the store would sign with now (valid today), each once. Asked through
 * lookup() so it shows exactly what a message would get, including a hot reload.
 */
export function certificatesInService(store: CertificateStore): CertificateBundle[] {
  const out = new Map<string, CertificateBundle>();
  for (const m of store.mailboxes()) {
    const found = store.lookup(m);
    if (found.kind === 'ok') out.set(found.bundle.serial, found.bundle);
  }
  return [...out.values()];
}
