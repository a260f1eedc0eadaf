import { describe, expect, it } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Client from "../../src/client/NbdClient.ts"
import * as Driver from "../../src/Driver.ts"
import * as MemoryDriver from "../../src/drivers/Memory.ts"
import { protocolError } from "../../src/Errors.ts"
import * as Export from "../../src/Export.ts"
import { AllocationState, Command, CommandFlags } from "../../src/protocol/Constants.ts"
import { expectBytes, pattern } from "../support/Bytes.ts"
import { adjusted, driverLayer, exportsOf, serverStream } from "../support/InProcess.ts"

const MiB = 1024 * 1024
const SIZE = 64 * MiB


const connect = (options: Parameters<typeof Client.connect>[1] = {}) =>
  Effect.flatMap(serverStream(), (stream) => Client.connect(stream, options))

const errnoOf = <A, R>(effect: Effect.Effect<A, Client.ClientError | import("../../src/Errors.ts").ProtocolError, R>) =>
  Effect.map(Effect.flip(effect), (e) => (e._tag === "ProtocolError" ? e.errno : e._tag))

/** The memory driver with its synchronous fast path, and without it (every request a fiber). */
const memoryVariants = {
  sync: MemoryDriver.layer({ size: SIZE }),
  effect: Layer.map(MemoryDriver.layer({ size: SIZE }), (ctx) =>
    Context.make(Driver.NbdDriver, adjusted(Context.get(ctx, Driver.NbdDriver), () => ({ sync: undefined }))))
}

/** Runs the same checks with simple replies, structured replies and extended headers, on both paths. */
for (const [path, memory] of Object.entries(memoryVariants)) for (const mode of ["simple", "structured", "extended"] as const) {
  const structuredReplies = mode !== "simple"
  const extendedHeaders = mode === "extended"
  /** Raw WRITE requests carry PAYLOAD_LEN with extended headers. */
  const payloadFlag = extendedHeaders ? CommandFlags.PAYLOAD_LEN : 0
  describe(`transmission with ${mode === "extended" ? "extended headers" : `${mode} replies`} (${path} path)`, () => {
    it.layer(exportsOf(memory))((it) => {
      it.scoped("writes then reads back, including across pages", () =>
        Effect.gen(function*() {
          const client = yield* connect({ structuredReplies, extendedHeaders })
          const data = pattern(100_000, 7)
          yield* client.write(30_000, data)
          expectBytes(yield* client.read(30_000, data.length), data)
          expectBytes(yield* client.read(0, 30_000), new Uint8Array(30_000))
        }))

      it.scoped("FUA write, flush, trim and write-zeroes leave the expected bytes", () =>
        Effect.gen(function*() {
          const client = yield* connect({ structuredReplies, extendedHeaders })
          yield* client.write(MiB, pattern(256 * 1024, 1), { flags: CommandFlags.FUA })
          yield* client.flush
          yield* client.trim(MiB, 64 * 1024)
          yield* client.writeZeroes(MiB + 64 * 1024, 64 * 1024, { flags: CommandFlags.NO_HOLE })
          yield* client.writeZeroes(MiB + 128 * 1024, 1000, { flags: CommandFlags.FAST_ZERO })
          const back = yield* client.read(MiB, 256 * 1024)
          const expected = pattern(256 * 1024, 1)
          expected.fill(0, 0, 128 * 1024 + 1000)
          expectBytes(back, expected)
          yield* client.cache(0, MiB)
        }))

      it.scoped("zero-length requests succeed", () =>
        Effect.gen(function*() {
          const client = yield* connect({ structuredReplies, extendedHeaders })
          expect((yield* client.read(SIZE, 0)).length).toBe(0)
          yield* client.write(SIZE, new Uint8Array(0))
          yield* client.trim(0, 0)
        }))

      it.scoped("out-of-range requests: ENOSPC for writes, EINVAL otherwise; the connection stays usable", () =>
        Effect.gen(function*() {
          const client = yield* connect({ structuredReplies, extendedHeaders })
          expect(yield* errnoOf(client.write(SIZE - 10, new Uint8Array(20)))).toBe("ENOSPC")
          expect(yield* errnoOf(client.writeZeroes(SIZE, 1))).toBe("ENOSPC")
          expect(yield* errnoOf(client.read(SIZE - 10, 20))).toBe("EINVAL")
          expect(yield* errnoOf(client.trim(SIZE + 1, 1))).toBe("EINVAL")
          expect(yield* errnoOf(client.request(Command.READ, 0, 2n ** 63n, 1))).toBe("EINVAL")
          expect(yield* errnoOf(client.request(Command.WRITE, payloadFlag, 2n ** 64n - 1n, 4, new Uint8Array(4)))).toBe("ENOSPC")
          yield* client.write(0, pattern(10, 3))
          expectBytes(yield* client.read(0, 10), pattern(10, 3))
        }))

      it.scoped("unknown commands and flags are EINVAL; payloads of rejected writes are skipped", () =>
        Effect.gen(function*() {
          const client = yield* connect({ structuredReplies, extendedHeaders })
          expect(yield* errnoOf(client.request(42, 0, 0n, 0))).toBe("EINVAL")
          expect(yield* errnoOf(client.request(Command.READ, 0x8000, 0n, 512))).toBe("EINVAL")
          expect(yield* errnoOf(client.request(Command.WRITE, CommandFlags.NO_HOLE | payloadFlag, 0n, 8, pattern(8, 9)))).toBe("EINVAL")
          expect(yield* errnoOf(client.request(Command.TRIM, CommandFlags.REQ_ONE, 0n, 512))).toBe("EINVAL")
          yield* client.write(512, pattern(512, 4))
          expectBytes(yield* client.read(512, 512), pattern(512, 4))
        }))

      it.scoped("a write larger than the maximum payload is discarded and answered EINVAL", () =>
        Effect.gen(function*() {
          const client = yield* connect({ structuredReplies, extendedHeaders })
          const big = new Uint8Array(64 * MiB + 4096)
          big.fill(0xee)
          expect(yield* errnoOf(client.request(Command.WRITE, payloadFlag, BigInt(16 * MiB), big.length, big))).toBe("EINVAL")
          expectBytes(yield* client.read(16 * MiB, 4096), new Uint8Array(4096))
        }))

      it.scoped("pipelined requests complete and each reply matches its cookie", () =>
        Effect.gen(function*() {
          const client = yield* connect({ structuredReplies, extendedHeaders })
          const blocks = Array.from({ length: 200 }, (_, i) => i)
          yield* Effect.forEach(blocks, (i) => client.write(i * 4096, pattern(4096, i)), { concurrency: "unbounded" })
          const back = yield* Effect.forEach(blocks, (i) => client.read(i * 4096, 4096), { concurrency: "unbounded" })
          back.forEach((data, i) => expectBytes(data, pattern(4096, i)))
        }))

    })
  })
}

