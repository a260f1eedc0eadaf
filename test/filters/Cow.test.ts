import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Random from "effect/Random"
import * as Driver from "../../src/Driver.ts"
import * as MemoryDriver from "../../src/drivers/Memory.ts"
import * as Cow from "../../src/filters/Cow.ts"
import { AllocationState } from "../../src/protocol/Constants.ts"
import * as Testing from "../../src/testing/Handle.ts"
import { expectBytes, pattern, sha256 } from "../support/Bytes.ts"
import { expected, readingInto } from "./ReadingInto.ts"

const BLOCK = 4096
const SIZE = 16 * BLOCK + 1000 // the last block is short
const write = { fua: false }

/**
 * A read-only driver over a memory store whose write, trim, zeroing and resize end the
 * test with a defect; its reads yield to other fibers first, so that concurrent
 * requests interleave. `reads` counts reads.
 */
const guardedBelow = (store: MemoryDriver.SparseMemory) => {
  const counts = { reads: 0 }
  const forbidden = (what: string) => () => Effect.dieMessage(`cow wrote below: ${what}`)
  const driver = Driver.make({
    name: "guarded",
    capabilities: { readOnly: true, blockStatus: true, fua: false, multiConn: false },
    size: Effect.sync(() => store.size),
    read: (offset, length) =>
      Effect.sync(() => {
        counts.reads++
        return store.read(offset, length)
      }).pipe(Effect.zipLeft(Effect.repeatN(Effect.yieldNow(), 3))),
    write: forbidden("write"),
    trim: forbidden("trim"),
    writeZeroes: forbidden("zero"),
    resize: forbidden("resize"),
    flush: Effect.dieMessage("cow flushed below"),
    blockStatus: (offset, length) => Effect.sync(() => store.blockStatus(offset, length))
  })
  return { driver, counts }
}

/** A store of SIZE bytes filled with a pattern. */
const filledStore = () => {
  const store = new MemoryDriver.SparseMemory(SIZE)
  store.write(0, pattern(SIZE, 7))
  return store
}

const setup = (store = filledStore()) => {
  const overlay = new Cow.Overlay(BLOCK)
  const { counts, driver } = guardedBelow(store)
  return { store, overlay, counts, driver: Cow.apply(driver, overlay), belowHash: sha256(store.read(0, SIZE)) }
}

