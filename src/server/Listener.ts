/**
 * A listening socket as @effect/platform's `SocketServer`: on a TCP address, a Unix socket
 * path, or a listening socket inherited as a file descriptor (socket activation).
 *
 * Node.js's own socket server of the platform cannot serve an inherited Unix socket (Node
 * reports no address for it) and reports a failure to listen only as the cause of
 * `SocketServerError`; this one accepts every kind of listening socket, names the reason
 * a listen failed in a typed `ListenError`, and otherwise behaves the same: each connection
 * runs its handler in a fiber of a `FiberSet`, with the raw `net.Socket` in context as
 * `NodeSocket.NetSocket`, and closing the scope stops listening.
 *
 * @since 0.1.0
 */
import * as NodeSocket from "@effect/platform-node/NodeSocket"
import type * as Socket from "@effect/platform/Socket"
import * as SocketServer from "@effect/platform/SocketServer"
import * as Data from "effect/Data"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FiberSet from "effect/FiberSet"
import type * as Scope from "effect/Scope"
import * as fs from "node:fs"
import * as Net from "node:net"
import * as path from "node:path"
import * as OwnedReceive from "../stream/OwnedReceive.ts"

/**
 * Where a server listens: a TCP host and port (0 picks a free port), a Unix socket path,
 * or an already listening socket inherited as file descriptor `fd`.
 *
 * @since 0.1.0
 * @category models
 */
export type ListenOptions =
  | { readonly host?: string | undefined; readonly port: number }
  | { readonly path: string }
  | { readonly fd: number }

/**
 * Why listening failed.
 *
 * @since 0.1.0
 * @category errors
 */
export type ListenErrorReason =
  | "AddressInUse"
  | "PermissionDenied"
  | "AddressNotAvailable"
  | "HostNotFound"
  | "NoSuchDirectory"
  | "NotASocket"
  | "InvalidAddress"
  | "Unknown"

const reasonText: Record<ListenErrorReason, string> = {
  AddressInUse: "address already in use",
  PermissionDenied: "permission denied",
  AddressNotAvailable: "address not available on this machine",
  HostNotFound: "host not found",
  NoSuchDirectory: "no such directory",
  NotASocket: "not a listening socket",
  InvalidAddress: "invalid address",
  Unknown: "failed"
}

/**
 * A server could not listen: `reason` says why, `code` is the system's error code
 * (`EADDRINUSE`, ...), `address` what was asked for (`127.0.0.1:10809`, a path, `fd 3`).
 *
 * @since 0.1.0
 * @category errors
 */
export class ListenError extends Data.TaggedError("ListenError")<{
  readonly reason: ListenErrorReason
  readonly address: string
  readonly code: string | undefined
  readonly cause: unknown
}> {
  /** One line: `cannot listen on 127.0.0.1:10809: address already in use (EADDRINUSE)`. */
  override get message(): string {
    const detail = this.reason === "Unknown" || this.reason === "InvalidAddress"
      ? `${reasonText[this.reason]}: ${this.cause instanceof Error ? this.cause.message : String(this.cause)}`
      : reasonText[this.reason]
    return `cannot listen on ${this.address}: ${detail}${this.code === undefined ? "" : ` (${this.code})`}`
  }
}

/**
 * How a listen address is written in messages.
 *
 * @since 0.1.0
 * @category utils
 */
export const describe = (listen: ListenOptions): string => {
  if ("fd" in listen) return `fd ${listen.fd}`
  if ("path" in listen) return listen.path
  const host = listen.host ?? "127.0.0.1"
  return `${host.includes(":") ? `[${host}]` : host}:${listen.port}`
}

const errorCode = (cause: unknown): string | undefined =>
  typeof cause === "object" && cause !== null && "code" in cause && typeof cause.code === "string" ? cause.code : undefined

/** The reason of a failure to listen, from the system's error code. */
const reasonOf = (code: string | undefined, listen: ListenOptions): ListenErrorReason => {
  switch (code) {
    case "EADDRINUSE":
      return "AddressInUse"
    case "EACCES":
    case "EPERM":
      return "PermissionDenied"
    case "EADDRNOTAVAIL":
      return "AddressNotAvailable"
    case "ENOTFOUND":
    case "EAI_AGAIN":
    case "EAI_FAIL":
      return "HostNotFound"
    case "ENOENT":
      return "path" in listen ? "NoSuchDirectory" : "Unknown"
    case "EBADF":
    case "ENOTSOCK":
    case "EINVAL":
      return "fd" in listen ? "NotASocket" : "Unknown"
    case "ERR_SOCKET_BAD_PORT":
    case "ERR_INVALID_ARG_VALUE":
      return "InvalidAddress"
    default:
      return "Unknown"
  }
}

/**
 * A `ListenError` from what Node.js reported.
 *
 * @since 0.1.0
 * @category errors
 */
export const listenError = (listen: ListenOptions, cause: unknown): ListenError => {
  // Node.js reports a Unix socket in a missing directory as EACCES.
  const code = "path" in listen && !directoryExists(listen.path) ? "ENOENT" : errorCode(cause)
  return new ListenError({ reason: reasonOf(code, listen), address: describe(listen), code, cause })
}

const directoryExists = (socketPath: string): boolean => {
  try {
    return fs.statSync(path.dirname(socketPath)).isDirectory()
  } catch {
    return false
  }
}

/**
 * The path a Unix socket inherited as `fd` is bound to, read from Linux's `/proc`
 * (Node.js does not report it); `""` when unknown.
 */
