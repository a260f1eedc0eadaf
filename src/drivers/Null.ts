/**
 * The `null` driver: an export of a given size that reads as zeroes and discards
 * everything written, as nbdkit's null plugin. Writes, trims and zeroing succeed and
 * change nothing, flush is a no-op, and block status reports the whole export as a hole
 * that reads as zeroes. Useful to measure the server and the network without storage.
 *
 * Capabilities: writable, flush, FUA, trim, zero, fast zero, cache, block status and
 * multi-connection. The synchronous fast path answers reads with one hole piece and
 * ignores writes. Size: 0 to {@link MAX_SIZE} bytes (nbdkit allows 2^63-1; offsets here
 * stay exact JavaScript numbers).
 *
 * Argument: SIZE (required), e.g. `1G`. Parameters: none.
 *
 * @since 0.2.0
 */
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Driver from "../Driver.ts"
import * as Params from "../Params.ts"
import type { DriverPlugin } from "../Plugin.ts"
import { parseSizeArgument } from "./SizeArgument.ts"

/** Largest export size. */
export const MAX_SIZE = Number.MAX_SAFE_INTEGER

/** Options of the null driver. */
export interface NullOptions {
  /** Export size in bytes, 0 to {@link MAX_SIZE}. */
  readonly size: number
  /** Human-readable description of the export. */
  readonly description?: string | undefined
}

const discard = () => Effect.void

/** Makes a null driver; throws a `RangeError` if the size is not a whole number from 0 to {@link MAX_SIZE}. */
export const make = (options: NullOptions): Driver.NbdDriverShape => {
  const size = options.size
  if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`null: invalid size ${size}`)
  return Driver.make({
    name: "null",
    description: options.description,
    capabilities: { fua: true, fastZero: true, multiConn: true, blockStatus: true, cache: true },
    size: Effect.succeed(size),
    read: (_, length) => Effect.sync(() => new Uint8Array(length)),
    write: discard,
    writeCopies: true, // nothing is kept
    flush: Effect.void,
    trim: discard,
    writeZeroes: discard,
    cache: discard,
    blockStatus: (_, length) => Effect.succeed([{ length, flags: Driver.HOLE_ZERO }]),
    sync: {
      size: () => size,
      read: (_, length) => [length],
      write: () => {}
    }
  })
}

/** A layer providing a null driver. */
export const layer = (options: NullOptions): Layer.Layer<Driver.NbdDriver> =>
  Layer.sync(Driver.NbdDriver, () => make(options))

/** The driver by name, for the command line: `null 1G`. */
export const plugin: DriverPlugin = {
  name: "null",
  summary: "reads zeroes and discards writes",
  argument: { name: "SIZE", description: "export size, e.g. 1G" },
  parameters: [],
  make: (argument, pairs) =>
    Either.flatMap(
      Params.decode("null", pairs, [], () => argument),
      (text) => Either.map(parseSizeArgument("null", text, MAX_SIZE), (size) => Effect.sync(() => make({ size })))
    )
}
