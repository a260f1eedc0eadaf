/**
 * Structure-aware generators for fuzzing the server's negotiation and transmission
 * parsers: what a client sends after the greeting, as a small structured value (a
 * {@link Script}: client flags, options, requests) turned into bytes by the project's own
 * encoders (`Handshake`, `OptionData` and `Transmission`), then mutated (bit flips,
 * truncations, insertions, deletions, absurd lengths, frames of the other header mode)
 * and delivered in random chunks ({@link Delivery}).
 *
 * The structured value stays small (payloads are a length and a seed, not bytes) so that
 * fast-check can shrink a failing case; {@link bytesOf} is deterministic.
 */
import * as fc from "effect/FastCheck"
import { ClientFlags, Command, CommandFlags, Info, Option } from "../../src/protocol/Constants.ts"
import * as Handshake from "../../src/protocol/Handshake.ts"
import * as OptionData from "../../src/protocol/OptionData.ts"
import * as Wire from "../../src/protocol/Transmission.ts"

// ---- what the fuzzed server offers -------------------------------------------------------

const KiB = 1024
const MiB = 1024 * KiB

/** The exports the harness serves, with their sizes (the generators aim offsets at them). */
export const Exports = {
  /** A writable sparse memory export (fresh for each in-process case). */
  rw: { name: "rw", size: 8 * MiB },
  /** A read-only memory export filled with a known pattern: it must never change. */
  ro: { name: "ro", size: 1 * MiB },
  /** A writable export with 512-byte minimum blocks and 1 MiB maximum, on the Effect path (no `sync`). */
  aligned: { name: "aligned", size: 4 * MiB, minimum: 512, maximum: 1 * MiB },
  /** A sparse 1 TiB memory export, as `effect-nbd memory 1T` serves (nothing allocated until written). */
  big: { name: "big", size: 2 ** 40 }
} as const

const SIZES = [Exports.rw.size, Exports.ro.size, Exports.aligned.size, Exports.big.size]

// ---- the structured value ----------------------------------------------------------------

/** One option request; `declaredLength` lies about the data's length when set. */
export interface OptionOp {
  readonly option: number
  readonly data: Uint8Array
  readonly declaredLength?: number | undefined
  /** For reports. */
  readonly label: string
  /** Made of random bytes, not by a codec (its code may still be a known option's). */
  readonly raw?: true | undefined
}

/** One transmission request; `payloadLength` bytes (filled from `payloadSeed`) follow its header. */
export interface RequestOp {
  readonly extended: boolean
  readonly type: number
  readonly flags: number
  readonly cookie: bigint
  readonly offset: bigint
  readonly length: bigint
  readonly payloadLength: number
  readonly payloadSeed: number
}

/** Everything the client sends, before mutation. */
export interface Script {
  readonly clientFlags: number
  readonly options: ReadonlyArray<OptionOp>
  readonly requests: ReadonlyArray<RequestOp>
  /** Bytes after the last request (garbage, or nothing). */
  readonly trailing: Uint8Array
  /**
   * For a script made as a valid negotiation: the reply mode it sets up, so that the
   * server's answers can be predicted (see `Oracle.ts`).
   */
  readonly valid?: { readonly structured: boolean; readonly extended: boolean } | undefined
}

/** Server settings a case runs under (in process): the defaults, or tight limits. */
export interface ConfigChoice {
  readonly maxInFlight?: number
  readonly maxInFlightBytes?: number
  readonly readHighWaterMark?: number
  readonly writeHighWaterMark?: number
  readonly maxOptionLength?: number
  readonly maxOptionDiscard?: number
  readonly maxWriteDiscard?: number
}

/** A change to the serialized bytes. Positions are taken modulo the current length. */
export type Mutation =
  | { readonly kind: "flip"; readonly pos: number; readonly bit: number }
  | { readonly kind: "set"; readonly pos: number; readonly value: number }
  | { readonly kind: "truncate"; readonly pos: number }
  | { readonly kind: "insert"; readonly pos: number; readonly bytes: Uint8Array }
  | { readonly kind: "delete"; readonly pos: number; readonly count: number }
  | { readonly kind: "duplicate"; readonly pos: number; readonly count: number }
  /** Overwrites one of the script's length fields (option or request) with `value`. */
  | { readonly kind: "absurdLength"; readonly field: number; readonly value: bigint }
  /** Inserts a request header of the given mode (mixed modes). */
  | { readonly kind: "splice"; readonly pos: number; readonly header: RequestOp }

