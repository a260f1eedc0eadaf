/**
 * The transmission phase: read requests, check them, run them on the driver
 * concurrently, and send replies as they complete.
 *
 * Requests are parsed as their bytes arrive, while earlier ones run (pipelining),
 * bounded by `maxInFlight` requests and `maxInFlightBytes` of write payload; parsing
 * stops while too many reply bytes are queued. A rejected request is answered with the
 * errno the spec prescribes and the connection stays usable; a broken frame (bad magic,
 * an absurd payload) closes this connection only. On NBD_CMD_DISC, end of stream or
 * shutdown, in-flight requests finish (within `drainTimeoutMillis`) before the session
 * ends; when the session is interrupted, they are interrupted.
 *
 * @since 0.1.0
 */
import * as Effect from "effect/Effect"
import * as FiberSet from "effect/FiberSet"
import * as Runtime from "effect/Runtime"
import type { Extent, NbdDriverShape, SyncOperations } from "../Driver.ts"
import { type ProtocolError, protocolError, ProtocolViolation } from "../Errors.ts"
import {
  ChunkType,
  Command,
  CommandFlags,
  commandName,
  Errno,
  EXTENDED_REQUEST_MAGIC,
  REQUEST_MAGIC,
  ReplyFlags,
  TransmissionFlags
} from "../protocol/Constants.ts"
import * as Wire from "../protocol/Transmission.ts"
import { ConnectionClosed, type FrameReader } from "../stream/FrameReader.ts"
import type { Negotiated } from "./Negotiation.ts"
import type { FrameWriter } from "../stream/FrameWriter.ts"
import * as Metrics from "./Metrics.ts"
import type { ServerConfig } from "./ServerConfig.ts"
import type { Shutdown } from "./Shutdown.ts"

/** What the transmission phase needs. */
export interface TransmissionContext {
  readonly reader: FrameReader
  readonly writer: FrameWriter
  readonly config: ServerConfig
  readonly negotiated: Negotiated
  /** Once triggered, new requests get ESHUTDOWN and the session ends when in-flight requests are done. */
  readonly shutdown: Shutdown
}

/** A decoded request, with offset and length as numbers (values past 2^53 are rejected). */
interface Request {
  readonly type: number
  readonly flags: number
  readonly cookie: bigint
  /** The offset as sent, echoed in extended reply headers. */
  readonly wireOffset: bigint
  readonly offset: number
  readonly length: number
}

/** Largest extent of a BLOCK_STATUS chunk, aligned to 512 bytes: 32-bit, or 64-bit with extended headers. */
const MAX_EXTENT = 0xffffffff - (0xffffffff % 512)
const MAX_EXTENT_EXT = Number.MAX_SAFE_INTEGER - (Number.MAX_SAFE_INTEGER % 512)

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER)
const toNumber = (value: bigint): number => (value > MAX_SAFE ? Number.MAX_SAFE_INTEGER : Number(value))

const READ_LIKE = new Set<number>([Command.READ, Command.TRIM, Command.CACHE, Command.BLOCK_STATUS])
const WRITES = new Set<number>([Command.WRITE, Command.TRIM, Command.WRITE_ZEROES, Command.RESIZE])

/** Command flags each command accepts (FUA is added when SEND_FUA is advertised). */
const allowedFlags = (type: number, structured: boolean, extended: boolean): number => {
  switch (type) {
    case Command.READ:
      return structured ? CommandFlags.DF : 0
    case Command.WRITE:
      return extended ? CommandFlags.PAYLOAD_LEN : 0
    case Command.WRITE_ZEROES:
      return CommandFlags.NO_HOLE | CommandFlags.FAST_ZERO
    case Command.BLOCK_STATUS:
      return CommandFlags.REQ_ONE
    default:
      return 0
  }
}

const errorMessage = new TextEncoder()
const NO_PAYLOAD: ReadonlyArray<Uint8Array> = [new Uint8Array(0)]

/** Shared zeroes for holes sent as data (never written). */
const ZEROES = new Uint8Array(1024 * 1024)
/** `n` zero bytes, as views of {@link ZEROES}. */
const zeroes = (n: number): Array<Uint8Array> => {
  const out: Array<Uint8Array> = []
  for (let left = n; left > 0; left -= ZEROES.length) out.push(ZEROES.subarray(0, Math.min(left, ZEROES.length)))
  return out
}
/** Bytes a discarded payload waits for at a time (the reader keeps at most that much). */
const SKIP_CHUNK = 1024 * 1024

