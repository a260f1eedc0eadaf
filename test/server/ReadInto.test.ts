/**
 * READ into buffers of the connection's pool (`readInto`, and `sync.readInto`): a
 * buffer goes back to the pool only once its reply was written, so replies held in the
 * server's queue (a client that does not read its socket) keep their bytes while later
 * reads of other data reuse the buffers of replies already sent. Also: the pool itself,
 * the frame writer's completion callback over both strategies, structured replies with
 * and without DF, `readNow` (answered at once or declined), WRITE payloads copied into
 * pooled buffers (`writeCopies`, also for the memory driver behind a filter), a failing
 * `readInto`, and the filter rules that drop `readInto`, `readNow` and `writeCopies` when a
 * filter replaces what they stand for (and keep `writeCopies` through the filters that hand
 * a write's data below as it is).
 */
import * as Effect from "effect/Effect"
import * as EffectOption from "effect/Option"
import * as net from "node:net"
import { Writable } from "node:stream"
import { describe, expect, it } from "vitest"
import * as Client from "../../src/client/NbdClient.ts"
import * as Driver from "../../src/Driver.ts"
import * as DelayFilter from "../../src/filters/Delay.ts"
import * as ErrorFilter from "../../src/filters/Error.ts"
import * as OffsetFilter from "../../src/filters/Offset.ts"
import * as RateFilter from "../../src/filters/Rate.ts"
import * as RetryFilter from "../../src/filters/Retry.ts"
import * as StatsFilter from "../../src/filters/Stats.ts"
import * as StatsCollector from "../../src/filters/StatsCollector.ts"
import { protocolError } from "../../src/Errors.ts"
import { Command, CommandFlags } from "../../src/protocol/Constants.ts"
import { encodeRequestHeaderFast } from "../../src/protocol/Transmission.ts"
import * as ReadBuffers from "../../src/server/ReadBuffers.ts"
import * as FrameWriter from "../../src/stream/FrameWriter.ts"
import { HANDSHAKE_BYTES, receiveAll, slowReader } from "../support/SlowReader.ts"
import * as TestServer from "../support/TestServer.ts"

const MiB = 1024 * 1024
const SIZE = 64 * MiB
const READ_LENGTH = MiB
const READS = 48

/** The bytes of `[offset, offset + length)`: each 8-byte word holds its own offset (a short tail, its low bytes). */
const stampInto = (offset: number, target: Uint8Array): void => {
  const view = Buffer.from(target.buffer, target.byteOffset, target.length)
  let at = 0
  for (; at + 8 <= target.length; at += 8) view.writeBigUInt64BE(BigInt(offset + at), at)
  for (; at < target.length; at++) view[at] = (offset + at) & 0xff
}
const stamped = (offset: number, length: number): Buffer => {
  const out = Buffer.alloc(length)
  stampInto(offset, out)
  return out
}

/** A driver whose bytes are their offsets, reading into the server's buffers; it records which memory it was given. */
const stampDriver = (mode: "effect" | "sync") => {
  const memories = new Set<ArrayBufferLike>()
  let reads = 0
  const readInto = (offset: number, target: Uint8Array) => {
    memories.add(target.buffer)
    reads++
    stampInto(offset, target)
  }
  const driver = Driver.make({
    name: "stamp",
    size: Effect.succeed(SIZE),
    read: (offset, length) => Effect.succeed(stamped(offset, length)),
    // The Effect version answers on a later turn, as a file read does.
    readInto: (offset, target) =>
      Effect.async<void>((resume) => {
        setImmediate(() => {
          readInto(offset, target)
          resume(Effect.void)
        })
      }),
    ...(mode === "sync"
      ? { sync: { size: () => SIZE, read: (offset: number, length: number) => [stamped(offset, length)], write: () => {}, readInto } }
      : {})
  })
  return { driver, memories, reads: () => reads }
}

const withClient = <A>(port: number, f: (client: Client.NbdClient) => Effect.Effect<A, unknown>) =>
  Effect.runPromise(Effect.scoped(Effect.flatMap(Client.connect(net.connect(port, "127.0.0.1")), f)))

