/**
 * A sparse in-memory driver. Pages are allocated on first write, so a 1 TiB export
 * costs nothing until written; untouched pages read as zeroes and are reported as
 * holes. Trim and zeroing free whole pages. State is shared by every connection, so
 * the export offers multi-connection. Pages are slots of 2 MiB slabs (`Slabs.ts`), so that
 * the garbage collector sees a few large buffers instead of one per page. Where the kernel
 * offers them, slabs are backed by transparent huge pages when a measurement of first
 * touches finds them faster (see `HugePages.ts`; `EFFECT_NBD_HUGE_PAGES=1` always, `=0` never).
 *
 * @since 0.1.0
 */
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Driver from "../Driver.ts"
import { protocolError } from "../Errors.ts"
import * as Params from "../Params.ts"
import type { DriverPlugin } from "../Plugin.ts"
import { formatSize } from "../Size.ts"
import * as HugePages from "./HugePages.ts"
import { PageTable } from "./PageTable.ts"
import { Slabs } from "./Slabs.ts"
import { parseSizeArgument } from "./SizeArgument.ts"

/** Allocation granularity in bytes. */
export const PAGE_SIZE = 32 * 1024

/** Largest export size: offsets stay exact JavaScript numbers. */
export const MAX_SIZE = Number.MAX_SAFE_INTEGER - (Number.MAX_SAFE_INTEGER % PAGE_SIZE)

/**
 * Most bytes of holes one WRITE_ZEROES with NO_HOLE allocates (the largest request nbdkit
 * and qemu send). A larger one zeroes the allocated pages of its range and leaves its holes
 * as they are, as nbdkit's memory plugin does for any size: the spec asks for provisioning
 * so that later writes cannot run out of space, and one 28-byte request must not allocate
 * gigabytes of memory.
 */
export const MAX_PROVISION = 32 * 1024 * 1024

/** Most extents in one block-status answer. */
const MAX_STATUS_EXTENTS = 1 << 16

/** Pages per slab (2 MiB of memory per slab; see `Slabs.ts`). */
export const SLAB_PAGES = 64

/** A zeroed slab, on memory backed by huge pages where they are offered and faster (see `HugePages.ts`). */
const newSlab = (bytes: number): Uint8Array => HugePages.load()?.allocate(bytes) ?? new Uint8Array(bytes)

/** Options of the memory driver. */
export interface MemoryOptions {
  /** Export size in bytes. */
  readonly size: number
  /** Human-readable description of the export. */
  readonly description?: string | undefined
}

/**
 * What {@link SparseMemory.runs} hands on: `length` bytes of the range at `done`, lying at
 * `at` in `slab`, or a hole when `slab` is `undefined`.
 */
type Run = (slab: Uint8Array | undefined, at: number, length: number, done: number) => void

/**
 * The sparse page store behind the driver; exposed for tests and tools. `pages` maps a
 * page index to the slot holding the page (see `Slabs.ts`).
 */
export class SparseMemory {
  readonly pages = new PageTable<number>()
  private readonly slabs = new Slabs(PAGE_SIZE, SLAB_PAGES, newSlab)
  /** Records a page's new slot after a compaction. */
  private readonly moved = (index: number, slot: number): void => this.pages.set(index, slot)
  constructor(public size: number) {}

  /** Bytes allocated for pages. */
  get allocatedBytes(): number {
    return this.pages.size * PAGE_SIZE
  }

  /** Bytes of memory held for pages (at least {@link allocatedBytes}: slabs are allocated whole). */
  get heldBytes(): number {
    return this.slabs.heldBytes
  }

  /** Calls `f` for each page-sized piece of `[offset, offset + length)`, with `done` bytes before it. */
  private static eachPage(
    offset: number,
    length: number,
    f: (index: number, inPage: number, n: number, done: number) => void
  ): void {
    let done = 0
    while (done < length) {
      const at = offset + done
      const index = Math.floor(at / PAGE_SIZE)
      const inPage = at - index * PAGE_SIZE
      const n = Math.min(PAGE_SIZE - inPage, length - done)
      f(index, inPage, n, done)
      done += n
    }
  }

  /**
   * Calls `f` for the runs of `[offset, offset + length)`: bytes that lie side by side in
   * one slab (pages written in order sit in consecutive slots) come as one run, and so do
   * consecutive holes. With `allocate`, holes are allocated first.
   */
  private runs(offset: number, length: number, allocate: boolean, f: Run): void {
    let slab: Uint8Array | undefined
    let at = 0
    let n = 0
    let from = 0
    SparseMemory.eachPage(offset, length, (index, inPage, size, done) => {
      const slot = allocate ? this.slotAt(index) : this.pages.get(index)
      const bytes = slot === undefined ? undefined : this.slabs.bytesOf(slot)
      const start = slot === undefined ? 0 : this.slabs.offsetOf(slot) + inPage
      if (n > 0 && bytes === slab && (bytes === undefined || start === at + n)) return void (n += size)
      if (n > 0) f(slab, at, n, from)
      slab = bytes
      at = start
      n = size
      from = done
    })
    if (n > 0) f(slab, at, n, from)
  }

