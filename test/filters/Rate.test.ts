import { describe, expect, it } from "@effect/vitest"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import * as TestClock from "effect/TestClock"
import * as Driver from "../../src/Driver.ts"
import * as MemoryDriver from "../../src/drivers/Memory.ts"
import * as Rate from "../../src/filters/Rate.ts"
import * as TokenBucket from "../../src/filters/TokenBucket.ts"
import * as Testing from "../../src/testing/Handle.ts"
import { expectBytes, pattern } from "../support/Bytes.ts"

const KiB = 1024
const MiB = 1024 * 1024

const memory = () => MemoryDriver.fromStore(new MemoryDriver.SparseMemory(8 * MiB))

/** Opens `count` connections to one stack with the rate filter. */
const connect = (options: Rate.RateOptions, count = 1) =>
  Effect.gen(function*() {
    const driver = yield* Rate.make(options)(memory())
    const handles: Array<Driver.DriverHandle> = []
    for (let id = 1; id <= count; id++) {
      handles.push(yield* Testing.open(driver, Testing.openRequest("", Testing.inProcessClient(id))))
    }
    return handles
  })

const isDone = <A, E>(fiber: Fiber.Fiber<A, E>) => Effect.map(Fiber.poll(fiber), Option.isSome)

/** Moves test time to `millis` after the start of the test. */
const at = (millis: number) => Effect.flatMap(TestClock.currentTimeMillis, (now) => TestClock.adjust(millis - now))

