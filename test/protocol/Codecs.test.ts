import { describe, expect, it } from "@effect/vitest"
import * as Arbitrary from "effect/Arbitrary"
import * as Either from "effect/Either"
import * as FastCheck from "effect/FastCheck"
import * as ParseResult from "effect/ParseResult"
import * as Schema from "effect/Schema"
import type { BinarySchema } from "../../src/protocol/Binary.ts"
import * as Handshake from "../../src/protocol/Handshake.ts"
import * as OptionData from "../../src/protocol/OptionData.ts"
import * as Transmission from "../../src/protocol/Transmission.ts"

const messages: Record<string, BinarySchema<any>> = {
  Greeting: Handshake.Greeting,
  ClientFlagsMessage: Handshake.ClientFlagsMessage,
  OptionRequestHeader: Handshake.OptionRequestHeader,
  OptionReplyHeader: Handshake.OptionReplyHeader,
  ExportNameReply: Handshake.ExportNameReply,
  ExportNameReplyNoZeroes: Handshake.ExportNameReplyNoZeroes,
  InfoRequest: OptionData.InfoRequest,
  MetaContextRequest: OptionData.MetaContextRequest,
  ServerReply: OptionData.ServerReply,
  MetaContextReply: OptionData.MetaContextReply,
  InfoExport: OptionData.InfoExport,
  InfoName: OptionData.InfoName,
  InfoDescription: OptionData.InfoDescription,
  InfoBlockSize: OptionData.InfoBlockSize,
  RequestHeader: Transmission.RequestHeader,
  SimpleReply: Transmission.SimpleReply,
  StructuredReplyHeader: Transmission.StructuredReplyHeader,
  OffsetData: Transmission.OffsetData,
  OffsetHole: Transmission.OffsetHole,
  ErrorPayload: Transmission.ErrorPayload,
  ErrorOffsetPayload: Transmission.ErrorOffsetPayload,
  BlockStatusPayload: Transmission.BlockStatusPayload,
  ExtendedRequestHeader: Transmission.ExtendedRequestHeader,
  ExtendedReplyHeader: Transmission.ExtendedReplyHeader,
  BlockStatusExtPayload: Transmission.BlockStatusExtPayload
}

/** Messages whose decoding fails on every strict prefix (no trailing "rest" field). */
const fixedLength = new Set([
  "Greeting",
  "ClientFlagsMessage",
  "OptionRequestHeader",
  "OptionReplyHeader",
  "ExportNameReply",
  "ExportNameReplyNoZeroes",
  "InfoExport",
  "InfoBlockSize",
  "RequestHeader",
  "SimpleReply",
  "StructuredReplyHeader",
  "OffsetHole",
  "ErrorOffsetPayload",
  "ErrorPayload",
  "ExtendedRequestHeader",
  "ExtendedReplyHeader"
])

/** Messages whose last field takes the remaining bytes. */
const endsWithRest = new Set(["OffsetData", "InfoName", "InfoDescription", "ServerReply", "MetaContextReply", "BlockStatusPayload"])

describe("codecs", () => {
  for (const [name, schema] of Object.entries(messages)) {
    describe(name, () => {
      it.prop("decode(encode(x)) is x", [Schema.typeSchema(schema)], ([value]) => {
        const bytes = Schema.encodeSync(schema)(value)
        expect(bytes.length).toBe(schema.sizeOf(value))
        expect(Schema.decodeSync(schema)(bytes)).toEqual(value)
        expect(schema.encodeUnsafe(value)).toEqual(bytes)
      })

      if (fixedLength.has(name)) {
        it.prop("every truncation is a ParseError, never a throw", [Schema.typeSchema(schema)], ([value]) => {
          const bytes = schema.encodeUnsafe(value)
          for (let n = 0; n < bytes.length; n++) {
            const result = Schema.decodeUnknownEither(schema)(bytes.subarray(0, n))
            expect(Either.isLeft(result) && ParseResult.isParseError(result.left)).toBe(true)
          }
        })
      }

      if (!endsWithRest.has(name)) {
        it.prop("trailing bytes are a ParseError", [Schema.typeSchema(schema)], ([value]) => {
          const bytes = new Uint8Array([...schema.encodeUnsafe(value), 0])
          expect(Either.isLeft(Schema.decodeUnknownEither(schema)(bytes))).toBe(true)
        })
      }
    })
  }

  it("a wrong magic number is a ParseError naming the magic", () => {
    const bytes = Transmission.RequestHeader.encodeUnsafe({ flags: 0, type: 0, cookie: 1n, offset: 0n, length: 512 })
    bytes[0] = 0x12
    const result = Schema.decodeUnknownEither(Transmission.RequestHeader)(bytes)
    expect(Either.isLeft(result)).toBe(true)
    if (Either.isLeft(result)) expect(result.left.message).toContain("request magic")
    const greeting = Handshake.Greeting.encodeUnsafe({ handshakeFlags: 3 })
    greeting[15] ^= 1
    expect(Either.isLeft(Schema.decodeUnknownEither(Handshake.Greeting)(greeting))).toBe(true)
  })

  it("invalid UTF-8 and NUL in strings are ParseErrors", () => {
    const invalid = new Uint8Array([0, 0, 0, 2, 0xc3, 0x28, 0, 0])
    expect(Either.isLeft(Schema.decodeUnknownEither(OptionData.InfoRequest)(invalid))).toBe(true)
    const nul = new Uint8Array([0, 0, 0, 2, 0x41, 0x00, 0, 0])
    expect(Either.isLeft(Schema.decodeUnknownEither(OptionData.InfoRequest)(nul))).toBe(true)
  })

  it("a name length past the end of the data is a ParseError", () => {
    const bytes = new Uint8Array([0xff, 0xff, 0xff, 0xff, 0x41, 0, 0])
    expect(Either.isLeft(Schema.decodeUnknownEither(OptionData.InfoRequest)(bytes))).toBe(true)
  })

  it("values out of range fail to encode", () => {
    expect(Either.isLeft(Schema.encodeEither(Transmission.SimpleReply)({ error: -1, cookie: 0n }))).toBe(true)
    expect(Either.isLeft(Schema.encodeEither(Transmission.SimpleReply)({ error: 0, cookie: 2n ** 64n }))).toBe(true)
  })

  it("arbitrary bytes never throw from a decoder", () => {
    FastCheck.assert(
      FastCheck.property(FastCheck.uint8Array({ maxLength: 64 }), (bytes) => {
        for (const schema of Object.values(messages)) Schema.decodeUnknownEither(schema)(bytes)
      })
    )
  })
})

