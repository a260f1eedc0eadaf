/**
 * The `cow` filter: a copy-on-write overlay in memory, as nbdkit's cow filter. The driver
 * below is only read: writes, trims and zeroing go to the overlay (one per stack, shared
 * by every connection), so the export is writable even over a read-only driver, and
 * everything written is lost when the stack closes.
 *
 * - A write of part of a block first copies the block from below (read-modify-write,
 *   serialized per block, so concurrent partial writes to one block all land).
 * - A trimmed or zeroed block reads as zeroes and hides the block below; part of a block
 *   is zeroed in its copy. The whole blocks of one request are kept as one span, so the
 *   overlay's memory does not grow with the length trimmed or zeroed.
 * - Reads merge the overlay and the driver below block by block; block status reports
 *   blocks in the overlay as data (trimmed: hole and zero; zeroed: zero) and the rest as
 *   the driver below does. {@link allocationDepth} tells which layer holds data for each
 *   byte; clients get `qemu:allocation-depth`, counted as qemu counts it (see {@link ALLOCATION_DEPTH}).
 * - FLUSH and FUA succeed at once (the overlay is volatile by design); multi-connection
 *   is offered (one overlay); resizing is not; fast zeroing is (it is a memory update).
 *
 * Parameters:
 * - blocksize=SIZE (default 64K): granularity of the overlay, a power of two from 512 to 32M.
 *
 * @since 0.2.0
 */
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import type * as Layer from "effect/Layer"
import * as Driver from "../Driver.ts"
import { type ProtocolError, protocolError } from "../Errors.ts"
import * as Params from "../Params.ts"
import type { FilterPlugin } from "../Plugin.ts"
import { AllocationState } from "../protocol/Constants.ts"
import { blockLength, blockSizeProblem, forEachPiece, type Piece, readBelow, readBelowInto, widen } from "./Blocks.ts"
import { Overlay, overlayFlags } from "./CowOverlay.ts"

export { Overlay } from "./CowOverlay.ts"

/** Default granularity of the overlay. */
export const DEFAULT_BLOCK_SIZE = 64 * 1024

/** Options of the cow filter. */
export interface CowOptions {
  /** Granularity of the overlay in bytes (default {@link DEFAULT_BLOCK_SIZE}). */
  readonly blockSize?: number | undefined
}

/** An extent of the layers under the cow filter: `depth` 0 unallocated, 1 in the overlay, 2 below. */
export interface LayeredExtent extends Driver.Extent {
  readonly depth: 0 | 1 | 2
}

/**
 * Block status of `[offset, offset + length)` with the layer of each extent; stops where
 * the driver below answered for less than asked (the client asks again).
 */
export const layeredStatus = (
  overlay: Overlay,
  below: Driver.DriverHandle,
  offset: number,
  length: number
): Effect.Effect<Array<LayeredExtent>, ProtocolError> =>
  Effect.gen(function*() {
    const out: Array<LayeredExtent> = []
    for (const run of overlay.runs(offset, length)) {
      if (run.state !== "below") {
        out.push({ length: run.length, flags: overlayFlags(run.state), depth: 1 })
        continue
      }
      let covered = 0
      for (const extent of yield* alignedStatus(below, run.offset, run.length)) {
        const n = Math.min(extent.length, run.length - covered)
        if (n <= 0) break
        out.push({ length: n, flags: extent.flags, depth: (extent.flags & AllocationState.HOLE) !== 0 ? 0 : 2 })
        covered += n
      }
      if (covered < run.length) break
    }
    return out
  })

/** The range widened to the driver below's minimum block size. */
const widenBelow = (below: Driver.DriverHandle, offset: number, length: number) => {
  const { end, start } = widen(offset, length, below.capabilities.blockSize.minimum)
  return { start, length: end - start, skip: offset - start }
}

/** Block status below of a range the client may not have aligned: asked aligned, the head dropped. */
const alignedStatus = (below: Driver.DriverHandle, offset: number, length: number) =>
  Effect.map(Effect.suspend(() => {
    const range = widenBelow(below, offset, length)
    return Effect.map(below.blockStatus(range.start, range.length), (extents) => ({ extents, skip: range.skip }))
  }), ({ extents, skip }) => {
    const out: Array<Driver.Extent> = []
    for (const extent of extents) {
      const dropped = Math.min(skip, extent.length)
      skip -= dropped
      if (extent.length > dropped) out.push({ length: extent.length - dropped, flags: extent.flags })
    }
    return out
  })

