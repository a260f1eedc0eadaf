/**
 * Typed failures of effect-nbd.
 *
 * - {@link ProtocolError}: a transmission request failed; carries the NBD errno sent back.
 * - {@link OptionReplyError}: a negotiation option failed; carries the `NBD_REP_ERR_*` reply.
 *
 * @since 0.1.0
 */
import * as Schema from "effect/Schema"
import { Errno, ReplyError } from "./protocol/Constants.ts"

const namesOf = <K extends string>(table: Record<K, number>) => Object.keys(table) as [K, ...Array<K>]

/** The errno names allowed on the wire (the keys of {@link Errno}). */
export const ErrnoName = Schema.Literal(...namesOf(Errno))
export type ErrnoName = typeof ErrnoName.Type

/** The name of an errno number from the wire, if it is one the protocol defines. */
export const errnoName = (code: number): ErrnoName | undefined =>
  ErrnoName.literals.find((name) => Errno[name] === code)

/**
 * A request failed: the client gets `errno` (and, with structured replies, `message`).
 * Drivers fail with this; the server also uses it for requests it rejects itself.
 * `offset`, when the failure is tied to a byte of the request's range, is reported to
 * clients with structured replies in an ERROR_OFFSET chunk.
 */
export class ProtocolError extends Schema.TaggedError<ProtocolError>()("ProtocolError", {
  errno: ErrnoName,
  message: Schema.String,
  offset: Schema.optional(Schema.Number)
}) {
  /** The errno's number on the wire. */
  get code(): number {
    return Errno[this.errno]
  }
}

/** Shorthand constructor for {@link ProtocolError}. */
export const protocolError = (errno: ErrnoName, message: string, offset?: number): ProtocolError =>
  new ProtocolError(offset === undefined ? { errno, message } : { errno, message, offset })

/** Maps a Node.js system error (`err.code`) to the closest NBD errno. */
export const errnoFromSystemError = (cause: unknown): ErrnoName => {
  const code = typeof cause === "object" && cause !== null && "code" in cause ? String(cause.code) : ""
  switch (code) {
    case "EPERM":
    case "EACCES":
    case "EROFS":
      return "EPERM"
    case "ENOSPC":
    case "EDQUOT":
    case "EFBIG":
      return "ENOSPC"
    case "ENOMEM":
      return "ENOMEM"
    case "EINVAL":
      return "EINVAL"
    case "EOVERFLOW":
      return "EOVERFLOW"
    case "ENOTSUP":
    case "EOPNOTSUPP":
      return "ENOTSUP"
    default:
      return "EIO"
  }
}

/** The `NBD_REP_ERR_*` names (the keys of {@link ReplyError}). */
export const ReplyErrorName = Schema.Literal(...namesOf(ReplyError))
export type ReplyErrorName = typeof ReplyErrorName.Type

/** The name of an option error reply type from the wire, if the protocol defines it. */
export const replyErrorName = (code: number): ReplyErrorName | undefined =>
  ReplyErrorName.literals.find((name) => ReplyError[name] === code)

/** An option failed: the client gets the `NBD_REP_ERR_<reply>` reply with `message`. */
export class OptionReplyError extends Schema.TaggedError<OptionReplyError>()("OptionReplyError", {
  reply: ReplyErrorName,
  message: Schema.String
}) {
  /** The reply type's number on the wire. */
  get code(): number {
    return ReplyError[this.reply]
  }
}

/** Shorthand constructor for {@link OptionReplyError}. */
export const optionReplyError = (reply: ReplyErrorName, message: string): OptionReplyError =>
  new OptionReplyError({ reply, message })

/** The peer broke the protocol in a way that leaves the stream unusable; the connection is closed. */
export class ProtocolViolation extends Schema.TaggedError<ProtocolViolation>()("ProtocolViolation", {
  message: Schema.String
}) {}
