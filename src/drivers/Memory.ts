/**
 * A sparse in-memory driver. Pages are allocated on first write, so a 1 TiB export
 * costs nothing until written; untouched pages read as zeroes and are reported as
 * holes. Trim and zeroing free whole pages. State is shared by every connection, so
 * the export offers multi-connection. Where the kernel offers them, new pages are backed
 * by transparent huge pages (see `HugePages.ts`; `EFFECT_NBD_HUGE_PAGES=0` turns that off),
 * which makes the first write of an export about three times faster.
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

/** A zeroed page, its memory advised to be backed by huge pages before anything touches it. */
const newPage = (): Uint8Array => {
  const page = new Uint8Array(PAGE_SIZE)
  HugePages.load()?.advise()
  return page
}

/** Options of the memory driver. */
export interface MemoryOptions {
  /** Export size in bytes. */
  readonly size: number
  /** Human-readable description of the export. */
  readonly description?: string | undefined
}

/** The sparse page store behind the driver; exposed for tests and tools. */
export class SparseMemory {
  readonly pages = new PageTable<Uint8Array>()
  constructor(public size: number) {}

  /** Bytes allocated for pages. */
  get allocatedBytes(): number {
    return this.pages.size * PAGE_SIZE
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

  read(offset: number, length: number): Uint8Array {
    const out = Buffer.allocUnsafe(length)
    this.readInto(offset, out)
    return out
  }

  /** Copies `[offset, offset + target.length)` into `target` (holes as zeroes). */
  readInto(offset: number, target: Uint8Array): void {
    SparseMemory.eachPage(offset, target.length, (index, inPage, n, done) => {
      const page = this.pages.get(index)
      if (page === undefined) target.fill(0, done, done + n)
      else target.set(page.subarray(inPage, inPage + n), done)
    })
  }

  /** The bytes of a range as views of the pages, and holes as counts of zero bytes: no copy. */
  views(offset: number, length: number): Array<Uint8Array | number> {
    const index = Math.floor(offset / PAGE_SIZE)
    const inPage = offset - index * PAGE_SIZE
    if (length > 0 && inPage + length <= PAGE_SIZE) {
      // Within one page (every small read): no walk.
      const page = this.pages.get(index)
      return [page === undefined ? length : page.subarray(inPage, inPage + length)]
    }
    const out: Array<Uint8Array | number> = []
    SparseMemory.eachPage(offset, length, (index, inPage, n) => {
      const page = this.pages.get(index)
      if (page !== undefined) return void out.push(page.subarray(inPage, inPage + n))
      const last = out.length - 1
      if (typeof out[last] === "number") out[last] = (out[last] as number) + n
      else out.push(n)
    })
    return out
  }

  /** The page at `index`, allocated if it was not. */
  private pageAt(index: number): Uint8Array {
    let page = this.pages.get(index)
    if (page === undefined) {
      page = newPage()
      this.pages.set(index, page)
    }
    return page
  }

  write(offset: number, data: Uint8Array): void {
    const index = Math.floor(offset / PAGE_SIZE)
    const inPage = offset - index * PAGE_SIZE
    // Within one page (every small write): no walk.
    if (data.length > 0 && inPage + data.length <= PAGE_SIZE) return this.pageAt(index).set(data, inPage)
    SparseMemory.eachPage(offset, data.length, (index, inPage, n, done) => {
      this.pageAt(index).set(data.subarray(done, done + n), inPage)
    })
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
      const page = this.pages.get(index)
      if (page !== undefined) page.fill(0, inPage, inPage + n)
      else this.pages.set(index, newPage())
    })
  }

  /** Zeroes the allocated pages of a range (in place: nothing is freed or allocated). */
  private clearAllocated(offset: number, length: number): void {
    const end = offset + length
    for (const index of this.pages.keysIn(Math.floor(offset / PAGE_SIZE), Math.ceil(end / PAGE_SIZE))) {
      const start = index * PAGE_SIZE
      this.pages.get(index)!.fill(0, Math.max(offset - start, 0), Math.min(end - start, PAGE_SIZE))
    }
  }

  /** Zeroes the partial pages at the ends of a range and frees the whole pages in it. */
  private free(offset: number, length: number): void {
    const end = offset + length
    const first = Math.ceil(offset / PAGE_SIZE)
    const last = Math.floor(end / PAGE_SIZE) // whole pages: [first, last)
    const clear = (from: number, to: number) => {
      const index = Math.floor(from / PAGE_SIZE)
      this.pages.get(index)?.fill(0, from - index * PAGE_SIZE, to - index * PAGE_SIZE)
    }
    if (first > last) return clear(offset, end) // within one page
    if (offset < first * PAGE_SIZE) clear(offset, first * PAGE_SIZE)
    if (end > last * PAGE_SIZE) clear(last * PAGE_SIZE, end)
    for (const index of this.pages.keysIn(first, last)) this.pages.delete(index)
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
      for (const index of this.pages.keysIn(firstDropped, Math.ceil(this.size / PAGE_SIZE))) this.pages.delete(index)
      const tail = size % PAGE_SIZE
      if (tail !== 0) this.pages.get(firstDropped - 1)?.fill(0, tail)
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
