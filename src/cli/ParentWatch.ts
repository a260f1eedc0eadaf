/**
 * `--exit-with-parent`: stop (gracefully, as on SIGTERM) when the process that started this
 * one exits, so that a program using the server as a child cannot leave it behind.
 *
 * On Linux the kernel does it: `prctl(PR_SET_PDEATHSIG, SIGTERM)` (called through koffi)
 * makes the parent's exit deliver SIGTERM at once, whatever the event loop is doing, with no
 * timer. The kernel sends it when the parent's thread that started this process ends, which
 * for a multi-threaded parent may be before the parent itself; this is how nbdkit behaves
 * too. If the parent is already gone when the request is made, the signal would never come:
 * that is checked right after. Elsewhere, or when libc cannot be loaded, the parent's process
 * id is polled every second and a change (the process was adopted by another) stops the
 * server.
 *
 * @since 0.1.0
 */
import * as Effect from "effect/Effect"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import { constants } from "node:os"

/** The parent when this module was loaded, at start-up. */
const parentAtStart = process.ppid

const PR_SET_PDEATHSIG = 1

/** How often the fallback looks at the parent's process id. */
const POLL_INTERVAL = "1 second"

/** Asks Linux for SIGTERM when the parent exits; false when that cannot be asked. */
const setDeathSignal: Effect.Effect<boolean> = Effect.tryPromise(async () => {
  const koffi = await import("koffi")
  const prctl = koffi.load("libc.so.6").func("int prctl(int option, ...)")
  const none = ["unsigned long", 0] as const
  return prctl(PR_SET_PDEATHSIG, "unsigned long", constants.signals.SIGTERM, ...none, ...none, ...none) === 0
}).pipe(Effect.orElseSucceed(() => false))

/** Stops this process as SIGTERM from the service manager or a terminal would. */
const stop = Effect.sync(() => process.kill(process.pid, "SIGTERM"))

/** Whether the parent this process started with has exited (the process was adopted). */
const parentGone = Effect.sync(() => process.ppid !== parentAtStart)

/**
 * How the parent is watched.
 *
 * @since 0.1.0
 */
export type Method = "kernel" | "poll"

/**
 * Watches the parent for the lifetime of the scope; returns how.
 *
 * @since 0.1.0
 */
export const exitWithParent: Effect.Effect<Method, never, Scope.Scope> = Effect.gen(function*() {
  const viaKernel = process.platform === "linux" && (yield* setDeathSignal)
  if (viaKernel) {
    if (yield* parentGone) yield* stop
    return "kernel" as const
  }
  yield* parentGone.pipe(
    Effect.repeat({ schedule: Schedule.spaced(POLL_INTERVAL), until: (gone) => gone }),
    Effect.zipRight(stop),
    Effect.forkScoped
  )
  return "poll" as const
})
