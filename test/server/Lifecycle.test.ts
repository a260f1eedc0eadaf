/**
 * What a session leaves behind and how it ends: no fiber outlives a finished session,
 * a hung driver cannot hold up the server's stop, requests still queued at shutdown
 * are answered ESHUTDOWN, and the client survives a server that breaks the protocol.
 */
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Scope from "effect/Scope"
import * as net from "node:net"
import { describe, expect, it } from "vitest"
import * as Client from "../../src/client/NbdClient.ts"
import * as Driver from "../../src/Driver.ts"
import * as MemoryDriver from "../../src/drivers/Memory.ts"
import * as Export from "../../src/Export.ts"
import { ChunkType, Option, Reply, ReplyFlags } from "../../src/protocol/Constants.ts"
import * as Handshake from "../../src/protocol/Handshake.ts"
import * as OptionData from "../../src/protocol/OptionData.ts"
import * as Wire from "../../src/protocol/Transmission.ts"
import * as Shutdown from "../../src/server/Shutdown.ts"
import { pattern } from "../support/Bytes.ts"
import { adjusted, duplexPair, serverStream } from "../support/InProcess.ts"
import * as TestServer from "../support/TestServer.ts"

const MiB = 1024 * 1024

const scoped = <A>(f: (run: <B, F>(e: Effect.Effect<B, F, Scope.Scope>) => Promise<B>) => Promise<A>) => async () => {
  const scope = Effect.runSync(Scope.make())
  try {
    return await f((e) => Effect.runPromise(Scope.extend(e, scope)))
  } finally {
    await Effect.runPromise(Scope.close(scope, Exit.void))
  }
}

describe("session lifecycle", () => {
  it("finished sessions leave no fiber behind", scoped(async (run) => {
    const server = await TestServer.start({ size: MiB })
    try {
      const session = () =>
        run(Effect.scoped(Effect.gen(function*() {
          const client = yield* Client.connect(net.connect(server.port, "127.0.0.1"))
          yield* client.read(0, 512)
          yield* client.disconnect
        })))
      await session()
      await new Promise((resolve) => setTimeout(resolve, 50))
      const before = (await Effect.runPromise(Fiber.roots)).length
      for (let i = 0; i < 40; i++) await session()
      await new Promise((resolve) => setTimeout(resolve, 100))
      const after = (await Effect.runPromise(Fiber.roots)).length
      expect(after - before).toBeLessThan(5)
    } finally {
      await server.stop()
    }
  }))

  it("a driver that never answers cannot hold the server's stop past its grace period", scoped(async (run) => {
    let interrupted = false
    const hung = Driver.make({
      name: "hung",
      size: Effect.succeed(MiB),
      read: (_, length) => Effect.succeed(new Uint8Array(length)),
      write: () => Effect.never.pipe(Effect.onInterrupt(() => Effect.sync(() => (interrupted = true))))
    })
    const server = await TestServer.start({
      exports: [Export.make(hung)],
      config: { shutdownGraceMillis: 300, drainTimeoutMillis: 30_000 }
    })
    const client = await run(Client.connect(net.connect(server.port, "127.0.0.1")))
    const write = run(Effect.either(client.write(0, pattern(512, 1))))
    await new Promise((resolve) => setTimeout(resolve, 100))
    const started = Date.now()
    await server.stop()
    expect(Date.now() - started).toBeLessThan(3000)
    expect(interrupted).toBe(true)
    expect((await write)._tag).toBe("Left") // never acknowledged
  }))

  it("requests queued behind a full pipeline at shutdown are answered ESHUTDOWN", scoped(async (run) => {
    const gate = Effect.runSync(Deferred.make<void>())
    const store = new MemoryDriver.SparseMemory(MiB)
    const gated = Driver.make({
      name: "gated",
      size: Effect.succeed(MiB),
      read: (offset, length) => Effect.sync(() => store.read(offset, length)),
      write: (offset, data) => Effect.zipRight(Deferred.await(gate), Effect.sync(() => store.write(offset, data)))
    })
    const shutdown = Effect.runSync(Shutdown.make)
    const registry = Export.ExportRegistry.layer([Export.make(gated)])
    const stream = await run(serverStream({ maxInFlight: 1 }, shutdown).pipe(Effect.provide(registry)))
    const client = await run(Client.connect(stream))
    const write = run(Effect.either(client.write(0, pattern(512, 1))))
    const reads = [1, 2, 3].map(() => run(Effect.either(client.read(0, 512))))
    await new Promise((resolve) => setTimeout(resolve, 50))
    await Effect.runPromise(shutdown.trigger)
    await Effect.runPromise(Deferred.succeed(gate, undefined))
    expect((await write)._tag).toBe("Right")
    for (const read of reads) {
      const result = await read
      expect(result._tag === "Left" && result.left._tag === "ProtocolError" && result.left.errno).toBe("ESHUTDOWN")
    }
  }))

  it("a synchronous driver returning the wrong number of bytes gets EIO, and the stream stays in sync", scoped(async (run) => {
    const memory = MemoryDriver.fromStore(new MemoryDriver.SparseMemory(MiB))
    const broken = adjusted(memory, (below) => ({
      sync: { ...below.sync!, read: (offset, length) => (offset === 0 ? [new Uint8Array(length - 1)] : [length]) }
    }))
    for (const structuredReplies of [false, true]) {
      const stream = await run(serverStream().pipe(Effect.provide(Layer.succeed(Export.ExportRegistry, Export.ExportRegistry.fromExports([Export.make(broken)])))))
      const client = await run(Client.connect(stream, { structuredReplies }))
      const bad = await run(Effect.either(client.read(0, 4096)))
      expect(bad._tag === "Left" && bad.left._tag === "ProtocolError" && bad.left.errno).toBe("EIO")
      expect((await run(client.read(4096, 4096))).length).toBe(4096)
    }
  }))
})