/** How the bytes reach the server. */
export interface Delivery {
  /** Sizes of the pieces written, used in turn (cycled). */
  readonly chunks: ReadonlyArray<number>
  /** Bit i (mod 31): wait for the event loop to turn after piece i. */
  readonly pauses: number
  /** After the last byte: FIN, a close without FIN, or (TCP) a reset. */
  readonly ending: "end" | "destroy" | "reset"
  /** Let the server answer what it was sent before ending. */
  readonly linger: boolean
  /** Over TCP: read no reply until everything is sent (the server's writer fills up). */
  readonly slowReader: boolean
}

/** One fuzz case. */
export interface FuzzCase {
  readonly script: Script
  readonly mutations: ReadonlyArray<Mutation>
  readonly delivery: Delivery
  /** Which export the empty name selects in process (TCP serves `ro` as the default). */
  readonly defaultExport: "rw" | "ro"
  /** Server settings in process (TCP runs the defaults). */
  readonly config: ConfigChoice
}

// ---- small helpers -----------------------------------------------------------------------

const U32_MAX = 0xffffffff
const U64_MAX = (1n << 64n) - 1n

/** Weighted choice, as fc.oneof does, with plain weights. */
const weighted = <T>(...entries: ReadonlyArray<readonly [number, fc.Arbitrary<T>]>): fc.Arbitrary<T> =>
  fc.oneof(...entries.filter(([weight]) => weight > 0).map(([weight, arbitrary]) => ({ weight, arbitrary })))

const optionName = (code: number): string => {
  for (const [name, value] of Object.entries(Option)) if (value === code) return name
  return `OPT_${code}`
}

const commandLabel = (type: number): string => {
  for (const [name, value] of Object.entries(Command)) if (value === type) return name
  return `CMD_${type}`
}

// ---- negotiation ---------------------------------------------------------------------------

/** Export names: the served ones most often, then unknown, odd and oversized ones. */
export const exportName: fc.Arbitrary<string> = weighted(
  [8, fc.constantFrom("", "rw", "ro", "aligned", "big")],
  [2, fc.string({ maxLength: 16 })],
  [1, fc.constantFrom("nope", "ro\0", "\u00e9t\u00e9", "\ud800", "a".repeat(4096), "b".repeat(4097), "x".repeat(70_000))]
)

const clientFlags: fc.Arbitrary<number> = weighted(
  [20, fc.constant(ClientFlags.C_FIXED_NEWSTYLE | ClientFlags.C_NO_ZEROES)],
  [5, fc.constant(ClientFlags.C_FIXED_NEWSTYLE)],
  [1, fc.constantFrom(0, ClientFlags.C_NO_ZEROES, 4, 0x80000000)],
  [1, fc.integer({ min: 0, max: U32_MAX })]
)

const infoTypes: fc.Arbitrary<ReadonlyArray<number>> = fc.array(
  weighted([6, fc.constantFrom(Info.EXPORT, Info.NAME, Info.DESCRIPTION, Info.BLOCK_SIZE)], [1, fc.integer({ min: 0, max: 0xffff })]),
  { maxLength: 6 }
)

/** INFO or GO with a well-formed InfoRequest built by the codec. */
const infoOrGo = (option: number, name: fc.Arbitrary<string> = exportName): fc.Arbitrary<OptionOp> =>
  fc.tuple(name, infoTypes).map(([n, requests]) => ({
    option,
    data: OptionData.InfoRequest.encodeUnsafe({ name: n, requests }),
    label: `${optionName(option)}(${JSON.stringify(n.slice(0, 12))},[${requests.join(",")}])`
  }))

const metaQueries: fc.Arbitrary<ReadonlyArray<string>> = fc.array(
  weighted(
    [6, fc.constantFrom("base:allocation", "base:", "qemu:dirty-bitmap:x", "qemu:", "")],
    [1, fc.string({ maxLength: 20 })]
  ),
  { maxLength: 4 }
)

