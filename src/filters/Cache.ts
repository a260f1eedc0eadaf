/**
 * The `cache` filter: a bounded block cache in memory, shared by every connection of a
 * stack, as nbdkit's cache filter.
 *
 * - Reads fill the cache; when it is full the least recently used block leaves it (a
 *   dirty one is written below first). A block nobody can make room for is read or
 *   written below directly, so the cache never holds more than `size` bytes.
 * - `writeback`: writes go to the cache and mark blocks dirty (part of a block not cached
 *   is read first); dirty blocks are written below when they leave the cache, on FLUSH
 *   (then the driver below is flushed, if it can be), when the last connection closes
 *   and when the stack closes. A FUA write goes below at once (with FUA if the driver
 *   below honours it, else followed by a flush below) before it is acknowledged.
 * - `writethrough`: writes go below at once and update the cache (whole blocks enter it);
 *   nothing is ever dirty.
 * - `unsafe`: as writeback, but FLUSH and FUA return at once without writing anything
 *   back (as nbdkit's `cache=unsafe`); eviction, the last close and the stack's close
 *   still write back.
 * - Trim and zeroing write back and drop the cached blocks they touch (no block of the
 *   range enters the cache meanwhile), then go below: zeroes are never cached.
 * - FLUSH and FUA are always offered: over a driver without flush, FLUSH writes back the
 *   dirty blocks and FUA writes go below at once. CACHE (prefetch) reads blocks into the
 *   cache. Block status is the driver below's, with dirty blocks reported as data.
 *   Multi-connection is as below; resizing is not offered.
 *
 * Parameters:
 * - size=SIZE (default 64M): the most bytes of blocks held.
 * - blocksize=SIZE (default 64K): cache granularity, a power of two from 512 to 32M.
 * - mode=writeback|writethrough|unsafe (default writeback): when writes reach the driver below.
 *
 * @since 0.2.0
 */
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import type * as Layer from "effect/Layer"
import type * as Scope from "effect/Scope"
import * as Driver from "../Driver.ts"
import { optionReplyError, type ProtocolError, protocolError } from "../Errors.ts"
import * as Params from "../Params.ts"
import type { FilterPlugin } from "../Plugin.ts"
import { blockLength, blockSizeProblem, forEachPiece, type Piece, readBelow, readBelowInto, writeBelow } from "./Blocks.ts"
import { BlockCache, type Slot, withData } from "./CacheStore.ts"

export { BlockCache } from "./CacheStore.ts"

/** When writes reach the driver below. */
export type CacheMode = "writeback" | "writethrough" | "unsafe"

/** Options of the cache filter. */
export interface CacheOptions {
  /** The most bytes of blocks held (default 64 MiB). */
  readonly size?: number | undefined
  /** Cache granularity in bytes (default 64 KiB). */
  readonly blockSize?: number | undefined
  /** Default `writeback`. */
  readonly mode?: CacheMode | undefined
}

/** Defaults of {@link CacheOptions}. */
export const defaults = { size: 64 * 1024 * 1024, blockSize: 64 * 1024, mode: "writeback" } as const

type IO = Effect.Effect<void, ProtocolError>

/** One connection's view of the cache: the shared state, the mode and the handle below. */
interface Context {
  readonly cache: BlockCache
  readonly mode: CacheMode
  readonly below: Driver.DriverHandle
}

const startOf = (ctx: Context, index: number) => index * ctx.cache.blockSize

/** Writes block `index` below if it is dirty; its lock must be held. */
const writeBackBlock = (ctx: Context, index: number, size: number): IO =>
  Effect.suspend(() => {
    const entry = ctx.cache.peek(index)
    if (entry === undefined || !entry.dirty) return Effect.void
    const data = entry.data.subarray(0, blockLength(index, ctx.cache.blockSize, size))
    return Effect.map(writeBelow(ctx.below, startOf(ctx, index), data, { fua: false }), () => {
      entry.dirty = false
    })
  })

