/**
 * A driver over a regular file or a block device, for disk images. One descriptor is
 * shared by every connection and FLUSH is `fdatasync` on it (the device's cache flush for
 * a block device), so the export offers multi-connection; a FUA request is followed by
 * that flush, and nothing is acknowledged before the kernel has the data. Flushes run on
 * a worker thread of their own (`FileSync.ts`), so that they never hold up reads.
 *
 * - TRIM punches a hole (`fallocate` PUNCH_HOLE|KEEP_SIZE; `BLKDISCARD` on a device).
 * - WRITE_ZEROES punches a hole, or with NO_HOLE zeroes in place (`ZERO_RANGE`), falling
 *   back where the file system cannot (see `FileSpace.ts`); FAST_ZERO fails with ENOTSUP
 *   at once where only writing zeroes would do.
 * - BLOCK_STATUS (`base:allocation`) reports holes (HOLE|ZERO) and data from
 *   `lseek(SEEK_DATA/SEEK_HOLE)`, so sparse images copy as sparse.
 * - CACHE asks the kernel to read ahead (`posix_fadvise` WILLNEED).
 * - RESIZE truncates or extends a regular file. The size is read when a client opens the
 *   export and kept; a RESIZE updates it (no `fstat` per request).
 * - A file on tmpfs or ramfs, whose pages never wait for a disk, is read and written
 *   synchronously on the event loop (the server's fast path, as for the memory driver; a
 *   failed write there, such as a full tmpfs, is answered EIO rather than ENOSPC); other
 *   files through libuv's thread pool (see `bin/thread-pool.cjs` for its size), but for
 *   writes of up to 1 MiB through the page cache, made at once on the event loop while
 *   they are quick (`FileQuickWrites.ts`: timed, and sent to the thread pool for a while
 *   after a slow one).
 * - READ fills buffers the server lends from a pool of the connection (`readInto`), but
 *   with `cache=none`, whose reads need aligned buffers of their own. A read the page
 *   cache holds is answered at once on the event loop (`preadv2` with `RWF_NOWAIT`,
 *   without a fiber: the handle's `readNow`); only the others wait for the thread pool.
 *   A WRITE payload the server must copy (out of its receive buffer) goes into a pooled
 *   buffer as well (`writeCopies`: the kernel has the bytes once a write ends).
 *
 * Parameters (`KEY=VALUE` after the path):
 * - `cache=` (`default`): `default` uses the page cache; `none` opens the file with
 *   `O_DIRECT` too and reads and writes aligned requests through it from aligned buffers
 *   (unaligned ones through the page cache); refused where the file system refuses
 *   `O_DIRECT`.
 * - `fadvise=` (`normal`): `normal`, `random` or `sequential`, the access pattern told to
 *   the kernel (read-ahead).
 *
 * The system calls come from `FileCalls.ts`; where they cannot be loaded (or with
 * `EFFECT_NBD_FILE_NATIVE=0`, or {@link FileOptions.native} false) the driver still
 * serves, announcing once in the log that TRIM is not offered, zeroing writes zeroes and
 * every range is reported as data.
 *
 * @since 0.1.0
 */
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import type * as Scope from "effect/Scope"
import * as fs from "node:fs"
import * as Driver from "../Driver.ts"
import type { ProtocolError } from "../Errors.ts"
import * as Params from "../Params.ts"
import type { DriverPlugin } from "../Plugin.ts"
import * as Calls from "./FileCalls.ts"
import * as Io from "./FileIo.ts"
import { type CacheMode, currentSize, type FadviseMode, open } from "./FileOpen.ts"
import * as Space from "./FileSpace.ts"
import * as QuickWrites from "./FileQuickWrites.ts"
import * as FileSync from "./FileSync.ts"

/** Options of the file driver. */
export interface FileOptions {
  /** A regular file or a block device. */
  readonly path: string
  /** Open read-only (the export refuses writes). */
  readonly readOnly?: boolean | undefined
  readonly description?: string | undefined
  /** `none`: `O_DIRECT` (default `default`). */
  readonly cache?: CacheMode | undefined
  /** Access-pattern hint (default `normal`). */
  readonly fadvise?: FadviseMode | undefined
  /** `false`: never use the native system calls (the portable path). Default: use them where they load. */
  readonly native?: boolean | undefined
}

let announced = false

/** The native calls, or `undefined` after announcing (once per process) what is lost without them. */
const nativeCalls = (wanted: boolean): Effect.Effect<Calls.FileCalls | undefined> =>
  Effect.suspend(() => {
    const loaded: Calls.Loaded = wanted ? Calls.load() : { _tag: "Unavailable", reason: "native=false" }
    if (loaded._tag === "Native") return Effect.succeed(loaded.calls)
    if (announced) return Effect.succeed(undefined)
    announced = true
    return Effect.as(
      Effect.logWarning(
        `file: system calls unavailable (${loaded.reason}): TRIM is not offered, zeroing writes zeroes, ` +
          "every range is reported as data, fadvise is ignored"
      ),
      undefined
    )
  })

const failReadOnly = (): never => {
  throw new Error("the export is read-only")
}

const call = (what: string, run: (done: (error: NodeJS.ErrnoException | null) => void) => void) =>
  Effect.async<void, ProtocolError>((resume) =>
    run((error) => resume(error ? Effect.fail(Io.systemFailure(what)(error)) : Effect.void))
  )

