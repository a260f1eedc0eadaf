/**
 * The transmission phase: read requests, check them, run them on the driver handle
 * concurrently, and send replies as they complete.
 *
 * Requests are parsed as their bytes arrive, while earlier ones run (pipelining),
 * bounded by `maxInFlight` requests and `maxInFlightBytes` of write payload; parsing
 * stops while too many reply bytes are queued. A rejected request is answered with the
 * errno the spec prescribes and the connection stays usable; a broken frame (bad magic,
 * an absurd payload) closes this connection only. On NBD_CMD_DISC, end of stream or
 * shutdown, in-flight requests finish (within `drainTimeoutMillis`, measured by Effect's
 * clock, after which they are interrupted) before the session ends; when the session is
 * interrupted, they are interrupted. A session ended by the server's shutdown flushes
 * its handle.
 *
 * The pieces: {@link RequestParser} (bytes to requests), {@link RequestCheck} (errors
 * before the driver), {@link Execution} (driver calls and replies); this module is the
 * pipeline that drives them.
 *
 * Every request is counted in the export's metrics as it is parsed; executed ones are
 * timed (from reading the request to queueing its reply) and, while they suspend, counted
 * in flight.
 *
 * @since 0.1.0
 */
import * as Clock from "effect/Clock"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as FiberSet from "effect/FiberSet"
import * as Runtime from "effect/Runtime"
import { ProtocolViolation } from "../Errors.ts"
import { BASE_ALLOCATION } from "../protocol/Constants.ts"
import * as Replies from "../protocol/Replies.ts"
import { ConnectionClosed, type FrameReader } from "../stream/FrameReader.ts"
import type { FrameWriter } from "../stream/FrameWriter.ts"
import * as Execution from "./Execution.ts"
import type { ExportMetrics } from "./Metrics.ts"
import type { Negotiated } from "./Negotiation.ts"
import type { Request } from "./Request.ts"
import * as RequestCheck from "./RequestCheck.ts"
import * as RequestParser from "./RequestParser.ts"
import type { ServerConfig } from "./ServerConfig.ts"
import { SessionTimeout } from "./SessionTimeout.ts"
import type { Shutdown } from "./Shutdown.ts"

/** What the transmission phase needs. */
export interface TransmissionContext {
  readonly reader: FrameReader
  readonly writer: FrameWriter
  readonly config: ServerConfig
  readonly negotiated: Negotiated
  /** Once triggered, new requests get ESHUTDOWN and the session ends when in-flight requests are done. */
  readonly shutdown: Shutdown
  /** The metrics of the session's export. */
  readonly metrics: ExportMetrics
  /** Whether each request is a span (see {@link Execution}). */
  readonly tracing: boolean
}

type Ending = Effect.Effect<void, ConnectionClosed | ProtocolViolation | SessionTimeout>

/** Runs the transmission phase until the client disconnects. */
export const serve = (
  ctx: TransmissionContext
): Effect.Effect<void, ConnectionClosed | ProtocolViolation | SessionTimeout> =>
  Effect.scoped(Effect.gen(function*() {
    const { config, negotiated, writer } = ctx
    const handle = negotiated.handle
    const caps = handle.capabilities
    const extended = negotiated.extendedHeaders
    const structured = negotiated.structuredReplies || extended

    // Requests that suspend run as fibers owned by the session: what is left of them when
    // it ends is interrupted. They are started synchronously from the parser.
    const requests = yield* FiberSet.make<void, never>()
    const runRequest = yield* FiberSet.runtime(requests)<never>()
    const runFork = Runtime.runFork(yield* Effect.runtime<never>())
    const execution = Execution.make({
      handle,
      encoder: Replies.encoder({ structured, extended }),
      writer,
      extended,
      metaContexts: selectedContexts(negotiated),
      log: (effect) => void runFork(effect),
      metrics: ctx.metrics,
      tracing: ctx.tracing,
      borrowedPayload: ctx.reader.borrowed
    })
    const parser = RequestParser.make({
      extended,
      maxDiscard: Math.max(caps.blockSize.maximum, config.maxWriteDiscard),
      stream: execution.stream,
      check: (req) =>
        RequestCheck.check(req, {
          capabilities: caps,
          structured,
          extended,
          metaContexts: negotiated.metaContexts.length > 0,
          shuttingDown: ctx.shutdown.isShuttingDown()
        })
    })
    // Shutdown is watched by a fiber of this scope (interrupted when the session ends).
    let onShutdown = () => {}
    yield* Effect.forkScoped(Effect.zipRight(ctx.shutdown.await, Effect.sync(() => onShutdown())))

    let current: Pipeline | undefined
    if (config.idleTimeoutMillis > 0) yield* Effect.forkScoped(watchIdle(config.idleTimeoutMillis, () => current))
    yield* Effect.async<void, ConnectionClosed | ProtocolViolation | SessionTimeout>((resume) => {
      const pipeline = makePipeline(ctx, parser, execution, { runRequest, runFork, interruptRequests: FiberSet.clear(requests) }, resume)
      current = pipeline
      onShutdown = pipeline.shutdown
      if (ctx.shutdown.isShuttingDown()) pipeline.shutdown()
      else pipeline.pump()
      // Interrupted (the server closing after its grace period): take no more requests and
      // interrupt those in flight.
      return Effect.suspend(() => {
        pipeline.stop()
        return FiberSet.clear(requests)
      })
    })
    if (ctx.shutdown.isShuttingDown() && caps.flush && !caps.readOnly) {
      yield* handle.flush.pipe(
        Effect.catchAll((e) => Effect.logError(`flushing at shutdown failed: ${e.message}`))
      )
    }
  }))