describe("the read buffer pool", () => {
  it("hands out buffers of the asked length and reuses those given back", () => {
    const pool = ReadBuffers.make()
    const first = pool.take(100_000)
    expect(first.length).toBe(100_000)
    expect(first.buffer.byteLength).toBe(128 * 1024)
    pool.give(first)
    expect(pool.idleBytes()).toBe(128 * 1024)
    const second = pool.take(70_000)
    expect(second.buffer).toBe(first.buffer)
    expect(second.length).toBe(70_000)
    expect(pool.idleBytes()).toBe(0)
    expect(pool.take(70_000).buffer).not.toBe(first.buffer)
  })

  it("keeps no buffer beyond its largest size or its idle budget", () => {
    const pool = ReadBuffers.make()
    const huge = pool.take(ReadBuffers.LARGEST + 1)
    pool.give(huge)
    expect(pool.idleBytes()).toBe(0)
    const many = Array.from({ length: ReadBuffers.IDLE_BYTES / ReadBuffers.LARGEST + 2 }, () => pool.take(ReadBuffers.LARGEST))
    many.forEach(pool.give)
    expect(pool.idleBytes()).toBe(ReadBuffers.IDLE_BYTES)
  })
})

describe("the frame writer's completion callback", () => {
  /** A stream that completes each write only when told. */
  const heldStream = () => {
    const pending: Array<() => void> = []
    const stream = new Writable({
      highWaterMark: 1,
      write: (_chunk, _encoding, done) => void pending.push(() => done()),
      writev: (_chunks, done) => void pending.push(() => done())
    })
    const release = async () => {
      while (pending.length > 0) pending.shift()!()
      await new Promise((resolve) => setImmediate(resolve))
    }
    return { stream, release }
  }

  for (const queued of [false, true]) {
    it(`is called only after the stream wrote the frame (${queued ? "write queue" : "corked"})`, async () => {
      const { release, stream } = heldStream()
      // The Writable stands in for a socket: only its writing side is used.
      const writer = FrameWriter.make(stream as never, { queued })
      const sent: Array<string> = []
      writer.write([Buffer.alloc(16), Buffer.alloc(64 * 1024)], () => sent.push("big"))
      writer.write([Buffer.alloc(16), Buffer.alloc(0)], () => sent.push("small"))
      writer.write([], () => sent.push("empty"))
      expect(sent).toEqual(["empty"])
      await new Promise((resolve) => setImmediate(resolve)) // the end of the tick: writes start
      expect(sent).toEqual(["empty"])
      for (let i = 0; i < 5 && sent.length < 3; i++) await release()
      expect([...sent].sort()).toEqual(["big", "empty", "small"])
      expect(sent.indexOf("big")).toBeLessThan(sent.indexOf("small"))
    })
  }

  it("is never called for a frame the stream dropped", async () => {
    const { stream } = heldStream()
    const writer = FrameWriter.make(stream as never, { queued: false })
    let called = false
    writer.write([Buffer.alloc(64 * 1024)], () => (called = true))
    stream.destroy()
    await new Promise((resolve) => setTimeout(resolve, 20))
    expect(called).toBe(false)
  })
})

describe.each(["effect", "sync"] as const)("READ into pooled buffers (%s path)", (mode) => {
  it("keeps the bytes of queued replies while later reads reuse sent replies' buffers", { timeout: 60_000 }, async () => {
    const stamp = stampDriver(mode)
    const server = await TestServer.start({ drivers: [{ driver: stamp.driver }] })
    try {
      const reader = await slowReader(server.port)
      for (let i = 0; i < READS; i++) {
        reader.write(encodeRequestHeaderFast(0, Command.READ, BigInt(i), BigInt(i * READ_LENGTH), READ_LENGTH))
      }
      // Replies pile up in the server (48 MiB asked, the client reads nothing yet).
      await new Promise((resolve) => setTimeout(resolve, 300))
      const bytes = await receiveAll(reader, HANDSHAKE_BYTES + READS * (16 + READ_LENGTH))
      reader.destroy()
      const cookies = new Set<number>()
      for (let at = HANDSHAKE_BYTES; at < bytes.length; at += 16 + READ_LENGTH) {
        expect(bytes.readUInt32BE(at + 4)).toBe(0)
        const cookie = Number(bytes.readBigUInt64BE(at + 8))
        const payload = bytes.subarray(at + 16, at + 16 + READ_LENGTH)
        expect(payload.equals(stamped(cookie * READ_LENGTH, READ_LENGTH)), `reply ${cookie}`).toBe(true)
        cookies.add(cookie)
      }
      expect(cookies.size).toBe(READS)
      // Every read went through readInto, and buffers were reused.
      expect(stamp.reads()).toBe(READS)
      expect(stamp.memories.size).toBeLessThan(READS)
    } finally {
      await server.stop()
    }
  })

  it("answers structured reads, with and without DF, and short reads", { timeout: 30_000 }, async () => {
    const stamp = stampDriver(mode)
    const server = await TestServer.start({ drivers: [{ driver: stamp.driver }] })
    try {
      const [plain, df, small] = await withClient(server.port, (client) =>
        Effect.all([
          client.read(3 * MiB + 512, 2 * MiB),
          client.read(5 * MiB, 256 * 1024, { flags: CommandFlags.DF }),
          client.read(17, 100)
        ]))
      expect(Buffer.from(plain).equals(stamped(3 * MiB + 512, 2 * MiB))).toBe(true)
      expect(Buffer.from(df).equals(stamped(5 * MiB, 256 * 1024))).toBe(true)
      expect(Buffer.from(small).equals(stamped(17, 100))).toBe(true)
      expect(stamp.reads()).toBe(3)
    } finally {
      await server.stop()
    }
  })
})