  read(offset: number, length: number): Uint8Array {
    const out = Buffer.allocUnsafe(length)
    this.readInto(offset, out)
    return out
  }

  /** Copies `[offset, offset + target.length)` into `target` (holes as zeroes). */
  readInto(offset: number, target: Uint8Array): void {
    this.runs(offset, target.length, false, (slab, at, n, done) => {
      if (slab === undefined) target.fill(0, done, done + n)
      else target.set(slab.subarray(at, at + n), done)
    })
  }

  /** The bytes of a range as views of the pages, and holes as counts of zero bytes: no copy. */
  views(offset: number, length: number): Array<Uint8Array | number> {
    const index = Math.floor(offset / PAGE_SIZE)
    const inPage = offset - index * PAGE_SIZE
    if (length > 0 && inPage + length <= PAGE_SIZE) {
      // Within one page (every small read): no walk.
      const slot = this.pages.get(index)
      if (slot === undefined) return [length]
      const at = this.slabs.offsetOf(slot) + inPage
      return [this.slabs.bytesOf(slot).subarray(at, at + length)]
    }
    const out: Array<Uint8Array | number> = []
    this.runs(offset, length, false, (slab, at, n) => void out.push(slab === undefined ? n : slab.subarray(at, at + n)))
    return out
  }

  /** The slot of the page at `index`, allocated if it was not. */
  private slotAt(index: number): number {
    let slot = this.pages.get(index)
    if (slot === undefined) {
      slot = this.slabs.take(index)
      this.pages.set(index, slot)
    }
    return slot
  }

  /** Frees the page at `index`, if allocated (call {@link compact} once the operation's frees are done). */
  private drop(index: number): void {
    const slot = this.pages.get(index)
    if (slot === undefined) return
    this.pages.delete(index)
    this.slabs.release(slot)
  }

  /** Moves the pages of slabs left at most half used (see `Slabs.ts`). */
  private compact(): void {
    this.slabs.compact(this.moved)
  }

  /** Zeroes `[from, to)` of the page at `index` in place, if allocated. */
  private clearIn(index: number, from: number, to: number): void {
    const slot = this.pages.get(index)
    if (slot === undefined) return
    const at = this.slabs.offsetOf(slot)
    this.slabs.bytesOf(slot).fill(0, at + from, at + to)
  }

  write(offset: number, data: Uint8Array): void {
    const index = Math.floor(offset / PAGE_SIZE)
    const inPage = offset - index * PAGE_SIZE
    // Within one page (every small write): no walk.
    if (data.length > 0 && inPage + data.length <= PAGE_SIZE) {
      const slot = this.slotAt(index)
      return this.slabs.bytesOf(slot).set(data, this.slabs.offsetOf(slot) + inPage)
    }
    this.runs(offset, data.length, true, (slab, at, n, done) => slab!.set(data.subarray(done, done + n), at))
  }

  /**
   * Zeroes a range; whole pages are freed unless `keepAllocated`, which allocates the
   * range's holes too when it is at most {@link MAX_PROVISION} bytes. Freeing, and zeroing
   * a larger range, visit the allocated pages, not the range, so zeroing a sparse terabyte
   * is instant.
   */
  zero(offset: number, length: number, keepAllocated: boolean): void {
    if (!keepAllocated) return this.free(offset, length)
    if (length > MAX_PROVISION) return this.clearAllocated(offset, length)
    SparseMemory.eachPage(offset, length, (index, inPage, n) => {
      if (this.pages.has(index)) this.clearIn(index, inPage, inPage + n)
      else this.slotAt(index)
    })
  }

  /** Zeroes the allocated pages of a range (in place: nothing is freed or allocated). */
  private clearAllocated(offset: number, length: number): void {
    const end = offset + length
    for (const index of this.pages.keysIn(Math.floor(offset / PAGE_SIZE), Math.ceil(end / PAGE_SIZE))) {
      const start = index * PAGE_SIZE
      this.clearIn(index, Math.max(offset - start, 0), Math.min(end - start, PAGE_SIZE))
    }
  }

  /** Zeroes the partial pages at the ends of a range and frees the whole pages in it. */
  private free(offset: number, length: number): void {
    const end = offset + length
    const first = Math.ceil(offset / PAGE_SIZE)
    const last = Math.floor(end / PAGE_SIZE) // whole pages: [first, last)
    const clear = (from: number, to: number) => {
      const index = Math.floor(from / PAGE_SIZE)
      this.clearIn(index, from - index * PAGE_SIZE, to - index * PAGE_SIZE)
    }
    if (first > last) return clear(offset, end) // within one page
    if (offset < first * PAGE_SIZE) clear(offset, first * PAGE_SIZE)
    if (end > last * PAGE_SIZE) clear(last * PAGE_SIZE, end)
    for (const index of this.pages.keysIn(first, last)) this.drop(index)
    this.compact()
  }