const unixPathOfFd = (fd: number): string => {
  try {
    const inode = /^socket:\[(\d+)\]$/.exec(fs.readlinkSync(`/proc/self/fd/${fd}`))?.[1]
    if (inode === undefined) return ""
    for (const line of fs.readFileSync("/proc/net/unix", "utf8").split("\n").slice(1)) {
      // Num RefCount Protocol Flags Type St Inode Path
      const fields = line.trim().split(/\s+/)
      if (fields[6] === inode && fields[7] !== undefined) return fields[7]
    }
  } catch {
    // Not Linux, or /proc is not mounted.
  }
  return ""
}

/** The address of a listening server. */
const addressOf = (server: Net.Server, listen: ListenOptions): SocketServer.Address => {
  const address = server.address()
  if (typeof address === "string") return { _tag: "UnixAddress", path: address }
  if (address !== null) return { _tag: "TcpAddress", hostname: address.address, port: address.port }
  return { _tag: "UnixAddress", path: "fd" in listen ? unixPathOfFd(listen.fd) : "" }
}

/** Node.js's listen arguments; an inherited socket is listened on as `{ fd }`. */
const netListenOptions = (listen: ListenOptions): Net.ListenOptions & { readonly fd?: number } =>
  "fd" in listen
    ? { fd: listen.fd }
    : "path" in listen
    ? { path: listen.path }
    : { host: listen.host ?? "127.0.0.1", port: listen.port }

/** Starts listening; fails with the reason when the socket cannot be bound or used. */
const listenOn = (server: Net.Server, listen: ListenOptions) =>
  Effect.async<void, ListenError>((resume) => {
    const onError = (cause: Error) => resume(Effect.fail(listenError(listen, cause)))
    server.once("error", onError)
    try {
      server.listen(netListenOptions(listen), () => {
        server.off("error", onError)
        resume(Effect.void)
      })
    } catch (cause) {
      server.off("error", onError)
      resume(Effect.fail(listenError(listen, cause)))
    }
  })

/**
 * How a listener receives: with `ownedReceiveBuffer` (bytes), each accepted connection is
 * accepted paused and adopted by {@link OwnedReceive} to read into a buffer of that size;
 * a connection that cannot be adopted keeps Node.js's default receive path.
 *
 * @since 0.2.0
 * @category models
 */
export interface ListenerOptions {
  readonly ownedReceiveBuffer?: number | undefined
}

/** The connection to serve: adopted into an owned receive buffer when asked and possible. */
const receiving = (conn: Net.Socket, bufferSize: number | undefined): Net.Socket => {
  if (bufferSize === undefined) return conn
  const adopted = OwnedReceive.adopt(conn, bufferSize)
  if (adopted !== undefined) return adopted
  // Accepted paused: the default path needs the stream flowing once its reader attaches.
  ;(conn as unknown as { _readableState: { flowing: boolean | null } })._readableState.flowing = null
  conn.read(0)
  return conn
}

/**
 * Listens where told, in the current scope (closing it stops listening and waits for the
 * accepted connections to close). Connections that arrive before `run` wait for it.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (
  listen: ListenOptions,
  options: ListenerOptions = {}
): Effect.Effect<SocketServer.SocketServer["Type"], ListenError, Scope.Scope> =>
  Effect.gen(function*() {
    const failed = yield* Deferred.make<never, Error>()
    const waiting: Array<Net.Socket> = []
    let onConnection: (conn: Net.Socket) => void = (conn) => void waiting.push(conn)
    const owned = options.ownedReceiveBuffer
    const server = Net.createServer({ pauseOnConnect: owned !== undefined }, (accepted) => {
      const conn = receiving(accepted, owned)
      // A connection may fail before its handler listens; the handler then finds it closed.
      conn.on("error", () => {})
      onConnection(conn)
    })
    // An error once listening ends `run`; one while starting to listen fails `make` (below) as well.
    server.on("error", (cause) => Deferred.unsafeDone(failed, Exit.fail(cause)))
    yield* Effect.addFinalizer(() => Effect.async<void>((resume) => void server.close(() => resume(Effect.void))))
    yield* listenOn(server, listen)

    const run = <R, E, _>(handler: (socket: Socket.Socket) => Effect.Effect<_, E, R>) =>
      Effect.scoped(Effect.gen(function*() {
        const fibers = yield* FiberSet.make<unknown, unknown>()
        const runFork = yield* FiberSet.runtime(fibers)<R>()
        const serve = (conn: Net.Socket): void =>
          void runFork(
            NodeSocket.fromDuplex(
              Effect.acquireRelease(Effect.succeed(conn), (c) => Effect.sync(() => c.destroySoon()))
            ).pipe(
              Effect.flatMap(handler),
              Effect.catchAllCause((cause) => Effect.logDebug("connection handler failed", cause)),
              Effect.provideService(NodeSocket.NetSocket, conn)
            )
          )
        return yield* Effect.async<never>(() => {
          onConnection = serve
          waiting.splice(0).forEach(serve)
          return Effect.sync(() => {
            onConnection = (conn) => void conn.destroy()
          })
        }).pipe(
          Effect.raceFirst(Effect.mapError(Deferred.await(failed), (cause) =>
            new SocketServer.SocketServerError({ reason: "Unknown", cause })))
        )
      }))

    return SocketServer.SocketServer.of({ address: addressOf(server, listen), run })
  })
