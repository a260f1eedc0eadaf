/**
 * The NBD server: a scoped layer listening on TCP or a Unix socket, serving every
 * connection as a supervised fiber of `SocketServer.run`.
 *
 * Closing the layer's scope (interrupting the program, SIGINT/SIGTERM under
 * `NodeRuntime.runMain`) stops accepting connections, answers new requests and options
 * with ESHUTDOWN / ERR_SHUTDOWN, lets in-flight requests finish and closes every session.
 *
 * @since 0.1.0
 */
import * as NodeSocket from "@effect/platform-node/NodeSocket"
import * as NodeSocketServer from "@effect/platform-node/NodeSocketServer"
import * as SocketServer from "@effect/platform/SocketServer"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import type { ExportRegistry } from "../Export.ts"
import * as ServerConfig from "./ServerConfig.ts"
import * as Session from "./Session.ts"

/** Where a server listens. */
export type ListenOptions =
  | { readonly host?: string | undefined; readonly port: number }
  | { readonly path: string }

/** A running NBD server. */
export class NbdServer extends Context.Tag("effect-nbd/NbdServer")<NbdServer, {
  /** The address it listens on (the real port when port 0 was asked). */
  readonly address: SocketServer.Address
  /** Connections served since start. */
  readonly connections: Effect.Effect<number>
}>() {}

/**
 * Serves NBD on the `SocketServer` in context until interrupted. Each connection runs
 * `Session.run` over the raw Node.js socket.
 */
export const serve = (
  config: ServerConfig.ServerConfig = ServerConfig.defaults,
  state: { shuttingDown: boolean; connections: number } = { shuttingDown: false, connections: 0 }
): Effect.Effect<never, SocketServer.SocketServerError, SocketServer.SocketServer | ExportRegistry> =>
  Effect.gen(function*() {
    const server = yield* SocketServer.SocketServer
    return yield* server.run(() =>
      Effect.flatMap(Effect.serviceOption(NodeSocket.NetSocket), (raw) => {
        if (Option.isNone(raw)) return Effect.dieMessage("NBD sessions need a Node.js socket server")
        const connectionId = ++state.connections
        raw.value.setNoDelay(true)
        return Effect.zipRight(
          Effect.logDebug(`connection from ${raw.value.remoteAddress ?? "a local socket"}`),
          Session.run(raw.value, { config, connectionId, isShuttingDown: () => state.shuttingDown })
        ).pipe(Effect.annotateLogs({ connection: connectionId }))
      })
    )
  })

/** A layer running an NBD server for the exports in context, listening where told. */
export const layer = (
  listen: ListenOptions,
  config: Partial<ServerConfig.ServerConfig> = {}
): Layer.Layer<NbdServer, SocketServer.SocketServerError, ExportRegistry> =>
  Layer.scoped(
    NbdServer,
    Effect.gen(function*() {
      const socketServer = yield* SocketServer.SocketServer
      const state = { shuttingDown: false, connections: 0 }
      yield* serve(ServerConfig.make(config), state).pipe(
        Effect.tapErrorCause((cause) => Effect.logError("NBD server failed", cause)),
        Effect.forkScoped
      )
      yield* Effect.addFinalizer(() =>
        Effect.sync(() => {
          state.shuttingDown = true
        })
      )
      return NbdServer.of({
        address: socketServer.address,
        connections: Effect.sync(() => state.connections)
      })
    })
  ).pipe(Layer.provide(NodeSocketServer.layer("path" in listen ? { path: listen.path } : { host: listen.host ?? "127.0.0.1", port: listen.port })))

/** The NBD URI of an address, for an export name. */
export const uri = (address: SocketServer.Address, exportName = ""): string => {
  const name = encodeURIComponent(exportName).replace(/%2F/g, "/")
  if (address._tag === "UnixAddress") return `nbd+unix:///${name}?socket=${address.path}`
  const host = address.hostname.includes(":") ? `[${address.hostname}]` : address.hostname
  return `nbd://${host}:${address.port}/${name}`
}
