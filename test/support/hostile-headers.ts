import fc from 'fast-check';

/**
 * fast-check generators for hostile header blocks (issue 10, item 3): the tricks of the red-team
 * pass (bare CR, LF, CR CR LF, NUL, quotes, comments, encoded-words in many charsets, groups,
 * folding, long lines) mixed into otherwise ordinary messages, so that a good share is legitimate
 * and must be forwarded, and the rest must be refused.
 */

export const COVERED = 'notify@example.test';
export const OTHER = 'evil@attacker.example';

const b64 = (s: string, enc: BufferEncoding = 'utf8') => Buffer.from(s, enc).toString('base64');
const utf8 = (s: string) => Buffer.from(s, 'utf8').toString('latin1');

/** Encoded-words that show OTHER, in every way a parser might decode one. */
const HOSTILE_WORDS = [
  `=?utf-8?Q?evil=40attacker.example?=`,
  `=?UTF-8?B?${b64(OTHER)}?=`,
  `=?iso-8859-1?Q?evil=40attacker=2Eexample?=`,
  `=?windows-1252?B?${b64(OTHER, 'latin1')}?=`,
  `=?utf-8*en?Q?evil=40attacker.example?=`,
  // EBCDIC: "@" is 0x7C; Python decodes it
  `=?cp500?Q?${Buffer.from('85a589937c81a3a381839285994b85a78194979385', 'hex').toString('latin1').replace(/[^]/g, (c) => '=' + c.charCodeAt(0).toString(16).toUpperCase().padStart(2, '0'))}?=`,
  `=?utf-7?Q?evil+AEA-attacker.example?=`,
  `=?utf-16?B?${Buffer.from('fffe6500760069006c004000610074007400610063006b00650072002e006500780061006d0070006c006500', 'hex').toString('base64')}?=`,
  // mailparser decodes it, spaces and all
  `=?utf-8?b?${b64(OTHER).slice(0, 8)} ${b64(OTHER).slice(8)}?=`,
  // split over two words: RFC 2047 §6.2 joins them
  `=?utf-8?Q?evil?= =?utf-8?Q?=40attacker.example?=`,
  // fullwidth commercial at, U+FF20
  `=?utf-8?Q?evil=EF=BC=A0attacker.example?=`,
  `=?utf-8?Q?notify=40example.test=00.evil?=`,
  // invisible characters that a careless tokenizer treats as a word break
  `=?utf-8?Q?notify=40example.test=EF=BB=BF.evil.example?=`,
  `=?utf-8?Q?notify=40example.test=E2=80=8B.evil.example?=`,
  `=?utf-8?Q?notify=40example.test=C2=A0.evil.example?=`,
];

/** Display names a real sender uses; several decode to non-ASCII. */
const BENIGN_NAMES = [
  'Notify',
  'John Q. Public',
  '"Smith, John"',
  '"Notify Team"',
  `"${COVERED}"`,
  '=?utf-8?Q?J=C3=BCrgen_M=C3=BCller?=',
  '=?iso-8859-1?Q?J=FCrgen?=',
  '=?ISO-8859-2?Q?Pawe=B3?=',
  '=?windows-1252?Q?Caf=E9_Team?=',
  `=?utf-8?B?${b64('Benachrichtigungen Überall')}?=`,
  `=?koi8-r?B?${Buffer.from([0xe9, 0xd7, 0xc1, 0xce]).toString('base64')}?=`,
  `=?utf-8?Q?notify=40example.test?=`,
  utf8('Jörg'),
];

/** Pieces of a From value; random sequences of them make most of the shapes parsers disagree on. */
const FROM_PIECES = [
  COVERED, `<${COVERED}>`, `<${COVERED.toUpperCase()}>`, OTHER, `<${OTHER}>`, ...BENIGN_NAMES, ...HOSTILE_WORDS,
  `"${OTHER}"`, `(${OTHER})`, '(comment)', '((nested))', '(', ')', '"', '<', '>', ',', ';', ':', 'Group:', '\\', '@', '[1.2.3.4]', '.', '. ',
  ' ', ' ', '\t', '\r\n ', '\r', '\n', '\r\n', '\0', '\x0c', utf8('evil＠attacker.example'), utf8('\u2028'), '\xe9', utf8(`${COVERED}\ufeff.evil.example`),
];

/** Folds before the `at`-th space; `inside`: the fold is in a quoted string or comment (which Python's getaddresses misreads). */
const fold = (s: string, at: number): { text: string; inside: boolean } => {
  const spaces: { i: number; inside: boolean }[] = [];
  let quoted = false;
  let depth = 0;
  for (let i = 0; i < s.length; i++) {
    if (s[i] === '"') quoted = !quoted;
    else if (!quoted && s[i] === '(') depth++;
    else if (!quoted && s[i] === ')') depth--;
    else if (s[i] === ' ') spaces.push({ i, inside: quoted || depth > 0 });
  }
  if (spaces.length === 0) return { text: s, inside: false };
  const { i, inside } = spaces[at % spaces.length]!;
  return { text: s.slice(0, i) + '\r\n' + s.slice(i), inside };
};

/**
 * A piece of a header. `benign`: a legitimate client could send it and the relay must forward it
 * (`utf8`: only under SMTPUTF8). The property checks that every benign message is forwarded, so a
 * relay that refused everything cannot pass.
 */
export interface Piece {
  text: string;
  benign: boolean;
  utf8?: boolean;
}

const RAW_UTF8_NAME = utf8('Jörg');