/** The selected meta contexts with their sources on the session's handle (a vanished one is dropped). */
const selectedContexts = (negotiated: Negotiated): Array<Execution.SelectedContext> => {
  const handle = negotiated.handle
  return negotiated.metaContexts.flatMap(({ id, name }) => {
    if (name === BASE_ALLOCATION) {
      // Without real allocation, everything is data.
      const blockStatus = handle.capabilities.blockStatus
        ? handle.blockStatus
        : (_: number, length: number) => Effect.succeed([{ length, flags: 0 }])
      return [{ id, blockStatus }]
    }
    const source = handle.contexts?.find((context) => context.name === name)
    return source === undefined ? [] : [{ id, blockStatus: source.blockStatus }]
  })
}

/** The running pipeline of a session: parsing, in-flight accounting and the end of the session. */
interface Pipeline {
  /** Parses and starts what the buffered bytes and the budgets allow. */
  readonly pump: () => void
  /** Shutdown began: requests are answered ESHUTDOWN, and the session ends when none is in flight. */
  readonly shutdown: () => void
  /** Takes no more requests (the session is being interrupted). */
  readonly stop: () => void
  /** Requests parsed or completed so far (it moves while the client is active). */
  readonly activity: () => number
  /** Requests in flight now. */
  readonly inFlight: () => number
  /** Ends the session for idling. */
  readonly expire: (timeout: SessionTimeout) => void
}

/** Ends the session once no request was parsed or completed, and none was in flight, for `millis`. */
const watchIdle = (millis: number, pipeline: () => Pipeline | undefined): Effect.Effect<void> =>
  Effect.gen(function*() {
    let seen = -1
    let since = yield* Clock.currentTimeMillis
    while (true) {
      yield* Effect.sleep(Math.max(10, millis / 4))
      const p = pipeline()
      const now = yield* Clock.currentTimeMillis
      if (p === undefined || p.activity() !== seen || p.inFlight() > 0) {
        seen = p?.activity() ?? -1
        since = now
      } else if (now - since >= millis) {
        return p.expire(new SessionTimeout({ phase: "idle", millis }))
      }
    }
  })

/** How the pipeline starts fibers. */
interface Fibers {
  /** Starts a request's fiber, owned by the session. */
  readonly runRequest: (effect: Effect.Effect<void>) => Fiber.RuntimeFiber<void>
  /** Starts a short-lived fiber (a log line, the drain timer). */
  readonly runFork: <A, E>(effect: Effect.Effect<A, E>) => Fiber.RuntimeFiber<A, E>
  /** Interrupts every request in flight. */
  readonly interruptRequests: Effect.Effect<void>
}

