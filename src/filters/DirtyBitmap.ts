/**
 * A dirty bitmap: one bit per block of `granularity` bytes, set when the block changed.
 * Sparse (chunks of {@link CHUNK_BLOCKS} blocks allocated on first mark, a fully dirty
 * chunk held as a marker), so huge exports and huge trims cost little. A bitmap marked
 * `inconsistent` (its changes since some point are unknown, after an unclean stop)
 * reports every block dirty, never less.
 *
 * @since 0.2.0
 */
import type { Extent } from "../Driver.ts"

/** Blocks per chunk of the bitmap. */
export const CHUNK_BLOCKS = 32768

/** A chunk whose every block is dirty. */
const FULL = "full" as const

type Chunk = Uint8Array | typeof FULL

/** Runs of dirty blocks, `[first block, count]`, ascending: the persisted form of a bitmap. */
export type Runs = ReadonlyArray<readonly [number, number]>

/** Number of set bits in a byte. */
const popcount = (byte: number) => {
  let n = 0
  for (let b = byte; b !== 0; b &= b - 1) n++
  return n
}

/** The dirty blocks of one bitmap. */
export class DirtyBitmap {
  private readonly chunks = new Map<number, Chunk>()

  constructor(
    /** Bytes per bit: a power of two of at least 512. */
    readonly granularity: number,
    /** Every block is reported dirty (its real changes are unknown). */
    readonly inconsistent = false
  ) {}

  /** Marks every block that `[offset, offset + length)` touches as dirty. */
  mark(offset: number, length: number): void {
    if (length <= 0) return
    this.markBlocks(Math.floor(offset / this.granularity), Math.ceil((offset + length) / this.granularity))
  }

  /** Marks blocks `first` to `last - 1` as dirty. */
  markBlocks(first: number, last: number): void {
    for (let block = first; block < last;) {
      const index = Math.floor(block / CHUNK_BLOCKS)
      const start = index * CHUNK_BLOCKS
      const end = Math.min(last, start + CHUNK_BLOCKS)
      const chunk = this.chunks.get(index)
      if (chunk !== FULL) {
        if (block === start && end === start + CHUNK_BLOCKS) this.chunks.set(index, FULL)
        else {
          const bits = chunk ?? new Uint8Array(CHUNK_BLOCKS / 8)
          for (let b = block - start; b < end - start; b++) bits[b >> 3]! |= 1 << (b & 7)
          this.chunks.set(index, bits)
        }
      }
      block = end
    }
  }

  /** Whether block `block` is dirty. */
  isDirty(block: number): boolean {
    if (this.inconsistent) return true
    const chunk = this.chunks.get(Math.floor(block / CHUNK_BLOCKS))
    if (chunk === undefined) return false
    if (chunk === FULL) return true
    const b = block % CHUNK_BLOCKS
    return (chunk[b >> 3]! & (1 << (b & 7))) !== 0
  }

  /** Number of dirty blocks (not counting `inconsistent`). */
  dirtyBlocks(): number {
    let n = 0
    for (const chunk of this.chunks.values()) {
      if (chunk === FULL) n += CHUNK_BLOCKS
      else for (const byte of chunk) n += popcount(byte)
    }
    return n
  }

  /**
   * `[offset, offset + length)` as extents of flags 1 (dirty) and 0 (clean): the range
   * rounded out to whole blocks, runs of equal blocks merged, then clipped to the range.
   */
  extents(offset: number, length: number): Array<Extent> {
    const out: Array<{ length: number; flags: number }> = []
    const end = offset + length
    for (let block = Math.floor(offset / this.granularity); block * this.granularity < end;) {
      const dirty = this.isDirty(block)
      let next = block + 1
      // Skip whole chunks at once where nothing or everything is dirty.
      while (next * this.granularity < end && this.isDirty(next) === dirty) {
        const chunk = this.inconsistent ? FULL : this.chunks.get(Math.floor(next / CHUNK_BLOCKS))
        const sameChunk = next % CHUNK_BLOCKS === 0 && (chunk === undefined ? !dirty : chunk === FULL && dirty)
        next = sameChunk ? next + CHUNK_BLOCKS : next + 1
      }
      const from = Math.max(offset, block * this.granularity)
      const to = Math.min(end, next * this.granularity)
      const flags = dirty ? 1 : 0
      const last = out[out.length - 1]
      if (last !== undefined && last.flags === flags) last.length += to - from
      else out.push({ length: to - from, flags })
      block = next
    }
    return out
  }

  /** The dirty blocks as ascending runs (without `inconsistent`). */
  runs(): Array<[number, number]> {
    const out: Array<[number, number]> = []
    const add = (first: number, count: number) => {
      const last = out[out.length - 1]
      if (last !== undefined && last[0] + last[1] === first) last[1] += count
      else out.push([first, count])
    }
    for (const index of [...this.chunks.keys()].sort((a, b) => a - b)) {
      const chunk = this.chunks.get(index)!
      const start = index * CHUNK_BLOCKS
      if (chunk === FULL) add(start, CHUNK_BLOCKS)
      else {
        for (let b = 0; b < CHUNK_BLOCKS; b++) if ((chunk[b >> 3]! & (1 << (b & 7))) !== 0) add(start + b, 1)
      }
    }
    return out
  }

  /** A bitmap from its runs. */
  static fromRuns(granularity: number, runs: Runs, inconsistent = false): DirtyBitmap {
    const bitmap = new DirtyBitmap(granularity, inconsistent)
    for (const [first, count] of runs) bitmap.markBlocks(first, first + count)
    return bitmap
  }

  /** The same dirty blocks, reported as everything dirty. */
  asInconsistent(): DirtyBitmap {
    return DirtyBitmap.fromRuns(this.granularity, this.runs(), true)
  }
}
