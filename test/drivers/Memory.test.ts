import { describe, expect, it } from "@effect/vitest"
import * as FastCheck from "effect/FastCheck"
import { HOLE_ZERO } from "../../src/Driver.ts"
import { PAGE_SIZE, SLAB_PAGES, SparseMemory } from "../../src/drivers/Memory.ts"
import { expectBytes, pattern } from "../support/Bytes.ts"

/** The bytes of `views` laid end to end (holes as zeroes). */
const flatten = (views: ReadonlyArray<Uint8Array | number>): Uint8Array =>
  Buffer.concat(views.map((piece) => (typeof piece === "number" ? new Uint8Array(piece) : piece)))

/** Applies one operation to `store` and to `model`, a flat buffer of the export's bytes. */
const apply = (store: SparseMemory, model: Uint8Array, op: string, offset: number, rawLength: number, seed: number): void => {
  const length = Math.min(rawLength, model.length - offset)
  if (op === "write") {
    const data = pattern(length, seed)
    store.write(offset, data)
    model.set(data, offset)
  } else if (op === "shrink") {
    store.resize(offset)
    model.fill(0, offset)
    store.resize(model.length)
  } else {
    store.zero(offset, length, op === "zeroKeep")
    model.fill(0, offset, offset + length)
  }
}

describe("sparse memory", () => {
  it("allocates nothing until written, and a terabyte reads as zeroes", () => {
    const store = new SparseMemory(1024 ** 4)
    expectBytes(store.read(1024 ** 4 - 4096, 4096), new Uint8Array(4096))
    expect(store.allocatedBytes).toBe(0)
    expect(store.blockStatus(0, 1024 ** 4)).toEqual([{ length: 1024 ** 4, flags: HOLE_ZERO }])
  })

  it("behaves like a flat buffer under random writes, zeroes and trims", () => {
    const size = 8 * PAGE_SIZE
    FastCheck.assert(
      FastCheck.property(
        FastCheck.array(
          FastCheck.tuple(
            FastCheck.constantFrom("write", "zero", "zeroKeep", "trim"),
            FastCheck.integer({ min: 0, max: size - 1 }),
            FastCheck.integer({ min: 1, max: 3 * PAGE_SIZE }),
            FastCheck.integer({ min: 0, max: 255 })
          ),
          { maxLength: 20 }
        ),
        (operations) => {
          const store = new SparseMemory(size)
          const model = new Uint8Array(size)
          for (const [op, offset, rawLength, seed] of operations) apply(store, model, op, offset, rawLength, seed)
          expectBytes(store.read(0, size), model)
          const extents = store.blockStatus(0, size)
          expect(extents.reduce((n, e) => n + e.length, 0)).toBe(size)
          let at = 0
          for (const extent of extents) {
            if (extent.flags === HOLE_ZERO) expectBytes(model.subarray(at, at + extent.length), new Uint8Array(extent.length))
            at += extent.length
          }
        }
      )
    )
  })

  it("views of any range, within a page or across pages and holes, hold what read and readInto return", () => {
    const size = 6 * PAGE_SIZE
    const store = new SparseMemory(size)
    store.write(PAGE_SIZE - 100, pattern(200, 1)) // across the first page boundary
    store.write(3 * PAGE_SIZE + 5, pattern(10, 2)) // inside one page
    expect(store.views(10, 0)).toEqual([])
    expect(store.views(2 * PAGE_SIZE + 7, 100)).toEqual([100]) // a hole within one page
    FastCheck.assert(
      FastCheck.property(
        FastCheck.integer({ min: 0, max: size - 1 }),
        FastCheck.integer({ min: 0, max: 2 * PAGE_SIZE }),
        (offset, rawLength) => {
          const length = Math.min(rawLength, size - offset)
          const views = store.views(offset, length)
          expect(views.every((piece) => typeof piece === "number" ? piece > 0 : piece.length > 0)).toBe(true)
          expectBytes(flatten(views), store.read(offset, length))
          const target = new Uint8Array(length).fill(0xee) // a reused buffer holds old bytes
          store.readInto(offset, target)
          expectBytes(target, flatten(views))
        }
      )
    )
    // Small writes allocate only their page; an empty one allocates nothing.
    const fresh = new SparseMemory(size)
    fresh.write(PAGE_SIZE + 1, new Uint8Array(0))
    expect(fresh.allocatedBytes).toBe(0)
    fresh.write(PAGE_SIZE + 1, pattern(4096, 3))
    expect(fresh.allocatedBytes).toBe(PAGE_SIZE)
    expectBytes(fresh.read(PAGE_SIZE, 4097), Buffer.concat([new Uint8Array(1), pattern(4096, 3)]))
  })

  it("block status starts at an unaligned offset and merges runs", () => {
    const store = new SparseMemory(16 * PAGE_SIZE)
    store.write(2 * PAGE_SIZE, new Uint8Array(2 * PAGE_SIZE).fill(1))
    expect(store.blockStatus(100, 6 * PAGE_SIZE)).toEqual([
      { length: 2 * PAGE_SIZE - 100, flags: HOLE_ZERO },
      { length: 2 * PAGE_SIZE, flags: 0 },
      { length: 2 * PAGE_SIZE + 100, flags: HOLE_ZERO }
    ])
  })

  it("shrinking drops pages and zeroes the tail, growing reads zeroes", () => {
    const store = new SparseMemory(4 * PAGE_SIZE)
    store.write(0, new Uint8Array(4 * PAGE_SIZE).fill(9))
    store.resize(PAGE_SIZE + 10)
    expect(store.pages.size).toBe(2)
    store.resize(4 * PAGE_SIZE)
    const back = store.read(0, 4 * PAGE_SIZE)
    expect(back[PAGE_SIZE + 9]).toBe(9)
    expectBytes(back.subarray(PAGE_SIZE + 10), new Uint8Array(3 * PAGE_SIZE - 10))
  })
})

