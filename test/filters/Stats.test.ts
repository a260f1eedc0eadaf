import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Fiber from "effect/Fiber"
import * as Logger from "effect/Logger"
import * as TestClock from "effect/TestClock"
import * as fs from "node:fs"
import * as path from "node:path"
import * as Driver from "../../src/Driver.ts"
import * as MemoryDriver from "../../src/drivers/Memory.ts"
import * as Stats from "../../src/filters/Stats.ts"
import * as Testing from "../../src/testing/Handle.ts"
import { tempDir } from "./TempDir.ts"

const memory = () => MemoryDriver.fromStore(new MemoryDriver.SparseMemory(1 << 20))

/** A driver whose reads take 3 ms and whose writes take 10 ms of Clock time. */
const slow = Driver.make({
  size: Effect.succeed(1 << 20),
  read: (_, length) => Effect.as(Effect.sleep("3 millis"), new Uint8Array(length)),
  write: () => Effect.sleep("10 millis")
})

/** The histogram as `{ bucket: count }`, empty buckets left out. */
const filled = (buckets: ReadonlyArray<number>) =>
  Object.fromEntries(buckets.flatMap((n, i) => (n === 0 ? [] : [[i, n]])))

describe("stats filter", () => {
  it.scoped("counts operations, bytes and errors of a known workload across connections", () =>
    Effect.gen(function*() {
      const collector = yield* Stats.makeCollector
      const driver = yield* Stats.make({ collector })(memory())
      const one = yield* Testing.open(driver, Testing.openRequest("", Testing.inProcessClient(1)))
      const two = yield* Testing.open(driver, Testing.openRequest("", Testing.inProcessClient(2)))
      for (let i = 0; i < 3; i++) yield* one.write(i * 4096, new Uint8Array(4096).fill(1), { fua: i === 0 })
      yield* two.read(0, 8192)
      yield* one.read(100, 8192)
      yield* two.trim(0, 32768, { fua: false })
      yield* one.writeZeroes(65536, 65536, { fua: false, noHole: false, fastZero: false })
      yield* one.flush
      yield* two.cache(0, 1000)
      yield* two.blockStatus(0, 1 << 20)
      yield* Effect.flip(one.resize(Number.MAX_SAFE_INTEGER))
      yield* Effect.flip(one.resize(Number.MAX_SAFE_INTEGER))
      const stats = yield* Stats.current(collector)
      const ops = Object.fromEntries(Object.entries(stats.commands).map(([c, s]) => [c, [s.ops, s.errors, s.bytes]]))
      expect(ops).toEqual({
        READ: [2, 0, 16384],
        WRITE: [3, 0, 12288],
        FLUSH: [1, 0, 0],
        TRIM: [1, 0, 32768],
        WRITE_ZEROES: [1, 0, 65536],
        CACHE: [1, 0, 1000],
        BLOCK_STATUS: [1, 0, 0],
        RESIZE: [2, 2, 0]
      })
      expect(stats.bytes).toEqual({ read: 16384, written: 12288, zeroed: 65536, trimmed: 32768 })
      expect(stats.errors).toEqual({ ENOSPC: 2 })
      // Under TestClock no time passes: every latency is 0 µs, in bucket 0.
      expect(filled(stats.commands.WRITE.latency.buckets)).toEqual({ 0: 3 })
    }))

  it.scoped("keeps a latency histogram per command in log2 microsecond buckets, with min/mean/max", () =>
    Effect.gen(function*() {
      const collector = yield* Stats.makeCollector
      const handle = yield* Testing.open(yield* Stats.make({ collector })(slow))
      const work = yield* Effect.fork(Effect.gen(function*() {
        yield* handle.read(0, 4096)
        yield* handle.read(0, 4096)
        yield* handle.write(0, new Uint8Array(512), { fua: false })
      }))
      yield* TestClock.adjust("1 second")
      yield* Fiber.join(work)
      const stats = yield* Stats.current(collector)
      expect(stats.elapsedSeconds).toBe(1)
      const read = stats.commands.READ
      // 3000 µs lies in [2^11, 2^12): bucket 12; 10000 µs in [2^13, 2^14): bucket 14.
      expect(filled(read.latency.buckets)).toEqual({ 12: 2 })
      expect(Stats.bucketStart(12)).toBe(2048)
      expect(read.latency).toMatchObject({ minMicros: 3000, meanMicros: 3000, maxMicros: 3000 })
      expect(filled(stats.commands.WRITE.latency.buckets)).toEqual({ 14: 1 })
      expect(stats.commands.WRITE.latency.maxMicros).toBe(10000)
      expect(read.bytesPerSecond).toBe(8192)
      expect(read.latency.buckets).toHaveLength(Stats.BUCKETS)
    }))

  it("puts latencies in the documented buckets", () => {
    expect([0, 0.5, 1, 1.9, 2, 3, 4, 1023, 1024, 2 ** 30 - 1, 2 ** 30, 2 ** 40].map(Stats.bucketOf))
      .toEqual([0, 0, 1, 1, 2, 2, 3, 10, 11, 30, 31, 31])
  })

  it.scoped("keeps the fast path of the driver below and counts through it", () =>
    Effect.gen(function*() {
      const collector = yield* Stats.makeCollector
      const store = new MemoryDriver.SparseMemory(1 << 20)
      const handle = yield* Testing.open(yield* Stats.make({ collector })(MemoryDriver.fromStore(store)))
      const sync = handle.sync!
      expect(sync).toBeDefined()
      sync.write(10, new Uint8Array([1, 2, 3]))
      sync.write(13, new Uint8Array([4]))
      expect([...store.read(10, 4)]).toEqual([1, 2, 3, 4])
      expect(sync.read(0, 100).length).toBeGreaterThan(0)
      expect(sync.size()).toBe(1 << 20)
      const stats = yield* Stats.current(collector)
      expect([stats.commands.WRITE.ops, stats.commands.WRITE.bytes]).toEqual([2, 4])
      expect([stats.commands.READ.ops, stats.commands.READ.bytes]).toEqual([1, 100])
      expect(stats.commands.READ.latency.buckets.reduce((a, b) => a + b)).toBe(1)
    }))

  it.scoped("counts reads into the server's buffers", () =>
    Effect.gen(function*() {
      const collector = yield* Stats.makeCollector
      const below = Driver.make({
        name: "below",
        size: Effect.succeed(1 << 20),
        read: (_offset, length) => Effect.succeed(new Uint8Array(length)),
        sync: {
          size: () => 1 << 20,
          read: (_offset, length) => [new Uint8Array(length)],
          write: () => {},
          readInto: (_offset, target) => target.fill(7)
        }
      })
      const handle = yield* Testing.open(yield* Stats.make({ collector })(below))
      const target = new Uint8Array(300)
      handle.sync!.readInto!(0, target)
      expect(target.every((b) => b === 7)).toBe(true)
      const stats = yield* Stats.current(collector)
      expect([stats.commands.READ.ops, stats.commands.READ.bytes]).toEqual([1, 300])
    }))

  it.scoped("counts a throwing fast path operation as EIO and rethrows", () =>
    Effect.gen(function*() {
      const collector = yield* Stats.makeCollector
      const below = Driver.make({
        size: Effect.succeed(4096),
        read: (_, length) => Effect.succeed(new Uint8Array(length)),
        sync: {
          size: () => 4096,
          read: () => {
            throw new Error("broken")
          },
          write: () => {}
        }
      })
      const handle = yield* Testing.open(yield* Stats.make({ collector })(below))
      expect(() => handle.sync!.read(0, 1)).toThrow("broken")
      const stats = yield* Stats.current(collector)
      expect([stats.commands.READ.ops, stats.commands.READ.errors, stats.commands.READ.bytes]).toEqual([1, 1, 0])
      expect(stats.errors).toEqual({ EIO: 1 })
    }))

  it.scoped("has no fast path when the driver below has none", () =>
    Effect.gen(function*() {
      const handle = yield* Testing.open(yield* Stats.make()(slow))
      expect(handle.sync).toBeUndefined()
      expect(handle.capabilities).toEqual((yield* Testing.open(slow)).capabilities)
    }))
})

