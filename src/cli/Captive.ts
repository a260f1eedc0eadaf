/**
 * Captive mode (`--run CMD`): once the server listens, `CMD` runs in `/bin/sh` with the
 * server's address in its environment; when it exits, the server stops and the process
 * exits with its status (128 + N when a signal N ended it, as shells report it).
 *
 * The environment of `CMD`: `uri` (and `nbd`, the same) the NBD URI of the default export,
 * `port` the TCP port (empty on a Unix socket), `unixsocket` the socket path (empty on TCP),
 * `exportname` the default export's name.
 *
 * `CMD` shares the terminal, standard streams and process group of the server, so that
 * interactive clients work and Ctrl-C reaches both (the platform's `Command` starts
 * children detached in a group of their own and reports a signal only as a message, hence
 * `node:child_process` here). Interrupting the returned effect sends `CMD` SIGTERM and waits
 * for it to exit.
 *
 * @since 0.1.0
 */
import * as Effect from "effect/Effect"
import { spawn } from "node:child_process"
import { constants } from "node:os"
import type * as SocketServer from "@effect/platform/SocketServer"
import * as Server from "../server/Server.ts"

/**
 * The variables `CMD` finds in its environment.
 *
 * @since 0.1.0
 */
export interface CaptiveEnvironment {
  readonly uri: string
  readonly nbd: string
  readonly port: string
  readonly unixsocket: string
  readonly exportname: string
}

/**
 * The environment describing a server address and its default export.
 *
 * @since 0.1.0
 */
export const environment = (
  address: SocketServer.Address,
  exportName: string,
  options: { readonly tls?: boolean | undefined } = {}
): CaptiveEnvironment => {
  const uri = Server.uri(address, exportName, options)
  return {
    uri,
    nbd: uri,
    port: address._tag === "TcpAddress" ? String(address.port) : "",
    unixsocket: address._tag === "UnixAddress" ? address.path : "",
    exportname: exportName
  }
}

/**
 * The exit status a shell would report for a process that ended with `code` or `signal`.
 *
 * @since 0.1.0
 */
export const exitStatus = (code: number | null, signal: NodeJS.Signals | null): number =>
  code ?? 128 + (signal === null ? 0 : constants.signals[signal] ?? 0)

/**
 * Runs `command` in `/bin/sh -c` with `env` added to this process's environment and
 * returns its exit status. Fails when the shell cannot be started. When interrupted (the
 * server got SIGINT or SIGTERM), it stops the command and sets `process.exitCode` to the
 * command's status, which the process then exits with.
 *
 * @since 0.1.0
 */
export const run = (command: string, env: CaptiveEnvironment): Effect.Effect<number, Error> =>
  Effect.async<number, Error>((resume) => {
    const child = spawn("/bin/sh", ["-c", command], { stdio: "inherit", env: { ...process.env, ...env } })
    const exited = new Promise<number>((done) => child.once("exit", (code, signal) => done(exitStatus(code, signal))))
    child.once("error", (cause) => resume(Effect.fail(new Error(`--run: cannot start /bin/sh: ${cause.message}`))))
    exited.then((status) => resume(Effect.succeed(status)))
    return Effect.promise(async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM")
      process.exitCode = await exited
    })
  })
