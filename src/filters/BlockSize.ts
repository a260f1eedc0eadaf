/**
 * The `blocksize` filter: adapts the requests of any client to the block-size limits of
 * the driver below. The client sees a minimum block size of 1 (any alignment), a
 * preferred size of max(preferred below, `minblock`) and a maximum payload of 64 MiB;
 * the driver below only ever receives requests aligned to `minblock`:
 * - READ: the range widened to `minblock` boundaries is read (in pieces of at most
 *   `maxdata`) and the asked bytes are sliced out.
 * - WRITE: whole blocks are written in pieces of at most `maxdata`; an unaligned head
 *   or tail is a read-modify-write of its block. RMWs of the whole stack are serialized
 *   by one lock, so concurrent unaligned writes into one block lose nothing.
 * - WRITE_ZEROES: whole blocks zeroed below in pieces of at most `maxlen`; unaligned
 *   parts written as zeroes by read-modify-write (so a FAST_ZERO request with an
 *   unaligned part fails at once with ENOTSUP).
 * - TRIM: whole blocks trimmed in pieces of at most `maxlen`; unaligned parts are left
 *   alone (trimming is advisory).
 * - CACHE: widened to block boundaries, in pieces of at most `maxlen`.
 * - BLOCK_STATUS: asked for the range widened to block boundaries (at most `maxlen`)
 *   and answered from the asked offset.
 * - The size is the size below rounded down to a multiple of `minblock` (a partial last
 *   block cannot be written whole). RESIZE passes through when the new size is a
 *   multiple of `minblock` (EINVAL otherwise). The synchronous fast path is not kept.
 *
 * A client is refused at open with `NBD_REP_ERR_INVALID` when the limits do not fit the
 * driver below (`minblock` not a multiple of its minimum, `maxdata` above its maximum).
 *
 * Parameters:
 * - `minblock=SIZE` (default: the minimum block size below): alignment of every request
 *   sent below; a power of two up to 64K
 * - `maxdata=SIZE` (default: the maximum payload below, at most 64M): largest READ or
 *   WRITE sent below; a multiple of `minblock`
 * - `maxlen=SIZE` (default: 4G - `minblock`): largest TRIM, WRITE_ZEROES, CACHE or
 *   BLOCK_STATUS length sent below; a multiple of `minblock`
 *
 * @since 0.2.0
 */
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import type * as Layer from "effect/Layer"
import * as Driver from "../Driver.ts"
import { optionReplyError, type ProtocolError, protocolError } from "../Errors.ts"
import * as Params from "../Params.ts"
import type { FilterPlugin } from "../Plugin.ts"

/** Largest READ or WRITE payload the filter accepts from a client. */
export const MAX_CLIENT_PAYLOAD = 64 * 1024 * 1024

/** Limits of the requests sent below; each left out is taken from the handle below at open. */
export interface BlockSizeOptions {
  /** Alignment of every request sent below (power of two, at most 64K). */
  readonly minblock?: number | undefined
  /** Largest READ or WRITE sent below. */
  readonly maxdata?: number | undefined
  /** Largest TRIM, WRITE_ZEROES, CACHE or BLOCK_STATUS length sent below. */
  readonly maxlen?: number | undefined
}

/** The limits in force for one handle. */
export interface Limits {
  readonly minblock: number
  readonly maxdata: number
  readonly maxlen: number
}

const isPowerOfTwo = (n: number) => Number.isSafeInteger(n) && n > 0 && (n & (n - 1)) === 0

/** What is wrong with the options on their own, if anything. */
export const validate = (options: BlockSizeOptions): string | undefined => {
  const { maxdata, maxlen, minblock } = options
  if (minblock !== undefined && (!isPowerOfTwo(minblock) || minblock > 65536)) {
    return `minblock ${minblock} is not a power of two from 1 to 65536`
  }
  for (const [name, value] of [["maxdata", maxdata], ["maxlen", maxlen]] as const) {
    if (value === undefined) continue
    if (!Number.isSafeInteger(value) || value < 1) return `${name} ${value} is not a positive byte count`
    if (minblock !== undefined && value % minblock !== 0) return `${name} ${value} is not a multiple of minblock ${minblock}`
  }
  return undefined
}

