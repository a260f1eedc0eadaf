/**
 * A session ran out of time: the client did not finish negotiating within the handshake
 * timeout, or stayed idle in transmission past the idle timeout. The connection is closed.
 *
 * @since 0.2.0
 */
import * as Data from "effect/Data"

/** The client took too long; the session ends. */
export class SessionTimeout extends Data.TaggedError("SessionTimeout")<{
  readonly phase: "negotiation" | "idle"
  readonly millis: number
}> {
  /** A readable account, for logs. */
  get description(): string {
    return this.phase === "negotiation"
      ? `negotiation not finished within ${this.millis} ms`
      : `idle for ${this.millis} ms`
  }
}
