/**
 * The `rate` filter: limits the bandwidth of READ and WRITE payloads with token buckets
 * (as nbdkit's rate filter, but in bytes per second). One bucket is shared by every
 * connection of the stack (`rate`), and each connection has its own (`connection-rate`);
 * a request passes through both. Other operations are not limited.
 *
 * Buckets start empty (the limit holds from the first byte) and fill while idle up to
 * `burst` worth of bytes, which then pass at once. A request larger than that is paced
 * in pieces of the smallest bucket's capacity (at least 4 KiB), each piece taken from
 * the connection's bucket, then the shared one, so concurrent requests interleave.
 * Waits use Effect's `Clock`, so tests run them under `TestClock`.
 *
 * With no limit set the filter changes nothing (the synchronous fast path survives);
 * with one, reads and writes go through the filter and the fast path is dropped.
 *
 * Parameters (a SIZE is `1048576`, `512K`, `64M`, `1G`):
 * - `rate=SIZE` (default unlimited): bytes per second for all connections together
 * - `connection-rate=SIZE` (default unlimited): bytes per second for each connection
 * - `burst=DURATION` (default 1s): how many seconds' worth of bytes a bucket holds
 *
 * @since 0.2.0
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type * as Layer from "effect/Layer"
import * as Driver from "../Driver.ts"
import * as Params from "../Params.ts"
import type { FilterPlugin } from "../Plugin.ts"
import * as TokenBucket from "./TokenBucket.ts"

/** Options of the rate filter; an absent, zero or infinite rate is unlimited. */
export interface RateOptions {
  /** Bytes per second for all connections of the stack together. */
  readonly rate?: number | undefined
  /** Bytes per second for each connection. */
  readonly connectionRate?: number | undefined
  /** Time's worth of bytes a bucket holds (default 1 second); a number is milliseconds. */
  readonly burst?: Duration.DurationInput | undefined
}

/** Smallest piece a large request is paced in. */
const MIN_PIECE = 4096

const limited = (rate: number | undefined): rate is number => rate !== undefined && rate > 0 && Number.isFinite(rate)

const bucket = (rate: number, burst: Duration.Duration) =>
  TokenBucket.make(rate, Math.max(1, rate * Duration.toSeconds(burst)))

/** Takes `bytes` from each bucket in turn, piece by piece. */
const throttle = (buckets: ReadonlyArray<TokenBucket.TokenBucket>) => {
  const piece = Math.max(MIN_PIECE, Math.min(...buckets.map((b) => b.capacity)))
  return (bytes: number): Effect.Effect<void> =>
    Effect.gen(function*() {
      for (let done = 0; done < bytes; done += piece) {
        const n = Math.min(piece, bytes - done)
        for (const b of buckets) yield* b.take(n)
      }
    })
}

/** The filter, for `Driver.stack`: the shared bucket is created once per stack. */
export const make = (options: RateOptions): Driver.Filter => (below) =>
  Effect.gen(function*() {
    const burst = Duration.decode(options.burst ?? Duration.seconds(1))
    const shared = limited(options.rate) ? yield* bucket(options.rate, burst) : undefined
    const perConnection = options.connectionRate
    if (shared === undefined && !limited(perConnection)) return Driver.filter(below, { name: "rate", open: () => ({}) })
    return Driver.filter(below, {
      name: "rate",
      open: (handle) =>
        Effect.gen(function*() {
          const own = limited(perConnection) ? yield* bucket(perConnection, burst) : undefined
          const wait = throttle([own, shared].filter((b) => b !== undefined))
          return {
            read: (offset, length) => Effect.zipRight(wait(length), handle.read(offset, length)),
            readInto: handle.readInto === undefined
              ? undefined
              : (offset, target) => Effect.zipRight(wait(target.length), handle.readInto!(offset, target)),
            write: (offset, data, writeOptions) =>
              Effect.zipRight(wait(data.length), handle.write(offset, data, writeOptions)),
            writeCopies: handle.writeCopies // the data goes below as it is
          }
        })
    })
  })

/** The filter as a layer over the `NbdDriver` in context. */
export const layer = (options: RateOptions): Layer.Layer<Driver.NbdDriver, never, Driver.NbdDriver> =>
  Driver.filterLayer(make(options))

const parameters: ReadonlyArray<Params.ParameterDoc> = [
  { name: "rate", default: "unlimited", description: "bytes per second for all connections together (512K, 10M)" },
  { name: "connection-rate", default: "unlimited", description: "bytes per second for each connection" },
  { name: "burst", default: "1s", description: "how much time's worth of bytes may pass at once after an idle period" }
]

/** The filter by name, for the command line (`--filter rate:rate=10M,connection-rate=2M`). */
export const plugin: FilterPlugin = {
  name: "rate",
  summary: "limits read and write bandwidth, shared and per connection",
  parameters,
  make: (pairs) =>
    Params.decode("rate", pairs, parameters, (reader) => {
      const rate = (name: string) => {
        if (reader.text(name) === undefined) return undefined
        const value = reader.size(name)
        if (value > 0) return value
        throw new Params.ParameterError({ message: `rate: '${name}' must be at least 1 byte per second` })
      }
      const burst = reader.duration("burst", Duration.seconds(1))
      if (Duration.isZero(burst)) throw new Params.ParameterError({ message: "rate: 'burst' must be more than 0" })
      return make({ rate: rate("rate"), connectionRate: rate("connection-rate"), burst })
    })
}
