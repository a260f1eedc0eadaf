/**
 * The overlay of the `cow` filter: the blocks written, trimmed or zeroed since the stack
 * was built, kept in memory. A block is in one of four states: `below` (not in the
 * overlay: read from the driver below), `data` (a copy of the block, modified),
 * `trimmed` (reads as zeroes, reported as a hole) or `zeroed` (reads as zeroes, reported
 * allocated). The overlay is synchronous; its {@link Overlay.locks} serialize the
 * read-modify-write of a block that must first be copied from below.
 *
 * Blocks are held one by one (a copy, or the state of a block zeroed alone), except whole
 * blocks trimmed or zeroed in one request ({@link Overlay.zeroBlocks}): those are kept as
 * spans, so that zeroing a terabyte costs one entry, not one per block. A block held one by
 * one takes precedence over a span that covers it.
 *
 * @since 0.2.0
 */
import { AllocationState } from "../protocol/Constants.ts"
import { keysIn } from "../SparseKeys.ts"
import { blockSizeProblem, BlockLocks } from "./Blocks.ts"

/** Where a block's bytes come from. */
export type BlockState = "below" | "data" | "trimmed" | "zeroed"

/** A run of bytes of one {@link BlockState}. */
export interface Run {
  readonly offset: number
  readonly length: number
  readonly state: BlockState
}

type Stored = Uint8Array | "trimmed" | "zeroed"

/** Whole blocks `[first, end)` trimmed or zeroed together. */
export interface Span {
  readonly first: number
  readonly end: number
  readonly state: "trimmed" | "zeroed"
}

/** Appends `span` to `list`, merged into the last one when they touch and share a state. */
const pushMerged = (list: Array<Span>, span: Span): void => {
  const last = list[list.length - 1]
  if (last !== undefined && last.end === span.first && last.state === span.state) {
    list[list.length - 1] = { first: last.first, end: span.end, state: span.state }
  } else list.push(span)
}

/** `base:allocation` flags of a block in the overlay. */
export const overlayFlags = (state: Exclude<BlockState, "below">): number =>
  state === "data" ? 0 : state === "zeroed" ? AllocationState.ZERO : AllocationState.HOLE | AllocationState.ZERO

/** The blocks of a `cow` overlay; exposed for tests and tools. */
export class Overlay {
  private readonly stored = new Map<number, Stored>()
  /** Disjoint spans, ascending; neighbours of one state are merged. */
  private readonly spans: Array<Span> = []
  /** Per-block locks of read-modify-write (shared by every connection). */
  readonly locks = new BlockLocks()

  constructor(readonly blockSize: number) {
    const problem = blockSizeProblem(blockSize)
    if (problem !== undefined) throw new RangeError(`cow: ${problem}`)
  }

  /** Where the bytes of block `index` come from. */
  state(index: number): BlockState {
    const stored = this.stored.get(index)
    if (stored !== undefined) return typeof stored === "string" ? stored : "data"
    return this.spanAt(index)?.state ?? "below"
  }

  /** Block numbers held one by one (written, or zeroed alone), ascending. */
  get blocks(): ReadonlyArray<number> {
    return [...this.stored.keys()].sort((a, b) => a - b)
  }

  /** The spans of whole blocks trimmed or zeroed together, ascending. */
  get zeroedSpans(): ReadonlyArray<Span> {
    return [...this.spans]
  }

  /**
   * Makes blocks `[first, end)` read as zeroes, reported as `state`: whatever the overlay
   * held of them is dropped, and one span records them all.
   */
  zeroBlocks(first: number, end: number, state: "trimmed" | "zeroed"): void {
    if (first >= end) return
    for (const index of keysIn(this.stored, first, end)) this.stored.delete(index)
    const spans = this.spans
    // spans[i, j) overlap the new one; a neighbour of its state that touches it is merged.
    const i = this.firstEndingAfter(first)
    let j = i
    while (j < spans.length && spans[j]!.first < end) j++
    let from = i
    let to = j
    const merged: Array<Span> = []
    const previous = spans[i - 1]
    if (previous !== undefined && previous.end === first && previous.state === state) {
      merged.push(previous)
      from = i - 1
    }
    const left = spans[i]
    if (left !== undefined && i < j && left.first < first) merged.push({ first: left.first, end: first, state: left.state })
    pushMerged(merged, { first, end, state })
    const right = spans[j - 1]
    if (right !== undefined && i < j && right.end > end) pushMerged(merged, { first: end, end: right.end, state: right.state })
    const next = spans[j]
    const last = merged[merged.length - 1]!
    if (next !== undefined && next.first === last.end && next.state === last.state) {
      pushMerged(merged, next)
      to = j + 1
    }
    spans.splice(from, to - from, ...merged)
  }

  /** Bytes held for copies of blocks. */
  get allocatedBytes(): number {
    let n = 0
    for (const stored of this.stored.values()) if (typeof stored !== "string") n += this.blockSize
    return n
  }