/** Writes every dirty block below (all are tried; the first failure is reported). */
const writeBackAll = (ctx: Context): IO =>
  Effect.flatMap(ctx.below.size, (size) =>
    Effect.flatMap(
      Effect.forEach(ctx.cache.dirtyBlocks, (index) =>
        Effect.either(ctx.cache.locks.with(index, writeBackBlock(ctx, index, size)))),
      (results) => {
        const failure = results.find(Either.isLeft)
        return failure === undefined ? Effect.void : Effect.fail(failure.left)
      }
    ))

/** Writes back and flushes below, logging a failure (at disconnect and at the stack's close). */
const writeBackOnClose = (ctx: Context, why: string): Effect.Effect<void> =>
  writeBackAll(ctx).pipe(
    Effect.zipRight(ctx.below.capabilities.flush ? ctx.below.flush : Effect.void),
    Effect.catchAll((error) => Effect.logWarning(`cache: writing back dirty blocks when ${why} failed`, error))
  )

/** Room for one more block, writing back dirty blocks that leave; false when none can leave. */
const makeRoom = (ctx: Context, size: number, attempts = 8): Effect.Effect<Slot | false> =>
  Effect.suspend(() => {
    const outcome = ctx.cache.reserve()
    if (typeof outcome === "object") return Effect.succeed(outcome)
    if (outcome === "full" || attempts === 0) return Effect.succeed(false)
    return ctx.cache.locks.ifFree(outcome, writeBackBlock(ctx, outcome, size)).pipe(
      Effect.matchEffect({
        onFailure: (error) => Effect.as(Effect.logWarning("cache: writing back an evicted block failed", error), false),
        onSuccess: () => makeRoom(ctx, size, attempts - 1)
      })
    )
  })

/**
 * Runs `use` with room for block `index`, or `otherwise` when the block may not enter the
 * cache (a zeroing covers it) or no room can be made. The room is given back afterwards
 * unless `use` inserted the block.
 */
const withRoom = <A>(
  ctx: Context,
  index: number,
  size: number,
  use: (slot: Slot) => Effect.Effect<A, ProtocolError>,
  otherwise: Effect.Effect<A, ProtocolError>
) =>
  Effect.suspend(() =>
    ctx.cache.isBusy(index) ? otherwise : Effect.acquireUseRelease(
      makeRoom(ctx, size),
      (slot) => (slot === false ? otherwise : use(slot)),
      (slot) => Effect.sync(() => slot !== false && ctx.cache.release(slot))
    )
  )

/** The bytes of block `index`, read into the cache if there is room; its lock must be held. */
const load = (ctx: Context, index: number, size: number): Effect.Effect<Uint8Array | undefined, ProtocolError> =>
  Effect.suspend(() => {
    const entry = ctx.cache.use(index)
    if (entry !== undefined) return Effect.succeed(entry.data)
    const n = blockLength(index, ctx.cache.blockSize, size)
    return withRoom(ctx, index, size, (slot) =>
      Effect.map(readBelow(ctx.below, startOf(ctx, index), n), (bytes) => {
        const data = new Uint8Array(ctx.cache.blockSize)
        data.set(bytes)
        ctx.cache.insert(index, { data, dirty: false }, slot)
        return data
      }), Effect.succeed(undefined))
  })

/** Reads `[offset, offset + target.length)` into `target`: hits from the cache, misses loaded (or read past it). */
const readInto = (ctx: Context) => (offset: number, target: Uint8Array) =>
  Effect.suspend(() => {
    const misses: Array<Piece> = []
    forEachPiece(offset, target.length, ctx.cache.blockSize, (piece) => {
      const entry = ctx.cache.use(piece.index)
      if (entry === undefined) misses.push(piece)
      else target.set(entry.data.subarray(piece.inBlock, piece.inBlock + piece.length), piece.done)
    })
    if (misses.length === 0) return Effect.void
    const miss = (size: number) => (piece: Piece) =>
      ctx.cache.locks.with(
        piece.index,
        Effect.flatMap(load(ctx, piece.index, size), (block) =>
          block === undefined
            ? readBelowInto(ctx.below, offset + piece.done, target.subarray(piece.done, piece.done + piece.length))
            : Effect.sync(() => target.set(block.subarray(piece.inBlock, piece.inBlock + piece.length), piece.done)))
      )
    return Effect.flatMap(ctx.below.size, (size) => Effect.forEach(misses, miss(size), { discard: true }))
  })

