/**
 * Page slots carved out of large buffers (slabs), for a store that keeps many pages of one
 * size: a page is a slot number, not a buffer of its own.
 *
 * Why: a buffer per 32 KiB page is an `ArrayBuffer` per page for V8's garbage collector to
 * visit, and allocating memory outside V8's heap starts a collection every 64 MiB or so.
 * Each collection then visits every page allocated so far, so writing the Nth GiB of an
 * export cost more than the one before (measured: 0.23 s of processor time for the first
 * GiB of 32 KiB buffers, 1.43 s for the sixth; with 2 MiB slabs 0.08-0.10 s each).
 *
 * How: new slots are taken in order from the current slab (bump allocation), so the pages
 * of a sequential write lie side by side and are copied, and read, in one piece. A freed
 * slot is never handed out again: a READ reply waiting in a socket's queue may still hold
 * a view of it, and must go out with the data it was made with, never with another page's.
 * A slab whose slots are all freed is dropped (its memory goes once the last view of it is
 * gone), and one left at most half used is compacted ({@link Slabs.compact}): its pages
 * move to new slots and it is dropped. The memory held is therefore at most twice what the
 * live pages need, plus a slab or two (the current one, and a full one that lost half its
 * pages while it was current, until the next compaction).
 *
 * @since 0.2.0
 */

/** One slab: its bytes, which page each slot holds (-1: none), the next unused slot, and how many hold a page. */
interface Slab {
  readonly id: number
  readonly bytes: Uint8Array
  readonly owners: Float64Array
  next: number
  live: number
}

/**
 * Slots of `pageSize` bytes in slabs of `slotsPerSlab` slots. A slot number stays valid
 * until the slot is freed or its page is moved by {@link Slabs.compact}; slot numbers stay
 * below 2^32 (128 TiB held in 32 KiB slots).
 *
 * @since 0.2.0
 * @category models
 */
export class Slabs {
  private readonly slabs: Array<Slab | undefined> = []
  /** Ids of dropped slabs, for the next new ones. */
  private readonly freeIds: Array<number> = []
  /** The slab new slots come from. */
  private current: Slab | undefined = undefined
  /** Slabs left at most half used since the last compaction. */
  private readonly sparse = new Set<Slab>()
  private count = 0
  /** `slotsPerSlab` as a power of two: a slot's slab is `slot >>> shift`, its place in it `slot & mask`. */
  private readonly shift: number
  private readonly mask: number

  /**
   * @param pageSize bytes per slot
   * @param slotsPerSlab slots per slab, a power of two
   * @param allocate makes a zeroed slab of the given size (the store's own allocation, e.g. with huge pages)
   */
  constructor(
    readonly pageSize: number,
    readonly slotsPerSlab: number,
    private readonly allocate: (bytes: number) => Uint8Array = (bytes) => new Uint8Array(bytes)
  ) {
    this.shift = Math.log2(slotsPerSlab)
    if (!Number.isInteger(this.shift)) throw new RangeError(`slots per slab must be a power of two, not ${slotsPerSlab}`)
    this.mask = slotsPerSlab - 1
  }

  /** Slabs held. */
  get size(): number {
    return this.count
  }

  /** Bytes held in slabs. */
  get heldBytes(): number {
    return this.count * this.slotsPerSlab * this.pageSize
  }

  /** The slab holding `slot`. */
  bytesOf(slot: number): Uint8Array {
    return this.slabs[slot >>> this.shift]!.bytes
  }

  /** Where `slot` starts in its slab. */
  offsetOf(slot: number): number {
    return (slot & this.mask) * this.pageSize
  }

  /** A zeroed slot for page `owner`, never used before. */
  take(owner: number): number {
    let slab = this.current
    if (slab === undefined || slab.next === this.slotsPerSlab) {
      // A full slab that lost half its pages while it was the current one is compacted too.
      if (slab !== undefined && slab.live * 2 <= this.slotsPerSlab) this.sparse.add(slab)
      slab = this.current = this.newSlab()
    }
    const slot = slab.next++
    slab.owners[slot] = owner
    slab.live++
    return slab.id * this.slotsPerSlab + slot
  }

  /** Frees `slot`: its slab is dropped when empty, or marked for {@link compact} when at most half used. */
  release(slot: number): void {
    const slab = this.slabs[slot >>> this.shift]!
    const i = slot & this.mask
    if (slab.owners[i]! < 0) return
    slab.owners[i] = -1
    slab.live--
    if (slab.live === 0) this.drop(slab)
    else if (slab !== this.current && slab.live * 2 <= this.slotsPerSlab) this.sparse.add(slab)
  }

  /**
   * Moves the pages of the slabs left at most half used into new slots, telling `moved`
   * each page's new slot, and drops those slabs. Call after an operation that frees pages,
   * once its frees are done (so that pages about to be freed are not copied).
   */
  compact(moved: (owner: number, slot: number) => void): void {
    for (const slab of this.sparse) {
      this.sparse.delete(slab)
      if (this.slabs[slab.id] !== slab || slab === this.current || slab.live * 2 > this.slotsPerSlab) continue
      for (let i = 0; i < slab.next; i++) {
        const owner = slab.owners[i]!
        if (owner < 0) continue
        const slot = this.take(owner)
        const at = this.offsetOf(slot)
        this.bytesOf(slot).set(slab.bytes.subarray(i * this.pageSize, (i + 1) * this.pageSize), at)
        moved(owner, slot)
      }
      this.drop(slab)
    }
  }

  /** Drops every slab. */
  clear(): void {
    this.slabs.length = 0
    this.freeIds.length = 0
    this.sparse.clear()
    this.current = undefined
    this.count = 0
  }

  private newSlab(): Slab {
    const id = this.freeIds.pop() ?? this.slabs.length
    const slab: Slab = {
      id,
      bytes: this.allocate(this.slotsPerSlab * this.pageSize),
      owners: new Float64Array(this.slotsPerSlab).fill(-1),
      next: 0,
      live: 0
    }
    this.slabs[id] = slab
    this.count++
    return slab
  }

  private drop(slab: Slab): void {
    this.slabs[slab.id] = undefined
    this.freeIds.push(slab.id)
    this.sparse.delete(slab)
    if (slab === this.current) this.current = undefined
    this.count--
  }
}
