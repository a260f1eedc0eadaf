/**
 * Messages of the transmission phase: request headers, simple replies, structured
 * reply chunk headers and the payloads of chunks.
 *
 * @since 0.1.0
 */
import * as Binary from "./Binary.ts"
import {
  EXTENDED_REPLY_MAGIC,
  EXTENDED_REQUEST_MAGIC,
  REQUEST_MAGIC,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_REPLY_MAGIC
} from "./Constants.ts"

/** Compact request header (28 bytes); `length` bytes of data follow for `NBD_CMD_WRITE`. */
export const RequestHeader = Binary.struct({
  magic: Binary.constant(Binary.u32, REQUEST_MAGIC, "request magic"),
  flags: Binary.u16,
  type: Binary.u16,
  cookie: Binary.u64,
  offset: Binary.u64,
  length: Binary.u32
})
export type RequestHeader = typeof RequestHeader.Type

/** Size of {@link RequestHeader} on the wire. */
export const REQUEST_HEADER_SIZE = 28

/**
 * Decodes a request header without Schema's machinery, for the hot path; the magic is
 * checked by the caller. A property test proves it equal to {@link RequestHeader}.
 */
export const decodeRequestHeaderFast = (view: DataView, at: number): RequestHeader => ({
  flags: view.getUint16(at + 4),
  type: view.getUint16(at + 6),
  cookie: view.getBigUint64(at + 8),
  offset: view.getBigUint64(at + 16),
  length: view.getUint32(at + 24)
})

/**
 * Encodes a compact request header without Schema's machinery, for clients' hot path.
 * A property test proves it equal to {@link RequestHeader}.
 */
export const encodeRequestHeaderFast = (
  flags: number,
  type: number,
  cookie: bigint,
  offset: bigint,
  length: number
): Buffer => {
  const out = Buffer.allocUnsafe(REQUEST_HEADER_SIZE)
  out.writeUInt32BE(REQUEST_MAGIC, 0)
  out.writeUInt16BE(flags, 4)
  out.writeUInt16BE(type, 6)
  out.writeBigUInt64BE(cookie, 8)
  out.writeBigUInt64BE(offset, 16)
  out.writeUInt32BE(length, 24)
  return out
}

/** Simple reply header (16 bytes); read data follows a successful simple READ reply. */
export const SimpleReply = Binary.struct({
  magic: Binary.constant(Binary.u32, SIMPLE_REPLY_MAGIC, "simple reply magic"),
  error: Binary.u32,
  cookie: Binary.u64
})
export type SimpleReply = typeof SimpleReply.Type

/** Size of {@link SimpleReply} on the wire. */
export const SIMPLE_REPLY_SIZE = 16

/** Structured reply chunk header (20 bytes); `length` bytes of payload follow. */
export const StructuredReplyHeader = Binary.struct({
  magic: Binary.constant(Binary.u32, STRUCTURED_REPLY_MAGIC, "structured reply magic"),
  flags: Binary.u16,
  type: Binary.u16,
  cookie: Binary.u64,
  length: Binary.u32
})
export type StructuredReplyHeader = typeof StructuredReplyHeader.Type

/** Size of {@link StructuredReplyHeader} on the wire. */
export const STRUCTURED_REPLY_HEADER_SIZE = 20

/** `NBD_REPLY_TYPE_OFFSET_DATA` payload: the offset of the data that follows. */
export const OffsetData = Binary.struct({
  offset: Binary.u64,
  data: Binary.restBytes
})
export type OffsetData = typeof OffsetData.Type

/** `NBD_REPLY_TYPE_OFFSET_HOLE` payload: a run of zeroes. */
export const OffsetHole = Binary.struct({
  offset: Binary.u64,
  size: Binary.u32
})
export type OffsetHole = typeof OffsetHole.Type

/** `NBD_REPLY_TYPE_ERROR` payload: an error number and a message. */
export const ErrorPayload = Binary.struct({
  error: Binary.u32,
  message: Binary.prefixedString(Binary.u16)
})
export type ErrorPayload = typeof ErrorPayload.Type

/** `NBD_REPLY_TYPE_ERROR_OFFSET` payload: an error number, a message and the failing offset. */
export const ErrorOffsetPayload = Binary.struct({
  error: Binary.u32,
  message: Binary.prefixedString(Binary.u16),
  offset: Binary.u64
})
export type ErrorOffsetPayload = typeof ErrorOffsetPayload.Type

/** One extent of a `NBD_REPLY_TYPE_BLOCK_STATUS` chunk. */
export const BlockDescriptor = Binary.struct({
  length: Binary.u32,
  flags: Binary.u32
})
export type BlockDescriptor = typeof BlockDescriptor.Type

/** `NBD_REPLY_TYPE_BLOCK_STATUS` payload: a context id and its extents. */
export const BlockStatusPayload = Binary.struct({
  contextId: Binary.u32,
  descriptors: Binary.restArray(Binary.embed(BlockDescriptor), 8)
})
export type BlockStatusPayload = typeof BlockStatusPayload.Type

/**
 * Encodes a simple reply header without Schema's machinery, for the hot path.
 * A property test proves it equal to {@link SimpleReply}.
 */
