/**
 * Large WRITE payloads, which reach the memory store as they arrive (streamed in whole
 * blocks, see `PayloadSink`), sent over real sockets beside small writes: in bulk and
 * trickled in odd slices, with simple and extended headers, from several connections at
 * once. Every byte lands where it belongs, a READ after the writes on the same connection
 * sees them all, and a payload cut short leaves each block old or new and the server serving.
 */
import * as Effect from "effect/Effect"
import * as net from "node:net"
import { describe, expect, it } from "vitest"
import * as Client from "../../src/client/NbdClient.ts"
import { Command } from "../../src/protocol/Constants.ts"
import { encodeRequestHeaderFast } from "../../src/protocol/Transmission.ts"
import { expectBytes, pattern } from "../support/Bytes.ts"
import { HANDSHAKE_BYTES, receiveAll, slowReader } from "../support/SlowReader.ts"
import * as TestServer from "../support/TestServer.ts"

const K = 1024
const MiB = 1024 * K
const SIZE = 32 * MiB

/** A write of the test: where, and how long (its bytes come from {@link pattern}). */
interface Write {
  readonly offset: number
  readonly length: number
}

/**
 * Large writes at odd offsets, small ones between them, and a large one over pages
 * allocated out of order (so its pages lie in two runs of slots).
 */
const WRITES: ReadonlyArray<Write> = [
  { offset: 12345, length: MiB },
  { offset: 3 * MiB, length: 64 * K },
  { offset: 3 * MiB + 64 * K, length: 4 * K },
  { offset: 5 * MiB + 7, length: 300_001 },
  { offset: 6 * MiB, length: 64 * K - 1 },
  { offset: 8 * MiB - 1000, length: 2 * MiB + 3 },
  { offset: 20 * MiB + 32 * K, length: 4 * K },
  { offset: 20 * MiB, length: 256 * K },
  { offset: 12345 + 100 * K, length: 200 * K } // over the first one
]

/** The export's expected content after `writes`, from zeroes. */
const model = (writes: ReadonlyArray<Write>): Buffer => {
  const out = Buffer.alloc(SIZE)
  writes.forEach((w, i) => out.set(pattern(w.length, i + 1), w.offset))
  return out
}

/** The requests of `writes` (cookies 1...), then one READ of `[0, readLength)` (cookie 0), as one byte stream. */
const requestStream = (writes: ReadonlyArray<Write>, readLength: number): Buffer =>
  Buffer.concat([
    ...writes.flatMap((w, i) => [
      encodeRequestHeaderFast(0, Command.WRITE, BigInt(i + 1), BigInt(w.offset), w.length),
      pattern(w.length, i + 1)
    ]),
    encodeRequestHeaderFast(0, Command.READ, 0n, 0n, readLength)
  ])

/** Sends `bytes` in slices of the given sizes (in turn), pausing now and then so that the server reads them apart. */
const trickle = async (socket: net.Socket, bytes: Buffer, sizes: ReadonlyArray<number>) => {
  let at = 0
  for (let i = 0; at < bytes.length; i++) {
    const n = sizes[i % sizes.length]!
    if (!socket.write(bytes.subarray(at, at + n))) await new Promise((resolve) => socket.once("drain", resolve))
    at += n
    if (i % 3 === 0) await new Promise((resolve) => setTimeout(resolve, 1))
  }
}

/** Parses simple replies: every write answered without error, and the READ's data. */
const parseReplies = (bytes: Buffer, writes: number, readLength: number): Buffer => {
  const answered = new Set<number>()
  let data: Buffer | undefined
  for (let at = HANDSHAKE_BYTES; at < bytes.length;) {
    expect(bytes.readUInt32BE(at)).toBe(0x67446698)
    expect(bytes.readUInt32BE(at + 4)).toBe(0)
    const cookie = Number(bytes.readBigUInt64BE(at + 8))
    at += 16
    if (cookie === 0) {
      data = bytes.subarray(at, at + readLength)
      at += readLength
    } else {
      answered.add(cookie)
    }
  }
  expect(answered.size).toBe(writes)
  return data!
}

