/**
 * An NBD client on Effect, built from the same Schema codecs as the server.
 *
 * {@link handshake} opens the fixed-newstyle negotiation and gives an
 * {@link OptionSession} to send options and read their replies; {@link OptionSession.go}
 * (or {@link connect}, which does it all) enters transmission and gives an
 * {@link NbdClient} whose commands may be issued concurrently: requests are pipelined
 * and replies matched by cookie. Failed commands fail with the server's errno as a
 * {@link ProtocolError}; a broken or closed connection fails with {@link ClientError}.
 *
 * @since 0.1.0
 */
import * as Cause from "effect/Cause"
import * as Data from "effect/Data"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Schema from "effect/Schema"
import * as Scope from "effect/Scope"
import type { Duplex } from "node:stream"
import * as tls from "node:tls"
import type { Extent } from "../Driver.ts"
import { type ErrnoName, errnoName, ProtocolError, type ReplyErrorName, replyErrorName } from "../Errors.ts"
import {
  ChunkType,
  ClientFlags,
  Command,
  CommandFlags,
  EXTENDED_REPLY_MAGIC,
  HandshakeFlags,
  Info,
  Option as Opt,
  Reply,
  ReplyFlags,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_REPLY_MAGIC
} from "../protocol/Constants.ts"
import * as Handshake from "../protocol/Handshake.ts"
import * as OptionData from "../protocol/OptionData.ts"
import * as Wire from "../protocol/Transmission.ts"
import * as FrameReader from "../stream/FrameReader.ts"
import * as FrameWriter from "../stream/FrameWriter.ts"

/** The connection failed or the server broke the protocol. */
export class ClientError extends Data.TaggedError("ClientError")<{ readonly message: string }> {}

/** One reply to an option. */
export interface OptionReply {
  readonly replyType: number
  readonly data: Uint8Array
}

/** What the server said about an export in INFO/GO. */
export interface ExportInfo {
  readonly size: number
  readonly transmissionFlags: number
  readonly name?: string | undefined
  readonly description?: string | undefined
  readonly blockSize?: { readonly minimum: number; readonly preferred: number; readonly maximum: number } | undefined
}

/** An option reply of error type, with its message. */
export class OptionRefused extends Data.TaggedError("OptionRefused")<{
  readonly option: number
  /** The `NBD_REP_ERR_*` name, or the number in hex when the protocol defines none. */
  readonly reply: ReplyErrorName | `0x${string}`
  readonly replyType: number
  readonly message: string
}> {}

/** Makes an {@link OptionRefused} from a reply, naming its error type. */
const refused = (option: number, replyType: number, message: string) =>
  new OptionRefused({ option, replyType, message, reply: replyErrorName(replyType) ?? `0x${replyType.toString(16)}` })

/** Negotiation in progress. */
export interface OptionSession {
  /** The handshake flags of the greeting. */
  readonly handshakeFlags: number
  /** Sends an option and collects its replies up to the final one (ACK or an error). */
  readonly option: (option: number, data?: Uint8Array) => Effect.Effect<ReadonlyArray<OptionReply>, ClientError>
  /** Negotiates structured replies. */
  readonly structuredReplies: Effect.Effect<void, ClientError | OptionRefused>
  /** Negotiates extended headers (experimental extension: 32-byte headers, 64-bit lengths). */
  readonly extendedHeaders: Effect.Effect<void, ClientError | OptionRefused>
  /** Lists export names and descriptions. */
  readonly list: Effect.Effect<ReadonlyArray<typeof OptionData.ServerReply.Type>, ClientError | OptionRefused>
  /** Selects meta contexts for an export; returns their ids by name. */
  readonly setMetaContexts: (
    exportName: string,
    queries: ReadonlyArray<string>
  ) => Effect.Effect<ReadonlyMap<string, number>, ClientError | OptionRefused>
  /** NBD_OPT_INFO. */
  readonly info: (exportName: string, requests?: ReadonlyArray<number>) => Effect.Effect<ExportInfo, ClientError | OptionRefused>
  /** NBD_OPT_GO: enters transmission. */
  readonly go: (exportName: string, requests?: ReadonlyArray<number>) => Effect.Effect<NbdClient, ClientError | OptionRefused, Scope.Scope>
  /** NBD_OPT_ABORT, then the connection is closed. */
  readonly abort: Effect.Effect<void, ClientError>
  /**
   * NBD_OPT_STARTTLS, then the TLS handshake over the same connection; what was
   * negotiated before is forgotten, and options go on encrypted.
   */
  readonly startTls: (options: tls.ConnectionOptions) => Effect.Effect<void, ClientError | OptionRefused>
}

