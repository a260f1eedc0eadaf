/**
 * The single-writer lease of an s3 export: one object, `PREFIX/lease.json`, written only
 * by conditional PUTs, so that among servers racing for it exactly one wins.
 *
 * - Taking a free lease: `If-None-Match: *` when there is no lease object, `If-Match`
 *   on the ETag of a released one.
 * - The holder renews it every quarter of the lease time (`If-Match` on its own last
 *   ETag) and counts itself the holder only until three quarters of the lease time
 *   after it sent its last successful renewal; past that, what it stores waits for a
 *   late renewal (see {@link Lease.guard}). A failed renewal that found the lease
 *   changed means it was taken over: the lease is lost.
 * - A server that does not hold it takes it over once it has seen the same ETag for a
 *   whole lease time by its own clock (the holder stopped renewing), again with
 *   `If-Match`. No clock is compared across servers.
 * - Releasing writes a "released" lease (`If-Match`), which any server may take at once.
 *
 * A store that answers a losing conditional PUT with 500 instead of 412 (Ceph's radosgw
 * does, sometimes) counts as a lost race.
 *
 * @since 0.2.0
 */
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import { S3Failure, type S3Store } from "./S3Store.ts"

/** The lease object's content. */
export const LeaseBody = Schema.parseJson(Schema.Struct({
  /** Who holds (or last held) it: host, process and a random tag. */
  holder: Schema.String,
  /** The lease time in milliseconds. */
  ttl: Schema.Number,
  /** Set when the holder let it go. */
  released: Schema.Boolean,
  /** When it was last written, by the writer's clock (for people; never compared). */
  written: Schema.String
}))

/** Where the lease is and who asks. */
export interface LeaseOptions {
  readonly store: S3Store
  readonly key: string
  /** This server's identity, written in the lease. */
  readonly holder: string
  /** The lease time in milliseconds. */
  readonly ttl: number
  /** The clock (milliseconds); `Date.now` by default. */
  readonly now?: (() => number) | undefined
}

/** Where a server stands. */
type State =
  | { readonly _tag: "Holding"; readonly etag: string; readonly validUntil: number }
  | { readonly _tag: "Watching"; readonly etag: string | undefined; readonly since: number }

/** How a step changed the state, for logs and the driver. */
export type Transition = "acquired" | "renewed" | "lost" | "unchanged"

/** One server's view of an export's lease. */
export class Lease {
  private state: State = { _tag: "Watching", etag: undefined, since: 0 }
  private readonly now: () => number

  constructor(private readonly options: LeaseOptions) {
    this.now = options.now ?? Date.now
  }

  /** Whether this server holds the lease at this moment. */
  held(): boolean {
    return this.state._tag === "Holding" && this.now() < this.state.validUntil
  }

  /**
   * Whether this server holds the lease or is renewing it: it took the lease and has not
   * seen it taken over (its last renewal may be late, on a busy machine or store).
   */
  holding(): boolean {
    return this.state._tag === "Holding"
  }

  /** Who holds the lease, as last seen (for messages). */
  lastHolder: string | undefined

  /**
   * Succeeds while the lease is held. While a late renewal is pending it waits for it
   * (at most one lease time); fails (Conflict) if the lease is not held.
   */
  readonly guard: Effect.Effect<void, S3Failure> = Effect.suspend(() => {
    const deadline = this.now() + this.options.ttl
    const check: Effect.Effect<void, S3Failure> = Effect.suspend(() => {
      if (this.held()) return Effect.void
      if (this.holding() && this.now() < deadline) return Effect.zipRight(Effect.sleep("20 millis"), check)
      return Effect.fail(
        new S3Failure({ reason: "Conflict", operation: `lease ${this.options.key}`, message: "this server does not hold the lease" })
      )
    })
    return check
  })

  private body(released: boolean): Uint8Array {
    const text = Schema.encodeSync(LeaseBody)({
      holder: this.options.holder,
      ttl: this.options.ttl,
      released,
      written: new Date(this.now()).toISOString()
    })
    return new TextEncoder().encode(text)
  }

  /** A conditional PUT of the lease; the new state on success, or none if the race was lost. */
  private write(condition: { readonly _tag: "Absent" } | { readonly _tag: "Matches"; readonly etag: string }) {
    const sent = this.now()
    return this.options.store.put(this.options.key, this.body(false), condition).pipe(
      Effect.map((etag) => Option.some<State>({ _tag: "Holding", etag, validUntil: sent + (this.options.ttl * 3) / 4 })),
      Effect.catchIf((e) => e.reason === "Conflict", () => Effect.succeed(Option.none<State>()))
    )
  }

  /** Renews (holder) or watches and takes over when free or expired (others). */
  readonly step: Effect.Effect<Transition, S3Failure> = Effect.suspend(() => {
    const state = this.state
    if (state._tag === "Holding") {
      return Effect.map(this.write({ _tag: "Matches", etag: state.etag }), (next) => {
        if (Option.isSome(next)) {
          this.state = next.value
          return "renewed" as const
        }
        this.state = { _tag: "Watching", etag: undefined, since: this.now() }
        return "lost" as const
      })
    }
    return Effect.flatMap(this.options.store.get(this.options.key), (found) => {
      if (Option.isNone(found)) return this.take({ _tag: "Absent" })
      const { data, etag } = found.value
      const parsed = Schema.decodeEither(LeaseBody)(new TextDecoder().decode(data))
      const released = Either.isRight(parsed) && parsed.right.released
      const ttl = Either.isRight(parsed) ? parsed.right.ttl : this.options.ttl
      if (Either.isRight(parsed)) this.lastHolder = parsed.right.holder
      if (released) return this.take({ _tag: "Matches", etag })
      if (etag !== state.etag) {
        this.state = { _tag: "Watching", etag, since: this.now() }
        return Effect.succeed("unchanged" as const)
      }
      return this.now() - state.since >= ttl ? this.take({ _tag: "Matches", etag }) : Effect.succeed("unchanged" as const)
    })
  })

  private take(condition: { readonly _tag: "Absent" } | { readonly _tag: "Matches"; readonly etag: string }) {
    return Effect.map(this.write(condition), (next): Transition => {
      if (Option.isNone(next)) {
        this.state = { _tag: "Watching", etag: undefined, since: this.now() }
        return "unchanged"
      }
      this.state = next.value
      this.lastHolder = this.options.holder
      return "acquired"
    })
  }

  /** Lets the lease go (a released lease is free for anyone at once); nothing if not held. */
  readonly release: Effect.Effect<void, S3Failure> = Effect.suspend(() => {
    const state = this.state
    if (state._tag !== "Holding") return Effect.void
    this.state = { _tag: "Watching", etag: undefined, since: this.now() }
    return this.options.store.put(this.options.key, this.body(true), { _tag: "Matches", etag: state.etag }).pipe(
      Effect.asVoid,
      Effect.catchIf((e) => e.reason === "Conflict", () => Effect.void)
    )
  })
}
