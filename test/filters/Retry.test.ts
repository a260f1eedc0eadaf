import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import * as Scope from "effect/Scope"
import * as TestClock from "effect/TestClock"
import * as Driver from "../../src/Driver.ts"
import * as MemoryDriver from "../../src/drivers/Memory.ts"
import { type ErrnoName, optionReplyError, type ProtocolError, protocolError } from "../../src/Errors.ts"
import * as Retry from "../../src/filters/Retry.ts"
import * as Testing from "../../src/testing/Handle.ts"
import { expectBytes, pattern } from "../support/Bytes.ts"

/**
 * A memory driver whose next `failures` operations fail with `errno` (message `failure N`),
 * whose opens numbered in `refusedOpens` are refused, whose calls take `latency` milliseconds,
 * and which counts opens, closes and calls.
 */
const flaky = (failures: number, errno: ErrnoName = "EIO", refusedOpens: ReadonlyArray<number> = [], latency = 0) => {
  const counts = { opens: 0, closes: 0, calls: 0 }
  const store = new MemoryDriver.SparseMemory(1024 * 1024)
  store.write(0, pattern(4096, 42))
  const memory = MemoryDriver.fromStore(store)
  const failing = <A>(effect: Effect.Effect<A, ProtocolError>) =>
    Effect.suspend(() => {
      const call = ++counts.calls
      const outcome = call <= failures ? Effect.fail(protocolError(errno, `failure ${call}`)) : effect
      return latency > 0 ? Effect.zipRight(Effect.sleep(latency), outcome) : outcome
    })
  const driver: Driver.NbdDriverShape = {
    name: "flaky",
    canonicalName: Option.none(),
    description: Option.none(),
    open: (request) =>
      Effect.gen(function*() {
        counts.opens++
        if (refusedOpens.includes(counts.opens)) {
          return yield* optionReplyError("UNKNOWN", `open ${counts.opens} refused`)
        }
        yield* Effect.addFinalizer(() => Effect.sync(() => counts.closes++))
        const handle = yield* memory.open(request)
        return Driver.override(handle, {
          capabilities: (caps) => ({ ...caps, rotational: counts.opens > 1 }),
          read: (offset, length) => failing(handle.read(offset, length)),
          readInto: (offset, target) =>
            failing(Effect.map(handle.read(offset, target.length), (data) => void target.set(data))),
          write: (offset, data, options) => failing(handle.write(offset, data, options)),
          flush: failing(handle.flush)
        })
      })
  }
  return { driver, counts }
}

const isDone = <A, E>(fiber: Fiber.Fiber<A, E>) => Effect.map(Fiber.poll(fiber), Option.isSome)

/** Moves test time to `millis` after the start of the test. */
const at = (millis: number) => Effect.flatMap(TestClock.currentTimeMillis, (now) => TestClock.adjust(millis - now))