describe("READ answered at once (readNow)", () => {
  it("answers what the driver has at hand and reads the rest through readInto", { timeout: 30_000 }, async () => {
    let now = 0
    let later = 0
    const driver = Driver.make({
      size: Effect.succeed(SIZE),
      read: (offset, length) => Effect.succeed(stamped(offset, length)),
      readInto: (offset, target) =>
        Effect.sync(() => {
          later++
          stampInto(offset, target)
        }),
      // Only the first 4 MiB are "cached"; a declined read scribbles on the buffer first.
      readNow: {
        size: () => SIZE,
        into: (offset, target) => {
          target.fill(0xee)
          if (offset + target.length > 4 * MiB) return false
          now++
          stampInto(offset, target)
          return true
        }
      }
    })
    const server = await TestServer.start({ drivers: [{ driver }] })
    try {
      const reads: Array<[number, number]> = [[0, 4096], [MiB + 3, 70_000], [3 * MiB, 2 * MiB], [9 * MiB, MiB], [SIZE - 100, 100]]
      const answers = await withClient(server.port, (client) => Effect.all(reads.map(([offset, length]) => client.read(offset, length))))
      reads.forEach(([offset, length], i) => expect(Buffer.from(answers[i]!).equals(stamped(offset, length)), `read ${i}`).toBe(true))
      expect(now).toBe(2)
      expect(later).toBe(3)
    } finally {
      await server.stop()
    }
  })
})

describe("WRITE payloads copied into pooled buffers (writeCopies)", () => {
  it("lands every write whole while the buffers are reused", { timeout: 30_000 }, async () => {
    const store = Buffer.alloc(SIZE)
    const memories = new Set<ArrayBufferLike>()
    let writes = 0
    const driver = Driver.make({
      size: Effect.succeed(SIZE),
      read: (offset, length) => Effect.sync(() => Buffer.from(store.subarray(offset, offset + length))),
      // Copies on a later turn, as a write through the thread pool does.
      write: (offset, data) =>
        Effect.async<void>((resume) => {
          memories.add(data.buffer)
          writes++
          setImmediate(() => {
            store.set(data, offset)
            resume(Effect.void)
          })
        }),
      writeCopies: true
    })
    const server = await TestServer.start({ drivers: [{ driver }] })
    try {
      const count = 32
      const length = 256 * 1024
      await withClient(server.port, (client) =>
        Effect.all(
          Array.from({ length: count }, (_, i) => client.write(i * length, stamped(i * length + 7, length))),
          { concurrency: 4 }
        ))
      for (let i = 0; i < count; i++) {
        expect(store.subarray(i * length, (i + 1) * length).equals(stamped(i * length + 7, length)), `write ${i}`).toBe(true)
      }
      expect(writes).toBe(count)
      expect(memories.size).toBeLessThan(count)
    } finally {
      await server.stop()
    }
  })
})

describe("WRITE payloads of the memory driver behind a filter", () => {
  it("land whole while the pooled buffers are reused", { timeout: 30_000 }, async () => {
    // error:rate=0 takes every WRITE off the fast path: each payload spans several reads and is gathered.
    const server = await TestServer.start({ stack: ["error:rate=0"] })
    try {
      const count = 48
      const length = MiB
      const back = await withClient(server.port, (client) =>
        Effect.zipRight(
          Effect.all(
            Array.from({ length: count }, (_, i) => client.write(i * length, stamped(i * length + 3, length))),
            { concurrency: 8 }
          ),
          client.read(0, count * length)
        ))
      for (let i = 0; i < count; i++) {
        const got = Buffer.from(back.subarray(i * length, (i + 1) * length))
        expect(got.equals(stamped(i * length + 3, length)), `write ${i}`).toBe(true)
      }
    } finally {
      await server.stop()
    }
  })
})

