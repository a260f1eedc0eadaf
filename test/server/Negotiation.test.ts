import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"
import * as Client from "../../src/client/NbdClient.ts"
import * as MemoryDriver from "../../src/drivers/Memory.ts"
import * as Export from "../../src/Export.ts"
import { HandshakeFlags, Info, Option, Reply, ReplyError, TransmissionFlags } from "../../src/protocol/Constants.ts"
import * as OptionData from "../../src/protocol/OptionData.ts"
import { adjusted, serverStream } from "../support/InProcess.ts"

const MiB = 1024 * 1024

const twoExports = Layer.unwrapEffect(
  Effect.gen(function*() {
    const disk = yield* MemoryDriver.make({ size: 8 * MiB, description: "the disk" })
    const iso = yield* MemoryDriver.make({ size: 2 * MiB })
    return Export.ExportRegistry.layer([
      Export.make(disk, { name: "disk" }),
      Export.make(iso, { name: "iso", description: "read-only image", readOnly: true })
    ])
  })
)

const handshake = Effect.flatMap(serverStream(), (stream) => Client.handshake(stream))

describe("negotiation", () => {
  it.layer(twoExports)((it) => {
    it.scoped("greets with fixed newstyle and no-zeroes", () =>
      Effect.gen(function*() {
        const session = yield* handshake
        expect(session.handshakeFlags).toBe(HandshakeFlags.FIXED_NEWSTYLE | HandshakeFlags.NO_ZEROES)
      }))

    it.scoped("LIST names every export with its description", () =>
      Effect.gen(function*() {
        const session = yield* handshake
        const exports = yield* session.list
        expect(exports).toEqual([
          { name: "disk", description: "the disk" },
          { name: "iso", description: "read-only image" }
        ])
      }))

    it.scoped("LIST with data is ERR_INVALID, and negotiation goes on", () =>
      Effect.gen(function*() {
        const session = yield* handshake
        const replies = yield* session.option(Option.LIST, new Uint8Array([1, 2, 3]))
        expect(replies.map((r) => r.replyType)).toEqual([ReplyError.INVALID])
        expect((yield* session.list).length).toBe(2)
      }))

    it.scoped("INFO answers size, flags, name, description and block size", () =>
      Effect.gen(function*() {
        const session = yield* handshake
        const info = yield* session.info("iso")
        expect(info.size).toBe(2 * MiB)
        expect(info.transmissionFlags & TransmissionFlags.READ_ONLY).toBe(TransmissionFlags.READ_ONLY)
        expect(info.transmissionFlags & TransmissionFlags.SEND_WRITE_ZEROES).toBe(0)
        expect(info.name).toBe("iso")
        expect(info.description).toBe("read-only image")
        expect(info.blockSize).toEqual({ minimum: 1, preferred: 4096, maximum: 64 * MiB })
      }))

    it.scoped("the empty name selects the default (first) export", () =>
      Effect.gen(function*() {
        const session = yield* handshake
        const info = yield* session.info("")
        expect(info.size).toBe(8 * MiB)
        expect(info.transmissionFlags & TransmissionFlags.READ_ONLY).toBe(0)
      }))

    it.scoped("INFO and GO for an unknown export are ERR_UNKNOWN", () =>
      Effect.gen(function*() {
        const session = yield* handshake
        const info = yield* Effect.flip(session.info("nope"))
        expect(info._tag).toBe("OptionRefused")
        expect((info as Client.OptionRefused).replyType).toBe(ReplyError.UNKNOWN)
        const go = yield* Effect.flip(session.go("nope"))
        expect((go as Client.OptionRefused).replyType).toBe(ReplyError.UNKNOWN)
        expect((yield* session.info("disk")).size).toBe(8 * MiB)
      }))

    it.scoped("malformed INFO data is ERR_INVALID", () =>
      Effect.gen(function*() {
        const session = yield* handshake
        const short = yield* session.option(Option.INFO, new Uint8Array([0, 0, 0, 9, 65]))
        expect(short.map((r) => r.replyType)).toEqual([ReplyError.INVALID])
        const trailing = new Uint8Array([...OptionData.InfoRequest.encodeUnsafe({ name: "disk", requests: [] }), 7])
        expect((yield* session.option(Option.INFO, trailing)).map((r) => r.replyType)).toEqual([ReplyError.INVALID])
      }))

    it.scoped("unknown options are ERR_UNSUP and the next option still parses", () =>
      Effect.gen(function*() {
        const session = yield* handshake
        for (const code of [0, 4, 99, 0xffffffff]) {
          const replies = yield* session.option(code, new Uint8Array(100).fill(0x41))
          expect(replies.map((r) => r.replyType)).toEqual([ReplyError.UNSUP])
        }
        const client = yield* session.go("disk")
        expect(client.info.size).toBe(8 * MiB)
      }))

    it.scoped("STRUCTURED_REPLY is acknowledged once, then ERR_INVALID", () =>
      Effect.gen(function*() {
        const session = yield* handshake
        expect((yield* session.option(Option.STRUCTURED_REPLY)).map((r) => r.replyType)).toEqual([Reply.ACK])
        expect((yield* session.option(Option.STRUCTURED_REPLY)).map((r) => r.replyType)).toEqual([ReplyError.INVALID])
      }))

    it.scoped("STARTTLS without TLS configured is ERR_POLICY", () =>
      Effect.gen(function*() {
        const session = yield* handshake
        expect((yield* session.option(Option.STARTTLS)).map((r) => r.replyType)).toEqual([ReplyError.POLICY])
      }))

    it.scoped("option data over the limit is discarded and answered ERR_TOO_BIG", () =>
      Effect.gen(function*() {
        const session = yield* handshake
        const replies = yield* session.option(Option.INFO, new Uint8Array(200 * 1024))
        expect(replies.map((r) => r.replyType)).toEqual([ReplyError.TOO_BIG])
        expect((yield* session.info("disk")).size).toBe(8 * MiB)
      }))

    it.scoped("meta contexts: SET needs structured replies, then selects base:allocation", () =>
      Effect.gen(function*() {
        const session = yield* handshake
        const early = yield* Effect.flip(session.setMetaContexts("disk", ["base:allocation"]))
        expect((early as Client.OptionRefused).replyType).toBe(ReplyError.INVALID)
        yield* session.structuredReplies
        const listed = yield* session.option(
          Option.LIST_META_CONTEXT,
          OptionData.MetaContextRequest.encodeUnsafe({ name: "disk", queries: [] })
        )
        expect(listed.map((r) => r.replyType)).toEqual([Reply.META_CONTEXT, Reply.ACK])
        const ignored = yield* session.setMetaContexts("disk", ["base:", "qemu:dirty-bitmap:x", "base:nonsense"])
        expect(ignored.size).toBe(0)
        const selected = yield* session.setMetaContexts("disk", ["base:allocation"])
        expect([...selected.keys()]).toEqual(["base:allocation"])
        const client = yield* session.go("disk")
        expect(client.metaContexts.get("base:allocation")).toBeDefined()
      }))

    it.scoped("ABORT is acknowledged and the server closes", () =>
      Effect.gen(function*() {
        const session = yield* handshake
        const replies = yield* session.option(Option.ABORT)
        expect(replies.map((r) => r.replyType)).toEqual([Reply.ACK])
        const after = yield* Effect.flip(session.option(Option.LIST))
        expect(after._tag).toBe("ClientError")
      }))

    it.scoped("INFO replies decode with the Schema union", () =>
      Effect.gen(function*() {
        const session = yield* handshake
        const replies = yield* session.option(
          Option.INFO,
          OptionData.InfoRequest.encodeUnsafe({ name: "disk", requests: [Info.NAME, Info.BLOCK_SIZE] })
        )
        const infos = yield* Effect.forEach(
          replies.filter((r) => r.replyType === Reply.INFO),
          (r) => Schema.decodeUnknown(OptionData.InfoReply)(r.data)
        )
        expect(infos.map((i) => i._tag).sort()).toEqual(["BlockSize", "Export", "Name"])
      }))
  })

  const aligned = Layer.succeed(
    Export.ExportRegistry,
    Export.ExportRegistry.fromExports([
      Export.make(adjusted(MemoryDriver.fromStore(new MemoryDriver.SparseMemory(MiB)), () => ({
        capabilities: (caps) => ({ ...caps, blockSize: { minimum: 512, preferred: 4096, maximum: MiB } })
      })))
    ])
  )
  it.layer(aligned)((it) => {
    it.scoped("an export needing 512-byte alignment answers ERR_BLOCK_SIZE_REQD unless asked", () =>
      Effect.gen(function*() {
        const session = yield* handshake
        const refused = yield* session.option(
          Option.GO,
          OptionData.InfoRequest.encodeUnsafe({ name: "", requests: [] })
        )
        expect(refused.map((r) => r.replyType)).toEqual([Reply.INFO, Reply.INFO, ReplyError.BLOCK_SIZE_REQD])
        const info = yield* session.info("", [Info.BLOCK_SIZE])
        expect(info.blockSize).toEqual({ minimum: 512, preferred: 4096, maximum: MiB })
      }))
  })
})