describe("protocol violations", () => {
  it("EXPORT_NAME with an oversized name closes the connection without an option reply", scoped(async (run) => {
    const server = await TestServer.start({ size: MiB })
    try {
      const session = await run(Client.handshake(net.connect(server.port, "127.0.0.1")))
      const result = await run(Effect.either(session.option(Option.EXPORT_NAME, new Uint8Array(70_000).fill(0x41))))
      expect(result._tag === "Left" && result.left._tag).toBe("ClientError")
    } finally {
      await server.stop()
    }
  }))

  it("the client fails (does not hang) when a server sends a chunk outside the request", scoped(async (run) => {
    const [clientSide, serverSide] = duplexPair()
    // A fake server: greeting, ACK to STRUCTURED_REPLY, export info for GO, then a bad chunk.
    const received: Array<Buffer> = []
    let stage = 0
    serverSide.write(Handshake.Greeting.encodeUnsafe({ handshakeFlags: 3 }))
    const reply = (option: number, replyType: number, data: Uint8Array = new Uint8Array(0)) => {
      serverSide.write(Handshake.OptionReplyHeader.encodeUnsafe({ option, replyType, length: data.length }))
      if (data.length > 0) serverSide.write(data)
    }
    serverSide.on("data", (chunk: Buffer) => {
      received.push(chunk)
      const all = Buffer.concat(received)
      if (stage === 0 && all.length >= 4 + 16) {
        stage = 1
        reply(Option.STRUCTURED_REPLY, Reply.ACK)
      }
      if (stage === 1 && all.length >= 4 + 16 + 16 + 10) {
        stage = 2
        reply(Option.GO, Reply.INFO, OptionData.InfoExport.encodeUnsafe({ size: BigInt(MiB), transmissionFlags: 1 }))
        reply(Option.GO, Reply.ACK)
      }
      if (stage === 2 && all.length >= 4 + 16 + 16 + 10 + 28) {
        stage = 3
        const request = all.subarray(all.length - 28)
        const cookie = request.readBigUInt64BE(8)
        const header = Wire.encodeStructuredHeaderFast(ReplyFlags.DONE, ChunkType.OFFSET_DATA, cookie, 8 + 16, 8)
        header.writeBigUInt64BE(4096n, 20) // outside [0, 512)
        serverSide.write(Buffer.concat([header, Buffer.alloc(16)]))
      }
    })
    const client = await run(Client.connect(clientSide))
    const result = await run(Effect.either(Effect.timeout(client.read(0, 512), "2 seconds")))
    expect(result._tag === "Left" && result.left._tag).toBe("ClientError")
  }))
})
