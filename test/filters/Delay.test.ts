import { describe, expect, it } from "@effect/vitest"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as TestClock from "effect/TestClock"
import * as Driver from "../../src/Driver.ts"
import * as MemoryDriver from "../../src/drivers/Memory.ts"
import * as Delay from "../../src/filters/Delay.ts"
import * as Testing from "../../src/testing/Handle.ts"
import { expectBytes, pattern } from "../support/Bytes.ts"
import { expected, readingInto } from "./ReadingInto.ts"

const memory = () => MemoryDriver.fromStore(new MemoryDriver.SparseMemory(1024 * 1024))

/** Runs `effect` in a fiber and asserts it is still running just before `duration` of test time and done at it. */
const takesExactly = <A, E>(effect: Effect.Effect<A, E>, duration: Duration.DurationInput) =>
  Effect.gen(function*() {
    const millis = Duration.toMillis(duration)
    const fiber = yield* Effect.fork(effect)
    yield* TestClock.adjust(millis - 1)
    expect(Option.isNone(yield* Fiber.poll(fiber))).toBe(true)
    yield* TestClock.adjust(1)
    expect(Option.isSome(yield* Fiber.poll(fiber))).toBe(true)
    return yield* Fiber.join(fiber)
  })

describe("delay filter", () => {
  it.scoped("delays reads by `read` and leaves writes undelayed", () =>
    Effect.gen(function*() {
      const handle = yield* Testing.open(yield* Delay.make({ read: "1 second" })(memory()))
      yield* handle.write(0, pattern(4096, 7), { fua: false }) // would hang under TestClock if delayed
      const data = yield* takesExactly(handle.read(0, 4096), "1 second")
      expectBytes(data, pattern(4096, 7))
    }))

  it.scoped("delays reads into the server's buffers as reads", () =>
    Effect.gen(function*() {
      const below = readingInto()
      const handle = yield* Testing.open(yield* Delay.make({ read: "1 second" })(below.driver))
      const target = new Uint8Array(100)
      yield* takesExactly(handle.readInto!(7, target), "1 second")
      expectBytes(target, expected(7, 100))
      expect(below.calls).toEqual({ read: 0, readInto: 1 })
    }))

  it.scoped("delays each kind of operation by its own duration", () =>
    Effect.gen(function*() {
      const handle = yield* Testing.open(
        yield* Delay.make({
          write: 100,
          zero: "2 seconds",
          trim: "3 seconds",
          flush: "4 seconds",
          cache: "5 seconds",
          extents: "6 seconds"
        })(memory())
      )
      yield* takesExactly(handle.write(0, pattern(10, 1), { fua: false }), "100 millis")
      yield* takesExactly(handle.writeZeroes(0, 10, { fua: false, noHole: false, fastZero: false }), "2 seconds")
      yield* takesExactly(handle.trim(0, 10, { fua: false }), "3 seconds")
      yield* takesExactly(handle.flush, "4 seconds")
      yield* takesExactly(handle.cache(0, 10), "5 seconds")
      const extents = yield* takesExactly(handle.blockStatus(65536, 4096), "6 seconds")
      expect(extents).toEqual([{ length: 4096, flags: Driver.HOLE_ZERO }])
      yield* handle.read(0, 10) // read has no delay
    }))

  it.scoped("keeps the synchronous fast path only while reads and writes are undelayed", () =>
    Effect.gen(function*() {
      expect((yield* Testing.open(memory())).sync).toBeDefined()
      const zero = yield* Delay.make({ read: 0, write: Duration.zero, flush: "1 second" })(memory())
      const undelayed = yield* Testing.open(zero)
      expect(undelayed.sync).toBeDefined()
      const reads = yield* Testing.open(yield* Delay.make({ read: "1 millis" })(memory()))
      expect(reads.sync).toBeUndefined()
      const writes = yield* Testing.open(yield* Delay.make({ write: "1 millis" })(memory()))
      expect(writes.sync).toBeUndefined()
    }))

  it.scoped("as a layer over the driver in context", () =>
    Effect.gen(function*() {
      const driver = yield* Driver.NbdDriver
      expect(driver.name).toBe("delay+memory")
      const handle = yield* Testing.open(driver)
      yield* takesExactly(handle.flush, "250 millis")
    }).pipe(
      Effect.provide(Delay.layer({ flush: "250 millis" }).pipe(Layer.provide(Layer.succeed(Driver.NbdDriver, memory()))))
    ))

  it.scoped("plugin: durations from text, a bare number is seconds", () =>
    Effect.gen(function*() {
      const made = Delay.plugin.make(new Map([["read", "1.5"], ["extents", "100ms"]]))
      const filter = Either.getOrThrow(made)
      const handle = yield* Testing.open(yield* Effect.orDie(filter(memory())))
      expect(handle.sync).toBeUndefined()
      yield* takesExactly(handle.read(0, 1), "1500 millis")
      yield* takesExactly(handle.blockStatus(0, 1), "100 millis")
    }))

  it("plugin: unknown and malformed parameters are refused", () => {
    const unknown = Delay.plugin.make(new Map([["delay-read", "1s"]]))
    expect(Either.isLeft(unknown) && unknown.left.message).toMatch(/delay: unknown parameter 'delay-read'.*read, write/)
    const malformed = Delay.plugin.make(new Map([["write", "soon"]]))
    expect(Either.isLeft(malformed) && malformed.left.message).toMatch(/'write'.*not a duration/)
    const names = Delay.plugin.parameters.map((p) => p.name)
    expect(names).toEqual(["read", "write", "zero", "trim", "flush", "cache", "extents"])
  })
})
