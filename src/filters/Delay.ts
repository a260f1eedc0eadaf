/**
 * The `delay` filter: each request of a chosen kind waits a fixed time before it goes
 * to the driver below, to simulate a slow or distant disk (as nbdkit's delay filter).
 * Waits use Effect's `Clock`, so tests run them under `TestClock`.
 *
 * Only operations with a nonzero delay are replaced: with `read` and `write` at zero
 * the synchronous fast path of the driver below survives; a read or write delay drops it.
 *
 * Parameters (a DURATION is `100ms`, `1.5s`, `10us`, `2m`; a bare number is seconds):
 * - `read=DURATION` (default 0): delay before each READ
 * - `write=DURATION` (default 0): delay before each WRITE
 * - `zero=DURATION` (default 0): delay before each WRITE_ZEROES
 * - `trim=DURATION` (default 0): delay before each TRIM
 * - `flush=DURATION` (default 0): delay before each FLUSH
 * - `cache=DURATION` (default 0): delay before each CACHE
 * - `extents=DURATION` (default 0): delay before each BLOCK_STATUS
 *
 * @since 0.2.0
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type * as Layer from "effect/Layer"
import * as Driver from "../Driver.ts"
import * as Params from "../Params.ts"
import type { FilterPlugin } from "../Plugin.ts"
import * as Operations from "./Operations.ts"

/** Delay of each operation (absent: none); a number is milliseconds, as everywhere in Effect. */
export type DelayOptions = { readonly [op in Operations.Operation]?: Duration.DurationInput | undefined }

/** Wraps a driver so that the operations with a nonzero delay wait that long first. */
export const apply = (below: Driver.NbdDriverShape, options: DelayOptions): Driver.NbdDriverShape => {
  const delays = new Map<Operations.Operation, Duration.Duration>()
  for (const op of Operations.all) {
    const input = options[op]
    if (input === undefined) continue
    const duration = Duration.decode(input)
    if (Duration.greaterThan(duration, Duration.zero)) delays.set(op, duration)
  }
  return Driver.filter(below, {
    name: "delay",
    open: (handle) =>
      Operations.wrap(delays.keys(), (op, call) => Effect.zipRight(Effect.sleep(delays.get(op)!), call(handle)), handle)
  })
}

/** The filter, for `Driver.stack`. */
export const make = (options: DelayOptions): Driver.Filter => (below) => Effect.succeed(apply(below, options))

/** The filter as a layer over the `NbdDriver` in context. */
export const layer = (options: DelayOptions): Layer.Layer<Driver.NbdDriver, never, Driver.NbdDriver> =>
  Driver.filterLayer(make(options))

const parameters: ReadonlyArray<Params.ParameterDoc> = [
  { name: "read", default: "0", description: "delay before each READ (100ms, 1.5s; a bare number is seconds)" },
  { name: "write", default: "0", description: "delay before each WRITE" },
  { name: "zero", default: "0", description: "delay before each WRITE_ZEROES" },
  { name: "trim", default: "0", description: "delay before each TRIM" },
  { name: "flush", default: "0", description: "delay before each FLUSH" },
  { name: "cache", default: "0", description: "delay before each CACHE" },
  { name: "extents", default: "0", description: "delay before each BLOCK_STATUS" }
]

/** The filter by name, for the command line (`--filter delay:read=100ms,write=1s`). */
export const plugin: FilterPlugin = {
  name: "delay",
  summary: "delays requests by a fixed time per operation",
  parameters,
  make: (pairs) =>
    Params.decode("delay", pairs, parameters, (reader) => {
      const options: { [op in Operations.Operation]?: Duration.Duration } = {}
      for (const op of Operations.all) options[op] = reader.duration(op, Duration.zero)
      return make(options)
    })
}
