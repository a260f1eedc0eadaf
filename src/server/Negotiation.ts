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
import * as ExecutionStrategy from "effect/ExecutionStrategy"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import * as Scope from "effect/Scope"
import * as Driver from "../Driver.ts"
import type { Capabilities, ClientInfo, DriverHandle, TlsIdentity } from "../Driver.ts"
import type { NbdExport } from "../Export.ts"
import { ExportRegistry } from "../Export.ts"
import { type OptionReplyError, optionReplyError, ProtocolViolation } from "../Errors.ts"
import * as Binary from "../protocol/Binary.ts"
import {
  ClientFlags,
  DefaultBlockSize,
  HandshakeFlags,
  Info,
  Option as Opt,
  Reply
} from "../protocol/Constants.ts"
import * as Handshake from "../protocol/Handshake.ts"
import * as MetaContexts from "./MetaContexts.ts"
import * as OptionData from "../protocol/OptionData.ts"
import type { ConnectionClosed, FrameReader } from "../stream/FrameReader.ts"
import type { FrameWriter } from "../stream/FrameWriter.ts"
import { transmissionFlags } from "./RequestCheck.ts"
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
  /** The export opened for this client, for the life of the session. */
  readonly handle: DriverHandle
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
    { readonly reader: FrameReader; readonly writer: FrameWriter; readonly identity: TlsIdentity },
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
  /** Who is connecting (the TLS identity is added once the connection is encrypted). */
  readonly client: Omit<ClientInfo, "tls">
}

/** A handle whose largest READ/WRITE payload is at most the server's limit (the fast path is kept). */
const limitRequests = (handle: DriverHandle, maxRequest: number): DriverHandle =>
  handle.capabilities.blockSize.maximum <= maxRequest ? handle : Driver.override(handle, {
    capabilities: (caps) => ({ ...caps, blockSize: { ...caps.blockSize, maximum: Math.max(maxRequest, caps.blockSize.minimum) } })
  })

/** True when an export needs constraints beyond the defaults (minimum block above 1). */
const needsBlockSize = (caps: Capabilities): boolean => caps.blockSize.minimum > DefaultBlockSize.minimum

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
  ExportRegistry | Scope.Scope
> =>
  Effect.gen(function*() {
    const { config } = ctx
    let { reader, writer } = ctx
    let tlsIdentity = Option.none<TlsIdentity>()
    let tlsActive = false
    const registry = yield* ExportRegistry
    const sessionScope = yield* Effect.scope

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

    /**
     * Looks an export up and opens it for the client (its driver may refuse). The handle
     * lives in a scope of its own, closed after INFO or with the session after GO.
     */
    const select = (name: string) =>
      Effect.gen(function*() {
        const exp = yield* registry.get(name)
        const scope = yield* Scope.fork(sessionScope, ExecutionStrategy.sequential)
        const client: ClientInfo = { ...ctx.client, tls: tlsIdentity }
        const opened = Effect.gen(function*() {
          const opened = yield* Scope.extend(exp.driver.open({ exportName: name, client }), scope)
          const handle = limitRequests(opened, config.maxRequest)
          const size = yield* handle.size.pipe(
            Effect.mapError((e) => optionReplyError("UNKNOWN", `export '${name}' is unavailable: ${e.message}`))
          )
          return { exp, handle, size, scope }
        })
        return yield* Effect.onError(opened, () => Scope.close(scope, Exit.void))
      })

    /** INFO and GO: info replies, then ACK; GO moves to transmission. */
    const infoOrGo = (option: number, data: Uint8Array) =>
      Effect.gen(function*() {
        const request = yield* decodeOrInvalid(OptionData.InfoRequest, data, "INFO/GO request")
        const { exp, handle, scope, size } = yield* select(request.name)
        return yield* Effect.onExit(
          reportExport(option, request, exp, handle, size),
          (exit) => (Exit.isSuccess(exit) && option === Opt.GO ? Effect.void : Scope.close(scope, Exit.void))
        )
      })

    /** What transmission starts with on an opened export. */
    const agreed = (
      exp: NbdExport,
      handle: DriverHandle,
      size: number,
      metaContexts: ReadonlyArray<MetaContext>
    ): Negotiated => ({
      export: exp,
      handle,
      size,
      transmissionFlags: transmissionFlags(handle.capabilities, structuredReplies),
      structuredReplies,
      extendedHeaders,
      metaContexts
    })

    /** The INFO replies of an opened export, then ACK; for GO, what transmission starts with. */
    const reportExport = (
      option: number,
      request: typeof OptionData.InfoRequest.Type,
      exp: NbdExport,
      handle: DriverHandle,
      size: number
    ) =>
      Effect.gen(function*() {
        const caps = handle.capabilities
        const flags = transmissionFlags(caps, structuredReplies)
        const asked = new Set(request.requests)
        const blockSize = caps.blockSize
        yield* reply(option, Reply.INFO, OptionData.InfoExport.encodeUnsafe({ size: BigInt(size), transmissionFlags: flags }))
        if (asked.has(Info.NAME)) {
          const name = Option.getOrElse(exp.driver.canonicalName, () => exp.name)
          yield* reply(option, Reply.INFO, OptionData.InfoName.encodeUnsafe({ name }))
        }
        if (asked.has(Info.DESCRIPTION) && Option.isSome(exp.description)) {
          yield* reply(option, Reply.INFO, OptionData.InfoDescription.encodeUnsafe({ description: exp.description.value }))
        }
        if (asked.has(Info.BLOCK_SIZE) || needsBlockSize(caps)) {
          yield* reply(option, Reply.INFO, OptionData.InfoBlockSize.encodeUnsafe(blockSize))
        }
        if (!asked.has(Info.BLOCK_SIZE) && needsBlockSize(caps)) {
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
        return Option.some(agreed(exp, handle, size, metaContexts))
      })

    /** The meta contexts an export offers this client (its handle is opened to ask, then closed). */
    const offeredContexts = (name: string) =>
      Effect.flatMap(select(name), ({ handle, scope }) =>
        Effect.as(Scope.close(scope, Exit.void), MetaContexts.offeredBy(handle)))

    /** LIST_META_CONTEXT and SET_META_CONTEXT, with the query rules of {@link MetaContexts}. */
    const metaContext = (option: number, data: Uint8Array) =>
      Effect.gen(function*() {
        if (!structuredReplies) {
          return yield* optionReplyError("INVALID", "structured replies must be negotiated first")
        }
        const isList = option === Opt.LIST_META_CONTEXT
        if (!isList) metaSelection = undefined // a SET replaces the selection, even when it fails
        const request = yield* decodeOrInvalid(OptionData.MetaContextRequest, data, "meta context request")
        const offered = yield* offeredContexts(request.name)
        const contexts = isList
          ? MetaContexts.list(request.queries, offered).map((name) => ({ id: 0, name }))
          : MetaContexts.select(request.queries, offered).map((name, i) => ({ id: i + 1, name }))
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
        const { exp, handle, size } = selected.right
        const flags = transmissionFlags(handle.capabilities, structuredReplies)
        const message = noZeroes ? Handshake.ExportNameReplyNoZeroes : Handshake.ExportNameReply
        yield* writer.send([message.encodeUnsafe({ size: BigInt(size), transmissionFlags: flags })])
        return {
          _tag: "Transmission",
          negotiated: agreed(exp, handle, size, []),
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
        tlsIdentity = Option.some(upgraded.identity)
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
