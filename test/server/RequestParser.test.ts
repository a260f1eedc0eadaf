/**
 * The transmission request parser (src/server/RequestParser.ts), stepped by hand over a
 * real FrameReader attached to a PassThrough stream: bytes are written to the stream in
 * chosen pieces, and every step's outcome, the parser's state and what is left buffered
 * are checked.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import * as Schema from "effect/Schema"
import { PassThrough } from "node:stream"
import type { Capabilities } from "../../src/Driver.ts"
import { protocolError } from "../../src/Errors.ts"
import { Command, CommandFlags } from "../../src/protocol/Constants.ts"
import * as Wire from "../../src/protocol/Transmission.ts"
import type { PayloadSink } from "../../src/server/PayloadSink.ts"
import type { Request } from "../../src/server/Request.ts"
import { check, type CheckContext } from "../../src/server/RequestCheck.ts"
import * as RequestParser from "../../src/server/RequestParser.ts"
import * as FrameReader from "../../src/stream/FrameReader.ts"

const MiB = 1024 * 1024

const caps: Capabilities = {
  readOnly: false,
  flush: true,
  fua: true,
  trim: true,
  zero: true,
  fastZero: true,
  cache: true,
  resize: true,
  multiConn: true,
  rotational: false,
  blockStatus: true,
  blockSize: { minimum: 1, preferred: 4096, maximum: 4 * MiB }
}

const checkContext = (extended: boolean, readOnly = false): CheckContext => ({
  capabilities: { ...caps, readOnly },
  structured: true,
  extended,
  metaContexts: true,
  shuttingDown: false
})

// ---- a parser over a real FrameReader ------------------------------------------------------

/** Bytes in a buffer of their own (not Node's shared pool), so views of it can be told apart. */
const own = (bytes: Uint8Array): Buffer => {
  const out = Buffer.from(new ArrayBuffer(bytes.length))
  out.set(bytes)
  return out
}

const cleanups: Array<() => void> = []
afterEach(() => {
  for (const cleanup of cleanups.splice(0)) cleanup()
})

interface Harness {
  readonly parser: RequestParser.Parser
  readonly reader: FrameReader.FrameReader
  /** Writes bytes to the stream (as one chunk of their own) and waits until the reader has them. */
  readonly push: (bytes: Uint8Array) => Promise<Buffer>
  readonly step: () => RequestParser.Step
}

const harness = (options: {
  readonly extended?: boolean
  readonly readOnly?: boolean
  readonly maxDiscard?: number
  readonly check?: (req: Request) => ReturnType<typeof check>
  readonly stream?: RequestParser.Parser["stream"]
} = {}): Harness => {
  const extended = options.extended ?? false
  const stream = new PassThrough({ highWaterMark: 64 * MiB })
  const reader = FrameReader.attach(stream, { highWaterMark: 64 * MiB })
  cleanups.push(() => {
    reader.detach()
    stream.destroy()
  })
  const ctx = checkContext(extended, options.readOnly ?? false)
  const parser = RequestParser.make({
    extended,
    check: options.check ?? ((req) => check(req, ctx)),
    maxDiscard: options.maxDiscard ?? 16 * MiB,
    stream: options.stream
  })
  const push = async (bytes: Uint8Array) => {
    const chunk = own(bytes)
    const before = reader.buffered()
    stream.write(chunk)
    for (let i = 0; i < 1000 && reader.buffered() < before + chunk.length; i++) {
      await new Promise((resolve) => setImmediate(resolve))
    }
    expect(reader.buffered()).toBe(before + chunk.length)
    return chunk
  }
  return { parser, reader, push, step: () => RequestParser.step(parser, reader) }
}

// ---- wire bytes ---------------------------------------------------------------------------

interface Header {
  readonly type: number
  readonly flags?: number
  readonly cookie?: bigint
  readonly offset?: bigint
  readonly length?: number | bigint
}

const compact = (h: Header): Uint8Array =>
  Schema.encodeSync(Wire.RequestHeader)({
    flags: h.flags ?? 0,
    type: h.type,
    cookie: h.cookie ?? 1n,
    offset: h.offset ?? 0n,
    length: Number(h.length ?? 0)
  })