/** Writes a piece into the cache as dirty (reading the rest of its block first); its lock must be held. */
const cachePiece = (ctx: Context, piece: Piece, bytes: Uint8Array, size: number): IO =>
  Effect.suspend(() => {
    const entry = ctx.cache.use(piece.index)
    if (entry !== undefined) {
      entry.data.set(bytes, piece.inBlock)
      entry.dirty = true
      return Effect.void
    }
    const start = startOf(ctx, piece.index)
    const n = blockLength(piece.index, ctx.cache.blockSize, size)
    const direct = writeBelow(ctx.below, start + piece.inBlock, bytes, { fua: false })
    return withRoom(ctx, piece.index, size, (slot) =>
      Effect.gen(function*() {
        const data = new Uint8Array(ctx.cache.blockSize)
        if (piece.inBlock > 0 || bytes.length < n) data.set(yield* readBelow(ctx.below, start, n))
        data.set(bytes, piece.inBlock)
        if (!ctx.cache.insert(piece.index, { data, dirty: true }, slot)) yield* direct
      }), direct)
  })

/** Writes back: cached blocks not locked are updated at once, the others under their locks. */
const writeBack = (ctx: Context, offset: number, data: Uint8Array): IO =>
  Effect.suspend(() => {
    const pending: Array<Piece> = []
    forEachPiece(offset, data.length, ctx.cache.blockSize, (piece) => {
      const entry = ctx.cache.locks.isHeld(piece.index) ? undefined : ctx.cache.use(piece.index)
      if (entry === undefined) return void pending.push(piece)
      entry.data.set(data.subarray(piece.done, piece.done + piece.length), piece.inBlock)
      entry.dirty = true
    })
    if (pending.length === 0) return Effect.void
    return Effect.flatMap(ctx.below.size, (size) =>
      Effect.forEach(pending, (piece) =>
        ctx.cache.locks.with(
          piece.index,
          cachePiece(ctx, piece, data.subarray(piece.done, piece.done + piece.length), size)
        ), { discard: true }))
  })

/** Writes a piece below, then updates its cached block (a whole block enters the cache clean). */
const throughPiece = (ctx: Context, piece: Piece, bytes: Uint8Array, size: number, fua: boolean): IO =>
  Effect.zipRight(
    writeBelow(ctx.below, startOf(ctx, piece.index) + piece.inBlock, bytes, { fua }),
    Effect.suspend(() => {
      const entry = ctx.cache.use(piece.index)
      if (entry !== undefined) return Effect.sync(() => entry.data.set(bytes, piece.inBlock))
      if (piece.inBlock > 0 || bytes.length < blockLength(piece.index, ctx.cache.blockSize, size)) return Effect.void
      return withRoom(ctx, piece.index, size, (slot) =>
        Effect.sync(() => {
          const data = new Uint8Array(ctx.cache.blockSize)
          data.set(bytes)
          ctx.cache.insert(piece.index, { data, dirty: false }, slot)
        }), Effect.void)
    })
  )

/** Writes through (writethrough mode, and FUA writes): below first, FUA or a flush below when asked. */
const writeThrough = (ctx: Context, offset: number, data: Uint8Array, fua: boolean): IO =>
  Effect.gen(function*() {
    const size = yield* ctx.below.size
    const fuaBelow = fua && ctx.below.capabilities.fua
    const pieces: Array<Piece> = []
    forEachPiece(offset, data.length, ctx.cache.blockSize, (piece) => void pieces.push(piece))
    for (const piece of pieces) {
      const bytes = data.subarray(piece.done, piece.done + piece.length)
      yield* ctx.cache.locks.with(piece.index, throughPiece(ctx, piece, bytes, size, fuaBelow))
    }
    if (fua && !fuaBelow && ctx.below.capabilities.flush) yield* ctx.below.flush
  })

