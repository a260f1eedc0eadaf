/**
 * The shutdown signal a server shares with its sessions.
 *
 * Once triggered, sessions answer new options ERR_SHUTDOWN and new requests ESHUTDOWN,
 * let in-flight requests finish, and then close.
 *
 * @since 0.1.0
 */
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"

/** A one-way switch from serving to shutting down. */
export interface Shutdown {
  /** True once shutdown began (cheap enough for every request). */
  readonly isShuttingDown: () => boolean
  /** Completes when shutdown begins. */
  readonly await: Effect.Effect<void>
  /** Begins shutdown (idempotent). */
  readonly trigger: Effect.Effect<void>
}

/** A new, untriggered signal. */
export const make: Effect.Effect<Shutdown> = Effect.map(Deferred.make<void>(), unsafeFrom)

/** A signal that never triggers (for sessions outside a server). */
export const never: Shutdown = {
  isShuttingDown: () => false,
  await: Effect.never,
  trigger: Effect.void
}

function unsafeFrom(deferred: Deferred.Deferred<void>): Shutdown {
  let triggered = false
  return {
    isShuttingDown: () => triggered,
    await: Deferred.await(deferred),
    trigger: Effect.suspend(() => {
      triggered = true
      return Deferred.succeed(deferred, undefined)
    })
  }
}