describe("sparse memory pages freed and allocated again", () => {
  it("a page allocated after another was freed reads as zeroes but for what is written", () => {
    const store = new SparseMemory(1024 * PAGE_SIZE)
    store.write(0, new Uint8Array(PAGE_SIZE).fill(0xee))
    store.write(PAGE_SIZE, new Uint8Array(PAGE_SIZE).fill(0xdd))
    store.zero(0, PAGE_SIZE, false) // frees page 0
    store.write(500 * PAGE_SIZE + 7, new Uint8Array([1, 2, 3])) // allocates another page
    const page = store.read(500 * PAGE_SIZE, PAGE_SIZE)
    const expected = new Uint8Array(PAGE_SIZE)
    expected.set([1, 2, 3], 7)
    expectBytes(page, expected)
    expectBytes(store.read(0, PAGE_SIZE), new Uint8Array(PAGE_SIZE))
  })

  it("a view returned by a read keeps its bytes when its page is freed and another is written", () => {
    // Reads are sent as views of the pages: memory of a freed page must never serve another offset.
    const store = new SparseMemory(16 * PAGE_SIZE)
    store.write(0, new Uint8Array(PAGE_SIZE).fill(0x22)) // stays allocated
    store.write(PAGE_SIZE, new Uint8Array(PAGE_SIZE).fill(0x11))
    const [view] = store.views(PAGE_SIZE, PAGE_SIZE)
    store.zero(PAGE_SIZE, PAGE_SIZE, false)
    store.write(5 * PAGE_SIZE, new Uint8Array(PAGE_SIZE).fill(0xab))
    expectBytes(view as Uint8Array, new Uint8Array(PAGE_SIZE).fill(0x11))
  })

  it("freeing every page of a large export leaves no page, and the store works again", () => {
    const size = 100 * PAGE_SIZE
    const store = new SparseMemory(size)
    store.write(0, pattern(size, 3))
    expect(store.pages.size).toBe(100)
    store.zero(0, size, false)
    expect(store.pages.size).toBe(0)
    expect(store.blockStatus(0, size)).toEqual([{ length: size, flags: HOLE_ZERO }])
    store.write(0, pattern(size, 4))
    expectBytes(store.read(0, size), pattern(size, 4))
  })

  it("a view keeps its bytes when compaction moves its page and the page is written again", () => {
    const store = new SparseMemory(4 * SLAB_PAGES * PAGE_SIZE)
    store.write(0, pattern(SLAB_PAGES * PAGE_SIZE, 5)) // one full slab
    store.write(SLAB_PAGES * PAGE_SIZE, pattern(PAGE_SIZE, 6)) // the next slab, now the current one
    const [view] = store.views(7 * PAGE_SIZE, PAGE_SIZE)
    const before = Uint8Array.from(view as Uint8Array)
    store.zero(8 * PAGE_SIZE, (SLAB_PAGES - 8) * PAGE_SIZE, false) // the first slab keeps 8 pages: compacted
    expect(store.heldBytes).toBe(SLAB_PAGES * PAGE_SIZE) // its 8 pages moved into the current slab, and it was dropped
    store.write(7 * PAGE_SIZE, new Uint8Array(PAGE_SIZE).fill(0x5a))
    expectBytes(view as Uint8Array, before)
    expectBytes(store.read(0, 7 * PAGE_SIZE), pattern(SLAB_PAGES * PAGE_SIZE, 5).subarray(0, 7 * PAGE_SIZE))
    expectBytes(store.read(7 * PAGE_SIZE, PAGE_SIZE), new Uint8Array(PAGE_SIZE).fill(0x5a))
  })

  it("behaves like a flat buffer across slabs under large writes, trims, zeroes and resizes, holding at most twice what it keeps", () => {
    const pages = 5 * SLAB_PAGES
    FastCheck.assert(
      FastCheck.property(
        FastCheck.array(
          FastCheck.tuple(
            FastCheck.constantFrom("write", "write", "trim", "zeroKeep", "shrink"),
            FastCheck.integer({ min: 0, max: pages * PAGE_SIZE - 1 }),
            FastCheck.integer({ min: 1, max: 2 * SLAB_PAGES * PAGE_SIZE }),
            FastCheck.integer({ min: 0, max: 255 })
          ),
          { maxLength: 25 }
        ),
        (operations) => {
          const size = pages * PAGE_SIZE
          const store = new SparseMemory(size)
          const model = new Uint8Array(size)
          for (const [op, offset, rawLength, seed] of operations) {
            apply(store, model, op, offset, rawLength, seed)
            expect(store.heldBytes).toBeLessThanOrEqual(2 * store.allocatedBytes + 2 * SLAB_PAGES * PAGE_SIZE)
          }
          expectBytes(store.read(0, size), model)
          expectBytes(flatten(store.views(0, size)), model)
        }
      ),
      { numRuns: 60 }
    )
  })

  it("a sequential write lies in one piece per slab, and reads back as views of as many pieces", () => {
    const store = new SparseMemory(4 * SLAB_PAGES * PAGE_SIZE)
    store.write(0, pattern(2 * SLAB_PAGES * PAGE_SIZE, 9))
    const views = store.views(PAGE_SIZE / 2, SLAB_PAGES * PAGE_SIZE)
    expect(views.map((v) => (typeof v === "number" ? v : v.length))).toEqual([SLAB_PAGES * PAGE_SIZE - PAGE_SIZE / 2, PAGE_SIZE / 2])
  })
})
