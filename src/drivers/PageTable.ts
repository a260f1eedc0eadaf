/**
 * The page table of a sparse store: which pages of an export are allocated, found by
 * page index.
 *
 * Pages are grouped in chunks of {@link CHUNK} consecutive indexes, each an array of slots,
 * and only chunks holding a page exist. Finding a page is one array access once its chunk
 * is known, and the chunk of the previous access is kept at hand: the pages of one request
 * share a chunk, so a sequential write or read looks a chunk up once, where a map keyed by
 * page index hashes every page. A sparse terabyte still costs nothing: a chunk goes away
 * with its last page.
 *
 * @since 0.2.0
 */
import { keysIn } from "../SparseKeys.ts"

/** Page indexes per chunk (32 MiB of export with 32 KiB pages; a chunk's array is 8 KiB). */
export const CHUNK = 1024

/** One chunk: its slots (a page or `undefined`) and how many hold a page. */
interface Chunk<P> {
  readonly slots: Array<P | undefined>
  used: number
}

/**
 * Pages by index, with the read side of a `Map` (`get`, `has`, `size`) and the sorted
 * walk of a range that freeing, zeroing and block status need.
 *
 * @since 0.2.0
 * @category models
 */
export class PageTable<P> {
  private readonly chunks = new Map<number, Chunk<P>>()
  private count = 0
  /** The chunk of the last lookup (or `undefined` when it had none) and its key. */
  private lastKey = Number.NaN
  private last: Chunk<P> | undefined = undefined

  /** Allocated pages. */
  get size(): number {
    return this.count
  }

  /** The chunk with key `key`, if it exists. */
  private chunk(key: number): Chunk<P> | undefined {
    if (key === this.lastKey) return this.last
    const chunk = this.chunks.get(key)
    this.lastKey = key
    this.last = chunk
    return chunk
  }

  /** The page at `index`, if allocated. */
  get(index: number): P | undefined {
    const key = Math.floor(index / CHUNK)
    return this.chunk(key)?.slots[index - key * CHUNK]
  }

  /** Whether the page at `index` is allocated. */
  has(index: number): boolean {
    return this.get(index) !== undefined
  }

  /** Puts `page` at `index` (replacing any page there). */
  set(index: number, page: P): void {
    const key = Math.floor(index / CHUNK)
    let chunk = this.chunk(key)
    if (chunk === undefined) {
      chunk = { slots: new Array<P | undefined>(CHUNK), used: 0 }
      this.chunks.set(key, chunk)
      this.last = chunk
    }
    const slot = index - key * CHUNK
    if (chunk.slots[slot] === undefined) {
      chunk.used++
      this.count++
    }
    chunk.slots[slot] = page
  }

  /** Drops the page at `index`; true if there was one. */
  delete(index: number): boolean {
    const key = Math.floor(index / CHUNK)
    const chunk = this.chunk(key)
    const slot = index - key * CHUNK
    if (chunk === undefined || chunk.slots[slot] === undefined) return false
    chunk.slots[slot] = undefined
    this.count--
    if (--chunk.used === 0) {
      this.chunks.delete(key)
      this.last = undefined
    }
    return true
  }

  /** Drops every page. */
  clear(): void {
    this.chunks.clear()
    this.count = 0
    this.last = undefined
  }

  /**
   * Indexes of the allocated pages from `first` to `last - 1`, ascending. Walks the chunks
   * in the range or the existing chunks, whichever are fewer, so a huge sparse range answers
   * at once.
   */
  keysIn(first: number, last: number): Array<number> {
    const found: Array<number> = []
    if (last <= first) return found
    for (const key of keysIn(this.chunks, Math.floor(first / CHUNK), Math.floor((last - 1) / CHUNK) + 1)) {
      const slots = this.chunks.get(key)!.slots
      const base = key * CHUNK
      const to = Math.min(last - base, CHUNK)
      for (let slot = Math.max(first - base, 0); slot < to; slot++) {
        if (slots[slot] !== undefined) found.push(base + slot)
      }
    }
    return found
  }
}