const extendedHeader = (h: Header): Uint8Array =>
  Schema.encodeSync(Wire.ExtendedRequestHeader)({
    flags: h.flags ?? 0,
    type: h.type,
    cookie: h.cookie ?? 1n,
    offset: h.offset ?? 0n,
    length: BigInt(h.length ?? 0)
  })

const concat = (...parts: ReadonlyArray<Uint8Array>): Uint8Array => new Uint8Array(Buffer.concat(parts))

/** `n` bytes of a recognisable pattern. */
const pattern = (n: number, seed = 1): Uint8Array => {
  const out = new Uint8Array(n)
  for (let i = 0; i < n; i++) out[i] = (i * 31 + seed * 7 + (i >>> 8)) & 0xff
  return out
}

const expectTag = <T extends RequestParser.Step["_tag"]>(
  step: RequestParser.Step,
  tag: T
): Extract<RequestParser.Step, { _tag: T }> => {
  expect(step._tag).toBe(tag)
  return step as Extract<RequestParser.Step, { _tag: T }>
}

// ---- tests --------------------------------------------------------------------------------

describe("RequestParser", () => {
  it("a compact header: NeedBytes 28 until it is whole, then Run with its fields", async () => {
    const h = harness()
    expect(h.step()).toEqual({ _tag: "NeedBytes", bytes: Wire.REQUEST_HEADER_SIZE })
    const bytes = compact({ type: Command.READ, flags: CommandFlags.FUA, cookie: 0xdeadbeefcafef00dn, offset: 8192n, length: 4096 })
    await h.push(bytes.subarray(0, 10))
    expect(h.step()).toEqual({ _tag: "NeedBytes", bytes: Wire.REQUEST_HEADER_SIZE })
    await h.push(bytes.subarray(10, 27))
    expect(h.step()).toEqual({ _tag: "NeedBytes", bytes: Wire.REQUEST_HEADER_SIZE })
    expect(h.reader.buffered()).toBe(27)
    await h.push(bytes.subarray(27))
    const run = expectTag(h.step(), "Run")
    expect(run.req).toEqual({
      type: Command.READ,
      flags: CommandFlags.FUA,
      cookie: 0xdeadbeefcafef00dn,
      wireOffset: 8192n,
      offset: 8192,
      length: 4096
    })
    expect(run.payload.reduce((n, p) => n + p.length, 0)).toBe(0)
    expect(h.parser.state._tag).toBe("Header")
    expect(h.reader.buffered()).toBe(0)
    expect(h.step()).toEqual({ _tag: "NeedBytes", bytes: Wire.REQUEST_HEADER_SIZE })
  })

  it("several headers in one chunk are parsed one step each", async () => {
    const h = harness()
    await h.push(concat(
      compact({ type: Command.READ, cookie: 1n, offset: 0n, length: 512 }),
      compact({ type: Command.FLUSH, cookie: 2n }),
      compact({ type: Command.TRIM, cookie: 3n, offset: 4096n, length: 4096 }),
      compact({ type: Command.READ, cookie: 4n }).subarray(0, 5)
    ))
    expect(expectTag(h.step(), "Run").req.cookie).toBe(1n)
    expect(expectTag(h.step(), "Run").req.type).toBe(Command.FLUSH)
    expect(expectTag(h.step(), "Run").req).toMatchObject({ cookie: 3n, type: Command.TRIM, offset: 4096, length: 4096 })
    expect(h.step()).toEqual({ _tag: "NeedBytes", bytes: Wire.REQUEST_HEADER_SIZE })
    expect(h.reader.buffered()).toBe(5)
  })

  it("an extended header: NeedBytes 32, a 64-bit length, offsets past 2^53 clamped but echoed as sent", async () => {
    const h = harness({ extended: true })
    expect(h.step()).toEqual({ _tag: "NeedBytes", bytes: Wire.EXTENDED_REQUEST_HEADER_SIZE })
    const bytes = extendedHeader({ type: Command.BLOCK_STATUS, flags: CommandFlags.REQ_ONE, cookie: 9n, offset: 0n, length: 2n ** 40n })
    await h.push(bytes.subarray(0, 28))
    expect(h.step()).toEqual({ _tag: "NeedBytes", bytes: Wire.EXTENDED_REQUEST_HEADER_SIZE })
    await h.push(bytes.subarray(28))
    expect(expectTag(h.step(), "Run").req).toEqual({
      type: Command.BLOCK_STATUS,
      flags: CommandFlags.REQ_ONE,
      cookie: 9n,
      wireOffset: 0n,
      offset: 0,
      length: 2 ** 40
    })

    await h.push(extendedHeader({ type: Command.READ, cookie: 10n, offset: 2n ** 60n, length: 2n ** 60n }))
    const rejected = expectTag(h.step(), "Reject")
    expect(rejected.req).toMatchObject({
      wireOffset: 2n ** 60n,
      offset: Number.MAX_SAFE_INTEGER,
      length: Number.MAX_SAFE_INTEGER
    })
    expect(rejected.error.errno).toBe("EINVAL")
  })

  it("a READ's length is not a payload, compact or extended", async () => {
    for (const extended of [false, true]) {
      const h = harness({ extended })
      const header = extended ? extendedHeader : compact
      await h.push(concat(header({ type: Command.READ, length: MiB, cookie: 1n }), header({ type: Command.FLUSH, cookie: 2n })))
      expect(expectTag(h.step(), "Run").req.length).toBe(MiB)
      expect(RequestParser.pendingPayload(h.parser)).toBe(0)
      expect(expectTag(h.step(), "Run").req.cookie).toBe(2n)
    }
  })

  it("a WRITE waits in the Payload state (Continue) before its payload is taken", async () => {
    const h = harness()
    const data = pattern(4096)
    await h.push(concat(compact({ type: Command.WRITE, cookie: 5n, offset: 0n, length: 4096 }), data))
    // The header is taken; the payload is still buffered, announced for a budget check.
    expect(h.step()).toEqual({ _tag: "Continue" })
    expect(h.parser.state._tag).toBe("Payload")
    expect(RequestParser.pendingPayload(h.parser)).toBe(4096)
    expect(h.reader.buffered()).toBe(4096)
    const run = expectTag(h.step(), "Run")
    expect(run.req).toMatchObject({ type: Command.WRITE, cookie: 5n, length: 4096 })
    expect(Buffer.concat(run.payload)).toEqual(Buffer.from(data))
    expect(RequestParser.pendingPayload(h.parser)).toBe(0)
    expect(h.parser.state._tag).toBe("Header")
    expect(h.reader.buffered()).toBe(0)
  })

  it("a WRITE payload split across chunks comes back as views of the pushed buffers, uncopied", async () => {
    const h = harness()
    const length = 100_000
    const data = pattern(length, 3)
    const header = compact({ type: Command.WRITE, cookie: 6n, offset: 512n, length })
    // The header and the start of the payload share the first chunk; the next header follows the end.
    const first = await h.push(concat(header, data.subarray(0, 1000)))
    expect(h.step()).toEqual({ _tag: "Continue" })
    expect(h.step()).toEqual({ _tag: "NeedBytes", bytes: length })
    const second = await h.push(data.subarray(1000, 60_000))
    expect(h.step()).toEqual({ _tag: "NeedBytes", bytes: length })
    expect(h.parser.state._tag).toBe("Payload")
    const third = await h.push(concat(data.subarray(60_000), compact({ type: Command.FLUSH, cookie: 7n })))
    const run = expectTag(h.step(), "Run")
    expect(run.req).toMatchObject({ type: Command.WRITE, cookie: 6n, offset: 512, length })
    expect(run.payload).toHaveLength(3)
    expect(Buffer.concat(run.payload)).toEqual(Buffer.from(data))
    const [a, b, c] = run.payload
    expect(a!.buffer).toBe(first.buffer)
    expect(a!.byteOffset).toBe(first.byteOffset + Wire.REQUEST_HEADER_SIZE)
    expect(a!.length).toBe(1000)
    expect(b!.buffer).toBe(second.buffer)
    expect(b!.length).toBe(59_000)
    expect(c!.buffer).toBe(third.buffer)
    expect(c!.byteOffset).toBe(third.byteOffset)
    expect(c!.length).toBe(length - 60_000)
    // Nothing of the next request was taken with the payload.
    expect(h.reader.buffered()).toBe(Wire.REQUEST_HEADER_SIZE)
    expect(expectTag(h.step(), "Run").req).toMatchObject({ type: Command.FLUSH, cookie: 7n })
  })

  it("a streamed WRITE hands its payload on as it arrives, in whole 4 KiB blocks of the export, uncopied", async () => {
    const sinks: Array<Request> = []
    const sink: PayloadSink = { take: () => {}, end: () => {} }
    const h = harness({
      stream: (req) => {
        sinks.push(req)
        return req.cookie === 21n ? sink : undefined
      }
    })
    const length = 20_000
    const data = pattern(length, 9)
    // Offset 1000: the first block ends 3096 bytes in, then blocks of 4096, then 20000 - 15384 = 4616 more.
    const first = await h.push(concat(compact({ type: Command.WRITE, cookie: 21n, offset: 1000n, length }), data.subarray(0, 3000)))
    expect(h.step()).toEqual({ _tag: "Continue" })
    expect(h.parser.state._tag).toBe("Stream")
    expect(RequestParser.pendingPayload(h.parser)).toBe(0) // nothing waits in the reader for the budget
    expect(h.step()).toEqual({ _tag: "NeedBytes", bytes: 3096 })
    const second = await h.push(data.subarray(3000, 12_000))
    const a = expectTag(h.step(), "Pieces")
    expect(a.sink).toBe(sink)
    expect(a.last).toBe(false)
    // 1000 + 11288 = 12288: up to the last whole block buffered; the rest waits.
    expect(a.pieces.map((p) => p.length)).toEqual([3000, 8288])
    expect(a.pieces[0]!.buffer).toBe(first.buffer)
    expect(a.pieces[1]!.buffer).toBe(second.buffer)
    expect(h.reader.buffered()).toBe(12_000 - 11_288)
    expect(h.step()).toEqual({ _tag: "NeedBytes", bytes: 4096 })
    await h.push(concat(data.subarray(12_000), compact({ type: Command.FLUSH, cookie: 22n })))
    const b = expectTag(h.step(), "Pieces")
    expect(b.last).toBe(true)
    expect(Buffer.concat([...a.pieces, ...b.pieces])).toEqual(Buffer.from(data))
    expect(h.parser.state._tag).toBe("Header")
    expect(expectTag(h.step(), "Run").req).toMatchObject({ type: Command.FLUSH, cookie: 22n })
    // Asked for WRITEs with a payload only; one without a sink takes the Payload state.
    await h.push(concat(compact({ type: Command.WRITE, cookie: 23n, offset: 0n, length: 512 }), pattern(512)))
    expect(h.step()).toEqual({ _tag: "Continue" })
    expect(h.parser.state._tag).toBe("Payload")
    expect(sinks.map((req) => req.cookie)).toEqual([21n, 23n])
  })

  it("an extended WRITE carries PAYLOAD_LEN; its payload is taken the same way", async () => {
    const h = harness({ extended: true })
    const data = pattern(8192, 5)
    await h.push(concat(
      extendedHeader({ type: Command.WRITE, flags: CommandFlags.PAYLOAD_LEN | CommandFlags.FUA, cookie: 11n, offset: 4096n, length: 8192 }),
      data.subarray(0, 100)
    ))
    expect(h.step()).toEqual({ _tag: "Continue" })
    expect(RequestParser.pendingPayload(h.parser)).toBe(8192)
    expect(h.step()).toEqual({ _tag: "NeedBytes", bytes: 8192 })
    await h.push(data.subarray(100))
    const run = expectTag(h.step(), "Run")
    expect(run.req).toMatchObject({ type: Command.WRITE, flags: CommandFlags.PAYLOAD_LEN | CommandFlags.FUA, cookie: 11n, length: 8192 })
    expect(Buffer.concat(run.payload)).toEqual(Buffer.from(data))
    expect(h.parser.state._tag).toBe("Header")
  })

  it("a zero-length WRITE runs at once with an empty payload", async () => {
    const h = harness()
    await h.push(compact({ type: Command.WRITE, cookie: 12n, offset: 0n, length: 0 }))
    const run = expectTag(h.step(), "Run")
    expect(run.req.length).toBe(0)
    expect(run.payload.reduce((n, p) => n + p.length, 0)).toBe(0)
    expect(h.parser.state._tag).toBe("Header")
  })

  it("a rejected request without payload is a Reject at once", async () => {
    const h = harness({ readOnly: true })
    await h.push(compact({ type: Command.TRIM, cookie: 13n, offset: 0n, length: 4096 }))
    const reject = expectTag(h.step(), "Reject")
    expect(reject.req).toMatchObject({ type: Command.TRIM, cookie: 13n })
    expect(reject.error.errno).toBe("EPERM")
    expect(h.parser.state._tag).toBe("Header")
  })

  it("a rejected WRITE's payload is skipped across several chunks, then Rejected, and the next header parses", async () => {
    const h = harness({ readOnly: true })
    const length = 3 * MiB + 1000
    const data = pattern(length, 9)
    await h.push(compact({ type: Command.WRITE, cookie: 14n, offset: 0n, length }))
    // The header is taken and the parser starts skipping: nothing is rejected before the payload is gone.
    expect(h.step()).toEqual({ _tag: "Continue" })
    expect(h.parser.state).toMatchObject({ _tag: "Skip", left: length })
    expect(RequestParser.pendingPayload(h.parser)).toBe(0)
    // Nothing buffered: it waits for at most 1 MiB at a time.
    expect(h.step()).toEqual({ _tag: "NeedBytes", bytes: MiB })

    let sent = 0
    for (const size of [300_000, MiB, MiB + 5000]) {
      await h.push(data.subarray(sent, sent + size))
      sent += size
      expect(h.step()).toEqual({ _tag: "Continue" })
      expect(h.parser.state).toMatchObject({ _tag: "Skip", left: length - sent })
      expect(h.reader.buffered()).toBe(0)
      expect(h.step()).toEqual({ _tag: "NeedBytes", bytes: Math.min(length - sent, MiB) })
    }
    // The last piece of the payload arrives with the next request's header.
    await h.push(concat(data.subarray(sent), compact({ type: Command.READ, cookie: 15n, offset: 0n, length: 512 })))
    const reject = expectTag(h.step(), "Reject")
    expect(reject.req).toMatchObject({ type: Command.WRITE, cookie: 14n, length })
    expect(reject.error.errno).toBe("EPERM")
    expect(h.parser.state._tag).toBe("Header")
    expect(h.reader.buffered()).toBe(Wire.REQUEST_HEADER_SIZE)
    expect(expectTag(h.step(), "Run").req).toMatchObject({ type: Command.READ, cookie: 15n, length: 512 })
  })

  it("a rejected WRITE whose payload is buffered already is skipped in one step", async () => {
    const h = harness({ check: () => protocolError("ENOSPC", "full") })
    await h.push(concat(compact({ type: Command.WRITE, cookie: 16n, length: 5000 }), pattern(5000)))
    expect(h.step()).toEqual({ _tag: "Continue" })
    const reject = expectTag(h.step(), "Reject")
    expect(reject.error).toMatchObject({ errno: "ENOSPC", message: "full" })
    expect(h.reader.buffered()).toBe(0)
  })

  it("a rejected payload up to maxDiscard is skipped; one byte more is a Violation", async () => {
    const maxDiscard = 64 * 1024
    const atLimit = harness({ readOnly: true, maxDiscard })
    await atLimit.push(concat(compact({ type: Command.WRITE, length: maxDiscard }), pattern(maxDiscard)))
    expect(atLimit.step()).toEqual({ _tag: "Continue" })
    expect(expectTag(atLimit.step(), "Reject").error.errno).toBe("EPERM")

    const over = harness({ readOnly: true, maxDiscard })
    await over.push(compact({ type: Command.WRITE, length: maxDiscard + 1 }))
    const violation = expectTag(over.step(), "Violation")
    expect(violation.message).toContain(String(maxDiscard + 1))

    // A WRITE past the export's maximum is rejected by the checks; past maxDiscard it is a violation too.
    const tooBig = harness({ maxDiscard: 8 * MiB })
    await tooBig.push(compact({ type: Command.WRITE, length: 16 * MiB }))
    expectTag(tooBig.step(), "Violation")
    // An accepted payload is not bounded by maxDiscard (the pipeline's budget governs it).
    const accepted = harness({ maxDiscard: 1024 })
    await accepted.push(compact({ type: Command.WRITE, length: 4096 }))
    expect(accepted.step()).toEqual({ _tag: "Continue" })
    expect(RequestParser.pendingPayload(accepted.parser)).toBe(4096)
  })

  it("an extended PAYLOAD_LEN on a rejected command is skipped too", async () => {
    const h = harness({ extended: true })
    // READ accepts no PAYLOAD_LEN: EINVAL, and the announced payload is discarded.
    await h.push(concat(
      extendedHeader({ type: Command.READ, flags: CommandFlags.PAYLOAD_LEN, cookie: 17n, length: 300 }),
      pattern(300),
      extendedHeader({ type: Command.FLUSH, cookie: 18n })
    ))
    expect(h.step()).toEqual({ _tag: "Continue" })
    const reject = expectTag(h.step(), "Reject")
    expect(reject.req.cookie).toBe(17n)
    expect(reject.error.errno).toBe("EINVAL")
    expect(expectTag(h.step(), "Run").req.cookie).toBe(18n)
  })

  it("a bad magic is a Violation naming it, compact or extended", async () => {
    const bad = harness()
    const bytes = compact({ type: Command.READ, length: 512 })
    bytes[0] = 0x12
    await bad.push(bytes)
    expect(expectTag(bad.step(), "Violation").message).toContain("12609513")

    // The other mode's magic is a bad magic as well.
    const compactInExtended = harness({ extended: true })
    await compactInExtended.push(concat(compact({ type: Command.READ }), new Uint8Array(4)))
    expect(expectTag(compactInExtended.step(), "Violation").message).toContain("25609513")
    const extendedInCompact = harness()
    await extendedInCompact.push(extendedHeader({ type: Command.READ }))
    expect(expectTag(extendedInCompact.step(), "Violation").message).toContain("21e41c71")
  })

  it("a WRITE's data taken for a header (payload length lied about) is a Violation", async () => {
    const h = harness()
    await h.push(concat(compact({ type: Command.WRITE, cookie: 1n, length: 4 }), pattern(4 + Wire.REQUEST_HEADER_SIZE)))
    expect(h.step()).toEqual({ _tag: "Continue" })
    expectTag(h.step(), "Run")
    expectTag(h.step(), "Violation")
  })

  it("DISC is a Disconnect, compact or extended, and the checks never see it", async () => {
    const seen: Array<Request> = []
    for (const extended of [false, true]) {
      const h = harness({
        extended,
        check: (req) => {
          seen.push(req)
          return undefined
        }
      })
      await h.push((extended ? extendedHeader : compact)({ type: Command.DISC, cookie: 19n }))
      expect(h.step()).toEqual({ _tag: "Disconnect" })
      // Even shutting down or read-only, DISC is not answered with an error.
      const h2 = harness({ extended, readOnly: true })
      await h2.push((extended ? extendedHeader : compact)({ type: Command.DISC, flags: CommandFlags.FUA }))
      expect(h2.step()).toEqual({ _tag: "Disconnect" })
    }
    expect(seen).toEqual([])
  })
})