describe("retry filter", () => {
  it.scoped("recovers after K failures, reopening before each retry, with doubling waits", () =>
    Effect.gen(function*() {
      const { counts, driver } = flaky(3)
      const handle = yield* Testing.open(yield* Retry.make({ delay: "1 second" })(driver))
      expect(counts.opens).toBe(1)
      const fiber = yield* Effect.fork(handle.read(0, 4096))
      const timeline: Array<[number, number, number, boolean]> = []
      for (const t of [0, 999, 1000, 2999, 3000, 6999, 7000]) {
        yield* at(t)
        timeline.push([t, counts.opens, counts.closes, yield* isDone(fiber)])
      }
      expect(timeline).toEqual([
        [0, 1, 1, false], // failed, old handle closed, waiting 1 s
        [999, 1, 1, false],
        [1000, 2, 2, false], // reopened, failed again, waiting 2 s
        [2999, 2, 2, false],
        [3000, 3, 3, false], // reopened, failed again, waiting 4 s
        [6999, 3, 3, false],
        [7000, 4, 3, true] // reopened, succeeded
      ])
      expectBytes(yield* Fiber.join(fiber), pattern(4096, 42))
      expect(counts.calls).toBe(4)
    }))

  it.scoped("retries reads into the server's buffers the same way", () =>
    Effect.gen(function*() {
      const { counts, driver } = flaky(2)
      const handle = yield* Testing.open(yield* Retry.make({ delay: "1 second" })(driver))
      const target = new Uint8Array(4096)
      const fiber = yield* Effect.fork(handle.readInto!(0, target))
      yield* at(2999)
      expect(yield* isDone(fiber)).toBe(false)
      yield* at(3000)
      yield* Fiber.join(fiber)
      expectBytes(target, pattern(4096, 42))
      expect([counts.calls, counts.opens]).toEqual([3, 3])
    }))

  it.scoped("retries used up: fails with the last error", () =>
    Effect.gen(function*() {
      const { counts, driver } = flaky(10)
      const handle = yield* Testing.open(yield* Retry.make({ retries: 2, delay: "1 second" })(driver))
      const fiber = yield* Effect.fork(Effect.flip(handle.write(0, new Uint8Array(1), { fua: false })))
      yield* at(2999)
      expect(yield* isDone(fiber)).toBe(false)
      yield* at(3000)
      const error = yield* Fiber.join(fiber)
      expect([error.errno, error.message]).toEqual(["EIO", "failure 3"])
      expect([counts.calls, counts.opens]).toEqual([3, 3])
    }))

  it.scoped("errnos not worth retrying fail at once", () =>
    Effect.gen(function*() {
      for (const errno of ["EPERM", "EINVAL", "ENOSPC", "EOVERFLOW", "ENOTSUP", "ESHUTDOWN"] as const) {
        const { counts, driver } = flaky(1, errno)
        const handle = yield* Testing.open(yield* Retry.make()(driver))
        expect((yield* Effect.flip(handle.read(0, 1))).errno).toBe(errno)
        expect([counts.calls, counts.opens, counts.closes]).toEqual([1, 1, 0])
      }
    }))

  it.scoped("exponential=false waits the same time before each retry", () =>
    Effect.gen(function*() {
      const { driver } = flaky(3, "ENOMEM")
      const handle = yield* Testing.open(yield* Retry.make({ delay: "1 second", exponential: false })(driver))
      const fiber = yield* Effect.fork(handle.read(0, 1))
      yield* at(2999)
      expect(yield* isDone(fiber)).toBe(false)
      yield* at(3000)
      expect(yield* isDone(fiber)).toBe(true)
    }))

  it.scoped("a failed reopen counts as a failed attempt", () =>
    Effect.gen(function*() {
      const recovered = flaky(1, "EIO", [2])
      const handle = yield* Testing.open(yield* Retry.make({ retries: 2, delay: "1 second" })(recovered.driver))
      const fiber = yield* Effect.fork(handle.read(0, 1))
      yield* at(1000) // open 2 refused
      expect([recovered.counts.opens, yield* isDone(fiber)]).toEqual([2, false])
      yield* at(3000) // open 3 succeeds, the read too
      expect([recovered.counts.opens, yield* isDone(fiber)]).toEqual([3, true])
      yield* Fiber.join(fiber)

      const exhausted = flaky(1, "EIO", [2])
      const once = yield* Testing.open(yield* Retry.make({ retries: 1, delay: "1 second" })(exhausted.driver))
      const failed = yield* Effect.fork(Effect.flip(once.read(0, 1)))
      yield* at(4000)
      const error = yield* Fiber.join(failed)
      expect(error.errno).toBe("EIO")
      expect(error.message).toMatch(/reopening the export failed: open 2 refused/)
      // The next request opens the export again before it runs.
      yield* once.read(0, 1)
      expect(exhausted.counts.opens).toBe(3)
    }))

  it.scoped("requests failing together reopen once", () =>
    Effect.gen(function*() {
      const { counts, driver } = flaky(2, "EIO", [], 10)
      const handle = yield* Testing.open(yield* Retry.make({ delay: "1 second" })(driver))
      const fiber = yield* Effect.fork(Effect.all([handle.read(0, 1), handle.read(1, 1)], { concurrency: 2 }))
      yield* at(10) // both failed on the first handle
      expect([counts.calls, counts.opens, counts.closes]).toEqual([2, 1, 1])
      yield* at(1019)
      expect([counts.calls, counts.opens, yield* isDone(fiber)]).toEqual([4, 2, false])
      yield* at(1020)
      expect(yield* isDone(fiber)).toBe(true)
      yield* Fiber.join(fiber)
      expect([counts.opens, counts.closes]).toEqual([2, 1])
    }))

  it.scoped("flush is not retried by default, and is with ops=flush", () =>
    Effect.gen(function*() {
      const plain = flaky(1)
      const byDefault = yield* Testing.open(yield* Retry.make()(plain.driver))
      expect((yield* Effect.flip(byDefault.flush)).message).toBe("failure 1")
      expect(plain.counts.opens).toBe(1)
      const chosen = flaky(1)
      const withFlush = yield* Testing.open(yield* Retry.make({ ops: ["flush"], delay: 10 })(chosen.driver))
      const fiber = yield* Effect.fork(withFlush.flush)
      yield* at(10)
      yield* Fiber.join(fiber)
      expect(chosen.counts.opens).toBe(2)
    }))

  it.effect("the handle below lives in the client's scope; capabilities come from the first open", () =>
    Effect.gen(function*() {
      const { counts, driver } = flaky(1)
      const scope = yield* Scope.make()
      const handle = yield* Scope.extend(Testing.open(yield* Retry.make({ delay: 5 })(driver)), scope)
      expect(handle.capabilities.rotational).toBe(false)
      expect(handle.sync).toBeUndefined()
      const fiber = yield* Effect.fork(handle.read(0, 1))
      yield* at(5)
      yield* Fiber.join(fiber)
      expect(handle.capabilities.rotational).toBe(false) // the reopened one says true
      expect([counts.opens, counts.closes]).toEqual([2, 1])
      yield* Scope.close(scope, Exit.void)
      expect(counts.closes).toBe(2)
    }).pipe(Effect.scoped))

  it.scoped("a refused first open refuses the client", () =>
    Effect.gen(function*() {
      const { driver } = flaky(0, "EIO", [1])
      const error = yield* Effect.flip(Testing.open(yield* Retry.make()(driver)))
      expect(error._tag).toBe("OptionReplyError")
      expect(error.reply).toBe("UNKNOWN")
    }))

  it.scoped("plugin: parameters from text", () =>
    Effect.gen(function*() {
      const { counts, driver } = flaky(5)
      const filter = Either.getOrThrow(
        Retry.plugin.make(new Map([["retries", "1"], ["delay", "0.5"], ["exponential", "false"], ["ops", "read"]]))
      )
      const handle = yield* Testing.open(yield* Effect.orDie(filter(driver)))
      expect((yield* Effect.flip(handle.write(0, new Uint8Array(1), { fua: false }))).message).toBe("failure 1")
      const fiber = yield* Effect.fork(Effect.flip(handle.read(0, 1)))
      yield* at(500)
      expect((yield* Fiber.join(fiber)).message).toBe("failure 3")
      expect(counts.opens).toBe(2)
    }))

  it("plugin: unknown and malformed parameters are refused", () => {
    const message = (pairs: Array<[string, string]>) => {
      const result = Retry.plugin.make(new Map(pairs))
      return Either.isLeft(result) ? result.left.message : "accepted"
    }
    expect(message([["retry-delay", "1s"]])).toMatch(/retry: unknown parameter 'retry-delay'/)
    expect(message([["retries", "-1"]])).toMatch(/'retries' must be at least 0/)
    expect(message([["retries", "1.5"]])).toMatch(/'retries' must be a whole number/)
    expect(message([["exponential", "maybe"]])).toMatch(/'exponential' must be true or false/)
    expect(message([["ops", "read,size"]])).toMatch(/unknown operation 'size'/)
    expect(message([["retries", "0"], ["delay", "100ms"], ["ops", "read,write,flush"]])).toBe("accepted")
  })
})
