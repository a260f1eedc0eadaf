/**
 * Bad input over a real socket: each case must be answered as the spec prescribes (or
 * close only that connection), and a fresh client must still read what was written.
 */
import * as Effect from "effect/Effect"
import * as net from "node:net"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as Client from "../../src/client/NbdClient.ts"
import { IHAVEOPT, Option, REQUEST_MAGIC, ReplyError } from "../../src/protocol/Constants.ts"
import { encodeRequestHeaderFast } from "../../src/protocol/Transmission.ts"
import { expectBytes, pattern } from "../support/Bytes.ts"
import * as TestServer from "../support/TestServer.ts"

let server: TestServer.TestServer
const KNOWN = pattern(64 * 1024, 42)

/** A raw connection that records everything the server sends and when it closes. */
const rawConnect = async () => {
  const socket = net.connect(server.port, "127.0.0.1")
  const received: Array<Buffer> = []
  let receivedLength = 0
  let closed = false
  const waiters: Array<() => void> = []
  const notify = () => waiters.splice(0).forEach((w) => w())
  socket.on("data", (chunk) => {
    received.push(chunk)
    receivedLength += chunk.length
    notify()
  })
  socket.on("close", () => {
    closed = true
    notify()
  })
  socket.on("error", () => {})
  await new Promise<void>((resolve) => socket.once("connect", () => resolve()))
  const bytes = () => Buffer.concat(received)
  const until = (condition: () => boolean, what: string, ms = 5000) =>
    new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms)
      const check = () => {
        if (condition()) {
          clearTimeout(timer)
          resolve()
        } else waiters.push(check)
      }
      check()
    })
  return {
    socket,
    bytes,
    write: (data: Uint8Array) => socket.write(data),
    /** Waits until at least `n` bytes have arrived. */
    receive: (n: number, ms?: number) => until(() => receivedLength >= n, `${n} bytes`, ms),
    /** Waits for the server to close the connection. */
    closed: () => until(() => closed, "the server to close the connection")
  }
}

const u32 = (n: number) => {
  const b = Buffer.alloc(4)
  b.writeUInt32BE(n)
  return b
}

const optionHeader = (option: number, length: number) => {
  const b = Buffer.alloc(16)
  b.writeBigUInt64BE(IHAVEOPT, 0)
  b.writeUInt32BE(option, 8)
  b.writeUInt32BE(length, 12)
  return b
}

const requestHeader = (type: number, flags: number, cookie: bigint, offset: bigint, length: number, magic = REQUEST_MAGIC) => {
  const b = encodeRequestHeaderFast(flags, type, cookie, offset, length)
  b.writeUInt32BE(magic, 0)
  return b
}

/** Opens a raw connection into transmission on the default export with EXPORT_NAME. */
const rawTransmission = async () => {
  const c = await rawConnect()
  await c.receive(18)
  c.write(u32(3)) // FIXED_NEWSTYLE | NO_ZEROES
  c.write(optionHeader(Option.EXPORT_NAME, 0))
  await c.receive(18 + 10)
  return c
}

/** A fresh, well-behaved client still reads the bytes written before the test. */
const freshClientReadsKnownData = () =>
  Effect.runPromise(
    Effect.scoped(
      Effect.gen(function*() {
        const client = yield* Client.connect(net.connect(server.port, "127.0.0.1"))
        return yield* client.read(1024 * 1024, KNOWN.length)
      })
    )
  ).then((data) => expectBytes(data, KNOWN))

beforeAll(async () => {
  server = await TestServer.start({ size: 64 * 1024 * 1024 })
  server.store!.write(1024 * 1024, KNOWN)
})
afterAll(() => server.stop())

