/**
 * The server, its sessions and the in-process pair run and stop under `TestClock`:
 * nothing waits by polling, and every timeout (the drain of a closing session, the
 * shutdown grace period) is measured by Effect's clock.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Scope from "effect/Scope"
import * as TestClock from "effect/TestClock"
import * as net from "node:net"
import * as Client from "../../src/client/NbdClient.ts"
import * as Driver from "../../src/Driver.ts"
import * as MemoryDriver from "../../src/drivers/Memory.ts"
import * as Export from "../../src/Export.ts"
import * as Delay from "../../src/filters/Delay.ts"
import * as Server from "../../src/server/Server.ts"
import * as Testing from "../../src/testing/InProcess.ts"

const MiB = 1024 * 1024

/** Builds the server layer in a scope of its own, returning its port and the scope. */
const startServer = (exports: ReadonlyArray<Export.NbdExport>, config: Parameters<typeof Server.layer>[1]) =>
  Effect.gen(function*() {
    const scope = yield* Scope.make()
    const context = yield* Layer.buildWithScope(
      Server.layer({ host: "127.0.0.1", port: 0 }, config).pipe(Layer.provide(Export.ExportRegistry.layer(exports))),
      scope
    )
    const address = context.pipe((ctx) => ctx.unsafeMap.get(Server.NbdServer.key) as Server.NbdServer["Type"]).address
    return { scope, port: address._tag === "TcpAddress" ? address.port : 0 }
  })

/** Waits (in real time) until a fiber is done, for work that crosses real sockets. */
const awaitDone = <A, E>(fiber: Fiber.RuntimeFiber<A, E>) =>
  Effect.repeat(Effect.flatMap(Effect.promise(() => new Promise((r) => setTimeout(r, 5))), () => fiber.poll), {
    until: (exit) => exit._tag === "Some",
    times: 400
  })

describe("under TestClock", () => {
  it.scoped("a server with no session closes without the clock moving", () =>
    Effect.gen(function*() {
      const memory = yield* MemoryDriver.make({ size: MiB })
      const { scope } = yield* startServer([Export.make(memory)], {})
      const closing = yield* Effect.fork(Scope.close(scope, Exit.void))
      yield* awaitDone(closing)
      expect(closing.unsafePoll()?._tag).toBe("Success")
    }))

  it.scoped("the drain timeout interrupts a hung request at shutdown, before the grace period", () =>
    Effect.gen(function*() {
      const started = yield* Deferred.make<void>()
      const memory = yield* MemoryDriver.make({ size: MiB })
      const hung = Driver.filter(memory, {
        name: "hung",
        open: () => ({ write: () => Effect.zipRight(Deferred.succeed(started, undefined), Effect.never) })
      })
      const { port, scope } = yield* startServer([Export.make(hung)], {
        drainTimeoutMillis: 300,
        shutdownGraceMillis: 60_000
      })
      const client = yield* Client.connect(net.connect(port, "127.0.0.1"))
      const write = yield* Effect.fork(Effect.either(client.write(0, new Uint8Array(512))))
      yield* Deferred.await(started)
      const closing = yield* Effect.fork(Scope.close(scope, Exit.void))
      // Real time passes; the clock does not: the hung request holds the session.
      yield* Effect.promise(() => new Promise((r) => setTimeout(r, 100)))
      expect(closing.unsafePoll()).toBeNull()
      yield* TestClock.adjust("300 millis")
      yield* awaitDone(closing)
      expect(closing.unsafePoll()?._tag).toBe("Success")
      // The interrupted request gets no reply: the client sees the connection close.
      const result = yield* Fiber.join(write)
      expect(result._tag).toBe("Left")
    }))

  it.scoped("an in-process session with a delay filter answers exactly when the clock says", () =>
    Effect.gen(function*() {
      const stack = Delay.layer({ read: "100 millis" }).pipe(Layer.provide(MemoryDriver.layer({ size: MiB })))
      const client = yield* Testing.connect().pipe(Effect.provide(Testing.exportDriver(stack)))
      const read = yield* Effect.fork(client.read(0, 4096))
      yield* TestClock.adjust("99 millis")
      expect(read.unsafePoll()).toBeNull()
      yield* TestClock.adjust("1 millis")
      expect((yield* Fiber.join(read)).length).toBe(4096)
    }))
})
