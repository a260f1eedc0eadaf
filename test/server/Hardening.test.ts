/**
 * Limits against hostile or careless clients: a negotiation deadline, an optional idle
 * timeout, a connection limit that refuses only the connections over it, and requests
 * up to 64 MiB accepted (as nbdkit and nbd-server do).
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as TestClock from "effect/TestClock"
import * as net from "node:net"
import type { Duplex } from "node:stream"
import * as Client from "../../src/client/NbdClient.ts"
import * as MemoryDriver from "../../src/drivers/Memory.ts"
import * as Testing from "../../src/testing/InProcess.ts"
import { pattern } from "../support/Bytes.ts"
import * as TestServer from "../support/TestServer.ts"
import { available, run } from "../support/Tools.ts"

const MiB = 1024 * 1024
const exports = Testing.exportDriver(MemoryDriver.layer({ size: 128 * MiB }))

/** Resolves when the stream ends or closes (the server hung up). */
const closed = (stream: Duplex) =>
  new Promise<void>((resolve) => {
    stream.on("data", () => {})
    stream.once("end", resolve)
    stream.once("close", resolve)
  })

/** Whether a promise settled within a few real milliseconds. */
const settledSoon = (promise: Promise<void>) =>
  Effect.promise(() => Promise.race([promise.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 50))]))

describe("deadlines (TestClock)", () => {
  it.scoped("a client that does not finish negotiating is disconnected at the handshake timeout", () =>
    Effect.gen(function*() {
      const stream = yield* Testing.serve({ server: { handshakeTimeoutMillis: 10_000 } })
      const hangUp = closed(stream)
      yield* TestClock.adjust("9999 millis")
      expect(yield* settledSoon(hangUp)).toBe(false)
      yield* TestClock.adjust("1 millis")
      expect(yield* settledSoon(hangUp)).toBe(true)
    }).pipe(Effect.provide(exports)))

  it.scoped("a client in transmission is never timed out by default", () =>
    Effect.gen(function*() {
      const stream = yield* Testing.serve({ server: { handshakeTimeoutMillis: 1_000 } })
      const client = yield* Client.connect(stream)
      yield* TestClock.adjust("1 hour")
      expect((yield* client.read(0, 512)).length).toBe(512)
    }).pipe(Effect.provide(exports)))

  it.scoped("with an idle timeout, an idle connection is closed, an active one is not", () =>
    Effect.gen(function*() {
      const stream = yield* Testing.serve({ server: { idleTimeoutMillis: 60_000 } })
      const client = yield* Client.connect(stream)
      const hangUp = closed(stream)
      for (let i = 0; i < 5; i++) {
        yield* TestClock.adjust("30 seconds")
        yield* client.read(0, 512)
      }
      expect(yield* settledSoon(hangUp)).toBe(false)
      yield* TestClock.adjust("90 seconds")
      expect(yield* settledSoon(hangUp)).toBe(true)
    }).pipe(Effect.provide(exports)))
})

describe("connection limit (TCP)", () => {
  let server: TestServer.TestServer
  beforeAll(async () => {
    server = await TestServer.start({ size: 16 * MiB, config: { maxConnections: 10 } })
  })
  afterAll(() => server?.stop())

  it.scoped("the 11th connection is closed at once; the first ten keep working", () =>
    Effect.gen(function*() {
      const clients = yield* Effect.forEach(
        Array.from({ length: 10 }, (_, i) => i),
        (i) =>
          Effect.tap(Client.connect(net.connect(server.port, "127.0.0.1")), (client) =>
            client.write(i * 4096, pattern(4096, i + 1))),
        { concurrency: "unbounded" }
      )
      const eleventh = net.connect(server.port, "127.0.0.1")
      const refused = yield* Effect.either(Client.handshake(eleventh))
      expect(refused._tag).toBe("Left")
      const reads = yield* Effect.forEach(clients, (client, i) => client.read(i * 4096, 4096))
      reads.forEach((data, i) => expect(Buffer.from(data).equals(Buffer.from(pattern(4096, i + 1)))).toBe(true))
    }))
})

describe("request size", () => {
  it.scoped("a 64 MiB write and read are served; one byte more is EINVAL and the connection goes on", () =>
    Effect.gen(function*() {
      const client = yield* Testing.connect()
      const data = pattern(64 * MiB, 3)
      yield* client.write(0, data)
      expect(Buffer.from(yield* client.read(0, 64 * MiB)).equals(Buffer.from(data))).toBe(true)
      const over = yield* Effect.flip(client.read(0, 64 * MiB + 1))
      expect(over._tag === "ProtocolError" && over.errno).toBe("EINVAL")
      expect((yield* client.read(0, 512)).length).toBe(512)
    }).pipe(Effect.provide(exports)), 30_000)

  it.scoped("--max-request lowers the limit, and INFO_BLOCK_SIZE says so", () =>
    Effect.gen(function*() {
      const stream = yield* Testing.serve({ server: { maxRequest: MiB } })
      const session = yield* Client.handshake(stream)
      const info = yield* session.info("", [3])
      expect(info.blockSize?.maximum).toBe(MiB)
    }).pipe(Effect.provide(Layer.fresh(exports))))
})

describe.skipIf(!available(["nbdinfo"]))("a flood of idle connections (TCP)", () => {
  const FLOOD = 1000
  let server: TestServer.TestServer
  beforeAll(async () => {
    server = await TestServer.start({ size: 16 * MiB, config: { handshakeTimeoutMillis: 2_000, maxConnections: 2 * FLOOD } })
  })
  afterAll(() => server?.stop())

  it("1,000 clients that say nothing are all closed at the deadline; nbdinfo is served meanwhile", async () => {
    const memory = () => process.memoryUsage().rss
    const before = memory()
    const sockets = await Promise.all(Array.from({ length: FLOOD }, () =>
      new Promise<net.Socket>((resolve, reject) => {
        const socket = net.connect(server.port, "127.0.0.1", () => resolve(socket))
        socket.once("error", reject)
      })))
    const ends = sockets.map((socket) => closed(socket))
    const started = Date.now()
    const info = await run("nbdinfo", ["--size", server.uri()])
    expect(info.trim()).toBe(String(16 * MiB))
    const peak = memory()
    await Promise.all(ends)
    const seconds = (Date.now() - started) / 1000
    expect(seconds).toBeLessThan(10)
    // Figures for the record (not asserted: the test process holds the clients too).
    console.log(`idle flood: ${FLOOD} connections closed after ${seconds.toFixed(1)} s; ` +
      `RSS before ${(before / MiB).toFixed(0)} MiB, peak ${(peak / MiB).toFixed(0)} MiB, after ${(memory() / MiB).toFixed(0)} MiB`)
  }, 30_000)
})
