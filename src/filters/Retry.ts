/**
 * The `retry` filter: when a request fails with an errno worth retrying, closes the
 * driver below, waits, opens it again and retries the request (as nbdkit's retry filter),
 * so that a backend that drops its connection or hiccups recovers without the client
 * seeing an error.
 *
 * Each connection opens the driver below in its own child scope; on a retryable failure
 * that scope is closed (finalizers of the old handle run), the filter waits, and opens a
 * new handle in a new child scope. A failed reopen counts as a failed attempt. When
 * several requests of a connection fail at once, one of them reopens and the others
 * retry on the new handle. Requests still running on the old handle when it is closed
 * may fail and are retried in turn. Capabilities are those of the first handle.
 * When the retries are used up, the request fails with the last error (a failed reopen
 * is reported as EIO).
 *
 * Only EIO and ENOMEM are retried: EPERM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP and
 * ESHUTDOWN fail at once, since another attempt would give the same answer (or the
 * server is stopping). FLUSH is not retried by default: a flush on a new handle does not
 * cover writes made on the old one, so its failure must reach the client.
 *
 * Parameters:
 * - `retries=N` (default 5): attempts after the first
 * - `delay=DURATION` (default 2s): wait before the first retry
 * - `exponential=true|false` (default true): the wait doubles after each retry (2s, 4s, 8s ...)
 * - `ops=LIST` (default read,write,zero,trim,cache,extents): operations that are retried
 *
 * @since 0.2.0
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as ExecutionStrategy from "effect/ExecutionStrategy"
import * as Exit from "effect/Exit"
import type * as Layer from "effect/Layer"
import * as Scope from "effect/Scope"
import type * as Driver from "../Driver.ts"
import { filterLayer } from "../Driver.ts"
import { type ErrnoName, type ProtocolError, protocolError } from "../Errors.ts"
import * as Params from "../Params.ts"
import type { FilterPlugin } from "../Plugin.ts"
import * as Operations from "./Operations.ts"

/** Options of the retry filter (see the module comment for the defaults). */
export interface RetryOptions {
  /** Attempts after the first (default 5). */
  readonly retries?: number | undefined
  /** Wait before the first retry (default 2 seconds); a number is milliseconds. */
  readonly delay?: Duration.DurationInput | undefined
  /** The wait doubles after each retry (default true). */
  readonly exponential?: boolean | undefined
  /** Operations that are retried (default all but flush). */
  readonly ops?: ReadonlyArray<Operations.Operation> | undefined
}

/** Errnos that fail at once: another attempt would give the same answer. */
export const notRetried: ReadonlySet<ErrnoName> = new Set([
  "EPERM",
  "EINVAL",
  "ENOSPC",
  "EOVERFLOW",
  "ENOTSUP",
  "ESHUTDOWN"
])

/** Operations retried by default: all but `flush`. */
export const defaultOps: ReadonlyArray<Operations.Operation> = Operations.all.filter((op) => op !== "flush")

/** A handle below and the child scope it lives in; `generation` counts the opens. */
interface Opened {
  readonly handle: Driver.DriverHandle
  readonly scope: Scope.CloseableScope
  readonly generation: number
}

/** A failed attempt, with the generation of the handle it used. */
interface Failed {
  readonly error: ProtocolError
  readonly generation: number
}

/** One connection: the current handle below and the reopening, serialized by a lock. */
const connection = (below: Driver.NbdDriverShape, request: Driver.OpenRequest) =>
  Effect.gen(function*() {
    const parent = yield* Effect.scope
    const lock = yield* Effect.makeSemaphore(1)
    let generation = 0
    let current: Opened | undefined

    const openBelow = Effect.gen(function*() {
      const scope = yield* Scope.fork(parent, ExecutionStrategy.sequential)
      const handle = yield* below.open(request).pipe(
        Scope.extend(scope),
        Effect.onError((cause) => Scope.close(scope, Exit.failCause(cause)))
      )
      current = { handle, scope, generation: ++generation }
      return current
    })

    /** Closes the handle of generation `stale` (unless another request already replaced it), waits, opens again. */
    const reopen = (stale: number, wait: Duration.Duration): Effect.Effect<Opened, Failed> =>
      lock.withPermits(1)(Effect.suspend(() => {
        if (current !== undefined && current.generation !== stale) return Effect.succeed(current)
        return Effect.gen(function*() {
          const old = current
          current = undefined
          if (old !== undefined) yield* Scope.close(old.scope, Exit.void)
          yield* Effect.sleep(wait)
          return yield* Effect.mapError(openBelow, (e) => ({
            error: protocolError("EIO", `reopening the export failed: ${e.message}`),
            generation
          }))
        })
      }))

    const first = yield* openBelow
    return { first: first.handle, current: () => current, reopen }
  })

