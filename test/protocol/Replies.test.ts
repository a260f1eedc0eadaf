/**
 * Property tests: every hot-path reply encoder of src/protocol/Replies.ts produces exactly
 * what the Schemas of src/protocol/Transmission.ts describe. The pieces an encoder returns
 * are concatenated (as the writer sends them) and decoded chunk by chunk with the Schemas;
 * the decoded fields are compared to the encoder's inputs.
 */
import { describe, expect, it } from "@effect/vitest"
import * as FastCheck from "effect/FastCheck"
import * as Schema from "effect/Schema"
import { ChunkType, Errno, ReplyFlags } from "../../src/protocol/Constants.ts"
import * as Replies from "../../src/protocol/Replies.ts"
import * as Wire from "../../src/protocol/Transmission.ts"

// ---- decoding with the Schemas ----------------------------------------------------------

const concat = (pieces: ReadonlyArray<Uint8Array>): Uint8Array => {
  const out = new Uint8Array(pieces.reduce((n, piece) => n + piece.length, 0))
  let at = 0
  for (const piece of pieces) {
    out.set(piece, at)
    at += piece.length
  }
  return out
}

/** One chunk: its header (as decoded by the Schema of its mode) and its payload bytes. */
interface Chunk {
  readonly flags: number
  readonly type: number
  readonly cookie: bigint
  /** Only in extended headers. */
  readonly offset: bigint | undefined
  readonly payload: Uint8Array
}

/** Splits a byte stream of structured or extended chunks with the Schemas; every byte must belong to a chunk. */
const decodeChunks = (bytes: Uint8Array, extended: boolean): Array<Chunk> => {
  const chunks: Array<Chunk> = []
  let pos = 0
  while (pos < bytes.length) {
    if (extended) {
      const header = Schema.decodeSync(Wire.ExtendedReplyHeader)(bytes.subarray(pos, pos + Wire.EXTENDED_REPLY_HEADER_SIZE))
      pos += Wire.EXTENDED_REPLY_HEADER_SIZE
      const length = Number(header.length)
      expect(pos + length).toBeLessThanOrEqual(bytes.length)
      chunks.push({ ...header, payload: bytes.subarray(pos, pos + length) })
      pos += length
    } else {
      const header = Schema.decodeSync(Wire.StructuredReplyHeader)(
        bytes.subarray(pos, pos + Wire.STRUCTURED_REPLY_HEADER_SIZE)
      )
      pos += Wire.STRUCTURED_REPLY_HEADER_SIZE
      expect(pos + header.length).toBeLessThanOrEqual(bytes.length)
      chunks.push({ ...header, offset: undefined, payload: bytes.subarray(pos, pos + header.length) })
      pos += header.length
    }
  }
  expect(pos).toBe(bytes.length)
  return chunks
}

/** Every chunk echoes the cookie (and, extended, the request's offset); only the last is DONE. */
const expectEchoAndDone = (chunks: ReadonlyArray<Chunk>, to: Replies.ReplyTo, extended: boolean) => {
  expect(chunks.length).toBeGreaterThan(0)
  chunks.forEach((chunk, i) => {
    expect(chunk.cookie).toBe(to.cookie)
    expect(chunk.offset).toBe(extended ? to.wireOffset : undefined)
    expect(chunk.flags).toBe(i === chunks.length - 1 ? ReplyFlags.DONE : 0)
  })
}

/** A simple reply: the Schema's 16-byte header, then whatever follows it. */
const decodeSimple = (bytes: Uint8Array) => ({
  header: Schema.decodeSync(Wire.SimpleReply)(bytes.subarray(0, Wire.SIMPLE_REPLY_SIZE)),
  rest: bytes.subarray(Wire.SIMPLE_REPLY_SIZE)
})

// ---- modes and inputs -------------------------------------------------------------------

interface ModeCase {
  readonly name: string
  readonly mode: Replies.ReplyMode
  readonly structured: boolean
  readonly extended: boolean
}

const modes: ReadonlyArray<ModeCase> = [
  { name: "simple", mode: { structured: false, extended: false }, structured: false, extended: false },
  { name: "structured", mode: { structured: true, extended: false }, structured: true, extended: false },
  { name: "extended", mode: { structured: true, extended: true }, structured: true, extended: true },
  // Extended headers imply structured replies even when the flag is not set.
  { name: "extended (structured implied)", mode: { structured: false, extended: true }, structured: true, extended: true }
]

