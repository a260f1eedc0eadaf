/**
 * The `pattern` driver: a read-only export of a given size whose content is computed
 * from the offset, as nbdkit's pattern plugin: each 8-byte aligned word at offset `o`
 * holds `o` as a big-endian 64-bit number (bytes 0-7 are 0, bytes 8-15 are
 * `00 00 00 00 00 00 00 08`, ...). Any offset and length read the matching slice, so a
 * client can check that data lands where it should. The last word is cut short when
 * the size is not a multiple of 8.
 *
 * Capabilities: read-only, cache (a no-op), block status (everything is data) and
 * multi-connection. The synchronous fast path answers reads with one buffer.
 * Size: 0 to {@link MAX_SIZE} bytes.
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

/** Options of the pattern driver. */
export interface PatternOptions {
  /** Export size in bytes, 0 to {@link MAX_SIZE}. */
  readonly size: number
  /** Human-readable description of the export. */
  readonly description?: string | undefined
}

const TWO_32 = 2 ** 32

const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1

/** The 32-bit word whose bytes in memory are `x` big-endian (as int32 bits). */
const bigEndian = LITTLE_ENDIAN
  ? (x: number): number => (x << 24) | ((x & 0xff00) << 8) | ((x >>> 8) & 0xff00) | (x >>> 24)
  : (x: number): number => x

/** The pattern's bytes of `[offset, offset + length)`, in one new buffer. */
export const bytesAt = (offset: number, length: number): Uint8Array => {
  const skip = offset % 8
  const first = offset - skip
  const halves = Math.ceil((skip + length) / 8) * 2
  const buffer = Buffer.allocUnsafeSlow(halves * 4)
  const words = new Uint32Array(buffer.buffer, buffer.byteOffset, halves)
  let high = Math.floor(first / TWO_32)
  let highWord = bigEndian(high)
  let low = (first - high * TWO_32) | 0 // 32 bits, as int32: wraps to 0 past 2^32 - 8
  for (let at = 0; at < halves; at += 2) {
    words[at] = highWord
    words[at + 1] = bigEndian(low)
    low = (low + 8) | 0
    if (low === 0) highWord = bigEndian(++high)
  }
  return buffer.subarray(skip, skip + length)
}

const readOnly = (): never => {
  throw new Error("write on the read-only pattern export")
}

/** Makes a pattern driver; throws a `RangeError` if the size is not a whole number from 0 to {@link MAX_SIZE}. */
export const make = (options: PatternOptions): Driver.NbdDriverShape => {
  const size = options.size
  if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`pattern: invalid size ${size}`)
  return Driver.make({
    name: "pattern",
    description: options.description,
    capabilities: { multiConn: true, cache: true, blockStatus: true },
    size: Effect.succeed(size),
    read: (offset, length) => Effect.sync(() => bytesAt(offset, length)),
    blockStatus: (_, length) => Effect.succeed([{ length, flags: 0 }]),
    sync: {
      size: () => size,
      read: (offset, length) => [bytesAt(offset, length)],
      write: readOnly
    }
  })
}

/** A layer providing a pattern driver. */
export const layer = (options: PatternOptions): Layer.Layer<Driver.NbdDriver> =>
  Layer.sync(Driver.NbdDriver, () => make(options))

/** The driver by name, for the command line: `pattern 1G`. */
export const plugin: DriverPlugin = {
  name: "pattern",
  summary: "read-only; each 8-byte word holds its own offset (big-endian)",
  argument: { name: "SIZE", description: "export size, e.g. 1G" },
  parameters: [],
  make: (argument, pairs) =>
    Either.flatMap(
      Params.decode("pattern", pairs, [], () => argument),
      (text) => Either.map(parseSizeArgument("pattern", text, MAX_SIZE), (size) => Effect.sync(() => make({ size })))
    )
}
