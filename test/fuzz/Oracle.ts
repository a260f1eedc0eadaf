/**
 * What the server must answer, for cases whose answers can be predicted: scripts made as
 * a valid negotiation and left unmutated. For those, the number of transmission replies
 * is known (every request up to the first that breaks the stream is answered exactly
 * once), and the reply stream can be parsed frame by frame. The harness uses it for
 * three checks: the server does not stop answering while the client waits (a stall is a
 * hang no end-of-stream would reveal), every byte it sends is a well-formed frame for a
 * request that is waiting, and data read from the read-only export is its content.
 */
import { Command, CommandFlags, Info, Option, Reply, ReplyFlags } from "../../src/protocol/Constants.ts"
import * as OptionData from "../../src/protocol/OptionData.ts"
import { encodeRequestHeaderFast } from "../../src/protocol/Transmission.ts"
import * as ServerConfig from "../../src/server/ServerConfig.ts"
import { clientFlagsBytes, Exports, type FuzzCase, optionBytes, type RequestOp } from "./Generators.ts"

/** The answers a case must get. */
export interface Expectation {
  /** Transmission replies (final chunks) the server sends. */
  readonly replies: number
  /** `replies` is exact (else a lower bound: the stream goes on in a way the model does not follow). */
  readonly exact: boolean
  readonly structured: boolean
  readonly extended: boolean
  readonly noZeroes: boolean
  /** The export transmission is on (the default resolved), when it gets there. */
  readonly exportName: string | undefined
  /** The options, in order, up to the one that enters transmission (if one does). */
  readonly options: ReadonlyArray<{ readonly option: number }>
  /** The requests answered, for the lengths of simple READ replies. */
  readonly requests: ReadonlyArray<RequestOp>
}

const U64_MAX = (1n << 64n) - 1n
const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER)
const toNumber = (n: bigint) => (n > MAX_SAFE ? Number.MAX_SAFE_INTEGER : Number(n))
const utf8 = new TextDecoder("utf-8", { fatal: true })
const SERVED: ReadonlyArray<string> = [Exports.rw.name, Exports.ro.name, Exports.aligned.name, Exports.big.name]

const decodeInfo = (data: Uint8Array): typeof OptionData.InfoRequest.Type | undefined => {
  try {
    return OptionData.InfoRequest.field.read({ bytes: data, view: new DataView(data.buffer, data.byteOffset, data.byteLength), pos: 0 })
  } catch {
    return undefined
  }
}

/** The expectation of a case, or undefined when its answers cannot be predicted. */
export const expectationOf = (
  c: FuzzCase,
  config: Partial<ServerConfig.ServerConfig> = c.config,
  defaultExport: string = c.defaultExport
): Expectation | undefined => {
  const s = c.script
  if (s.valid === undefined || c.mutations.length > 0) return undefined
  if ((s.clientFlags & ~3) !== 0) return undefined
  const settings = ServerConfig.make(config)
  const { extended, structured } = s.valid
  const base = { structured, extended, noZeroes: (s.clientFlags & 2) !== 0 }
  const options: Array<{ option: number }> = []
  const none = (): Expectation => ({ ...base, replies: 0, exact: true, exportName: undefined, options, requests: [] })
  let exportName: string | undefined
  for (const op of s.options) {
    if (op.declaredLength !== undefined) return undefined
    // Random bytes under a known option's code (STRUCTURED_REPLY with no data, say) are not modelled.
    if (op.raw === true && op.option >= Option.EXPORT_NAME && op.option <= Option.EXTENDED_HEADERS) return undefined
    const length = op.data.length
    if (length > settings.maxOptionDiscard) return none() // the connection is closed
    if (op.option === Option.EXPORT_NAME) {
      if (length > settings.maxOptionLength) return none()
      const name = utf8.decode(op.data)
      const resolved = name === "" ? defaultExport : name
      if (!SERVED.includes(resolved)) return none()
      exportName = resolved
      options.push({ option: op.option })
      break
    }
    options.push({ option: op.option })
    if (length > settings.maxOptionLength) continue // ERR_TOO_BIG, and on
    if (op.option === Option.GO) {
      const request = decodeInfo(op.data)
      if (request === undefined) return undefined
      const resolved = request.name === "" ? defaultExport : request.name
      if (!SERVED.includes(resolved)) continue
      if (resolved === Exports.aligned.name && !request.requests.includes(Info.BLOCK_SIZE)) continue
      exportName = resolved
      break
    }
  }
  if (exportName === undefined) return none()

  const answered: Array<RequestOp> = []
  const cookies = new Set<bigint>()
  const result = (exact: boolean): Expectation => ({ ...base, replies: answered.length, exact, exportName, options, requests: answered })
  for (const r of s.requests) {
    if (r.extended !== extended || r.type === Command.DISC) return result(true)
    const length = extended ? r.length : r.length & 0xffffffffn
    const announced = (extended ? (r.flags & CommandFlags.PAYLOAD_LEN) !== 0 : r.type === Command.WRITE) ? length : 0n
    // A payload cut short: what follows is taken as payload, and the model stops.
    if (announced > BigInt(r.payloadLength)) return result(false)
    // Simple READ replies are matched by cookie: a repeated cookie makes them ambiguous.
    if (!structured && cookies.has(r.cookie & U64_MAX)) return undefined
    cookies.add(r.cookie & U64_MAX)
    answered.push(r)
  }
  return result(true)
}