const u64 = FastCheck.bigInt({ min: 0n, max: 2n ** 64n - 1n })
const replyTo = FastCheck.record({ cookie: u64, wireOffset: u64 })
/** Reads stay below 2^63 so that offset + length fits the wire's u64. */
const readTo = FastCheck.record({ cookie: u64, wireOffset: FastCheck.bigInt({ min: 0n, max: 2n ** 63n }) })
const errno = FastCheck.oneof(FastCheck.constantFrom(...Object.values(Errno)), FastCheck.integer({ min: 1, max: 0xffffffff }))

/** Messages without NUL (NBD strings forbid it), from ASCII to astral-plane characters, some past 1024 code units. */
const message = FastCheck.oneof(
  FastCheck.string({ maxLength: 80 }),
  FastCheck.string({ unit: "grapheme", maxLength: 300 }),
  FastCheck.string({ unit: "binary", minLength: 1000, maxLength: 1200 }),
  FastCheck.tuple(FastCheck.integer({ min: 1000, max: 1030 }), FastCheck.constantFrom("é", "€", "😀")).map(
    ([n, c]) => "a".repeat(n) + c.repeat(20)
  )
).map((s) => s.replaceAll("\0", "?"))

/** Pieces of a READ: bytes (some more than one chunk of the reader) or hole sizes (some past 1 MiB of shared zeroes). */
const pieces = FastCheck.array(
  FastCheck.oneof(
    { weight: 4, arbitrary: FastCheck.uint8Array({ minLength: 1, maxLength: 300 }) },
    { weight: 3, arbitrary: FastCheck.integer({ min: 1, max: 5000 }) },
    { weight: 1, arbitrary: FastCheck.integer({ min: 1024 * 1024 - 2, max: 2 * 1024 * 1024 + 3 }) }
  ),
  { maxLength: 8 }
)

const pieceLength = (piece: Uint8Array | number) => (typeof piece === "number" ? piece : piece.length)
const totalLength = (ps: ReadonlyArray<Uint8Array | number>) => ps.reduce<number>((n, p) => n + pieceLength(p), 0)

/** The bytes a READ of these pieces stands for: data as is, holes as zeroes. */
const expectedBytes = (ps: ReadonlyArray<Uint8Array | number>): Uint8Array => {
  const out = new Uint8Array(totalLength(ps))
  let at = 0
  for (const piece of ps) {
    if (typeof piece !== "number") out.set(piece, at)
    at += pieceLength(piece)
  }
  return out
}

/** The message an ERROR chunk carries: the first 1024 UTF-16 code units, a split surrogate pair ending in U+FFFD. */
const truncatedMessage = (m: string): string => {
  const head = m.slice(0, 1024)
  const last = head.charCodeAt(head.length - 1)
  return head.length === 1024 && last >= 0xd800 && last <= 0xdbff ? head.slice(0, 1023) + "\uFFFD" : head
}

const utf8 = new TextEncoder()

/** Byte equality without the element-by-element diff of toEqual (reads reach megabytes). */
const expectSameBytes = (actual: Uint8Array, expected: Uint8Array) => {
  expect(actual.length).toBe(expected.length)
  const same = Buffer.from(actual.buffer, actual.byteOffset, actual.byteLength).equals(expected)
  if (!same) expect(Array.from(actual.subarray(0, 64))).toEqual(Array.from(expected.subarray(0, 64)))
  expect(same).toBe(true)
}

// ---- properties ---------------------------------------------------------------------------

