/**
 * READ payloads sent straight to the socket by the driver (`DirectRead`, the file
 * driver's `sendfile`), through a real server and client: payloads sent whole, in part
 * (the rest follows through `readRest`) or not at all, in every reply mode and with DF;
 * replies that queue behind a client that does not read (the direct path then stands
 * aside, and every reply still arrives whole and in order); a READ whose rest fails once
 * its header is out (its connection closes, others go on). Also the socket descriptor
 * the direct path relies on (Node.js internals), and the file driver's `sendfile`: every
 * range on tmpfs, on a disk only what the page cache holds.
 */
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import { spawn } from "node:child_process"
import * as fs from "node:fs"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import { PassThrough } from "node:stream"
import { describe, expect, it } from "vitest"
import * as Client from "../../src/client/NbdClient.ts"
import * as Driver from "../../src/Driver.ts"
import * as FileDriver from "../../src/drivers/File.ts"
import * as FileCalls from "../../src/drivers/FileCalls.ts"
import { isInMemory } from "../../src/drivers/FileIo.ts"
import { Command, CommandFlags } from "../../src/protocol/Constants.ts"
import { encodeRequestHeaderFast } from "../../src/protocol/Transmission.ts"
import * as DirectSend from "../../src/stream/DirectSend.ts"
import * as FrameWriter from "../../src/stream/FrameWriter.ts"
import * as Testing from "../../src/testing/Handle.ts"
import { expectBytes } from "../support/Bytes.ts"
import { receiveAll, slowReader } from "../support/SlowReader.ts"
import { sparseFiles } from "../support/SparseFiles.ts"
import * as TestServer from "../support/TestServer.ts"

const KiB = 1024
const MiB = 1024 * KiB
const SIZE = 64 * MiB
const EAGAIN = -os.constants.errno.EAGAIN

/** Reads everything from a port and prints where the first byte other than "a" is, and the total. */
const READER = `
const socket = require("node:net").connect(Number(process.argv[1]), "127.0.0.1")
let total = 0, first = -1
socket.on("data", (chunk) => {
  if (first < 0) { const i = chunk.findIndex((b) => b !== 97); if (i >= 0) first = total + i }
  total += chunk.length
})
socket.on("end", () => console.log(first + " " + total))
`

/** The bytes of the export: a byte per offset that does not repeat within 251 bytes. */
const byteAt = (offset: number) => (offset * 7 + (offset >>> 16)) % 251
const bytesOf = (offset: number, length: number): Buffer => {
  const out = Buffer.allocUnsafe(length)
  for (let i = 0; i < length; i++) out[i] = byteAt(offset + i)
  return out
}

/** How much of a payload the driver sends itself, by where the read starts ("unready": it declines first). */
type Share = "all" | "half" | "none" | "unready"
const shareOf = (offset: number): Share => (["all", "half", "none", "unready"] as const)[Math.floor(offset / (64 * KiB)) % 4]!

/**
 * A driver that sends the share of each read its offset asks for straight to the socket
 * (with `write(2)`, as much as the socket takes) and reads the rest into the server's
 * buffers; `failAt`'s rest throws.
 */
const sendingDriver = (failAt?: number) => {
  const store = bytesOf(0, SIZE)
  const calls = { sendTo: 0, readInto: 0, unreadySent: 0 }
  const sendTo = (fd: number, offset: number, length: number): number => {
    calls.sendTo++
    const share = shareOf(offset)
    if (share === "unready") return (calls.unreadySent++, EAGAIN)
    if (share === "none") return EAGAIN
    const n = share === "all" ? length : Math.max(1, length >> 1)
    try {
      return fs.writeSync(fd, store, offset, n)
    } catch (error) {
      return -((error as { errno?: number }).errno ?? 5)
    }
  }
  const readInto = (offset: number, target: Uint8Array) => {
    calls.readInto++
    if (failAt !== undefined && offset > failAt && offset < failAt + MiB) throw new Error("the disk went away")
    target.set(store.subarray(offset, offset + target.length))
  }
  const driver = Driver.make({
    name: "sending",
    size: Effect.succeed(SIZE),
    read: (offset, length) => Effect.succeed(Buffer.from(store.subarray(offset, offset + length))),
    sync: {
      size: () => SIZE,
      read: (offset, length) => [store.subarray(offset, offset + length)],
      write: () => {},
      readInto,
      direct: { sendTo, readRest: readInto, ready: (offset: number) => shareOf(offset) !== "unready" }
    }
  })
  return { driver, calls }
}