describe("registry from driver layers", () => {
  const registry = Export.ExportRegistry.layerFromDrivers([
    { name: "small", description: "one MiB", driver: MemoryDriver.layer({ size: MiB }) },
    { name: "big", driver: MemoryDriver.layer({ size: 64 * MiB }), readOnly: true }
  ])
  it.layer(registry)((it) => {
    it.scoped("exports built from layers are listed and served, the first as the default", () =>
      Effect.gen(function*() {
        const session = yield* handshake
        expect(yield* session.list).toEqual([{ name: "small", description: "one MiB" }, { name: "big", description: "" }])
        expect((yield* session.info("")).size).toBe(MiB)
        const big = yield* session.info("big")
        expect([big.size, big.transmissionFlags & TransmissionFlags.READ_ONLY]).toEqual([64 * MiB, TransmissionFlags.READ_ONLY])
      }))
  })
})

describe("transmission flags", () => {
  const rotational = Layer.succeed(
    Export.ExportRegistry,
    Export.ExportRegistry.fromExports([
      Export.make(adjusted(MemoryDriver.fromStore(new MemoryDriver.SparseMemory(MiB)), () => ({
        capabilities: (caps) => ({ ...caps, rotational: true, multiConn: false })
      })))
    ])
  )
  it.layer(rotational)((it) => {
    it.scoped("ROTATIONAL and CAN_MULTI_CONN follow the driver's features", () =>
      Effect.gen(function*() {
        const session = yield* handshake
        const info = yield* session.info("")
        expect(info.transmissionFlags & TransmissionFlags.ROTATIONAL).toBe(TransmissionFlags.ROTATIONAL)
        expect(info.transmissionFlags & TransmissionFlags.CAN_MULTI_CONN).toBe(0)
      }))
  })
})
