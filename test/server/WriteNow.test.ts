/**
 * WRITE done at once (`writeNow`), through a real server and client: writes the driver
 * takes at once, writes it declines (they land through `write`), writes it fails (the
 * client gets the errno) or throws on (EIO), FUA writes (always through `write`), and the
 * data read back whole afterwards. Also the filter rules that pass or drop `writeNow`,
 * and the file driver's quick writes: which files get them, and data written through a
 * client found in the file once each write was answered.
 */
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import * as fs from "node:fs"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import * as Client from "../../src/client/NbdClient.ts"
import * as Driver from "../../src/Driver.ts"
import * as FileDriver from "../../src/drivers/File.ts"
import { isInMemory } from "../../src/drivers/FileIo.ts"
import { QUICK_WRITE_MAX } from "../../src/drivers/FileQuickWrites.ts"
import { type ErrnoName, protocolError } from "../../src/Errors.ts"
import { CommandFlags } from "../../src/protocol/Constants.ts"
import * as Testing from "../../src/testing/Handle.ts"
import { expectBytes, pattern } from "../support/Bytes.ts"
import { sparseFiles } from "../support/SparseFiles.ts"
import * as TestServer from "../support/TestServer.ts"

const KiB = 1024
const MiB = 1024 * KiB
const SIZE = 16 * MiB
/** The recording driver takes at once only writes that end within this. */
const NOW_LIMIT = 4 * MiB
/** Offsets at which the recording driver's `writeNow` fails, and with what. */
const FAIL_AT = new Map<number, ErrnoName>([[8 * MiB, "ENOSPC"], [9 * MiB, "EPERM"]])
/** The offset at which the recording driver's `writeNow` throws. */
const THROW_AT = 10 * MiB

/** What a recorded call saw. */
interface Seen {
  readonly offset: number
  readonly length: number
}

/** A memory driver that records which writes went through `writeNow` and which through `write`. */
const recordingDriver = () => {
  const store = Buffer.alloc(SIZE)
  const now: Array<Seen> = []
  const later: Array<Seen & { readonly fua: boolean }> = []
  const driver = Driver.make({
    name: "write-now",
    size: Effect.succeed(SIZE),
    read: (offset, length) => Effect.sync(() => Buffer.from(store.subarray(offset, offset + length))),
    // Copies on a later turn, as a write through the thread pool does.
    write: (offset, data, options) =>
      Effect.async<void>((resume) => {
        later.push({ offset, length: data.length, fua: options.fua })
        setImmediate(() => {
          store.set(data, offset)
          resume(Effect.void)
        })
      }),
    flush: Effect.void,
    capabilities: { fua: true },
    writeNow: {
      size: () => SIZE,
      write: (offset, pieces) => {
        const length = pieces.reduce((n, piece) => n + piece.length, 0)
        now.push({ offset, length })
        const errno = FAIL_AT.get(offset)
        if (errno !== undefined) return protocolError(errno, "refused at once")
        if (offset === THROW_AT) throw new Error("a bug in writeNow")
        if (offset + length > NOW_LIMIT) return false
        let at = offset
        for (const piece of pieces) {
          store.set(piece, at)
          at += piece.length
        }
        return true
      }
    }
  })
  return { driver, store, now, later }
}

type ClientOptions = Parameters<typeof Client.connect>[1]

const withClient = <A>(port: number, options: ClientOptions, f: (client: Client.NbdClient) => Effect.Effect<A, unknown>) =>
  Effect.runPromise(Effect.scoped(Effect.flatMap(Client.connect(net.connect(port, "127.0.0.1"), options), f)))

/** Reads the whole export in chunks of 4 MiB. */
const readAll = (client: Client.NbdClient, size: number) =>
  Effect.gen(function*() {
    const out = Buffer.alloc(size)
    for (let at = 0; at < size; at += 4 * MiB) out.set(yield* client.read(at, Math.min(4 * MiB, size - at)), at)
    return out
  })

/** The errno a failed write was answered with, or "OK". */
const outcomeOf = (result: Either.Either<void, unknown>): string =>
  Either.isRight(result) ? "OK" : (result.left as { errno?: string }).errno ?? String(result.left)

/** A planned write: where, how long (its bytes come from `pattern`), with which flags. */
interface Planned {
  readonly offset: number
  readonly length: number
  readonly fua?: boolean
}

const bytesOf = (w: Planned) => pattern(w.length, w.offset % 251)