  /** Copies `length` bytes at `inBlock` of block `index` to `out` at `at`; false when the block is below. */
  copy(index: number, inBlock: number, length: number, out: Uint8Array, at: number): boolean {
    const stored = this.stored.get(index)
    if (stored === undefined) {
      if (this.spanAt(index) === undefined) return false
      out.fill(0, at, at + length)
    } else if (typeof stored === "string") out.fill(0, at, at + length)
    else out.set(stored.subarray(inBlock, inBlock + length), at)
    return true
  }

  /**
   * Writes `bytes` at `inBlock` of block `index` (`blockLength` bytes long); false, with
   * nothing changed, when the block must first be copied from below ({@link install}).
   */
  write(index: number, inBlock: number, bytes: Uint8Array, blockLength: number): boolean {
    if (inBlock === 0 && bytes.length >= blockLength) {
      const block = new Uint8Array(this.blockSize)
      block.set(bytes)
      this.stored.set(index, block)
      return true
    }
    const block = this.materialize(index)
    if (block === undefined) return false
    block.set(bytes, inBlock)
    return true
  }

  /**
   * Zeroes `length` bytes at `inBlock` of block `index`: a whole block becomes `state`, part
   * of one is zeroed in its copy; false, with nothing changed, when it must first be copied.
   */
  zero(index: number, inBlock: number, length: number, blockLength: number, state: "trimmed" | "zeroed"): boolean {
    if (inBlock === 0 && length >= blockLength) {
      this.stored.set(index, state)
      return true
    }
    const stored = this.stored.get(index)
    if (stored === undefined) return this.spanAt(index) !== undefined // zeroes already
    if (typeof stored !== "string") stored.fill(0, inBlock, inBlock + length)
    return true
  }

  /**
   * Puts the copy of block `index` read from below in the overlay, unless the overlay has
   * the block already (a write or a zeroing that came while it was read from below).
   */
  install(index: number, base: Uint8Array): void {
    if (this.state(index) !== "below") return
    const block = new Uint8Array(this.blockSize)
    block.set(base.subarray(0, this.blockSize))
    this.stored.set(index, block)
  }

  /** The runs of `[offset, offset + length)` by state, adjacent runs of a state merged. */
  runs(offset: number, length: number): Array<Run> {
    const size = this.blockSize
    const end = offset + length
    const runs: Array<{ offset: number; length: number; state: BlockState }> = []
    const add = (from: number, to: number, state: BlockState) => {
      const previous = runs[runs.length - 1]
      if (previous !== undefined && previous.state === state) previous.length += to - from
      else runs.push({ offset: from, length: to - from, state })
    }
    let at = offset
    this.segments(Math.floor(offset / size), Math.ceil(end / size), (first, last, state) => {
      const start = Math.max(first * size, offset)
      if (start > at) add(at, start, "below")
      const stop = Math.min(last * size, end)
      add(start, stop, state)
      at = stop
    })
    if (at < end) add(at, end, "below")
    return runs
  }

  /**
   * Calls `f` for the blocks of `[first, end)` the overlay holds, ascending, as runs of one
   * state: blocks held one by one, and the rest of the spans around them.
   */
  private segments(first: number, end: number, f: (from: number, to: number, state: Exclude<BlockState, "below">) => void): void {
    const singles = keysIn(this.stored, first, end)
    let next = 0
    const single = (index: number) => f(index, index + 1, this.state(index) as Exclude<BlockState, "below">)
    for (let i = this.firstEndingAfter(first); i < this.spans.length && this.spans[i]!.first < end; i++) {
      const span = this.spans[i]!
      let cursor = Math.max(span.first, first)
      const stop = Math.min(span.end, end)
      for (; next < singles.length && singles[next]! < stop; next++) {
        const index = singles[next]!
        if (index > cursor) f(cursor, index, span.state)
        single(index)
        cursor = Math.max(cursor, index + 1)
      }
      if (cursor < stop) f(cursor, stop, span.state)
    }
    for (; next < singles.length; next++) single(singles[next]!)
  }

  /** Index of the first span that ends after block `index` (the number of spans if none). */
  private firstEndingAfter(index: number): number {
    let low = 0
    let high = this.spans.length
    while (low < high) {
      const mid = (low + high) >>> 1
      if (this.spans[mid]!.end > index) high = mid
      else low = mid + 1
    }
    return low
  }

  /** The span covering block `index`, if any. */
  private spanAt(index: number): Span | undefined {
    const span = this.spans[this.firstEndingAfter(index)]
    return span !== undefined && span.first <= index ? span : undefined
  }

  /** The copy of block `index`, made of zeroes first if the block was trimmed or zeroed. */
  private materialize(index: number): Uint8Array | undefined {
    const stored = this.stored.get(index)
    if (stored !== undefined && typeof stored !== "string") return stored
    if (stored === undefined && this.spanAt(index) === undefined) return undefined
    const block = new Uint8Array(this.blockSize)
    this.stored.set(index, block)
    return block
  }
}