describe("reply encoders equal the Schemas", () => {
  for (const { extended, mode, name, structured } of modes) {
    describe(name, () => {
      const encoder = Replies.encoder(mode)

      it("payload offset is the header size of the mode", () => {
        if (structured) {
          expect(encoder.at).toBe(extended ? Wire.EXTENDED_REPLY_HEADER_SIZE : Wire.STRUCTURED_REPLY_HEADER_SIZE)
        }
      })

      if (structured) {
        it.prop(
          "chunk: the header decodes with the Schema, with room for the extra bytes",
          {
            to: replyTo,
            done: FastCheck.boolean(),
            type: FastCheck.integer({ min: 0, max: 0xffff }),
            length: FastCheck.integer({ min: 0, max: 0xffffffff }),
            extra: FastCheck.integer({ min: 0, max: 40 })
          },
          ({ done, extra, length, to, type }) => {
            const bytes = encoder.chunk(to, done, type, length, extra)
            expect(bytes.length).toBe(encoder.at + extra)
            const header = extended
              ? Schema.decodeSync(Wire.ExtendedReplyHeader)(bytes.subarray(0, encoder.at))
              : Schema.decodeSync(Wire.StructuredReplyHeader)(bytes.subarray(0, encoder.at))
            expect(header).toEqual({
              flags: done ? ReplyFlags.DONE : 0,
              type,
              cookie: to.cookie,
              ...(extended ? { offset: to.wireOffset, length: BigInt(length) } : { length })
            })
          }
        )
      }

      it.prop("ok", { to: replyTo }, ({ to }) => {
        const bytes = concat(encoder.ok(to))
        if (!extended) {
          expect(bytes.length).toBe(Wire.SIMPLE_REPLY_SIZE)
          expect(decodeSimple(bytes).header).toEqual({ error: 0, cookie: to.cookie })
          return
        }
        const chunks = decodeChunks(bytes, extended)
        expect(chunks).toHaveLength(1)
        expectEchoAndDone(chunks, to, extended)
        expect(chunks[0]!.type).toBe(ChunkType.NONE)
        expect(chunks[0]!.payload.length).toBe(0)
      })

      it.prop(
        "error, with and without an offset",
        {
          to: replyTo,
          errno,
          message,
          errorOffset: FastCheck.option(FastCheck.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }), { nil: undefined })
        },
        ({ errno, errorOffset, message, to }) => {
          const bytes = concat(encoder.error(to, errno, message, errorOffset))
          if (!structured) {
            // A simple reply carries only the errno: no message, no offset.
            expect(bytes.length).toBe(Wire.SIMPLE_REPLY_SIZE)
            expect(decodeSimple(bytes).header).toEqual({ error: errno, cookie: to.cookie })
            return
          }
          const chunks = decodeChunks(bytes, extended)
          expect(chunks).toHaveLength(1)
          expectEchoAndDone(chunks, to, extended)
          const [chunk] = chunks
          const expectedMessage = truncatedMessage(message)
          if (errorOffset === undefined) {
            expect(chunk!.type).toBe(ChunkType.ERROR)
            expect(Schema.decodeSync(Wire.ErrorPayload)(chunk!.payload)).toEqual({ error: errno, message: expectedMessage })
          } else {
            expect(chunk!.type).toBe(ChunkType.ERROR_OFFSET)
            expect(Schema.decodeSync(Wire.ErrorOffsetPayload)(chunk!.payload)).toEqual({
              error: errno,
              message: expectedMessage,
              offset: BigInt(errorOffset)
            })
          }
          // The message is the payload's only variable part: 6 bytes before it, 8 after with an offset.
          expect(chunk!.payload.length).toBe(6 + utf8.encode(expectedMessage).length + (errorOffset === undefined ? 0 : 8))
        }
      )

      it.prop(
        "read of data and holes, with and without DF",
        { to: readTo, pieces, df: FastCheck.boolean() },
        ({ df, pieces, to }) => {
          const length = totalLength(pieces)
          const out = encoder.read(to, length, pieces, df)
          const bytes = concat(out)
          const expected = expectedBytes(pieces)
          // Data pieces are sent as they are, never copied.
          for (const piece of pieces) {
            if (typeof piece !== "number") expect(out.some((sent) => sent === piece)).toBe(true)
          }
          if (!structured) {
            const { header, rest } = decodeSimple(bytes)
            expect(header).toEqual({ error: 0, cookie: to.cookie })
            expectSameBytes(rest, expected)
            return
          }
          const chunks = decodeChunks(bytes, extended)
          expectEchoAndDone(chunks, to, extended)
          if (length === 0) {
            expect(chunks).toHaveLength(1)
            expect(chunks[0]!.type).toBe(ChunkType.NONE)
            expect(chunks[0]!.payload.length).toBe(0)
            return
          }
          // The chunks tile the request from its offset, in order, reconstructing its bytes.
          const rebuilt = new Uint8Array(length)
          let next = to.wireOffset
          for (const chunk of chunks) {
            if (chunk.type === ChunkType.OFFSET_DATA) {
              const { data, offset } = Schema.decodeSync(Wire.OffsetData)(chunk.payload)
              expect(offset).toBe(next)
              expect(data.length).toBeGreaterThan(0)
              rebuilt.set(data, Number(offset - to.wireOffset))
              next += BigInt(data.length)
            } else {
              expect(chunk.type).toBe(ChunkType.OFFSET_HOLE)
              expect(df).toBe(false)
              const { offset, size } = Schema.decodeSync(Wire.OffsetHole)(chunk.payload)
              expect(offset).toBe(next)
              expect(size).toBeGreaterThan(0)
              next += BigInt(size)
            }
          }
          expect(next).toBe(to.wireOffset + BigInt(length))
          expectSameBytes(rebuilt, expected)
          if (df) {
            // DF: one data chunk of every byte, holes included.
            expect(chunks).toHaveLength(1)
          } else {
            // One hole chunk per hole, one data chunk per run of consecutive data pieces.
            const holes = pieces.filter((p) => typeof p === "number").length
            const runs = pieces.filter((p, i) => typeof p !== "number" && (i === 0 || typeof pieces[i - 1] === "number")).length
            expect(chunks.filter((c) => c.type === ChunkType.OFFSET_HOLE)).toHaveLength(holes)
            expect(chunks.filter((c) => c.type === ChunkType.OFFSET_DATA)).toHaveLength(runs)
          }
        }
      )

      it.prop(
        "read of zero bytes",
        { to: readTo, df: FastCheck.boolean(), empty: FastCheck.constantFrom<ReadonlyArray<Uint8Array | number>>([], [new Uint8Array(0)]) },
        ({ df, empty, to }) => {
          const bytes = concat(encoder.read(to, 0, empty, df))
          if (!structured) {
            expect(bytes.length).toBe(Wire.SIMPLE_REPLY_SIZE)
            expect(decodeSimple(bytes).header).toEqual({ error: 0, cookie: to.cookie })
            return
          }
          const chunks = decodeChunks(bytes, extended)
          expect(chunks).toHaveLength(1)
          expectEchoAndDone(chunks, to, extended)
          expect(chunks[0]!.type).toBe(ChunkType.NONE)
        }
      )

      if (structured) {
        const u32 = FastCheck.integer({ min: 0, max: 0xffffffff })
        const extentLength = extended ? FastCheck.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }) : FastCheck.integer({ min: 1, max: 0xffffffff })
        const contexts = FastCheck.array(
          FastCheck.record({
            id: u32,
            extents: FastCheck.array(FastCheck.record({ length: extentLength, flags: u32 }), { minLength: 1, maxLength: 20 })
          }),
          { minLength: 1, maxLength: 4 }
        )

        it.prop("blockStatus: one chunk per context, the last one final", { to: replyTo, contexts }, ({ contexts, to }) => {
          const chunks = decodeChunks(concat(encoder.blockStatus(to, contexts)), extended)
          expect(chunks).toHaveLength(contexts.length)
          expectEchoAndDone(chunks, to, extended)
          chunks.forEach((chunk, i) => {
            const context = contexts[i]!
            if (extended) {
              expect(chunk.type).toBe(ChunkType.BLOCK_STATUS_EXT)
              expect(Schema.decodeSync(Wire.BlockStatusExtPayload)(chunk.payload)).toEqual({
                contextId: context.id,
                descriptors: context.extents.map((e) => ({ length: BigInt(e.length), flags: BigInt(e.flags) }))
              })
            } else {
              expect(chunk.type).toBe(ChunkType.BLOCK_STATUS)
              expect(Schema.decodeSync(Wire.BlockStatusPayload)(chunk.payload)).toEqual({
                contextId: context.id,
                descriptors: context.extents
              })
            }
          })
        })
      }
    })
  }
})