describe("bad input over a raw socket", () => {
  it("garbage client flags: the server closes the connection", async () => {
    const c = await rawConnect()
    await c.receive(18)
    c.write(u32(0xdeadbeef))
    await c.closed()
    await freshClientReadsKnownData()
  })

  it("client asks NO_ZEROES-style unknown bits beyond bit 1: closed", async () => {
    const c = await rawConnect()
    await c.receive(18)
    c.write(u32(1 | 4))
    await c.closed()
    await freshClientReadsKnownData()
  })

  it("a wrong option magic closes the connection", async () => {
    const c = await rawConnect()
    await c.receive(18)
    c.write(u32(1))
    const bad = optionHeader(Option.LIST, 0)
    bad[0] = 0
    c.write(bad)
    await c.closed()
    await freshClientReadsKnownData()
  })

  it("an option with a 4 GiB length closes the connection without reading it", async () => {
    const c = await rawConnect()
    await c.receive(18)
    c.write(u32(1))
    c.write(optionHeader(Option.INFO, 0xffffffff))
    await c.closed()
    await freshClientReadsKnownData()
  })

  it("an unknown option gets ERR_UNSUP and the next option is answered", async () => {
    const c = await rawConnect()
    await c.receive(18)
    c.write(u32(1))
    c.write(Buffer.concat([optionHeader(1234, 5), Buffer.from("hello")]))
    await c.receive(18 + 20)
    const reply = c.bytes().subarray(18, 38)
    expect(reply.readUInt32BE(8)).toBe(1234)
    expect(reply.readUInt32BE(12)).toBe(ReplyError.UNSUP)
    const messageLength = reply.readUInt32BE(16)
    c.write(optionHeader(Option.LIST, 0))
    await c.receive(18 + 20 + messageLength + 20)
    const next = c.bytes().subarray(18 + 20 + messageLength)
    expect(next.readUInt32BE(8)).toBe(Option.LIST)
    c.socket.destroy()
    await freshClientReadsKnownData()
  })

  it("EXPORT_NAME without NO_ZEROES answers size, flags and 124 zero bytes", async () => {
    const c = await rawConnect()
    await c.receive(18)
    c.write(u32(1))
    c.write(optionHeader(Option.EXPORT_NAME, 0))
    await c.receive(18 + 134)
    const reply = c.bytes().subarray(18)
    expect(reply.length).toBe(134)
    expect(reply.readBigUInt64BE(0)).toBe(64n * 1024n * 1024n)
    expect(reply.subarray(10).every((b) => b === 0)).toBe(true)
    c.write(requestHeader(0, 0, 7n, 1024n * 1024n, 16))
    await c.receive(18 + 134 + 16 + 16)
    const simple = c.bytes().subarray(18 + 134)
    expect(simple.readUInt32BE(4)).toBe(0)
    expect(simple.readBigUInt64BE(8)).toBe(7n)
    expectBytes(simple.subarray(16, 32), KNOWN.subarray(0, 16))
    c.socket.destroy()
  })

  it("EXPORT_NAME of an unknown export closes the connection", async () => {
    const c = await rawConnect()
    await c.receive(18)
    c.write(u32(3))
    c.write(Buffer.concat([optionHeader(Option.EXPORT_NAME, 7), Buffer.from("missing")]))
    await c.closed()
    expect(c.bytes().length).toBe(18)
    await freshClientReadsKnownData()
  })

  it("a wrong request magic closes the connection", async () => {
    const c = await rawTransmission()
    c.write(requestHeader(0, 0, 1n, 0n, 512, 0x12345678))
    await c.closed()
    await freshClientReadsKnownData()
  })

  it("an unknown command is EINVAL and the connection stays usable", async () => {
    const c = await rawTransmission()
    c.write(requestHeader(77, 0, 5n, 0n, 0))
    await c.receive(28 + 16)
    const reply = c.bytes().subarray(28)
    expect(reply.readUInt32BE(4)).toBe(22)
    expect(reply.readBigUInt64BE(8)).toBe(5n)
    c.write(requestHeader(0, 0, 6n, 1024n * 1024n, 8))
    await c.receive(28 + 16 + 16 + 8)
    expect(c.bytes().subarray(28 + 16).readBigUInt64BE(8)).toBe(6n)
    c.socket.destroy()
  })

  it("a truncated request then close ends only that connection", async () => {
    const c = await rawTransmission()
    c.write(requestHeader(0, 0, 1n, 0n, 512).subarray(0, 13))
    c.socket.end()
    await c.closed()
    await freshClientReadsKnownData()
  })

  it("a write whose payload is cut off by a disconnect leaves each 4 KiB block whole: old or new, never torn", async () => {
    const c = await rawTransmission()
    c.write(requestHeader(1, 0, 1n, 1024n * 1024n, 65536))
    c.write(Buffer.alloc(1000, 0xff))
    c.write(Buffer.alloc(9000, 0xff))
    c.socket.destroy()
    await c.closed()
    const data = await Effect.runPromise(Effect.scoped(Effect.gen(function*() {
      const client = yield* Client.connect(net.connect(server.port, "127.0.0.1"))
      return yield* client.read(1024 * 1024, KNOWN.length)
    })))
    const ff = Buffer.alloc(4096, 0xff)
    for (const at of [0, 4096]) {
      const block = Buffer.from(data.subarray(at, at + 4096))
      if (!block.equals(ff)) expectBytes(block, KNOWN.subarray(at, at + 4096))
    }
    // The third block got 1808 of its bytes before the disconnect: none of them is written.
    expectBytes(data.subarray(8192), KNOWN.subarray(8192))
    server.store!.write(1024 * 1024, KNOWN)
    await freshClientReadsKnownData()
  })

  it("an export that shrinks while a write's payload arrives: the write is answered ENOSPC, the connection stays usable", async () => {
    const size = 64 * 1024 * 1024
    const at = size - 65536
    const c = await rawTransmission()
    c.write(requestHeader(1, 0, 31n, BigInt(at), 65536))
    c.write(Buffer.alloc(8192, 0xee))
    // The first blocks reach the store as they arrive; then the export shrinks under the rest.
    for (let i = 0; i < 500 && server.store!.read(at, 1)[0] !== 0xee; i++) await new Promise((r) => setTimeout(r, 2))
    expect(server.store!.read(at, 8192).every((b) => b === 0xee)).toBe(true)
    server.store!.resize(size - 32768)
    try {
      c.write(Buffer.alloc(65536 - 8192, 0xee))
      await c.receive(28 + 16)
      const reply = c.bytes().subarray(28)
      expect(reply.readBigUInt64BE(8)).toBe(31n)
      expect(reply.readUInt32BE(4)).toBe(28) // ENOSPC
      c.write(requestHeader(0, 0, 32n, 1024n * 1024n, 16))
      await c.receive(28 + 16 + 16 + 16)
      expectBytes(c.bytes().subarray(28 + 32, 28 + 48), KNOWN.subarray(0, 16))
      c.socket.destroy()
    } finally {
      server.store!.resize(size)
    }
  })

  it("a write payload beyond any sane size closes the connection", async () => {
    const c = await rawTransmission()
    c.write(requestHeader(1, 0, 1n, 0n, 0xffffffff))
    await c.closed()
    await freshClientReadsKnownData()
  })

  it("a client vanishing with requests in flight does not disturb others", async () => {
    const c = await rawTransmission()
    for (let i = 0; i < 32; i++) c.write(requestHeader(0, 0, BigInt(i), 0n, 65536))
    c.socket.destroy()
    await c.closed()
    await freshClientReadsKnownData()
  })
})

