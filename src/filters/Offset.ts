/**
 * The `offset` filter: the export is the window `[offset, offset + range)` of the
 * driver below. Every request is shifted by `offset`; block status is asked of the
 * shifted range; error offsets reported by the driver below are shifted back.
 *
 * Semantics (as nbdkit's offset filter):
 * - The reported size is `range`, or, without `range`, the size below minus `offset`
 *   (computed at each size request, so it follows the driver below). It is clipped to
 *   what the driver below still has, so a driver below that shrinks after open shrinks
 *   the window, and requests past its end fail as the server fails any request past
 *   the end of an export (EINVAL for reads, ENOSPC for writes).
 * - At open the window must fit: a client is refused with `NBD_REP_ERR_INVALID` when
 *   `offset + range` (or `offset`) exceeds the size below, or when `offset` is not a
 *   multiple of the minimum block size below (shifted requests would be misaligned).
 * - RESIZE is not offered. The synchronous fast path of the driver below is kept,
 *   shifted, and so are its reads into the server's buffers (`readInto`, `readNow`).
 *
 * Parameters:
 * - `offset=SIZE` (default 0): first byte of the window in the driver below
 * - `range=SIZE` (default: the rest of the driver below after `offset`): size of the window
 *
 * @since 0.2.0
 */
import * as Effect from "effect/Effect"
import type * as Layer from "effect/Layer"
import * as Driver from "../Driver.ts"
import { type OptionReplyError, optionReplyError, type ProtocolError, protocolError } from "../Errors.ts"
import * as Params from "../Params.ts"
import type { FilterPlugin } from "../Plugin.ts"

/** Where the window lies in the driver below. */
export interface OffsetOptions {
  /** First byte of the window (default 0). */
  readonly offset?: number | undefined
  /** Size of the window (default: the rest of the driver below after `offset`). */
  readonly range?: number | undefined
}

/** A window of the driver below, with its offset known. */
export interface Window {
  readonly offset: number
  readonly range?: number | undefined
}

/** Size of the window when the driver below has `belowSize` bytes (clipped to what exists). */
export const windowSize = (window: Window, belowSize: number): number =>
  Math.max(0, Math.min(window.range ?? Number.POSITIVE_INFINITY, belowSize - window.offset))

/** Why a window cannot be opened over a handle, if it cannot. */
export const misfit = (window: Window, belowSize: number, minimum: number): string | undefined => {
  const { offset, range } = window
  if (!Number.isSafeInteger(offset) || offset < 0) return `offset ${offset} is not a byte count`
  if (range !== undefined && (!Number.isSafeInteger(range) || range < 0)) return `range ${range} is not a byte count`
  if (offset % minimum !== 0) return `offset ${offset} is not a multiple of the minimum block size ${minimum} below`
  const end = offset + (range ?? 0)
  if (end > belowSize) return `the window [${offset}, ${end}) does not fit in the ${belowSize} bytes below`
  return undefined
}

/** Shifts the offset a failure names back into the window's coordinates. */
const shiftError = (by: number) => (error: ProtocolError): ProtocolError =>
  error.offset === undefined ? error : protocolError(error.errno, error.message, error.offset - by)

/** The operations of a window over `below` (it must fit: see {@link misfit}). */
export const overrides = (below: Driver.DriverHandle, window: Window): Driver.HandleOverrides => {
  const at = window.offset
  const back = shiftError(at)
  const sync = below.sync
  return {
    capabilities: (caps) => ({ ...caps, resize: false }),
    size: Effect.map(below.size, (size) => windowSize(window, size)),
    read: (offset, length) => Effect.mapError(below.read(at + offset, length), back),
    readInto: below.readInto === undefined
      ? undefined
      : (offset, target) => Effect.mapError(below.readInto!(at + offset, target), back),
    readNow: below.readNow === undefined ? undefined : {
      size: () => windowSize(window, below.readNow!.size()),
      into: (offset, target) => below.readNow!.into(at + offset, target)
    },
    write: (offset, data, options) => Effect.mapError(below.write(at + offset, data, options), back),
    writeCopies: below.writeCopies, // the data goes below as it is
    trim: (offset, length, options) => Effect.mapError(below.trim(at + offset, length, options), back),
    writeZeroes: (offset, length, options) => Effect.mapError(below.writeZeroes(at + offset, length, options), back),
    cache: (offset, length) => Effect.mapError(below.cache(at + offset, length), back),
    blockStatus: (offset, length) => Effect.mapError(below.blockStatus(at + offset, length), back),
    // The meta contexts below, seen through the window.
    contexts: below.contexts?.map((context) => ({
      name: context.name,
      blockStatus: (offset: number, length: number) => Effect.mapError(context.blockStatus(at + offset, length), back)
    })),
    resize: () => Effect.fail(protocolError("EINVAL", "RESIZE is not supported through the offset filter")),
    sync: sync === undefined ? undefined : {
      size: () => windowSize(window, sync.size()),
      read: (offset, length) => sync.read(at + offset, length),
      write: (offset, data) => sync.write(at + offset, data),
      readInto: sync.readInto === undefined ? undefined : (offset, target) => sync.readInto!(at + offset, target)
    }
  }
}

/** Checks that the window fits the handle below and gives its operations; `owner` names the filter in messages. */
export const open = (
  below: Driver.DriverHandle,
  window: Window,
  owner: string
): Effect.Effect<Driver.HandleOverrides, OptionReplyError> =>
  below.size.pipe(
    Effect.mapError((error) => optionReplyError("INVALID", `${owner}: cannot read the size below: ${error.message}`)),
    Effect.flatMap((size) => {
      const why = misfit(window, size, below.capabilities.blockSize.minimum)
      return why === undefined
        ? Effect.succeed(overrides(below, window))
        : Effect.fail(optionReplyError("INVALID", `${owner}: ${why}`))
    })
  )

/** Wraps a driver so that the export is a window of it. */
export const apply = (below: Driver.NbdDriverShape, options: OffsetOptions = {}): Driver.NbdDriverShape => {
  const window: Window = { offset: options.offset ?? 0, range: options.range }
  return Driver.filter(below, { name: "offset", open: (handle) => open(handle, window, "offset") })
}

/** The filter, for {@link Driver.stack}. */
export const make = (options: OffsetOptions = {}): Driver.Filter => (below) => Effect.succeed(apply(below, options))

/** The filter as a layer over the `NbdDriver` in context. */
export const layer = (options: OffsetOptions = {}): Layer.Layer<Driver.NbdDriver, never, Driver.NbdDriver> =>
  Driver.filterLayer(make(options))

const parameters: ReadonlyArray<Params.ParameterDoc> = [
  { name: "offset", default: "0", description: "first byte of the window in the driver below" },
  { name: "range", default: "the rest after offset", description: "size of the window" }
]

/** The filter by name: `offset:offset=SIZE,range=SIZE`. */
export const plugin: FilterPlugin = {
  name: "offset",
  summary: "serves a byte range (window) of the driver below",
  parameters,
  make: (pairs) =>
    Params.decode("offset", pairs, parameters, (read) =>
      make({
        offset: read.size("offset", 0),
        range: read.text("range") === undefined ? undefined : read.size("range")
      }))
}
