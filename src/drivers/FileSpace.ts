/**
 * Space management of the file driver: TRIM, WRITE_ZEROES and BLOCK_STATUS through
 * `fallocate`, the block-device ioctls and `lseek(SEEK_DATA/SEEK_HOLE)`.
 *
 * Zeroing tries the fastest way the file system offers and falls back in order:
 * - regular file, holes allowed: punch a hole, else `ZERO_RANGE`, else write zeroes;
 * - regular file, `NO_HOLE`: `ZERO_RANGE`, else punch a hole and allocate the range
 *   again (tmpfs has no `ZERO_RANGE`), else write zeroes;
 * - block device, holes allowed: punch (the kernel's unmapping zero-out, which it refuses
 *   where it would be slow), else `BLKZEROOUT`, else write zeroes;
 * - block device, `NO_HOLE`: `BLKZEROOUT`, else write zeroes.
 * A way the file system refuses (EOPNOTSUPP and the like) is not tried again. With
 * FAST_ZERO, writing zeroes is never a fallback (ENOTSUP at once), and neither is a
 * device's zero-out where the device has no write-zeroes command of its own.
 *
 * @since 0.2.0
 */
import * as Effect from "effect/Effect"
import * as os from "node:os"
import * as Driver from "../Driver.ts"
import { errnoFromSystemError, type ProtocolError, protocolError } from "../Errors.ts"
import * as Calls from "./FileCalls.ts"

/** Most extents in one block-status answer (the client asks again for the rest). */
export const MAX_STATUS_EXTENTS = 1024

const ENXIO = os.constants.errno.ENXIO
/** Errors that mean "this file system or device cannot do that", not "it failed". */
const UNSUPPORTED = new Set([
  os.constants.errno.EOPNOTSUPP,
  os.constants.errno.ENOTSUP,
  os.constants.errno.ENOSYS,
  os.constants.errno.ENOTTY,
  os.constants.errno.EINVAL
])

/** What is served: a regular file or a block device. */
export type Kind = "file" | "device"

/** What the zeroing and allocation operations need. */
export interface SpaceOptions {
  readonly fd: number
  readonly calls: Calls.FileCalls
  readonly kind: Kind
  /** The device zeroes ranges with a command of its own (not by writing zero pages). */
  readonly deviceZeroesFast: boolean
  /** Writes zeroes the slow way, the last fallback. */
  readonly writeZeroes: (offset: number, length: number) => Effect.Effect<void, ProtocolError>
}

/** A negative errno of a call as the protocol error a client is answered with. */
export const callFailure = (what: string, negative: number): ProtocolError => {
  const code = Object.entries(os.constants.errno).find(([, n]) => n === -negative)?.[0] ?? `errno ${-negative}`
  return protocolError(errnoFromSystemError({ code }), `${what}: ${code}`)
}

/** One way of zeroing: succeeds with `false` when the file system or device does not support it. */
type Way = (offset: number, length: number) => Effect.Effect<boolean, ProtocolError>

/** Runs a thread-pool call: `true` when done, `false` when unsupported; fails on any other error. */
const attempt = (what: string, run: (done: Calls.Done) => void): Effect.Effect<boolean, ProtocolError> =>
  Effect.async((resume) =>
    run((result) => {
      if (result >= 0) resume(Effect.succeed(true))
      else if (UNSUPPORTED.has(-result)) resume(Effect.succeed(false))
      else resume(Effect.fail(callFailure(what, result)))
    })
  )

/** A way that, once refused, is not tried again. */
const remembered = (way: Way): Way => {
  let supported = true
  return (offset, length) =>
    supported
      ? Effect.map(way(offset, length), (done) => {
        if (!done) supported = false
        return done
      })
      : Effect.succeed(false)
}

/** The zeroing operations of one open file or device. */
export interface Space {
  /** TRIM: deallocates the range (advisory: a file system that cannot is not an error). */
  readonly trim: (offset: number, length: number) => Effect.Effect<void, ProtocolError>
  readonly writeZeroes: (offset: number, length: number, options: Driver.ZeroOptions) => Effect.Effect<void, ProtocolError>
  /** Whether FAST_ZERO can succeed at all. */
  readonly fastZero: boolean
}