/** LIST_META_CONTEXT or SET_META_CONTEXT with a MetaContextRequest built by the codec. */
const metaContext = (option: number, name: fc.Arbitrary<string> = exportName): fc.Arbitrary<OptionOp> =>
  fc.tuple(name, metaQueries).map(([n, queries]) => ({
    option,
    data: OptionData.MetaContextRequest.encodeUnsafe({ name: n, queries }),
    label: `${optionName(option)}(${JSON.stringify(n.slice(0, 12))},${JSON.stringify(queries)})`
  }))

const noData = (option: number): fc.Arbitrary<OptionOp> =>
  weighted(
    [8, fc.constant({ option, data: new Uint8Array(0), label: optionName(option) })],
    [1, fc.uint8Array({ minLength: 1, maxLength: 8 }).map((data) => ({ option, data, label: `${optionName(option)}+${data.length}B` }))]
  )

const exportNameOption = (name: fc.Arbitrary<string> = exportName): fc.Arbitrary<OptionOp> =>
  name.map((n) => ({ option: Option.EXPORT_NAME, data: Buffer.from(n, "utf8"), label: `EXPORT_NAME(${JSON.stringify(n.slice(0, 12))})` }))

const unknownOption: fc.Arbitrary<OptionOp> = fc
  .tuple(
    weighted([3, fc.integer({ min: 12, max: 64 })], [1, fc.constant(Option.PEEK_EXPORT)], [1, fc.integer({ min: 0, max: U32_MAX })]),
    fc.uint8Array({ maxLength: 32 })
  )
  .map(([option, data]) => ({ option, data, label: `${optionName(option)}+${data.length}B`, raw: true as const }))

/** An option whose header announces a length its data does not have (absurd ones included). */
const lyingOption: fc.Arbitrary<OptionOp> = fc
  .tuple(
    fc.constantFrom<number>(...Object.values(Option), 99),
    fc.uint8Array({ maxLength: 48 }),
    fc.constantFrom(U32_MAX, 0x80000000, 64 * KiB + 1, 16 * MiB, 16 * MiB + 1, 1, 0, 3)
  )
  .map(([option, data, declaredLength]) => ({
    option,
    data,
    declaredLength,
    label: `${optionName(option)}(len=${declaredLength},sent=${data.length})`
  }))

/** Option data just past the 64 KiB limit, sent in full: answered ERR_TOO_BIG, negotiation goes on. */
const oversizedOption: fc.Arbitrary<OptionOp> = fc
  .constantFrom<number>(Option.INFO, Option.LIST, Option.SET_META_CONTEXT, 77)
  .map((option) => ({ option, data: new Uint8Array(64 * KiB + 1), label: `${optionName(option)}(64KiB+1)` }))

/** Any option, well-formed or not. */
export const anyOption: fc.Arbitrary<OptionOp> = weighted(
  [3, noData(Option.LIST)],
  [4, infoOrGo(Option.INFO)],
  [3, infoOrGo(Option.GO)],
  [3, noData(Option.STRUCTURED_REPLY)],
  [3, noData(Option.EXTENDED_HEADERS)],
  [2, metaContext(Option.LIST_META_CONTEXT)],
  [3, metaContext(Option.SET_META_CONTEXT)],
  [1, noData(Option.STARTTLS)],
  [1, noData(Option.ABORT)],
  [2, exportNameOption()],
  [2, unknownOption],
  [1, lyingOption],
  [1, oversizedOption]
)