/** Wait before retry `n` (1 is the first retry). */
const backoff = (delay: Duration.Duration, exponential: boolean, n: number): Duration.Duration =>
  exponential ? Duration.times(delay, 2 ** (n - 1)) : delay

/** Wraps a driver so that failed requests are retried on a reopened handle. */
export const apply = (below: Driver.NbdDriverShape, options: RetryOptions = {}): Driver.NbdDriverShape => {
  const retries = options.retries ?? 5
  const delay = Duration.decode(options.delay ?? Duration.seconds(2))
  const exponential = options.exponential ?? true
  const retried = new Set(options.ops ?? defaultOps)
  return {
    name: `retry+${below.name}`,
    canonicalName: below.canonicalName,
    description: below.description,
    open: (request) =>
      Effect.gen(function*() {
        const conn = yield* connection(below, request)
        const run = <A>(
          limit: number,
          call: (handle: Driver.DriverHandle) => Effect.Effect<A, ProtocolError>
        ): Effect.Effect<A, ProtocolError> => {
          const attempt = (n: number, stale: number): Effect.Effect<A, ProtocolError> =>
            Effect.suspend(() => {
              if (n > 0) return conn.reopen(stale, backoff(delay, exponential, n))
              // A first attempt opens again at once if an earlier request's reopen failed.
              const now = conn.current()
              return now !== undefined ? Effect.succeed(now) : conn.reopen(stale, Duration.zero)
            }).pipe(
              Effect.flatMap((opened) =>
                Effect.mapError(call(opened.handle), (error): Failed => ({ error, generation: opened.generation }))
              ),
              Effect.catchAll(({ error, generation }) =>
                n < limit && !notRetried.has(error.errno)
                  ? Effect.zipRight(
                    Effect.logDebug(`retry: attempt ${n + 1} of ${limit} after ${error.errno}: ${error.message}`),
                    attempt(n + 1, generation)
                  )
                  : Effect.fail(error)
              )
            )
          return attempt(0, -1)
        }
        const runner: Operations.Runner = (op, call) => run(retried.has(op) ? retries : 0, call)
        const handle: Driver.DriverHandle = {
          ...Operations.wrapAll(runner),
          readInto: Operations.readIntoVia(conn.first, runner),
          // Every attempt hands the data to an opening of the same driver, and none keeps it.
          writeCopies: conn.first.writeCopies,
          capabilities: conn.first.capabilities,
          size: run(0, (h) => h.size),
          resize: (size) => run(0, (h) => h.resize(size)),
          sync: undefined
        }
        return handle
      })
  }
}

/** The filter, for `Driver.stack`. */
export const make = (options: RetryOptions = {}): Driver.Filter => (below) => Effect.succeed(apply(below, options))

/** The filter as a layer over the `NbdDriver` in context. */
export const layer = (options: RetryOptions = {}): Layer.Layer<Driver.NbdDriver, never, Driver.NbdDriver> =>
  filterLayer(make(options))

const parameters: ReadonlyArray<Params.ParameterDoc> = [
  { name: "retries", default: "5", description: "attempts after the first" },
  { name: "delay", default: "2s", description: "wait before the first retry (DURATION: 500ms, 2s)" },
  { name: "exponential", default: "true", description: "the wait doubles after each retry" },
  { name: "ops", default: defaultOps.join(","), description: "operations that are retried (flush is not by default)" }
]

/** The filter by name, for the command line (`--filter retry:retries=3,delay=1s`). */
export const plugin: FilterPlugin = {
  name: "retry",
  summary: "retries failed requests on a reopened handle, with growing waits",
  parameters,
  make: (pairs) =>
    Params.decode("retry", pairs, parameters, (reader) =>
      make({
        retries: reader.integer("retries", 5, { min: 0 }),
        delay: reader.duration("delay", Duration.seconds(2)),
        exponential: reader.boolean("exponential", true),
        ops: Operations.parse("retry", reader.list("ops"), defaultOps)
      }))
}
