/**
 * The `nbd` driver: a proxy to another NBD server, given by an NBD URI (see
 * {@link NbdUri}: `nbd://HOST[:PORT]/EXPORT`, `nbd+unix:///EXPORT?socket=PATH`, and the
 * TLS forms `nbds://` and `nbds+unix://` with `tls-certificates=DIR` and `tls-verify-peer=`).
 *
 * As nbdkit's nbd plugin: each client that opens the export gets its own connection to
 * the upstream server, opened in the client's scope and closed (NBD_CMD_DISC) when the
 * client disconnects. The proxy asks upstream for extended headers, else structured
 * replies, and for the `base:allocation` meta context, taking whatever is offered.
 *
 * - Capabilities mirror the upstream's transmission flags (READ_ONLY, SEND_FLUSH,
 *   SEND_FUA, SEND_TRIM, SEND_WRITE_ZEROES, SEND_FAST_ZERO, SEND_CACHE, CAN_MULTI_CONN,
 *   SEND_RESIZE, ROTATIONAL); block status is real when `base:allocation` was granted;
 *   block sizes are the upstream's NBD_INFO_BLOCK_SIZE, or the defaults.
 * - Upstream errors pass through with their errno; a lost upstream connection makes
 *   every request fail with EIO.
 * - Opening fails with NBD_REP_ERR_UNKNOWN (as nbdkit does when a plugin cannot open)
 *   naming the URI when the upstream cannot be reached, refuses TLS, or refuses the
 *   export; an upstream NBD_REP_ERR_POLICY is passed on as POLICY.
 * - The export name the client asked for is not used: the URI (or `export=`) names it.
 *
 * Argument: the URI. Parameters:
 * - `export=NAME` (default: the URI's export name): the upstream export to open
 * - `description=TEXT` (default none): description shown to clients in LIST and INFO
 * - `connect-timeout=DURATION` (default 30s): limit on connecting and negotiating upstream
 *
 * @since 0.2.0
 */
import * as Data from "effect/Data"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as ExecutionStrategy from "effect/ExecutionStrategy"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Scope from "effect/Scope"
import * as fs from "node:fs/promises"
import * as net from "node:net"
import * as path from "node:path"
import type * as tls from "node:tls"
import * as Client from "../client/NbdClient.ts"
import * as Driver from "../Driver.ts"
import { type OptionReplyError, optionReplyError, type ProtocolError, protocolError } from "../Errors.ts"
import * as Params from "../Params.ts"
import type { DriverPlugin } from "../Plugin.ts"
import {
  BASE_ALLOCATION,
  CommandFlags,
  DefaultBlockSize,
  Option as NbdOption,
  TransmissionFlags
} from "../protocol/Constants.ts"
import * as NbdUri from "./NbdUri.ts"

/** The driver could not be made: a bad URI or unreadable TLS files. */
export class NbdDriverError extends Data.TaggedError("NbdDriverError")<{ readonly message: string }> {}

/** Options of the nbd driver. */
export interface NbdOptions {
  /** The upstream server and export, as an NBD URI (text or parsed). */
  readonly uri: string | NbdUri.NbdUri
  /** Upstream export to open instead of the URI's. */
  readonly exportName?: string | undefined
  /** Description shown to clients. */
  readonly description?: string | undefined
  /** Limit on connecting and negotiating with the upstream (default 30 seconds). */
  readonly connectTimeout?: Duration.DurationInput | undefined
  /** Ask the upstream for extended headers (default true; structured replies otherwise). */
  readonly extendedHeaders?: boolean | undefined
}

/** Everything `open` needs, resolved once when the driver is made. */
interface Upstream {
  readonly uri: NbdUri.NbdUri
  readonly exportName: string
  readonly tls: tls.ConnectionOptions | undefined
  readonly timeout: Duration.Duration
  readonly extendedHeaders: boolean
}

/** Largest length of one request with compact (32-bit) headers, aligned to any block size. */
const COMPACT_LIMIT = 2 ** 31

const readFile = (file: string) =>
  Effect.tryPromise({
    try: () => fs.readFile(file),
    catch: (e) => new NbdDriverError({ message: `cannot read ${file}: ${(e as Error).message}` })
  })

const exists = (file: string) => Effect.promise(() => fs.access(file).then(() => true, () => false))