describe("cow filter", () => {
  it.scoped("reads into the server's buffers: overlay blocks from the overlay, the rest read into the buffer below", () =>
    Effect.gen(function*() {
      const below = readingInto(SIZE)
      const handle = yield* Testing.open(yield* Cow.make({ blockSize: BLOCK })(below.driver))
      yield* handle.write(BLOCK + 100, pattern(50, 1), write) // part of block 1 (copied from below first)
      yield* handle.write(3 * BLOCK, pattern(BLOCK, 2), write) // all of block 3
      yield* handle.trim(5 * BLOCK, 2 * BLOCK, write) // blocks 5 and 6
      const model = expected(0, SIZE)
      model.set(pattern(50, 1), BLOCK + 100)
      model.set(pattern(BLOCK, 2), 3 * BLOCK)
      model.fill(0, 5 * BLOCK, 7 * BLOCK)
      const before = below.calls.readInto
      for (const [offset, length] of [[0, SIZE], [BLOCK + 90, 3 * BLOCK], [5 * BLOCK - 7, 2 * BLOCK + 14], [SIZE - 999, 999]]) {
        const target = new Uint8Array(length!).fill(0xee) // a reused buffer holds old bytes
        yield* handle.readInto!(offset!, target)
        expectBytes(target, model.subarray(offset!, offset! + length!), `readInto at ${offset}`)
        expectBytes(yield* handle.read(offset!, length!), model.subarray(offset!, offset! + length!), `read at ${offset}`)
      }
      expect(below.calls.readInto).toBeGreaterThan(before)
    }))

  it.scoped("offers writing over a read-only driver, with a shared overlay", () =>
    Effect.gen(function*() {
      const { driver } = setup()
      const handle = yield* Testing.open(driver)
      expect(handle.capabilities).toMatchObject({
        readOnly: false,
        flush: true,
        fua: true,
        trim: true,
        zero: true,
        fastZero: true,
        multiConn: true,
        resize: false,
        blockStatus: true,
        cache: true
      })
      expect(handle.capabilities.blockSize.minimum).toBe(1)
      expect(handle.capabilities.blockSize.preferred).toBe(BLOCK)
      expect(handle.sync).toBeUndefined()
      const error = yield* Effect.flip(handle.resize(SIZE * 2))
      expect(error.errno).toBe("EINVAL")
    }))

  it.scoped("writes go to the overlay; partial writes copy the block from below first", () =>
    Effect.gen(function*() {
      const { belowHash, driver, overlay, store } = setup()
      const handle = yield* Testing.open(driver)
      const model = pattern(SIZE, 7)
      const data = pattern(3 * BLOCK, 99)
      yield* handle.write(BLOCK + 100, data, write) // partial, two whole blocks, partial
      model.set(data, BLOCK + 100)
      yield* handle.write(2 * BLOCK - 10, new Uint8Array([1, 2, 3]), write) // inside a block already copied
      model.set([1, 2, 3], 2 * BLOCK - 10)
      yield* handle.write(SIZE - 1000, pattern(1000, 5), write) // the whole short last block
      model.set(pattern(1000, 5), SIZE - 1000)
      expectBytes(yield* handle.read(0, SIZE), model)
      expect(overlay.blocks).toEqual([1, 2, 3, 4, 16])
      expect(sha256(store.read(0, SIZE))).toBe(belowHash)
      yield* handle.flush
      yield* handle.write(0, new Uint8Array([9]), { fua: true })
      model[0] = 9
      expectBytes(yield* handle.read(0, SIZE), model)
      expect(sha256(store.read(0, SIZE))).toBe(belowHash)
    }))

  it.scoped("trimmed and zeroed ranges read as zeroes over the data below, and report so", () =>
    Effect.gen(function*() {
      const { belowHash, driver, overlay, store } = setup()
      const handle = yield* Testing.open(driver)
      const model = pattern(SIZE, 7)
      yield* handle.trim(BLOCK, 2 * BLOCK, write)
      yield* handle.writeZeroes(4 * BLOCK, BLOCK, { fua: false, noHole: true, fastZero: true })
      yield* handle.writeZeroes(6 * BLOCK + 10, 20, { fua: false, noHole: false, fastZero: false })
      model.fill(0, BLOCK, 3 * BLOCK)
      model.fill(0, 4 * BLOCK, 5 * BLOCK)
      model.fill(0, 6 * BLOCK + 10, 6 * BLOCK + 30)
      expectBytes(yield* handle.read(0, SIZE), model)
      expect([1, 2, 4, 6].map((i) => overlay.state(i))).toEqual(["trimmed", "trimmed", "zeroed", "data"])
      expect(overlay.allocatedBytes).toBe(BLOCK)
      const { HOLE, ZERO } = AllocationState
      expect(yield* handle.blockStatus(0, 8 * BLOCK)).toEqual([
        { length: BLOCK, flags: 0 },
        { length: 2 * BLOCK, flags: HOLE | ZERO },
        { length: BLOCK, flags: 0 },
        { length: BLOCK, flags: ZERO },
        { length: 3 * BLOCK, flags: 0 }
      ])
      // Writing into a trimmed block starts from zeroes, not from below.
      yield* handle.write(BLOCK + 5, new Uint8Array([4]), write)
      model[BLOCK + 5] = 4
      expectBytes(yield* handle.read(0, SIZE), model)
      expect(sha256(store.read(0, SIZE))).toBe(belowHash)
    }))

  it.scoped("block status and allocation depth merge the overlay with the driver below", () =>
    Effect.gen(function*() {
      const store = new MemoryDriver.SparseMemory(64 * BLOCK)
      store.write(32 * BLOCK, pattern(MemoryDriver.PAGE_SIZE, 1)) // below: data in [32, 40) blocks
      const { driver, overlay } = setup(store)
      const handle = yield* Testing.open(driver)
      yield* handle.write(2 * BLOCK, new Uint8Array(BLOCK).fill(1), write)
      yield* handle.trim(33 * BLOCK, BLOCK, write)
      const { HOLE, ZERO } = AllocationState
      expect(yield* handle.blockStatus(0, 64 * BLOCK)).toEqual([
        { length: 2 * BLOCK, flags: HOLE | ZERO },
        { length: BLOCK, flags: 0 },
        { length: 29 * BLOCK, flags: HOLE | ZERO },
        { length: BLOCK, flags: 0 },
        { length: BLOCK, flags: HOLE | ZERO },
        { length: 6 * BLOCK, flags: 0 },
        { length: 24 * BLOCK, flags: HOLE | ZERO }
      ])
      const below = yield* Testing.open(MemoryDriver.fromStore(store))
      expect(yield* Cow.allocationDepth(overlay, below, 100, 64 * BLOCK - 100)).toEqual([
        { length: 2 * BLOCK - 100, depth: 0 },
        { length: BLOCK, depth: 1 },
        { length: 29 * BLOCK, depth: 0 },
        { length: BLOCK, depth: 2 },
        { length: BLOCK, depth: 1 },
        { length: 6 * BLOCK, depth: 2 },
        { length: 24 * BLOCK, depth: 0 }
      ])
    }))

  it.scoped("connections share the overlay", () =>
    Effect.gen(function*() {
      const { driver } = setup()
      const a = yield* Testing.open(driver, Testing.openRequest("", Testing.inProcessClient(1)))
      const b = yield* Testing.open(driver, Testing.openRequest("", Testing.inProcessClient(2)))
      yield* a.write(BLOCK + 3, pattern(50, 1), write)
      expectBytes(yield* b.read(BLOCK + 3, 50), pattern(50, 1))
    }))

  it.scoped("concurrent partial writes to one block all land (the copy from below is serialized)", () =>
    Effect.gen(function*() {
      const { counts, driver } = setup()
      const handle = yield* Testing.open(driver)
      const model = pattern(SIZE, 7)
      const fibers = yield* Effect.forEach(Array.from({ length: 16 }, (_, i) => i), (i) => {
        const data = pattern(100, i + 1)
        model.set(data, 3 * BLOCK + 7 + i * 200)
        return Effect.fork(handle.write(3 * BLOCK + 7 + i * 200, data, write))
      })
      yield* Fiber.joinAll(fibers)
      expectBytes(yield* handle.read(0, SIZE), model)
      expect(counts.reads).toBe(1 + 2) // one copy of block 3, then the check's reads around it
    }))

  it.scoped("random writes, trims and zeroes from concurrent fibers match a flat model", () =>
    Effect.gen(function*() {
      const { belowHash, driver, store } = setup()
      const handle = yield* Testing.open(driver)
      const model = pattern(SIZE, 7)
      // Each fiber owns the bytes i (mod 4) of every 64-byte group: requests of different
      // fibers share blocks but never bytes, so the final contents are determined.
      const lane = (i: number) =>
        Effect.gen(function*() {
          for (let op = 0; op < 40; op++) {
            const group = yield* Random.nextIntBetween(0, Math.floor(SIZE / 64) - 8)
            const kind = yield* Random.nextIntBetween(0, 3)
            for (let g = group; g < group + 8; g++) {
              const at = g * 64 + i * 16
              if (kind === 0) {
                const data = pattern(16, op * 4 + i)
                model.set(data, at)
                yield* handle.write(at, data, write)
              } else {
                model.fill(0, at, at + 16)
                yield* kind === 1
                  ? handle.trim(at, 16, write)
                  : handle.writeZeroes(at, 16, { fua: false, noHole: false, fastZero: false })
              }
            }
            const check = yield* handle.read(group * 64, 8 * 64)
            for (let g = 0; g < 8; g++) {
              const at = (group + g) * 64 + i * 16
              expectBytes(check.subarray(g * 64 + i * 16, g * 64 + i * 16 + 16), model.subarray(at, at + 16))
            }
          }
        })
      yield* Effect.forEach([0, 1, 2, 3], lane, { concurrency: "unbounded", discard: true }).pipe(
        Effect.withRandom(Random.make(42))
      )
      expectBytes(yield* handle.read(0, SIZE), model)
      expect(sha256(store.read(0, SIZE))).toBe(belowHash)
    }))

  it.scoped("trimming or zeroing a terabyte takes one span of the overlay, not an entry per block", () =>
    Effect.gen(function*() {
      const TiB = 2 ** 40
      const store = new MemoryDriver.SparseMemory(TiB)
      store.write(TiB / 2, pattern(BLOCK, 3))
      const { driver, overlay } = setup(store)
      const handle = yield* Testing.open(driver)
      yield* handle.trim(0, TiB, write)
      expect(overlay.zeroedSpans).toEqual([{ first: 0, end: TiB / BLOCK, state: "trimmed" }])
      expect(overlay.blocks).toEqual([])
      expectBytes(yield* handle.read(TiB / 2, BLOCK), new Uint8Array(BLOCK))
      // A write into the span starts from zeroes; the blocks around it stay trimmed.
      const at = TiB / 2 + 100
      yield* handle.write(at, pattern(10, 9), write)
      const expected = new Uint8Array(BLOCK)
      expected.set(pattern(10, 9), 100)
      expectBytes(yield* handle.read(TiB / 2, BLOCK), expected)
      const { HOLE, ZERO } = AllocationState
      expect(yield* handle.blockStatus(TiB / 2 - BLOCK, 3 * BLOCK)).toEqual([
        { length: BLOCK, flags: HOLE | ZERO },
        { length: BLOCK, flags: 0 },
        { length: BLOCK, flags: HOLE | ZERO }
      ])
      // Zeroing part of it again (NO_HOLE) splits the span; its partial first block is zero already.
      yield* handle.writeZeroes(10 * BLOCK + 100, 10 * BLOCK - 100, { fua: false, noHole: true, fastZero: false })
      expect(overlay.zeroedSpans).toEqual([
        { first: 0, end: 11, state: "trimmed" },
        { first: 11, end: 20, state: "zeroed" },
        { first: 20, end: TiB / BLOCK, state: "trimmed" }
      ])
      // Trimming over all of it drops the copy and merges the spans back into one.
      yield* handle.trim(0, TiB, write)
      expect(overlay.zeroedSpans).toEqual([{ first: 0, end: TiB / BLOCK, state: "trimmed" }])
      expect(overlay.blocks).toEqual([])
      expect(overlay.allocatedBytes).toBe(0)
    }))

  it.scoped("writes, trims and zeroes over whole and partial blocks match a flat model, and so does block status", () =>
    Effect.gen(function*() {
      const { belowHash, driver, overlay, store } = setup()
      const handle = yield* Testing.open(driver)
      const model = pattern(SIZE, 7)
      for (let op = 0; op < 300; op++) {
        const offset = yield* Random.nextIntBetween(0, SIZE - 1)
        const length = Math.min(SIZE - offset, yield* Random.nextIntBetween(1, 6 * BLOCK))
        const kind = yield* Random.nextIntBetween(0, 4)
        if (kind === 0) {
          const data = pattern(length, op)
          model.set(data, offset)
          yield* handle.write(offset, data, write)
        } else {
          model.fill(0, offset, offset + length)
          yield* kind === 1
            ? handle.trim(offset, length, write)
            : handle.writeZeroes(offset, length, { fua: false, noHole: kind === 2, fastZero: false })
        }
        expectBytes(yield* handle.read(0, SIZE), model)
        const spans = overlay.zeroedSpans
        for (let i = 1; i < spans.length; i++) {
          const [a, b] = [spans[i - 1]!, spans[i]!]
          expect(a.first < a.end && a.end <= b.first && !(a.end === b.first && a.state === b.state)).toBe(true)
        }
      }
      let at = 0
      for (const extent of yield* handle.blockStatus(0, SIZE)) {
        if ((extent.flags & AllocationState.ZERO) !== 0) {
          expect(model.subarray(at, at + extent.length).every((b) => b === 0)).toBe(true)
        }
        at += extent.length
      }
      expect(at).toBe(SIZE)
      expect(sha256(store.read(0, SIZE))).toBe(belowHash)
    }).pipe(Effect.withRandom(Random.make(7))))

  it("the plugin reads blocksize and refuses bad values", () => {
    expect(Either.isRight(Cow.plugin.make(new Map()))).toBe(true)
    expect(Either.isRight(Cow.plugin.make(new Map([["blocksize", "4K"]])))).toBe(true)
    const bad = Cow.plugin.make(new Map([["blocksize", "3000"]]))
    expect(Either.isLeft(bad) && bad.left.message).toMatch(/cow: 'blocksize'.*power of two/)
    const unknown = Cow.plugin.make(new Map([["size", "1M"]]))
    expect(Either.isLeft(unknown) && unknown.left.message).toMatch(/unknown parameter 'size'/)
    expect(() => new Cow.Overlay(1000)).toThrow(RangeError)
  })

  it.scoped("make builds a fresh overlay per stack, usable as a layer", () =>
    Effect.gen(function*() {
      const store = filledStore()
      const driver = yield* Driver.stack(guardedBelow(store).driver, [Cow.make()])
      const handle = yield* Testing.open(driver)
      yield* handle.write(10, pattern(10, 3), write)
      expectBytes(yield* handle.read(10, 10), pattern(10, 3))
      const other = yield* Testing.open(yield* Driver.stack(guardedBelow(store).driver, [Cow.make()]))
      expectBytes(yield* other.read(10, 10), pattern(SIZE, 7).subarray(10, 20))
      const viaLayer = yield* Effect.provide(
        Driver.NbdDriver,
        Layer.provide(Cow.layer({ blockSize: 8192 }), Layer.succeed(Driver.NbdDriver, guardedBelow(store).driver))
      )
      expect(viaLayer.name).toBe("cow+guarded")
    }))
})

