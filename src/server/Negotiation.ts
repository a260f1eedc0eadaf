/**
 * The fixed-newstyle handshake: greeting, client flags and option haggling, up to the
 * export the client chose (or the client leaving).
 *
 * Options are answered one at a time, as the spec requires. Unknown options get
 * ERR_UNSUP and negotiation continues; option data is always consumed in full so the
 * next header parses; oversized option data is discarded (ERR_TOO_BIG) or, when absurd,
 * closes the connection.
 *
 * @since 0.1.0
 */
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import type { NbdExport } from "../Export.ts"
import { ExportRegistry } from "../Export.ts"
import { type OptionReplyError, optionReplyError, ProtocolViolation } from "../Errors.ts"
import * as Binary from "../protocol/Binary.ts"
import {
  BASE_ALLOCATION,
  ClientFlags,
  DefaultBlockSize,
  HandshakeFlags,
  Info,
  Option as Opt,
  Reply,
  TransmissionFlags
} from "../protocol/Constants.ts"
import * as Handshake from "../protocol/Handshake.ts"
import * as OptionData from "../protocol/OptionData.ts"
import type { ConnectionClosed, FrameReader } from "../stream/FrameReader.ts"
import type { FrameWriter } from "../stream/FrameWriter.ts"
import type { ServerConfig } from "./ServerConfig.ts"
import type { Shutdown } from "./Shutdown.ts"

/** A meta context selected for block status, with the id the client was given. */
export interface MetaContext {
  readonly id: number
  readonly name: string
}

/** What negotiation agreed on, for the transmission phase. */
export interface Negotiated {
  readonly export: NbdExport
  /** Size of the export when it was selected. */
  readonly size: number
  readonly transmissionFlags: number
  /** Structured replies were negotiated (implied by extended headers). */
  readonly structuredReplies: boolean
  /** Extended headers (experimental extension): 32-byte requests and replies. */
  readonly extendedHeaders: boolean
  /** Meta contexts selected for this export (empty: BLOCK_STATUS is refused). */
  readonly metaContexts: ReadonlyArray<MetaContext>
}

/** How negotiation ended. */
export type Outcome =
  | {
    readonly _tag: "Transmission"
    readonly negotiated: Negotiated
    /** The connection to go on with (encrypted if STARTTLS took place). */
    readonly reader: FrameReader
    readonly writer: FrameWriter
  }
  | { readonly _tag: "Aborted" }

/** STARTTLS as offered by the session: its mode, and the upgrade of the connection. */
export interface StartTls {
  readonly mode: "on" | "require"
  /**
   * Stops reading the plain connection, runs `acknowledge` (the ACK reply), and runs the
   * TLS handshake; the result is a reader and writer over the encrypted connection.
   */
  readonly start: (acknowledge: Effect.Effect<void>) => Effect.Effect<
    { readonly reader: FrameReader; readonly writer: FrameWriter },
    ProtocolViolation | ConnectionClosed
  >
}

/** What negotiation needs besides the connection. */
export interface NegotiationContext {
  readonly reader: FrameReader
  readonly writer: FrameWriter
  readonly config: ServerConfig
  /** Once triggered, options are answered ERR_SHUTDOWN. */
  readonly shutdown: Shutdown
  /** STARTTLS, when the server has TLS configured. */
  readonly tls?: StartTls | undefined
}

/** Id of `base:allocation` in SET_META_CONTEXT replies. */
export const BASE_ALLOCATION_ID = 1

/** The transmission flags of an export for a client. */
export const transmissionFlagsFor = (exp: NbdExport, structuredReplies: boolean): number => {
  const f = exp.driver.features
  let flags = TransmissionFlags.HAS_FLAGS
  if (exp.readOnly) flags |= TransmissionFlags.READ_ONLY
  if (f.flush) flags |= TransmissionFlags.SEND_FLUSH
  if (!exp.readOnly && (f.fua || f.flush)) flags |= TransmissionFlags.SEND_FUA
  if (f.rotational) flags |= TransmissionFlags.ROTATIONAL
  if (!exp.readOnly && f.trim) flags |= TransmissionFlags.SEND_TRIM
  if (!exp.readOnly) flags |= TransmissionFlags.SEND_WRITE_ZEROES | TransmissionFlags.SEND_FAST_ZERO
  if (structuredReplies) flags |= TransmissionFlags.SEND_DF
  if (f.multiConn) flags |= TransmissionFlags.CAN_MULTI_CONN
  if (!exp.readOnly && f.resize) flags |= TransmissionFlags.SEND_RESIZE
  if (f.cache) flags |= TransmissionFlags.SEND_CACHE
  return flags
}

