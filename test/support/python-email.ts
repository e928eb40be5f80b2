import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { createInterface } from 'node:readline';

/**
 * Python's `email` package as an independent reader of what the relay forwards: one long-lived
 * python3 process answering JSON lines, so thousands of messages cost milliseconds each.
 *
 * For each message it reports the sender fields twice, the way the two halves of the package read
 * them (they disagree on `a@x <b@y>`, shared/notes/real-parts.md):
 * - `default`: policy.default's structured headers, display names decoded, groups flagged;
 * - `getaddresses`: email.utils.getaddresses over the raw (compat32) values, display names then
 *   decoded with email.header.decode_header, as a client built on them would show them;
 * and the outer Content-Type fields and the type policy.default settles on.
 */
const SCRIPT = String.raw`
import sys, json, base64, email, email.policy, email.utils
from email.header import decode_header, make_header
FIELDS = ['from', 'sender', 'resent-from', 'resent-sender']

def shown(name):
    try:
        return str(make_header(decode_header(name)))
    except Exception:
        return name

def default_view(m):
    view = {}
    for f in FIELDS:
        fields = []
        for h in m.get_all(f, []) or []:
            try:
                groups = [g.display_name for g in h.groups if g.display_name is not None]
                fields.append({'addresses': [[a.display_name, a.addr_spec] for a in h.addresses], 'groups': groups})
            except Exception as e:
                fields.append({'error': repr(e)})
        view[f] = fields
    return view

def getaddresses_view(m):
    view = {}
    for f in FIELDS:
        view[f] = [{'addresses': [[shown(n), a] for n, a in email.utils.getaddresses([str(v)])]} for v in (m.get_all(f, []) or [])]
    return view

for line in sys.stdin:
    req = json.loads(line)
    out = {'id': req['id']}
    try:
        raw = base64.b64decode(req['raw'])
        d = email.message_from_bytes(raw, policy=email.policy.default)
        c = email.message_from_bytes(raw, policy=email.policy.compat32)
        out['default'] = default_view(d)
        out['getaddresses'] = getaddresses_view(c)
        out['contentTypes'] = [str(v) for v in (c.get_all('content-type', []) or [])]
        out['contentType'] = d.get_content_type()
    except Exception as e:
        out['error'] = repr(e)
    sys.stdout.write(json.dumps(out) + '\n')
    sys.stdout.flush()
`;

export interface PythonField {
  /** [display name, addr-spec] pairs; group members included. */
  addresses?: [string, string][];
  /** Display names of groups in the field (policy.default only). */
  groups?: string[];
  error?: string;
}

export type PythonFields = Record<'from' | 'sender' | 'resent-from' | 'resent-sender', PythonField[]>;

export interface PythonView {
  default: PythonFields;
  getaddresses: PythonFields;
  contentTypes: string[];
  contentType: string;
  error?: string;
}

export const HAVE_PYTHON = spawnSync('python3', ['--version']).status === 0;

/** Under CI=true a missing python3 is a failure, as a missing verifier is; elsewhere a loud skip. */
export function requirePython(purpose: string): boolean {
  if (HAVE_PYTHON) return true;
  if (process.env.CI === 'true') throw new Error(`python3 is missing under CI: ${purpose} (apt-get install -y python3)`);
  console.warn(`\n!! WARNING: python3 not found; ${purpose} is SKIPPED.\n`);
  return false;
}

export class PythonEmail {
  private readonly child: ChildProcessWithoutNullStreams;
  private readonly waiting = new Map<number, (v: PythonView) => void>();
  private next = 0;
  private stderr = '';

  constructor() {
    this.child = spawn('python3', ['-c', SCRIPT], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.child.stderr.on('data', (d: Buffer) => (this.stderr += d.toString()));
    createInterface({ input: this.child.stdout }).on('line', (line) => {
      const { id, ...view } = JSON.parse(line) as PythonView & { id: number };
      this.waiting.get(id)?.(view);
      this.waiting.delete(id);
    });
    this.child.on('exit', (code) => {
      for (const [id] of this.waiting) this.waiting.get(id)?.({ error: `python3 exited ${code}: ${this.stderr}` } as PythonView);
      this.waiting.clear();
    });
  }

  parse(raw: Buffer): Promise<PythonView> {
    const id = this.next++;
    return new Promise((resolve) => {
      this.waiting.set(id, resolve);
      this.child.stdin.write(JSON.stringify({ id, raw: raw.toString('base64') }) + '\n');
    });
  }

  /** Ends the process this instance started (by its own handle, never by name). */
  async close(): Promise<void> {
    if (this.child.exitCode !== null) return;
    const exited = new Promise<void>((r) => this.child.once('exit', () => r()));
    this.child.stdin.end();
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 5_000);
    await exited;
    clearTimeout(timer);
  }
}
