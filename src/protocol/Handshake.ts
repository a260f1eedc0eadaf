/**
 * Messages of the fixed-newstyle handshake: the greeting, the client flags, option
 * request and reply headers, and the reply to `NBD_OPT_EXPORT_NAME`.
 *
 * @since 0.1.0
 */
import * as Binary from "./Binary.ts"
import { IHAVEOPT, NBDMAGIC, OPTION_REPLY_MAGIC } from "./Constants.ts"

/** Server greeting (18 bytes): NBDMAGIC, IHAVEOPT, handshake flags. */
export const Greeting = Binary.struct({
  magic: Binary.constant(Binary.u64, NBDMAGIC, "NBDMAGIC"),
  optMagic: Binary.constant(Binary.u64, IHAVEOPT, "IHAVEOPT"),
  handshakeFlags: Binary.u16
})
export type Greeting = typeof Greeting.Type

/** Client flags (4 bytes) sent in answer to the greeting. */
export const ClientFlagsMessage = Binary.struct({
  clientFlags: Binary.u32
})
export type ClientFlagsMessage = typeof ClientFlagsMessage.Type

/** Option request header (16 bytes); `length` bytes of option data follow. */
export const OptionRequestHeader = Binary.struct({
  magic: Binary.constant(Binary.u64, IHAVEOPT, "IHAVEOPT"),
  option: Binary.u32,
  length: Binary.u32
})
export type OptionRequestHeader = typeof OptionRequestHeader.Type

/** Size of {@link OptionRequestHeader} on the wire. */
export const OPTION_REQUEST_HEADER_SIZE = 16

/** Option reply header (20 bytes); `length` bytes of reply data follow. */
export const OptionReplyHeader = Binary.struct({
  magic: Binary.constant(Binary.u64, OPTION_REPLY_MAGIC, "option reply magic"),
  option: Binary.u32,
  replyType: Binary.u32,
  length: Binary.u32
})
export type OptionReplyHeader = typeof OptionReplyHeader.Type

/** Size of {@link OptionReplyHeader} on the wire. */
export const OPTION_REPLY_HEADER_SIZE = 20

/** Answer to `NBD_OPT_EXPORT_NAME` when zeroes were not turned off (134 bytes). */
export const ExportNameReply = Binary.struct({
  size: Binary.u64,
  transmissionFlags: Binary.u16,
  zeroes: Binary.padding(124)
})
export type ExportNameReply = typeof ExportNameReply.Type

/** Answer to `NBD_OPT_EXPORT_NAME` after `NO_ZEROES` was agreed (10 bytes). */
export const ExportNameReplyNoZeroes = Binary.struct({
  size: Binary.u64,
  transmissionFlags: Binary.u16
})
