/** forward: hands a finished message to the next hop and reports exactly what it said. */
export interface Envelope {
  /** MAIL FROM as received ('' for the null sender). */
  from: string;
  /** Every RCPT TO as received, in order. */
  to: string[];
  /** The client sent SMTPUTF8 on MAIL FROM (RFC 6531): the header may carry UTF-8 (RFC 6532). */
  smtputf8?: boolean;
}

export interface RecipientRejection {
  recipient: string;
  code: number;
  response: string;
}

export interface Delivery {
  /** Upstream's queue id when its reply names one, else its whole reply text. */
  queueId: string;
  response: string;
  accepted: string[];
  /** Recipients the upstream refused permanently while accepting others. */
  rejected: RecipientRejection[];
}

export interface Upstream {
  /** Human description without secrets, for logs. */
  readonly description: string;
  /** Resolves only once the upstream has accepted; rejects with a RelayError otherwise. */
  deliver(envelope: Envelope, message: Buffer): Promise<Delivery>;
  /** Cheap reachability check (EHLO/QUIT); resolves true when the upstream answered. */
  probe(): Promise<boolean>;
  close(): Promise<void>;
}