/** True when an export needs constraints beyond the defaults (minimum block above 1). */
const needsBlockSize = (exp: NbdExport): boolean => exp.driver.blockSize.minimum > DefaultBlockSize.minimum

const KNOWN_CLIENT_FLAGS = ClientFlags.C_FIXED_NEWSTYLE | ClientFlags.C_NO_ZEROES

const decodeOrInvalid = <A>(schema: Binary.BinarySchema<A>, data: Uint8Array, what: string) =>
  Schema.decodeUnknown(schema)(data).pipe(
    Effect.mapError((e) => optionReplyError("INVALID", `malformed ${what}: ${e.message}`))
  )

const utf8 = new TextDecoder("utf-8", { fatal: true })

/** Runs the handshake on a fresh connection. */
export const negotiate = (ctx: NegotiationContext): Effect.Effect<
  Outcome,
  ConnectionClosed | ProtocolViolation,
  ExportRegistry
> =>
  Effect.gen(function*() {
    const { config } = ctx
    let { reader, writer } = ctx
    let tlsActive = false
    const registry = yield* ExportRegistry

    yield* writer.send([
      Handshake.Greeting.encodeUnsafe({ handshakeFlags: HandshakeFlags.FIXED_NEWSTYLE | HandshakeFlags.NO_ZEROES })
    ])
    const { clientFlags } = yield* Schema.decodeUnknown(Handshake.ClientFlagsMessage)(yield* reader.read(4)).pipe(
      Effect.orDie
    )
    if ((clientFlags & ~KNOWN_CLIENT_FLAGS) !== 0) {
      return yield* new ProtocolViolation({ message: `unknown client flags 0x${clientFlags.toString(16)}` })
    }
    const noZeroes = (clientFlags & ClientFlags.C_NO_ZEROES) !== 0

    let structuredReplies = false
    let extendedHeaders = false
    let metaSelection: { readonly exportName: string; readonly contexts: ReadonlyArray<MetaContext> } | undefined

    const reply = (option: number, replyType: number, data: Uint8Array = new Uint8Array(0)) =>
      writer.send([Handshake.OptionReplyHeader.encodeUnsafe({ option, replyType, length: data.length }), data])

    const replyError = (option: number, error: OptionReplyError) =>
      Effect.zipRight(
        Effect.logDebug(`option ${option} refused: ${error.reply}: ${error.message}`),
        reply(option, error.code, new TextEncoder().encode(error.message.slice(0, 1024)))
      )

    /** Looks an export up and lets its driver accept or refuse the client. */
    const select = (name: string) =>
      Effect.gen(function*() {
        const exp = yield* registry.get(name)
        yield* exp.driver.open({ exportName: name, readOnly: exp.readOnly })
        const size = yield* exp.driver.size.pipe(
          Effect.mapError((e) => optionReplyError("UNKNOWN", `export '${name}' is unavailable: ${e.message}`))
        )
        return { exp, size }
      })

    /** INFO and GO: info replies, then ACK; GO moves to transmission. */
    const infoOrGo = (option: number, data: Uint8Array) =>
      Effect.gen(function*() {
        const request = yield* decodeOrInvalid(OptionData.InfoRequest, data, "INFO/GO request")
        const { exp, size } = yield* select(request.name)
        const transmissionFlags = transmissionFlagsFor(exp, structuredReplies)
        const asked = new Set(request.requests)
        const blockSize = exp.driver.blockSize
        yield* reply(option, Reply.INFO, OptionData.InfoExport.encodeUnsafe({ size: BigInt(size), transmissionFlags }))
        if (asked.has(Info.NAME)) {
          const name = Option.getOrElse(exp.driver.canonicalName, () => exp.name)
          yield* reply(option, Reply.INFO, OptionData.InfoName.encodeUnsafe({ name }))
        }
        if (asked.has(Info.DESCRIPTION) && Option.isSome(exp.description)) {
          yield* reply(option, Reply.INFO, OptionData.InfoDescription.encodeUnsafe({ description: exp.description.value }))
        }
        if (asked.has(Info.BLOCK_SIZE) || needsBlockSize(exp)) {
          yield* reply(option, Reply.INFO, OptionData.InfoBlockSize.encodeUnsafe(blockSize))
        }
        if (!asked.has(Info.BLOCK_SIZE) && needsBlockSize(exp)) {
          return yield* optionReplyError(
            "BLOCK_SIZE_REQD",
            `export '${exp.name}' needs ${blockSize.minimum}-byte alignment: request NBD_INFO_BLOCK_SIZE`
          )
        }
        yield* reply(option, Reply.ACK)
        if (option !== Opt.GO) return Option.none<Negotiated>()
        const metaContexts = metaSelection !== undefined && metaSelection.exportName === request.name
          ? metaSelection.contexts
          : []
        return Option.some<Negotiated>({
          export: exp,
          size,
          transmissionFlags,
          structuredReplies,
          extendedHeaders,
          metaContexts
        })
      })

    /** LIST_META_CONTEXT and SET_META_CONTEXT: only `base:allocation` exists. */
    const metaContext = (option: number, data: Uint8Array) =>
      Effect.gen(function*() {
        if (!structuredReplies) {
          return yield* optionReplyError("INVALID", "structured replies must be negotiated first")
        }
        const isList = option === Opt.LIST_META_CONTEXT
        if (!isList) metaSelection = undefined // a SET replaces the selection, even when it fails
        const request = yield* decodeOrInvalid(OptionData.MetaContextRequest, data, "meta context request")
        yield* registry.get(request.name)
        const matches = isList
          ? request.queries.length === 0 || request.queries.some((q) => q === "base:" || q === BASE_ALLOCATION)
          : request.queries.includes(BASE_ALLOCATION)
        const contexts = matches ? [{ id: isList ? 0 : BASE_ALLOCATION_ID, name: BASE_ALLOCATION }] : []
        if (!isList) metaSelection = { exportName: request.name, contexts }
        for (const context of contexts) {
          yield* reply(
            option,
            Reply.META_CONTEXT,
            OptionData.MetaContextReply.encodeUnsafe({ contextId: context.id, name: context.name })
          )
        }
        yield* reply(option, Reply.ACK)
      })

    const noData = (data: Uint8Array, what: string) =>
      data.length === 0 ? Effect.void : Effect.fail(optionReplyError("INVALID", `${what} takes no data`))

    while (true) {
      const header = yield* reader.read(Handshake.OPTION_REQUEST_HEADER_SIZE).pipe(
        Effect.flatMap(Schema.decodeUnknown(Handshake.OptionRequestHeader)),
        Effect.catchTag("ParseError", (e) => new ProtocolViolation({ message: `bad option header: ${e.message}` }))
      )
      const { option, length } = header
      if (length > config.maxOptionDiscard) {
        return yield* new ProtocolViolation({ message: `option ${option} with ${length} bytes of data` })
      }
      if (length > config.maxOptionLength && option === Opt.EXPORT_NAME) {
        // EXPORT_NAME has no error reply: a refused one ends the session.
        return yield* new ProtocolViolation({ message: `EXPORT_NAME with ${length} bytes of name` })
      }
      if (length > config.maxOptionLength) {
        yield* reader.skip(length)
        yield* replyError(option, optionReplyError("TOO_BIG", `option data of ${length} bytes is too large`))
        continue
      }
      const data = yield* reader.read(length)
      if (ctx.tls?.mode === "require" && !tlsActive && option !== Opt.STARTTLS && option !== Opt.ABORT) {
        if (option === Opt.EXPORT_NAME) {
          return yield* new ProtocolViolation({ message: "EXPORT_NAME before STARTTLS on a server that requires TLS" })
        }
        yield* replyError(option, optionReplyError("TLS_REQD", "this server requires TLS: use STARTTLS first"))
        continue
      }

      if (option === Opt.EXPORT_NAME) {
        if (extendedHeaders) {
          return yield* new ProtocolViolation({ message: "EXPORT_NAME after extended headers were negotiated" })
        }
        const selected = yield* Effect.try(() => utf8.decode(data)).pipe(
          Effect.mapError(() => optionReplyError("INVALID", "export name is not UTF-8")),
          Effect.flatMap(select),
          Effect.either
        )
        if (selected._tag === "Left") {
          return yield* new ProtocolViolation({ message: `EXPORT_NAME refused: ${selected.left.message}` })
        }
        const { exp, size } = selected.right
        const transmissionFlags = transmissionFlagsFor(exp, structuredReplies)
        const message = noZeroes ? Handshake.ExportNameReplyNoZeroes : Handshake.ExportNameReply
        yield* writer.send([message.encodeUnsafe({ size: BigInt(size), transmissionFlags })])
        return {
          _tag: "Transmission",
          negotiated: { export: exp, size, transmissionFlags, structuredReplies, extendedHeaders, metaContexts: [] },
          reader,
          writer
        } as const
      }
      if (option === Opt.STARTTLS && ctx.tls !== undefined && !tlsActive && data.length === 0) {
        if (reader.buffered() > 0) {
          return yield* new ProtocolViolation({ message: "data sent after STARTTLS before the TLS handshake" })
        }
        const upgraded = yield* ctx.tls.start(reply(option, Reply.ACK))
        reader = upgraded.reader
        writer = upgraded.writer
        tlsActive = true
        // Everything negotiated in the clear is forgotten.
        structuredReplies = false
        extendedHeaders = false
        metaSelection = undefined
        yield* Effect.logDebug("connection upgraded to TLS")
        continue
      }
      if (option === Opt.ABORT) {
        yield* reply(option, Reply.ACK)
        return { _tag: "Aborted" } as const
      }
      if (ctx.shutdown.isShuttingDown()) {
        yield* replyError(option, optionReplyError("SHUTDOWN", "the server is shutting down"))
        continue
      }

      const handled: Effect.Effect<Option.Option<Negotiated>, OptionReplyError, never> = (() => {
        switch (option) {
          case Opt.LIST:
            return noData(data, "LIST").pipe(
              Effect.zipRight(registry.list),
              Effect.flatMap((exports) =>
                Effect.forEach(exports, (exp) =>
                  reply(
                    option,
                    Reply.SERVER,
                    OptionData.ServerReply.encodeUnsafe({
                      name: exp.name,
                      description: Option.getOrElse(exp.description, () => "")
                    })
                  ), { discard: true })
              ),
              Effect.zipRight(reply(option, Reply.ACK)),
              Effect.as(Option.none())
            )
          case Opt.INFO:
          case Opt.GO:
            return infoOrGo(option, data)
          case Opt.STRUCTURED_REPLY:
            return noData(data, "STRUCTURED_REPLY").pipe(
              Effect.zipRight(
                extendedHeaders
                  ? Effect.fail(optionReplyError("EXT_HEADER_REQD", "extended headers are already negotiated"))
                  : structuredReplies
                  ? Effect.fail(optionReplyError("INVALID", "structured replies are already negotiated"))
                  : Effect.sync(() => {
                    structuredReplies = true
                  })
              ),
              Effect.zipRight(reply(option, Reply.ACK)),
              Effect.as(Option.none())
            )
          case Opt.LIST_META_CONTEXT:
          case Opt.SET_META_CONTEXT:
            return metaContext(option, data).pipe(Effect.as(Option.none()))
          case Opt.EXTENDED_HEADERS:
            if (!config.extendedHeaders) return Effect.fail(optionReplyError("UNSUP", "extended headers are disabled"))
            return noData(data, "EXTENDED_HEADERS").pipe(
              Effect.zipRight(
                extendedHeaders
                  ? Effect.fail(optionReplyError("INVALID", "extended headers are already negotiated"))
                  : Effect.sync(() => {
                    extendedHeaders = true
                    structuredReplies = true
                  })
              ),
              Effect.zipRight(reply(option, Reply.ACK)),
              Effect.as(Option.none())
            )
          case Opt.STARTTLS:
            return Effect.fail(
              ctx.tls === undefined
                ? optionReplyError("POLICY", "TLS is not configured on this server")
                : tlsActive
                ? optionReplyError("INVALID", "TLS is already active")
                : optionReplyError("INVALID", "STARTTLS takes no data")
            )
          default:
            return Effect.fail(optionReplyError("UNSUP", `option ${option} is not supported`))
        }
      })()
      const result = yield* handled.pipe(
        Effect.catchAll((error) => Effect.as(replyError(option, error), Option.none<Negotiated>()))
      )
      if (Option.isSome(result)) return { _tag: "Transmission", negotiated: result.value, reader, writer } as const
    }
  })