/** Options of a command. */
export interface CommandOptions {
  /** Command flags (`CommandFlags`). */
  readonly flags?: number | undefined
}

/** The answer to BLOCK_STATUS for one meta context. */
export interface BlockStatus {
  readonly contextId: number
  readonly extents: ReadonlyArray<Extent>
}

/** A client in the transmission phase. */
export interface NbdClient {
  readonly info: ExportInfo
  readonly structuredReplies: boolean
  readonly extendedHeaders: boolean
  readonly metaContexts: ReadonlyMap<string, number>
  readonly read: (offset: number, length: number, options?: CommandOptions) => Effect.Effect<Uint8Array, ProtocolError | ClientError>
  readonly write: (offset: number, data: Uint8Array, options?: CommandOptions) => Effect.Effect<void, ProtocolError | ClientError>
  readonly flush: Effect.Effect<void, ProtocolError | ClientError>
  readonly trim: (offset: number, length: number, options?: CommandOptions) => Effect.Effect<void, ProtocolError | ClientError>
  readonly writeZeroes: (offset: number, length: number, options?: CommandOptions) => Effect.Effect<void, ProtocolError | ClientError>
  readonly cache: (offset: number, length: number, options?: CommandOptions) => Effect.Effect<void, ProtocolError | ClientError>
  readonly blockStatus: (offset: number, length: number, options?: CommandOptions) => Effect.Effect<ReadonlyArray<BlockStatus>, ProtocolError | ClientError>
  readonly resize: (size: number) => Effect.Effect<void, ProtocolError | ClientError>
  /** Sends any request (for tests of odd requests); resolves with the reply's data. */
  readonly request: (
    type: number,
    flags: number,
    offset: bigint,
    length: number,
    payload?: Uint8Array
  ) => Effect.Effect<Uint8Array, ProtocolError | ClientError>
  /** NBD_CMD_DISC, then waits for the server to close. */
  readonly disconnect: Effect.Effect<void>
}

const errnoOf = (code: number): ErrnoName => errnoName(code) ?? "EINVAL"

const utf8 = new TextDecoder()
const EMPTY = new Uint8Array(0)

const decodeOrFail = <A>(schema: Schema.Schema<A, Uint8Array>, bytes: Uint8Array, what: string) =>
  Schema.decodeUnknown(schema)(bytes).pipe(
    Effect.mapError((e) => new ClientError({ message: `malformed ${what}: ${e.message}` }))
  )

const closed = (e: FrameReader.ConnectionClosed) => new ClientError({ message: `connection closed: ${e.description}` })