export const encodeSimpleReplyFast = (error: number, cookie: bigint): Uint8Array => {
  const out = Buffer.allocUnsafe(SIMPLE_REPLY_SIZE)
  out.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0)
  out.writeUInt32BE(error, 4)
  out.writeBigUInt64BE(cookie, 8)
  return out
}

/**
 * Encodes a structured reply chunk header followed by `extra` bytes of payload prefix
 * space (such as the offset of OFFSET_DATA), for the hot path. A property test proves
 * the header equal to {@link StructuredReplyHeader}.
 */
export const encodeStructuredHeaderFast = (
  flags: number,
  type: number,
  cookie: bigint,
  length: number,
  extra = 0
): Buffer => {
  const out = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_SIZE + extra)
  out.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0)
  out.writeUInt16BE(flags, 4)
  out.writeUInt16BE(type, 6)
  out.writeBigUInt64BE(cookie, 8)
  out.writeUInt32BE(length, 16)
  return out
}

/** Extended request header (32 bytes, experimental extension): 64-bit length. */
export const ExtendedRequestHeader = Binary.struct({
  magic: Binary.constant(Binary.u32, EXTENDED_REQUEST_MAGIC, "extended request magic"),
  flags: Binary.u16,
  type: Binary.u16,
  cookie: Binary.u64,
  offset: Binary.u64,
  length: Binary.u64
})
export type ExtendedRequestHeader = typeof ExtendedRequestHeader.Type

/** Size of {@link ExtendedRequestHeader} on the wire. */
export const EXTENDED_REQUEST_HEADER_SIZE = 32

/**
 * Decodes an extended request header without Schema's machinery (magic checked by the
 * caller). A property test proves it equal to {@link ExtendedRequestHeader}.
 */
export const decodeExtendedRequestHeaderFast = (view: DataView, at: number): ExtendedRequestHeader => ({
  flags: view.getUint16(at + 4),
  type: view.getUint16(at + 6),
  cookie: view.getBigUint64(at + 8),
  offset: view.getBigUint64(at + 16),
  length: view.getBigUint64(at + 24)
})

/**
 * Encodes an extended request header without Schema's machinery, for clients' hot path.
 * A property test proves it equal to {@link ExtendedRequestHeader}.
 */
export const encodeExtendedRequestHeaderFast = (
  flags: number,
  type: number,
  cookie: bigint,
  offset: bigint,
  length: bigint
): Buffer => {
  const out = Buffer.allocUnsafe(EXTENDED_REQUEST_HEADER_SIZE)
  out.writeUInt32BE(EXTENDED_REQUEST_MAGIC, 0)
  out.writeUInt16BE(flags, 4)
  out.writeUInt16BE(type, 6)
  out.writeBigUInt64BE(cookie, 8)
  out.writeBigUInt64BE(offset, 16)
  out.writeBigUInt64BE(length, 24)
  return out
}

/** Extended reply chunk header (32 bytes, experimental extension); `length` bytes of payload follow. */
export const ExtendedReplyHeader = Binary.struct({
  magic: Binary.constant(Binary.u32, EXTENDED_REPLY_MAGIC, "extended reply magic"),
  flags: Binary.u16,
  type: Binary.u16,
  cookie: Binary.u64,
  offset: Binary.u64,
  length: Binary.u64
})
export type ExtendedReplyHeader = typeof ExtendedReplyHeader.Type

/** Size of {@link ExtendedReplyHeader} on the wire. */
export const EXTENDED_REPLY_HEADER_SIZE = 32

/**
 * Encodes an extended reply chunk header followed by `extra` bytes of payload prefix
 * space, for the hot path. A property test proves the header equal to {@link ExtendedReplyHeader}.
 */
export const encodeExtendedHeaderFast = (
  flags: number,
  type: number,
  cookie: bigint,
  offset: bigint,
  length: number,
  extra = 0
): Buffer => {
  const out = Buffer.allocUnsafe(EXTENDED_REPLY_HEADER_SIZE + extra)
  out.writeUInt32BE(EXTENDED_REPLY_MAGIC, 0)
  out.writeUInt16BE(flags, 4)
  out.writeUInt16BE(type, 6)
  out.writeBigUInt64BE(cookie, 8)
  out.writeBigUInt64BE(offset, 16)
  out.writeBigUInt64BE(BigInt(length), 24)
  return out
}

/** One extent of a `NBD_REPLY_TYPE_BLOCK_STATUS_EXT` chunk. */
export const BlockDescriptorExt = Binary.struct({
  length: Binary.u64,
  flags: Binary.u64
})
export type BlockDescriptorExt = typeof BlockDescriptorExt.Type

/** `NBD_REPLY_TYPE_BLOCK_STATUS_EXT` payload: a context id, a count and 64-bit extents. */
export const BlockStatusExtPayload = Binary.struct({
  contextId: Binary.u32,
  descriptors: Binary.array(Binary.u32, Binary.embed(BlockDescriptorExt), 0x100000)
})
export type BlockStatusExtPayload = typeof BlockStatusExtPayload.Type