/** A valid path to transmission: reply modes, meta contexts, harmless options, then GO or EXPORT_NAME. */
const validNegotiation: fc.Arbitrary<{ options: ReadonlyArray<OptionOp>; structured: boolean; extended: boolean }> = fc
  .record({
    name: fc.constantFrom("", "rw", "ro", "aligned", "big", "rw", "ro"),
    mode: fc.constantFrom("simple", "structured", "extended", "both"),
    meta: fc.boolean(),
    blockSize: fc.oneof(fc.constant(true), fc.constant(true), fc.constant(false)),
    extra: fc.array(
      weighted(
        [2, noData(Option.LIST)],
        [2, infoOrGo(Option.INFO)],
        [1, metaContext(Option.LIST_META_CONTEXT)],
        [1, noData(Option.STARTTLS)],
        [1, unknownOption]
      ),
      { maxLength: 3 }
    ),
    finish: weighted([5, fc.constant("GO")], [1, fc.constant("EXPORT_NAME")]),
    extraInfo: infoTypes
  })
  .map(({ blockSize, extra, extraInfo, finish, meta, mode, name }) => {
    const options: Array<OptionOp> = [...extra]
    const empty = (option: number, label: string) => ({ option, data: new Uint8Array(0), label })
    if (mode === "structured" || mode === "both") options.push(empty(Option.STRUCTURED_REPLY, "STRUCTURED_REPLY"))
    if (mode === "extended" || mode === "both") options.push(empty(Option.EXTENDED_HEADERS, "EXTENDED_HEADERS"))
    if (meta && mode !== "simple") {
      options.push({
        option: Option.SET_META_CONTEXT,
        data: OptionData.MetaContextRequest.encodeUnsafe({ name, queries: ["base:allocation"] }),
        label: `SET_META_CONTEXT(${JSON.stringify(name)},["base:allocation"])`
      })
    }
    // STRUCTURED_REPLY then EXTENDED_HEADERS ("both") are both accepted: extended headers.
    const extended = mode === "extended" || mode === "both"
    // EXPORT_NAME after extended headers is a violation: a valid path takes GO then.
    if (finish === "GO" || extended) {
      const requests = blockSize ? [Info.BLOCK_SIZE, ...extraInfo] : [...extraInfo]
      options.push({
        option: Option.GO,
        data: OptionData.InfoRequest.encodeUnsafe({ name, requests }),
        label: `GO(${JSON.stringify(name)},[${requests.join(",")}])`
      })
    } else {
      options.push({ option: Option.EXPORT_NAME, data: Buffer.from(name, "utf8"), label: `EXPORT_NAME(${JSON.stringify(name)})` })
    }
    return { options, structured: mode !== "simple", extended }
  })

// ---- transmission --------------------------------------------------------------------------

const commandType: fc.Arbitrary<number> = weighted(
  [20, fc.constant(Command.READ)],
  [20, fc.constant(Command.WRITE)],
  [4, fc.constant(Command.FLUSH)],
  [6, fc.constant(Command.TRIM)],
  [4, fc.constant(Command.CACHE)],
  [6, fc.constant(Command.WRITE_ZEROES)],
  [8, fc.constant(Command.BLOCK_STATUS)],
  [3, fc.constant(Command.RESIZE)],
  [1, fc.constant(Command.DISC)],
  [3, fc.integer({ min: 9, max: 0xffff })]
)

const commandFlags: fc.Arbitrary<number> = weighted(
  [10, fc.constant(0)],
  [5, fc.constantFrom(CommandFlags.FUA, CommandFlags.NO_HOLE, CommandFlags.DF, CommandFlags.REQ_ONE, CommandFlags.FAST_ZERO)],
  [2, fc.constantFrom(CommandFlags.FUA | CommandFlags.NO_HOLE, CommandFlags.FUA | CommandFlags.FAST_ZERO, CommandFlags.DF | CommandFlags.FUA)],
  [1, fc.integer({ min: 0, max: 0xffff })]
)

const HUGE = [
  1n << 63n,
  U64_MAX,
  1n << 53n,
  (1n << 53n) - 1n,
  (1n << 53n) + 1n,
  1n << 32n,
  BigInt(U32_MAX),
  1n << 62n,
  1n << 40n,
  1n << 44n,
  1n << 50n
]

/** Offsets in range (aligned or not), at the edges of the exports, and huge. */
const offset: fc.Arbitrary<bigint> = weighted(
  [8, fc.integer({ min: 0, max: Exports.rw.size / 512 }).map((n) => BigInt(n * 512))],
  [3, fc.integer({ min: 0, max: Exports.rw.size }).map(BigInt)],
  [3, fc.tuple(fc.constantFrom(...SIZES), fc.integer({ min: -4096, max: 4096 })).map(([size, d]) => BigInt(Math.max(0, size + d)))],
  [2, fc.constantFrom(...HUGE)],
  [1, fc.bigInt({ min: 0n, max: 1n << 31n }).map((n) => n * 512n)],
  [1, fc.bigInt({ min: 0n, max: U64_MAX })]
)

