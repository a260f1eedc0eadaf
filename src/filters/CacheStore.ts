/**
 * The state of the `cache` filter, shared by every connection of a stack: the cached
 * blocks in least-recently-used order with their dirty flags, room reserved for blocks
 * being read in, ranges being zeroed or trimmed (no block of them may enter the cache
 * meanwhile), per-block locks, and the handles below of the connections open now.
 * Everything here is synchronous; the filter's I/O is in `Cache.ts`.
 *
 * @since 0.2.0
 */
import type { DriverHandle, Extent } from "../Driver.ts"
import { keysIn } from "../SparseKeys.ts"
import { blockSizeProblem, BlockLocks } from "./Blocks.ts"

/** A cached block: `blockSize` bytes (the last block of an export may use fewer). */
export interface CacheEntry {
  readonly data: Uint8Array
  /** Newer than the driver below: must be written back before it is dropped. */
  dirty: boolean
}

/** Room for one block, taken by {@link BlockCache.insert} or given back by {@link BlockCache.release}. */
export interface Slot {
  done: boolean
}

/** The blocks of a `cache` filter; exposed for tests and tools. */
export class BlockCache {
  /** Cached blocks, least recently used first. */
  private readonly entries = new Map<number, CacheEntry>()
  private reserved = 0
  private readonly busy = new Set<{ readonly first: number; readonly last: number }>()
  /** Per-block locks of every operation that waits while it works on a block. */
  readonly locks = new BlockLocks()
  /** Handles below of the connections open now (one handle may serve several): write-back uses one of them. */
  private readonly open = new Map<object, DriverHandle>()
  /** Most blocks that fit in the cache. */
  readonly capacity: number
  /** Most blocks held at once, counting those being read in (never above {@link capacity}). */
  peakBlocks = 0

  constructor(readonly blockSize: number, maxBytes: number) {
    const problem = blockSizeProblem(blockSize)
    if (problem !== undefined) throw new RangeError(`cache: ${problem}`)
    this.capacity = Math.floor(maxBytes / blockSize)
    if (this.capacity < 1) throw new RangeError(`cache: size ${maxBytes} holds no block of ${blockSize} bytes`)
  }

  /** Connections open now. */
  get connections(): number {
    return this.open.size
  }

  /** A handle below of a connection open now. */
  get anyHandle(): DriverHandle | undefined {
    for (const handle of this.open.values()) return handle
    return undefined
  }

  /** Registers the handle below of a connection that opened; the key given back unregisters it. */
  connect(handle: DriverHandle): object {
    const key = {}
    this.open.set(key, handle)
    return key
  }

  /** Unregisters a connection that closed. */
  disconnect(key: object): void {
    this.open.delete(key)
  }

  /** Bytes of cached blocks. */
  get cachedBytes(): number {
    return this.entries.size * this.blockSize
  }

  /** Cached block numbers, least recently used first. */
  get blocks(): ReadonlyArray<number> {
    return [...this.entries.keys()]
  }

  /** Dirty block numbers, ascending. */
  get dirtyBlocks(): Array<number> {
    const dirty: Array<number> = []
    for (const [index, entry] of this.entries) if (entry.dirty) dirty.push(index)
    return dirty.sort((a, b) => a - b)
  }

  /** The cached block `index` without marking it used. */
  peek(index: number): CacheEntry | undefined {
    return this.entries.get(index)
  }

  /** The cached block `index`, marked most recently used. */
  use(index: number): CacheEntry | undefined {
    const entry = this.entries.get(index)
    if (entry !== undefined) {
      this.entries.delete(index)
      this.entries.set(index, entry)
    }
    return entry
  }

  /** Cached block numbers from `first` to `last - 1`, ascending. */
  cachedIn(first: number, last: number): Array<number> {
    return keysIn(this.entries, first, last)
  }

  /** Whether a zeroing or trim in progress covers block `index`. */
  isBusy(index: number): boolean {
    for (const range of this.busy) if (index >= range.first && index < range.last) return true
    return false
  }

  /** Keeps blocks `first` to `last - 1` out of the cache until the returned function is called. */
  markBusy(first: number, last: number): () => void {
    const range = { first, last }
    this.busy.add(range)
    return () => this.busy.delete(range)
  }

  /**
   * Reserves room for one block, dropping the least recently used block if it is clean
   * and nobody works on it. Answers the block to write back first when that one is
   * dirty, and `full` when every block is in use.
   */
  reserve(): Slot | number | "full" {
    if (this.entries.size + this.reserved >= this.capacity) {
      const victim = this.victim()
      if (victim === undefined) return "full"
      if (this.entries.get(victim)!.dirty) return victim
      this.entries.delete(victim)
    }
    this.reserved++
    this.peakBlocks = Math.max(this.peakBlocks, this.entries.size + this.reserved)
    return { done: false }
  }

  /** Gives back unused room. */
  release(slot: Slot): void {
    if (slot.done) return
    slot.done = true
    this.reserved--
  }

  /** Puts a block in reserved room; false (room kept) when a zeroing or trim covers it. */
  insert(index: number, entry: CacheEntry, slot: Slot): boolean {
    if (slot.done || this.isBusy(index) || this.entries.has(index)) return false
    this.release(slot)
    this.entries.set(index, entry)
    return true
  }

  /** Forgets block `index` (the caller wrote it back first if it was dirty). */
  drop(index: number): void {
    this.entries.delete(index)
  }

  /** The least recently used block that no fiber holds. */
  private victim(): number | undefined {
    for (const index of this.entries.keys()) if (!this.locks.isHeld(index)) return index
    return undefined
  }
}

/**
 * Block status of the driver below (extents from `offset`) with the given byte ranges
 * (ascending, disjoint) reported as data: dirty blocks are not below yet.
 */
export const withData = (
  extents: ReadonlyArray<Extent>,
  offset: number,
  ranges: ReadonlyArray<{ readonly start: number; readonly end: number }>
): Array<Extent> => {
  const out: Array<{ length: number; flags: number }> = []
  const add = (length: number, flags: number) => {
    const previous = out[out.length - 1]
    if (previous !== undefined && previous.flags === flags) previous.length += length
    else if (length > 0) out.push({ length, flags })
  }
  let at = offset
  let r = 0
  for (const extent of extents) {
    const end = at + extent.length
    while (at < end) {
      while (r < ranges.length && ranges[r]!.end <= at) r++
      const range = ranges[r]
      if (range === undefined || range.start >= end) {
        add(end - at, extent.flags)
        at = end
      } else if (range.start > at) {
        add(range.start - at, extent.flags)
        at = range.start
      } else {
        const stop = Math.min(range.end, end)
        add(stop - at, 0)
        at = stop
      }
    }
  }
  return out
}