/** Runs a trim or zeroing below after writing back and dropping the cached blocks it touches. */
const invalidating = (ctx: Context, offset: number, length: number, below: IO): IO => {
  const first = Math.floor(offset / ctx.cache.blockSize)
  const last = Math.ceil((offset + length) / ctx.cache.blockSize)
  const drop = (size: number) => (index: number) =>
    ctx.cache.locks.with(index, Effect.zipRight(writeBackBlock(ctx, index, size), Effect.sync(() => ctx.cache.drop(index))))
  return Effect.acquireUseRelease(
    Effect.sync(() => ctx.cache.markBusy(first, last)),
    () =>
      ctx.below.size.pipe(
        Effect.flatMap((size) => Effect.forEach(ctx.cache.cachedIn(first, last), drop(size), { discard: true })),
        Effect.zipRight(below)
      ),
    (done) => Effect.sync(done)
  )
}

/** Reads up to the capacity of the cache into it from `offset` (CACHE). */
const prefetch = (ctx: Context, offset: number, length: number): IO =>
  Effect.flatMap(ctx.below.size, (size) => {
    const first = Math.floor(offset / ctx.cache.blockSize)
    const last = Math.min(Math.ceil((offset + length) / ctx.cache.blockSize), first + ctx.cache.capacity)
    const indices = Array.from({ length: last - first }, (_, i) => first + i)
    return Effect.forEach(indices, (index) => ctx.cache.locks.with(index, load(ctx, index, size)), { discard: true })
  })

const blockStatus = (ctx: Context) => (offset: number, length: number) =>
  Effect.map(ctx.below.blockStatus(offset, length), (extents) => {
    const end = offset + extents.reduce((n, extent) => n + extent.length, 0)
    const blockSize = ctx.cache.blockSize
    const ranges: Array<{ start: number; end: number }> = []
    for (const index of ctx.cache.dirtyBlocks) {
      const start = Math.max(index * blockSize, offset)
      const stop = Math.min((index + 1) * blockSize, end)
      if (start >= stop) continue
      const previous = ranges[ranges.length - 1]
      if (previous !== undefined && previous.end === start) previous.end = stop
      else ranges.push({ start, end: stop })
    }
    return ranges.length === 0 ? extents : withData(extents, offset, ranges)
  })

const overrides = (ctx: Context): Driver.HandleOverrides => ({
  capabilities: (caps) => {
    const preferred = Math.max(caps.blockSize.preferred, ctx.cache.blockSize)
    return {
      ...caps,
      flush: true,
      fua: true,
      cache: true,
      resize: false,
      blockSize: { ...caps.blockSize, preferred: preferred <= caps.blockSize.maximum ? preferred : caps.blockSize.preferred }
    }
  },
  read: Driver.readByReadingInto(readInto(ctx)),
  readInto: readInto(ctx),
  write: (offset, data, options) => {
    const fua = options.fua && ctx.mode !== "unsafe"
    return ctx.mode === "writethrough" || fua ? writeThrough(ctx, offset, data, fua) : writeBack(ctx, offset, data)
  },
  flush: ctx.mode === "unsafe"
    ? Effect.void
    : Effect.zipRight(writeBackAll(ctx), ctx.below.capabilities.flush ? ctx.below.flush : Effect.void),
  trim: (offset, length, options) => invalidating(ctx, offset, length, ctx.below.trim(offset, length, options)),
  writeZeroes: (offset, length, options) =>
    options.fastZero && !ctx.below.capabilities.fastZero
      ? Effect.fail(protocolError("ENOTSUP", "cache: the driver below cannot zero fast"))
      : invalidating(ctx, offset, length, ctx.below.writeZeroes(offset, length, options)),
  cache: (offset, length) => prefetch(ctx, offset, length),
  blockStatus: blockStatus(ctx),
  resize: () => Effect.fail(protocolError("EINVAL", "cache: resizing is not supported"))
})