describe("a failing readInto", () => {
  it("answers the error and keeps serving", { timeout: 30_000 }, async () => {
    let failures = 0
    const driver = Driver.make({
      size: Effect.succeed(SIZE),
      read: (offset, length) => Effect.succeed(stamped(offset, length)),
      readInto: (offset, target) =>
        offset === 0
          ? Effect.suspend(() => {
            failures++
            return Effect.fail(protocolError("EIO", "bad sector"))
          })
          : Effect.sync(() => stampInto(offset, target))
    })
    const server = await TestServer.start({ drivers: [{ driver }] })
    try {
      const [failed, after] = await withClient(server.port, (client) =>
        Effect.all([Effect.either(client.read(0, 4096)), client.read(4096, 4096)]))
      expect(failed._tag).toBe("Left")
      expect(failures).toBe(1)
      expect(Buffer.from(after).equals(stamped(4096, 4096))).toBe(true)
    } finally {
      await server.stop()
    }
  })
})

describe("readInto through filters", () => {
  const open = (driver: Driver.NbdDriverShape) =>
    Effect.runPromise(
      Effect.scoped(driver.open({ exportName: "", client: { connectionId: 0, transport: { _tag: "InProcess" }, tls: EffectOption.none() } }))
    )
  const below = stampDriver("effect").driver
  /** A driver whose write keeps nothing of its data. */
  const copying = Driver.make({
    size: Effect.succeed(SIZE),
    read: (offset, length) => Effect.succeed(stamped(offset, length)),
    write: () => Effect.void,
    writeCopies: true
  })

  it("passes when the filter leaves read alone, and is dropped when it replaces read", async () => {
    const passing = await open(Driver.filter(below, { name: "flush-only", open: (h) => ({ flush: h.flush }) }))
    expect(passing.readInto).toBeDefined()
    const replacing = await open(
      Driver.filter(below, { name: "reads", open: (h) => ({ read: (offset, length) => h.read(offset, length) }) })
    )
    expect(replacing.readInto).toBeUndefined()
    const own = await open(
      Driver.filter(below, {
        name: "both",
        open: (h) => ({ read: (offset, length) => h.read(offset, length), readInto: (offset, target) => h.readInto!(offset, target) })
      })
    )
    expect(own.readInto).toBeDefined()
  })

  it("passes readNow only when the filter replaces none of size, read and readInto", async () => {
    const withNow = Driver.make({
      size: Effect.succeed(SIZE),
      read: (offset, length) => Effect.succeed(stamped(offset, length)),
      readInto: (offset, target) => Effect.sync(() => stampInto(offset, target)),
      readNow: { size: () => SIZE, into: () => false }
    })
    const passing = await open(Driver.filter(withNow, { name: "flush-only", open: (h) => ({ flush: h.flush }) }))
    expect(passing.readNow).toBeDefined()
    for (const replaced of [{ size: Effect.succeed(1) }, { read: () => Effect.succeed(new Uint8Array(0)) }, { readInto: () => Effect.void }]) {
      const dropped = await open(Driver.filter(withNow, { name: "changes", open: () => replaced }))
      expect(dropped.readNow).toBeUndefined()
    }
  })

  it("passes writeCopies only when the filter does not replace write", async () => {
    const passing = await open(Driver.filter(copying, { name: "reads", open: (h) => ({ read: h.read }) }))
    expect(passing.writeCopies).toBe(true)
    const dropped = await open(Driver.filter(copying, { name: "writes", open: (h) => ({ write: h.write }) }))
    expect(dropped.writeCopies).toBeUndefined()
  })

  it("keeps writeCopies through the filters that hand the data below as it is", async () => {
    const keeping = Driver.make({ size: Effect.succeed(SIZE), read: () => Effect.never, write: () => Effect.void })
    const filters: ReadonlyArray<[string, Driver.Filter]> = [
      ["error", ErrorFilter.make({ rate: 0 })],
      ["delay", DelayFilter.make({ write: 1 })],
      ["retry", RetryFilter.make()],
      ["rate", RateFilter.make({ rate: 1e9 })],
      ["offset", OffsetFilter.make({ offset: 4096 })],
      ["stats", StatsFilter.make({ collector: Effect.runSync(StatsCollector.makeCollector) })]
    ]
    for (const [name, filter] of filters) {
      const over = (below: Driver.NbdDriverShape) => open(Effect.runSync(Effect.scoped(filter(below))))
      expect((await over(copying)).writeCopies, name).toBe(true)
      expect((await over(keeping)).writeCopies, name).toBeUndefined()
    }
  })
})
