import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Client from "../../src/client/NbdClient.ts"
import * as MemoryDriver from "../../src/drivers/Memory.ts"
import type { ProtocolError } from "../../src/Errors.ts"
import { AllocationState, Command, CommandFlags, Option, Reply, ReplyError } from "../../src/protocol/Constants.ts"
import * as OptionData from "../../src/protocol/OptionData.ts"
import { expectBytes, pattern } from "../support/Bytes.ts"
import { exportsOf, serverStream } from "../support/InProcess.ts"

const GiB = 1024 ** 3
const SIZE = 8 * GiB
const HOLE_ZERO = AllocationState.HOLE | AllocationState.ZERO

const errnoOf = <A, R>(effect: Effect.Effect<A, Client.ClientError | ProtocolError, R>) =>
  Effect.map(Effect.flip(effect), (e) => (e._tag === "ProtocolError" ? e.errno : e._tag))

const connect = Effect.flatMap(serverStream(), (stream) =>
  Client.connect(stream, { extendedHeaders: true, metaContexts: ["base:allocation"] }))

describe("extended headers", () => {
  it.layer(exportsOf(MemoryDriver.layer({ size: SIZE })))((it) => {
    it.scoped("64-bit effect lengths: a 6 GiB trim and a block status longer than 4 GiB", () =>
      Effect.gen(function*() {
        const client = yield* connect
        expect(client.extendedHeaders).toBe(true)
        yield* client.write(GiB, pattern(4096, 1))
        yield* client.write(7 * GiB, pattern(4096, 2))
        const [status] = yield* client.blockStatus(2 * GiB, 6 * GiB)
        expect(status!.extents[0]).toEqual({ length: 5 * GiB, flags: HOLE_ZERO })
        yield* client.trim(GiB, 6 * GiB)
        expectBytes(yield* client.read(GiB, 4096), new Uint8Array(4096))
        expectBytes(yield* client.read(7 * GiB, 4096), pattern(4096, 2))
        yield* client.writeZeroes(0, SIZE)
        expectBytes(yield* client.read(7 * GiB, 4096), new Uint8Array(4096))
      }))

    it.scoped("WRITE without PAYLOAD_LEN is EINVAL and sends no data", () =>
      Effect.gen(function*() {
        const client = yield* connect
        expect(yield* errnoOf(client.request(Command.WRITE, 0, 0n, 4096))).toBe("EINVAL")
        yield* client.write(0, pattern(4096, 3))
        expectBytes(yield* client.read(0, 4096), pattern(4096, 3))
      }))

    it.scoped("PAYLOAD_LEN on a command that takes none: the payload is skipped, EINVAL", () =>
      Effect.gen(function*() {
        const client = yield* connect
        const junk = new Uint8Array(1000).fill(0x55)
        expect(yield* errnoOf(client.request(Command.READ, CommandFlags.PAYLOAD_LEN, 0n, junk.length, junk))).toBe("EINVAL")
        expect(yield* errnoOf(client.request(Command.BLOCK_STATUS, CommandFlags.PAYLOAD_LEN, 0n, 12, junk.subarray(0, 12))))
          .toBe("EINVAL")
        yield* client.flush
      }))

    it.scoped("a READ longer than the maximum payload is EINVAL", () =>
      Effect.gen(function*() {
        const client = yield* connect
        expect(yield* errnoOf(client.read(0, 64 * 1024 * 1024 + 1))).toBe("EINVAL")
      }))

    it.scoped("STRUCTURED_REPLY after EXTENDED_HEADERS is ERR_EXT_HEADER_REQD; a second EXTENDED_HEADERS is ERR_INVALID", () =>
      Effect.gen(function*() {
        const session = yield* Effect.flatMap(serverStream(), (s) => Client.handshake(s))
        expect((yield* session.option(Option.EXTENDED_HEADERS)).map((r) => r.replyType)).toEqual([Reply.ACK])
        expect((yield* session.option(Option.STRUCTURED_REPLY)).map((r) => r.replyType)).toEqual([
          ReplyError.EXT_HEADER_REQD
        ])
        expect((yield* session.option(Option.EXTENDED_HEADERS)).map((r) => r.replyType)).toEqual([ReplyError.INVALID])
        const listed = yield* session.option(
          Option.LIST_META_CONTEXT,
          OptionData.MetaContextRequest.encodeUnsafe({ name: "", queries: ["base:"] })
        )
        expect(listed.map((r) => r.replyType)).toEqual([Reply.META_CONTEXT, Reply.ACK])
      }))

    it.scoped("EXPORT_NAME after EXTENDED_HEADERS closes the connection", () =>
      Effect.gen(function*() {
        const session = yield* Effect.flatMap(serverStream(), (s) => Client.handshake(s))
        yield* session.extendedHeaders
        const result = yield* Effect.flip(session.option(Option.EXPORT_NAME))
        expect(result._tag).toBe("ClientError")
      }))

    it.scoped("EXTENDED_HEADERS with data is ERR_INVALID", () =>
      Effect.gen(function*() {
        const session = yield* Effect.flatMap(serverStream(), (s) => Client.handshake(s))
        expect((yield* session.option(Option.EXTENDED_HEADERS, new Uint8Array(1))).map((r) => r.replyType)).toEqual([
          ReplyError.INVALID
        ])
      }))

    it.scoped("a server configured without extended headers answers ERR_UNSUP", () =>
      Effect.gen(function*() {
        const session = yield* Effect.flatMap(serverStream({ extendedHeaders: false }), (s) => Client.handshake(s))
        const refused = yield* Effect.flip(session.extendedHeaders)
        expect(refused._tag === "OptionRefused" && refused.replyType).toBe(ReplyError.UNSUP)
        yield* session.structuredReplies
      }))
  })
})
