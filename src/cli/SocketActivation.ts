/**
 * Socket activation: the listening sockets a service manager (systemd, or
 * `systemd-socket-activate` for a try) passes to the process it starts.
 *
 * The protocol: the sockets are file descriptors 3, 4, ... (`LISTEN_FDS` of them), meant for
 * the process whose id is `LISTEN_PID`, optionally named by the colon-separated
 * `LISTEN_FDNAMES` (a socket unit's `FileDescriptorName=`). Once read, the variables are
 * removed from the environment so that commands this process starts do not take the
 * sockets for theirs.
 *
 * @since 0.1.0
 */
import * as Config from "effect/Config"
import type * as ConfigError from "effect/ConfigError"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"

/**
 * The first inherited file descriptor.
 *
 * @since 0.1.0
 */
export const LISTEN_FDS_START = 3

/**
 * A listening socket passed by the service manager.
 *
 * @since 0.1.0
 */
export interface InheritedSocket {
  readonly fd: number
  /** Its name from `LISTEN_FDNAMES`, when given. */
  readonly name: string | undefined
}

const environment = Config.all({
  pid: Config.option(Config.integer("LISTEN_PID")),
  fds: Config.option(Config.integer("LISTEN_FDS")),
  names: Config.option(Config.string("LISTEN_FDNAMES"))
})

/**
 * The sockets passed to this process; empty when none were (no `LISTEN_FDS`, or they were
 * meant for another process). Fails when the variables are not numbers.
 *
 * @since 0.1.0
 */
export const inherited: Effect.Effect<ReadonlyArray<InheritedSocket>, ConfigError.ConfigError> = Effect.gen(function*() {
  const { fds, names, pid } = yield* environment
  for (const name of ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"]) delete process.env[name]
  if (Option.isNone(fds) || fds.value < 1) return []
  if (Option.isNone(pid) || pid.value !== process.pid) return []
  const named = Option.match(names, { onNone: () => [], onSome: (text) => text.split(":") })
  return Array.from({ length: fds.value }, (_, i) => ({ fd: LISTEN_FDS_START + i, name: named[i] }))
})
