/**
 * The deployment artefacts in deploy/ are read by other programs (kubectl, systemd, Docker,
 * Postfix), so these tests read them the way those programs do and check that the pieces agree
 * with each other and with the relay: ports, paths, probe endpoints, users. Where the real tool
 * is on the machine (systemd-analyze, postconf, postfix) it gets the last word.
 */
import { execFile, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync, mkdirSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it, type TestContext } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { settingList } from '../src/config/settings.js';
import { required } from './support/ci.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const deployPath = (...p: string[]) => join(root, 'deploy', ...p);
const read = (...p: string[]) => readFileSync(deployPath(...p), 'utf8');

const tempDirs: string[] = [];
function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'smime-relay-deploy-'));
  tempDirs.push(d);
  return d;
}
afterAll(() => {
  for (const d of tempDirs) rmSync(d, { recursive: true, force: true });
});

function which(cmd: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(':').concat(['/usr/sbin', '/sbin'])) {
    if (dir && existsSync(join(dir, cmd))) return join(dir, cmd);
  }
  return undefined;
}

function portOf(hostPort: string): number {
  const m = /:(\d+)$/.exec(hostPort);
  if (!m) throw new Error(`no port in ${hostPort}`);
  return Number(m[1]);
}

function hostOf(hostPort: string): string {
  return hostPort.slice(0, hostPort.lastIndexOf(':')).replace(/^\[|\]$/g, '');
}

const isLoopback = (host: string) => /^127\./.test(host) || host === '::1' || host === 'localhost';

// Names the relay reads. settings.ts is the source of truth; the rest are announced in issue 6
// and the deployment brief and are being added to it. Catches a typo such as SMIME_RELAY_CERTS,
// which the relay would silently ignore.
const announcedEnv = [
  'SMIME_RELAY_LISTEN', 'SMIME_RELAY_UPSTREAM', 'SMIME_RELAY_CERT', 'SMIME_RELAY_CERT_PASSWORD_FILE',
  'SMIME_RELAY_MAX_SIZE', 'LOG_LEVEL', 'LOG_FORMAT', 'SMIME_RELAY_METRICS', 'SMIME_RELAY_ALLOW',
  'SMIME_RELAY_USERS', 'SMIME_RELAY_TLS_CERT', 'SMIME_RELAY_TLS_KEY', 'SMIME_RELAY_TLS_MODE',
  'SMIME_RELAY_PROXY_PROTOCOL', 'SMIME_RELAY_ENGINE', 'SMIME_RELAY_SIGNING', 'SMIME_RELAY_ON_MISSING_CERT',
];
const knownEnv = new Set([...settingList.flatMap((s) => [s.env, ...(s.aliases ?? [])]), ...announcedEnv]);
// Read by Node itself, not by the relay.
const nodeEnv = new Set(['NODE_ENV', 'NODE_OPTIONS']);

/** The relay refuses to bind a non-loopback address without one of these; so must every artefact. */
function expectStartable(env: Record<string, string>, where: string) {
  const listen = env.SMIME_RELAY_LISTEN ?? '127.0.0.1:2525';
  if (!isLoopback(hostOf(listen))) {
    expect(Boolean(env.SMIME_RELAY_ALLOW || env.SMIME_RELAY_USERS), `${where}: ${listen} needs SMIME_RELAY_ALLOW or SMIME_RELAY_USERS`).toBe(true);
  }
}

// ---------------------------------------------------------------------------------------------
// Kubernetes
// ---------------------------------------------------------------------------------------------

type Obj = Record<string, any>;
interface Manifest {
  file: string;
  obj: Obj;
}

/**
 * Every document of every manifest. YAML 1.1, because that is what Kubernetes' parser speaks:
 * `defaultMode: 0440` is octal there and decimal 440 in YAML 1.2.
 */
function loadManifests(): Manifest[] {
  const dir = deployPath('kubernetes');
  const out: Manifest[] = [];
  for (const file of readdirSync(dir).filter((f) => /\.ya?ml$/.test(f)).sort()) {
    const docs = parseAllDocuments(readFileSync(join(dir, file), 'utf8'), { version: '1.1', uniqueKeys: true });
    const list = Array.isArray(docs) ? docs : [docs];
    for (const doc of list) {
      expect(doc.errors.map(String), `${file} parses`).toEqual([]);
      expect(doc.warnings.map(String), `${file} parses without warnings`).toEqual([]);
      const obj = doc.toJS() as Obj | null;
      if (obj !== null) out.push({ file, obj });
    }
  }
  return out;
}

const expectedApi: Record<string, string> = {
  Deployment: 'apps/v1',
  Service: 'v1',
  PodDisruptionBudget: 'policy/v1',
  HorizontalPodAutoscaler: 'autoscaling/v2',
  NetworkPolicy: 'networking.k8s.io/v1',
  Secret: 'v1',
  Kustomization: 'kustomize.config.k8s.io/v1beta1',
};