/** The certificates of `tls-certificates=DIR`: `ca-cert.pem`, and the client pair if present. */
const loadCertificates = (dir: string) =>
  Effect.gen(function*() {
    const ca = yield* readFile(path.join(dir, "ca-cert.pem"))
    const certFile = path.join(dir, "client-cert.pem")
    const keyFile = path.join(dir, "client-key.pem")
    const [hasCert, hasKey] = [yield* exists(certFile), yield* exists(keyFile)]
    if (hasCert !== hasKey) {
      return yield* new NbdDriverError({ message: `${dir}: client-cert.pem and client-key.pem go together` })
    }
    return hasCert ? { ca, cert: yield* readFile(certFile), key: yield* readFile(keyFile) } : { ca }
  })

/** Node TLS options for an `nbds` URI: trust, client certificate, and the name to verify. */
const tlsOptions = (uri: NbdUri.NbdUri, settings: NbdUri.TlsSettings) =>
  Effect.gen(function*() {
    const files = settings.certificates === undefined ? {} : yield* loadCertificates(settings.certificates)
    const name = settings.hostname ?? (uri.endpoint._tag === "Tcp" ? uri.endpoint.host : undefined)
    const identity: tls.ConnectionOptions = name === undefined
      ? { checkServerIdentity: () => undefined } // a Unix socket has no name: verify the chain only
      : net.isIP(name) === 0
      ? { host: name, servername: name }
      : { host: name }
    return { ...files, ...identity, rejectUnauthorized: settings.verifyPeer } satisfies tls.ConnectionOptions
  })

/** Opens the socket; it is destroyed when the scope closes. */
const dial = (endpoint: NbdUri.Endpoint): Effect.Effect<net.Socket, Client.ClientError, Scope.Scope> =>
  Effect.gen(function*() {
    const connected = yield* Deferred.make<void, Client.ClientError>()
    const socket = yield* Effect.acquireRelease(
      Effect.sync(() => {
        const s = endpoint._tag === "Tcp"
          ? net.connect({ host: endpoint.host, port: endpoint.port, noDelay: true })
          : net.connect({ path: endpoint.path })
        const where = NbdUri.describeEndpoint(endpoint)
        // Kept for the socket's life: later errors also surface as a closed connection.
        s.on("error", (e) =>
          Deferred.unsafeDone(connected, Exit.fail(new Client.ClientError({ message: `${where}: ${e.message}` }))))
        s.once("connect", () => Deferred.unsafeDone(connected, Exit.void))
        return s
      }),
      (s) => Effect.sync(() => s.destroy())
    )
    yield* Deferred.await(connected)
    return socket
  })

/** `true` if the option was accepted, `false` if refused; a broken connection fails. */
const accepted = (option: Effect.Effect<void, Client.ClientError | Client.OptionRefused>) =>
  option.pipe(Effect.as(true), Effect.catchTag("OptionRefused", () => Effect.succeed(false)))

/** Connects, negotiates (TLS, extended headers or structured replies, base:allocation) and enters transmission. */
const connectUpstream = (upstream: Upstream) =>
  Effect.gen(function*() {
    const socket = yield* dial(upstream.uri.endpoint)
    const session = yield* Client.handshake(socket)
    if (upstream.tls !== undefined) yield* session.startTls(upstream.tls)
    const extended = upstream.extendedHeaders && (yield* accepted(session.extendedHeaders))
    const structured = extended || (yield* accepted(session.structuredReplies))
    if (structured) yield* accepted(Effect.asVoid(session.setMetaContexts(upstream.exportName, [BASE_ALLOCATION])))
    const client = yield* session.go(upstream.exportName)
    yield* Effect.addFinalizer(() => client.disconnect.pipe(Effect.timeout("2 seconds"), Effect.ignore))
    return client
  })

const optionName = (code: number) => Object.entries(NbdOption).find(([, v]) => v === code)?.[0] ?? `${code}`

/** Why opening failed, as the client will see it. */
const openFailure = (uri: string, error: Client.ClientError | Client.OptionRefused): OptionReplyError => {
  if (error._tag === "ClientError") return optionReplyError("UNKNOWN", `cannot connect to upstream ${uri}: ${error.message}`)
  const detail = error.message === "" ? "" : `: ${error.message}`
  return optionReplyError(
    error.reply === "POLICY" ? "POLICY" : "UNKNOWN",
    `upstream ${uri} refused NBD_OPT_${optionName(error.option)} (${error.reply})${detail}`
  )
}