/** A From (or Sender, Resent-*) value: well-formed, random pieces, or well-formed with one piece inserted. */
export const fromValue: fc.Arbitrary<Piece> = fc.oneof(
  { weight: 5, arbitrary: fc
    .record({
      name: fc.option(fc.constantFrom(...BENIGN_NAMES), { nil: undefined }),
      comment: fc.option(fc.constantFrom('(Notifications)', '(automated)', `(${COVERED})`), { nil: undefined }),
      angle: fc.boolean(),
      fold: fc.option(fc.nat(5), { nil: undefined }),
    })
    .map(({ name, comment, angle, fold: f }) => {
      const value = name !== undefined || angle ? `${name ?? ''} <${COVERED}>${comment ? ' ' + comment : ''}`.trim() : `${COVERED}${comment ? ' ' + comment : ''}`;
      const folded = f === undefined ? { text: value, inside: false } : fold(value, f);
      return { text: folded.text, benign: !folded.inside, utf8: name === RAW_UTF8_NAME };
    }) },
  { weight: 3, arbitrary: fc.array(fc.constantFrom(...FROM_PIECES), { minLength: 1, maxLength: 6 }).map((a) => ({ text: a.join(''), benign: false })) },
  { weight: 2, arbitrary: fc
    .tuple(fc.constantFrom(...BENIGN_NAMES, ''), fc.constantFrom(...FROM_PIECES), fc.nat(3))
    .map(([name, piece, where]) => {
      const parts = [name, ' ', `<${COVERED}>`];
      parts.splice(where % (parts.length + 1), 0, piece);
      return { text: parts.join(''), benign: false };
    }) },
);

const benign = (...texts: string[]) => fc.constantFrom(...texts.map((text) => ({ text, benign: true })));
const hostile = (...texts: string[]) => fc.constantFrom(...texts.map((text) => ({ text, benign: false })));

/** Header lines other than the one From; each is one "line" as the client wrote it, tricks included. */
const otherLine: fc.Arbitrary<Piece> = fc.oneof(
  { weight: 8, arbitrary: benign('To: a@example.org', 'Subject: hello', 'Date: Mon, 2 Mar 2026 10:00:00 +0000', 'Message-ID: <m1@example.test>', `Reply-To: ${OTHER}`, 'X-Mailer: test') },
  // benign alone; a second copy of one is not (see hostileMessage)
  { weight: 2, arbitrary: benign('MIME-Version: 1.0', 'Content-Type: text/plain; charset=utf-8', 'Content-Type: multipart/mixed; boundary="zz"', 'Content-Transfer-Encoding: 8bit') },
  { weight: 2, arbitrary: fc.constantFrom('Sender: ', 'Resent-From: ', 'Resent-Sender: ', 'From: ').chain((name) => fromValue.map((v) => ({ ...v, text: name + v.text }))) },
  { weight: 1, arbitrary: fc.oneof(
    benign(utf8('Subject: Grüße'), utf8('X-Name: Jörg <j@example.org>'), `X-Long: ${'word '.repeat(400)}end`, `Subject: ${'x'.repeat(990)} ${'y'.repeat(20)}`),
    fc.constant({ text: utf8('To: Jörg <jörg@example.org>'), benign: true, utf8: true }),
  ) },
  { weight: 3, arbitrary: hostile(
    `X-A: a\rFrom: ${OTHER}`,
    `X-A: a\nFrom: ${OTHER}`,
    `X-A: a\r\r\nFrom: ${OTHER}`,
    'X-A: a\rContent-Type: multipart/mixed; boundary="evil"',
    'X-B: a\r\r\nContent-Type: text/html',
    `Subject: hi\r\nFrom: ${OTHER}`,
    'X-Nul: a\0b',
    'X\0Nul: a',
    'X-Ctl: a\x0cb',
    ' continued',
    '\t',
    `From : ${OTHER}`,
    `From ${OTHER} Mon Mar  2 10:00:00 2026`,
    'not a header field',
    ': empty name',
    'X-Latin1: caf\xe9',
    utf8('X-Sep: a\u2028From: evil@attacker.example'),
    `X-Long: ${'w'.repeat(1200)}`,
  ) },
);

export interface HostileMessage {
  raw: Buffer;
  smtputf8: boolean;
  signing: 'on' | 'off';
  /** Every piece is one a legitimate client sends: the relay must forward it. */
  benign: boolean;
}

const ONCE = /^(content-type|mime-version|content-transfer-encoding|sender):/i;

export const hostileMessage: fc.Arbitrary<HostileMessage> = fc
  .record({
    from: fromValue,
    others: fc.array(otherLine, { maxLength: 5 }),
    at: fc.nat(5),
    eol: fc.constantFrom('\r\n', '\r\n', '\r\n', '\n'),
    body: fc.constantFrom('Hello.\r\n', 'Hello.\n', '--zz\r\nContent-Type: text/plain\r\n\r\npart\r\n--zz--\r\n', ''),
    smtputf8: fc.boolean(),
    signing: fc.constantFrom<'on' | 'off'>('on', 'on', 'off'),
  })
  .map(({ from, others, at, eol, body, smtputf8, signing }) => {
    const pieces = [...others];
    pieces.splice(at % (pieces.length + 1), 0, { ...from, text: `From: ${from.text}` });
    const names = pieces.map((p) => ONCE.exec(p.text)?.[1]?.toLowerCase()).filter(Boolean);
    const benignMessage =
      pieces.every((p) => p.benign && (!p.utf8 || smtputf8)) &&
      new Set(names).size === names.length &&
      pieces.filter((p) => /^from:/i.test(p.text)).length === 1;
    const raw = Buffer.from(pieces.map((p) => p.text).join(eol) + eol + eol + body, 'latin1');
    return { raw, smtputf8, signing, benign: benignMessage };
  });
