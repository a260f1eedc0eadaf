/**
 * Where the command line listens: the sockets a service manager passed (socket activation)
 * when there are any, else a private Unix socket for `--unix -`, a Unix socket path for
 * `--unix PATH`, or `--host` and `--port`.
 *
 * @since 0.1.0
 */
import * as FileSystem from "@effect/platform/FileSystem"
import * as Path from "@effect/platform/Path"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import type * as Scope from "effect/Scope"
import type * as Server from "../server/Server.ts"
import * as SocketActivation from "./SocketActivation.ts"

/**
 * The value of `--unix` that asks for a private socket.
 *
 * @since 0.1.0
 */
export const PRIVATE_SOCKET = "-"

/**
 * Where to listen, and how that was decided.
 *
 * @since 0.1.0
 */
export interface ListenPlan {
  readonly listen: ReadonlyArray<Server.ListenOptions>
  /** The sockets came from a service manager. */
  readonly activated: boolean
}

/**
 * The listen options of the command line.
 *
 * @since 0.1.0
 */
export interface ListenRequest {
  readonly host: string
  readonly port: number
  readonly socket: Option.Option<string>
}

/**
 * A fresh directory only this user can enter, holding the path of a socket; removed with
 * everything in it when the scope closes (after the server, opened later, stopped).
 *
 * @since 0.1.0
 */
export const privateSocket: Effect.Effect<string, Error, FileSystem.FileSystem | Path.Path | Scope.Scope> = Effect.gen(
  function*() {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    const directory = yield* fs.makeTempDirectoryScoped({ prefix: "effect-nbd-" }).pipe(
      Effect.mapError((e) => new Error(`cannot make a directory for the private socket: ${e.message}`))
    )
    return path.join(directory, "socket")
  }
)

/**
 * Decides where to listen. Fails with a usage error when the environment is malformed or
 * `--unix` is given to a socket-activated process.
 *
 * @since 0.1.0
 */
export const resolve = (
  request: ListenRequest
): Effect.Effect<ListenPlan, Error, FileSystem.FileSystem | Path.Path | Scope.Scope> =>
  Effect.gen(function*() {
    const inherited = yield* SocketActivation.inherited.pipe(
      Effect.mapError((e) => new Error(`socket activation: ${e.message}`))
    )
    if (inherited.length > 0) {
      if (Option.isSome(request.socket)) return yield* Effect.fail(new Error("--unix cannot be used with socket activation"))
      return { listen: inherited.map(({ fd }) => ({ fd })), activated: true }
    }
    if (Option.isNone(request.socket)) return { listen: [{ host: request.host, port: request.port }], activated: false }
    const path = request.socket.value === PRIVATE_SOCKET ? yield* privateSocket : request.socket.value
    return { listen: [{ path }], activated: false }
  })
