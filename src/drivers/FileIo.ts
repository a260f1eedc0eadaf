/**
 * Positional reads and writes of the file driver: through the page cache, or with
 * `O_DIRECT` (the driver's `cache=none`) from buffers aligned to {@link DIRECT_ALIGNMENT},
 * with unaligned requests going through a second, buffered descriptor of the same file.
 *
 * @since 0.2.0
 */
import * as Effect from "effect/Effect"
import * as fs from "node:fs"
import * as os from "node:os"
import { errnoFromSystemError, type ProtocolError, protocolError } from "../Errors.ts"

/** Alignment of offsets, lengths and memory for `O_DIRECT` I/O. */
export const DIRECT_ALIGNMENT = 4096

/** A Node.js error as the protocol error a client is answered with. */
export const systemFailure = (what: string) => (cause: NodeJS.ErrnoException | null): ProtocolError =>
  protocolError(errnoFromSystemError(cause), `${what}: ${cause?.message ?? "unknown error"}`)

/**
 * Reads `buffer.length` bytes at `offset` into `buffer`; bytes past the end of the file
 * read as zeroes. With `shortIsEnd` (`O_DIRECT`, where only the end of the file makes a
 * read short) the first short read ends it.
 */
export const readFully = (
  fd: number,
  buffer: Uint8Array,
  offset: number,
  shortIsEnd = false
): Effect.Effect<void, ProtocolError> =>
  Effect.async((resume) => {
    const length = buffer.length
    const step = (done: number) => {
      if (done === length) return resume(Effect.void)
      fs.read(fd, buffer, done, length - done, offset + done, (error, n) => {
        if (error) return resume(Effect.fail(systemFailure("read")(error)))
        if (n === 0 || (shortIsEnd && n < length - done)) {
          buffer.fill(0, done + n) // past the end of the file
          return resume(Effect.void)
        }
        step(done + n)
      })
    }
    step(0)
  })

/** Writes all of `data` at `offset`. */
export const writeAll = (fd: number, data: Uint8Array, offset: number): Effect.Effect<void, ProtocolError> =>
  Effect.async((resume) => {
    const step = (done: number) => {
      if (done === data.length) return resume(Effect.void)
      fs.write(fd, data, done, data.length - done, offset + done, (error, n) => {
        if (error) return resume(Effect.fail(systemFailure("write")(error)))
        step(done + n)
      })
    }
    step(0)
  })

/** How reads and writes reach the file. */
export interface Io {
  readonly read: (offset: number, length: number) => Effect.Effect<Uint8Array, ProtocolError>
  /** Reads all of `target` from `offset` (where reading into any buffer works). */
  readonly readInto?: ((offset: number, target: Uint8Array) => Effect.Effect<void, ProtocolError>) | undefined
  /** Reads all of `target` from `offset` if the page cache holds it, saying whether it did. */
  readonly readIfCached?: ((offset: number, target: Uint8Array) => boolean) | undefined
  readonly write: (offset: number, data: Uint8Array) => Effect.Effect<void, ProtocolError>
}

/**
 * Through the page cache. With `readCached` (`preadv2` with `RWF_NOWAIT`), a read the
 * page cache holds is answered at once on the event loop, and only the rest goes through
 * the thread pool.
 */
export const buffered = (fd: number, readCached?: (fd: number, buffer: Uint8Array, offset: number) => number): Io => {
  let cachedReads = readCached !== undefined
  const readInto = (offset: number, target: Uint8Array): Effect.Effect<void, ProtocolError> => {
    if (!cachedReads || readCached === undefined) return readFully(fd, target, offset)
    const n = readCached(fd, target, offset)
    if (n === target.length) return Effect.void
    if (n === -EOPNOTSUPP) cachedReads = false // the file system cannot tell: never again
    if (n <= 0) return readFully(fd, target, offset)
    return readFully(fd, target.subarray(n), offset + n)
  }
  return {
    read: (offset, length) => {
      const buffer = Buffer.allocUnsafe(length)
      return Effect.as(readInto(offset, buffer), buffer)
    },
    readInto,
    ...(readCached === undefined ? {} : {
      readIfCached: (offset: number, target: Uint8Array) => {
        if (!cachedReads) return false
        const n = readCached(fd, target, offset)
        if (n === -EOPNOTSUPP) cachedReads = false
        return n === target.length
      }
    }),
    write: (offset, data) => writeAll(fd, data, offset)
  }
}

const EOPNOTSUPP = os.constants.errno.EOPNOTSUPP

