/**
 * Transmission replies as bytes, for the hot path: simple replies, and structured or
 * extended chunks (NONE, OFFSET_DATA, OFFSET_HOLE, ERROR, ERROR_OFFSET, BLOCK_STATUS,
 * BLOCK_STATUS_EXT). Each reply is a list of buffers to be written in order: headers are
 * fresh, payload pieces are passed through uncopied. Property tests prove every reply
 * equal to the Schemas of {@link ./Transmission.ts} it stands for.
 *
 * @since 0.2.0
 */
import { ChunkType, ReplyFlags } from "./Constants.ts"
import * as Wire from "./Transmission.ts"

/** Which reply format a connection negotiated. */
export interface ReplyMode {
  /** Structured replies (implied by extended headers). */
  readonly structured: boolean
  /** Extended headers: 32-byte chunk headers carrying the request's offset. */
  readonly extended: boolean
}

/** What a reply echoes of its request. */
export interface ReplyTo {
  readonly cookie: bigint
  /** The request's offset as sent (extended headers echo it). */
  readonly wireOffset: bigint
}

/** One meta context's extents for a BLOCK_STATUS reply. */
export interface ContextExtents {
  readonly id: number
  readonly extents: ReadonlyArray<{ readonly length: number; readonly flags: number }>
}

/** Shared zeroes for holes sent as data (never written). */
const ZEROES = new Uint8Array(1024 * 1024)

/** `n` zero bytes, as views of {@link ZEROES}. */
export const zeroPieces = (n: number): Array<Uint8Array> => {
  const out: Array<Uint8Array> = []
  for (let left = n; left > 0; left -= ZEROES.length) out.push(ZEROES.subarray(0, Math.min(left, ZEROES.length)))
  return out
}

const utf8 = new TextEncoder()

/** The encoders of one reply mode. */
export interface Encoder {
  /** Where a chunk's payload starts in a buffer made by {@link Encoder.chunk}. */
  readonly at: number
  /** A chunk header with room for `extra` payload bytes after it. */
  readonly chunk: (to: ReplyTo, done: boolean, type: number, length: number, extra?: number) => Buffer
  /**
   * Success without data: a simple reply (allowed with structured replies for any
   * command but READ, and 4 bytes shorter than a chunk, so a client reads it in one
   * go), or a final NONE chunk with extended headers, which admit no simple reply.
   * Never used for READ.
   */
  readonly ok: (to: ReplyTo) => Array<Uint8Array>
  /**
   * A failure: a simple reply, or an ERROR chunk with the message (at most 1 KiB of it),
   * ERROR_OFFSET when `errorOffset` is given.
   */
  readonly error: (to: ReplyTo, errno: number, message: string, errorOffset?: number) => Array<Uint8Array>
  /**
   * A successful READ of pieces (bytes, or counts of zero bytes for holes). Structured:
   * runs of data as OFFSET_DATA chunks and holes as OFFSET_HOLE chunks, or one data chunk
   * when `df`; simple: the header and every byte.
   */
  readonly read: (to: ReplyTo, length: number, pieces: ReadonlyArray<Uint8Array | number>, df: boolean) => Array<Uint8Array>
  /** BLOCK_STATUS (or BLOCK_STATUS_EXT) chunks, one per context, the last one final. */
  readonly blockStatus: (to: ReplyTo, contexts: ReadonlyArray<ContextExtents>) => Array<Uint8Array>
}