/** Lengths: zero, small, aligned, the export sizes and limits around the block maxima, and huge. */
const length = (extended: boolean): fc.Arbitrary<bigint> =>
  weighted(
    [2, fc.constant(0n)],
    [8, fc.integer({ min: 1, max: 4096 }).map(BigInt)],
    [10, fc.integer({ min: 1, max: 128 }).map((n) => BigInt(n * 512))],
    [2, fc.constantFrom(...SIZES, 32 * MiB, 32 * MiB + 1, 64 * MiB, 64 * MiB + 1, 1 * MiB + 512).map(BigInt)],
    [2, fc.constantFrom(BigInt(U32_MAX), 1n << 31n, BigInt(U32_MAX - 511))],
    // Large but in range of the 1 TiB export (up to 4 GiB in a compact header).
    [1, fc.bigInt({ min: 1n, max: extended ? 1n << 31n : (1n << 23n) - 1n }).map((n) => n * 512n)],
    [extended ? 2 : 0, fc.constantFrom(...HUGE)],
    [extended ? 1 : 0, fc.bigInt({ min: 0n, max: U64_MAX })]
  )

/** Largest payload actually sent (more is announced and cut short). */
const PAYLOAD_CAP = 64 * KiB

/** One request in a header mode; a payload (or a prefix of it) follows when its header says so. */
export const request = (extended: boolean): fc.Arbitrary<RequestOp> =>
  fc
    .record({
      type: commandType,
      flags: commandFlags,
      payloadLen: weighted([9, fc.constant(true)], [1, fc.constant(false)]),
      cookie: weighted([3, fc.bigInt({ min: 0n, max: 1000n })], [1, fc.bigInt({ min: 0n, max: U64_MAX })]),
      offset,
      length: length(extended),
      cut: weighted([12, fc.constant(-1)], [1, fc.integer({ min: 0, max: 4096 })]),
      payloadSeed: fc.integer({ min: 0, max: 255 })
    })
    .map(({ cookie, cut, flags: f, length: len, offset: off, payloadLen, payloadSeed, type }) => {
      let flags = f
      if (extended && type === Command.WRITE && payloadLen) flags |= CommandFlags.PAYLOAD_LEN
      const lengthValue = extended ? len : len & BigInt(U32_MAX)
      const hasPayload = extended ? (flags & CommandFlags.PAYLOAD_LEN) !== 0 : type === Command.WRITE
      const announced = hasPayload ? lengthValue : 0n
      // Sent in full when small enough, else cut short (what follows is taken as payload).
      const payloadLength = announced === 0n
        ? 0
        : announced <= BigInt(PAYLOAD_CAP)
        ? (cut < 0 ? Number(announced) : Math.min(Number(announced), cut))
        : (cut < 0 ? 1024 : Math.min(PAYLOAD_CAP, cut))
      return { extended, type, flags, cookie, offset: off, length: lengthValue, payloadLength, payloadSeed }
    })

const requests = (extended: boolean): fc.Arbitrary<ReadonlyArray<RequestOp>> =>
  fc
    .tuple(
      fc.array(
        // Mostly the negotiated header mode; sometimes the other one (mixed modes).
        weighted([30, request(extended)], [1, request(!extended)]),
        { maxLength: 16, size: "medium" }
      ),
      weighted([3, fc.constant(false)], [2, fc.constant(true)])
    )
    .map(([list, disc]) =>
      disc
        ? [...list, { extended, type: Command.DISC, flags: 0, cookie: 0n, offset: 0n, length: 0n, payloadLength: 0, payloadSeed: 0 }]
        : list
    )

// ---- scripts and cases -----------------------------------------------------------------------

/** Bytes after the last request: nothing, or garbage. */
const trailing: fc.Arbitrary<Uint8Array> = weighted(
  [6, fc.constant(new Uint8Array(0))],
  [1, fc.uint8Array({ minLength: 1, maxLength: 64 })]
)

/** A valid negotiation followed by requests in the mode it set up. */
const validScript: fc.Arbitrary<Script> = fc
  .tuple(clientFlags, validNegotiation)
  .chain(([flags, { extended, options, structured }]) =>
    fc.tuple(requests(extended), trailing).map(([reqs, tail]) => ({
      clientFlags: flags,
      options,
      requests: reqs,
      trailing: tail,
      valid: { structured, extended }
    }))
  )

