import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Random from "effect/Random"
import * as Scope from "effect/Scope"
import * as Driver from "../../src/Driver.ts"
import { protocolError } from "../../src/Errors.ts"
import * as MemoryDriver from "../../src/drivers/Memory.ts"
import * as Cache from "../../src/filters/Cache.ts"
import { AllocationState } from "../../src/protocol/Constants.ts"
import * as Testing from "../../src/testing/Handle.ts"
import { expectBytes, pattern } from "../support/Bytes.ts"

const BLOCK = 4096
const SIZE = 32 * BLOCK + 1000 // the last block is short
const plain = { fua: false }

interface BelowOptions {
  readonly fua?: boolean
  readonly flush?: boolean
  /** Yield to other fibers inside every read and write, so that requests interleave. */
  readonly slow?: boolean
}

/** A memory driver that records what reaches it; `failWrites` makes writes fail with EIO. */
const recordingBelow = (store: MemoryDriver.SparseMemory, options: BelowOptions = {}) => {
  const log = {
    reads: 0,
    writes: [] as Array<{ offset: number; length: number; fua: boolean }>,
    flushes: 0,
    failWrites: false
  }
  const pause = options.slow === true ? Effect.repeatN(Effect.yieldNow(), 2) : Effect.void
  const driver = Driver.make({
    name: "recording",
    capabilities: { fua: options.fua ?? false, fastZero: true, blockStatus: true, multiConn: false },
    size: Effect.sync(() => store.size),
    read: (offset, length) =>
      Effect.zipRight(
        pause,
        Effect.sync(() => {
          log.reads++
          return store.read(offset, length)
        })
      ),
    // The payload is taken when the write starts and lands after the pause, as with real I/O.
    write: (offset, data, { fua }) =>
      Effect.suspend(() => {
        if (log.failWrites) return Effect.fail(protocolError("EIO", "disk on fire"))
        const copy = data.slice()
        return Effect.zipRight(
          pause,
          Effect.sync(() => {
            log.writes.push({ offset, length: data.length, fua })
            store.write(offset, copy)
          })
        )
      }),
    ...(options.flush === false ? {} : { flush: Effect.sync(() => void log.flushes++) }),
    trim: (offset, length) => Effect.zipRight(pause, Effect.sync(() => store.zero(offset, length, false))),
    writeZeroes: (offset, length, { noHole }) => Effect.zipRight(pause, Effect.sync(() => store.zero(offset, length, noHole))),
    blockStatus: (offset, length) => Effect.sync(() => store.blockStatus(offset, length))
  })
  return { driver, log }
}

const setup = (options: Cache.CacheOptions & BelowOptions & { readonly blocks?: number } = {}) =>
  Effect.gen(function*() {
    const store = new MemoryDriver.SparseMemory(SIZE)
    const { driver: below, log } = recordingBelow(store, options)
    const cache = new Cache.BlockCache(BLOCK, (options.blocks ?? 4) * BLOCK)
    const driver = yield* Cache.apply(below, cache, options.mode)
    return { store, log, cache, driver }
  })