type ClientOptions = Parameters<typeof Client.connect>[1]

const withClient = <A>(port: number, options: ClientOptions, f: (client: Client.NbdClient) => Effect.Effect<A, unknown>) =>
  Effect.runPromise(Effect.scoped(Effect.flatMap(Client.connect(net.connect(port, "127.0.0.1"), options), f)))

const clientModes: ReadonlyArray<{ readonly name: string; readonly options: ClientOptions }> = [
  { name: "extended headers", options: {} },
  { name: "structured replies", options: { extendedHeaders: false } },
  { name: "simple replies", options: { structuredReplies: false, extendedHeaders: false } }
]

/** Reads of every share and of lengths from one byte to over a megabyte, some with DF. */
const reads = Array.from({ length: 48 }, (_, i) => ({
  offset: i * 64 * KiB + (i % 5) * 977,
  length: [1, 4096, 70_001, MiB + 3, 256 * KiB][i % 5]!,
  df: i % 2 === 0
}))

describe.each(clientModes)("READ sent by the driver, $name", ({ options }) => {
  it("arrives whole whether the driver sent all, part or none of it", { timeout: 30_000 }, async () => {
    if (DirectSend.load() === undefined) return expect(process.platform).not.toBe("linux")
    const sending = sendingDriver()
    const server = await TestServer.start({ drivers: [{ driver: sending.driver }] })
    try {
      const answers = await withClient(server.port, options, (client) =>
        Effect.forEach(
          reads,
          (r) => client.read(r.offset, r.length, r.df && client.structuredReplies ? { flags: CommandFlags.DF } : undefined),
          { concurrency: "unbounded" }
        ))
      reads.forEach((r, i) => expectBytes(answers[i]!, bytesOf(r.offset, r.length), `read at ${r.offset}`))
      expect(sending.calls.sendTo).toBeGreaterThan(0)
      expect(sending.calls.unreadySent).toBe(0)
      // What the driver did not send (half, none, or all of a read the socket could not take) was read in.
      expect(sending.calls.readInto).toBeGreaterThanOrEqual(reads.filter((r) => shareOf(r.offset) !== "all").length > 0 ? 1 : 0)
    } finally {
      await server.stop()
    }
  })
})

describe("READ sent by the driver, with replies queued", () => {
  it("stands aside while replies wait for a client that does not read: all arrive whole, in order", { timeout: 30_000 }, async () => {
    if (DirectSend.load() === undefined) return expect(process.platform).not.toBe("linux")
    const sending = sendingDriver()
    const server = await TestServer.start({ drivers: [{ driver: sending.driver }] })
    const count = 48
    try {
      const socket = await slowReader(server.port)
      for (let i = 0; i < count; i++) {
        socket.write(encodeRequestHeaderFast(0, Command.READ, BigInt(i), BigInt(i * MiB), MiB))
      }
      await new Promise((resolve) => setTimeout(resolve, 500)) // the server answers into a full socket
      // 48 MiB cannot all wait in the sockets' buffers: some replies took the usual queue.
      expect(sending.calls.sendTo).toBeLessThan(count)
      const negotiation = 18 + 10 // the greeting, then the export's size and flags (NO_ZEROES)
      const received = await receiveAll(socket, negotiation + count * (16 + MiB))
      socket.destroy()
      let at = negotiation
      for (let i = 0; i < count; i++) {
        expect(received.readUInt32BE(at + 4), `error of reply ${i}`).toBe(0)
        expect(received.readBigUInt64BE(at + 8), `cookie of reply ${i}`).toBe(BigInt(i))
        expectBytes(received.subarray(at + 16, at + 16 + MiB), bytesOf(i * MiB, MiB), `reply ${i}`)
        at += 16 + MiB
      }
    } finally {
      await server.stop()
    }
  })
})

describe("READ sent by the driver, failing after its header", () => {
  it("closes that connection; the next client is served", { timeout: 30_000 }, async () => {
    if (DirectSend.load() === undefined) return expect(process.platform).not.toBe("linux")
    const failAt = 4 * 64 * KiB + 64 * KiB // a "half" read: its rest throws
    expect(shareOf(failAt)).toBe("half")
    const sending = sendingDriver(failAt)
    const server = await TestServer.start({ drivers: [{ driver: sending.driver }] })
    try {
      const failed = await withClient(server.port, {}, (client) => Effect.either(client.read(failAt, 64 * KiB)))
      expect(Either.isLeft(failed)).toBe(true)
      const after = await withClient(server.port, {}, (client) => client.read(0, 64 * KiB))
      expectBytes(after, bytesOf(0, 64 * KiB), "next client")
    } finally {
      await server.stop()
    }
  })
})

