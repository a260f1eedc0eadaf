/**
 * Opening what the file driver serves: a regular file or a block device (anything else is
 * refused with a message saying what it is), its size, the `O_DIRECT` descriptor of
 * `cache=none`, the `posix_fadvise` hint, and what the device's queue tells about it.
 *
 * @since 0.2.0
 */
import * as Effect from "effect/Effect"
import * as fs from "node:fs"
import type * as Scope from "effect/Scope"
import { type ProtocolError, protocolError } from "../Errors.ts"
import * as Calls from "./FileCalls.ts"
import type { Kind } from "./FileSpace.ts"
import { systemFailure } from "./FileIo.ts"

/** Page-cache policy: `default`, or `none` (`O_DIRECT`). */
export type CacheMode = "default" | "none"
/** Access-pattern hint given to the kernel with `posix_fadvise`. */
export type FadviseMode = "normal" | "random" | "sequential"

/** What was opened. */
export interface Opened {
  readonly fd: number
  /** The `O_DIRECT` descriptor with `cache=none`. */
  readonly directFd: number | undefined
  readonly kind: Kind
  readonly size: number
  /** Device queue facts (false for regular files). */
  readonly rotational: boolean
  readonly deviceZeroesFast: boolean
}

const openFd = (path: string, flags: number, what: string) =>
  Effect.acquireRelease(
    Effect.async<number, ProtocolError>((resume) =>
      fs.open(path, flags, (error, fd) => resume(error ? Effect.fail(systemFailure(`${what} ${path}`)(error)) : Effect.succeed(fd)))
    ),
    (fd) => Effect.async<void>((resume) => fs.close(fd, () => resume(Effect.void)))
  )

const typeOf = (stat: fs.Stats): string =>
  stat.isDirectory()
    ? "a directory"
    : stat.isCharacterDevice()
    ? "a character device"
    : stat.isFIFO()
    ? "a FIFO"
    : stat.isSocket()
    ? "a socket"
    : "not a regular file"

/** The sysfs directory of a device number (`st_rdev`: Linux's major and minor encoding). */
const sysfsOf = (rdev: number): string => {
  const major = Math.floor(rdev / 256) & 0xfff
  const minor = (rdev & 0xff) | (Math.floor(rdev / 4096) & 0xfff00)
  return `/sys/dev/block/${major}:${minor}`
}

/** A line of the device's queue in sysfs (the partition's parent's for a partition), if readable. */
const queueFact = (rdev: number, name: string): string | undefined => {
  for (const dir of [`${sysfsOf(rdev)}/queue`, `${sysfsOf(rdev)}/../queue`]) {
    try {
      return fs.readFileSync(`${dir}/${name}`, "utf8").trim()
    } catch {
      // try the next place
    }
  }
  return undefined
}

/** Size in bytes of a block device: its ioctl, else sysfs (512-byte sectors). */
const deviceSize = (calls: Calls.FileCalls | undefined, fd: number, rdev: number): number | undefined => {
  const size = calls?.deviceSize(fd)
  if (size !== undefined && size >= 0) return size
  try {
    return Number(fs.readFileSync(`${sysfsOf(rdev)}/size`, "utf8").trim()) * 512
  } catch {
    return undefined
  }
}

/** Reads the current size of an open file or device (at each client's open: no `fstat` per request). */
export const currentSize = (calls: Calls.FileCalls | undefined, fd: number): number | undefined => {
  try {
    const stat = fs.fstatSync(fd)
    return stat.isBlockDevice() ? deviceSize(calls, fd, stat.rdev) : stat.size
  } catch {
    return undefined
  }
}

/** Opens `path` for the life of the scope. */
export const open = (options: {
  readonly path: string
  readonly readOnly: boolean
  readonly cache: CacheMode
  readonly fadvise: FadviseMode
  readonly calls: Calls.FileCalls | undefined
}): Effect.Effect<Opened, ProtocolError, Scope.Scope> =>
  Effect.gen(function*() {
    const { calls, path } = options
    const flags = options.readOnly ? fs.constants.O_RDONLY : fs.constants.O_RDWR
    const refuse = (stat: fs.Stats) =>
      Effect.fail(protocolError("EINVAL", `${path} is ${typeOf(stat)}: the file driver serves regular files and block devices`))
    const before = yield* Effect.async<fs.Stats, ProtocolError>((resume) =>
      fs.stat(path, (error, stat) => resume(error ? Effect.fail(systemFailure(`opening ${path}`)(error)) : Effect.succeed(stat)))
    )
    if (!before.isFile() && !before.isBlockDevice()) return yield* refuse(before)
    const fd = yield* openFd(path, flags, "opening")
    const stat = fs.fstatSync(fd)
    if (!stat.isFile() && !stat.isBlockDevice()) return yield* refuse(stat)
    const kind: Kind = stat.isFile() ? "file" : "device"
    const size = kind === "file" ? stat.size : deviceSize(calls, fd, stat.rdev)
    if (size === undefined) return yield* Effect.fail(protocolError("EIO", `cannot read the size of the device ${path}`))
    let directFd: number | undefined
    if (options.cache === "none") {
      if (calls === undefined) {
        return yield* Effect.fail(protocolError("EINVAL", "cache=none needs the native system calls, which are unavailable"))
      }
      directFd = yield* openFd(path, flags | fs.constants.O_DIRECT, "opening with O_DIRECT (cache=none)").pipe(
        Effect.mapError((e) =>
          e.errno === "EINVAL" ? protocolError("EINVAL", `cache=none: the file system holding ${path} refuses O_DIRECT`) : e
        )
      )
    }
    if (options.fadvise !== "normal" && calls !== undefined) {
      for (const each of directFd === undefined ? [fd] : [fd, directFd]) {
        calls.fadvise(each, 0, 0, Calls.Advice[options.fadvise])
      }
    }
    const device = kind === "device"
    return {
      fd,
      directFd,
      kind,
      size,
      rotational: device && queueFact(stat.rdev, "rotational") === "1",
      deviceZeroesFast: device && Number(queueFact(stat.rdev, "write_zeroes_max_bytes") ?? "0") > 0
    }
  })
