/** Larger answers are not an OCSP response or a CRL the relay should hold in memory. */
const MAX_BYTES = 32 * 1024 * 1024;

/**
 * One HTTP exchange with a responder or CRL server, bounded in time. Rejects with an Error whose
 * message says what happened in words an admin can act on ("connection refused", "no answer
 * within 10 s", "HTTP 404").
 */
export async function fetchBytes(url: string, init: { method: 'GET' | 'POST'; body?: Uint8Array<ArrayBuffer>; contentType?: string; accept: string }, timeoutMs: number): Promise<Buffer<ArrayBuffer>> {
  let res: Response;
  try {
    res = await fetch(url, {
      method: init.method,
      body: init.body,
      headers: { accept: init.accept, ...(init.contentType ? { 'content-type': init.contentType } : {}) },
      signal: AbortSignal.timeout(timeoutMs),
      redirect: 'follow',
    });
  } catch (e) {
    const err = e as Error & { cause?: { code?: string; message?: string } };
    if (err.name === 'TimeoutError' || err.name === 'AbortError') throw new Error(`no answer from ${url} within ${timeoutMs / 1000} s`);
    const cause = err.cause?.code ?? err.cause?.message ?? err.message;
    throw new Error(`${url} could not be reached (${cause === 'ECONNREFUSED' ? 'connection refused' : cause})`);
  }
  if (!res.ok) throw new Error(`${url} answered HTTP ${res.status}`);
  const length = Number(res.headers.get('content-length') ?? 0);
  if (length > MAX_BYTES) throw new Error(`${url} sent ${length} bytes, more than the ${MAX_BYTES} a status answer may have`);
  const body = Buffer.from(await res.arrayBuffer());
  if (body.length > MAX_BYTES) throw new Error(`${url} sent more than ${MAX_BYTES} bytes`);
  return body;
}