describe("the socket descriptor of direct sends", () => {
  it("is the descriptor of an idle TCP socket (Node.js internals this relies on)", async () => {
    if (process.platform !== "linux") return
    expect(DirectSend.load()).toBeDefined()
    const server = net.createServer()
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
    const port = (server.address() as net.AddressInfo).port
    const accepted = new Promise<net.Socket>((resolve) => server.once("connection", resolve))
    const client = net.connect(port, "127.0.0.1")
    const peer = await accepted
    try {
      const fd = DirectSend.idleDescriptorOf(peer)
      expect(typeof fd).toBe("number")
      // Bytes sent to it reach the other end, before a write queued after them.
      const received = new Promise<Buffer>((resolve) => {
        const chunks: Array<Buffer> = []
        client.on("data", (chunk: Buffer) => {
          chunks.push(chunk)
          if (Buffer.concat(chunks).length >= 5) resolve(Buffer.concat(chunks))
        })
      })
      expect(DirectSend.load()!.sendMore(fd!, Buffer.from("abc"))).toBe(3)
      peer.write("de")
      expect((await received).toString()).toBe("abcde")
    } finally {
      client.destroy()
      peer.destroy()
      server.close()
    }
  })

  it("is not used while earlier frames wait in Node.js, even once the kernel has room", { timeout: 30_000 }, async () => {
    if (DirectSend.load() === undefined) return expect(process.platform).not.toBe("linux")
    const server = net.createServer()
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
    const port = (server.address() as net.AddressInfo).port
    const accepted = new Promise<net.Socket>((resolve) => server.once("connection", resolve))
    // A reader in another process drains the socket while this one's event loop is held.
    const reader = spawn(process.execPath, ["-e", READER, String(port)], { stdio: ["ignore", "pipe", "inherit"] })
    const report = new Promise<string>((resolve) => {
      let out = ""
      reader.stdout.on("data", (chunk: Buffer) => (out += chunk.toString()))
      reader.on("close", () => resolve(out.trim()))
    })
    const peer = await accepted
    try {
      const writer = FrameWriter.make(peer)
      const big = 16 * MiB
      writer.write([Buffer.alloc(big, "a")])
      writer.flush() // the kernel takes what fits; Node.js holds the rest
      expect(peer.writableLength).toBeGreaterThan(0)
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 500) // the reader empties the kernel's buffers
      let paid = 0
      const sent = writer.sendDirect([Buffer.from("H")], () => (paid++, 0))
      expect(sent).toBe(-1)
      expect(paid).toBe(0)
      writer.write([Buffer.from("HP")])
      await Effect.runPromise(writer.end)
      expect(await report).toBe(`${big} ${big + 2}`)
    } finally {
      reader.kill()
      peer.destroy()
      server.close()
    }
  })

  it("is not given for streams other than plain sockets", () => {
    expect(DirectSend.idleDescriptorOf(new PassThrough())).toBeUndefined()
    expect(DirectSend.idleDescriptorOf(new net.Socket())).toBeUndefined() // not connected
  })
})