/** Reads the greeting and answers it; the reader and writer live as long as the scope. */
export const handshake = (
  stream: Duplex,
  options: { readonly noZeroes?: boolean } = {}
): Effect.Effect<OptionSession, ClientError, Scope.Scope> =>
  Effect.gen(function*() {
    const scope = yield* Effect.scope
    let reader = yield* FrameReader.make(stream)
    let writer = FrameWriter.make(stream)
    yield* Effect.addFinalizer(() => Effect.suspend(() => writer.end))
    const read = (n: number) => Effect.mapError(reader.read(n), closed)

    const greeting = yield* decodeOrFail(Handshake.Greeting, yield* read(18), "greeting")
    if ((greeting.handshakeFlags & HandshakeFlags.FIXED_NEWSTYLE) === 0) {
      return yield* new ClientError({ message: "the server does not speak fixed newstyle" })
    }
    const noZeroes = (options.noZeroes ?? true) && (greeting.handshakeFlags & HandshakeFlags.NO_ZEROES) !== 0
    yield* writer.send([
      Handshake.ClientFlagsMessage.encodeUnsafe({
        clientFlags: ClientFlags.C_FIXED_NEWSTYLE | (noZeroes ? ClientFlags.C_NO_ZEROES : 0)
      })
    ])

    const sendOption = (option: number, data: Uint8Array) =>
      writer.send([Handshake.OptionRequestHeader.encodeUnsafe({ option, length: data.length }), data])

    const readReply = Effect.gen(function*() {
      const header = yield* decodeOrFail(
        Handshake.OptionReplyHeader,
        yield* read(Handshake.OPTION_REPLY_HEADER_SIZE),
        "option reply header"
      )
      return { option: header.option, replyType: header.replyType, data: yield* read(header.length) }
    })

    const option = (code: number, data: Uint8Array = EMPTY) =>
      Effect.gen(function*() {
        yield* sendOption(code, data)
        const replies: Array<OptionReply> = []
        while (true) {
          const reply = yield* readReply
          if (reply.option !== code) {
            return yield* new ClientError({ message: `reply to option ${reply.option} while waiting for ${code}` })
          }
          replies.push(reply)
          if (reply.replyType === Reply.ACK || reply.replyType >= 0x80000000) return replies
        }
      })

    /** The replies before the final ACK; fails with the error reply if there is one. */
    const expectAck = (code: number, data?: Uint8Array) =>
      Effect.flatMap(option(code, data), (replies) => {
        const last = replies[replies.length - 1]!
        return last.replyType === Reply.ACK
          ? Effect.succeed(replies.slice(0, -1))
          : Effect.fail(refused(code, last.replyType, utf8.decode(last.data)))
      })

    let structured = false
    let extended = false
    let metaContexts: ReadonlyMap<string, number> = new Map()

    const infoFrom = (replies: ReadonlyArray<OptionReply>) =>
      Effect.gen(function*() {
        let info: Partial<{ -readonly [K in keyof ExportInfo]: ExportInfo[K] }> = {}
        for (const reply of replies) {
          if (reply.replyType !== Reply.INFO) continue
          const decoded = yield* Schema.decodeUnknown(OptionData.InfoReply)(reply.data).pipe(Effect.option)
          if (decoded._tag === "None") continue
          const value = decoded.value
          switch (value._tag) {
            case "Export":
              info = { ...info, size: Number(value.size), transmissionFlags: value.transmissionFlags }
              break
            case "Name":
              info = { ...info, name: value.name }
              break
            case "Description":
              info = { ...info, description: value.description }
              break
            case "BlockSize":
              info = { ...info, blockSize: { minimum: value.minimum, preferred: value.preferred, maximum: value.maximum } }
          }
        }
        if (info.size === undefined || info.transmissionFlags === undefined) {
          return yield* new ClientError({ message: "no NBD_INFO_EXPORT in the server's answer" })
        }
        return info as ExportInfo
      })

    const infoRequest = (exportName: string, requests: ReadonlyArray<number>) =>
      OptionData.InfoRequest.encodeUnsafe({ name: exportName, requests })

    const session: OptionSession = {
      handshakeFlags: greeting.handshakeFlags,
      option,
      structuredReplies: Effect.tap(expectAck(Opt.STRUCTURED_REPLY), () => {
        structured = true
      }),
      extendedHeaders: Effect.tap(expectAck(Opt.EXTENDED_HEADERS), () => {
        extended = true
        structured = true
      }),
      list: Effect.flatMap(expectAck(Opt.LIST), (replies) =>
        Effect.forEach(replies, (r) => decodeOrFail(OptionData.ServerReply, r.data, "NBD_REP_SERVER"))),
      setMetaContexts: (exportName, queries) =>
        Effect.gen(function*() {
          const replies = yield* expectAck(
            Opt.SET_META_CONTEXT,
            OptionData.MetaContextRequest.encodeUnsafe({ name: exportName, queries })
          )
          const ids = new Map<string, number>()
          for (const r of replies) {
            const context = yield* decodeOrFail(OptionData.MetaContextReply, r.data, "NBD_REP_META_CONTEXT")
            ids.set(context.name, context.contextId)
          }
          metaContexts = ids
          return ids
        }),
      info: (exportName, requests = [Info.NAME, Info.DESCRIPTION, Info.BLOCK_SIZE]) =>
        Effect.flatMap(expectAck(Opt.INFO, infoRequest(exportName, requests)), infoFrom),
      go: (exportName, requests = [Info.NAME, Info.DESCRIPTION, Info.BLOCK_SIZE]) =>
        Effect.gen(function*() {
          const info = yield* Effect.flatMap(expectAck(Opt.GO, infoRequest(exportName, requests)), infoFrom)
          return yield* transmission(reader, writer, info, structured, extended, metaContexts)
        }),
      abort: Effect.asVoid(option(Opt.ABORT)),
      startTls: (options) =>
        Effect.gen(function*() {
          yield* expectAck(Opt.STARTTLS)
          reader.detach()
          stream.pause()
          const secure = yield* Effect.async<tls.TLSSocket, ClientError>((resume) => {
            const socket = tls.connect({ ...options, socket: stream })
            socket.once("secureConnect", () => resume(Effect.succeed(socket)))
            socket.once("error", (e) => resume(Effect.fail(new ClientError({ message: `TLS handshake failed: ${e.message}` }))))
          })
          secure.on("error", () => {})
          reader = yield* Scope.extend(FrameReader.make(secure), scope)
          writer = FrameWriter.make(secure)
          structured = false
          extended = false
          metaContexts = new Map()
        })
    }
    return session
  })