/** Opens one upstream connection in a scope of its own, closed at once if negotiation fails. */
const open = (upstream: Upstream): Effect.Effect<Client.NbdClient, OptionReplyError, Scope.Scope> =>
  Effect.gen(function*() {
    const scope = yield* Scope.fork(yield* Effect.scope, ExecutionStrategy.sequential)
    return yield* connectUpstream(upstream).pipe(
      Effect.timeoutFail({
        duration: upstream.timeout,
        onTimeout: () => new Client.ClientError({ message: `no answer within ${Duration.format(upstream.timeout)}` })
      }),
      Scope.extend(scope),
      Effect.onError((cause) => Scope.close(scope, Exit.failCause(cause))),
      Effect.mapError((error) => openFailure(upstream.uri.text, error)),
      Effect.tap((client) =>
        Effect.logDebug("nbd: upstream connected").pipe(
          Effect.annotateLogs({ upstream: upstream.uri.text, extendedHeaders: client.extendedHeaders })
        )
      )
    )
  })

/** Capabilities from the upstream's transmission flags, block sizes and meta contexts. */
export const capabilitiesOf = (client: Pick<Client.NbdClient, "info" | "metaContexts">): Driver.Capabilities => {
  const has = (flag: number) => (client.info.transmissionFlags & flag) !== 0
  return {
    readOnly: has(TransmissionFlags.READ_ONLY),
    flush: has(TransmissionFlags.SEND_FLUSH),
    fua: has(TransmissionFlags.SEND_FUA),
    trim: has(TransmissionFlags.SEND_TRIM),
    zero: has(TransmissionFlags.SEND_WRITE_ZEROES),
    fastZero: has(TransmissionFlags.SEND_FAST_ZERO),
    cache: has(TransmissionFlags.SEND_CACHE),
    resize: has(TransmissionFlags.SEND_RESIZE),
    multiConn: has(TransmissionFlags.CAN_MULTI_CONN),
    rotational: has(TransmissionFlags.ROTATIONAL),
    blockStatus: client.metaContexts.has(BASE_ALLOCATION),
    blockSize: client.info.blockSize ?? DefaultBlockSize
  }
}

/** The first `length` bytes of upstream extents (the last one may reach past the request). */
const clampExtents = (extents: ReadonlyArray<Driver.Extent>, length: number): Array<Driver.Extent> => {
  const out: Array<Driver.Extent> = []
  let left = length
  for (const extent of extents) {
    if (left <= 0) break
    const n = Math.min(extent.length, left)
    if (n > 0) out.push({ length: n, flags: extent.flags })
    left -= n
  }
  return out
}

/** Runs `command` over `[offset, offset + length)` in pieces of at most `limit` bytes. */
const inPieces = <E>(
  offset: number,
  length: number,
  limit: number,
  command: (offset: number, length: number) => Effect.Effect<void, E>
): Effect.Effect<void, E> =>
  length <= limit
    ? command(offset, length)
    : Effect.gen(function*() {
      for (let done = 0; done < length; done += limit) yield* command(offset + done, Math.min(limit, length - done))
    })