/** The limits for a driver below with block sizes `below`, or why the options do not fit it. */
export const limits = (options: BlockSizeOptions, below: Driver.BlockSize): Either.Either<Limits, string> => {
  const minblock = options.minblock ?? below.minimum
  const largest = Math.min(below.maximum, MAX_CLIENT_PAYLOAD)
  const resolved: Limits = {
    minblock,
    maxdata: options.maxdata ?? Math.max(minblock, largest - (largest % minblock)),
    maxlen: options.maxlen ?? 2 ** 32 - minblock
  }
  const why = validate(resolved)
  if (why !== undefined) return Either.left(why)
  if (minblock % below.minimum !== 0) {
    return Either.left(`minblock ${minblock} is not a multiple of the minimum block size ${below.minimum} below`)
  }
  if (resolved.maxdata > below.maximum) {
    return Either.left(`maxdata ${resolved.maxdata} exceeds the maximum payload ${below.maximum} below`)
  }
  return Either.right(resolved)
}

/** A part of a request: whole blocks (`aligned`) or the piece of a single block. */
export interface Piece {
  readonly aligned: boolean
  readonly start: number
  readonly end: number
}

/** Splits `[offset, offset + length)` into an unaligned head, whole blocks and an unaligned tail (each if present). */
export const pieces = (offset: number, length: number, minblock: number): ReadonlyArray<Piece> => {
  const end = offset + length
  const out: Array<Piece> = []
  let at = offset
  if (at % minblock !== 0) {
    const headEnd = Math.min(at - (at % minblock) + minblock, end)
    out.push({ aligned: false, start: at, end: headEnd })
    at = headEnd
  }
  const middleEnd = end - (end % minblock)
  if (middleEnd > at) {
    out.push({ aligned: true, start: at, end: middleEnd })
    at = middleEnd
  }
  if (at < end) out.push({ aligned: false, start: at, end })
  return out
}

/** Runs `f` over `[start, end)` in consecutive pieces of at most `step` bytes. */
const inSteps = (
  start: number,
  end: number,
  step: number,
  f: (at: number, length: number) => Effect.Effect<void, ProtocolError>
): Effect.Effect<void, ProtocolError> =>
  Effect.gen(function*() {
    for (let at = start; at < end; at += step) yield* f(at, Math.min(step, end - at))
  })

/** Drops the first `skip` bytes of a run of extents and keeps at most `length` bytes. */
export const dropHead = (
  extents: ReadonlyArray<Driver.Extent>,
  skip: number,
  length: number
): Array<Driver.Extent> => {
  const out: Array<Driver.Extent> = []
  let at = 0
  let kept = 0
  for (const extent of extents) {
    const from = Math.max(at, skip)
    const to = at + extent.length
    at = to
    if (to <= from) continue
    const n = Math.min(to - from, length - kept)
    out.push({ length: n, flags: extent.flags })
    kept += n
    if (kept >= length) break
  }
  return out
}

