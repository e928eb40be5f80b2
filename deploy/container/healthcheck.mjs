// Container HEALTHCHECK: exit 0 when the relay answers GET /healthz with 2xx, else 1.
// The slim Node image has no curl or wget; Node's own fetch does the job without adding a
// package. It asks loopback on the port of SMIME_RELAY_METRICS, so it works whether the
// metrics listener binds 0.0.0.0, 127.0.0.1 or ::.
const metrics = process.env.SMIME_RELAY_METRICS;
if (!metrics) {
  console.error('healthcheck: SMIME_RELAY_METRICS is not set, so there is no /healthz to ask');
  process.exit(1);
}
const port = Number(metrics.slice(metrics.lastIndexOf(':') + 1));
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error(`healthcheck: no port in SMIME_RELAY_METRICS=${metrics}`);
  process.exit(1);
}
const host = metrics.startsWith('[') || metrics.slice(0, metrics.lastIndexOf(':')).includes(':') ? '[::1]' : '127.0.0.1';
const url = `http://${host}:${port}/healthz`;
try {
  const res = await fetch(url, { signal: AbortSignal.timeout(4000) });
  if (!res.ok) console.error(`healthcheck: ${url} answered ${res.status}`);
  process.exit(res.ok ? 0 : 1);
} catch (err) {
  console.error(`healthcheck: ${url}: ${err instanceof Error ? (err.cause ?? err).toString() : String(err)}`);
  process.exit(1);
}