describe("cow over a driver with a minimum block size", () => {
  it.scoped("CACHE and BLOCK_STATUS reach the driver below aligned to its minimum", () =>
    Effect.gen(function*() {
      const misaligned: Array<string> = []
      const strict = Driver.filter(MemoryDriver.fromStore(new MemoryDriver.SparseMemory(1024 * 1024)), {
        name: "strict",
        open: (below) => {
          const aligned = (what: string, offset: number, length: number) => {
            if (offset % 4096 !== 0 || length % 4096 !== 0) misaligned.push(`${what} ${offset}+${length}`)
          }
          return {
            capabilities: (caps) => ({ ...caps, blockSize: { ...caps.blockSize, minimum: 4096 } }),
            cache: (offset, length) => Effect.zipRight(Effect.sync(() => aligned("cache", offset, length)), below.cache(offset, length)),
            blockStatus: (offset, length) =>
              Effect.zipRight(Effect.sync(() => aligned("status", offset, length)), below.blockStatus(offset, length))
          }
        }
      })
      const handle = yield* Testing.open(yield* Cow.make()(strict))
      expect(handle.capabilities.blockSize.minimum).toBe(1)
      yield* handle.cache(512, 100)
      const extents = yield* handle.blockStatus(512, 100)
      expect(extents.reduce((n, e) => n + e.length, 0)).toBeGreaterThanOrEqual(100)
      expect(extents[0]!.flags).toBe(AllocationState.HOLE | AllocationState.ZERO)
      expect(misaligned).toEqual([])
    }))
})
