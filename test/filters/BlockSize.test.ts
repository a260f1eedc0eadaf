import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Fiber from "effect/Fiber"
import * as Driver from "../../src/Driver.ts"
import * as MemoryDriver from "../../src/drivers/Memory.ts"
import { protocolError } from "../../src/Errors.ts"
import * as BlockSize from "../../src/filters/BlockSize.ts"
import * as Testing from "../../src/testing/Handle.ts"
import { expectBytes, pattern } from "../support/Bytes.ts"

const K = 1024
const SIZE = 1024 * K
const BLOCK = 4096
const MAX = 64 * K

/** What the strict driver below received: calls per operation and broken rules. */
interface Log {
  readonly calls: Record<string, number>
  readonly violations: Array<string>
}

/**
 * A memory store below a filter that declares minimum 4096 / maximum 64K and checks every
 * call: misaligned offsets or lengths, payloads above 64K, lengths above `maxlen` are
 * recorded and die (a test reaching one fails). `pause` yields between the steps of a
 * read so concurrent requests interleave.
 */
const strictBelow = (size: number, maxlen: number, pause = false) => {
  const store = new MemoryDriver.SparseMemory(size)
  const log: Log = { calls: {}, violations: [] }
  const check = (op: string, offset: number, length: number, limit: number) =>
    Effect.suspend(() => {
      log.calls[op] = (log.calls[op] ?? 0) + 1
      const broken = offset % BLOCK !== 0 || length % BLOCK !== 0 || length === 0 || length > limit ||
        offset + length > size
      if (!broken) return Effect.void
      log.violations.push(`${op} ${offset}+${length}`)
      return Effect.die(new Error(`the driver below got ${op} ${offset}+${length}`))
    })
  const driver = Driver.filter(MemoryDriver.fromStore(store), {
    name: "strict",
    open: (h) => ({
      capabilities: (caps) => ({ ...caps, blockSize: { minimum: BLOCK, preferred: BLOCK, maximum: MAX } }),
      read: (o, n) =>
        check("read", o, n, MAX).pipe(Effect.zipRight(pause ? Effect.yieldNow() : Effect.void), Effect.zipRight(h.read(o, n))),
      write: (o, d, opts) =>
        check("write", o, d.length, MAX).pipe(Effect.zipRight(pause ? Effect.yieldNow() : Effect.void), Effect.zipRight(h.write(o, d, opts))),
      trim: (o, n, opts) => Effect.zipRight(check("trim", o, n, maxlen), h.trim(o, n, opts)),
      writeZeroes: (o, n, opts) => Effect.zipRight(check("zero", o, n, maxlen), h.writeZeroes(o, n, opts)),
      cache: (o, n) => Effect.zipRight(check("cache", o, n, maxlen), h.cache(o, n)),
      blockStatus: (o, n) => Effect.zipRight(check("status", o, n, maxlen), h.blockStatus(o, n))
    })
  })
  return { store, log, driver }
}

const openStack = (options: BlockSize.BlockSizeOptions, size = SIZE, maxlen = options.maxlen ?? 2 ** 32) =>
  Effect.gen(function*() {
    const below = strictBelow(size, maxlen)
    const handle = yield* Testing.open(yield* BlockSize.make(options)(below.driver))
    return { ...below, handle }
  })

/** A seeded generator of integers in [0, n). */
const random = (seed: number) => (n: number) => {
  seed = (seed * 1103515245 + 12345) % 2 ** 31
  return Math.floor((seed / 2 ** 31) * n)
}

const zeroOptions = { fua: false, noHole: false, fastZero: false }