/** Reads `size` bytes of a frame, then hands them on. */
interface Need {
  readonly size: number
  readonly then: (bytes: Buffer) => void
}

/**
 * Parses what the server sends, frame by frame, as it arrives: the greeting, the option
 * replies (to the options of the expectation, in order), then transmission replies,
 * counting final ones. Headers are kept; payloads are skipped, or compared with
 * `content` (the export's bytes, when they are known) for read data.
 */
export class ReplyReader {
  /** Final transmission replies seen. */
  answered = 0
  /** Why the stream is not what the server should send, once it is not. */
  error: string | undefined
  /**
   * Set once a simple reply came for a request beyond an inexact model (after a payload
   * cut short): whether data follows it is unknown, so nothing after it is checked.
   */
  beyondModel = false
  private header: Array<number> = []
  private need: Need
  private skip = 0
  /** Read data being compared with `content`, from this offset. */
  private verifyAt = -1
  private option = 0
  private readonly simpleReads = new Map<bigint, RequestOp>()
  /** Cookies of requests other than READ (which may get a simple reply in structured mode too). */
  private readonly nonReads = new Set<bigint>()
  /** Final replies still due, by cookie (a cookie may be used by several requests). */
  private readonly due = new Map<bigint, number>()

  constructor(readonly expectation: Expectation, readonly content?: Uint8Array | undefined) {
    for (const r of expectation.requests) {
      const cookie = r.cookie & U64_MAX
      if (r.type === Command.READ) this.simpleReads.set(cookie, r)
      else this.nonReads.add(cookie)
      this.due.set(cookie, (this.due.get(cookie) ?? 0) + 1)
    }
    this.need = { size: 18, then: (b) => this.greeting(b) }
  }

  feed(chunk: Uint8Array): void {
    let at = 0
    while (at < chunk.length && this.error === undefined && !this.beyondModel) {
      if (this.skip > 0) {
        const n = Math.min(this.skip, chunk.length - at)
        if (this.verifyAt >= 0) this.verify(chunk.subarray(at, at + n))
        this.skip -= n
        at += n
        continue
      }
      const n = Math.min(this.need.size - this.header.length, chunk.length - at)
      for (let i = 0; i < n; i++) this.header.push(chunk[at + i]!)
      at += n
      if (this.header.length === this.need.size) {
        const bytes = Buffer.from(this.header)
        this.header = []
        this.need.then(bytes)
      }
    }
  }

  private fail(message: string, bytes?: Buffer) {
    this.error ??= bytes === undefined ? message : `${message} (frame ${bytes.toString("hex")})`
  }

  /** Skips `n` payload bytes, comparing them with the content from `verifyAt` (or not, with -1). */
  private payload(n: number, verifyAt = -1) {
    this.skip = n
    this.verifyAt = this.content === undefined ? -1 : verifyAt
    if (this.verifyAt >= 0 && verifyAt + n > this.content!.length) this.fail(`read data past the end of the export (${n} bytes at ${verifyAt})`)
  }

  private verify(piece: Uint8Array) {
    const expected = this.content!.subarray(this.verifyAt, this.verifyAt + piece.length)
    if (!Buffer.from(piece.buffer, piece.byteOffset, piece.byteLength).equals(expected)) {
      let i = 0
      while (piece[i] === expected[i]) i++
      this.fail(`read data differs from the read-only export's content at offset ${this.verifyAt + i}`)
    }
    this.verifyAt += piece.length
  }

  private greeting(bytes: Buffer) {
    if (bytes.readBigUInt64BE(0) !== 0x4e42444d41474943n) return this.fail("bad greeting", bytes)
    this.nextOption()
  }

  private nextOption() {
    const next = this.expectation.options[this.option]
    if (next?.option === Option.EXPORT_NAME) {
      this.need = { size: this.expectation.noZeroes ? 10 : 134, then: () => this.transmission() }
    } else {
      this.need = { size: 20, then: (b) => this.optionReply(b) }
    }
  }

  private optionReply(bytes: Buffer) {
    if (bytes.readBigUInt64BE(0) !== 0x3e889045565a9n) return this.fail("bad option reply magic", bytes)
    const option = bytes.readUInt32BE(8)
    const type = bytes.readUInt32BE(12)
    this.payload(bytes.readUInt32BE(16))
    const expected = this.expectation.options[this.option]
    if (expected === undefined) return this.fail("option reply after the last option", bytes)
    if (option !== expected.option) return this.fail(`reply to option ${option} while option ${expected.option} is answered`, bytes)
    if (type !== Reply.ACK && type < 0x80000000) return
    this.option++
    if (option === Option.GO && type === Reply.ACK) this.transmission()
    else this.nextOption()
  }

