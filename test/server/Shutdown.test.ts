/**
 * Graceful shutdown over a real socket: while a write is in flight, stopping the server
 * answers new requests ESHUTDOWN and new options ERR_SHUTDOWN, the in-flight write still
 * completes and is acknowledged, and drivers are flushed before the server is gone.
 */
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Scope from "effect/Scope"
import * as Exit from "effect/Exit"
import * as net from "node:net"
import { describe, expect, it } from "vitest"
import * as Client from "../../src/client/NbdClient.ts"
import * as MemoryDriver from "../../src/drivers/Memory.ts"
import * as Export from "../../src/Export.ts"
import { ReplyError } from "../../src/protocol/Constants.ts"
import { expectBytes, pattern } from "../support/Bytes.ts"
import * as TestServer from "../support/TestServer.ts"
import { adjusted } from "../support/InProcess.ts"

describe("graceful shutdown", () => {
  it("finishes in-flight writes, refuses new work, flushes, then closes", { timeout: 15_000 }, async () => {
    const store = new MemoryDriver.SparseMemory(16 * 1024 * 1024)
    const memory = MemoryDriver.fromStore(store)
    const gate = Effect.runSync(Deferred.make<void>())
    let writesStarted = 0
    let flushes = 0
    // Replacing write drops the fast path: every write goes through the gate.
    const driver = adjusted(memory, (below) => ({
      write: (offset, data, options) =>
        Effect.sync(() => writesStarted++).pipe(
          Effect.zipRight(Deferred.await(gate)),
          Effect.zipRight(below.write(offset, data, options))
        ),
      flush: Effect.sync(() => {
        flushes++
      })
    }))
    const server = await TestServer.start({ exports: [Export.make(driver)], config: { shutdownGraceMillis: 1_000 } })
    const scope = Effect.runSync(Scope.make())
    const run = <A, E>(effect: Effect.Effect<A, E, Scope.Scope>) =>
      Effect.runPromise(Scope.extend(effect, scope))
    const connect = () => run(Client.connect(net.connect(server.port, "127.0.0.1")))

    const client = await connect()
    const write = run(Effect.either(client.write(4096, pattern(4096, 7))))
    while (writesStarted === 0) await new Promise((resolve) => setTimeout(resolve, 5))

    const stopped = server.stop()
    let errno: string | undefined
    for (let tries = 0; tries < 200 && errno === undefined; tries++) {
      const result = await run(Effect.either(client.read(0, 512)))
      if (result._tag === "Left" && result.left._tag === "ProtocolError") errno = result.left.errno
      else await new Promise((resolve) => setTimeout(resolve, 5))
    }
    expect(errno).toBe("ESHUTDOWN")

    // This late client never disconnects: shutdown must still end, after the 1 s grace period.
    const late = await run(Effect.either(Effect.flatMap(
      Client.handshake(net.connect(server.port, "127.0.0.1")),
      (session) => session.list
    )))
    expect(late._tag === "Left" && late.left._tag === "OptionRefused" && late.left.replyType).toBe(ReplyError.SHUTDOWN)

    expect(flushes).toBe(0)
    await Effect.runPromise(Deferred.succeed(gate, undefined))
    const written = await write
    expect(written._tag).toBe("Right")
    await stopped
    expect(flushes).toBe(1)
    expectBytes(store.read(4096, 4096), pattern(4096, 7))
    await Effect.runPromise(Scope.close(scope, Exit.void))
  })

  it("an idle server stops at once", async () => {
    const server = await TestServer.start()
    const started = Date.now()
    await server.stop()
    expect(Date.now() - started).toBeLessThan(2000)
  })
})