function matches(selector: Record<string, string>, labels: Record<string, string>): boolean {
  return Object.keys(selector).length > 0 && Object.entries(selector).every(([k, v]) => labels[k] === v);
}

describe('Kubernetes manifests', () => {
  const manifests = loadManifests();
  const ofKind = (kind: string) => manifests.filter((m) => m.obj.kind === kind);
  const one = (kind: string): Obj => {
    const found = ofKind(kind);
    expect(found.map((m) => m.file), `exactly one ${kind}`).toHaveLength(1);
    return found[0]!.obj;
  };

  const deployment = one('Deployment');
  const pod = deployment.spec.template.spec as Obj;
  const podLabels = deployment.spec.template.metadata.labels as Record<string, string>;
  const containers = pod.containers as Obj[];
  const container = containers[0]!;
  const env = Object.fromEntries((container.env as Obj[]).map((e) => [e.name as string, e.value as string]));
  const containerPorts = new Map<string, number>((container.ports as Obj[]).map((p) => [p.name as string, p.containerPort as number]));
  const resolvePort = (port: string | number): number | undefined =>
    typeof port === 'number' ? port : containerPorts.get(port);

  it('has the kinds the deployment needs, each with its current apiVersion and a name', () => {
    const kinds = manifests.map((m) => m.obj.kind as string).sort();
    expect(kinds).toEqual(
      ['Deployment', 'HorizontalPodAutoscaler', 'Kustomization', 'NetworkPolicy', 'PodDisruptionBudget', 'Secret', 'Service'].sort(),
    );
    for (const { file, obj } of manifests) {
      expect(obj.apiVersion, `${file}: ${obj.kind}`).toBe(expectedApi[obj.kind]);
      if (obj.kind !== 'Kustomization') expect(obj.metadata?.name, `${file} names its ${obj.kind}`).toMatch(/^[a-z0-9-]+$/);
    }
  });

  it('kustomization applies every manifest except the example Secret, which holds placeholders', () => {
    const kustomization = one('Kustomization');
    const resources = kustomization.resources as string[];
    for (const r of resources) expect(existsSync(deployPath('kubernetes', r)), `${r} exists`).toBe(true);
    const files = [...new Set(manifests.map((m) => m.file))];
    expect(resources.sort()).toEqual(files.filter((f) => f !== 'kustomization.yaml' && f !== 'secret.example.yaml').sort());
  });

  it('runs 2 replicas whose pods the Deployment selector owns', () => {
    expect(deployment.spec.replicas).toBe(2);
    expect(matches(deployment.spec.selector.matchLabels, podLabels)).toBe(true);
    expect(deployment.spec.strategy.rollingUpdate.maxUnavailable).toBe(0);
    expect(containers).toHaveLength(1);
  });

  it('probes /healthz (liveness) and /readyz (readiness) on the metrics port the relay serves', () => {
    const metricsPort = containerPorts.get('metrics');
    expect(metricsPort).toBeTypeOf('number');
    expect(env.SMIME_RELAY_METRICS, 'metrics listener is on').toBeDefined();
    expect(portOf(env.SMIME_RELAY_METRICS!)).toBe(metricsPort);
    // The kubelet connects to the pod IP, so a loopback-only metrics listener would fail every probe.
    expect(isLoopback(hostOf(env.SMIME_RELAY_METRICS!))).toBe(false);

    expect(container.livenessProbe.httpGet.path).toBe('/healthz');
    expect(container.readinessProbe.httpGet.path).toBe('/readyz');
    for (const probe of [container.livenessProbe, container.readinessProbe]) {
      expect(resolvePort(probe.httpGet.port)).toBe(metricsPort);
      expect(probe.httpGet.scheme ?? 'HTTP').toBe('HTTP');
    }
    const annotations = deployment.spec.template.metadata.annotations as Record<string, string>;
    expect(Number(annotations['prometheus.io/port'])).toBe(metricsPort);
  });

  it('listens where the smtp containerPort says, and can start off loopback', () => {
    expect(portOf(env.SMIME_RELAY_LISTEN!)).toBe(containerPorts.get('smtp'));
    expectStartable(env, 'deployment.yaml');
    for (const name of Object.keys(env)) expect(knownEnv.has(name) || nodeEnv.has(name), `${name} is a setting`).toBe(true);
    expect(env.SMIME_RELAY_UPSTREAM).toMatch(/^smtps?:\/\//);
  });

  it('mounts the certificate Secret, read-only and without subPath, exactly where SMIME_RELAY_CERT points', () => {
    const volumes = new Map<string, Obj>((pod.volumes as Obj[]).map((v) => [v.name as string, v]));
    const mounts = container.volumeMounts as Obj[];
    for (const m of mounts) expect(volumes.has(m.name), `volume ${m.name} exists`).toBe(true);

    const certMount = mounts.find((m) => volumes.get(m.name)?.secret);
    expect(certMount, 'a Secret volume is mounted').toBeDefined();
    expect(certMount!.mountPath).toBe(env.SMIME_RELAY_CERT);
    expect(certMount!.readOnly).toBe(true);
    // subPath mounts never receive Secret updates, which would silently break rotation.
    expect(certMount!.subPath).toBeUndefined();

    const secretVolume = volumes.get(certMount!.name)!.secret as Obj;
    expect(secretVolume.defaultMode).toBe(0o440);
    const secret = one('Secret');
    expect(secretVolume.secretName).toBe(secret.metadata.name);
    const keys = Object.keys({ ...(secret.stringData ?? {}), ...(secret.data ?? {}) });
    expect(keys.length).toBeGreaterThan(0);
    // The API server rejects any other character in a Secret key (an '@' from a mailbox, say).
    for (const k of keys) expect(k).toMatch(/^[-._a-zA-Z0-9]+$/);
  });

  it('runs as the image user, non-root, with a read-only root and no capabilities', () => {
    expect(pod.securityContext.runAsNonRoot).toBe(true);
    expect(pod.securityContext.runAsUser).toBeGreaterThan(0);
    expect(pod.securityContext.runAsUser).toBe(dockerfileUid());
    expect(pod.securityContext.fsGroup).toBe(pod.securityContext.runAsGroup);
    expect(pod.automountServiceAccountToken).toBe(false);
    const sc = container.securityContext as Obj;
    expect(sc.readOnlyRootFilesystem).toBe(true);
    expect(sc.allowPrivilegeEscalation).toBe(false);
    expect(sc.capabilities.drop).toEqual(['ALL']);
    // With a read-only root, Node's tmpdir must be a volume.
    expect((container.volumeMounts as Obj[]).map((m) => m.mountPath)).toContain('/tmp');
  });

  it('requests CPU and memory, and limits memory above the V8 heap and the memory budget it configures', () => {
    const r = container.resources as Obj;
    expect(r.requests.cpu).toBeDefined();
    expect(r.requests.memory).toBeDefined();
    const limitMi = Number(/^(\d+)Mi$/.exec(r.limits.memory)?.[1]);
    const heapMi = Number(/--max-old-space-size=(\d+)/.exec(env.NODE_OPTIONS ?? '')?.[1]);
    expect(heapMi).toBeGreaterThan(0);
    expect(limitMi).toBeGreaterThan(heapMi);
    // messages in progress hold up to the budget on top of the process itself (about 100 MiB
    // here, bench/results/latest.md) and socket buffers awaiting collection
    const budgetMi = Number(/^(\d+)MiB$/.exec(env.SMIME_RELAY_MEMORY_BUDGET ?? '')?.[1]);
    expect(budgetMi).toBeGreaterThan(0);
    expect(limitMi - budgetMi).toBeGreaterThanOrEqual(192);
    expect(pod.terminationGracePeriodSeconds).toBeGreaterThan(Number(container.lifecycle?.preStop?.exec?.command?.[1] ?? 0));
  });

  it('Service, PodDisruptionBudget, HPA and NetworkPolicy all select the Deployment\'s pods and ports', () => {
    const service = one('Service');
    expect(matches(service.spec.selector, podLabels)).toBe(true);
    for (const p of service.spec.ports as Obj[]) expect(resolvePort(p.targetPort), `Service port ${p.name}`).toBeDefined();
    expect((service.spec.ports as Obj[]).map((p) => resolvePort(p.targetPort)).sort()).toEqual([...containerPorts.values()].sort());

    const pdb = one('PodDisruptionBudget');
    expect(matches(pdb.spec.selector.matchLabels, podLabels)).toBe(true);
    expect(pdb.spec.minAvailable).toBeLessThan(deployment.spec.replicas);

    const hpa = one('HorizontalPodAutoscaler');
    expect(hpa.spec.scaleTargetRef).toMatchObject({ apiVersion: 'apps/v1', kind: 'Deployment', name: deployment.metadata.name });
    expect(hpa.spec.minReplicas).toBe(deployment.spec.replicas);
    expect(hpa.spec.maxReplicas).toBeGreaterThan(hpa.spec.minReplicas);
    // Utilization is a fraction of the request; without one the HPA cannot compute it.
    const cpu = (hpa.spec.metrics as Obj[]).find((m) => m.resource?.name === 'cpu');
    expect(cpu?.resource.target.type).toBe('Utilization');
    expect(container.resources.requests.cpu).toBeDefined();

    const np = one('NetworkPolicy');
    expect(matches(np.spec.podSelector.matchLabels, podLabels)).toBe(true);
    for (const rule of np.spec.ingress as Obj[]) {
      for (const p of rule.ports as Obj[]) expect(resolvePort(p.port), `NetworkPolicy port ${p.port}`).toBeDefined();
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Container image
// ---------------------------------------------------------------------------------------------

interface Instruction {
  op: string;
  args: string;
}

/** Instructions as Docker sees them: continuation lines joined, comment lines dropped. */
function parseDockerfile(text: string): Instruction[][] {
  const logical: string[] = [];
  let current = '';
  for (const raw of text.split('\n')) {
    const line = raw.trimEnd();
    if (/^\s*#/.test(line) || (line.trim() === '' && current === '')) continue;
    if (line.endsWith('\\')) {
      current += line.slice(0, -1) + ' ';
      continue;
    }
    logical.push(current + line);
    current = '';
  }
  const stages: Instruction[][] = [];
  for (const l of logical) {
    const m = /^\s*(\w+)\s+(.*)$/.exec(l);
    if (!m) continue;
    const ins = { op: m[1]!.toUpperCase(), args: m[2]!.trim() };
    if (ins.op === 'FROM') stages.push([]);
    stages[stages.length - 1]?.push(ins);
  }
  return stages;
}

const dockerStages = () => parseDockerfile(read('container', 'Dockerfile'));

function dockerEnv(stage: Instruction[]): Record<string, string> {
  const env: Record<string, string> = {};
  for (const i of stage.filter((x) => x.op === 'ENV')) {
    for (const m of i.args.matchAll(/(\w+)=("[^"]*"|\S+)/g)) env[m[1]!] = m[2]!.replace(/^"|"$/g, '');
  }
  return env;
}

function dockerfileUid(): number {
  const final = dockerStages().at(-1)!;
  const user = final.filter((i) => i.op === 'USER').at(-1)?.args ?? 'root';
  return Number(user.split(':')[0]);
}

describe('container image', () => {
  const stages = dockerStages();
  const final = stages.at(-1)!;
  const env = dockerEnv(final);

  it('builds in stages on node:20 slim and runs as a numeric non-root user', () => {
    expect(stages.length).toBeGreaterThanOrEqual(2);
    for (const s of stages) expect(s[0]!.args).toMatch(/^node:20[-.\w]*slim\b/);
    const user = final.filter((i) => i.op === 'USER').at(-1)?.args;
    expect(user, 'final stage sets USER').toBeDefined();
    // Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    expect(user).toMatch(/^\d+(:\d+)?$/);
    expect(dockerfileUid()).toBeGreaterThan(0);
    const run = final.filter((i) => i.op === 'RUN').map((i) => i.args).join('\n');
    expect(run).toMatch(/apt-get install[^\n]*\bopenssl\b/);
    expect(run).toMatch(/rm -rf \/var\/lib\/apt\/lists/);
  });

  it('has a HEALTHCHECK that runs the shipped healthcheck script with node (no curl in slim)', () => {
    const hc = final.find((i) => i.op === 'HEALTHCHECK');
    expect(hc, 'HEALTHCHECK in the final stage').toBeDefined();
    const cmd = /CMD\s+(\[.*\])\s*$/.exec(hc!.args);
    expect(cmd, 'exec form').not.toBeNull();
    const argv = JSON.parse(cmd![1]!) as string[];
    expect(argv[0]).toBe('node');
    const copied = final.find((i) => i.op === 'COPY' && i.args.startsWith('deploy/container/healthcheck.mjs'));
    expect(copied).toBeDefined();
    const workdir = final.filter((i) => i.op === 'WORKDIR').at(-1)!.args;
    const dest = copied!.args.split(/\s+/)[1]!;
    expect(argv[1]).toBe(join(workdir, dest));
  });

  it('exposes the SMTP and metrics ports its environment binds, and mounts certs where Kubernetes does', () => {
    const exposed = final.filter((i) => i.op === 'EXPOSE').flatMap((i) => i.args.split(/\s+/)).map((p) => Number(p.split('/')[0]));
    expect(exposed.sort()).toEqual([portOf(env.SMIME_RELAY_LISTEN!), portOf(env.SMIME_RELAY_METRICS!)].sort());
    expect(env.SMIME_RELAY_CERT).toBe('/etc/smime-relay/certs');
    // Deliberate: no default allow list, so the image refuses to start until one is given
    // (rationale in the Dockerfile). A private-range default would admit every client behind NAT.
    expect(env.SMIME_RELAY_ALLOW).toBeUndefined();
    for (const name of Object.keys(env)) expect(knownEnv.has(name) || nodeEnv.has(name), `${name} is a setting`).toBe(true);
  });

  it('starts the built CLI with `serve`, and copies only paths that exist and the ignore file lets through', () => {
    const entry = JSON.parse(final.find((i) => i.op === 'ENTRYPOINT')!.args) as string[];
    const cmd = JSON.parse(final.find((i) => i.op === 'CMD')!.args) as string[];
    const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { bin: Record<string, string> };
    expect(entry.at(-1)).toBe(join('/opt/smime-relay', pkg.bin['smime-relay']!));
    expect(cmd).toEqual(['serve']);

    const allowed = read('container', 'Dockerfile.dockerignore')
      .split('\n')
      .filter((l) => l.startsWith('!'))
      .map((l) => l.slice(1).replace(/\/$/, ''));
    const fromContext = stages
      .flat()
      .filter((i) => i.op === 'COPY' && !i.args.startsWith('--from'))
      .flatMap((i) => i.args.split(/\s+/).slice(0, -1));
    expect(fromContext.length).toBeGreaterThan(0);
    for (const src of fromContext) {
      const path = src.replace(/^\.\//, '').replace(/\/$/, '');
      expect(existsSync(join(root, path)), `${path} exists in the repository`).toBe(true);
      expect(allowed, `${path} passes Dockerfile.dockerignore`).toContain(path);
    }
  });
});

describe('container healthcheck script, against a real HTTP server', () => {
  const script = deployPath('container', 'healthcheck.mjs');
  let server: Server;
  let port = 0;
  let status = 200;
  const paths: string[] = [];

  beforeAll(async () => {
    server = createServer((req, res) => {
      paths.push(req.url ?? '');
      res.writeHead(status).end(status === 200 ? 'ok\n' : 'not ok\n');
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.address() as AddressInfo).port;
  });
  afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

  // Asynchronous on purpose: the server answering it lives in this process.
  const run = (metrics: string | undefined) =>
    new Promise<{ code: number | null; stderr: string }>((resolve) => {
      const env: NodeJS.ProcessEnv = { ...process.env };
      delete env.SMIME_RELAY_METRICS;
      if (metrics !== undefined) env.SMIME_RELAY_METRICS = metrics;
      const child = execFile(process.execPath, [script], { env, timeout: 15_000 }, (err, _stdout, stderr) =>
        resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stderr }),
      );
      child.stdin?.end();
    });

  it('exits 0 when /healthz answers 200, asking loopback even when the relay binds 0.0.0.0', async () => {
    status = 200;
    paths.length = 0;
    expect(await run(`0.0.0.0:${port}`)).toEqual({ code: 0, stderr: '' });
    expect(paths).toEqual(['/healthz']);
  });

  it('exits 1 and says why when /healthz answers 503', async () => {
    status = 503;
    const r = await run(`127.0.0.1:${port}`);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('503');
  });

  it('exits 1 when nothing listens, and when SMIME_RELAY_METRICS is unset', async () => {
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const freePort = (closed.address() as AddressInfo).port;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    expect((await run(`0.0.0.0:${freePort}`)).code).toBe(1);
    const unset = await run(undefined);
    expect(unset.code).toBe(1);
    expect(unset.stderr).toContain('SMIME_RELAY_METRICS');
  });
});

// ---------------------------------------------------------------------------------------------
// systemd
// ---------------------------------------------------------------------------------------------

function parseUnit(text: string): Map<string, [string, string][]> {
  const sections = new Map<string, [string, string][]>();
  let section = '';
  for (const line of text.split('\n')) {
    const t = line.trim();
    if (!t || t.startsWith('#') || t.startsWith(';')) continue;
    const s = /^\[(.+)\]$/.exec(t);
    if (s) {
      section = s[1]!;
      sections.set(section, []);
      continue;
    }
    const eq = t.indexOf('=');
    sections.get(section)!.push([t.slice(0, eq).trim(), t.slice(eq + 1).trim()]);
  }
  return sections;
}

function parseEnvFile(text: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const m = /^([A-Z_][A-Z0-9_]*)=(.*)$/.exec(line.trim());
    if (m) env[m[1]!] = m[2]!.replace(/^"(.*)"$/, '$1');
  }
  return env;
}

describe('systemd unit', () => {
  const unitText = read('systemd', 'smime-relay.service');
  const unit = parseUnit(unitText);
  const service = unit.get('Service') ?? [];
  const values = (key: string) => service.filter(([k]) => k === key).map(([, v]) => v);
  const value = (key: string) => values(key).at(-1);

  it('runs `serve` as the dedicated user with the environment file and certificates under /etc/smime-relay', () => {
    expect(value('User')).toBe('smime-relay');
    expect(value('Group')).toBe('smime-relay');
    expect(value('EnvironmentFile')).toBe('/etc/smime-relay/smime-relay.env');
    expect(value('ExecStart')).toBe('/usr/bin/env node /opt/smime-relay/dist/cli.js serve');
    expect(value('ExecReload')).toBe('/bin/kill -HUP $MAINPID');
    expect(value('Restart')).toBe('on-failure');
    expect(unit.get('Install')).toContainEqual(['WantedBy', 'multi-user.target']);
  });

  it('has the hardening issue 6 asks for, and nothing that breaks V8', () => {
    expect(value('NoNewPrivileges')).toBe('yes');
    expect(value('ProtectSystem')).toBe('strict');
    expect(value('ProtectHome')).toBe('yes');
    expect(value('PrivateTmp')).toBe('yes');
    // Present and empty: no capabilities at all.
    expect(values('CapabilityBoundingSet')).toEqual(['']);
    expect(value('PrivateDevices')).toBe('yes');
    expect(value('RestrictAddressFamilies')).toContain('AF_INET');
    // V8's JIT needs writable-then-executable pages; this setting kills node at start.
    expect(value('MemoryDenyWriteExecute')).toBeUndefined();
    // Under ProtectSystem=strict the relay can write nowhere on disk; the openssl engine writes
    // to /dev/shm (an API file system) or the private /tmp, so no ReadWritePaths is needed.
    expect(value('ReadWritePaths')).toBeUndefined();
  });

  it('the example environment file uses only real settings and matches the Postfix snippets', () => {
    const env = parseEnvFile(read('systemd', 'smime-relay.env.example'));
    for (const name of Object.keys(env)) expect(knownEnv.has(name), `${name} is a setting`).toBe(true);
    expect(env.SMIME_RELAY_CERT).toMatch(/^\/etc\/smime-relay\/certs(\/|$)/);
    expectStartable(env, 'smime-relay.env.example');
    const filter = /^content_filter\s*=\s*smime:\[([\d.]+)\]:(\d+)\s*$/m.exec(read('postfix', 'main.cf'));
    expect(env.SMIME_RELAY_LISTEN).toBe(`${filter![1]}:${filter![2]}`);
    expect(env.SMIME_RELAY_UPSTREAM).toBe('smtp://127.0.0.1:10026');
    expect(masterEntries(read('postfix', 'master.cf')).some((e) => e.service === '127.0.0.1:10026')).toBe(true);
  });

  const analyze = which('systemd-analyze');
  if (!analyze) {
    // A green CI run must mean systemd itself accepted the unit.
    if (process.env.CI === 'true') throw new Error('systemd-analyze is missing under CI (apt-get install -y systemd)');
    console.warn('SKIPPED: systemd-analyze is not installed, so the unit is not verified by systemd');
  }

  it.skipIf(!analyze)('passes `systemd-analyze verify` exactly as shipped', () => {
    // verify checks that ExecStart names an existing executable: /usr/bin/env exists on every
    // system, wherever node lives. The user need not exist: verify does not resolve it.
    const dir = tempDir();
    const copy = join(dir, 'smime-relay.service');
    writeFileSync(copy, unitText);
    const r = spawnSync(analyze!, ['verify', '--man=no', copy], { encoding: 'utf8' });
    const output = `${r.stdout}\n${r.stderr}`;
    // verify also lints whatever units the machine has; only lines about this unit count.
    const ours = output.split('\n').filter((l) => l.includes('smime-relay'));
    expect(ours).toEqual([]);
    expect(r.status, output).toBe(0);
  });

  /**
   * ExecStart as systemd runs it, in a file-system layout where node is only at `nodeDir`: the
   * executable and the search path (systemd's default PATH for services, from `systemd-path`) are
   * rooted in a temp dir holding just that node, the relay's dist/ stands in for
   * /opt/smime-relay/dist, and `serve` becomes `version` so the command ends by itself. A unit
   * that hard-codes /usr/bin/node fails here with ENOENT, which systemd reports as 203/EXEC.
   */
  function runExecStartWithNodeIn(nodeDir: string) {
    const layout = tempDir();
    for (const d of ['usr/bin', 'usr/local/bin', 'usr/sbin', 'usr/local/sbin', 'bin', 'sbin']) mkdirSync(join(layout, d), { recursive: true });
    symlinkSync(process.execPath, join(layout, nodeDir, 'node'));
    symlinkSync(which('env')!, join(layout, 'usr/bin/env'));
    const searchPath = spawnSync(which('systemd-path')!, ['search-binaries-default'], { encoding: 'utf8' }).stdout.trim();
    expect(searchPath).toContain('/usr/local/bin');
    const [exe, ...args] = value('ExecStart')!.split(/\s+/);
    const argv = args.map((a) => (a === '/opt/smime-relay/dist/cli.js' ? join(root, 'dist/cli.js') : a === 'serve' ? 'version' : a));
    return spawnSync(join(layout, exe!), argv, {
      env: { PATH: searchPath.split(':').map((d) => join(layout, d)).join(':') },
      encoding: 'utf8',
    });
  }

  it.skipIf(!analyze)('ExecStart finds node in /usr/local/bin (official tarball and image) and in /usr/bin (Debian, NodeSource)', () => {
    for (const nodeDir of ['usr/local/bin', 'usr/bin']) {
      const r = runExecStartWithNodeIn(nodeDir);
      expect(r.error, `node in /${nodeDir}`).toBeUndefined();
      expect(r.status, `node in /${nodeDir}: ${r.stderr}`).toBe(0);
      expect(r.stdout).toMatch(/^smime-relay \d+\.\d+\.\d+\n/);
    }
  });

  it.skipIf(!analyze)('rates as OK (exposure at most 2.5) in `systemd-analyze security --offline`', (ctx) => {
    const dir = tempDir();
    const copy = join(dir, 'smime-relay.service');
    writeFileSync(copy, unitText);
    const r = spawnSync(analyze!, ['security', '--offline=yes', '--no-pager', copy], { encoding: 'utf8' });
    // systemd before 250 has no --offline: that is a skip (a failure under CI), never a pass
    // without an assertion.
    required(ctx, !/unrecognized option|Unknown option/i.test(r.stderr), `this systemd-analyze has no --offline (${r.stderr.trim()})`);
    const m = /Overall exposure level for smime-relay\.service:\s*([\d.]+)/.exec(r.stdout);
    expect(m, r.stdout + r.stderr).not.toBeNull();
    expect(Number(m![1])).toBeLessThanOrEqual(2.5);
  });
});

// ---------------------------------------------------------------------------------------------
// Postfix
// ---------------------------------------------------------------------------------------------

interface MasterEntry {
  service: string;
  type: string;
  command: string;
  maxproc: string;
  options: Map<string, string>;
}

/** master.cf(5): a logical line starts in column 1; lines starting with whitespace continue it. */
function masterEntries(text: string): MasterEntry[] {
  const logical: string[] = [];
  for (const line of text.split('\n')) {
    if (/^\s*(#|$)/.test(line)) continue;
    if (/^\s/.test(line) && logical.length) logical[logical.length - 1] += ' ' + line.trim();
    else logical.push(line.trim());
  }
  return logical.map((l) => {
    const f = l.split(/\s+/);
    const options = new Map<string, string>();
    for (let i = 8; i < f.length; i++) {
      if (f[i] === '-o' && f[i + 1]) {
        const [k, ...v] = f[i + 1]!.split('=');
        options.set(k!, v.join('='));
        i++;
      }
    }
    return { service: f[0]!, type: f[1]!, maxproc: f[6]!, command: f[7]!, options };
  });
}

/** main.cf active parameters (comments dropped). */
function mainParams(text: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const line of text.split('\n')) {
    const p = /^([a-z_0-9]+)\s*=\s*(.*?)\s*$/.exec(line);
    if (p) m.set(p[1]!, p[2]!);
  }
  return m;
}

describe('Postfix snippets', () => {
  const mainCf = read('postfix', 'main.cf');
  const masterCf = read('postfix', 'master.cf');
  const beforeCf = read('postfix', 'before-queue', 'master.cf');

  it('after-queue: main.cf sends all queued mail to the smime transport at 127.0.0.1:10025', () => {
    expect(mainParams(mainCf).get('content_filter')).toBe('smime:[127.0.0.1]:10025');
  });

  it('after-queue: the smime transport sends XFORWARD and leaves 8-bit mail unconverted', () => {
    const smime = masterEntries(masterCf).find((e) => e.service === 'smime');
    expect(smime).toMatchObject({ type: 'unix', command: 'smtp' });
    expect(smime!.options.get('smtp_send_xforward_command')).toBe('yes');
    expect(smime!.options.get('disable_mime_output_conversion')).toBe('yes');
  });

  it('after-queue: the 127.0.0.1:10026 reinjection listener clears content_filter (no loop) and admits only loopback', () => {
    const reinject = masterEntries(masterCf).find((e) => e.service === '127.0.0.1:10026');
    expect(reinject).toMatchObject({ type: 'inet', command: 'smtpd' });
    expect(reinject!.options.get('content_filter')).toBe('');
    expect(reinject!.options.get('mynetworks')).toBe('127.0.0.0/8');
    expect(reinject!.options.get('smtpd_recipient_restrictions')).toBe('permit_mynetworks,reject');
    expect(reinject!.options.get('receive_override_options')).toBe('no_unknown_recipient_checks,no_header_body_checks,no_milters');
    for (const r of ['helo', 'client', 'sender', 'relay']) expect(reinject!.options.get(`smtpd_${r}_restrictions`)).toBe('');
    // Spaces around '=' or ',' split an -o value into two words in master.cf.
    for (const line of masterCf.split('\n').filter((l) => /^\s+-o\s/.test(l))) expect(line).toMatch(/^\s+-o\s+[a-z_0-9]+=\S*$/);
  });

  it('before-queue: submission hands each message to the relay, which reinjects at 10026; no content_filter', () => {
    const entries = masterEntries(beforeCf);
    const submission = entries.find((e) => e.service === 'submission');
    expect(submission).toMatchObject({ type: 'inet', command: 'smtpd' });
    expect(submission!.options.get('smtpd_proxy_filter')).toBe('127.0.0.1:10025');
    const reinject = entries.find((e) => e.service === '127.0.0.1:10026');
    expect(reinject!.options.get('content_filter')).toBe('');
    expect(mainParams(beforeCf).size).toBe(0);
  });

  it('milter: exactly the three main.cf lines of the README, with the relay on 127.0.0.1:8891', () => {
    expect(Object.fromEntries(mainParams(read('postfix', 'milter.cf')))).toEqual({
      smtpd_milters: 'inet:127.0.0.1:8891',
      non_smtpd_milters: '$smtpd_milters',
      milter_default_action: 'tempfail',
    });
  });

  const postconf = which('postconf');
  const baseMaster = ['/usr/share/postfix/master.cf.dist', '/etc/postfix/master.cf'].find((p) => existsSync(p));
  /** postconf and the distribution's master.cf, or a skip (a failure under CI=true). */
  const needPostconf = (ctx: TestContext) =>
    required(ctx, postconf && baseMaster, 'postconf or the distribution master.cf is missing, so the Postfix snippets are not checked by Postfix (apt-get install -y postfix)');

  /**
   * A private Postfix configuration directory: a minimal main.cf plus the snippet, and the
   * distribution's master.cf with the snippet's services replacing any of the same name.
   */
  function configDir(mainSnippet: string, masterSnippet: string): string {
    const dir = tempDir();
    const etc = join(dir, 'etc');
    mkdirSync(etc);
    mkdirSync(join(dir, 'queue'));
    mkdirSync(join(dir, 'data'));
    const base = [
      'compatibility_level = 3.6',
      'myhostname = relay.example.test',
      'mydomain = example.test',
      `queue_directory = ${join(dir, 'queue')}`,
      `data_directory = ${join(dir, 'data')}`,
      'inet_interfaces = loopback-only',
      'alias_maps =',
      'alias_database =',
      '',
    ].join('\n');
    writeFileSync(join(etc, 'main.cf'), base + mainSnippet);
    const replaced = new Set(masterEntries(masterSnippet).map((e) => `${e.service}/${e.type}`));
    const kept: string[] = [];
    let skipping = false;
    for (const line of readFileSync(baseMaster!, 'utf8').split('\n')) {
      if (/^\S/.test(line) && !line.startsWith('#')) {
        const [service, type] = line.split(/\s+/);
        skipping = replaced.has(`${service}/${type}`);
      } else if (!/^\s/.test(line)) {
        skipping = false;
      }
      if (!skipping) kept.push(line);
    }
    writeFileSync(join(etc, 'master.cf'), kept.join('\n') + '\n' + masterSnippet);
    return etc;
  }

  function runPostconf(etc: string, ...args: string[]): string {
    const r = spawnSync(postconf!, ['-c', etc, ...args], { encoding: 'utf8' });
    // postconf warns about unknown parameters ("unused parameter"), which is how a typo shows.
    expect(r.stderr.trim(), `postconf ${args.join(' ')}`).toBe('');
    expect(r.status).toBe(0);
    return r.stdout;
  }

  it('after-queue: postconf reads both snippets without a warning', (ctx) => {
    needPostconf(ctx);
    const etc = configDir(mainCf, masterCf);
    expect(runPostconf(etc, '-n')).toContain('content_filter = smime:[127.0.0.1]:10025');
    const perService = runPostconf(etc, '-P').split('\n');
    expect(perService).toContain('smime/unix/smtp_send_xforward_command = yes');
    expect(perService).toContain('smime/unix/disable_mime_output_conversion = yes');
    expect(perService).toContain('127.0.0.1:10026/inet/content_filter =');
    expect(runPostconf(etc, '-M', 'smime/unix', '127.0.0.1:10026/inet').trim().split('\n')).toHaveLength(2);
  });

  it('before-queue: postconf reads the alternative without a warning', (ctx) => {
    needPostconf(ctx);
    const etc = configDir('', beforeCf);
    expect(runPostconf(etc, '-h', 'content_filter').trim()).toBe('');
    const perService = runPostconf(etc, '-P').split('\n');
    expect(perService).toContain('submission/inet/smtpd_proxy_filter = 127.0.0.1:10025');
    expect(perService).toContain('127.0.0.1:10026/inet/content_filter =');
    expect(runPostconf(etc, '-M').split('\n').filter((l) => l.startsWith('submission '))).toHaveLength(1);
  });

  // `postfix check` also creates and checks the queue directories, which takes root and the
  // postfix account (both present where Postfix is installed and CI runs).
  const postfixBin = which('postfix');
  const canCheck = Boolean(postfixBin && baseMaster && process.getuid?.() === 0 && spawnSync('id', ['postfix']).status === 0);

  it('after-queue: `postfix check` accepts the merged configuration', (ctx) => {
    required(ctx, canCheck, '`postfix check` needs Postfix, root and the postfix account (apt-get install -y postfix; run as root)');
    const etc = configDir(mainCf, masterCf);
    const r = spawnSync(postfixBin!, ['-c', etc, 'check'], { encoding: 'utf8' });
    expect(`${r.stdout}${r.stderr}`.trim()).toBe('');
    expect(r.status).toBe(0);
  });
});
