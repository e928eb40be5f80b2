/**
 * The Sendmail 8 milter protocol, version 6, as far as this relay uses it. There is no RFC; the
 * reference is Sendmail's include/libmilter/mfdef.h, and the peer that matters is Postfix's
 * src/milter/milter8.c (Postfix speaks version 6 by default, milter_protocol = 6).
 *
 * Every packet is a 4-byte big-endian length, then a one-byte command, then length-1 bytes of
 * data. Strings are NUL-terminated; numbers are 32-bit big-endian.
 */

/** What the MTA sends (SMFIC_*). */
export const Command = {
  abort: 'A',
  body: 'B',
  connect: 'C',
  macro: 'D',
  endOfBody: 'E',
  helo: 'H',
  quitNewConnection: 'K',
  header: 'L',
  mail: 'M',
  endOfHeaders: 'N',
  optionNegotiation: 'O',
  quit: 'Q',
  recipient: 'R',
  data: 'T',
  unknown: 'U',
} as const;
export type CommandCode = (typeof Command)[keyof typeof Command];

/** What the filter answers (SMFIR_*); only the ones this relay sends. */
export const Response = {
  addHeader: 'h',
  changeHeader: 'm',
  replaceBody: 'b',
  accept: 'a',
  continue: 'c',
  progress: 'p',
  replyCode: 'y',
} as const;

/** SMFIF_*: the modifications a filter may make, offered by the MTA at negotiation. */
export const Action = {
  addHeaders: 0x01,
  changeBody: 0x02,
  changeHeaders: 0x10,
  /** The filter may name the macros it wants (the lists after the negotiation reply). */
  setMacroList: 0x100,
} as const;

/** SMFIP_*: how the filter wants events sent; the relay asks for this one only (see session.ts). */
export const Step = {
  /** Header values keep their leading space, so the bytes seen are the bytes in the message. */
  headerLeadingSpace: 0x100000,
} as const;

/** SMFIM_*: the protocol stages a macro list is for (version 6 negotiation). */
export const MacroStage = {
  connect: 0,
  mail: 2,
  endOfMessage: 5,
} as const;

/** The protocol version this module speaks. */
export const PROTOCOL_VERSION = 6;

/**
 * MILTER_CHUNK_SIZE: the largest body chunk an MTA sends, and the largest body replacement chunk
 * a filter sends (libmilter's smfi_replacebody splits at this size).
 */
export const CHUNK_SIZE = 65535;
