/**
 * Testing your own driver deterministically: stack fault-injecting filters on it, serve
 * it in process (no socket), and drive time with `TestClock`.
 *
 * Run it with `npx tsx scratchpad/testing-example.ts`; in a test suite, the body of
 * `program` is what an `it.scoped` test of `@effect/vitest` would hold.
 */
import { Effect, Fiber, Layer, TestClock, TestContext } from "effect"
import * as assert from "node:assert/strict"
import { DelayFilter, Driver, ErrorFilter, NbdDriver, protocolError, Testing } from "../src/index.ts"

/** The driver under test: a tiny key-value-like disk that refuses writes past 1 MiB. */
const myDriver = Layer.sync(NbdDriver, () => {
  const disk = new Uint8Array(4 * 1024 * 1024)
  return Driver.make({
    name: "mine",
    size: Effect.succeed(disk.length),
    read: (offset, length) => Effect.succeed(disk.slice(offset, offset + length)),
    write: (offset, data) =>
      offset + data.length > 1024 * 1024
        ? Effect.fail(protocolError("ENOSPC", "only the first MiB is writable"))
        : Effect.sync(() => disk.set(data, offset)),
    flush: Effect.void
  })
})

/** The stack: reads take 50 ms, and a seeded half of the writes fail with EIO. */
const stack = DelayFilter.layer({ read: "50 millis" }).pipe(
  Layer.provide(ErrorFilter.layer({ error: "EIO", rate: 0.5, seed: 42, ops: ["write"] })),
  Layer.provide(myDriver)
)

const program = Effect.gen(function*() {
  const client = yield* Testing.connect()

  // Writes: the same seed fails the same writes on every run.
  const outcomes = yield* Effect.forEach(
    [0, 1, 2, 3, 4, 5, 6, 7],
    (i) => Effect.either(client.write(i * 4096, new Uint8Array(4096).fill(i + 1)))
  )
  const failed = outcomes.map((o) => (o._tag === "Left" && o.left._tag === "ProtocolError" ? o.left.errno : "ok"))
  console.log("writes:", failed.join(" "))
  assert.ok(failed.includes("EIO") && failed.includes("ok"))

  // The driver's own errors come through the stack unchanged.
  const beyond = yield* Effect.either(client.write(2 * 1024 * 1024, new Uint8Array(512)))
  assert.equal(beyond._tag === "Left" && beyond.left._tag === "ProtocolError" && beyond.left.errno, "ENOSPC")

  // Reads: nothing is answered before the clock has moved 50 ms.
  const read = yield* Effect.fork(client.read(0, 4096))
  yield* TestClock.adjust("49 millis")
  assert.equal(read.unsafePoll(), null)
  yield* TestClock.adjust("1 millis")
  const data = yield* Fiber.join(read)
  console.log("read after 50 ms of test time:", data.length, "bytes")
}).pipe(
  Effect.scoped,
  Effect.provide(Testing.exportDriver(stack)),
  Effect.provide(TestContext.TestContext)
)

Effect.runPromise(program).then(
  () => console.log("ok"),
  (error) => {
    console.error(error)
    process.exitCode = 1
  }
)
