/**
 * The NBD server: a scoped layer listening on TCP, a Unix socket or sockets inherited from a
 * service manager, serving every connection as a supervised fiber of `SocketServer.run`.
 *
 * Closing the layer's scope (interrupting the program, SIGINT/SIGTERM under
 * `NodeRuntime.runMain`) answers new requests and options with ESHUTDOWN / ERR_SHUTDOWN,
 * lets in-flight requests finish, flushes each session's handle, and closes every
 * session and the listener.
 *
 * @since 0.1.0
 */
import * as NodeSocket from "@effect/platform-node/NodeSocket"
import * as SocketServer from "@effect/platform/SocketServer"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import type { Socket } from "node:net"
import type { Transport } from "../Driver.ts"
import type { ExportRegistry } from "../Export.ts"
import * as Listener from "./Listener.ts"
import * as Metrics from "./Metrics.ts"
import * as ServerConfig from "./ServerConfig.ts"
import * as Session from "./Session.ts"
import * as Shutdown from "./Shutdown.ts"

/** Where a server listens: TCP host and port, a Unix socket path, or an inherited listening socket `{ fd }`. */
export type ListenOptions = Listener.ListenOptions

/** A failure to listen, naming the reason (`AddressInUse`, ...) and the system's error code. */
export { ListenError } from "./Listener.ts"
/** Why listening failed. */
export type { ListenErrorReason } from "./Listener.ts"

/** A running NBD server. */
export class NbdServer extends Context.Tag("effect-nbd/NbdServer")<NbdServer, {
  /** The address it listens on (the real port when port 0 was asked); the first one when it listens on several. */
  readonly address: SocketServer.Address
  /** Every address it listens on (several when a service manager passed several sockets). */
  readonly addresses: ReadonlyArray<SocketServer.Address>
  /** The TCP port of `address` (the real one when port 0 was asked); undefined on a Unix socket. */
  readonly port: number | undefined
  /** Connections accepted since start. */
  readonly connections: Effect.Effect<number>
  /** This server's metrics (its own registry: servers in one process share none). */
  readonly metrics: Metrics.ServerMetrics
  /** Begins a graceful shutdown without waiting for it (closing the layer's scope does both). */
  readonly shutdown: Effect.Effect<void>
}>() {}

/** Counters and the shutdown signal shared by a server's sessions. */
export interface ServerState {
  readonly shutdown: Shutdown.Shutdown
  /** The server's metrics. */
  readonly metrics: Metrics.ServerMetrics
  /** Connections accepted since start. */
  connections: number
  /** Sessions running now. */
  active: number
  /** Opened once shutdown began and no session is left. */
  readonly drained: Effect.Latch
  /** Connections refused over the limit since the last time that was logged. */
  refused: number
  /** When refusals were last logged (Effect's clock), so that a flood logs one line per interval. */
  refusalLoggedAt: number
}

/** Refusals over the connection limit are logged at most once per this many milliseconds. */
const REFUSAL_LOG_INTERVAL = 10_000

/** A fresh state. */
export const makeState: Effect.Effect<ServerState> = Effect.zipWith(Shutdown.make, Effect.makeLatch(false), (shutdown, drained) => ({
  shutdown,
  metrics: Metrics.make(),
  connections: 0,
  active: 0,
  drained,
  refused: 0,
  refusalLoggedAt: -Infinity
}))

/** Closes a connection over the limit at once; logs how many were refused, once per interval. */
const refuse = (socket: Socket, config: ServerConfig.ServerConfig, state: ServerState) =>
  Effect.flatMap(Clock.currentTimeMillis, (now) => {
    socket.destroy()
    state.refused++
    if (now - state.refusalLoggedAt < REFUSAL_LOG_INTERVAL) return Effect.void
    const count = state.refused
    state.refused = 0
    state.refusalLoggedAt = now
    return Effect.logWarning(`refused ${count} connection(s): ${config.maxConnections} are served at most (--max-connections)`)
  })

/** The transport of an accepted socket. */
const transportOf = (socket: Socket, address: SocketServer.Address): Transport =>
  address._tag === "UnixAddress"
    ? { _tag: "Unix", path: address.path }
    : { _tag: "Tcp", address: socket.remoteAddress ?? "", port: socket.remotePort ?? 0 }

/**
 * Serves NBD on the `SocketServer` in context until interrupted. Each connection runs
 * `Session.run` over the raw Node.js socket.
 */