describe("rate filter", () => {
  it.scoped("1 MiB at 256K/s takes 4 seconds of test time", () =>
    Effect.gen(function*() {
      const [handle] = yield* connect({ rate: 256 * KiB })
      const fiber = yield* Effect.fork(handle!.read(0, MiB))
      yield* at(3999)
      expect(yield* isDone(fiber)).toBe(false)
      yield* at(4000)
      expect(yield* isDone(fiber)).toBe(true)
      expect((yield* Fiber.join(fiber)).length).toBe(MiB)
    }))

  it.scoped("reads into the server's buffers are kept, and limited", () =>
    Effect.gen(function*() {
      const below = Driver.make({
        name: "into",
        size: Effect.succeed(8 * MiB),
        read: (_offset, length) => Effect.succeed(new Uint8Array(length)),
        readInto: (_offset, target) => Effect.sync(() => void target.fill(4))
      })
      const handle = yield* Testing.open(yield* Rate.make({ rate: 256 * KiB })(below))
      const target = new Uint8Array(512 * KiB)
      const fiber = yield* Effect.fork(handle.readInto!(0, target))
      yield* at(1999)
      expect(yield* isDone(fiber)).toBe(false)
      yield* at(2000)
      yield* Fiber.join(fiber)
      expect(target.every((b) => b === 4)).toBe(true)
    }))

  it.scoped("writes are limited too, and the data arrives", () =>
    Effect.gen(function*() {
      const [handle] = yield* connect({ connectionRate: 256 * KiB })
      const fiber = yield* Effect.fork(handle!.write(0, pattern(512 * KiB, 5), { fua: false }))
      yield* at(1999)
      expect(yield* isDone(fiber)).toBe(false)
      yield* at(2000)
      yield* Fiber.join(fiber)
      yield* handle!.flush // not limited: would hang under TestClock otherwise
      const read = yield* Effect.fork(handle!.read(0, 512 * KiB))
      yield* at(4000)
      expectBytes(yield* Fiber.join(read), pattern(512 * KiB, 5))
    }))

  it.scoped("per-connection buckets are independent", () =>
    Effect.gen(function*() {
      const [a, b] = yield* connect({ connectionRate: 256 * KiB }, 2)
      const fa = yield* Effect.fork(a!.read(0, MiB))
      const fb = yield* Effect.fork(b!.read(MiB, MiB))
      yield* at(3999)
      expect([yield* isDone(fa), yield* isDone(fb)]).toEqual([false, false])
      yield* at(4000) // a shared bucket would need 8 seconds for both
      expect([yield* isDone(fa), yield* isDone(fb)]).toEqual([true, true])
    }))

  it.scoped("the stack's bucket is shared by its connections", () =>
    Effect.gen(function*() {
      const [a, b] = yield* connect({ rate: 256 * KiB }, 2)
      const fa = yield* Effect.fork(a!.read(0, 512 * KiB))
      const fb = yield* Effect.fork(b!.read(MiB, 512 * KiB))
      yield* at(2000) // each alone would be done by now
      expect((yield* isDone(fa)) && (yield* isDone(fb))).toBe(false)
      yield* at(3999)
      expect((yield* isDone(fa)) && (yield* isDone(fb))).toBe(false)
      yield* at(4000)
      expect([yield* isDone(fa), yield* isDone(fb)]).toEqual([true, true])
    }))

  it.scoped("a connection limit and the shared limit apply together", () =>
    Effect.gen(function*() {
      const [a, b] = yield* connect({ rate: 512 * KiB, connectionRate: 128 * KiB }, 2)
      const fa = yield* Effect.fork(a!.read(0, 256 * KiB))
      const fb = yield* Effect.fork(b!.read(MiB, 256 * KiB))
      yield* at(1999) // the shared 512K/s allows 1 s; each connection's 128K/s needs 2 s
      expect([yield* isDone(fa), yield* isDone(fb)]).toEqual([false, false])
      yield* at(2000)
      expect([yield* isDone(fa), yield* isDone(fb)]).toEqual([true, true])
    }))

  it.scoped("after an idle period, `burst` worth of bytes pass at once", () =>
    Effect.gen(function*() {
      const [handle] = yield* connect({ rate: 256 * KiB, burst: "2 seconds" })
      yield* at(10_000) // fills to 2 s worth (512K), no more
      yield* handle!.read(0, 512 * KiB) // at once
      const next = yield* Effect.fork(handle!.read(0, 256 * KiB))
      yield* at(10_999)
      expect(yield* isDone(next)).toBe(false)
      yield* at(11_000)
      expect(yield* isDone(next)).toBe(true)
    }))

  it.scoped("without a limit nothing changes, and the fast path survives", () =>
    Effect.gen(function*() {
      const [free] = yield* connect({})
      expect(free!.sync).toBeDefined()
      yield* free!.read(0, 8 * MiB)
      const [limited] = yield* connect({ rate: MiB })
      expect(limited!.sync).toBeUndefined()
    }))

  it.effect("token bucket: reservations queue up in order", () =>
    Effect.gen(function*() {
      const bucket = yield* TokenBucket.make(1000, 1000)
      const waits = yield* Effect.all([bucket.reserve(500), bucket.reserve(500), bucket.reserve(1000)])
      expect(waits.map(Duration.toMillis)).toEqual([500, 1000, 2000])
      yield* TestClock.adjust("10 seconds")
      expect(Duration.toMillis(yield* bucket.reserve(1000))).toBe(0) // refilled to capacity, not beyond
      expect(Duration.toMillis(yield* bucket.reserve(1))).toBe(1)
    }))

  it.scoped("plugin: sizes and durations from text", () =>
    Effect.gen(function*() {
      const filter = Either.getOrThrow(Rate.plugin.make(new Map([["connection-rate", "128K"], ["burst", "0.5"]])))
      const handle = yield* Testing.open(yield* Effect.orDie(filter(memory())))
      const fiber = yield* Effect.fork(handle.read(0, 256 * KiB))
      yield* at(1999)
      expect(yield* isDone(fiber)).toBe(false)
      yield* at(2000)
      expect(yield* isDone(fiber)).toBe(true)
    }))

  it("plugin: unknown and malformed parameters are refused", () => {
    const message = (pairs: Array<[string, string]>) => {
      const result = Rate.plugin.make(new Map(pairs))
      return Either.isLeft(result) ? result.left.message : "accepted"
    }
    expect(message([["connection_rate", "1M"]])).toMatch(/rate: unknown parameter 'connection_rate'/)
    expect(message([["rate", "fast"]])).toMatch(/'rate'.*not a size/)
    expect(message([["rate", "0"]])).toMatch(/'rate' must be at least 1 byte per second/)
    expect(message([["burst", "0"]])).toMatch(/'burst' must be more than 0/)
    expect(message([["rate", "10M"], ["connection-rate", "1M"], ["burst", "250ms"]])).toBe("accepted")
  })
})