describe("hot-path codecs equal the Schemas", () => {
  it.prop("decodeRequestHeaderFast", [Schema.typeSchema(Transmission.RequestHeader)], ([header]) => {
    const bytes = Transmission.RequestHeader.encodeUnsafe(header)
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
    expect(Transmission.decodeRequestHeaderFast(view, 0)).toEqual(Schema.decodeSync(Transmission.RequestHeader)(bytes))
  })

  it.prop("decodeExtendedRequestHeaderFast", [Schema.typeSchema(Transmission.ExtendedRequestHeader)], ([header]) => {
    const bytes = Transmission.ExtendedRequestHeader.encodeUnsafe(header)
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
    expect(Transmission.decodeExtendedRequestHeaderFast(view, 0)).toEqual(
      Schema.decodeSync(Transmission.ExtendedRequestHeader)(bytes)
    )
  })

  it.prop(
    "encodeExtendedHeaderFast",
    [Schema.typeSchema(Transmission.ExtendedReplyHeader).pipe(Schema.filter((h) => h.length <= BigInt(Number.MAX_SAFE_INTEGER)))],
    ([header]) => {
      const fast = Transmission.encodeExtendedHeaderFast(header.flags, header.type, header.cookie, header.offset, Number(header.length))
      expect(Uint8Array.from(fast)).toEqual(Schema.encodeSync(Transmission.ExtendedReplyHeader)(header))
    }
  )

  it.prop("encodeRequestHeaderFast", [Schema.typeSchema(Transmission.RequestHeader)], ([h]) => {
    expect(Uint8Array.from(Transmission.encodeRequestHeaderFast(h.flags, h.type, h.cookie, h.offset, h.length))).toEqual(
      Schema.encodeSync(Transmission.RequestHeader)(h)
    )
  })

  it.prop("encodeExtendedRequestHeaderFast", [Schema.typeSchema(Transmission.ExtendedRequestHeader)], ([h]) => {
    expect(
      Uint8Array.from(Transmission.encodeExtendedRequestHeaderFast(h.flags, h.type, h.cookie, h.offset, h.length))
    ).toEqual(Schema.encodeSync(Transmission.ExtendedRequestHeader)(h))
  })

  it.prop("encodeSimpleReplyFast", [Schema.typeSchema(Transmission.SimpleReply)], ([reply]) => {
    expect(Uint8Array.from(Transmission.encodeSimpleReplyFast(reply.error, reply.cookie))).toEqual(
      Schema.encodeSync(Transmission.SimpleReply)(reply)
    )
  })

  it.prop("encodeStructuredHeaderFast", [Schema.typeSchema(Transmission.StructuredReplyHeader)], ([header]) => {
    const fast = Transmission.encodeStructuredHeaderFast(header.flags, header.type, header.cookie, header.length)
    expect(Uint8Array.from(fast)).toEqual(Schema.encodeSync(Transmission.StructuredReplyHeader)(header))
  })

  it("Arbitrary.make covers every message", () => {
    for (const schema of Object.values(messages)) {
      expect(FastCheck.sample(Arbitrary.make(Schema.typeSchema(schema)), 3).length).toBe(3)
    }
  })
})