export const serve = (
  config: ServerConfig.ServerConfig,
  state: ServerState
): Effect.Effect<never, SocketServer.SocketServerError, SocketServer.SocketServer | ExportRegistry> =>
  Effect.gen(function*() {
    const server = yield* SocketServer.SocketServer
    return yield* server.run(() =>
      Effect.flatMap(Effect.serviceOption(NodeSocket.NetSocket), (raw) => {
        if (Option.isNone(raw)) return Effect.dieMessage("NBD sessions need a Node.js socket server")
        if (state.active >= config.maxConnections) return refuse(raw.value, config, state)
        const connectionId = ++state.connections
        state.active++
        state.metrics.connectionAccepted(state.active)
        raw.value.setNoDelay(true)
        const transport = transportOf(raw.value, server.address)
        return Effect.zipRight(
          Effect.logDebug(`connection from ${transport._tag === "Tcp" ? transport.address : "a local socket"}`).pipe(
            Effect.annotateLogs({ connection: connectionId })
          ),
          // The session annotates its own logs with the connection id.
          Session.run(raw.value, { config, connectionId, shutdown: state.shutdown, transport, metrics: state.metrics })
        ).pipe(
          Effect.ensuring(Effect.sync(() => {
            state.active--
            state.metrics.connectionClosed(state.active)
            if (state.active === 0 && state.shutdown.isShuttingDown()) state.drained.unsafeOpen()
          }))
        )
      })
    )
  })

/**
 * Graceful shutdown: signal the sessions, wait (at most `shutdownGraceMillis`) for them
 * to drain their in-flight requests and end; what is left is interrupted afterwards.
 */
const drain = (config: ServerConfig.ServerConfig, state: ServerState) =>
  Effect.gen(function*() {
    yield* state.shutdown.trigger
    if (state.active === 0) return
    yield* Effect.logInfo(`shutting down: ${state.active} session(s) finishing`)
    // Finalizers are uninterruptible: the wait must be made interruptible for the timeout to cut it.
    yield* state.drained.await.pipe(
      Effect.interruptible,
      Effect.timeout(config.shutdownGraceMillis),
      Effect.catchTag("TimeoutException", () =>
        Effect.logWarning(`closing ${state.active} session(s) still open after the grace period`))
    )
  })


/**
 * A layer running an NBD server for the exports in context, listening where told: on one
 * address, or on several at once (the sockets a service manager passed) with one set of
 * sessions, limits and shutdown. Fails with `ListenError` when it cannot listen.
 */
export const layer = (
  listen: ListenOptions | ReadonlyArray<ListenOptions>,
  options: Partial<ServerConfig.ServerConfig> = {}
): Layer.Layer<NbdServer, Listener.ListenError, ExportRegistry> =>
  Layer.scoped(
    NbdServer,
    Effect.gen(function*() {
      const config = ServerConfig.make(options)
      const listens: ReadonlyArray<ListenOptions> = isListenOptions(listen) ? [listen] : listen
      if (listens.length === 0) return yield* Effect.dieMessage("NbdServer.layer: nowhere to listen")
      const owned = config.receiveBuffer === "owned" && config.tls === undefined ? config.receiveBufferSize : undefined
      const socketServers = yield* Effect.forEach(listens, (listen) => Listener.make(listen, { ownedReceiveBuffer: owned }))
      const state = yield* makeState
      // Finalizers run last-added first: drain sessions (each flushes its handle), then stop serving and listening.
      for (const socketServer of socketServers) {
        yield* serve(config, state).pipe(
          Effect.provideService(SocketServer.SocketServer, socketServer),
          Effect.tapErrorCause((cause) => Effect.logError("NBD server failed", cause)),
          Effect.forkScoped
        )
      }
      yield* Effect.addFinalizer(() => drain(config, state))
      const addresses = socketServers.map((s) => s.address)
      const address = addresses[0]!
      return NbdServer.of({
        address,
        addresses,
        port: address._tag === "TcpAddress" ? address.port : undefined,
        connections: Effect.sync(() => state.connections),
        metrics: state.metrics,
        shutdown: state.shutdown.trigger
      })
    })
  )

const isListenOptions = (listen: ListenOptions | ReadonlyArray<ListenOptions>): listen is ListenOptions =>
  !Array.isArray(listen)

/** Percent-encodes for a URI path or query value, keeping `/` readable. */
const encodePath = (text: string): string => encodeURIComponent(text).replace(/%2F/g, "/")

/** The NBD URI of an address, for an export name (`nbds` when TLS is required). */
export const uri = (
  address: SocketServer.Address,
  exportName = "",
  options: { readonly tls?: boolean | undefined } = {}
): string => {
  const name = encodePath(exportName)
  const scheme = options.tls === true ? "nbds" : "nbd"
  if (address._tag === "UnixAddress") return `${scheme}+unix:///${name}?socket=${encodePath(address.path)}`
  const host = address.hostname.includes(":") ? `[${address.hostname}]` : address.hostname
  return `${scheme}://${host}:${address.port}/${name}`
}