describe("stats summary", () => {
  it.scoped("formats counts, sizes, throughput, errors and the histogram", () =>
    Effect.gen(function*() {
      const collector = yield* Stats.makeCollector
      const handle = yield* Testing.open(yield* Stats.make({ collector })(slow))
      const work = yield* Effect.fork(Effect.gen(function*() {
        for (let i = 0; i < 4; i++) yield* handle.read(0, 1 << 20)
        yield* handle.write(0, new Uint8Array(3 << 20), { fua: false })
      }))
      yield* TestClock.adjust("2 seconds")
      yield* Fiber.join(work)
      yield* Effect.exit(handle.trim(0, 1, { fua: false }))
      const text = Stats.format(yield* Stats.current(collector))
      const lines = text.split("\n")
      expect(lines.slice(0, 5)).toEqual([
        "elapsed time: 2.000 s",
        "read: 4 ops, 4.0 MiB, 2.0 MiB/s",
        "write: 1 op, 3.0 MiB, 1.5 MiB/s",
        "trim: 1 op, 0 B, 0 B/s, 1 error",
        "errors: EINVAL 1"
      ])
      expect(lines[5]).toMatch(/^latency \(µs\)\s+read\s+write\s+trim$/)
      expect(lines[6]).toMatch(/^min\s+3000\s+10000\s+0$/)
      expect(lines[7]).toMatch(/^mean\s+3000\.0\s+10000\.0\s+0\.0$/)
      expect(lines.find((l) => l.startsWith("2048-4096"))).toMatch(/^2048-4096\s+4\s+0\s+0$/)
      expect(lines.find((l) => l.startsWith("8192-16384"))).toMatch(/\s+0\s+1\s+0$/)
      expect(lines.find((l) => l.startsWith("0-1"))).toMatch(/\s+0\s+0\s+1$/)
      expect(text.endsWith("\n")).toBe(true)
      expect(Stats.formatBytes(1536)).toBe("1.5 KiB")
    }))

  it.scoped("says so when there were no requests", () =>
    Effect.gen(function*() {
      const collector = yield* Stats.makeCollector
      expect(Stats.format(yield* Stats.current(collector))).toBe("elapsed time: 0.000 s\nno requests\n")
    }))

  it.scoped("writes the summary to the file when the stack closes, replacing or appending", () =>
    Effect.gen(function*() {
      const file = path.join(yield* tempDir, "stats.txt")
      fs.writeFileSync(file, "old\n")
      const run = (append: boolean) =>
        Effect.scoped(Effect.gen(function*() {
          const before = fs.readFileSync(file, "utf8")
          const handle = yield* Testing.open(yield* Stats.make({ file, append })(memory()))
          yield* handle.read(0, 2048)
          yield* TestClock.adjust("1 second")
          expect(fs.readFileSync(file, "utf8")).toBe(before)
        }))
      yield* run(false)
      expect(fs.readFileSync(file, "utf8")).toMatch(/^elapsed time: 1\.000 s\nread: 1 op, 2\.0 KiB, 2\.0 KiB\/s\n/)
      yield* run(true)
      expect(fs.readFileSync(file, "utf8").match(/read: 1 op/g)).toHaveLength(2)
    }))

  it.scoped("logs the summary at close when no file is given", () =>
    Effect.gen(function*() {
      const messages: Array<string> = []
      const capture = Logger.make(({ message }) => messages.push(String(message)))
      yield* Effect.scoped(Effect.gen(function*() {
        const handle = yield* Testing.open(yield* Stats.make()(memory()))
        yield* handle.write(0, new Uint8Array(10), { fua: false })
        expect(messages).toEqual([])
      })).pipe(Effect.provide(Logger.add(capture)))
      expect(messages).toHaveLength(1)
      expect(messages[0]).toMatch(/write: 1 op, 10 B/)
    }))
})

describe("stats plugin", () => {
  it("accepts file= and append=, nothing else", () => {
    expect(Either.isRight(Stats.plugin.make(new Map()))).toBe(true)
    expect(Either.isRight(Stats.plugin.make(new Map([["file", "/tmp/x"], ["append", "true"]])))).toBe(true)
    expect(Either.isLeft(Stats.plugin.make(new Map([["append", "maybe"]])))).toBe(true)
    expect(Either.isLeft(Stats.plugin.make(new Map([["statsfile", "/tmp/x"]])))).toBe(true)
    expect(Stats.plugin.parameters.map((p) => p.name)).toEqual(["file", "append"])
  })
})
