/**
 * Wire numbers of the NBD protocol (doc/proto.md of NetworkBlockDevice/nbd).
 * All integers on the wire are big-endian.
 *
 * @since 0.1.0
 */

/** "NBDMAGIC": the first 8 bytes the server sends. */
export const NBDMAGIC = 0x4e42444d41474943n
/** "IHAVEOPT": second word of the greeting and prefix of every option request. */
export const IHAVEOPT = 0x49484156454f5054n
/** Prefix of every option reply. */
export const OPTION_REPLY_MAGIC = 0x3e889045565a9n
/** Compact (28-byte) request header. */
export const REQUEST_MAGIC = 0x25609513
/** Extended (32-byte) request header (experimental extension). */
export const EXTENDED_REQUEST_MAGIC = 0x21e41c71
/** Simple reply header. */
export const SIMPLE_REPLY_MAGIC = 0x67446698
/** Structured reply chunk header. */
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef
/** Extended reply chunk header (experimental extension). */
export const EXTENDED_REPLY_MAGIC = 0x6e8a278c

/** Handshake flags, server to client (u16). */
export const HandshakeFlags = {
  FIXED_NEWSTYLE: 1 << 0,
  NO_ZEROES: 1 << 1
} as const

/** Client flags, client to server (u32). */
export const ClientFlags = {
  C_FIXED_NEWSTYLE: 1 << 0,
  C_NO_ZEROES: 1 << 1
} as const

/** Option codes (`NBD_OPT_*`). */
export const Option = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  PEEK_EXPORT: 4,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11
} as const

/** Option reply types (`NBD_REP_*`); errors have bit 31 set. */
export const Reply = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4
} as const

const ERR = 0x80000000

/** Option error reply types (`NBD_REP_ERR_*`). */
export const ReplyError = {
  UNSUP: ERR + 1,
  POLICY: ERR + 2,
  INVALID: ERR + 3,
  PLATFORM: ERR + 4,
  TLS_REQD: ERR + 5,
  UNKNOWN: ERR + 6,
  SHUTDOWN: ERR + 7,
  BLOCK_SIZE_REQD: ERR + 8,
  TOO_BIG: ERR + 9,
  EXT_HEADER_REQD: ERR + 10
} as const

/** Information types of `NBD_REP_INFO` (`NBD_INFO_*`). */
export const Info = {
  EXPORT: 0,
  NAME: 1,
  DESCRIPTION: 2,
  BLOCK_SIZE: 3
} as const

/** Transmission flags (u16), sent with the export size. */
export const TransmissionFlags = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
  SEND_RESIZE: 1 << 9,
  SEND_CACHE: 1 << 10,
  SEND_FAST_ZERO: 1 << 11,
  BLOCK_STATUS_PAYLOAD: 1 << 12
} as const

/** Transmission commands (`NBD_CMD_*`). */
export const Command = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
  RESIZE: 8
} as const

/** Command names by number, for logs. */
export const commandName = (type: number): string => {
  for (const [name, value] of Object.entries(Command)) {
    if (value === type) return name
  }
  return `UNKNOWN(${type})`
}

/** Command flags (u16, `NBD_CMD_FLAG_*`). */
export const CommandFlags = {
  FUA: 1 << 0,
  NO_HOLE: 1 << 1,
  DF: 1 << 2,
  REQ_ONE: 1 << 3,
  FAST_ZERO: 1 << 4,
  PAYLOAD_LEN: 1 << 5
} as const

/** Structured reply flags (u16). */
export const ReplyFlags = {
  DONE: 1 << 0
} as const

/** Structured reply chunk types (`NBD_REPLY_TYPE_*`). */
export const ChunkType = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  BLOCK_STATUS_EXT: 6,
  ERROR: 0x8001,
  ERROR_OFFSET: 0x8002
} as const

/** Error numbers allowed on the wire during transmission. */
export const Errno = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108
} as const

/** Flags of the `base:allocation` meta context. */
export const AllocationState = {
  HOLE: 1 << 0,
  ZERO: 1 << 1
} as const

/** The only meta context namespace and context this server defines. */
export const BASE_ALLOCATION = "base:allocation"

/** Default TCP port (IANA). */
export const DEFAULT_PORT = 10809

/** Strings on the wire (names, descriptions, messages) are at most this many bytes. */
export const MAX_STRING_BYTES = 4096

/** Block size defaults when an export advertises none. */
export const DefaultBlockSize = {
  minimum: 1,
  preferred: 4096,
  maximum: 32 * 1024 * 1024
} as const