describe("blocksize filter", () => {
  it.scoped("behaves as a flat buffer under random unaligned reads, writes, zeroes and trims", () =>
    Effect.gen(function*() {
      const { handle, log, store } = yield* openStack({ maxlen: 128 * K })
      const model = new Uint8Array(SIZE)
      const next = random(7)
      for (let i = 0; i < 300; i++) {
        const offset = next(SIZE)
        const length = 1 + next(Math.min(i % 10 === 0 ? 300 * K : 9000, SIZE - offset))
        const op = next(4)
        if (op === 0) {
          const data = pattern(length, i)
          yield* handle.write(offset, data, { fua: i % 2 === 0 })
          model.set(data, offset)
        } else if (op === 1) {
          yield* handle.writeZeroes(offset, length, { ...zeroOptions, noHole: i % 2 === 0 })
          model.fill(0, offset, offset + length)
        } else if (op === 2) {
          // Only whole blocks are trimmed (the memory driver below then reads zeroes there).
          yield* handle.trim(offset, length, { fua: false })
          const start = Math.ceil(offset / BLOCK) * BLOCK
          const end = Math.floor((offset + length) / BLOCK) * BLOCK
          if (end > start) model.fill(0, start, end)
        } else {
          expectBytes(yield* handle.read(offset, length), model.subarray(offset, offset + length), `read ${offset}+${length}`)
        }
      }
      expectBytes(store.read(0, SIZE), model, "store")
      expect(log.violations).toEqual([])
      expect(log.calls.write! > 50 && log.calls.read! > 50 && log.calls.zero! > 0 && log.calls.trim! > 0).toBe(true)
    }))

  it.scoped("presents minimum 1, preferred max(below, minblock), maximum 64M, and a size in whole blocks", () =>
    Effect.gen(function*() {
      const { handle } = yield* openStack({}, SIZE + 1000)
      expect(handle.capabilities.blockSize).toEqual({ minimum: 1, preferred: 4096, maximum: 64 * 1024 * K })
      expect(yield* handle.size).toBe(SIZE)
      expect(handle.sync).toBeUndefined()
      expect(handle.capabilities.fua && handle.capabilities.trim && handle.capabilities.fastZero).toBe(true)
      const larger = yield* openStack({ minblock: 16 * K })
      expect(larger.handle.capabilities.blockSize.preferred).toBe(16 * K)
    }))

  it.scoped("splits reads and writes into pieces of at most maxdata, aligned to minblock", () =>
    Effect.gen(function*() {
      const { handle, log, store } = yield* openStack({ minblock: 8192, maxdata: 32 * K })
      const data = pattern(300 * K + 3, 1)
      yield* handle.write(1000, data, { fua: false })
      expect(log.calls.write).toBe(11) // head and tail RMW, 9 whole-block pieces of at most 32K
      expect(log.calls.read).toBe(2) // the RMW blocks
      expectBytes(store.read(1000, data.length), data)
      log.calls.read = 0
      expectBytes(yield* handle.read(1000, data.length), data)
      expect(log.calls.read).toBe(10) // [0, 303K + 8K) rounded to 8K blocks: 304K in 32K pieces
      expect(log.violations).toEqual([])
    }))

  it.scoped("splits zeroes, trims and cache into maxlen pieces and zeroes unaligned parts by writing", () =>
    Effect.gen(function*() {
      const { handle, log, store } = yield* openStack({ maxlen: 128 * K })
      store.write(0, pattern(SIZE, 3))
      yield* handle.writeZeroes(100, SIZE - 200, zeroOptions)
      expect(log.calls.zero).toBe(8) // 1M - 8K of whole blocks in 128K pieces
      expect(log.calls.write).toBe(2) // the two partial blocks
      const expected = pattern(SIZE, 3)
      expected.fill(0, 100, SIZE - 100)
      expectBytes(store.read(0, SIZE), expected)
      yield* handle.trim(0, SIZE, { fua: false })
      expect(log.calls.trim).toBe(8)
      yield* handle.cache(1, SIZE - 1)
      expect(log.calls.cache).toBe(8)
      // A trim within one block sends nothing below.
      yield* handle.trim(10, 100, { fua: false })
      expect(log.calls.trim).toBe(8)
      expect(log.violations).toEqual([])
    }))

  it.scoped("fast zeroing with an unaligned part fails at once with ENOTSUP; aligned fast zeroing passes", () =>
    Effect.gen(function*() {
      const { handle, log, store } = yield* openStack({})
      store.write(0, new Uint8Array(3 * BLOCK).fill(5))
      const error = yield* Effect.flip(handle.writeZeroes(100, 2 * BLOCK, { ...zeroOptions, fastZero: true }))
      expect(error.errno).toBe("ENOTSUP")
      expect(log.calls.zero ?? 0).toBe(0)
      expect(store.read(0, 3 * BLOCK).every((b) => b === 5)).toBe(true)
      yield* handle.writeZeroes(BLOCK, BLOCK, { ...zeroOptions, fastZero: true })
      expectBytes(store.read(BLOCK, BLOCK), new Uint8Array(BLOCK))
    }))

  it.scoped("block status asks for the aligned range and answers from the asked offset", () =>
    Effect.gen(function*() {
      const { handle, log, store } = yield* openStack({ maxlen: 128 * K })
      const page = MemoryDriver.PAGE_SIZE
      store.write(page, new Uint8Array(page).fill(1))
      expect(yield* handle.blockStatus(100, page + 5000)).toEqual([
        { length: page - 100, flags: Driver.HOLE_ZERO },
        { length: 5100, flags: 0 }
      ])
      // A long request is answered for at most maxlen from the aligned start.
      const long = yield* handle.blockStatus(4000, SIZE - 4000)
      expect(long.reduce((n, e) => n + e.length, 0)).toBe(128 * K - 4000)
      expect(log.violations).toEqual([])
    }))

  it("drops the head of extents and falls back to data when below describes too little", () => {
    expect(BlockSize.dropHead([{ length: 4096, flags: 3 }, { length: 8192, flags: 0 }], 5000, 100)).toEqual([
      { length: 100, flags: 0 }
    ])
    expect(BlockSize.dropHead([{ length: 4096, flags: 3 }, { length: 4096, flags: 0 }], 1000, 10000)).toEqual([
      { length: 3096, flags: 3 },
      { length: 4096, flags: 0 }
    ])
    expect(BlockSize.pieces(100, 10000, 4096)).toEqual([
      { aligned: false, start: 100, end: 4096 },
      { aligned: true, start: 4096, end: 8192 },
      { aligned: false, start: 8192, end: 10100 }
    ])
    expect(BlockSize.pieces(10, 20, 4096)).toEqual([{ aligned: false, start: 10, end: 30 }])
  })

  it.scoped("concurrent unaligned writes into one block lose nothing (and would without the lock)", () =>
    Effect.gen(function*() {
      const run = (permits: number) =>
        Effect.gen(function*() {
          const below = strictBelow(SIZE, 2 ** 32, true)
          const lock = yield* Effect.makeSemaphore(permits)
          const handle = yield* Testing.open(BlockSize.apply(below.driver, {}, lock))
          const fibers = yield* Effect.forEach(
            Array.from({ length: 64 }, (_, i) => i),
            (i) => Effect.fork(handle.write(i * 64 + 3, new Uint8Array(61).fill(i + 1), { fua: false }))
          )
          yield* Effect.forEach(fibers, Fiber.join)
          const block = below.store.read(0, BLOCK)
          return Array.from({ length: 64 }, (_, i) => block.subarray(i * 64 + 3, i * 64 + 64).every((b) => b === i + 1))
            .filter((ok) => !ok).length
        })
      expect(yield* run(1)).toBe(0)
      expect(yield* run(64)).toBeGreaterThan(0) // the test can see lost updates
    }))

  it.scoped("refuses a client when the limits do not fit the driver below", () =>
    Effect.gen(function*() {
      const small = yield* Effect.flip(openStack({ minblock: 1024 }))
      expect([small.reply, small.message]).toEqual([
        "INVALID",
        "blocksize: minblock 1024 is not a multiple of the minimum block size 4096 below"
      ])
      const big = yield* Effect.flip(openStack({ maxdata: 128 * K }))
      expect(big.message).toContain("exceeds the maximum payload 65536 below")
      const odd = yield* Effect.flip(openStack({ maxlen: 5000 }))
      expect(odd.message).toContain("maxlen 5000 is not a multiple of minblock 4096")
    }))

  it.scoped("passes RESIZE to whole blocks only", () =>
    Effect.gen(function*() {
      const resizable = Driver.make({
        size: Effect.succeed(SIZE),
        read: (_, n) => Effect.succeed(new Uint8Array(n)),
        resize: (size) => size === 2 * SIZE ? Effect.void : Effect.fail(protocolError("EIO", "unexpected"))
      })
      const handle = yield* Testing.open(yield* BlockSize.make({ minblock: 4096 })(resizable))
      yield* handle.resize(2 * SIZE)
      const error = yield* Effect.flip(handle.resize(SIZE + 1))
      expect(error.errno).toBe("EINVAL")
    }))

  it.scoped("plugin: parses sizes and builds the filter", () =>
    Effect.gen(function*() {
      const filter = Either.getOrThrow(
        BlockSize.plugin.make(new Map([["minblock", "8K"], ["maxdata", "32K"], ["maxlen", "1M"]]))
      )
      const below = strictBelow(SIZE, 1024 * K)
      const driver = yield* filter(below.driver)
      expect(driver.name).toBe("blocksize+strict+memory")
      const handle = yield* Testing.open(driver)
      expect(handle.capabilities.blockSize.preferred).toBe(8192)
      yield* handle.write(1, pattern(100 * K, 2), { fua: false })
      expectBytes(below.store.read(1, 100 * K), pattern(100 * K, 2))
      expect(below.log.violations).toEqual([])
    }))

  it("plugin: refuses unknown parameters naming the accepted ones, and bad sizes", () => {
    const message = (pairs: ReadonlyArray<[string, string]>) => {
      const result = BlockSize.plugin.make(new Map(pairs))
      return Either.isLeft(result) ? `${result.left._tag}: ${result.left.message}` : "accepted"
    }
    expect(message([["minblok", "4K"]])).toBe(
      "ParameterError: blocksize: unknown parameter 'minblok' (accepted: minblock, maxdata, maxlen)"
    )
    expect(message([["minblock", "3000"]])).toBe("ParameterError: blocksize: minblock 3000 is not a power of two from 1 to 65536")
    expect(message([["minblock", "128K"]])).toContain("not a power of two from 1 to 65536")
    expect(message([["minblock", "4K"], ["maxdata", "6K"]])).toContain("maxdata 6144 is not a multiple of minblock 4096")
    expect(message([["maxlen", "0"]])).toContain("maxlen 0 is not a positive byte count")
    expect(message([["maxdata", "big"]])).toContain("'maxdata'")
    expect(message([])).toBe("accepted")
  })
})
