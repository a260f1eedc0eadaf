/**
 * A token bucket on Effect's `Clock`, the pacing behind the `rate` filter.
 *
 * Tokens (bytes) flow in at `rate` per second up to `capacity`. A taker reserves its
 * tokens at once, even when that drives the level below zero, and sleeps until the debt
 * is paid: takers are served in the order they reserved, without a lock or a polling
 * loop, and the long-run throughput never exceeds `rate`. The bucket starts empty.
 *
 * @since 0.2.0
 */
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"

/** A bucket of byte tokens. */
export interface TokenBucket {
  /** Bytes per second. */
  readonly rate: number
  /** Most tokens the bucket holds: what may pass at once after an idle period. */
  readonly capacity: number
  /** Reserves `tokens` now; yields how long the taker must wait before using them. */
  readonly reserve: (tokens: number) => Effect.Effect<Duration.Duration>
  /** Reserves `tokens` and waits until they are paid for. */
  readonly take: (tokens: number) => Effect.Effect<void>
}

/** Makes an empty bucket filling at `rate` tokens per second up to `capacity` (both positive). */
export const make = (rate: number, capacity: number): Effect.Effect<TokenBucket> =>
  Effect.map(Clock.currentTimeMillis, (start) => {
    let level = 0
    let last = start
    const reserve = (tokens: number) =>
      Effect.map(Clock.currentTimeMillis, (now) => {
        // Another fiber may have read a later time first: never let time run backwards.
        if (now > last) {
          level = Math.min(capacity, level + ((now - last) / 1000) * rate)
          last = now
        }
        level -= tokens
        return level >= 0 ? Duration.zero : Duration.millis((-level / rate) * 1000)
      })
    const take = (tokens: number) =>
      Effect.flatMap(reserve(tokens), (wait) => (Duration.isZero(wait) ? Effect.void : Effect.sleep(wait)))
    return { rate, capacity, reserve, take }
  })