/** The encoders of a reply mode. */
export const encoder = (mode: ReplyMode): Encoder => {
  const { extended } = mode
  const structured = mode.structured || extended
  const at = extended ? Wire.EXTENDED_REPLY_HEADER_SIZE : Wire.STRUCTURED_REPLY_HEADER_SIZE
  const chunk: Encoder["chunk"] = (to, done, type, length, extra = 0) =>
    extended
      ? Wire.encodeExtendedHeaderFast(done ? ReplyFlags.DONE : 0, type, to.cookie, to.wireOffset, length, extra)
      : Wire.encodeStructuredHeaderFast(done ? ReplyFlags.DONE : 0, type, to.cookie, length, extra)

  const ok: Encoder["ok"] = (to) =>
    [extended ? chunk(to, true, ChunkType.NONE, 0) : Wire.encodeSimpleReplyFast(0, to.cookie)]

  const error: Encoder["error"] = (to, errno, message, errorOffset) => {
    if (!structured) return [Wire.encodeSimpleReplyFast(errno, to.cookie)]
    // NBD strings may not contain NUL.
    const text = utf8.encode(message.slice(0, 1024).replaceAll("\0", "?"))
    const withOffset = errorOffset !== undefined
    // ERROR and ERROR_OFFSET share the error and message prefix; ERROR_OFFSET ends with the offset.
    const type = withOffset ? ChunkType.ERROR_OFFSET : ChunkType.ERROR
    const header = chunk(to, true, type, 6 + text.length + (withOffset ? 8 : 0), 6)
    header.writeUInt32BE(errno, at)
    header.writeUInt16BE(text.length, at + 4)
    if (!withOffset) return [header, text]
    const where = Buffer.allocUnsafe(8)
    where.writeBigUInt64BE(BigInt(errorOffset))
    return [header, text, where]
  }

  const read: Encoder["read"] = (to, length, given, df) => {
    // Chunks carry at least one byte of data, and holes are never empty.
    let pieces = given.filter((piece) => (typeof piece === "number" ? piece > 0 : piece.length > 0))
    if (!structured || df) {
      const data = pieces.flatMap((piece) => (typeof piece === "number" ? zeroPieces(piece) : [piece]))
      if (!structured) return [Wire.encodeSimpleReplyFast(0, to.cookie), ...data]
      pieces = data
    }
    if (length === 0) return [chunk(to, true, ChunkType.NONE, 0)]
    const out: Array<Uint8Array> = []
    let offset = to.wireOffset
    let i = 0
    while (i < pieces.length) {
      const piece = pieces[i]!
      if (typeof piece === "number") {
        i++
        const header = chunk(to, i === pieces.length, ChunkType.OFFSET_HOLE, 12, 12)
        header.writeBigUInt64BE(offset, at)
        header.writeUInt32BE(piece, at + 8)
        out.push(header)
        offset += BigInt(piece)
        continue
      }
      const run: Array<Uint8Array> = []
      let runLength = 0
      while (i < pieces.length && typeof pieces[i] !== "number") {
        const data = pieces[i++] as Uint8Array
        run.push(data)
        runLength += data.length
      }
      const header = chunk(to, i === pieces.length, ChunkType.OFFSET_DATA, 8 + runLength, 8)
      header.writeBigUInt64BE(offset, at)
      out.push(header, ...run)
      offset += BigInt(runLength)
    }
    return out
  }

  const statusChunk = (to: ReplyTo, done: boolean, context: ContextExtents): Buffer => {
    const { extents } = context
    if (extended) {
      const length = 8 + 16 * extents.length
      const header = chunk(to, done, ChunkType.BLOCK_STATUS_EXT, length, length)
      header.writeUInt32BE(context.id, at)
      header.writeUInt32BE(extents.length, at + 4)
      extents.forEach((extent, j) => {
        header.writeBigUInt64BE(BigInt(extent.length), at + 8 + 16 * j)
        header.writeBigUInt64BE(BigInt(extent.flags), at + 16 + 16 * j)
      })
      return header
    }
    const length = 4 + 8 * extents.length
    const header = chunk(to, done, ChunkType.BLOCK_STATUS, length, length)
    header.writeUInt32BE(context.id, at)
    extents.forEach((extent, j) => {
      header.writeUInt32BE(extent.length, at + 4 + 8 * j)
      header.writeUInt32BE(extent.flags, at + 8 + 8 * j)
    })
    return header
  }

  const blockStatus: Encoder["blockStatus"] = (to, contexts) =>
    contexts.map((context, i) => statusChunk(to, i === contexts.length - 1, context))

  return { at, chunk, ok, error, read, blockStatus }
}