describe("disconnect", () => {
  const store = new MemoryDriver.SparseMemory(SIZE)
  const memory = MemoryDriver.fromStore(store)
  const gate = Effect.runSync(Deferred.make<void>())
  let started = 0
  const gated = driverLayer(adjusted(memory, (below) => ({
    // Replacing write drops the fast path: every write goes through the gate.
    write: (offset, data, options) =>
      Effect.sync(() => started++).pipe(Effect.zipRight(Deferred.await(gate)), Effect.zipRight(below.write(offset, data, options)))
  })))

  it.layer(exportsOf(gated))((it) => {
    it.scoped("DISC lets in-flight requests finish before the connection closes", () =>
      Effect.gen(function*() {
        const client = yield* connect()
        const writes = yield* Effect.fork(
          Effect.forEach(Array.from({ length: 50 }, (_, i) => i), (i) => client.write(i * 512, pattern(512, i)), {
            concurrency: "unbounded"
          })
        )
        while (started < 50) yield* Effect.yieldNow()
        yield* Effect.fork(client.disconnect)
        yield* Effect.yieldNow()
        yield* Deferred.succeed(gate, undefined)
        yield* Fiber.join(writes)
        expectBytes(Uint8Array.from(store.read(49 * 512, 512)), pattern(512, 49))
      }))
  })
})