const send = (client: Client.NbdClient, w: Planned) =>
  Effect.either(client.write(w.offset, bytesOf(w), w.fua === true ? { flags: CommandFlags.FUA } : undefined))

const offsets = (seen: ReadonlyArray<Seen>) => seen.map((s) => s.offset).sort((a, b) => a - b)

const clientModes: ReadonlyArray<{ readonly name: string; readonly options: ClientOptions }> = [
  { name: "default negotiation", options: {} },
  { name: "simple replies", options: { structuredReplies: false, extendedHeaders: false } }
]

describe.each(clientModes)("WRITE done at once (writeNow), $name", ({ options }) => {
  const accepted: Array<Planned> = [
    { offset: 0, length: 4096 },
    { offset: 12_293, length: 70_000 },
    { offset: MiB, length: MiB },
    { offset: NOW_LIMIT - 512, length: 512 } // ends at the limit
  ]
  const declined: Array<Planned> = [
    { offset: NOW_LIMIT, length: 3000 },
    { offset: 5 * MiB, length: 2 * MiB + 3 },
    { offset: SIZE - 1000, length: 1000 }
  ]
  const fua: Planned = { offset: 2 * MiB, length: 8192, fua: true } // inside what writeNow would take
  const failing: Array<Planned> = [{ offset: 8 * MiB, length: 4096 }, { offset: 9 * MiB, length: 100 }]
  const throwing: Planned = { offset: THROW_AT, length: 4096 }
  const outside: Planned = { offset: SIZE - 100, length: 200 }
  const empty: Planned = { offset: 3 * MiB, length: 0 }
  const batch = [...accepted, ...declined, fua, ...failing, throwing, outside, empty]
  /** Sent one after the other, overlapping: declined, taken at once over it, declined over that; then one after the throw. */
  const sequence: Array<Planned> = [
    { offset: NOW_LIMIT - 4096, length: 8192 },
    { offset: NOW_LIMIT - 2048, length: 1024 },
    { offset: NOW_LIMIT - 1536, length: 4096 },
    { offset: 64, length: 64 }
  ]

  it("takes what the driver does at once, the rest through write, and answers its errors", { timeout: 30_000 }, async () => {
    const recording = recordingDriver()
    const server = await TestServer.start({ drivers: [{ driver: recording.driver }] })
    try {
      const { back, concurrent, sequential } = await withClient(server.port, options, (client) =>
        Effect.gen(function*() {
          const concurrent = yield* Effect.all(batch.map((w) => send(client, w)), { concurrency: "unbounded" })
          const sequential = yield* Effect.forEach(sequence, (w) => send(client, w))
          return { concurrent, sequential, back: yield* readAll(client, SIZE) }
        }))
      const answerOf = (w: Planned) => outcomeOf(concurrent[batch.indexOf(w)]!)
      for (const w of [...accepted, ...declined, fua, empty]) expect(answerOf(w), `write at ${w.offset}`).toBe("OK")
      expect(failing.map(answerOf)).toEqual(["ENOSPC", "EPERM"])
      expect(answerOf(throwing)).toBe("EIO")
      expect(answerOf(outside)).toBe("ENOSPC")
      expect(sequential.map(outcomeOf)).toEqual(["OK", "OK", "OK", "OK"])

      // Every non-FUA write of some bytes within the export was offered to writeNow, once, whole.
      const offered = [...accepted, ...declined, ...failing, throwing]
      expect(recording.now.slice(offered.length)).toEqual(sequence)
      const firstOffers = recording.now.slice(0, offered.length)
      expect(offsets(firstOffers)).toEqual(offsets(offered))
      for (const seen of firstOffers) expect(seen.length).toBe(offered.find((w) => w.offset === seen.offset)!.length)
      // Only what was declined and the FUA write went through write, FUA with its flag.
      const laterWithBytes = recording.later.filter((seen) => seen.length > 0)
      expect(offsets(laterWithBytes)).toEqual(offsets([...declined, fua, sequence[0]!, sequence[2]!]))
      for (const seen of laterWithBytes) expect(seen.fua, `write at ${seen.offset}`).toBe(seen.offset === fua.offset)

      // The data, read back whole, is what was written and answered OK.
      const model = Buffer.alloc(SIZE)
      for (const w of [...accepted, ...declined, fua, ...sequence]) model.set(bytesOf(w), w.offset)
      expectBytes(back, model, "read back")
      expectBytes(recording.store, model, "driver store")
    } finally {
      await server.stop()
    }
  })
})