const makePipeline = (
  ctx: TransmissionContext,
  parser: RequestParser.Parser,
  execution: Execution.Execution,
  fibers: Fibers,
  resume: (ending: Ending) => void
): Pipeline => {
  const { config, metrics, reader, writer } = ctx
  const { runFork, runRequest } = fibers
  let inFlight = 0
  let activity = 0
  let payloadBytes = 0
  let pumping = false
  let waitingForCapacity = false
  /** Set when no more requests are taken: the session ends once in-flight ones are done. */
  let ending: Ending | undefined
  let drainTimer: Fiber.RuntimeFiber<void> | undefined
  let resumed = false
  let draining = false

  const stopTimer = () => {
    if (drainTimer !== undefined) runFork(Fiber.interrupt(drainTimer))
    drainTimer = undefined
  }
  /** Requests that do not finish in time are interrupted (they answer nothing). */
  const startTimer = () => {
    if (drainTimer !== undefined || inFlight === 0) return
    drainTimer = runFork(Effect.sleep(config.drainTimeoutMillis).pipe(
      Effect.zipRight(Effect.suspend(() =>
        Effect.logWarning(`interrupting ${inFlight} in-flight request(s) that did not finish in time`)
      )),
      Effect.zipRight(fibers.interruptRequests)
    ))
  }

  const finishIfDrained = () => {
    if (ending === undefined || inFlight > 0 || resumed) return
    resumed = true
    stopTimer()
    stopReading()
    resume(ending)
  }
  const end = (result: Ending) => {
    if (ending !== undefined) return
    ending = result
    startTimer()
    finishIfDrained()
  }
  const completed = (req: Request, bytes: number, startedAt: number) => {
    metrics.latency(req.type, (performance.now() - startedAt) / 1000)
    metrics.inFlight(-1)
    inFlight--
    activity++
    payloadBytes -= bytes
    // Parse what waited for capacity first: during shutdown it is answered ESHUTDOWN.
    if (waitingForCapacity) {
      waitingForCapacity = false
      pump()
    }
    if (draining && inFlight === 0) end(Effect.void)
    finishIfDrained()
  }

  /**
   * The clock of latencies, read once per request: when `pump` starts, then after each
   * request started or answered, which is also when the next one's parsing starts.
   */
  let clock = 0
  /** Times a request answered synchronously since `startedAt`, and moves the clock on. */
  const answeredNow = (req: Request, startedAt: number) => {
    clock = performance.now()
    metrics.latency(req.type, (clock - startedAt) / 1000)
  }
  const start = (req: Request, payload: ReadonlyArray<Uint8Array>) => {
    const startedAt = clock
    const effect = execution.run(req, payload)
    if (effect === undefined) return answeredNow(req, startedAt)
    const bytes = payload.reduce((n, piece) => n + piece.length, 0)
    inFlight++
    metrics.inFlight(1)
    payloadBytes += bytes
    // Observed rather than wrapped in a finalizer: it saves the finalizer's own effects per request.
    // An observer runs inside the fiber runtime's exit, so nothing may escape it.
    runRequest(effect).addObserver(() => {
      try {
        completed(req, bytes, startedAt)
      } catch (cause) {
        runFork(Effect.logError("ending a request failed", cause))
      }
    })
    clock = performance.now()
  }

  /** Hands a streamed payload's pieces on; the last one answers the request (timed as a synchronous answer). */
  const streamPieces = (step: Extract<RequestParser.Step, { _tag: "Pieces" }>) => {
    activity++ // a payload arriving slowly is activity too
    for (const piece of step.pieces) step.sink.take(piece)
    if (!step.last) return
    metrics.request(step.req.type)
    const startedAt = clock
    step.sink.end()
    answeredNow(step.req, startedAt)
  }

  /** Waits for `n` more bytes, or ends the session if the stream is closed. */
  const wantOrEnd = (n: number) => {
    const closed = reader.closedReason()
    if (closed === undefined) return reader.want(n)
    const between = parser.state._tag === "Header" && reader.buffered() === 0
    end(Effect.fail(new ConnectionClosed({ ...closed, missing: between ? 0 : n - reader.buffered() })))
  }

  /** Whether the budgets let the parser go on. */
  const hasCapacity = (): boolean => {
    if (inFlight >= config.maxInFlight) return false
    const next = RequestParser.pendingPayload(parser)
    return next === 0 || inFlight === 0 || payloadBytes + next <= config.maxInFlightBytes
  }

  const pump = (): void => {
    if (pumping || ending !== undefined) return
    pumping = true
    clock = performance.now()
    try {
      while (ending === undefined) {
        if (!hasCapacity()) {
          waitingForCapacity = true
          return
        }
        if (writer.isFull()) return writer.onceDrained(pump)
        const step = RequestParser.step(parser, reader)
        switch (step._tag) {
          case "NeedBytes":
            return wantOrEnd(step.bytes)
          case "Continue":
            continue
          case "Run":
            activity++
            metrics.request(step.req.type)
            start(step.req, step.payload)
            continue
          case "Pieces":
            streamPieces(step)
            continue
          case "Reject":
            activity++
            metrics.request(step.req.type)
            execution.reject(step.req, step.error)
            continue
          case "Disconnect":
            return end(Effect.void)
          case "Violation":
            return end(Effect.fail(new ProtocolViolation({ message: step.message })))
        }
      }
    } finally {
      pumping = false
      writer.flush()
    }
  }

  const stopReading = reader.onReadable(pump)
  return {
    pump,
    shutdown: () => {
      draining = true
      pump()
      if (inFlight === 0) end(Effect.void)
      else startTimer()
    },
    stop: () => {
      stopReading()
      ending ??= Effect.void
      stopTimer()
    },
    activity: () => activity,
    inFlight: () => inFlight,
    expire: (timeout) => end(Effect.fail(timeout))
  }
}