describe("backpressure", () => {
  it("a client that does not read its replies: the server stops taking requests, memory stays bounded, then all replies arrive", async () => {
    const warnings: Array<string> = []
    const onWarning = (w: Error) => warnings.push(`${w.name}: ${w.message}`)
    process.on("warning", onWarning)
    try {
      const c = await rawTransmission()
      c.socket.pause()
      const count = 2000
      const length = 65536
      const before = process.memoryUsage().arrayBuffers
      // In batches, so that the server is woken up many times while its replies are stuck.
      for (let batch = 0; batch < 20; batch++) {
        for (let i = batch * 100; i < (batch + 1) * 100; i++) c.write(requestHeader(0, 0, BigInt(i), 1024n * 1024n, length))
        await new Promise((resolve) => setTimeout(resolve, 50))
      }
      await new Promise((resolve) => setTimeout(resolve, 200))
      const grown = process.memoryUsage().arrayBuffers - before
      // 128 MiB of replies were asked for; the server holds back once ~16 MiB are queued.
      expect(grown).toBeLessThan(64 * 1024 * 1024)
      c.socket.resume()
      const total = 28 + count * (16 + length)
      await c.receive(total, 30_000)
      const replies = c.bytes().subarray(28)
      const seen = new Set<bigint>()
      for (let at = 0; at < replies.length; at += 16 + length) {
        expect(replies.readUInt32BE(at + 4)).toBe(0)
        seen.add(replies.readBigUInt64BE(at + 8))
        if (seen.size === 1) expectBytes(replies.subarray(at + 16, at + 16 + 16), KNOWN.subarray(0, 16))
      }
      expect(seen.size).toBe(count)
      c.socket.destroy()
      expect(warnings.filter((w) => w.includes("MaxListeners"))).toEqual([])
    } finally {
      process.off("warning", onWarning)
    }
  })
})