/** The operations of one handle, sending only aligned requests within `limits` below. */
export const overrides = (
  below: Driver.DriverHandle,
  { maxdata, maxlen, minblock }: Limits,
  lock: Effect.Semaphore
): Driver.HandleOverrides => {
  const down = (n: number) => n - (n % minblock)
  const up = (n: number) => down(n + minblock - 1)

  /** Reads whole blocks `[start, end)` in pieces of at most `maxdata`. */
  const readBlocks = (start: number, end: number): Effect.Effect<Uint8Array, ProtocolError> =>
    end - start <= maxdata ? below.read(start, end - start) : Effect.gen(function*() {
      const out = new Uint8Array(end - start)
      for (let at = start; at < end; at += maxdata) out.set(yield* below.read(at, Math.min(maxdata, end - at)), at - start)
      return out
    })

  /** Rewrites the block holding `piece` with `patch` applied to a copy of it (under the stack's lock). */
  const modify = (piece: Piece, patch: (block: Uint8Array, from: number, to: number) => void, fua: boolean) => {
    const block = down(piece.start)
    return lock.withPermits(1)(Effect.gen(function*() {
      const data = new Uint8Array(yield* below.read(block, minblock))
      patch(data, piece.start - block, piece.end - block)
      yield* below.write(block, data, { fua })
    }))
  }

  const read: Driver.DriverHandle["read"] = (offset, length) => {
    const start = down(offset)
    const end = up(offset + length)
    if (start === offset && end === offset + length) return readBlocks(start, end)
    return Effect.map(readBlocks(start, end), (data) => data.subarray(offset - start, offset - start + length))
  }

  const write: Driver.DriverHandle["write"] = (offset, data, options) =>
    Effect.forEach(pieces(offset, data.length, minblock), (piece) => {
      const bytes = data.subarray(piece.start - offset, piece.end - offset)
      return piece.aligned
        ? inSteps(piece.start, piece.end, maxdata, (at, n) =>
          below.write(at, bytes.subarray(at - piece.start, at - piece.start + n), options))
        : modify(piece, (block, from) => block.set(bytes, from), options.fua)
    }, { discard: true })

  const writeZeroes: Driver.DriverHandle["writeZeroes"] = (offset, length, options) => {
    const parts = pieces(offset, length, minblock)
    if (options.fastZero && parts.some((piece) => !piece.aligned)) {
      return Effect.fail(protocolError("ENOTSUP", `zeroing less than a ${minblock}-byte block is not fast`))
    }
    return Effect.forEach(parts, (piece) =>
      piece.aligned
        ? inSteps(piece.start, piece.end, maxlen, (at, n) => below.writeZeroes(at, n, options))
        : modify(piece, (block, from, to) => block.fill(0, from, to), options.fua), { discard: true })
  }

  const trim: Driver.DriverHandle["trim"] = (offset, length, options) =>
    Effect.forEach(
      pieces(offset, length, minblock).filter((piece) => piece.aligned),
      (piece) => inSteps(piece.start, piece.end, maxlen, (at, n) => below.trim(at, n, options)),
      { discard: true }
    )

  const blockStatus: Driver.DriverHandle["blockStatus"] = (offset, length) => {
    const start = down(offset)
    const end = Math.min(up(offset + length), start + maxlen)
    return Effect.map(below.blockStatus(start, end - start), (extents) => {
      const fitted = dropHead(extents, offset - start, length)
      // A driver below that describes less than the first block leaves the rest of it unknown: data.
      return fitted.length > 0 ? fitted : [{ length: Math.min(length, up(offset + 1) - offset), flags: 0 }]
    })
  }

  return {
    capabilities: (caps) => ({
      ...caps,
      blockSize: { minimum: 1, preferred: Math.max(caps.blockSize.preferred, minblock), maximum: MAX_CLIENT_PAYLOAD }
    }),
    size: Effect.map(below.size, down),
    read,
    write,
    writeZeroes,
    trim,
    cache: (offset, length) => inSteps(down(offset), up(offset + length), maxlen, below.cache),
    blockStatus,
    resize: (size) =>
      size % minblock === 0
        ? below.resize(size)
        : Effect.fail(protocolError("EINVAL", `the new size ${size} is not a multiple of the block size ${minblock}`)),
    sync: undefined
  }
}

/** Wraps a driver so that clients may send any request; `lock` serializes read-modify-writes. */
export const apply = (
  below: Driver.NbdDriverShape,
  options: BlockSizeOptions,
  lock: Effect.Semaphore
): Driver.NbdDriverShape =>
  Driver.filter(below, {
    name: "blocksize",
    open: (handle) =>
      Either.match(limits(options, handle.capabilities.blockSize), {
        onLeft: (why) => Effect.fail(optionReplyError("INVALID", `blocksize: ${why}`)),
        onRight: (resolved) => Effect.succeed(overrides(handle, resolved, lock))
      })
  })

/** The filter, for {@link Driver.stack}: one read-modify-write lock for the whole stack. */
export const make = (options: BlockSizeOptions = {}): Driver.Filter => (below) =>
  Effect.map(Effect.makeSemaphore(1), (lock) => apply(below, options, lock))

/** The filter as a layer over the `NbdDriver` in context. */
export const layer = (options: BlockSizeOptions = {}): Layer.Layer<Driver.NbdDriver, never, Driver.NbdDriver> =>
  Driver.filterLayer(make(options))

const parameters: ReadonlyArray<Params.ParameterDoc> = [
  {
    name: "minblock",
    default: "minimum below",
    description: "alignment of every request sent below (power of two, at most 64K)"
  },
  { name: "maxdata", default: "maximum below, at most 64M", description: "largest READ or WRITE sent below" },
  {
    name: "maxlen",
    default: "4G - minblock",
    description: "largest TRIM, WRITE_ZEROES, CACHE or BLOCK_STATUS length sent below"
  }
]

/** The filter by name: `blocksize:minblock=SIZE,maxdata=SIZE,maxlen=SIZE`. */
export const plugin: FilterPlugin = {
  name: "blocksize",
  summary: "accepts requests of any alignment and size, sending the driver below only what it supports",
  parameters,
  make: (pairs) =>
    Params.decode("blocksize", pairs, parameters, (read) => {
      const optional = (name: string) => read.text(name) === undefined ? undefined : read.size(name)
      const options: BlockSizeOptions = {
        minblock: optional("minblock"),
        maxdata: optional("maxdata"),
        maxlen: optional("maxlen")
      }
      const why = validate(options)
      if (why !== undefined) throw new Params.ParameterError({ message: `blocksize: ${why}` })
      return make(options)
    })
}
