/**
 * Running checked requests on a driver handle and answering them: one dispatch by
 * command, one completion per outcome, shared by the synchronous fast path (READ and
 * WRITE on handles with `sync`, answered without a fiber) and the Effect path.
 *
 * READ on a handle with `readInto` (or `sync.readInto`) reads into a buffer of the
 * connection's {@link ReadBuffers} pool, which takes it back once the reply is sent; with
 * `readNow` as well, it is first tried synchronously (answered without a fiber when the
 * driver has the bytes at hand). A WRITE on a handle with `sync` is streamed: its payload
 * is written piece by piece as it arrives ({@link Execution.stream}). A WRITE is otherwise
 * first offered to `writeNow` with its pieces as received. A WRITE payload that has to be
 * copied (borrowed, or in several pieces) goes into a pooled buffer too when the handle says
 * `writeCopies`.
 *
 * Bytes and errors are counted in the export's metrics. With tracing on, every request
 * takes the Effect path inside an `nbd.request` span (export, command, offset, length,
 * and the errno of a failure); with it off, no span is made.
 *
 * @since 0.2.0
 */
import * as Effect from "effect/Effect"
import type { DriverHandle, Extent } from "../Driver.ts"
import { type ProtocolError, protocolError } from "../Errors.ts"
import { Command, CommandFlags, commandName, Errno } from "../protocol/Constants.ts"
import type { Encoder } from "../protocol/Replies.ts"
import type { FrameWriter } from "../stream/FrameWriter.ts"
import { REQUEST_SPAN } from "../observability/Tracing.ts"
import type { ExportMetrics } from "./Metrics.ts"
import type { PayloadSink } from "./PayloadSink.ts"
import * as ReadBuffers from "./ReadBuffers.ts"
import type { Request } from "./Request.ts"
import { checkBounds } from "./RequestCheck.ts"

/** What execution needs from the session. */
export interface ExecutionContext {
  readonly handle: DriverHandle
  readonly encoder: Encoder
  readonly writer: FrameWriter
  readonly extended: boolean
  /** The selected meta contexts, each with the id the client was given, in reply order. */
  readonly metaContexts: ReadonlyArray<SelectedContext>
  /** Runs a short effect (a log line) from synchronous code. */
  readonly log: (effect: Effect.Effect<void>) => void
  /** Where bytes and errors are counted. */
  readonly metrics: ExportMetrics
  /** Whether each request is a span (the synchronous path is then not taken). */
  readonly tracing: boolean
  /** Whether payload pieces are borrowed (valid only while `run` runs): the effect path then copies them. */
  readonly borrowedPayload?: boolean | undefined
}

/** A selected meta context and where its extents come from. */
export interface SelectedContext {
  readonly id: number
  readonly blockStatus: (offset: number, length: number) => Effect.Effect<ReadonlyArray<Extent>, ProtocolError>
}

/** Runs requests that passed the checks. */
export interface Execution {
  /**
   * Runs a request: answered synchronously (the result is `undefined`), or the effect
   * that runs and answers it (it never fails).
   */
  readonly run: (req: Request, payload: ReadonlyArray<Uint8Array>) => Effect.Effect<void> | undefined
  /** Answers a request that failed its checks with an error (in a span when tracing). */
  readonly reject: (req: Request, error: ProtocolError) => void
  /**
   * Where a WRITE's payload goes piece by piece as it arrives, when the handle writes
   * synchronously (see {@link streamWrite}); `undefined` when it takes the whole payload.
   */
  readonly stream: (req: Request) => PayloadSink | undefined
}

/** Largest extent of a BLOCK_STATUS chunk, aligned to 512 bytes: 32-bit, or 64-bit with extended headers. */
const MAX_EXTENT = 0xffffffff - (0xffffffff % 512)
const MAX_EXTENT_EXT = Number.MAX_SAFE_INTEGER - (Number.MAX_SAFE_INTEGER % 512)

/** The answer to a driver defect (logged as well). */
const driverDefect = protocolError("EIO", "internal error in the driver")

const fuaOf = (req: Request) => (req.flags & CommandFlags.FUA) !== 0

/** A borrowed payload as one buffer of its own. */
const owned = (payload: ReadonlyArray<Uint8Array>): ReadonlyArray<Uint8Array> =>
  payload.length === 1 && payload[0]!.length === 0 ? payload : [Buffer.concat(payload)]