/**
 * Puts a cache filter with the given cache (shared by every connection) over a driver.
 * Dirty blocks left when the scope closes are written back through a connection still
 * open (with none open, the last one to close has written them back already).
 */
export const apply = (
  below: Driver.NbdDriverShape,
  cache: BlockCache,
  mode: CacheMode = defaults.mode
): Effect.Effect<Driver.NbdDriverShape, never, Scope.Scope> =>
  Effect.as(
    Effect.addFinalizer(() =>
      Effect.suspend(() => {
        const handle = cache.anyHandle
        if (handle !== undefined) return writeBackOnClose({ cache, mode, below: handle }, "the stack closed")
        const lost = cache.dirtyBlocks.length
        return lost === 0 ? Effect.void : Effect.logWarning(`cache: ${lost} dirty blocks not written back`)
      })
    ),
    Driver.filter(below, {
      name: "cache",
      open: (handle) =>
        Effect.gen(function*() {
          if (cache.blockSize < handle.capabilities.blockSize.minimum) {
            return yield* Effect.fail(optionReplyError("PLATFORM", "cache: blocksize is below the export's minimum"))
          }
          const ctx: Context = { cache, mode, below: handle }
          const key = cache.connect(handle)
          yield* Effect.addFinalizer(() =>
            Effect.ensuring(
              cache.connections === 1 ? writeBackOnClose(ctx, "the last connection closed") : Effect.void,
              Effect.sync(() => cache.disconnect(key))
            )
          )
          return overrides(ctx)
        })
    })
  )

/** The cache filter with a new, empty cache per stack (an invalid size or block size is a defect). */
export const make = (options: CacheOptions = {}): Driver.Filter => (below) =>
  Effect.suspend(() =>
    apply(
      below,
      new BlockCache(options.blockSize ?? defaults.blockSize, options.size ?? defaults.size),
      options.mode ?? defaults.mode
    )
  )

/** The cache filter as a layer over the `NbdDriver` in context. */
export const layer = (options: CacheOptions = {}): Layer.Layer<Driver.NbdDriver, never, Driver.NbdDriver> =>
  Driver.filterLayer(make(options))

const parameters: ReadonlyArray<Params.ParameterDoc> = [
  { name: "size", default: "64M", description: "the most bytes of blocks held" },
  { name: "blocksize", default: "64K", description: "cache granularity (a power of two from 512 to 32M)" },
  {
    name: "mode",
    default: "writeback",
    description: "writeback (write below on eviction and flush), writethrough (write below at once) or unsafe " +
      "(as writeback, but FLUSH and FUA write nothing back)"
  }
]

/** The cache filter by name (`--filter cache:size=256M,mode=writethrough`). */
export const plugin: FilterPlugin = {
  name: "cache",
  summary: "bounded block cache in memory (writeback, writethrough or unsafe)",
  parameters,
  make: (pairs) =>
    Either.map(
      Params.decode("cache", pairs, parameters, (reader): CacheOptions => {
        const fail = (message: string) => {
          throw new Params.ParameterError({ message: `cache: ${message}` })
        }
        const blockSize = reader.size("blocksize", defaults.blockSize)
        const problem = blockSizeProblem(blockSize)
        if (problem !== undefined) fail(`'blocksize': ${problem}`)
        const size = reader.size("size", defaults.size)
        if (size < blockSize) fail(`'size' (${size}) must hold at least one block of ${blockSize} bytes`)
        return { size, blockSize, mode: reader.choice("mode", ["writeback", "writethrough", "unsafe"], defaults.mode) }
      }),
      make
    )
}