describe("cache filter", () => {
  it.scoped("offers FLUSH and FUA over a driver without them, the rest as below", () =>
    Effect.gen(function*() {
      const { driver } = yield* setup({ flush: false })
      const handle = yield* Testing.open(driver)
      expect(handle.capabilities).toMatchObject({
        readOnly: false,
        flush: true,
        fua: true,
        cache: true,
        resize: false,
        multiConn: false,
        blockStatus: true,
        fastZero: true
      })
      expect(handle.capabilities.blockSize.preferred).toBe(BLOCK)
      expect(handle.sync).toBeUndefined()
      yield* handle.write(0, pattern(10, 1), plain)
      yield* handle.flush // writes back only: there is no flush below
      expect((yield* Effect.flip(handle.resize(2 * SIZE))).errno).toBe("EINVAL")
    }))

  it.scoped("reads fill the cache; the least recently used block leaves it", () =>
    Effect.gen(function*() {
      const { cache, driver, log, store } = yield* setup({ blocks: 2 })
      store.write(0, pattern(SIZE, 3))
      const handle = yield* Testing.open(driver)
      const readBlock = (i: number) =>
        Effect.map(handle.read(i * BLOCK + 10, 100), (bytes) => expectBytes(bytes, pattern(SIZE, 3).subarray(i * BLOCK + 10, i * BLOCK + 110)))
      yield* readBlock(0)
      yield* readBlock(0)
      expect(log.reads).toBe(1)
      yield* readBlock(1)
      yield* readBlock(0)
      expect(log.reads).toBe(2)
      yield* readBlock(2)
      expect(cache.blocks).toEqual([0, 2])
      yield* readBlock(1)
      expect(log.reads).toBe(4)
      expectBytes(yield* handle.read(SIZE - 1500, 1500), pattern(SIZE, 3).subarray(SIZE - 1500))
      expect(cache.peakBlocks).toBe(2)
      yield* handle.cache(5 * BLOCK, 10 * BLOCK) // prefetches no more than fits
      expect(cache.blocks).toEqual([5, 6])
    }))

  it.scoped("reads into the server's buffers as reads do: hits, loaded misses, and misses past a full cache", () =>
    Effect.gen(function*() {
      const { driver, store } = yield* setup({ blocks: 2 })
      store.write(0, pattern(SIZE, 5))
      const handle = yield* Testing.open(driver)
      yield* handle.write(3 * BLOCK + 7, pattern(100, 6), plain) // dirty in the cache, not below yet
      const model = pattern(SIZE, 5)
      model.set(pattern(100, 6), 3 * BLOCK + 7)
      for (const [offset, length] of [[3 * BLOCK, BLOCK], [2 * BLOCK + 50, 5 * BLOCK], [0, SIZE], [SIZE - 1500, 1500]]) {
        const target = new Uint8Array(length!).fill(0xee) // a reused buffer holds old bytes
        yield* handle.readInto!(offset!, target)
        expectBytes(target, model.subarray(offset!, offset! + length!), `readInto at ${offset}`)
      }
    }))

  it.scoped("writeback: writes stay in the cache until FLUSH; partial blocks are read first", () =>
    Effect.gen(function*() {
      const { cache, driver, log, store } = yield* setup()
      store.write(3 * BLOCK, pattern(BLOCK, 9))
      const handle = yield* Testing.open(driver)
      yield* handle.write(3 * BLOCK + 100, pattern(50, 1), plain)
      yield* handle.write(10 * BLOCK, pattern(BLOCK, 2), plain)
      expect(log.writes).toEqual([])
      expect(log.reads).toBe(1) // block 3 only: block 10 was written whole
      expect(cache.dirtyBlocks).toEqual([3, 10])
      const expected = pattern(BLOCK, 9)
      expected.set(pattern(50, 1), 100)
      expectBytes(yield* handle.read(3 * BLOCK, BLOCK), expected)
      expectBytes(store.read(3 * BLOCK, BLOCK), pattern(BLOCK, 9))
      // Dirty blocks are data even where the driver below has a hole.
      const { HOLE, ZERO } = AllocationState
      expect(yield* handle.blockStatus(9 * BLOCK, 3 * BLOCK)).toEqual([
        { length: BLOCK, flags: HOLE | ZERO },
        { length: BLOCK, flags: 0 },
        { length: BLOCK, flags: HOLE | ZERO }
      ])
      yield* handle.flush
      expect(log.flushes).toBe(1)
      expect(cache.dirtyBlocks).toEqual([])
      expectBytes(store.read(3 * BLOCK, BLOCK), expected)
      expectBytes(store.read(10 * BLOCK, BLOCK), pattern(BLOCK, 2))
    }))

  it.scoped("writeback: a FUA write reaches the driver below before it is acknowledged", () =>
    Effect.gen(function*() {
      const withFua = yield* setup({ fua: true })
      const a = yield* Testing.open(withFua.driver)
      yield* a.write(BLOCK + 7, pattern(3000, 4), { fua: true })
      expectBytes(withFua.store.read(BLOCK + 7, 3000), pattern(3000, 4))
      expect(withFua.log.writes).toEqual([{ offset: BLOCK + 7, length: 3000, fua: true }])
      expect(withFua.log.flushes).toBe(0)

      const withFlush = yield* setup({ fua: false })
      const b = yield* Testing.open(withFlush.driver)
      yield* b.write(BLOCK, pattern(BLOCK, 5), plain) // dirty, then overwritten in part with FUA
      yield* b.write(BLOCK + 100, pattern(10, 6), { fua: true })
      expect(withFlush.log.flushes).toBe(1)
      expectBytes(withFlush.store.read(BLOCK + 100, 10), pattern(10, 6))
      expect(withFlush.cache.dirtyBlocks).toEqual([1]) // the rest of the block is still only cached
      const expected = pattern(BLOCK, 5)
      expected.set(pattern(10, 6), 100)
      expectBytes(yield* b.read(BLOCK, BLOCK), expected)
      yield* b.flush
      expectBytes(withFlush.store.read(BLOCK, BLOCK), expected)
    }))

  it.scoped("writeback: an evicted dirty block is written below before it leaves", () =>
    Effect.gen(function*() {
      const { cache, driver, log, store } = yield* setup({ blocks: 2 })
      const handle = yield* Testing.open(driver)
      yield* handle.write(0, pattern(BLOCK, 1), plain)
      yield* handle.write(BLOCK, pattern(BLOCK, 2), plain)
      expect(log.writes).toEqual([])
      yield* handle.write(2 * BLOCK, pattern(BLOCK, 3), plain)
      expect(log.writes).toEqual([{ offset: 0, length: BLOCK, fua: false }])
      expectBytes(store.read(0, BLOCK), pattern(BLOCK, 1))
      expect(cache.blocks).toEqual([1, 2])
      yield* handle.read(10 * BLOCK, 1) // a read evicts too
      expectBytes(store.read(BLOCK, BLOCK), pattern(BLOCK, 2))
      expect(cache.dirtyBlocks).toEqual([2])
    }))

  it.scoped("writethrough: writes reach the driver below at once and whole blocks are cached clean", () =>
    Effect.gen(function*() {
      const { cache, driver, log, store } = yield* setup({ mode: "writethrough", fua: false })
      const handle = yield* Testing.open(driver)
      yield* handle.write(BLOCK - 10, pattern(BLOCK + 20, 1), plain)
      expectBytes(store.read(BLOCK - 10, BLOCK + 20), pattern(BLOCK + 20, 1))
      expect(cache.blocks).toEqual([1])
      expect(cache.dirtyBlocks).toEqual([])
      expectBytes(yield* handle.read(BLOCK, BLOCK), pattern(BLOCK + 20, 1).subarray(10, BLOCK + 10))
      expect(log.reads).toBe(0)
      yield* handle.write(0, pattern(5, 2), { fua: true })
      expect(log.flushes).toBe(1)
      yield* handle.flush
      expect(log.flushes).toBe(2)
    }))

  it.effect("unsafe: FLUSH and FUA write nothing back; closing the stack does", () =>
    Effect.gen(function*() {
      const stackScope = yield* Scope.make()
      const store = new MemoryDriver.SparseMemory(SIZE)
      const { driver: below, log } = recordingBelow(store, { fua: true })
      const cache = new Cache.BlockCache(BLOCK, 4 * BLOCK)
      const driver = yield* Scope.extend(Cache.apply(below, cache, "unsafe"), stackScope)
      const clientScope = yield* Scope.make()
      const handle = yield* Scope.extend(Testing.open(driver), clientScope)
      yield* handle.write(0, pattern(100, 1), plain)
      yield* handle.write(BLOCK, pattern(100, 2), { fua: true })
      yield* handle.flush
      expect(log.writes).toEqual([])
      expect(log.flushes).toBe(0)
      yield* Scope.close(stackScope, Exit.void) // the client is still connected: written back through it
      expectBytes(store.read(0, 100), pattern(100, 1))
      expectBytes(store.read(BLOCK, 100), pattern(100, 2))
      expect(log.flushes).toBe(1)
      yield* Scope.close(clientScope, Exit.void)
    }))

  it.effect("dirty blocks are written back when the last connection closes", () =>
    Effect.gen(function*() {
      const store = new MemoryDriver.SparseMemory(SIZE)
      const { driver: below } = recordingBelow(store)
      const cache = new Cache.BlockCache(BLOCK, 4 * BLOCK)
      const driver = yield* Cache.apply(below, cache, "unsafe")
      const first = yield* Scope.make()
      const second = yield* Scope.make()
      const a = yield* Scope.extend(Testing.open(driver), first)
      yield* Scope.extend(Testing.open(driver), second)
      yield* a.write(0, pattern(100, 1), plain)
      yield* Scope.close(second, Exit.void)
      expectBytes(store.read(0, 100), new Uint8Array(100))
      expect(cache.connections).toBe(1)
      yield* Scope.close(first, Exit.void)
      expectBytes(store.read(0, 100), pattern(100, 1))
      expect(cache.connections).toBe(0)
    }).pipe(Effect.scoped))

  it.scoped("trim and zeroing write back and drop the blocks they touch, then go below", () =>
    Effect.gen(function*() {
      const { cache, driver, store } = yield* setup()
      const handle = yield* Testing.open(driver)
      yield* handle.write(0, pattern(3 * BLOCK, 1), plain)
      yield* handle.writeZeroes(BLOCK - 100, BLOCK + 200, { fua: false, noHole: false, fastZero: false })
      const model = pattern(3 * BLOCK, 1)
      model.fill(0, BLOCK - 100, 2 * BLOCK + 100)
      expectBytes(yield* handle.read(0, 3 * BLOCK), model)
      expectBytes(store.read(0, 3 * BLOCK), model)
      yield* handle.trim(2 * BLOCK, BLOCK, plain)
      model.fill(0, 2 * BLOCK, 3 * BLOCK)
      expect(cache.blocks).toEqual([0, 1])
      expectBytes(yield* handle.read(0, 3 * BLOCK), model)
      expect(cache.dirtyBlocks).toEqual([])
    }))

  it.scoped("FLUSH fails while a dirty block cannot be written back, and keeps it", () =>
    Effect.gen(function*() {
      const { cache, driver, log, store } = yield* setup()
      const handle = yield* Testing.open(driver)
      yield* handle.write(BLOCK, pattern(BLOCK, 1), plain)
      log.failWrites = true
      expect((yield* Effect.flip(handle.flush)).errno).toBe("EIO")
      expect((yield* Effect.flip(handle.write(0, pattern(10, 2), { fua: true }))).errno).toBe("EIO")
      expect(cache.dirtyBlocks).toEqual([1])
      log.failWrites = false
      yield* handle.flush
      expectBytes(store.read(BLOCK, BLOCK), pattern(BLOCK, 1))
    }))

  for (const mode of ["writeback", "writethrough", "unsafe"] as const) {
    it.scoped(`${mode}: concurrent random requests match a flat model, in bounded memory`, () =>
      Effect.gen(function*() {
        const { cache, driver, log, store } = yield* setup({ mode, blocks: 3, slow: true, fua: false })
        const client = yield* Scope.make()
        const handle = yield* Scope.extend(Testing.open(driver), client)
        const model = new Uint8Array(SIZE)
        // Each fiber owns the bytes i (mod 4) of every 256-byte group: requests of
        // different fibers share blocks but never bytes, so every read is determined.
        // They work in the first 8 blocks, with room for 3 in the cache.
        const lane = (i: number) =>
          Effect.gen(function*() {
            for (let op = 0; op < 60; op++) {
              const group = yield* Random.nextIntBetween(0, Math.floor(8 * BLOCK / 256) - 24)
              const kind = yield* Random.nextIntBetween(0, 7)
              if (kind === 6) yield* handle.flush
              for (let g = group; g < group + 24; g += 3) {
                const at = g * 256 + i * 64
                if (kind <= 2) {
                  const data = pattern(64, op * 4 + i)
                  model.set(data, at)
                  yield* handle.write(at, data, { fua: kind === 2 })
                } else if (kind === 3) {
                  model.fill(0, at, at + 64)
                  yield* handle.writeZeroes(at, 64, { fua: false, noHole: false, fastZero: false })
                } else if (kind === 4) {
                  model.fill(0, at, at + 64)
                  yield* handle.trim(at, 64, plain)
                }
              }
              const check = yield* handle.read(group * 256, 24 * 256)
              for (let g = 0; g < 24; g += 3) {
                const at = (group + g) * 256 + i * 64
                expectBytes(check.subarray(g * 256 + i * 64, g * 256 + i * 64 + 64), model.subarray(at, at + 64))
              }
              expect(cache.cachedBytes).toBeLessThanOrEqual(3 * BLOCK)
            }
          })
        yield* Effect.forEach([0, 1, 2, 3], lane, { concurrency: "unbounded", discard: true }).pipe(
          Effect.withRandom(Random.make(`${mode}-7`))
        )
        expect(cache.peakBlocks).toBeLessThanOrEqual(cache.capacity)
        expectBytes(yield* handle.read(0, SIZE), model)
        const writes = log.writes.length
        yield* handle.flush
        if (mode === "unsafe") expect(log.writes.length).toBe(writes)
        else expectBytes(store.read(0, SIZE), model)
        yield* Scope.close(client, Exit.void) // the last connection closes: written back in every mode
        expectBytes(store.read(0, SIZE), model)
      }))
  }

  it.scoped("the plugin and the layer build a fresh cache per stack", () =>
    Effect.gen(function*() {
      const store = new MemoryDriver.SparseMemory(SIZE)
      const filter = Either.getOrThrow(Cache.plugin.make(new Map([["size", "64K"], ["mode", "writethrough"]])))
      const driver = yield* Driver.stack(recordingBelow(store).driver, [filter])
      expect(driver.name).toBe("cache+recording")
      const handle = yield* Testing.open(driver)
      yield* handle.write(100, pattern(10, 1), plain)
      expectBytes(store.read(100, 10), pattern(10, 1))
      yield* Effect.gen(function*() {
        const other = yield* Effect.flatMap(Driver.NbdDriver, (driver) => Testing.open(driver))
        yield* other.write(0, pattern(10, 2), plain)
        expectBytes(store.read(0, 10), new Uint8Array(10)) // writeback by default
        yield* other.flush
        expectBytes(store.read(0, 10), pattern(10, 2))
      }).pipe(Effect.provide(
        Layer.provide(Cache.layer({ size: 1024 * 1024 }), Layer.succeed(Driver.NbdDriver, recordingBelow(store).driver))
      ))
    }))

  it("the plugin reads size, blocksize and mode, and refuses bad values", () => {
    expect(Either.isRight(Cache.plugin.make(new Map()))).toBe(true)
    const ok = Cache.plugin.make(new Map([["size", "1M"], ["blocksize", "4K"], ["mode", "unsafe"]]))
    expect(Either.isRight(ok)).toBe(true)
    const message = (pairs: Array<[string, string]>) => {
      const result = Cache.plugin.make(new Map(pairs))
      return Either.isLeft(result) ? result.left.message : "accepted"
    }
    expect(message([["mode", "sometimes"]])).toMatch(/'mode' must be one of writeback, writethrough, unsafe/)
    expect(message([["blocksize", "1000"]])).toMatch(/'blocksize'.*power of two/)
    expect(message([["size", "32K"]])).toMatch(/'size'.*at least one block/)
    expect(message([["cache", "1M"]])).toMatch(/unknown parameter 'cache'/)
    expect(() => new Cache.BlockCache(BLOCK, BLOCK - 1)).toThrow(RangeError)
  })
})