/** Clips extents to the request and to the largest extent length; REQ_ONE keeps the first only. */
export const fitExtents = (extents: ReadonlyArray<Extent>, req: Request, maxExtent: number): Array<Extent> => {
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

/** Execution of requests on one session's handle. */
export const make = (ctx: ExecutionContext): Execution => {
  const { encoder, handle, metrics, writer } = ctx
  const caps = handle.capabilities
  const maxExtent = ctx.extended ? MAX_EXTENT_EXT : MAX_EXTENT

  // ---- completions, shared by both paths ----------------------------------------------
  const fail = (req: Request, error: ProtocolError) => {
    metrics.error(req.type, error.errno)
    const at = error.offset
    const inRange = at !== undefined && at >= req.offset && at < req.offset + req.length && req.type !== Command.RESIZE
    writer.write(encoder.error(req, Errno[error.errno], error.message, inRange ? at : undefined))
  }
  const ok = (req: Request) => writer.write(encoder.ok(req))
  const readDone = (req: Request, pieces: ReadonlyArray<Uint8Array | number>) => {
    const length = pieces.reduce<number>((n, piece) => n + (typeof piece === "number" ? piece : piece.length), 0)
    if (length !== req.length) return fail(req, protocolError("EIO", `driver returned ${length} bytes for a read of ${req.length}`))
    metrics.read(req.length)
    writer.write(encoder.read(req, req.length, pieces, (req.flags & CommandFlags.DF) !== 0))
  }
  /** Sends a READ answered in a pooled buffer, which goes back to the pool once written. */
  const readIntoDone = (req: Request, target: Uint8Array) => {
    metrics.read(req.length)
    writer.write(encoder.read(req, req.length, [target], (req.flags & CommandFlags.DF) !== 0), () => buffers.give(target))
  }
  const written = (req: Request) => {
    metrics.written(req.length)
    ok(req)
  }
  const statusDone = (req: Request, answers: ReadonlyArray<ReadonlyArray<Extent>>) => {
    const fitted = answers.map((extents) => fitExtents(extents, req, maxExtent))
    if (fitted.some((extents) => extents.length === 0)) return fail(req, protocolError("EIO", "driver returned no extent"))
    writer.write(encoder.blockStatus(req, ctx.metaContexts.map((context, i) => ({ id: context.id, extents: fitted[i]! }))))
  }
  /** The debug line of a request answered with an error. */
  const logFailure = (req: Request, error: ProtocolError) =>
    Effect.logDebug(`${commandName(req.type)} failed: ${error.errno}: ${error.message}`)
  /** Answers a request with the error its driver gave at once, logged as the Effect path logs it. */
  const failNow = (req: Request, error: ProtocolError) => {
    ctx.log(logFailure(req, error))
    fail(req, error)
  }
  const defect = (req: Request, cause: unknown) => {
    ctx.log(Effect.logError(`driver defect in ${commandName(req.type)}`, cause))
    fail(req, driverDefect)
  }

  // ---- the synchronous path -----------------------------------------------------------
  const sync = ctx.tracing ? undefined : handle.sync
  const buffers = ReadBuffers.make()
  /**
   * Reads into a pooled buffer synchronously and sends the reply; `false` (nothing sent) when
   * `into` says it has not the bytes at hand. The buffer goes back at once unless sent, and a
   * throw of the driver is rethrown.
   */
  const readIntoNow = (req: Request, into: (offset: number, target: Uint8Array) => boolean | void): boolean => {
    const target = buffers.take(req.length)
    let done: boolean
    try {
      done = into(req.offset, target) !== false
    } catch (cause) {
      buffers.give(target)
      throw cause
    }
    if (!done) {
      buffers.give(target)
      return false
    }
    readIntoDone(req, target)
    return true
  }
  /** READ and WRITE on a handle with synchronous operations (FUA only when native). */
  const runSync = (req: Request, payload: ReadonlyArray<Uint8Array>): boolean => {
    if (sync === undefined || (req.type !== Command.READ && req.type !== Command.WRITE)) return false
    if (req.type === Command.WRITE && fuaOf(req) && !caps.fua) return false
    try {
      const outOfBounds = checkBounds(req, sync.size())
      if (outOfBounds !== undefined) fail(req, outOfBounds)
      else if (req.type === Command.READ) {
        if (sync.readInto !== undefined && req.length > 0) readIntoNow(req, sync.readInto)
        else readDone(req, sync.read(req.offset, req.length))
      }
      else {
        let at = req.offset
        for (const piece of payload) {
          sync.write(at, piece)
          at += piece.length
        }
        written(req)
      }
    } catch (cause) {
      defect(req, cause)
    }
    return true
  }

  /**
   * A WRITE written through `sync` as its pieces arrive, answered once the last one is
   * taken: the same writes as {@link runSync}, without first gathering a payload that spans
   * several reads into one buffer. A piece that would land past the end (the export shrank
   * meanwhile) or a throw of the driver stops the writing; the request is then answered
   * with that error once its payload is consumed.
   */
  const streamWrite = (req: Request): PayloadSink | undefined => {
    if (sync === undefined || req.type !== Command.WRITE || (fuaOf(req) && !caps.fua)) return undefined
    if (checkBounds(req, sync.size()) !== undefined) return undefined // answered by runSync
    let at = req.offset
    /** How the request is answered once a piece failed (the rest is taken and dropped). */
    let failed: (() => void) | undefined
    return {
      take: (piece) => {
        if (failed !== undefined) return
        try {
          const outOfBounds = at + piece.length > sync.size() ? checkBounds(req, sync.size()) : undefined
          if (outOfBounds !== undefined) failed = () => failNow(req, outOfBounds)
          else sync.write(at, piece)
        } catch (cause) {
          failed = () => defect(req, cause)
        }
        at += piece.length
      },
      end: () => (failed === undefined ? written(req) : failed())
    }
  }

  const readNow = ctx.tracing || handle.readInto === undefined ? undefined : handle.readNow
  /** READ answered at once if the driver has the bytes at hand (false: take the Effect path). */
  const runNow = (req: Request): boolean => {
    if (readNow === undefined || req.type !== Command.READ || req.length === 0) return false
    if (checkBounds(req, readNow.size()) !== undefined) return false // answered by the Effect path
    try {
      return readIntoNow(req, readNow.into)
    } catch (cause) {
      defect(req, cause)
      return true
    }
  }

  const writeNow = ctx.tracing ? undefined : handle.writeNow
  /** WRITE (not FUA) done at once if the driver can without waiting (false: take the Effect path). */
  const runWriteNow = (req: Request, payload: ReadonlyArray<Uint8Array>): boolean => {
    if (writeNow === undefined || req.type !== Command.WRITE || req.length === 0 || fuaOf(req)) return false
    if (checkBounds(req, writeNow.size()) !== undefined) return false // answered by the Effect path
    let outcome: boolean | ProtocolError
    try {
      outcome = writeNow.write(req.offset, payload)
    } catch (cause) {
      defect(req, cause)
      return true
    }
    if (outcome === false) return false
    if (outcome === true) written(req)
    else failNow(req, outcome)
    return true
  }

  // ---- the Effect path ----------------------------------------------------------------
  /** FUA on a handle without native FUA: follow the write with a flush. */
  const afterWrite = (req: Request) => (fuaOf(req) && !caps.fua && caps.flush ? handle.flush : Effect.void)
  const thenOk = (req: Request) => Effect.sync(() => ok(req))
  /**
   * READ into a pooled buffer. The buffer goes back to the pool when the reply is sent or
   * the driver failed; if the request is interrupted (the driver may still be writing
   * into it) it is dropped.
   */
  const readIntoPooled = (req: Request, readInto: NonNullable<DriverHandle["readInto"]>) =>
    Effect.suspend(() => {
      const target = buffers.take(req.length)
      return readInto(req.offset, target).pipe(
        Effect.tapError(() => Effect.sync(() => buffers.give(target))),
        Effect.map(() => readIntoDone(req, target))
      )
    })

  const dispatch = (req: Request, payload: ReadonlyArray<Uint8Array>, pooled: boolean): Effect.Effect<void, ProtocolError> => {
    const fua = fuaOf(req)
    switch (req.type) {
      case Command.READ:
        return handle.readInto !== undefined && req.length > 0
          ? readIntoPooled(req, handle.readInto)
          : Effect.map(handle.read(req.offset, req.length), (data) => readDone(req, [data]))
      case Command.WRITE: {
        const data = payload.length === 1 ? payload[0]! : Buffer.concat(payload)
        const write = handle.write(req.offset, data, { fua })
        // A pooled copy goes back once the driver is done with it (dropped if interrupted).
        const release = Effect.sync(() => buffers.give(data))
        return (pooled ? Effect.tapBoth(write, { onFailure: () => release, onSuccess: () => release }) : write).pipe(
          Effect.zipRight(afterWrite(req)),
          Effect.map(() => written(req))
        )
      }
      case Command.FLUSH:
        return Effect.zipRight(handle.flush, thenOk(req))
      case Command.TRIM:
        return handle.trim(req.offset, req.length, { fua }).pipe(Effect.zipRight(afterWrite(req)), Effect.zipRight(thenOk(req)))
      case Command.WRITE_ZEROES: {
        const noHole = (req.flags & CommandFlags.NO_HOLE) !== 0
        const fastZero = (req.flags & CommandFlags.FAST_ZERO) !== 0
        return handle.writeZeroes(req.offset, req.length, { fua, noHole, fastZero }).pipe(
          Effect.zipRight(afterWrite(req)),
          Effect.zipRight(thenOk(req))
        )
      }
      case Command.CACHE:
        // Some clients send CACHE unadvertised: a successful no-op then.
        return caps.cache ? Effect.zipRight(handle.cache(req.offset, req.length), thenOk(req)) : thenOk(req)
      case Command.BLOCK_STATUS:
        return Effect.map(
          Effect.forEach(ctx.metaContexts, (context) => context.blockStatus(req.offset, req.length)),
          (answers) => statusDone(req, answers)
        )
      case Command.RESIZE:
        return Effect.zipRight(handle.resize(req.offset), thenOk(req))
      default:
        return Effect.fail(protocolError("EINVAL", `unknown command ${req.type}`))
    }
  }

  const execute = (req: Request, payload: ReadonlyArray<Uint8Array>, pooled = false): Effect.Effect<void, ProtocolError> =>
    handle.size.pipe(
      Effect.flatMap((size) => {
        const outOfBounds = checkBounds(req, size)
        return outOfBounds === undefined ? dispatch(req, payload, pooled) : Effect.fail(outOfBounds)
      }),
      Effect.catchAllDefect((cause) =>
        Effect.zipRight(Effect.logError(`driver defect in ${commandName(req.type)}`, cause), Effect.fail(driverDefect))
      )
    )
  /** The request's span, failed with its errno when the request failed. */
  const traced = (req: Request, effect: Effect.Effect<void, ProtocolError>): Effect.Effect<void, ProtocolError> =>
    effect.pipe(
      Effect.tapError((error) => Effect.annotateCurrentSpan("nbd.errno", error.errno)),
      Effect.withSpan(REQUEST_SPAN, {
        kind: "server",
        captureStackTrace: false,
        attributes: {
          "nbd.export": metrics.name,
          "nbd.command": commandName(req.type),
          "nbd.offset": req.offset,
          "nbd.length": req.length
        }
      })
    )
  const answered = (req: Request, effect: Effect.Effect<void, ProtocolError>): Effect.Effect<void> =>
    Effect.catchAll(ctx.tracing ? traced(req, effect) : effect, (error) =>
      Effect.zipRight(logFailure(req, error), Effect.sync(() => fail(req, error))))

  /** A WRITE payload copied into one pooled buffer, when it must be copied and the handle allows it. */
  const pooledPayload = (req: Request, payload: ReadonlyArray<Uint8Array>): Uint8Array | undefined => {
    if (req.type !== Command.WRITE || handle.writeCopies !== true || req.length === 0) return undefined
    if (ctx.borrowedPayload !== true && payload.length === 1) return undefined // already one buffer of its own
    const data = buffers.take(req.length)
    let at = 0
    for (const piece of payload) {
      data.set(piece, at)
      at += piece.length
    }
    return data
  }

  return {
    run: (req, payload) => {
      if (runSync(req, payload) || runNow(req) || runWriteNow(req, payload)) return undefined
      const pooled = pooledPayload(req, payload)
      if (pooled !== undefined) return answered(req, execute(req, [pooled], true))
      return answered(req, execute(req, ctx.borrowedPayload === true ? owned(payload) : payload))
    },
    reject: (req, error) => {
      ctx.log(Effect.logDebug(`${commandName(req.type)} rejected: ${error.errno}: ${error.message}`))
      if (ctx.tracing) ctx.log(Effect.ignore(traced(req, Effect.fail(error))))
      fail(req, error)
    },
    stream: streamWrite
  }
}