/** Merges adjacent extents with the same `key`. */
const mergeBy = <K extends "flags" | "depth">(extents: ReadonlyArray<LayeredExtent>, key: K) => {
  const out: Array<{ length: number } & Record<K, number>> = []
  for (const extent of extents) {
    const previous = out[out.length - 1]
    if (previous !== undefined && previous[key] === extent[key]) previous.length += extent.length
    else out.push({ length: extent.length, [key]: extent[key] } as { length: number } & Record<K, number>)
  }
  return out
}

/**
 * Which layer holds data for each byte of `[offset, offset + length)`: 1 the overlay, 2 the
 * driver below, 0 neither (a hole below). Not qemu's count, which takes a layer without
 * allocation of its own (a raw image) as allocated everywhere: that one is served as
 * {@link ALLOCATION_DEPTH}.
 */
export const allocationDepth = (
  overlay: Overlay,
  below: Driver.DriverHandle,
  offset: number,
  length: number
): Effect.Effect<Array<{ readonly length: number; readonly depth: number }>, ProtocolError> =>
  Effect.map(layeredStatus(overlay, below, offset, length), (extents) => mergeBy(extents, "depth"))

/**
 * Reads `[offset, offset + target.length)` into `target`: blocks the overlay holds from
 * it, runs of the others from below ({@link readBelowInto}).
 */
const readInto = (overlay: Overlay, below: Driver.DriverHandle, offset: number, target: Uint8Array) =>
  Effect.suspend(() => {
    const fromBelow: Array<{ at: number; length: number }> = []
    forEachPiece(offset, target.length, overlay.blockSize, (piece) => {
      if (overlay.copy(piece.index, piece.inBlock, piece.length, target, piece.done)) return
      const last = fromBelow[fromBelow.length - 1]
      if (last !== undefined && last.at + last.length === piece.done) last.length += piece.length
      else fromBelow.push({ at: piece.done, length: piece.length })
    })
    return Effect.forEach(
      fromBelow,
      (run) => readBelowInto(below, offset + run.at, target.subarray(run.at, run.at + run.length)),
      { discard: true }
    )
  })

/**
 * Applies `change` to every piece of a range: at once where it needs nothing from below
 * and no fiber holds the block's lock, otherwise under the lock, copying the block from
 * below first. `change` returns false, changing nothing, when it needs the copy.
 */
const modify = (
  overlay: Overlay,
  below: Driver.DriverHandle,
  offset: number,
  length: number,
  change: (piece: Piece, blockLength: number) => boolean
) =>
  Effect.flatMap(below.size, (size) => {
    const pending: Array<Piece> = []
    forEachPiece(offset, length, overlay.blockSize, (piece) => {
      const n = blockLength(piece.index, overlay.blockSize, size)
      if (overlay.locks.isHeld(piece.index) || !change(piece, n)) pending.push(piece)
    })
    return Effect.forEach(pending, (piece) => {
      const n = blockLength(piece.index, overlay.blockSize, size)
      return overlay.locks.with(
        piece.index,
        Effect.suspend(() =>
          change(piece, n) ? Effect.void : Effect.map(readBelow(below, piece.index * overlay.blockSize, n), (base) => {
            overlay.install(piece.index, base)
            change(piece, n)
          })
        )
      )
    }, { discard: true })
  })

/**
 * Trims or zeroes a range: its whole blocks (the export's short last block included) as one
 * span of the overlay, the parts of blocks at its ends in the blocks' copies.
 */
const zeroes = (overlay: Overlay, below: Driver.DriverHandle, state: "trimmed" | "zeroed") => {
  const partial = (offset: number, length: number) =>
    length === 0 ? Effect.void : modify(overlay, below, offset, length, (piece, n) =>
      overlay.zero(piece.index, piece.inBlock, piece.length, n, state))
  return (offset: number, length: number) =>
    Effect.flatMap(below.size, (size) => {
      const blockSize = overlay.blockSize
      const end = offset + length
      const first = Math.ceil(offset / blockSize)
      const last = end >= size ? Math.ceil(size / blockSize) : Math.floor(end / blockSize)
      if (first >= last) return partial(offset, length)
      overlay.zeroBlocks(first, last, state)
      return Effect.zipRight(partial(offset, first * blockSize - offset), partial(last * blockSize, Math.max(0, end - last * blockSize)))
    })
}

/** Name of the meta context of allocation depth, as qemu-nbd's `-A` offers it. */
export const ALLOCATION_DEPTH = "qemu:allocation-depth"

/**
 * `qemu:allocation-depth` as qemu counts it for an overlay over a backing image: 1 where
 * the overlay holds the block, else the depth below plus one, where the driver below
 * counts as one layer allocated everywhere (as a raw image does) unless it reports its own
 * depth (0 stays 0: unallocated in every layer).
 */