/** Any option sequence (possibly ending in GO), then requests in either mode. */
const randomScript: fc.Arbitrary<Script> = fc
  .tuple(clientFlags, fc.array(anyOption, { maxLength: 8 }), fc.boolean())
  .chain(([flags, options, extended]) =>
    fc.tuple(requests(extended), trailing).map(([reqs, tail]) => ({ clientFlags: flags, options, requests: reqs, trailing: tail }))
  )

/** Negotiation only: options and nothing after them. */
const negotiationScript: fc.Arbitrary<Script> = fc
  .tuple(clientFlags, fc.array(anyOption, { minLength: 1, maxLength: 12 }), trailing)
  .map(([flags, options, tail]) => ({ clientFlags: flags, options, requests: [], trailing: tail }))


export const script: fc.Arbitrary<Script> = weighted([6, validScript], [3, randomScript], [2, negotiationScript])

const mutation: fc.Arbitrary<Mutation> = weighted<Mutation>(
  [4, fc.record({ kind: fc.constant("flip" as const), pos: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) })],
  [2, fc.record({ kind: fc.constant("set" as const), pos: fc.nat(), value: fc.integer({ min: 0, max: 255 }) })],
  [2, fc.record({ kind: fc.constant("truncate" as const), pos: fc.nat() })],
  [2, fc.record({ kind: fc.constant("insert" as const), pos: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 32 }) })],
  [2, fc.record({ kind: fc.constant("delete" as const), pos: fc.nat(), count: fc.integer({ min: 1, max: 32 }) })],
  [1, fc.record({ kind: fc.constant("duplicate" as const), pos: fc.nat(), count: fc.integer({ min: 1, max: 64 }) })],
  [
    3,
    fc.record({
      kind: fc.constant("absurdLength" as const),
      field: fc.nat(),
      value: fc.constantFrom(
        BigInt(U32_MAX),
        1n << 31n,
        BigInt(64 * KiB + 1),
        BigInt(16 * MiB + 1),
        BigInt(32 * MiB + 1),
        U64_MAX,
        1n << 63n,
        1n << 53n,
        0n
      )
    })
  ],
  [2, fc.record({ kind: fc.constant("splice" as const), pos: fc.nat(), header: fc.boolean().chain(request) })]
)

const mutations: fc.Arbitrary<ReadonlyArray<Mutation>> = weighted(
  [5, fc.constant([])],
  [4, fc.array(mutation, { minLength: 1, maxLength: 4 })]
)

const delivery: fc.Arbitrary<Delivery> = fc.record({
  chunks: weighted(
    [3, fc.constant([1 << 30])],
    [3, fc.array(fc.integer({ min: 1, max: 16 }), { minLength: 1, maxLength: 8 })],
    [3, fc.array(fc.integer({ min: 1, max: 8192 }), { minLength: 1, maxLength: 8 })],
    [1, fc.constant([1])]
  ),
  pauses: weighted([2, fc.constant(0)], [2, fc.constant(-1)], [3, fc.integer({ min: 0, max: 0x7fffffff })]),
  ending: weighted([7, fc.constant("end" as const)], [2, fc.constant("destroy" as const)], [1, fc.constant("reset" as const)]),
  linger: fc.boolean(),
  slowReader: weighted([4, fc.constant(false)], [1, fc.constant(true)])
})

/**
 * Write high-water marks of the tight settings, below the stream's own mark (16 KiB) too
 * (finding 1 of `Regressions.test.ts`).
 */
export const WRITE_HIGH_WATER_MARKS: ReadonlyArray<number> = [1, 1024, 16 * KiB, 65536, 1 * MiB]

/** Tight limits, so that the pipeline's budgets and the reader's backpressure come into play. */
const tightConfig: fc.Arbitrary<ConfigChoice> = fc
  .record({
    maxInFlight: fc.integer({ min: 1, max: 8 }),
    maxInFlightBytes: fc.constantFrom(1, 512, 4096, 65536, 1 * MiB),
    readHighWaterMark: fc.constantFrom(1, 16, 512, 4096, 65536),
    writeHighWaterMark: fc.constantFrom(...WRITE_HIGH_WATER_MARKS),
    maxOptionLength: fc.constantFrom(64, 4096, 64 * KiB),
    maxOptionDiscard: fc.constantFrom(4096, 64 * KiB + 16, 16 * MiB),
    maxWriteDiscard: fc.constantFrom(0, 4096, 64 * MiB)
  }, { requiredKeys: [] })
  .map((c) =>
    // Discarding less option data than is accepted makes no sense: keep the two in order.
    c.maxOptionDiscard !== undefined && c.maxOptionLength !== undefined && c.maxOptionDiscard < c.maxOptionLength
      ? { ...c, maxOptionDiscard: c.maxOptionLength }
      : c
  )

