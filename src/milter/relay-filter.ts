/**
 * What the relay does with a message an MTA shows its milter: the same pipeline as the SMTP
 * listener (src/pipeline.ts: admit → prepare → sign → forward), where "forward" hands the signed
 * message back to the MTA as header changes and a new body (src/milter/edits.ts).
 *
 * | the message | the milter answers |
 * |---|---|
 * | no covered mailbox in From, Sender, Resent-* (src/milter/scope.ts) | accepted unchanged at the end of its header |
 * | client not allowed (SMIME_RELAY_USERS / SMIME_RELAY_ALLOW) or envelope sender refused | the relay's 550 5.7.1, before the body is read |
 * | no room in SMIME_RELAY_MEMORY_BUDGET | 452 4.3.1: at the end of the header after waiting for room, or as the body outgrows it |
 * | larger than SMIME_RELAY_MAX_SIZE | 552 5.3.4: at the end of the header by its SIZE=, or as soon as the body passes the limit |
 * | covered | whatever process() decides: signed and accepted, passed (already signed, signing off), or its refusal |
 */
import type { Logger } from 'pino';
import type { AccessPolicy } from '../access/policy.js';
import type { CertificateStore } from '../certs/store.js';
import type { MemoryBudget, Reservation } from '../memory/budget.js';
import { messageFootprint } from '../memory/footprint.js';
import { DEFAULT_MAX_HEADER_BYTES } from '../mime/header.js';
import { newTransactionId, type Pipeline, type Transaction } from '../pipeline.js';
import { RelayError, replies, type SmtpReply } from '../replies.js';
import type { Delivery, Envelope } from '../upstream/upstream.js';
import { editsFor } from './edits.js';
import { claimsCoveredSender } from './scope.js';
import type { Editor, FilterTransaction, HeaderVerdict, MessageFilter, MilterMessage } from './session.js';

export interface RelayFilterDeps {
  pipeline: Pipeline;
  access: AccessPolicy;
  certs: CertificateStore;
  /** SMIME_RELAY_MAX_SIZE, counted over the header and the body as the MTA hands them over. */
  maxSize: number;
  /** SMIME_RELAY_MEMORY_BUDGET; `signing`: a message also needs room for its signed copy. */
  memory?: { budget: MemoryBudget; signing: boolean; waitMs: number };
  log: Logger;
}

/** MAIL FROM and RCPT TO arrive as the MTA writes them: `<a@b>` plus any ESMTP parameters. */
const bareAddress = (arg: string): string => arg.trim().replace(/^<(.*)>$/, '$1');

/**
 * The SMTP client the MTA vouches for: {client_addr}, else the address in the connect event.
 * None for a message from sendmail when the MTA says so (Postfix reports 127.0.0.1 instead).
 */
function clientAddress(m: MilterMessage): string | undefined {
  const fromMacro = m.macro('client_addr');
  if (fromMacro) return fromMacro;
  return m.connect && (m.connect.family === '4' || m.connect.family === '6') ? m.connect.address : undefined;
}

export class RelayFilter implements MessageFilter {
  constructor(private readonly deps: RelayFilterDeps) {}

  async endOfHeaders(m: MilterMessage): Promise<HeaderVerdict> {
    const { pipeline, access, certs, log } = this.deps;
    if (!claimsCoveredSender(m.headers, certs.mailboxes())) {
      log.debug(
        { peer: m.peer, queueId: m.macro('i'), mailFrom: bareAddress(m.envelope.from) },
        'milter: message passed unchanged: no covered mailbox in From, Sender or Resent-*',
      );
      return { kind: 'accept' };
    }
    const envelope: Envelope = { ...m.envelope, from: bareAddress(m.envelope.from), to: m.envelope.to.map(bareAddress) };
    const address = clientAddress(m);
    const tx: Omit<Transaction, 'raw'> = {
      id: newTransactionId(),
      envelope,
      client: { address: address ?? 'local', hostname: m.macro('client_name') ?? m.connect?.hostname, peer: m.peer },
    };
    try {
      if (m.headersTruncated) throw new RelayError(replies.malformedMessage(`header block exceeds the limit of ${DEFAULT_MAX_HEADER_BYTES} bytes`));
      if ((m.declaredSize ?? 0) > this.deps.maxSize) throw new RelayError(replies.messageTooBig(this.deps.maxSize));
      const principal = access.admitRelayedClient({ login: m.macro('auth_authen') || undefined, address });
      // The same envelope rule as at MAIL FROM on the SMTP listener.
      pipeline.admitEnvelope(envelope.from, principal);
      const memory = await this.reserve(m);
      return { kind: 'read-body', transaction: this.transaction(m, { ...tx, ...(principal ? { principal } : {}), ...(memory ? { memory } : {}) }) };
    } catch (e) {
      if (e instanceof RelayError) return { kind: 'refuse', reply: pipeline.refuse(tx, e.reply) };
      throw e;
    }
  }

  /**
   * A message's share of the memory budget, as the SMTP receiver takes one at MAIL FROM: its
   * declared SIZE= (or its header so far) and room for the signed copy. It may wait for room, as
   * the MTA waits for the answer; it never waits while holding anything.
   */
  private async reserve(m: MilterMessage): Promise<Reservation | undefined> {
    if (!this.deps.memory) return undefined;
    const { budget, signing, waitMs } = this.deps.memory;
    const bytes = messageFootprint(Math.max(m.declaredSize ?? 0, headerBytesOf(m)), signing);
    const got = await budget.reserve(bytes, { waitMs });
    if (typeof got !== 'string') return got;
    throw new RelayError(replies.insufficientMemory(got === 'larger-than-budget' ? `a message of ${m.declaredSize} bytes needs more than the whole memory budget` : `no room within ${waitMs} ms`));
  }

  private transaction(m: MilterMessage, tx: Omit<Transaction, 'raw'>): FilterTransaction {
    const { pipeline, maxSize } = this.deps;
    const signing = this.deps.memory?.signing ?? false;
    const headerBytes = headerBytesOf(m);
    return {
      chunk: (received: number): SmtpReply | undefined => {
        const size = headerBytes + received;
        if (size > maxSize) return pipeline.refuse(tx, replies.messageTooBig(maxSize));
        // Growing never waits: a message that holds memory and waits for more could deadlock with others.
        if (tx.memory && !tx.memory.ensure(messageFootprint(size, signing))) return pipeline.refuse(tx, replies.insufficientMemory('no room to receive this message now'));
        return undefined;
      },
      finish: (raw: Buffer, bodyStart: number, edit: Editor): Promise<SmtpReply> => {
        const forward = async (_envelope: Envelope, outgoing: Buffer): Promise<Delivery> => {
          await edit(editsFor(m.headers, raw.subarray(bodyStart), outgoing));
          const queueId = m.macro('i') ?? 'unknown';
          return { queueId, response: `handed back to the MTA (queue id ${queueId})`, accepted: tx.envelope.to, rejected: [] };
        };
        return pipeline.process({ ...tx, raw }, forward);
      },
      abandon: () => tx.memory?.release(),
    };
  }
}

/** The header block as the MTA sent it, in bytes. */
const headerBytesOf = (m: MilterMessage): number => m.headers.reduce((n, h) => n + h.name.length + h.value.length + 3, 2);