/** A client's handle over its upstream connection. */
const handleOf = (client: Client.NbdClient, uri: string): Driver.DriverHandle => {
  const capabilities = capabilitiesOf(client)
  const contextId = client.metaContexts.get(BASE_ALLOCATION)
  const limit = client.extendedHeaders ? Number.MAX_SAFE_INTEGER : COMPACT_LIMIT
  let size = client.info.size
  const pass = <A>(effect: Effect.Effect<A, ProtocolError | Client.ClientError>): Effect.Effect<A, ProtocolError> =>
    Effect.mapError(effect, (e) => e._tag === "ClientError" ? protocolError("EIO", `upstream ${uri}: ${e.message}`) : e)
  const notOffered = (what: string) => Effect.fail(protocolError("EINVAL", `upstream ${uri} does not offer ${what}`))
  const flush = capabilities.flush ? pass(client.flush) : notOffered("flush")
  /** Sends with FUA when upstream offers it, else follows with a flush (when it offers one). */
  const durable = (fua: boolean, send: (flags: number) => Effect.Effect<void, ProtocolError>) => {
    if (!fua) return send(0)
    if (capabilities.fua) return send(CommandFlags.FUA)
    return capabilities.flush ? Effect.zipRight(send(0), flush) : send(0)
  }
  const write: Driver.DriverHandle["write"] = (offset, data, options) =>
    durable(options.fua, (flags) => pass(client.write(offset, data, { flags })))
  const zeroFlags = (options: Driver.ZeroOptions) =>
    (options.noHole ? CommandFlags.NO_HOLE : 0) | (options.fastZero ? CommandFlags.FAST_ZERO : 0)
  return {
    capabilities,
    size: Effect.sync(() => size),
    read: (offset, length) => pass(client.read(offset, length)),
    write,
    flush,
    trim: (offset, length, options) =>
      capabilities.trim
        ? durable(options.fua, (flags) => inPieces(offset, length, limit, (o, l) => pass(client.trim(o, l, { flags }))))
        : notOffered("trim"),
    writeZeroes: (offset, length, options) => {
      if (!capabilities.zero) return Driver.zeroesByWriting(write)(offset, length, options)
      if (options.fastZero && !capabilities.fastZero) {
        return Effect.fail(protocolError("ENOTSUP", `upstream ${uri} does not offer fast zeroing`))
      }
      return durable(options.fua, (flags) =>
        inPieces(offset, length, limit, (o, l) => pass(client.writeZeroes(o, l, { flags: flags | zeroFlags(options) }))))
    },
    cache: (offset, length) =>
      capabilities.cache ? inPieces(offset, length, limit, (o, l) => pass(client.cache(o, l))) : Effect.void,
    blockStatus: (offset, length) =>
      contextId === undefined
        ? Effect.succeed([{ length, flags: 0 }])
        : Effect.flatMap(pass(client.blockStatus(offset, Math.min(length, limit))), (replies) => {
          const extents = clampExtents(replies.find((r) => r.contextId === contextId)?.extents ?? [], length)
          return extents.length > 0
            ? Effect.succeed(extents)
            : Effect.fail(protocolError("EIO", `upstream ${uri} sent no base:allocation extents`))
        }),
    resize: (newSize) =>
      capabilities.resize
        ? Effect.tap(pass(client.resize(newSize)), () => {
          size = newSize
        })
        : notOffered("resize")
  }
}

/** Resolves the options once: the URI, the TLS files, the limits. */
const upstreamOf = (options: NbdOptions): Effect.Effect<Upstream, NbdDriverError> =>
  Effect.gen(function*() {
    const uri = typeof options.uri === "string"
      ? yield* Effect.mapError(NbdUri.parse(options.uri), (e) => new NbdDriverError({ message: e.message }))
      : options.uri
    return {
      uri,
      exportName: options.exportName ?? uri.exportName,
      tls: uri.tls === undefined ? undefined : yield* tlsOptions(uri, uri.tls),
      timeout: Duration.decode(options.connectTimeout ?? Duration.seconds(30)),
      extendedHeaders: options.extendedHeaders ?? true
    }
  })

/** Makes the proxy driver (named "nbd"); nothing connects until a client opens it. */
export const make = (options: NbdOptions): Effect.Effect<Driver.NbdDriverShape, NbdDriverError> =>
  Effect.map(upstreamOf(options), (upstream) => ({
    name: "nbd",
    canonicalName: Option.none(),
    description: Option.fromNullable(options.description),
    open: () => Effect.map(open(upstream), (client) => handleOf(client, upstream.uri.text))
  }))

/** A layer providing the proxy driver. */
export const layer = (options: NbdOptions): Layer.Layer<Driver.NbdDriver, NbdDriverError> =>
  Layer.effect(Driver.NbdDriver, make(options))

const parameters: ReadonlyArray<Params.ParameterDoc> = [
  { name: "export", default: "the URI's export name", description: "upstream export to open" },
  { name: "description", description: "description of the export shown to clients" },
  { name: "connect-timeout", default: "30s", description: "limit on connecting and negotiating with the upstream" }
]

/** The driver by name, for the command line: `effect-nbd nbd URI [export=NAME,connect-timeout=10s]`. */
export const plugin: DriverPlugin = {
  name: "nbd",
  summary: "proxies to another NBD server given by an NBD URI",
  argument: { name: "URI", description: "nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH, nbds://..." },
  parameters,
  make: (argument, pairs) =>
    Params.decode("nbd", pairs, parameters, (read) => ({
      exportName: read.text("export"),
      description: read.text("description"),
      connectTimeout: read.duration("connect-timeout", Duration.seconds(30))
    })).pipe(
      Either.flatMap((options) =>
        Either.match(NbdUri.parse(argument), {
          onLeft: (e) => Either.left(new Params.ParameterError({ message: `nbd: ${e.message}` })),
          onRight: (uri) => Either.right(make({ ...options, uri }))
        })
      )
    )
}