describe("the file driver's direct READs", () => {
  /** A directory on a disk-backed file system (the repository's ignored tmp/ if the system's is in memory). */
  const diskRoot = (): string => {
    if (!isInMemory(os.tmpdir())) return os.tmpdir()
    const root = path.resolve("tmp")
    fs.mkdirSync(root, { recursive: true })
    return root
  }
  const memoryRoot = "/dev/shm"
  const sparseFile = sparseFiles("effect-nbd-direct-")

  /** A connected pair of TCP sockets; `received` collects what reaches the client. */
  const socketPair = async () => {
    const server = net.createServer()
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
    const accepted = new Promise<net.Socket>((resolve) => server.once("connection", resolve))
    const client = net.connect((server.address() as net.AddressInfo).port, "127.0.0.1")
    const peer = await accepted
    const chunks: Array<Buffer> = []
    client.on("data", (chunk: Buffer) => chunks.push(chunk))
    const received = async (length: number) => {
      for (let i = 0; i < 200 && Buffer.concat(chunks).length < length; i++) await new Promise((r) => setTimeout(r, 10))
      return Buffer.concat(chunks)
    }
    const close = () => {
      client.destroy()
      peer.destroy()
      server.close()
    }
    return { fd: DirectSend.idleDescriptorOf(peer)!, received, close }
  }

  const withHandle = <A>(file: string, f: (handle: Driver.DriverHandle) => Promise<A>) =>
    Effect.runPromise(Effect.scoped(Effect.flatMap(
      Effect.flatMap(FileDriver.make({ path: file }), Testing.open),
      (handle) => Effect.promise(() => f(handle))
    )))

  it("send every range of a file on tmpfs", async () => {
    if (DirectSend.load() === undefined || !fs.existsSync(memoryRoot) || !isInMemory(memoryRoot)) return
    const file = sparseFile(memoryRoot, MiB)
    fs.writeFileSync(file, bytesOf(0, MiB))
    const pair = await socketPair()
    try {
      await withHandle(file, async (handle) => {
        const direct = handle.sync!.direct!
        expect(direct.sendTo(pair.fd, 1000, 70_000)).toBe(70_000)
        expectBytes(await pair.received(70_000), bytesOf(1000, 70_000), "sent")
        const rest = new Uint8Array(3000)
        direct.readRest(MiB - 1000, rest)
        expectBytes(rest, Buffer.concat([bytesOf(MiB - 1000, 1000), Buffer.alloc(2000)]), "rest, zeroes past the end")
      })
    } finally {
      pair.close()
    }
  })

  it("send only what the page cache holds of a file on a disk", async () => {
    if (DirectSend.load() === undefined) return
    const file = sparseFile(diskRoot(), 4 * MiB)
    const fd = fs.openSync(file, "r+")
    fs.writeSync(fd, bytesOf(0, 4 * MiB), 0, 4 * MiB, 0)
    fs.fdatasyncSync(fd)
    const pair = await socketPair()
    try {
      await withHandle(file, async (handle) => {
        const direct = handle.readNow?.direct
        if (direct === undefined) return // a kernel without cachestat: nothing to send directly
        const calls = FileCalls.load()
        if (calls._tag !== "Native") throw new Error("direct reads without the native calls")
        // Clean pages dropped from the cache: not sent.
        for (let i = 0; i < 5 && calls.calls.cachedPages(fd, 0, 4 * MiB) > 0; i++) {
          fs.fsyncSync(fd)
          calls.calls.fadvise(fd, 0, 0, FileCalls.Advice.dontneed)
        }
        expect(calls.calls.cachedPages(fd, 2 * MiB, MiB)).toBe(0)
        expect(direct.ready!(2 * MiB, 4096)).toBe(false)
        // Cached pages: sent, but not a range with one page that is not.
        fs.readSync(fd, Buffer.alloc(MiB), 0, MiB, 0)
        expect(direct.ready!(4096, 65_536)).toBe(true)
        expect(direct.ready!(MiB - 4096, 8192)).toBe(calls.calls.cachedPages(fd, MiB, 4096) === 1)
        expect(direct.sendTo(pair.fd, 4096, 65_536)).toBe(65_536)
        expectBytes(await pair.received(65_536), bytesOf(4096, 65_536), "sent")
      })
    } finally {
      fs.closeSync(fd)
      pair.close()
    }
  })

  it("serve a file's READs whole through a real server", { timeout: 30_000 }, async () => {
    const roots = [diskRoot(), ...(fs.existsSync(memoryRoot) && isInMemory(memoryRoot) ? [memoryRoot] : [])]
    for (const root of roots) {
      const file = sparseFile(root, 8 * MiB)
      fs.writeFileSync(file, bytesOf(0, 8 * MiB))
      const scope = Effect.runSync(Scope.make())
      try {
        const driver = await Effect.runPromise(Scope.extend(FileDriver.make({ path: file }), scope))
        const server = await TestServer.start({ drivers: [{ driver }] })
        try {
          const answers = await withClient(server.port, {}, (client) =>
            Effect.forEach(reads.filter((r) => r.offset + r.length <= 8 * MiB), (r) =>
              Effect.map(client.read(r.offset, r.length), (data) => ({ r, data })), { concurrency: "unbounded" }))
          expect(answers.length).toBeGreaterThan(10)
          for (const { data, r } of answers) expectBytes(data, bytesOf(r.offset, r.length), `${root}: read at ${r.offset}`)
        } finally {
          await server.stop()
        }
      } finally {
        await Effect.runPromise(Scope.close(scope, Exit.void))
      }
    }
  })
})
