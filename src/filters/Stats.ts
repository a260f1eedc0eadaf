/**
 * The `stats` filter: counts what clients do, as nbdkit's stats filter does, and writes
 * a summary when the stack closes (at server stop). Requests pass through unchanged.
 *
 * Gathered for the whole stack (every connection together): per command (READ, WRITE,
 * FLUSH, TRIM, WRITE_ZEROES, CACHE, BLOCK_STATUS, RESIZE) the completed requests, failures
 * and bytes of the successful ones; bytes read, written, zeroed and trimmed; failures by
 * errno; latency per command as min/mean/max and a histogram of fixed log2 buckets in
 * microseconds (`[2^(i-1), 2^i)`); elapsed time since the stack was built, and throughput.
 * Interrupted requests (no reply sent) are not counted; a defect counts as EIO.
 *
 * Latency on the Effect path is measured with Effect's `Clock` (so `TestClock` drives it
 * in tests). The synchronous fast path of the driver below is kept: the filter gives its
 * own `sync` read, read-into and write that count operations and bytes and measure latency with
 * `performance.now()` (a `Clock` cannot be read synchronously); elapsed time is always
 * `Clock` time.
 *
 * {@link current} reads the statistics as a value and {@link format} renders them, for
 * applications and tests that pass their own {@link Collector} in the options.
 *
 * Parameters:
 * - file=PATH (default: none): where the summary is written at close; without it the
 *   summary is logged (`Effect.logInfo`).
 * - append=BOOL (default false): append the summary to the file instead of replacing it.
 *
 * @since 0.2.0
 */
import * as Effect from "effect/Effect"
import type * as Layer from "effect/Layer"
import * as fs from "node:fs"
import * as Driver from "../Driver.ts"
import * as Params from "../Params.ts"
import type { FilterPlugin } from "../Plugin.ts"
import { type Command, type Completed, instrument } from "./Instrument.ts"
import { type Collector, current, makeCollector } from "./StatsCollector.ts"
import { format } from "./StatsFormat.ts"

export {
  BUCKETS,
  bucketOf,
  bucketStart,
  Collector,
  type CommandStatistics,
  current,
  type LatencyStatistics,
  makeCollector,
  type Statistics
} from "./StatsCollector.ts"
export { format, formatBytes } from "./StatsFormat.ts"

/** Options of the stats filter. */
export interface StatsOptions {
  /** Where the summary is written when the stack closes; logged when absent. */
  readonly file?: string | undefined
  /** Append to `file` instead of replacing it. */
  readonly append?: boolean | undefined
  /** Counters to use (to read them with {@link current}); a new one per stack when absent. */
  readonly collector?: Collector | undefined
}

/** Runs a synchronous operation, counting it with a `performance.now()` latency; a throw counts as EIO. */
const countedSync = <A>(collector: Collector, command: Command, length: number, run: () => A): A => {
  const start = performance.now()
  try {
    const result = run()
    collector.record(command, length, (performance.now() - start) * 1000, "ok")
    return result
  } catch (error) {
    collector.record(command, length, (performance.now() - start) * 1000, "EIO")
    throw error
  }
}

const countedOperations = (sync: Driver.SyncOperations, collector: Collector): Driver.SyncOperations => ({
  size: sync.size,
  read: (offset, length) => countedSync(collector, "READ", length, () => sync.read(offset, length)),
  write: (offset, data) => countedSync(collector, "WRITE", data.length, () => sync.write(offset, data)),
  readInto: sync.readInto === undefined
    ? undefined
    : (offset, target) => countedSync(collector, "READ", target.length, () => sync.readInto!(offset, target))
})

/** Writes or logs the summary; a failure to write is logged, never raised (this runs at close). */
const report = (collector: Collector, options: StatsOptions): Effect.Effect<void> =>
  Effect.flatMap(current(collector), (statistics) => {
    const text = format(statistics)
    const file = options.file
    if (file === undefined) return Effect.logInfo(`stats:\n${text}`)
    return Effect.tryPromise(() => fs.promises.writeFile(file, text, { flag: options.append ? "a" : "w" })).pipe(
      Effect.catchAll((error) => Effect.logWarning(`stats: writing ${file} failed: ${String(error.cause)}`))
    )
  })

/** The stats filter: counters shared by every connection, reported when the stack's scope closes. */
export const make = (options: StatsOptions = {}): Driver.Filter => (below) =>
  Effect.gen(function*() {
    const collector = options.collector ?? (yield* makeCollector)
    yield* Effect.addFinalizer(() => report(collector, options))
    const observe = (completed: Completed) =>
      Effect.sync(() => collector.record(completed.command, completed.length, completed.micros, completed.result))
    return Driver.filter(below, {
      name: "stats",
      open: (handle) => ({
        ...instrument(handle, observe),
        sync: handle.sync === undefined ? undefined : countedOperations(handle.sync, collector)
      })
    })
  })

/** The filter as a layer over the `NbdDriver` in context. */
export const layer = (options: StatsOptions = {}): Layer.Layer<Driver.NbdDriver, never, Driver.NbdDriver> =>
  Driver.filterLayer(make(options))

const parameters: ReadonlyArray<Params.ParameterDoc> = [
  { name: "file", description: "where the summary is written when the server stops (optional: logged when absent)" },
  { name: "append", default: "false", description: "append the summary to the file instead of replacing it" }
]

/** The filter by name, for the command line: `--filter stats:file=PATH`. */
export const plugin: FilterPlugin = {
  name: "stats",
  summary: "counts requests, bytes, errors and latencies; writes a summary when the server stops",
  parameters,
  make: (pairs) =>
    Params.decode("stats", pairs, parameters, (reader) =>
      make({ file: reader.text("file"), append: reader.boolean("append", false) }))
}