const depthContext = (overlay: Overlay, below: Driver.DriverHandle): Driver.MetaContextSource => {
  const belowDepth = below.contexts?.find((context) => context.name === ALLOCATION_DEPTH)
  return {
    name: ALLOCATION_DEPTH,
    blockStatus: (offset, length) =>
      Effect.gen(function*() {
        const out: Array<Driver.Extent> = []
        const add = (n: number, flags: number) => {
          const last = out[out.length - 1]
          if (last !== undefined && last.flags === flags) out.push({ length: out.pop()!.length + n, flags })
          else out.push({ length: n, flags })
        }
        for (const run of overlay.runs(offset, length)) {
          if (run.state !== "below") add(run.length, 1)
          else if (belowDepth === undefined) add(run.length, 2)
          else {
            let covered = 0
            for (const extent of yield* belowDepth.blockStatus(run.offset, run.length)) {
              const n = Math.min(extent.length, run.length - covered)
              if (n <= 0) break
              add(n, extent.flags === 0 ? 0 : extent.flags + 1)
              covered += n
            }
            if (covered < run.length) break
          }
        }
        return out
      })
  }
}

/** The handle the cow filter presents over the handle below. */
const overrides = (overlay: Overlay, below: Driver.DriverHandle): Driver.HandleOverrides => ({
  capabilities: (caps) => ({
    ...caps,
    readOnly: false,
    flush: true,
    fua: true,
    trim: true,
    zero: true,
    fastZero: true,
    multiConn: true,
    resize: false,
    blockStatus: true,
    blockSize: {
      ...caps.blockSize,
      minimum: 1,
      preferred: Math.max(caps.blockSize.preferred, overlay.blockSize) <= caps.blockSize.maximum
        ? Math.max(caps.blockSize.preferred, overlay.blockSize)
        : caps.blockSize.preferred
    }
  }),
  read: Driver.readByReadingInto((offset, target) => readInto(overlay, below, offset, target)),
  readInto: (offset, target) => readInto(overlay, below, offset, target),
  // What the driver below says of its blocks no longer describes what clients read.
  contexts: [depthContext(overlay, below)],
  write: (offset, data) =>
    modify(
      overlay,
      below,
      offset,
      data.length,
      (piece, n) =>
        overlay.write(piece.index, piece.inBlock, data.subarray(piece.done, piece.done + piece.length), n)
    ),
  flush: Effect.void,
  // CACHE only warms the driver below, on its alignment (the overlay is memory already).
  cache: (offset, length) =>
    Effect.suspend(() => {
      const range = widenBelow(below, offset, length)
      return below.capabilities.cache ? below.cache(range.start, range.length) : Effect.void
    }),
  trim: zeroes(overlay, below, "trimmed"),
  writeZeroes: (offset, length, options) => zeroes(overlay, below, options.noHole ? "zeroed" : "trimmed")(offset, length),
  blockStatus: (offset, length) =>
    Effect.map(layeredStatus(overlay, below, offset, length), (extents) => mergeBy(extents, "flags")),
  resize: () => Effect.fail(protocolError("EINVAL", "cow: resizing is not supported"))
})

/** Puts a cow filter with the given overlay (shared by every connection) over a driver. */
export const apply = (below: Driver.NbdDriverShape, overlay: Overlay): Driver.NbdDriverShape =>
  Driver.filter(below, { name: "cow", open: (handle) => overrides(overlay, handle) })

/** The cow filter with a new, empty overlay per stack. */
export const make = (options: CowOptions = {}): Driver.Filter => (below) =>
  Effect.sync(() => apply(below, new Overlay(options.blockSize ?? DEFAULT_BLOCK_SIZE)))

/** The cow filter as a layer over the `NbdDriver` in context. */
export const layer = (options: CowOptions = {}): Layer.Layer<Driver.NbdDriver, never, Driver.NbdDriver> =>
  Driver.filterLayer(make(options))

const parameters: ReadonlyArray<Params.ParameterDoc> = [
  {
    name: "blocksize",
    default: "64K",
    description: "granularity of the overlay (a power of two from 512 to 32M)"
  }
]

/** The cow filter by name (`--filter cow:blocksize=4K`). */
export const plugin: FilterPlugin = {
  name: "cow",
  summary: "copy-on-write overlay in memory: writes never reach the driver below",
  parameters,
  make: (pairs) =>
    Either.map(
      Params.decode("cow", pairs, parameters, (reader) => {
        const blockSize = reader.size("blocksize", DEFAULT_BLOCK_SIZE)
        const problem = blockSizeProblem(blockSize)
        if (problem !== undefined) throw new Params.ParameterError({ message: `cow: 'blocksize': ${problem}` })
        return blockSize
      }),
      (blockSize) => make({ blockSize })
    )
}
