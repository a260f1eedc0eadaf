/**
 * The overlay of the `cow` filter: the blocks written, trimmed or zeroed since the stack
 * was built, kept in memory. A block is in one of four states: `below` (not in the
 * overlay: read from the driver below), `data` (a copy of the block, modified),
 * `trimmed` (reads as zeroes, reported as a hole) or `zeroed` (reads as zeroes, reported
 * allocated). The overlay is synchronous; its {@link Overlay.locks} serialize the
 * read-modify-write of a block that must first be copied from below.
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

/** `base:allocation` flags of a block in the overlay. */
export const overlayFlags = (state: Exclude<BlockState, "below">): number =>
  state === "data" ? 0 : state === "zeroed" ? AllocationState.ZERO : AllocationState.HOLE | AllocationState.ZERO

/** The blocks of a `cow` overlay; exposed for tests and tools. */
export class Overlay {
  private readonly stored = new Map<number, Stored>()
  /** Per-block locks of read-modify-write (shared by every connection). */
  readonly locks = new BlockLocks()

  constructor(readonly blockSize: number) {
    const problem = blockSizeProblem(blockSize)
    if (problem !== undefined) throw new RangeError(`cow: ${problem}`)
  }

  /** Where the bytes of block `index` come from. */
  state(index: number): BlockState {
    const stored = this.stored.get(index)
    return stored === undefined ? "below" : typeof stored === "string" ? stored : "data"
  }

  /** Block numbers in the overlay (any state but `below`), ascending. */
  get blocks(): ReadonlyArray<number> {
    return [...this.stored.keys()].sort((a, b) => a - b)
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
    if (stored === undefined) return false
    if (typeof stored === "string") out.fill(0, at, at + length)
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
    if (stored === undefined) return false
    if (typeof stored !== "string") stored.fill(0, inBlock, inBlock + length)
    return true
  }

  /** Puts the copy of block `index` read from below in the overlay (unless the block is already there). */
  install(index: number, base: Uint8Array): void {
    if (this.stored.has(index)) return
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
    for (const index of keysIn(this.stored, Math.floor(offset / size), Math.ceil(end / size))) {
      const start = Math.max(index * size, offset)
      if (start > at) add(at, start, "below")
      const stop = Math.min((index + 1) * size, end)
      add(start, stop, this.state(index))
      at = stop
    }
    if (at < end) add(at, end, "below")
    return runs
  }

  /** The copy of block `index`, made of zeroes first if the block was trimmed or zeroed. */
  private materialize(index: number): Uint8Array | undefined {
    const stored = this.stored.get(index)
    if (stored === undefined || typeof stored !== "string") return stored
    const block = new Uint8Array(this.blockSize)
    this.stored.set(index, block)
    return block
  }
}