/** Runs the transmission phase until the client disconnects. */
export const serve = (ctx: TransmissionContext): Effect.Effect<void, ConnectionClosed | ProtocolViolation> =>
  Effect.scoped(Effect.gen(function*() {
    const { config, negotiated, reader, writer } = ctx
    const exp = negotiated.export
    const driver: NbdDriverShape = exp.driver
    const features = driver.features
    const flags = negotiated.transmissionFlags
    const extended = negotiated.extendedHeaders
    const structured = negotiated.structuredReplies || extended
    const fuaFlag = (flags & TransmissionFlags.SEND_FUA) !== 0 ? CommandFlags.FUA : 0
    const blockSize = driver.blockSize
    const maxPayload = blockSize.maximum
    const headerSize = extended ? Wire.EXTENDED_REQUEST_HEADER_SIZE : Wire.REQUEST_HEADER_SIZE
    const requestMagic = extended ? EXTENDED_REQUEST_MAGIC : REQUEST_MAGIC

    // ---- replies -------------------------------------------------------------------
    /** Where a chunk's payload starts in the buffer from {@link chunk}. */
    const at = extended ? Wire.EXTENDED_REPLY_HEADER_SIZE : Wire.STRUCTURED_REPLY_HEADER_SIZE
    /** A structured (or extended) chunk header with room for `extra` payload bytes after it. */
    const chunk = (req: Request, done: boolean, type: number, length: number, extra = 0) =>
      extended
        ? Wire.encodeExtendedHeaderFast(done ? ReplyFlags.DONE : 0, type, req.cookie, req.wireOffset, length, extra)
        : Wire.encodeStructuredHeaderFast(done ? ReplyFlags.DONE : 0, type, req.cookie, length, extra)

    /** An error reply: simple, or an ERROR chunk (ERROR_OFFSET when the error names an offset in the range). */
    const sendError = (req: Request, error: ProtocolError) => {
      Metrics.countError(error.errno)
      const errno = Errno[error.errno]
      if (!structured) return writer.write([Wire.encodeSimpleReplyFast(errno, req.cookie)])
      const message = errorMessage.encode(error.message.slice(0, 1024))
      const offset = error.offset
      const inRange = offset !== undefined && offset >= req.offset && offset < req.offset + req.length &&
        req.type !== Command.RESIZE
      // ERROR and ERROR_OFFSET share the error and message prefix; ERROR_OFFSET ends with the offset.
      const header = chunk(req, true, inRange ? ChunkType.ERROR_OFFSET : ChunkType.ERROR, 6 + message.length + (inRange ? 8 : 0), 6)
      header.writeUInt32BE(errno, at)
      header.writeUInt16BE(message.length, at + 4)
      if (!inRange) return writer.write([header, message])
      const where = Buffer.allocUnsafe(8)
      where.writeBigUInt64BE(BigInt(offset))
      return writer.write([header, message, where])
    }

    const sendOk = (req: Request) =>
      writer.write([extended ? chunk(req, true, ChunkType.NONE, 0) : Wire.encodeSimpleReplyFast(0, req.cookie)])

    /**
     * A successful READ reply carrying `req.length` bytes, given as pieces: bytes, or
     * counts of zero bytes (holes). With structured replies, runs of data become
     * OFFSET_DATA chunks and holes OFFSET_HOLE chunks; with simple replies or DF, holes
     * are sent as zeroes in one piece of data.
     */
    const sendRead = (req: Request, pieces: ReadonlyArray<Uint8Array | number>) => {
      Metrics.bytesRead.unsafeUpdate(req.length, [])
      if (!structured || (req.flags & CommandFlags.DF) !== 0) {
        const data = pieces.flatMap((piece) => (typeof piece === "number" ? zeroes(piece) : [piece]))
        if (!structured) return writer.write([Wire.encodeSimpleReplyFast(0, req.cookie), ...data])
        pieces = data
      }
      if (req.length === 0) return writer.write([chunk(req, true, ChunkType.NONE, 0)])
      const out: Array<Uint8Array> = []
      let offset = req.wireOffset
      let i = 0
      while (i < pieces.length) {
        const piece = pieces[i]!
        if (typeof piece === "number") {
          i++
          const header = chunk(req, i === pieces.length, ChunkType.OFFSET_HOLE, 12, 12)
          header.writeBigUInt64BE(offset, at)
          header.writeUInt32BE(piece, at + 8)
          out.push(header)
          offset += BigInt(piece)
          continue
        }
        const run: Array<Uint8Array> = []
        let length = 0
        while (i < pieces.length && typeof pieces[i] !== "number") {
          const data = pieces[i++] as Uint8Array
          run.push(data)
          length += data.length
        }
        const header = chunk(req, i === pieces.length, ChunkType.OFFSET_DATA, 8 + length, 8)
        header.writeBigUInt64BE(offset, at)
        out.push(header, ...run)
        offset += BigInt(length)
      }
      return writer.write(out)
    }

    const sendBlockStatus = (req: Request, extents: ReadonlyArray<Extent>) => {
      const chunks: Array<Uint8Array> = []
      negotiated.metaContexts.forEach((context, i) => {
        const done = i === negotiated.metaContexts.length - 1
        if (extended) {
          const length = 8 + 16 * extents.length
          const header = chunk(req, done, ChunkType.BLOCK_STATUS_EXT, length, length)
          header.writeUInt32BE(context.id, at)
          header.writeUInt32BE(extents.length, at + 4)
          extents.forEach((extent, j) => {
            header.writeBigUInt64BE(BigInt(extent.length), at + 8 + 16 * j)
            header.writeBigUInt64BE(BigInt(extent.flags), at + 16 + 16 * j)
          })
          chunks.push(header)
        } else {
          const length = 4 + 8 * extents.length
          const header = chunk(req, done, ChunkType.BLOCK_STATUS, length, length)
          header.writeUInt32BE(context.id, at)
          extents.forEach((extent, j) => {
            header.writeUInt32BE(extent.length, at + 4 + 8 * j)
            header.writeUInt32BE(extent.flags, at + 8 + 8 * j)
          })
          chunks.push(header)
        }
      })
      return writer.write(chunks)
    }

    // ---- checks --------------------------------------------------------------------
    /** The error a request gets before it reaches the driver, if any (all but the bounds). */
    const check = (req: Request): ProtocolError | undefined => {
      const { type } = req
      if (ctx.shutdown.isShuttingDown()) return protocolError("ESHUTDOWN", "the server is shutting down")
      if (type > Command.RESIZE || type === Command.DISC) return protocolError("EINVAL", `unknown command ${type}`)
      const unknownFlags = req.flags & ~(allowedFlags(type, structured, extended) | fuaFlag)
      if (unknownFlags !== 0) {
        return protocolError("EINVAL", `flags 0x${unknownFlags.toString(16)} are not valid for ${commandName(type)}`)
      }
      if (exp.readOnly && WRITES.has(type)) return protocolError("EPERM", "the export is read-only")
      if (extended && type === Command.WRITE && (req.flags & CommandFlags.PAYLOAD_LEN) === 0) {
        return protocolError("EINVAL", "WRITE with extended headers must set PAYLOAD_LEN")
      }
      switch (type) {
        case Command.FLUSH:
          return features.flush ? undefined : protocolError("EINVAL", "FLUSH is not supported by this export")
        case Command.TRIM:
          if (!features.trim) return protocolError("EINVAL", "TRIM is not supported by this export")
          break
        case Command.BLOCK_STATUS:
          if (!structured || negotiated.metaContexts.length === 0) {
            return protocolError("EINVAL", "no meta context was selected for BLOCK_STATUS")
          }
          if (req.length === 0) return protocolError("EINVAL", "BLOCK_STATUS of zero bytes")
          break
        case Command.RESIZE:
          if (!features.resize) return protocolError("EINVAL", "RESIZE is not supported by this export")
          return req.offset % blockSize.minimum === 0
            ? undefined
            : protocolError("EINVAL", `new size is not a multiple of ${blockSize.minimum}`)
      }
      if (req.offset % blockSize.minimum !== 0 || req.length % blockSize.minimum !== 0) {
        return protocolError("EINVAL", `offset and length must be multiples of ${blockSize.minimum}`)
      }
      if ((type === Command.READ || type === Command.WRITE) && req.length > maxPayload) {
        return protocolError("EINVAL", `${commandName(type)} of ${req.length} bytes exceeds the maximum ${maxPayload}`)
      }
      if (type === Command.WRITE_ZEROES && (req.flags & CommandFlags.FAST_ZERO) !== 0 && !features.fastZero) {
        return protocolError("ENOTSUP", "fast zeroing is not supported by this export")
      }
      return undefined
    }

    /** The error of a request that reaches past the end of the export. */
    const checkBounds = (req: Request, size: number): ProtocolError | undefined =>
      req.type !== Command.RESIZE && req.type !== Command.FLUSH && req.offset + req.length > size
        ? protocolError(
          READ_LIKE.has(req.type) ? "EINVAL" : "ENOSPC",
          `${commandName(req.type)} of ${req.length} bytes at ${req.offset} is beyond the export size ${size}`
        )
        : undefined

    // ---- execution -----------------------------------------------------------------
    /** The answer to a driver defect (logged by the caller). */
    const driverDefect = protocolError("EIO", "internal error in the driver")
    /** The answer to a read whose driver returned another number of bytes than asked. */
    const wrongReadLength = (req: Request, length: number) =>
      protocolError("EIO", `driver returned ${length} bytes for a read of ${req.length}`)

    const fua = (req: Request) => (req.flags & CommandFlags.FUA) !== 0
    /** FUA on a driver without native FUA: follow the write with a flush. */
    const afterWrite = (req: Request) => fua(req) && !features.fua && features.flush ? driver.flush : Effect.void

    const ok = (req: Request) => Effect.sync(() => sendOk(req))

    const execute = (req: Request, payload: Uint8Array): Effect.Effect<void, ProtocolError> => {
      switch (req.type) {
        case Command.READ:
          return Effect.flatMap(driver.read(req.offset, req.length), (data) =>
            data.length === req.length
              ? Effect.sync(() => sendRead(req, [data]))
              : Effect.fail(wrongReadLength(req, data.length)))
        case Command.WRITE:
          return driver.write(req.offset, payload, { fua: fua(req) }).pipe(
            Effect.zipRight(afterWrite(req)),
            Effect.tap(() => Metrics.bytesWritten.unsafeUpdate(req.length, [])),
            Effect.zipRight(ok(req))
          )
        case Command.FLUSH:
          return Effect.zipRight(driver.flush, ok(req))
        case Command.TRIM:
          return driver.trim(req.offset, req.length, { fua: fua(req) }).pipe(
            Effect.zipRight(afterWrite(req)),
            Effect.zipRight(ok(req))
          )
        case Command.WRITE_ZEROES:
          return driver.writeZeroes(req.offset, req.length, {
            fua: fua(req),
            noHole: (req.flags & CommandFlags.NO_HOLE) !== 0,
            fastZero: (req.flags & CommandFlags.FAST_ZERO) !== 0
          }).pipe(Effect.zipRight(afterWrite(req)), Effect.zipRight(ok(req)))
        case Command.CACHE:
          return Effect.zipRight(driver.cache(req.offset, req.length), ok(req))
        case Command.BLOCK_STATUS:
          return Effect.flatMap(driver.blockStatus(req.offset, req.length), (extents) => {
            const fitted = fitExtents(extents, req, extended ? MAX_EXTENT_EXT : MAX_EXTENT)
            return fitted.length === 0
              ? Effect.fail(protocolError("EIO", "driver returned no extent"))
              : Effect.sync(() => sendBlockStatus(req, fitted))
          })
        case Command.RESIZE:
          return Effect.zipRight(driver.resize(req.offset), ok(req))
        default:
          return Effect.fail(protocolError("EINVAL", `unknown command ${req.type}`))
      }
    }

    const failed = (req: Request, error: ProtocolError) =>
      Effect.zipRight(
        Effect.logDebug(`${commandName(req.type)} failed: ${error.errno}: ${error.message}`),
        Effect.sync(() => sendError(req, error))
      )

    /** Runs one checked request to its reply; never fails. */
    const handle = (req: Request, payload: Uint8Array): Effect.Effect<void> =>
      driver.size.pipe(
        Effect.flatMap((size) => {
          const outOfBounds = checkBounds(req, size)
          return outOfBounds === undefined ? execute(req, payload) : Effect.fail(outOfBounds)
        }),
        Effect.catchAllDefect((defect) =>
          Effect.zipRight(
            Effect.logError(`driver defect in ${commandName(req.type)}`, defect),
            Effect.fail(driverDefect)
          )
        ),
        Effect.catchAll((error) => failed(req, error))
      )

    // ---- the request parser --------------------------------------------------------
    // Requests are parsed synchronously as bytes arrive. Each is started at once as a
    // fiber of its own in `requests` (started synchronously, running until it suspends),
    // so a driver that answers synchronously has replied before the next request is
    // parsed, and one that suspends lets the parser go on: replies are sent as they
    // complete. The session owns those fibers: what is left of them when it ends is
    // interrupted.
    const requests = yield* FiberSet.make<void, never>()
    const runRequest = yield* FiberSet.runtime(requests)<never>()
    const runtime = yield* Effect.runtime<never>()
    /** Runs a short effect (a log line) from the synchronous parser. */
    const runFork = Runtime.runFork(runtime)
    // Shutdown is watched by a fiber of this scope (interrupted when the session ends).
    let onShutdown = () => {}
    yield* Effect.forkScoped(Effect.zipRight(ctx.shutdown.await, Effect.sync(() => onShutdown())))

    return yield* Effect.async<void, ConnectionClosed | ProtocolViolation>((resume) => {
      type State =
        | { readonly _tag: "Header" }
        | { readonly _tag: "Payload"; readonly req: Request }
        | { readonly _tag: "Skip"; readonly req: Request; left: number; readonly error: ProtocolError }
      let state: State = { _tag: "Header" }
      let inFlight = 0
      let payloadBytes = 0
      let pumping = false
      let waitingForCapacity = false
      /** Set when no more requests are taken: the session ends once in-flight ones are done. */
      let ending: Effect.Effect<void, ConnectionClosed | ProtocolViolation> | undefined
      let drainTimer: ReturnType<typeof setTimeout> | undefined
      let resumed = false
      /** Shutdown began: requests are answered ESHUTDOWN, and the session ends when none is in flight. */
      let draining = false

      const finishIfDrained = () => {
        if (ending === undefined || inFlight > 0 || resumed) return
        resumed = true
        if (drainTimer !== undefined) clearTimeout(drainTimer)
        stopReading()
        resume(ending)
      }

      const end = (result: Effect.Effect<void, ConnectionClosed | ProtocolViolation>) => {
        if (ending !== undefined) return
        ending = result
        if (inFlight > 0) {
          // Requests that do not finish in time are interrupted (they answer nothing).
          drainTimer = setTimeout(() => {
            runFork(Effect.zipRight(
              Effect.logWarning(`interrupting ${inFlight} in-flight request(s) that did not finish in time`),
              FiberSet.clear(requests)
            ))
          }, config.drainTimeoutMillis)
        }
        finishIfDrained()
      }

      const completed = (bytes: number) => {
        inFlight--
        payloadBytes -= bytes
        // Parse what waited for capacity first: during shutdown it is answered ESHUTDOWN.
        if (waitingForCapacity) {
          waitingForCapacity = false
          pump()
        }
        if (draining && inFlight === 0) end(Effect.void)
        finishIfDrained()
      }

      /** READ and WRITE on a driver with synchronous operations: answered here, no fiber. */
      const sync = driver.sync
      const dispatchSync = (ops: SyncOperations, req: Request, payload: ReadonlyArray<Uint8Array>): boolean => {
        const fuaByFlush = (req.flags & CommandFlags.FUA) !== 0 && !features.fua
        if (fuaByFlush || (req.type !== Command.READ && req.type !== Command.WRITE)) return false
        try {
          const outOfBounds = checkBounds(req, ops.size())
          if (outOfBounds !== undefined) sendError(req, outOfBounds)
          else if (req.type === Command.READ) {
            const pieces = ops.read(req.offset, req.length)
            const length = pieces.reduce<number>((n, piece) => n + (typeof piece === "number" ? piece : piece.length), 0)
            if (length === req.length) sendRead(req, pieces)
            else sendError(req, wrongReadLength(req, length))
          } else {
            let at = req.offset
            for (const piece of payload) {
              ops.write(at, piece)
              at += piece.length
            }
            Metrics.bytesWritten.unsafeUpdate(req.length, [])
            sendOk(req)
          }
        } catch (defect) {
          runFork(Effect.logError(`driver defect in ${commandName(req.type)}`, defect))
          sendError(req, driverDefect)
        }
        return true
      }

      const dispatch = (req: Request, pieces: ReadonlyArray<Uint8Array>) => {
        if (sync !== undefined && dispatchSync(sync, req, pieces)) return
        const payload = pieces.length === 1 ? pieces[0]! : Buffer.concat(pieces)
        inFlight++
        payloadBytes += payload.length
        const bytes = payload.length
        runRequest(Effect.ensuring(handle(req, payload), Effect.sync(() => completed(bytes))))
      }

      const reject = (req: Request, error: ProtocolError) => {
        runFork(Effect.logDebug(`${commandName(req.type)} rejected: ${error.errno}: ${error.message}`))
        sendError(req, error)
      }

      /** Waits for `n` more bytes, or ends the session if the stream is closed. */
      const wantOrEnd = (n: number) => {
        const closed = reader.closedReason()
        if (closed === undefined) return reader.want(n)
        const between = state._tag === "Header" && reader.buffered() === 0
        end(Effect.fail(new ConnectionClosed({ reason: closed, missing: between ? 0 : n - reader.buffered() })))
      }

      const pump = (): void => {
        if (pumping || ending !== undefined) return
        pumping = true
        try {
          while (ending === undefined) {
            if (inFlight >= config.maxInFlight) {
              waitingForCapacity = true
              return
            }
            if (writer.isFull()) return writer.onceDrained(pump)
            if (state._tag === "Skip") {
              const n = reader.discard(state.left)
              if (n === 0) return wantOrEnd(Math.min(state.left, SKIP_CHUNK))
              state.left -= n
              if (state.left === 0) {
                reject(state.req, state.error)
                state = { _tag: "Header" }
              }
              continue
            }
            if (state._tag === "Payload") {
              const { req } = state
              if (payloadBytes + req.length > config.maxInFlightBytes && inFlight > 0) {
                waitingForCapacity = true
                return
              }
              const payload = reader.tryReadChunks(req.length)
              if (payload === undefined) return wantOrEnd(req.length)
              state = { _tag: "Header" }
              dispatch(req, payload)
              continue
            }
            const bytes = reader.tryRead(headerSize)
            if (bytes === undefined) return wantOrEnd(headerSize)
            const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
            const magic = view.getUint32(0)
            if (magic !== requestMagic) {
              return end(Effect.fail(new ProtocolViolation({ message: `bad request magic 0x${magic.toString(16)}` })))
            }
            const header = extended ? Wire.decodeExtendedRequestHeaderFast(view, 0) : Wire.decodeRequestHeaderFast(view, 0)
            const req: Request = {
              type: header.type,
              flags: header.flags,
              cookie: header.cookie,
              wireOffset: header.offset,
              offset: toNumber(header.offset),
              length: typeof header.length === "bigint" ? toNumber(header.length) : header.length
            }
            Metrics.countRequest(req.type)
            if (req.type === Command.DISC) return end(Effect.void)
            // Bytes that follow the header: a compact WRITE's data, or any payload announced by PAYLOAD_LEN.
            const payloadLength = extended
              ? ((req.flags & CommandFlags.PAYLOAD_LEN) !== 0 ? req.length : 0)
              : (req.type === Command.WRITE ? req.length : 0)
            const rejection = check(req)
            if (rejection !== undefined && payloadLength > 0) {
              if (payloadLength > Math.max(maxPayload, config.maxWriteDiscard)) {
                return end(Effect.fail(new ProtocolViolation({ message: `request payload of ${payloadLength} bytes` })))
              }
              state = { _tag: "Skip", req, left: payloadLength, error: rejection }
            } else if (rejection !== undefined) {
              reject(req, rejection)
            } else if (payloadLength > 0) {
              state = { _tag: "Payload", req }
            } else {
              dispatch(req, NO_PAYLOAD)
            }
          }
        } finally {
          pumping = false
          writer.flush()
        }
      }

      const stopReading = reader.onReadable(pump)
      // On shutdown, requests already received and arriving go on being answered ESHUTDOWN
      // until in-flight ones are done.
      onShutdown = () => {
        draining = true
        pump()
        if (inFlight === 0) end(Effect.void)
      }
      if (ctx.shutdown.isShuttingDown()) onShutdown()
      else pump()

      // Interrupted (the server closing after its grace period): take no more requests and
      // interrupt those in flight.
      return Effect.suspend(() => {
        stopReading()
        ending ??= Effect.void
        if (drainTimer !== undefined) clearTimeout(drainTimer)
        return FiberSet.clear(requests)
      })
    })
  }))

/** Clips extents to the request and to the largest extent length; REQ_ONE keeps the first only. */
const fitExtents = (extents: ReadonlyArray<Extent>, req: Request, maxExtent: number): Array<Extent> => {
  const out: Array<Extent> = []
  let covered = 0
  for (const extent of extents) {
    if (covered >= req.length || extent.length <= 0) break
    const length = Math.min(extent.length, req.length - covered, maxExtent)
    out.push({ length, flags: extent.flags })
    covered += length
    if (length < extent.length || (req.flags & CommandFlags.REQ_ONE) !== 0) break
  }
  return out
}