/** Opens the file for the life of the scope and makes the driver. */
export const make = (options: FileOptions): Effect.Effect<Driver.NbdDriverShape, ProtocolError, Scope.Scope> =>
  Effect.map(makeSized(options), (made) => made.driver)

/** {@link make}, also giving the size found when the file was opened. */
export const makeSized = (
  options: FileOptions
): Effect.Effect<{ readonly driver: Driver.NbdDriverShape; readonly size: number }, ProtocolError, Scope.Scope> =>
  Effect.gen(function*() {
    const readOnly = options.readOnly ?? false
    const calls = yield* nativeCalls(options.native ?? true)
    const opened = yield* open({
      path: options.path,
      readOnly,
      cache: options.cache ?? "default",
      fadvise: options.fadvise ?? "normal",
      calls
    })
    const { fd, kind } = opened
    let size = opened.size
    const inMemory = kind === "file" && opened.directFd === undefined && Io.isInMemory(options.path)
    const io = opened.directFd !== undefined && calls !== undefined
      ? Io.direct(opened.directFd, fd, calls.address)
      : inMemory
      ? Io.inMemory(fd)
      : Io.buffered(fd, calls?.readCached)
    const writeZeroes = Driver.zeroesByWriting((offset, data) => io.write(offset, data))
    const space = calls === undefined ? undefined : Space.make({
      fd,
      calls,
      kind,
      deviceZeroesFast: opened.deviceZeroesFast,
      writeZeroes: (offset, length) => writeZeroes(offset, length, { fua: false, noHole: true, fastZero: false })
    })
    const quick = readOnly || inMemory || opened.directFd !== undefined ? undefined : QuickWrites.make(fd)
    const writable = readOnly ? {} : {
      write: (offset: number, data: Uint8Array) => io.write(offset, data),
      ...(quick === undefined ? {} : { writeNow: { size: () => size, write: quick.write } }),
      writeCopies: true, // the kernel (or the aligned copy of O_DIRECT) has the bytes once a write ends
      ...(space === undefined ? {} : { trim: space.trim, writeZeroes: space.writeZeroes }),
      ...(kind === "file"
        ? {
          resize: (newSize: number) =>
            Effect.tap(call("resize", (done) => fs.ftruncate(fd, newSize, done)), () => {
              size = newSize
            })
        }
        : {})
    }
    const driver = Driver.make({
      name: "file",
      description: options.description,
      capabilities: { multiConn: true, fastZero: space !== undefined, rotational: opened.rotational },
      open: () =>
        Effect.sync(() => {
          size = currentSize(calls, fd) ?? size
        }),
      size: Effect.sync(() => size),
      read: (offset, length) => io.read(offset, length),
      readInto: io.readInto,
      ...(io.readIfCached === undefined ? {} : { readNow: { size: () => size, into: io.readIfCached } }),
      ...(inMemory
        ? {
          sync: {
            size: () => size,
            read: (offset: number, length: number) => [Io.readNow(fd, offset, length)],
            readInto: (offset: number, target: Uint8Array) => Io.readNowInto(fd, offset, target),
            write: (offset: number, data: Uint8Array) => readOnly ? failReadOnly() : Io.writeNow(fd, offset, data)
          }
        }
        : {}),
      flush: FileSync.make(fd),
      ...(calls === undefined ? {} : {
        cache: (offset: number, length: number) =>
          Effect.sync(() => void calls.fadvise(fd, offset, length, Calls.Advice.willneed))
      }),
      ...(calls === undefined || kind !== "file" ? {} : {
        blockStatus: (offset: number, length: number) => Space.blockStatus(calls, fd, offset, length)
      }),
      ...writable
    })
    return { driver, size: opened.size }
  })

/** A layer providing a file driver; the file is closed when the layer's scope closes. */
export const layer = (options: FileOptions): Layer.Layer<Driver.NbdDriver, ProtocolError> =>
  Layer.scoped(Driver.NbdDriver, make(options))

/** The parameters `file` takes (also `dir`'s, for each file it serves). */
export const parameters: ReadonlyArray<Params.ParameterDoc> = [
  {
    name: "cache",
    default: "default",
    description: "default (page cache) or none (O_DIRECT for aligned requests; refused where the file system refuses it)"
  },
  { name: "fadvise", default: "normal", description: "normal, random or sequential: the access pattern told to the kernel" }
]

/** Reads {@link parameters}. */
export const readParameters = (reader: Params.Reader) => ({
  cache: reader.choice("cache", ["default", "none"], "default"),
  fadvise: reader.choice("fadvise", ["normal", "random", "sequential"], "normal")
})

/** The driver by name, for the command line: `file PATH [cache=none] [fadvise=sequential]`. */
export const plugin: DriverPlugin = {
  name: "file",
  summary: "a regular file or block device (sparse-aware, multi-connection; FLUSH and FUA are fdatasync)",
  argument: { name: "PATH", description: "the file or block device to export" },
  parameters,
  make: (argument, pairs, options) =>
    Either.flatMap(Params.decode("file", pairs, parameters, readParameters), (read) =>
      argument === ""
        ? Either.left(new Params.ParameterError({ message: "file: a PATH is required" }))
        : Either.right(make({ path: argument, readOnly: options?.readOnly ?? false, ...read })))
}