/** Builds the zeroing operations of an open file or device. */
export const make = (options: SpaceOptions): Space => {
  const { calls, fd } = options
  const fallocate = (mode: number, what: string): Way => (offset, length) =>
    attempt(what, (done) => calls.fallocate(fd, mode, offset, length, done))
  const punch = remembered(fallocate(Calls.FALLOC_FL_PUNCH_HOLE | Calls.FALLOC_FL_KEEP_SIZE, "punching a hole"))
  const zeroRange = remembered(fallocate(Calls.FALLOC_FL_ZERO_RANGE | Calls.FALLOC_FL_KEEP_SIZE, "zeroing a range"))
  const allocate = fallocate(Calls.FALLOC_FL_KEEP_SIZE, "allocating a range")
  const punchAndAllocate = remembered((offset, length) =>
    Effect.flatMap(punch(offset, length), (punched) => punched ? allocate(offset, length) : Effect.succeed(false))
  )
  const zeroOut = remembered((offset, length) => attempt("zeroing out", (done) => calls.zeroOut(fd, offset, length, done)))
  const discard = remembered((offset, length) => attempt("discarding", (done) => calls.discard(fd, offset, length, done)))

  const device = options.kind === "device"
  const fastWays = device
    ? { holes: options.deviceZeroesFast ? [punch, zeroOut] : [punch], noHole: options.deviceZeroesFast ? [zeroOut] : [] }
    : { holes: [punch, zeroRange], noHole: [zeroRange, punchAndAllocate] }
  const slowWays = device && !options.deviceZeroesFast
    ? { holes: [zeroOut], noHole: [zeroOut] }
    : { holes: [], noHole: [] }

  const firstOf = (ways: ReadonlyArray<Way>, offset: number, length: number): Effect.Effect<boolean, ProtocolError> =>
    ways.length === 0
      ? Effect.succeed(false)
      : Effect.flatMap(ways[0]!(offset, length), (done) => done ? Effect.succeed(true) : firstOf(ways.slice(1), offset, length))

  return {
    trim: (offset, length) => Effect.asVoid(device ? discard(offset, length) : punch(offset, length)),
    fastZero: true,
    writeZeroes: (offset, length, zero) => {
      const which = zero.noHole ? "noHole" : "holes"
      return Effect.flatMap(firstOf(fastWays[which], offset, length), (done) => {
        if (done) return Effect.void
        if (zero.fastZero) return Effect.fail(protocolError("ENOTSUP", "this file system cannot zero faster than by writing"))
        return Effect.flatMap(
          firstOf(slowWays[which], offset, length),
          (slowDone) => slowDone ? Effect.void : options.writeZeroes(offset, length)
        )
      })
    }
  }
}

/**
 * `base:allocation` of `[offset, offset + length)` from `SEEK_DATA`/`SEEK_HOLE`: holes are
 * HOLE|ZERO, data is reported as data (even where it reads as zeroes, which is always
 * safe); a range past the end of the file is a hole. A file system that cannot tell
 * reports the whole file as data (that is what `lseek` answers there).
 */
export const blockStatus = (
  calls: Calls.FileCalls,
  fd: number,
  offset: number,
  length: number
): Effect.Effect<ReadonlyArray<Driver.Extent>, ProtocolError> =>
  Effect.suspend(() => {
    const end = offset + length
    const extents: Array<Driver.Extent> = []
    let at = offset
    while (at < end && extents.length < MAX_STATUS_EXTENTS) {
      const data = calls.seekData(fd, at)
      if (data === -ENXIO) {
        extents.push({ length: end - at, flags: Driver.HOLE_ZERO })
        break
      }
      if (data < 0) return Effect.fail(callFailure("finding data (SEEK_DATA)", data))
      if (data > at) {
        const holeEnd = Math.min(data, end)
        extents.push({ length: holeEnd - at, flags: Driver.HOLE_ZERO })
        at = holeEnd
        continue
      }
      const hole = calls.seekHole(fd, at)
      if (hole < 0) return Effect.fail(callFailure("finding a hole (SEEK_HOLE)", hole))
      const dataEnd = Math.min(Math.max(hole, at + 1), end)
      extents.push({ length: dataEnd - at, flags: 0 })
      at = dataEnd
    }
    return Effect.succeed(extents)
  })
