/**
 * The `error` filter: injects failures into chosen operations, to test how clients and
 * stacks cope with a failing disk (as nbdkit's error filter). A failed request fails with
 * `ProtocolError(errno, "injected error")` and never reaches the driver below.
 *
 * Each matching request fails with probability `rate`. The decisions come from one
 * random sequence per stack (shared by its connections): with `seed`, the same requests
 * in the same order fail the same way on every run; a draw is taken only for requests
 * that match `ops` while the filter is armed, and not at all when `rate` is 0 or 1.
 * With `file`, the filter is armed only while that file exists (checked per request),
 * so a test can start and stop the failures from outside.
 *
 * Operations not listed in `ops` pass through untouched; when `ops` leaves out both
 * `read` and `write`, the synchronous fast path of the driver below survives.
 *
 * Parameters:
 * - `error=ERRNO` (default EIO): errno of the injected failures (EPERM, EIO, ENOMEM,
 *   EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN)
 * - `rate=0..1` (default 1): probability that a matching request fails
 * - `ops=LIST` (default all: read,write,zero,trim,flush,cache,extents): operations that may fail
 * - `seed=N` (default: a random seed): seed of the failure decisions
 * - `file=PATH` (default none: always armed): inject only while this file exists
 *
 * @since 0.2.0
 */
import * as Effect from "effect/Effect"
import type * as Layer from "effect/Layer"
import * as Random from "effect/Random"
import * as fs from "node:fs"
import * as Driver from "../Driver.ts"
import { ErrnoName, protocolError } from "../Errors.ts"
import * as Params from "../Params.ts"
import type { FilterPlugin } from "../Plugin.ts"
import * as Operations from "./Operations.ts"

/** Options of the error filter (see the module comment for the defaults). */
export interface ErrorOptions {
  /** Errno of the injected failures (default EIO). */
  readonly error?: ErrnoName | undefined
  /** Probability, 0 to 1, that a matching request fails (default 1); clamped to that range. */
  readonly rate?: number | undefined
  /** Operations that may fail (default all). */
  readonly ops?: ReadonlyArray<Operations.Operation> | undefined
  /** Seed of the decisions (default: the `Random` service in context, random in production). */
  readonly seed?: number | undefined
  /** Inject only while this file exists (checked per request). */
  readonly file?: string | undefined
  /** Inject only while this yields true (checked per request): a switch for tests written in code. */
  readonly armed?: Effect.Effect<boolean> | undefined
}

const fileExists = (path: string) => Effect.sync(() => fs.existsSync(path))

/** Whether the filter is armed now: the file exists and the `armed` switch is on. */
const armedCheck = (options: ErrorOptions): Effect.Effect<boolean> => {
  const { armed, file } = options
  if (file === undefined) return armed ?? Effect.succeed(true)
  if (armed === undefined) return fileExists(file)
  return Effect.flatMap(fileExists(file), (exists) => (exists ? armed : Effect.succeed(false)))
}

/** Whether the next matching request fails, drawing from `random` only when the rate needs it. */
const decider = (rate: number, random: Random.Random): Effect.Effect<boolean> =>
  rate >= 1 ? Effect.succeed(true) : rate <= 0 ? Effect.succeed(false) : Effect.map(random.next, (x) => x < rate)

/** The filter, for `Driver.stack`: the random sequence is created once per stack. */
export const make = (options: ErrorOptions = {}): Driver.Filter => (below) =>
  Effect.gen(function*() {
    const random = options.seed === undefined ? yield* Effect.random : Random.make(options.seed)
    const rate = Math.min(1, Math.max(0, options.rate ?? 1))
    const injected = protocolError(options.error ?? "EIO", "injected error")
    // Decide only when armed: a disarmed period draws nothing, so the sequence of decisions stays reproducible.
    const fire = Effect.flatMap(armedCheck(options), (armed) => (armed ? decider(rate, random) : Effect.succeed(false)))
    return Driver.filter(below, {
      name: "error",
      open: (handle) =>
        Operations.wrap(
          options.ops ?? Operations.all,
          (_, call) => Effect.flatMap(fire, (fail) => (fail ? Effect.fail(injected) : call(handle))),
          handle
        )
    })
  })

/** The filter as a layer over the `NbdDriver` in context. */
export const layer = (options: ErrorOptions = {}): Layer.Layer<Driver.NbdDriver, never, Driver.NbdDriver> =>
  Driver.filterLayer(make(options))

const parameters: ReadonlyArray<Params.ParameterDoc> = [
  { name: "error", default: "EIO", description: `errno of the injected failures (${ErrnoName.literals.join(", ")})` },
  { name: "rate", default: "1", description: "probability, 0 to 1, that a matching request fails" },
  { name: "ops", default: Operations.all.join(","), description: "operations that may fail" },
  { name: "seed", default: "random", description: "seed of the failure decisions (same seed, same failures)" },
  { name: "file", description: "inject failures only while this file exists (checked per request)" }
]

/** The filter by name, for the command line (`--filter error:error=ENOSPC,rate=0.1,ops=write`). */
export const plugin: FilterPlugin = {
  name: "error",
  summary: "injects errors into requests, at a rate, seeded, optionally while a file exists",
  parameters,
  make: (pairs) =>
    Params.decode("error", pairs, parameters, (reader) =>
      make({
        error: reader.choice("error", ErrnoName.literals, "EIO"),
        rate: reader.number("rate", 1, { min: 0, max: 1 }),
        ops: Operations.parse("error", reader.list("ops"), Operations.all),
        seed: reader.text("seed") === undefined ? undefined : reader.integer("seed"),
        file: reader.text("file")
      }))
}
