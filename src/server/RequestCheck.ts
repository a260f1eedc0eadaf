/**
 * The checks a request passes before it reaches the driver, as pure functions of the
 * request, what was negotiated and the export's capabilities: the errno the spec
 * prescribes for each malformed, unsupported or out-of-range request.
 *
 * @since 0.2.0
 */
import type { Capabilities } from "../Driver.ts"
import { type ProtocolError, protocolError } from "../Errors.ts"
import { Command, CommandFlags, commandName, TransmissionFlags } from "../protocol/Constants.ts"
import type { Request } from "./Request.ts"

/** What the checks depend on besides the request. */
export interface CheckContext {
  readonly capabilities: Capabilities
  /** Structured replies (or extended headers) were negotiated. */
  readonly structured: boolean
  readonly extended: boolean
  /** At least one meta context is selected for BLOCK_STATUS. */
  readonly metaContexts: boolean
  /** The server is shutting down: new requests get ESHUTDOWN. */
  readonly shuttingDown: boolean
}

const READ_LIKE = new Set<number>([Command.READ, Command.TRIM, Command.CACHE, Command.BLOCK_STATUS])
const WRITES = new Set<number>([Command.WRITE, Command.TRIM, Command.WRITE_ZEROES, Command.RESIZE])

/** The transmission flags advertised for capabilities. */
export const transmissionFlags = (caps: Capabilities, structured: boolean): number => {
  const writable = !caps.readOnly
  let flags = TransmissionFlags.HAS_FLAGS
  if (caps.readOnly) flags |= TransmissionFlags.READ_ONLY
  if (caps.flush) flags |= TransmissionFlags.SEND_FLUSH
  if (writable && (caps.fua || caps.flush)) flags |= TransmissionFlags.SEND_FUA
  if (caps.rotational) flags |= TransmissionFlags.ROTATIONAL
  if (writable && caps.trim) flags |= TransmissionFlags.SEND_TRIM
  if (writable && caps.zero) flags |= TransmissionFlags.SEND_WRITE_ZEROES | TransmissionFlags.SEND_FAST_ZERO
  if (structured) flags |= TransmissionFlags.SEND_DF
  if (caps.multiConn) flags |= TransmissionFlags.CAN_MULTI_CONN
  if (writable && caps.resize) flags |= TransmissionFlags.SEND_RESIZE
  if (caps.cache) flags |= TransmissionFlags.SEND_CACHE
  return flags
}

/** Command flags a command accepts in a context (FUA on every command once SEND_FUA is advertised). */
const allowedFlags = (type: number, ctx: CheckContext): number => {
  const fua = !ctx.capabilities.readOnly && (ctx.capabilities.fua || ctx.capabilities.flush) ? CommandFlags.FUA : 0
  switch (type) {
    case Command.READ:
      return fua | (ctx.structured ? CommandFlags.DF : 0)
    case Command.WRITE:
      return fua | (ctx.extended ? CommandFlags.PAYLOAD_LEN : 0)
    case Command.WRITE_ZEROES:
      return fua | CommandFlags.NO_HOLE | CommandFlags.FAST_ZERO
    case Command.BLOCK_STATUS:
      return fua | CommandFlags.REQ_ONE
    default:
      return fua
  }
}

/** The command is one the export does not offer. */
const unsupported = (type: number) => protocolError("EINVAL", `${commandName(type)} is not supported by this export`)

/** The error of a command the export cannot run, if any. */
const checkSupported = (req: Request, ctx: CheckContext): ProtocolError | undefined => {
  const caps = ctx.capabilities
  switch (req.type) {
    case Command.FLUSH:
      return caps.flush ? undefined : unsupported(req.type)
    case Command.TRIM:
      return caps.trim ? undefined : unsupported(req.type)
    case Command.WRITE_ZEROES:
      if (!caps.zero) return unsupported(req.type)
      return (req.flags & CommandFlags.FAST_ZERO) !== 0 && !caps.fastZero
        ? protocolError("ENOTSUP", "fast zeroing is not supported by this export")
        : undefined
    case Command.RESIZE:
      return caps.resize ? undefined : unsupported(req.type)
    case Command.BLOCK_STATUS:
      if (!ctx.structured || !ctx.metaContexts) return protocolError("EINVAL", "no meta context was selected for BLOCK_STATUS")
      return req.length === 0 ? protocolError("EINVAL", "BLOCK_STATUS of zero bytes") : undefined
    default:
      return undefined
  }
}

/** The error a request gets before it reaches the driver, if any (all but the bounds). */
export const check = (req: Request, ctx: CheckContext): ProtocolError | undefined => {
  const { type } = req
  const { blockSize, readOnly } = ctx.capabilities
  if (ctx.shuttingDown) return protocolError("ESHUTDOWN", "the server is shutting down")
  if (type > Command.RESIZE || type === Command.DISC) return protocolError("EINVAL", `unknown command ${type}`)
  const unknownFlags = req.flags & ~allowedFlags(type, ctx)
  if (unknownFlags !== 0) {
    return protocolError("EINVAL", `flags 0x${unknownFlags.toString(16)} are not valid for ${commandName(type)}`)
  }
  if (readOnly && WRITES.has(type)) return protocolError("EPERM", "the export is read-only")
  if (ctx.extended && type === Command.WRITE && (req.flags & CommandFlags.PAYLOAD_LEN) === 0) {
    return protocolError("EINVAL", "WRITE with extended headers must set PAYLOAD_LEN")
  }
  const unsupportedError = checkSupported(req, ctx)
  if (unsupportedError !== undefined || type === Command.FLUSH) return unsupportedError
  if (type === Command.RESIZE) {
    return req.offset % blockSize.minimum === 0
      ? undefined
      : protocolError("EINVAL", `new size is not a multiple of ${blockSize.minimum}`)
  }
  if (req.offset % blockSize.minimum !== 0 || req.length % blockSize.minimum !== 0) {
    return protocolError("EINVAL", `offset and length must be multiples of ${blockSize.minimum}`)
  }
  if ((type === Command.READ || type === Command.WRITE) && req.length > blockSize.maximum) {
    return protocolError("EINVAL", `${commandName(type)} of ${req.length} bytes exceeds the maximum ${blockSize.maximum}`)
  }
  return undefined
}

/** The error of a request that reaches past the end of an export of `size` bytes, if it does. */
export const checkBounds = (req: Request, size: number): ProtocolError | undefined =>
  req.type !== Command.RESIZE && req.type !== Command.FLUSH && req.offset + req.length > size
    ? protocolError(
      READ_LIKE.has(req.type) ? "EINVAL" : "ENOSPC",
      `${commandName(req.type)} of ${req.length} bytes at ${req.offset} is beyond the export size ${size}`
    )
    : undefined