describe("transmission details", () => {
  it.layer(exportsOf(MemoryDriver.layer({ size: SIZE })))((it) => {
    it.scoped("BLOCK_STATUS reports holes and data; REQ_ONE returns one extent", () =>
      Effect.gen(function*() {
        const client = yield* connect({ metaContexts: ["base:allocation"] })
        const id = client.metaContexts.get("base:allocation")!
        yield* client.write(MiB, pattern(MiB, 2))
        const [status] = yield* client.blockStatus(0, 4 * MiB)
        expect(status!.contextId).toBe(id)
        expect(status!.extents).toEqual([
          { length: MiB, flags: AllocationState.HOLE | AllocationState.ZERO },
          { length: MiB, flags: 0 },
          { length: 2 * MiB, flags: AllocationState.HOLE | AllocationState.ZERO }
        ])
        const [one] = yield* client.blockStatus(0, 4 * MiB, { flags: CommandFlags.REQ_ONE })
        expect(one!.extents).toEqual([{ length: MiB, flags: AllocationState.HOLE | AllocationState.ZERO }])
        yield* client.trim(MiB, MiB)
        const [after] = yield* client.blockStatus(MiB, MiB)
        expect(after!.extents).toEqual([{ length: MiB, flags: AllocationState.HOLE | AllocationState.ZERO }])
      }))

    it.scoped("BLOCK_STATUS without a selected context is EINVAL", () =>
      Effect.gen(function*() {
        const client = yield* connect()
        expect(yield* errnoOf(client.blockStatus(0, 4096))).toBe("EINVAL")
      }))

    it.scoped("DF on READ needs structured replies", () =>
      Effect.gen(function*() {
        const simple = yield* connect({ structuredReplies: false })
        expect(yield* errnoOf(simple.read(0, 4096, { flags: CommandFlags.DF }))).toBe("EINVAL")
        const structured = yield* connect()
        expect((yield* structured.read(0, 4096, { flags: CommandFlags.DF })).length).toBe(4096)
      }))

    it.scoped("RESIZE changes the size seen by later requests", () =>
      Effect.gen(function*() {
        const client = yield* connect()
        yield* client.resize(SIZE * 2)
        yield* client.write(SIZE + MiB, pattern(4096, 5))
        expectBytes(yield* client.read(SIZE + MiB, 4096), pattern(4096, 5))
        yield* client.resize(SIZE)
        expect(yield* errnoOf(client.read(SIZE + MiB, 4096))).toBe("EINVAL")
      }))
  })

  it.layer(exportsOf(MemoryDriver.layer({ size: SIZE }), { readOnly: true }))((it) => {
    it.scoped("a read-only export refuses writes, trims and zeroes with EPERM and still reads", () =>
      Effect.gen(function*() {
        const client = yield* connect()
        expect(yield* errnoOf(client.write(0, pattern(512, 1)))).toBe("EPERM")
        expect(yield* errnoOf(client.trim(0, 512))).toBe("EPERM")
        expect(yield* errnoOf(client.writeZeroes(0, 512))).toBe("EPERM")
        expect(yield* errnoOf(client.resize(SIZE * 2))).toBe("EPERM")
        expectBytes(yield* client.read(0, 512), new Uint8Array(512))
      }))
  })

  const failing = driverLayer(Driver.make({
    name: "failing",
    size: Effect.succeed(SIZE),
    read: (offset, length) =>
      offset === 0
        ? Effect.fail(protocolError("EIO", "medium error"))
        : offset === 4096
        ? Effect.fail(protocolError("EIO", "bad sector", 4096 + 1536))
        : Effect.succeed(new Uint8Array(length)),
    write: () => Effect.fail(protocolError("ENOSPC", "the pool is full")),
    flush: Effect.fail(protocolError("EIO", "flush failed")),
    trim: () => Effect.die(new Error("a bug in the driver"))
  }))

  it.layer(exportsOf(failing))((it) => {
    for (const mode of ["simple", "structured", "extended"] as const) {
      it.scoped(`driver failures become the driver's errno (${mode})`, () =>
        Effect.gen(function*() {
          const client = yield* connect({ structuredReplies: mode !== "simple", extendedHeaders: mode === "extended" })
          expect(yield* errnoOf(client.read(0, 512))).toBe("EIO")
          expect(yield* errnoOf(client.write(0, pattern(512, 1)))).toBe("ENOSPC")
          expect(yield* errnoOf(client.flush)).toBe("EIO")
          expect(yield* errnoOf(client.trim(0, 512))).toBe("EIO")
          expect((yield* client.read(512, 512)).length).toBe(512)
        }))
    }

    it.scoped("a failure at an offset is an ERROR_OFFSET chunk with structured replies, plain EIO otherwise", () =>
      Effect.gen(function*() {
        for (const options of [{ structuredReplies: true }, { extendedHeaders: true }]) {
          const client = yield* connect(options)
          const error = yield* Effect.flip(client.read(4096, 4096))
          expect(error._tag === "ProtocolError" && [error.errno, error.message, error.offset]).toEqual([
            "EIO",
            "bad sector",
            4096 + 1536
          ])
        }
        const simple = yield* connect({ structuredReplies: false })
        const plain = yield* Effect.flip(simple.read(4096, 4096))
        expect(plain._tag === "ProtocolError" && [plain.errno, plain.offset]).toEqual(["EIO", undefined])
      }))

    it.scoped("structured error replies carry the driver's message", () =>
      Effect.gen(function*() {
        const client = yield* connect()
        const error = yield* Effect.flip(client.read(0, 512))
        expect(error._tag === "ProtocolError" && error.message).toBe("medium error")
      }))

    it.scoped("FAST_ZERO on a driver without native zeroing is ENOTSUP, at once", () =>
      Effect.gen(function*() {
        const client = yield* connect()
        expect(yield* errnoOf(client.writeZeroes(0, 512, { flags: CommandFlags.FAST_ZERO }))).toBe("ENOTSUP")
      }))
  })

  it.layer(Layer.succeed(Export.ExportRegistry, Export.ExportRegistry.fromExports([
    Export.make(adjusted(MemoryDriver.fromStore(new MemoryDriver.SparseMemory(SIZE)), () => ({
      capabilities: (caps) => ({ ...caps, blockSize: { minimum: 512, preferred: 4096, maximum: MiB } })
    })))
  ])))((it) => {
    it.scoped("requests misaligned to the minimum block size or over the maximum are EINVAL", () =>
      Effect.gen(function*() {
        const client = yield* connect()
        expect(yield* errnoOf(client.read(100, 512))).toBe("EINVAL")
        expect(yield* errnoOf(client.write(512, pattern(100, 1)))).toBe("EINVAL")
        expect(yield* errnoOf(client.read(0, 2 * MiB))).toBe("EINVAL")
        expect(yield* errnoOf(client.write(0, pattern(2 * MiB, 1)))).toBe("EINVAL")
        yield* client.write(512, pattern(1024, 1))
        expectBytes(yield* client.read(512, 1024), pattern(1024, 1))
      }))
  })
})