/** Connects over a stream: handshake, structured replies, meta contexts, GO. */
export const connect = (
  stream: Duplex,
  options: {
    readonly exportName?: string | undefined
    readonly structuredReplies?: boolean | undefined
    readonly extendedHeaders?: boolean | undefined
    readonly metaContexts?: ReadonlyArray<string> | undefined
    /** Upgrade to TLS with STARTTLS first, with these options. */
    readonly tls?: tls.ConnectionOptions | undefined
  } = {}
): Effect.Effect<NbdClient, ClientError | OptionRefused, Scope.Scope> =>
  Effect.gen(function*() {
    const session = yield* handshake(stream)
    if (options.tls !== undefined) yield* session.startTls(options.tls)
    const exportName = options.exportName ?? ""
    if (options.extendedHeaders === true) yield* session.extendedHeaders
    else if (options.structuredReplies ?? true) yield* session.structuredReplies
    if (options.extendedHeaders === true || (options.structuredReplies ?? true)) {
      if (options.metaContexts !== undefined) yield* session.setMetaContexts(exportName, options.metaContexts)
    }
    return yield* session.go(exportName)
  })

interface Pending {
  readonly type: number
  readonly offset: bigint
  readonly length: number
  readonly deferred: Deferred.Deferred<Uint8Array, ProtocolError | ClientError>
  /** READ data being assembled from structured chunks. */
  data?: Uint8Array
  /** BLOCK_STATUS chunks being collected. */
  status?: Array<BlockStatus>
  error?: ProtocolError
}