  /** Frees every page. */
  clear(): void {
    this.pages.clear()
    this.slabs.clear()
  }

  /**
   * Allocation runs from `offset`, covering at least one byte and at most `length`.
   * Walks the allocated pages, not the range, so a sparse terabyte answers at once;
   * stops after {@link MAX_STATUS_EXTENTS} extents (the client asks again for the rest).
   */
  blockStatus(offset: number, length: number): Array<Driver.Extent> {
    const end = offset + length
    const first = Math.floor(offset / PAGE_SIZE)
    const last = Math.ceil(end / PAGE_SIZE)
    const allocated = this.pages.keysIn(first, last)
    const extents: Array<{ length: number; flags: number }> = []
    const add = (from: number, to: number, flags: number) => {
      const previous = extents.at(-1)
      if (previous !== undefined && previous.flags === flags) previous.length += to - from
      else extents.push({ length: to - from, flags })
    }
    let at = offset
    for (const index of allocated) {
      if (extents.length >= MAX_STATUS_EXTENTS) return extents
      const pageStart = Math.max(index * PAGE_SIZE, offset)
      if (pageStart > at) add(at, pageStart, Driver.HOLE_ZERO)
      const pageEnd = Math.min((index + 1) * PAGE_SIZE, end)
      add(pageStart, pageEnd, 0)
      at = pageEnd
    }
    if (at < end) add(at, end, Driver.HOLE_ZERO)
    return extents
  }

  resize(size: number): void {
    if (size < this.size) {
      const firstDropped = Math.ceil(size / PAGE_SIZE)
      for (const index of this.pages.keysIn(firstDropped, Math.ceil(this.size / PAGE_SIZE))) this.drop(index)
      const tail = size % PAGE_SIZE
      if (tail !== 0) this.clearIn(firstDropped - 1, tail, PAGE_SIZE)
      this.compact()
    }
    this.size = size
  }
}

/** Makes a memory driver over a new, empty store. */
export const make = (options: MemoryOptions): Effect.Effect<Driver.NbdDriverShape> =>
  Effect.sync(() => fromStore(new SparseMemory(options.size), options.description))

/** Makes a memory driver over an existing store. */
export const fromStore = (store: SparseMemory, description?: string): Driver.NbdDriverShape =>
  Driver.make({
    name: "memory",
    description,
    capabilities: { fua: true, fastZero: true, multiConn: true, blockStatus: true },
    size: Effect.sync(() => store.size),
    read: (offset, length) => Effect.sync(() => store.read(offset, length)),
    // The Effect path (filters that replace the fast path, tracing) copies into the server's buffers.
    readInto: (offset, target) => Effect.sync(() => store.readInto(offset, target)),
    write: (offset, data) => Effect.sync(() => store.write(offset, data)),
    // `write` copies into the pages: a payload gathered on the Effect path goes into a pooled buffer.
    writeCopies: true,
    flush: Effect.void,
    trim: (offset, length) => Effect.sync(() => store.zero(offset, length, false)),
    writeZeroes: (offset, length, options) => Effect.sync(() => store.zero(offset, length, options.noHole)),
    blockStatus: (offset, length) => Effect.sync(() => store.blockStatus(offset, length)),
    sync: {
      size: () => store.size,
      read: (offset, length) => store.views(offset, length),
      write: (offset, data) => store.write(offset, data)
    },
    resize: (size) =>
      size > MAX_SIZE
        ? Effect.fail(protocolError("ENOSPC", `size ${size} exceeds the memory driver's maximum ${MAX_SIZE}`))
        : Effect.sync(() => store.resize(size))
  })

/** A layer providing a memory driver. */
export const layer = (options: MemoryOptions): Layer.Layer<Driver.NbdDriver> =>
  Layer.effect(Driver.NbdDriver, make(options))

/** The driver by name, for the command line: `memory 1G`. */
export const plugin: DriverPlugin = {
  name: "memory",
  summary: "a sparse in-memory disk (pages allocated on first write)",
  argument: { name: "SIZE", description: "export size, e.g. 1G, 512M, 1T (sparse: costs nothing until written)" },
  parameters: [],
  make: (argument, pairs) =>
    Either.flatMap(
      Params.decode("memory", pairs, [], () => argument),
      (text) =>
        Either.map(
          parseSizeArgument("memory", text, MAX_SIZE),
          (size) => make({ size, description: `${formatSize(size)} in-memory export` })
        )
    )
}
