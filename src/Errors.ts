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

/** The errno names allowed on the wire. */
export const ErrnoName = Schema.Literal("EPERM", "EIO", "ENOMEM", "EINVAL", "ENOSPC", "EOVERFLOW", "ENOTSUP", "ESHUTDOWN")
export type ErrnoName = typeof ErrnoName.Type

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

/** The `NBD_REP_ERR_*` names. */
export const ReplyErrorName = Schema.Literal(
  "UNSUP",
  "POLICY",
  "INVALID",
  "PLATFORM",
  "TLS_REQD",
  "UNKNOWN",
  "SHUTDOWN",
  "BLOCK_SIZE_REQD",
  "TOO_BIG",
  "EXT_HEADER_REQD"
)
export type ReplyErrorName = typeof ReplyErrorName.Type

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