  private transmission() {
    const e = this.expectation
    if (e.extended || !e.structured) return void (this.need = { size: e.extended ? 32 : 16, then: (b) => this.reply(b) })
    // Structured replies: 16 bytes tell a simple reply (allowed for every command but READ) from a chunk header (20).
    this.need = {
      size: 16,
      then: (b) =>
        b.readUInt32BE(0) === 0x67446698
          ? this.simpleInStructured(b)
          : (this.need = { size: 4, then: (rest) => this.reply(Buffer.concat([b, rest])) })
    }
  }

  /** A simple reply where structured replies were negotiated: only for a request other than READ. */
  private simpleInStructured(bytes: Buffer) {
    const cookie = bytes.readBigUInt64BE(8)
    if (!this.nonReads.has(cookie) && this.expectation.exact) {
      return this.fail(`a simple reply for cookie ${cookie}, which no request but a READ is waiting for`, bytes)
    }
    this.transmission()
    this.final(cookie, bytes)
  }

  /** Counts a final reply; with an exact expectation, one no request is due is an error. */
  private final(cookie: bigint, bytes: Buffer) {
    this.answered++
    const due = this.due.get(cookie) ?? 0
    if (due > 0) this.due.set(cookie, due - 1)
    else if (this.expectation.exact) this.fail(`a final reply for cookie ${cookie}, which no request is waiting for`, bytes)
  }

  private reply(bytes: Buffer) {
    const e = this.expectation
    const magic = bytes.readUInt32BE(0)
    if (!e.structured) {
      if (magic !== 0x67446698) return this.fail("bad simple reply magic", bytes)
      const error = bytes.readUInt32BE(4)
      const cookie = bytes.readBigUInt64BE(8)
      if (!e.exact && (this.due.get(cookie) ?? 0) === 0) {
        this.beyondModel = true
        return this.final(cookie, bytes)
      }
      const read = this.simpleReads.get(cookie)
      if (error === 0 && read !== undefined) this.payload(toNumber(read.length), toNumber(read.offset))
      return this.final(cookie, bytes)
    }
    this.transmission() // the next frame, unless a chunk's own fields come first (below)
    const flags = bytes.readUInt16BE(4)
    const type = bytes.readUInt16BE(6)
    const cookie = bytes.readBigUInt64BE(8)
    let length: number
    if (e.extended) {
      if (magic !== 0x6e8a278c) return this.fail("bad extended reply magic", bytes)
      const wide = bytes.readBigUInt64BE(24)
      if (wide > 64n * 1024n * 1024n) return this.fail(`extended reply chunk of ${wide} bytes`, bytes)
      length = Number(wide)
    } else {
      if (magic !== 0x668e33ef) return this.fail("bad structured reply magic", bytes)
      length = bytes.readUInt32BE(16)
    }
    if ((this.due.get(cookie) ?? 0) === 0 && e.exact) {
      return this.fail(`a reply chunk for cookie ${cookie}, which no request is waiting for`, bytes)
    }
    const done = () => {
      if ((flags & ReplyFlags.DONE) !== 0) this.final(cookie, bytes)
    }
    if (type === 1 && length >= 8) {
      // OFFSET_DATA: the offset, then the data.
      this.need = {
        size: 8,
        then: (b) => {
          this.transmission()
          this.payload(length - 8, toNumber(b.readBigUInt64BE(0)))
        }
      }
      return done()
    }
    if (type === 2 && length === 12 && this.content !== undefined) {
      // OFFSET_HOLE: the export's content there must be zeroes.
      this.need = {
        size: 12,
        then: (b) => {
          this.transmission()
          const at = toNumber(b.readBigUInt64BE(0))
          const size = b.readUInt32BE(8)
          if (this.content!.subarray(at, at + size).some((x) => x !== 0)) this.fail(`a hole reported over data (${size} bytes at ${at})`)
        }
      }
      return done()
    }
    this.payload(length)
    done()
  }
}

/**
 * A hand-written case: GO to an export (simple replies, NO_ZEROES), then `reads` READs of
 * 4 KiB at offset 0 (cookies 1, 2, ...): its bytes and what it must be answered.
 */
export const goAndRead = (exportName: string, reads: number): { readonly bytes: Uint8Array; readonly expectation: Expectation } => {
  const requests: Array<RequestOp> = Array.from({ length: reads }, (_, i) => ({
    extended: false,
    type: Command.READ,
    flags: 0,
    cookie: BigInt(i + 1),
    offset: 0n,
    length: 4096n,
    payloadLength: 0,
    payloadSeed: 0
  }))
  const bytes = Buffer.concat([
    clientFlagsBytes(3),
    optionBytes(Option.GO, OptionData.InfoRequest.encodeUnsafe({ name: exportName, requests: [Info.BLOCK_SIZE] })),
    ...requests.map((r) => encodeRequestHeaderFast(r.flags, r.type, r.cookie, r.offset, Number(r.length)))
  ])
  const expectation: Expectation = {
    replies: reads,
    exact: true,
    structured: false,
    extended: false,
    noZeroes: true,
    exportName,
    options: [{ option: Option.GO }],
    requests
  }
  return { bytes, expectation }
}