const runRaw = async (send: (socket: net.Socket, bytes: Buffer) => Promise<void>) => {
  const server = await TestServer.start({ size: SIZE })
  try {
    const readLength = 11 * MiB
    const socket = await slowReader(server.port)
    const replies = receiveAll(socket, HANDSHAKE_BYTES + WRITES.length * 16 + 16 + readLength)
    await send(socket, requestStream(WRITES, readLength))
    const received = await replies
    socket.destroy()
    const expected = model(WRITES)
    // The READ came after the writes on the same connection: it sees all of them.
    expectBytes(parseReplies(received, WRITES.length, readLength), expected.subarray(0, readLength), "READ reply")
    expectBytes(await server.read(0, SIZE), expected, "export")
  } finally {
    await server.stop()
  }
}

describe("large WRITE payloads into the memory store", () => {
  it("land whole and in place when sent in bulk", { timeout: 30_000 }, () =>
    runRaw(async (socket, bytes) => void socket.write(bytes)))

  it("land whole and in place when trickled in odd slices", { timeout: 30_000 }, () =>
    runRaw((socket, bytes) => trickle(socket, bytes, [1, 27, 4096, 65_536 + 5, 100_000, 300_000, 31])))

  it("land whole with extended headers, from several connections at once", { timeout: 30_000 }, async () => {
    const region = 24 * MiB
    const server = await TestServer.start({ size: 4 * region })
    try {
      // Writes that do not overlap (they run concurrently), each connection in a region of its own.
      const disjoint = WRITES.filter((_, i) => i !== 6 && i !== 8)
      await Promise.all([0, 1, 2, 3].map((c) =>
        Effect.runPromise(Effect.scoped(Effect.gen(function*() {
          const client = yield* Client.connect(net.connect(server.port, "127.0.0.1"), { extendedHeaders: true })
          expect(client.extendedHeaders).toBe(true)
          yield* Effect.forEach(disjoint, (w, i) => client.write(c * region + w.offset, pattern(w.length, 10 * c + i)), {
            concurrency: 4
          })
          yield* client.disconnect
        })))
      ))
      for (const c of [0, 1, 2, 3]) {
        const expected = Buffer.alloc(region)
        disjoint.forEach((w, i) => expected.set(pattern(w.length, 10 * c + i), w.offset))
        expectBytes(await server.read(c * region, region), expected, `region of connection ${c}`)
      }
    } finally {
      await server.stop()
    }
  })

  it("a payload cut short leaves each block old or new, and the server serving", { timeout: 30_000 }, async () => {
    const server = await TestServer.start({ size: SIZE })
    try {
      const old = pattern(2 * MiB, 9)
      await server.write(0, old)
      const socket = await slowReader(server.port)
      socket.write(encodeRequestHeaderFast(0, Command.WRITE, 1n, 100n, 2 * MiB))
      const fresh = pattern(2 * MiB, 3)
      // In pieces that end inside blocks, with pauses so that the server reads them apart.
      await trickle(socket, Buffer.from(fresh.subarray(0, MiB + 1234)), [65_536 + 77, 5_000, 300_001])
      await new Promise((resolve) => setTimeout(resolve, 100))
      socket.destroy()
      await new Promise((resolve) => setTimeout(resolve, 50))
      const now = await server.read(0, 2 * MiB)
      const written = Buffer.from(old)
      written.set(fresh.subarray(0, 2 * MiB - 100), 100)
      let blocksNew = 0
      for (let at = 0; at < 2 * MiB; at += 4096) {
        const block = now.subarray(at, at + 4096)
        if (Buffer.from(block).equals(written.subarray(at, at + 4096))) blocksNew++
        else expectBytes(block, old.subarray(at, at + 4096), `block at ${at}, neither old nor new`)
      }
      expect(blocksNew).toBeGreaterThan(0)
      const after = pattern(3 * MiB, 4)
      await server.write(0, after)
      expectBytes(await server.read(0, 3 * MiB), after, "a write after the cut")
    } finally {
      await server.stop()
    }
  })
})