const transmission = (
  reader: FrameReader.FrameReader,
  writer: FrameWriter.FrameWriter,
  info: ExportInfo,
  structuredReplies: boolean,
  extendedHeaders: boolean,
  metaContexts: ReadonlyMap<string, number>
): Effect.Effect<NbdClient, never, Scope.Scope> =>
  Effect.gen(function*() {
    const pending = new Map<bigint, Pending>()
    const statuses = new WeakMap<Uint8Array, ReadonlyArray<BlockStatus>>()
    let nextCookie = 1n
    let failure: ClientError | undefined
    const read = (n: number) => Effect.mapError(reader.read(n), closed)

    const failAll = (error: ClientError) =>
      Effect.sync(() => {
        failure = error
        for (const p of pending.values()) Deferred.unsafeDone(p.deferred, Effect.fail(error))
        pending.clear()
      })

    const settle = (cookie: bigint, p: Pending, result: Effect.Effect<Uint8Array, ProtocolError>) => {
      pending.delete(cookie)
      Deferred.unsafeDone(p.deferred, result)
    }

    const take = (cookie: bigint) =>
      Effect.suspend(() => {
        const p = pending.get(cookie)
        return p === undefined
          ? Effect.fail(new ClientError({ message: `reply for unknown cookie ${cookie}` }))
          : Effect.succeed(p)
      })

    /** Where a chunk's bytes go in the read, if they lie inside the request; else the server broke the protocol. */
    const inRange = (p: Pending, offset: bigint, length: number) =>
      offset >= p.offset && offset + BigInt(length) <= p.offset + BigInt(p.length) && p.type === Command.READ
        ? Effect.succeed(Number(offset - p.offset))
        : Effect.fail(new ClientError({ message: `chunk of ${length} bytes at ${offset} is outside the request` }))

    /** Handles one chunk's payload once its header is parsed. */
    const onChunk = (flags: number, type: number, cookie: bigint, length: number) =>
      Effect.gen(function*() {
        const p = yield* take(cookie)
        const payload = yield* read(length)
        if ((type & 0x8000) !== 0) {
          if (type === ChunkType.ERROR_OFFSET) {
            const failure = yield* decodeOrFail(Wire.ErrorOffsetPayload, payload, "ERROR_OFFSET chunk")
            p.error ??= new ProtocolError({
              errno: errnoOf(failure.error),
              message: failure.message,
              offset: Number(failure.offset)
            })
          } else {
            const failure = yield* decodeOrFail(Wire.ErrorPayload, payload, "ERROR chunk")
            p.error ??= new ProtocolError({ errno: errnoOf(failure.error), message: failure.message })
          }
        } else if (type === ChunkType.OFFSET_DATA) {
          const data = yield* decodeOrFail(Wire.OffsetData, payload, "OFFSET_DATA chunk")
          const at = yield* inRange(p, data.offset, data.data.length)
          p.data ??= new Uint8Array(p.length)
          p.data.set(data.data, at)
        } else if (type === ChunkType.OFFSET_HOLE) {
          const hole = yield* decodeOrFail(Wire.OffsetHole, payload, "OFFSET_HOLE chunk")
          const at = yield* inRange(p, hole.offset, hole.size)
          p.data ??= new Uint8Array(p.length)
          p.data.fill(0, at, at + hole.size)
        } else if (type === ChunkType.BLOCK_STATUS && !extendedHeaders) {
          const status = yield* decodeOrFail(Wire.BlockStatusPayload, payload, "BLOCK_STATUS chunk")
          ;(p.status ??= []).push({ contextId: status.contextId, extents: status.descriptors })
        } else if (type === ChunkType.BLOCK_STATUS_EXT && extendedHeaders) {
          const status = yield* decodeOrFail(Wire.BlockStatusExtPayload, payload, "BLOCK_STATUS_EXT chunk")
          ;(p.status ??= []).push({
            contextId: status.contextId,
            extents: status.descriptors.map((d) => ({ length: Number(d.length), flags: Number(d.flags) }))
          })
        } else if (type !== ChunkType.NONE) {
          return yield* new ClientError({ message: `unexpected chunk type ${type}` })
        }
        if ((flags & ReplyFlags.DONE) !== 0) {
          if (p.error !== undefined) return settle(cookie, p, Effect.fail(p.error))
          const result = p.data ?? new Uint8Array(p.type === Command.READ ? p.length : 0)
          if (p.status !== undefined) statuses.set(result, p.status)
          settle(cookie, p, Effect.succeed(result))
        }
      })

    const structuredChunk = Effect.gen(function*() {
      const rest = yield* read(Wire.STRUCTURED_REPLY_HEADER_SIZE - 4)
      const view = new DataView(rest.buffer, rest.byteOffset, rest.byteLength)
      yield* onChunk(view.getUint16(0), view.getUint16(2), view.getBigUint64(4), view.getUint32(12))
    })

    const extendedChunk = Effect.gen(function*() {
      const rest = yield* read(Wire.EXTENDED_REPLY_HEADER_SIZE - 4)
      const view = new DataView(rest.buffer, rest.byteOffset, rest.byteLength)
      const cookie = view.getBigUint64(4)
      const offset = view.getBigUint64(12)
      const p = pending.get(cookie)
      if (p !== undefined && offset !== p.offset) {
        return yield* new ClientError({ message: `extended reply offset ${offset} differs from the request's ${p.offset}` })
      }
      yield* onChunk(view.getUint16(0), view.getUint16(2), cookie, Number(view.getBigUint64(20)))
    })

    const simpleReply = Effect.gen(function*() {
      const rest = yield* read(Wire.SIMPLE_REPLY_SIZE - 4)
      const view = new DataView(rest.buffer, rest.byteOffset, rest.byteLength)
      const error = view.getUint32(0)
      const cookie = view.getBigUint64(4)
      const p = yield* take(cookie)
      if (error !== 0) {
        return settle(cookie, p, Effect.fail(new ProtocolError({ errno: errnoOf(error), message: "simple reply error" })))
      }
      const data = p.type === Command.READ ? yield* read(p.length) : EMPTY
      settle(cookie, p, Effect.succeed(Uint8Array.from(data)))
    })

    const receive = Effect.gen(function*() {
      while (true) {
        const magicBytes = yield* read(4)
        const magic = new DataView(magicBytes.buffer, magicBytes.byteOffset, 4).getUint32(0)
        if (magic === SIMPLE_REPLY_MAGIC && !extendedHeaders) yield* simpleReply
        else if (magic === STRUCTURED_REPLY_MAGIC && !extendedHeaders) yield* structuredChunk
        else if (magic === EXTENDED_REPLY_MAGIC && extendedHeaders) yield* extendedChunk
        else return yield* new ClientError({ message: `bad reply magic 0x${magic.toString(16)}` })
      }
    }).pipe(
      Effect.catchAllCause((cause) =>
        failAll(new ClientError({ message: `receiving replies failed: ${Cause.pretty(cause).split("\n")[0]}` }))
      )
    )
    const receiver = yield* Effect.forkScoped(receive)

    /** The request header, compact or extended. */
    const requestHeader = (type: number, flags: number, cookie: bigint, offset: bigint, length: number) =>
      extendedHeaders
        ? Wire.encodeExtendedRequestHeaderFast(flags, type, cookie, offset, BigInt(length))
        : Wire.encodeRequestHeaderFast(flags, type, cookie, offset, length)

    const request: NbdClient["request"] = (type, flags, offset, length, payload) =>
      Effect.suspend(() => {
        if (failure !== undefined) return Effect.fail(failure)
        const cookie = nextCookie++
        const deferred = Deferred.unsafeMake<Uint8Array, ProtocolError | ClientError>(receiver.id())
        pending.set(cookie, { type, offset, length, deferred })
        const header = requestHeader(type, flags, cookie, offset, length)
        return Effect.zipRight(writer.send(payload === undefined ? [header] : [header, payload]), Deferred.await(deferred))
      })

    const simple = (type: number) => (offset: number, length: number, options?: CommandOptions) =>
      Effect.asVoid(request(type, options?.flags ?? 0, BigInt(offset), length))

    return {
      info,
      structuredReplies,
      extendedHeaders,
      metaContexts,
      request,
      read: (offset, length, options) => request(Command.READ, options?.flags ?? 0, BigInt(offset), length),
      write: (offset, data, options) =>
        Effect.asVoid(
          request(
            Command.WRITE,
            (options?.flags ?? 0) | (extendedHeaders ? CommandFlags.PAYLOAD_LEN : 0),
            BigInt(offset),
            data.length,
            data
          )
        ),
      flush: Effect.asVoid(request(Command.FLUSH, 0, 0n, 0)),
      trim: simple(Command.TRIM),
      writeZeroes: simple(Command.WRITE_ZEROES),
      cache: simple(Command.CACHE),
      blockStatus: (offset, length, options) =>
        Effect.map(
          request(Command.BLOCK_STATUS, options?.flags ?? 0, BigInt(offset), length),
          (result) => statuses.get(result) ?? []
        ),
      resize: (size) => Effect.asVoid(request(Command.RESIZE, 0, BigInt(size), 0)),
      disconnect: Effect.gen(function*() {
        yield* writer.send([requestHeader(Command.DISC, 0, nextCookie++, 0n, 0)])
        yield* writer.end
      })
    } satisfies NbdClient
  })