describe("reply encoders, examples", () => {
  const to = { cookie: 0x0102030405060708n, wireOffset: 4096n }

  it("a message past 1024 characters is cut at 1024 characters, not bytes", () => {
    const encoder = Replies.encoder({ structured: true, extended: false })
    const long = "€".repeat(1500) // 3 bytes each
    const [chunk] = decodeChunks(concat(encoder.error(to, Errno.EIO, long)), false)
    const payload = Schema.decodeSync(Wire.ErrorPayload)(chunk!.payload)
    expect(payload.message).toBe("€".repeat(1024))
    expect(chunk!.payload.length).toBe(6 + 3 * 1024)
  })

  it("an error offset of 0 is still an ERROR_OFFSET", () => {
    const encoder = Replies.encoder({ structured: true, extended: true })
    const [chunk] = decodeChunks(concat(encoder.error(to, Errno.EIO, "bad sector", 0)), true)
    expect(chunk!.type).toBe(ChunkType.ERROR_OFFSET)
    expect(Schema.decodeSync(Wire.ErrorOffsetPayload)(chunk!.payload)).toEqual({ error: Errno.EIO, message: "bad sector", offset: 0n })
  })

  it("holes sent as data (DF, simple) are the shared zeroes, in pieces of at most 1 MiB", () => {
    const n = 2 * 1024 * 1024 + 5
    const zeroes = Replies.zeroPieces(n)
    expect(zeroes.map((z) => z.length)).toEqual([1024 * 1024, 1024 * 1024, 5])
    expect(new Set(zeroes.map((z) => z.buffer)).size).toBe(1)
    expect(zeroes.every((z) => z.every((b) => b === 0))).toBe(true)
    expect(Replies.zeroPieces(0)).toEqual([])
    const simple = Replies.encoder({ structured: false, extended: false }).read(to, n, [n], false)
    expect(simple.slice(1).map((p) => p.length)).toEqual([1024 * 1024, 1024 * 1024, 5])
  })
})