describe("writeNow through a filter, served", () => {
  it("is not used when a filter replaces write: every write goes through the filter's write", { timeout: 30_000 }, async () => {
    const recording = recordingDriver()
    let filtered = 0
    const driver = Driver.filter(recording.driver, {
      name: "counting",
      open: (below) => ({
        write: (offset, data, options) => Effect.suspend(() => (filtered++, below.write(offset, data, options)))
      })
    })
    const server = await TestServer.start({ drivers: [{ driver }] })
    try {
      const data = pattern(4096, 9)
      const back = await withClient(server.port, {}, (client) =>
        Effect.zipRight(client.write(8192, data), client.read(8192, 4096)))
      expectBytes(back, data)
      expect(recording.now).toEqual([])
      expect(filtered).toBe(1)
      expect(recording.later).toEqual([{ offset: 8192, length: 4096, fua: false }])
    } finally {
      await server.stop()
    }
  })
})

describe("writeNow on the driver and through filters", () => {
  const open = (driver: Driver.NbdDriverShape) => Effect.runPromise(Effect.scoped(Testing.open(driver)))
  const writeNow: Driver.WriteNow = { size: () => SIZE, write: () => false }
  const base = {
    size: Effect.succeed(SIZE),
    read: (_: number, length: number) => Effect.succeed(new Uint8Array(length))
  }

  it("is kept by make only for a writable driver", async () => {
    const writable = await open(Driver.make({ ...base, write: () => Effect.void, writeNow }))
    expect(writable.writeNow).toBe(writeNow)
    const readOnly = await open(Driver.make({ ...base, writeNow }))
    expect(readOnly.capabilities.readOnly).toBe(true)
    expect(readOnly.writeNow).toBeUndefined()
  })

  it("passes only when the filter replaces none of size, read and write, unless it gives its own", async () => {
    const below = Driver.make({ ...base, write: () => Effect.void, writeNow })
    const passing: Array<Driver.HandleOverrides> = [
      {},
      { flush: Effect.void },
      { trim: () => Effect.void },
      { readInto: () => Effect.void },
      { capabilities: (caps) => ({ ...caps, multiConn: true }) }
    ]
    for (const overrides of passing) {
      const handle = await open(Driver.filter(below, { name: "keeps", open: () => overrides }))
      expect(handle.writeNow, Object.keys(overrides).join(",")).toBe(writeNow)
    }
    const dropping: Array<Driver.HandleOverrides> = [
      { size: Effect.succeed(1) },
      { read: () => Effect.succeed(new Uint8Array(0)) },
      { write: () => Effect.void },
      { writeNow: undefined }
    ]
    for (const overrides of dropping) {
      const handle = await open(Driver.filter(below, { name: "changes", open: () => overrides }))
      expect(handle.writeNow, Object.keys(overrides).join(",")).toBeUndefined()
    }
    const own: Driver.WriteNow = { size: () => 1, write: () => true }
    const replacing = await open(Driver.filter(below, { name: "own", open: () => ({ write: () => Effect.void, writeNow: own }) }))
    expect(replacing.writeNow).toBe(own)
  })
})

