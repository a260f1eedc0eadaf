/**
 * The owned receive path relies on Node.js internals (an accepted socket's `_handle`):
 * these tests fail loudly when a Node.js release changes them, and check what the server
 * relies on: bytes in one reused buffer, reading stopped by a sink that returns `false`,
 * the server counting the adopted connection, and frames kept whole by the FrameReader.
 */
import * as Effect from "effect/Effect"
import { describe, expect, it } from "vitest"
import * as FrameReader from "../../src/stream/FrameReader.ts"
import * as OwnedReceive from "../../src/stream/OwnedReceive.ts"
import { expectBytes, pattern } from "../support/Bytes.ts"
import { connected } from "../support/PausedConnection.ts"

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

describe("OwnedReceive", () => {
  it("this Node.js release has the handle adopting relies on", async () => {
    const { client, server, socket } = await connected()
    try {
      expect(OwnedReceive.canAdopt(socket), `Node.js ${process.version} changed net.Socket's _handle`).toBe(true)
    } finally {
      client.destroy()
      socket.destroy()
      server.close()
    }
  })

  it("reads into one reused buffer, stops reading when the sink says so, and the server counts the connection", async () => {
    const { client, server, socket: accepted } = await connected()
    const socket = OwnedReceive.adopt(accepted, 64 * 1024)!
    expect(socket).toBeDefined()
    const source = OwnedReceive.sourceOf(socket)!
    const data = pattern(3 * 1024 * 1024, 5)
    const received: Array<Buffer> = []
    const buffers = new Set<ArrayBufferLike>()
    let calls = 0
    let stopAfterFirst = true
    source.setSink((bytes) => {
      calls++
      buffers.add(bytes.buffer)
      received.push(Buffer.from(bytes))
      return !stopAfterFirst
    })
    client.write(data)
    while (calls === 0) await sleep(5)
    await sleep(100)
    // The first sink call returned false: nothing more was read.
    expect(calls).toBe(1)
    stopAfterFirst = false
    socket.resume()
    while (received.reduce((n, b) => n + b.length, 0) < data.length) await sleep(5)
    expectBytes(Buffer.concat(received), data)
    expect(calls).toBeGreaterThan(1)
    expect(buffers.size).toBe(1)
    // The server counts the adopted socket: it closes once that socket is gone.
    expect(await new Promise<number>((resolve) => server.getConnections((_, n) => resolve(n)))).toBe(1)
    const closed = new Promise<void>((resolve) => server.close(() => resolve()))
    client.destroy()
    socket.destroy()
    await closed
  })

  it("a closed connection's buffer receives the next connection's bytes, and none of the old ones", async () => {
    /** Adopts a new connection, sends `data` through it, and returns the buffer its bytes arrived in. */
    const receiveOnce = async (data: Uint8Array) => {
      const { client, server, socket: accepted } = await connected()
      const socket = OwnedReceive.adopt(accepted, 48 * 1024)! // a size no other test uses
      const received: Array<Buffer> = []
      const memories = new Set<ArrayBufferLike>()
      OwnedReceive.sourceOf(socket)!.setSink((bytes) => {
        memories.add(bytes.buffer)
        received.push(Buffer.from(bytes))
        return true
      })
      client.write(data)
      while (received.reduce((n, b) => n + b.length, 0) < data.length) await sleep(5)
      expectBytes(Buffer.concat(received), data)
      const closed = new Promise<void>((resolve) => socket.once("close", () => resolve()))
      client.destroy()
      socket.destroy()
      await closed
      server.close()
      return [...memories]
    }
    const first = await receiveOnce(pattern(200 * 1024, 1))
    const second = await receiveOnce(pattern(100 * 1024, 2))
    expect(first).toHaveLength(1)
    expect(second).toHaveLength(1)
    expect(second[0]).toBe(first[0]) // the same memory, with exactly the second connection's bytes received
  })

  it("a FrameReader over an adopted socket keeps every frame whole, in one piece", async () => {
    const { client, server, socket: accepted } = await connected()
    const socket = OwnedReceive.adopt(accepted, 64 * 1024)!
    const reader = FrameReader.attach(socket, { highWaterMark: 1024 * 1024 })
    expect(reader.borrowed).toBe(true)
    const sizes = [5, 3 * 1024 * 1024, 100, 70_000, 1024 * 1024, 1, 200_000]
    const frames = sizes.map((size, i) => pattern(size, i + 1))
    for (const frame of frames) {
      const length = Buffer.alloc(4)
      length.writeUInt32BE(frame.length)
      client.write(length)
      client.write(frame)
    }
    const got: Array<Uint8Array> = []
    let pieces = 0
    await new Promise<void>((resolve) => {
      let next: number | undefined
      const step = () => {
        while (got.length < frames.length) {
          if (next === undefined) {
            const header = reader.tryRead(4)
            if (header === undefined) return reader.want(4)
            next = Buffer.from(header).readUInt32BE(0)
          }
          const chunks = reader.tryReadChunks(next)
          if (chunks === undefined) return reader.want(next)
          pieces = Math.max(pieces, chunks.length)
          got.push(Buffer.concat(chunks)) // borrowed: copied before the next read
          next = undefined
        }
        resolve()
      }
      reader.onReadable(step)
      step()
    })
    frames.forEach((frame, i) => expectBytes(got[i]!, frame, `frame ${i}`))
    // A frame that spans many reads is assembled in one buffer.
    expect(pieces).toBe(1)
    reader.detach()
    client.destroy()
    socket.destroy()
    server.close()
  })

  it("a FrameReader's read returns copies that later reads do not overwrite", async () => {
    const { client, server, socket: accepted } = await connected()
    const socket = OwnedReceive.adopt(accepted, 4096)!
    const data = pattern(64 * 1024, 9)
    client.write(data)
    const outs = await Effect.runPromise(Effect.scoped(Effect.gen(function*() {
      const reader = yield* FrameReader.make(socket)
      const outs: Array<Uint8Array> = []
      for (let i = 0; i < 16; i++) outs.push(yield* reader.read(4096))
      return outs
    })))
    expectBytes(Buffer.concat(outs), data)
    client.destroy()
    socket.destroy()
    server.close()
  })
})