/** A whole fuzz case. */
export const fuzzCase: fc.Arbitrary<FuzzCase> = fc.record({
  script,
  mutations,
  delivery,
  defaultExport: fc.constantFrom("rw" as const, "ro" as const),
  config: weighted([3, fc.constant({})], [2, tightConfig])
})

// ---- serialization ------------------------------------------------------------------------

/** A length field in the serialized bytes, for `absurdLength`. */
interface LengthField {
  readonly at: number
  readonly width: 4 | 8
}

const fill = (length: number, seed: number): Uint8Array => {
  const out = Buffer.allocUnsafe(length)
  for (let i = 0; i < length; i++) out[i] = (i * 131 + seed * 7 + (i >> 9)) & 0xff
  return out
}

/** A request header as its mode's encoder writes it. */
export const requestHeader = (r: RequestOp): Buffer =>
  r.extended
    ? Wire.encodeExtendedRequestHeaderFast(r.flags & 0xffff, r.type & 0xffff, r.cookie & U64_MAX, r.offset & U64_MAX, r.length & U64_MAX)
    : Wire.encodeRequestHeaderFast(
      r.flags & 0xffff,
      r.type & 0xffff,
      r.cookie & U64_MAX,
      r.offset & U64_MAX,
      Number(r.length & BigInt(U32_MAX))
    )

/** The script's bytes, and where its length fields are. */
export const serialize = (s: Script): { readonly bytes: Uint8Array; readonly lengths: ReadonlyArray<LengthField> } => {
  const parts: Array<Uint8Array> = [Handshake.ClientFlagsMessage.encodeUnsafe({ clientFlags: s.clientFlags >>> 0 })]
  const lengths: Array<LengthField> = []
  let at = 4
  for (const op of s.options) {
    const header = Handshake.OptionRequestHeader.encodeUnsafe({ option: op.option >>> 0, length: (op.declaredLength ?? op.data.length) >>> 0 })
    lengths.push({ at: at + 12, width: 4 })
    parts.push(header, op.data)
    at += header.length + op.data.length
  }
  for (const r of s.requests) {
    const header = requestHeader(r)
    lengths.push(r.extended ? { at: at + 24, width: 8 } : { at: at + 24, width: 4 })
    parts.push(header)
    at += header.length
    if (r.payloadLength > 0) {
      parts.push(fill(r.payloadLength, r.payloadSeed))
      at += r.payloadLength
    }
  }
  parts.push(s.trailing)
  return { bytes: Buffer.concat(parts), lengths }
}

/** Applies mutations in order (absurd lengths first, while the fields are where they were written). */
export const mutate = (
  input: Uint8Array,
  lengths: ReadonlyArray<LengthField>,
  mutations: ReadonlyArray<Mutation>
): Uint8Array => {
  let bytes = Buffer.from(input)
  for (const m of mutations) {
    if (m.kind !== "absurdLength" || lengths.length === 0) continue
    const field = lengths[m.field % lengths.length]!
    if (field.at + field.width > bytes.length) continue
    if (field.width === 4) bytes.writeUInt32BE(Number(m.value & BigInt(U32_MAX)), field.at)
    else bytes.writeBigUInt64BE(m.value & U64_MAX, field.at)
  }
  for (const m of mutations) {
    const n = bytes.length
    switch (m.kind) {
      case "absurdLength":
        break
      case "flip":
        if (n > 0) bytes[m.pos % n] ^= 1 << m.bit
        break
      case "set":
        if (n > 0) bytes[m.pos % n] = m.value
        break
      case "truncate":
        bytes = bytes.subarray(0, m.pos % (n + 1))
        break
      case "insert": {
        const at = m.pos % (n + 1)
        bytes = Buffer.concat([bytes.subarray(0, at), m.bytes, bytes.subarray(at)])
        break
      }
      case "delete": {
        const at = m.pos % (n + 1)
        bytes = Buffer.concat([bytes.subarray(0, at), bytes.subarray(Math.min(n, at + m.count))])
        break
      }
      case "duplicate": {
        const at = m.pos % (n + 1)
        const piece = bytes.subarray(at, Math.min(n, at + m.count))
        bytes = Buffer.concat([bytes.subarray(0, at), piece, bytes.subarray(at)])
        break
      }
      case "splice": {
        const at = m.pos % (n + 1)
        bytes = Buffer.concat([bytes.subarray(0, at), requestHeader(m.header), bytes.subarray(at)])
        break
      }
    }
  }
  return bytes
}