/** A zeroed buffer of `length` bytes whose memory starts on a {@link DIRECT_ALIGNMENT} boundary. */
export const alignedBuffer = (length: number, address: (memory: ArrayBuffer) => bigint): Uint8Array => {
  const memory = new ArrayBuffer(length + DIRECT_ALIGNMENT)
  const misalignment = Number(address(memory) % BigInt(DIRECT_ALIGNMENT))
  return new Uint8Array(memory, misalignment === 0 ? 0 : DIRECT_ALIGNMENT - misalignment, length)
}

const readAligned = (fd: number, buffer: Uint8Array, offset: number) => Effect.as(readFully(fd, buffer, offset, true), buffer)

const isAligned = (offset: number, length: number) =>
  offset % DIRECT_ALIGNMENT === 0 && length % DIRECT_ALIGNMENT === 0

/**
 * With `O_DIRECT` on `directFd` for aligned requests (read into or copied to an aligned
 * buffer), and through `bufferedFd` for the others (the kernel writes cached pages back
 * before a direct read of them, so both views agree).
 */
export const direct = (directFd: number, bufferedFd: number, address: (memory: ArrayBuffer) => bigint): Io => {
  const viaCache = buffered(bufferedFd)
  return {
    read: (offset, length) =>
      isAligned(offset, length) ? readAligned(directFd, alignedBuffer(length, address), offset) : viaCache.read(offset, length),
    write: (offset, data) => {
      if (!isAligned(offset, data.length)) return viaCache.write(offset, data)
      const aligned = alignedBuffer(data.length, address)
      aligned.set(data)
      return writeAll(directFd, aligned, offset)
    }
  }
}

/** Reads all of `target` from `offset` synchronously (zeroes past the end); throws Node's error. */
export const readNowInto = (fd: number, offset: number, target: Uint8Array): void => {
  const length = target.length
  for (let done = 0; done < length;) {
    const n = fs.readSync(fd, target, done, length - done, offset + done)
    if (n === 0) return void target.fill(0, done)
    done += n
  }
}

/** Reads `length` bytes at `offset` synchronously (zeroes past the end); throws Node's error. */
export const readNow = (fd: number, offset: number, length: number): Buffer => {
  const buffer = Buffer.allocUnsafe(length)
  readNowInto(fd, offset, buffer)
  return buffer
}

/** Writes all of `pieces` from `offset` with `pwritev`, looping over short writes; throws Node's error. */
export const writePiecesNow = (fd: number, offset: number, pieces: ReadonlyArray<Uint8Array>): void => {
  let rest = pieces
  let at = offset
  while (rest.length > 0) {
    let n = rest.length === 1 ? fs.writeSync(fd, rest[0]!, 0, rest[0]!.length, at) : fs.writevSync(fd, rest as Array<Uint8Array>, at)
    if (n === 0 && rest.some((piece) => piece.length > 0)) throw Object.assign(new Error("write wrote nothing"), { code: "EIO" })
    at += n
    let i = 0
    while (i < rest.length && n >= rest[i]!.length) n -= rest[i++]!.length
    rest = i < rest.length ? [rest[i]!.subarray(n), ...rest.slice(i + 1)] : []
  }
}

/** Writes all of `data` at `offset` synchronously; throws Node's error. */
export const writeNow = (fd: number, offset: number, data: Uint8Array): void => writePiecesNow(fd, offset, [data])

/**
 * For files whose pages are always in memory (tmpfs, ramfs), where a read or write never
 * waits for a disk: synchronous calls on the event loop, without a thread-pool round trip.
 */
export const inMemory = (fd: number): Io => ({
  read: (offset, length) =>
    Effect.try({ try: () => readNow(fd, offset, length), catch: (error) => systemFailure("read")(error as NodeJS.ErrnoException) }),
  readInto: (offset, target) =>
    Effect.try({ try: () => readNowInto(fd, offset, target), catch: (error) => systemFailure("read")(error as NodeJS.ErrnoException) }),
  write: (offset, data) =>
    Effect.try({ try: () => writeNow(fd, offset, data), catch: (error) => systemFailure("write")(error as NodeJS.ErrnoException) })
})

const MEMORY_FILE_SYSTEMS = new Set([0x01021994, 0x858458f6]) // TMPFS_MAGIC, RAMFS_MAGIC

/** Whether `path` lives on a file system held in memory (tmpfs, ramfs). */
export const isInMemory = (path: string): boolean => {
  try {
    return MEMORY_FILE_SYSTEMS.has(fs.statfsSync(path).type)
  } catch {
    return false
  }
}