describe("the file driver's quick writes", () => {

  /** A directory on a disk-backed file system (the repository's ignored tmp/ if the system's is in memory). */
  const diskRoot = (): string => {
    if (!isInMemory(os.tmpdir())) return os.tmpdir()
    const root = path.resolve("tmp")
    fs.mkdirSync(root, { recursive: true })
    return root
  }

  /** A fresh sparse file of `size` bytes under `root`. */
  const sparseFile = sparseFiles("effect-nbd-write-now-")

  /** The handle of a file driver, for a check run while it is open. */
  const withHandle = <A>(options: FileDriver.FileOptions, f: (handle: Driver.DriverHandle) => Effect.Effect<A, unknown>) =>
    Effect.runPromise(Effect.scoped(Effect.flatMap(Effect.flatMap(FileDriver.make(options), Testing.open), f)))

  it("are offered for files through the page cache only", async () => {
    const file = sparseFile(diskRoot(), 16 * MiB)
    await withHandle({ path: file }, (handle) =>
      Effect.gen(function*() {
        expect(handle.writeNow).toBeDefined()
        expect(handle.sync).toBeUndefined()
        expect(handle.writeNow!.size()).toBe(16 * MiB)
        yield* handle.resize(32 * MiB)
        expect(handle.writeNow!.size()).toBe(32 * MiB)
      }))
    await withHandle({ path: file, readOnly: true }, (handle) => Effect.sync(() => expect(handle.writeNow).toBeUndefined()))
    const direct = await Effect.runPromise(
      Effect.either(Effect.scoped(Effect.flatMap(Effect.flatMap(FileDriver.make({ path: file, cache: "none" }), Testing.open), (h) =>
        Effect.succeed(h.writeNow))))
    )
    if (Either.isRight(direct)) expect(direct.right).toBeUndefined() // where O_DIRECT is refused there is nothing to check
    if (fs.existsSync("/dev/shm") && isInMemory("/dev/shm")) {
      await withHandle({ path: sparseFile("/dev/shm", MiB) }, (handle) =>
        Effect.sync(() => {
          expect(handle.writeNow).toBeUndefined()
          expect(handle.sync).toBeDefined()
        }))
    }
  })

  it("put the data in the file by the time the write is answered", { timeout: 60_000 }, async () => {
    const size = 16 * MiB
    const file = sparseFile(diskRoot(), size)
    const scope = Effect.runSync(Scope.make())
    const outcomes: Array<{ offset: number; outcome: boolean | string }> = []
    try {
      const fileDriver = await Effect.runPromise(Scope.extend(FileDriver.make({ path: file }), scope))
      // Records what the file driver's writeNow answered.
      const driver = Driver.filter(fileDriver, {
        name: "watch",
        open: (below) => ({
          writeNow: below.writeNow && {
            size: below.writeNow.size,
            write: (offset, pieces) => {
              const outcome = below.writeNow!.write(offset, pieces)
              outcomes.push({ offset, outcome: typeof outcome === "boolean" ? outcome : outcome.errno })
              return outcome
            }
          }
        })
      })
      const server = await TestServer.start({ drivers: [{ driver }] })
      const reader = fs.openSync(file, "r")
      try {
        const model = Buffer.alloc(size)
        const inFile = (offset: number, length: number) => {
          const out = Buffer.alloc(length)
          fs.readSync(reader, out, 0, length, offset)
          return out
        }
        const writes: Array<Planned> = [
          { offset: 0, length: 4096 },
          { offset: 5000, length: 100 },
          { offset: MiB, length: QUICK_WRITE_MAX },
          { offset: 3 * MiB, length: QUICK_WRITE_MAX * 2 + 3 }, // over the limit: through the thread pool
          { offset: 8 * MiB + 1, length: 70_000 },
          { offset: 12 * MiB, length: 8192, fua: true }
        ]
        const many: Array<Planned> = Array.from({ length: 24 }, (_, i) => ({ offset: 9 * MiB + i * 32 * KiB, length: 32 * KiB }))
        const back = await withClient(server.port, {}, (client) =>
          Effect.gen(function*() {
            for (const w of writes) {
              expect(outcomeOf(yield* send(client, w)), `write at ${w.offset}`).toBe("OK")
              expectBytes(inFile(w.offset, w.length), bytesOf(w), `file at ${w.offset}`)
            }
            const results = yield* Effect.all(many.map((w) => send(client, w)), { concurrency: 8 })
            expect(results.map(outcomeOf)).toEqual(many.map(() => "OK"))
            for (const w of many) expectBytes(inFile(w.offset, w.length), bytesOf(w), `file at ${w.offset}`)
            return yield* readAll(client, size)
          }))
        for (const w of [...writes, ...many]) model.set(bytesOf(w), w.offset)
        expectBytes(back, model, "read back")
        expectBytes(fs.readFileSync(file), model, "file")
        // Each non-FUA write was offered once; the one over the limit was declined, none failed.
        const offered = [...writes, ...many].filter((w) => w.fua !== true)
        expect(outcomes.map((o) => o.offset).sort((a, b) => a - b)).toEqual(offsets(offered))
        expect(outcomes.find((o) => o.offset === 3 * MiB)!.outcome).toBe(false)
        expect(outcomes.every((o) => typeof o.outcome === "boolean")).toBe(true)
        // The first write is never paused: it was made at once.
        expect(outcomes[0]).toEqual({ offset: 0, outcome: true })
      } finally {
        fs.closeSync(reader)
        await server.stop()
      }
    } finally {
      await Effect.runPromise(Scope.close(scope, Exit.void))
    }
  })
})