/** The bytes a case sends. */
export const bytesOf = (c: FuzzCase): Uint8Array => {
  const { bytes, lengths } = serialize(c.script)
  return c.mutations.length === 0 ? bytes : mutate(bytes, lengths, c.mutations)
}

/** The pieces the bytes are delivered in: the chunk sizes in turn, the rest in 64 KiB pieces after 400 of them. */
export const piecesOf = (bytes: Uint8Array, d: Delivery): Array<Uint8Array> => {
  const out: Array<Uint8Array> = []
  let at = 0
  let i = 0
  while (at < bytes.length) {
    const size = out.length >= 400 ? 64 * KiB : Math.max(1, d.chunks[i++ % d.chunks.length]!)
    out.push(bytes.subarray(at, Math.min(bytes.length, at + size)))
    at += size
  }
  return out
}

/** Whether to let the event loop turn after piece `i`. */
export const pauseAfter = (d: Delivery, i: number): boolean => d.pauses === -1 || ((d.pauses >>> (i % 31)) & 1) === 1

// ---- reports -------------------------------------------------------------------------------

const requestLabel = (r: RequestOp): string =>
  `${r.extended ? "x" : "c"}:${commandLabel(r.type)} f=0x${r.flags.toString(16)} off=${r.offset} len=${r.length}` +
  (r.payloadLength > 0 ? ` +${r.payloadLength}B` : "")

const mutationLabel = (m: Mutation): string => {
  switch (m.kind) {
    case "flip":
      return `flip@${m.pos}.${m.bit}`
    case "set":
      return `set@${m.pos}=${m.value}`
    case "truncate":
      return `truncate@${m.pos}`
    case "insert":
      return `insert@${m.pos}:${Buffer.from(m.bytes).toString("hex")}`
    case "delete":
      return `delete@${m.pos}x${m.count}`
    case "duplicate":
      return `duplicate@${m.pos}x${m.count}`
    case "absurdLength":
      return `length#${m.field}=${m.value}`
    case "splice":
      return `splice@${m.pos}:${requestLabel(m.header)}`
  }
}

/** A readable account of a case (the structure before mutation, the mutations, the delivery). */
export const describeCase = (c: FuzzCase): string => {
  const s = c.script
  const lines = [
    `client flags 0x${(s.clientFlags >>> 0).toString(16)}; default export ${c.defaultExport}`,
    `options: ${s.options.map((o) => o.label).join(", ") || "(none)"}`,
    `requests: ${s.requests.map(requestLabel).join("; ") || "(none)"}`
  ]
  if (s.trailing.length > 0) lines.push(`trailing: ${Buffer.from(s.trailing).toString("hex")}`)
  if (c.mutations.length > 0) lines.push(`mutations: ${c.mutations.map(mutationLabel).join(", ")}`)
  const d = c.delivery
  if (Object.keys(c.config).length > 0) lines.push(`server config: ${JSON.stringify(c.config)}`)
  lines.push(
    `delivery: chunks [${d.chunks.slice(0, 8).join(",")}], pauses ${d.pauses === -1 ? "all" : `0x${d.pauses.toString(16)}`}, ` +
      `${d.slowReader ? "slow reader, " : ""}${d.linger ? "linger, " : ""}then ${d.ending}`
  )
  return lines.join("\n")
}

/** An option header followed by data, for hand-written cases. */
export const optionBytes = (option: number, data: Uint8Array, declaredLength = data.length): Uint8Array =>
  Buffer.concat([Handshake.OptionRequestHeader.encodeUnsafe({ option, length: declaredLength }), data])

/** The client flags every case starts with (for hand-written cases), by the codec. */
export const clientFlagsBytes = (flags: number): Uint8Array => Handshake.ClientFlagsMessage.encodeUnsafe({ clientFlags: flags >>> 0 })
